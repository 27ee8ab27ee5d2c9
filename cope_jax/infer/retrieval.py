"""Next-frame retrieval (paper H.6): find frame t among all of a video's frames.

Query (ours): the stage-1 model's prediction of frame t's vision tokens from frame t−1's tokens
and the codec primitives to t. Query (baseline): frame t−1's own vision tokens (RGB only).
Database: the vision tokens of every sampled frame of the video except t−1. Embeddings are the
mean over tokens; similarity is cosine; Recall@k is the share of a video's queries whose frame t
ranks in the top k, averaged over the videos (each video counts alike, however long).

  python -m cope_jax.infer.retrieval --workdir STAGE1_WORKDIR --videos a.mp4 b.mp4 …
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

from cope_jax.codec.errors import VideoError
from cope_jax.command_line import ArgumentParser, check_results_file, exit_on_sigterm
from cope_jax.json_files import read_json


def recall_at_k(queries: np.ndarray, database: np.ndarray, targets: np.ndarray,
                excluded: np.ndarray, ks=(1, 2, 5)) -> dict[str, float]:
  """queries (N, D), database (M, D), targets/excluded (N,) database indices → Recall@k.

  Candidates as similar as the target (identical frames: a still scene) share its rank: Recall@k
  is its expectation when ties are broken at random, not the target put first."""
  q = queries / np.linalg.norm(queries, axis=1, keepdims=True).clip(1e-12)
  # Identical frames must score identically for the tie rule, and a matrix product need not
  # round identical rows alike (BLAS tiles them differently): each distinct row is scored once.
  unique, inverse = np.unique(database, axis=0, return_inverse=True)
  d = unique / np.linalg.norm(unique, axis=1, keepdims=True).clip(1e-12)
  sim = (q @ d.T)[:, inverse.reshape(-1)]
  sim[np.arange(len(q)), excluded] = -np.inf  # the query frame itself is not a candidate
  target_sim = sim[np.arange(len(q)), targets][:, None]
  above = (sim > target_sim).sum(axis=1)  # 0 = best
  tied = (sim == target_sim).sum(axis=1)  # the target and the candidates tied with it
  return {f"recall@{k}": float(np.mean(np.clip((k - above) / tied, 0, 1))) for k in ks}


def stage1_config(workdir: str) -> dict:
  """The training config of a stage-1 workdir; OSError or ValueError naming what ``workdir`` is
  instead (missing, a file, not a training workdir, another stage's)."""
  needs = "retrieval needs a stage-1 (pretrain) training workdir"
  if not os.path.isdir(workdir):
    raise (NotADirectoryError if os.path.exists(workdir) else FileNotFoundError)(
        f"--workdir {workdir}: {'not a folder' if os.path.exists(workdir) else 'no such folder'}"
        f"; {needs}")
  path = os.path.join(workdir, "train_config.json")
  if not os.path.isfile(path):
    raise FileNotFoundError(f"--workdir {workdir}: no train_config.json, not a training workdir; "
                            f"{needs}")
  config = read_json(path)
  stage = config.get("stage")
  if stage != "pretrain":
    what = ("a stage-2 or base-model (finetune) workdir" if stage == "finetune" else
            f"a workdir of stage {stage!r}")
    raise ValueError(f"--workdir {workdir}: {what}; {needs} (python -m cope_jax.train "
                     "--config=configs/pretrain.py …)")
  return config


def load_stage1(workdir: str):
  """(PretrainTask, trained params, frozen params) of a stage-1 workdir."""
  config = stage1_config(workdir)
  import jax  # pylint: disable=import-outside-toplevel
  import ml_collections  # pylint: disable=import-outside-toplevel
  from cope_jax.models.checkpoints import run_initialiser  # pylint: disable=import-outside-toplevel
  from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import PretrainTask  # pylint: disable=import-outside-toplevel
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  config = ml_collections.ConfigDict(config)
  task = PretrainTask(config, shards="")
  # The frozen encoder is what training used: its checkpoint, or else the same seeded random
  # init — only then is an initialiser compiled, and only the frozen part's (the whole model's
  # took 16 s to compile on 2 cores, to be thrown away when the encoder comes from a checkpoint).
  _, frozen, _ = task.pretrained()
  if "vision_tower" not in frozen:
    init = jax.jit(lambda key: nn.meta.unbox(task.init_params(key)[1]))
    frozen = {**run_initialiser(init, jax.random.key(config.seed)), **frozen}
  return task, latest_params(workdir), frozen


class Stage1Embedder:
  """A stage-1 model's two embeddings of a video, each one jitted call over all its frames.

  Built once per evaluation: the jitted functions compile once per frame count (every video of
  a dataset with one length shares them) instead of once per video."""

  def __init__(self, task, trained, frozen):
    import jax  # pylint: disable=import-outside-toplevel
    # On the device once (checkpoints load as host numpy): not copied again by every call.
    self.task = task
    self.trained, self.vision_params = jax.device_put((trained, frozen["vision_tower"]))
    # The weights are arguments: closed over, they would be compiled in as constants.
    self._vision = jax.jit(lambda params, x: task.vision.apply({"params": params}, x)[0])
    self._predict = jax.jit(lambda params, prev, mv, res: task.predictor.apply(
        {"params": params}, prev, mv, res)[0])

  def __call__(self, video: str) -> dict[str, np.ndarray]:
    """Per sampled frame: vision-token embeddings, and the stage-1 predictions for Δ-frames."""
    from cope_jax.codec.extract import iter_video  # pylint: disable=import-outside-toplevel
    from cope_jax.data.pipeline import siglip_pixels  # pylint: disable=import-outside-toplevel
    size = self.task.cfg.vision.image_size
    frames = list(iter_video(video, size=self.task.config.codec_size, keep_rgb=True))
    rgb = [f.rgb if f.rgb is not None else f.target_rgb for f in frames]
    pixels = np.stack([siglip_pixels(r, size) for r in rgb])
    tokens = np.asarray(self._vision(self.vision_params, pixels))
    positions = np.asarray([t for t, f in enumerate(frames) if t and f.mv is not None], np.int64)
    if not len(positions):
      raise VideoError(video, "no Δ-frame after the first sampled frame: nothing to retrieve")
    preds = np.asarray(self._predict(self.trained, tokens[positions - 1],
                                     np.stack([frames[t].mv for t in positions]),
                                     np.stack([frames[t].residual for t in positions])))
    # (means in float32: a bfloat16 model's tokens summed in bfloat16 stop growing)
    return {"frames": tokens.astype(np.float32).mean(axis=1),
            "predicted": preds.astype(np.float32).mean(axis=1),
            "positions": positions}


def evaluate_videos(workdir: str, videos: list[str]) -> dict:
  """Mean Recall@k over ``videos`` of the stage-1 workdir's model (``retrieve``)."""
  return retrieve(Stage1Embedder(*load_stage1(workdir)), videos)


def retrieve(embed: Stage1Embedder, videos: list[str]) -> dict:
  """Mean Recall@k over ``videos``; an unusable video is skipped (listed with its reason), as
  ``evaluate`` skips it; VideoError if none can be used."""
  if not videos:
    raise ValueError("no videos to retrieve from")
  ours, rgb, skipped, first_error = [], [], [], None
  for video in videos:
    try:
      e = embed(video)
    except VideoError as err:
      first_error = first_error or err
      skipped.append({"video": video, "reason": err.reason})
      continue
    t = e["positions"]
    ours.append(recall_at_k(e["predicted"], e["frames"], t, t - 1))
    rgb.append(recall_at_k(e["frames"][t - 1], e["frames"], t, t - 1))
  if not ours:
    raise first_error
  mean = lambda rows: {k: float(np.mean([r[k] for r in rows])) for k in rows[0]}  # noqa: E731
  return {"cope": mean(ours), "rgb_only": mean(rgb), "videos": len(ours), "skipped": skipped}


def main(argv: list[str] | None = None) -> int:
  parser = ArgumentParser(prog="python -m cope_jax.infer.retrieval", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--workdir", required=True, help="a stage-1 workdir")
  parser.add_argument("--videos", nargs="+", required=True)
  parser.add_argument("--out", help="write the results JSON here too")
  args = parser.parse_args(argv)
  try:  # bad input: one line on stderr, exit status 2, before any work
    if args.out:
      check_results_file("--out", args.out)
      if os.path.realpath(args.out) in {os.path.realpath(v) for v in args.videos}:
        raise ValueError(f"--out {args.out} is one of --videos: the results would overwrite it")
    embed = Stage1Embedder(*load_stage1(args.workdir))
  except (ValueError, OSError) as e:  # (no checkpoint: latest_params' FileNotFoundError)
    print(f"error: {e}", file=sys.stderr)
    return 2
  try:
    results = retrieve(embed, args.videos)
  except VideoError as e:  # none of the videos usable
    print(f"error: {e}", file=sys.stderr)
    return 2
  print(json.dumps(results, indent=2))
  if args.out:
    from cope_jax.json_files import write_json  # pylint: disable=import-outside-toplevel
    write_json(args.out, results)
  return 0


if __name__ == "__main__":
  exit_on_sigterm()
  sys.exit(main())
