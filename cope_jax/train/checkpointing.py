"""Orbax checkpoints of the train state and the data iterator, with fallback and preemption.

``WORKDIR/checkpoints/<step>/`` holds ``state`` (step, trained parameters, optimizer state) and
``data`` (the Grain iterator state as JSON). Saves are asynchronous and atomic (Orbax writes a
temporary folder and renames it); the last ``keep`` are kept. Restoring tries the newest step
first and falls back to older ones, with a warning, if a checkpoint is incomplete or corrupt.
"""

from __future__ import annotations

import os
import signal
import warnings

import orbax.checkpoint as ocp


class Checkpointer:

  def __init__(self, workdir: str, every: int, keep: int):
    self.directory = os.path.join(os.path.abspath(workdir), "checkpoints")
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(
            save_interval_steps=every, max_to_keep=keep, enable_async_checkpointing=True))

  def save(self, step: int, state, data_state: dict, force: bool = False) -> bool:
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state)), force=force)

  def restore(self, abstract_state):
    """(step, state, data_state) of the newest readable checkpoint, or None if there is none."""
    unreadable = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      try:
        out = self.manager.restore(step, args=ocp.args.Composite(
            state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
      except Exception as e:  # pylint: disable=broad-except  (any damage: try the previous one)
        warnings.warn(f"checkpoint {step} in {self.directory} is unreadable ({type(e).__name__}: "
                      f"{str(e)[:200]}); falling back to the previous one", RuntimeWarning)
        unreadable.append(step)
        continue
      for bad in unreadable:  # training goes on from here and will write those steps again
        self.manager.delete(bad)
      return step, out.state, out.data
    return None

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def latest_params(workdir: str) -> dict:
  """The trained parameters of a workdir's newest readable checkpoint (as numpy arrays)."""
  manager = ocp.CheckpointManager(os.path.join(os.path.abspath(workdir), "checkpoints"),
                                  options=ocp.CheckpointManagerOptions(
                                      read_only=True, create=False, save_interval_steps=0))
  try:
    for step in sorted(manager.all_steps(), reverse=True):
      try:
        out = manager.restore(step, args=ocp.args.Composite(state=ocp.args.StandardRestore()))
        return out.state["params"]
      except Exception as e:  # pylint: disable=broad-except
        warnings.warn(f"{workdir}: checkpoint {step} unreadable ({e}); trying an older one",
                      RuntimeWarning)
  finally:
    manager.close()
  raise FileNotFoundError(f"{workdir}: no readable checkpoint in {workdir}/checkpoints")


class Preemption:
  """SIGTERM (spot VMs, TPU maintenance) sets a flag; the loop saves and exits at the next step."""

  def __init__(self):
    self.requested = False
    self._previous = signal.signal(signal.SIGTERM, self._handle)

  def _handle(self, signum, frame):
    del signum, frame
    self.requested = True

  def restore_handler(self) -> None:
    signal.signal(signal.SIGTERM, self._previous)
