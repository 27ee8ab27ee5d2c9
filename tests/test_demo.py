"""The README's main command, in its quick form."""

import json
import subprocess
import sys


def test_demo_quick(tmp_path):
  r = subprocess.run([sys.executable, "-m", "cope_jax.demo", "--workdir", str(tmp_path),
                      "--quick"], capture_output=True, text=True, timeout=600)
  assert r.returncode == 0, r.stderr
  results = json.loads((tmp_path / "results.json").read_text())
  codec = results["codec"]
  assert results["stages_run"] == ["codec"]
  assert codec["reconstruction_exact"] is True
  assert codec["keyframes"] == 1 and codec["delta_frames"] == 3
  assert codec["mean_abs_residual"] < 0.5 * codec["mean_abs_frame_difference"]
  assert codec["tokens_64s"]["cope_tokens"] == 2240
  assert (tmp_path / "codec.png").stat().st_size > 10_000
