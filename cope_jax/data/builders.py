"""The records a build writes: TFDS features of ArrayRecord datasets (no TensorFlow needed).

Three record kinds:
- ``cope_pretrain`` (stage 1): one Δ-frame pair per record — reference RGB (the previous sampled
  position), target RGB, motion field, residual;
- ``cope_finetune`` (stage 2): one video per record — its interleaved sequence (kinds, times,
  keyframes, Δ-frames) and its conversations (JSON);
- ``cope_eval``: one multiple-choice question per record, with its video's sequence.

Records are made from videos already extracted by ``primitive_cache``; ``shard_writer`` writes
them and ``build`` renames the folder into place when done, so shards appear atomically.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from cope_jax.codec.sampling import DELTA, KEYFRAME
from cope_jax.data.primitive_cache import CachedVideo

_BYTES = tfds.features.Tensor(shape=(), dtype=np.object_)
_BYTES_LIST = tfds.features.Tensor(shape=(None,), dtype=np.object_)

SEQUENCE_FEATURES = {
    "video": tfds.features.Text(),
    "kinds": tfds.features.Tensor(shape=(None,), dtype=np.uint8),
    "times": tfds.features.Tensor(shape=(None,), dtype=np.float32),
    "duration_s": np.float32,
    "keyframes": _BYTES_LIST,  # PNG
    "mv": _BYTES_LIST,         # storage.encode_mv
    "residual": _BYTES_LIST,   # storage.encode_residual
}


def sequence_example(video: str, cached: CachedVideo) -> dict:
  """The interleaved sequence of one video, in record form."""
  keys = np.flatnonzero(cached.kinds == KEYFRAME)
  return {"video": video, "kinds": cached.kinds, "times": cached.times,
          "duration_s": np.float32(cached.duration_s),
          "keyframes": np.array([cached.rgb[t] for t in keys], dtype=object),
          "mv": np.array(cached.mv, dtype=object),
          "residual": np.array(cached.residual, dtype=object)}


def pair_examples(video: str, cached: CachedVideo) -> Iterator[dict]:
  """Stage-1 pairs: each Δ-frame with the RGB of the position before it and its own RGB."""
  d = 0
  for t in range(1, len(cached.kinds)):
    if cached.kinds[t] != DELTA:
      continue
    yield {"video": video, "time": np.float32(cached.times[t]), "reference": cached.rgb[t - 1],
           "target": cached.rgb[t], "mv": cached.mv[d], "residual": cached.residual[d]}
    d += 1


@dataclasses.dataclass(frozen=True)
class RecordKind:
  """One TFDS dataset a build writes (``shard_writer``): its name, folder version and features."""
  name: str
  description: str
  features: dict
  version: str = "1.0.0"


BUILDERS = {
    "pretrain": RecordKind("cope_pretrain", "Stage-1 frame pairs: reference and target RGB, "
                           "motion field, residual.",
                           {"video": tfds.features.Text(), "time": np.float32,
                            "reference": _BYTES, "target": _BYTES, "mv": _BYTES,
                            "residual": _BYTES}),
    "finetune": RecordKind("cope_finetune", "Stage-2 sequences: a video's keyframes and "
                           "Δ-frames in temporal order + conversations.",
                           {**SEQUENCE_FEATURES, "conversations": tfds.features.Text()}),
    "eval": RecordKind("cope_eval", "Multiple-choice questions with their video's sequence.",
                       {**SEQUENCE_FEATURES, "id": tfds.features.Text(),
                        "question": tfds.features.Text(), "options": tfds.features.Text(),
                        "answer": tfds.features.Text(), "family": tfds.features.Text()}),
}


def records(stage: str, video: str, cached: CachedVideo, item) -> Iterator[dict]:
  """The records of one video for ``stage`` (``item`` is its sources.VideoItem)."""
  if stage == "pretrain":
    yield from pair_examples(video, cached)
  elif stage == "finetune":
    yield {**sequence_example(video, cached), "conversations": json.dumps(item.conversations)}
  else:
    seq = sequence_example(video, cached)
    for q in item.questions:
      yield {**seq, "id": q["id"], "question": q["question"], "options": json.dumps(q["options"]),
             "answer": q["answer"], "family": q.get("family", "")}
