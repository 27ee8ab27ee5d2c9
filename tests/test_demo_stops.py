"""The demo stopped (SIGTERM, a stage cut short) and resumed: what counts as done, what is
saved on the way out, and the exit status."""

import json
import types

import pytest


def test_a_training_stage_counts_as_done_only_with_its_last_checkpoint(tmp_path, monkeypatch):
  """The metrics log reaches the last step before its checkpoint is written, and training
  stopped by SIGTERM returns 75: neither may let the demo go on as if the stage had finished
  (nor a run that returned 0 without its last checkpoint)."""
  from cope_jax.demo import stages  # pylint: disable=import-outside-toplevel
  from cope_jax.train import loop, prepare  # pylint: disable=import-outside-toplevel
  config = types.SimpleNamespace(total_steps=200, batch_size=8)
  (tmp_path / "metrics.jsonl").write_text(json.dumps({"step": 200, "loss": 1.0}) + "\n")
  # an unfinished save
  (tmp_path / "checkpoints" / "200.orbax-checkpoint-tmp-1").mkdir(parents=True)
  calls = []
  monkeypatch.setattr(prepare, "resolve", lambda c: None)
  monkeypatch.setattr(prepare, "validate", lambda *a: None)
  monkeypatch.setattr(loop, "train", lambda c, w: calls.append(w) or 0)  # "stopped by SIGTERM"
  with pytest.raises(stages.StageStopped, match="before step 200; re-run") as stopped:
    stages.train_stage("base", config, str(tmp_path))
  assert calls == [str(tmp_path)] and stopped.value.status == loop.PREEMPTED == 75
  monkeypatch.setattr(loop, "train", lambda c, w: loop.PREEMPTED)
  with pytest.raises(stages.StageStopped, match="before step 200") as stopped:
    stages.train_stage("base", config, str(tmp_path))
  assert stopped.value.status == 75
  monkeypatch.setattr(loop, "train", lambda c, w: 1)
  with pytest.raises(stages.StageStopped, match="with an error") as stopped:
    stages.train_stage("base", config, str(tmp_path))
  assert stopped.value.status == 1
  (tmp_path / "checkpoints" / "200").mkdir()  # the finished save: not trained again
  monkeypatch.setattr(loop, "train", lambda c, w: pytest.fail("trained a finished stage"))
  (tmp_path / "metrics.jsonl").write_text(
      "".join(json.dumps({"step": s, "loss": 2.0 - s / 200, "learning_rate": 0.1,
                          "steps_per_s": 1.0}) + "\n" for s in (25, 200)))
  summary = stages.train_stage("base", config, str(tmp_path))
  assert summary["steps"] == 200 and summary["loss_fell"] is True


def test_a_sigterm_while_a_checkpoint_loads_stops_the_demo(tiny_workdir, monkeypatch):
  """The SIGTERM's exception, raised inside the loader's "unreadable checkpoint: try an older
  one", was taken for a damaged checkpoint: the demo went on with an older model (evaluated and
  cached, or exported as the base model), and a resuming stage set a good checkpoint aside."""
  import os  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import warnings  # pylint: disable=import-outside-toplevel
  from cope_jax.demo import __main__ as demo_main, stages  # pylint: disable=import-outside-toplevel
  from cope_jax.models import checkpoints  # pylint: disable=import-outside-toplevel
  from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
  original = checkpoints.host_target

  def terminated(metadata):
    os.kill(os.getpid(), signal.SIGTERM)
    return original(metadata)
  monkeypatch.setattr(checkpoints, "host_target", terminated)
  previous = signal.signal(signal.SIGTERM, demo_main._stop)  # pylint: disable=protected-access
  try:
    with warnings.catch_warnings(record=True) as seen:
      warnings.simplefilter("always")
      with pytest.raises(stages.StageStopped, match="SIGTERM"):
        latest_params(str(tiny_workdir[0]))
  finally:
    signal.signal(signal.SIGTERM, previous)
  assert not [w for w in seen if "unreadable" in str(w.message)]


def test_a_sigterm_outside_training_saves_the_run_and_exits_75(tmp_path, monkeypatch, capsys):
  """Data, compiling, evaluation: a SIGTERM there used to kill the demo with nothing saved."""
  import os  # pylint: disable=import-outside-toplevel
  import signal  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from cope_jax.demo import __main__ as demo_main, codec_stage, stages  # pylint: disable=import-outside-toplevel

  def terminated(*args):
    os.kill(os.getpid(), signal.SIGTERM)
    time.sleep(5)
    pytest.fail("the SIGTERM did not stop the run")
  monkeypatch.setattr(codec_stage, "run_codec_stage", lambda *a: {"clip": "done"})
  monkeypatch.setattr(stages, "make_data", terminated)
  assert demo_main.main(["--workdir", str(tmp_path / "w"), "--quick"]) == 75
  assert "stopped: SIGTERM" in capsys.readouterr().err
  results = json.loads((tmp_path / "w" / "results.json").read_text())
  assert results["stages_run"] == ["codec"] and results["elapsed_s_all_runs"] >= 0
  assert signal.getsignal(signal.SIGTERM) is not demo_main._stop  # handed back

  # A re-run stopped before it redoes a stage keeps what the workdir's results.json held (it
  # used to start the file afresh: a finished workdir stopped early lost every result).
  monkeypatch.setattr(codec_stage, "run_codec_stage", terminated)
  assert demo_main.main(["--workdir", str(tmp_path / "w"), "--quick"]) == 75
  again = json.loads((tmp_path / "w" / "results.json").read_text())
  assert again["stages_run"] == ["codec"] and again["codec"] == {"clip": "done"}
  assert again["elapsed_s_all_runs"] >= results["elapsed_s_all_runs"]
  # stopped while JAX imports (the machine's description): the run's time is saved too
  monkeypatch.setattr(demo_main, "_machine", terminated)
  (tmp_path / "w" / "results.json").unlink()
  assert demo_main.main(["--workdir", str(tmp_path / "w"), "--quick"]) == 75
  assert json.loads((tmp_path / "w" / "results.json").read_text())["elapsed_s"] >= 0


def test_a_workdir_this_user_cannot_write_in_is_one_error_line(capsys):
  """(sysfs takes no new file, root's included) It was a PermissionError's traceback, status 1."""
  from cope_jax.demo import __main__ as demo_main  # pylint: disable=import-outside-toplevel
  assert demo_main.main(["--workdir", "/sys/kernel", "--quick"]) == 2
  err = capsys.readouterr().err
  assert err.startswith("error: --workdir /sys/kernel: cannot write there (")
  assert err.count("\n") == 1
