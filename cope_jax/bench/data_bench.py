"""Data loader throughput per CPU core, and shard bytes per video-second.

Builds synthetic shards (into ``--out``, or a temporary folder), then reads each stage's Grain
pipeline in this one process with one decoding thread (one core) and prints samples/s and MB/s
of shard bytes decoded. Multiply by the cores you give Grain workers for a host's figure.
"""

from __future__ import annotations

import os
import platform
import tempfile
import time

from cope_jax.bench import require_positive
from cope_jax.codec.sampling import SamplingConfig
from cope_jax.command_line import ArgumentParser
from cope_jax.data.build import build, load_items, shard_dir
from cope_jax.data.pipeline import PipelineConfig, finetune_dataset, pretrain_dataset
from cope_jax.data.primitive_cache import ExtractSettings


def _throughput(dataset, shard_bytes: int, records: int, batches: int) -> tuple[float, float]:
  it = iter(dataset)
  batch = next(it)  # warm-up: opens shards, builds the conversation index
  size = len(batch["example_index"])
  start = time.perf_counter()
  for _ in range(batches):
    next(it)
  seconds = time.perf_counter() - start
  samples = batches * size / seconds
  return samples, samples * shard_bytes / records / 1e6


def run(out: str, videos: int, size: int, image_size: int, batches: int) -> list[dict]:
  items = load_items("synthetic", out, None, None, videos, 0, size, None, False)
  settings = ExtractSettings(size, SamplingConfig())
  rows = []
  for stage, make in (("pretrain", pretrain_dataset), ("finetune", finetune_dataset)):
    start = time.perf_counter()
    report = build(stage, items, out, settings, progress=False)
    build_s = time.perf_counter() - start
    records = sum(report["records"].values())
    # One decoding thread, one batch ahead: a figure per core (Grain's defaults decode on 16
    # threads, and a deep prefetch started during the warm-up batch would flatter the timing).
    cfg = PipelineConfig(shards=shard_dir(out, stage), batch_size=8, image_size=image_size,
                         tokenizer=os.path.join(out, "synthetic", "tokenizer.json"),
                         split="train", read_threads=1, prefetch_batches=1)
    samples, mb = _throughput(make(cfg), report["bytes"], records, batches)
    rows.append({"stage": stage, "samples_per_s": samples, "mb_per_s": mb,
                 "bytes_per_video_second": report["bytes_per_video_second"],
                 "ratio_to_reencoded_mpeg4": report["ratio_to_reencoded_mpeg4"],
                 "build_s": build_s, "records": records})
  return rows


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench data", description=__doc__)
  parser.add_argument("--out", help="build folder (default: a temporary one)")
  parser.add_argument("--videos", type=int, default=40)
  parser.add_argument("--size", type=int, default=384, help="codec frame side")
  parser.add_argument("--image-size", type=int, default=384, help="vision encoder input side")
  parser.add_argument("--batches", type=int, default=20)
  args = parser.parse_args(argv)
  require_positive(parser, args, "--videos", "--batches", "--size", "--image-size")
  with tempfile.TemporaryDirectory(prefix="cope_data_bench_") as tmp:
    rows = run(args.out or tmp, args.videos, args.size, args.image_size, args.batches)
  print(f"data benchmark: {args.videos} synthetic 8 s videos at {args.size}x{args.size}, "
        f"vision input {args.image_size}, one process "
        f"({platform.processor() or platform.machine()}, {os.cpu_count()} cores)")
  for r in rows:
    print(f"  {r['stage']:9s} {r['samples_per_s']:8.1f} samples/s/core  {r['mb_per_s']:6.1f} MB/s"
          f"  shards {r['bytes_per_video_second'] / 1e3:7.1f} KB per video-second"
          f"  ({r['ratio_to_reencoded_mpeg4']:.2f}x the re-encoded MPEG-4)"
          f"  build {r['build_s']:.1f} s")
