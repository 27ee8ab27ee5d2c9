"""Building blocks shared by the models: dense layers with logical axes, norms, MLPs."""

from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.sharding import param_axes

Dtype = Any


def dense(features: int, axes: tuple[str | None, str | None], *, bias: bool = True,
          dtype: Dtype = jnp.float32, name: str | None = None,
          init_std: float | None = None) -> nn.Dense:
  """nn.Dense whose kernel (in, out) and bias (out,) carry logical axis names."""
  init = (nn.initializers.normal(init_std) if init_std is not None
          else nn.initializers.lecun_normal())
  return nn.Dense(features, use_bias=bias, dtype=dtype, param_dtype=jnp.float32,
                  kernel_init=param_axes(init, axes),
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
  return nn.LayerNorm(epsilon=eps, dtype=dtype, param_dtype=jnp.float32,
                      scale_init=param_axes(nn.initializers.ones, ("norm",)),
                      bias_init=param_axes(nn.initializers.zeros, ("norm",)), name=name)
