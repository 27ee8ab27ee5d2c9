"""Training inputs refused by name, in one ``error:`` line, before anything is made: seeds, the
loader's sizes, the model's dtype, a workdir that cannot be created, and a checkpoint to start
from that does not read."""

import glob
import json
import os
import shutil
import subprocess
import sys

import pytest

from cope_jax.codec.errors import ConfigError
from cope_jax.data.build import shard_dir
from cope_jax.demo.recipe import load_recipe
from cope_jax.train import optim, prepare, shard_checks

ROOT = os.path.dirname(os.path.dirname(__file__))


@pytest.mark.parametrize("key,value,message", [
    ("seed", -1, "seed must be from 0 to 2**32 - 1, got -1"),
    ("seed", 2**32, "seed must be from 0 to 2**32 - 1"),
    ("synthetic.seed", -2, "synthetic.seed must be from 0 to 2**32 - 1, got -2"),
    ("read_threads", -1, "read_threads must be >= 0, got -1"),
    ("prefetch_batches", -1, "prefetch_batches must be >= 0"),
    ("worker_count", -3, "worker_count must be >= 0"),
    ("model.dtype", "foo", "model.dtype must be one of ('float32', 'bfloat16', 'float16')"),
    # the tiny Δ-encoder's grid position tables hold 32 patches of 16 pixels
    ("codec_size", 528, "codec_size 528 exceeds the Δ-encoder's 512 pixels"),
    # (negative chunks were tracebacks at compile time, after the data and a model's loading)
    ("model.attention_chunk", -1, "model.attention_chunk must be >= 0 (0 = one block), got -1"),
    ("model.loss_chunk", -5, "model.loss_chunk must be >= 0"),
])
def test_loader_seed_and_dtype_values_are_refused_by_name(key, value, message):
  """Grain, NumPy and JAX refuse these too, but with tracebacks and after the data is made."""
  config = load_recipe("pretrain", "tiny")
  with config.unlocked():
    parent, _, leaf = key.rpartition(".")
    (config[parent] if parent else config)[leaf] = value
  with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace(")", r"\)")
                     .replace("*", r"\*")):
    prepare.check_settings(config, device_count=8)


@pytest.mark.parametrize("keyframes,deltas", [(0, 7), (-2, 7), (1, -1)])
def test_frame_limits_that_fit_no_video_are_refused_before_the_data(keyframes, deltas):
  """Refused only once the data was made (the data check: "has 7 Δ-frames, more than
  max_delta_frames=-1"), and by aot with a traceback. 0 Δ-frames is allowed: RGB frames only."""
  config = load_recipe("finetune", "tiny")
  with config.unlocked():
    config.max_keyframes, config.max_delta_frames = keyframes, deltas
  with pytest.raises(ConfigError, match="max_keyframes must be >= 1 and max_delta_frames >= 0"):
    prepare.check_settings(config, device_count=8)
  with config.unlocked():
    config.max_keyframes, config.max_delta_frames = 1, 0
  prepare.check_settings(config, device_count=8)


def test_a_rate_of_0_freezes_a_stage2_part():
  """The recipe's trainable keys cannot be removed from the command line: no part could be
  frozen there ("trainable.vision_tower must be > 0")."""
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import FinetuneTask  # pylint: disable=import-outside-toplevel
  config = load_recipe("finetune", "tiny")
  with config.unlocked():
    config.trainable.vision_tower = 0.0
  # frozen, it must come from somewhere: else random in training and missing at inference
  with pytest.raises(ConfigError, match="vision_tower is frozen .* and no init_checkpoint"):
    prepare.check_settings(config, device_count=8)
  with config.unlocked():
    config.trainable.delta_encoder = 0.0
    config.init_checkpoint = "/ckpt/llava"
  with pytest.raises(ConfigError, match="delta_encoder is frozen .* and no stage1_checkpoint .* "
                                        "taken from init_checkpoint's copy, which training "
                                        "ignores"):
    prepare.check_settings(config, device_count=8)
  with config.unlocked():
    config.trainable.delta_encoder = 1e-3
  prepare.check_settings(config, device_count=8)
  trained, frozen = jax.eval_shape(FinetuneTask(config, "").init_params, jax.random.key(0))
  assert "vision_tower" in frozen and "vision_tower" not in trained
  assert set(trained) == {"delta_encoder", "projector", "llm", "image_newline"}
  with config.unlocked():
    for part in config.trainable:
      config.trainable[part] = 0.0
  with pytest.raises(ConfigError, match="every trainable part's rate is 0"):
    prepare.check_settings(config, device_count=8)


def test_a_tensor_axis_that_does_not_divide_the_heads_is_warned_about(capsys):
  """Correct but slow (attention replicated and re-split in every layer): it passed silently."""
  config = load_recipe("pretrain", "tiny")  # LLM 4 query and 2 key/value heads, vision 4
  for tensor, warned in ((2, False), (4, True)):
    with config.unlocked():
      config.mesh.data, config.mesh.tensor = 8 // tensor, tensor
    prepare.check_settings(config, device_count=8)
    err = capsys.readouterr().err
    assert ("warning: mesh tensor=4 does not divide the LLM key/value heads 2" in err) is warned


def test_a_workdir_that_cannot_be_created_is_one_error_line(tmp_path):
  """Under /proc no one can make a folder, root included (for whom every folder is writable)."""
  r = subprocess.run([sys.executable, "-m", "cope_jax.train", "--config=configs/pretrain.py:tiny",
                      "--workdir=/proc/cope_jax_test/run", "--config.synthetic.videos=24",
                      "--config.total_steps=1"], capture_output=True, text=True, timeout=600,
                     cwd=ROOT)
  assert r.returncode == 2 and r.stderr.startswith("error: --workdir=/proc/cope_jax_test/run: "
                                                   "cannot create it"), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1


@pytest.mark.parametrize("key", ["stage1_checkpoint", "init_checkpoint"])
def test_a_checkpoint_to_start_from_that_does_not_read_is_one_error_line(tmp_path, key):
  """The folder exists, so only reading it fails (Orbax raises many kinds of errors): one line
  naming the setting, and nothing is left: a workdir the run made is removed (no config files a
  later run would trust), one the user made is kept."""
  (tmp_path / "empty").mkdir()
  if key == "init_checkpoint":
    (tmp_path / "w").mkdir()
  r = subprocess.run([sys.executable, "-m", "cope_jax.train", "--config=configs/finetune.py:tiny",
                      f"--workdir={tmp_path / 'w'}", "--config.synthetic.videos=24",
                      "--config.total_steps=1", f"--config.{key}={tmp_path / 'empty'}"],
                     capture_output=True, text=True, timeout=600, cwd=ROOT)
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
  assert f"--config.{key}={tmp_path / 'empty'}: not a readable checkpoint" in errors[0]
  assert "Traceback" not in r.stderr
  assert sorted(os.listdir(tmp_path)) == (["empty", "w"] if key == "init_checkpoint" else ["empty"])
  assert not os.path.exists(tmp_path / "w" / "model_config.json")


def test_a_resume_that_would_batch_the_data_otherwise_is_refused(tmp_path):
  """The saved data position is a batch count: with another batch size or seed it would mean
  other examples, silently."""
  def train(*overrides):
    return subprocess.run([sys.executable, "-m", "cope_jax.train",
                           "--config=configs/pretrain.py:tiny", f"--workdir={tmp_path}",
                           "--config.synthetic.videos=24", "--config.checkpoint_every=2",
                           *overrides], capture_output=True, text=True, timeout=600, cwd=ROOT)
  assert train("--config.total_steps=2").returncode == 0
  saved = (tmp_path / "train_config.json").read_text()
  r = train("--config.total_steps=4", "--config.batch_size=8", "--config.seed=3")
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
  assert "batched its data otherwise (batch_size 16 → 8, seed 0 → 3)" in errors[0]
  assert (tmp_path / "train_config.json").read_text() == saved
  assert os.listdir(tmp_path / "checkpoints") == ["2"]
  data = json.loads(saved)["data_dir"]
  moved = tmp_path.parent / f"{tmp_path.name}_moved_data"
  shutil.copytree(data, moved)
  r = train("--config.total_steps=4", f"--config.data_dir={moved}")  # the same records, moved
  assert r.returncode == 0 and "resumed from step 2" in r.stdout, r.stderr[-2000:]
  # Other records under the same settings: the saved data position would mean other examples.
  # A rebuild on other videos, the same number of records and bytes (ArrayRecord writes whole
  # 32 KiB blocks, so equal sizes are common): other bytes inside a record.
  shard, = glob.glob(os.path.join(shard_dir(str(moved), "pretrain"), "*-train.array_record-*"))
  with open(shard, "r+b") as f:
    f.seek(1000)
    byte = f.read(1)
    f.seek(1000)
    f.write(bytes([byte[0] ^ 0xFF]))
  r = train("--config.total_steps=6", f"--config.data_dir={moved}")
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
  assert f"the run in {tmp_path} read other data (" in errors[0]
  assert f"than {moved} now holds" in errors[0] and "its saved data position" in errors[0]



def test_a_warm_up_as_long_as_the_run_is_said():
  """warmup_steps 1000 with total_steps 50 (the paper recipe, shortened) never came near the
  configured rate, silently: the trainer now says so as it starts."""
  assert optim.warmup_note(1000, 50) == (
      "note: optim.warmup_steps 1000 is not shorter than total_steps 50: the learning rate rises "
      "for the whole run and never exceeds 5% of its peak")
  assert optim.warmup_note(50, 50) is not None and optim.warmup_note(49, 50) is None
  assert optim.warmup_note(0, 1) is None


@pytest.mark.parametrize("content, reason", [("{garbage", "not a readable JSON file"),
                                             ("[1, 2]", "holds a JSON list, not a JSON object")])
def test_a_damaged_json_file_a_run_reads_back_is_named(tmp_path, content, reason):
  """A train_config.json, build report or dataset_info.json edited or cut short: one error
  naming the file (it was a JSONDecodeError traceback, status 1)."""
  from cope_jax.json_files import earlier_settings  # pylint: disable=import-outside-toplevel
  from cope_jax.train.resume_checks import check_same_data_order  # pylint: disable=import-outside-toplevel
  for name in ("train_config.json", "report_finetune.json", "settings.json"):
    (tmp_path / name).write_text(content)
  path = tmp_path / "train_config.json"
  with pytest.raises(ConfigError, match=f"^{path}: {reason}"):
    check_same_data_order({"batch_size": 8}, str(tmp_path))
  with pytest.raises(ConfigError, match=f"report_finetune.json: {reason}"):
    shard_checks.build_report(str(tmp_path), "finetune")
  with pytest.raises(ConfigError, match=f"settings.json: {reason}"):
    earlier_settings(str(tmp_path / "settings.json"), {"seed": 0})
  from cope_jax.json_files import read_json  # pylint: disable=import-outside-toplevel
  with pytest.raises(ConfigError, match=f"^{tmp_path / 'gone.json'}: no such file$"):
    read_json(str(tmp_path / "gone.json"))  # (not "restore or remove it")


def test_a_resume_starts_from_the_checkpoints_its_run_started_from(tmp_path):
  """A stage 2 started without stage1_checkpoint and resumed with one trained its random
  Δ-encoder on (the checkpoint's) and said "Δ-encoder from stage 1"."""
  from cope_jax.train.resume_checks import check_same_sources  # pylint: disable=import-outside-toplevel
  (tmp_path / "train_config.json").write_text(json.dumps(
      {"stage1_checkpoint": "", "init_checkpoint": "/runs/base"}))
  resumed = {"stage1_checkpoint": "/runs/stage1", "init_checkpoint": "/runs/base"}
  check_same_sources(resumed, str(tmp_path))  # no saved step yet: a first start
  (tmp_path / "checkpoints" / "3").mkdir(parents=True)
  with pytest.raises(ConfigError, match="started without stage1_checkpoint.*resume it without "
                                        "--config.stage1_checkpoint"):
    check_same_sources(resumed, str(tmp_path))
  with pytest.raises(ConfigError, match="started from init_checkpoint=/runs/base.*resume it with "
                                        "--config.init_checkpoint=/runs/base"):
    check_same_sources({"stage1_checkpoint": "", "init_checkpoint": ""}, str(tmp_path))
  with pytest.warns(RuntimeWarning, match="init_checkpoint: .* started from /runs/base, resumed "
                                          "with /mnt/base"):  # (moved)
    check_same_sources({"stage1_checkpoint": None, "init_checkpoint": "/mnt/base"},
                       str(tmp_path))
  # other trained parts (a rate set to 0, or back): Orbax's refusal blamed other model settings
  config = load_recipe("finetune", "tiny")
  with config.unlocked():
    config.init_checkpoint = "/runs/base"
  (tmp_path / "train_config.json").write_text(config.to_json())
  check_same_sources(config, str(tmp_path))
  with config.unlocked():
    config.trainable.vision_tower = 0.0
  with pytest.raises(ConfigError, match=r"trained \['delta_encoder', 'image_newline', 'llm', "
                                        r"'projector', 'vision_tower'\], and this one would "
                                        r"train \['delta_encoder', 'image_newline', 'llm', "
                                        r"'projector'\]"):
    check_same_sources(config, str(tmp_path))


def test_a_resume_with_another_length_says_the_rate_moves():
  """The schedule follows total_steps: resumed with another, the rate jumps (peak 2e-3, warm-up
  2, 8 steps: 1.3e-4 at step 7; resumed with 16, 1.22e-3 at step 8)."""
  assert optim.resumed_schedule_note(2, 8, 8, 4) is None
  assert optim.resumed_schedule_note(2, 16, 8, 4) == (
      "note: total_steps 16 → 8: the learning-rate schedule follows the new length, so every "
      "rate at step 4 changes 0.79× at once")
  assert "changes from 0 to a positive value" in optim.resumed_schedule_note(2, 8, 16, 8)


def test_a_folder_where_a_json_file_belongs_is_named(tmp_path):
  from cope_jax.json_files import read_json  # pylint: disable=import-outside-toplevel
  (tmp_path / "train_config.json").mkdir()
  with pytest.raises(ConfigError, match="train_config.json: not a readable JSON file"):
    read_json(str(tmp_path / "train_config.json"))


def test_stage2_shards_of_another_k_than_the_recipe_names_are_refused(tmp_path):
  """The paper recipe trains at K = 4 keyframes per GOP; shards built with the build's default
  K = 1 trained it at K = 1 without a word. 0 takes the shards' own; the tiny recipe names 1."""
  with open(tmp_path / "report_finetune.json", "w") as f:
    json.dump({"stage": "finetune", "sampling": {"gop": 240, "fusion": 30,
                                                  "keyframes_per_gop": 1}}, f)
  config = load_recipe("finetune", "")
  assert config.keyframes_per_gop == 4 and load_recipe("finetune", "tiny").keyframes_per_gop == 1
  with config.unlocked():
    config.data_dir = str(tmp_path)
  shards = shard_dir(str(tmp_path), "finetune")
  with pytest.raises(ConfigError, match=r"built with --keyframes-per-gop 1, the recipe trains at "
                     r"K = 4: rebuild them with --keyframes-per-gop 4, or pass "
                     r"--config.keyframes_per_gop=1 \(0 takes the shards' own\)"):
    shard_checks.check_shards(config, shards)
  for k in (1, 0):
    with config.unlocked():
      config.keyframes_per_gop = k
    shard_checks.check_shards(config, shards)
  with config.unlocked():
    config.keyframes_per_gop = -1
  with pytest.raises(ConfigError, match="keyframes_per_gop must be >= 0"):
    prepare.check_settings(config, device_count=8)


def test_a_resume_of_a_model_that_computes_otherwise_is_refused(tmp_path):
  """The same shapes, another SigLIP eps: Orbax restores it, and the run trained on as another
  model. Refused before anything is built, naming the setting and what to do; a config left
  unreadable is left to the restore (as before)."""
  import dataclasses  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  from cope_jax.models import config_io, presets  # pylint: disable=import-outside-toplevel
  from cope_jax.train.resume_checks import (  # pylint: disable=import-outside-toplevel
      check_same_model_config)
  from cope_jax.train.tasks import PretrainTask  # pylint: disable=import-outside-toplevel
  cfg = presets.video_lm("tiny")
  task = type("Task", (), {"cfg": cfg, "model_parts": PretrainTask.model_parts})()
  config = ml_collections.ConfigDict({"model": {"preset": "tiny", "delta": ""}})
  (tmp_path / "checkpoints" / "4").mkdir(parents=True)
  (tmp_path / "train_config.json").write_text(json.dumps({"model": {"preset": "small",
                                                                    "delta": "compact"}}))

  def saved(**changes):
    config_io.save(dataclasses.replace(cfg, **{part: dataclasses.replace(getattr(cfg, part), **c)
                                               for part, c in changes.items()}),
                   str(tmp_path / "model_config.json"))

  saved(vision={"eps": 1e-3}, llm={"rope_theta": 1.0})  # (stage 1 has no LLM: not compared)
  with pytest.raises(ConfigError, match=r"trained another model \(vision.eps 0.001 → 1e-06\): "
                     r".* resume with its settings \(--config.model.preset=small "
                     r"--config.model.delta=compact\), or use another --workdir"):
    check_same_model_config(config, task, str(tmp_path))
  # the same presets: their definitions changed (a workdir of an older version)
  (tmp_path / "train_config.json").write_text(json.dumps({"model": {"preset": "tiny",
                                                                    "delta": ""}}))
  with pytest.raises(ConfigError, match="the version that trained it"):
    check_same_model_config(config, task, str(tmp_path))
  saved(delta={"scan": False})  # another parameter tree
  with pytest.raises(ConfigError, match=r"delta.scan False → True"):
    check_same_model_config(config, task, str(tmp_path))
  saved(delta={"remat": True, "dtype": jnp.bfloat16})  # how it runs may change
  check_same_model_config(config, task, str(tmp_path))
  (tmp_path / "model_config.json").write_text("{")
  check_same_model_config(config, task, str(tmp_path))
  # A base model trained on RGB frames only neither runs nor trains its Δ-encoder: not compared.
  from cope_jax.train.tasks import FinetuneTask  # pylint: disable=import-outside-toplevel
  base = load_recipe("finetune", "tiny")
  assert "delta" in FinetuneTask(base, "").model_parts
  assert "the Δ-encoder starts from RANDOM" in FinetuneTask(base, "").pretrained()[2]
  base.max_delta_frames = 0
  base.trainable.delta_encoder = 0.0
  assert FinetuneTask(base, "").model_parts == ("vision", "llm")
  assert "Δ-encoder" not in FinetuneTask(base, "").pretrained()[2]  # (said it starts RANDOM)
