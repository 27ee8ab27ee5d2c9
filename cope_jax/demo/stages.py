"""The demo's data and training stages; each one is skipped when its output is complete."""

from __future__ import annotations

import json
import os

import numpy as np

from cope_jax.codec.sampling import SamplingConfig
from cope_jax.demo.progress import log
from cope_jax.demo.recipe import DemoSettings, Paths
from cope_jax.json_files import read_json


def _shards_done(out: str, stage: str) -> bool:
  from cope_jax.data.build import shard_dir  # pylint: disable=import-outside-toplevel
  return os.path.exists(os.path.join(shard_dir(out, stage), "dataset_info.json"))


def make_data(s: DemoSettings, p: Paths) -> dict:
  """Synthetic videos and questions; dense-frame shards (base model) and CoPE shards (stages 1
  and 2) of the train split. Training conversations are LLaVA-Video-178K-style, two per video: a
  caption; and each question open-ended or multiple-choice; the held-out split is multiple-choice
  only."""
  from cope_jax.data import synthetic  # pylint: disable=import-outside-toplevel
  from cope_jax.data.build import build  # pylint: disable=import-outside-toplevel
  from cope_jax.data.primitive_cache import ExtractSettings  # pylint: disable=import-outside-toplevel
  from cope_jax.data.sources import read_llava_video  # pylint: disable=import-outside-toplevel
  summary_path = os.path.join(p.synthetic, "summary.json")
  if not os.path.exists(summary_path):
    log(f"[data] generating {s.videos} synthetic videos ({s.size}² px, 8 s) and their questions")
    synthetic.generate(p.synthetic, s.videos, seed=s.seed, size=s.size)
  summary = read_json(summary_path)
  items = read_llava_video(os.path.join(p.synthetic, "train_conversations.json"), p.synthetic)
  # LLaVA-Video's uniform frames, as the dense mode evaluates them (the base model once trained
  # on every 12th frame from 0 and was asked about frames at linspace(0, 239, 20): 2 of 20 alike)
  dense = SamplingConfig(uniform_frames=s.dense_frames)
  cope = SamplingConfig(min_change=s.min_change)
  for out, stage, sampling in ((p.dense_shards, "finetune", dense),
                               (p.cope_shards, "pretrain", cope),
                               (p.cope_shards, "finetune", cope)):
    if not _shards_done(out, stage):
      adaptive = f", adaptive fusion {sampling.min_change:g}" if sampling.min_change else ""
      how = (f"{sampling.uniform_frames} frames spread over each video" if sampling.uniform_frames
             else f"keyframes per 8 s GOP: {sampling.keyframes_per_gop}, sampled every "
                  f"{sampling.fusion} frames{adaptive}")
      log(f"[data] {stage} shards in {out} ({how})")
      report = build(stage, items, out, ExtractSettings(s.size, sampling))
      if report["skipped"]:
        log(f"[data] skipped {len(report['skipped'])} videos: {report['skipped'][:3]}")
  return {"videos": summary["videos"], "questions": summary["questions"],
          "splits": summary["splits"], "families": summary["families"],
          "motion_families": summary["motion_families"]}


def _losses(workdir: str) -> list[dict]:
  path = os.path.join(workdir, "metrics.jsonl")
  if not os.path.exists(path):
    return []
  with open(path) as f:
    rows = [json.loads(line) for line in f if line.strip()]
  by_step = {r["step"]: r for r in rows}  # a resumed run may log a step twice
  return [by_step[k] for k in sorted(by_step)]


class StageStopped(BaseException):
  """A training stage stopped before its last step: an error it has reported (``status`` 1), or
  a SIGTERM after saving (``status`` = ``loop.PREEMPTED``), or one outside training. Not an
  ``Exception``, as KeyboardInterrupt is not: raised by the SIGTERM handler wherever the run
  stands, it must not be taken for the failure a broad ``except`` expects there (loading a
  checkpoint: "unreadable, try an older one" — the demo went on with an older model)."""

  def __init__(self, message: str, status: int = 1):
    super().__init__(message)
    self.status = status


def _trained(workdir: str, total_steps: int) -> bool:
  """The last step's checkpoint is complete: Orbax writes a step in a temporary folder and
  renames it to the step number when done. (The metrics log reaches the last step before that
  save ends, so it cannot tell.)"""
  return os.path.isdir(os.path.join(workdir, "checkpoints", str(total_steps)))


def train_stage(name: str, config, workdir: str) -> dict:
  """Runs (or resumes) one training recipe; returns its logged curve and a summary."""
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.train import prepare  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import PREEMPTED, train  # pylint: disable=import-outside-toplevel
  if not _trained(workdir, config.total_steps):
    log(f"[{name}] training {config.total_steps} steps, batch {config.batch_size} -> {workdir}")
    prepare.resolve(config)
    prepare.validate(config, jax.device_count(), jax.process_count())
    status = train(config, workdir)
    if status not in (0, PREEMPTED):
      raise StageStopped(f"{name}: training stopped with an error (see above)")
    if status == PREEMPTED or not _trained(workdir, config.total_steps):
      raise StageStopped(f"{name}: training stopped before step {config.total_steps}; re-run "
                         "the same command to resume", PREEMPTED)
  curve = _losses(workdir)
  keys = [k for k in curve[0] if k not in ("step", "learning_rate", "steps_per_s",
                                           "tokens_per_s")]
  summary = {"steps": curve[-1]["step"], "first": {k: curve[0][k] for k in keys},
             "last": {k: curve[-1][k] for k in keys},
             "steps_per_s": float(np.median([r["steps_per_s"] for r in curve[1:]] or [0.0])),
             "curve": {k: [r[k] for r in curve] for k in ("step", "loss", "copy_reference_mse")
                       if all(k in r for r in curve)}}
  # Stage 1 starts at the copy baseline, so its batches' losses mostly differ by how much moved:
  # it falls when the loss relative to copying the reference falls.
  rel = lambda r: r["loss"] / r.get("copy_reference_mse", 1.0)  # noqa: E731
  summary["loss_fell"] = bool(rel(summary["last"]) < rel(summary["first"]))
  # (one batch each: stage 1's batches differ most in how much moved, so the ratio tells)
  extra = (f", copy-reference MSE {summary['last']['copy_reference_mse']:.4f}; relative to "
           f"copying the reference {rel(summary['first']):.3f} -> {rel(summary['last']):.3f}"
           if "copy_reference_mse" in summary["last"] else "")
  log(f"[{name}] loss {summary['first']['loss']:.4f} -> {summary['last']['loss']:.4f}{extra}")
  return summary


def export_base(p: Paths, config) -> None:
  """The base workdir's newest parameters as a checkpoint stage 1 and stage 2 start from (the
  Δ-encoder, which the base model never used, is a fresh initialisation)."""
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.models import checkpoints  # pylint: disable=import-outside-toplevel
  from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import model_config  # pylint: disable=import-outside-toplevel
  if os.path.exists(os.path.join(p.base_checkpoint, "config.json")):
    return
  cfg = model_config(config)
  params = dict(latest_params(p.base))
  params["delta_encoder"] = checkpoints.init_delta_encoder(cfg, jax.random.key(config.seed),
                                                           config.codec_size)
  tmp = p.base_checkpoint + ".tmp"
  checkpoints.save_params(tmp, params, cfg)
  os.replace(tmp, p.base_checkpoint)
