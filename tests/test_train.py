"""Training end to end on the tiny recipes: losses fall, profiles, exact resume, NaN guard,
validation errors. Checkpoints (damaged, another model's, the first save):
tests/test_train_checkpoints.py; SIGTERM and two processes: tests/test_train_stops.py; the
launcher's local mode: tests/test_launch.py; the train step's math in-process:
tests/test_train_math.py; AOT: tests/test_aot.py."""

import dataclasses
import glob
import gzip
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

FAST = ["--config.log_every=1", "--config.synthetic.videos=24", "--config.checkpoint_every=4"]


def train_cmd(recipe, workdir, *overrides, fast=True):
  return [sys.executable, "-m", "cope_jax.train", f"--config=configs/{recipe}",
          f"--workdir={workdir}", *(FAST if fast else []), *overrides]


def run(recipe, workdir, *overrides, timeout=600, fast=True):
  return subprocess.run(train_cmd(recipe, workdir, *overrides, fast=fast), capture_output=True,
                        text=True, timeout=timeout, cwd=os.path.dirname(os.path.dirname(__file__)))


def metrics(workdir):
  return [json.loads(l) for l in open(os.path.join(workdir, "metrics.jsonl"))]


# The trainer's command, printing what the loop leaves out of the logged rates.
_RATES_NOTED = """
import runpy, sys
from cope_jax.train.metrics_log import MetricsLog
leave_out, start_counting = MetricsLog.leave_out, MetricsLog.start_counting
def noted_leave_out(self, seconds):
  if seconds:
    print(f"left out {seconds:.3f} s" + (" before step 1" if self.last_step == 0 else ""),
          flush=True)
  leave_out(self, seconds)
def noted_start_counting(self, step):
  print(f"counting from step {step}", flush=True)
  start_counting(self, step)
MetricsLog.leave_out, MetricsLog.start_counting = noted_leave_out, noted_start_counting
sys.argv = ["cope_jax.train"] + sys.argv[1:]
runpy.run_module("cope_jax.train", run_name="__main__")
"""


def test_pretrain_tiny_learns_and_logs(tmp_path):
  cmd = train_cmd("pretrain.py:tiny", tmp_path, "--config.total_steps=12",
                  "--config.profile_steps=2:3")
  r = subprocess.run([sys.executable, "-c", _RATES_NOTED, *cmd[3:]], capture_output=True,
                     text=True, timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-3000:]
  # the rates leave out the compilation, the trace's writing and the first step (start-up)
  noted = [line for line in r.stdout.splitlines() if line.startswith(("left out", "counting"))]
  assert noted[0].startswith("left out") and noted[0].endswith("before step 1"), noted
  assert noted[1] == "counting from step 1" and noted[2].startswith("left out"), noted
  assert len(noted) == 3, noted
  # steps 2 and 3 as logged (it traced step 3 alone): two runs of the step's program
  assert "profile of steps 2–3" in r.stdout
  assert _executions_traced(tmp_path) == 2
  m = metrics(tmp_path)
  assert [x["step"] for x in m] == list(range(1, 13))
  for key in ("step", "loss", "learning_rate", "cosine_to_target", "copy_reference_mse",
              "steps_per_s", "tokens_per_s"):
    assert key in m[-1]
  assert np.mean([x["loss"] for x in m[-3:]]) < np.mean([x["loss"] for x in m[:3]])
  assert "memory per device" in r.stdout and "RANDOM" in r.stdout
  assert sorted(os.listdir(tmp_path / "checkpoints")) == ["12", "4", "8"]
  assert any(f.startswith("events") for f in os.listdir(tmp_path / "tensorboard"))


def _executions_traced(workdir) -> int:
  """How many runs of the train step the profile in ``workdir`` holds."""
  trace, = glob.glob(str(workdir / "profile" / "**" / "*.trace.json.gz"), recursive=True)
  with gzip.open(trace) as f:
    events = json.load(f)["traceEvents"]
  return sum(e.get("name") == "CommonPjRtLoadedExecutable::Execute (jit__step)" for e in events)


def test_a_run_resumed_inside_or_past_its_profile_steps_says_what_it_traces(tmp_path):
  """Tracing started at FIRST − 1 only: a run resumed inside the range traced nothing and said
  nothing (one resumed at FIRST − 1 traced its compilation, whose Python events filled the
  buffer: no step in it). It traces the range's steps after its first now, or says it cannot."""
  assert run("pretrain.py:tiny", tmp_path, "--config.total_steps=4").returncode == 0
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=8", "--config.profile_steps=3:7")
  assert r.returncode == 0, r.stderr[-3000:]
  assert ("profile_steps 3:7: tracing steps 6–7; this run's first step (5) compiles, which a "
          "trace cannot hold") in r.stdout and "profile of steps 6–7" in r.stdout, r.stdout
  assert _executions_traced(tmp_path) == 2
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=10", "--config.profile_steps=6:9")
  assert r.returncode == 0, r.stderr[-3000:]
  assert ("profile_steps 6:9: nothing traced; this run's first step (9) compiles, which a trace "
          "cannot hold") in r.stdout


def test_which_profile_steps_a_run_traces(capsys):
  """The range as given where the run's first step lies before it; never that first step (it
  compiles); nothing, saying why, where the range ended before the run."""
  from cope_jax.train.loop import _profiled_steps  # pylint: disable=import-outside-toplevel
  assert _profiled_steps("", 0) == () and _profiled_steps("5:8", 3) == (5, 8)
  assert _profiled_steps("2:2", 0) == (2, 2) and capsys.readouterr().out == ""
  assert _profiled_steps("5:8", 4) == (6, 8) and _profiled_steps("5:8", 6) == (8, 8)
  assert _profiled_steps("1:1", 0) == () and _profiled_steps("5:8", 7) == ()
  said = capsys.readouterr().out.splitlines()
  assert said[-2:] == [
      "profile_steps 1:1: nothing traced; this run's first step (1) compiles, which a trace "
      "cannot hold",
      "profile_steps 5:8: nothing traced; this run's first step (8) compiles, which a trace "
      "cannot hold"], said
  # (it said "compiles" here too, on every resume after the range)
  assert _profiled_steps("5:8", 8) == () and _profiled_steps("5:8", 20) == ()
  assert capsys.readouterr().out.splitlines() == [
      "profile_steps 5:8: nothing traced, the range ends before this run's first step (9)",
      "profile_steps 5:8: nothing traced, the range ends before this run's first step (21)"]


def _vision_checkpoint(path, **vision) -> str:
  """A tiny VideoLM checkpoint whose vision tower is not the one a run initialises itself
  (``vision``: fields of its config.json's vision encoder changed)."""
  from cope_jax.models import checkpoints, presets  # pylint: disable=import-outside-toplevel
  from cope_jax.models.llava import VideoLM  # pylint: disable=import-outside-toplevel
  cfg = presets.video_lm("tiny")
  cfg = dataclasses.replace(cfg, vision=dataclasses.replace(cfg.vision, **vision))
  s = cfg.vision.image_size
  args = (jnp.zeros((1, 4), jnp.int32), jnp.ones((1, 4), bool), jnp.zeros((1, 1, s, s, 3)),
          jnp.zeros((1, 1, 64, 64, 2)), jnp.zeros((1, 1, 64, 64, 3), jnp.int16),
          jnp.zeros((1, 2), jnp.int32))
  params = checkpoints.unbox(VideoLM(cfg).init(jax.random.key(7), *args)["params"])
  checkpoints.save_params(str(path), params, cfg)
  return f"--config.vision_checkpoint={path}"


def test_resume_is_exact(tmp_path):
  """Trained parts, optimizer and data order from the checkpoint; the frozen vision encoder
  from its own checkpoint again (it is not saved with the run). Resumed on another mesh
  (data × fsdp × tensor = 2 × 2 × 2 where it was saved on data = 8): the losses of the run that
  was not interrupted. (On the same mesh: tests/test_train_stops.py, two processes.)"""
  straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
  vision = _vision_checkpoint(tmp_path / "vision")
  assert run("pretrain.py:tiny", straight, "--config.total_steps=8", vision).returncode == 0
  assert run("pretrain.py:tiny", interrupted, "--config.total_steps=4", vision).returncode == 0
  r = run("pretrain.py:tiny", interrupted, "--config.total_steps=8", vision,
          "--config.mesh.data=2", "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
  assert r.returncode == 0 and "resumed from step 4" in r.stdout, r.stderr[-3000:]
  assert "vision encoder from" in r.stdout
  a = {x["step"]: x["loss"] for x in metrics(straight)}
  b = {x["step"]: x["loss"] for x in metrics(interrupted)}
  # Same data order (iterator state restored) and same parameters: the same losses.
  for step in range(5, 9):
    assert b[step] == pytest.approx(a[step], rel=1e-5), step


def test_a_checkpoint_of_another_model_with_the_same_shapes_is_refused(tmp_path):
  """Only shapes were checked: a SigLIP (or Qwen2) with another eps (rope_theta) trained and
  answered as the recipe's model, silently."""
  vision = _vision_checkpoint(tmp_path / "vision", eps=1e-3)
  r = run("pretrain.py:tiny", tmp_path / "w", "--config.total_steps=1", vision)
  assert r.returncode == 2 and r.stderr.startswith(
      f"error: --config.vision_checkpoint={tmp_path / 'vision'}: its model is not the recipe's: "
      "vision.eps 0.001 (the recipe: 1e-06)"), r.stderr[-2000:]


def test_rerunning_a_finished_run_says_so(tmp_path):
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=2")
  assert r.returncode == 0 and "optim.warmup_steps 20 is not shorter than total_steps 2" in r.stdout
  logged = metrics(tmp_path)
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=2")
  assert r.returncode == 0, r.stderr[-3000:]
  assert (f"nothing to train: the run in {tmp_path} already finished at step 2 (total_steps 2); "
          "raise --config.total_steps to train further") in r.stdout
  assert "resumed" not in r.stdout and metrics(tmp_path) == logged
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  # Nor did it write the settings it did not train with (inference and resumes read them), or
  # a new, empty TensorBoard events file.
  saved = (tmp_path / "train_config.json").read_text()
  events = sorted(os.listdir(tmp_path / "tensorboard"))
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=1", "--config.optim.lr=5e-3")
  assert r.returncode == 0 and "nothing to train" in r.stdout, r.stderr[-3000:]
  assert (tmp_path / "train_config.json").read_text() == saved
  assert sorted(os.listdir(tmp_path / "tensorboard")) == events


@pytest.mark.parametrize("recipe,override,message", [
    ("pretrain.py:tiny", "--config.total_steps=-5", "total_steps must be >= 1, got -5"),
    ("finetune.py:tiny", "--config.group_by_length=-1", "group_by_length must be >= 0"),
])
def test_bad_values_are_refused_before_any_data_is_made(tmp_path, recipe, override, message):
  """With an empty cache: a run that a value refuses does not first make and shard the synthetic
  dataset (a minute's work)."""
  cache = tmp_path / "cache"
  r = subprocess.run(train_cmd(recipe, tmp_path / "w", override), capture_output=True, text=True,
                     timeout=600, env=dict(os.environ, COPE_CACHE=str(cache)),
                     cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 2 and r.stderr.startswith(f"error: {message}"), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1 and "synthetic dataset" not in r.stdout
  assert not os.path.exists(cache / "synthetic") and not os.path.exists(tmp_path / "w")


def test_nan_stops_the_run_naming_the_step(tmp_path):
  """Checkpoints every step: the ones before the bad step are kept, the bad step's is never
  written (a non-finite update is not applied, and the run stops before saving it)."""
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=20", "--config.optim.lr=1e30",
          "--config.optim.warmup_steps=1", "--config.optim.clip_norm=1e30",
          "--config.checkpoint_every=1", "--config.log_every=1")
  assert r.returncode == 1
  assert "NaN/inf at step" in r.stderr and "lower optim.lr" in r.stderr
  bad = int(r.stderr.split("NaN/inf at step ")[1].split(";")[0])
  kept = sorted(int(s) for s in os.listdir(tmp_path / "checkpoints"))
  assert bad > 1 and kept and kept[-1] == bad - 1, (bad, kept)
  assert f"The last good checkpoint is kept in {tmp_path / 'checkpoints'}" in r.stderr
  # Before the first save there is none to name (the line named the empty folder).
  r = run("pretrain.py:tiny", tmp_path / "unsaved", "--config.total_steps=20",
          "--config.optim.lr=1e30", "--config.optim.warmup_steps=1",
          "--config.optim.clip_norm=1e30", "--config.checkpoint_every=20")
  assert r.returncode == 1 and "No checkpoint was saved before (lower optim.lr" in r.stderr
  assert not os.listdir(tmp_path / "unsaved" / "checkpoints")


@pytest.mark.parametrize("overrides,message", [
    (["--config.mesh.data=3"], "does not multiply"),
    (["--config.batch_size=7"], "not divisible by the data-parallel"),
    (["--config.grad_accum_steps=4"], "whole rows over the data × fsdp = 8 devices"),
    (["--config.data_dir=/nonexistent", "--config.synthetic.videos=0"], "no pretrain shards"),
    (["--config.profile_steps=5"], "profile_steps"),
    (["--config.profile_steps=0:2"], "the steps as logged, with 1 <= FIRST <= LAST"),
    (["--config.total_steps=3", "--config.profile_steps=2:5"], "2:5 runs past total_steps 3"),
    (["--config.stage=finetune"], "stage 'finetune' is not this recipe's"),
    (["--config.data_dir=gs://bucket/shards"], "gcsfuse"),
    (["--config.optim.lrr=1"], "lrr"),
    (["--config.keep_checkpoints=0"], "keep_checkpoints must be >= 1"),
    (["--config.mesh.data=0"], "each axis is a size >= 1, or -1"),
    (["--config.mesh.fsdp=-1"], "data and fsdp are both -1"),  # (data is -1 unless set)
    (["--config.split=trian"], "split 'trian' is not in the shards"),
    (["--config.optim.lr=-1e-3"], "optim.lr must be > 0 and finite, got -0.001"),
    # (it compiled and stopped at the first NaN, naming a "last good checkpoint" never saved)
    (["--config.optim.lr=inf"], "optim.lr must be > 0 and finite, got inf"),
    (["--config.optim.clip_norm=0"], "optim.clip_norm must be > 0"),
    (["--config.optim.b2=1.0"], "optim.b1 and b2 must be in [0, 1)"),
])
def test_validation_errors(tmp_path, overrides, message):
  r = run("pretrain.py:tiny", tmp_path, *overrides)
  assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("error:")
  assert message in r.stderr and "Traceback" not in r.stderr


def test_videos_longer_than_the_frame_slots_stop_before_training(tmp_path):
  r = run("finetune.py:tiny", tmp_path, "--config.max_delta_frames=3")
  assert r.returncode == 2 and "7 Δ-frames, more than max_delta_frames=3" in r.stderr, r.stderr
  assert not os.path.exists(tmp_path / "checkpoints")


def _qwen2_tokenizer() -> str:
  from cope_jax.data import tokenizer  # pylint: disable=import-outside-toplevel
  return tokenizer.qwen2_tokenizer_file()


@pytest.mark.parametrize("override,message", [
    ("--config.group_by_length=-1", "group_by_length must be >= 0"),
    # the pipeline takes the first bucket that fits: out of order, it would cut examples
    ("--config.length_buckets=(512,256)", "length_buckets must be positive and ascending"),
    # (a traceback, status 1: compared with whole numbers; 256.5 failed after compiling)
    ("--config.length_buckets=abc", "length_buckets must be whole numbers of positions"),
    ("--config.length_buckets=(256.5,512)", "length_buckets must be whole numbers of positions"),
    ("--config.trainable.projector=-1", "trainable.projector must be > 0 and finite (a part's: "
                                        "or 0, frozen), got -1"),
    ("--config.trainable.llm=inf", "trainable.llm must be > 0 and finite"),
    # stage 1's rate, unread in stage 2: it trained at the recipe's rates, silently
    ("--config.optim.lr=1e-9", "optim.lr (1e-09) is stage 1's learning rate; stage 2 trains each "
                               "part at its own: --config.trainable.PART=RATE for PART in"),
    # Qwen2's 151,646 ids in the tiny LLM's 1,032-row embedding: lookups silently clipped
    (lambda: f"--config.tokenizer={_qwen2_tokenizer()}", "more than the LLM's vocabulary of 1032"),
])
def test_stage2_settings_that_cannot_work_are_refused(tmp_path, override, message):
  r = run("finetune.py:tiny", tmp_path, override() if callable(override) else override)
  assert r.returncode == 2 and message in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr and not os.path.exists(tmp_path / "checkpoints")


def test_unknown_variant_is_one_error_line(tmp_path):
  r = run("pretrain.py:bogus", tmp_path, timeout=120)
  assert r.returncode == 2 and r.stderr.startswith("error:") and "bogus" in r.stderr
  assert len(r.stderr.strip().splitlines()) == 1


def test_a_missing_recipe_or_a_file_as_workdir_is_one_error_line(tmp_path):
  (tmp_path / "file").write_text("")
  for recipe, workdir, message in (("missing.py", tmp_path / "w", "the recipe did not load"),
                                   ("pretrain.py:tiny", tmp_path / "file", "is a file"),
                                   ("pretrain.py:tiny", tmp_path / "file" / "sub", "is a file")):
    r = run(recipe, workdir, timeout=120)
    assert r.returncode == 2 and r.stderr.startswith("error:") and message in r.stderr, r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
  for overrides in ([], ["--config.total_steps=3"]):  # (with overrides absl reads it at once)
    r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot", "--config=configs/missing.py",
                        *overrides], capture_output=True, text=True, timeout=300,
                       cwd=os.path.dirname(os.path.dirname(__file__)))
    assert r.returncode == 2 and r.stderr.startswith("error: --config: the recipe did not load")
    assert len(r.stderr.strip().splitlines()) == 1


def test_paper_recipe_without_data_stops_at_once(tmp_path):
  r = run("finetune.py", tmp_path, timeout=120, fast=False)
  assert r.returncode == 2 and "error: no data_dir" in r.stderr and ":tiny" in r.stderr


def test_finetune_tiny_with_stage1_checkpoint(tmp_path):
  assert run("pretrain.py:tiny", tmp_path / "s1", "--config.total_steps=2").returncode == 0
  r = run("finetune.py:tiny", tmp_path / "s2", "--config.total_steps=6",
          f"--config.stage1_checkpoint={tmp_path / 's1'}", "--config.grad_accum_steps=2",
          "--config.batch_size=16")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "Δ-encoder from stage 1" in r.stdout
  m = metrics(tmp_path / "s2")
  assert m[-1]["loss"] < m[0]["loss"] and "answer_token_accuracy" in m[-1]
  # A stage 1 of another Δ-encoder is refused, naming the setting that loaded it.
  r = run("finetune.py:tiny", tmp_path / "s2_demo", "--config.total_steps=1",
          f"--config.stage1_checkpoint={tmp_path / 's1'}", "--config.model.delta=demo")
  assert r.returncode == 2 and r.stderr.startswith("error: delta_encoder from "
                                                   "--config.stage1_checkpoint="), r.stderr


def test_loaded_parameters_of_another_size_are_refused_by_name():
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import _place  # pylint: disable=import-outside-toplevel
  sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
  abstract = {"layer": {"kernel": jax.ShapeDtypeStruct((4, 8), np.float32, sharding=sharding)}}
  placed = _place({"layer": {"kernel": np.ones((4, 8))}}, abstract, "llm")
  assert placed["layer"]["kernel"].shape == (4, 8) and placed["layer"]["kernel"].dtype == np.float32
  with pytest.raises(ConfigError, match=r"llm\['layer'\]\['kernel'\]: the checkpoint's shape "
                     r"\(4, 16\) is not the model's \(4, 8\)"):
    _place({"layer": {"kernel": np.ones((4, 16))}}, abstract, "llm")
  with pytest.raises(ConfigError, match="another tree of parameters"):
    _place({"layer": {"bias": np.ones(8)}}, abstract, "llm")


def test_parameters_the_mesh_does_not_divide_are_refused_by_name():
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import _check_divisible  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((4, 2), ("fsdp", "tensor"), devices=jax.devices()[:8])
  spec = lambda *axes: jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(*axes))  # noqa: E731
  shaped = lambda shape, *axes: jax.ShapeDtypeStruct(shape, np.float32, sharding=spec(*axes))  # noqa: E731
  _check_divisible({"w": shaped((8, 6), "fsdp", "tensor"), "b": shaped((6,), None),
                    "v": shaped((1148, 6), "fsdp")}, mesh, "")  # 1148 = 4 × 287
  with pytest.raises(ConfigError, match=r"trained parameter \['vision'\]\['w'\]: its dimension 0 "
                     r"\(1148\) is sharded over the mesh axes fsdp×tensor = 8 devices"):
    _check_divisible({"vision": {"w": shaped((1148, 6), ("fsdp", "tensor"), None)}}, mesh,
                     "trained parameter ")
