"""Console output of the demo: one prefixed line per event, flushed at once."""

from __future__ import annotations

import time

_START = time.perf_counter()


def log(msg: str) -> None:
  elapsed = int(time.perf_counter() - _START)
  print(f"[demo {elapsed // 60:02d}:{elapsed % 60:02d}] {msg}", flush=True)
