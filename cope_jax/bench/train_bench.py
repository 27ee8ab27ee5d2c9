"""Train-step throughput and MFU: model FLOPs from XLA's cost analysis of the same step lowered
unrolled (no scan, remat, attention or loss blocks, or accumulation), less the masked half of
the LLM's causal attention scores (MaxText's count, the bar of SPEC §8), divided by the measured
time of the real step and the devices' peak.

  python -m cope_jax.bench train --config=configs/finetune.py:tiny --steps 5
  python -m cope_jax.bench train --config=configs/finetune.py --peak-tflops 989 \\
      --config.model.preset=1.5b --config.model.delta=compact --config.batch_size=8
      # on one H100/H200 (bf16 dense peak 989 TFLOP/s); not measured yet

Batches are random arrays of the recipe's largest shapes (throughput does not depend on values),
the whole global batch on the devices at once: the paper recipe's 128 sequences of 32K tokens
with 128 frames each are 58 GiB of frames alone, so one GPU needs a smaller ``batch_size`` (8:
3.7 GiB). ``paper_scale`` sets the appendix-B Δ-encoder; the 1.5b preset pairs with ``compact``.
"""

from __future__ import annotations

import argparse
import time

from cope_jax.bench import masked_attention_flops, require_positive
from cope_jax.command_line import ArgumentParser

# bf16, dense; the first name the device kind contains wins (the PCIe and NVL parts have fewer
# SMs or lower clocks than the SXM ones)
PEAK_TFLOPS = {"H100 PCIe": 756.0, "H100 NVL": 835.0, "H200 NVL": 835.0, "H100": 989.0,
               "H200": 989.0, "A100": 312.0, "TPU v4": 275.0}


def peak_tflops(device_kind: str) -> float | None:
  """A device's dense bf16 peak by its kind (``jax.devices()[0].device_kind``), or None."""
  return next((v for k, v in PEAK_TFLOPS.items() if k in device_kind), None)


def step_flops(lowered) -> float:
  """FLOPs of a lowered computation from XLA's cost analysis. JAX asks no PJRT plugin for one
  (CUDA, TPU: ``cost_analysis`` is None there, and MFU came out negative): the same HLO is then
  counted by the CPU backend's analysis."""
  import jax  # pylint: disable=import-outside-toplevel
  cost = lowered.cost_analysis()
  if isinstance(cost, (list, tuple)):
    cost = cost[0]
  if not cost or "flops" not in cost:
    from jax._src.lib import _jax  # pylint: disable=import-outside-toplevel
    cpu = jax.local_devices(backend="cpu")[0].client
    cost = _jax.hlo_module_cost_analysis(cpu, lowered.compiler_ir("hlo").as_hlo_module())
  flops = float(cost.get("flops", 0.0))
  if flops <= 0:
    raise RuntimeError(f"XLA's cost analysis counted no FLOPs on {jax.default_backend()}")
  return flops


def main(argv: list[str] | None = None) -> None:
  parser = ArgumentParser(prog="python -m cope_jax.bench train", description=__doc__,
                          formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument("--config", required=True, help="configs/…py[:VARIANT]")
  parser.add_argument("--steps", type=int, default=5)
  parser.add_argument("--peak-tflops", type=float, default=None,
                      help="per-device peak, TFLOP/s (default: by device kind, if known)")
  args, overrides = parser.parse_known_args(argv)
  require_positive(parser, args, "--steps", "--peak-tflops")
  import jax  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from absl import flags  # pylint: disable=import-outside-toplevel
  from cope_jax.models.sharding import make_mesh  # pylint: disable=import-outside-toplevel
  from cope_jax.train.aot import abstract_batch  # pylint: disable=import-outside-toplevel
  from cope_jax.train.loop import TrainProgram  # pylint: disable=import-outside-toplevel
  from cope_jax.train.tasks import TASKS  # pylint: disable=import-outside-toplevel
  config_flags.DEFINE_config_file("config", None, "recipe", lock_config=False)
  from cope_jax.train import prepare  # pylint: disable=import-outside-toplevel
  prepare.parse_flags([__name__, f"--config={args.config}", *overrides])
  config = flags.FLAGS.config
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  try:  # what training refuses, refused here the same way (one error line, exit 2)
    prepare.check_settings(config, jax.device_count(), jax.process_count())
    mesh = make_mesh(dict(config.mesh))
    prepare.check_batch_layout(mesh, config.batch_size)
  except ConfigError as e:
    parser.exit(2, f"error: {e}\n")
  task = TASKS[config.stage](config, shards="")
  program = TrainProgram(config, task, mesh)
  shapes = abstract_batch(config, task)
  rng = np.random.default_rng(0)
  gib = sum(np.prod(s.shape) * np.dtype(s.dtype).itemsize for s in shapes.values()) / 2**30
  print(f"random batch of the recipe's largest shapes: {gib:.3f} GiB", flush=True)
  batch = {}
  for k, s in shapes.items():  # (made in their own dtype: float64 first doubled the host's need)
    if s.dtype == np.bool_:
      batch[k] = np.ones(s.shape, bool)
    elif np.issubdtype(s.dtype, np.integer):
      batch[k] = rng.integers(0, 8, s.shape, dtype=s.dtype)
    elif s.dtype in (np.float32, np.float64):
      batch[k] = rng.standard_normal(s.shape, dtype=s.dtype)
    else:
      batch[k] = rng.standard_normal(s.shape, dtype=np.float32).astype(s.dtype)
  if "kinds" in batch:  # a valid interleaving: keyframes first, then Δ-frames
    k = config.max_keyframes
    batch["kinds"][:] = np.r_[np.zeros(k), np.ones(config.max_delta_frames)].astype(np.int32)
    batch["input_ids"][:, 3] = -200
  from cope_jax.models.sharding import batch_sharding  # pylint: disable=import-outside-toplevel
  batch = {k: jax.device_put(v, batch_sharding(program.mesh, v.ndim)) for k, v in batch.items()}
  state, frozen = program.init()
  program.compile(batch)
  # FLOPs from the same step with unrolled layers, unblocked attention and loss and the whole
  # batch at once (XLA counts the body of a scan, a lax.map or the accumulation loop only once),
  # and without remat (model FLOPs: recomputed forwards are not useful work). XLA counts the
  # attention scores whole (L²); the causal half is taken off below.
  with config.unlocked():
    config.model.scan = config.model.remat = False
    config.model.attention_chunk = config.model.loss_chunk = 0
    config.grad_accum_steps = 1
  flat = TrainProgram(config, TASKS[config.stage](config, shards=""), program.mesh)
  flops = step_flops(jax.jit(flat._step).lower(  # pylint: disable=protected-access
      flat.abstract_state, flat.abstract_frozen, shapes))
  masked = 0.0  # the masked half of the LLM's causal scores, forward and backward
  if config.stage == "finetune":
    from cope_jax.train.tasks import model_config  # pylint: disable=import-outside-toplevel
    masked = 3 * masked_attention_flops(model_config(config).llm, *shapes["input_ids"].shape)
  state, metrics = program.run(state, frozen, batch)  # warm-up
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(args.steps):
    state, metrics = program.run(state, frozen, batch)
  jax.block_until_ready(metrics)
  seconds = (time.perf_counter() - start) / args.steps
  kind = jax.devices()[0].device_kind
  peak = args.peak_tflops or peak_tflops(kind)
  achieved = (flops - masked) / seconds / jax.device_count()
  whole = flops / seconds / jax.device_count()
  print(f"{config.stage} {config.model.preset} on {jax.device_count()}× {kind}: "
        f"{seconds * 1e3:.1f} ms/step, {(flops - masked) / 1e12:.3f} TFLOP/step (XLA cost "
        f"analysis, no remat, the LLM's causal attention counted half as MaxText counts it; "
        f"{flops / 1e12:.3f} counted whole), {achieved / 1e12:.3f} TFLOP/s per device"
        + (f", MFU {achieved / (peak * 1e12):.1%} of {peak:.0f} TFLOP/s ({whole / (peak * 1e12):.1%} "
           "with attention counted whole)" if peak else
           " (no peak known for this device: pass --peak-tflops for MFU)"))
