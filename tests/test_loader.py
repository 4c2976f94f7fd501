"""BatchLoader: every row exactly once per epoch, deterministic per (seed, epoch), both modes."""

import numpy as np
import pytest
import torch

from embdim.data.dataset import SplitArrays
from embdim.data.loader import BatchLoader


def _split(n=1003, f=3):
    x = np.arange(n * f, dtype=np.int32).reshape(n, f)
    return SplitArrays(x=x, y=np.arange(n, dtype=np.float32))


@pytest.mark.parametrize("in_memory", [True, False])
@pytest.mark.parametrize("shuffle", [True, False])
def test_every_row_once_per_epoch(in_memory, shuffle):
    split = _split()
    loader = BatchLoader(split, 64, shuffle=shuffle, seed=1, block_rows=200,
                         max_memory_bytes=1 << 40 if in_memory else 0)
    assert loader.in_memory is in_memory
    batches = list(loader.epoch(0))
    assert len(batches) == len(loader)
    ys = torch.cat([y for _, y in batches]).numpy().astype(int)
    assert sorted(ys.tolist()) == list(range(1003))
    for x, y in batches:  # rows stay aligned with their labels
        assert x.dtype == torch.int32
        assert torch.equal(x[:, 0], (y * 3).to(torch.int32))
    if not shuffle:
        assert ys.tolist() == list(range(1003))


@pytest.mark.parametrize("in_memory", [True, False])
def test_shuffle_is_a_function_of_seed_and_epoch(in_memory):
    split = _split()
    mk = lambda seed: BatchLoader(split, 100, shuffle=True, seed=seed, block_rows=300,
                                  max_memory_bytes=1 << 40 if in_memory else 0)
    order = lambda loader, e: torch.cat([y for _, y in loader.epoch(e)]).tolist()
    assert order(mk(5), 3) == order(mk(5), 3)
    assert order(mk(5), 3) != order(mk(5), 4)
    assert order(mk(5), 3) != order(mk(6), 3)


def test_drop_last():
    loader = BatchLoader(_split(1000), 300, shuffle=True, drop_last=True)
    assert len(loader) == 3
    assert [len(y) for _, y in loader.epoch(0)] == [300, 300, 300]
