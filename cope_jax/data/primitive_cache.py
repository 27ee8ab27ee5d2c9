"""Per-video extraction in worker processes, cached on disk: the resumable unit of a build.

Each video's sampled positions are extracted once (all CPU cores, one process per video) into
``CACHE/<key>.npz``, written atomically, already in shard encoding (PNG, zlib int16). A build
that is interrupted resumes from the videos already cached; bad videos are reported with their
reason and skipped.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import functools
import hashlib
import json
import os
import threading
from concurrent.futures.process import BrokenProcessPool

import numpy as np

from cope_jax.codec.errors import VideoError
from cope_jax.codec.extract import iter_video
from cope_jax.command_line import bars_disabled
from cope_jax.codec.reencode import EncodeSpec
from cope_jax.codec.sampling import DELTA, SamplingConfig
from cope_jax.data import storage
from cope_jax.data.parallel import TMP_MARK, process_pool, remove_orphaned_tmp_files


@dataclasses.dataclass(frozen=True)
class ExtractSettings:
  """How every video of a build is extracted; checked when made (ConfigError), not by each
  worker once per video."""
  size: int = 384
  sampling: SamplingConfig = SamplingConfig()
  quantizer: int = 3

  def __post_init__(self):
    self.sampling.validate()
    EncodeSpec(self.size, self.sampling.fps, self.sampling.gop, self.quantizer).validate()

  def key(self, video: str) -> str:
    st = os.stat(video)
    sampling = dataclasses.asdict(self.sampling)
    if sampling["min_change"]:
      sampling["min_change"] = float(sampling["min_change"])  # 4 and 4.0: one key
    else:  # fixed fusion keeps the keys of caches made before adaptive fusion
      del sampling["min_change"]
    if not sampling["uniform_frames"]:  # and before dense sampling
      del sampling["uniform_frames"]
    ident = json.dumps([os.path.abspath(video), st.st_size, st.st_mtime_ns, self.size,
                        sampling, self.quantizer])
    return hashlib.sha1(ident.encode()).hexdigest()[:20]


@dataclasses.dataclass
class CachedVideo:
  """A video's sampled positions in shard encoding. ``rgb`` holds every position's frame."""
  kinds: np.ndarray   # (T,) uint8
  times: np.ndarray   # (T,) float32
  rgb: list           # T PNG bytes (keyframes, and the decoded frame at each Δ position)
  mv: list            # P encoded motion fields, one per Δ-frame
  residual: list      # P encoded residuals
  num_frames: int
  fps: int
  conformant_bytes: int

  @property
  def duration_s(self) -> float:
    return self.num_frames / self.fps


def _extract_one(job: tuple[str, str, ExtractSettings]) -> tuple[str, str | None]:
  """Worker: extracts ``video`` into ``path``; returns (video, None) or (video, reason)."""
  video, path, settings = job
  if os.path.exists(path):
    if _readable(path):
      return video, None
    os.remove(path)  # (a crash before the data reached the disk): extracted again
  tmp = f"{path}{TMP_MARK}{os.getpid()}"
  try:
    # Each frame is encoded as it comes (a long video's raw frames never all sit in memory).
    info, arrays, kinds, times, d = {}, {}, [], [], 0
    for t, f in enumerate(iter_video(video, settings.size, settings.sampling,
                                     settings.quantizer, keep_rgb=True, info=info)):
      kinds.append(f.kind)
      times.append(f.time_s)
      rgb = f.target_rgb if f.kind == DELTA else f.rgb
      arrays[f"rgb_{t}"] = np.frombuffer(storage.encode_png(rgb), np.uint8)
      if f.kind == DELTA:
        arrays[f"mv_{d}"] = np.frombuffer(storage.encode_mv(f.mv), np.uint8)
        arrays[f"residual_{d}"] = np.frombuffer(storage.encode_residual(f.residual), np.uint8)
        d += 1
    arrays.update(kinds=np.array(kinds, np.uint8), times=np.array(times, np.float32),
                  meta=np.array([info["num_frames"], settings.sampling.fps,
                                 info["conformant_bytes"]], np.int64))
    with open(tmp, "wb") as fh:
      np.savez(fh, **arrays)
    os.replace(tmp, path)
    return video, None
  except VideoError as e:
    return video, e.reason
  except Exception as e:  # pylint: disable=broad-except  (a batch job reports and goes on)
    return video, f"unexpected {type(e).__name__}: {e}"
  finally:  # a failed write (a full disk, Ctrl-C) leaves no partial file
    if os.path.exists(tmp):
      os.remove(tmp)


def _readable(path: str) -> bool:
  """Whether a cache entry opens and holds its index (a zip's directory is at its end, so a
  truncated file fails here)."""
  try:
    with np.load(path) as z:
      return {"kinds", "times", "meta"} <= set(z.files)
  except Exception:  # pylint: disable=broad-except  (BadZipFile, OSError, ValueError, EOFError)
    return False


def load(path: str) -> CachedVideo:
  with np.load(path) as z:
    kinds, times = z["kinds"], z["times"]
    num_frames, fps, conformant_bytes = (int(x) for x in z["meta"])
    p = int(np.sum(kinds == DELTA))
    return CachedVideo(kinds, times, [z[f"rgb_{t}"].tobytes() for t in range(len(kinds))],
                       [z[f"mv_{i}"].tobytes() for i in range(p)],
                       [z[f"residual_{i}"].tobytes() for i in range(p)],
                       num_frames, fps, conformant_bytes)


def extract_all(videos: list[str], cache_dir: str, settings: ExtractSettings,
                workers: int | None = None, progress: bool = True
                ) -> tuple[dict[str, str], list[dict]]:
  """Extracts every video (skipping those cached); returns ({video: cache path}, skipped)."""
  os.makedirs(cache_dir, exist_ok=True)
  remove_orphaned_tmp_files(cache_dir)  # (a worker killed outright left its part-written file)
  done, skipped, jobs = {}, [], []
  for video in dict.fromkeys(videos):
    if not os.path.isfile(video):
      skipped.append({"video": video, "reason": "a folder, not a video file"
                      if os.path.isdir(video) else "no such file"})
      continue
    jobs.append((video, os.path.join(cache_dir, settings.key(video) + ".npz"), settings))
  paths = {video: path for video, path, _ in jobs}
  from tqdm import tqdm  # pylint: disable=import-outside-toplevel
  with tqdm(total=len(jobs), desc="extract", unit=" videos",
            disable=bars_disabled(progress)) as bar:
    reasons = _run_jobs(jobs, workers, bar)
  for video, _, _ in jobs:  # in the videos' order, whichever finished first
    if reasons[video] is None:
      done[video] = paths[video]
    else:
      skipped.append({"video": video, "reason": reasons[video]})
  return done, skipped


_DIED = ("the process extracting it died (killed by the system, e.g. out of memory, or a crash "
         "in the decoder)")


def _run_jobs(jobs: list, workers: int | None, bar) -> dict[str, str | None]:
  """{video: None or the reason it was skipped}. A worker that dies (the out-of-memory killer,
  a crash in FFmpeg) breaks the whole pool: the jobs that may have been in its hands — the first
  unfinished ones, up to what the pool had handed out — are then run again one process each, so
  the one that dies alone is reported, and the rest go on in a fresh pool."""
  reasons: dict[str, str | None] = {}
  n = max(1, workers or os.cpu_count() or 1)
  pending = list(jobs)
  while pending:
    try:
      with process_pool(n) as pool:
        for future in concurrent.futures.as_completed([pool.submit(_extract_one, job)
                                                       for job in pending]):
          video, reason = future.result()
          reasons[video] = reason
          bar.update()
      return reasons
    except BrokenProcessPool:
      if not _pool_starts():
        raise ChildProcessError(
            "the worker processes die as they start, so no video can be extracted (with the "
            "spawn start method, used once JAX is imported, a script that starts the build must "
            "do it under `if __name__ == \"__main__\":`; also check the memory and process "
            "limits)") from None
      pending = [job for job in pending if job[0] not in reasons]
      # handed out: a job in each worker and up to n + 1 queued (the executor's call queue)
      suspects, pending = pending[:2 * n + 1], pending[2 * n + 1:]
      # n one-process pools at once, from threads, which no signal reaches: stopped (an error,
      # Ctrl-C, a SIGTERM), the main thread tells them to stop their pools, as it stops its own.
      stop = threading.Event()
      threads = concurrent.futures.ThreadPoolExecutor(n)
      try:
        for video, reason in threads.map(functools.partial(_run_alone, stop=stop), suspects):
          reasons[video] = reason
          bar.update()
      except BaseException:
        stop.set()
        threads.shutdown(cancel_futures=True)
        raise
      threads.shutdown()
  return reasons


class _Abandoned(Exception):
  """The caller stopped waiting (see ``_alone``)."""


def _alone(fn, *args, stop: threading.Event | None = None):
  """``fn(*args)`` in a process of its own; None if that process dies, or once ``stop`` is set
  (the process then stopped as ``process_pool`` stops its workers)."""
  try:
    with process_pool(1) as solo:
      future = solo.submit(fn, *args)
      while True:
        try:
          return future.result(timeout=0.2)
        except concurrent.futures.TimeoutError:
          if stop is not None and stop.is_set():
            raise _Abandoned from None
  except (BrokenProcessPool, _Abandoned):
    return None


def _pool_starts() -> bool:
  """Whether a fresh worker process can run anything at all: if not, every video would be
  reported as having killed its worker."""
  return _alone(int) == 0


def _run_alone(job, stop: threading.Event | None = None) -> tuple[str, str | None]:
  """``_extract_one`` in a process of its own: if it dies, only this video is lost."""
  return _alone(_extract_one, job, stop=stop) or (job[0], _DIED)
