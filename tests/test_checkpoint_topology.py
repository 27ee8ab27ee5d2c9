"""Checkpoints load whatever devices wrote them: parameters saved sharded over 8 devices load in a
process with 3 (a pod's checkpoint on one GPU or in Colab). Orbax alone restores onto the saving
topology and refuses ("Topology mismatch")."""

import os
import subprocess
import sys

import numpy as np

SAVE = """
import sys, jax, numpy as np
from jax.sharding import NamedSharding, PartitionSpec as P
from cope_jax.models import checkpoints, presets
mesh = jax.make_mesh((8,), ("data",))
w = jax.device_put(np.arange(64, dtype=np.float32).reshape(16, 4), NamedSharding(mesh, P("data")))
checkpoints.save_params(sys.argv[1], {"llm": {"w": w}, "projector": {"b": np.ones(3, np.float32)}},
                        presets.video_lm("tiny"))
"""

LOAD = """
import sys, jax, numpy as np
from cope_jax.models import checkpoints
params, cfg = checkpoints.load_params(sys.argv[1])
assert jax.device_count() == 3
np.testing.assert_array_equal(params["llm"]["w"], np.arange(64, dtype=np.float32).reshape(16, 4))
np.testing.assert_array_equal(params["projector"]["b"], np.ones(3, np.float32))
print("loaded", type(params["llm"]["w"]).__name__, cfg.llm.hidden_size)
"""


def _run(code: str, devices: int, *args: str) -> subprocess.CompletedProcess:
  env = {**os.environ, "XLA_FLAGS": f"--xla_force_host_platform_device_count={devices}"}
  return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                        timeout=300, env=env)


def test_params_saved_on_8_devices_load_on_3(tmp_path):
  r = _run(SAVE, 8, str(tmp_path / "ckpt"))
  assert r.returncode == 0, r.stderr[-2000:]
  r = _run(LOAD, 3, str(tmp_path / "ckpt"))
  assert r.returncode == 0, r.stderr[-2000:]
  assert r.stdout.split() == ["loaded", "ndarray", "128"]
