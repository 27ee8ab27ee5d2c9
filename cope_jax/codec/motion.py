"""Dense motion fields from FFmpeg's exported motion vectors, warping, fusion and residuals.

Convention (SPEC §4): a displacement field ``d`` of shape (H, W, 2), x then y, in pixels, is the
*backward* displacement: the prediction of the target frame at pixel p is the reference frame at
p + d(p), and ``target = warp(reference, d) + residual`` holds exactly (int16 residual).

``warp`` samples the nearest reference pixel, rounding half up — floor(p + d + 0.5) — clamped at
the border. Half-pel vectors then shift a whole block consistently, and the same rule written in
numpy (``warp_reference``) or JAX reproduces our residuals bit for bit.

Fusion over s frames traces every pixel back through the chain of per-frame displacements to the
frame t − s (CoViAR's accumulated motion vectors): from p, step to p + d_t(p), then add
d_{t-1} read at that position, and so on; the fused field is where the pixel lands, minus p.

Inside, fields are int16 in quarter pixels (``QPEL``): codec vectors are half- or quarter-pel, so
this is exact, sums stay exact, rounding half up is an integer shift, and OpenCV's integer
``remap`` does the gathers (about 3× faster than float maps; this runs on every decoded frame).
"""

from __future__ import annotations

import cv2
import numpy as np

QPEL = 4  # field units per pixel


def to_pixels(field_qpel: np.ndarray) -> np.ndarray:
  """Quarter-pel int16 field → float32 pixels (the stored ``mv``)."""
  return field_qpel.astype(np.float32) / QPEL


def to_qpel(mv_pixels: np.ndarray) -> np.ndarray:
  """float32 pixels (multiples of 1/4) → quarter-pel int16 field."""
  return np.rint(np.asarray(mv_pixels, np.float32) * QPEL).astype(np.int16)


class MotionGrid:
  """Motion-field operations for one frame size; build once per video, reuse for every frame."""

  def __init__(self, height: int, width: int):
    self.height, self.width = height, width
    xs, ys = np.meshgrid(np.arange(width, dtype=np.int16), np.arange(height, dtype=np.int16))
    self._grid = np.stack([xs, ys], axis=-1)  # (H, W, 2) int16, the identity map

  def field_from_vectors(self, mvs: np.ndarray | None) -> np.ndarray:
    """(H, W, 2) int16 quarter-pel backward displacement from a MOTION_VECTORS side-data array.

    Blocks without an entry (intra blocks, a frame without vectors) get zero displacement. Only
    past-reference vectors (``source < 0``) are used: the streams we read have no B-frames.
    """
    cells, cell = self._paint_cells(mvs)
    full = np.repeat(np.repeat(cells, cell, axis=0), cell, axis=1)
    return full[:self.height, :self.width]

  def _paint_cells(self, mvs: np.ndarray | None) -> tuple[np.ndarray, int]:
    """Vectors painted on the coarsest grid every block aligns to (8 px for MPEG-4 4MV)."""
    if mvs is None or not len(mvs):
      return np.zeros((-(-self.height // 16), -(-self.width // 16), 2), np.int16), 16
    mvs = mvs[mvs["source"] < 0]
    w, h = mvs["w"].astype(np.intp), mvs["h"].astype(np.intp)
    cell = int(np.gcd.reduce(np.concatenate([w, h, [16]])))
    ch, cw = -(-self.height // cell), -(-self.width // cell)
    scale = mvs["motion_scale"].astype(np.intp)
    q = np.stack([mvs["motion_x"] * QPEL // scale, mvs["motion_y"] * QPEL // scale], -1)
    bw, bh = w // cell, h // cell
    # One entry per covered cell: block id, then the cell's row/column inside the block.
    counts = bw * bh
    ids = np.repeat(np.arange(len(mvs)), counts)
    k = np.arange(ids.size) - np.repeat(np.cumsum(counts) - counts, counts)
    iy = (mvs["dst_y"].astype(np.intp) - h // 2)[ids] // cell + k // bw[ids]  # dst = block centre
    ix = (mvs["dst_x"].astype(np.intp) - w // 2)[ids] // cell + k % bw[ids]
    cells = np.zeros((ch, cw, 2), np.int16)
    cells[np.clip(iy, 0, ch - 1), np.clip(ix, 0, cw - 1)] = q[ids]
    return cells, cell

  def source_map(self, field_qpel: np.ndarray) -> np.ndarray:
    """Integer gather map of ``warp``: floor(p + d + 1/2), as int16 (x, y)."""
    return self._grid + ((field_qpel + QPEL // 2) >> 2)

  def warp(self, image: np.ndarray, field_qpel: np.ndarray) -> np.ndarray:
    """image(p + d(p)): nearest pixel, rounding half up, clamped at the border."""
    return cv2.remap(image, self.source_map(field_qpel), None, cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_REPLICATE)

  def trace(self, steps: list[np.ndarray]) -> np.ndarray:
    """Fused displacement of a chain of per-frame fields, oldest first.

    Every pixel of the newest frame is followed back one frame at a time; its position stays
    exact (quarter-pel) and each older field is read at the nearest pixel to it. Rounding never
    accumulates along the chain, unlike composing fused fields pairwise.
    """
    if not steps:
      return np.zeros((self.height, self.width, 2), np.int16)
    position = steps[-1].copy()
    for step in reversed(steps[:-1]):
      position += self.warp(step, position)
    return position

  def residual(self, target: np.ndarray, reference: np.ndarray,
               field_qpel: np.ndarray) -> np.ndarray:
    """int16 residual such that ``warp(reference, field) + residual == target``."""
    return cv2.subtract(target, self.warp(reference, field_qpel), dtype=cv2.CV_16S)

  def reconstruct(self, reference: np.ndarray, field_qpel: np.ndarray,
                  residual: np.ndarray) -> np.ndarray:
    """Inverse of ``residual``: the target frame as uint8."""
    return (self.warp(reference, field_qpel).astype(np.int16) + residual).astype(np.uint8)


def reconstruct(reference: np.ndarray, mv: np.ndarray, residual: np.ndarray) -> np.ndarray:
  """Target frame from the stored primitives: ``warp(reference, mv) + residual`` (exact)."""
  grid = MotionGrid(*reference.shape[:2])
  return grid.reconstruct(reference, to_qpel(mv), residual)


def warp_reference(reference: np.ndarray, mv: np.ndarray) -> np.ndarray:
  """Plain-numpy definition of the warp on a pixel field (the specification; used in tests)."""
  h, w = reference.shape[:2]
  ys, xs = np.mgrid[0:h, 0:w]
  sx = np.clip(np.floor(xs + mv[..., 0] + 0.5), 0, w - 1).astype(np.intp)
  sy = np.clip(np.floor(ys + mv[..., 1] + 0.5), 0, h - 1).astype(np.intp)
  return reference[sy, sx]
