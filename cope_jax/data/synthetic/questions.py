"""Four-option questions generated from a scene's ground truth, in families; and a caption.

``appearance`` is answerable from any keyframe. The motion families (``direction``,
``first_mover``, ``bounces``, ``camera_pan``, ``faster``, ``first_bounce``, ``enters``) are decided
by motion that happens after frame 0, when everything is still (and a visitor is still outside the
frame): with one keyframe per 8 s GOP, only the Δ-frames can answer them. So that the keyframe
gives no shortcut, a question about objects frame 0 shows offers the scene's other objects among
its distractors, and ``enters``, about an object frame 0 does not show, offers none of them nor
their colours (with "no object enters"). No answer depends on what one-per-second sampling
(``Scene.last_seen_frame``, ``seen_reversals``) does not show, in the frames as drawn (whole
pixels; ``SEEN_PX`` of displacement to count): ``bounces`` and ``first_bounce`` are asked where
every bounce counted shows as the object turning back between sampled positions, ``first_mover``
where the first mover is seen moving at an earlier sampled frame than the other, ``direction``
where the first sampled step of motion shows that direction (and the object had room for that
second whichever way it went: no prior from where frame 0 shows it), ``faster`` where the sampled
steps rank the objects alike by ``FASTER_RATIO`` or more. ``appearance``, ``first_mover`` and
``faster`` ask about the objects "in the first frame" (a visitor is not one of them). No
option's text is a prior for the answer but ``bounces``' "0" (below): ``bounces`` answers are
balanced over the dataset (each count asked about as often as the rarest of 1, 2 and 3, or one
count would be the answer two times in three; "0" is the answer of few, so never picking it
scores 31 %), "no object enters" is the answer of a quarter of ``enters`` questions (about 55 %
of the scenes have no visitor), and "no object bounces", which would never be right, is no
option.
"""

from __future__ import annotations

import collections

import numpy as np

from cope_jax.data.synthetic.scene import (COLORS, DIRECTIONS, SHAPES, Scene, direction_of,
                                            sampled_frames)

LETTERS = "ABCD"
# The objects ``first_mover`` and ``faster`` compare, named so that a visitor (which enters
# moving, often faster, and after frame 0) is not one of them: asked open-ended, "Which object
# moves faster?" had two right answers in a quarter of those questions.
IN_FRAME_0 = "in the first frame"
MOTION_FAMILIES = ("direction", "first_mover", "bounces", "camera_pan", "faster", "first_bounce",
                   "enters")
FAMILIES = ("appearance",) + MOTION_FAMILIES


def _question(family: str, text: str, answer: str, distractors, rng: np.random.Generator,
              letter: int, keep=()) -> dict:
  """Places the answer at ``letter`` (0–3) and three distinct distractors around it: those in
  ``keep`` always (three of them at random if there are more), the rest from ``distractors``.

  ``keep`` holds what a keyframe shows as well as the answer — the scene's other objects, "no
  object …": drawn at random from a pool of mostly absent objects, the answer was often the one
  object of the options in the picture, and a model that saw only the first frame could pick it
  (in 83 % of ``first_mover``, ``faster`` and ``first_bounce`` questions)."""
  keep = [str(k) for k in dict.fromkeys(keep) if k != answer]
  keep = [str(k) for k in rng.permutation(keep)[:3]] if len(keep) > 3 else keep
  rest = [str(d) for d in dict.fromkeys(distractors) if d != answer and d not in keep]
  others = keep + [str(d) for d in rng.permutation(rest)[:3 - len(keep)]] if rest else keep
  if len(others) < 3:
    raise ValueError(f"{family}: need 3 distractors, got {others}")
  others = [str(o) for o in rng.permutation(others)]
  options = others[:letter] + [answer] + others[letter:]
  return {"family": family, "question": text, "options": [str(o) for o in options],
          "answer": LETTERS[letter], "open_answer": str(answer)}


def _absent_pair(scene: Scene, rng) -> list[str]:
  """Two objects the video never shows, drawn as the scene draws its own two (colours no object
  has, two different shapes): beside the scene's pair as options, drawn from every unused name
  they often shared a colour or shape with another option, and the option unlike the others
  was the answer for 35–40 % of ``first_mover``, ``faster`` and ``first_bounce`` questions from
  their text alone."""
  used = {s.color for s in scene.everyone}
  colors = rng.choice([c for c in COLORS if c not in used], 2, replace=False)
  shapes = rng.choice(SHAPES, 2, replace=False)
  return [f"the {c} {s}" for c, s in zip(colors, shapes)]


def _absent_objects(scene: Scene, rng, colors=tuple(COLORS)) -> list[str]:
  present = {s.name for s in scene.everyone}
  candidates = [f"the {c} {s}" for c in colors for s in ("square", "circle", "triangle")
                if f"{c} {s}" not in present]
  return list(rng.permutation(candidates))


# Pixels of displacement a sampled step must show to count as motion (along an axis, for a turn
# or a direction; at all, for a start): the frames draw objects at whole pixels, and a bounce
# that moves an object 0.2 px between two looks shows nothing.
SEEN_PX = 2


def seen_positions(sprite, scene: Scene) -> np.ndarray:
  """(sampled frames, 2): where the frames one-per-second sampling sees draw the object — at
  whole pixels, as ``render`` draws it."""
  return np.rint(sprite.positions[sampled_frames(scene)])


def _sampled_steps(sprite, scene: Scene) -> np.ndarray:
  """(steps, 2): the object's drawn displacement between consecutive sampled frames."""
  return np.diff(seen_positions(sprite, scene), axis=0)


def seen_reversals(sprite, scene: Scene, min_px: int = SEEN_PX) -> list[int]:
  """The sampled frames by which the object is seen to turn back along an axis — each a bounce
  seen — in order: where a sampled step reverses the previous one that moved at least
  ``min_px`` along that axis, moving as far itself. A bounce in the object's first second of
  motion, within a second of the last look, or near a look (the object back where it was) may
  show none."""
  frames = sampled_frames(scene)
  steps = _sampled_steps(sprite, scene)
  out = []
  for axis in range(2):
    signs = [(k, np.sign(x)) for k, x in enumerate(steps[:, axis]) if abs(x) >= min_px]
    out += [int(frames[k + 1]) for (_, a), (k, b) in zip(signs, signs[1:]) if a != b]
  return sorted(out)


def seen_start(sprite, scene: Scene) -> int | None:
  """The first sampled frame that shows the object ``SEEN_PX`` or more from where frame 0 draws
  it (None: never, to the last look)."""
  positions = seen_positions(sprite, scene)
  moved = np.abs(positions - positions[0]).max(axis=1) >= SEEN_PX
  return int(sampled_frames(scene)[np.argmax(moved)]) if moved.any() else None


def seen_direction(sprite, scene: Scene) -> str | None:
  """Where the first sampled step after the object starts shows it going: its larger drawn
  component, at least ``SEEN_PX`` and larger than the other (None: that step shows no clear
  direction)."""
  frames = sampled_frames(scene)
  k = int(np.searchsorted(frames, sprite.start_frame, side="right")) - 1  # the step spanning it
  steps = _sampled_steps(sprite, scene)
  if not 0 <= k < len(steps):
    return None
  dx, dy = steps[k]
  if max(abs(dx), abs(dy)) < SEEN_PX or abs(dx) == abs(dy):
    return None
  return direction_of(steps[k])


def _room_every_way(sprite, scene: Scene) -> bool:
  """Whether the object has room for its first second of motion whichever way it went: asked
  only where it did not bounce in that second, ``direction`` was asked mostly about objects
  heading away from the nearer wall, and frame 0's position alone guessed 31 % right (chance
  25 %). Its speed along the main axis is the same whichever way it goes, so this condition
  tells nothing of the answer."""
  x, y = sprite.positions[sprite.start_frame]
  hi = scene.size - sprite.side
  step = np.abs(sprite.positions[sprite.start_frame + 1] - sprite.positions[sprite.start_frame])
  return min(x, hi - x, y, hi - y) >= (scene.fps - 1) * step.max()


def _balanced(asked: collections.Counter, family: str, answer, share: dict) -> bool:
  """Whether to ask ``family`` with ``answer`` now (counted if so), keeping each answer's share
  of the family's questions near ``share`` over the dataset: it is asked while its count is not
  ahead of its share of the answers counted so far (the first one of each always is)."""
  counts = {a: asked[family, a] for a in share}
  total = sum(counts.values())
  if counts[answer] > share[answer] * (total + 1) and total >= len(share):
    return False
  asked[family, answer] += 1
  return True


def _bounces_subject(scene: Scene, asked: collections.Counter, turns: dict):
  """The sprite to ask ``bounces`` about, or None: of the sprites whose every bounce (at most
  three) is seen, the one whose count ``asked`` holds least, asked only while that count is not
  ahead of the rarest of 1, 2 and 3 — left to chance, "1" was the answer of 58–68 % (slow sprites
  in an 8 s video mostly bounce once), a prior every mode learns and no frame is needed for.
  ("0", an option of every such question, is the answer of few: nearly every object bounces.)
  An object that hit a corner is not asked about: one bounce or two, off two edges at once."""
  seen = [s for s in scene.sprites
          if len(s.bounces) <= 3 and len(turns[id(s)]) == len(s.bounces)
          and not any("-" in wall for _, wall in s.bounces)]
  if not seen:
    return None
  subject = min(seen, key=lambda s: asked["bounces", len(s.bounces)])
  n = len(subject.bounces)
  if asked["bounces", n] > min(asked["bounces", k] for k in (1, 2, 3)):
    return None
  asked["bounces", n] += 1
  return subject


def _first_bounce(scene: Scene, turns: dict):
  """The object that bounces first, where sampling shows it first (``turns``: each object's
  ``seen_reversals`` by id): the first bounce's object
  turns back at an earlier sampled frame than any other does, and no other bounces within a
  second of it; or None."""
  bouncing = sorted((s.bounces[0][0], i) for i, s in enumerate(scene.sprites) if s.bounces)
  if not bouncing:
    return None
  frame, i = bouncing[0]
  first = scene.sprites[i]
  seen = (turns[id(first)] or [None])[0]
  if seen is None:
    return None
  for s in scene.sprites:
    if s is first:
      continue
    # (any other turn by then, of a pixel too, would leave the first one in doubt)
    faint = (seen_reversals(s, scene, min_px=1) or [None])[0]
    if (s.bounces and s.bounces[0][0] - frame < scene.fps) or (faint is not None and faint <= seen):
      return None
  return first


# How much faster the answer of ``faster`` must be seen to move than the other object: near a
# tie the drawn pixels can rank them the other way.
FASTER_RATIO = 1.2


def _sampled_speed(sprite, scene: Scene) -> float:
  """Mean drawn displacement per sampled step once the object moves (what the Δ-frames show)."""
  steps = _sampled_steps(sprite, scene)[sampled_frames(scene)[1:] > sprite.start_frame]
  return float(np.hypot(steps[:, 0], steps[:, 1]).mean()) if len(steps) else 0.0


def questions_for_scene(scene: Scene, rng: np.random.Generator, letters,
                        asked: collections.Counter | None = None) -> list[dict]:
  """One question per family (where the scene supports it). ``letters`` is an iterator of
  answer positions (0–3), and ``asked`` counts the ``bounces`` and ``enters`` answers given so
  far: both shared across the dataset, so that answer letters, bounce counts and "no object
  enters" are balanced."""
  asked = collections.Counter() if asked is None else asked
  qs = []
  a, b = sorted(scene.sprites, key=lambda s: s.start_frame)[:2]
  s0 = scene.sprites[int(rng.integers(len(scene.sprites)))]
  everyone = scene.everyone
  # "in the first frame": a visitor of that shape may enter later (frame 0's sprites differ in
  # shape), and "What color is the circle?" had two right answers asked open-ended
  qs.append(_question(
      "appearance", f"What color is the {s0.shape} in the first frame?", s0.color,
      # not the color of another object of that shape (a second sprite, or the visitor)
      [c for c in COLORS if c not in {x.color for x in everyone if x.shape == s0.shape}],
      rng, next(letters)))
  # Asked only when the first second of motion goes one way (a bounce in it would make the
  # first sampled step another direction) and the drawn step shows it.
  if (_room_every_way(s0, scene)
      and (not s0.bounces or s0.bounces[0][0] >= s0.start_frame + scene.fps)
      and seen_direction(s0, scene) == s0.first_direction()):
    qs.append(_question(
        "direction", f"In which direction does the {s0.name} move when it starts moving?",
        s0.first_direction(), list(DIRECTIONS), rng, next(letters)))
  others = [f"the {s.name}" for s in scene.sprites if s is not a]
  starts = [seen_start(s, scene) for s in scene.sprites]
  seen_a = starts[scene.sprites.index(a)]
  # asked where the frames show it first: a slow start (or a bounce back near a look) can keep
  # an object where it was drawn until the other one moves too
  if seen_a is not None and all(t is None or t > seen_a for s, t in zip(scene.sprites, starts)
                                if s is not a):
    qs.append(_question(
        "first_mover", f"Which of the objects {IN_FRAME_0} starts moving first?", f"the {a.name}",
        _absent_pair(scene, rng), rng, next(letters), keep=others))
  # each object's seen bounces, by id: what both bounce families ask about
  turns = {id(s): seen_reversals(s, scene) for s in scene.sprites}
  counted = _bounces_subject(scene, asked, turns)
  if counted is not None:
    qs.append(_question(
        "bounces", f"How many times does the {counted.name} bounce off the edge of the frame?",
        str(len(counted.bounces)), ["0", "1", "2", "3"], rng, next(letters)))
  pan = {"none": "the camera does not move"}.get(scene.pan, scene.pan)
  qs.append(_question(
      "camera_pan", "In which direction does the camera pan?", pan,
      list(DIRECTIONS) + ["the camera does not move"], rng, next(letters)))
  fast, slow = sorted(scene.sprites[:2], key=lambda s: -s.speed())
  # (asked where the sampled steps rank them alike, clearly: bounces shorten what a second
  # shows, and drawn pixels round)
  if _sampled_speed(fast, scene) >= FASTER_RATIO * _sampled_speed(slow, scene):
    qs.append(_question(
        "faster", f"Which of the objects {IN_FRAME_0} moves faster?", f"the {fast.name}",
        _absent_pair(scene, rng), rng, next(letters), keep=[f"the {slow.name}"]))
  first = _first_bounce(scene, turns)
  if first is not None:  # ("no object bounces" is no option: it would never be the answer)
    qs.append(_question(
        "first_bounce", "Which object bounces off the edge of the frame first?",
        f"the {first.name}", _absent_pair(scene, rng), rng, next(letters),
        keep=[f"the {s.name}" for s in scene.sprites if s is not first]))
  # "no object enters" is an option of every such question and the answer of a quarter (about
  # 55 % of the scenes have no visitor: left to chance, of more than half); the other options
  # are objects frame 0 does not show, in colours it does not show, as the visitor's is not (the
  # scene's objects, ruled out by the keyframe, left a keyframe-only guess between two options;
  # an option in a colour frame 0 shows, one of three).
  if _balanced(asked, "enters", scene.visitor is None, {True: 0.25, False: 0.75}):
    entering = f"the {scene.visitor.name}" if scene.visitor else "no object enters"
    unseen = [c for c in COLORS if c not in {s.color for s in scene.sprites}]
    qs.append(_question(
        "enters", "Which object enters the frame after the video starts?", entering,
        _absent_objects(scene, rng, unseen), rng, next(letters), keep=["no object enters"]))
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
  slower = " and the ".join(s.name for s in scene.sprites if s is not fast)
  parts.append(f"The {fast.name} moves faster than the {slower}.")
  parts.append("The camera does not move." if scene.pan == "none" else
               f"The camera pans {scene.pan}.")
  parts.append(f"The {scene.visitor.name} enters the frame." if scene.visitor else
               "No object enters the frame.")
  return " ".join(parts)
