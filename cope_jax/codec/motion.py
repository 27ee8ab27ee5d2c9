"""Dense motion fields from FFmpeg's exported motion vectors, warping, fusion and residuals.

Convention (checked by the tests): a displacement field ``d`` of shape (H, W, 2), x then y, in
pixels, is the *backward* displacement: the prediction of the target frame at pixel p is the
reference frame at p + d(p), and ``target = warp(reference, d) + residual`` holds exactly (int16
residual).

``warp`` samples the nearest reference pixel, rounding half up — floor(p + d + 0.5) — clamped at
the border. Half-pel vectors then shift a whole block consistently, and the same rule written in
plain numpy (``warp_reference``, used by the tests) reproduces our residuals bit for bit.

Fusion over s frames traces every pixel back through the chain of per-frame displacements to the
frame t − s (CoViAR's accumulated motion vectors): from p, step to p + d_t(p), then add d_{t-1}
read at the nearest pixel to that position, and so on; the fused field is where the pixel lands,
minus p. Positions stay exact along the chain: rounding only picks which vector to read.

Inside, fields are int16 in quarter pixels (``QPEL``): codec vectors are half- or quarter-pel, so
this is exact, sums stay exact and rounding half up is an integer shift. A frame's motion is kept
as a ``MotionStep`` on its block grid (8×8 cells for MPEG-4), and tracing gathers from that small
grid with OpenCV's integer ``remap``: this runs for every decoded frame, so it must cost less
than decoding.
"""

from __future__ import annotations

import dataclasses

import cv2
import numpy as np

QPEL = 4  # field units per pixel
MAX_SIZE = 2048  # frame side limit: int16 quarter-pel positions saturate at ±8191 px


def to_pixels(field_qpel: np.ndarray) -> np.ndarray:
  """Quarter-pel int16 field → float32 pixels (the stored ``mv``)."""
  return field_qpel.astype(np.float32) / QPEL


def to_qpel(mv_pixels: np.ndarray) -> np.ndarray:
  """float32 pixels (multiples of 1/4) → quarter-pel int16 field."""
  return np.rint(np.asarray(mv_pixels, np.float32) * QPEL).astype(np.int16)


@dataclasses.dataclass(frozen=True)
class MotionStep:
  """One frame's backward displacement, constant on ``cell``×``cell`` blocks (quarter-pel)."""
  cells: np.ndarray  # (ceil(H / cell), ceil(W / cell), 2) int16
  cell: int          # a power of two


def _as_pairs(cells: np.ndarray) -> np.ndarray:
  """(R, Q, 2) int16 → (R, Q) int32 holding each (x, y) pair, without copying native contiguous
  int16 (which ``step_from_vectors`` writes through); other cells are converted first."""
  return np.ascontiguousarray(cells, np.int16).view(np.int32).reshape(cells.shape[:2])


class MotionGrid:
  """Motion-field operations for one frame size; build once per video, reuse for every frame."""

  def __init__(self, height: int, width: int):
    if not 0 < max(height, width) <= MAX_SIZE:
      raise ValueError(f"frame size {width}x{height} outside 1..{MAX_SIZE}")
    self.height, self.width = height, width
    xs, ys = np.meshgrid(np.arange(width, dtype=np.int16), np.arange(height, dtype=np.int16))
    self._grid = np.stack([xs, ys], axis=-1)  # (H, W, 2) int16, the identity map
    # Pixel centres in quarter-pel plus one half pixel: (p_qpel + 2) >> 2 = floor(p + 0.5).
    self._origin = self._grid * np.int16(QPEL) + np.int16(QPEL // 2)

  def step_from_vectors(self, mvs: np.ndarray | None) -> MotionStep:
    """One frame's motion from a MOTION_VECTORS side-data array (None: no vectors).

    Blocks without an entry (intra blocks, a frame without vectors) get zero displacement. Only
    past-reference vectors (``source < 0``) are used: the streams we read have no B-frames. The
    grid is the coarsest one every block aligns to (8 px for MPEG-4 with 4MV, 16 px without).
    Blocks are expected not to overlap (codecs' never do); where they would, the one painted
    last wins — in array order, or, on the fast path for square blocks, the smaller one.
    """
    if mvs is not None and mvs["source"].max(initial=-1) >= 0:
      mvs = mvs[mvs["source"] < 0]
    if mvs is None or not len(mvs):
      return MotionStep(np.zeros((-(-self.height // 16), -(-self.width // 16), 2), np.int16), 16)
    # This runs for every decoded frame, on ~10³ blocks: numpy's per-call cost is what counts,
    # so the common case takes few calls (int16 arithmetic on the fields as they come).
    w, h = mvs["w"], mvs["h"]
    top, left = mvs["dst_y"] - (h >> 1), mvs["dst_x"] - (w >> 1)
    if not (0 <= (top | left).min() and top.max() < self.height and left.max() < self.width
            and w.min() > 0 and h.min() > 0):
      # MPEG-4 with 4MV exports all four 8×8 blocks of a macroblock on the last row or column
      # even where the frame's side is not a multiple of 16 and two of them lie wholly outside
      # it: they describe no pixel, and clamped onto the border they would overwrite the
      # vectors of the blocks that are there.
      inside = ((top < self.height) & (left < self.width) & (top + h > 0) & (left + w > 0))
      if not inside.all():
        mvs, w, h, top, left = mvs[inside], w[inside], h[inside], top[inside], left[inside]
        if not len(mvs):
          return self.step_from_vectors(None)
    # The largest power of two dividing every side, every corner and 16 is the lowest set bit of
    # their OR (for power-of-two sides, the OR of the sides also has one bit per side that
    # occurs). Corners count: a 16×16 block at y = 8 needs 8-pixel cells.
    sides = int(np.bitwise_or.reduce(w)) | int(np.bitwise_or.reduce(h))
    align = sides | 16 | int(np.bitwise_or.reduce(top | left))
    cell = align & -align
    packed = self._quarter_pel_pairs(mvs)
    if sides & (sides - 1):  # two or more block sizes
      square = ((w == h).all() and w.min() > 0 and not (w & (w - 1)).any()
                and not ((top | left) & (w - 1)).any())
    else:  # one power of two: every side is either it or 0
      square = w.min() > 0 and h.min() > 0 and not ((top | left) & (sides - 1)).any()
    if not (square and 0 <= (top | left).min() and top.max() < self.height
            and left.max() < self.width):
      # Not MPEG-4's: rectangles, sides that are not powers of two, blocks off their own grid or
      # reaching outside the frame (their cells clamped onto its border).
      q = packed.view(np.int16).reshape(-1, 2)
      return MotionStep(self._paint_blocks(w, h, top.astype(np.intp), left.astype(np.intp), q,
                                           cell), cell)
    # Square power-of-two blocks on their own grid, inside the frame (MPEG-4: 16×16 macroblocks,
    # 8×8 blocks with 4MV): largest first, each side on its own grid, which is then repeated
    # onto the next smaller one. Cells are written as packed (x, y) pairs, one int32 each.
    cells = None
    for bit in range(sides.bit_length() - 1, cell.bit_length() - 2, -1):
      side = 1 << bit
      rows, cols = -(-self.height // side), -(-self.width // side)
      if cells is None:
        cells = np.zeros((rows, cols, 2), np.int16)
      else:  # from the previous (twice as large) side's grid
        cells = np.repeat(np.repeat(cells, 2, axis=0), 2, axis=1)[:rows, :cols]
        cells = np.ascontiguousarray(cells)  # (the flat view below must not be a copy)
      if not sides >> bit & 1:
        continue
      flat = _as_pairs(cells).reshape(-1)
      if sides == side:
        flat[(top >> bit).astype(np.intp) * cols + (left >> bit)] = packed
      else:
        pick = w == side
        flat[(top[pick] >> bit).astype(np.intp) * cols + (left[pick] >> bit)] = packed[pick]
    return MotionStep(cells, cell)

  @staticmethod
  def _quarter_pel_pairs(mvs: np.ndarray) -> np.ndarray:
    """Each vector in quarter pixels as a packed (x, y) int16 pair: (N,) int32."""
    q = np.empty((len(mvs), 2), np.int16)
    scale = mvs["motion_scale"]
    first = int(scale[0])
    if first in (1, 2, 4) and (scale == first).all():  # (the usual case: one multiply each)
      np.multiply(mvs["motion_x"], QPEL // first, out=q[:, 0], casting="unsafe")
      np.multiply(mvs["motion_y"], QPEL // first, out=q[:, 1], casting="unsafe")
    else:
      scale = scale.astype(np.intp)
      q[:, 0] = mvs["motion_x"] * QPEL // scale
      q[:, 1] = mvs["motion_y"] * QPEL // scale
    return q.view(np.int32).reshape(-1)

  def _paint_blocks(self, w, h, top, left, q, cell) -> np.ndarray:
    """Blocks of any sides on the ``cell`` grid, in array order: one entry per covered cell,
    cell indices clamped to the grid."""
    shift = cell.bit_length() - 1
    ch, cw = -(-self.height // cell), -(-self.width // cell)
    w, h = w.astype(np.intp), h.astype(np.intp)
    bw, bh = w >> shift, h >> shift
    y0, x0 = top >> shift, left >> shift
    counts = bw * bh
    ids = np.repeat(np.arange(len(w)), counts)
    k = np.arange(ids.size) - np.repeat(np.cumsum(counts) - counts, counts)
    cells = np.zeros((ch, cw, 2), np.int16)
    iy = np.clip(y0[ids] + k // bw[ids], 0, ch - 1)
    ix = np.clip(x0[ids] + k % bw[ids], 0, cw - 1)
    cells[iy, ix] = q[ids]
    return cells

  def expand(self, step: MotionStep) -> np.ndarray:
    """A step as a dense (H, W, 2) int16 quarter-pel field."""
    full = np.repeat(np.repeat(step.cells, step.cell, axis=0), step.cell, axis=1)
    return full[:self.height, :self.width]

  def field_from_vectors(self, mvs: np.ndarray | None) -> np.ndarray:
    """Dense (H, W, 2) int16 quarter-pel field of one frame's vectors."""
    return self.expand(self.step_from_vectors(mvs))

  def source_map(self, field_qpel: np.ndarray) -> np.ndarray:
    """Integer gather map of ``warp``: floor(p + d + 1/2), as int16 (x, y)."""
    return cv2.add(self._origin, field_qpel) >> 2

  def warp(self, image: np.ndarray, field_qpel: np.ndarray) -> np.ndarray:
    """image(p + d(p)): nearest pixel, rounding half up, clamped at the border."""
    return cv2.remap(image, self.source_map(field_qpel), None, cv2.INTER_NEAREST,
                     borderMode=cv2.BORDER_REPLICATE)

  def trace(self, steps: list[MotionStep]) -> np.ndarray:
    """Fused (H, W, 2) int16 quarter-pel displacement of a chain of steps, oldest first."""
    if not steps:
      return np.zeros((self.height, self.width, 2), np.int16)
    # position = p + displacement so far, in quarter-pel, plus half a pixel (see _origin). The
    # newest step is read at p itself; each older one at the cell holding floor(position + 0.5).
    # cv2.add saturates instead of wrapping, should a wild chain run far off the frame.
    # Each step's (x, y) int16 pairs are gathered as one int32 (a bit-exact view): OpenCV's
    # one-channel remap is about twice as fast as its two-channel one, and this gather runs
    # once for every decoded frame.
    position = cv2.add(self._origin, self.expand(steps[-1]))
    for step in reversed(steps[:-1]):
      cell_of = position >> (2 + step.cell.bit_length() - 1)
      read = cv2.remap(_as_pairs(step.cells), cell_of, None, cv2.INTER_NEAREST,
                       borderMode=cv2.BORDER_REPLICATE)
      position = cv2.add(position, read.view(np.int16).reshape(position.shape))
    return cv2.subtract(position, self._origin)

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
