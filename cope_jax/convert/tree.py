"""Helpers to build parameter trees from named tensors, with clear errors."""

from __future__ import annotations

import difflib
from typing import Callable

import numpy as np

from cope_jax.convert.safetensors_io import CheckpointError


class TensorSource:
  """Named tensors of a checkpoint, read under a key prefix."""

  def __init__(self, tensors: dict[str, np.ndarray], what: str):
    self.tensors, self.what = tensors, what

  def get(self, key: str, shape: tuple[int, ...]) -> np.ndarray:
    if key not in self.tensors:
      near = difflib.get_close_matches(key, list(self.tensors), n=3, cutoff=0.6)
      raise CheckpointError(f"{self.what}: missing tensor {key!r}"
                            + (f" (similar: {near})" if near else ""))
    t = self.tensors[key]
    if tuple(t.shape) != tuple(shape):
      raise CheckpointError(f"{self.what}: tensor {key!r} has shape {tuple(t.shape)}, the config "
                            f"expects {tuple(shape)}")
    if not np.issubdtype(np.dtype(t.dtype), np.floating) and t.dtype.name != "bfloat16":
      raise CheckpointError(f"{self.what}: tensor {key!r} has dtype {t.dtype}, expected floats")
    return np.asarray(t, np.float32)

  def linear(self, prefix: str, n_in: int, n_out: int, bias: bool = True) -> dict:
    """A torch Linear (weight (out, in)) as a Flax Dense (kernel (in, out))."""
    out = {"kernel": self.get(f"{prefix}.weight", (n_out, n_in)).T}
    if bias:
      out["bias"] = self.get(f"{prefix}.bias", (n_out,))
    return out


def stack_layers(count: int, layer: Callable[[int], dict]) -> dict:
  """``layer(0)`` … ``layer(count - 1)`` → one tree with a leading layer axis (our scanned
  layout), filled layer by layer: a list of every layer's float32 copy stacked at the end held
  the model twice (about 60 GB for LLaVA-Video-7B's LLM)."""
  def fill(out: dict, tree: dict, i: int) -> None:
    for k, v in tree.items():
      if isinstance(v, dict):
        fill(out.setdefault(k, {}), v, i)
      else:
        if i == 0:  # (the first layer gives every array's shape and dtype)
          out[k] = np.empty((count,) + v.shape, v.dtype)
        out[k][i] = v

  out: dict = {}
  for i in range(count):
    fill(out, layer(i), i)
  return out
