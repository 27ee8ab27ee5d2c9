"""The order of examples in training batches: length grouping and each process's part.

Both are Grain map steps over example *indices*, placed after the shuffle and before decoding,
so they cost nothing per example and Grain's iterator state restores them exactly.

``LengthGrouped`` (LLaVA's ``group_by_modality_length``): a stage-2 batch is padded to the length
bucket of its longest conversation, and drawn at random almost every batch holds a long one
(the demo: half its conversations are 260-position captions, yet 255 batches in 256 ran at the
640 bucket of the questions). So the shuffled order is cut into windows of ``window`` global
batches; each window is sorted by conversation size, cut into batches, and those batches are put
in a random order (seeded per window). The windows are cut from the repeated stream: when an
epoch is not a whole number of windows, the window across each epoch boundary mixes the end of
one epoch with the start of the next (an example may move into the neighbouring epoch, by less
than a window, and a batch there may hold one example twice, once from each epoch: sorted by
size, the two copies sit side by side). Every example is still seen once per epoch everywhere
else, and once per ``len(data)`` examples on average.

``ProcessPart``: global batch ``g`` is positions ``g·B … g·B + B − 1`` of the order above, and
process ``p`` of ``n`` takes its block of ``B / n`` of them. So processes see disjoint parts whose
union is the data, and a global batch of similar lengths stays one across hosts.
"""

from __future__ import annotations

import grain
import numpy as np


class LengthGrouped(grain.MapDataset):
  """Reorders ``parent`` (example indices) within windows of ``window`` batches by ``sizes``."""

  def __init__(self, parent: grain.MapDataset, sizes: np.ndarray, batch_size: int, window: int,
               seed: int):
    super().__init__(parent)
    if batch_size < 1 or window < 1:
      raise ValueError(f"batch_size and window must be >= 1, got {batch_size} and {window}")
    self._sizes = np.asarray(sizes)
    self._batch, self._span, self._seed = batch_size, batch_size * window, seed
    self._window: tuple[int, np.ndarray] | None = None  # (window number, its example indices)

  def __len__(self) -> int:
    return len(self._parent)

  def __str__(self) -> str:
    return f"LengthGrouped(window={self._span // self._batch} batches)"

  def _examples(self, w: int) -> np.ndarray:
    # Grain's prefetch threads call this concurrently: read the cache once, into a local (a
    # second read could see another thread's window).
    cached = self._window
    if cached is None or cached[0] != w:
      start = w * self._span
      indices = np.array([self._parent[i] for i in range(start, min(start + self._span,
                                                                      len(self._parent)))])
      by_size = indices[np.argsort(self._sizes[indices], kind="stable")]
      full = len(by_size) // self._batch  # a short last batch (end of the data) stays last
      order = np.random.default_rng([self._seed, w]).permutation(full)
      batches = by_size[:full * self._batch].reshape(full, self._batch)[order]
      cached = (w, np.concatenate([batches.reshape(-1), by_size[full * self._batch:]]))
      self._window = cached
    return cached[1]

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    w, k = divmod(index, self._span)
    return self._examples(w)[k]


class ProcessPart(grain.MapDataset):
  """Process ``index`` of ``count``'s block of each global batch of ``parent``."""

  def __init__(self, parent: grain.MapDataset, local_batch: int, index: int, count: int):
    super().__init__(parent)
    self._local, self._index, self._count = local_batch, index, count

  def __len__(self) -> int:
    full, rest = divmod(len(self._parent), self._local * self._count)
    return full * self._local + min(max(rest - self._index * self._local, 0), self._local)

  def __str__(self) -> str:
    return f"ProcessPart({self._index} of {self._count})"

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    batch, k = divmod(index, self._local)
    return self._parent[(batch * self._count + self._index) * self._local + k]
