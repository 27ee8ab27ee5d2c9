"""Ahead-of-time compile of a recipe's train step on a mesh, without data or accelerators: prints
the memory per device that XLA plans (arguments, temporaries, outputs).

  # a TPU v4 slice, by the TPU compiler on this CPU (needs libtpu: pip install '.[tpu]')
  python -m cope_jax.train.aot --config=configs/finetune.py --topology=v4-32 \\
      --config.mesh.fsdp=16 --config.mesh.data=1 --config.grad_accum_steps=8
  # one 8×H100 host, by the CUDA compiler on this CPU (needs pip install '.[gpu]')
  python -m cope_jax.train.aot --config=configs/pretrain.py --topology=8xh100 --config.mesh.data=8
  # N emulated CPU devices (no extra install; the CPU backend's plan, not an accelerator's)
  python -m cope_jax.train.aot --config=configs/finetune.py --devices=16 --config.mesh.fsdp=16

``--topology``: v4-8, v4-16, v4-32, v4-64, v4-128, v4-256, v4-512, v4-1024, v4:AxBxC (a TPU v4
slice, one device per chip) or 8xh100 (one 8-GPU host; an H200 plans the same). The step is
lowered for compile-only devices (``aot_targets``), so the figures are that accelerator
compiler's plan (both flags are read with one dash too, as absl reads flags). ``--devices``
emulates N CPU devices (XLA_FLAGS):
the same sharded program, but CPU XLA's plan.
"""

from __future__ import annotations

import os
import sys
from typing import NoReturn

from cope_jax.train import aot_targets

# XLA:CPU took 11 s to create 4096 emulated devices on 2 cores, and over 200 s for 16384.
MAX_CPU_DEVICES = 4096


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
  length, s = max(config.length_buckets), task.cfg.vision.image_size
  k, p = config.max_keyframes, config.max_delta_frames
  return {"input_ids": sds((b, length), jnp.int32), "text_mask": sds((b, length), bool),
          "loss_mask": sds((b, length), bool), "pixels": sds((b, k, s, s, 3), jnp.float32),
          "mv": sds((b, p, c, c, 2), jnp.float32), "residual": sds((b, p, c, c, 3), jnp.int16),
          "kinds": sds((b, k + p), jnp.int32), "times": sds((b, k + p), jnp.float32)}


def main(argv, topology: str | None = None) -> None:
  del argv
  from absl import flags  # pylint: disable=import-outside-toplevel
  import jax  # pylint: disable=import-outside-toplevel
  from cope_jax.models.sharding import make_mesh  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.train import prepare  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import TrainProgram  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import TASKS  # pylint: disable=import-outside-toplevel
  try:  # what training would refuse is not worth a memory plan
    devices = (aot_targets.compile_only_devices(topology) if topology is not None else
               jax.devices())
    config = flags.FLAGS.config
    if config is None:
      raise ConfigError("--config is required: a recipe, e.g. --config=configs/finetune.py "
                        "(see --help)")
    hosts = len({getattr(d, "process_index", 0) for d in devices})
    prepare.check_settings(config, len(devices), hosts)
    task = TASKS[config.stage](config, shards="")
    mesh = make_mesh(dict(config.mesh), devices)
    prepare.check_batch_layout(mesh, config.batch_size)
    program = TrainProgram(config, task, mesh)
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None
  print(f"{config.stage} {config.model.preset}: {len(devices)} {devices[0].device_kind} devices"
        f"{f' ({topology})' if topology is not None else ''}, mesh {dict(program.mesh.shape)}, "
        f"global batch {config.batch_size}, grad_accum {config.grad_accum_steps}, dtype "
        f"{config.model.dtype}, remat {config.model.remat}", flush=True)
  program.compile(abstract_batch(config, task))


def _pop_flag(name: str) -> str | None:
  """``--name=value`` or ``--name value`` (or with one dash, as absl takes them), taken out of
  sys.argv before absl parses the rest (it must be read before JAX starts: it decides
  XLA_FLAGS; ``-devices=2``, left to absl, planned on 8 devices without a word)."""
  args, value, rest = sys.argv[1:], None, []
  while args:
    a = args.pop(0)
    if a.startswith((f"--{name}=", f"-{name}=")):
      value = a.split("=", 1)[1]
    elif a in (f"--{name}", f"-{name}"):
      # (not the next flag taken as its value; "-3" is a value, refused as such below)
      if not args or (args[0].startswith("-") and args[0].lstrip("-")[:1].isalpha()):
        _refuse(f"--{name} needs a value: --{name}=VALUE")
      value = args.pop(0)
    else:
      rest.append(a)
  sys.argv = sys.argv[:1] + rest
  return value


def _refuse(message: str) -> NoReturn:
  print(f"error: {message}", file=sys.stderr)
  sys.exit(2)


def _device_flags() -> tuple[str | None, int]:
  """``--topology`` (None when not given) and ``--devices`` (8 when not given), taken out of
  sys.argv and checked before JAX starts."""
  topology, devices = _pop_flag("topology"), _pop_flag("devices")
  if topology is not None and devices is not None:
    _refuse("give --topology (an accelerator's compiler) or --devices (CPU), not both")
  if devices is None:
    return topology, 8
  try:
    count = int(devices)
  except ValueError:
    count = 0
  if not 1 <= count <= MAX_CPU_DEVICES:
    _refuse(f"--devices={devices}: expected a number of CPU devices to emulate from 1 to "
            f"{MAX_CPU_DEVICES}")
  return topology, count


if __name__ == "__main__":
  topology_flag, devices_count = _device_flags()
  if topology_flag is None:  # (the user's other XLA flags kept; an earlier device count replaced)
    kept = [f for f in os.environ.get("XLA_FLAGS", "").split()
            if not f.startswith("--xla_force_host_platform_device_count")]
    os.environ["XLA_FLAGS"] = " ".join(
        kept + [f"--xla_force_host_platform_device_count={devices_count}"])
  elif topology_flag in aot_targets.GPU_HOSTS:
    # Without a device the GPU compiler cannot autotune Triton GEMM tiles (it fails on the small
    # sharded matrices): plan with cuBLAS GEMMs, which changes kernels, not buffers.
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_gpu_enable_triton_gemm=false").strip()
  # The step is traced on the CPU backend either way; accelerator devices are compile-only
  # (JAX_PLATFORMS=cpu also keeps the CUDA plugin from looking for a driver).
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  os.environ.setdefault("TPU_ACCELERATOR_TYPE", "v4-8")  # quiets libtpu's host probing
  os.environ.setdefault("TPU_WORKER_HOSTNAMES", "localhost")
  from absl import app, flags, logging  # pylint: disable=ungrouped-imports
  from ml_collections import config_flags
  config_flags.DEFINE_config_file("config", None, "a recipe in configs/", lock_config=True)
  # Read (and taken out of the command line) above, before JAX starts: defined here for --help.
  flags.DEFINE_string("topology", None, "compile for an accelerator's compile-only devices: "
                      f"{aot_targets.NAMES} (needs its compiler; see above)")
  flags.DEFINE_integer("devices", 8, "emulate N CPU devices instead (1 to "
                       f"{MAX_CPU_DEVICES}; not with --topology)")
  logging.set_verbosity(logging.WARNING)
  from cope_jax.train.prepare import parse_flags  # pylint: disable=ungrouped-imports
  app.run(lambda argv: main(argv, topology_flag), flags_parser=parse_flags)
