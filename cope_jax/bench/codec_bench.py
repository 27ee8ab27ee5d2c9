"""Codec extraction speed against plain decoding of the same conformant file.

Plain decode (every frame decoded, nothing converted) is the physical floor for this step, the
bar of SPEC §8 (extraction ≥ 0.5× its frames/s). Extraction is the full CoPE path: decode with
motion-vector export, paint and chain the motion fields of every frame, and warp + residual +
RGB at the sampled positions. Decoding with every frame converted to RGB is printed too, for
scale (more work than a dense sampler does: it converts only the frames it samples).
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

from cope_jax.bench import require_positive, require_video_seconds
from cope_jax.codec import synthetic_clips
from cope_jax.codec.extract import iter_sampled_frames
from cope_jax.codec.probe import open_video
from cope_jax.codec.errors import ConfigError
from cope_jax.codec.reencode import EncodeSpec, conformant_video
from cope_jax.codec.sampling import SamplingConfig
from cope_jax.command_line import ArgumentParser


def plain_decode_fps(path: str, to_rgb: bool = True) -> tuple[float, int]:
  with open_video(path) as (container, stream):
    start, n = time.perf_counter(), 0
    for frame in container.decode(stream):
      if to_rgb:
        frame.to_ndarray(format="rgb24")
      n += 1
  return n / (time.perf_counter() - start), n


def extraction_fps(path: str, sampling: SamplingConfig) -> tuple[float, int]:
  n = 0

  def count(_phase: str):
    nonlocal n
    n += 1

  start = time.perf_counter()
  for _ in iter_sampled_frames(path, sampling, on_frame=count):
    pass
  return n / (time.perf_counter() - start), n


def run(video: str | None, seconds: int, size: int, fusion: int, repeats: int) -> dict:
  spec = EncodeSpec(size=size).validate()
  sampling = SamplingConfig(fusion=fusion)
  with tempfile.TemporaryDirectory(prefix="cope_bench_") as tmp:
    if video is None:
      video = os.path.join(tmp, "pan.mp4")
      frames = synthetic_clips.pan_frames(seconds * 30, size, size, (2, 1), name="coffee")
      synthetic_clips.write_clip(video, frames, fps=30, codec="libx264")
    start = time.perf_counter()
    with conformant_video(video, spec) as (path, reencoded):
      reencode_s = time.perf_counter() - start
      best = {"decode": 0.0, "decode_rgb": 0.0, "extract": 0.0}
      for _ in range(repeats):  # interleaved, best of N: both see the same machine state
        best["decode"] = max(best["decode"], plain_decode_fps(path, to_rgb=False)[0])
        fps, frames = plain_decode_fps(path, to_rgb=True)
        best["decode_rgb"] = max(best["decode_rgb"], fps)
        best["extract"] = max(best["extract"], extraction_fps(path, sampling)[0])
  return {"video": video, "frames": frames, "size": size, "fusion": fusion,
          "reencode_fps": frames / reencode_s if reencoded else None,
          "decode_fps": best["decode"], "decode_rgb_fps": best["decode_rgb"],
          "extract_fps": best["extract"], "ratio_vs_decode_rgb": best["extract"] / best["decode_rgb"],
          "ratio_vs_decode": best["extract"] / best["decode"],
          "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"}


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(
      prog="python -m cope_jax.bench codec",
      description="Frames/s of plain decoding vs full codec-primitive extraction, same file, "
                  "same run. Without --video a photographic pan clip is generated.")
  parser.add_argument("--video", help="any video (re-encoded first if it does not conform)")
  parser.add_argument("--seconds", type=int, default=32, help="length of the generated clip")
  parser.add_argument("--size", type=int, default=384)
  parser.add_argument("--fusion", type=int, default=30)
  parser.add_argument("--repeats", type=int, default=3, help="best of N interleaved runs")
  args = parser.parse_args(argv)
  require_positive(parser, args, "--repeats")
  require_video_seconds(parser, args.seconds)
  try:  # before the clip is made and re-encoded (seconds, or minutes for a long --video)
    SamplingConfig(fusion=args.fusion).validate()
  except ConfigError as e:
    parser.error(f"--fusion {args.fusion}: {e}")
  r = run(args.video, args.seconds, args.size, args.fusion, args.repeats)
  print(f"codec benchmark on {r['video']} ({r['frames']} frames, {r['size']}x{r['size']}, "
        f"fusion {r['fusion']}; {r['machine']})")
  if r["reencode_fps"]:
    print(f"  re-encode (once per video){r['reencode_fps']:8.0f} output frames/s")
  print(f"  plain decode (no RGB)     {r['decode_fps']:8.0f} frames/s")
  print(f"  plain decode -> RGB       {r['decode_rgb_fps']:8.0f} frames/s")
  print(f"  fused extraction          {r['extract_fps']:8.0f} frames/s")
  print(f"  extraction / decode       {r['ratio_vs_decode']:8.2f}x   (goal >= 0.5x)")
  print(f"  extraction / decode->RGB  {r['ratio_vs_decode_rgb']:8.2f}x")
