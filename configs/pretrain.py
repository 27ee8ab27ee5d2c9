"""Stage 1: pre-train the Δ-encoder against the frozen vision encoder (paper §3.3, appendix C).

  python -m cope_jax.train --config=configs/pretrain.py --workdir=/ckpt/stage1 \
      --config.data_dir=/data/shards --config.vision_checkpoint=/ckpt/stage2_init
  python -m cope_jax.train --config=configs/pretrain.py:tiny --workdir=/tmp/stage1   # CPU, minutes

The default is the paper's recipe (113 K steps, global batch 1024, AdamW, LR 6.25e-5 × 16 GPUs,
cosine, 1000 warm-up steps; the paper gives no weight decay, so none, as stage 2's LLaVA recipe —
``--config.optim.weight_decay=0.01`` is PyTorch's AdamW default); ``vision_checkpoint`` is an Orbax checkpoint from
``python -m cope_jax.convert llava-video`` (the frozen SigLIP is LLaVA-Video's own).
"""

from cope_jax.train.config_base import base, paper_scale, tiny_scale


def get_config(arg: str = ""):
  c = base()
  c.stage = "pretrain"
  c.vision_checkpoint = ""     # Orbax VideoLM checkpoint holding vision_tower ("" = random: tiny)
  if arg in ("", "paper"):
    paper_scale(c)
    c.total_steps, c.batch_size = 113_000, 1024
    c.optim.lr, c.optim.warmup_steps, c.optim.weight_decay = 6.25e-5 * 16, 1000, 0.0
    c.log_every, c.checkpoint_every = 50, 1000
  elif arg == "tiny":
    tiny_scale(c)
    c.total_steps, c.batch_size = 200, 16
    c.optim.lr, c.optim.warmup_steps = 2e-3, 20
  else:
    raise ValueError(f"unknown variant {arg!r} (use :tiny or the default paper recipe)")
  return c
