"""The demo's evaluation (five runs of four modes, next-frame retrieval), its targets, table and
plots."""

from __future__ import annotations

import json
import os

import numpy as np

from cope_jax.demo.margins import EPS, MARGINS, shown_missed
from cope_jax.demo.progress import log
from cope_jax.demo.recipe import DemoSettings, Paths
from cope_jax.json_files import read_json, write_json

# (result name, model, mode). ``keyframes`` is the paper's baseline (the base model given the
# keyframes only); ``keyframes_stage2`` is the same for the fine-tuned model. The targets compare
# CoPE with the better of the two.
RUNS = (("dense", "base", "dense"), ("keyframes", "base", "keyframes"),
        ("keyframes_stage2", "stage2", "keyframes"), ("cope", "stage2", "cope"),
        ("cope_zero_delta", "stage2", "cope_zero_delta"))


# Result files per answer format, and how the progress lines name the two probes.
PREFIX = {"letter": "", "open": "open_", "ranked": "ranked_"}
PROBE = {"letter": "", "open": " open-ended", "ranked": " options ranked"}


def _result_path(p: Paths, answer_format: str, name: str, log: bool = False) -> str:
  """A run's cached result (``evaluation/<prefix><name>.json``) or its per-question log."""
  return os.path.join(p.evaluation,
                      f"{PREFIX[answer_format]}{name}{'.log.jsonl' if log else '.json'}")


def evaluate_modes(s: DemoSettings, p: Paths, motion_families, answer_format: str = "letter",
                   frames: dict | None = None, models: dict | None = None) -> dict:
  """Every run on the held-out split (cached per run in ``evaluation/``). Two probes of what
  each model knows about the video apart from the multiple-choice letter step (diagnostics, not
  targets) ask the same questions without their options: ``answer_format="open"`` scores the
  answer's exact match with the right option (``evaluation/open_*``), ``"ranked"`` which option's
  text the model finds most likely (``evaluation/ranked_*``). ``frames`` keeps the extracted
  frames between calls, ``models`` the loaded models."""
  from cope_jax.evaluate import (  # pylint: disable=import-outside-toplevel
      evaluate, families_accuracy, read_questions)
  questions = read_questions(os.path.join(p.synthetic, "test.jsonl"))
  os.makedirs(p.evaluation, exist_ok=True)
  models = {} if models is None else models
  results = {}
  for name, which, mode in RUNS:
    path = _result_path(p, answer_format, name)
    if not os.path.exists(path):
      _model(which, s, p, models)
      log(f"[evaluate] {name}{PROBE[answer_format]}: {len(questions)} held-out questions")
      r = evaluate(models[which], questions, mode,
                   log_path=_result_path(p, answer_format, name, log=True),
                   dense_frames=s.dense_frames, answer_format=answer_format, frames=frames,
                   min_change=_min_change(s, mode), label=name)
      r["model"] = which
      r["motion_accuracy"] = families_accuracy(r, motion_families)
      write_json(path, r)
    results[name] = read_json(path)
  return results


def _correct_per_question(path: str) -> dict[str, bool]:
  with open(path) as f:
    return {r["id"]: r["correct"] for r in map(json.loads, f)}


def letter_step(p: Paths) -> dict:
  """How far each run has learned the multiple-choice letter step (a diagnostic, not a
  target): its multiple-choice accuracy on the questions it answers right open-ended, and on the
  rest, from the two evaluations' per-question logs. A model that answers with the letter of the
  option it believes scores as high on the first as it can; one without the letter step scores
  about chance (25 %) on both."""
  out = {}
  for name, _, _ in RUNS:
    letters, open_ended = (_result_path(p, f, name, log=True) for f in ("letter", "open"))
    if not (os.path.exists(letters) and os.path.exists(open_ended)):
      continue  # an evaluation cached before its log was kept
    knows = _correct_per_question(open_ended)
    groups = {"open_right": [], "open_wrong": []}
    for qid, right in _correct_per_question(letters).items():
      if qid in knows:  # each format skips the prompts too long for the model on its own
        groups["open_right" if knows[qid] else "open_wrong"].append(right)
    out[name] = {k: {"n": len(v), "accuracy": float(np.mean(v)) if v else None}
                 for k, v in groups.items()}
  return out


# The recall check asks the training questions of this many training videos (the first by name).
TRAINED_VIDEOS = 60


def trained_letters(s: DemoSettings, p: Paths, frames: dict | None = None,
                    models: dict | None = None) -> dict:
  """Whether the fine-tuned model picks a letter by the options' content or recalls the letters
  it was trained on (a diagnostic, not a target): ``cope`` by letter on the training questions
  of the first ``TRAINED_VIDEOS`` training videos, split by how stage 2 asked each — as multiple
  choice, with these options in this order (its letter was a training target), or open-ended
  (no letter was). A letter step scores alike on both; recall scores higher on the first."""
  path = os.path.join(p.evaluation, "trained_cope.json")
  if not os.path.exists(path):
    from cope_jax.data.sources import mcq_prompt  # pylint: disable=import-outside-toplevel
    from cope_jax.evaluate import evaluate, read_questions  # pylint: disable=import-outside-toplevel
    with open(os.path.join(p.synthetic, "train_conversations.json")) as f:
      asked = {(c["video"], t["value"].replace("<image>", "").lstrip("\n")) for c in json.load(f)
               for t in c["conversations"] if t["from"] == "human"}
    questions = read_questions(os.path.join(p.synthetic, "train.jsonl"))
    videos = sorted({q["video"] for q in questions})[:TRAINED_VIDEOS]
    questions = [q for q in questions if q["video"] in videos]
    by_letter = {q["id"]: (os.path.relpath(q["video"], p.synthetic),
                           mcq_prompt(q["question"], q["options"])) in asked for q in questions}
    log(f"[evaluate] cope on the training questions of {len(videos)} training videos")
    models = {} if models is None else models
    log_path = os.path.join(p.evaluation, "trained_cope.log.jsonl")
    evaluate(_model("stage2", s, p, models), questions, "cope", log_path=log_path,
             frames=frames, min_change=_min_change(s, "cope"), label="cope (training questions)")
    groups = {"asked_by_letter": [], "asked_open_ended": []}
    for qid, right in _correct_per_question(log_path).items():
      groups["asked_by_letter" if by_letter[qid] else "asked_open_ended"].append(right)
    write_json(path, {"videos": len(videos), **{
        k: {"n": len(v), "accuracy": float(np.mean(v)) if v else None} for k, v in groups.items()}})
  return read_json(path)


def _min_change(s: DemoSettings, mode: str) -> float:
  """Adaptive fusion (``demo --min-change``) in the modes that read Δ-frames."""
  from cope_jax.infer import DELTA_MODES  # pylint: disable=import-outside-toplevel
  return s.min_change if mode in DELTA_MODES else 0.0


def _model(which: str, s: DemoSettings, p: Paths, models: dict):
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  if which not in models:
    models[which] = (CoPE.load(p.stage2) if which == "stage2" else
                     CoPE.load(p.base_checkpoint, tokenizer=p.tokenizer, codec_size=s.size))
  return models[which]


# The TTFT target's measurement: this many held-out questions, each asked in both modes in turn,
# over this many rounds (after one that compiles every prompt bucket).
TTFT_QUESTIONS, TTFT_ROUNDS = 40, 3


def ttft_interleaved(s: DemoSettings, p: Paths, frames: dict | None = None,
                     models: dict | None = None) -> dict:
  """Median TTFT of ``dense`` (the base model) and ``cope`` (stage 2), the two modes asked in
  turn, question by question (cached in ``evaluation/ttft.json``). The per-mode evaluations run
  a minute or more apart, and a virtual machine's speed drifts by tens of percent within an
  hour, so their medians compare two moments; asked in turn, both modes see the same ones."""
  path = os.path.join(p.evaluation, "ttft.json")
  if not os.path.exists(path):
    from cope_jax.data.sources import mcq_prompt  # pylint: disable=import-outside-toplevel
    from cope_jax import evaluate  # pylint: disable=import-outside-toplevel
    questions = evaluate.read_questions(os.path.join(p.synthetic, "test.jsonl"))[:TTFT_QUESTIONS]
    models = {} if models is None else models
    frames = {} if frames is None else frames
    runs = {"dense": _model("base", s, p, models), "cope": _model("stage2", s, p, models)}
    log(f"[ttft] dense and cope asked in turn: {len(questions)} held-out questions × "
        f"{TTFT_ROUNDS} rounds")
    times = {mode: [] for mode in runs}
    for round_ in range(TTFT_ROUNDS + 1):  # round 0 compiles (and is not counted)
      for q in questions:
        for mode, model in runs.items():
          inputs = evaluate.cached_inputs(model, frames, q["video"], mode,
                                          dense_frames=s.dense_frames,
                                          min_change=_min_change(s, mode))
          answer = model.ask(q["video"], mcq_prompt(q["question"], q["options"]), mode,
                             max_new_tokens=1, inputs=inputs)
          if round_:
            times[mode].append(answer.ttft_s)
    write_json(path, {"questions": len(questions), "rounds": TTFT_ROUNDS,
                      **{f"{mode}_s": float(np.median(t)) for mode, t in times.items()}})
  return read_json(path)


def retrieval(p: Paths) -> dict:
  """Next-frame retrieval of the stage-1 model vs RGB only, on the held-out videos."""
  path = os.path.join(p.evaluation, "retrieval.json")
  if not os.path.exists(path):
    from cope_jax.infer.retrieval import evaluate_videos  # pylint: disable=import-outside-toplevel
    with open(os.path.join(p.synthetic, "test.jsonl")) as f:
      videos = sorted({json.loads(line)["video"] for line in f if line.strip()})
    log(f"[retrieval] next-frame retrieval on {len(videos)} held-out videos")
    r = evaluate_videos(p.stage1, [os.path.join(p.synthetic, v) for v in videos])
    write_json(path, r)
  return read_json(path)


TTFT_REDUCTION = 0.60  # the target's: cope's TTFT at least this much lower than dense's


def _ttft_met(ttft: dict) -> bool:
  return ttft["cope_s"] <= (1 - TTFT_REDUCTION) * ttft["dense_s"]


def _ttft_change(ttft: dict) -> float:
  """cope's TTFT against dense's in percent, as printed: short of the target's −60 %, never
  shown at it (−59.96 % as −59.9, not −60.0)."""
  change = 100 * (ttft["cope_s"] / ttft["dense_s"] - 1)
  return change if _ttft_met(ttft) else shown_missed(change, 1, -100 * TTFT_REDUCTION, up=True)


def targets(modes: dict, ret: dict, ttft: dict) -> dict:
  """The issue's targets, each with the measured values and whether it is met (the time target
  is added when the demo ends: ``time_target``); ``ttft``: ``ttft_interleaved``'s medians."""
  cope = modes["cope"]
  keyframes = max(modes["keyframes"]["motion_accuracy"],
                  modes["keyframes_stage2"]["motion_accuracy"])
  dense = modes["dense"]
  checks = {
      "motion_cope_vs_keyframes": {
          "cope": cope["motion_accuracy"], "keyframes": keyframes, "need": "cope >= keyframes + 0.15",
          "met": cope["motion_accuracy"] >= keyframes + MARGINS[0] - EPS},
      "motion_zero_delta_vs_cope": {
          "cope_zero_delta": modes["cope_zero_delta"]["motion_accuracy"],
          "cope": cope["motion_accuracy"], "need": "cope_zero_delta <= cope - 0.10",
          "met": (modes["cope_zero_delta"]["motion_accuracy"]
                  <= cope["motion_accuracy"] + MARGINS[1] + EPS)},
      "visual_tokens": {
          "cope": cope["visual_tokens_mean"], "dense": dense["visual_tokens_mean"],
          "ratio": cope["visual_tokens_mean"] / dense["visual_tokens_mean"],
          "need": "ratio <= 0.25",
          "met": cope["visual_tokens_mean"] <= 0.25 * dense["visual_tokens_mean"] + EPS},
      "ttft": {
          "cope_s": ttft["cope_s"], "dense_s": ttft["dense_s"],
          "reduction": 1 - ttft["cope_s"] / ttft["dense_s"],
          "need": f"reduction >= {TTFT_REDUCTION:.2f}", "met": _ttft_met(ttft),
          "measured": f"medians of {ttft['questions']} held-out questions x {ttft['rounds']} "
                      "rounds, the two modes asked in turn"},
      "retrieval_recall@1": {
          "cope": ret["cope"]["recall@1"], "rgb_only": ret["rgb_only"]["recall@1"],
          # (means of per-video fractions: equal hit counts may differ in the last bit)
          "need": "cope > rgb_only",
          "met": ret["cope"]["recall@1"] > ret["rgb_only"]["recall@1"] + EPS},
  }
  return checks


def time_target(seconds: float, quick: bool) -> dict:
  """The whole demo within 30 minutes on the 2-core machine, ``--quick`` within 5: the time of
  every run on this workdir (a resumed demo adds each run's)."""
  limit = 5.0 if quick else 30.0
  return {"minutes": seconds / 60, "need": f"minutes <= {limit:.0f}",
          "met": seconds <= 60 * limit}


def table(modes: dict, ret: dict, probes: dict[str, dict] | None = None,
          ttft: dict | None = None, letter: dict | None = None,
          trained: dict | None = None) -> str:
  """The targets' runs, retrieval, the interleaved TTFT (``ttft_interleaved``), each probe
  (``{"open": …, "ranked": …}``) per family, the letter step (``letter_step``) and the recall
  check (``trained_letters``)."""
  head = (f"{'mode':<18}{'model':<8}{'visual tok':>11}{'TTFT ms':>9}{'all':>7}{'motion':>8}"
          f"{'appear.':>9}")
  lines = [head, "-" * len(head)]
  for name, r in modes.items():
    appearance = r["families"].get("appearance", {}).get("accuracy", float("nan"))
    lines.append(f"{name:<18}{r['model']:<8}{r['visual_tokens_mean']:>11.0f}"
                 f"{1000 * r['ttft_median_s']:>9.1f}{r['accuracy']:>7.1%}"
                 f"{r['motion_accuracy']:>8.1%}{appearance:>9.1%}")
  lines.append(f"next-frame retrieval R@1: stage-1 prediction {ret['cope']['recall@1']:.1%} vs "
               f"RGB only {ret['rgb_only']['recall@1']:.1%} ({ret['videos']} videos)")
  if ttft:
    lines.append(f"TTFT, dense and cope asked in turn ({ttft['questions']} questions × "
                 f"{ttft['rounds']} rounds; the target's measurement): dense "
                 f"{1000 * ttft['dense_s']:.1f} ms, cope {1000 * ttft['cope_s']:.1f} ms "
                 f"({_ttft_change(ttft):+.1f}%)")
  titles = {"open": "open-ended probe (the same questions without options; exact match with "
                    "the right option; not a target)",
            "ranked": "options-ranked probe (the same questions without options; the option "
                      "the model finds most likely; not a target)"}
  for probe, results in (probes or {}).items():
    families = sorted({f for r in results.values() for f in r["families"]})
    width = {f: max(13, len(f) + 1) for f in families}  # (each family's name whole)
    lines += ["", titles[probe], f"{'mode':<18}{'all':>7}{'motion':>8}"
              + "".join(f"{f:>{width[f]}}" for f in families)]
    for name, r in results.items():
      lines.append(f"{name:<18}{r['accuracy']:>7.1%}{r['motion_accuracy']:>8.1%}" + "".join(
          f"{r['families'].get(f, {}).get('accuracy', float('nan')):>{width[f]}.1%}"
          for f in families))
  if letter:
    lines += ["", "letter step (multiple-choice accuracy on the questions answered right "
                  "open-ended, and on the rest; not a target)",
              f"{'mode':<18}{'open right':>11}{'n':>6}{'rest':>8}{'n':>6}"]
    for name, r in letter.items():
      cells = "".join(f"{'-' if g['accuracy'] is None else format(g['accuracy'], '.1%'):>{w}}"
                      f"{g['n']:>6}" for g, w in ((r["open_right"], 11), (r["open_wrong"], 8)))
      lines.append(f"{name:<18}{cells}")
  if trained:
    lines += ["", f"letters recalled or picked (cope by letter on the training questions of "
                  f"{trained['videos']} training videos; not a target)"]
    for key, title in (("asked_by_letter", "asked by letter in stage 2"),
                       ("asked_open_ended", "asked open-ended in stage 2")):
      g = trained[key]
      accuracy = "-" if g["accuracy"] is None else format(g["accuracy"], ".1%")
      lines.append(f"{title:<30}{accuracy:>8}{g['n']:>6}")
  return "\n".join(lines)
