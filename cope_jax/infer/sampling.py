"""Sampling a next token: the options a generation is asked with, and greedy or temperature +
nucleus (top-p) sampling inside the jitted steps."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  max_new_tokens: int = 64
  temperature: float = 0.0   # 0: greedy
  top_p: float = 1.0
  seed: int = 0

  def __post_init__(self):
    if self.max_new_tokens < 1:
      raise ValueError(f"max_new_tokens must be at least 1, got {self.max_new_tokens}")
    # (finite as a float32, which the logits are divided in: 1e308 became inf there)
    if not 0 <= self.temperature <= float(np.finfo(np.float32).max):
      raise ValueError(f"temperature must be a finite number >= 0 (0: greedy), got "
                       f"{self.temperature}")
    if not 0 < self.top_p <= 1:
      raise ValueError(f"top_p must be in (0, 1], got {self.top_p}")
    if not 0 <= self.seed < 2**32:
      raise ValueError(f"seed must be from 0 to 2**32 - 1, got {self.seed}")


def is_greedy(temperature: float) -> bool:
  """0, or below float32's normals, which XLA:CPU flushes to 0: greedy either way."""
  return temperature < np.finfo(np.float32).tiny


def sample(logits: jax.Array, key: jax.Array, temperature: float | jax.Array,
           top_p: float | jax.Array, greedy: bool | None = None) -> jax.Array:
  """(B, V) logits → (B,) token ids: greedy, or temperature + nucleus (top-p) sampling.
  ``greedy``: given where ``temperature`` is traced (the jitted steps take it as a value, so
  that another temperature or top-p compiles nothing), else decided from it."""
  if is_greedy(temperature) if greedy is None else greedy:
    return jnp.argmax(logits, axis=-1)
  # (the best logit made 0 first: a tiny temperature then sends the rest to -inf, not the best
  # to +inf, whose softmax is NaN and whose sample was token 0)
  logits = (logits - logits.max(axis=-1, keepdims=True)) / temperature
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  keep = cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p  # always keeps the best
  sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
  choice = jax.random.categorical(key, sorted_logits, axis=-1)
  return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]
