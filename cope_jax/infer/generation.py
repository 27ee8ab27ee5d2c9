"""Jit-compiled generation with a KV cache: prefill once, then one token per step.

Prompts (text with the visual tokens spliced in) are padded to a length bucket, so a new prompt
length reuses a compiled prefill; the cache holds the bucket plus ``max_new_tokens`` slots, so
the decode step compiles once per bucket. Rows of a batch generate independently (their own RoPE
positions; padding slots are invalid keys) and stop at <|im_end|>. ``Chat`` keeps the cache
between turns (paper appendix I): a follow-up question is appended, not re-encoded.
"""

from __future__ import annotations

import dataclasses
import time

import jax
import jax.numpy as jnp
import numpy as np

from cope_jax.models.llava import VideoLM, VideoLMConfig


@dataclasses.dataclass(frozen=True)
class SamplingOptions:
  max_new_tokens: int = 64
  temperature: float = 0.0   # 0: greedy
  top_p: float = 1.0
  seed: int = 0


def sample(logits: jax.Array, key: jax.Array, temperature: float, top_p: float) -> jax.Array:
  """(B, V) logits → (B,) token ids: greedy, or temperature + nucleus (top-p) sampling."""
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1)
  logits = logits / temperature
  order = jnp.argsort(-logits, axis=-1)
  sorted_logits = jnp.take_along_axis(logits, order, axis=-1)
  cumulative = jnp.cumsum(jax.nn.softmax(sorted_logits, axis=-1), axis=-1)
  keep = cumulative - jax.nn.softmax(sorted_logits, axis=-1) < top_p  # always keeps the best
  sorted_logits = jnp.where(keep, sorted_logits, -jnp.inf)
  choice = jax.random.categorical(key, sorted_logits, axis=-1)
  return jnp.take_along_axis(order, choice[:, None], axis=-1)[:, 0]


class Generator:
  """Generation for one model; compiled functions are cached per (bucket, batch) shape."""

  def __init__(self, cfg: VideoLMConfig, params: dict, eos_id: int, pad_id: int):
    self.cfg, self.params, self.eos_id, self.pad_id = cfg, params, eos_id, pad_id
    self.model = VideoLM(cfg, decode=True)
    self._prefill = jax.jit(self._prefill_impl, static_argnames=("zero_delta",),
                            donate_argnums=(0,))
    self._continue = jax.jit(self._continue_impl, donate_argnums=(0,))
    self._sample = jax.jit(sample, static_argnames=("temperature", "top_p"))
    self._zero_cache = {}

  def empty_cache(self, batch: int, length: int):
    # Tracing the model for the cache's shapes costs tens of milliseconds — more than a tiny
    # model's whole prefill — so it is done once per shape, outside the TTFT clock's hot path.
    if (batch, length) not in self._zero_cache:
      ids = jnp.zeros((batch, length), jnp.int32)
      shapes = jax.eval_shape(lambda: self.model.init(
          jax.random.key(0), ids, ids, jnp.ones_like(ids, bool), method=VideoLM.continue_text))
      self._zero_cache[(batch, length)] = jax.jit(lambda: jax.tree_util.tree_map(
          lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"]))
    return self._zero_cache[(batch, length)]()

  def _prefill_impl(self, cache, inputs, zero_delta=False):
    (logits, aux), mutated = self.model.apply({"params": self.params, "cache": cache}, *inputs,
                                              zero_delta=zero_delta, last_only=True,
                                              mutable=["cache"])
    next_position = jnp.take_along_axis(aux["positions"], aux["last"][:, None], axis=1)[:, 0] + 1
    return mutated["cache"], logits[:, 0], next_position

  def _continue_impl(self, cache, ids, positions, valid):
    (logits, _), mutated = self.model.apply({"params": self.params, "cache": cache}, ids,
                                            positions, valid, method=VideoLM.continue_text,
                                            mutable=["cache"])
    last = jnp.max(jnp.where(valid, jnp.arange(ids.shape[1]), 0), axis=1)
    next_logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    return mutated["cache"], next_logits, positions[jnp.arange(ids.shape[0]), last] + 1

  def generate(self, inputs: tuple, options: SamplingOptions = SamplingOptions(),
               zero_delta: bool = False, reserve: int = 0, start: float | None = None):
    """``inputs`` = (input_ids, text_mask, pixels, mv, residual, kinds), batch-major, the text
    padded to a bucket. ``reserve`` adds cache slots for follow-up turns; ``start`` is when the
    clock for ``ttft_s`` / ``e2e_s`` started (default: now). Returns (token lists, timings, a
    Chat for follow-ups)."""
    b, length = inputs[0].shape
    start = time.perf_counter() if start is None else start
    cache = self.empty_cache(b, length + options.max_new_tokens + reserve)
    cache, logits, position = self._prefill(cache, inputs, zero_delta=zero_delta)
    return self._decode_loop(cache, logits, position, options, start)

  def _decode_loop(self, cache, logits, position, options, start):
    key = jax.random.key(options.seed)
    b = logits.shape[0]
    out, done = [[] for _ in range(b)], np.zeros(b, bool)
    ttft = None
    for i in range(options.max_new_tokens):
      key, sub = jax.random.split(key)
      token = self._sample(logits, sub, options.temperature, options.top_p)
      token_host = np.asarray(token)
      if ttft is None:
        ttft = time.perf_counter() - start
      for r in range(b):
        if not done[r]:
          out[r].append(int(token_host[r]))
          done[r] = token_host[r] == self.eos_id
      if done.all() or i == options.max_new_tokens - 1:
        break
      cache, logits, position = self._continue(cache, token[:, None].astype(jnp.int32),
                                               position[:, None], jnp.ones((b, 1), bool))
    timings = {"ttft_s": ttft, "e2e_s": time.perf_counter() - start,
               "new_tokens": max(len(o) for o in out)}
    return out, timings, Chat(self, cache, position, done)

  def follow_up(self, chat: "Chat", ids: np.ndarray, options: SamplingOptions = SamplingOptions()):
    """Appends ``ids`` (B, L) text tokens to a conversation's cache and generates again."""
    start = time.perf_counter()
    b, length = ids.shape
    if chat.cache is None:
      raise ValueError("this Chat was continued already: use the Chat that call returned")
    attention = chat.cache["llm"]["layers"]["self_attn"]  # stacked over layers
    index, capacity = int(attention["index"].max()), attention["key"].shape[2]
    if index + length + options.max_new_tokens > capacity:
      raise ValueError(f"the conversation needs {index + length + options.max_new_tokens} cache "
                       f"slots, it has {capacity}: pass a larger reserve= to generate()")
    positions = chat.position[:, None] + jnp.arange(length)[None, :]
    cache, chat.cache = chat.cache, None  # donated to the step below
    cache, logits, position = self._continue(cache, jnp.asarray(ids, jnp.int32), positions,
                                             jnp.ones((b, length), bool))
    return self._decode_loop(cache, logits, position, options, start)


@dataclasses.dataclass
class Chat:
  """The state of a conversation after an answer: its cache and next RoPE positions."""
  generator: Generator
  cache: dict
  position: jax.Array
  done: np.ndarray
