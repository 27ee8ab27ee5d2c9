"""A ResNet-18 trunk at output stride 16, for residual frames (the Δ-encoder's residual branch).

A plain ResNet-18 reaches stride 32 (stem 4, then stages ×1, ×2, ×2, ×2). We keep every conv
stage but run the last one at stride 1 with dilation 2 (as DeepLab does), so features land on
the same H/16 × W/16 grid as the 16×16 motion patches. GroupNorm replaces BatchNorm: the model
stays a pure function of its parameters (no batch statistics to carry), and small per-device
batches do not hurt it. The number of stages is ``len(widths)``: fewer than 4 truncates (the
tiny Δ-encoder uses 3: stride 16 too).
"""

from __future__ import annotations

from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.sharding import param_axes


def _conv(features, kernel, stride=1, dilation=1, dtype=jnp.float32, name=None):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 kernel_dilation=(dilation, dilation), padding="SAME", use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=param_axes(nn.initializers.he_normal(),
                                        (None, None, "conv_in", "conv_out")), name=name)


def _norm(features, dtype, name=None):
  return nn.GroupNorm(num_groups=min(32, features // 2), dtype=dtype, param_dtype=jnp.float32,
                      scale_init=param_axes(nn.initializers.ones, ("norm",)),
                      bias_init=param_axes(nn.initializers.zeros, ("norm",)), name=name)


class BasicBlock(nn.Module):
  features: int
  stride: int = 1
  dilation: int = 1
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    y = nn.relu(_norm(self.features, self.dtype)(
        _conv(self.features, 3, self.stride, self.dilation, self.dtype)(x)))
    y = _norm(self.features, self.dtype)(_conv(self.features, 3, 1, self.dilation, self.dtype)(y))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = _norm(self.features, self.dtype)(_conv(self.features, 1, self.stride, 1, self.dtype)(x))
    return nn.relu(x + y)


class ResNet18(nn.Module):
  widths: Sequence[int] = (64, 128, 256, 512)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: (B, H, W, C) → (B, H/16, W/16, widths[-1])."""
    x = nn.relu(_norm(self.widths[0], self.dtype)(_conv(self.widths[0], 7, 2, 1, self.dtype)(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    strides = (1, 2, 2, 1)[:len(self.widths)]
    dilations = (1, 1, 1, 2)[:len(self.widths)]
    for width, stride, dilation in zip(self.widths, strides, dilations):
      x = BasicBlock(width, stride, dilation, self.dtype)(x)
      x = BasicBlock(width, 1, dilation, self.dtype)(x)
    return x
