"""The LLaVA-Video glue and the CoPE VideoLM: vision tokens, Δ-tokens, interleaving, splicing.

Keyframe tokens (LLaVA-Video, ``mm_newline_position="grid"``): SigLIP's 27×27 tokens go through
the projector first (Linear, exact GELU, Linear), then 2×2 bilinear pooling to 14×14 in the LLM
width (torch ``interpolate(mode="bilinear")``, i.e. ``jax.image.resize`` with antialias off),
then the learned ``image_newline`` after each row: 14 × 15 = 210 tokens.

Δ-frame tokens: the Δ-encoder's 8 tokens go through the same projector; our layout (the paper
gives only the count) is [4 motion tokens, newline, 4 residual tokens, newline] = 10.

The visual tokens of a video are laid out in temporal order following ``kinds`` and spliced into
the text at the single ``IMAGE_TOKEN_ID`` with static shapes: output slot o takes text token o
before the placeholder, visual token o − p inside it, text token o − V + 1 after it (p = the
placeholder's index, V = visual slots). Padding frames and the V − 1 text slots pushed past L are
invalid; positions count valid slots only, so padding never shifts RoPE.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.data.tokenizer import IMAGE_TOKEN_ID
from cope_jax.models.delta_encoder import DeltaEncoder, DeltaEncoderConfig
from cope_jax.models.layers import dense
from cope_jax.models.qwen2 import Qwen2, Qwen2Config
from cope_jax.models.sharding import constrain, param_axes
from cope_jax.models.siglip import Siglip, SiglipConfig


@dataclasses.dataclass(frozen=True)
class VideoLMConfig:
  vision: SiglipConfig = SiglipConfig()
  llm: Qwen2Config = Qwen2Config()
  delta: DeltaEncoderConfig = DeltaEncoderConfig()

  @property
  def pooled_grid(self) -> int:
    return math.ceil(self.vision.grid / 2)

  @property
  def keyframe_tokens(self) -> int:
    return self.pooled_grid * (self.pooled_grid + 1)

  @property
  def delta_tokens(self) -> int:
    return self.delta.num_tokens + 2

  def visual_positions(self, kinds):
    """LLM positions of the frames of ``kinds`` (…, T) (0 keyframe, 1 Δ-frame, −1 padding),
    summed over the last axis (host arrays)."""
    return ((kinds == 0).sum(axis=-1) * self.keyframe_tokens
            + (kinds == 1).sum(axis=-1) * self.delta_tokens)


class Projector(nn.Module):
  """LLaVA's ``mlp2x_gelu``: Linear → exact (erf) GELU → Linear."""
  hidden_size: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    x = dense(self.hidden_size, ("embed", "mlp"), dtype=self.dtype, name="linear_1")(x)
    x = nn.gelu(x, approximate=False)
    return dense(self.hidden_size, ("mlp", "embed"), dtype=self.dtype, name="linear_2")(x)


def pool_2x2(tokens: jax.Array, grid: int) -> jax.Array:
  """(N, grid², D) → (N, ⌈grid/2⌉, ⌈grid/2⌉, D), bilinear like torch (align_corners=False)."""
  n, _, d = tokens.shape
  out = math.ceil(grid / 2)
  x = tokens.reshape(n, grid, grid, d)
  return jax.image.resize(x, (n, out, out, d), method="bilinear", antialias=False)


def add_row_newlines(pooled: jax.Array, newline: jax.Array) -> jax.Array:
  """(N, h, w, D) → (N, h·(w+1), D): ``newline`` after every row (LLaVA's grid layout)."""
  n, h, w, d = pooled.shape
  nl = jnp.broadcast_to(newline.astype(pooled.dtype), (n, h, 1, d))
  return jnp.concatenate([pooled, nl], axis=2).reshape(n, h * (w + 1), d)


def delta_layout(delta_tokens: jax.Array, newline: jax.Array, motion: int) -> jax.Array:
  """(N, K_τ + K_δ, D) → (N, K_τ + 1 + K_δ + 1, D): a newline after each group."""
  n, _, d = delta_tokens.shape
  nl = jnp.broadcast_to(newline.astype(delta_tokens.dtype), (n, 1, d))
  return jnp.concatenate([delta_tokens[:, :motion], nl, delta_tokens[:, motion:], nl], axis=1)


def interleave(key_tokens: jax.Array, delta_tokens: jax.Array,
               kinds: jax.Array) -> tuple[jax.Array, jax.Array]:
  """One video: (K, Tk, D) keyframe and (P, Td, D) Δ-frame tokens in the order of ``kinds``
  (T,) (0 keyframe, 1 Δ-frame, −1 padding) → (K·Tk + P·Td, D) tokens and a validity mask.
  K is at least 1; P may be 0 (keyframes only). Padded slots have ``kinds`` −1."""
  tk, td = key_tokens.shape[1], delta_tokens.shape[1]
  slots = key_tokens.shape[0] * tk + delta_tokens.shape[0] * td
  lengths = jnp.where(kinds == 0, tk, jnp.where(kinds == 1, td, 0))
  ends = jnp.cumsum(lengths)
  s = jnp.arange(slots)
  t = jnp.minimum(jnp.searchsorted(ends, s, side="right"), kinds.shape[0] - 1)
  j = s - (ends[t] - lengths[t])
  key_index = jnp.cumsum(kinds == 0)[t] - 1
  delta_index = jnp.cumsum(kinds == 1)[t] - 1
  tokens = key_tokens[jnp.clip(key_index, 0), jnp.clip(j, 0, tk - 1)]
  if delta_tokens.shape[0]:  # (a gather from an empty axis is an error)
    from_delta = delta_tokens[jnp.clip(delta_index, 0), jnp.clip(j, 0, td - 1)]
    tokens = jnp.where((kinds[t] == 0)[:, None], tokens, from_delta)
  valid = s < ends[-1]
  return jnp.where(valid[:, None], tokens, 0), valid


def splice(text: jax.Array, text_valid: jax.Array, input_ids: jax.Array, visual: jax.Array,
           visual_valid: jax.Array) -> tuple[jax.Array, jax.Array, jax.Array, jax.Array]:
  """Insert (B, V, D) visual tokens at each row's IMAGE_TOKEN_ID; keep length L.

  Returns embeddings (B, L, D), valid (B, L), positions (B, L), and ``text_index`` (B, L): the
  text position each slot came from (−1 for visual slots), to map labels and loss masks."""
  b, length = input_ids.shape
  v = visual.shape[1]
  has_image = jnp.any(input_ids == IMAGE_TOKEN_ID, axis=1)
  p = jnp.where(has_image, jnp.argmax(input_ids == IMAGE_TOKEN_ID, axis=1), length)[:, None]
  o = jnp.arange(length)[None, :]
  is_visual = (o >= p) & (o < p + v)
  src = jnp.where(o < p, o, o - v + 1)
  src_ok = ~is_visual & (src >= 0) & (src < length)
  src = jnp.clip(src, 0, length - 1)
  vis = jnp.clip(o - p, 0, v - 1)
  emb = jnp.where(is_visual[..., None], jnp.take_along_axis(visual, vis[..., None], axis=1),
                  jnp.take_along_axis(text, src[..., None], axis=1))
  valid = jnp.where(is_visual, jnp.take_along_axis(visual_valid, vis, axis=1),
                    src_ok & jnp.take_along_axis(text_valid, src, axis=1))
  positions = jnp.maximum(jnp.cumsum(valid, axis=1) - 1, 0)
  text_index = jnp.where(src_ok, src, -1)
  return emb, valid, positions, text_index


def init_inputs(cfg: VideoLMConfig, codec_size: int, keyframes: int = 1,
                delta_frames: int = 1, length: int = 8) -> tuple[jax.Array, ...]:
  """Zero inputs of a batch of one, for ``VideoLM(cfg).init`` (with ``delta_frames`` ≥ 1, so
  that the Δ-encoder's parameters are made)."""
  s, c = cfg.vision.image_size, codec_size
  return (jnp.zeros((1, length), jnp.int32), jnp.ones((1, length), bool),
          jnp.zeros((1, keyframes, s, s, 3)), jnp.zeros((1, delta_frames, c, c, 2)),
          jnp.zeros((1, delta_frames, c, c, 3), jnp.int16),
          jnp.zeros((1, keyframes + delta_frames), jnp.int32))


class VideoLM(nn.Module):
  """CoPE-VideoLM. ``__call__`` returns (logits (B, L, V), aux); aux has the spliced ``valid``,
  ``positions`` and ``text_index``. Batches follow cope_jax.data.pipeline (stage 2)."""
  cfg: VideoLMConfig
  decode: bool = False
  prefill: bool = False  # with decode: a call fills an empty KV cache (Qwen2's prefill)

  def setup(self):
    cfg = self.cfg
    self.vision_tower = Siglip(cfg.vision)
    self.projector = Projector(cfg.llm.hidden_size, cfg.llm.dtype)
    self.delta_encoder = DeltaEncoder(cfg.delta)
    self.image_newline = self.param("image_newline",
                                    param_axes(nn.initializers.normal(0.02), ("embed",)),
                                    (cfg.llm.hidden_size,), jnp.float32)
    self.llm = Qwen2(cfg.llm, self.decode, self.prefill)

  def keyframe_tokens(self, pixels: jax.Array) -> jax.Array:
    """(N, S, S, 3) → (N, 210, D_llm) (paper scale)."""
    tokens, _ = self.vision_tower(pixels)
    pooled = pool_2x2(self.projector(tokens), self.cfg.vision.grid)
    return add_row_newlines(pooled, self.image_newline)

  def delta_frame_tokens(self, mv: jax.Array, residual: jax.Array,
                         zero: bool = False) -> jax.Array:
    """(N, H, W, 2), (N, H, W, 3) → (N, 10, D_llm); ``zero`` zeroes the Δ-tokens (paper H.3)."""
    tokens, _ = self.delta_encoder(mv, residual)
    if zero:
      tokens = jnp.zeros_like(tokens)
    return delta_layout(self.projector(tokens), self.image_newline, self.cfg.delta.motion_queries)

  def visual_tokens(self, pixels: jax.Array, mv: jax.Array, residual: jax.Array,
                    kinds: jax.Array, zero_delta: bool = False) -> tuple[jax.Array, jax.Array]:
    """Per video: (B, K, …) keyframes + (B, P, …) Δ-frames → (B, V, D) tokens and validity.
    P = 0 (the ``dense`` and ``keyframes`` modes) runs no Δ-encoder at all."""
    b, k = pixels.shape[:2]
    p = mv.shape[1]
    keys = self.keyframe_tokens(pixels.reshape((b * k,) + pixels.shape[2:]))
    keys = keys.reshape((b, k) + keys.shape[1:])
    if p:
      deltas = self.delta_frame_tokens(mv.reshape((b * p,) + mv.shape[2:]),
                                       residual.reshape((b * p,) + residual.shape[2:]),
                                       zero_delta)
      deltas = deltas.reshape((b, p) + deltas.shape[1:])
    else:
      deltas = jnp.zeros((b, 0, self.cfg.delta_tokens, keys.shape[-1]), keys.dtype)
    return jax.vmap(interleave)(keys, deltas, kinds)

  def __call__(self, input_ids: jax.Array, text_mask: jax.Array, pixels: jax.Array,
               mv: jax.Array, residual: jax.Array, kinds: jax.Array, zero_delta: bool = False,
               last_only: bool = False, with_logits: bool = True) -> tuple[jax.Array | None, dict]:
    """``last_only``: logits (B, 1, V) of each row's last valid slot only (prefill for TTFT);
    ``with_logits=False``: no logits, the caller applies ``lm_head`` to aux["hidden"] rows."""
    visual, visual_valid = self.visual_tokens(pixels, mv, residual, kinds, zero_delta)
    text = self.llm.embed(jnp.where(input_ids == IMAGE_TOKEN_ID, 0, input_ids))
    emb, valid, positions, text_index = splice(text, text_mask, input_ids,
                                               visual.astype(text.dtype), visual_valid)
    emb = constrain(emb, ("batch", "length", "act_embed"))
    last = jnp.max(jnp.where(valid, jnp.arange(valid.shape[1]), 0), axis=1)
    logits, aux = self.llm(inputs_embeds=emb, positions=positions, valid=valid,
                           logits_at=last if last_only else None, with_logits=with_logits)
    return logits, {**aux, "valid": valid, "positions": positions, "text_index": text_index,
                    "last": last}

  def lm_head(self, hidden: jax.Array) -> jax.Array:
    """The LLM's output head on final hidden states (B, L, D) → float32 logits (B, L, V)."""
    return self.llm.head(hidden)

  def continue_text(self, input_ids: jax.Array, positions: jax.Array,
                    valid: jax.Array) -> tuple[jax.Array, dict]:
    """Text-only continuation (generated tokens, later turns): the LLM on its KV cache."""
    return self.llm(input_ids, positions=positions, valid=valid)


def spliced_targets(input_ids: jax.Array, loss_mask: jax.Array,
                    text_index: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Next-token targets and weights in the spliced layout: slot o predicts slot o + 1."""
  nxt = jnp.concatenate([text_index[:, 1:], jnp.full_like(text_index[:, :1], -1)], axis=1)
  ok = nxt >= 0
  idx = jnp.clip(nxt, 0)
  targets = jnp.take_along_axis(input_ids, idx, axis=1)
  weights = ok & jnp.take_along_axis(loss_mask, idx, axis=1)
  return jnp.where(weights, targets, 0), weights
