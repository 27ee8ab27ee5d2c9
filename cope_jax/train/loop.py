"""The training loop shared by both stages (MaxText-style: eval_shape → shardings → jit init).

State = {step, params (trained parts only), opt_state, first_bad_step}; frozen parameters are a
separate, never-donated argument with no optimizer state. The train step is jitted with explicit
in/out shardings and a donated state, compiled ahead of time once per batch shape (bounded by
the length buckets), and its memory use is printed per device.
"""

from __future__ import annotations

import os
import signal
import sys
import time

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from cope_jax.codec.errors import ConfigError
from cope_jax.command_line import new_folders_left_empty_removed, raise_pending_stop
from cope_jax.json_files import read_json, write_json
from cope_jax.models.checkpoints import run_initialiser
from cope_jax.models.sharding import (LOGICAL_AXIS_RULES, batch_sharding, constrain,
                                      logical_shardings, make_mesh)
from cope_jax.train import PREEMPTED
from cope_jax.train.checkpointing import Checkpointer, Preemption
from cope_jax.train.metrics_log import MetricsLog
from cope_jax.train.optim import make_optimizer, resumed_schedule_note, warmup_note
from cope_jax.train.prepare import check_batch_layout, profile_range
from cope_jax.train.resume_checks import (DATA_ORDER, check_same_data_order,
                                          check_same_model_config, check_same_sources,
                                          split_records)
from cope_jax.data.build import shard_dir
from cope_jax.train.tasks import TASKS


def _place(tree, abstract, what: str):
  """Loaded numpy parameters onto the shardings of ``abstract`` (ShapeDtypeStructs), checking
  the structure and shapes: a checkpoint of another model size fails here, named."""
  if jax.tree_util.tree_structure(tree) != jax.tree_util.tree_structure(abstract):
    raise ConfigError(f"{what}: the loaded parameters do not match the model (another tree of "
                      "parameters: a checkpoint of other model settings?)")
  for (path, x), want in zip(jax.tree_util.tree_leaves_with_path(tree),
                             jax.tree_util.tree_leaves(abstract)):
    if tuple(np.shape(x)) != tuple(want.shape):
      raise ConfigError(f"{what}{jax.tree_util.keystr(path)}: the checkpoint's shape "
                        f"{tuple(np.shape(x))} is not the model's {tuple(want.shape)} (a "
                        "checkpoint of another model size, or other model settings?)")
  return jax.tree_util.tree_map(
      lambda x, a: jax.device_put(np.asarray(x, np.float32), a.sharding), tree, abstract)


def _check_divisible(tree, mesh, what: str) -> None:
  """Every sharded dimension of ``tree`` (ShapeDtypeStructs) divides by its mesh axes: JAX would
  fail at initialisation naming neither the parameter nor the setting to change."""
  for path, x in jax.tree_util.tree_leaves_with_path(tree):
    for dim, (size, axes) in enumerate(zip(x.shape, getattr(x.sharding, "spec", ()))):
      if axes is None:
        continue
      axes = (axes,) if isinstance(axes, str) else tuple(axes)
      parts = int(np.prod([mesh.shape[a] for a in axes]))
      if size % parts:
        raise ConfigError(f"{what}{jax.tree_util.keystr(path)}: its dimension {dim} ({size}) is "
                          f"sharded over the mesh axes {'×'.join(axes)} = {parts} devices, which "
                          "do not divide it: choose mesh sizes (--config.mesh.*) that do")


def _accumulated(loss_fn, params, batch, steps: int, weight: str | None = None):
  """Loss, metrics and gradients of the whole batch from ``steps`` micro-batches (gradient
  accumulation). A loss that is a mean over a count that varies between micro-batches (answer
  tokens: ``weight`` names that count in the metrics) is weighted by it, so the result is the
  whole batch's mean and does not depend on ``steps``; without ``weight`` every micro-batch
  counts the same."""
  grad_fn = jax.value_and_grad(loss_fn, has_aux=True)
  if steps == 1:
    (loss, metrics), grads = grad_fn(params, batch)
    return loss, metrics, grads
  # Micro-batch s takes rows s, s + steps, s + 2·steps, …: each device's rows of the sharded
  # batch split evenly over the steps, so every micro-batch stays spread over all devices with
  # no data moved (rows s·m … s·m + m − 1 would put a whole micro-batch on one device).
  micro = jax.tree_util.tree_map(
      lambda x: constrain(x.reshape((-1, steps) + x.shape[1:]).swapaxes(0, 1),
                          (None, "batch") + (None,) * (x.ndim - 1)), batch)

  def body(carry, mb):
    (loss, metrics), grads = grad_fn(params, mb)
    w = metrics[weight] if weight else jnp.float32(1.0)
    weighted = jax.tree_util.tree_map(lambda x: x * w, ((loss, metrics), grads))
    return jax.tree_util.tree_map(jnp.add, carry, (weighted, w)), None

  # Scan over all micro-batches from zeros (slicing off the first would copy the rest).
  first = jax.tree_util.tree_map(lambda x: x[0], micro)
  shapes = (jax.eval_shape(grad_fn, params, first), jax.ShapeDtypeStruct((), jnp.float32))
  zeros = jax.tree_util.tree_map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
  (total, total_weight), _ = jax.lax.scan(body, zeros, micro)
  (loss, metrics), grads = jax.tree_util.tree_map(
      lambda x: x / jnp.maximum(total_weight, 1e-9), total)
  if weight:
    metrics = {**metrics, weight: total_weight}  # a count adds up
  return loss, metrics, grads


class TrainProgram:
  """Abstract state, shardings, optimizer and the compiled train step of one config and mesh."""

  def __init__(self, config, task, mesh):
    self.config, self.task, self.mesh = config, task, mesh
    self.rng = jax.random.key(config.seed)
    trained_abstract, _ = jax.eval_shape(task.init_params, self.rng)
    part_lrs = task.trained_parts(trained_abstract)
    self.tx, schedules = make_optimizer(config.optim, config.total_steps, part_lrs)
    # The logged learning rate: the first part's (every part's schedule has the same shape,
    # scaled to its own peak).
    self.lr_of = schedules[next(iter(part_lrs))]
    boxed_state, boxed_frozen = jax.eval_shape(self._init_boxed, self.rng)
    self.state_sh = logical_shardings(boxed_state, mesh)
    self.frozen_sh = logical_shardings(boxed_frozen, mesh)
    with_sh = lambda tree, sh: jax.tree_util.tree_map(  # noqa: E731
        lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), tree, sh)
    self.abstract_state = with_sh(nn.meta.unbox(boxed_state), self.state_sh)
    self.abstract_frozen = with_sh(nn.meta.unbox(boxed_frozen), self.frozen_sh)
    _check_divisible(self.abstract_state["params"], mesh, "trained parameter ")
    _check_divisible(self.abstract_frozen, mesh, "frozen parameter ")
    self._compiled = {}
    self.compile_s = 0.0  # seconds spent compiling steps, each new batch shape's once

  def _init_boxed(self, key, trained_given: dict | None = None, frozen_given: dict | None = None):
    trained, frozen = self.task.init_params(key)
    trained, frozen = {**trained, **(trained_given or {})}, {**frozen, **(frozen_given or {})}
    state = {"step": jnp.array(0, jnp.int32), "params": trained,
             "opt_state": self.tx.init(trained), "first_bad_step": jnp.array(-1, jnp.int32)}
    return state, frozen

  def init(self, trained_given: dict | None = None, frozen_given: dict | None = None):
    """Concrete (state, frozen), created directly on their shardings. Parts given (loaded from
    checkpoints: top-level names of the trained or frozen parameters) are placed as they are and
    their random initialisers drop out of the program, which is most of its compile time (on a
    2-core CPU, 15 s for a tiny recipe's whole model)."""
    what = lambda k: f"{k} from {self.task.source(k)}"  # noqa: E731
    trained_given = {k: _place(v, self.abstract_state["params"][k], what(k))
                     for k, v in (trained_given or {}).items()}
    frozen_given = {k: _place(v, self.abstract_frozen[k], what(k))
                    for k, v in (frozen_given or {}).items()}

    init = lambda key, trained, frozen: nn.meta.unbox(  # noqa: E731
        self._init_boxed(key, trained, frozen))
    jitted = jax.jit(init, out_shardings=(self.state_sh, self.frozen_sh), donate_argnums=(1, 2))
    with jax.set_mesh(self.mesh):
      return run_initialiser(jitted, self.rng, trained_given, frozen_given)

  def _step(self, state, frozen, batch):
    loss_fn = lambda params, b: self.task.loss(params, frozen, b)  # noqa: E731
    loss, metrics, grads = _accumulated(loss_fn, state["params"], batch,
                                        self.config.grad_accum_steps, self.task.loss_weight)
    grad_norm = optax.global_norm(grads)
    ok = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = self.tx.update(grads, state["opt_state"], state["params"])
    params = optax.apply_updates(state["params"], updates)
    keep = lambda new, old: jax.tree_util.tree_map(  # noqa: E731  (skip a non-finite update)
        lambda n, o: jnp.where(ok, n, o), new, old)
    new = {"step": state["step"] + 1, "params": keep(params, state["params"]),
           "opt_state": keep(opt_state, state["opt_state"]),
           "first_bad_step": jnp.where((state["first_bad_step"] < 0) & ~ok, state["step"] + 1,
                                       state["first_bad_step"])}
    return new, {**metrics, "grad_norm": grad_norm, "learning_rate": self.lr_of(state["step"])}

  def compile(self, batch, verbose: bool = True):
    """The AOT-compiled step for these batch shapes (arrays or ShapeDtypeStructs); cached."""
    key = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in sorted(batch.items()))
    if key not in self._compiled:
      batch_sh = {k: batch_sharding(self.mesh, len(v.shape)) for k, v in batch.items()}
      abstract_batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=batch_sh[k])
                        for k, v in batch.items()}
      jitted = jax.jit(self._step, in_shardings=(self.state_sh, self.frozen_sh, batch_sh),
                       out_shardings=(self.state_sh, None), donate_argnums=(0,))
      start = time.perf_counter()
      with jax.set_mesh(self.mesh), nn.logical_axis_rules(LOGICAL_AXIS_RULES):
        compiled = jitted.lower(self.abstract_state, self.abstract_frozen,
                                abstract_batch).compile()
      self._compiled[key] = compiled
      if jax.process_count() > 1:
        # Gloo (CPU collectives) gives every process 30 s to reach a new collective; a host whose
        # compilation ends later than that (a loaded machine) would fail the step that follows.
        _wait_for_every_process(f"cope_compiled_{len(self._compiled)}")
      self.compile_s += time.perf_counter() - start
      if verbose:
        print(f"compiled the train step for batch shapes {dict((k, s) for k, s, _ in key)} in "
              f"{time.perf_counter() - start:.1f} s; {memory_report(compiled)}", flush=True)
    return self._compiled[key]

  def run(self, state, frozen, batch):
    compiled = self.compile(batch, verbose=jax.process_index() == 0)
    with jax.set_mesh(self.mesh):
      return compiled(state, frozen, batch)


def _wait_for_every_process(name: str, minutes: int = 30) -> None:
  """A barrier on JAX's coordination service (as Orbax's multihost utilities use it): no
  collective, so no collective timeout. ``name`` must be new to every process."""
  from jax._src import distributed  # pylint: disable=import-outside-toplevel
  distributed.global_state.client.wait_at_barrier(name, timeout_in_ms=minutes * 60_000)


def memory_report(compiled) -> str:
  mem = compiled.memory_analysis()
  if mem is None:
    return "memory per device: not reported by this backend"
  total = (mem.argument_size_in_bytes + mem.output_size_in_bytes + mem.temp_size_in_bytes
           - mem.alias_size_in_bytes)
  return (f"memory per device: {total / 2**30:.3f} GiB (arguments "
          f"{mem.argument_size_in_bytes / 2**30:.3f}, temporaries {mem.temp_size_in_bytes / 2**30:.3f}"
          f", outputs {mem.output_size_in_bytes / 2**30:.3f}, aliased {mem.alias_size_in_bytes / 2**30:.3f})")


def train(config, workdir: str) -> int:
  """Trains until ``total_steps``; returns a process exit status."""
  # A run refused (or stopped) before it wrote anything leaves no empty workdir.
  with new_folders_left_empty_removed(workdir):
    try:  # made first: a workdir that cannot be is refused before a long start
      os.makedirs(workdir, exist_ok=True)
    except OSError as e:  # (check_folder cannot tell every case: root may write where none can)
      raise ConfigError(f"--workdir={workdir}: cannot create it ({e.strerror})") from None
    return _train(config, workdir)


def _train(config, workdir: str) -> int:
  task = TASKS[config.stage](config, shard_dir(config.data_dir, config.stage))
  check_same_model_config(config, task, workdir)
  mesh = make_mesh(dict(config.mesh))
  check_batch_layout(mesh, config.batch_size)
  main = jax.process_index() == 0
  program = TrainProgram(config, task, mesh)
  # Frozen parts are not in the checkpoints: they are loaded on every start, a resume included
  # (trained ones come from the checkpoint: checked first that the run started from the same).
  check_same_sources(config, workdir)
  trained_over, frozen_over, note = task.pretrained()
  print(note, flush=True)
  if main and (warmup := warmup_note(config.optim.warmup_steps, config.total_steps)):
    print(warmup, flush=True)
  state, frozen = program.init(trained_over, frozen_over)
  iterator = iter(task.dataset(jax.process_index(), jax.process_count()))
  if jax.process_count() > 1:
    # Orbax's first sync (creating the checkpoint folder) is a collective, which Gloo gives 30 s:
    # hosts meet here first, on the coordination service, however long each took to get here.
    _wait_for_every_process("cope_started")
  ckpt = Checkpointer(workdir, config.checkpoint_every, config.keep_checkpoints)
  if ckpt.has_steps():  # a resume (or an error): the restore makes the trained state anew, and
    state = None        # two copies of a large model's parameters and Adam moments may not fit
    check_same_data_order(config, workdir)
  restored = ckpt.restore(program.abstract_state, iterator)
  if restored is not None:
    step0, state = restored
    if step0 >= config.total_steps:
      print(f"nothing to train: the run in {workdir} already finished at step {step0} "
            f"(total_steps {config.total_steps}); raise --config.total_steps to train further",
            flush=True)
      # (its train_config.json stays the one it trained with: inference and resumes read it)
      ckpt.close()
      return 0
    print(f"resumed from step {step0} in {ckpt.directory} (the trained parts as saved there)"
          + (f"; checkpoint {', '.join(map(str, ckpt.moved_aside))} unreadable, moved to "
             f"{os.path.dirname(ckpt.directory)}/checkpoints_unreadable" if ckpt.moved_aside
             else ""), flush=True)
    saved = os.path.join(workdir, "train_config.json")
    before = read_json(saved).get("total_steps") if os.path.exists(saved) else None
    if main and isinstance(before, int) and (note := resumed_schedule_note(
        config.optim.warmup_steps, before, config.total_steps, step0)):
      print(note, flush=True)
  if main:  # what inference needs to rebuild the model: once the checkpoints fit this config
    from cope_jax.models import config_io  # pylint: disable=import-outside-toplevel
    config_io.save(task.cfg, os.path.join(workdir, "model_config.json"))
    with open(os.path.join(workdir, "train_config.json"), "w") as f:
      f.write(config.to_json(indent=2))
    write_json(os.path.join(workdir, DATA_ORDER), split_records(config))
  mesh = program.mesh

  # A SIGTERM while the run started stops it here if its exception was lost inside a JAX call
  # (XLA's compiler takes signals while it runs; the run went on and finished, status 0).
  raise_pending_stop()
  preemption = Preemption(install=jax.process_count() == 1)
  step = int(jax.device_get(state["step"]))
  profile = _profiled_steps(config.profile_steps, step)
  log = MetricsLog(workdir, config.total_steps, step, main)
  status, tracing, counting = 0, False, False
  try:
    while step < config.total_steps:
      local = next(iterator)
      local.pop("example_index", None)
      if jax.process_count() > 1:
        local = task.common_shapes(local)
      batch = {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
               for k, v in local.items()}
      log.count_tokens(task.tokens(local) * jax.process_count())
      if profile and step == profile[0] - 1:  # (steps are numbered as logged: from 1)
        jax.profiler.start_trace(os.path.join(workdir, "profile"))
        tracing = True
      compiled_s = program.compile_s
      state, metrics = program.run(state, frozen, batch)
      new_program = program.compile_s > compiled_s
      log.leave_out(program.compile_s - compiled_s)  # a rate, an ETA: of training, not compiling
      step += 1
      # A program's first run (the run's first step, with the data pipeline's start; a new length
      # bucket's) is slower than the next: the rates count from after it. (The wait costs one
      # step's overlap with the next batch, once per program.)
      if not counting or new_program:
        jax.block_until_ready(metrics)
        log.start_counting(step)
        counting = True
      if tracing and step == profile[1]:
        jax.block_until_ready(metrics)
        stopped = time.perf_counter()
        jax.profiler.stop_trace()
        log.leave_out(time.perf_counter() - stopped)  # (writing the trace out)
        tracing = False
        print(f"profile of steps {profile[0]}–{profile[1]} in {workdir}/profile (open it with "
              "TensorBoard's profile plugin or Perfetto)", flush=True)
      logging = step % config.log_every == 0 or step == config.total_steps
      saving = step % config.checkpoint_every == 0 or step == config.total_steps
      # (on several hosts only Orbax's sync point knows of a SIGTERM: asked before the NaN
      # check, so that a preemption save is checked like any other)
      stopping = preemption.requested or ckpt.manager.reached_preemption(step)
      if logging or saving or stopping:
        bad = int(jax.device_get(state["first_bad_step"]))
        if bad >= 0:
          rates = "optim.lr" if config.stage == "pretrain" else "the rates in trainable.*"
          kept = (f"The last good checkpoint is kept in {ckpt.directory}"
                  if ckpt.manager.latest_step() is not None else "No checkpoint was saved before")
          print(f"error: the loss or the gradients became NaN/inf at step {bad}; stopping. "
                f"{kept} (lower {rates} or check the data)", file=sys.stderr, flush=True)
          status = 1
          break
      if logging:
        log.write(step, {k: float(v) for k, v in jax.device_get(metrics).items()})
      if stopping and step < config.total_steps:  # (at the last step: saved below, finished)
        ckpt.save(step, state, iterator, force=True)
        ckpt.wait()
        print(f"SIGTERM: saved step {step} and stopping; re-run the same command to resume "
              f"(exit status {PREEMPTED})", flush=True)
        status = PREEMPTED
        break
      if saving:
        ckpt.save(step, state, iterator, force=True)
  finally:
    if tracing:  # stopped before the last profiled step (NaN, SIGTERM, total_steps)
      jax.profiler.stop_trace()
    ckpt.close()
    log.close()
    preemption.restore_handler()
  if status == 0 and preemption.requested:
    # SIGTERM at the last step or during the final save, when the loop no longer stops for it:
    # the run is finished and saved, and the signal goes to the handler before ours (the demo
    # stops after this stage; the trainer's command exits 75), not lost.
    os.kill(os.getpid(), signal.SIGTERM)
  return status


def _profiled_steps(profile_steps: str, step: int) -> tuple[int, ...]:
  """The steps to trace, as logged (``()``: none), of a run that starts after ``step``. Never the
  run's first step: its compilation fills the profiler's buffer with a million Python events and
  the steps' own are lost (a run resumed at FIRST − 1 or later traced nothing useful, or nothing
  at all, and said nothing). Where that moves the range, it is said."""
  if not profile_steps:
    return ()
  first, last = profile_range(profile_steps)
  start = max(first, step + 2)
  if start == first:
    return first, last
  if step >= last:  # (a run resumed after the range: traced before, or by no run)
    print(f"profile_steps {profile_steps}: nothing traced, the range ends before this run's "
          f"first step ({step + 1})", flush=True)
    return ()
  begins = f"this run's first step ({step + 1}) compiles, which a trace cannot hold"
  if start > last:
    print(f"profile_steps {profile_steps}: nothing traced; {begins}", flush=True)
    return ()
  print(f"profile_steps {profile_steps}: tracing steps {start}–{last}; {begins}", flush=True)
  return start, last
