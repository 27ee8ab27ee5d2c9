"""Four-option questions generated from a scene's ground truth, in families; and a caption.

``appearance`` is answerable from any keyframe. The motion families (``direction``,
``first_mover``, ``bounces``, ``camera_pan``, ``faster``, ``first_bounce``, ``enters``) are decided
by motion that happens after frame 0, when everything is still (and a visitor is still outside
the frame): with one keyframe per 8 s GOP, only the Δ-frames can answer them.
"""

from __future__ import annotations

import numpy as np

from cope_jax.data.synthetic.scene import COLORS, DIRECTIONS, Scene

LETTERS = "ABCD"
MOTION_FAMILIES = ("direction", "first_mover", "bounces", "camera_pan", "faster", "first_bounce",
                   "enters")
FAMILIES = ("appearance",) + MOTION_FAMILIES


def _question(family: str, text: str, answer: str, distractors, rng: np.random.Generator,
              letter: int) -> dict:
  """Places the answer at ``letter`` (0–3) and three distinct distractors around it."""
  others = [d for d in dict.fromkeys(distractors) if d != answer]
  if len(others) < 3:
    raise ValueError(f"{family}: need 3 distractors, got {others}")
  others = list(rng.permutation(others)[:3])
  options = others[:letter] + [answer] + others[letter:]
  return {"family": family, "question": text, "options": [str(o) for o in options],
          "answer": LETTERS[letter], "open_answer": str(answer)}


def _absent_objects(scene: Scene, rng) -> list[str]:
  present = {s.name for s in scene.sprites + ([scene.visitor] if scene.visitor else [])}
  candidates = [f"the {c} {s}" for c in COLORS for s in ("square", "circle", "triangle")
                if f"{c} {s}" not in present]
  return list(rng.permutation(candidates))


def questions_for_scene(scene: Scene, rng: np.random.Generator, letters) -> list[dict]:
  """One question per family (where the scene supports it). ``letters`` is an iterator of
  answer positions (0–3), shared across the dataset so that answer letters are balanced."""
  qs = []
  a, b = sorted(scene.sprites, key=lambda s: s.start_frame)[:2]
  s0 = scene.sprites[int(rng.integers(len(scene.sprites)))]
  everyone = scene.sprites + ([scene.visitor] if scene.visitor else [])
  qs.append(_question(
      "appearance", f"What color is the {s0.shape}?", s0.color,
      # not the color of another object of that shape (a second sprite, or the visitor)
      [c for c in COLORS if c not in {x.color for x in everyone if x.shape == s0.shape}],
      rng, next(letters)))
  qs.append(_question(
      "direction", f"In which direction does the {s0.name} move when it starts moving?",
      s0.first_direction(), list(DIRECTIONS), rng, next(letters)))
  qs.append(_question(
      "first_mover", "Which object starts moving first?", f"the {a.name}",
      [f"the {b.name}"] + _absent_objects(scene, rng), rng, next(letters)))
  n = len(s0.bounces)
  if n <= 3:
    qs.append(_question(
        "bounces", f"How many times does the {s0.name} bounce off the edge of the frame?",
        str(n), ["0", "1", "2", "3"], rng, next(letters)))
  pan = {"none": "the camera does not move"}.get(scene.pan, scene.pan)
  qs.append(_question(
      "camera_pan", "In which direction does the camera pan?", pan,
      list(DIRECTIONS) + ["the camera does not move"], rng, next(letters)))
  fast, slow = sorted(scene.sprites[:2], key=lambda s: -s.speed())
  qs.append(_question(
      "faster", "Which object moves faster?", f"the {fast.name}",
      [f"the {slow.name}"] + _absent_objects(scene, rng), rng, next(letters)))
  bouncing = [(s.bounces[0][0], s) for s in scene.sprites if s.bounces]
  if bouncing:
    bouncing.sort(key=lambda x: x[0])
    if len(bouncing) == 1 or bouncing[1][0] - bouncing[0][0] >= scene.fps:  # ≥ 1 s apart
      first = bouncing[0][1]
      others = [f"the {s.name}" for s in scene.sprites if s is not first]
      qs.append(_question(
          "first_bounce", "Which object bounces off the edge of the frame first?",
          f"the {first.name}", others + ["no object bounces"] + _absent_objects(scene, rng),
          rng, next(letters)))
  entering = f"the {scene.visitor.name}" if scene.visitor else "no object enters"
  qs.append(_question(
      "enters", "Which object enters the frame after the video starts?", entering,
      [f"the {s.name}" for s in scene.sprites] + ["no object enters"] + _absent_objects(scene, rng),
      rng, next(letters)))
  return qs


def _times(n: int) -> str:
  return {0: "does not bounce", 1: "bounces once", 2: "bounces twice"}.get(n, f"bounces {n} times")


def caption(scene: Scene) -> str:
  """A detailed caption in temporal order (LLaVA-Video-178K's first kind of annotation): who
  moves first and where, how often each object bounces, the camera, and any visitor."""
  order = sorted(scene.sprites, key=lambda s: s.start_frame)
  parts = [f"There is a {' and a '.join(s.name for s in order)} on a {scene.texture} picture."]
  for i, s in enumerate(order):
    when = "First" if i == 0 else "Then"
    parts.append(f"{when} the {s.name} starts moving {s.first_direction()}; "
                 f"it {_times(len(s.bounces))}.")
  fast = max(scene.sprites, key=lambda s: s.speed())
  parts.append(f"The {fast.name} is faster.")
  parts.append("The camera does not move." if scene.pan == "none" else
               f"The camera pans {scene.pan}.")
  parts.append(f"The {scene.visitor.name} enters the frame." if scene.visitor else
               "No object enters the frame.")
  return " ".join(parts)
