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


def _quadtree_blocks(rng, h, w, top, smallest):
  """A codec-like partition: each top×top block intra, whole, or split in four, recursively
  down to ``smallest``; only blocks that start inside the frame (as codecs emit them)."""
  blocks = []

  def split(y, x, size):
    choice = rng.integers(3) if size > smallest else rng.integers(2)
    if choice == 2:
      for dy in (0, size // 2):
        for dx in (0, size // 2):
          split(y + dy, x + dx, size // 2)
    elif choice == 1 and y < h and x < w:
      blocks.append((x, y, size, *(rng.integers(-40, 40, 2) / 4), int(rng.choice([1, 2, 4]))))

  for y in range(0, h, top):
    for x in range(0, w, top):
      split(y, x, top)
  return blocks


def test_square_blocks_paint_like_the_pixel_definition_and_the_general_path():
  """Codec-like partitions (16×16 macroblocks with 8×8 blocks as in MPEG-4, and deeper ones),
  frames not a multiple of 16, mixed precisions: the fast path for square blocks gives every
  pixel its block's vector (the rest zero) and exactly the general path's cells."""
  rng = np.random.default_rng(2)
  for trial in range(300):
    h, w = (int(v) for v in rng.integers(8, 100, 2))
    top, smallest = [(16, 8), (32, 4), (16, 16)][trial % 3]
    blocks = _quadtree_blocks(rng, h, w, top, smallest)
    mvs = _vectors(blocks)
    grid = MotionGrid(h, w)
    expected = np.zeros((h, w, 2))
    for (x, y, size, *_), m in zip(blocks, mvs):  # the stored vector, in quarter pels
      expected[y:y + size, x:x + size] = [m["motion_x"] * QPEL // m["motion_scale"] / QPEL,
                                          m["motion_y"] * QPEL // m["motion_scale"] / QPEL]
    step = grid.step_from_vectors(mvs)
    np.testing.assert_array_equal(to_pixels(grid.expand(step)), expected)
    if len(blocks):
      top_left = (mvs["dst_y"].astype(np.intp) - mvs["h"] // 2,
                  mvs["dst_x"].astype(np.intp) - mvs["w"] // 2)
      q = np.stack([mvs["motion_x"] * QPEL // mvs["motion_scale"],
                    mvs["motion_y"] * QPEL // mvs["motion_scale"]], -1)
      general = grid._paint_blocks  # pylint: disable=protected-access
      np.testing.assert_array_equal(step.cells,
                                    general(mvs["w"], mvs["h"], *top_left, q, step.cell))


def test_blocks_off_their_grid_take_the_general_path_and_blocks_outside_the_frame_are_dropped():
  """What codecs do not emit takes the general path: a 16×16 block at y = 8, an 8×8 block wholly
  below the frame (dropped: it must not be clamped onto the last row), and a 16×8 rectangle."""
  grid = MotionGrid(24, 32)
  mvs = _vectors([(0, 8, 16, 1.0, 0, 2), (16, 8, 8, 2.0, 0, 2), (16, 24, 8, 3.0, 0, 2)])
  field = to_pixels(grid.field_from_vectors(mvs))
  np.testing.assert_array_equal(field[8:24, :16, 0], np.ones((16, 16)))
  np.testing.assert_array_equal(field[8:16, 16:24, 0], np.full((8, 8), 2.0))
  assert not field[:8].any() and not field[16:, 16:].any()
  rect = _vectors([(0, 0, 16, 1.5, -2.0, 2)])
  rect["h"] = 8  # a 16×8 partition
  rect["dst_y"] = 4
  field = to_pixels(grid.field_from_vectors(rect))
  np.testing.assert_array_equal(field[:8, :16], np.broadcast_to([1.5, -2.0], (8, 16, 2)))
  assert not field[8:].any() and not field[:, 16:].any()
  # alone, or beside one reaching past the frame's edge: their sides alone chose 16-pixel cells,
  # and y = 8 painted rows 0-15, x = -8 overwrote its neighbour's cell
  field = to_pixels(grid.field_from_vectors(_vectors([(0, 8, 16, 1.0, 0, 2)])))
  np.testing.assert_array_equal(field[8:24, :16, 0], np.ones((16, 16)))
  assert not field[:8].any() and not field[:, 16:].any()
  field = to_pixels(grid.field_from_vectors(_vectors([(-8, 0, 16, 2, 0, 2), (8, 0, 16, 3, 0, 2)])))
  assert (field[:16, :8, 0] == 2).all() and (field[:16, 8:24, 0] == 3).all()
  zero_scale = _vectors([(0, 0, 16, 0, 0, 2)])
  zero_scale["motion_scale"] = 0  # a broken stream: no vector rather than a crash
  with np.errstate(divide="ignore"):
    assert not grid.field_from_vectors(zero_scale).any()


def test_mpeg4_4mv_blocks_below_a_frame_not_a_multiple_of_16_high_are_dropped():
  """With 4MV, FFmpeg exports all four 8×8 blocks of a last-row macroblock even when the frame
  ends 4 rows into it: the lower two describe no pixel and must not overwrite the upper two."""
  grid = MotionGrid(20, 16)
  mvs = _vectors([(0, 0, 16, 0, 0, 2), (0, 16, 8, 1.0, 0, 2), (8, 16, 8, 1.0, 0, 2),
                  (0, 24, 8, -10.0, -10.0, 2), (8, 24, 8, -10.0, -10.0, 2)])
  field = to_pixels(grid.field_from_vectors(mvs))
  np.testing.assert_array_equal(field[16:], np.broadcast_to([1.0, 0.0], (4, 16, 2)))
  assert not field[:16].any()
  only_outside = _vectors([(0, 24, 8, -10.0, -10.0, 2)])
  assert not grid.field_from_vectors(only_outside).any()


def test_trace_reads_cells_of_any_byte_order_or_integer_type():
  """Each step's (x, y) pairs are gathered as one int32: cells not native int16 (a step loaded
  from a big-endian file) must be converted first, not reinterpreted."""
  grid = MotionGrid(16, 16)
  native = [MotionStep(np.array([[[4, 8]]], np.int16), 16), MotionStep(np.zeros((1, 1, 2), np.int16), 16)]
  expected = grid.trace(native)
  assert expected[0, 0].tolist() == [4, 8]
  for dtype in (">i2", np.int32):
    steps = [MotionStep(s.cells.astype(dtype), s.cell) for s in native]
    np.testing.assert_array_equal(grid.trace(steps), expected)


def test_a_zero_sided_block_on_the_frame_edge_is_dropped_as_outside():
  """It describes no pixel: painted, it moved the step off MPEG-4's grid (cell 16 → 8) and,
  overlapping others, changed which vector won."""
  mvs = _vectors([(0, 0, 16, 1.25, 0, 4)])
  empty = _vectors([(0, 0, 8, 1.75, 0, 4)])
  empty[["w", "h", "dst_x", "dst_y"]] = (8, 0, 4, 0)  # zero height, at the top edge
  step = MotionGrid(16, 16).step_from_vectors(np.concatenate([mvs, empty]))
  assert step.cell == 16 and step.cells.tolist() == [[[5, 0]]]
