"""Console progress, TensorBoard events and ``metrics.jsonl`` (one JSON object per logged step)."""

from __future__ import annotations

import datetime
import json
import os
import time


def _logged_step(line: str) -> int | None:
  """The step of a whole record, or None."""
  if not line.endswith("\n"):
    return None
  try:
    return int(json.loads(line)["step"])
  except (ValueError, KeyError, TypeError):
    return None


def _drop_steps_after(path: str, step: int) -> None:
  """A run resumed from the checkpoint of ``step`` logs the later steps again: their first
  records go, so that the file keeps one object per logged step. So does a line cut short (a
  crash or a full disk mid-write), which the next record would otherwise be appended to."""
  if not os.path.exists(path):
    return
  with open(path) as f:
    lines = f.readlines()
  steps = [_logged_step(line) for line in lines]
  kept = [line for line, logged in zip(lines, steps) if logged is not None and logged <= step]
  if len(kept) < len(lines):
    tmp = f"{path}.tmp{os.getpid()}"
    with open(tmp, "w") as f:
      f.writelines(kept)
    os.replace(tmp, path)


class MetricsLog:

  def __init__(self, workdir: str, total_steps: int, start_step: int, is_main: bool = True):
    self.total, self.is_main = total_steps, is_main
    self.last_time, self.last_step, self.tokens = time.perf_counter(), start_step, 0
    self.first = None  # (seconds, steps, tokens) of the run's first step, until it is logged
    self.jsonl, self.tb = None, None
    if is_main:
      path = os.path.join(workdir, "metrics.jsonl")
      _drop_steps_after(path, start_step)
      self.jsonl = open(path, "a")
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      # (TensorBoard hides the events a resumed run logs again, as metrics.jsonl drops them —
      # from step 1 too: a run that crashed before its first checkpoint starts over)
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"), purge_step=start_step + 1)

  def count_tokens(self, n: int) -> None:
    self.tokens += n

  def leave_out(self, seconds: float) -> None:
    """Time that is not training (compiling a step, writing a profile): not in the next rates."""
    self.last_time += seconds

  def start_counting(self, step: int) -> None:
    """A program's first run is done at ``step`` (the run's first step, a new length bucket's):
    the rates count from here. Its time holds one-time costs — the data pipeline's start, the
    program's first run — seconds that would put the window's rate and ETA far off; a record
    at that very step gives the rate up to it."""
    now = time.perf_counter()
    self.first = (max(now - self.last_time, 1e-9), step - self.last_step, self.tokens)
    self.last_time, self.last_step, self.tokens = now, step, 0

  def write(self, step: int, metrics: dict[str, float]) -> None:
    now = time.perf_counter()
    if step == self.last_step and self.first is not None:  # a record of the first step alone
      dt, steps, tokens = self.first
    else:
      dt, steps, tokens = max(now - self.last_time, 1e-9), step - self.last_step, self.tokens
    self.first = None
    steps_per_s = steps / dt
    record = {"step": step, **metrics, "steps_per_s": steps_per_s, "tokens_per_s": tokens / dt}
    self.last_time, self.last_step, self.tokens = now, step, 0
    if not self.is_main:
      return
    self.jsonl.write(json.dumps(record) + "\n")
    self.jsonl.flush()
    for k, v in record.items():
      if k != "step":
        self.tb.add_scalar(k, v, step)
    self.tb.flush()
    eta = datetime.timedelta(seconds=int((self.total - step) / max(steps_per_s, 1e-9)))
    extras = " | ".join(f"{k} {v:.4g}" for k, v in metrics.items()
                        if k not in ("loss", "learning_rate"))
    print(f"step {step}/{self.total} | loss {metrics['loss']:.4f} | lr "
          f"{metrics['learning_rate']:.2e} | {steps_per_s:.2f} steps/s | "
          f"{record['tokens_per_s']:.0f} tok/s | ETA {eta}" + (f" | {extras}" if extras else ""),
          flush=True)

  def close(self) -> None:
    if self.jsonl:
      self.jsonl.close()
    if self.tb:
      self.tb.close()
