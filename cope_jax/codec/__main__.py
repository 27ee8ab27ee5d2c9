"""``python -m cope_jax.codec {inspect,extract,budget,visualize}`` — the codec tools.

Bad input exits with status 2 and one ``error:`` line naming the file and the reason.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import json
import os
import sys
import warnings

from cope_jax.codec.errors import ConfigError, VideoError
from cope_jax.codec.extract import extract_primitives, iter_video, save_npz
from cope_jax.codec.probe import inspect_video
from cope_jax.codec.sampling import MAX_VIDEO_SECONDS, num_frames_for_duration, token_budget
from cope_jax.codec.sampling_flags import add_sampling_flags, sampling_from_args
from cope_jax.command_line import ArgumentParser, exit_on_sigterm


class _Progress:
  """Frame counters on stderr, one tqdm bar per phase (re-encode, extract); silent if quiet."""

  def __init__(self, quiet: bool):
    self.quiet, self.phase, self.bar = quiet, None, None

  def __call__(self, phase: str) -> None:
    if self.quiet:
      return
    if phase != self.phase:
      from tqdm import tqdm  # pylint: disable=import-outside-toplevel
      self.close()
      self.phase = phase
      self.bar = tqdm(desc=phase, unit=" frames", file=sys.stderr, leave=False, delay=0.5)
    self.bar.update()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()

  def __enter__(self):
    return self

  def __exit__(self, *exc):
    self.close()


def cmd_inspect(args) -> None:
  print(json.dumps(inspect_video(args.video), indent=2 if args.pretty else None))


def cmd_budget(args) -> None:
  sampling = sampling_from_args(args)
  if not 0 < args.duration <= MAX_VIDEO_SECONDS:  # also refuses nan and inf
    raise ConfigError(f"--duration must be a positive number of seconds up to "
                      f"{MAX_VIDEO_SECONDS:g} (11 days), got {args.duration}")
  budget = token_budget(num_frames_for_duration(args.duration, sampling.fps), sampling)
  print(json.dumps({"duration_s": args.duration, **budget}))


def _check_out(path: str, suffix: str) -> None:
  parent = os.path.dirname(os.path.abspath(path))
  if not os.path.isdir(parent):
    raise VideoError(path, f"output folder {parent} does not exist")
  if not os.access(parent, os.W_OK):
    raise VideoError(path, f"output folder {parent} is not writable")
  if not path.endswith(suffix):
    raise VideoError(path, f"output file must end in {suffix}")
  if os.path.isdir(path):
    raise VideoError(path, "is a folder; name the output file")


def cmd_extract(args) -> None:
  _check_out(args.out, ".npz")
  sampling = sampling_from_args(args)
  with _Progress(args.quiet) as progress:
    prims = extract_primitives(args.video, size=args.size, sampling=sampling,
                               quantizer=args.quantizer, on_frame=progress)
  save_npz(prims, args.out)
  skipped = ""
  if sampling.min_change:
    planned = token_budget(prims.num_frames, sampling)["delta_frames"]
    skipped = f" ({planned - len(prims.mv)} of {planned} Δ positions skipped by --min-change)"
  print(f"wrote {args.out}: {len(prims.rgb)} keyframes, {len(prims.mv)} Δ-frames{skipped} over "
        f"{prims.num_frames} frames ({prims.num_frames / args.fps:.1f} s at {args.fps} fps)"
        f"{', re-encoded' if prims.reencoded else ', used as is'}")


def cmd_visualize(args) -> None:
  from cope_jax.codec.visualize import render  # pylint: disable=import-outside-toplevel
  _check_out(args.out, ".png")
  if args.max_positions < 1:
    raise ConfigError(f"--max-positions must be >= 1, got {args.max_positions}")
  sampling = sampling_from_args(args)
  with _Progress(args.quiet) as progress, contextlib.closing(
      iter_video(args.video, args.size, sampling, args.quantizer, keep_rgb=True,
                 on_frame=progress)) as frames:
    frames = list(itertools.islice(frames, args.max_positions))
  render(frames, args.out, title=f"{os.path.basename(args.video)}: {len(frames)} positions, "
         f"K={sampling.keyframes_per_gop} keyframes/GOP, fusion s={sampling.fusion}"
         + (f", adaptive (min change {sampling.min_change:g})" if sampling.min_change else ""))
  print(f"wrote {args.out}")


def build_parser() -> argparse.ArgumentParser:
  parser = ArgumentParser(
      prog="python -m cope_jax.codec",
      description="Codec primitives for CoPE-VideoLM: any video -> MPEG-4 Part 2 (30 fps, "
                  "GOP 240, no B-frames) -> keyframes, fused motion vectors and residuals.")
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

  p = sub.add_parser("inspect", help="describe a video as one JSON object",
                     description="Decode VIDEO and print codec, size, fps, frame count, "
                                 "duration, frame types and GOP starts as JSON.")
  p.add_argument("video")
  p.add_argument("--pretty", action="store_true", help="indent the JSON")
  p.set_defaults(func=cmd_inspect)

  p = sub.add_parser("extract", help="video -> .npz of keyframes, motion vectors, residuals",
                     description="Re-encode VIDEO if it does not conform, then write OUT.npz "
                                 "with kinds, times, rgb, mv, residual (see README).")
  p.add_argument("video")
  p.add_argument("--out", required=True, help="output .npz (written atomically)")
  add_sampling_flags(p)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_extract)

  p = sub.add_parser("budget", help="visual tokens of a video of a given length",
                     description="Print CoPE vs 64-frame dense visual-token counts as JSON.")
  p.add_argument("--duration", type=float, required=True, help="video length in seconds")
  add_sampling_flags(p, with_size=False, with_min_change=False)
  p.set_defaults(func=cmd_budget)

  p = sub.add_parser("visualize", help="PNG of keyframes, motion fields and residual maps",
                     description="Render the first sampled positions of VIDEO: the frame, the "
                                 "motion field (colour = direction, arrows) and |residual|.")
  p.add_argument("video")
  p.add_argument("--out", required=True, help="output .png")
  p.add_argument("--max-positions", type=int, default=16,
                 help="how many sampled positions to draw (default 16: two GOPs at fixed "
                 "fusion)")
  add_sampling_flags(p)
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_visualize)
  return parser


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  with warnings.catch_warnings():
    warnings.simplefilter("always")
    warnings.showwarning = lambda msg, *a, **k: print(f"warning: {msg}", file=sys.stderr)
    try:
      args.func(args)
    except VideoError as e:
      print(f"error: {e}", file=sys.stderr)
      return 2
    except ConfigError as e:
      print(f"error: invalid arguments: {e}", file=sys.stderr)
      return 2
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
