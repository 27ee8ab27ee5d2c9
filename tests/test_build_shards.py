"""``data build``'s writing: streamed shards at any size, empty splits, a worker that dies, the
report kept with its shards."""

import json
import os
import shutil
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow_datasets as tfds
from tensorflow_datasets.core import shuffle as tfds_shuffle

from cope_jax.codec import synthetic_clips
from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import SamplingConfig
from cope_jax.data import primitive_cache, shard_writer, sources
from cope_jax.data.build import BUILD_REPORT, build, shard_dir
from cope_jax.data.builders import pair_examples
from cope_jax.data.primitive_cache import ExtractSettings

SIZE = 64


def _mcq(tmp_path, videos_by_split: dict) -> list[sources.VideoItem]:
  path = tmp_path / "q.jsonl"
  path.write_text("".join(json.dumps({"video": v, "question": "Q?", "options": ["a", "b"],
                                      "answer": "B", "split": split}) + "\n"
                          for split, videos in videos_by_split.items() for v in videos))
  return sources.read_mcq(str(path))


@pytest.fixture(scope="module")
def still_clip(tmp_path_factory) -> str:
  """2 s of one still photograph: no Δ-frame once still positions are skipped (min_change)."""
  path = tmp_path_factory.mktemp("still") / "still.mp4"
  frame = next(iter(synthetic_clips.object_frames(1, 96, 96, (0, 0))))
  synthetic_clips.write_clip(path, (frame for _ in range(60)), fps=30)
  return str(path)


def test_shards_are_streamed_in_order_past_tfds_s_memory_buffer(tmp_path, pan_clip, object_clip,
                                                                monkeypatch):
  """TFDS's writer held a split in memory up to 1 GiB and then spilled it through TensorFlow
  (not installed): a paper-scale split failed. Here its buffer is 0 and shards roll over every
  few records; what is read back is every record in the videos' order."""
  monkeypatch.setattr(tfds_shuffle, "MAX_MEM_BUFFER_SIZE", 0)
  monkeypatch.setattr(shard_writer, "SHARD_BYTES", 20_000)
  items = _mcq(tmp_path, {"train": [pan_clip, object_clip]})
  settings = ExtractSettings(SIZE, SamplingConfig())
  report = build("pretrain", items, str(tmp_path / "o"), settings, workers=1, progress=False)
  folder = shard_dir(str(tmp_path / "o"), "pretrain")
  shards = [f for f in os.listdir(folder) if ".array_record-" in f]
  assert len(shards) > 2 and not [f for f in os.listdir(folder) if ".part" in f]
  source = tfds.builder_from_directory(folder).as_data_source("train")
  done, _ = primitive_cache.extract_all([pan_clip, object_clip], str(tmp_path / "o" / "cache"),
                                        settings, workers=1, progress=False)
  expected = [r for v in (pan_clip, object_clip)
              for r in pair_examples(v, primitive_cache.load(done[v]))]
  assert len(source) == len(expected) == report["records"]["train"]
  for i, want in enumerate(expected):
    got = source[i]
    assert got["video"].decode() == want["video"] and got["time"] == want["time"]
    assert got["mv"] == want["mv"] and got["reference"] == want["reference"]
  assert report["bytes"] == sum(os.path.getsize(os.path.join(folder, f)) for f in shards)


def test_an_empty_split_is_left_out_and_its_videos_reported(tmp_path, pan_clip, still_clip):
  """A split whose videos have no Δ-frame failed the whole build (TFDS refuses empty splits),
  and its videos were counted as written."""
  items = _mcq(tmp_path, {"train": [pan_clip], "test": [still_clip]})
  settings = ExtractSettings(SIZE, SamplingConfig(min_change=4))
  report = build("pretrain", items, str(tmp_path / "o"), settings, workers=1, progress=False)
  assert report["written"] == 1 and report["empty_splits"] == ["test"]
  assert list(report["records"]) == ["train"] and report["records"]["train"] > 0
  assert report["skipped"] == [{"video": still_clip,
                                "reason": "no pretrain record: none has a Δ-frame"}]
  info = tfds.builder_from_directory(shard_dir(str(tmp_path / "o"), "pretrain")).info
  assert list(info.splits) == ["train"]
  with pytest.raises(ConfigError, match="no pretrain record to write from 1 readable of 1"):
    build("pretrain", _mcq(tmp_path, {"test": [still_clip]}), str(tmp_path / "p"), settings,
          workers=1, progress=False)


def test_the_report_and_index_travel_with_their_shards(tmp_path, pan_clip, monkeypatch):
  """A rebuild interrupted after its shards were swapped in left the previous build's report:
  training checked 48 px shards against a report of 64. The report and the sequence index are
  now in the shard folder before it is renamed into place, and training reads that copy."""
  from cope_jax.train import shard_checks  # pylint: disable=import-outside-toplevel
  out = str(tmp_path / "o")
  items = _mcq(tmp_path, {"train": [pan_clip]})
  build("finetune", items, out, ExtractSettings(SIZE, SamplingConfig()), workers=1,
        progress=False)
  real_rmtree = shutil.rmtree

  def interrupted(path, *args, **kwargs):
    if path.endswith(".previous") and os.path.exists(path):  # the old shards, at the end
      raise KeyboardInterrupt
    return real_rmtree(path, *args, **kwargs)

  monkeypatch.setattr(shutil, "rmtree", interrupted)
  with pytest.raises(KeyboardInterrupt):
    build("finetune", items, out, ExtractSettings(48, SamplingConfig()), workers=1,
          progress=False)
  monkeypatch.setattr(shutil, "rmtree", real_rmtree)
  folder = shard_dir(out, "finetune")
  assert {"sequence_index.json", BUILD_REPORT} <= set(os.listdir(folder))
  # whatever the report beside the folder says, training reads the shards' own
  with open(os.path.join(out, "report_finetune.json"), "w") as f:
    json.dump({"stage": "finetune", "size": 64}, f)
  assert shard_checks.build_report(out, "finetune")["size"] == 48
  build("finetune", items, out, ExtractSettings(SIZE, SamplingConfig()), workers=1,
        progress=False)  # the set-aside folder is cleared by the next build
  assert not os.path.exists(folder + ".previous")
  # interrupted between setting the old shards aside and renaming the new ones in: the old
  # ones go back (the stage had no shards until the next build)
  real_replace = os.replace

  def between(src, dst):
    if str(src).endswith(".incomplete"):
      raise KeyboardInterrupt
    return real_replace(src, dst)

  monkeypatch.setattr(os, "replace", between)
  with pytest.raises(KeyboardInterrupt):
    build("finetune", items, out, ExtractSettings(48, SamplingConfig()), workers=1,
          progress=False)
  monkeypatch.setattr(os, "replace", real_replace)
  assert sorted(os.listdir(os.path.dirname(folder))) == ["1.0.0"]
  assert shard_checks.build_report(out, "finetune")["size"] == SIZE


def test_eval_without_questions_is_refused_before_extracting(tmp_path):
  item = sources.VideoItem(video=str(tmp_path / "never_read.mp4"), conversations=[["x"]])
  with pytest.raises(ConfigError, match="--stage eval writes one record per multiple-choice"):
    build("eval", [item], str(tmp_path / "o"), ExtractSettings(SIZE, SamplingConfig()))
  assert not os.path.exists(tmp_path / "o")


def test_workers_that_cannot_start_are_one_error_not_every_video_died(tmp_path, pan_clip):
  """A pool whose processes die as they start (a script without a __main__ guard under spawn,
  a process limit) reported every video as having killed its worker."""
  videos = [str(tmp_path / f"v{i}.mp4") for i in range(2)]
  for v in videos:
    shutil.copy(pan_clip, v)
  script = textwrap.dedent(f"""
      import concurrent.futures, multiprocessing, os
      from cope_jax.codec.sampling import SamplingConfig
      from cope_jax.data import primitive_cache
      def process_pool(n):  # every worker exits before it runs anything
          return concurrent.futures.ProcessPoolExecutor(
              n, mp_context=multiprocessing.get_context("fork"), initializer=os._exit,
              initargs=(3,))
      primitive_cache.process_pool = process_pool
      try:
          primitive_cache.extract_all(
              {videos!r}, {str(tmp_path / "cache")!r},
              primitive_cache.ExtractSettings({SIZE}, SamplingConfig()), workers=2,
              progress=False)
      except ChildProcessError as e:
          print("refused:", e)
      """)
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "refused: the worker processes die as they start" in r.stdout, r.stdout
  assert "__main__" in r.stdout


def test_a_worker_that_dies_is_reported_and_the_build_goes_on(tmp_path, pan_clip, object_clip):
  """A worker killed mid-video (the out-of-memory killer, a crash in FFmpeg) broke the process
  pool: a traceback, nothing written, and the same again on every rerun."""
  videos = []
  for i, clip in enumerate([pan_clip, object_clip] * 3):
    videos.append(str(tmp_path / f"v{i}{os.path.splitext(clip)[1]}"))
    shutil.copy(clip, videos[-1])
  crash = str(tmp_path / "crash.mp4")
  shutil.copy(pan_clip, crash)
  videos.insert(3, crash)
  # A fresh interpreter without JAX, so the pool forks and its workers see the patched function.
  script = textwrap.dedent(f"""
      import json, os, signal
      from cope_jax.codec.sampling import SamplingConfig
      from cope_jax.data import primitive_cache
      original = primitive_cache._extract_one
      def _extract_one(job):
          if job[0] == {crash!r}:
              os.kill(os.getpid(), signal.SIGKILL)
          return original(job)
      _extract_one.__module__ = primitive_cache.__name__  # pickled by name
      primitive_cache._extract_one = _extract_one
      done, skipped = primitive_cache.extract_all(
          {videos!r}, {str(tmp_path / "cache")!r},
          primitive_cache.ExtractSettings({SIZE}, SamplingConfig()), workers=2, progress=False)
      print(json.dumps([sorted(done), skipped]))
      """)
  # The pool terminates the other worker when one dies: its re-encoded video and its cache
  # file being written were left behind (in the system's temporary folder and the cache).
  (tmp_path / "tmp").mkdir()
  r = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=600,
                     env={**os.environ, "TMPDIR": str(tmp_path / "tmp")})
  assert r.returncode == 0, r.stderr[-3000:]
  assert not os.listdir(tmp_path / "tmp")
  assert not [n for n in os.listdir(tmp_path / "cache") if not n.endswith(".npz")]
  done, skipped = json.loads(r.stdout.strip().splitlines()[-1])
  assert done == sorted(v for v in videos if v != crash)
  assert skipped == [{"video": crash, "reason": primitive_cache._DIED}]  # pylint: disable=protected-access
  for v in done:
    assert np.load(os.path.join(tmp_path / "cache", ExtractSettings(
        SIZE, SamplingConfig()).key(v) + ".npz"))["kinds"].size


_WRITE_TWICE = """
import sys
import numpy as np
import tensorflow_datasets as tfds
from cope_jax.data import shard_writer
features = {k: tfds.features.Tensor(shape=(None,), dtype=np.int32) for k in "abcdefghij"}
examples = [{k: np.arange(i + j, dtype=np.int32) for j, k in enumerate("abcdefghij")}
            for i in range(4)]
shard_writer.write_dataset(sys.argv[1], "t", features, "", [("train", iter(examples))],
                           progress=False)
"""


def test_the_same_examples_make_the_same_shard_bytes(tmp_path):
  """A tf.train.Example's features are a map, serialized in the process's hash order: shards
  rebuilt from the same videos had other bytes, and a resumed run refused them as other data."""
  made = []
  for run in ("one", "two"):
    subprocess.run([sys.executable, "-c", _WRITE_TWICE, str(tmp_path / run)], check=True)
    shard = next(f for f in os.listdir(tmp_path / run) if ".array_record-" in f)
    made.append((tmp_path / run / shard).read_bytes())
  assert made[0] == made[1]


def test_a_worker_killed_outright_leaves_no_part_written_cache_file(tmp_path):
  """The out-of-memory killer or kill -9 runs no cleanup: a part-written extraction (up to a
  video's primitives) stayed in the cache for good. The next build removes it, not the file of
  a build still writing."""
  dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                        capture_output=True, text=True, check=True).stdout.strip()
  cache = tmp_path / "cache"
  cache.mkdir()
  (cache / f"0123abcd.npz.tmp{dead}").write_bytes(b"\x00" * 100)
  writing = cache / f"4567ef01.npz.tmp{os.getpid()}"
  writing.write_bytes(b"\x00" * 100)
  done, skipped = primitive_cache.extract_all([], str(cache), ExtractSettings(SIZE,
                                                                              SamplingConfig()),
                                              workers=1, progress=False)
  assert (done, skipped) == ({}, []) and os.listdir(cache) == [writing.name]
