"""SigLIP vision transformer, equal to Hugging Face's ``SiglipVisionModel`` (no pooling head).

LLaVA-Video uses so400m-patch14-384 with its last layer deleted (26 of 27) and takes the last
hidden state *before* ``post_layernorm``: ``SiglipConfig(num_layers=26, post_layernorm=False)``.
The plain Hugging Face model (``post_layernorm=True``) is the parity reference. Input: pixels
(B, H, W, 3) already normalised (x/255 − 0.5) / 0.5, channels last.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.layers import dense, layer_norm
from cope_jax.models.sharding import constrain, param_axes


@dataclasses.dataclass(frozen=True)
class SiglipConfig:
  hidden_size: int = 1152
  intermediate_size: int = 4304
  num_layers: int = 26
  num_heads: int = 16
  patch_size: int = 14
  image_size: int = 384
  eps: float = 1e-6
  post_layernorm: bool = False
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = True  # False: a Python loop (for FLOP counting)

  @property
  def grid(self) -> int:
    return self.image_size // self.patch_size

  @property
  def num_patches(self) -> int:
    return self.grid ** 2


class EncoderLayer(nn.Module):
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, x, _):
    cfg = self.cfg
    b, n, d = x.shape
    hd = d // cfg.num_heads
    h = layer_norm(cfg.eps, cfg.dtype, "layer_norm1")(x)
    q, k, v = (dense(d, ("embed", "heads"), dtype=cfg.dtype, name=f"self_attn_{p}_proj")(h)
               .reshape(b, n, cfg.num_heads, hd) for p in "qkv")
    a = jax.nn.dot_product_attention(q, k, v).reshape(b, n, d)
    x = x + dense(d, ("heads", "embed"), dtype=cfg.dtype, name="self_attn_out_proj")(a)
    h = layer_norm(cfg.eps, cfg.dtype, "layer_norm2")(x)
    h = dense(cfg.intermediate_size, ("embed", "mlp"), dtype=cfg.dtype, name="mlp_fc1")(h)
    h = nn.gelu(constrain(h, ("batch", "length", "act_mlp")), approximate=True)
    x = x + dense(d, ("mlp", "embed"), dtype=cfg.dtype, name="mlp_fc2")(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class Siglip(nn.Module):
  """Returns (tokens (B, N, D), aux) — tokens are the last hidden state (see the config)."""
  cfg: SiglipConfig

  @nn.compact
  def __call__(self, pixels: jax.Array):
    cfg = self.cfg
    x = nn.Conv(cfg.hidden_size, (cfg.patch_size, cfg.patch_size),
                strides=(cfg.patch_size, cfg.patch_size), padding="VALID", dtype=cfg.dtype,
                param_dtype=jnp.float32,
                kernel_init=param_axes(nn.initializers.lecun_normal(),
                                       (None, None, "conv_in", "embed")),
                bias_init=param_axes(nn.initializers.zeros, ("embed",)),
                name="patch_embedding")(pixels.astype(cfg.dtype))
    b = x.shape[0]
    x = x.reshape(b, -1, cfg.hidden_size)
    pos = self.param("position_embedding",
                     param_axes(nn.initializers.normal(0.02), ("positions", "embed")),
                     (cfg.num_patches, cfg.hidden_size), jnp.float32)
    x = constrain(x + pos.astype(cfg.dtype), ("batch", "length", "act_embed"))
    layer = nn.remat(EncoderLayer, prevent_cse=False) if cfg.remat else EncoderLayer
    if cfg.scan:
      x, _ = nn.scan(layer, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=nn.broadcast, length=cfg.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})(cfg, name="layers")(x, None)
    else:
      for i in range(cfg.num_layers):
        x, _ = layer(cfg, name=f"layers_{i}")(x, None)
    if cfg.post_layernorm:
      x = layer_norm(cfg.eps, cfg.dtype, "post_layernorm")(x)
    return x, {}
