"""The synthetic temporal-QA dataset: answers right by construction, balanced, split by video."""

import collections
import json
import os
import subprocess
import sys

import numpy as np
import pytest

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.extract import extract_primitives
from cope_jax.data import synthetic
from cope_jax.data.synthetic import DESCRIBE
from cope_jax.data.synthetic.questions import LETTERS, MOTION_FAMILIES
from cope_jax.data.synthetic.scene import min_seconds, sample_scene, visible


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
  out = tmp_path_factory.mktemp("synth")
  summary = synthetic.generate(str(out), 24, seed=5, size=96, workers=2, progress=False)
  questions = [json.loads(l) for l in open(out / "questions.jsonl")]
  scenes = {s["video"]: s for s in map(json.loads, open(out / "scenes.jsonl"))}
  return out, summary, questions, scenes


def _direction(step):
  axis = int(np.argmax(np.abs(step)))
  return ("right" if step[0] > 0 else "left") if axis == 0 else ("down" if step[1] > 0 else "up")


def _recompute(q, scene):
  """The answer text, from the raw per-frame trajectories only (not the generator's events)."""
  sprites = {f"{s['color']} {s['shape']}": np.asarray(s["positions"]) for s in scene["sprites"]}
  moves = {n: np.diff(p, axis=0) for n, p in sprites.items()}
  first_move = {n: int(np.flatnonzero(np.abs(m).sum(1) > 0)[0]) for n, m in moves.items()}
  flips = {n: [t for t in range(1, len(m)) if np.any(np.sign(m[t]) * np.sign(m[t - 1]) < 0)]
           for n, m in moves.items()}
  text = q["question"]
  name = next((n for n in sprites if n in text), None)
  if q["family"] == "appearance":
    shape = text.split("the ")[1].split()[0]  # ("… the circle in the first frame?")
    return next(n.split()[0] for n in sprites if n.endswith(shape))
  if q["family"] == "direction":
    return _direction(moves[name][first_move[name]])
  if q["family"] == "first_mover":
    return "the " + min(first_move, key=first_move.get)
  if q["family"] == "bounces":
    return str(len(flips[name]))
  if q["family"] == "camera_pan":
    cam = np.diff(np.asarray(scene["camera"]), axis=0)
    moving = cam[np.abs(cam).sum(1) > 0]
    return _direction(moving[0]) if len(moving) else "the camera does not move"
  if q["family"] == "faster":
    speed = {n: np.hypot(*m[first_move[n]:].T).mean() for n, m in moves.items()}
    return "the " + max(speed, key=speed.get)
  if q["family"] == "first_bounce":
    return "the " + min((f[0], n) for n, f in flips.items() if f)[1]
  if q["family"] == "enters":
    v = scene["visitor"]
    if v is None:
      return "no object enters"
    inside = visible(np.asarray(v["positions"]), v["side"], scene["size"])
    assert not inside[0] and inside.any()  # outside at the keyframe, inside later
    return f"the {v['color']} {v['shape']}"
  raise AssertionError(q["family"])


def test_answers_are_right_by_construction(synth):
  _, _, questions, scenes = synth
  for q in questions:
    answer = q["options"][LETTERS.index(q["answer"])]
    assert answer == _recompute(q, scenes[q["video"]]), q
    assert len(q["options"]) == 4 and len(set(q["options"])) == 4


def test_balance_splits_and_families(synth):
  out, summary, questions, _ = synth
  letters = collections.Counter(q["answer"] for q in questions)
  assert max(letters.values()) - min(letters.values()) <= 4
  videos_by_split = collections.defaultdict(set)
  for q in questions:
    videos_by_split[q["split"]].add(q["video"])
  assert set(videos_by_split) == {"train", "validation", "test"}
  splits = list(videos_by_split.values())
  assert all(not (a & b) for i, a in enumerate(splits) for b in splits[i + 1:])
  for split in ("train", "validation", "test"):
    lines = [json.loads(l) for l in open(out / f"{split}.jsonl")]
    assert lines and all(q["split"] == split for q in lines)
  assert set(summary["families"]) >= set(MOTION_FAMILIES) | {"appearance"}
  assert all(summary["families"][f] > 0 for f in MOTION_FAMILIES)
  assert os.path.exists(out / "tokenizer.json")


def test_nothing_moves_in_the_first_keyframe(synth):
  """Frame 0 (the I-frame keyframe) and frame 1 are identical in geometry: the keyframe cannot
  reveal any motion; motion questions need the Δ-frames."""
  _, _, _, scenes = synth
  for scene in scenes.values():
    assert scene["camera"][0] == scene["camera"][1]
    for s in scene["sprites"]:
      assert s["start_frame"] > 0 and s["positions"][0] == s["positions"][1]


def test_video_motion_matches_ground_truth(synth):
  """The codec sees what the ground truth says: a sprite's fused displacement over a second.

  Codec vectors are not a tracker (blocks straddling a sprite's edge often take the background's
  vector), so this asks for the direction nearly always and the magnitude most of the time.
  """
  out, _, _, scenes = synth
  right_direction = close = checked = 0
  for video, scene in scenes.items():
    if scene["pan"] != "none":
      continue
    prims = extract_primitives(os.path.join(out, video), size=96)
    for s in scene["sprites"]:
      pos = np.asarray(s["positions"])
      for i, t in enumerate(range(30, 240, 30)):
        window = np.diff(pos[t - 30:t + 1], axis=0)
        if t - 30 < s["start_frame"] or np.any(np.sign(window[1:]) * np.sign(window[:-1]) < 0):
          continue  # not moving the whole second, or bouncing inside it
        x, y = np.rint(pos[t]).astype(int)
        inner = prims.mv[i][y + 4:y + s["side"] - 4, x + 4:x + s["side"] - 4].reshape(-1, 2)
        expected = pos[t - 30] - pos[t]  # backward displacement of the sprite's pixels
        measured = np.median(inner, axis=0)
        axis = int(np.argmax(np.abs(expected)))
        checked += 1
        right_direction += np.sign(measured[axis]) == np.sign(expected[axis])
        close += np.all(np.abs(measured - expected) <= 0.25 * np.abs(expected).max() + 1)
  assert checked >= 10
  assert right_direction / checked >= 0.85, (right_direction, checked)
  assert close / checked >= 0.6, (close, checked)


def test_captions_and_training_conversations(synth):
  """The caption states each sprite's first direction, bounce count, the camera and the visitor
  from the ground truth; the LLaVA-Video-style conversations cover the train split only, two per
  video: the caption alone, and every question once (open-ended = the right option's text) with no
  caption in its context (it states the answers)."""
  out, _, questions, scenes = synth
  for scene in scenes.values():
    text = scene["caption"]
    for s in scene["sprites"]:
      name = f"{s['color']} {s['shape']}"
      moves = np.diff(np.asarray(s["positions"]), axis=0)
      step = moves[np.flatnonzero(np.abs(moves).sum(1) > 0)[0]]
      assert f"the {name} starts moving {_direction(step)}" in text
    pan = "The camera does not move." if scene["pan"] == "none" else f"The camera pans {scene['pan']}."
    assert pan in text
    v = scene["visitor"]
    assert (f"The {v['color']} {v['shape']} enters" if v else "No object enters") in text
    # (which of frame 0's objects: "The red square is faster." left the visitor in doubt)
    speed = {f"{s['color']} {s['shape']}": np.hypot(*np.diff(s["positions"], axis=0)[
        s["start_frame"]:].T).mean() for s in scene["sprites"]}
    fast, slow = sorted(speed, key=speed.get, reverse=True)
    assert f"The {fast} moves faster than the {slow}." in text
  conversations = json.load(open(out / "train_conversations.json"))
  train_videos = {q["video"] for q in questions if q["split"] == "train"}
  assert collections.Counter(c["video"] for c in conversations) == {v: 2 for v in train_videos}
  by_video = collections.defaultdict(list)
  for q in questions:
    by_video[q["video"]].append(q)
  kinds = collections.Counter()
  for c in conversations:
    turns = c["conversations"]
    # (no line break after it: LLaVA-NeXT's training keeps one as a blank line in the prompt)
    assert turns[0]["value"].startswith("<image>") and turns[1]["from"] == "gpt"
    assert not turns[0]["value"].startswith("<image>\n")
    assert sum("<image>" in t["value"] for t in turns) == 1
    if turns[0]["value"] == "<image>" + DESCRIBE:
      assert len(turns) == 2 and turns[1]["value"] == scenes[c["video"]]["caption"]
      kinds["caption"] += 1
      continue
    assert all(scenes[c["video"]]["caption"] not in t["value"] for t in turns)
    asked_how = collections.defaultdict(list)
    for human, gpt in zip(turns[::2], turns[1::2]):
      asked = human["value"].removeprefix("<image>")
      q = next(q for q in by_video[c["video"]] if asked.startswith(q["question"]))
      if "\nA. " in asked:
        assert gpt["value"] == q["answer"]
        asked_how[q["id"]].append("mcq")
      else:
        assert gpt["value"] == q["options"][LETTERS.index(q["answer"])] == q["open_answer"]
        asked_how[q["id"]].append("open")
    assert {k: len(v) for k, v in asked_how.items()} == {q["id"]: 1 for q in by_video[c["video"]]}
    kinds.update("+".join(how) for how in asked_how.values())
  assert kinds["caption"] == len(train_videos)
  assert set(kinds) == {"caption", "open", "mcq"}


def test_letter_step_examples(synth):
  """bench letter: the loss position holds the right option's letter, right after the
  multiple-choice prompt, and the open-ended answer is in the context before it."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  from cope_jax.bench.letter_step_bench import letter_examples  # pylint: disable=import-outside-toplevel
  out, _, questions, _ = synth
  tok = Tokenizer.from_file(str(out / "tokenizer.json"))
  ids, at = letter_examples(questions[:20], tok)
  for q, row, i in zip(questions[:20], ids, at):
    assert tok.decode([int(row[i])]) == q["answer"]
    before = tok.decode(row[:i].tolist(), skip_special_tokens=False)
    assert before.endswith("<|im_start|>assistant\n")
    assert q["open_answer"] in before and "\nA. " in before
  ids, at = letter_examples(questions[:20], tok, text_first=True)
  for q, row, i in zip(questions[:20], ids, at):
    assert tok.decode([int(row[i])]) == q["answer"]
    before = tok.decode(row[:i].tolist(), skip_special_tokens=False)
    assert before.count("<|im_start|>user") == 1  # no open-ended turn before
    assert before.endswith(f"<|im_start|>assistant\n{q['open_answer']} (")


def test_letter_step_variants(synth):
  """bench letter's variants: a fresh option order keeps the right option's text; a leading
  space makes the open answer the same tokens as its option; the bare matching task's letter
  names the option equal to its first word."""
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  from cope_jax.bench import letter_step_bench as bench  # pylint: disable=import-outside-toplevel
  from cope_jax.data.sources import LETTERS  # pylint: disable=import-outside-toplevel
  out, _, questions, _ = synth
  tok = Tokenizer.from_file(str(out / "tokenizer.json"))
  rng = np.random.default_rng(0)
  orders = set()
  for q in questions[:40]:
    r = bench.reshuffled(q, rng)
    assert sorted(r["options"]) == sorted(q["options"])
    assert r["options"][LETTERS.index(r["answer"])] == q["options"][LETTERS.index(q["answer"])]
    orders.add(r["answer"] != q["answer"])
  assert orders == {True, False}
  word_q = next(q for q in questions if q["family"] == "appearance")
  ids, at = bench.letter_examples([word_q], tok, answer_prefix=" ")
  answer_ids = tok.encode(" " + word_q["open_answer"], add_special_tokens=False).ids
  row = ids[0, :at[0]].tolist()
  starts = [i for i in range(len(row)) if row[i:i + len(answer_ids)] == answer_ids]
  assert len(starts) == 2  # in the assistant's open answer and in its option line
  ids, at = bench.matching_examples(tok, 50, rng)
  assert ids.shape == (50, 19) and (at == 18).all()
  for row in ids:
    options = {tok.decode([int(row[i])]): row[i + 2] for i in (2, 6, 10, 14)}
    assert len(set(options.values())) == 4
    assert tok.decode([int(options[tok.decode([int(row[18])])])]) == tok.decode([int(row[0])])


def test_regenerating_with_other_settings_is_refused(tmp_path):
  """Existing videos are kept on a re-run (resume), so other settings must not silently pair
  them with new ground truth; too short a video is refused up front (it used to hang)."""
  synthetic.generate(str(tmp_path), 2, seed=0, size=32, workers=1, progress=False)
  first = (tmp_path / "videos" / "00000.mp4").read_bytes()
  synthetic.generate(str(tmp_path), 2, seed=0, size=32, workers=1, progress=False)  # resumes
  assert (tmp_path / "videos" / "00000.mp4").read_bytes() == first
  with pytest.raises(ConfigError, match="seed"):
    synthetic.generate(str(tmp_path), 2, seed=1, size=64, workers=1, progress=False)
  for seconds in (4, 4.6):  # the rule told (``--help``, the message): at least 5 s
    with pytest.raises(ConfigError, match="too short.*at least 5 s"):
      synthetic.generate(str(tmp_path / "short"), 2, seconds=seconds, workers=1, progress=False)
  for kwargs, message in ((dict(videos=0), "number of videos must be from 1 to"),
                          (dict(videos=2, size=8), "--size must be a multiple of 16 from 32"),
                          (dict(videos=2, workers=0), "--workers must be from 1 to"),
                          (dict(videos=2, seconds=float("nan")), "finite"),
                          (dict(videos=2, seconds=float("inf")), "finite")):
    with pytest.raises(ConfigError, match=message):
      synthetic.generate(str(tmp_path / "refused"), **{"workers": 1, "progress": False, **kwargs})
  assert not (tmp_path / "refused").exists()  # checked before the folder records settings
  shortest = min_seconds()
  scene = sample_scene(np.random.default_rng(0), size=32, seconds=shortest)
  assert len(scene.camera) == round(shortest * 30)


def test_synth_cli(tmp_path):
  """``python -m cope_jax.data synth --out DIR --videos N --seed S`` (SPEC §6): N videos and
  questions.jsonl in the MCQ format; the seed decides them; bad input exits 2."""
  def synth(out, seed, videos=3):
    return subprocess.run([sys.executable, "-m", "cope_jax.data", "synth", "--out", str(out),
                           "--videos", str(videos), "--seed", str(seed), "--size", "32",
                           "--quiet"], capture_output=True, text=True, timeout=300)
  runs = {name: synth(tmp_path / name, seed) for name, seed in (("a", 7), ("b", 7), ("c", 8))}
  for r in runs.values():
    assert r.returncode == 0, r.stderr
  assert json.loads(runs["a"].stdout)["videos"] == 3
  lines = (tmp_path / "a" / "questions.jsonl").read_text().splitlines()
  videos = set()
  for q in map(json.loads, lines):
    assert set(q) >= {"video", "question", "options", "answer"}
    assert (tmp_path / "a" / q["video"]).is_file()  # relative to the file's folder
    assert len(q["options"]) == 4 and q["options"][LETTERS.index(q["answer"])] == q["open_answer"]
    videos.add(q["video"])
  assert len(videos) == 3
  same, other = ((tmp_path / n / "questions.jsonl").read_text() for n in ("b", "c"))
  assert same == "\n".join(lines) + "\n" and other != same
  r = synth(tmp_path / "none", 7, videos=0)
  assert r.returncode == 2 and r.stderr.strip() == ("error: the number of videos must be from 1 to "
                                             "100000, got 0")
  assert not (tmp_path / "none").exists()


@pytest.mark.parametrize("flags,message", [
    (["--out", ""], "--out is empty"),  # (it wrote the dataset into the current folder)
    # a frame side the codec refuses (it used to crash the worker pool half-way, or fill memory)
    (["--size", "100000"], "--size must be a multiple of 16 from 32 to 2048 pixels"),
    (["--size", "4096"], "--size must be a multiple of 16 from 32 to 2048 pixels"),
    (["--size", "100"], "--size must be a multiple of 16 from 32 to 2048 pixels"),
    (["--size", "-16"], "--size must be a multiple of 16 from 32 to 2048 pixels"),
    (["--size", "16"], "at 16 px the two objects cannot both be shown whole"),
    # lengths: per-frame ground truth of 1e9 s asked for 447 GiB
    (["--seconds", "1e9"], "the video length must be at most 512 s, got 1e+09 s"),
    (["--seconds", "513"], "the video length must be at most 512 s, got 513 s"),
    (["--seconds", "nan"], "finite"), (["--seconds", "inf"], "finite"),
    (["--seconds", "-1"], "too short"), (["--seconds", "0"], "too short"),
    (["--videos", "0"], "the number of videos must be from 1 to 100000, got 0"),
    (["--videos", "-3"], "the number of videos must be from 1 to 100000, got -3"),
    (["--videos", "1000000"], "the number of videos must be from 1 to 100000, got 1000000"),
    (["--videos", "100000", "--seconds", "500"], "at most 1000000 s (about 280 hours)"),
    (["--workers", "0"], "--workers must be from 1 to 1024, got 0"),
    (["--workers", "-2"], "--workers must be from 1 to 1024, got -2"),
    (["--workers", "1000000"], "--workers must be from 1 to 1024, got 1000000"),
    (["--seed", "-1"], "--seed must be >= 0, got -1"),
])
def test_synth_refuses_absurd_values_before_writing(tmp_path, capsys, flags, message):
  """SPEC: one ``error:`` line naming the value, status 2, and no folder (a refused run must leave
  nothing, not even settings.json that later runs would be held to)."""
  from cope_jax.data.__main__ import main  # pylint: disable=import-outside-toplevel
  out = tmp_path / "out"
  argv = ["synth", "--out", str(out), "--videos", "1", "--seconds", "5", "--size", "32",
          "--workers", "1", "--quiet"]
  assert main(argv + flags) == 2
  err = capsys.readouterr().err
  assert err.count("\n") == 1 and err.startswith("error: ") and message in err, err
  assert not out.exists()


def test_synth_absurd_size_exits_2_without_traceback(tmp_path):
  """The audit's command: a BrokenProcessPool traceback, status 1, ``videos/`` half-written."""
  r = subprocess.run([sys.executable, "-m", "cope_jax.data", "synth", "--out", str(tmp_path / "d"),
                      "--videos", "2", "--size", "100000", "--quiet"],
                     capture_output=True, text=True, timeout=120)
  assert r.returncode == 2 and r.stdout == "", r.stderr[-2000:]
  assert r.stderr.startswith("error: --size ") and len(r.stderr.splitlines()) == 1, r.stderr
  assert not (tmp_path / "d").exists()


def test_synth_help_states_the_bounds(capsys):
  from cope_jax.data.__main__ import main  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit):
    main(["synth", "--help"])
  text = " ".join(capsys.readouterr().out.split())
  for bound in ("1 to 100000", "5 to 512", "from 32 to 2048", "1 to 1024", "1000000 s"):
    assert bound in text, bound


def test_synth_into_a_folder_with_a_damaged_settings_file_names_it(tmp_path, capsys):
  from cope_jax.data.__main__ import main  # pylint: disable=import-outside-toplevel
  (tmp_path / "out" / "videos").mkdir(parents=True)
  settings = tmp_path / "out" / "videos" / "settings.json"
  settings.write_text("garbage")
  assert main(["synth", "--out", str(tmp_path / "out"), "--videos", "1", "--seconds", "5",
               "--size", "32", "--workers", "1", "--quiet"]) == 2
  err = capsys.readouterr().err
  assert err.startswith(f"error: {settings}: not a readable JSON file") and err.count("\n") == 1


def test_an_interrupted_video_write_leaves_no_video_named_file(tmp_path, monkeypatch):
  """Ctrl-C mid-write left NAME.mp4.tmpPID.mp4, cut short, for good: anything listing the folder
  for .mp4 files took it for a video. The writer removes it; a run removes any a killed run
  left."""
  (tmp_path / "videos").mkdir()
  target = tmp_path / "videos" / "00000.mp4"

  def cut_short(path, *args, **kwargs):
    with open(path, "wb") as f:
      f.write(b"\x00" * 100)
    raise KeyboardInterrupt

  monkeypatch.setattr(synthetic.synthetic_clips, "write_clip", cut_short)
  with pytest.raises(KeyboardInterrupt):
    synthetic._write_video((0, 0, 32, 5.0, str(target)))  # pylint: disable=protected-access
  assert os.listdir(tmp_path / "videos") == []
  monkeypatch.undo()
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  stale = tmp_path / "videos" / f"00001.mp4.tmp{dead}.mp4"  # a run killed outright
  stale.write_bytes(b"\x00" * 100)
  writing = tmp_path / "videos" / f"00002.mp4.tmp{os.getpid()}.mp4"  # a run writing beside it
  writing.write_bytes(b"\x00" * 100)
  synthetic.generate(str(tmp_path), videos=1, seed=0, size=32, seconds=5.0, workers=1,
                     progress=False)
  assert sorted(os.listdir(tmp_path / "videos")) == ["00000.mp4", writing.name, "settings.json"]


def test_the_scene_version_changes_with_the_scenes():
  """The generator's scenes changed (drawn again until every object shows) while the version
  recorded with the videos stayed 2: a folder of old videos was resumed and described by the new
  scenes. Each version is held to a fingerprint of its first scenes: change the scenes, bump
  SCENES_VERSION and record its fingerprint here."""
  import hashlib  # pylint: disable=import-outside-toplevel
  scenes = [synthetic.scene_for(0, i, 64, 8.0).to_json() for i in range(4)]
  fingerprint = hashlib.sha256(json.dumps(scenes).encode()).hexdigest()[:16]
  assert {3: "8842b162f7465bb7"}.get(synthetic.SCENES_VERSION) == fingerprint, (
      synthetic.SCENES_VERSION, fingerprint)
