"""Jit-compiled generation with a KV cache: prefill once, then one token per step.

Prompts (text with the visual tokens spliced in) are padded to a length bucket, so a new prompt
length reuses a compiled prefill as long as the frames have the same shapes (a video with another
number of keyframes or Δ-frames compiles its own: the frames go in unpadded); the cache holds the
bucket plus ``max_new_tokens`` (+ a follow-up ``reserve``) rounded up to 64 slots, so the decode
step compiles once per bucket. The
time JAX spends tracing and compiling during a call (new shapes, and the small eager operations
that compile on first use) is reported as ``compile_s``, apart from ``ttft_s`` and ``e2e_s``
(from ``jax.monitoring``'s compilation events); so is a newly compiled prefill's first run, several
times slower than the next: a call that compiled the prefill runs it again and times the second
run. Rows of a batch generate independently (their
own RoPE positions; padding slots and a finished row's later steps are invalid keys) and stop at
<|im_end|>. ``Chat`` keeps the cache between turns (paper appendix I): a follow-up question is
appended, after the previous answer's last token, not re-encoded.
"""

from __future__ import annotations

import dataclasses
import functools
import time

import jax
import jax.numpy as jnp
import numpy as np

from cope_jax.command_line import raise_pending_stop
from cope_jax.data.tokenizer import IMAGE_TOKEN_ID
from cope_jax.infer import PromptTooLong
from cope_jax.infer.sampling import SamplingOptions, is_greedy, sample
from cope_jax.models.llava import VideoLM, VideoLMConfig


def _sampling(options: SamplingOptions) -> dict:
  """The jitted steps' sampling arguments: greedy or not is static (another program), the
  temperature and top-p are Python floats (another one compiles nothing; an int would)."""
  return {"greedy": is_greedy(options.temperature), "temperature": float(options.temperature),
          "top_p": float(options.top_p)}


CACHE_ROUNDING = 64  # extra cache slots are rounded up to this: other max_new_tokens reuse it
_COMPILE_EVENTS = ("/jax/core/compile/jaxpr_trace_duration",
                   "/jax/core/compile/jaxpr_to_mlir_module_duration",
                   "/jax/core/compile/backend_compile_duration")


class _CompileClock:
  """Seconds JAX has spent tracing, lowering and compiling in this process since the first
  Generator was made (a listener registered then, not at import)."""
  seconds = 0.0
  _listening = False

  @classmethod
  def start(cls) -> None:
    if not cls._listening:
      jax.monitoring.register_event_duration_secs_listener(cls._on_event)
      cls._listening = True

  @classmethod
  def _on_event(cls, name: str, seconds: float, **_) -> None:
    if name in _COMPILE_EVENTS:
      cls.seconds += seconds


@functools.lru_cache(maxsize=64)
def _seed_key(seed: int) -> jax.Array:
  """The sampling key for ``seed``, made once: making it is a dispatch of its own (0.5 ms on a
  CPU, a twentieth of the demo's TTFT)."""
  return jax.random.key(seed)


def _repeat_rows(path, leaf: jax.Array, n: int) -> jax.Array:
  """A KV-cache leaf of batch one repeated to ``n`` rows (the batch axis counts from the end:
  key and value (…, B, L, heads, dim), valid (…, B, L); the write index has none)."""
  axis = {"key": -4, "value": -4, "valid": -2}.get(getattr(path[-1], "key", None))
  return leaf if axis is None else jnp.repeat(leaf, n, axis=axis)


def cache_slots(cache) -> tuple[int, int]:
  """(slots written, capacity) of a KV cache, for scanned layers or a list of them."""
  used, capacity = 0, 0
  for path, leaf in jax.tree_util.tree_leaves_with_path(cache):
    name = getattr(path[-1], "key", None)
    if name == "index":
      used = max(used, int(jnp.max(leaf)))
    elif name == "key":
      capacity = leaf.shape[-3]  # (…, B, L, kv heads, head dim)
  return used, capacity


def prompt_positions(cfg: VideoLMConfig, inputs: tuple) -> np.ndarray:
  """(B,) the RoPE positions each row's prompt takes: its text without the ``<image>``
  placeholder, and the visual tokens of its frames in its place. Padding takes none."""
  ids, mask, kinds = np.asarray(inputs[0]), np.asarray(inputs[1]), np.asarray(inputs[5])
  has_image = (ids == IMAGE_TOKEN_ID).any(axis=1)
  return mask.sum(axis=1) - has_image + np.where(has_image, cfg.visual_positions(kinds), 0)


def _check_room(cfg: VideoLMConfig, inputs: tuple) -> int:
  """The most positions a row's prompt takes; ValueError if a row's prompt needs more slots than
  its padded text has, where the splice would drop the prompt's end (the question, the
  assistant's turn) without a word. A row's visual tokens take the slots of all the batch's
  frames, its padding frames' too (they take no positions): its text after ``<image>`` starts
  there."""
  ids, mask = np.asarray(inputs[0]), np.asarray(inputs[1])
  visual_slots = (inputs[2].shape[1] * cfg.keyframe_tokens
                  + inputs[3].shape[1] * cfg.delta_tokens)
  has_image = (ids == IMAGE_TOKEN_ID).any(axis=1)
  last = np.where(mask.any(axis=1), ids.shape[1] - 1 - np.argmax(mask[:, ::-1], axis=1), -1)
  slots = int(np.max(last + np.where(has_image, visual_slots, 1)))
  if slots > ids.shape[1]:
    raise ValueError(f"a prompt takes {slots} slots (its text and the batch's {visual_slots} "
                     f"visual slots, padding frames' included) but its input_ids hold "
                     f"{ids.shape[1]}: pad them to at least {slots}")
  return int(prompt_positions(cfg, inputs).max())


def _on_device(params: dict) -> dict:
  """The weights on the first device, once: host (numpy) weights would be copied to it on every
  call, and weights restored with a one-device mesh sharding would compile the programs again
  (another input sharding). Weights sharded over several devices stay as they are."""
  device = jax.devices()[0]
  return jax.tree_util.tree_map(
      lambda x: x if isinstance(x, jax.Array) and len(x.sharding.device_set) > 1
      else jax.device_put(x, device), params)


class _Programs:
  """The jitted prefill, decode step and scoring of one model configuration; the parameters are
  an argument."""

  @classmethod
  @functools.lru_cache(maxsize=8)
  def of(cls, cfg: VideoLMConfig) -> "_Programs":
    return cls(cfg)

  def __init__(self, cfg: VideoLMConfig):
    self.model = VideoLM(cfg, decode=True)
    # The same parameters and cache; its calls fill an empty cache (attending within the prompt).
    self.prefill_model = VideoLM(cfg, decode=True, prefill=True)
    # Each step samples its next token in the same jitted call, one dispatch per new token (on
    # the demo's model, 64 new tokens took 51 ms end to end, 60 ms with separate dispatches).
    self.prefill = jax.jit(self._prefill_impl,
                           static_argnames=("zero_delta", "cache_length", "greedy"))
    self.continue_ = jax.jit(self._continue_impl, static_argnames=("greedy",),
                             donate_argnums=(1,))
    self.score = jax.jit(self._score_impl, static_argnames=("zero_delta", "cache_length"))

  def _empty_cache(self, batch: int, length: int):
    """Zeros of the KV cache's shapes, made inside the prefill (traced once per shape)."""
    ids = jnp.zeros((batch, length), jnp.int32)
    shapes = jax.eval_shape(lambda: self.model.init(
        jax.random.key(0), ids, ids, jnp.ones_like(ids, bool), method=VideoLM.continue_text))
    return jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes["cache"])

  def _prefill_impl(self, params, inputs, key, zero_delta, cache_length, greedy, temperature,
                    top_p):
    cache = self._empty_cache(inputs[0].shape[0], cache_length)
    (logits, aux), mutated = self.prefill_model.apply(
        {"params": params, "cache": cache}, *inputs, zero_delta=zero_delta, last_only=True,
        mutable=["cache"])
    next_position = jnp.take_along_axis(aux["positions"], aux["last"][:, None], axis=1)[:, 0] + 1
    key, sub = jax.random.split(key)
    token = sample(logits[:, 0], sub, temperature, top_p, greedy)
    return mutated["cache"], token, next_position, key

  def _continue_impl(self, params, cache, ids, positions, valid, key, greedy, temperature,
                     top_p):
    """Appends ``ids`` (B, L) and samples the next token; a row with no valid token keeps its
    position."""
    (logits, _), mutated = self.model.apply({"params": params, "cache": cache}, ids,
                                            positions, valid, method=VideoLM.continue_text,
                                            mutable=["cache"])
    last = jnp.max(jnp.where(valid, jnp.arange(ids.shape[1]), 0), axis=1)
    next_logits = jnp.take_along_axis(logits, last[:, None, None], axis=1)[:, 0]
    rows = jnp.arange(ids.shape[0])
    next_position = jnp.where(valid.any(axis=1), positions[rows, last] + 1, positions[:, 0])
    key, sub = jax.random.split(key)
    return (mutated["cache"], sample(next_logits, sub, temperature, top_p, greedy),
            next_position, key)

  def _score_impl(self, params, inputs, ids, valid, zero_delta, cache_length):
    """Log-likelihood (N,) of N continuations ``ids`` (N, L) after one prompt (batch of one): the
    prompt's cache, copied N times, serves every continuation."""
    cache = self._empty_cache(1, cache_length)
    (logits, aux), mutated = self.prefill_model.apply(
        {"params": params, "cache": cache}, *inputs, zero_delta=zero_delta, last_only=True,
        mutable=["cache"])
    n = ids.shape[0]
    cache = jax.tree_util.tree_map_with_path(lambda path, x: _repeat_rows(path, x, n),
                                             mutated["cache"])
    start = jnp.take_along_axis(aux["positions"], aux["last"][:, None], axis=1)[:, 0] + 1
    positions = jnp.broadcast_to(start[:, None] + jnp.arange(ids.shape[1]), ids.shape)
    (next_logits, _), _ = self.model.apply({"params": params, "cache": cache}, ids,
                                           positions, valid, method=VideoLM.continue_text,
                                           mutable=["cache"])
    first = jax.nn.log_softmax(logits[0, 0].astype(jnp.float32))[ids[:, 0]]
    rest = jnp.take_along_axis(jax.nn.log_softmax(next_logits[:, :-1].astype(jnp.float32)),
                               ids[:, 1:, None], axis=-1)[..., 0]
    return first + jnp.sum(jnp.where(valid[:, 1:], rest, 0.0), axis=1)


class Generator:
  """Generation for one model. The jitted steps take the parameters as an argument (closed over,
  they would be compiled into each program as constants: a second copy of the weights per
  executable, and a 7B model's would hardly compile), so every Generator of one
  ``VideoLMConfig`` shares them: a shape compiles once per process, whichever checkpoint is
  loaded."""

  def __init__(self, cfg: VideoLMConfig, params: dict, eos_id: int):
    _CompileClock.start()
    self.cfg, self.params, self.eos_id = cfg, _on_device(params), eos_id
    self._programs = _Programs.of(cfg)

  # Each call first raises a SIGTERM's stop that a JAX call lost (command_line.stop_by_signal).
  def _prefill(self, inputs, key, **static):
    raise_pending_stop()
    return self._programs.prefill(self.params, inputs, key, **static)

  def _continue(self, cache, ids, positions, valid, key, **static):
    raise_pending_stop()
    return self._programs.continue_(self.params, cache, ids, positions, valid, key, **static)

  def _score(self, inputs, ids, valid, **static):
    raise_pending_stop()
    return self._programs.score(self.params, inputs, ids, valid, **static)

  def score(self, inputs: tuple, continuations: list[list[int]],
            zero_delta: bool = False) -> np.ndarray:
    """The log-likelihood of each continuation (token ids, e.g. an option's text and
    <|im_end|>) after the prompt in ``inputs`` (as for ``generate``, batch of one), float32
    (N,). Continuations are padded to a multiple of 8 tokens, so new lengths seldom compile."""
    if inputs[0].shape[0] != 1:
      raise ValueError(f"score takes one prompt, got a batch of {inputs[0].shape[0]}")
    if not continuations or not all(continuations):
      raise ValueError("score needs at least one continuation, each of at least one token")
    width = -(-max(map(len, continuations)) // 8) * 8
    ids = np.zeros((len(continuations), width), np.int32)
    valid = np.zeros((len(continuations), width), bool)
    for i, c in enumerate(continuations):
      ids[i, :len(c)], valid[i, :len(c)] = c, True
    _check_room(self.cfg, inputs)
    need = int(prompt_positions(self.cfg, inputs)[0]) + max(map(len, continuations))
    if need > self.cfg.llm.max_positions:
      raise PromptTooLong(f"a prompt and its longest continuation take {need} positions, more "
                          f"than the model's {self.cfg.llm.max_positions}")
    length = inputs[0].shape[1]
    cache_length = length + -(-width // CACHE_ROUNDING) * CACHE_ROUNDING
    return np.asarray(self._score(inputs, ids, valid, zero_delta=zero_delta,
                                  cache_length=cache_length))

  def generate(self, inputs: tuple, options: SamplingOptions = SamplingOptions(),
               zero_delta: bool = False, reserve: int = 0, start: float | None = None):
    """``inputs`` = (input_ids, text_mask, pixels, mv, residual, kinds), batch-major, the text
    padded to a bucket. ``reserve`` adds cache slots for follow-up turns; ``start`` is when the
    clock for ``ttft_s`` / ``e2e_s`` started (default: now). Returns (token lists, timings, a
    Chat for follow-ups)."""
    start = time.perf_counter() if start is None else start
    compiled_before = _CompileClock.seconds
    length = inputs[0].shape[1]
    # Checked on the positions the prompt takes, not its padded length: a prompt that fits is
    # never refused for its bucket. (The cache holds every slot, so this also keeps an absurd
    # max_new_tokens from exhausting the memory.)
    need = _check_room(self.cfg, inputs)
    if need + options.max_new_tokens + reserve > self.cfg.llm.max_positions:
      raise PromptTooLong(f"a prompt of {need} positions + max_new_tokens "
                          f"{options.max_new_tokens}" + (f" + reserve {reserve}" if reserve else "")
                          + f" exceed the model's {self.cfg.llm.max_positions} positions")
    extra = -(-(options.max_new_tokens + reserve) // CACHE_ROUNDING) * CACHE_ROUNDING
    prefill = functools.partial(self._prefill, inputs, _seed_key(options.seed),
                                zero_delta=zero_delta, cache_length=length + extra,
                                **_sampling(options))
    before, compiled = time.perf_counter(), _CompileClock.seconds
    step = prefill()
    if _CompileClock.seconds > compiled:
      # This call compiled the prefill, and a new program's first run is several times slower
      # than the next (memory and thunks set up: 47 vs 7 ms for the tiny model on a CPU), which
      # is no more part of the time to first token than the compilation: it runs again, and the
      # clocks skip the first run (the host's work before it still counts). Its compilation
      # stays in compile_s, which ttft_s and e2e_s leave out: the shift leaves it out once.
      jax.block_until_ready(step)
      del step
      first_run = time.perf_counter() - before
      start += first_run - (_CompileClock.seconds - compiled)
      step = prefill()
    return self._decode_loop(step, options, start, compiled_before)

  def _decode_loop(self, step, options, start, compiled_before):
    """``step`` = (cache, first token (B,), its next position, key) from the prefill or a
    follow-up's first step."""
    cache, token, position, key = step
    sampling = _sampling(options)  # (once, not per token)
    b = token.shape[0]
    out, done = [[] for _ in range(b)], np.zeros(b, bool)
    ttft = None
    for i in range(options.max_new_tokens):
      token_host = np.asarray(token)
      if ttft is None:
        ttft = time.perf_counter() - start - (_CompileClock.seconds - compiled_before)
      generating = ~done  # rows whose token this is (a finished row's later ones are dropped)
      for r in np.flatnonzero(generating):
        out[r].append(int(token_host[r]))
        done[r] = token_host[r] == self.eos_id
      if done.all() or i == options.max_new_tokens - 1:
        break
      cache, token, position, key = self._continue(
          cache, token[:, None].astype(jnp.int32), position[:, None],
          jnp.asarray(generating)[:, None], key, **sampling)
    compile_s = _CompileClock.seconds - compiled_before
    timings = {"ttft_s": ttft, "e2e_s": time.perf_counter() - start - compile_s,
               "compile_s": compile_s,
               "new_tokens": max(len(o) for o in out)}
    # The last step's tokens are not in the cache yet: a follow-up appends them first.
    return out, timings, Chat(self, cache, position, token.astype(jnp.int32),
                              jnp.asarray(generating), key)

  def follow_up(self, chat: "Chat", ids: np.ndarray, options: SamplingOptions = SamplingOptions()):
    """Appends the previous answer's last token and ``ids`` (B, L) text tokens to a
    conversation's cache and generates again."""
    start = time.perf_counter()
    compiled_before = _CompileClock.seconds
    b, length = ids.shape
    if chat.generator is not self:
      raise ValueError("this Chat comes from another Generator: continue it with that one")
    if chat.cache is None:
      raise ValueError("this Chat was continued already: use the Chat that call returned")
    # The rule generate() applies: the positions taken (the pending token and ``ids`` after the
    # conversation's) plus max_new_tokens within the model's (the cache's rounding may hold more).
    taken = int(np.asarray(chat.position).max()) + 1 + length
    if taken + options.max_new_tokens > self.cfg.llm.max_positions:
      raise PromptTooLong(f"a conversation of {taken} positions + max_new_tokens "
                          f"{options.max_new_tokens} exceed the model's "
                          f"{self.cfg.llm.max_positions} positions")
    used, capacity = cache_slots(chat.cache)
    # The pending token and ``ids`` go in now, then every new token but the last.
    need = used + 1 + length + options.max_new_tokens - 1
    if need > capacity:
      raise ValueError(f"the conversation needs {need} cache slots, it has {capacity}: pass a "
                       "larger reserve= to generate()")
    pending = chat.pending_valid.astype(jnp.int32)[:, None]
    ids = jnp.concatenate([chat.pending[:, None], jnp.asarray(ids, jnp.int32)], axis=1)
    positions = chat.position[:, None] + jnp.concatenate(
        [jnp.zeros((b, 1), jnp.int32), pending + jnp.arange(length)[None, :]], axis=1)
    valid = jnp.concatenate([chat.pending_valid[:, None], jnp.ones((b, length), bool)], axis=1)
    cache, chat.cache = chat.cache, None  # donated to the step below
    # The conversation's sampling key goes on (with this turn's seed folded in): a fresh key
    # of the same seed would draw the first answer's noise again, token for token.
    key = jax.random.fold_in(chat.key, options.seed)
    step = self._continue(cache, ids, positions, valid, key, **_sampling(options))
    return self._decode_loop(step, options, start, compiled_before)


@dataclasses.dataclass
class Chat:
  """The state of a conversation after an answer: the Generator that made it (the one whose
  ``follow_up(chat, ids)`` continues it), its cache, the answer's last token (not in the cache
  yet; ``pending_valid`` False for rows that had finished before it), the next RoPE
  positions and the sampling key after the answer."""
  generator: Generator
  cache: dict
  position: jax.Array
  pending: jax.Array
  pending_valid: jax.Array
  key: jax.Array
