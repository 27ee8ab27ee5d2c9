"""Motion fields, warping and fusion against plain per-pixel definitions."""

import numpy as np
import pytest

from cope_jax.codec.motion import (QPEL, MotionGrid, MotionStep, reconstruct, to_pixels, to_qpel,
                                   warp_reference)

_MV_DTYPE = np.dtype([("source", "<i4"), ("w", "u1"), ("h", "u1"), ("src_x", "<i2"),
                      ("src_y", "<i2"), ("dst_x", "<i2"), ("dst_y", "<i2"), ("flags", "<u8"),
                      ("motion_x", "<i4"), ("motion_y", "<i4"), ("motion_scale", "<u2")])


def _vectors(blocks):
  """blocks: (x0, y0, size, dx_px, dy_px, scale) → FFmpeg MOTION_VECTORS records."""
  out = np.zeros(len(blocks), _MV_DTYPE)
  for i, (x0, y0, size, dx, dy, scale) in enumerate(blocks):
    out[i] = (-1, size, size, x0 + size // 2 + dx, y0 + size // 2 + dy, x0 + size // 2,
              y0 + size // 2, 0, round(dx * scale), round(dy * scale), scale)
  return out


def test_field_paints_blocks_with_backward_displacement():
  grid = MotionGrid(32, 48)
  mvs = _vectors([(0, 0, 16, 2.5, -1.0, 2), (16, 0, 8, -3.0, 0.5, 2), (24, 8, 8, 1.25, 0, 4)])
  field = to_pixels(grid.field_from_vectors(mvs))
  assert field.shape == (32, 48, 2)
  np.testing.assert_array_equal(field[:16, :16], np.broadcast_to([2.5, -1.0], (16, 16, 2)))
  np.testing.assert_array_equal(field[:8, 16:24], np.broadcast_to([-3.0, 0.5], (8, 8, 2)))
  np.testing.assert_array_equal(field[8:16, 24:32], np.broadcast_to([1.25, 0], (8, 8, 2)))
  # Blocks without a vector (intra) stay at zero.
  assert not field[16:].any() and not field[:8, 24:].any()


def test_field_ignores_future_references_and_empty_frames():
  grid = MotionGrid(16, 16)
  mvs = _vectors([(0, 0, 16, 4, 4, 2)])
  mvs["source"] = 1
  assert not grid.field_from_vectors(mvs).any()
  assert not grid.field_from_vectors(None).any()


@pytest.mark.parametrize("dtype", [np.uint8, np.int16])
def test_warp_equals_numpy_definition(dtype):
  rng = np.random.default_rng(0)
  h, w = 40, 56
  image = rng.integers(0, 255, (h, w, 3)).astype(dtype)
  mv = rng.integers(-80, 80, (h, w, 2)) / QPEL  # quarter-pel, some far outside the frame
  mv[0, 0] = [0.5, -0.5]  # exact halves round up
  grid = MotionGrid(h, w)
  np.testing.assert_array_equal(grid.warp(image, to_qpel(mv)), warp_reference(image, mv))
  assert grid.warp(image, to_qpel(mv))[0, 0].tolist() == image[0, 1].tolist()


def _trace_reference(steps):
  """Trace every pixel back through the chain, one pixel at a time (slow, obviously right)."""
  h, w = steps[0].shape[:2]
  out = np.zeros((h, w, 2))
  for y in range(h):
    for x in range(w):
      px, py = float(x), float(y)
      for step in reversed(steps):
        ix = int(np.clip(np.floor(px + 0.5), 0, w - 1))
        iy = int(np.clip(np.floor(py + 0.5), 0, h - 1))
        px, py = px + step[iy, ix, 0], py + step[iy, ix, 1]
      out[y, x] = (px - x, py - y)
  return out


def test_trace_follows_each_pixel_back():
  rng = np.random.default_rng(1)
  h, w = 24, 40  # not a multiple of 16: partial cells at the border
  grid = MotionGrid(h, w)
  steps, fields = [], []
  for cell in (8, 16, 8, 4, 8):
    cells = rng.integers(-24, 24, (-(-h // cell), -(-w // cell), 2)).astype(np.int16)  # qpel
    steps.append(MotionStep(cells, cell))
    fields.append(to_pixels(grid.expand(steps[-1])))
  fused = to_pixels(grid.trace(steps))
  # The fused field lands each pixel exactly where the per-pixel chain lands it.
  np.testing.assert_array_equal(fused, _trace_reference(fields))
  assert not grid.trace([]).any()


def test_residual_reconstructs_exactly():
  rng = np.random.default_rng(2)
  h, w = 32, 32
  grid = MotionGrid(h, w)
  reference = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
  target = rng.integers(0, 255, (h, w, 3)).astype(np.uint8)
  field = to_qpel(rng.integers(-40, 40, (h, w, 2)) / 2)
  residual = grid.residual(target, reference, field)
  assert residual.dtype == np.int16
  np.testing.assert_array_equal(reconstruct(reference, to_pixels(field), residual), target)
  np.testing.assert_array_equal(
      warp_reference(reference, to_pixels(field)).astype(np.int16) + residual, target)


@pytest.mark.parametrize("h,w", [(32, 48), (24, 40), (40, 24)])
def test_mixed_block_sizes_paint_like_the_pixel_definition(h, w):
  """16×16 and 8×8 blocks (MPEG-4 with 4MV), frames not a multiple of 16 included, and a
  rectangular block (the general path): every pixel gets its block's vector, the rest zero."""
  rng = np.random.default_rng(2)
  blocks, expected = [], np.zeros((h, w, 2))
  for y0 in range(0, h, 16):
    for x0 in range(0, w, 16):
      kind = rng.integers(3)  # intra (no vector), one 16×16 block, or four 8×8 blocks
      for y, x, size in ([] if kind == 0 else [(y0, x0, 16)] if kind == 1 else
                         [(y0 + dy, x0 + dx, 8) for dy in (0, 8) for dx in (0, 8)]):
        if y < h and x < w:
          d = rng.integers(-20, 20, 2) / 2
          blocks.append((x, y, size, d[0], d[1], 2))
          expected[y:y + size, x:x + size] = d
  grid = MotionGrid(h, w)
  np.testing.assert_array_equal(to_pixels(grid.field_from_vectors(_vectors(blocks))), expected)
  rect = _vectors([(0, 0, 16, 1.5, -2.0, 2)])
  rect["h"] = 8  # a 16×8 partition
  rect["dst_y"] = 4
  field = to_pixels(grid.field_from_vectors(rect))
  np.testing.assert_array_equal(field[:8, :16], np.broadcast_to([1.5, -2.0], (8, 16, 2)))
  assert not field[8:].any() and not field[:, 16:].any()
