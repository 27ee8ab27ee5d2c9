"""Compile-only accelerators for ``python -m cope_jax.train.aot --topology=…``: TPU v4 slices
(through libtpu) and 8-GPU H100 hosts (through the CUDA plugin), lowered from a CPU-only machine
the way MaxText's train_compile and JAX's deviceless AOT tests do."""

from __future__ import annotations

import re

from cope_jax.codec.errors import ConfigError, one_line

# TPU v4 slices by accelerator type: chips in a 3-D torus, one JAX device per chip (megacore).
V4_TOPOLOGIES = {"v4-8": "2x2x1", "v4-16": "2x2x2", "v4-32": "2x2x4", "v4-64": "2x4x4",
                 "v4-128": "4x4x4", "v4-256": "4x4x8", "v4-512": "4x8x8", "v4-1024": "8x8x8"}

# The XLA GPU compiler's description of an H100 SXM (what the CUDA plugin reads from a live
# device; the same values the JAX deviceless-AOT reports use). An H200 has the same SM 9.0
# compiler target with 141 GB: its plan is the H100's, to be read against the larger memory.
H100_TARGET = """
gpu_device_info {
  threads_per_block_limit: 1024 threads_per_warp: 32 shared_memory_per_block: 49152
  shared_memory_per_core: 233472 threads_per_core_limit: 2048 core_count: 132
  fpus_per_core: 128 block_dim_limit_x: 2147483647 block_dim_limit_y: 65535
  block_dim_limit_z: 65535 memory_bandwidth: 3352320000000 l2_cache_size: 52428800
  clock_rate_ghz: 1.98 device_memory_size: 84929347584 shared_memory_per_block_optin: 232448
  cuda_compute_capability { major: 9 } registers_per_core_limit: 65536
  registers_per_block_limit: 65536
}
platform_name: "CUDA"
dnn_version_info { major: 9 minor: 7 }
runtime_version { major: 12 minor: 8 patch: 0 }
device_description_str: "NVIDIA H100 80GB HBM3"
"""
GPU_HOSTS = {"8xh100": 8}
NAMES = ", ".join([*V4_TOPOLOGIES, *GPU_HOSTS, "v4:AxBxC"])


def compile_only_devices(name: str) -> list:
  """Devices to lower for: a TPU v4 slice (``v4-32``, ``v4:2x2x4``) or ``8xh100``; ConfigError
  for another name, or where the accelerator's compiler is not installed."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  if name in GPU_HOSTS:
    kwargs, needs = dict(platform="cuda", target_config=H100_TARGET,
                         topology=f"1x1x{GPU_HOSTS[name]}"), "pip install '.[gpu]'"
  else:
    shape = V4_TOPOLOGIES.get(name)
    if shape is None:
      match = re.fullmatch(r"v4:(\d+x\d+x\d+)", name)
      if not match:
        raise ConfigError(f"--topology={name}: expected one of {NAMES}")
      shape = match.group(1)
    kwargs, needs = dict(platform="tpu", topology_name=f"v4:{shape}",
                         chip_config_name="megacore", chips_per_host_bounds=(2, 2, 1),
                         num_slices=1), "pip install '.[tpu]'"
  try:
    return list(topologies.get_topology_desc(**kwargs).devices)
  except Exception as e:  # pylint: disable=broad-except  # a missing compiler raises several kinds
    raise ConfigError(f"--topology={name} needs the accelerator's compiler ({needs}; it runs on "
                      f"a CPU-only machine): {one_line(e)}") from e
