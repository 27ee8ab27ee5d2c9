"""``python -m cope_jax.train.aot``: memory per device from the compiler (AOT, no accelerator),
the refusals training makes, compile-only TPU / GPU targets, and its own flags."""

import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(__file__))


def test_aot_tool_prints_memory_per_device():
  r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot", "--config=configs/finetune.py:tiny",
                      "--devices=4", "--config.mesh.fsdp=2", "--config.mesh.data=2"],
                     capture_output=True, text=True, timeout=600,
                     cwd=ROOT)
  assert r.returncode == 0, r.stderr[-3000:]
  assert "4 cpu devices" in r.stdout and "memory per device:" in r.stdout and "GiB" in r.stdout


def test_aot_tool_refuses_what_training_refuses():
  r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot", "--config=configs/finetune.py:tiny",
                      "--devices=4", "--config.batch_size=6"], capture_output=True, text=True,
                     timeout=300, cwd=ROOT)
  assert r.returncode == 2 and "error: batch_size 6 is not divisible" in r.stderr, r.stderr[-2000:]
  assert "Traceback" not in r.stderr


@pytest.mark.parametrize("args, message", [
    ([], "error: --config is required"),  # (an AttributeError traceback)
    (["--config=configs/pretrain.py:tiny", "--config.stage=finetune"],  # (a KeyError traceback)
     "error: stage 'finetune' is not this recipe's"),
])
def test_aot_without_a_recipe_or_with_another_stage_is_one_error_line(args, message):
  r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot", "--devices=2", *args],
                     capture_output=True, text=True, timeout=300, cwd=ROOT)
  assert r.returncode == 2 and r.stderr.startswith(message), r.stderr[-2000:]
  assert len(r.stderr.splitlines()) == 1



def test_aot_flags_in_either_form(monkeypatch):
  """--topology / --devices are read before absl (they decide XLA_FLAGS): both --flag=value and
  --flag value work, and the rest of the command line is left for absl."""
  from cope_jax.train.aot import _pop_flag  # pylint: disable=import-outside-toplevel
  monkeypatch.setattr(sys, "argv", ["aot", "--config=c.py", "--topology", "8xh100", "--devices=4",
                                    "--config.mesh.data=8"])
  assert _pop_flag("topology") == "8xh100" and _pop_flag("devices") == "4"
  assert sys.argv == ["aot", "--config=c.py", "--config.mesh.data=8"]
  assert _pop_flag("topology") is None
  # with one dash, as absl takes flags (``-devices=2`` was left to absl: 8 devices planned)
  monkeypatch.setattr(sys, "argv", ["aot", "-topology=v4-8", "-devices", "2", "-config=c.py"])
  assert _pop_flag("topology") == "v4-8" and _pop_flag("devices") == "2"
  assert sys.argv == ["aot", "-config=c.py"]
  # a flag without its value does not take the next flag as one (the topology "--config=…")
  monkeypatch.setattr(sys, "argv", ["aot", "--topology", "--config=c.py"])
  with pytest.raises(SystemExit) as stop:
    _pop_flag("topology")
  assert stop.value.code == 2


def _aot_refusal(capsys, topology):
  """``train.aot``'s main with ``--topology``: its exit status and stderr lines."""
  from cope_jax.train.aot import main  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as stopped:
    main([], topology)
  return stopped.value.code, capsys.readouterr().err.strip().splitlines()


def test_aot_accelerator_topologies(monkeypatch, capsys):
  """--topology: v4-N is N/2 chips (one JAX device per chip), 8xh100 one 8-GPU host; bad
  names and a missing accelerator compiler give one clear error line each, exit status 2."""
  from jax.experimental import topologies  # pylint: disable=import-outside-toplevel
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  from cope_jax.train import aot_targets  # pylint: disable=import-outside-toplevel
  devices = aot_targets.compile_only_devices
  for name, shape in aot_targets.V4_TOPOLOGIES.items():
    assert 2 * math.prod(int(n) for n in shape.split("x")) == int(name.split("-")[1])
  with pytest.raises(ConfigError, match="expected one of v4-8"):
    devices("v5e-8")
  code, err = _aot_refusal(capsys, "v5e-8")
  assert code == 2 and len(err) == 1 and err[0].startswith("error: --topology=v5e-8: expected")
  asked = {}

  def no_libtpu(**kwargs):
    asked.update(kwargs)
    raise RuntimeError("JAX TPU support not installed")
  monkeypatch.setattr(topologies, "get_topology_desc", no_libtpu)
  with pytest.raises(ConfigError, match=r"pip install '\.\[tpu\]'"):
    devices("v4-32")
  assert asked["topology_name"] == "v4:2x2x4" and asked["platform"] == "tpu"
  with pytest.raises(ConfigError, match=r"pip install '\.\[gpu\]'"):
    devices("8xh100")
  assert asked["platform"] == "cuda" and asked["topology"] == "1x1x8"
  assert "NVIDIA H100" in asked["target_config"]
  code, err = _aot_refusal(capsys, "8xh100")
  assert code == 2 and len(err) == 1 and err[0].startswith("error: --topology=8xh100 needs")
  with pytest.raises(ConfigError, match="expected one of"):
    devices("v4:2x2")


@pytest.mark.parametrize("flags,message", [
    (["--topology=v4-8", "--devices=4"], "give --topology"),
    (["--devices=0"], "--devices=0: expected a number of CPU devices to emulate from 1 to 4096"),
    (["--devices", "-3"], "--devices=-3: expected a number"),
    (["--devices=abc"], "--devices=abc: expected a number"),
    (["--devices=100000"], "--devices=100000: expected a number"),
])
def test_aot_device_flags_are_checked_before_jax_starts(flags, message):
  """One error line, exit status 2, before JAX starts (no XLA flag dump, no backend error)."""
  r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot",
                      "--config=configs/finetune.py:tiny", *flags], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 2 and r.stderr.startswith(f"error: {message}"), r.stderr[-2000:]
  assert len(r.stderr.strip().splitlines()) == 1 and not r.stdout


def test_aot_help_lists_its_flags_and_help_is_a_success():
  """(absl's --help exits with status 1: a `--help && …` step failed; the trainer's too)"""
  r = subprocess.run([sys.executable, "-m", "cope_jax.train.aot", "--help"], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  listed = r.stdout.split("\nflags:\n", 1)[1]
  for flag in ("--config:", "--devices: emulate N CPU devices", "--topology: compile for"):
    assert flag in listed, r.stdout
  assert r.returncode == 0
  r = subprocess.run([sys.executable, "-m", "cope_jax.train", "-h"], capture_output=True,
                     text=True, timeout=120, cwd=ROOT)
  assert r.returncode == 0 and "--workdir" in r.stdout, r.stderr[-2000:]
