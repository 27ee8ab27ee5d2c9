"""Ahead-of-time compile of a recipe's train step on a mesh of N devices, without data or
accelerators: prints the memory per device that XLA plans (arguments, temporaries, outputs).

  python -m cope_jax.train.aot --config=configs/finetune.py --devices=16 \\
      --config.mesh.fsdp=16 --config.mesh.data=1 --config.grad_accum_steps=8

It emulates N CPU devices (XLA_FLAGS), so the numbers are the CPU backend's plan for the same
sharded program: close to, not equal to, what a TPU or GPU compiler plans.
"""

from __future__ import annotations

import os
import sys


def abstract_batch(config, task) -> dict:
  """Global batch shapes of the largest length bucket (stage 2) or of stage-1 pairs."""
  import jax  # pylint: disable=import-outside-toplevel
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  b, c = config.batch_size, config.codec_size
  sds = lambda shape, dtype: jax.ShapeDtypeStruct(shape, dtype)  # noqa: E731
  if config.stage == "pretrain":
    s = task.cfg.vision.image_size
    return {"reference": sds((b, s, s, 3), jnp.float32), "target": sds((b, s, s, 3), jnp.float32),
            "mv": sds((b, c, c, 2), jnp.float32), "residual": sds((b, c, c, 3), jnp.int16)}
  length, s = max(config.length_buckets), config.image_size
  k, p = config.max_keyframes, config.max_delta_frames
  return {"input_ids": sds((b, length), jnp.int32), "text_mask": sds((b, length), bool),
          "loss_mask": sds((b, length), bool), "pixels": sds((b, k, s, s, 3), jnp.float32),
          "mv": sds((b, p, c, c, 2), jnp.float32), "residual": sds((b, p, c, c, 3), jnp.int16),
          "kinds": sds((b, k + p), jnp.int32), "times": sds((b, k + p), jnp.float32)}


def main(argv) -> None:
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.models.sharding import make_mesh  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import TrainProgram  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import TASKS  # pylint: disable=import-outside-toplevel
  config = flags.FLAGS.config
  task = TASKS[config.stage](config, shards="")
  program = TrainProgram(config, task, make_mesh(dict(config.mesh)))
  print(f"{config.stage} {config.model.preset}: {jax.device_count()} devices, mesh "
        f"{dict(program.mesh.shape)}, global batch {config.batch_size}, grad_accum "
        f"{config.grad_accum_steps}, dtype {config.model.dtype}, remat {config.model.remat}",
        flush=True)
  program.compile(abstract_batch(config, task))


if __name__ == "__main__":
  devices = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--devices=")), "8")
  sys.argv = [a for a in sys.argv if not a.startswith("--devices=")]
  os.environ["XLA_FLAGS"] = f"--xla_force_host_platform_device_count={devices}"
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  from absl import app, logging  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "a recipe in configs/", lock_config=True)
  logging.set_verbosity(logging.WARNING)
  app.run(main)
