"""``python -m cope_jax.data build``: annotations + videos → ArrayRecord shards + report.json."""

from __future__ import annotations

import contextlib
import io
import os
import shutil

import numpy as np

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import DELTA, KEYFRAME
from cope_jax.data import primitive_cache, sources
from cope_jax.data.builders import BUILDERS, records
from cope_jax.data.parallel import check_workers
from cope_jax.data.pipeline import SEQUENCE_INDEX, conversation_characters
from cope_jax.data.primitive_cache import ExtractSettings
from cope_jax.json_files import write_json


def check_limit(limit: int | None) -> None:
  if limit is not None and limit < 1:
    raise ConfigError(f"--limit must be >= 1, got {limit}")


def load_items(source: str, out: str, annotations: str | None, videos: str | None,
               synth_videos: int, seed: int, size: int, workers: int | None,
               progress: bool, conversations: str = "question") -> list[sources.VideoItem]:
  """The videos of ``source`` with their conversations and questions. Bad annotations (missing,
  a folder, unreadable, malformed, empty) or a ``videos`` that is not a folder fail here, before
  anything is written under ``out``."""
  if source == "llava_video":
    if not annotations or not videos:
      raise ConfigError("--source llava_video needs --annotations FILE.json and --videos DIR")
    items = sources.read_llava_video(annotations, videos)
  elif source == "mcq":
    if not annotations:
      raise ConfigError("--source mcq needs --annotations FILE.jsonl")
    items = sources.read_mcq(annotations, conversations, seed)
  elif source == "synthetic":
    from cope_jax.data import synthetic  # pylint: disable=import-outside-toplevel
    if not annotations:
      folder = os.path.join(out, "synthetic")
      synthetic.generate(folder, synth_videos, seed=seed, size=size, workers=workers,
                         progress=progress)
      annotations = os.path.join(folder, "questions.jsonl")
    items = sources.read_mcq(annotations, conversations, seed)
  else:
    raise ConfigError(f"unknown source {source!r}")
  if not items:
    raise ConfigError(f"{annotations}: no " + ("entries" if source == "llava_video" else
                                               "questions"))
  return items


def shard_dir(out: str, stage: str) -> str:
  """Where TFDS puts the shards of ``stage`` (cope_<stage>/1.0.0)."""
  builder = BUILDERS[stage]
  return os.path.join(out, builder.name, str(builder.VERSION))


def build(stage: str, items: list[sources.VideoItem], out: str, settings: ExtractSettings,
          workers: int | None = None, limit: int | None = None, progress: bool = True) -> dict:
  """Extracts every video (in parallel, resumable) and writes the shards and report.json."""
  if stage not in BUILDERS:
    raise ConfigError(f"unknown stage {stage!r} (pretrain, finetune, eval)")
  check_workers(workers)
  check_limit(limit)
  if limit is not None:
    items = items[:limit]
  done, skipped = primitive_cache.extract_all([it.video for it in items],
                                              os.path.join(out, "cache"), settings, workers,
                                              progress)
  kept = [(i, it) for i, it in enumerate(items) if it.video in done]
  splits = tuple(sorted({it.split for _, it in kept})) or ("train",)
  video_seconds, conformant_bytes, frames = 0.0, 0, {}
  for video in {it.video for _, it in kept}:
    cached = primitive_cache.load(done[video])
    video_seconds += cached.duration_s
    conformant_bytes += cached.conformant_bytes
    frames[video] = (int(np.sum(cached.kinds == KEYFRAME)), int(np.sum(cached.kinds == DELTA)))

  def examples(split):
    for i, it in kept:
      if it.split != split:
        continue
      cached = primitive_cache.load(done[it.video])
      for j, rec in enumerate(records(stage, it.video, cached, it)):
        yield f"{i:08d}-{j:04d}", rec

  # TFDS keeps a dataset folder that exists; the extracted primitives are cached, so a rebuild
  # (other videos, splits or sampling) rewrites the shards rather than reporting stale ones. The
  # previous shards are set aside until the new ones are written, and put back if none are.
  directory = shard_dir(out, stage)
  previous = directory + ".previous"
  if os.path.exists(previous) and not os.path.exists(directory):  # a build killed before: its
    os.replace(previous, directory)                                  # shards were set aside
  shutil.rmtree(previous, ignore_errors=True)
  if os.path.exists(directory):
    os.replace(directory, previous)
  builder = BUILDERS[stage](examples=examples, splits=splits, data_dir=out)
  try:
    if progress:
      builder.download_and_prepare()
    else:
      import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
      tfds.disable_progress_bar()
      with contextlib.redirect_stdout(io.StringIO()):  # TFDS prints its own banner
        builder.download_and_prepare()
    if stage == "finetune":  # read at start instead of decoding every record (frames included)
      write_json(os.path.join(directory, SEQUENCE_INDEX),
                 {s: [[it.video, len(it.conversations), *frames[it.video],
                       [conversation_characters(c) for c in it.conversations]]
                      for _, it in kept if it.split == s] for s in splits}, indent=None)
  except BaseException as e:  # (Ctrl-C included) the previous shards go back in place
    shutil.rmtree(directory, ignore_errors=True)
    if os.path.exists(previous):
      os.replace(previous, directory)
    for empty in (os.path.dirname(directory), os.path.join(out, "downloads", "extracted"),
                  os.path.join(out, "downloads")):
      if os.path.isdir(empty) and not os.listdir(empty):  # (TFDS's, for shards never written)
        os.rmdir(empty)
    if not (isinstance(e, AssertionError) and "No examples" in str(e)):
      raise
    first = f", the first: {skipped[0]['video']}: {skipped[0]['reason']}" if skipped else ""
    raise ConfigError(
        f"no {stage} record to write from {len(kept)} readable of {len(items)} videos "
        f"({len(skipped)} skipped{first}; TFDS: {e}); each {stage} record needs "
        + {"pretrain": "a Δ-frame", "finetune": "a conversation",
           "eval": "a question"}[stage] + "; the previous shards, if any, are kept") from None
  shutil.rmtree(previous, ignore_errors=True)
  shard_bytes = sum(os.path.getsize(os.path.join(directory, f)) for f in os.listdir(directory)
                    if ".array_record" in f)
  report = {
      "stage": stage, "written": len({it.video for _, it in kept}), "skipped": skipped,
      "records": {s: builder.info.splits[s].num_examples for s in splits},
      "bytes": shard_bytes, "video_seconds": round(video_seconds, 3),
      "bytes_per_video_second": shard_bytes / video_seconds if video_seconds else None,
      "reencoded_mpeg4_bytes": conformant_bytes,
      "ratio_to_reencoded_mpeg4": shard_bytes / conformant_bytes if conformant_bytes else None,
      "shards": directory, "size": settings.size,
      "sampling": settings.sampling.__dict__,
  }
  write_json(os.path.join(out, "report.json"), report)
  # (report.json is the last build's; training checks a stage's shards against its own)
  write_json(os.path.join(out, f"report_{stage}.json"), report)
  return report
