"""Stage 2: fine-tune the VideoLM on interleaved keyframe and Δ-tokens (paper §3.3, §4.1,
appendix C).

  python -m cope_jax.train --config=configs/finetune.py --workdir=/ckpt/stage2 \
      --config.data_dir=/data/shards --config.init_checkpoint=/ckpt/stage2_init \
      --config.stage1_checkpoint=/ckpt/stage1
  python -m cope_jax.train --config=configs/finetune.py:tiny --workdir=/tmp/stage2   # CPU, minutes

The default is the paper's recipe: LR 1e-5, global batch 128, 10.9 K steps, K = 4 keyframes +
4 Δ-frames per GOP, other hyper-parameters as LLaVA-Video (AdamW, cosine, 3 % warm-up, no
weight decay, vision tower at LR 2e-6). ``init_checkpoint`` comes from
``python -m cope_jax.convert llava-video``; ``stage1_checkpoint`` is a stage-1 workdir.

Meshes per machine and their memory per device (AOT, ``python -m cope_jax.train.aot
--topology=8xh100|v4-32|…``): README, "Launching on TPU pods and GPU hosts". 8×H100: fsdp 8, 16
accumulation steps, 61 GiB; TPU v4: a v4-128 with fsdp 64 and 16K-token sequences, 25 GiB.
"""

import ml_collections

from cope_jax.train.config_base import base, paper_scale, tiny_scale


def get_config(arg: str = ""):
  c = base()
  c.stage = "finetune"
  c.init_checkpoint = ""       # Orbax VideoLM checkpoint (vision, projector, LLM, newline)
  c.stage1_checkpoint = ""     # a stage-1 workdir: its Δ-encoder ("" = random, said at start)
  # Trained parts and their learning rates (LLaVA's mm_tunable_parts); the rest is frozen.
  c.trainable = ml_collections.ConfigDict({"delta_encoder": 1e-5, "projector": 1e-5,
                                           "llm": 1e-5, "image_newline": 1e-5,
                                           "vision_tower": 2e-6})
  c.optim.lr = 0.0  # stage 1's rate: stage 2's are the trainable parts' (refused if set)
  # tokenizer.json; "" = DATA_DIR/synthetic/tokenizer.json for the tiny preset where it exists,
  # else Qwen2's (validation checks that its ids fit the LLM's vocabulary)
  c.tokenizer = ""
  # Padded frame counts per video: 32 GOPs × (K = 4 keyframes + 4 Δ-frames) = 28,160 visual
  # tokens, which fits the 32,768-token context with the text (build with --max-gops 32).
  c.max_keyframes = 32 * 4
  c.max_delta_frames = 32 * 4
  # The keyframes per GOP the shards were built with (data build --keyframes-per-gop): shards of
  # another K are refused (the build's default is 1). 0 takes the shards' own.
  c.keyframes_per_gop = 4
  c.length_buckets = (8192, 16384, 32768)
  # > 0: batches of conversations of similar length (sorted within windows of this many global
  # batches), so short ones are not padded to the longest bucket. Off here: the padded frames
  # (28,160 tokens) put every paper-recipe batch in the 32K bucket anyway.
  c.group_by_length = 0
  if arg in ("", "paper"):
    paper_scale(c)
    c.total_steps, c.batch_size = 10_900, 128
    c.optim.warmup_steps, c.optim.weight_decay = 327, 0.0  # the rates: c.trainable
    c.log_every, c.checkpoint_every = 10, 500
  elif arg == "tiny":
    tiny_scale(c)
    c.total_steps, c.batch_size = 200, 8
    c.optim.warmup_steps = 20
    c.trainable = ml_collections.ConfigDict({k: 2e-3 for k in c.trainable})
    # K = 1, as in the paper's appendix H ablations; every part at one rate (trained from scratch)
    c.max_keyframes, c.max_delta_frames, c.keyframes_per_gop = 1, 7, 1
    c.length_buckets = (256, 384, 512)
  else:
    raise ValueError(f"unknown variant {arg!r} (use :tiny or the default paper recipe)")
  return c
