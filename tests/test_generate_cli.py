"""The generate CLI on a briefly trained tiny model: its JSON, sampling, limits and refusals, and
loading a workdir (other devices, a Δ-encoder kept frozen in stage 2)."""

import json
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest

from in_process import run_main


def test_generate_cli_json(tiny_workdir):
  workdir, synth = tiny_workdir
  video = os.path.join(synth, "videos", "00000.mp4")
  r = subprocess.run([sys.executable, "-m", "cope_jax.generate", "--workdir", str(workdir),
                      "--video", video, "--question", "What moves?", "--json",
                      "--max-new-tokens", "4", "--repeat", "2"], capture_output=True, text=True,
                     timeout=600)
  assert r.returncode == 0, r.stderr[-3000:]
  out = json.loads(r.stdout)
  for key in ("answer", "ttft_s", "e2e_s", "visual_tokens", "prompt_tokens", "extract_s"):
    assert key in out
  assert out["visual_tokens"] == 20 + 7 * 10 and 0 < out["ttft_s"] <= out["e2e_s"]
  # The second call's timings, the first's apart (it pays one-off set-up besides compilation;
  # how much is for benchmarks, not a pass/fail test).
  assert out["repeat"] == 2 and 0 < out["ttft_cold_s"] <= out["e2e_cold_s"]


def test_a_workdir_trained_on_other_devices_answers(tiny_workdir):
  """The fixture trained with this process's devices (1, or CI's 8 emulated): generate on 3."""
  workdir, synth = tiny_workdir
  env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=3"}
  r = subprocess.run([sys.executable, "-m", "cope_jax.generate", "--workdir", str(workdir),
                      "--video", os.path.join(synth, "videos", "00000.mp4"), "--question",
                      "What moves?", "--max-new-tokens", "2", "--json"], capture_output=True,
                     text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "unreadable" not in r.stderr and json.loads(r.stdout)["visual_tokens"] == 90


def test_generate_cli_samples_with_temperature_and_top_p(tiny_workdir):
  workdir, synth = tiny_workdir
  video = os.path.join(synth, "videos", "00000.mp4")
  r = run_main("cope_jax.generate", "--workdir", str(workdir), "--video", video, "--question",
               "What moves?", "--json", "--max-new-tokens", "3", "--temperature", "0.8",
               "--top-p", "0.9")
  assert r.returncode == 0, r.stderr[-3000:]
  assert isinstance(json.loads(r.stdout)["answer"], str)


def test_generate_cli_refuses_more_new_tokens_than_positions(tiny_workdir):
  """The KV cache holds every slot: an absurd --max-new-tokens is refused, not allocated."""
  workdir, synth = tiny_workdir
  r = run_main("cope_jax.generate", "--workdir", str(workdir), "--video",
               os.path.join(synth, "videos", "00000.mp4"), "--question", "What moves?",
               "--max-new-tokens", "10000000")
  assert r.returncode == 2 and r.stderr.startswith("error: "), r.stderr[-2000:]
  assert "max_new_tokens 10000000 exceed the model's" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("flag,value,message", [
    ("--temperature", "-1", "temperature must be a finite number >= 0"),
    ("--temperature", "nan", "temperature"), ("--temperature", "inf", "got inf"),
    ("--temperature", "1e308", "got 1e+308"),
    ("--top-p", "0", "top_p must be in (0, 1]"), ("--top-p", "1.5", "top_p must be in (0, 1]"),
    ("--min-change", "300", "min_change must be within 0-255"),
    ("--seed", "-1", "seed must be from 0 to 2**32 - 1")])
def test_generate_cli_refuses_sampling_values_before_loading(tmp_path, flag, value, message):
  r = run_main("cope_jax.generate", "--workdir", str(tmp_path / "no_model"), "--video",
               str(tmp_path / "no.mp4"), "--question", "What moves?", flag, value)
  assert r.returncode == 2 and r.stderr.startswith("error: ") and message in r.stderr, r.stderr
  assert len(r.stderr.strip().splitlines()) == 1


def test_loading_a_workdir_logs_no_orbax_warning(tiny_workdir, caplog):
  """Orbax warns that a folder opened read-only is read-only: loading mutes it, every time."""
  from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
  workdir, _ = tiny_workdir
  with caplog.at_level("WARNING"):
    assert latest_params(str(workdir))
  assert not [r for r in caplog.records if r.name == "absl"], caplog.text


def test_a_damaged_newest_checkpoint_is_one_warning_and_the_one_before_loads(tiny_workdir,
                                                                             tmp_path):
  """The reads still in flight when one failed printed hundreds of lines of tracebacks (now and
  then: a race), as training's restore did before it dropped them."""
  workdir, _ = tiny_workdir
  run = tmp_path / "w"
  shutil.copytree(workdir, run)
  shutil.copytree(run / "checkpoints" / "2", run / "checkpoints" / "1")  # an older one
  for data in (run / "checkpoints" / "2" / "state" / "ocdbt.process_0" / "d").iterdir():
    with open(data, "r+b") as f:  # (each: which file holds the parameters, not Adam's, varies)
      f.truncate(f.seek(0, 2) // 2)
  r = subprocess.run([sys.executable, "-c", "from cope_jax.infer.api import CoPE; "
                      f"CoPE.load({str(run)!r}); print('loaded')"], capture_output=True,
                     text=True, timeout=600)
  assert r.returncode == 0 and r.stdout == "loaded\n", r.stderr[-3000:]
  assert "checkpoint 2 unreadable" in r.stderr and "trying an older one" in r.stderr
  assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 10, r.stderr[-3000:]


def test_a_model_config_that_describes_another_model_is_one_error_line(tiny_workdir, tmp_path):
  """(It loaded, then failed at the first question with Flax's or scan's error, status 1.)"""
  workdir, synth = tiny_workdir
  run = tmp_path / "w"
  shutil.copytree(workdir, run)
  config = json.loads((run / "model_config.json").read_text())
  config["llm"]["num_layers"] += 1
  (run / "model_config.json").write_text(json.dumps(config))
  r = run_main("cope_jax.generate", "--workdir", str(run), "--video",
               os.path.join(synth, "videos", "00000.mp4"), "--question", "What moves?")
  assert r.returncode == 2 and r.stderr.count("\n") == 1, r.stderr[-3000:]
  assert r.stderr.startswith(f"error: {run}: its model_config.json describes another model than "
                             "its checkpoint (llm.layers.")


def test_a_delta_encoder_frozen_in_stage_2_is_loaded_from_stage_1(tiny_workdir, tmp_path,
                                                                   monkeypatch):
  """Not the init_checkpoint's (a random one, for a converted LLaVA-Video) nor a zero one."""
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  from cope_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  workdir, _ = tiny_workdir
  trained = dict(checkpointing.latest_params(str(workdir)))
  stage1 = jax.tree_util.tree_map(lambda x: np.full_like(x, 0.5), trained.pop("delta_encoder"))
  run = tmp_path / "stage2"
  shutil.copytree(workdir, run)
  config = json.loads((run / "train_config.json").read_text())
  config["stage1_checkpoint"] = str(tmp_path / "stage1")
  (run / "train_config.json").write_text(json.dumps(config))
  monkeypatch.setattr(checkpointing, "latest_params", lambda path: (
      {"delta_encoder": stage1} if path == str(tmp_path / "stage1") else trained))
  model = CoPE.load(str(run))
  assert not model.untrained_delta
  leaves = jax.tree_util.tree_leaves(model.generator.params["delta_encoder"])
  assert leaves and all(np.all(np.asarray(x) == 0.5) for x in leaves)


def test_a_missing_checkpoint_or_init_checkpoint_is_named_without_orbax_warnings(
    tiny_workdir, tmp_path, monkeypatch, caplog):
  """Orbax logged two warnings, then "Checkpoint at …/params not found", and did not say that
  the path came from train_config.json's init_checkpoint (a path on the machine that trained)."""
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  from cope_jax.models import checkpoints  # pylint: disable=import-outside-toplevel
  from cope_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  (tmp_path / "copy").mkdir()
  (tmp_path / "copy" / "config.json").write_text("{}")  # (an unfinished copy: no params/)
  with caplog.at_level("WARNING"):
    with pytest.raises(FileNotFoundError, match=r"copy: no params in it"):
      checkpoints.load_params(str(tmp_path / "copy"))
    with pytest.raises(FileNotFoundError, match=r"gone: no such folder"):
      checkpoints.load_params(str(tmp_path / "gone"))
    workdir, _ = tiny_workdir
    trained = dict(checkpointing.latest_params(str(workdir)))
    trained.pop("vision_tower")  # (a run that kept the vision tower frozen)
    run = tmp_path / "stage2"
    shutil.copytree(workdir, run)
    config = json.loads((run / "train_config.json").read_text())
    config["init_checkpoint"] = str(tmp_path / "gone")
    (run / "train_config.json").write_text(json.dumps(config))
    monkeypatch.setattr(checkpointing, "latest_params", lambda path: trained)
    with pytest.raises(FileNotFoundError, match=r"lacks \['vision_tower'\].*its init_checkpoint "
                                                r"\(train_config.json\).*gone: no such folder"):
      CoPE.load(str(run))
  assert not [r for r in caplog.records if r.name == "absl"], caplog.text


def test_dense_frames_below_one_are_refused_by_the_api(tiny_workdir):
  """SamplingConfig reads uniform_frames=0 as "not uniform": the API answered "dense" from
  CoPE's 1-fps positions."""
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  workdir, data = tiny_workdir
  model = CoPE.load(str(workdir))
  video = os.path.join(data, "videos", "00001.mp4")
  assert len(model.video_inputs(video, "dense", dense_frames=3).times) == 3
  with pytest.raises(ConfigError, match="dense_frames must be at least 1, got 0"):
    model.video_inputs(video, "dense", dense_frames=0)
  # K is not dense mode's: one setting for every mode works, as on the command line (refused)
  assert len(model.video_inputs(video, "dense", keyframes_per_gop=16, dense_frames=3).times) == 3
  with pytest.raises(ConfigError, match="keyframes_per_gop"):
    model.video_inputs(video, "cope", keyframes_per_gop=16)


def test_ask_checks_its_sampling_values_before_the_video_and_rank_options_wants_a_list(
    tiny_workdir, tmp_path, monkeypatch):
  """A bad temperature was reported only after the video was extracted (here: the missing video
  was reported instead); a string of options ranked its characters."""
  from cope_jax.infer.api import CoPE  # pylint: disable=import-outside-toplevel
  from cope_jax.train import checkpointing  # pylint: disable=import-outside-toplevel
  workdir, data = tiny_workdir
  model = CoPE.load(str(workdir))
  with pytest.raises(ValueError, match="temperature must be"):
    model.ask(str(tmp_path / "missing.mp4"), "Q?", temperature=-1)
  with pytest.raises(ValueError, match="a list of at least one option, got 'ab'"):
    model.rank_options(os.path.join(data, "videos", "00001.mp4"), "Q?", "ab")
  # a Δ-encoder kept frozen in stage 2 comes from stage1_checkpoint: named when unreadable
  trained = dict(checkpointing.latest_params(str(workdir)))
  trained.pop("delta_encoder")
  run = tmp_path / "stage2"
  shutil.copytree(workdir, run)
  config = json.loads((run / "train_config.json").read_text())
  config["stage1_checkpoint"] = str(tmp_path / "gone")
  (run / "train_config.json").write_text(json.dumps(config))
  real = checkpointing.latest_params
  monkeypatch.setattr(checkpointing, "latest_params",
                      lambda path: trained if path == str(run) else real(path))
  with pytest.raises(FileNotFoundError, match=r"lacks the Δ-encoder.*stage1_checkpoint "
                                              r"\(train_config.json\).*gone"):
    CoPE.load(str(run))
