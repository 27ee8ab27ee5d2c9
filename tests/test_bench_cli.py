"""``python -m cope_jax.bench``: its help lists every benchmark; a wrong name is a usage error."""

import subprocess
import sys

from cope_jax.bench.__main__ import BENCHMARKS


def _bench(*args):
  return subprocess.run([sys.executable, "-m", "cope_jax.bench", *args], capture_output=True,
                        text=True, timeout=120, check=False)


def test_help_lists_every_benchmark_and_exits_0():
  r = _bench("--help")
  assert r.returncode == 0, r.stderr
  listed = [line.split()[0] for line in r.stdout.splitlines() if line.startswith("  ")]
  assert listed == list(BENCHMARKS)


def test_unknown_benchmark_is_a_usage_error():
  r = _bench("nonesuch")
  assert r.returncode == 2
  assert "usage: python -m cope_jax.bench" in r.stderr and "letter" in r.stderr


def test_a_benchmark_takes_its_own_help():
  r = _bench("flops", "--help")
  assert r.returncode == 0, r.stderr
  assert "--text-tokens" in r.stdout and "(default 80)" in r.stdout
