"""Training's checkpoints: a damaged newest one falls back, another model's stop the run, the
first save compiles nothing, a save killed mid-write leaves nothing behind. The rest of training
end to end: tests/test_train.py."""

import os

import jax
import jax.numpy as jnp
import numpy as np

from test_train import metrics, run


def test_corrupt_latest_checkpoint_falls_back(tmp_path):
  """A checkpoint that lost a data file: the reads still in flight when the first one failed
  printed some 17,000-28,000 lines of tracebacks, burying the warning; now only the warning,
  and the resume line names what was set aside."""
  assert run("pretrain.py:tiny", tmp_path, "--config.total_steps=8").returncode == 0
  data = tmp_path / "checkpoints" / "8" / "state" / "ocdbt.process_0" / "d"
  os.remove(max(data.iterdir(), key=lambda f: f.stat().st_size))  # lost, or never written
  with open(tmp_path / "metrics.jsonl", "a") as f:  # a record cut short by a crash
    f.write('{"step": 9, "loss": 0.5, "lear')
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=10")
  assert r.returncode == 0, r.stderr[-3000:]
  assert "trying an older one" in r.stderr and "resumed from step 4" in r.stdout
  assert "checkpoint 8 unreadable, moved to" in r.stdout
  assert "Traceback" not in r.stderr and len(r.stderr.splitlines()) < 50, r.stderr[-3000:]
  assert os.listdir(tmp_path / "checkpoints_unreadable") == ["8"]  # kept, out of the way
  assert sorted(os.listdir(tmp_path / "checkpoints"), key=int) == ["4", "8", "10"]
  # Steps 5–8 were trained again from step 4: metrics.jsonl keeps one record per step.
  assert [x["step"] for x in metrics(tmp_path)] == list(range(1, 11))


def test_checkpoints_of_another_model_stop_the_run(tmp_path):
  """Another Δ-encoder: an error naming what differs, before the model is built (Orbax refused
  it after building and compiling, without saying what), not a silent start from scratch."""
  assert run("pretrain.py:tiny", tmp_path, "--config.total_steps=4").returncode == 0
  model_config = (tmp_path / "model_config.json").read_text()
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=8", "--config.model.delta=compact")
  assert r.returncode == 2 and r.stderr.splitlines()[-1] == (
      f"error: the run in {tmp_path} trained another model (delta.width 64 → 256; "
      "delta.num_layers 2 → 4; delta.resnet_widths (16, 32, 64) → (32, 64, 128, 256); "
      "delta.motion_norm 'scale' → 'minmax'; delta.max_grid 32 → 64): its checkpoints hold that "
      "one; resume with its settings (--config.model.preset=tiny --config.model.delta=), or use "
      "another --workdir"), r.stderr[-2000:]
  assert "compiled" not in r.stdout and "Traceback" not in r.stderr
  assert os.listdir(tmp_path / "checkpoints") == ["4"]
  # the refused run left the workdir as it was: inference still rebuilds the trained model
  assert (tmp_path / "model_config.json").read_text() == model_config
  # What the model config does not tell: none of the checkpoints restores (the saved data
  # position's format follows the number of Grain workers), one error line too; the configs
  # inference and resumes read are written only once one restores.
  train_config = (tmp_path / "train_config.json").read_text()
  r = run("pretrain.py:tiny", tmp_path, "--config.total_steps=8", "--config.worker_count=1")
  errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
  assert r.returncode == 2 and len(errors) == 1, r.stderr[-2000:]
  assert "restores into this config" in errors[0] and "Use its settings" in errors[0]
  assert "Traceback" not in r.stderr and os.listdir(tmp_path / "checkpoints") == ["4"]
  assert (tmp_path / "train_config.json").read_text() == train_config
  assert (tmp_path / "model_config.json").read_text() == model_config


def test_first_save_of_a_replicated_state_compiles_no_slicing_programs(tmp_path):
  """Orbax's replica-parallel saving would compile a slice per (shape, device) on the first save
  (~11 s for the tiny recipe on 8 CPU devices); one replica per process writes instead, and the
  state restores exactly."""
  import grain  # pylint: disable=import-outside-toplevel
  from jax.sharding import NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from cope_jax.train.checkpointing import Checkpointer  # pylint: disable=import-outside-toplevel
  mesh = jax.make_mesh((jax.device_count(),), ("data",))
  replicated = NamedSharding(mesh, PartitionSpec())
  state = {f"w{i}": jax.device_put(jnp.arange(8 * (i + 1), dtype=jnp.float32).reshape(8, -1) + i,
                                   replicated) for i in range(6)}
  iterator = iter(grain.MapDataset.range(10).to_iter_dataset())
  next(iterator)
  compiled = []

  def listener(event, *_, **__):
    if "backend_compile" in event:
      compiled.append(event)

  jax.monitoring.register_event_duration_secs_listener(listener)
  try:
    ckpt = Checkpointer(str(tmp_path), every=1, keep=1)
    assert ckpt.save(1, state, iterator, force=True)
    ckpt.manager.wait_until_finished()
  finally:
    jax.monitoring.unregister_event_duration_listener(listener)
  assert jax.device_count() == 8 and not compiled
  abstract = jax.tree_util.tree_map(
      lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=x.sharding), state)
  step, restored = ckpt.restore(abstract, iter(grain.MapDataset.range(10).to_iter_dataset()))
  assert step == 1
  for k, v in state.items():
    np.testing.assert_array_equal(np.asarray(restored[k]), np.asarray(v))
  ckpt.close()


def test_a_save_killed_mid_write_leaves_nothing_for_good(tmp_path):
  """A save killed mid-write (a spot VM's SIGKILL, OOM) leaves Orbax's temporary folder, as large
  as a checkpoint; they piled up across preemptions. The next run's first save removes it."""
  import grain  # pylint: disable=import-outside-toplevel
  from cope_jax.train.checkpointing import Checkpointer  # pylint: disable=import-outside-toplevel
  for part in ("state.orbax-checkpoint-tmp", "data.orbax-checkpoint-tmp"):  # (as a kill left it)
    (tmp_path / "checkpoints" / "2.orbax-checkpoint-tmp" / part).mkdir(parents=True)
  ckpt = Checkpointer(str(tmp_path), every=1, keep=2)
  assert ckpt.save(1, {"w": jnp.ones(3)}, iter(grain.MapDataset.range(4).to_iter_dataset()),
                   force=True)
  ckpt.close()
  assert os.listdir(tmp_path / "checkpoints") == ["1"]
