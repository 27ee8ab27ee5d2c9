"""Console progress, TensorBoard events and ``metrics.jsonl`` (one JSON object per logged step)."""

from __future__ import annotations

import datetime
import json
import os
import time


class MetricsLog:

  def __init__(self, workdir: str, total_steps: int, start_step: int, is_main: bool = True):
    self.total, self.is_main = total_steps, is_main
    self.last_time, self.last_step, self.tokens = time.perf_counter(), start_step, 0
    self.jsonl = open(os.path.join(workdir, "metrics.jsonl"), "a") if is_main else None
    self.tb = None
    if is_main:
      from tensorboardX import SummaryWriter  # pylint: disable=import-outside-toplevel
      self.tb = SummaryWriter(os.path.join(workdir, "tensorboard"))

  def count_tokens(self, n: int) -> None:
    self.tokens += n

  def write(self, step: int, metrics: dict[str, float]) -> None:
    now = time.perf_counter()
    dt = max(now - self.last_time, 1e-9)
    steps_per_s = (step - self.last_step) / dt
    record = {"step": step, **metrics, "steps_per_s": steps_per_s,
              "tokens_per_s": self.tokens / dt}
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
