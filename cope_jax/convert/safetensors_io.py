"""Reading safetensors checkpoints with numpy only (never pickle), bf16 included.

The format is an 8-byte little-endian header size, a JSON header (name → dtype, shape, byte
offsets) and the raw tensor bytes; sharded checkpoints list their files in
``*.safetensors.index.json``.
"""

from __future__ import annotations

import json
import os
import struct

import ml_dtypes
import numpy as np

_DTYPES = {"F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16,
           "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
           "BOOL": np.bool_}


class CheckpointError(ValueError):
  """A checkpoint that does not fit the expected architecture (message says what and where)."""


def read_file(path: str) -> dict[str, np.ndarray]:
  """All tensors of one .safetensors file (memory-mapped; floats stay in their stored dtype)."""
  with open(path, "rb") as f:
    try:
      (n,) = struct.unpack("<Q", f.read(8))
      if n > os.path.getsize(path) - 8:  # (read first, a Git LFS pointer's text asks for ~2 EB)
        raise CheckpointError(f"{path}: not a safetensors file (its header would be {n} bytes, "
                              "longer than the file; a Git LFS pointer? run `git lfs pull`)")
      header = json.loads(f.read(n))
    except (struct.error, json.JSONDecodeError, UnicodeDecodeError) as e:
      raise CheckpointError(f"{path}: not a safetensors file ({e})") from None
  if not isinstance(header, dict):
    raise CheckpointError(f"{path}: not a safetensors file (its header is not a JSON object)")
  size = os.path.getsize(path) - 8 - n
  data = np.memmap(path, np.uint8, mode="r", offset=8 + n) if size > 0 else np.zeros(0, np.uint8)
  out = {}
  for name, meta in header.items():
    if name == "__metadata__":
      continue
    try:
      dtype, shape, (start, end) = _DTYPES.get(meta["dtype"]), meta["shape"], meta["data_offsets"]
    except (KeyError, TypeError, ValueError):
      raise CheckpointError(f"{path}: tensor {name}'s header entry is malformed") from None
    if dtype is None:
      raise CheckpointError(f"{path}: tensor {name} has unsupported dtype {meta['dtype']}")
    if not 0 <= start <= end <= size or (end - start) != np.dtype(dtype).itemsize * int(
        np.prod(shape, dtype=np.int64)):
      raise CheckpointError(f"{path}: tensor {name} ({meta['dtype']} {shape}) does not fit its "
                            f"bytes {start}–{end} of {size}: the file is cut short or damaged")
    out[name] = data[start:end].view(dtype).reshape(shape)
  return out


def read_checkpoint(directory: str) -> dict[str, np.ndarray]:
  """All tensors of a checkpoint folder: ``model.safetensors`` if there is one (transformers reads
  it before any shard index), else the shards of its index, else every .safetensors file."""
  if os.path.isfile(directory):
    return read_file(directory)
  if os.path.isfile(os.path.join(directory, "model.safetensors")):
    return read_file(os.path.join(directory, "model.safetensors"))
  index = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors.index.json"))
  if len(index) > 1:
    raise CheckpointError(f"{directory}: several shard indexes {index}; keep the model's one")
  if index:
    path = os.path.join(directory, index[0])
    with open(path) as f:
      try:
        files = sorted(set(json.load(f)["weight_map"].values()))
      except (ValueError, KeyError, TypeError, AttributeError) as e:  # JSON errors are ValueErrors
        raise CheckpointError(f"{path}: not a shard index with a weight_map "
                              f"({type(e).__name__}: {e})") from None
  else:
    files = sorted(f for f in os.listdir(directory) if f.endswith(".safetensors"))
  if not files:
    raise CheckpointError(f"{directory}: no .safetensors files")
  tensors, source = {}, {}
  for name in files:
    for key, tensor in read_file(os.path.join(directory, name)).items():
      if key in tensors:  # e.g. an adapter's file beside the model's, without an index
        raise CheckpointError(f"{directory}: tensor {key!r} is in both {source[key]} and {name}")
      tensors[key], source[key] = tensor, name
  return tensors


def read_config(directory: str) -> dict:
  path = os.path.join(directory, "config.json")
  if not os.path.isdir(directory):
    raise CheckpointError(f"{directory}: " + ("not a folder" if os.path.exists(directory) else
                                              "no such folder") +
                          " (a Hugging Face checkpoint folder: config.json and *.safetensors)")
  if not os.path.exists(path):
    raise CheckpointError(f"{directory}: no config.json")
  with open(path) as f:
    try:
      config = json.load(f)
    except json.JSONDecodeError as e:
      raise CheckpointError(f"{path}: not JSON ({e})") from None
  if not isinstance(config, dict):
    raise CheckpointError(f"{path}: not a JSON object")
  return config


def positive_ints(config: dict, defaults: dict[str, int]) -> dict[str, int]:
  """The config's values of ``defaults``' keys, a missing one taking its default (what the
  transformers config class takes: a config.json may leave a field at it), each a whole number
  >= 1 (CheckpointError naming the key otherwise: a string, a zero)."""
  out = {}
  for key, default in defaults.items():
    value = config.get(key, default)
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
      raise CheckpointError(f"{key} must be a whole number >= 1, got {value!r}")
    out[key] = value
  return out


def check_activation(config: dict, key: str, supported: str, also: tuple[str, ...] = ()) -> None:
  """CheckpointError unless ``config[key]`` is the activation our module computes (absent, the
  Hugging Face default, which is that one; or another name of it, ``also``): another would
  convert cleanly and compute other numbers."""
  value = config.get(key, supported)
  if value != supported and value not in also:
    raise CheckpointError(f"{key}={value!r}: only {supported!r} is supported (what our module "
                          "computes)")
