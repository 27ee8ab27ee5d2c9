"""``python -m cope_jax.evaluate --workdir DIR --data FILE.jsonl --mode MODE --out RESULTS.json``

Multiple-choice evaluation with lmms-eval's prompt and answer parsing (SPEC §5): greedy
decoding, stop at <|im_end|>, the first standalone option letter, exact match. Modes: ``cope``,
``keyframes`` (K per GOP, no Δ-frames), ``dense`` (64 uniform RGB frames, the LLaVA-Video
baseline), ``cope_zero_delta`` (Δ-tokens zeroed, paper H.3). Writes RESULTS.json (``accuracy``,
``n``, ``mode``, ``visual_tokens_mean``, per-family accuracy, mean TTFT) and a per-question log
RESULTS.log.jsonl. Unreadable videos are skipped and listed.
"""

from __future__ import annotations

import argparse
import collections
import json
import os
import sys

import numpy as np

from cope_jax.codec.errors import VideoError


def evaluate(model, questions: list[dict], mode: str, keyframes_per_gop: int = 1,
             max_new_tokens: int = 8, log_path: str | None = None, progress: bool = True,
             dense_frames: int = 64) -> dict:
  from cope_jax.data.sources import mcq_prompt  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.answers import parse_letter  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  rows, skipped, cache = [], [], {}
  log = open(log_path, "w") if log_path else None
  try:
    for q in tqdm(questions, desc=f"evaluate {mode}", unit=" questions", disable=not progress):
      try:
        if q["video"] not in cache:  # questions share videos: extract once
          cache = {q["video"]: model.video_inputs(q["video"], mode, keyframes_per_gop,
                                                  dense_frames)}
        answer = model.ask(q["video"], mcq_prompt(q["question"], q["options"]), mode,
                           keyframes_per_gop, max_new_tokens, inputs=cache[q["video"]])
      except VideoError as e:
        skipped.append({"video": q["video"], "reason": e.reason})
        continue
      letter = parse_letter(answer.text, len(q["options"]))
      row = {"id": q.get("id"), "family": q.get("family", ""), "answer": q["answer"],
             "predicted": letter, "correct": letter == q["answer"], "output": answer.text,
             "visual_tokens": answer.visual_tokens, "ttft_s": answer.ttft_s}
      rows.append(row)
      if log:
        log.write(json.dumps(row) + "\n")
  finally:
    if log:
      log.close()
  families = collections.defaultdict(list)
  for r in rows:
    families[r["family"]].append(r["correct"])
  return {"mode": mode, "n": len(rows),
          "accuracy": float(np.mean([r["correct"] for r in rows])) if rows else 0.0,
          "visual_tokens_mean": float(np.mean([r["visual_tokens"] for r in rows])) if rows else 0,
          "ttft_mean_s": float(np.mean([r["ttft_s"] for r in rows])) if rows else 0.0,
          # the median leaves out the first call of each prompt shape, which compiles
          "ttft_median_s": float(np.median([r["ttft_s"] for r in rows])) if rows else 0.0,
          "keyframes_per_gop": keyframes_per_gop,
          **({"dense_frames": dense_frames} if mode == "dense" else {}),
          "families": {f: {"accuracy": float(np.mean(v)), "n": len(v)}
                       for f, v in sorted(families.items())},
          "skipped": skipped}


def read_questions(path: str, limit: int | None = None) -> list[dict]:
  folder = os.path.dirname(os.path.abspath(path))
  out = []
  with open(path) as f:
    for n, line in enumerate(f, 1):
      if not line.strip():
        continue
      q = json.loads(line)
      for key in ("video", "question", "options", "answer"):
        if key not in q:
          raise ValueError(f"{path}:{n}: missing {key!r}")
      if not os.path.isabs(q["video"]):
        q["video"] = os.path.join(folder, q["video"])
      out.append(q)
  return out[:limit] if limit else out


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(prog="python -m cope_jax.evaluate", description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True)
  parser.add_argument("--data", required=True, help="MCQ JSONL (SPEC §6)")
  parser.add_argument("--mode", default="cope", choices=["cope", "keyframes", "dense",
                                                         "cope_zero_delta"])
  parser.add_argument("--keyframes-per-gop", type=int, default=1)
  parser.add_argument("--dense-frames", type=int, default=64,
                      help="frames sampled uniformly in --mode dense (default 64, LLaVA-Video's)")
  parser.add_argument("--out", required=True, help="RESULTS.json (+ RESULTS.log.jsonl)")
  parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
  parser.add_argument("--quiet", action="store_true")
  args = parser.parse_args(argv)
  from absl import logging  # pylint: disable=import-outside-toplevel
  logging.set_verbosity(logging.ERROR)  # Orbax's notes on read-only checkpoint folders
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  try:
    questions = read_questions(args.data, args.limit)
    model = CoPE.load(args.workdir)
  except (ValueError, FileNotFoundError, json.JSONDecodeError) as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  results = evaluate(model, questions, args.mode, args.keyframes_per_gop,
                     log_path=os.path.splitext(args.out)[0] + ".log.jsonl",
                     progress=not args.quiet, dense_frames=args.dense_frames)
  from cope_jax.json_files import write_json  # pylint: disable=import-outside-toplevel
  write_json(args.out, results)
  print(f"{args.mode}: accuracy {results['accuracy']:.3f} on {results['n']} questions, "
        f"{results['visual_tokens_mean']:.0f} visual tokens, TTFT {results['ttft_mean_s']:.3f} s")
  return 0


if __name__ == "__main__":
  sys.exit(main())
