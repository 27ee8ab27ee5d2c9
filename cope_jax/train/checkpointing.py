"""Orbax checkpoints of the train state and the data iterator, with fallback and preemption.

``WORKDIR/checkpoints/<step>/`` holds ``state`` (step, trained parameters, optimizer state) and
``data`` (the Grain iterator state, one ``process_<i>-of-<n>.json`` per process as MaxText saves
it: each process reads its own slice of the data, so each restores its own position). Saves are
asynchronous and atomic (Orbax writes a temporary folder and renames it); the last ``keep`` are
kept. Restoring tries the newest step first and falls back to older ones, with a warning, if a
checkpoint is incomplete or corrupt (moved aside to ``WORKDIR/checkpoints_unreadable/``, since
training will write those steps again); when none restores, the run stops with an error instead
of starting over.

Replicated arrays are written by one replica per process: Orbax's default, replica-parallel
saving, splits each replicated array into one slice per device, and on the first save every
(shape, device) pair compiles its own slicing program — ~11 s of compilation for the tiny
recipe's 8 CPU devices. Across hosts the split spreads large writes, so there it stays on for
slices of at least ``REPLICA_PARALLEL_MIN_BYTES``.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import traceback
import warnings

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp

from cope_jax.codec.errors import ConfigError, one_line
from cope_jax.command_line import drop_unraisable
from cope_jax.models.checkpoints import orbax_warnings_muted

REPLICA_PARALLEL_MIN_BYTES = 16 << 20


def _use_one_replica_per_process() -> None:
  """Registers the jax.Array handler of the module docstring (Orbax keeps one global registry,
  which StandardCheckpointHandler reads)."""
  with orbax_warnings_muted():
    ocp.type_handlers.register_type_handler(
        jax.Array, ocp.type_handlers.ArrayHandler(
            use_replica_parallel=jax.process_count() > 1,
            min_slice_bytes_for_replica_parallel=REPLICA_PARALLEL_MIN_BYTES), override=True)


class Checkpointer:

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.moved_aside: list[int] = []  # the unreadable steps the last restore passed over
    _use_one_replica_per_process()
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=True,
            # a save killed mid-write (a spot VM's SIGKILL, OOM) leaves a temporary folder as
            # large as a checkpoint: removed when the next run starts
            cleanup_tmp_directories=True),
        item_handlers={"state": ocp.StandardCheckpointHandler(),
                       "data": grain.checkpoint.CheckpointHandler()})

  def save(self, step: int, state, iterator, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=grain.checkpoint.CheckpointSave(iterator)),
                             force=force)

  def has_steps(self) -> bool:
    """Whether any checkpoint is there (readable or not): a restore will either return one or
    raise."""
    return bool(self.manager.all_steps())

  def restore(self, abstract_state, iterator):
    """(step, state) of the newest readable checkpoint, or None if there is none; ``iterator``
    is set to that checkpoint's data position."""
    unreadable, first_error = [], None
    drop_unraisable(_is_failed_read)
    _drop_failed_read_logs()
    for step in sorted(self.manager.all_steps(), reverse=True):
      # Hosts restore the state together (Orbax's restore has barriers): one that failed inside
      # it would leave the others waiting, then out of step. So each sets its own data position
      # first, outside Orbax (Grain's handler does no more: read this host's JSON, set_state),
      # and all agree on it before the state is read.
      error = self._set_position(step, iterator)
      if not _on_every_host(error is None):
        error = error or "another host's data position does not restore"
      else:
        try:
          out = self.manager.restore(step, args=ocp.args.Composite(
              state=ocp.args.StandardRestore(abstract_state)))
        except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
          error = f"{type(e).__name__}: {one_line(e)[:300]}"
      if error is not None:
        first_error = first_error or error
        warnings.warn(f"checkpoint {step} in {self.directory} is unreadable ({error}); trying an "
                      "older one", RuntimeWarning)
        unreadable.append(step)
        continue
      iterator.start_prefetch()
      self._move_aside(unreadable)  # training goes on from here and writes those steps again
      self.moved_aside = unreadable
      return step, out.state
    if unreadable:
      raise ConfigError(f"no checkpoint in {self.directory} restores into this config (newest: "
                        f"{first_error}); was the run started with other model settings, or "
                        "another worker_count or number of hosts (the saved data position's "
                        "format follows them)? Use its settings, or another --workdir")
    return None

  def _set_position(self, step: int, iterator) -> str | None:
    """Sets ``iterator`` to this host's data position saved at ``step`` (as Grain's checkpoint
    handler restores it); the reason if it cannot."""
    path = os.path.join(self.directory, str(step), "data",
                        f"process_{jax.process_index()}-of-{jax.process_count()}.json")
    try:
      with open(path) as f:
        text = f.read()
      iterator.set_state(json.loads(text) if isinstance(iterator, grain.DatasetIterator)
                         else text.encode())
      return None
    except Exception as e:  # pylint: disable=broad-except  (missing, cut short, another format)
      return f"data position {os.path.basename(path)}: {type(e).__name__}: {one_line(e)[:200]}"

  def _move_aside(self, steps) -> None:
    if not steps:
      return
    if jax.process_index() == 0:  # one shared folder: one host moves, the others wait for it
      aside = os.path.join(os.path.dirname(self.directory), "checkpoints_unreadable")
      os.makedirs(aside, exist_ok=True)
      for step in steps:
        target = os.path.join(aside, str(step))
        shutil.rmtree(target, ignore_errors=True)  # an older copy of the same step
        shutil.move(os.path.join(self.directory, str(step)), target)
    if jax.process_count() > 1:
      from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
      multihost_utils.sync_global_devices("cope_jax: unreadable checkpoints moved aside")
    self.manager.reload()

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def _is_failed_read(info) -> bool:
  """Where one array's read fails, Orbax's restore raises while the others' reads are still in
  flight, and each prints a traceback through ``sys.unraisablehook``: TensorStore's callbacks
  into the closed event loop, and the unfinished read coroutines when collected (with the whole
  TensorStore spec) — 17,000–28,000 lines for the tiny recipe, burying the one warning that
  matters, some printed while the restore runs and some after it returns. Those two kinds are
  dropped (``command_line.drop_unraisable``, asked before restoring)."""
  code = getattr(info.object, "cr_code", None)
  if code is not None and code.co_name == "_read_array_index_and_device_put":
    return True
  return bool(info.exc_type is RuntimeError and str(info.exc_value) == "Event loop is closed"
              and (frames := traceback.extract_tb(info.exc_traceback))
              and frames[0].name == "call_soon_threadsafe")


class _FailedReadLogs(logging.Filter):
  """The same reads' futures, logged by asyncio ("exception was never retrieved", each with its
  TensorStore error, often the whole spec and a traceback) where the restore gave up first."""

  def filter(self, record: logging.LogRecord) -> bool:
    text = record.getMessage()
    return not ("exception was never retrieved" in text
                and ("while reading array index" in text or "Error reading" in text))


def _drop_failed_read_logs() -> None:
  log = logging.getLogger("asyncio")
  if not any(isinstance(f, _FailedReadLogs) for f in log.filters):
    log.addFilter(_FailedReadLogs())


def _on_every_host(ok: bool) -> bool:
  if jax.process_count() == 1:
    return ok
  from jax.experimental import multihost_utils  # pylint: disable=import-outside-toplevel
  return bool(np.min(multihost_utils.process_allgather(np.int32(ok))))


def latest_params(workdir: str) -> dict:
  """The trained parameters of a workdir's newest readable checkpoint, as numpy arrays whatever
  devices trained it (``models.checkpoints.host_target``). Only the parameters are read, not
  the optimizer state (twice their size with Adam)."""
  from cope_jax.models.checkpoints import host_target  # pylint: disable=import-outside-toplevel
  with orbax_warnings_muted():
    manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                    options=ocp.CheckpointManagerOptions(
                                        read_only=True, create=False, save_interval_steps=0),
                                    item_handlers={"state": ocp.PyTreeCheckpointHandler()})
  drop_unraisable(_is_failed_read)  # (as ``Checkpointer.restore``: a damaged checkpoint's
  _drop_failed_read_logs()          # leftover reads printed hundreds of lines of tracebacks)
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        with orbax_warnings_muted():  # it names the "data" item, which is not read here
          target = {"params": host_target(manager.item_metadata(step)["state"]["params"])}
          out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.PyTreeRestore(
              target, restore_args=ocp.checkpoint_utils.construct_restore_args(target),
              partial_restore=True)))
        return out.state["params"]
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"{workdir}: checkpoint {step} unreadable ({e}); trying an older one",
                      RuntimeWarning)
  finally:
    manager.close()
  raise FileNotFoundError(f"{workdir}: no readable checkpoint in {workdir}/checkpoints")


class Preemption:
  """SIGTERM (spot VMs, TPU maintenance) sets a flag; the loop saves and exits at the next step.

  One process only: with several, a flag local to the host that got the signal would stop it
  alone and hang the others in their next collective. There JAX's coordination service catches
  SIGTERM and Orbax's ``reached_preemption(step)`` tells every host at the same step (MaxText
  does the same), so no handler is installed."""

  def __init__(self, install: bool = True):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle) if install else None

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore_handler(self) -> None:
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)
