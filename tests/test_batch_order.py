"""Batch order: length grouping and each process's part of a global batch (index level)."""

import grain
import numpy as np
import pytest

from cope_jax.data.batch_order import LengthGrouped, ProcessPart

N, BATCH, WINDOW = 100, 4, 5


def _order(sizes, epochs=2, seed=3, window=WINDOW):
  ds = grain.MapDataset.range(N).shuffle(seed=seed).repeat(epochs)
  return np.array(list(LengthGrouped(ds, sizes, BATCH, window, seed)))


def test_an_epoch_of_whole_windows_visits_every_example_once():
  sizes = np.random.default_rng(0).integers(10, 1000, N)
  order = _order(sizes)
  assert len(order) == 2 * N
  for epoch in order.reshape(2, N):
    assert sorted(epoch) == list(range(N))
  assert not np.array_equal(order[:N], order[N:])  # a new order every epoch
  np.testing.assert_array_equal(order, _order(sizes))  # and the same one for the same seed


def test_batches_hold_neighbours_in_size_and_come_in_random_order():
  sizes = np.random.default_rng(1).permutation(N) * 10  # distinct sizes
  batches = sizes[_order(sizes, epochs=1)].reshape(-1, BATCH)
  span = BATCH * WINDOW
  for w, window in enumerate(batches.reshape(-1, WINDOW, BATCH)):
    # each batch is a run of the window's sorted sizes, and the window holds the shuffled
    # order's own examples
    ranked = np.sort(window.reshape(-1))
    for batch in window:
      first = np.searchsorted(ranked, batch.min())
      np.testing.assert_array_equal(np.sort(batch), ranked[first:first + BATCH])
    shuffled = np.array(list(grain.MapDataset.range(N).shuffle(seed=3)))
    np.testing.assert_array_equal(ranked, np.sort(sizes[shuffled[w * span:(w + 1) * span]]))
  assert not np.all(np.diff(batches.max(1)) > 0)  # not simply shortest first
  # the padding that grouping saves: the summed batch maxima against random batches
  random_batches = sizes[np.array(list(grain.MapDataset.range(N).shuffle(seed=3)))]
  assert batches.max(1).sum() < 0.8 * random_batches.reshape(-1, BATCH).max(1).sum()


def test_a_short_last_window_keeps_its_short_batch_last():
  sizes = np.arange(N)
  ds = grain.MapDataset.range(N - 2)  # 98: the last window has 18 examples, 4 batches + 2
  order = np.array(list(LengthGrouped(ds, sizes, BATCH, WINDOW, 0)))
  assert sorted(order) == list(range(N - 2))
  np.testing.assert_array_equal(np.sort(order[-2:]), [96, 97])  # the two largest of 80–97


@pytest.mark.parametrize("length", [96, 100, 90])
def test_processes_take_blocks_of_each_global_batch(length):
  ds = grain.MapDataset.range(length)
  parts = [list(ProcessPart(ds, 2, i, 3)) for i in range(3)]  # global batch 6, 2 per process
  assert sorted(sum(parts, [])) == list(range(length))
  for i, part in enumerate(parts):
    assert len(part) == len(ProcessPart(ds, 2, i, 3))
    for g, block in enumerate(np.array(part[:len(part) // 2 * 2]).reshape(-1, 2)):
      np.testing.assert_array_equal(block, [6 * g + 2 * i, 6 * g + 2 * i + 1])


def test_bad_sizes_are_refused():
  with pytest.raises(ValueError, match="window"):
    LengthGrouped(grain.MapDataset.range(4), np.ones(4), 2, 0, 0)


def test_an_epoch_of_part_of_a_window_mixes_only_across_its_boundary():
  # 98 examples, windows of 20: windows 0–3 lie inside epoch 0, window 4 holds its last 18 and
  # the first 2 of epoch 1.
  n, span = N - 2, BATCH * WINDOW
  ds = grain.MapDataset.range(n).shuffle(seed=3).repeat(3)
  order = np.array(list(LengthGrouped(ds, np.arange(N), BATCH, WINDOW, 3)))
  shuffled = np.array(list(ds))
  assert len(order) == 3 * n
  np.testing.assert_array_equal(np.bincount(order, minlength=n), np.full(n, 3))
  for w in range(len(order) // span + 1):  # each window holds its own stretch of the stream
    np.testing.assert_array_equal(np.sort(order[w * span:(w + 1) * span]),
                                  np.sort(shuffled[w * span:(w + 1) * span]))
  np.testing.assert_array_equal(np.sort(order[:80]), np.sort(shuffled[:80]))
  assert sorted(order[:80]) == sorted(set(order[:80]))  # inside epoch 0: no repeats
