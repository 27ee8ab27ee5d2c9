"""What generate and evaluate accept: short clips in every mode, and a broken workdir, tokenizer
or data line as one ``error:`` line and exit status 2."""

import glob
import json
import os
import pathlib
import shutil
import subprocess

import pytest

from cope_jax.codec import synthetic_clips
from in_process import run_main

MODES = ("cope", "keyframes", "dense", "cope_zero_delta")


def _run(module: str, *args: str) -> subprocess.CompletedProcess:
  return run_main(f"cope_jax.{module}", *args)


def _one_error_line(r: subprocess.CompletedProcess, *named: str) -> None:
  assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1 and all(n in r.stderr for n in named), r.stderr


def test_a_clip_shorter_than_one_fusion_window_is_answered_in_every_mode(tiny_workdir, tmp_path):
  """20 frames (under the 31 a Δ-frame needs): one keyframe, as the budget counts such a clip;
  every mode asks about the same videos, so their accuracies compare."""
  workdir, _ = tiny_workdir
  clip = tmp_path / "short.mp4"
  synthetic_clips.write_clip(clip, synthetic_clips.object_frames(20, 64, 64, (2, 1)), fps=30)
  data = tmp_path / "q.jsonl"
  data.write_text(json.dumps({"video": "short.mp4", "question": "Q?", "options": ["a", "b"],
                              "answer": "A"}) + "\n")
  tokens = {}
  for mode in MODES:
    out = tmp_path / f"{mode}.json"
    r = _run("evaluate", "--workdir", str(workdir), "--data", str(data), "--mode", mode,
             "--out", str(out), "--quiet")
    assert r.returncode == 0, r.stderr[-2000:]
    res = json.loads(out.read_text())
    assert res["n"] == 1 and not res.get("skipped"), res
    tokens[mode] = res["visual_tokens_mean"]
  # one keyframe (20 tokens at tiny scale), no Δ-frame; dense: the 20 frames there are
  assert tokens == {"cope": 20, "keyframes": 20, "dense": 20 * 20, "cope_zero_delta": 20}


def test_a_missing_or_broken_tokenizer_is_one_error_line_and_can_be_named(tiny_workdir,
                                                                         tmp_path):
  """A workdir names its tokenizer by the training machine's path (the tiny recipes' cache): a
  copy elsewhere must say so, and --tokenizer points at another."""
  workdir, synth = tiny_workdir
  copy = tmp_path / "copied"
  shutil.copytree(workdir, copy)
  train = json.loads((copy / "train_config.json").read_text())
  tokenizer, train["tokenizer"] = train["tokenizer"], str(tmp_path / "gone" / "tokenizer.json")
  (copy / "train_config.json").write_text(json.dumps(train))
  video = os.path.join(synth, "videos", "00000.mp4")
  ask = ("generate", "--workdir", str(copy), "--video", video, "--question", "What moves?",
         "--max-new-tokens", "2", "--json")
  _one_error_line(_run(*ask), f"gone/tokenizer.json: the tokenizer {copy}/train_config.json "
                  "names is not on this machine", "--tokenizer")
  (tmp_path / "junk.json").write_text("{}")
  _one_error_line(_run(*ask, "--tokenizer", str(tmp_path / "junk.json")),
                  "junk.json: not a tokenizers JSON file")
  # Qwen2's 151,646 ids in the tiny LLM's 1,032 rows: it answered "!!!…", exit status 0
  from cope_jax.data.tokenizer import qwen2_tokenizer_file  # pylint: disable=import-outside-toplevel
  _one_error_line(_run(*ask, "--tokenizer", qwen2_tokenizer_file()),
                  "has 151646 ids, more than the LLM's vocabulary of 1032: not the tokenizer")
  r = _run(*ask, "--tokenizer", tokenizer)
  assert r.returncode == 0 and json.loads(r.stdout)["visual_tokens"] == 90, r.stderr[-2000:]
  train["stage"] = "pretrain"  # a stage-1 workdir answers nothing: said so
  (copy / "train_config.json").write_text(json.dumps(train))
  _one_error_line(_run(*ask), "a stage-1 (Δ-encoder pre-training) workdir")
  train["stage"] = "finetune"
  (copy / "train_config.json").write_text(json.dumps(train))
  data = os.path.join(synth, "test.jsonl")
  _one_error_line(_run("evaluate", "--workdir", str(copy), "--data", data, "--out",
                       str(tmp_path / "r.json")), "train_config.json names is not on this machine")
  # cope_jax's own Qwen2 build, recorded by the trainer's cache path (a paper run's, read on
  # Colab), is rebuilt here: it was refused as missing. (Here the tiny LLM then refuses it.)
  train["tokenizer"] = "/home/trainer/.cache/cope_jax/qwen2_tokenizer.json"
  (copy / "train_config.json").write_text(json.dumps(train))
  _one_error_line(_run(*ask), f"{qwen2_tokenizer_file()} has 151646 ids, more than the LLM's")
  r = _run("evaluate", "--workdir", str(copy), "--data", data, "--out", str(tmp_path / "r.json"),
           "--limit", "1", "--quiet", "--tokenizer", tokenizer)
  assert r.returncode == 0 and json.loads((tmp_path / "r.json").read_text())["n"] == 1, r.stderr


@pytest.mark.parametrize("content", ["{}", '{"vision": 3}', "not json"])
def test_a_broken_model_config_is_one_error_line(tiny_workdir, tmp_path, content):
  workdir, synth = tiny_workdir
  copy = tmp_path / "copied"
  shutil.copytree(workdir, copy)
  (copy / "model_config.json").write_text(content)
  r = _run("generate", "--workdir", str(copy), "--video",
           os.path.join(synth, "videos", "00000.mp4"), "--question", "Q?")
  _one_error_line(r, "model_config.json: not a model config written by cope_jax")


def test_a_family_that_is_not_a_string_is_refused_before_loading(tmp_path):
  """Accuracies are reported per family, sorted by name: a null family used to crash evaluate
  after every question was asked."""
  good = {"video": "a.mp4", "question": "Q?", "options": ["a", "b"], "answer": "A"}
  (tmp_path / "q.jsonl").write_text(json.dumps({**good, "family": "appearance"}) + "\n"
                                    + json.dumps({**good, "family": None}) + "\n")
  r = _run("evaluate", "--workdir", str(tmp_path / "no_model"), "--data",
           str(tmp_path / "q.jsonl"), "--out", str(tmp_path / "r.json"))
  _one_error_line(r, "q.jsonl:2: family must be a string, got None")
  assert not (tmp_path / "r.json").exists()


def test_frames_of_another_mode_are_refused(tiny_workdir):
  """ask/rank_options with ``inputs`` of another mode answered about those frames under the
  asked mode's name (a "dense" answer from cope's keyframe and Δ-frames; an RGB-only model ran
  its placeholder Δ-encoder as "keyframes")."""
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  workdir, synth = tiny_workdir
  # (paths as pathlib paths: a Path tokenizer was "not a tokenizers JSON file")
  model = CoPE.load(workdir, tokenizer=pathlib.Path(synth) / "tokenizer.json")
  video = sorted(glob.glob(os.path.join(synth, "videos", "*.mp4")))[0]
  cope = model.video_inputs(str(video), "cope")
  dense = model.video_inputs(str(video), "dense", dense_frames=4)
  assert model.ask(str(video), "Q?", "cope_zero_delta", max_new_tokens=1, inputs=cope).mode \
      == "cope_zero_delta"  # (cope's frames, read as they are)
  for mode, inputs in (("dense", cope), ("keyframes", cope), ("cope", dense)):
    with pytest.raises(ValueError, match=f"inputs sampled for '{inputs.sampling}' cannot be "
                                         f"asked in mode '{mode}'"):
      model.ask(str(video), "Q?", mode, max_new_tokens=1, inputs=inputs)
  with pytest.raises(ValueError, match="cannot be asked in mode 'keyframes'"):
    model.rank_options(str(video), "Q?", ["a", "b"], "keyframes", inputs=cope)


def test_question_ids_are_unique_and_a_null_one_is_its_line(tmp_path):
  """A line without an id took its line number, which another line's id could be; a null id
  stayed null: the log's rows could not be joined back to their questions."""
  from cope_jax.evaluate import read_questions  # pylint: disable=import-outside-toplevel
  good = {"video": "a.mp4", "question": "Q?", "options": ["a", "b"], "answer": "A"}
  path = tmp_path / "q.jsonl"
  path.write_text(json.dumps({**good, "id": None}) + "\n" + json.dumps({**good, "id": "x"}) + "\n")
  assert [q["id"] for q in read_questions(str(path))] == ["1", "x"]
  path.write_text(json.dumps({**good, "id": "2"}) + "\n" + json.dumps(good) + "\n")
  with pytest.raises(ValueError, match="lines 1 and 2 have one id, '2'"):
    read_questions(str(path))
