"""Adaptive fusion: fewer Δ-tokens at equal accuracy? The demo's CoPE model as ``--min-change``
grows.

``python -m cope_jax.bench adaptive [--workdir /tmp/cope_demo] [--thresholds 0,4,8,16,32]``

First, the tokens alone: a generated 64 s clip from a still camera in which a textured square
crosses the view between 20 and 28 s (384×384, re-encoded once, extracted at each threshold).
Then, with ``--workdir``, on the demo's held-out split (``DIR/data/synthetic/test.jsonl``) its
stage-2 model (``DIR/stage2``) answers every question in the ``cope`` mode at each threshold
(0 = the paper's fixed fusion), scored three ways: multiple choice (the letter, lmms-eval's
protocol), open-ended, and options ranked by likelihood (the demo's two probes of what the
model knows apart from the letter step, which the demo's from-scratch LLM lacks). The same
model with the keyframe alone (``keyframes``) is the floor: what the Δ-frames add. Prints, per
run, the Δ-frames kept per video, the visual tokens per question, and each accuracy overall and
on the motion families; then each threshold's accuracy minus fixed fusion's, paired over the
same questions, with its standard error. ``--out`` writes them as JSON. The model was trained
with fixed 1 s windows: the longer windows of adaptive fusion are new to it (a train–test
mismatch, as in paper Tab. H.5).
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile

import numpy as np

from cope_jax.bench import require_positive
from cope_jax.command_line import ArgumentParser, check_results_file

FORMATS = ("letter", "open", "ranked")


def _thresholds(text: str) -> list[float]:
  try:
    values = [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    values = []
  if not values or any(not 0 <= v <= 255 for v in values):
    raise argparse.ArgumentTypeError(f"comma-separated grey levels within 0-255, got {text!r}")
  return sorted(set(values))  # fixed fusion (0) first: the others are compared with it


def still_camera_tokens(thresholds: list[float], path: str, size: int = 384) -> list[dict]:
  """Visual tokens of a 64 s still-camera clip with 8 s of motion (written to ``path``), per
  threshold (K = 1)."""
  import itertools  # pylint: disable=import-outside-toplevel
  from cope_jax.codec import synthetic_clips  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.extract import iter_sampled_frames  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.reencode import (  # pylint: disable=import-outside-toplevel
      EncodeSpec, conformant_video)
  from cope_jax.codec.sampling import (  # pylint: disable=import-outside-toplevel
      DELTA, SamplingConfig, visual_tokens)
  fps, side, (start, stop) = 30, 96, (20 * 30, 28 * 30)
  # The square enters at the left edge at 20 s and has left on the right at 28 s.
  crossing = list(synthetic_clips.object_frames(stop - start, size, size,
                                                velocity=((size + side) // (stop - start), 0),
                                                start=(-side, size // 2 - side // 2), side=side))
  still = crossing[0]  # the square is still outside the view
  synthetic_clips.write_clip(path, itertools.chain(itertools.repeat(still, start), crossing,
                                                   itertools.repeat(still, 64 * fps - stop)),
                             fps=fps, codec="libx264")
  rows = []
  with conformant_video(path, EncodeSpec(size=size)) as (conformant, _):  # re-encoded once
    for t in thresholds:
      frames = list(iter_sampled_frames(conformant, SamplingConfig(min_change=t)))
      deltas = [f.time_s for f in frames if f.kind == DELTA]
      keyframes = len(frames) - len(deltas)
      rows.append({"min_change": t, "keyframes": keyframes, "delta_frames": len(deltas),
                   "tokens": visual_tokens(keyframes, len(deltas)), "delta_times_s": deltas})
  return rows


def _demo_paths(workdir: str) -> tuple[str, str]:
  """A finished demo's held-out questions and stage-2 workdir (FileNotFoundError if missing)."""
  test = os.path.join(workdir, "data", "synthetic", "test.jsonl")
  stage2 = os.path.join(workdir, "stage2")
  for path in (test, stage2):
    if not os.path.exists(path):
      raise FileNotFoundError(f"{path} not found: --workdir must be a finished demo's workdir "
                              "(python -m cope_jax.demo --workdir DIR)")
  return test, stage2


def paired_difference(correct: dict, baseline: dict) -> dict:
  """Accuracy minus ``baseline``'s over the questions both answered (question id → right), with
  the standard error of that paired difference and how many questions changed."""
  ids = sorted(set(correct) & set(baseline))
  d = np.array([float(correct[i]) - float(baseline[i]) for i in ids])
  se = float(np.std(d, ddof=1) / np.sqrt(len(d))) if len(d) > 1 else None
  return {"difference": float(d.mean()) if len(d) else None, "se": se,
          "changed": int(np.count_nonzero(d)), "n": len(ids)}


def run(workdir: str, thresholds: list[float], limit: int | None = None,
        progress: bool = True) -> list[dict]:
  """One row per run: ``keyframes``, then ``cope`` at each threshold; a cope row above 0 gets
  ``vs_fixed`` per format when 0 is among the thresholds."""
  from cope_jax.data.synthetic import MOTION_FAMILIES  # pylint: disable=import-outside-toplevel
  from cope_jax.evaluate import (  # pylint: disable=import-outside-toplevel
      evaluate, families_accuracy, read_questions)
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  test, stage2 = _demo_paths(workdir)
  questions = read_questions(test, limit)
  model = CoPE.load(stage2)
  rows, correct = [], {}
  with tempfile.TemporaryDirectory() as logs:
    for mode, threshold in [("keyframes", 0.0)] + [("cope", t) for t in thresholds]:
      frames: dict = {}  # each video extracted once for the three formats
      row = {"mode": mode, "min_change": threshold}
      for fmt in FORMATS:
        log = os.path.join(logs, f"{mode}_{threshold:g}_{fmt}.jsonl")
        r = evaluate(model, questions, mode, answer_format=fmt, frames=frames,
                     progress=progress, min_change=threshold, log_path=log)
        row[fmt] = {"all": r["accuracy"], "motion": families_accuracy(r, MOTION_FAMILIES),
                    "n": r["n"]}
        with open(log) as f:
          correct[mode, threshold, fmt] = {q["id"]: q["correct"] for q in map(json.loads, f)}
      row["visual_tokens"] = r["visual_tokens_mean"]  # per question; the same in every format
      row["delta_frames_per_video"] = float(np.mean([len(v.mv) for v in frames.values()]))
      row["videos"] = len(frames)
      if mode == "cope" and threshold and ("cope", 0.0, "letter") in correct:
        row["vs_fixed"] = {fmt: paired_difference(correct["cope", threshold, fmt],
                                                  correct["cope", 0.0, fmt]) for fmt in FORMATS}
      rows.append(row)
  return rows


def table(rows: list[dict]) -> str:
  """The rows as printed: Δ-frames, tokens and accuracies; then the paired differences."""
  head = (f"{'run':<22}{'Δ-frames':>9}{'visual tok':>11}" +
          "".join(f"{name + ' all':>13}{'motion':>8}" for name in FORMATS))
  lines = [head]
  for r in rows:
    name = r["mode"] + (f" min {r['min_change']:g}" if r["mode"] == "cope" else "")
    lines.append(f"{name:<22}{r['delta_frames_per_video']:>9.2f}{r['visual_tokens']:>11.1f}" +
                 "".join(f"{r[f]['all']:>13.1%}{r[f]['motion']:>8.1%}" for f in FORMATS))
  paired = [r for r in rows if "vs_fixed" in r]
  if paired:
    lines += ["", "minus fixed fusion, paired over the same questions (points ± standard error; "
              "questions whose answer changed)"]
    lines.append(f"{'run':<22}" + "".join(f"{name:>22}" for name in FORMATS))
    def cell(v: dict) -> str:  # no standard error from one paired question, no mean from none
      if v["difference"] is None:
        return f"{'n/a':>10} ({v['changed']:>3})"
      se = "" if v["se"] is None else f" ± {100 * v['se']:.1f}"
      return f"{100 * v['difference']:>+10.1f}{se} ({v['changed']:>3})"
    for r in paired:
      cells = "".join(cell(r["vs_fixed"][f]) for f in FORMATS)
      lines.append(f"{'cope min ' + format(r['min_change'], 'g'):<22}{cells}")
  return "\n".join(lines)


def main(argv: list[str]) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench adaptive", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", default=None,
                      help="a finished demo's workdir: also its model's accuracy per threshold")
  parser.add_argument("--thresholds", type=_thresholds, default=[0.0, 4.0, 8.0, 16.0, 32.0],
                      help="the --min-change values to run, grey levels (default 0,4,8,16,32; "
                      "decoder noise on still content is about 2)")
  parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
  parser.add_argument("--save-clip", default=None, metavar="FILE.mp4",
                      help="keep the generated still-camera clip there (H.264; e.g. for "
                      "codec visualize --min-change 4)")
  parser.add_argument("--out", default=None, help="also write the rows as JSON")
  parser.add_argument("--quiet", action="store_true", help="no progress bars")
  args = parser.parse_args(argv)
  require_positive(parser, args, "--limit")
  if args.workdir:
    _demo_paths(args.workdir)  # before the clip's half minute
  if args.out:
    check_results_file("--out", args.out)
  if args.save_clip:
    if not args.save_clip.endswith(".mp4"):
      parser.error(f"--save-clip must name an .mp4 file, got {args.save_clip}")
    check_results_file("--save-clip", args.save_clip)
  with tempfile.TemporaryDirectory() as folder:
    clip = still_camera_tokens(args.thresholds,
                               args.save_clip or os.path.join(folder, "still_camera_64s.mp4"))
  print("64 s still-camera clip, a square crossing from 20 to 28 s (K = 1; dense 64 frames: "
        "13,440 tokens)")
  print(f"{'min change':>10}{'keyframes':>10}{'Δ-frames':>9}{'tokens':>8}  Δ-frames at (s)")
  for r in clip:
    at = ",".join(f"{x:g}" for x in r["delta_times_s"]) if r["min_change"] else "every second"
    print(f"{r['min_change']:>10g}{r['keyframes']:>10}{r['delta_frames']:>9}{r['tokens']:>8}  "
          f"{at}")
  rows = []
  if args.workdir:
    rows = run(args.workdir, args.thresholds, args.limit, progress=not args.quiet)
    print()
    print(table(rows))
    print(f"{rows[0]['letter']['n']} held-out questions over {rows[-1]['videos']} videos; "
          "letter: multiple choice; open: the question alone, exact match; ranked: the most "
          "likely option's text")
  if args.out:
    from cope_jax.json_files import write_json  # pylint: disable=import-outside-toplevel
    write_json(args.out, {"still_camera_clip": clip, "workdir": args.workdir and
                          os.path.abspath(args.workdir), "demo": rows})
