"""Which frames of a re-encoded video become keyframes and Δ-frames, and what they cost in tokens.

The re-encoded video has a fixed GOP of ``gop`` frames (one I-frame, then P-frames). Inside a GOP
we sample every ``fusion`` frames (1 FPS with the defaults 30/240), so a full GOP has
``gop // fusion`` = 8 sampled *positions*. Of those, ``keyframes_per_gop`` (K) are keyframes,
evenly spaced with the first on the I-frame (position ``floor(j * 8 / K)``); the others are
Δ-frames, each describing the change since the previous position (t − s; with adaptive fusion,
since the previous *kept* position).

Rule for the last, partial GOP: its positions are the same offsets (0, s, 2s, …) that fall inside
it, with the same keyframe/Δ assignment; frames after its last position are not covered (as in
any 1-FPS sampling). It therefore costs ``210·k + 10·d`` for the k keyframe and d Δ positions
it actually contains — a 10 s video is one full GOP plus a partial GOP of 2 positions (I + Δ).

Adaptive fusion (``min_change`` > 0; the paper's future work, "a fixed P-frame fusion window is
suboptimal for tasks with varying motion"): a Δ position is kept only if the frame there differs
from the last *kept* position by at least ``min_change`` grey levels (0–255) in some 16×16 patch
(the mean absolute difference over the patch's pixels and channels, the largest over patches:
``frame_change``). A dropped position's motion joins the next kept Δ-frame's chain, which then
describes the change over the longer window (2s, 3s, …) and is exactly reconstructable from the
last kept position. Keyframes are always kept. Still stretches cost no Δ-tokens, and slow drift
is caught once it has added up; ``plan_positions`` and ``token_budget`` give the candidate
positions, the most an adaptive video can cost.

Videos with more than ``max_gops`` GOPs keep ``max_gops`` of them, spread uniformly
(``np.linspace(0, n - 1, max_gops)`` rounded down, the first and last GOP included).

Dense sampling (``uniform_frames`` = n > 0; the ``dense`` mode, and data for a model trained on
it): LLaVA-Video's — n frames spread over the whole video, ``np.linspace(0, T − 1, n)`` rounded
down, every one a keyframe; fusion, keyframes per GOP and GOP selection do not apply.

``token_budget`` is the single place where a video's token arithmetic of the paper lives (the
``budget`` command prints it); the data pipeline instead reserves the padded slots of a batch,
``max_keyframes`` × keyframe tokens + ``max_delta_frames`` × Δ tokens of the model's config.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from cope_jax.codec.errors import ConfigError

KEYFRAME = 0
DELTA = 1

# LLM positions per frame (paper §4.4, Tab. H.5): 14×14 pooled SigLIP tokens + one newline per
# row for a keyframe; K_τ + K_δ = 8 Δ-tokens + one newline after each group of 4 for a Δ-frame.
KEYFRAME_TOKENS = 196 + 14
DELTA_TOKENS = 8 + 2
DENSE_FRAMES = 64  # LLaVA-Video samples 64 frames uniformly, whatever the length.


MAX_VIDEO_SECONDS = 1e6  # 11 days: what `codec budget` and the benchmarks accept
MAX_FPS = 240
MAX_GOP = 600     # FFmpeg's MPEG-4 encoder caps gop_size there (more needs strict=experimental)
MAX_GOPS = 4096


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  """How a video is re-encoded and sampled. Defaults are the paper's."""
  fps: int = 30
  gop: int = 240
  fusion: int = 30
  keyframes_per_gop: int = 1
  max_gops: int = 64
  min_change: float = 0.0  # adaptive fusion's threshold, grey levels; 0 keeps every position
  uniform_frames: int = 0  # > 0: LLaVA-Video's dense sampling of that many frames instead

  @property
  def positions_per_gop(self) -> int:
    return self.gop // self.fusion

  def validate(self) -> "SamplingConfig":
    """Raises ConfigError with a readable message if the combination makes no sense."""
    for name in ("fps", "gop", "fusion", "keyframes_per_gop", "max_gops"):
      if getattr(self, name) < 1:
        raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
    for name, most, why in (("fps", MAX_FPS, "the re-encoder's range"),
                            ("gop", MAX_GOP, "FFmpeg's MPEG-4 encoder puts an I-frame at least "
                                             "every 600 frames"),
                            ("max_gops", MAX_GOPS, "about 9 hours of 8 s GOPs")):
      if getattr(self, name) > most:
        raise ConfigError(f"{name} must be at most {most} ({why}), got {getattr(self, name)}")
    if not 0 <= self.min_change <= 255:
      raise ConfigError(f"min_change must be within 0-255 grey levels, got {self.min_change}")
    if self.uniform_frames < 0 or (self.uniform_frames and self.min_change):
      raise ConfigError(f"uniform_frames must be >= 0 (0: CoPE's sampling) and has no Δ-frames "
                        f"to skip, got {self.uniform_frames} with min_change {self.min_change}")
    if self.gop % self.fusion:
      raise ConfigError(f"gop ({self.gop}) must be divisible by fusion ({self.fusion})")
    if self.keyframes_per_gop > self.positions_per_gop:
      raise ConfigError(f"keyframes_per_gop ({self.keyframes_per_gop}) exceeds the "
                       f"{self.positions_per_gop} sampled positions per GOP (gop/fusion)")
    return self

  def keyframe_offsets(self) -> np.ndarray:
    """Frame offsets inside a GOP that are keyframes (the first is the I-frame)."""
    p, k = self.positions_per_gop, self.keyframes_per_gop
    return (np.arange(k) * p // k) * self.fusion


@dataclasses.dataclass(frozen=True)
class SamplingPlan:
  """The sampled positions of one video, in temporal order."""
  frames: np.ndarray  # (T,) int64 frame index in the re-encoded video
  kinds: np.ndarray   # (T,) uint8, KEYFRAME or DELTA
  gops: np.ndarray    # (T,) int64 index of the GOP in the video
  num_gops: int       # GOPs in the video (before max_gops sampling)
  fps: int

  @property
  def times(self) -> np.ndarray:
    return (self.frames / self.fps).astype(np.float32)

  @property
  def num_keyframes(self) -> int:
    return int(np.sum(self.kinds == KEYFRAME))

  @property
  def num_delta_frames(self) -> int:
    return int(np.sum(self.kinds == DELTA))


# Adaptive fusion measures change on the Δ-encoder's patch grid.
CHANGE_PATCH = 16


def frame_change(frame: np.ndarray, reference: np.ndarray, patch: int = CHANGE_PATCH) -> float:
  """How much ``frame`` differs from ``reference`` ((H, W, C) uint8) for adaptive fusion: the
  mean absolute difference over each ``patch``×``patch`` block's pixels and channels, the
  largest over blocks (a border narrower than a patch is left out), in grey levels. A small
  moving object counts as much as a camera pan; decoder noise on still content stays around 2
  (MPEG-4 at quantiser 3)."""
  if frame.shape != reference.shape:
    raise ValueError(f"frame {frame.shape} and reference {reference.shape} differ in shape")
  h, w = (frame.shape[0] // patch) * patch, (frame.shape[1] // patch) * patch
  if not h or not w:
    raise ValueError(f"frames of {frame.shape[:2]} are smaller than one {patch}×{patch} patch")
  diff = np.abs(frame[:h, :w].astype(np.int16) - reference[:h, :w].astype(np.int16))
  blocks = diff.reshape(h // patch, patch, w // patch, patch, -1).mean(axis=(1, 3, 4))
  return float(blocks.max())


def select_gops(num_gops: int, max_gops: int) -> np.ndarray:
  """Indices of the GOPs kept: all of them, or ``max_gops`` spread uniformly."""
  if num_gops <= max_gops:
    return np.arange(num_gops)
  return np.linspace(0, num_gops - 1, max_gops).astype(np.int64)


def plan_positions(num_frames: int, cfg: SamplingConfig) -> SamplingPlan:
  """Sampled positions for a video of ``num_frames`` frames at ``cfg.fps``."""
  cfg.validate()
  if num_frames < 1:
    raise ConfigError(f"a video needs at least one frame, got {num_frames}")
  num_gops = -(-num_frames // cfg.gop)
  if cfg.uniform_frames:
    frames = np.unique(np.linspace(0, num_frames - 1, min(cfg.uniform_frames, num_frames))
                       .astype(np.int64))
    return SamplingPlan(frames=frames, kinds=np.full(len(frames), KEYFRAME, np.uint8),
                        gops=frames // cfg.gop, num_gops=num_gops, fps=cfg.fps)
  offsets = np.arange(cfg.positions_per_gop) * cfg.fusion
  is_key = np.isin(offsets, cfg.keyframe_offsets())
  gop_ids = select_gops(num_gops, cfg.max_gops)
  frames = (gop_ids[:, None] * cfg.gop + offsets[None, :]).ravel()
  kinds = np.where(np.broadcast_to(is_key, (len(gop_ids), len(offsets))), KEYFRAME, DELTA).ravel()
  gops = np.repeat(gop_ids, len(offsets))
  inside = frames < num_frames  # the partial-GOP rule: keep the positions that exist
  return SamplingPlan(frames=frames[inside], kinds=kinds[inside].astype(np.uint8),
                      gops=gops[inside], num_gops=num_gops, fps=cfg.fps)


def num_frames_for_duration(duration_s: float, fps: int) -> int:
  return max(1, int(round(duration_s * fps)))


def visual_tokens(keyframes: int, delta_frames: int) -> int:
  """LLM positions of ``keyframes`` keyframes and ``delta_frames`` Δ-frames (paper §4.4)."""
  return keyframes * KEYFRAME_TOKENS + delta_frames * DELTA_TOKENS


def token_budget(num_frames: int, cfg: SamplingConfig) -> dict:
  """Visual-token cost of a video under CoPE sampling and under 64-frame dense sampling."""
  plan = plan_positions(num_frames, cfg)
  cope = visual_tokens(plan.num_keyframes, plan.num_delta_frames)
  # A clip of fewer than 64 frames: each frame once, as the dense mode feeds them (LLaVA-Video's
  # force_sample repeats frames up to 64, which only inflates the baseline).
  dense = min(DENSE_FRAMES, num_frames) * KEYFRAME_TOKENS
  return {
      "cope_tokens": int(cope),
      "dense_tokens": int(dense),
      "ratio": cope / dense,
      "keyframes": plan.num_keyframes,
      "delta_frames": plan.num_delta_frames,
      "gops": int(len(np.unique(plan.gops))),
      "gops_in_video": plan.num_gops,
      "num_frames": int(num_frames),
  }
