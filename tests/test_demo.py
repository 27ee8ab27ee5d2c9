"""The README's main command, in its quick form: the whole chain runs, every loss falls,
results.json is complete, and a second run resumes instead of starting over."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

MODES = {"dense": 160, "keyframes": 20, "keyframes_stage2": 20, "cope": 90, "cope_zero_delta": 90}


def _demo(workdir):
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(workdir),
                      "--quick"], capture_output=True, text=True, timeout=900)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout, json.loads((workdir / "results.json").read_text())


# The demo's command with a SIGTERM 0.2 s into its first answer (its prefill compiling).
_SIGTERM_WHILE_ANSWERING = """
import os, runpy, signal, sys, threading
from cope_jax.infer.generation import Generator
generate = Generator.generate
def generate_then_signal(self, *args, **kwargs):
  if not os.environ.get("SIGNALLED"):
    os.environ["SIGNALLED"] = "1"
    threading.Timer(0.2, os.kill, (os.getpid(), signal.SIGTERM)).start()
  return generate(self, *args, **kwargs)
Generator.generate = generate_then_signal
sys.argv = ["cope_jax.demo"] + sys.argv[1:]
runpy.run_module("cope_jax.demo", run_name="__main__")
"""


def _sigterm_while_evaluating(workdir, results):
  """A SIGTERM while a mode is evaluated ends the run with 75 and the next run finishes with the
  same results. (One that landed inside an XLA compile — by hand, 1.5–2 s into the first
  question on an idle machine — crashed the interpreter's teardown, exit 139.)"""
  for name in ("cope.json", "cope.log.jsonl"):
    (workdir / "evaluation" / name).unlink()
  r = subprocess.run([sys.executable, "-c", _SIGTERM_WHILE_ANSWERING, "--workdir", str(workdir),
                      "--quick"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 75 and "stopped: SIGTERM" in r.stderr, r.stderr[-3000:]
  assert not (workdir / "evaluation" / "cope.json").exists()
  stdout, again = _demo(workdir)
  assert "[evaluate] cope:" in stdout
  for key in ("n", "accuracy", "visual_tokens_mean", "families"):
    assert again["evaluation"]["cope"][key] == results["evaluation"]["cope"][key], key


# The heaviest test: it runs on the worker of the two-process tests, one after another, as it
# would starve their CPU collectives (seen once: a two-process run timed out beside it).
@pytest.mark.xdist_group("processes")
def test_demo_quick(tmp_path):
  stdout, results = _demo(tmp_path)
  assert results["stages_run"] == ["codec", "data", "training", "evaluation", "open_ended",
                                   "ranked_options", "letter_step", "trained_letters", "retrieval",
                                   "ttft", "report"]
  codec = results["codec"]
  assert codec["reconstruction_exact"] is True
  assert codec["keyframes"] == 1 and codec["delta_frames"] == 3
  assert codec["mean_abs_residual"] < 0.5 * codec["mean_abs_frame_difference"]
  assert codec["tokens_64s"]["cope_tokens"] == 2240

  data = results["data"]
  assert data["videos"] == results["settings"]["videos"] and data["splits"]["test"] >= 1
  for stage in ("base", "stage1", "stage2"):
    t = results["training"][stage]
    assert t["steps"] == results["settings"][f"{stage}_steps"], stage
    assert t["loss_fell"] is True, (stage, t["first"], t["last"])
    curve = t["curve"]  # what losses.png draws: stage 1 relative to copying the reference
    assert curve["step"][-1] == t["steps"] and curve["loss"][-1] == t["last"]["loss"], stage
    assert ("copy_reference_mse" in curve) == (stage == "stage1"), stage
  copies = results["training"]["stage1"]["curve"]["copy_reference_mse"]
  assert len(copies) == len(results["training"]["stage1"]["curve"]["step"])
  assert copies[-1] == results["training"]["stage1"]["last"]["copy_reference_mse"]
  n_test = results["evaluation"]["cope"]["n"]
  assert n_test > 0
  for mode, tokens in MODES.items():
    r = results["evaluation"][mode]
    assert r["n"] == n_test and not r["skipped"], mode
    assert r["visual_tokens_mean"] == tokens, mode
    assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["motion_accuracy"] <= 1.0
    assert r["ttft_median_s"] > 0
    assert "appearance" in r["families"] and sum(f["n"] for f in r["families"].values()) == n_test
  for probe, answer_format in (("open_ended", "open"), ("ranked_options", "ranked")):
    assert set(results[probe]) == set(results["evaluation"])
    for name, r in results[probe].items():
      assert r["answer_format"] == answer_format and r["n"] == n_test and not r["skipped"], name
      assert r["visual_tokens_mean"] == MODES[name], name
      assert 0.0 <= r["accuracy"] <= 1.0 and 0.0 <= r["motion_accuracy"] <= 1.0
  # The margins the targets are judged by, and the probes', by every way of asking.
  margins, target = results["motion_margins"], results["targets"]["motion_cope_vs_keyframes"]
  assert list(margins) == ["letter", "ranked", "open", "as_if_perfect"]
  assert margins["letter"]["cope_vs_keyframes"] == pytest.approx(
      100 * (target["cope"] - target["keyframes"]), abs=0.005)
  assert margins["letter"]["past_margins"] == [
      target["met"], results["targets"]["motion_zero_delta_vs_cope"]["met"]]
  assert "motion margins in points" in stdout
  # The letter step splits each run's multiple-choice answers by whether it answered right
  # open-ended: the two groups are every question, and their accuracies make up the whole.
  assert set(results["letter_step"]) == set(results["evaluation"])
  for name, r in results["letter_step"].items():
    groups = (r["open_right"], r["open_wrong"])
    assert sum(g["n"] for g in groups) == n_test, name
    right = sum(g["n"] * g["accuracy"] for g in groups if g["n"])
    assert right / n_test == pytest.approx(results["evaluation"][name]["accuracy"]), name
    assert r["open_right"]["n"] == round(results["open_ended"][name]["accuracy"] * n_test)
  # The recall check asks cope by letter about the first training videos' questions, split by
  # how stage 2 asked each: the letter group is exactly their multiple-choice training turns.
  synthetic = tmp_path / "data" / "synthetic"
  train = [json.loads(line) for line in (synthetic / "train.jsonl").read_text().splitlines()]
  videos = sorted({q["video"] for q in train})[:60]
  conversations = json.loads((synthetic / "train_conversations.json").read_text())
  letter_turns = sum("Answer with the option's letter" in t["value"] for c in conversations
                     if c["video"] in videos for t in c["conversations"] if t["from"] == "human")
  trained = results["trained_letters"]
  assert trained["videos"] == len(videos) and letter_turns > 0
  assert trained["asked_by_letter"]["n"] == letter_turns
  assert trained["asked_open_ended"]["n"] == sum(q["video"] in videos for q in train) - letter_turns
  for group in ("asked_by_letter", "asked_open_ended"):
    assert 0.0 <= trained[group]["accuracy"] <= 1.0
  ret = results["retrieval"]
  assert ret["videos"] == data["splits"]["test"]
  assert set(ret["cope"]) == set(ret["rgb_only"]) == {"recall@1", "recall@2", "recall@5"}
  ttft = results["ttft"]  # the target's measurement: the two modes asked in turn
  assert ttft["questions"] == min(n_test, 40) and ttft["rounds"] == 3
  assert ttft["dense_s"] > 0 and ttft["cope_s"] > 0
  assert results["targets"]["ttft"]["cope_s"] == ttft["cope_s"]
  assert results["targets"]["ttft"]["reduction"] == pytest.approx(
      1 - ttft["cope_s"] / ttft["dense_s"])
  assert set(results["targets"]) == {"motion_cope_vs_keyframes", "motion_zero_delta_vs_cope",
                                     "visual_tokens", "ttft", "retrieval_recall@1", "time"}
  minutes = results["targets"]["time"]["minutes"]  # whether it is met is the machine's business
  assert minutes == pytest.approx(results["elapsed_s_all_runs"] / 60, abs=0.01)
  assert results["targets"]["time"]["need"] == "minutes <= 5"
  assert all(isinstance(t["met"], bool) for t in results["targets"].values())
  tokens = results["targets"]["visual_tokens"]  # quick: 8 dense frames, so 90 of 160 is not ≤ 25 %
  assert tokens["ratio"] == 90 / 160 and tokens["met"] is False
  for plot in results["plots"].values():
    with open(plot, "rb") as f:
      assert f.read(8) == b"\x89PNG\r\n\x1a\n"
  assert "cope_zero_delta" in stdout and "target " in stdout and "open-ended probe" in stdout
  assert "why the missed targets" not in stdout  # --quick's targets are not the demo's
  assert "options-ranked probe" in stdout and "letter step" in stdout
  assert "letters recalled or picked" in stdout

  # Re-running resumes: nothing is trained or evaluated again, the results are the same.
  stdout2, again = _demo(tmp_path)
  assert "] training" not in stdout2 and "[evaluate]" not in stdout2 and "[ttft]" not in stdout2
  assert again["ttft"] == results["ttft"]
  assert again["evaluation"] == results["evaluation"]
  assert again["open_ended"] == results["open_ended"]
  assert again["ranked_options"] == results["ranked_options"]
  assert again["trained_letters"] == results["trained_letters"]
  assert again["elapsed_s_all_runs"] == pytest.approx(
      results["elapsed_s_all_runs"] + again["elapsed_s"], abs=0.15)  # each rounded to 0.1 s
  assert "with the earlier runs it resumed" in stdout2
  assert again["training"]["stage2"]["last"] == results["training"]["stage2"]["last"]
  _sigterm_while_evaluating(tmp_path, results)

  # The base model's workdir (RGB frames only, no Δ-encoder) answers in dense mode; the modes
  # that need a Δ-encoder are refused with one line.
  base = str(tmp_path / "base")
  r = subprocess.run([sys.executable, "-m", "cope_jax.generate", "--workdir", base, "--video",
                      str(tmp_path / "pan.mp4"), "--question", "What moves?", "--mode", "dense",
                      "--dense-frames", "8", "--max-new-tokens", "2", "--json"],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-2000:]
  assert json.loads(r.stdout)["visual_tokens"] == 8 * 20  # the frames it was trained on
  r = subprocess.run([sys.executable, "-m", "cope_jax.evaluate", "--workdir", base, "--data",
                      str(tmp_path / "data" / "synthetic" / "test.jsonl"), "--mode", "cope",
                      "--out", str(tmp_path / "base_cope.json")], capture_output=True, text=True,
                     timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "RGB frames only" in r.stderr
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  model = CoPE.load(base)  # also with frames extracted already (as evaluate passes them)
  frames = model.video_inputs(str(tmp_path / "pan.mp4"), "keyframes")
  for ask in (model.ask, lambda *a, **k: model.rank_options(a[0], a[1], ["left"], *a[2:], **k)):
    with pytest.raises(ValueError, match="RGB frames only"):
      ask(str(tmp_path / "pan.mp4"), "What moves?", "cope", inputs=frames)
  # the base model's export (a converted checkpoint's layout, its Δ-encoder freshly made for
  # stage 1) answered in the cope modes from that untrained Δ-encoder
  tokenizer = json.loads((tmp_path / "base" / "train_config.json").read_text())["tokenizer"]
  export = CoPE.load(str(tmp_path / "base" / "export"), tokenizer=tokenizer)
  export.check_mode("keyframes")
  with pytest.raises(ValueError, match="a converted checkpoint, whose Δ-encoder is freshly"):
    export.check_mode("cope_zero_delta")

  # bench adaptive on the finished demo: the still-camera clip keeps only the Δ-frames of its
  # 8 s of motion, and the demo's model answers at each threshold with the kept Δ-frames' tokens.
  r = subprocess.run([sys.executable, "-m", "cope_jax.bench", "adaptive", "--workdir",
                      str(tmp_path), "--thresholds", "0,4", "--limit", "6", "--quiet", "--out",
                      str(tmp_path / "adaptive.json"), "--save-clip", str(tmp_path / "still.mp4")],
                     capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr[-2000:]
  from cope_jax.codec.probe import inspect_video  # pylint: disable=import-outside-toplevel
  assert inspect_video(str(tmp_path / "still.mp4"))["num_frames"] == 64 * 30
  bench = json.loads((tmp_path / "adaptive.json").read_text())
  fixed, adaptive = bench["still_camera_clip"]
  assert (fixed["keyframes"], fixed["delta_frames"], fixed["tokens"]) == (8, 56, 2240)
  assert 1 <= adaptive["delta_frames"] <= 8 and adaptive["keyframes"] == 8
  assert all(20 < t <= 29 for t in adaptive["delta_times_s"]), adaptive["delta_times_s"]
  keyframes, cope, cope_adaptive = bench["demo"]
  assert [(x["mode"], x["min_change"]) for x in bench["demo"]] == [
      ("keyframes", 0), ("cope", 0), ("cope", 4)]
  assert (keyframes["delta_frames_per_video"], keyframes["visual_tokens"]) == (0, 20)
  assert (cope["delta_frames_per_video"], cope["visual_tokens"]) == (7, 90)
  from cope_jax.codec.extract import extract_primitives  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.sampling import SamplingConfig  # pylint: disable=import-outside-toplevel
  synth = tmp_path / "data" / "synthetic"
  videos = {json.loads(l)["video"] for l in list(open(synth / "test.jsonl"))[:6]}
  adaptive_sampling = SamplingConfig(min_change=4)
  kept = [len(extract_primitives(str(synth / v), size=64, sampling=adaptive_sampling).mv)
          for v in videos]
  assert cope_adaptive["delta_frames_per_video"] == pytest.approx(np.mean(kept))
  assert cope_adaptive["videos"] == len(videos)
  assert set(cope_adaptive["vs_fixed"]) == {"letter", "open", "ranked"}
  asked = len(list(open(synth / "test.jsonl"))[:6])  # (--quick's test split may hold fewer)
  for row in bench["demo"]:
    assert {row[f]["n"] for f in ("letter", "open", "ranked")} == {asked}
  assert "cope min 4" in r.stdout

  # The same workdir without --quick is refused: its data, checkpoints and evaluations are the
  # quick run's and must not show up as the full demo's.
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(tmp_path)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "--quick" in r.stderr
  # So is --min-change, whose shards and evaluations differ: named in the refusal.
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(tmp_path),
                      "--quick", "--min-change", "4"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "this run asks for --quick and --min-change 4" in r.stderr
  # And another --seed (other videos, questions and models): a draw must not mix with another.
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(tmp_path),
                      "--quick", "--seed", "3"], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and "this run asks for --quick and --seed 3" in r.stderr


def test_demo_refuses_a_workdir_that_is_a_file(tmp_path):
  path = tmp_path / "results"
  path.write_text("not a folder")
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(path)],
                     capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and "is a file" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and path.read_text() == "not a folder"


@pytest.mark.parametrize("seed", ["-1", str(2**31)])
def test_demo_refuses_a_seed_out_of_range(tmp_path, seed):
  from in_process import run_main  # pylint: disable=import-outside-toplevel
  r = run_main("cope_jax.demo.__main__", "--workdir", str(tmp_path / "w"), "--seed", seed)
  assert r.returncode == 2 and r.stderr == f"error: --seed {seed}: a seed is from 0 to 2147483647\n"
  assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("content", [None, b"not a video"])
def test_demo_refuses_a_bad_video_before_making_its_workdir(tmp_path, content):
  video = tmp_path / "clip.mp4"
  if content is not None:
    video.write_bytes(content)
  workdir = tmp_path / "demo"
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(workdir), "--quick",
                      "--video", str(video)], capture_output=True, text=True, timeout=300)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and str(video) in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1 and not workdir.exists()


def test_codec_stage_on_a_real_clip(tmp_path, city_clip):
  """``--video``: the demo's codec stage on your video (here MPEG-2, 25 fps, 7.6 s, re-encoded
  to MPEG-4 at 30 fps: one partial GOP, so one keyframe and seven Δ-frames)."""
  from cope_jax.demo.codec_stage import run_codec_stage
  r = run_codec_stage(str(tmp_path), city_clip, seconds=16)
  assert r["video"] == city_clip and r["input"]["codec"] == "mpeg2video"
  assert (r["keyframes"], r["delta_frames"]) == (1, 7) and r["reconstruction_exact"] is True
  assert r["mean_abs_residual"] < r["mean_abs_frame_difference"]
  assert r["tokens"]["cope_tokens"] == 210 + 7 * 10
  assert (tmp_path / "primitives.npz").exists() and (tmp_path / "codec.png").exists()
  # a re-run keeps it (it was redone every time, though "finished stages are kept")
  from cope_jax.demo import codec_stage  # pylint: disable=import-outside-toplevel
  def extract(*args, **kwargs):
    raise AssertionError("extracted again")
  codec_stage.extract_primitives, original = extract, codec_stage.extract_primitives
  try:
    assert run_codec_stage(str(tmp_path), city_clip, seconds=16, earlier=r) is r
  finally:
    codec_stage.extract_primitives = original


def test_a_workdir_that_cannot_be_made_or_a_clip_the_codec_refuses_leaves_nothing(tmp_path,
                                                                                  capsys):
  from cope_jax.codec import synthetic_clips  # pylint: disable=import-outside-toplevel
  from cope_jax.demo.__main__ import main  # pylint: disable=import-outside-toplevel
  (tmp_path / "file").write_text("")
  assert main(["--workdir", str(tmp_path / "file" / "sub"), "--quick"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(f"error: --workdir {tmp_path / 'file' / 'sub'}")
  clip = tmp_path / "one_frame.mp4"  # it probes, but is too short to extract
  synthetic_clips.write_clip(clip, synthetic_clips.pan_frames(1, 64, 64, (1, 0)), fps=30)
  assert main(["--workdir", str(tmp_path / "demo"), "--quick", "--video", str(clip)]) == 2
  assert "too short" in capsys.readouterr().err and not (tmp_path / "demo").exists()
  (tmp_path / "damaged").mkdir()
  (tmp_path / "damaged" / "settings.json").write_text("garbage")  # edited or cut short
  assert main(["--workdir", str(tmp_path / "damaged"), "--quick"]) == 2
  err = capsys.readouterr().err.strip().splitlines()
  assert len(err) == 1 and err[0].startswith(
      f"error: {tmp_path / 'damaged' / 'settings.json'}: not a readable JSON file"), err
  assert os.listdir(tmp_path / "damaged") == ["settings.json"]
  # a workdir of the demo before its data's format changed: refused, not trained on in a mix
  from cope_jax.demo.recipe import QUICK  # pylint: disable=import-outside-toplevel
  (tmp_path / "old").mkdir()
  (tmp_path / "old" / "settings.json").write_text(json.dumps({"quick": True, **QUICK.recorded()}))
  assert main(["--workdir", str(tmp_path / "old"), "--quick"]) == 2
  assert "was made by an earlier version of the demo" in capsys.readouterr().err
  (tmp_path / "old2").mkdir()  # (format 2: the questions before they named "the first frame")
  (tmp_path / "old2" / "settings.json").write_text(
      json.dumps({"quick": True, **QUICK.recorded(), "data_format": 2}))
  assert main(["--workdir", str(tmp_path / "old2"), "--quick"]) == 2
  assert "was made by an earlier version of the demo" in capsys.readouterr().err
