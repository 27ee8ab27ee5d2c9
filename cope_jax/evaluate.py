"""``python -m cope_jax.evaluate --workdir DIR --data FILE.jsonl --mode MODE --out RESULTS.json``

Multiple-choice evaluation with lmms-eval's prompt and answer parsing: greedy
decoding, stop at <|im_end|>, the first standalone option letter, exact match. Modes: ``cope``,
``keyframes`` (K per GOP, no Δ-frames), ``dense`` (``--dense-frames`` uniform RGB frames, 64 by
default: the LLaVA-Video baseline), ``cope_zero_delta`` (Δ-tokens zeroed, paper H.3). Writes
RESULTS.json (``accuracy``, ``n``, ``mode``, ``visual_tokens_mean``, per-family accuracy, mean
and median TTFT) and a per-question log RESULTS.log.jsonl. Unreadable videos, and videos
whose prompt exceeds the model's positions, are skipped and listed.

``--open-ended`` asks the same questions without their options and scores an exact match (case
and a final period aside) with the right option's text: what the model knows about the video
apart from the multiple-choice letter step. ``--rank-options`` asks the question alone too and
picks the option whose text (then <|im_end|>) the model finds most likely, as lm-eval-harness
scores multiple choice for base models: nothing is generated (no TTFT).
"""

from __future__ import annotations

import argparse
import collections
import os
import sys

import numpy as np

from cope_jax.codec.errors import VideoError
from cope_jax.codec.sampling_flags import add_min_change_flag
from cope_jax.command_line import (ArgumentParser, bars_disabled, check_results_file,
                                   exit_on_sigterm)
from cope_jax.data.sources import MCQ_SUFFIX, mcq_lines, question_id
from cope_jax.infer import DENSE_FRAMES, MODES, mode_sampling, settle_mode_flags
from cope_jax.json_files import write_json, write_jsonl

ANSWER_FORMATS = ("letter", "open", "ranked")


def normalize_answer(text: str) -> str:
  """An open answer for exact matching: stripped, lower case, no final period."""
  return text.strip().lower().rstrip(".").strip()


def right_option(q: dict) -> str:
  """The text of the right option (the synthetic data's ``open_answer`` where given)."""
  from cope_jax.infer.answers import LETTERS  # pylint: disable=import-outside-toplevel
  return q.get("open_answer") or q["options"][LETTERS.index(q["answer"])]


def cached_inputs(model, frames: dict, video: str, mode: str, keyframes_per_gop: int = 1,
                  dense_frames: int = DENSE_FRAMES, min_change: float = 0.0):
  """``model.video_inputs`` of ``video`` for ``mode``, extracted once into ``frames`` (the modes
  that read the same frames share them: ``cope_zero_delta`` is ``cope``'s)."""
  kind = "cope" if mode == "cope_zero_delta" else mode
  key = (video, kind, keyframes_per_gop, dense_frames, min_change, model.codec_size)
  if key not in frames:
    frames[key] = model.video_inputs(video, mode, keyframes_per_gop, dense_frames, min_change)
  return frames[key]


def evaluate(model, questions: list[dict], mode: str, keyframes_per_gop: int = 1,
             max_new_tokens: int | None = None, log_path: str | None = None,
             progress: bool = True, dense_frames: int = DENSE_FRAMES, answer_format: str = "letter",
             frames: dict | None = None, post_prompt: str = MCQ_SUFFIX,
             min_change: float = 0.0, label: str | None = None) -> dict:
  """Accuracy of ``model`` on ``questions`` in ``mode``: multiple choice scored by the option
  letter (``answer_format="letter"``, lmms-eval's protocol); or the question alone, scored by an
  exact match of the answer with the right option's text (``"open"``) or by which option's text
  the model finds most likely (``"ranked"``). ``frames``: a dict that keeps every video's
  extracted frames, to share between calls that ask about the same videos (by default only the
  current video's are kept). ``post_prompt``: the line after the options (default lmms-eval's
  answer-with-the-letter line; "" for none). ``min_change``: adaptive fusion in the cope modes
  (``codec.sampling``). ``label`` names the run on the progress bar (default: the mode)."""
  if answer_format not in ANSWER_FORMATS:
    raise ValueError(f"answer_format must be one of {ANSWER_FORMATS}, not {answer_format!r}")
  if max_new_tokens is None:  # a letter; or room for the longest right answer's text
    max_new_tokens = 8 if answer_format == "letter" else _open_answer_room(model, questions)
  from cope_jax.data.sources import mcq_prompt  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.answers import LETTERS, parse_letter  # pylint: disable=import-outside-toplevel
  from cope_jax.infer import PromptTooLong  # pylint: disable=import-outside-toplevel
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  rows, skipped, unreadable = [], {}, set()
  store = {} if frames is None else frames
  # Each video's questions together (in their order), so that its frames are extracted once
  # even where the file interleaves videos; the log's rows name their questions by id.
  first = {}
  for i, q in enumerate(questions):
    first.setdefault(q["video"], i)
  ordered = sorted(questions, key=lambda q: first[q["video"]])
  desc = f"evaluate {label or mode}" + {"letter": "", "open": " (open-ended)",
                               "ranked": " (options ranked)"}[answer_format]
  for q in tqdm(ordered, desc=desc, unit=" questions", disable=bars_disabled(progress)):
    if q["video"] in unreadable:  # tried once
      skipped[q["video"]]["questions"] += 1
      continue
    try:
      if frames is None and q["video"] not in {key[0] for key in store}:
        store.clear()  # questions share videos: keep the current one's frames only
      inputs = cached_inputs(model, store, q["video"], mode, keyframes_per_gop, dense_frames,
                             min_change)
      if answer_format == "ranked":
        answer = model.rank_options(q["video"], q["question"], q["options"], mode,
                                    keyframes_per_gop, inputs=inputs)
      else:
        prompt = (mcq_prompt(q["question"], q["options"], post_prompt)
                  if answer_format == "letter" else
                  q["question"])
        answer = model.ask(q["video"], prompt, mode, keyframes_per_gop, max_new_tokens,
                           inputs=inputs)
    except (VideoError, PromptTooLong) as e:  # unreadable; or this prompt is too long, where
      # a shorter question about the same video may still fit
      entry = skipped.setdefault(q["video"], {"video": q["video"],
                                              "reason": getattr(e, "reason", str(e)),
                                              "questions": 0})
      entry["questions"] += 1
      if isinstance(e, VideoError):
        unreadable.add(q["video"])
      continue
    if answer_format == "ranked":
      expected, predicted = q["answer"], LETTERS[answer.best]
      output, ttft = [round(x, 4) for x in answer.log_likelihoods], None
    elif answer_format == "letter":
      expected, predicted = q["answer"], parse_letter(answer.text, len(q["options"]))
      output, ttft = answer.text, answer.ttft_s
    else:
      expected, predicted = normalize_answer(right_option(q)), normalize_answer(answer.text)
      output, ttft = answer.text, answer.ttft_s
    row = {"id": q.get("id"), "family": q.get("family", ""), "answer": expected,
           "predicted": predicted, "correct": predicted == expected, "output": output,
           "visual_tokens": answer.visual_tokens, "ttft_s": ttft}
    rows.append(row)
  if log_path:  # written whole: an interrupted run leaves no log of part of its questions
    write_jsonl(log_path, rows)
  families = collections.defaultdict(list)
  for r in rows:
    if r["family"]:  # (a line without one counts in the overall accuracy alone)
      families[r["family"]].append(r["correct"])
  def mean(key, reduce=np.mean):  # None when no question could be asked (or nothing generated)
    values = [r[key] for r in rows if r[key] is not None]
    return float(reduce(values)) if values else None

  return {"mode": mode, "answer_format": answer_format, "n": len(rows),
          "accuracy": mean("correct"), "visual_tokens_mean": mean("visual_tokens"),
          # both leave out compilation (the first call of each new prompt bucket or frame count)
          "ttft_mean_s": mean("ttft_s"), "ttft_median_s": mean("ttft_s", np.median),
          "keyframes_per_gop": keyframes_per_gop,
          **({"min_change": min_change} if min_change else {}),
          **({"dense_frames": dense_frames} if mode == "dense" else {}),
          "families": {f: {"accuracy": float(np.mean(v)), "n": len(v)}
                       for f, v in sorted(families.items())},
          "skipped": list(skipped.values())}


def families_accuracy(result: dict, families) -> float:
  """``evaluate``'s accuracy over the questions of ``families`` alone (0 if it asked none)."""
  fams = [result["families"][f] for f in families if f in result["families"]]
  n = sum(f["n"] for f in fams)
  return sum(f["accuracy"] * f["n"] for f in fams) / n if n else 0.0


def _open_answer_room(model, questions: list[dict]) -> int:
  """New tokens for an open-ended answer: the longest right answer's and a few more (matched
  exactly, an answer cut short can never be right; at least 16, the synthetic data's needs)."""
  tok = getattr(model, "tok", None)
  if tok is None or not questions:
    return 16
  longest = max(len(tok.encode(right_option(q), add_special_tokens=False).ids)
                for q in questions)
  return max(16, longest + 4)


def read_questions(path: str, limit: int | None = None) -> list[dict]:
  """The MCQ JSONL's questions, checked, video paths absolute (``data.sources.mcq_lines``); a
  line without an ``id`` (or a null one) takes its line number as one; ids must be unique (the
  per-question log's rows are joined back to the questions by them)."""
  out, lines = [], {}
  for n, q in mcq_lines(path):
    q = {**q, "id": question_id(q, n)}
    key = str(q["id"])
    if key in lines:
      raise ValueError(f"{path}: lines {lines[key]} and {n} have one id, {key!r} (a line "
                       "without one takes its line number): the log could not tell them apart")
    lines[key] = n
    out.append(q)
  if not out:
    raise ValueError(f"{path}: no questions (an MCQ JSONL has one JSON object per line)")
  return out[:limit] if limit else out


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m cope_jax.evaluate", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True,
                      help="a stage-2 training workdir or a converted checkpoint folder")
  parser.add_argument("--data", required=True,
                      help='MCQ JSONL: one {"video", "question", "options", "answer"} object per '
                      'line (video paths may be relative to the file; optional "family")')
  parser.add_argument("--tokenizer", default=None,
                      help="the tokenizer.json (Hugging Face tokenizers' format) to use "
                           "(default: the one the model was trained with, as its "
                           "train_config.json names it — a path on the machine that trained it "
                           "— or Qwen2's for a converted checkpoint)")
  parser.add_argument("--mode", default="cope", choices=MODES,
                      help="which frames the model sees (default cope; see above)")
  parser.add_argument("--keyframes-per-gop", type=int, default=None,
                      help="K, keyframes per GOP in the cope, cope_zero_delta and keyframes modes "
                      "(default 1; "
                      "--mode dense ignores it, with a warning)")
  add_min_change_flag(parser)
  parser.add_argument("--dense-frames", type=int, default=None,
                      help="frames sampled uniformly in --mode dense (default 64, LLaVA-Video's; "
                      "the other modes ignore it, with a warning)")
  parser.add_argument("--out", required=True, help="RESULTS.json (+ RESULTS.log.jsonl)")
  parser.add_argument("--limit", type=int, default=None, help="only the first N questions")
  formats = parser.add_mutually_exclusive_group()
  formats.add_argument("--open-ended", action="store_true",
                       help="ask without the options; score an exact match with the right "
                       "option's text (a probe of what the model knows apart from the letter)")
  formats.add_argument("--rank-options", action="store_true",
                       help="ask without the options; pick the option whose text the model "
                       "finds most likely (lm-eval-harness's scoring for base models; no TTFT)")
  parser.add_argument("--post-prompt", default=None,
                      help="the line after the lettered options (default lmms-eval's for "
                      "PerceptionTest: \"Answer with the option's letter from the "
                      "given choices directly.\"; \"\" for none; ignored, with a warning, with "
                      "--open-ended or --rank-options)")
  parser.add_argument("--quiet", action="store_true", help="no progress bar")
  args = parser.parse_args(argv)
  settle_mode_flags(args)
  if args.post_prompt is not None and (args.open_ended or args.rank_options):
    print("warning: --post-prompt follows the lettered options, which --open-ended and "
          "--rank-options leave out: ignored", file=sys.stderr)
  args.post_prompt = MCQ_SUFFIX if args.post_prompt is None else args.post_prompt
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  log_path = os.path.splitext(args.out)[0] + ".log.jsonl"
  try:
    check_results_file("--out", args.out)
    check_results_file("--out's per-question log", log_path)
    for written in (args.out, log_path):
      if os.path.realpath(written) == os.path.realpath(args.data):  # (links followed)
        raise ValueError(f"--out {args.out} would overwrite --data {args.data} (with "
                         f"{'the results' if written == args.out else 'its per-question log'}): "
                         "name another results file")
    mode_sampling(args.mode, args.keyframes_per_gop, args.min_change)  # a ConfigError
    for flag, value in (("--dense-frames", args.dense_frames), ("--limit", args.limit)):
      if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")
    questions = read_questions(args.data, args.limit)
    videos = {os.path.realpath(q["video"]) for q in questions}
    for written in (args.out, log_path):  # (a results file in a video's place: the video lost)
      if os.path.realpath(written) in videos:
        raise ValueError(f"--out {args.out} would overwrite a video of --data "
                         f"({written}): name another results file")
    model = CoPE.load(args.workdir, tokenizer=args.tokenizer)
    model.check_mode(args.mode)
  except (ValueError, OSError) as e:  # JSONDecodeError is a ValueError
    print(f"error: {e}", file=sys.stderr)
    return 2
  results = evaluate(model, questions, args.mode, args.keyframes_per_gop,
                     log_path=log_path,
                     progress=not args.quiet, dense_frames=args.dense_frames,
                     answer_format=("open" if args.open_ended else
                                    "ranked" if args.rank_options else "letter"),
                     post_prompt=args.post_prompt, min_change=args.min_change)
  write_json(args.out, results)
  label = args.mode + (" (open-ended)" if args.open_ended else
                       " (options ranked)" if args.rank_options else "")
  if not results["n"]:
    print(f"error: {label}: no question could be asked ({len(results['skipped'])} videos "
          f"skipped, unreadable or too long; see {args.out})", file=sys.stderr)
    return 2
  if results["skipped"]:  # listed here as well as in RESULTS.json: a user should not miss them
    skipped = results["skipped"]
    print(f"skipped {len(skipped)} videos ({sum(s['questions'] for s in skipped)} questions), "
          f"unreadable or too long (all in {args.out}):", file=sys.stderr)
    for s in skipped[:5]:
      print(f"  {s['video']}: {s['reason']}", file=sys.stderr)
    if len(skipped) > 5:
      print(f"  … and {len(skipped) - 5} more", file=sys.stderr)
  ttft = ("" if results["ttft_median_s"] is None else
          f", TTFT {results['ttft_median_s']:.3f} s (median)")
  print(f"{label}: accuracy {results['accuracy']:.3f} on {results['n']} questions, "
        f"{results['visual_tokens_mean']:.0f} visual tokens{ttft}")
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
