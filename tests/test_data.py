"""Data: shards round-trip, resumable iterators, per-process sharding, length grouping, resumed
builds (annotation sources and bad videos: test_data_sources.py)."""

import json
import os
import shutil

import numpy as np
import pytest

from cope_jax.codec.extract import extract_primitives
from cope_jax.codec.sampling import SamplingConfig, token_budget
from cope_jax.data import storage
from cope_jax.data.build import build, load_items, shard_dir
from cope_jax.data.pipeline import (SEQUENCE_INDEX, PipelineConfig, conversation_index,
                                    conversation_sizes, finetune_dataset, pad_to_length,
                                    pretrain_dataset, siglip_pixels)
from cope_jax.data.primitive_cache import ExtractSettings

SIZE = 64


@pytest.fixture(scope="module")
def synth_build(tmp_path_factory):
  """A small synthetic dataset built for stage 1 and stage 2 (the same extraction cache)."""
  out = tmp_path_factory.mktemp("built")
  items = load_items("synthetic", str(out), None, None, synth_videos=10, seed=3, size=SIZE,
                     workers=2, progress=False)
  settings = ExtractSettings(SIZE, SamplingConfig())
  reports = {stage: build(stage, items, str(out), settings, workers=2, progress=False)
             for stage in ("pretrain", "finetune")}
  return out, items, reports


def _cfg(out, stage, **kw):
  base = dict(shards=shard_dir(str(out), stage), batch_size=3, image_size=SIZE, seed=7,
              tokenizer=str(out / "synthetic" / "tokenizer.json"))
  base.update(kw)
  return PipelineConfig(**base)


def test_report_and_storage_figures(synth_build):
  out, items, reports = synth_build
  for stage, report in reports.items():
    assert report["written"] == 10 and report["skipped"] == []
    assert report["bytes"] > 0 and report["video_seconds"] == pytest.approx(80.0)
    assert report["ratio_to_reencoded_mpeg4"] > 0
    # report.json is the last build's; each stage keeps its own for training's checks
    assert json.loads((out / f"report_{stage}.json").read_text()) == report
  assert json.loads((out / "report.json").read_text()) == reports["finetune"]
  assert sum(reports["pretrain"]["records"].values()) == 10 * 7  # 7 Δ-frame pairs per 8 s video


def test_training_checks_a_stage_against_its_own_build_report(tmp_path):
  """Shards of two stages at two sizes in one folder: each stage is checked against its own."""
  from cope_jax.train.shard_checks import build_report  # pylint: disable=import-outside-toplevel
  (tmp_path / "report.json").write_text(json.dumps({"stage": "finetune", "size": 32}))
  assert build_report(str(tmp_path), "pretrain") == {}  # (the last build was another stage's)
  assert build_report(str(tmp_path), "finetune")["size"] == 32
  (tmp_path / "report_pretrain.json").write_text(json.dumps({"stage": "pretrain", "size": 64}))
  assert build_report(str(tmp_path), "pretrain")["size"] == 64


def test_round_trip_matches_codec_extract(synth_build):
  """video → shard → batch gives the same tensors as `codec extract` (pixels: SigLIP-normalised)."""
  out, items, _ = synth_build
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  seq = tfds.builder_from_directory(shard_dir(str(out), "finetune")).as_data_source("train")
  record = seq[0]
  prims = extract_primitives(record["video"].decode(), size=SIZE)
  np.testing.assert_array_equal(record["kinds"], prims.kinds)
  np.testing.assert_array_equal(record["times"], prims.times)
  np.testing.assert_array_equal(storage.decode_png(record["keyframes"][0]), prims.rgb[0])
  for i in range(len(prims.mv)):
    np.testing.assert_array_equal(storage.decode_mv(record["mv"][i]), prims.mv[i])
    np.testing.assert_array_equal(storage.decode_residual(record["residual"][i]), prims.residual[i])
  # And through the Grain pipeline (no shuffle: example 0 is record 0, conversation 0).
  batch = next(iter(finetune_dataset(_cfg(out, "finetune", shuffle=False, split="train"))))
  assert batch["example_index"][0] == 0
  np.testing.assert_array_equal(batch["pixels"][0, 0], siglip_pixels(prims.rgb[0], SIZE))
  np.testing.assert_array_equal(batch["mv"][0], prims.mv)
  np.testing.assert_array_equal(batch["residual"][0], prims.residual)
  np.testing.assert_array_equal(batch["kinds"][0], prims.kinds)
  # Stage-1 pairs: the first pair of the first video is (frame at 0 s, frame at 1 s, Δ at 1 s).
  pairs = tfds.builder_from_directory(shard_dir(str(out), "pretrain")).as_data_source("train")
  first = next(pairs[i] for i in range(len(pairs)) if pairs[i]["video"] == record["video"]
               and pairs[i]["time"] == 1.0)
  np.testing.assert_array_equal(storage.decode_png(first["reference"]), prims.rgb[0])
  np.testing.assert_array_equal(storage.decode_mv(first["mv"]), prims.mv[0])
  np.testing.assert_array_equal(storage.decode_residual(first["residual"]), prims.residual[0])


def test_an_adaptive_build_holds_the_kept_delta_frames(synth_build, tmp_path):
  """``--min-change``: each video's record is ``codec extract``'s adaptive output, a stage-1
  pair's reference is the last *kept* position, and batches pad the missing Δ-frames."""
  _, items, _ = synth_build
  sampling = SamplingConfig(min_change=4)
  build("finetune", items, str(tmp_path), ExtractSettings(SIZE, sampling), workers=2,
        progress=False)
  report = build("pretrain", items, str(tmp_path), ExtractSettings(SIZE, sampling), workers=2,
                 progress=False)
  prims = {it.video: extract_primitives(it.video, size=SIZE, sampling=sampling) for it in items}
  kept = sum(len(p.mv) for p in prims.values())
  planned = sum(token_budget(p.num_frames, sampling)["delta_frames"] for p in prims.values())
  assert sum(report["records"].values()) == kept < planned  # some positions were still
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  records = tfds.builder_from_directory(shard_dir(str(tmp_path), "finetune")).as_data_source(
      "train")
  for i in range(len(records)):
    p = prims[records[i]["video"].decode()]
    np.testing.assert_array_equal(records[i]["kinds"], p.kinds)
    np.testing.assert_array_equal(records[i]["times"], p.times)
  pairs = tfds.builder_from_directory(shard_dir(str(tmp_path), "pretrain")).as_data_source(
      "train")
  # A video whose first second was still: its first pair spans 0 s to its first kept Δ-frame.
  late = [pairs[i] for i in range(len(pairs))
          if pairs[i]["time"] == prims[pairs[i]["video"].decode()].times[1] > 1.0]
  assert late, "no training video of the fixture starts still: the test needs one"
  first = late[0]
  p = prims[first["video"].decode()]
  np.testing.assert_array_equal(storage.decode_png(first["reference"]), p.rgb[0])
  np.testing.assert_array_equal(storage.decode_mv(first["mv"]), p.mv[0])
  tokenizer = str(synth_build[0] / "synthetic" / "tokenizer.json")
  batch = next(iter(finetune_dataset(_cfg(tmp_path, "finetune", shuffle=False, split="train",
                                          tokenizer=tokenizer))))
  # Row 0 is record 0's first conversation: its kept Δ-frames, then zero padding to the slots.
  p = prims[records[0]["video"].decode()]
  assert (batch["kinds"][0] == 1).sum() == len(p.mv) and batch["mv"].shape[1] == 7
  np.testing.assert_array_equal(batch["mv"][0, :len(p.mv)], p.mv)
  assert not batch["mv"][0, len(p.mv):].any()


@pytest.mark.parametrize("stage,extra", [("pretrain", {}), ("finetune", {}),
                                         ("finetune", {"group_by_length": 2})])
def test_iterator_state_restores_exactly(synth_build, stage, extra):
  out, _, _ = synth_build
  make = pretrain_dataset if stage == "pretrain" else finetune_dataset
  cfg = _cfg(out, stage, **extra)
  it = iter(make(cfg))
  for _ in range(2):
    next(it)
  state = it.get_state()
  expected = [next(it) for _ in range(4)]  # crosses an epoch boundary for the small dataset
  resumed = iter(make(cfg))
  resumed.set_state(json.loads(json.dumps(state)))  # the state survives serialisation
  for want in expected:
    got = next(resumed)
    for key in want:
      np.testing.assert_array_equal(got[key], want[key])


def test_decodes_only_prefetch_batches_ahead(synth_build, monkeypatch):
  """Prefetching counts batches: after the first batch, at most `prefetch_batches` more are
  decoded however long the consumer waits (Grain's default, 500 ahead, decoded the whole
  dataset several times over while a train step compiled)."""
  import threading  # pylint: disable=import-outside-toplevel
  import time  # pylint: disable=import-outside-toplevel
  from cope_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  out, _, _ = synth_build
  decoded, lock, make_source = [0], threading.Lock(), pipeline._source  # pylint: disable=protected-access

  class CountingSource:
    """This test's records only (earlier tests' iterators may still be prefetching theirs)."""

    def __init__(self, source):
      self.source = source

    def __len__(self):
      return len(self.source)

    def __getitem__(self, index):
      with lock:
        decoded[0] += 1
      return self.source[index]

  monkeypatch.setattr(pipeline, "_source", lambda cfg: CountingSource(make_source(cfg)))
  cfg = _cfg(out, "pretrain", read_threads=2, prefetch_batches=2)  # 70 pairs: 23 batches of 3
  it = iter(pretrain_dataset(cfg))
  next(it)
  time.sleep(1.0)  # room for an unbounded prefetcher to run ahead
  assert 0 < decoded[0] <= (1 + cfg.prefetch_batches + 1) * cfg.batch_size
  for _ in range(3):
    next(it)
  time.sleep(0.5)
  assert decoded[0] <= (4 + cfg.prefetch_batches + 1) * cfg.batch_size


def test_same_seed_same_batches_and_workers_change_nothing(synth_build):
  out, _, _ = synth_build
  a = [next(iter(pretrain_dataset(_cfg(out, "pretrain"))))["example_index"] for _ in range(2)]
  np.testing.assert_array_equal(a[0], a[1])
  it = iter(pretrain_dataset(_cfg(out, "pretrain", worker_count=2)))
  inline = iter(pretrain_dataset(_cfg(out, "pretrain")))
  for _ in range(3):
    w, i = next(it), next(inline)
    np.testing.assert_array_equal(w["example_index"], i["example_index"])
    np.testing.assert_array_equal(w["mv"], i["mv"])


@pytest.mark.parametrize("stage,extra", [("pretrain", {}), ("finetune", {}),
                                         ("finetune", {"group_by_length": 2})])
def test_two_processes_see_disjoint_halves(synth_build, stage, extra):
  """Each process's blocks put together are the one-process global batches. A finite pass
  whose last global batch is partial drops it whole: process 0 got a full block of it and
  process 1 a short one or none (one more step on one host: a collective waits for ever)."""
  out, _, _ = synth_build
  make = pretrain_dataset if stage == "pretrain" else finetune_dataset
  index = lambda cfg: [b["example_index"].tolist() for b in make(cfg)]  # noqa: E731
  total = len(index(_cfg(out, stage, num_epochs=1, batch_size=1, drop_remainder=False)))
  local = 3 if total % 6 else 4  # a global batch (two processes' blocks) that leaves a remainder
  assert total % (2 * local)
  parts = [index(_cfg(out, stage, shard_index=i, shard_count=2, num_epochs=1, batch_size=local,
                      **extra)) for i in range(2)]
  one = index(_cfg(out, stage, num_epochs=1, batch_size=2 * local, **extra))
  assert len(one) == len(parts[0]) == len(parts[1]) == total // (2 * local)
  assert [a + b for a, b in zip(*parts)] == one
  assert len({i for batch in one for i in batch}) == len(one) * 2 * local  # no example twice
  with pytest.raises(ValueError, match="cannot be shared evenly"):
    make(_cfg(out, stage, shard_index=0, shard_count=2, num_epochs=1, batch_size=local,
              drop_remainder=False, **extra))


def test_stage2_batches_use_length_buckets_and_mask_answers(synth_build):
  out, _, _ = synth_build
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  cfg = _cfg(out, "finetune", length_buckets=(256, 512, 1024))
  tok = Tokenizer.from_file(cfg.tokenizer)
  im_end = tok.token_to_id("<|im_end|>")
  for _, batch in zip(range(5), finetune_dataset(cfg)):
    assert batch["input_ids"].shape[1] in (256, 512, 1024)
    text_len = batch["text_mask"].sum(1)
    assert np.all(text_len - 1 + 210 + 7 * 10 <= batch["input_ids"].shape[1])
    for ids, loss in zip(batch["input_ids"], batch["loss_mask"]):
      answer = tok.decode(ids[loss].tolist(), skip_special_tokens=False)
      assert answer in {f"{L}<|im_end|>" for L in "ABCD"}
      assert ids[loss][-1] == im_end and (ids == -200).sum() == 1


def test_conversation_index_from_the_sequence_index(synth_build):
  """The build writes each record's conversation and frame counts, so the pipeline need not
  decode every record (frames included) at start; a stale index is ignored."""
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  out, _, _ = synth_build
  shards = shard_dir(str(out), "finetune")
  source = tfds.builder_from_directory(shards).as_data_source("train")
  decoded = conversation_index(source)  # no side file given: every record decoded
  assert len(decoded) > len(source)
  counts = json.loads(open(os.path.join(shards, SEQUENCE_INDEX)).read())
  assert [row[0] for row in counts["train"]] == [source[i]["video"].decode()
                                                 for i in range(len(source))]
  # the index is used (the records are not decoded again) and gives the same pairs
  reads = []
  counting = type("Counting", (), {"__len__": lambda self: len(source),
                                   "__getitem__": lambda self, i: reads.append(i) or source[i]})()
  np.testing.assert_array_equal(conversation_index(counting, shards, "train"), decoded)
  assert sorted(reads) == [0, len(source) - 1]
  assert all(row[2:4] == [1, 7] for row in counts["train"])  # 8 s videos: 1 keyframe, 7 Δ-frames
  # and each conversation's characters, the same as decoding the records gives
  np.testing.assert_array_equal(conversation_sizes(counting, decoded, shards, "train"),
                                conversation_sizes(source, decoded))
  stale = os.path.join(str(out), "stale")
  os.makedirs(stale, exist_ok=True)
  with open(os.path.join(stale, SEQUENCE_INDEX), "w") as f:
    json.dump({"train": counts["train"][:-1]}, f)
  np.testing.assert_array_equal(conversation_index(source, stale, "train"), decoded)


def test_length_grouping_puts_short_conversations_in_short_buckets(synth_build):
  """Grouped, more batches run at the small bucket (and fewer positions in all); one epoch still
  holds every example once."""
  out, _, _ = synth_build
  one_by_one = finetune_dataset(_cfg(out, "finetune", batch_size=1, num_epochs=1, shuffle=False,
                                     length_buckets=(1024,)))
  needs = [int(b["text_mask"].sum()) - 1 + 210 + 7 * 10 for b in one_by_one]
  short = int(np.median(needs))  # a bucket for the shorter half of the conversations
  epoch = dict(num_epochs=1, drop_remainder=False, length_buckets=(short, 1024))

  def lengths(**kw):
    batches = list(finetune_dataset(_cfg(out, "finetune", **epoch, **kw)))
    return ([b["input_ids"].shape[1] for b in batches],
            sorted(int(i) for b in batches for i in b["example_index"]))

  plain, plain_examples = lengths()
  grouped, grouped_examples = lengths(group_by_length=4)
  assert grouped_examples == plain_examples == list(range(len(needs)))
  # (how many more depends on the lengths: these conversations need 422–435 positions, so a
  # batch of three is short only when all three are at or below the median)
  assert grouped.count(short) > plain.count(short)
  assert sum(grouped) < sum(plain)


def test_hosts_agree_on_one_length(synth_build, monkeypatch, capsys):
  """A batch padded to a longer bucket is the batch the pipeline makes at that bucket; a host
  pads to the longest bucket any host picked, and says so once."""
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import FinetuneTask  # pylint: disable=import-outside-toplevel
  out, _, _ = synth_build
  short = next(iter(finetune_dataset(_cfg(out, "finetune", length_buckets=(512, 1024)))))
  long = next(iter(finetune_dataset(_cfg(out, "finetune", length_buckets=(1024,)))))
  assert short["input_ids"].shape[1] == 512
  task = FinetuneTask.__new__(FinetuneTask)
  task.config = type("C", (), {"tokenizer": _cfg(out, "finetune").tokenizer})()
  task._told_padding = False  # pylint: disable=protected-access
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 1024]))
  padded = task.common_shapes(short)
  for key in long:
    np.testing.assert_array_equal(padded[key], long[key])
  task.common_shapes(short)
  assert capsys.readouterr().out.count("padded this host's batch from 512 to 1024") == 1
  monkeypatch.setattr(multihost_utils, "process_allgather", lambda x: np.array([x, 256]))
  assert task.common_shapes(short) is short
  pad_id = Tokenizer.from_file(_cfg(out, "finetune").tokenizer).token_to_id("<|endoftext|>")
  with pytest.raises(ValueError, match="cannot pad"):
    pad_to_length(long, 512, pad_id)


def test_truncated_answers_warn(synth_build):
  """Text longer than the largest bucket is cut from the end, where the answers are: say so."""
  out, _, _ = synth_build
  cfg = _cfg(out, "finetune", length_buckets=(300,), num_epochs=1, shuffle=False)
  with pytest.warns(UserWarning, match="answer tokens cut off"):
    batches = list(finetune_dataset(cfg))
  assert {b["input_ids"].shape[1] for b in batches} == {300}



def test_build_resumes_from_the_extraction_cache(synth_build):
  """A rebuild re-uses every extracted video (nothing re-extracted) and rewrites the shards."""
  out, items, _ = synth_build
  cache = out / "cache"
  before = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
  shutil.rmtree(shard_dir(str(out), "pretrain"))  # as if the build died before writing shards
  report = build("pretrain", items, str(out), ExtractSettings(SIZE, SamplingConfig()),
                 workers=2, progress=False)
  assert report["written"] == 10
  assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == before
  assert not [p for p in cache.iterdir() if ".tmp" in p.name]
  # A rebuild over existing shards with other items writes them (TFDS alone would keep the old
  # shards under a report of the new ones); then the full set again for the tests that follow.
  full = _records_on_disk(out)
  fewer = build("pretrain", [it for it in items if it.split == "train"][:3], str(out),
                ExtractSettings(SIZE, SamplingConfig()), workers=2, progress=False)
  assert fewer["written"] == 3 and _records_on_disk(out) == fewer["records"]
  assert fewer["records"]["train"] < full["train"]
  build("pretrain", items, str(out), ExtractSettings(SIZE, SamplingConfig()), workers=2,
        progress=False)
  assert _records_on_disk(out) == full


def _records_on_disk(out) -> dict:
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  info = tfds.builder_from_directory(shard_dir(str(out), "pretrain")).info
  return {name: split.num_examples for name, split in info.splits.items()}


def test_a_record_past_2_gib_is_refused_before_it_is_serialized(synth_build, monkeypatch):
  """One record is one protobuf message (at most 2 GiB): past it, serializing failed with "Wire
  format was corrupt" after holding several times the record in memory (a 2.2 GiB finetune
  record: 10 GB). The build now names the video and the flags that make records smaller, and
  keeps the shards it had."""
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.data import shard_writer  # pylint: disable=import-outside-toplevel
  out, items, _ = synth_build
  directory = shard_dir(str(out), "finetune")
  before = sorted(os.listdir(directory))
  monkeypatch.setattr(shard_writer, "MAX_RECORD_BYTES", 10_000)  # (a record here: ~100 KB)

  def serialized(*args):
    raise AssertionError("a record past the limit was serialized")
  monkeypatch.setattr(shard_writer.example_serializer.ExampleSerializer, "get_tf_example",
                      serialized)
  with pytest.raises(ConfigError, match=r"^the \S+\.mp4 record of (train|validation|test) holds "
                     r"0\.\d\d GiB, more than one record can \(about 2 GiB\): build with fewer "
                     r"--max-gops \(now 64\), a larger --fusion \(now 30: fewer positions per "
                     r"GOP\) or a smaller --size \(now 64\); the previous shards, if any, are "
                     r"kept$"):
    build("finetune", items, str(out), ExtractSettings(SIZE, SamplingConfig()), workers=2,
          progress=False)
  assert sorted(os.listdir(directory)) == before
  assert not os.path.exists(directory + ".incomplete")


def test_a_records_payload_is_what_it_serializes_to_but_its_framing():
  import tensorflow_datasets as tfds  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import example_serializer  # pylint: disable=import-outside-toplevel
  from cope_jax.data.builders import BUILDERS  # pylint: disable=import-outside-toplevel
  from cope_jax.data.shard_writer import _payload_bytes  # pylint: disable=import-outside-toplevel
  frames = np.array([os.urandom(n) for n in (5000, 7000, 9000)], dtype=object)
  example = {"video": "v.mp4", "kinds": np.zeros(40, np.uint8), "times": np.zeros(40, np.float32),
             "duration_s": np.float32(8), "keyframes": frames, "mv": frames, "residual": frames,
             "conversations": "é" * 100}
  features = tfds.features.FeaturesDict(BUILDERS["finetune"].features)
  serializer = example_serializer.ExampleSerializer(features.get_serialized_info())
  record = serializer.get_tf_example(features.encode_example(example)).SerializeToString()
  payload = _payload_bytes(example)
  assert payload == 3 * 21000 + 40 + 160 + 4 + len("v.mp4") + 200  # (é: 2 bytes)
  assert payload <= len(record) <= payload + 300
