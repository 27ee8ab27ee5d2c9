"""A ResNet-18 trunk at output stride 16, for residual frames (the Δ-encoder's residual branch).

A plain ResNet-18 reaches stride 32 (stem 4, then stages ×1, ×2, ×2, ×2). We keep every conv
stage but run the last one at stride 1 with dilation 2 (as DeepLab does), so features land on
the same H/16 × W/16 grid as the 16×16 motion patches. GroupNorm replaces BatchNorm: the model
stays a pure function of its parameters (no batch statistics to carry), and small per-device
batches do not hurt it. The number of stages is ``len(widths)``: fewer than 4 truncates (the
tiny Δ-encoder uses 3: stride 16 too).

Two layers compute the same function as the textbook ones, faster, with the same parameters:
the 7×7 stride-2 stem runs as a 4×4 stride-1 conv over a 2×2 space-to-depth input (as
MLPerf's TPU ResNets do), and GroupNorm reduces per channel before pooling channels into
groups. On a CPU at the demo's sizes they make the tiny Δ-encoder ~30 % faster; they change
results only by float rounding. On a CPU the stem's kernel gradient is also summed over groups
of 8 frames (see ``KERNEL_GRAD_FRAMES``): the demo's stage-2 Δ-encoder forward and backward
(56 frames) 93 → 46 ms.
"""

from __future__ import annotations

import functools
from typing import Any, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from cope_jax.models.sharding import param_axes


def _conv(features, kernel, stride=1, dilation=1, dtype=jnp.float32, name=None):
  return nn.Conv(features, (kernel, kernel), strides=(stride, stride),
                 kernel_dilation=(dilation, dilation), padding="SAME", use_bias=False,
                 dtype=dtype, param_dtype=jnp.float32,
                 kernel_init=param_axes(nn.initializers.he_normal(),
                                        (None, None, "conv_in", "conv_out")), name=name)


def _norm(features, dtype, name=None):
  return GroupNorm(num_groups=min(32, features // 2), dtype=dtype, name=name)


class GroupNorm(nn.Module):
  """``nn.GroupNorm`` (ε = 1e-6, variance as E[x²] − E[x]², parameters ``scale`` and ``bias``)
  over (B, H, W, C). Flax reshapes to (B, H, W, G, C/G) and reduces three strided axes, which
  XLA's CPU backend runs ~4× slower than reducing (B, H·W, C) per channel and then averaging
  the G groups' channels (equal counts, so the group means are the same)."""
  num_groups: int
  epsilon: float = 1e-6
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    if c % self.num_groups:
      raise ValueError(f"{c} channels do not split into {self.num_groups} groups")
    scale = self.param("scale", param_axes(nn.initializers.ones, ("norm",)), (c,), jnp.float32)
    bias = self.param("bias", param_axes(nn.initializers.zeros, ("norm",)), (c,), jnp.float32)
    per_group = c // self.num_groups
    x32 = x.astype(jnp.float32)
    flat = x32.reshape(b, h * w, c)
    group_mean = lambda v: v.mean(1).reshape(b, self.num_groups, per_group).mean(-1)  # noqa: E731
    mean, mean_sq = group_mean(flat), group_mean(jnp.square(flat))
    inv = lax.rsqrt(jnp.maximum(mean_sq - jnp.square(mean), 0.0) + self.epsilon)
    mul = jnp.repeat(inv, per_group, axis=1) * scale
    add = bias - jnp.repeat(mean, per_group, axis=1) * mul
    return (x32 * mul[:, None, None] + add[:, None, None]).astype(self.dtype)


class Stem(nn.Module):
  """The 7×7 stride-2 "SAME" conv, as a 4×4 stride-1 conv over the 2×2 space-to-depth of the
  input padded by (2, 4): the kernel is zero-padded to 8×8 and regrouped the same way (output
  pixel i reads input rows 2i − 2 … 2i + 4 either way). The kernel keeps nn.Conv's name and
  shape (7, 7, C, F). Needs even H and W."""
  features: int
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    b, h, w, c = x.shape
    if h % 2 or w % 2:
      raise ValueError(f"the ResNet stem needs an even height and width, got {h}x{w}")
    kernel = self.param("kernel", param_axes(nn.initializers.he_normal(),
                                             (None, None, "conv_in", "conv_out")),
                        (7, 7, c, self.features), jnp.float32)
    x = jnp.pad(x.astype(self.dtype), ((0, 0), (2, 4), (2, 4), (0, 0)))
    x = x.reshape(b, h // 2 + 3, 2, w // 2 + 3, 2, c).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, h // 2 + 3, w // 2 + 3, 4 * c)
    k = jnp.pad(kernel, ((0, 1), (0, 1), (0, 0), (0, 0))).reshape(4, 2, 4, 2, c, self.features)
    k = k.transpose(0, 2, 1, 3, 4, 5).reshape(4, 4, 4 * c, self.features).astype(self.dtype)
    return _stem_conv(x, k)


def _conv_valid(x: jax.Array, k: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, k, (1, 1), "VALID",
                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))


# The stem's kernel gradient is a convolution whose window is the whole output (32×32 at 64²)
# and whose features are the frames. XLA:CPU runs it 12× slower once the frames pass ~16
# (56 frames: 53.8 ms, vs 4.3 ms as the sum of seven 8-frame gradients; 8 frames 2.1 ms, 16
# 1.7, 32 10.6 — its operands stop fitting in cache): an eighth of the demo's stage-2 step. So
# on a CPU it is summed over groups of frames; the sum is the same up to float rounding.
KERNEL_GRAD_FRAMES = 8


def _kernel_grad(x: jax.Array, k: jax.Array, dy: jax.Array, frames: int) -> jax.Array:
  # The conv is linear in the kernel: transposing it gives the gradient without evaluating it.
  grad = lambda x, dy: jax.linear_transpose(lambda k: _conv_valid(x, k), k)(dy)[0]  # noqa: E731
  # (summed in float32: a bfloat16 running sum over N/8 groups lost precision as N grew — 1.4 %
  # relative error at 1024 frames where one convolution's gradient has 0.2 %)
  total = sum((grad(x[i:i + frames], dy[i:i + frames]).astype(jnp.float32)
               for i in range(0, x.shape[0], frames)), jnp.zeros(k.shape, jnp.float32))
  return total.astype(k.dtype)


@jax.custom_vjp
def _stem_conv(x: jax.Array, k: jax.Array) -> jax.Array:
  return _conv_valid(x, k)


def _stem_conv_fwd(x, k):
  return _conv_valid(x, k), (x, k)


def _stem_conv_bwd(saved, dy):
  x, k = saved
  dx = jax.linear_transpose(lambda x: _conv_valid(x, k), x)(dy)[0]  # dead code for frames (data)
  dk = lax.platform_dependent(
      x, k, dy, cpu=functools.partial(_kernel_grad, frames=KERNEL_GRAD_FRAMES),
      default=functools.partial(_kernel_grad, frames=max(1, x.shape[0])))
  return dx, dk


_stem_conv.defvjp(_stem_conv_fwd, _stem_conv_bwd)


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
    # "Conv_0": the name nn.Conv had here, so checkpoints keep loading.
    stem = Stem(self.widths[0], self.dtype, name="Conv_0")
    x = nn.relu(_norm(self.widths[0], self.dtype)(stem(x)))
    x = nn.max_pool(x, (3, 3), strides=(2, 2), padding="SAME")
    strides = (1, 2, 2, 1)[:len(self.widths)]
    dilations = (1, 1, 1, 2)[:len(self.widths)]
    for width, stride, dilation in zip(self.widths, strides, dilations):
      x = BasicBlock(width, stride, dilation, self.dtype)(x)
      x = BasicBlock(width, 1, dilation, self.dtype)(x)
    return x
