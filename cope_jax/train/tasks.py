"""What each stage trains: parameters (trained / frozen), loss, data and pretrained weights."""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax

from cope_jax.codec.errors import ConfigError, one_line
from cope_jax.data.pipeline import (PipelineConfig, finetune_dataset, pad_to_length,
                                    pretrain_dataset)
from cope_jax.models import presets
from cope_jax.models.delta_encoder import Stage1Predictor, patchwise_mse
from cope_jax.models.layers import length_blocks
from cope_jax.models.llava import VideoLM, init_inputs, spliced_targets
from cope_jax.models.siglip import Siglip


def _read_checkpoint(key: str, read, path: str):
  """``read(path)``, or a ConfigError naming the setting in one line: the folder exists
  (``check_inputs``), but Orbax fails on a wrong or damaged one in many ways."""
  try:
    return read(path)
  except Exception as e:  # pylint: disable=broad-except
    raise ConfigError(f"--config.{key}={path}: not a readable checkpoint ({type(e).__name__}: "
                      f"{one_line(e)[:300]})") from None


# How a model runs, not what it computes: a checkpoint may differ from the recipe in these.
RUNTIME_FIELDS = {"dtype", "remat", "scan", "attention_chunk"}


def model_differences(recipe, other, parts: tuple[str, ...],
                      may_differ=RUNTIME_FIELDS) -> list[tuple[str, object, object]]:
  """(``part.field``, the recipe's value, the other's) where two VideoLMConfigs' ``parts``
  differ, but for the fields in ``may_differ``."""
  return [(f"{part}.{f.name}", getattr(getattr(recipe, part), f.name),
           getattr(getattr(other, part), f.name))
          for part in parts for f in dataclasses.fields(getattr(recipe, part))
          if f.name not in may_differ
          and getattr(getattr(recipe, part), f.name) != getattr(getattr(other, part), f.name)]


def check_same_model(key: str, path: str, recipe, checkpoint, parts: tuple[str, ...]) -> None:
  """ConfigError unless the checkpoint's config (its config.json) describes the recipe's model
  in ``parts``: only shapes are checked when the weights are placed, and a Qwen2 of the same
  shapes with another rope_theta or rms_eps would train and answer as another model."""
  differ = [f"{name} {theirs!r} (the recipe: {ours!r})"
            for name, ours, theirs in model_differences(recipe, checkpoint, parts)]
  if differ:
    vocab = recipe.llm.vocab_size if "llm" in parts else None
    hint = (f"convert it again with --vocab-size {vocab} (llava-hf pads the vocabulary)"
            if len(differ) == 1 and vocab and checkpoint.llm.vocab_size > vocab
            else "choose the --config.model.preset it was converted for")
    raise ConfigError(f"--config.{key}={path}: its model is not the recipe's: {'; '.join(differ)}"
                      f" — {hint}")


def model_config(config):
  return presets.video_lm(config.model.preset, config.model.delta or None,
                          dtype=jnp.dtype(config.model.dtype), remat=config.model.remat,
                          scan=config.model.get("scan", True),
                          attention_chunk=config.model.get("attention_chunk", 0))


def _pipeline(config, shards: str, shard_index: int, shard_count: int, **extra):
  return PipelineConfig(shards=shards, split=config.split,
                        batch_size=config.batch_size // shard_count, seed=config.seed,
                        shard_index=shard_index, shard_count=shard_count,
                        worker_count=config.worker_count, read_threads=config.read_threads,
                        prefetch_batches=config.prefetch_batches, **extra)


class PretrainTask:
  """Stage 1: frozen SigLIP; Δ-encoder + reference + warped transformers, patch-wise MSE."""
  stage = "pretrain"
  loss_weight = None  # every micro-batch has the same number of patches
  model_parts = ("vision", "delta")  # (the model config's LLM is not used)

  def __init__(self, config, shards: str):
    self.config, self.shards = config, shards
    self.cfg = model_config(config)
    self.vision = Siglip(self.cfg.vision)
    self.predictor = Stage1Predictor(self.cfg.delta)

  def init_params(self, rng):
    s, c = self.cfg.vision.image_size, self.config.codec_size
    vision = self.vision.init(rng, jnp.zeros((1, s, s, 3)))["params"]
    tokens = jnp.zeros((1, self.cfg.vision.num_patches, self.cfg.vision.hidden_size))
    trained = self.predictor.init(rng, tokens, jnp.zeros((1, c, c, 2)),
                                  jnp.zeros((1, c, c, 3), jnp.int16))["params"]
    return dict(trained), {"vision_tower": vision}

  def trained_parts(self, trained) -> dict[str, float]:
    return {k: self.config.optim.lr for k in trained}

  def source(self, part: str) -> str:
    """The setting that loads ``part`` (for messages)."""
    del part  # (only the vision tower is loaded)
    return f"--config.vision_checkpoint={self.config.vision_checkpoint}"

  def pretrained(self) -> tuple[dict, dict, str]:
    """(trained overrides, frozen overrides, message)."""
    path = self.config.vision_checkpoint
    if not path:
      return {}, {}, ("no vision_checkpoint: the frozen vision encoder is RANDOM (fine for :tiny "
                      "smoke runs; real runs use the converted LLaVA-Video SigLIP)")
    from cope_jax.models.checkpoints import load_params  # pylint: disable=import-outside-toplevel
    def read(p):
      params, cfg = load_params(p)
      return params["vision_tower"], cfg
    vision, cfg = _read_checkpoint("vision_checkpoint", read, path)
    check_same_model("vision_checkpoint", path, self.cfg, cfg, ("vision",))
    return {}, {"vision_tower": vision}, f"vision encoder from {path}"

  def loss(self, trained, frozen, batch):
    vis = lambda x: jax.lax.stop_gradient(  # noqa: E731
        self.vision.apply({"params": frozen["vision_tower"]}, x)[0].astype(jnp.float32))
    previous, target = vis(batch["reference"]), vis(batch["target"])
    pred, _ = self.predictor.apply({"params": trained}, previous, batch["mv"], batch["residual"])
    loss = patchwise_mse(pred, target).mean()
    cos = optax.cosine_similarity(pred, target, epsilon=1e-6).mean()
    return loss, {"loss": loss, "cosine_to_target": cos,
                  "copy_reference_mse": patchwise_mse(previous, target).mean()}

  def dataset(self, shard_index: int, shard_count: int):
    return pretrain_dataset(_pipeline(self.config, self.shards, shard_index,
                                      shard_count, image_size=self.cfg.vision.image_size))

  def tokens(self, batch) -> int:
    return int(batch["reference"].shape[0]) * self.cfg.vision.num_patches

  def common_shapes(self, local: dict) -> dict:
    return local  # frame pairs: one shape on every host


def trained_part_names(trainable) -> set[str]:
  """Stage 2's trained parts: those of ``trainable`` (its rates by part) with a rate (0 freezes a
  part from the command line, ``--config.trainable.vision_tower=0``: the recipe's keys cannot be
  removed there)."""
  return {k for k, rate in trainable.items() if rate > 0}


class FinetuneTask:
  """Stage 2: the VideoLM, next-token loss on the answers; trained parts from the config."""
  stage = "finetune"
  loss_weight = "answer_tokens"  # the loss is a mean over them (see loop._accumulated)

  def __init__(self, config, shards: str):
    self.config, self.shards = config, shards
    self.cfg = model_config(config)
    self.model = VideoLM(self.cfg)
    self._told_padding = False
    # (a model trained on RGB frames only neither runs nor trains its Δ-encoder)
    self.model_parts = ("vision", "llm") + (
        ("delta",) if config.max_delta_frames or "delta_encoder" in trained_part_names(
            config.trainable) else ())

  def init_params(self, rng):
    c = self.config
    # At least one Δ-frame, so that every recipe's parameters hold a Δ-encoder (a base model
    # trained on RGB frames only, max_delta_frames=0, has the same tree as stage 2).
    params = self.model.init(rng, *init_inputs(self.cfg, c.codec_size, c.max_keyframes,
                                               max(1, c.max_delta_frames)))["params"]
    parts = trained_part_names(self.config.trainable)
    return ({k: v for k, v in params.items() if k in parts},
            {k: v for k, v in params.items() if k not in parts})

  def trained_parts(self, trained) -> dict[str, float]:
    return {k: float(self.config.trainable[k]) for k in trained}

  def source(self, part: str) -> str:
    """The setting that loads ``part`` (for messages)."""
    key = "stage1_checkpoint" if part == "delta_encoder" else "init_checkpoint"
    return f"--config.{key}={self.config.get(key)}"

  def pretrained(self) -> tuple[dict, dict, str]:
    from cope_jax.models.checkpoints import load_params  # pylint: disable=import-outside-toplevel
    loaded, notes = {}, []
    if self.config.init_checkpoint:
      params, cfg = _read_checkpoint("init_checkpoint", load_params, self.config.init_checkpoint)
      check_same_model("init_checkpoint", self.config.init_checkpoint, self.cfg, cfg,
                       ("vision", "llm"))
      loaded.update({k: v for k, v in params.items() if k != "delta_encoder"})
      notes.append(f"vision, projector, LLM from {self.config.init_checkpoint}")
    else:
      notes.append("no init_checkpoint: vision, projector and LLM start RANDOM (fine for :tiny)")
    if self.config.stage1_checkpoint:
      from cope_jax.train.checkpointing import latest_params  # pylint: disable=import-outside-toplevel
      loaded["delta_encoder"] = _read_checkpoint(
          "stage1_checkpoint", lambda p: latest_params(p)["delta_encoder"],
          self.config.stage1_checkpoint)
      notes.append(f"Δ-encoder from stage 1 at {self.config.stage1_checkpoint}")
    elif "delta" in self.model_parts:  # (an RGB-only model neither runs nor trains one)
      notes.append("no stage1_checkpoint: the Δ-encoder starts from RANDOM weights")
    parts = trained_part_names(self.config.trainable)
    return ({k: v for k, v in loaded.items() if k in parts},
            {k: v for k, v in loaded.items() if k not in parts}, "; ".join(notes))

  def loss(self, trained, frozen, batch):
    variables = {"params": {**trained, **frozen}}
    _, aux = self.model.apply(variables, batch["input_ids"], batch["text_mask"], batch["pixels"],
                              batch["mv"], batch["residual"], batch["kinds"], with_logits=False)
    targets, weights = spliced_targets(batch["input_ids"], batch["loss_mask"], aux["text_index"])
    head = lambda h: self.model.apply(variables, h, method=VideoLM.lm_head)  # noqa: E731
    ce_sum, correct = blocked_cross_entropy(head, aux["hidden"], targets, weights,
                                            self.config.model.get("loss_chunk", 0))
    n = jnp.maximum(weights.sum(), 1)
    loss = ce_sum / n
    return loss, {"loss": loss, "answer_token_accuracy": correct / n,
                  "answer_tokens": weights.sum().astype(jnp.float32)}

  def dataset(self, shard_index: int, shard_count: int):
    c = self.config
    return finetune_dataset(_pipeline(
        c, self.shards, shard_index, shard_count, image_size=self.cfg.vision.image_size,
        tokenizer=c.tokenizer, max_keyframes=c.max_keyframes, max_delta_frames=c.max_delta_frames,
        length_buckets=tuple(c.length_buckets), group_by_length=c.group_by_length,
        keyframe_tokens=self.cfg.keyframe_tokens,
        delta_tokens=self.cfg.delta_tokens))

  def tokens(self, batch) -> int:
    return int(np.prod(batch["input_ids"].shape))

  def common_shapes(self, local: dict) -> dict:
    """Each host picks its batch's length bucket from its own examples, and a global array needs
    one shape: every host pads to the longest among them."""
    from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
    length = int(np.max(multihost_utils.process_allgather(
        np.int32(local["input_ids"].shape[1]))))
    own = local["input_ids"].shape[1]
    if length == own:
      return local
    if not self._told_padding:  # once per run: the steps that pad run at the longer length
      print(f"padded this host's batch from {own} to {length} "
            "positions, another host's longest bucket (later paddings not printed)", flush=True)
      self._told_padding = True
    return pad_to_length(local, length, self.pad_id)

  @functools.cached_property
  def pad_id(self) -> int:
    from tokenizers import Tokenizer  # pylint: disable=import-outside-toplevel
    return Tokenizer.from_file(self.config.tokenizer).token_to_id("<|endoftext|>")


def blocked_cross_entropy(head, hidden, targets, weights, block: int = 0):
  """Summed next-token cross-entropy and correct count over weighted positions, with the
  (B, L, vocab) logits made ``block`` positions at a time (0 = all at once) and rematerialised:
  at 32K tokens and Qwen2's 152K vocabulary the whole matrix is 20 GB per sequence in float32."""
  def one(args):
    h, t, w = args
    logits = head(h)
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, t)
    # "The target is the argmax" as its logit reaching the max: XLA:CPU runs argmax's
    # (value, index) reduction ~2% of the demo's stage-2 step (only a tie counts differently).
    top = jnp.take_along_axis(logits, t[..., None], axis=-1)[..., 0] >= logits.max(-1)
    return jnp.where(w, ce, 0).sum(), jnp.where(w, top, False).sum()

  if not block or hidden.shape[1] <= block:
    return one((hidden, targets, weights))
  # Zero padding: padded positions have weight 0.
  ce, correct = jax.lax.map(jax.checkpoint(one), tuple(
      length_blocks(a, block) for a in (hidden, targets, weights)))
  return ce.sum(), correct.sum()


TASKS = {"pretrain": PretrainTask, "finetune": FinetuneTask}


