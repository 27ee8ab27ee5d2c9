"""The Δ-encoder (paper §3.2, appendix B) and its stage-1 companions (§3.3, appendix C).

Motion branch: motion field (H, W, 2) → normalised → 16×16 patches (16·16·2 = 512 values) →
2-layer MLP → transformer with K_τ learnable queries concatenated to the sequence → the query
outputs are the motion tokens. Residual branch: residual (H, W, 3) → ResNet-18 trunk at stride
16 (see resnet.py) → projection → transformer with its own K_δ queries → residual tokens.
Δ-tokens = concat(motion, residual) (K_τ + K_δ = 8), in the vision encoder's width.

Beyond the appendix (which leaves them implicit): learned row + column position embeddings on
the H/16 × W/16 grid (without them attention cannot tell where motion happens), and a choice of
motion normalisation: ``minmax`` (the paper: per field to [−1, 1], which discards the speed) or
``scale`` (divide by a fixed number of pixels, keeping speed comparable across videos).

Stage 1: the reference transformer maps the previous frame's vision tokens plus the motion
tokens to 729 tokens; the warped transformer maps those plus the residual tokens to the
prediction of the current frame's vision tokens (loss: patch-wise MSE, eq. 10).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from cope_jax.models.layers import Transformer, dense
from cope_jax.models.resnet import ResNet18
from cope_jax.models.sharding import constrain, param_axes


@dataclasses.dataclass(frozen=True)
class DeltaEncoderConfig:
  out_dim: int = 1152           # the vision encoder's width (Δ-tokens live in its space)
  width: int = 1152             # transformer width (appendix B: d = 1152)
  num_layers: int = 4
  num_heads: int = 9
  mlp_ratio: int = 4
  motion_queries: int = 4       # K_τ
  residual_queries: int = 4     # K_δ
  patch: int = 16
  resnet_widths: tuple[int, ...] = (64, 128, 256, 512)
  motion_norm: str = "minmax"   # or "scale"
  motion_scale: float = 64.0    # pixels per unit for motion_norm="scale"
  max_grid: int = 64            # largest H/16 or W/16 (position tables)
  dtype: Any = jnp.float32
  remat: bool = False
  scan: bool = True

  @property
  def num_tokens(self) -> int:
    return self.motion_queries + self.residual_queries


def normalise_motion(mv: jax.Array, cfg: DeltaEncoderConfig) -> jax.Array:
  """(B, H, W, 2) pixels → roughly [−1, 1]."""
  if cfg.motion_norm == "minmax":
    lo = mv.min(axis=(1, 2, 3), keepdims=True)
    hi = mv.max(axis=(1, 2, 3), keepdims=True)
    return jnp.where(hi > lo, 2 * (mv - lo) / jnp.maximum(hi - lo, 1e-6) - 1, 0.0)
  if cfg.motion_norm == "scale":
    return jnp.clip(mv / cfg.motion_scale, -4.0, 4.0)
  raise ValueError(f"unknown motion_norm {cfg.motion_norm!r}")


class GridPositions(nn.Module):
  """Adds learned row and column embeddings to (B, h, w, D) features."""
  max_grid: int

  @nn.compact
  def __call__(self, x):
    _, h, w, d = x.shape
    rows = self.param("rows", param_axes(nn.initializers.normal(0.02), ("positions", "embed")),
                      (self.max_grid, d), jnp.float32)
    cols = self.param("cols", param_axes(nn.initializers.normal(0.02), ("positions", "embed")),
                      (self.max_grid, d), jnp.float32)
    return x + (rows[:h, None, :] + cols[None, :w, :]).astype(x.dtype)


class QueryTransformer(nn.Module):
  """Transformer over [features; K queries]; returns the K query outputs in ``out_dim``."""
  cfg: DeltaEncoderConfig
  num_queries: int

  @nn.compact
  def __call__(self, features):  # (B, N, width)
    cfg = self.cfg
    queries = self.param("queries", param_axes(nn.initializers.normal(0.02), ("queries", "embed")),
                         (self.num_queries, cfg.width), jnp.float32)
    b = features.shape[0]
    x = jnp.concatenate([features, jnp.broadcast_to(queries.astype(features.dtype),
                                                    (b,) + queries.shape)], axis=1)
    x = Transformer(cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, cfg.dtype, cfg.remat, cfg.scan,
                    name="transformer")(x)[:, -self.num_queries:]
    if cfg.width != cfg.out_dim:
      # Output axis unsharded: one logical name may not appear twice in a parameter.
      x = dense(cfg.out_dim, ("embed", None), dtype=cfg.dtype, name="out")(x)
    return x


class DeltaEncoder(nn.Module):
  """(mv (B, H, W, 2) float pixels, residual (B, H, W, 3) int16) → (Δ-tokens (B, 8, out_dim), aux)
  with aux = {"motion": (B, K_τ, out_dim), "residual": (B, K_δ, out_dim)}."""
  cfg: DeltaEncoderConfig

  @nn.compact
  def __call__(self, mv: jax.Array, residual: jax.Array):
    cfg = self.cfg
    b, h, w, _ = mv.shape
    p = cfg.patch
    if h % p or w % p:
      raise ValueError(f"motion field {h}x{w} is not a multiple of the {p}-pixel patch")
    # Frames along the batch axes: XLA's propagation otherwise follows the fsdp-sharded weights
    # and runs every device's Δ-frames on every device.
    mv = constrain(mv, ("batch", None, None, None))
    residual = constrain(residual, ("batch", None, None, None))
    x = normalise_motion(mv.astype(jnp.float32), cfg).astype(cfg.dtype)
    x = x.reshape(b, h // p, p, w // p, p, 2).transpose(0, 1, 3, 2, 4, 5)
    x = x.reshape(b, h // p, w // p, p * p * 2)
    x = dense(cfg.width, (None, "mlp"), dtype=cfg.dtype, name="motion_mlp_1")(x)
    x = dense(cfg.width, ("mlp", "embed"), dtype=cfg.dtype, name="motion_mlp_2")(nn.gelu(x))
    x = GridPositions(cfg.max_grid, name="motion_positions")(x).reshape(b, -1, cfg.width)
    motion = QueryTransformer(cfg, cfg.motion_queries, name="motion_transformer")(x)

    r = residual.astype(cfg.dtype) / 255.0
    r = ResNet18(cfg.resnet_widths, cfg.dtype, name="residual_resnet")(r)
    r = dense(cfg.width, ("conv_out", "embed"), dtype=cfg.dtype, name="residual_proj")(r)
    r = GridPositions(cfg.max_grid, name="residual_positions")(r).reshape(b, -1, cfg.width)
    res = QueryTransformer(cfg, cfg.residual_queries, name="residual_transformer")(r)
    tokens = constrain(jnp.concatenate([motion, res], axis=1), ("batch", "length", "act_embed"))
    return tokens, {"motion": motion, "residual": res}


class Stage1Predictor(nn.Module):
  """Δ-encoder + reference and warped transformers: predicts the current frame's vision tokens
  from the previous frame's tokens and the codec primitives. Returns (prediction, aux)."""
  cfg: DeltaEncoderConfig

  @nn.compact
  def __call__(self, previous_tokens: jax.Array, mv: jax.Array, residual: jax.Array):
    cfg = self.cfg
    _, aux = DeltaEncoder(cfg, name="delta_encoder")(mv, residual)
    n = previous_tokens.shape[1]

    def branch(name, tokens, extra):
      # Each branch edits the tokens it is given: its output projection starts at zero, so
      # training starts from "copy the reference frame" (the RGB-only baseline) and learns
      # what motion and residuals change (the paper leaves the branches' output layer open).
      x = jnp.concatenate([tokens.astype(cfg.dtype), extra], axis=1)
      if cfg.width != cfg.out_dim:
        x = dense(cfg.width, ("embed", None), dtype=cfg.dtype, name=f"{name}_in")(x)
      x = Transformer(cfg.num_layers, cfg.num_heads, cfg.mlp_ratio, cfg.dtype, cfg.remat, cfg.scan,
                      name=name)(x)[:, :n]
      update = dense(cfg.out_dim, (None, "embed"), dtype=cfg.dtype, init_std=0.0,
                     name=f"{name}_out")(x)
      return tokens.astype(jnp.float32) + update.astype(jnp.float32)

    reference = branch("reference_transformer", previous_tokens, aux["motion"])
    prediction = branch("warped_transformer", reference, aux["residual"])
    return prediction.astype(jnp.float32), aux


def patchwise_mse(prediction: jax.Array, target: jax.Array) -> jax.Array:
  """Eq. 10 divided by the token width d, per example: the squared error averaged over patches
  and channels (eq. 10 sums the channels). A constant factor, so the minimiser and AdamW's
  steps are the same; only gradient clipping (``optim.clip_norm``) sees the scale, and losses
  stay comparable across model widths."""
  return jnp.mean(jnp.square(prediction - target.astype(jnp.float32)), axis=(1, 2))


