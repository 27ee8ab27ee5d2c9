"""``python -m cope_jax.train --config=configs/{pretrain,finetune}.py[:VARIANT] --workdir=DIR``

Overrides: ``--config.total_steps=50 --config.optim.lr=3e-4 …`` (stage 1's rate; stage 2 trains
each part at its own, ``--config.trainable.llm=3e-5 …``; a rate of 0 freezes a part, which a
checkpoint must then give). Every recipe's keys, with a
comment each, are in cope_jax/train/config_base.py; the recipes (configs/pretrain.py,
configs/finetune.py) add their stage's keys and the ``:tiny`` variant. Re-running the same
command resumes from the newest checkpoint (data-iterator position included); SIGTERM saves and
exits.
"""

from __future__ import annotations

import functools
import os
import signal
import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "a recipe in configs/, e.g. "
                                          "configs/finetune.py:tiny", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "checkpoints, TensorBoard events, metrics.jsonl")


def _distributed(config) -> None:
  """jax.distributed.initialize when asked (config or COPE_DISTRIBUTED=1); TPU pods, SLURM and
  GPU clusters are detected by JAX, or COPE_COORDINATOR / COPE_NUM_PROCESSES / COPE_PROCESS_ID."""
  import jax  # pylint: disable=import-outside-toplevel
  if not (config.distributed or os.environ.get("COPE_DISTRIBUTED") == "1"):
    return
  kwargs = {}
  if os.environ.get("COPE_COORDINATOR"):
    kwargs = dict(coordinator_address=os.environ["COPE_COORDINATOR"],
                  num_processes=int(os.environ["COPE_NUM_PROCESSES"]),
                  process_id=int(os.environ["COPE_PROCESS_ID"]))
    if jax.config.jax_platforms in (None, "", "cpu"):
      jax.config.update("jax_cpu_collectives_implementation", "gloo")
  jax.distributed.initialize(**kwargs)


def _stopped_outside_training(main_pid: int, signum, frame) -> None:
  """SIGTERM while the run starts (data, compilation, restore: minutes on a pod) or after its
  last save, outside the training loop's own handler (save, then stop): nothing trained since
  the last checkpoint, so nothing to save; the status says "re-run to resume", as a preempted
  run's does."""
  del frame
  if os.getpid() != main_pid:  # a forked worker (data building) ends as it would have
    signal.signal(signum, signal.SIG_DFL)
    os.kill(os.getpid(), signum)
    return
  from cope_jax.command_line import stop_by_signal  # pylint: disable=import-outside-toplevel
  from cope_jax.train import PREEMPTED  # pylint: disable=import-outside-toplevel
  print("SIGTERM outside the training steps: nothing new to save; re-run the same command to "
        f"resume (exit status {PREEMPTED})", file=sys.stderr, flush=True)
  stop_by_signal(SystemExit(PREEMPTED))


def main(argv) -> None:
  del argv
  logging.set_verbosity(logging.WARNING)  # Orbax and Grain log every step at INFO
  config, workdir = _CONFIG.value, _WORKDIR.value
  if config is None or not workdir:
    print("error: --config and --workdir are required (see --help)", file=sys.stderr)
    sys.exit(2)
  from cope_jax.codec.errors import ConfigError  # pylint: disable=import-outside-toplevel
  try:
    from cope_jax.train import prepare  # pylint: disable=import-outside-toplevel
    _distributed(config)
    import jax  # pylint: disable=import-outside-toplevel
    if jax.process_count() == 1:  # (several: JAX's coordination service takes SIGTERM)
      signal.signal(signal.SIGTERM, functools.partial(_stopped_outside_training, os.getpid()))
    prepare.check_local_path("--workdir", workdir)
    prepare.check_folder("--workdir", workdir)
    # The recipe's values first: a bad one is refused before resolve() makes any data.
    prepare.check_settings(config, jax.device_count(), jax.process_count())
    prepare.resolve(config)
    prepare.check_inputs(config)
    from cope_jax.train.loop import train  # pylint: disable=import-outside-toplevel
    sys.exit(train(config, workdir))
  except ConfigError as e:
    print(f"error: {e}", file=sys.stderr)
    sys.exit(2)


if __name__ == "__main__":
  flags.mark_flags_as_required(["config", "workdir"])
  from cope_jax.train.prepare import parse_flags  # pylint: disable=ungrouped-imports
  app.run(main, flags_parser=parse_flags)
