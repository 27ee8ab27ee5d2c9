"""The motion margins the demo's accuracy targets are judged by, for every way of asking: `cope`
minus the better keyframe run and `cope_zero_delta` minus `cope`, in points on the motion
families. By the letter they are the targets (+15 / −10); options ranked, open-ended and as if
the letter step were perfect (a right open-ended answer, else a uniform guess among the four
options) they show what the Δ-tokens carry apart from the letter step."""

from __future__ import annotations

import math

from cope_jax.evaluate import families_accuracy

KEYFRAME_RUNS = ("keyframes", "keyframes_stage2")
MARGINS = (0.15, -0.10)  # the targets': cope over the keyframe, cope_zero_delta under cope
# Accuracies are ratios of counts: a margin of exactly 10 points (4/30 vs 1/30) must not miss
# by float rounding (the targets' tolerance, report.targets' too).
EPS = 1e-9
FORMATS = (("letter", "by the letter (the targets)"), ("ranked", "options ranked"),
           ("open", "open-ended"), ("as_if_perfect", "as if the letter step were perfect"))
OPTIONS = 4


def shown_missed(value: float, digits: int, line: float, up: bool) -> float:
  """A missed target's value rounded to ``digits`` decimals for printing: as usual, unless that
  lands on its ``line`` or past it; then up (or down), away from it — a ratio of 0.2504 beside
  'ratio <= 0.25' prints 0.251, not 0.250."""
  usual = round(value, digits)
  if (usual > line) if up else (usual < line):
    return usual
  scaled = value * 10 ** digits  # (a value already on the printed grid stays as it is)
  return (math.ceil(scaled - 1e-6) if up else math.floor(scaled + 1e-6)) / 10 ** digits


def _margins(score: dict[str, float]) -> dict:
  best = max(KEYFRAME_RUNS, key=lambda m: score[m])
  over, under = score["cope"] - score[best], score["cope_zero_delta"] - score["cope"]
  # Two decimals, and judged unrounded: 45 of 301 questions is +14.95, short of +15.
  return {"cope_vs_keyframes": round(100 * over, 2), "zero_delta_vs_cope": round(100 * under, 2),
          "keyframe_run": best,
          "past_margins": [over >= MARGINS[0] - EPS, under <= MARGINS[1] + EPS]}


def motion_margins(letter: dict, ranked: dict, open_ended: dict, families) -> dict:
  """Each way of asking's margins (points, two decimals), the better keyframe run, and whether
  each margin is past the targets' (+15, −10): the evaluations of the letter, options-ranked
  and open-ended runs, each {mode: result}."""
  out = {}
  for name, modes in (("letter", letter), ("ranked", ranked), ("open", open_ended)):
    # (the motion accuracy the targets are judged on)
    score = {m: families_accuracy(modes[m], families)
             for m in (*KEYFRAME_RUNS, "cope", "cope_zero_delta")}
    out[name] = _margins(score)
    if name == "open":
      out["as_if_perfect"] = _margins({m: s + (1 - s) / OPTIONS for m, s in score.items()})
  return {name: out[name] for name, _ in FORMATS}


def describe(margins: dict) -> str:
  """The printed lines: one per way of asking."""
  lines = ["motion margins in points: cope minus the better keyframe run / cope_zero_delta minus "
           "cope", "(the targets: +15 / -10 by the letter; not targets, the other three)"]
  for name, title in FORMATS:
    m = margins[name]
    past = ", ".join(("past " if ok else "short of ") + f"{100 * need:+.0f}"
                     for ok, need in zip(m["past_margins"], MARGINS))
    lines.append(f"{title:<36}{m['cope_vs_keyframes']:+7.2f} / "
                 f"{m['zero_delta_vs_cope']:+7.2f}   ({past})")
  return "\n".join(lines)
