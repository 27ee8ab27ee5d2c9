"""Qwen2 decoder (the LLM of LLaVA-Video-7B), equal to Hugging Face's ``Qwen2ForCausalLM``.

GQA attention with RoPE (rotate-half convention, theta from the config), RMSNorm, SwiGLU, biases
on q/k/v only; the output head is its own matrix (7B) or the input embedding
(``tie_word_embeddings``: Qwen2-0.5B and 1.5B, which then train as one matrix). Layers are scanned (parameters stacked on a leading ``layers``
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
from cope_jax.models.sharding import constrain, devices_along, param_axes


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
  tie_word_embeddings: bool = False  # the output head is the input embedding (no lm_head)
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


# Causal blocks are mapped over in this many groups, each attending the keys up to its own end.
CAUSAL_GROUPS = 4


def attend(q: jax.Array, k: jax.Array, v: jax.Array, query_slots: jax.Array,
           key_slots: jax.Array, key_valid: jax.Array, query_segments: jax.Array | None = None,
           key_segments: jax.Array | None = None, chunk: int = 0,
           causal_prefix: bool = False) -> jax.Array:
  """Masked attention (B, Lq, N, D) in blocks of ``chunk`` queries (0 = one block).

  The blocks are mapped over (``lax.map``: one at a time), each exact (its queries see every key
  they may attend) and rematerialised, so one block's (chunk, Lk) scores are the largest
  temporary, forward and backward. Queries are padded to a multiple of ``chunk`` by repeating
  the last one (finite, then dropped).

  ``causal_prefix``: query i and key i are the same position (self-attention over 0..L−1, as in
  training and a prefill into an empty cache), so keys after a block's last query are masked
  anyway. The blocks then go in ``CAUSAL_GROUPS`` consecutive groups, each mapped over the keys
  up to its end only: 62.5 % of the scores with 4 groups (the triangle needs half). Groups rather
  than every block unrolled with its own key length: unrolled, XLA overlaps blocks and the 7B
  stage 2 needed 70.6 GiB per H100 instead of 61.0. On a CPU the smaller blocks also keep the
  scores in cache: 128-query blocks made the tiny recipes' training steps 1.4–1.7× faster.
  """
  lq = q.shape[1]
  if not chunk or lq <= chunk:
    return jax.nn.dot_product_attention(q, k, v, mask=attention_mask(
        query_slots, key_slots, key_valid, query_segments, key_segments))
  n = -(-lq // chunk)
  groups = min(n, CAUSAL_GROUPS) if causal_prefix else 1
  bounds = [round(n * g / groups) * chunk for g in range(groups + 1)]
  pad = lambda a: jnp.pad(a, [(0, 0), (0, n * chunk - lq)] + [(0, 0)] * (a.ndim - 2),  # noqa: E731
                          mode="edge")
  q, query_slots = pad(q), pad(query_slots)
  query_segments = None if query_segments is None else pad(query_segments)
  outs = []
  for start, end in zip(bounds[:-1], bounds[1:]):
    keys = min(end, k.shape[1]) if causal_prefix else k.shape[1]
    cut = lambda a: None if a is None else a[:, :keys]  # noqa: E731
    key_args = (cut(k), cut(v), cut(key_slots), cut(key_valid), cut(key_segments))

    @jax.checkpoint
    def block(args, key_args=key_args):
      q_block, slots, segs = args
      k_, v_, k_slots, k_valid, k_segs = key_args
      mask = attention_mask(slots, k_slots, k_valid, segs, k_segs)
      return jax.nn.dot_product_attention(q_block, k_, v_, mask=mask)

    blocks = lambda a: None if a is None else length_blocks(a[:, start:end], chunk)  # noqa: E731,B023
    out = jax.lax.map(block, (blocks(q), blocks(query_slots), blocks(query_segments)))
    outs.append(out.swapaxes(0, 1).reshape(q.shape[0], end - start, *q.shape[2:]))
  return jnp.concatenate(outs, axis=1)[:, :lq]


class Attention(nn.Module):
  cfg: Qwen2Config
  decode: bool = False
  prefill: bool = False  # with decode: each call fills an empty cache (see Qwen2)

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
        # A prefill writes slots [0, L) of an empty cache and attends within itself.
        i = 0 if self.prefill else cindex.value
        ck.value = jax.lax.dynamic_update_slice(ck.value, k.astype(ck.value.dtype), (0, i, 0, 0))
        cv.value = jax.lax.dynamic_update_slice(cv.value, v.astype(cv.value.dtype), (0, i, 0, 0))
        cvalid.value = jax.lax.dynamic_update_slice(cvalid.value, valid, (0, i))
        cindex.value = jnp.asarray(i + length, jnp.int32)
        if self.prefill:
          out = attend(q, k, v, slots, slots, valid, chunk=cfg.attention_chunk,
                       causal_prefix=True)
        else:
          k, v = ck.value.astype(q.dtype), cv.value.astype(q.dtype)
          key_slots = jnp.broadcast_to(jnp.arange(k.shape[1]), (b, k.shape[1]))
          out = attend(q, k, v, slots + i, key_slots, cvalid.value, chunk=cfg.attention_chunk)
      else:
        out = attend(q, k, v, slots, slots, valid, chunk=cfg.attention_chunk,
                     causal_prefix=True)
    else:
      out = attend(q, k, v, slots, slots, valid, segments, segments, chunk=cfg.attention_chunk,
                   causal_prefix=True)
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
  prefill: bool = False

  @nn.compact
  def __call__(self, x, positions, valid, segments):
    cfg = self.cfg
    h = RMSNorm(cfg.rms_eps, cfg.dtype, name="input_layernorm")(x)
    x = x + Attention(cfg, self.decode, self.prefill, name="self_attn")(h, positions, valid,
                                                                         segments)
    h = RMSNorm(cfg.rms_eps, cfg.dtype, name="post_attention_layernorm")(x)
    x = x + MLP(cfg, name="mlp")(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class Qwen2(nn.Module):
  """Returns (logits (B, L, V) float32, aux) with aux = {"hidden": final hidden states}.

  Call with ``input_ids`` (B, L) or ``inputs_embeds`` (B, L, D) (multimodal splicing), plus
  ``positions`` (B, L) for RoPE (default 0..L−1), ``valid`` (B, L) bool (False = padding),
  ``segments`` (B, L) int for packed sequences, and ``logits_at`` (B,) to compute the logits of
  one slot per row only (B, 1, V; ``aux["hidden"]`` is then that slot's, (B, 1, D)).
  ``with_logits=False`` returns no logits (None), only ``aux["hidden"]``.

  ``decode``: with a KV cache (module docstring). ``prefill`` (with ``decode``): the call is the
  first into an empty cache, so its queries attend only its own keys, causally, in the blocks
  training uses — not the whole cache's slots.
  """
  cfg: Qwen2Config
  decode: bool = False
  prefill: bool = False

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
                            metadata_params={nn.PARTITION_NAME: "layers"})(
                                cfg, self.decode, self.prefill)
    else:
      self.layer_list = [layer(cfg, self.decode, self.prefill) for _ in range(cfg.num_layers)]
    self.norm = RMSNorm(cfg.rms_eps, cfg.dtype)
    if not cfg.tie_word_embeddings:
      self.lm_head = dense(cfg.vocab_size, ("embed", "vocab"), bias=False, dtype=cfg.dtype)

  def embed(self, input_ids: jax.Array) -> jax.Array:
    table = self.embed_tokens.embedding.astype(self.cfg.dtype)
    if devices_along("vocab") > 1:
      # With the vocabulary split too, XLA looks up along the table's fsdp-split embed axis and
      # then moves the whole activation ("involuntary full rematerialization"): gathering that
      # axis first, as FSDP does any weight, moves less (1.3x and 1.7x fewer bytes at 7B
      # shapes on 2x2x2 and 1x2x4 meshes). Without a split vocabulary XLA's own plan (the ids
      # gathered, then an all-to-all) moves less than the table would (4.5x at fsdp 8).
      table = constrain(table, ("vocab", None))
    return jnp.take(table, input_ids, axis=0)

  def __call__(self, input_ids=None, *, inputs_embeds=None, positions=None, valid=None,
               segments=None, logits_at=None, with_logits: bool = True):
    x = self.embed(input_ids) if inputs_embeds is None else inputs_embeds
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
    if self.cfg.tie_word_embeddings:
      logits = self.embed_tokens.attend(hidden).astype(jnp.float32)
    else:
      logits = self.lm_head(hidden).astype(jnp.float32)
    return constrain(logits, ("batch", "length", "act_vocab"))
