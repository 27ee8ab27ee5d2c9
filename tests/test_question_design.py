"""The synthetic questions' design, on scenes alone (nothing rendered): no distractor that is also
right, no shortcut from the keyframe, no answer after the last position seen, pans that show."""

import collections

import numpy as np

from cope_jax.codec.sampling import SamplingConfig, plan_positions
from cope_jax.data.synthetic.questions import (IN_FRAME_0, LETTERS, MOTION_FAMILIES,
                                               questions_for_scene)
from cope_jax.data.synthetic.scene import MAX_SECONDS, sample_scene, sampled_frames, visible


def test_appearance_distractors_never_name_another_object_of_that_shape():
  """The visitor may share a sprite's shape and enter later: its color is not a wrong option."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  rng, letters, shared = np.random.default_rng(0), iter(lambda: 0, 1), 0  # letters: all A
  for _ in range(300):
    scene = sample_scene(rng, size=64)
    q = next(q for q in questions_for_scene(scene, rng, letters) if q["family"] == "appearance")
    shape = q["question"].split("the ")[1].split()[0]
    colors = {x.color for x in scene.sprites + ([scene.visitor] if scene.visitor else [])
              if x.shape == shape}
    shared += len(colors) > 1
    wrong = {o for o, letter in zip(q["options"], LETTERS) if letter != q["answer"]}
    assert not colors & wrong, (q, colors)
  assert shared >= 10, shared  # the case this guards occurs


def test_the_keyframe_gives_no_shortcut_and_no_answer_hides_after_the_last_look():
  """Questions about objects frame 0 shows offer the scene's other objects beside the answer, so
  knowing what frame 0 shows leaves at least two options; `enters`, about an object it does not
  show, offers none of them (ruled out by the keyframe, they left a keyframe-only guess between
  the visitor and "no object enters": 75 % right once that was balanced); no question depends on
  a bounce after the last position seen at one per second, or in an object's first second."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  rng, letters = np.random.default_rng(1), iter(lambda: 0, 1)
  asked = collections.Counter()
  for _ in range(300):
    scene = sample_scene(rng, size=64)
    names = {f"the {s.name}" for s in scene.sprites}
    last = scene.last_seen_frame
    for q in questions_for_scene(scene, rng, letters):
      asked[q["family"]] += 1
      options = set(q["options"])
      if q["family"] in ("first_mover", "faster"):
        assert len(options & names) == 2, q
      if q["family"] == "first_bounce":  # ("no object bounces" would never be the answer)
        assert names <= options and "no object bounces" not in options, q
        assert min(s.bounces[0][0] for s in scene.sprites if s.bounces) <= last
      if q["family"] == "enters":  # (frame 0's objects would be ruled out by the keyframe)
        assert "no object enters" in options and not names & options, q
        # nor an option in a colour frame 0 shows (the visitor's never is: one in three right)
        shown = {s.color for s in scene.sprites}
        assert not any(o.split()[1] in shown for o in options - {"no object enters"}), q
      s = next((s for s in scene.sprites if s.name in q["question"]), None)
      if q["family"] == "bounces":
        assert all(frame <= last for frame, _ in s.bounces), q
      if q["family"] == "direction":
        assert not s.bounces or s.bounces[0][0] >= s.start_frame + scene.fps
  assert all(asked[f] >= 100 for f in MOTION_FAMILIES), asked  # each family still asked


def test_bounce_counts_are_balanced_over_the_dataset():
  """Left to chance, an 8 s scene's sprite mostly bounces once ("1" was the answer of 58 %);
  shared across the dataset, the counter keeps 1, 2 and 3 within one question of each other."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  rng, letters, asked = np.random.default_rng(2), iter(lambda: 0, 1), collections.Counter()
  answers = collections.Counter()
  for _ in range(300):
    scene = sample_scene(rng, size=64)
    for q in questions_for_scene(scene, rng, letters, asked):
      if q["family"] == "bounces":
        answers[q["open_answer"]] += 1
  assert answers == {str(n): k for (family, n), k in asked.items() if family == "bounces"}, (
      answers, asked)
  assert max(answers[n] for n in "123") - min(answers[n] for n in "123") <= 1, answers
  assert answers["1"] <= 0.4 * sum(answers.values()) and sum(answers.values()) >= 60, answers


def test_every_background_shows_a_pan_between_positions_a_second_apart():
  """Any one-second window of any pan (1 px per frame at 64²) changes the background by at
  least 4 grey levels on average (decoder noise on still content is about 2)."""
  from cope_jax.codec.synthetic_clips import mirror_tiled, texture  # pylint: disable=import-outside-toplevel
  from cope_jax.data.synthetic.scene import DIRECTIONS, TEXTURES  # pylint: disable=import-outside-toplevel
  idx = np.arange(64)
  for name in TEXTURES:
    canvas = mirror_tiled(texture(name)).astype(np.int16)
    h, w = canvas.shape[:2]
    view = lambda k, dx, dy: canvas[np.ix_((40 + dy * k + idx) % h, (40 + dx * k + idx) % w)]  # noqa: E731
    for dx, dy in DIRECTIONS.values():
      for k in range(0, 211, 5):
        change = np.abs(view(k, dx, dy) - view(k + 30, dx, dy)).mean()
        assert change >= 4, (name, (dx, dy), k, change)


def _drawn_turns(positions: np.ndarray, last: int, fps: int, min_px: int) -> list[int]:
  """Where the frames sampled once a second, to the last look, draw an object turning back along
  an axis: positions at whole pixels (as ``render`` draws them); a step counts as motion along
  the axis if it moves ``min_px`` or more."""
  steps = np.diff(np.rint(positions[np.arange(0, last + 1, fps)]), axis=0)
  turns = []
  for axis in range(2):
    signs = [(k, np.sign(x)) for k, x in enumerate(steps[:, axis]) if abs(x) >= min_px]
    turns += [(k + 1) * fps for (_, a), (k, b) in zip(signs, signs[1:]) if a != b]
  return sorted(turns)


def test_answers_are_what_the_frames_sampled_a_second_apart_draw():
  """A bounce within a second of the last look (or in an object's first second of motion) shows
  no turn between positions a second apart: 80 of the demo's 289 counts were more than the
  sampled motion shows. Then, judged on float positions, a bounce that moved an object 0.2 px
  between two looks counted as seen, and a first mover that stayed on its pixels, or two speeds
  1 % apart, were answers. Now, on the frames as drawn (whole pixels; 2 px to count): every
  count is seen, the first bounce's object turns first (no other turns by then, by a pixel
  either), the first mover is seen moving first, the faster object is seen 1.2× as fast, and
  the direction asked is the first step's — at 64 px and at 32, where pixels are coarse."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  for size, scenes, least in ((64, 400, 40), (32, 300, 10)):
    rng, letters, asked = np.random.default_rng(3), iter(lambda: 0, 1), collections.Counter()
    checked = collections.Counter()
    for _ in range(scenes):
      scene = sample_scene(rng, size=size)
      last, fps = scene.last_seen_frame, scene.fps
      sampled = np.arange(0, last + 1, fps)
      drawn = {s.name: np.rint(s.positions[sampled]) for s in scene.sprites}
      for q in questions_for_scene(scene, rng, letters, asked):
        family = q["family"]
        named = q["open_answer"][len("the "):]
        if family == "bounces":
          s = next(s for s in scene.sprites if s.name in q["question"])
          assert len(_drawn_turns(s.positions, last, fps, 2)) == int(q["open_answer"]), q
        if family == "first_bounce":
          first = _drawn_turns(next(s for s in scene.sprites if s.name == named).positions,
                               last, fps, 2)
          faint = [_drawn_turns(s.positions, last, fps, 1) for s in scene.sprites
                   if s.name != named]
          assert first and all(not t or t[0] > first[0] for t in faint), q
        if family == "first_mover":
          moved = {n: sampled[np.abs(p - p[0]).max(axis=1) >= 2] for n, p in drawn.items()}
          assert len(moved[named]) and all(not len(m) or m[0] > moved[named][0]
                                           for n, m in moved.items() if n != named), q
        if family == "faster":
          speed = {n: np.hypot(*np.diff(p, axis=0).T).mean() for n, p in drawn.items()}
          other = next(n for n in speed if n != named)
          # (the mean over the steps once each moves, as the question's check; 1.2× at least)
          moving = {n: np.hypot(*np.diff(p, axis=0)[sampled[1:] > s.start_frame].T).mean()
                    for (n, p), s in zip(drawn.items(), scene.sprites)}
          assert moving[named] >= 1.2 * moving[other] - 1e-9, (q, moving, speed)
        if family == "direction":
          s = next(s for s in scene.sprites if s.name in q["question"])
          k = np.searchsorted(sampled, s.start_frame, side="right") - 1
          dx, dy = np.diff(drawn[s.name], axis=0)[k]
          shown = (("right" if dx > 0 else "left") if abs(dx) > abs(dy) else
                   ("down" if dy > 0 else "up"))
          assert max(abs(dx), abs(dy)) >= 2 and abs(dx) != abs(dy) and shown == q["open_answer"], q
        checked[family] += 1
    assert all(checked[f] >= least for f in MOTION_FAMILIES), (size, checked)


def test_no_option_text_is_a_prior_for_the_answer():
  """Left to chance, "no object enters" was the answer of half the enters questions and "no
  object bounces" of none of the first_bounce ones: a rule on the options' text alone scored
  31 % on the held-out motion questions. Now the best such rule learned from 1 000 scenes' answers
  scores within chance on another 500 (four options: 25 %)."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  rng, asked = np.random.default_rng(4), collections.Counter()
  letters = iter(lambda: int(rng.integers(4)), -1)
  seen = [q for _ in range(1500) for q in questions_for_scene(sample_scene(rng, size=64), rng,
                                                               letters, asked)
          if q["family"] in MOTION_FAMILIES]
  train, test = seen[:len(seen) * 2 // 3], seen[len(seen) * 2 // 3:]
  counts = collections.defaultdict(collections.Counter)
  for q in train:
    counts[q["family"]][q["open_answer"]] += 1
  right = sum(max(q["options"], key=lambda o, q=q: counts[q["family"]][o]) == q["open_answer"]
              for q in test)
  assert right / len(test) < 0.28, right / len(test)
  enters = [q for q in seen if q["family"] == "enters"]
  share = sum(q["open_answer"] == "no object enters" for q in enters) / len(enters)
  assert 0.22 < share < 0.28 and all("no object enters" in q["options"] for q in enters), share
  # Nor the option least like the others: the absent objects were drawn from every unused name
  # and often shared a colour or shape with another option, unlike the pictured pair (35–40 %).
  def shared(o, q):  # how many of the other options share this one's colour or shape
    return sum(w in p.split() for p in q["options"] if p != o for w in o.split()[1:])
  objects = [q for q in seen if q["family"] in ("first_mover", "faster", "first_bounce")]
  odd = sum(min(q["options"], key=lambda o, q=q: shared(o, q)) == q["open_answer"]
            for q in objects)
  assert len(objects) > 1000 and odd / len(objects) < 0.28, (len(objects), odd / len(objects))


def test_pans_move_at_most_half_the_frame_a_second_and_never_alias():
  """The camera moved max(1, size // 64) px a frame: at 32 px a second crossed the whole frame
  (two looks shared nothing), at 1024 px 480 px a second matched a shorter shift the other way
  on the mirror-tiled background."""
  from cope_jax.codec.synthetic_clips import texture  # pylint: disable=import-outside-toplevel
  from cope_jax.data.synthetic.scene import TEXTURES, pan_speed  # pylint: disable=import-outside-toplevel
  assert pan_speed(64, 30, "coffee") == pan_speed(96, 30, "coffee") == 1  # (the demo's, as before)
  for size in (32, 64, 96, 512, 1024, 2048):
    for name in TEXTURES:
      period = min(2 * side for side in texture(name).shape[:2])
      per_second = pan_speed(size, 30, name) * 30
      assert 0 < per_second <= min(size / 2, period / 4) + 1e-9, (size, name, per_second)
  scene = sample_scene(np.random.default_rng(2), size=32)
  while scene.pan == "none":
    scene = sample_scene(np.random.default_rng(int(scene.camera.sum()) + 7), size=32)
  moves = np.abs(np.diff(scene.camera[::30], axis=0)).max()
  assert 0 < moves <= 16, scene.camera[::30]


def _shown_pixels(scene, who: int, frames) -> list[int]:
  """How many pixels of object ``who`` (the sprites, then the visitor) ``render`` draws at each
  of ``frames``: those that change when the object is taken out of the scene."""
  import copy  # pylint: disable=import-outside-toplevel
  from cope_jax.data.synthetic.scene import render  # pylint: disable=import-outside-toplevel
  without = copy.deepcopy(scene)
  gone = (without.sprites + [without.visitor])[who]
  gone.positions = np.full_like(gone.positions, -10 * scene.size)
  wanted = set(int(f) for f in frames)
  pairs = zip(render(scene), render(without))
  return [int(np.any(a != b, axis=-1).sum()) for t, (a, b) in enumerate(pairs) if t in wanted]


def test_every_object_is_shown_at_the_looks():
  """Sprites were placed without regard to each other: one hid the other in frame 0 (9 % of
  scenes more than half), and at the look where a first mover moved; at 5 s a visitor could
  arrive after the last look, so no sampled frame showed the answer of `enters`. Now, judged on
  the rendered frames: frame 0 shows each sprite whole, every look each at least half, and a
  visitor shows whole at some look after frame 0."""
  from cope_jax.data.synthetic.scene import _mask, sampled_frames  # pylint: disable=import-outside-toplevel
  visitors = 0
  for size, seconds in ((32, 5.0), (64, 8.0)):
    rng = np.random.default_rng(5)
    for _ in range(12):
      scene = sample_scene(rng, size=size, seconds=seconds)
      looks = sampled_frames(scene)
      for i, s in enumerate(scene.sprites):
        area = int(_mask(s.shape, s.side).sum())
        shown = _shown_pixels(scene, i, looks)
        assert shown[0] == area and min(shown) >= 0.5 * area, (size, s.name, shown, area)
      if scene.visitor is not None:
        visitors += 1
        area = int(_mask(scene.visitor.shape, scene.visitor.side).sum())
        assert area in _shown_pixels(scene, len(scene.sprites), looks[1:]), (size, seconds)
  assert visitors >= 6, visitors


def test_where_frame_0_shows_an_object_is_no_prior_for_its_direction():
  """`direction` was asked where the object's first second of motion had no bounce: mostly of
  objects heading away from the nearer wall (told the axis, "towards the side with more room"
  from frame 0 alone was right 59-63 % of the time, not half; over all four directions 31 %, not
  25 %). Now it is asked only of objects with room for that second whichever way they went: the
  guess is right half the time."""
  rng, letters = np.random.default_rng(6), iter(lambda: 0, 1)
  right = n = 0
  for _ in range(1500):
    scene = sample_scene(rng, size=64)
    for q in questions_for_scene(scene, rng, letters):
      if q["family"] != "direction":
        continue
      s = next(s for s in scene.sprites if s.name in q["question"])
      x, y = s.positions[0]
      hi = scene.size - s.side
      if q["open_answer"] in ("left", "right"):
        guess = "right" if hi - x > x else "left"
      else:
        guess = "down" if hi - y > y else "up"
      right += guess == q["open_answer"]
      n += 1
  # (0.594 before, 0.478 now; 0.460-0.505 over ten seeds)
  assert n >= 500 and 0.42 < right / n < 0.54, (n, right / n)


def test_questions_about_frame_0_objects_say_so_and_the_longest_video_is_sampled_whole():
  """A visitor enters after frame 0, moving (often faster than the sprites): "Which object moves
  faster?" had two right answers asked open-ended in a quarter of those questions, "What color is
  the circle?" two where a circle entered. The questions about frame 0's objects now name it;
  those objects differ in shape. And the longest video allowed is one whose every second the
  codec's default sampling (64 GOPs) looks at: at 600 s the answers were judged on 88 seconds
  no sampled frame showed."""
  rng, letters, visitors = np.random.default_rng(7), iter(lambda: 0, 1), 0
  for _ in range(200):
    scene = sample_scene(rng, size=64)
    assert len({s.shape for s in scene.sprites}) == len(scene.sprites)
    if scene.visitor is not None:
      visitors += 1
      assert not visible(scene.visitor.positions, scene.visitor.side, scene.size)[0]
    for q in questions_for_scene(scene, rng, letters):
      if q["family"] in ("appearance", "first_mover", "faster"):
        assert IN_FRAME_0 in q["question"], q
  assert visitors >= 50, visitors
  longest = sample_scene(np.random.default_rng(8), size=32, seconds=MAX_SECONDS)
  plan = plan_positions(longest.num_frames, SamplingConfig())
  assert np.array_equal(np.sort(plan.frames), sampled_frames(longest))


def test_a_corner_hit_is_one_bounce_and_never_counted():
  """Both walls in one frame is one bounce, named by its corner (it was two, one per wall: an
  object that hit a corner once was asked about as bouncing twice); how many times such an object
  bounces is not asked: off two edges at once, one bounce or two is a matter of reading."""
  from cope_jax.data.synthetic.questions import questions_for_scene  # pylint: disable=import-outside-toplevel
  from cope_jax.data.synthetic.scene import _simulate  # pylint: disable=import-outside-toplevel
  _, bounces = _simulate(np.random.default_rng(123), 64, 8, 80, 0, "right", 3.0)
  assert bounces[1] == (26, "top-left") and len({frame for frame, _ in bounces}) == len(bounces)
  rng, letters, asked = np.random.default_rng(0), iter(lambda: 0, 1), collections.Counter()
  cornered, counted = 0, 0
  for _ in range(1000):
    scene = sample_scene(rng, size=64)
    hit = {s.name for s in scene.sprites if any("-" in wall for _, wall in s.bounces)}
    cornered += len(hit)
    for q in questions_for_scene(scene, rng, letters, asked):
      if q["family"] == "bounces":
        counted += 1
        assert not any(name in q["question"] for name in hit), q
  assert cornered >= 3 and counted >= 200, (cornered, counted)
