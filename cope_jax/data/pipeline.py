"""Grain pipelines over the ArrayRecord shards, for stage 1 (pairs) and stage 2 (sequences).

Both: a ``MapDataset`` of example indices, shuffled with a seed (a new order every epoch, the
same on every process), optionally grouped by length (stage 2), each process's block of every
global batch (so hosts see disjoint parts whose union is the dataset: ``batch_order.py``),
decoded and batched, then an ``IterDataset`` with optional worker processes. Iterator state
(``get_state``/``set_state``) restores exactly; the same seed gives the same batches.

Every batch has ``example_index`` (B,) int64: which examples it holds (logging, tests).

Stage-1 batch: ``reference``, ``target`` (B, S, S, 3) float32 SigLIP-normalised frames, ``mv``
(B, h, w, 2) float32, ``residual`` (B, h, w, 3) int16.

Stage-2 batch (one example per conversation of a video):
- ``input_ids`` (B, L) int32 — ChatML text with one ``IMAGE_TOKEN_ID`` where the visual tokens
  go, padded with <|endoftext|>; ``text_mask`` (B, L) bool; ``loss_mask`` (B, L) bool (assistant
  answers and their <|im_end|>). L is one of ``length_buckets``: the smallest that holds the text
  plus the visual tokens of ``max_keyframes`` keyframes and ``max_delta_frames`` Δ-frames, so
  the model can splice them in and keep length L. Batches of different L are the only source of
  recompilation, bounded by the number of buckets.
- ``pixels`` (B, K, S, S, 3) float32, ``mv`` (B, P, h, w, 2) float32, ``residual`` (B, P, h, w, 3)
  int16, ``kinds`` (B, T) int32 (0 keyframe, 1 Δ-frame, −1 padding; temporal order),
  ``times`` (B, T) float32; frames beyond a video's own count are zero.
"""

from __future__ import annotations

import dataclasses
import json
import os
import warnings

import grain
import numpy as np
from PIL import Image

from cope_jax.codec.sampling import DELTA_TOKENS, KEYFRAME_TOKENS
from cope_jax.data import storage
from cope_jax.data.batch_order import LengthGrouped, ProcessPart
from cope_jax.data.tokenizer import IMAGE_PLACEHOLDER, encode_conversation, time_instruction


def siglip_pixels(rgb: np.ndarray, size: int) -> np.ndarray:
  """SigLIP preprocessing: bicubic resize (PIL, as Hugging Face does), x/255, mean = std = 0.5."""
  if rgb.shape[:2] != (size, size):
    rgb = np.asarray(Image.fromarray(rgb).resize((size, size), Image.BICUBIC))
  return (rgb.astype(np.float32) / 255.0 - 0.5) / 0.5


def with_video_prompt(turns: list, duration_s: float, times) -> list:
  """Puts ``<image>`` and LLaVA-Video's time instruction at the start of the first user turn, as
  LLaVA-NeXT's training code does: its own text follows as it is, ``<image>`` taken out (so
  LLaVA-Video-178K's ``"<image>\nQ"`` gives ``"{instruction}\n\nQ"``, as LLaVA-Video was trained).

  An ``<image>`` in a later user turn is dropped (with the line breaks that start the turn after
  it, where it starts the turn): one video has one place for its visual tokens (a second one
  became an image-token id that nothing filled)."""
  turns = [(role, text.replace(IMAGE_PLACEHOLDER, "").lstrip("\n")
            if i and role == "user" and IMAGE_PLACEHOLDER in text else text)
           for i, (role, text) in enumerate(turns)]
  role, text = turns[0]
  turns[0] = (role, f"{IMAGE_PLACEHOLDER}\n{time_instruction(duration_s, times)}\n"
                    f"{text.replace(IMAGE_PLACEHOLDER, '')}")
  return turns


@dataclasses.dataclass(frozen=True)
class PipelineConfig:
  shards: str                 # a shard folder: …/cope_pretrain/1.0.0 or …/cope_finetune/1.0.0
  split: str = "train"
  batch_size: int = 8
  seed: int = 0
  image_size: int = 384       # vision encoder input side
  num_epochs: int | None = None  # None: repeat forever
  shuffle: bool = True
  drop_remainder: bool = True
  shard_index: int = 0        # this process (jax.process_index())
  shard_count: int = 1        # all processes (jax.process_count())
  worker_count: int = 0       # decoding processes (0: in the main process)
  read_threads: int = 8       # decoding threads per process (at most prefetch_batches run)
  prefetch_batches: int = 8   # batches decoded ahead per process (Grain's default is 500)
  # stage 2 only
  tokenizer: str = ""         # a tokenizer.json
  max_keyframes: int = 1
  max_delta_frames: int = 7
  length_buckets: tuple[int, ...] = (512, 1024, 2048, 4096, 8192, 16384, 32768)
  group_by_length: int = 0    # > 0: batches of similar length, sorted within this many batches
  keyframe_tokens: int = KEYFRAME_TOKENS  # LLM positions per keyframe / Δ-frame (model config)
  delta_tokens: int = DELTA_TOKENS


def _source(cfg: PipelineConfig):
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  return tfds.builder_from_directory(cfg.shards).as_data_source(cfg.split)


def _finish(n: int, cfg: PipelineConfig, decode, batch_fn,
            sizes: np.ndarray | None = None) -> grain.IterDataset:
  """Example indices 0 … n − 1 → shuffled (the same global order on every process), grouped by
  ``sizes`` when ``cfg.group_by_length``, this process's part of each global batch, decoded,
  batched."""
  ds = grain.MapDataset.range(n)
  if cfg.shuffle:
    ds = ds.shuffle(seed=cfg.seed)
  ds = ds.repeat(cfg.num_epochs)
  if cfg.group_by_length and sizes is not None:
    ds = LengthGrouped(ds, sizes, cfg.batch_size * cfg.shard_count, cfg.group_by_length,
                       cfg.seed)
  if cfg.shard_count > 1:
    # Every process must run as many steps on batches of one size (a collective waits for all):
    # a finite pass's last, partial global batch is dropped whole, not split unevenly (one
    # process's full block, another's short one or none).
    whole = cfg.batch_size * cfg.shard_count
    if cfg.num_epochs is not None and len(ds) % whole:
      if not cfg.drop_remainder:
        raise ValueError(f"{len(ds)} examples are not a whole number of global batches of "
                         f"{whole} ({cfg.shard_count} processes × {cfg.batch_size}): the last "
                         "one cannot be shared evenly; set drop_remainder, or a batch size "
                         "that divides the examples")
      ds = ds[:len(ds) // whole * whole]
    ds = ProcessPart(ds, cfg.batch_size, cfg.shard_index, cfg.shard_count)
  ds = ds.map(decode).batch(cfg.batch_size, drop_remainder=cfg.drop_remainder, batch_fn=batch_fn)
  # Batches are what is prefetched here: Grain's default of 500 elements ahead would decode
  # hundreds of batches no step may ever use, on the cores the training step needs.
  ids = ds.to_iter_dataset(grain.ReadOptions(num_threads=cfg.read_threads,
                                             prefetch_buffer_size=cfg.prefetch_batches))
  if cfg.worker_count > 0:
    from absl import flags  # pylint: disable=import-outside-toplevel
    if not flags.FLAGS.is_parsed():  # Grain's workers read absl flags; use their defaults
      flags.FLAGS.mark_as_parsed()
    ids = ids.mp_prefetch(grain.MultiprocessingOptions(num_workers=cfg.worker_count))
  return ids


# ---------------------------------------------------------------- stage 1: frame pairs

@dataclasses.dataclass
class _DecodePair:
  source: object
  image_size: int

  def __call__(self, index: int) -> dict:
    r = self.source[int(index)]
    return {"example_index": np.int64(index),
            "reference": siglip_pixels(storage.decode_png(r["reference"]), self.image_size),
            "target": siglip_pixels(storage.decode_png(r["target"]), self.image_size),
            "mv": storage.decode_mv(r["mv"]), "residual": storage.decode_residual(r["residual"])}


def _stack(examples) -> dict:
  return {k: np.stack([e[k] for e in examples]) for k in examples[0]}


def pretrain_dataset(cfg: PipelineConfig) -> grain.IterDataset:
  source = _source(cfg)
  return _finish(len(source), cfg, _DecodePair(source, cfg.image_size), _stack)


# ---------------------------------------------------------------- stage 2: sequences

# Written by the stage-2 build next to the shards: per split, [video, conversations, keyframes,
# Δ-frames, [characters of each conversation]] for each record in order.
SEQUENCE_INDEX = "sequence_index.json"


def read_sequence_index(shards: str, split: str) -> list | None:
  try:
    with open(os.path.join(shards, SEQUENCE_INDEX)) as f:
      return json.load(f)[split]
  except (OSError, KeyError, ValueError):
    return None


def _video_name(record) -> str:
  name = record["video"]
  return name.decode() if isinstance(name, bytes) else name


def example_characters(conversation, duration_s: float, times) -> int:
  """The length-grouping size of one training example: the characters of its conversation
  ([(role, text), …]) and of its video's time instruction, which lists every sampled position's
  time (about one per second: a 3-minute video's is over 1 000 tokens, more than most
  conversations)."""
  return sum(len(text) for _, text in conversation) + len(time_instruction(duration_s, times))


def _sequence_rows(source, shards: str, split: str) -> list:
  """The sequence index's rows if they match the records (checked at the first and last), else
  the same rows (video, conversations, —, —, sizes) decoded from every record — slow at scale, as
  each holds its frames."""
  rows = read_sequence_index(shards, split)
  ends = (0, len(rows) - 1) if rows else ()
  if rows is not None and len(rows) == len(source) and all(
      _video_name(source[i]) == rows[i][0] for i in ends):
    return rows
  decoded = []
  for i in range(len(source)):
    r = source[i]
    conversations = json.loads(r["conversations"])
    times = r["times"].tolist()
    decoded.append([_video_name(r), len(conversations), None, None,
                    [example_characters(c, float(r["duration_s"]), times)
                     for c in conversations]])
  return decoded


def _pairs(rows: list) -> np.ndarray:
  pairs = [(i, j) for i, row in enumerate(rows) for j in range(row[1])]
  return np.asarray(pairs, np.int64).reshape(-1, 2)


def _sizes(source, pairs: np.ndarray, rows: list) -> np.ndarray:
  if all(len(row) > 4 for row in rows):
    per_record = [row[4] for row in rows]
  else:  # an index written before it held sizes
    per_record = [[example_characters(c, float(source[i]["duration_s"]),
                                      source[i]["times"].tolist())
                   for c in json.loads(source[i]["conversations"])] for i in range(len(source))]
  return np.array([per_record[r][c] for r, c in pairs], np.int64)


def conversation_index(source, shards: str = "", split: str = "train") -> np.ndarray:
  """(N, 2) int64 (record, conversation) pairs: one training example per conversation."""
  return _pairs(_sequence_rows(source, shards, split))


def conversation_sizes(source, pairs: np.ndarray, shards: str = "",
                       split: str = "train") -> np.ndarray:
  """Characters of each (record, conversation) pair's text, its time instruction included —
  what length grouping sorts by (``example_characters``)."""
  return _sizes(source, pairs, _sequence_rows(source, shards, split))


@dataclasses.dataclass
class _DecodeSequence:
  source: object
  pairs: np.ndarray
  cfg: PipelineConfig

  def __post_init__(self):
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    self.tok = Tokenizer.from_file(self.cfg.tokenizer)
    self.pad_id = self.tok.token_to_id("<|endoftext|>")

  def __call__(self, index: int) -> dict:
    record, conv = self.pairs[int(index)]
    r = self.source[int(record)]
    cfg = self.cfg
    kinds, times = r["kinds"], r["times"]
    turns = with_video_prompt(json.loads(r["conversations"])[conv], float(r["duration_s"]),
                              times.tolist())
    enc = encode_conversation(self.tok, turns)
    keyframes = [siglip_pixels(storage.decode_png(b), cfg.image_size) for b in r["keyframes"]]
    mv = [storage.decode_mv(b) for b in r["mv"]]
    residual = [storage.decode_residual(b) for b in r["residual"]]
    if len(keyframes) > cfg.max_keyframes or len(mv) > cfg.max_delta_frames:
      raise ValueError(f"{r['video']!r}: {len(keyframes)} keyframes / {len(mv)} Δ-frames exceed "
                       f"max_keyframes={cfg.max_keyframes} / max_delta_frames="
                       f"{cfg.max_delta_frames}")
    t_max = cfg.max_keyframes + cfg.max_delta_frames
    return {"example_index": np.int64(index), "ids": enc.ids, "loss": enc.loss_mask,
            "pixels": _pad(np.stack(keyframes), cfg.max_keyframes),
            "mv": _pad(np.stack(mv), cfg.max_delta_frames) if mv else None,
            "residual": _pad(np.stack(residual), cfg.max_delta_frames) if residual else None,
            "kinds": np.pad(kinds.astype(np.int32), (0, t_max - len(kinds)), constant_values=-1),
            "times": np.pad(times, (0, t_max - len(times)))}


def _pad(a: np.ndarray, n: int) -> np.ndarray:
  return np.concatenate([a, np.zeros((n - len(a),) + a.shape[1:], a.dtype)]) if len(a) < n else a


def visual_tokens(cfg: PipelineConfig) -> int:
  return cfg.max_keyframes * cfg.keyframe_tokens + cfg.max_delta_frames * cfg.delta_tokens


@dataclasses.dataclass
class _BatchSequences:
  cfg: PipelineConfig
  pad_id: int
  delta_shape: tuple

  def __call__(self, examples) -> dict:
    extra = visual_tokens(self.cfg) - 1  # the placeholder becomes the visual tokens
    need = max(len(e["ids"]) for e in examples) + extra
    length = next((b for b in self.cfg.length_buckets if b >= need), self.cfg.length_buckets[-1])
    text = length - extra  # longer texts are truncated (like model_max_length)
    ids = np.full((len(examples), length), self.pad_id, np.int32)
    text_mask = np.zeros((len(examples), length), bool)
    loss = np.zeros((len(examples), length), bool)
    for b, e in enumerate(examples):
      n = min(len(e["ids"]), text)
      ids[b, :n], text_mask[b, :n], loss[b, :n] = e["ids"][:n], True, e["loss"][:n]
      if e["loss"][n:].any():
        # One message per setting (Python shows each distinct warning once), not per example.
        warnings.warn(f"answer tokens cut off: a conversation is longer than {text} text tokens "
                      f"(the largest of length_buckets={self.cfg.length_buckets} minus the "
                      f"{extra + 1} visual tokens, plus the placeholder they replace); raise the "
                      "largest bucket", stacklevel=2)
    p = self.cfg.max_delta_frames
    zeros_mv = np.zeros((p,) + self.delta_shape + (2,), np.float32)
    zeros_res = np.zeros((p,) + self.delta_shape + (3,), np.int16)
    return {"example_index": np.array([e["example_index"] for e in examples]),
            "input_ids": ids, "text_mask": text_mask, "loss_mask": loss,
            "pixels": np.stack([e["pixels"] for e in examples]),
            "mv": np.stack([e["mv"] if e["mv"] is not None else zeros_mv for e in examples]),
            "residual": np.stack([e["residual"] if e["residual"] is not None else zeros_res
                                  for e in examples]),
            "kinds": np.stack([e["kinds"] for e in examples]),
            "times": np.stack([e["times"] for e in examples])}


def pad_to_length(batch: dict, length: int, pad_id: int) -> dict:
  """A stage-2 batch padded to a longer ``length`` (what ``_BatchSequences`` makes at that
  bucket): hosts that picked different buckets for their parts of a global batch agree on one."""
  extra = length - batch["input_ids"].shape[1]
  if extra < 0:
    raise ValueError(f"cannot pad a batch of length {batch['input_ids'].shape[1]} to {length}")
  widths = ((0, 0), (0, extra))
  return {**batch, "input_ids": np.pad(batch["input_ids"], widths, constant_values=pad_id),
          "text_mask": np.pad(batch["text_mask"], widths),
          "loss_mask": np.pad(batch["loss_mask"], widths)}


def finetune_dataset(cfg: PipelineConfig) -> grain.IterDataset:
  if not cfg.tokenizer:
    raise ValueError("finetune_dataset needs cfg.tokenizer (a tokenizer.json)")
  source = _source(cfg)
  rows = _sequence_rows(source, cfg.shards, cfg.split)  # read once for pairs and sizes
  pairs = _pairs(rows)
  decode = _DecodeSequence(source, pairs, cfg)
  first = source[0]
  delta_shape = (storage.decode_mv(first["mv"][0]).shape[:2] if len(first["mv"])
                 else storage.decode_png(first["keyframes"][0]).shape[:2])
  sizes = _sizes(source, pairs, rows) if cfg.group_by_length else None
  return _finish(len(pairs), cfg, decode, _BatchSequences(cfg, decode.pad_id, delta_shape), sizes)


__all__ = ["PipelineConfig", "pretrain_dataset", "finetune_dataset", "siglip_pixels",
           "with_video_prompt", "visual_tokens", "conversation_index", "conversation_sizes",
           "pad_to_length"]
