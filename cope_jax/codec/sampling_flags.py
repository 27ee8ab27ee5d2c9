"""The re-encode and sampling flags shared by the command lines that extract primitives
(``python -m cope_jax.codec`` and ``python -m cope_jax.data build``); ``--min-change`` also on
``generate`` and ``evaluate``."""

from __future__ import annotations

import argparse

from cope_jax.codec.sampling import MAX_FPS, MAX_GOP, MAX_GOPS, SamplingConfig


MIN_CHANGE_HELP = (
    "adaptive fusion: skip a Δ position whose frame differs from the last kept position by "
    "less than this many grey levels (0-255) in every 16x16 patch; its motion joins the next "
    "Δ-frame, fused over the longer window. Still stretches then cost no Δ-tokens. 0 keeps "
    "every position, the paper's fixed fusion (default 0)")


def add_min_change_flag(p: argparse.ArgumentParser) -> None:
  p.add_argument("--min-change", type=float, default=0.0, help=MIN_CHANGE_HELP)


def add_sampling_flags(p: argparse.ArgumentParser, with_size: bool = True,
                       with_min_change: bool = True) -> None:
  """The flags; ``with_min_change=False`` (``budget``: content-blind token arithmetic) leaves out
  ``--min-change``, which then reads as 0."""
  if with_size:
    p.add_argument("--size", type=int, default=384,
                   help="side of the square re-encoded frames, a multiple of 16 up to 2048 "
                   "(default 384)")
    p.add_argument("--quantizer", type=int, default=3,
                   help="MPEG-4 quantiser of the re-encode, 2 (best) to 31 (default 3)")
  p.add_argument("--fps", type=int, default=30,
                 help=f"frame rate of the re-encoded video, up to {MAX_FPS} (default 30)")
  p.add_argument("--gop", type=int, default=240,
                 help=f"frames per GOP: one I-frame + P-frames, up to {MAX_GOP} (FFmpeg's "
                      "MPEG-4 encoder puts an I-frame at least that often; default 240)")
  p.add_argument("--fusion", type=int, default=30,
                 help="frames fused into one Δ-frame, s; divides --gop "
                      "(default 30: 1 FPS at 30 fps)")
  p.add_argument("--keyframes-per-gop", type=int, default=1,
                 help="K keyframes per GOP, evenly spaced, the first on the I-frame (default 1)")
  p.add_argument("--max-gops", type=int, default=64,
                 help=f"longer videos keep this many GOPs, sampled uniformly, up to {MAX_GOPS} "
                      "(default 64)")
  if with_min_change:
    add_min_change_flag(p)
  else:
    p.set_defaults(min_change=0.0)


def sampling_from_args(args: argparse.Namespace) -> SamplingConfig:
  """The validated SamplingConfig of the flags above (ConfigError if they do not fit)."""
  return SamplingConfig(fps=args.fps, gop=args.gop, fusion=args.fusion,
                        keyframes_per_gop=args.keyframes_per_gop,
                        max_gops=args.max_gops,
                        min_change=args.min_change).validate()
