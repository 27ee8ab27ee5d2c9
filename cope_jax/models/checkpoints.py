"""Saving and loading VideoLM parameters with Orbax (plus the config as JSON beside them)."""

from __future__ import annotations

import contextlib
import os

from absl import logging as absl_logging
import jax
import jax.numpy as jnp
import numpy as np

from cope_jax.models import config_io
from cope_jax.models.delta_encoder import DeltaEncoder
from cope_jax.models.llava import VideoLMConfig


def _delta_encoder_inputs(codec_size: int) -> tuple[jax.Array, jax.Array]:
  return (jnp.zeros((1, codec_size, codec_size, 2)),
          jnp.zeros((1, codec_size, codec_size, 3), jnp.int16))


def init_delta_encoder(cfg: VideoLMConfig, key: jax.Array, codec_size: int = 64) -> dict:
  """Fresh Δ-encoder parameters (unboxed). Their shapes do not depend on the frame size."""
  # One jitted program: run eagerly, each of init's hundreds of operations compiled on its own
  # (24 s for the demo's Δ-encoder on a 2-core CPU; 4 s jitted, unoptimised).
  params = run_initialiser(jax.jit(DeltaEncoder(cfg.delta).init), key,
                           *_delta_encoder_inputs(codec_size))["params"]
  return jax.tree_util.tree_map(np.asarray, unbox(params))


def zero_delta_encoder(cfg: VideoLMConfig) -> dict:
  """Δ-encoder parameters of the right shapes, all zero, for a model that never runs it (one
  trained on RGB frames only): shapes from ``eval_shape``, nothing compiled."""
  shapes = jax.eval_shape(DeltaEncoder(cfg.delta).init, jax.random.key(0),
                          *_delta_encoder_inputs(16))["params"]
  return jax.tree_util.tree_map(lambda s: np.zeros(s.shape, s.dtype), unbox(shapes))


def run_initialiser(jitted, *args):
  """Compiles and runs a jitted parameter initialiser. It runs once: on a CPU, LLVM's
  optimisation of its many small kernels costs more than it saves (the demo's base recipe,
  19 → 9 s on 2 cores; values differ from an optimised build by float rounding only)."""
  options = {"xla_backend_optimization_level": 0} if jax.default_backend() == "cpu" else None
  return jitted.lower(*args).compile(options)(*args)


def unbox(tree):
  """Strips Flax's logical-partitioning boxes, leaving plain arrays."""
  import flax.linen as nn  # pylint: disable=import-outside-toplevel
  return nn.meta.unbox(tree)


@contextlib.contextmanager
def _numpy_arrays_written_in_place():
  """Orbax copies each numpy array before writing it (a converted 7B's 30 GB: about 2× that on
  top of the model at the save's peak); nothing changes them while this save runs."""
  from orbax.checkpoint import type_handlers  # pylint: disable=import-outside-toplevel
  default = type_handlers.get_type_handler(np.ndarray)
  with orbax_warnings_muted():  # ("overriding np.ndarray")
    type_handlers.register_type_handler(
        np.ndarray, type_handlers.NumpyHandler(deepcopy_host_arrays=False), override=True)
  try:
    yield
  finally:
    with orbax_warnings_muted():
      type_handlers.register_type_handler(np.ndarray, default, override=True)


def save_params(directory: str, params: dict, cfg: VideoLMConfig) -> None:
  """Writes ``params`` and ``config.json`` into ``directory`` together: both go to a folder
  beside it that then takes its place, so an interrupted write leaves the earlier checkpoint
  whole (new weights with the old config.json were another model)."""
  import shutil  # pylint: disable=import-outside-toplevel
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(directory)
  os.makedirs(os.path.dirname(directory) or ".", exist_ok=True)
  tmp, old = f"{directory}.tmp{os.getpid()}", f"{directory}.old{os.getpid()}"
  try:
    with ocp.StandardCheckpointer() as ckpt, _numpy_arrays_written_in_place():
      ckpt.save(os.path.join(tmp, "params"), params, force=True)
    config_io.save(cfg, os.path.join(tmp, "config.json"))
    if os.path.exists(directory):
      os.rename(directory, old)
    os.rename(tmp, directory)
  finally:
    shutil.rmtree(tmp, ignore_errors=True)
    shutil.rmtree(old, ignore_errors=True)


def host_target(metadata):
  """A restore target for a checkpoint's metadata tree: every array read into host memory as
  numpy, whatever devices saved it. Without one, Orbax restores onto the saving topology, and a
  checkpoint written on 8 devices (or a pod slice) does not load in a one-device process.
  (``np.zeros`` takes no memory until written, and Orbax does not write into it.)"""
  return jax.tree_util.tree_map(lambda m: np.zeros(m.shape, m.dtype), metadata)


@contextlib.contextmanager
def orbax_warnings_muted():
  """Orbax logs a warning for choices made on purpose (a handler override, a read-only folder)
  and before its own errors (a missing folder: two warnings, then the error)."""
  verbosity = absl_logging.get_verbosity()
  absl_logging.set_verbosity(absl_logging.ERROR)
  try:
    yield
  finally:
    absl_logging.set_verbosity(verbosity)


def load_params(directory: str) -> tuple[dict, VideoLMConfig]:
  """A converted or exported checkpoint's parameters (numpy, see ``host_target``) and config;
  FileNotFoundError naming what is missing."""
  import orbax.checkpoint as ocp  # pylint: disable=import-outside-toplevel
  directory = os.path.abspath(directory)
  path = os.path.join(directory, "params")
  for part in (path, os.path.join(directory, "config.json")):
    if not os.path.exists(part):
      raise FileNotFoundError(
          f"{directory}: " + ("no such folder" if not os.path.isdir(directory) else
                              f"no {os.path.basename(part)} in it (not a converted or exported "
                              "checkpoint, or an unfinished copy of one)"))
  with orbax_warnings_muted(), ocp.StandardCheckpointer() as ckpt:
    params = ckpt.restore(path, host_target(ckpt.metadata(path).item_metadata))
  return params, config_io.load(os.path.join(directory, "config.json"))
