"""Qwen2 decoder (the LLM of LLaVA-Video-7B), equal to Hugging Face's ``Qwen2ForCausalLM``.

GQA attention with RoPE (rotate-half convention, theta from the config), RMSNorm, SwiGLU, biases
on q/k/v only, untied lm_head. Layers are scanned (parameters stacked on a leading ``layers``
axis; one layer is compiled once) and optionally rematerialised. Attention is
``jax.nn.dot_product_attention`` (its XLA implementation, which JAX uses unless cuDNN is
named) with one boolean mask that combines causality, padding and packed segments, optionally
in blocks of queries (``attention_chunk``) so long sequences never hold all (L, L) scores at
once.

KV cache (``decode=True``): the ``cache`` collection holds keys, values, a key-validity mask and
the next slot. A call with L tokens writes slots [index, index + L) — a prefill is one call with
the prompt, decoding is one call per token — and attends causally over the filled slots.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.layers import RMSNorm, dense, length_blocks
from cope_jax.models.sharding import constrain, param_axes


@dataclasses.dataclass(frozen=True)
class Qwen2Config:
  vocab_size: int = 152064
  hidden_size: int = 3584
  intermediate_size: int = 18944
  num_layers: int = 28
  num_heads: int = 28
  num_kv_heads: int = 4
  rope_theta: float = 1e6
  rms_eps: float = 1e-6
  max_positions: int = 32768
  dtype: Any = jnp.float32  # compute dtype; parameters are always float32
  remat: bool = False
  scan: bool = True  # False: a Python loop (XLA's cost analysis counts a scanned body once)
  # Queries per attention block (0 = all at once). XLA attention materialises (Lq, Lk) scores
  # per head: 285 GB of temporaries at 32K tokens on a TPU v4, which blocks of queries bound.
  attention_chunk: int = 0

  @property
  def head_dim(self) -> int:
    return self.hidden_size // self.num_heads


def rope(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotary embedding in Hugging Face's rotate-half layout. x: (B, L, N, D), positions (B, L)."""
  d = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, d, 2, dtype=jnp.float32) / d))
  freqs = positions.astype(jnp.float32)[..., None] * inv_freq  # (B, L, D/2)
  emb = jnp.concatenate([freqs, freqs], axis=-1)[:, :, None, :]
  cos, sin = jnp.cos(emb), jnp.sin(emb)
  x1, x2 = x[..., :d // 2], x[..., d // 2:]
  rotated = jnp.concatenate([-x2, x1], axis=-1)
  return (x.astype(jnp.float32) * cos + rotated.astype(jnp.float32) * sin).astype(x.dtype)


def attention_mask(query_slots: jax.Array, key_slots: jax.Array, key_valid: jax.Array,
                   query_segments: jax.Array | None = None,
                   key_segments: jax.Array | None = None) -> jax.Array:
  """(B, 1, Lq, Lk) bool: causal on slots, valid keys only, same packed segment only."""
  mask = (key_slots[:, None, :] <= query_slots[:, :, None]) & key_valid[:, None, :]
  if query_segments is not None:
    mask &= query_segments[:, :, None] == key_segments[:, None, :]
  return mask[:, None]


def attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array,
           key_slots: jax.Array, key_valid: jax.Array, query_segments: jax.Array | None = None,
           key_segments: jax.Array | None = None, chunk: int = 0) -> jax.Array:
  """Masked attention (B, Lq, N, D) in blocks of ``chunk`` queries (0 = one block).

  Each block is exact (its queries see every key) and rematerialised, so the (chunk, Lk) scores
  of one block are the largest temporary, forward and backward. Queries are padded to a
  multiple of ``chunk`` by repeating the last one (finite, then dropped).
  """
  lq = q.shape[1]
  if not chunk or lq <= chunk:
    return jax.nn.dot_product_attention(q, k, v, mask=attention_mask(
        query_slots, key_slots, key_valid, query_segments, key_segments))
  blocks = lambda a: length_blocks(a, chunk, mode="edge")  # noqa: E731
  segments = None if query_segments is None else blocks(query_segments)

  @jax.checkpoint
  def block(args):
    q_block, slots, segs = args
    mask = attention_mask(slots, key_slots, key_valid, segs, key_segments)
    return jax.nn.dot_product_attention(q_block, k, v, mask=mask)

  out = jax.lax.map(block, (blocks(q), blocks(query_slots), segments))
  return out.swapaxes(0, 1).reshape(q.shape[0], -1, *q.shape[2:])[:, :lq]


class Attention(nn.Module):
  cfg: Qwen2Config
  decode: bool = False

  @nn.compact
  def __call__(self, x, positions, valid, segments):
    cfg = self.cfg
    b, length, _ = x.shape
    hd = cfg.head_dim
    q = dense(cfg.num_heads * hd, ("embed", "heads"), dtype=cfg.dtype, name="q_proj")(x)
    k = dense(cfg.num_kv_heads * hd, ("embed", "kv_heads"), dtype=cfg.dtype, name="k_proj")(x)
    v = dense(cfg.num_kv_heads * hd, ("embed", "kv_heads"), dtype=cfg.dtype, name="v_proj")(x)
    q = rope(q.reshape(b, length, cfg.num_heads, hd), positions, cfg.rope_theta)
    k = rope(k.reshape(b, length, cfg.num_kv_heads, hd), positions, cfg.rope_theta)
    v = v.reshape(b, length, cfg.num_kv_heads, hd)
    q = constrain(q, ("batch", "length", "act_heads", None))
    slots = jnp.broadcast_to(jnp.arange(length), (b, length))
    k, v = k.astype(q.dtype), v.astype(q.dtype)
    if self.decode:
      ck = self.variable("cache", "key", jnp.zeros, k.shape, k.dtype)
      cv = self.variable("cache", "value", jnp.zeros, v.shape, v.dtype)
      cvalid = self.variable("cache", "valid", jnp.zeros, valid.shape, bool)
      cindex = self.variable("cache", "index", lambda: jnp.array(0, jnp.int32))
      if not self.is_initializing():  # init only sizes the cache (max length = init length)
        i = cindex.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
        cvalid.value = jax.lax.dynamic_update_slice(cvalid.value, valid, (0, i))
        cindex.value = i + length
        k, v = ck.value.astype(q.dtype), cv.value.astype(q.dtype)
        key_slots = jnp.broadcast_to(jnp.arange(k.shape[1]), (b, k.shape[1]))
        out = attend(q, k, v, slots + i, key_slots, cvalid.value, chunk=cfg.attention_chunk)
      else:
        out = attend(q, k, v, slots, slots, valid, chunk=cfg.attention_chunk)
    else:
      out = attend(q, k, v, slots, slots, valid, segments, segments, chunk=cfg.attention_chunk)
    out = out.reshape(b, length, cfg.num_heads * hd)
    return dense(cfg.hidden_size, ("heads", "embed"), bias=False, dtype=cfg.dtype,
                 name="o_proj")(out)


class MLP(nn.Module):
  cfg: Qwen2Config

  @nn.compact
  def __call__(self, x):
    cfg = self.cfg
    gate = dense(cfg.intermediate_size, ("embed", "mlp"), bias=False, dtype=cfg.dtype,
                 name="gate_proj")(x)
    up = dense(cfg.intermediate_size, ("embed", "mlp"), bias=False, dtype=cfg.dtype,
               name="up_proj")(x)
    h = constrain(nn.silu(gate) * up, ("batch", "length", "act_mlp"))
    return dense(cfg.hidden_size, ("mlp", "embed"), bias=False, dtype=cfg.dtype,
                 name="down_proj")(h)


class DecoderLayer(nn.Module):
  cfg: Qwen2Config
  decode: bool = False

  @nn.compact
  def __call__(self, x, positions, valid, segments):
    cfg = self.cfg
    h = RMSNorm(cfg.rms_eps, cfg.dtype, name="input_layernorm")(x)
    x = x + Attention(cfg, self.decode, name="self_attn")(h, positions, valid, segments)
    h = RMSNorm(cfg.rms_eps, cfg.dtype, name="post_attention_layernorm")(x)
    x = x + MLP(cfg, name="mlp")(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class Qwen2(nn.Module):
  """Returns (logits (B, L, V) float32, aux) with aux = {"hidden": final hidden states}.

  Call with ``input_ids`` (B, L) or ``inputs_embeds`` (B, L, D) (multimodal splicing), plus
  ``positions`` (B, L) for RoPE (default 0..L−1), ``valid`` (B, L) bool (False = padding),
  ``segments`` (B, L) int for packed sequences, and ``logits_at`` (B,) to compute the logits of
  one slot per row only (B, 1, V).
  """
  cfg: Qwen2Config
  decode: bool = False

  def setup(self):
    cfg = self.cfg
    self.embed_tokens = nn.Embed(
        cfg.vocab_size, cfg.hidden_size, dtype=cfg.dtype, param_dtype=jnp.float32,
        embedding_init=param_axes(nn.initializers.normal(0.02), ("vocab", "embed")))
    layer = DecoderLayer
    if cfg.remat:
      layer = nn.remat(layer, policy=jax.checkpoint_policies.nothing_saveable,
                       prevent_cse=False)
    if cfg.scan:
      self.layers = nn.scan(layer, variable_axes={"params": 0, "cache": 0},
                            split_rngs={"params": True}, in_axes=(nn.broadcast,) * 3,
                            length=cfg.num_layers,
                            metadata_params={nn.PARTITION_NAME: "layers"})(cfg, self.decode)
    else:
      self.layer_list = [layer(cfg, self.decode) for _ in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_eps, cfg.dtype)
    self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), bias=False, dtype=cfg.dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    return self.embed_tokens(input_ids)

  def __call__(self, input_ids=None, *, inputs_embeds=None, positions=None, valid=None,
               segments=None, logits_at=None, with_logits: bool = True):
    x = self.embed_tokens(input_ids) if inputs_embeds is None else inputs_embeds
    b, length = x.shape[:2]
    if positions is None:
      positions = jnp.broadcast_to(jnp.arange(length), (b, length))
    if valid is None:
      valid = jnp.ones((b, length), bool)
    x = constrain(x.astype(self.cfg.dtype), ("batch", "length", "act_embed"))
    if self.cfg.scan:
      x, _ = self.layers(x, positions, valid, segments)
    else:
      for layer in self.layer_list:
        x, _ = layer(x, positions, valid, segments)
    hidden = self.norm(x)
    if not with_logits:  # the caller applies ``head`` to the rows it needs, in blocks
      return None, {"hidden": hidden}
    if logits_at is not None:  # (B,) slots: a prefill needs one row of logits, not L (× vocab)
      hidden = jnp.take_along_axis(hidden, logits_at[:, None, None], axis=1)
    return self.head(hidden), {"hidden": hidden}

  def head(self, hidden: jax.Array) -> jax.Array:
    """Final hidden states (B, L, D) → float32 logits (B, L, V)."""
    logits = self.lm_head(hidden).astype(jnp.float32)
    return constrain(logits, ("batch", "length", "act_vocab"))
