"""AdamW with linear warm-up + cosine decay, global-norm clipping, weight-decay masks and one
learning rate per trained part (LLaVA's per-part learning rates)."""

from __future__ import annotations

import jax
import optax


def schedule(peak: float, warmup: int, total: int) -> optax.Schedule:
  """Linear warm-up from 0 over ``warmup`` steps, then cosine to 0 at ``total``; no warm-up:
  the peak from the first step (optax's own schedule would spend step 0 at rate 0)."""
  if warmup == 0:
    return optax.cosine_decay_schedule(peak, max(total, 1), alpha=0.0)
  return optax.warmup_cosine_decay_schedule(0.0, peak, warmup, max(total, warmup + 1),
                                            end_value=0.0)


def warmup_note(warmup: int, total: int) -> str | None:
  """A note for a run whose warm-up is not shorter than itself (a short smoke run of a long
  recipe may mean to: said, not refused), else None."""
  if warmup < total:
    return None
  return (f"note: optim.warmup_steps {warmup} is not shorter than total_steps {total}: the "
          f"learning rate rises for the whole run and never exceeds {(total - 1) / warmup:.0%} "
          "of its peak")


def resumed_schedule_note(warmup: int, total_before: int, total: int, step: int) -> str | None:
  """A note for a run resumed at ``step`` with another total_steps than it started with: the
  warm-up and cosine follow the new length, so the learning rate moves at once (said, not
  refused: lengthening a run is a choice); None when the length is the same."""
  before, now = (float(schedule(1.0, warmup, t)(step)) for t in (total_before, total))
  if before == now:  # (the same length, or still warming up in both)
    return None
  change = f"{now / before:.2f}×" if before else "from 0 to a positive value"
  return (f"note: total_steps {total_before} → {total}: the learning-rate schedule follows the "
          f"new length, so every rate at step {step} changes {change} at once")


def decay_mask(params):
  """Weight decay on matrices, kernels and embeddings; not on biases, norms or single vectors.
  Decided by name: scanned layers stack a norm's (D,) scale into (layers, D)."""
  def decayed(path, p) -> bool:
    names = [str(getattr(k, "key", k)) for k in path]
    return (p.ndim >= 2 and names[-1] not in ("bias", "scale")
            and not any("norm" in n for n in names))
  return jax.tree_util.tree_map_with_path(decayed, params)


def make_optimizer(optim, total_steps: int, part_lrs: dict[str, float]) -> tuple[
    optax.GradientTransformation, dict[str, optax.Schedule]]:
  """One AdamW per top-level part of the trained parameters (``part_lrs``: part → peak LR)."""
  schedules = {part: schedule(lr, optim.warmup_steps, total_steps)
               for part, lr in part_lrs.items()}
  transforms = {part: optax.adamw(s, b1=optim.b1, b2=optim.b2, weight_decay=optim.weight_decay,
                                  mask=decay_mask) for part, s in schedules.items()}
  labels = lambda params: {k: jax.tree_util.tree_map(lambda _: k, v)  # noqa: E731
                           for k, v in params.items()}
  tx = optax.chain(optax.clip_by_global_norm(optim.clip_norm),
                   optax.multi_transform(transforms, labels))
  return tx, schedules
