"""A picture of what the model sees: keyframes, motion fields and residuals per sampled position."""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from cope_jax.codec.errors import VideoError
from cope_jax.codec.extract import SampledFrame
from cope_jax.codec.sampling import KEYFRAME

_COLUMNS = 8  # positions per row block: one GOP with the default sampling


def flow_to_rgb(mv: np.ndarray, max_magnitude: float) -> np.ndarray:
  """Motion as colour: hue = direction of movement (−mv), brightness = speed."""
  from matplotlib.colors import hsv_to_rgb  # pylint: disable=import-outside-toplevel
  move = -mv  # content moved from p + mv to p
  angle = (np.arctan2(move[..., 1], move[..., 0]) + np.pi) / (2 * np.pi)
  magnitude = np.hypot(move[..., 0], move[..., 1]) / max(max_magnitude, 1e-6)
  hsv = np.stack([angle, np.ones_like(angle), np.clip(magnitude, 0, 1)], axis=-1)
  return hsv_to_rgb(hsv)


def _seconds(t: float) -> str:
  """A time to the millisecond, without trailing zeros ("0.25", "7", "0.083"): positions a
  fusion window apart stay apart at any --fps (tenths merged 1/12 s steps at 120 fps)."""
  return f"{t:.3f}".rstrip("0").rstrip(".")


def render(frames: Sequence[SampledFrame], out_path: str | os.PathLike, title: str = "",
           residual_max: float = 48.0, arrow_step: int = 32) -> None:
  """Writes a PNG: per position, the RGB frame, the motion field and the |residual| heat map.

  Rows come in blocks of three (frame / motion / residual), ``_COLUMNS`` positions per block.
  Keyframes show their RGB only: they go to the vision encoder whole.
  """
  import matplotlib  # pylint: disable=import-outside-toplevel
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel

  out_path = os.fspath(out_path)
  columns = min(_COLUMNS, max(len(frames), 1))
  blocks = -(-len(frames) // columns)
  # Colour brightness saturates at the 98th percentile of speeds: a few wild vectors (scene cuts)
  # would otherwise make every other field look black.
  speeds = [np.hypot(f.mv[..., 0], f.mv[..., 1]).ravel()[::7] for f in frames if f.mv is not None]
  max_mag = max(float(np.percentile(np.concatenate(speeds), 98)), 1.0) if speeds else 1.0
  # (at least the title's width: one or two positions cut its settings off)
  fig, axes = plt.subplots(3 * blocks, columns,
                           figsize=(max(2.3 * columns + 1.5, 8.0), 2.45 * 3 * blocks),
                           squeeze=False)
  for ax in axes.ravel():
    ax.set_axis_off()
  heat = None
  for i, f in enumerate(frames):
    col, row = i % columns, 3 * (i // columns)
    # A Δ-frame spans the time since the previous position (longer ones: adaptive fusion).
    kind = ("keyframe" if f.kind == KEYFRAME else
            f"Δ over {_seconds(f.time_s - frames[i - 1].time_s)}s" if i else "Δ-frame")
    rgb = f.rgb if f.kind == KEYFRAME else f.target_rgb
    ax = axes[row, col]
    if rgb is not None:
      ax.imshow(rgb)
    ax.set_title(f"t={_seconds(f.time_s)}s  {kind}", fontsize=9,
                 color="tab:blue" if f.kind == KEYFRAME else "black")
    if f.kind == KEYFRAME:
      axes[row + 1, col].text(0.5, 0.5, "keyframe:\nRGB to the\nvision encoder", ha="center",
                              va="center", fontsize=9, transform=axes[row + 1, col].transAxes)
      continue
    h, w = f.mv.shape[:2]
    ax = axes[row + 1, col]
    ax.imshow(flow_to_rgb(f.mv, max_mag))
    ys, xs = np.mgrid[arrow_step // 2:h:arrow_step, arrow_step // 2:w:arrow_step]
    move = -f.mv[ys, xs]
    ax.quiver(xs, ys, move[..., 0], move[..., 1], color="white", angles="xy",
              scale_units="xy", scale=1, width=0.006)
    ax.set_title(f"motion, median {np.median(np.hypot(f.mv[..., 0], f.mv[..., 1])):.1f}px",
                 fontsize=8)
    ax = axes[row + 2, col]
    magnitude = np.abs(f.residual.astype(np.float32)).mean(-1)
    heat = ax.imshow(magnitude, cmap="inferno", vmin=0, vmax=residual_max)
    ax.set_title(f"|residual|, mean {magnitude.mean():.1f}", fontsize=8)
  for b in range(blocks):
    axes[3 * b, 0].text(-0.08, 0.5, "frame", rotation=90, va="center", ha="right",
                        transform=axes[3 * b, 0].transAxes, fontsize=9)
    axes[3 * b + 1, 0].text(-0.08, 0.5, "motion (colour = direction)", rotation=90, va="center",
                            ha="right", transform=axes[3 * b + 1, 0].transAxes, fontsize=8)
    axes[3 * b + 2, 0].text(-0.08, 0.5, "residual", rotation=90, va="center", ha="right",
                            transform=axes[3 * b + 2, 0].transAxes, fontsize=9)
  if heat is not None:
    fig.subplots_adjust(right=0.9)
    fig.colorbar(heat, cax=fig.add_axes((0.925, 0.1, 0.012, 0.25)), label="|residual| (0-255)")
    wheel = fig.add_axes((0.91, 0.80, 0.06, 0.06 * 2.3 * columns / (2.45 * 3 * blocks)))
    r = np.linspace(-1, 1, 65)
    disc = -np.stack(np.meshgrid(r, r), axis=-1)  # colour of a movement towards each point
    wheel.imshow(flow_to_rgb(disc, 1.0) * (np.hypot(*np.moveaxis(disc, -1, 0)) <= 1)[..., None])
    wheel.set_title("direction\nof motion", fontsize=7)
    wheel.set_axis_off()
  fig.suptitle(title + "\narrows: where content moved since the previous position (−mv)",
               fontsize=11, wrap=True)
  tmp = f"{out_path}.tmp-{os.getpid()}.png"
  try:
    fig.savefig(tmp, dpi=80)
    os.replace(tmp, out_path)
  except OSError as e:  # a full disk, a folder that refuses the file
    raise VideoError(out_path, f"cannot be written: {e.strerror or e}") from e
  finally:
    plt.close(fig)
    if os.path.exists(tmp):
      os.remove(tmp)
    if os.path.exists(tmp):
      os.remove(tmp)
