"""One process pool for the data tools (synthesis, extraction).

Stopping it leaves nothing behind: the workers write their temporary files (a re-encoded video
can be large) into one folder of the pool's, removed when the pool closes, and a SIGTERM to a
worker (the pool terminates the others when one dies, or when the caller stops) unwinds its
job, so that its own cleanup runs, instead of killing it where it stands (one that has not
stopped ``STOP_GRACE_S`` later is killed).
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import multiprocessing
import os
import shutil
import signal
import sys
import tempfile
import time
from typing import Iterator

from cope_jax.codec.errors import ConfigError
from cope_jax.command_line import stop_by_signal

MAX_WORKERS = 1024  # more than any one machine's cores; a fork pool starts them all at once
STOP_GRACE_S = 5.0  # a stopped worker's time to unwind its job before it is killed


def check_workers(workers: int | None) -> None:
  """ConfigError unless ``workers`` is None (all cores) or 1 to MAX_WORKERS."""
  if workers is not None and not 1 <= workers <= MAX_WORKERS:
    raise ConfigError(f"--workers must be from 1 to {MAX_WORKERS}, got {workers}")


@contextlib.contextmanager
def process_pool(workers: int | None) -> Iterator[concurrent.futures.ProcessPoolExecutor]:
  """``workers`` processes (default: all cores). Fork on Linux, so it also works from notebooks
  and stdin scripts; spawn if JAX is already loaded here (forking its threads is unsafe).

  Left by an exception (an error, Ctrl-C, a SIGTERM turned into one, a worker that died), the
  jobs not started are cancelled and the workers stopped at once, not after every queued job."""
  check_workers(workers)
  method = "fork" if sys.platform == "linux" and "jax" not in sys.modules else "spawn"
  n = max(1, workers or os.cpu_count() or 1)
  scratch = tempfile.mkdtemp(prefix="cope_workers_")
  pool = _StoppablePool(n, mp_context=multiprocessing.get_context(method),
                        initializer=_start_worker, initargs=(scratch, n > 1))
  try:
    yield pool
  except BaseException:
    workers_now = list((pool._processes or {}).values())  # pylint: disable=protected-access
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers_now:  # (Python 3.14's terminate_workers)
      process.terminate()
    deadline = time.monotonic() + STOP_GRACE_S
    for process in workers_now:
      process.join(max(0.0, deadline - time.monotonic()))
    for process in workers_now:  # (its exception lost: see _stoppable)
      if process.is_alive():
        process.kill()
        process.join()
    raise
  else:
    pool.shutdown(wait=True)
  finally:
    shutil.rmtree(scratch, ignore_errors=True)


class _StoppablePool(concurrent.futures.ProcessPoolExecutor):
  """Runs every job through ``_stoppable`` (``map`` submits through ``submit``)."""

  def submit(self, fn, /, *args, **kwargs):
    return super().submit(_stoppable, fn, *args, **kwargs)


class _Stopped(SystemExit):
  """SIGTERM in a worker: raised where the worker stands, so that the job's ``finally`` and
  ``with`` blocks run; idle, the worker exits quietly (a SystemExit)."""


_stopping = False  # (per worker process)


def _on_sigterm(signum, _frame):
  global _stopping  # pylint: disable=global-statement
  if _stopping:  # once: a second SIGTERM (the executor terminates the others too, when one of
    return       # them has exited) must not break into the cleanup the first one started
  _stopping = True
  stop_by_signal(_Stopped(128 + signum))  # (again at the next packet, should PyAV drop it)


def _stoppable(fn, *args, **kwargs):
  try:
    result = fn(*args, **kwargs)
  except _Stopped as stopped:  # unwound: now exit (the executor's loop would wait for more work)
    os._exit(stopped.code)  # pylint: disable=protected-access
  if _stopping:  # raised where PyAV's error check turns it into its own "try again" (EAGAIN),
    os._exit(128 + signal.SIGTERM)  # which the decoding loops take in stride: the job went on
  return result


def _start_worker(scratch: str, one_opencv_thread: bool) -> None:
  tempfile.tempdir = scratch  # (removed by the pool: what a killed worker left goes with it)
  if one_opencv_thread:
    # Several workers already share the cores: OpenCV's own thread pool in each (as many
    # threads as cores) only adds switching (2 workers on 2 cores extracted 5–15 % more
    # frames/s without).
    import cv2  # pylint: disable=import-outside-toplevel
    cv2.setNumThreads(1)
  signal.signal(signal.SIGTERM, _on_sigterm)  # (last: until then SIGTERM kills, quietly)


TMP_MARK = ".tmp"  # a file being written: NAME.tmpPID (or NAME.tmpPID.EXT)


def _writer_alive(name: str) -> bool:
  """Whether the process a temporary file's name holds (NAME.tmpPID…) still runs here."""
  pid = name.rsplit(TMP_MARK, 1)[-1].split(".")[0]
  if not pid.isdigit():
    return False
  try:
    os.kill(int(pid), 0)
  except ProcessLookupError:
    return False
  except PermissionError:  # (another user's process)
    return True
  return True


def remove_orphaned_tmp_files(folder: str) -> None:
  """Removes the temporary files in ``folder`` whose writers are gone: a process killed
  outright (the out-of-memory killer, kill -9) runs no cleanup, and a cached extraction's can
  be as large as the video's primitives."""
  for name in os.listdir(folder):
    if TMP_MARK in name and not _writer_alive(name):
      with contextlib.suppress(FileNotFoundError):  # (another build's cleanup got there first)
        os.remove(os.path.join(folder, name))
