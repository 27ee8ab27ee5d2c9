"""``python -m cope_jax.data build``: annotations + videos → ArrayRecord shards + report.json."""

from __future__ import annotations

import os
import shutil

import numpy as np

from cope_jax.codec.errors import ConfigError
from cope_jax.codec.sampling import DELTA, KEYFRAME
from cope_jax.command_line import new_folders_left_empty_removed
from cope_jax.data import primitive_cache, sources
from cope_jax.data.builders import BUILDERS, records
from cope_jax.data.parallel import check_workers
from cope_jax.data.pipeline import SEQUENCE_INDEX, example_characters
from cope_jax.data.primitive_cache import ExtractSettings
from cope_jax.data.shard_writer import RecordTooLarge, write_dataset
from cope_jax.json_files import write_json


def check_limit(limit: int | None) -> None:
  if limit is not None and limit < 1:
    raise ConfigError(f"--limit must be >= 1, got {limit}")


def load_items(source: str, out: str, annotations: str | list[str] | None, videos: str | None,
               synth_videos: int, seed: int, size: int, workers: int | None,
               progress: bool, conversations: str = "question") -> list[sources.VideoItem]:
  """The videos of ``source`` with their conversations and questions. Bad annotations (missing,
  a folder, unreadable, malformed, empty) or a ``videos`` that is not a folder fail here, before
  anything is written under ``out``."""
  if isinstance(annotations, (list, tuple)):  # (the command line's; several for llava_video)
    if len(annotations) > 1 and source != "llava_video":
      raise ConfigError(f"--source {source} reads one --annotations file, got {len(annotations)} "
                        "(several are for --source llava_video)")
    if len(annotations) <= 1 or source != "llava_video":
      annotations = annotations[0] if annotations else None
  if source == "llava_video":
    if not annotations or not videos:
      raise ConfigError("--source llava_video needs --annotations FILE.json … and --videos DIR")
    items = sources.read_llava_video(annotations, videos)
  elif source == "mcq":
    if not annotations:
      raise ConfigError("--source mcq needs --annotations FILE.jsonl")
    items = sources.read_mcq(annotations, conversations, seed)
  elif source == "synthetic":
    from cope_jax.data import synthetic  # pylint: disable=import-outside-toplevel
    if not annotations:
      folder = os.path.join(out, "synthetic")
      synthetic.generate(folder, synth_videos, seed=seed, size=size, workers=workers,
                         progress=progress)
      annotations = os.path.join(folder, "questions.jsonl")
    items = sources.read_mcq(annotations, conversations, seed)
  else:
    raise ConfigError(f"unknown source {source!r}")
  if not items:
    named = annotations if isinstance(annotations, str) else ", ".join(annotations)
    raise ConfigError(f"{named}: no " + ("entries" if source == "llava_video" else "questions"))
  return items


def shard_dir(out: str, stage: str) -> str:
  """Where the shards of ``stage`` go (cope_<stage>/1.0.0, TFDS's layout)."""
  kind = BUILDERS[stage]
  return os.path.join(out, kind.name, kind.version)


_NEEDS = {"pretrain": "a Δ-frame", "finetune": "a conversation", "eval": "a question"}
BUILD_REPORT = "report.json"  # also in the shard folder: what training checks the shards with


def build(stage: str, items: list[sources.VideoItem], out: str, settings: ExtractSettings,
          workers: int | None = None, limit: int | None = None, progress: bool = True) -> dict:
  """Extracts every video (in parallel, resumable) and writes the shards and report.json.

  The shards are written into a folder beside the stage's, with their sequence index and
  report, and renamed into place whole; the previous build's shards stay until then (and come
  back if a build is killed while they are set aside)."""
  if stage not in BUILDERS:
    raise ConfigError(f"unknown stage {stage!r} (pretrain, finetune, eval)")
  if stage == "eval" and items and not any(it.questions for it in items):
    raise ConfigError("--stage eval writes one record per multiple-choice question, and these "
                      "annotations have none (use --source mcq)")
  check_workers(workers)
  check_limit(limit)
  if limit is not None:
    items = items[:limit]
  # (a cache that holds entries stays: a rerun resumes from them)
  with new_folders_left_empty_removed(os.path.join(out, "cache"), out):
    return _build(stage, items, out, settings, workers, progress)


def _build(stage: str, items: list[sources.VideoItem], out: str, settings: ExtractSettings,
           workers: int | None, progress: bool) -> dict:
  done, skipped = primitive_cache.extract_all([it.video for it in items],
                                              os.path.join(out, "cache"), settings, workers,
                                              progress)
  kept = [(i, it) for i, it in enumerate(items) if it.video in done]
  splits = tuple(sorted({it.split for _, it in kept})) or ("train",)
  produced = dict.fromkeys((it.video for _, it in kept), 0)  # records per video

  def examples(split):
    for _, it in kept:
      if it.split == split:
        for rec in records(stage, it.video, primitive_cache.load(done[it.video]), it):
          produced[it.video] += 1
          yield rec

  directory = shard_dir(out, stage)
  new, previous = directory + ".incomplete", directory + ".previous"
  if os.path.exists(previous) and not os.path.exists(directory):  # a build killed before: its
    os.replace(previous, directory)                                  # shards were set aside
  for stale in (previous, new):
    shutil.rmtree(stale, ignore_errors=True)
  kind = BUILDERS[stage]
  try:
    try:
      counts = write_dataset(new, kind.name, kind.features, kind.description,
                             ((s, examples(s)) for s in splits), kind.version, progress=progress)
    except RecordTooLarge as e:
      s = settings.sampling
      raise ConfigError(f"the {e}: build with fewer --max-gops (now {s.max_gops}), a larger "
                        f"--fusion (now {s.fusion}: fewer positions per GOP) or a smaller --size "
                        f"(now {settings.size}); the previous shards, if any, are kept") from None
    if not any(counts.values()):
      first = f", the first: {skipped[0]['video']}: {skipped[0]['reason']}" if skipped else ""
      raise ConfigError(
          f"no {stage} record to write from {len(kept)} readable of {len(items)} videos "
          f"({len(skipped)} skipped{first}); each {stage} record needs {_NEEDS[stage]}; the "
          "previous shards, if any, are kept")
    skipped += [{"video": v, "reason": f"no {stage} record: none has {_NEEDS[stage]}"}
                for v, n in produced.items() if not n]
    written = sorted(v for v, n in produced.items() if n)
    if stage == "finetune":  # read at start instead of decoding every record (frames included)
      write_json(os.path.join(new, SEQUENCE_INDEX),
                 {s: [_index_row(it, done[it.video]) for _, it in kept if it.split == s]
                  for s in splits if counts[s]}, indent=None)
    report = _report(stage, new, directory, done, written, skipped, counts, settings)
    write_json(os.path.join(new, BUILD_REPORT), report)
    if os.path.exists(directory):
      os.replace(directory, previous)
    os.replace(new, directory)
  except BaseException:  # (Ctrl-C included) nothing half-written stays; the previous shards do
    if os.path.exists(previous) and not os.path.exists(directory):  # (between the two renames)
      os.replace(previous, directory)
    shutil.rmtree(new, ignore_errors=True)
    parent = os.path.dirname(directory)
    if os.path.isdir(parent) and not os.listdir(parent):
      os.rmdir(parent)
    raise
  write_json(os.path.join(out, "report.json"), report)
  # (report.json is the last build's; report_<stage>.json each stage's)
  write_json(os.path.join(out, f"report_{stage}.json"), report)
  shutil.rmtree(previous, ignore_errors=True)
  return report


def _index_row(item: sources.VideoItem, cached: str) -> list:
  """A stage-2 record's row of the sequence index: video, conversations, keyframes, Δ-frames and
  each conversation's size for length grouping — from the cache entry's index alone."""
  with np.load(cached) as z:
    kinds, times, (num_frames, fps, _) = z["kinds"], z["times"].tolist(), z["meta"]
  return [item.video, len(item.conversations), int(np.sum(kinds == KEYFRAME)),
          int(np.sum(kinds == DELTA)),
          [example_characters(c, int(num_frames) / int(fps), times) for c in item.conversations]]


def _report(stage: str, folder: str, directory: str, done: dict, written: list[str],
            skipped: list[dict], counts: dict, settings: ExtractSettings) -> dict:
  video_seconds, conformant_bytes = 0.0, 0
  for video in written:
    with np.load(done[video]) as z:
      num_frames, fps, conformant = (int(x) for x in z["meta"])
    video_seconds += num_frames / fps
    conformant_bytes += conformant
  shard_bytes = sum(os.path.getsize(os.path.join(folder, f)) for f in os.listdir(folder)
                    if ".array_record" in f)
  return {
      "stage": stage, "written": len(written), "skipped": skipped,
      "records": {s: n for s, n in counts.items() if n},
      "empty_splits": [s for s, n in counts.items() if not n],
      "bytes": shard_bytes, "video_seconds": round(video_seconds, 3),
      "bytes_per_video_second": shard_bytes / video_seconds if video_seconds else None,
      "reencoded_mpeg4_bytes": conformant_bytes,
      "ratio_to_reencoded_mpeg4": shard_bytes / conformant_bytes if conformant_bytes else None,
      "shards": directory, "size": settings.size,
      "sampling": settings.sampling.__dict__,
  }
