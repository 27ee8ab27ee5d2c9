"""The demo's plots: losses.png (each stage's loss curve) and pareto.png (accuracy vs visual
tokens per mode, the paper's Pareto plot in miniature, with the probes' motion accuracy)."""

import os

import numpy as np


def trailing_mean(values: np.ndarray, window: int) -> np.ndarray:
  """The mean of each ``window`` consecutive values: ``len(values) - window + 1`` of them."""
  return np.convolve(values, np.ones(window) / window, "valid")


def label_heights(points: list[tuple[float, float, bool]], gap: float,
                  top: float = float("inf")) -> list[float]:
  """Where to write each point's label (``points``: x, y and whether its label is on the right):
  at the point's height, but labels on one side of one x at least ``gap`` apart — each pushed up
  past the one below where it would overlap it — and none above ``top`` (the highest moved down,
  and the ones below it as far as they must)."""
  heights = [y for _, y, _ in points]
  for column in {(x, right) for x, _, right in points}:
    order = sorted((i for i, p in enumerate(points) if (p[0], p[2]) == column),
                   key=lambda i: points[i][1])
    for below, i in zip(order, order[1:]):
      heights[i] = max(heights[i], heights[below] + gap)
    ceiling = top
    for i in reversed(order):
      heights[i] = min(heights[i], ceiling)
      ceiling = heights[i] - gap
  return heights


def _widen_for_labels(ax, texts, fig) -> None:
  """Widen the (log) x axis until every label lies inside the axes: a label left of a point at
  the axis' low end ran over the y tick labels, one right of its high end past the frame."""
  for _ in range(8):
    fig.canvas.draw()
    frame = ax.get_window_extent()
    boxes = [t.get_window_extent() for t in texts]
    low, high = ax.get_xlim()
    left = any(b.x0 < frame.x0 for b in boxes)
    right = any(b.x1 > frame.x1 for b in boxes)
    if not (left or right):
      return
    ax.set_xlim(low / (1.5 if left else 1), high * (1.5 if right else 1))


def plots(training: dict, modes: dict, out_dir: str,
          probes: dict[str, dict] | None = None) -> dict[str, str]:
  """losses.png (every stage's loss curve) and pareto.png (accuracy vs visual tokens, and each
  probe's motion accuracy)."""
  import matplotlib  # pylint: disable=import-outside-toplevel
  import matplotlib.ticker  # pylint: disable=import-outside-toplevel
  import matplotlib.transforms  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  names = [n for n in ("base", "stage1", "stage2") if n in training]
  fig, axes = plt.subplots(1, len(names), figsize=(4 * len(names), 3.2))
  for ax, name in zip(np.atleast_1d(axes), names):
    curve = training[name]["curve"]
    steps, loss = np.asarray(curve["step"]), np.asarray(curve["loss"])
    title = {"base": "base VideoLM (dense RGB)", "stage1": "stage 1: Δ-encoder",
             "stage2": "stage 2: keyframes + Δ"}[name]
    if "copy_reference_mse" in curve:
      # Each logged point is one batch, and batches differ most in how much moved: the loss
      # relative to copying that batch's reference frame is what shows the Δ-encoder learning.
      loss = loss / np.asarray(curve["copy_reference_mse"])
      ax.axhline(1.0, color="gray", ls="--", label="copy the reference")
      title += "\n(loss ÷ copy-the-reference MSE)"
    window = max(1, len(loss) // 10)  # a tenth of the logged points (none under 20 points)
    ax.plot(steps, loss, color="tab:blue", alpha=0.35 if window > 1 else 1.0,
            lw=1 if window > 1 else 2, label="one batch")
    if window > 1:
      ax.plot(steps[window - 1:], trailing_mean(loss, window), color="tab:blue", lw=2,
              label=f"mean of {window}")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("step")
  fig.tight_layout()
  losses = os.path.join(out_dir, "losses.png")
  fig.savefig(losses, dpi=110)
  plt.close(fig)

  fig, ax = plt.subplots(figsize=(8.5, 4.2))
  labels = []  # (x, y, text, offset in points: + right of the point, - left; font size)
  for name, r in modes.items():
    ax.scatter(r["visual_tokens_mean"], r["motion_accuracy"], marker="o", s=40)
    labels.append((r["visual_tokens_mean"], r["motion_accuracy"], name, 5, 8))
    ax.scatter(r["visual_tokens_mean"], r["accuracy"], marker="x", color="gray", s=30)
  probes = probes or {}
  for name, r in probes.get("open", {}).items():
    ax.scatter(r["visual_tokens_mean"], r["motion_accuracy"], marker="^", color="black", s=30)
    labels.append((r["visual_tokens_mean"], r["motion_accuracy"], f"{name} (open)", 6, 7))
  most = max(r["visual_tokens_mean"] for r in modes.values())
  for name, r in probes.get("ranked", {}).items():
    ax.scatter(r["visual_tokens_mean"], r["motion_accuracy"], marker="s", facecolors="none",
               edgecolors="black", s=30)
    left = r["visual_tokens_mean"] < most  # left of the point, clear of the other labels
    labels.append((r["visual_tokens_mean"], r["motion_accuracy"], f"{name} (ranked)",
                   -6 if left else 6, 7))
  ax.axhline(0.25, color="gray", ls=":", lw=1)
  ax.set_xscale("log")
  ax.set_xticks(sorted({r["visual_tokens_mean"] for r in modes.values()}))
  ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
  ax.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
  ax.set_xlim(ax.get_xlim()[0] / 2.5, ax.get_xlim()[1] * 2)  # room for the points' labels
  bottom, top = ax.get_ylim()
  ax.set_ylim(bottom, top)  # (labels placed from here on do not move the axes)
  gap = 0.05 * (top - bottom)
  heights = label_heights([(x, y, dx > 0) for x, y, _, dx, _ in labels], gap, top - gap / 2)
  texts = [ax.text(x, height, text, fontsize=size, va="center",
                   ha="left" if dx > 0 else "right", color="black" if size == 8 else "dimgray",
                   transform=matplotlib.transforms.offset_copy(ax.transData, fig, x=dx,
                                                               units="points"))
           for (x, _, text, dx, size), height in zip(labels, heights)]
  ax.set_xlabel("visual tokens per video")
  ax.set_ylabel("accuracy")
  marks = [("o", "motion, multiple choice (the targets)"), ("x", "all, multiple choice")]
  marks += [m for k, m in (("open", ("^", "motion, open-ended")),
                           ("ranked", ("s", "motion, options ranked"))) if k in probes]
  handles = [plt.Line2D([], [], ls="", marker=m, color="black", mfc="none" if m == "s" else None,
                        label=label) for m, label in marks]
  ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  ax.set_title("accuracy vs visual tokens (held-out split)", fontsize=10)
  fig.tight_layout()
  _widen_for_labels(ax, texts, fig)
  pareto = os.path.join(out_dir, "pareto.png")
  fig.savefig(pareto, dpi=110)
  plt.close(fig)
  return {"losses": losses, "pareto": pareto}
