"""Keys every recipe has; the recipes in configs/ start from ``base()``."""

from __future__ import annotations

import ml_collections


def base() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.stage = ""                 # "pretrain" (stage 1) or "finetune" (stage 2)
  c.total_steps = 1000
  c.log_every = 10
  c.checkpoint_every = 100
  c.keep_checkpoints = 3
  c.seed = 0
  c.batch_size = 8             # global, over all hosts and devices
  c.grad_accum_steps = 1
  c.mesh = ml_collections.ConfigDict({"data": -1, "fsdp": 1, "tensor": 1})  # -1: the rest
  c.distributed = False        # jax.distributed.initialize (also when COPE_DISTRIBUTED=1)
  c.profile_steps = ""         # e.g. "5:8": jax.profiler trace of steps 5 to 8 (as logged) in WORKDIR/profile

  c.model = ml_collections.ConfigDict()
  c.model.preset = "tiny"      # cope_jax.models.presets: tiny | small | 1.5b | paper
  c.model.delta = ""           # Δ-encoder preset ("" = same as preset; "compact" < 15 M; "demo")
  c.model.dtype = "float32"    # compute dtype; parameters stay float32
  c.model.remat = False
  c.model.scan = True          # scanned layers (compile once); False only for FLOP counting
  c.model.attention_chunk = 0  # LLM queries per attention block (0 = all; bounds the scores)
  c.model.loss_chunk = 0       # positions per block of training logits (0 = all; bounds L × vocab)

  c.optim = ml_collections.ConfigDict()
  c.optim.lr = 1e-4
  c.optim.warmup_steps = 100
  c.optim.weight_decay = 0.0
  c.optim.clip_norm = 1.0
  c.optim.b1 = 0.9
  c.optim.b2 = 0.999

  c.data_dir = ""              # the --out of `python -m cope_jax.data build` ("": generated
                               # synthetic data where synthetic.videos > 0, as :tiny sets)
  c.split = "train"
  c.codec_size = 384           # re-encoded frame side of the shards
  c.worker_count = 0           # Grain decoding processes per host
  c.read_threads = 8           # decoding threads per process (Grain runs <= prefetch_batches)
  c.prefetch_batches = 8       # batches decoded ahead per process
  c.synthetic = ml_collections.ConfigDict({"videos": 0, "seed": 0})  # videos > 0: generate
  return c


def paper_scale(c: ml_collections.ConfigDict) -> None:
  """LLaVA-Video-7B shapes with the appendix-B Δ-encoder, bf16 + remat, fully sharded params."""
  c.model.preset, c.model.delta = "paper", "paper"
  c.model.dtype, c.model.remat = "bfloat16", True
  # 32K-token sequences: 1024 queries per block keep the scores at 1024 × 32K per head (the
  # whole matrix would need 285 GB of temporaries per TPU v4 chip; see the AOT table).
  c.model.attention_chunk = 1024
  c.model.loss_chunk = 1024    # the whole (32K, 152K) logits are 20 GB per sequence in float32
  c.mesh.fsdp, c.mesh.data = -1, 1
  c.worker_count = 8


def tiny_scale(c: ml_collections.ConfigDict) -> None:
  """The CPU recipe: tiny models on the embedded synthetic data (made and cached on first use)."""
  c.model.preset = "tiny"
  c.log_every, c.checkpoint_every = 10, 50
  c.codec_size = 64
  c.synthetic.videos, c.synthetic.seed = 120, 0
  # Attention in blocks of 128 queries, in causal groups (qwen2.attend): on a 2-core CPU the
  # demo's stage-2 step (640 positions) ran 1.4× and its base-model step (1024) 1.7× faster.
  c.model.attention_chunk = 128
  # Two decoding threads, four batches ahead: with Grain's 16 threads and 500 elements ahead the
  # demo's train steps compiled 1.4–2.7× slower (decoding batches no step would use).
  c.read_threads, c.prefetch_batches = 2, 4
