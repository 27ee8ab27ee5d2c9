"""The logged rates: what each metrics.jsonl record's steps/s and tokens/s count, on a fake clock.

The trainer's own test (test_train.py) checks which calls the loop makes; these check what the
records then say, which wall-clock runs cannot pin down.
"""

import json

import pytest

from cope_jax.train import metrics_log
from cope_jax.train.metrics_log import MetricsLog


class Clock:

  def __init__(self):
    self.now = 100.0

  def __call__(self) -> float:
    return self.now


@pytest.fixture
def clock(monkeypatch):
  fake = Clock()
  monkeypatch.setattr(metrics_log.time, "perf_counter", fake)
  return fake


def records(workdir) -> dict[int, dict]:
  with open(workdir / "metrics.jsonl") as f:
    return {r["step"]: r for r in map(json.loads, f)}


def train(log: MetricsLog, clock: Clock, steps: range, seconds: float, tokens: int = 10,
          log_every: int = 0, first_run: tuple[int, ...] = ()) -> None:
  """Steps taking ``seconds`` each; ``first_run``: steps that run a program for the first time
  (the loop then calls start_counting after them)."""
  for step in steps:
    log.count_tokens(tokens)
    clock.now += seconds
    if step in first_run:
      log.start_counting(step)
    if log_every and step % log_every == 0:
      log.write(step, {"loss": 1.0, "learning_rate": 1e-3})


def test_a_new_programs_first_run_starts_the_window_again(tmp_path, clock, capsys):
  log = MetricsLog(str(tmp_path), total_steps=12, start_step=0)
  clock.now += 30  # the pipeline's start, before step 1
  train(log, clock, range(1, 5), 0.5, first_run=(1,), log_every=4)
  # step 5 is a new length bucket's first run (9.5 s); the record at step 8 counts 6–8 only
  train(log, clock, range(5, 6), 9.5, first_run=(5,))
  train(log, clock, range(6, 9), 0.25, tokens=20, log_every=4)
  log.close()
  r = records(tmp_path)
  assert r[4]["steps_per_s"] == pytest.approx(3 / 1.5)  # steps 2–4, not step 1's 30.5 s
  assert r[4]["tokens_per_s"] == pytest.approx(30 / 1.5)
  assert r[8]["steps_per_s"] == pytest.approx(3 / 0.75)
  assert r[8]["tokens_per_s"] == pytest.approx(60 / 0.75)
  assert "4.00 steps/s" in capsys.readouterr().out.splitlines()[-1]  # and the ETA follows it


def test_a_record_at_a_first_run_gives_the_rate_up_to_it(tmp_path, clock):
  log = MetricsLog(str(tmp_path), total_steps=4, start_step=0)
  train(log, clock, range(1, 3), 2.0, first_run=(1,), log_every=1)
  log.close()
  r = records(tmp_path)
  assert r[1]["steps_per_s"] == pytest.approx(1 / 2.0)  # its own time: nothing else to count
  assert r[2]["steps_per_s"] == pytest.approx(1 / 2.0)


def test_a_resumed_run_logs_its_steps_once(tmp_path, clock):
  log = MetricsLog(str(tmp_path), total_steps=8, start_step=0)
  train(log, clock, range(1, 7), 1.0, first_run=(1,), log_every=2)
  log.close()
  with open(tmp_path / "metrics.jsonl", "a") as f:
    f.write('{"step": 7, "loss"')  # a crash mid-write
  log = MetricsLog(str(tmp_path), total_steps=8, start_step=4)  # resumed from checkpoint 4
  train(log, clock, range(5, 9), 1.0, first_run=(5,), log_every=2)
  log.close()
  assert sorted(records(tmp_path)) == [2, 4, 6, 8]
  with open(tmp_path / "metrics.jsonl") as f:
    assert len(f.readlines()) == 4
