"""``python -m cope_jax.data {synth,build}`` — datasets of codec primitives.

  synth  --out DIR --videos N --seed S      the embedded synthetic temporal-QA dataset
  build  --stage {pretrain,finetune,eval} --source {llava_video,mcq,synthetic} --out DIR
         [--annotations FILE …] [--videos DIR] [--workers N] [--limit N]

``python -m cope_jax.data COMMAND --help`` explains each command's options.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

from cope_jax.codec.errors import ConfigError, one_line
from cope_jax.codec.motion import MAX_SIZE
from cope_jax.codec.sampling_flags import add_sampling_flags, sampling_from_args
from cope_jax.command_line import ArgumentParser, exit_on_sigterm
from cope_jax.data import synthetic
from cope_jax.data.parallel import MAX_WORKERS, check_workers
from cope_jax.data.synthetic.scene import MAX_SECONDS


def cmd_synth(args) -> None:
  summary = synthetic.generate(args.out, args.videos, seed=args.seed, size=args.size,
                               seconds=args.seconds, workers=args.workers,
                               progress=not args.quiet)
  print(json.dumps(summary))


def cmd_build(args) -> None:
  # pylint: disable=import-outside-toplevel
  from cope_jax.data.build import build, check_limit, load_items
  from cope_jax.data.primitive_cache import ExtractSettings
  # pylint: enable=import-outside-toplevel
  settings = ExtractSettings(args.size, sampling_from_args(args), args.quantizer)  # checked here
  check_workers(args.workers)  # also checked here: --source synthetic writes videos first
  check_limit(args.limit)
  _check_flags_apply(args, settings)
  items = load_items(args.source, args.out, args.annotations, args.videos,
                     200 if args.synth_videos is None else args.synth_videos, args.seed,
                     args.size, args.workers, not args.quiet, args.conversations or "question")
  report = build(args.stage, items, args.out, settings, workers=args.workers, limit=args.limit,
                 progress=not args.quiet)
  skipped = report["skipped"]
  print(f"wrote {report['written']} videos -> {report['records']} records, "
        f"{report['bytes'] / 1e6:.1f} MB in {report['shards']}; skipped {len(skipped)}"
        + (f" (see {args.out}/report.json)" if skipped else ""))


def _check_flags_apply(args, settings) -> None:
  """ConfigError, before any work, for flags the build would ignore (--videos with an MCQ file
  reported every video missing, after the build) or settings that leave it nothing to write
  (stage 1's records are Δ-frames: found out once every video was extracted)."""
  from cope_jax.data.sources import check_seed  # pylint: disable=import-outside-toplevel
  ignored = {"--videos": args.videos is not None and args.source != "llava_video",
             "--conversations": args.conversations is not None and args.source == "llava_video",
             "--synth-videos": args.synth_videos is not None and (
                 args.source != "synthetic" or args.annotations is not None)}
  for flag, unused in ignored.items():
    if unused:
      raise ConfigError(f"{flag} does not apply to --source {args.source}"
                        + (" --annotations" if args.annotations and flag == "--synth-videos"
                           else "") + f" (see {FLAG_USES[flag]})")
  check_seed(args.seed)
  sampling = settings.sampling
  if args.stage == "pretrain" and sampling.keyframes_per_gop >= sampling.positions_per_gop:
    raise ConfigError(f"--stage pretrain writes one record per Δ-frame, and --keyframes-per-gop "
                      f"{sampling.keyframes_per_gop} makes every one of the "
                      f"{sampling.positions_per_gop} sampled positions per GOP a keyframe")


FLAG_USES = {"--videos": "--source llava_video's videos folder; an MCQ file's video paths are "
                         "its own, relative to the file",
             "--conversations": "the MCQ sources' question grouping",
             "--synth-videos": "--source synthetic without --annotations: the videos it makes"}


def build_parser() -> argparse.ArgumentParser:
  parser = ArgumentParser(prog="python -m cope_jax.data", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
  p = sub.add_parser("synth", help="generate the synthetic temporal-QA dataset",
                     description="Renders moving sprites into MPEG-4 videos (the real codec path) "
                     "and writes OUT/videos/, OUT/scenes.jsonl (ground truth), "
                     "OUT/questions.jsonl (multiple choice, with a train/validation/test split), "
                     "OUT/train_conversations.json (LLaVA-Video-178K format) and a tokenizer.")
  p.add_argument("--out", required=True, help="output folder")
  p.add_argument("--videos", type=int, default=200,
                 help=f"number of videos, 1 to {synthetic.MAX_VIDEOS} (default 200), and "
                 f"--videos x --seconds at most {synthetic.MAX_TOTAL_SECONDS} s of video")
  p.add_argument("--seed", type=int, default=0, help="scenes and splits, >= 0 (default 0)")
  p.add_argument("--size", type=int, default=96,
                 help=f"frame side in pixels, a multiple of 16 from {synthetic.MIN_SIZE} to "
                 f"{MAX_SIZE}, as the codec's re-encode (default 96)")
  p.add_argument("--seconds", type=float, default=8.0,
                 help=f"video length in seconds, 5 to {MAX_SECONDS:g} (default 8 = 1 GOP)")
  p.add_argument("--workers", type=int, default=None,
                 help=f"processes, 1 to {MAX_WORKERS} (default: all cores)")
  p.add_argument("--quiet", action="store_true", help="no progress bar")
  p.set_defaults(func=cmd_synth)

  p = sub.add_parser("build", help="extract videos into ArrayRecord shards (resumable)",
                     description="Extracts each video's codec primitives (in worker processes, "
                     "cached in OUT/cache/ so an interrupted build resumes) and writes TFDS "
                     "ArrayRecord shards plus OUT/report.json (written, skipped videos with "
                     "their reason, bytes).")
  p.add_argument("--stage", required=True, choices=["pretrain", "finetune", "eval"],
                 help="pretrain: one Δ-frame pair per record (stage 1); finetune: one video "
                      "with its conversations per record (stage 2); eval: one question per record")
  p.add_argument("--source", required=True, choices=["llava_video", "mcq", "synthetic"],
                 help="llava_video: LLaVA-Video-178K JSON + --videos; mcq: an MCQ JSONL "
                      "(video, question, options, answer per line); synthetic: the embedded "
                      "synthetic dataset")
  p.add_argument("--annotations", nargs="+", action="extend", metavar="FILE",
                 help="LLaVA-Video JSON or JSON Lines, one file or several (their entries in "
                      "order: a bucket's caption, open-ended and multiple-choice files), or one "
                      "MCQ JSONL (synthetic: its questions.jsonl, else one is generated in "
                      "OUT/synthetic)")
  p.add_argument("--videos", help="folder of the videos named in LLaVA-Video annotations")
  p.add_argument("--out", required=True, help="output folder (shards, cache/, report.json)")
  p.add_argument("--workers", type=int, default=None,
                 help=f"processes, 1 to {MAX_WORKERS} (default: all cores)")
  p.add_argument("--limit", type=int, default=None,
                 help="only the first N videos (each with all its annotations), >= 1")
  add_sampling_flags(p)
  p.add_argument("--synth-videos", type=int, default=None,
                 help="videos to generate for --source synthetic without --annotations "
                      "(default 200)")
  p.add_argument("--conversations", choices=["question", "video"], default=None,
                 help="MCQ sources: one single-turn conversation per question (default), or one "
                      "multi-turn conversation per video with all its questions (shuffled)")
  p.add_argument("--seed", type=int, default=0,
                 help="the synthetic data's seed and the order of --conversations video, >= 0 "
                      "(default 0)")
  p.add_argument("--quiet", action="store_true", help="no progress bars")
  p.set_defaults(func=cmd_build)
  return parser


def _message(e: Exception) -> str:
  """One line, naming the path first for an OS error (``PATH: reason``, as VideoError)."""
  if isinstance(e, OSError) and e.filename is not None and e.strerror:
    return f"{e.filename}: {e.strerror.lower()}"
  return one_line(e)


def main(argv: list[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    if not args.out.strip():  # (it would write into the current folder)
      raise ConfigError("--out is empty: name the output folder")
    if os.path.isfile(args.out):
      raise ConfigError(f"--out {args.out} is a file, not a folder")
    args.func(args)
  except (ConfigError, ValueError, OSError) as e:
    print(f"error: {_message(e)}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
