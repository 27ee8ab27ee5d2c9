"""The demo's first stage, the codec: a clip with known motion (or your video) → re-encoded
MPEG-4 → keyframes, fused motion vectors and residuals, checked for exact reconstruction, with
their token budget and a picture."""

from __future__ import annotations

import os
import time

import numpy as np

from cope_jax.codec import synthetic_clips
from cope_jax.codec.extract import extract_primitives, iter_video, save_npz
from cope_jax.codec.motion import reconstruct
from cope_jax.codec.probe import inspect_video
from cope_jax.codec.sampling import SamplingConfig, num_frames_for_duration, token_budget
from cope_jax.codec.visualize import render
from cope_jax.demo.progress import log


def run_codec_stage(workdir: str, video: str | None, seconds: int,
                    earlier: dict | None = None) -> dict:
  """The codec stage's results (``earlier``'s, if an earlier run did it on the same video and
  its files are there)."""
  sampling = SamplingConfig()
  npz, png = os.path.join(workdir, "primitives.npz"), os.path.join(workdir, "codec.png")
  if (earlier and os.path.abspath(earlier.get("video", "")) == os.path.abspath(
      video or os.path.join(workdir, "pan.mp4")) and os.path.exists(npz)
      and os.path.exists(png)):
    log(f"[codec] done earlier: {npz}, {png}")
    return earlier
  if video is None:
    video = os.path.join(workdir, "pan.mp4")
    if not os.path.exists(video):
      log(f"[codec] writing a {seconds} s H.264 clip with known motion: {video}")
      frames = synthetic_clips.pan_frames(seconds * 30, 360, 640, (3, 1), "coffee")
      tmp = f"{video}.tmp{os.getpid()}.mp4"  # an interrupted write leaves no broken clip
      synthetic_clips.write_clip(tmp, frames, fps=30, codec="libx264", b_frames=2)
      os.replace(tmp, video)
  info = inspect_video(video)
  log(f"[codec] input: {info['codec']} {info['width']}x{info['height']} {info['fps']} fps, "
       f"{info['num_frames']} frames, B-frames: {info['has_b_frames']}")
  start = time.perf_counter()
  prims = extract_primitives(video, sampling=sampling)
  seconds_taken = time.perf_counter() - start
  save_npz(prims, npz)
  log(f"[codec] {len(prims.rgb)} keyframes + {len(prims.mv)} Δ-frames in {seconds_taken:.2f} s "
       f"-> {npz}")

  # Exactness: the stored primitives rebuild every sampled frame from the one before it.
  rebuilt = prims.rgb[0]
  deltas = iter(range(len(prims.mv)))
  exact = True
  with_rgb = list(iter_video(video, sampling=sampling, keep_rgb=True))
  for f in with_rgb[1:]:
    if f.kind == 0:
      rebuilt = f.rgb
      continue
    i = next(deltas)
    rebuilt = reconstruct(rebuilt, prims.mv[i], prims.residual[i])
    exact &= bool(np.array_equal(rebuilt, f.target_rgb))
  residual = float(np.mean([np.abs(r).mean() for r in prims.residual]))
  plain = float(np.mean([np.abs(f.target_rgb.astype(np.int16) - f.reference_rgb).mean()
                         for f in with_rgb if f.kind == 1]))
  log(f"[codec] chained reconstruction exact: {exact}; mean |residual| {residual:.1f} vs "
       f"{plain:.1f} for the plain frame difference")
  render(with_rgb[:16], png, title=f"{os.path.basename(video)}: codec primitives")
  budget = token_budget(prims.num_frames, sampling)
  budget_64s = token_budget(num_frames_for_duration(64, 30), sampling)
  log(f"[codec] tokens for this video: {budget['cope_tokens']} (CoPE, K=1) vs "
       f"{budget['dense_tokens']} (64 dense frames); for 64 s: {budget_64s['cope_tokens']} vs "
       f"{budget_64s['dense_tokens']}; picture -> {png}")
  return {"video": video, "input": {k: info[k] for k in ("codec", "width", "height", "fps",
                                                           "num_frames", "has_b_frames")},
          "keyframes": int(len(prims.rgb)), "delta_frames": int(len(prims.mv)),
          "extract_seconds": seconds_taken, "reconstruction_exact": exact,
          "mean_abs_residual": residual, "mean_abs_frame_difference": plain,
          "tokens": budget, "tokens_64s": budget_64s, "picture": png}
