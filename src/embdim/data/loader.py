"""Mini-batches from a prepared split: array slices, no per-row Python.

Two modes, chosen by the split's size:

* **in memory** (default when the split fits in ``max_memory_bytes``): the split's arrays are
  copied once into torch tensors (on the training device, so a GPU gets its data already there);
  each epoch draws a permutation from a generator seeded by ``(seed, epoch)``, and a batch is one
  ``index_select`` of that permutation's slice.
* **out of core** (a split larger than that): the memory-mapped arrays are read block by block
  (``block_rows`` contiguous rows, blocks in a seeded random order, rows shuffled inside a block),
  so memory stays bounded by the block size whatever the number of rows.

Both modes are deterministic functions of ``(seed, epoch)``: resuming at epoch ``e`` replays the
same batches an uninterrupted run would have seen.

``row_range=(start, stop)`` restricts the loader to those rows of the split (a data-parallel
process's shard, see :mod:`embdim.distributed`): only they are read from the memory map.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from embdim.data.dataset import SplitArrays

DEFAULT_MAX_MEMORY_BYTES = 8 << 30
DEFAULT_BLOCK_ROWS = 1 << 18


def read_rows(array: np.ndarray, start: int, stop: int) -> np.ndarray:
    """Rows ``[start, stop)`` of a (memory-mapped) array as a new in-RAM array.

    A memory-mapped ``.npy`` file is read with plain file I/O rather than through the map: the
    pages then pass through the OS page cache without being mapped into this process, so its
    resident memory holds only the rows read (reading through the map would keep every page it
    touched resident, and a pass over a 40M-row split would grow the process by the whole file).
    """
    if isinstance(array, np.memmap) and array.filename and array.flags.c_contiguous:
        row_items = int(np.prod(array.shape[1:], dtype=np.int64))
        row_bytes = row_items * array.dtype.itemsize
        out = np.fromfile(array.filename, dtype=array.dtype, count=(stop - start) * row_items,
                          offset=array.offset + start * row_bytes)
        return out.reshape((stop - start, *array.shape[1:]))
    return np.array(array[start:stop], order="C")


def _generator(seed: int, epoch: int, device: torch.device | str = "cpu") -> torch.Generator:
    g = torch.Generator(device="cpu")
    g.manual_seed((int(seed) * 1_000_003 + int(epoch) * 7919 + 17) % (2**63 - 1))
    return g


class BatchLoader:
    """Iterate ``(ids int32 [B, F], labels float32 [B])`` over one split.

    ``loader.epoch(e)`` yields the batches of epoch ``e``; ``len(loader)`` is the number of
    batches per epoch. With ``shuffle=False`` rows come in file order (evaluation).
    """

    def __init__(self, split: SplitArrays, batch_size: int, *, shuffle: bool, seed: int = 0,
                 device: str | torch.device = "cpu", drop_last: bool = False,
                 max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
                 block_rows: int = DEFAULT_BLOCK_ROWS,
                 row_range: tuple[int, int] | None = None):
        if batch_size <= 0:
            raise ValueError("batch_size must be positive")
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.seed = seed
        self.device = torch.device(device)
        self.drop_last = drop_last
        self.first_row, last_row = row_range if row_range is not None else (0, len(split))
        if not 0 <= self.first_row <= last_row <= len(split):
            raise ValueError(f"row_range {row_range} outside the split's {len(split)} rows")
        self.rows = last_row - self.first_row
        self.block_rows = max(int(block_rows), self.batch_size)
        row_bytes = (split.x.nbytes + split.y.nbytes) // max(1, len(split))
        self.in_memory = self.rows * row_bytes <= max_memory_bytes
        self._split = split
        if self.in_memory:
            # The rows are read into RAM once (on the training device).
            x, y = self._read(self.first_row, last_row)
            self._x, self._y = x.to(self.device), y.to(self.device)

    def _read(self, start: int, stop: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Rows ``[start, stop)`` of the split in RAM, checked by ``split.check`` when set (ids
        within their fields' vocabularies, labels 0/1): a damaged row is a DataError."""
        x, y = read_rows(self._split.x, start, stop), read_rows(self._split.y, start, stop)
        if self._split.check is not None:
            self._split.check(x, y, start)
        return torch.from_numpy(x), torch.from_numpy(y)

    def __len__(self) -> int:
        if self.drop_last:
            return self.rows // self.batch_size
        return -(-self.rows // self.batch_size)

    def batches(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        """The batches of epoch 0, then epoch 1, ... (each pass shuffled by its own epoch); ends
        only if a pass is empty."""
        epoch = 0
        while True:
            empty = True
            for batch in self.epoch(epoch):
                empty = False
                yield batch
            if empty:
                return
            epoch += 1

    def epoch(self, epoch: int = 0) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        if self.in_memory:
            yield from self._epoch_in_memory(epoch)
        else:
            yield from self._epoch_out_of_core(epoch)

    def __iter__(self) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        return self.epoch(0)

    # ---- in memory ------------------------------------------------------------------------------
    def _epoch_in_memory(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        n, b = self.rows, self.batch_size
        stop = (n // b) * b if self.drop_last else n
        if not self.shuffle:
            for start in range(0, stop, b):
                yield self._x[start:start + b], self._y[start:start + b]
            return
        perm = torch.randperm(n, generator=_generator(self.seed, epoch)).to(self.device)
        for start in range(0, stop, b):
            idx = perm[start:start + b]
            yield self._x.index_select(0, idx), self._y.index_select(0, idx)

    # ---- out of core ----------------------------------------------------------------------------
    def _epoch_out_of_core(self, epoch: int) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
        b, first = self.batch_size, self.first_row
        stop = first + self.rows
        starts = np.arange(first, stop, self.block_rows)
        g = _generator(self.seed, epoch)
        if self.shuffle:
            starts = starts[torch.randperm(len(starts), generator=g).numpy()]
        carry_x: torch.Tensor | None = None
        carry_y: torch.Tensor | None = None
        for s in starts:
            end = min(s + self.block_rows, stop)
            x, y = self._read(s, end)
            if self.shuffle:
                p = torch.randperm(len(y), generator=g)
                x, y = x.index_select(0, p), y.index_select(0, p)
            if carry_x is not None:
                x, y = torch.cat([carry_x, x]), torch.cat([carry_y, y])
            full = (len(y) // b) * b
            for start in range(0, full, b):
                yield (x[start:start + b].to(self.device, non_blocking=True),
                       y[start:start + b].to(self.device, non_blocking=True))
            carry_x, carry_y = x[full:], y[full:]
        if carry_y is not None and len(carry_y) and not self.drop_last:
            yield carry_x.to(self.device), carry_y.to(self.device)
