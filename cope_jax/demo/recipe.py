"""The demo's sizes (full and ``--quick``) and its three training recipes.

The recipes start from ``configs/finetune.py:tiny`` and ``configs/pretrain.py:tiny`` (the CPU
recipes) and change what the demo's chain needs: which shards, which checkpoints, which parts
train, how many frames and steps, the Δ-encoder (``demo``), the learning rate, batch size and
length buckets.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os

import ml_collections

import cope_jax
from cope_jax.codec.errors import ConfigError


@dataclasses.dataclass(frozen=True)
class DemoSettings:
  videos: int                 # synthetic 8 s videos (80 / 10 / 10 train / validation / test)
  base_steps: int             # base VideoLM on dense RGB frames
  stage1_steps: int
  stage2_steps: int
  codec_seconds: int          # length of the codec stage's clip
  size: int = 64              # frame side of the synthetic videos and of the codec primitives
  dense_frames: int = 20      # frames per video for the base model and the dense baseline
  batch_size: int = 8
  lr: float = 2e-3
  checkpoint_every: int = 200
  log_every: int = 25
  seed: int = 0
  min_change: float = 0.0     # adaptive fusion of the CoPE shards and the cope modes (0: fixed)

  def recorded(self) -> dict:
    """The settings a workdir records and must be resumed with. ``min_change`` only when set:
    workdirs made before it existed resume as they are."""
    return {k: v for k, v in self.__dict__.items() if k != "min_change" or v}


# The base model's steps are the expensive ones (20 frames = 400 visual tokens); stage 2 sees 90
# visual tokens and runs 2.4x faster, so most of the LLM's training happens there.
FULL = DemoSettings(videos=600, base_steps=200, stage1_steps=3000, stage2_steps=1200,
                    codec_seconds=16)
QUICK = DemoSettings(videos=16, base_steps=8, stage1_steps=8, stage2_steps=8, codec_seconds=4,
                     dense_frames=8, checkpoint_every=4, log_every=4)


# Batches of similar length, sorted within 16 batches (128 conversations, about half captions).
GROUP_BY_LENGTH = 16


class Paths:
  """Where each stage writes, under the demo's workdir."""

  def __init__(self, root: str):
    self.root = root
    self.synthetic = os.path.join(root, "data", "synthetic")
    self.tokenizer = os.path.join(self.synthetic, "tokenizer.json")
    self.dense_shards = os.path.join(root, "data", "dense")
    self.cope_shards = os.path.join(root, "data", "cope")
    self.base = os.path.join(root, "base")
    self.base_checkpoint = os.path.join(self.base, "export")
    self.stage1 = os.path.join(root, "stage1")
    self.stage2 = os.path.join(root, "stage2")
    self.evaluation = os.path.join(root, "evaluation")


def load_recipe(name: str, variant: str) -> ml_collections.ConfigDict:
  """``configs/<name>.py:<variant>`` of the source checkout this package is installed from."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(cope_jax.__file__))),
                      "configs", f"{name}.py")
  if not os.path.exists(path):
    raise ConfigError(f"{path} not found: the demo reads the recipes in configs/ of a source "
                      "checkout (pip install -e .)")
  spec = importlib.util.spec_from_file_location(f"cope_configs_{name}", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module.get_config(variant)


def _common(c: ml_collections.ConfigDict, s: DemoSettings, steps: int) -> None:
  c.total_steps, c.batch_size, c.seed = steps, s.batch_size, s.seed
  c.optim.warmup_steps = max(1, steps // 20)
  if c.stage == "pretrain":  # (a finetune recipe's rates are its trainable parts')
    c.optim.lr = s.lr
  c.log_every, c.checkpoint_every = min(s.log_every, steps), s.checkpoint_every
  c.codec_size = s.size
  c.synthetic.videos = 0  # the demo makes its own data
  # A Δ-frame cheaper than a keyframe, as in the paper (presets.DELTA["demo"]: 0.65× a tiny
  # SigLIP keyframe in FLOPs; the tiny Δ-encoder 2.3×; the paper's 0.28× a so400m keyframe).
  c.model.delta = "demo"


def base_config(s: DemoSettings, p: Paths) -> ml_collections.ConfigDict:
  """The stand-in for LLaVA-Video: SigLIP-shaped encoder, projector and Qwen2-shaped LLM trained
  from scratch on ``dense_frames`` RGB frames per video (no Δ-frames: the Δ-encoder, whose
  parameters the model still has, does not run)."""
  c = load_recipe("finetune", "tiny")
  _common(c, s, s.base_steps)
  c.data_dir, c.tokenizer = p.dense_shards, p.tokenizer
  c.max_keyframes, c.max_delta_frames = s.dense_frames, 0
  # 20 frames + a caption: 652–658 positions; + 8 questions: 730–1006. Grouped by length, the
  # captions' batches run at 672 instead of 1024.
  c.length_buckets, c.group_by_length = (672, 1024, 1152), GROUP_BY_LENGTH
  c.trainable = ml_collections.ConfigDict({k: s.lr for k in ("vision_tower", "projector", "llm",
                                                              "image_newline")})
  return c


def stage1_config(s: DemoSettings, p: Paths) -> ml_collections.ConfigDict:
  """Δ-encoder pre-training against the base model's (now frozen) vision encoder."""
  c = load_recipe("pretrain", "tiny")
  _common(c, s, s.stage1_steps)
  c.batch_size = 2 * s.batch_size  # frame pairs are small
  c.data_dir, c.vision_checkpoint = p.cope_shards, p.base_checkpoint
  return c


def stage2_config(s: DemoSettings, p: Paths) -> ml_collections.ConfigDict:
  """Fine-tuning on one keyframe + seven Δ-frames per video, from the base model and stage 1;
  the vision tower at a fifth of the learning rate (the paper's 2e-6 vs 1e-5)."""
  c = load_recipe("finetune", "tiny")
  _common(c, s, s.stage2_steps)
  c.data_dir, c.tokenizer = p.cope_shards, p.tokenizer
  c.init_checkpoint, c.stage1_checkpoint = p.base_checkpoint, p.stage1
  c.max_keyframes, c.max_delta_frames = 1, 7
  # 1 + 7 frames + a caption: 259–265 positions; + 8 questions: 337–613. Not grouped by length:
  # grouped (captions at 272, the shorter questions at 512) it ran 1.3× faster, but what the
  # Δ-tokens taught halved (README, the demo).
  c.length_buckets = (640, 768)
  c.trainable = ml_collections.ConfigDict(
      {"delta_encoder": s.lr, "projector": s.lr, "llm": s.lr, "image_newline": s.lr,
       "vision_tower": s.lr / 5})
  return c
