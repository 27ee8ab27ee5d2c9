"""One process pool for the data tools (synthesis, extraction)."""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import os
import sys

from cope_jax.codec.errors import ConfigError

MAX_WORKERS = 1024  # more than any one machine's cores; a fork pool starts them all at once


def check_workers(workers: int | None) -> None:
  """ConfigError unless ``workers`` is None (all cores) or 1 to MAX_WORKERS."""
  if workers is not None and not 1 <= workers <= MAX_WORKERS:
    raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}, got {workers}")


def process_pool(workers: int | None) -> concurrent.futures.ProcessPoolExecutor:
  """``workers`` processes (default: all cores). Fork on Linux, so it also works from notebooks
  and stdin scripts; spawn if JAX is already loaded here (forking its threads is unsafe)."""
  check_workers(workers)
  method = "fork" if sys.platform == "linux" and "jax" not in sys.modules else "spawn"
  return concurrent.futures.ProcessPoolExecutor(max(1, workers or os.cpu_count() or 1),
                                                mp_context=multiprocessing.get_context(method))
