"""The data tools' process pool: how its workers start, and how it stops — at once, whatever
the jobs are doing, and leaving no temporary files."""

import glob
import os
import signal
import tempfile
import threading
import time

import pytest

from cope_jax.data import parallel
from cope_jax.data.parallel import process_pool
from cope_jax.data.primitive_cache import _alone  # pylint: disable=protected-access


def _opencv_threads(_) -> int:
  import cv2  # pylint: disable=import-outside-toplevel
  return cv2.getNumThreads()


def test_pool_workers_use_one_opencv_thread_each():
  with process_pool(2) as pool:  # the workers already share the cores
    assert set(pool.map(_opencv_threads, range(4))) == {1}


def _slow_job(folder: str, swallow: bool = False) -> None:
  """Makes a temporary folder, says where, and waits there (a long video's re-encode). Stopped,
  it says so, and its cleanup takes a second SIGTERM (the executor terminates the other workers
  again once one has exited); a job that was never stopped says nothing. ``swallow``: the
  stop's exception is lost (PyAV's error check turns one into its own), and the job returns a
  moment later."""
  with tempfile.TemporaryDirectory() as scratch:
    with open(os.path.join(folder, f"{os.getpid()}.started"), "w") as f:
      f.write(scratch)
    try:
      time.sleep(300)
    except SystemExit:
      try:
        if not swallow:
          raise
        time.sleep(0.5)
      finally:
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)
        open(os.path.join(folder, f"{os.getpid()}.unwound"), "w").close()


def _started(folder, n: int, running) -> list[str]:
  """The markers of ``n`` started jobs, once they are there; ``running()`` says whether the
  jobs can still start (a worker that failed to start would otherwise be waited for ever)."""
  while len(glob.glob(os.path.join(folder, "*.started"))) < n:
    assert running(), "a job ended before it started"
    time.sleep(0.05)
  return glob.glob(os.path.join(folder, "*.started"))


def _cleaned_up(markers) -> None:
  """Each job was stopped (not left to run its 300 s out) and unwound: no temporary folder."""
  for marker in markers:
    assert os.path.exists(marker.replace(".started", ".unwound"))
    with open(marker) as f:
      assert not os.path.exists(f.read())


def test_a_pool_left_by_an_exception_stops_its_workers_and_leaves_no_temporary_files(tmp_path):
  """Leaving the pool by an exception (Ctrl-C, the demo's SIGTERM, a worker that died) waited for
  every queued job; workers stopped by the pool were killed where they stood, leaving their
  temporary folders (re-encoded videos) behind. Now the queue is dropped, and each worker's job
  unwinds before it exits, a second SIGTERM notwithstanding."""
  with pytest.raises(KeyboardInterrupt):
    with process_pool(2) as pool:
      jobs = [pool.submit(_slow_job, str(tmp_path)) for _ in range(6)]
      _started(tmp_path, 2, lambda: not any(j.done() for j in jobs))
      raise KeyboardInterrupt
  markers = glob.glob(str(tmp_path / "*.started"))
  assert len(markers) == 2
  _cleaned_up(markers)


def test_a_worker_whose_stop_was_lost_takes_no_further_job(tmp_path):
  """The stop's exception lost, the job ran on to its end, and the worker took the next job
  from the executor's queue (which cancelling does not empty): the pool waited for it too."""
  with pytest.raises(KeyboardInterrupt):
    with process_pool(1) as pool:
      jobs = [pool.submit(_slow_job, str(tmp_path), True), pool.submit(_slow_job, str(tmp_path))]
      _started(tmp_path, 1, lambda: not any(j.done() for j in jobs))
      raise KeyboardInterrupt
  markers = glob.glob(str(tmp_path / "*.started"))
  assert len(markers) == 1  # (the second job never started)
  _cleaned_up(markers)


def _stubborn_job(folder: str) -> None:
  with open(os.path.join(folder, f"{os.getpid()}.started"), "w"):
    pass
  for _ in range(5):  # every stop lost
    try:
      time.sleep(60)
    except SystemExit:
      pass
  open(os.path.join(folder, f"{os.getpid()}.finished"), "w").close()  # (not killed)


def test_a_worker_that_does_not_stop_is_killed(tmp_path, monkeypatch):
  monkeypatch.setattr(parallel, "STOP_GRACE_S", 1.0)
  with pytest.raises(KeyboardInterrupt):
    with process_pool(1) as pool:
      job = pool.submit(_stubborn_job, str(tmp_path))
      (marker,) = _started(tmp_path, 1, lambda: not job.done())
      raise KeyboardInterrupt
  with pytest.raises(ProcessLookupError):  # (killed and reaped: the pool waited for no job)
    os.kill(int(os.path.basename(marker).split(".")[0]), 0)
  assert not glob.glob(str(tmp_path / "*.finished"))


def test_a_one_process_pool_in_a_thread_stops_when_asked(tmp_path):
  """After a worker dies, suspects run alone, from threads, which no signal reaches: a SIGTERM
  then waited for each of them to finish its video."""
  stop, result = threading.Event(), []
  thread = threading.Thread(target=lambda: result.append(
      _alone(_slow_job, str(tmp_path), stop=stop)))
  thread.start()
  markers = _started(tmp_path, 1, thread.is_alive)
  stop.set()
  thread.join()
  assert result == [None]
  _cleaned_up(markers)
