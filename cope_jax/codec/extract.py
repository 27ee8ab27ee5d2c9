"""From a video file to the codec primitives: keyframes, motion fields and residuals.

One decode pass over the conformant (re-encoded if needed) stream. Every frame of a kept GOP
contributes its motion vectors to the chain that is traced back to the previous sampled
position; only the sampled positions (1 FPS by default) are converted to RGB. With adaptive
fusion (``SamplingConfig.min_change``) a Δ position that barely changed since the last kept one
is skipped and its chain continues into the next Δ-frame.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Callable, Iterator

import numpy as np

from cope_jax.codec.errors import VideoError
from cope_jax.codec.motion import MotionGrid, to_pixels
from cope_jax.codec.probe import decode_frames, open_video, packets
from cope_jax.codec.reencode import EncodeSpec, conformant_video
from cope_jax.codec.sampling import (DELTA, KEYFRAME, SamplingConfig, frame_change,
                                     plan_positions)

_EXPORT_MVS = {"flags2": "+export_mvs"}


@dataclasses.dataclass
class SampledFrame:
  """One sampled position: a keyframe (``rgb``) or a Δ-frame (``mv`` and ``residual``)."""
  kind: int
  frame_index: int
  time_s: float
  rgb: np.ndarray | None = None       # (H, W, 3) uint8, keyframes only
  mv: np.ndarray | None = None        # (H, W, 2) float32 backward displacement to the reference
  residual: np.ndarray | None = None  # (H, W, 3) int16 = target − warp(reference, mv)
  # The reference is the previous position, t − s (adaptive fusion: the previous kept one).
  reference_rgb: np.ndarray | None = None  # Δ-frames: decoded RGB of the reference (not saved)
  target_rgb: np.ndarray | None = None     # Δ-frames: decoded RGB at t (not saved)


@dataclasses.dataclass
class Primitives:
  """All sampled positions of a video, in the layout of the ``extract`` .npz."""
  kinds: np.ndarray     # (T,) uint8, 0 = keyframe, 1 = Δ-frame
  times: np.ndarray     # (T,) float32 seconds
  rgb: np.ndarray       # (K, H, W, 3) uint8
  mv: np.ndarray        # (P, H, W, 2) float32
  residual: np.ndarray  # (P, H, W, 3) int16
  frame_index: np.ndarray  # (T,) int64 index in the re-encoded video
  num_frames: int       # frames in the re-encoded video
  reencoded: bool

  def arrays(self) -> dict[str, np.ndarray]:
    return {"kinds": self.kinds, "times": self.times, "rgb": self.rgb, "mv": self.mv,
            "residual": self.residual, "frame_index": self.frame_index,
            "num_frames": np.int64(self.num_frames)}


def count_frames(path: str) -> int:
  """Frames in a conformant stream, from packet headers (no decoding)."""
  with open_video(path) as (container, stream):
    return sum(1 for p in packets(container, stream) if p.size)


def iter_sampled_frames(conformant_path: str, sampling: SamplingConfig,
                        keep_rgb: bool = False,
                        on_frame: Callable[[str], None] | None = None,
                        source_path: str | None = None,
                        num_frames: int | None = None,
                        info: dict | None = None) -> Iterator[SampledFrame]:
  """Yields the sampled positions of a conformant video (see ``conformant_video``) in order.

  ``keep_rgb`` also attaches the decoded reference and target RGB to Δ-frames (for stage-1
  training pairs and visualisation). ``source_path`` names the user's file in errors. If
  ``info`` is a dict, its ``num_frames`` becomes the frames decoded once the generator is
  exhausted: fewer than the packets counted where decoding stopped at a damaged packet.
  """
  name = source_path or conformant_path
  sampling.validate()
  if num_frames is None:
    num_frames = count_frames(conformant_path)
  plan = plan_positions(num_frames, sampling)
  kind_at = dict(zip(plan.frames.tolist(), plan.kinds.tolist()))
  kept_gops = set(plan.gops.tolist())
  gop = sampling.gop
  grid = None
  steps, anchor_rgb = [], None
  decoded = 0
  with open_video(conformant_path, _EXPORT_MVS) as (container, stream):
    for index, frame in enumerate(decode_frames(name, container, stream)):
      decoded = index + 1
      if on_frame is not None:
        on_frame("extract")
      if index // gop not in kept_gops:
        continue
      if grid is None:
        grid = MotionGrid(frame.height, frame.width)
      if index % gop:  # an I-frame starts a new chain; each P-frame adds its motion field
        side = frame.side_data.get("MOTION_VECTORS")
        steps.append(grid.step_from_vectors(side.to_ndarray() if side is not None else None))
      kind = kind_at.get(index)
      if kind is None:  # between sampled positions
        continue
      rgb = frame.to_ndarray(format="rgb24")
      time_s = index / sampling.fps
      if kind == KEYFRAME:
        yield SampledFrame(KEYFRAME, index, time_s, rgb=rgb)
      elif sampling.min_change and frame_change(rgb, anchor_rgb) < sampling.min_change:
        continue  # adaptive fusion: hardly changed; the chain goes on from the kept anchor
      else:
        field = grid.trace(steps)
        yield SampledFrame(DELTA, index, time_s, mv=to_pixels(field),
                           residual=grid.residual(rgb, anchor_rgb, field),
                           reference_rgb=anchor_rgb if keep_rgb else None,
                           target_rgb=rgb if keep_rgb else None)
      anchor_rgb, steps = rgb, []
  if info is not None:
    info["num_frames"] = decoded


def iter_video(path: str | os.PathLike, size: int = 384,
               sampling: SamplingConfig = SamplingConfig(), quantizer: int = 3,
               keep_rgb: bool = False, min_frames: int | None = None,
               on_frame: Callable[[str], None] | None = None,
               info: dict | None = None) -> Iterator[SampledFrame]:
  """Any video → its sampled positions: re-encodes ``path`` if needed (in a temporary folder
  that is removed when the generator ends or is closed), then yields like ``iter_sampled_frames``.

  Videos with fewer than ``min_frames`` frames after re-encoding (default: one fusion window
  plus one, the least that can yield a Δ-frame, with K ≤ gop / (2·fusion) keyframes per GOP,
  4 at the defaults) are rejected with a VideoError. If ``info`` is a dict, it receives
  ``reencoded``, ``num_frames`` and ``conformant_bytes`` (of the conformant video; once the
  generator is exhausted, ``num_frames`` counts the frames decoded).
  """
  path = os.fspath(path)
  sampling.validate()
  spec = EncodeSpec(size=size, fps=sampling.fps, gop=sampling.gop, quantizer=quantizer).validate()
  if min_frames is None:  # (dense sampling needs one frame, and has no fusion window)
    min_frames = 1 if sampling.uniform_frames else sampling.fusion + 1
  with conformant_video(path, spec, on_frame=on_frame) as (conformant, was_reencoded):
    num_frames = count_frames(conformant)
    if info is not None:
      info.update(reencoded=was_reencoded, num_frames=num_frames,
                  conformant_bytes=os.path.getsize(conformant))
    if num_frames < min_frames:
      raise VideoError(path, f"too short: {num_frames} frames at {sampling.fps} fps, need at "
                             f"least {min_frames}" + ("" if sampling.uniform_frames else
                             f" (one fusion window of {sampling.fusion} + 1)"))
    decoded = {}
    yield from iter_sampled_frames(conformant, sampling, keep_rgb=keep_rgb, on_frame=on_frame,
                                   source_path=path, num_frames=num_frames, info=decoded)
    if decoded["num_frames"] < min_frames:  # decoding stopped at a damaged packet that early
      raise VideoError(path, f"too short: decoding stopped after {decoded['num_frames']} of "
                             f"{num_frames} frames (damaged), need at least {min_frames}")
    if info is not None:
      info["num_frames"] = decoded["num_frames"]


def extract_primitives(path: str | os.PathLike, size: int = 384,
                       sampling: SamplingConfig = SamplingConfig(),
                       quantizer: int = 3, min_frames: int | None = None,
                       on_frame: Callable[[str], None] | None = None) -> Primitives:
  """All sampled positions of any video, stacked as in the ``extract`` .npz (see ``iter_video``)."""
  info = {}
  frames = list(iter_video(path, size, sampling, quantizer, min_frames=min_frames,
                           on_frame=on_frame, info=info))
  keys = [f for f in frames if f.kind == KEYFRAME]
  deltas = [f for f in frames if f.kind == DELTA]
  hw = (size, size)
  return Primitives(
      kinds=np.array([f.kind for f in frames], np.uint8),
      times=np.array([f.time_s for f in frames], np.float32),
      rgb=np.stack([f.rgb for f in keys]) if keys else np.zeros((0,) + hw + (3,), np.uint8),
      mv=np.stack([f.mv for f in deltas]) if deltas else np.zeros((0,) + hw + (2,), np.float32),
      residual=(np.stack([f.residual for f in deltas]) if deltas
                else np.zeros((0,) + hw + (3,), np.int16)),
      frame_index=np.array([f.frame_index for f in frames], np.int64),
      num_frames=info["num_frames"], reencoded=info["reencoded"])


def save_npz(primitives: Primitives, out_path: str | os.PathLike) -> None:
  """Writes the .npz atomically: a crash never leaves a half-written file at ``out_path``."""
  out_path = os.fspath(out_path)
  tmp = f"{out_path}.tmp-{os.getpid()}"
  try:
    with open(tmp, "wb") as f:
      np.savez(f, **primitives.arrays())
    os.replace(tmp, out_path)
  except OSError as e:  # a full disk, a folder that refuses the file
    raise VideoError(out_path, f"cannot be written: {e.strerror or e}") from e
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


