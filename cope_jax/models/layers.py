"""Building blocks shared by the models: dense layers with logical axes, norms, MLPs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.sharding import constrain, param_axes

Dtype = Any


def matmul_last_axis(x: jax.Array, kernel: jax.Array, dimension_numbers=None,
                     precision=None, preferred_element_type=None) -> jax.Array:
  """``x`` (…, in) @ ``kernel`` (in, out) as one 2-D matmul over the rows (…) flattened.

  The same numbers as the dot over (B, L, in), but XLA's CPU backend lays the weight gradient
  of that dot out as a transpose of the (B·L, out) cotangent, a strided copy that took 30 % of
  the demo's stage-2 step; over two dimensions it uses the matrices as they are. On a TPU or
  GPU the reshape is free (a bitcast); batch and length stay the leading axes, so a sharding on
  them carries over."""
  if dimension_numbers is not None and dimension_numbers != (((x.ndim - 1,), (0,)), ((), ())):
    raise ValueError(f"matmul_last_axis contracts x's last axis only, got {dimension_numbers}")
  y = jax.lax.dot_general(x.reshape(-1, x.shape[-1]), kernel, (((1,), (0,)), ((), ())),
                          precision=precision, preferred_element_type=preferred_element_type)
  return y.reshape(*x.shape[:-1], kernel.shape[-1])


def dense(features: int, axes: tuple[str | None, str | None], *, bias: bool = True,
          dtype: Dtype = jnp.float32, name: str | None = None,
          init_std: float | None = None) -> nn.Dense:
  """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names."""
  init = (nn.initializers.normal(init_std) if init_std is not None
          else nn.initializers.lecun_normal())
  return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=param_axes(init, axes), dot_general=matmul_last_axis,
                  bias_init=param_axes(nn.initializers.zeros, (axes[1],)), name=name)


class RMSNorm(nn.Module):
  """Qwen2's RMSNorm: computed in float32, scaled by a learned weight (init 1)."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    weight = self.param("weight", param_axes(nn.initializers.ones, ("norm",)), (x.shape[-1],),
                        jnp.float32)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (weight * x32.astype(self.dtype)).astype(self.dtype)


def layer_norm(eps: float, dtype: Dtype, name: str | None = None) -> nn.LayerNorm:
  # The variance in two passes, as torch computes it: Flax's default E[x²] − E[x]² loses
  # precision when many channels share an offset (2.8e-3 off at an offset of 50).
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32, use_fast_variance=False,
                      scale_init=param_axes(nn.initializers.ones, ("norm",)),
                      bias_init=param_axes(nn.initializers.zeros, ("norm",)), name=name)


class TransformerBlock(nn.Module):
  """Pre-norm transformer block: x + MHA(LN(x)), then x + MLP(LN(x)) with GELU."""
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, _=None):
    b, n, d = x.shape
    hd = d // self.num_heads
    h = layer_norm(1e-6, self.dtype, "norm1")(x)
    q, k, v = (dense(d, ("embed", "heads"), dtype=self.dtype, name=f"{p}_proj")(h)
               .reshape(b, n, self.num_heads, hd) for p in "qkv")
    a = jax.nn.dot_product_attention(q, k, v).reshape(b, n, d)
    x = x + dense(d, ("heads", "embed"), dtype=self.dtype, name="out_proj")(a)
    h = layer_norm(1e-6, self.dtype, "norm2")(x)
    h = nn.gelu(dense(d * self.mlp_ratio, ("embed", "mlp"), dtype=self.dtype, name="fc1")(h),
                approximate=False)
    x = x + dense(d, ("mlp", "embed"), dtype=self.dtype, name="fc2")(h)
    return constrain(x, ("batch", "length", "act_embed")), None


class Transformer(nn.Module):
  """``num_layers`` scanned TransformerBlocks and a final LayerNorm."""
  num_layers: int
  num_heads: int
  mlp_ratio: int = 4
  dtype: Dtype = jnp.float32
  remat: bool = False
  scan: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    block = nn.remat(TransformerBlock, prevent_cse=False) if self.remat else TransformerBlock
    if self.scan:
      x, _ = nn.scan(block, variable_axes={"params": 0}, split_rngs={"params": True},
                     in_axes=nn.broadcast, length=self.num_layers,
                     metadata_params={nn.PARTITION_NAME: "layers"})(
                         self.num_heads, self.mlp_ratio, self.dtype, name="blocks")(x, None)
    else:
      for i in range(self.num_layers):
        x, _ = block(self.num_heads, self.mlp_ratio, self.dtype, name=f"blocks_{i}")(x, None)
    return layer_norm(1e-6, self.dtype, "final_norm")(x)


def length_blocks(x: jax.Array, block: int, mode: str = "constant") -> jax.Array:
  """(B, L, …) → (⌈L / block⌉, B, block, …): axis 1 cut into blocks for ``jax.lax.map``, the
  last one padded (``mode`` as in ``jnp.pad``: zeros, or ``"edge"`` to repeat the last row)."""
  pad = -x.shape[1] % block
  x = jnp.pad(x, [(0, 0), (0, pad)] + [(0, 0)] * (x.ndim - 2), mode=mode)
  return x.reshape(x.shape[0], -1, block, *x.shape[2:]).swapaxes(0, 1)
