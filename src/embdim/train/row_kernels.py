"""Fused row-wise table updates on CPU: one pass per row a batch reads.

The row-wise optimisers (:class:`embdim.train.optim.LazyAdam`,
:class:`~embdim.train.optim.RowwiseAdagrad`) update only the rows of a table that a batch read.
Written with torch ops, such an update gathers each row's value and optimiser state into new
tensors, computes, and scatters the results back: six or more passes of random row accesses over
tables that, at a million ids, are far larger than the CPU caches (there the update took a quarter
of a DeepFM training step, benchmarks/bench_vocab.py). The kernels here do the same arithmetic row
by row in one parallel loop compiled by numba, so each row's value and state are read and written
once, while in cache, as in FBGEMM's fused table-batched optimisers.

The arithmetic is torch's, in float32 and in the same order (``lerp``, ``addcmul``, ``addcdiv``),
so a fused step equals the torch step up to rounding (tests/test_optim.py). The kernels run for
float32, contiguous CPU tensors; elsewhere (CUDA, other dtypes, numba missing or failing to
compile, ``EMBDIM_FUSED_ROWS=0``) the optimisers keep their torch ops. numba is imported when a
row-wise optimiser first updates a CPU table; its loops use as many threads as torch's pool.
"""

from __future__ import annotations

import functools
import logging
import os
from types import ModuleType

import numpy as np
import torch

log = logging.getLogger(__name__)


@functools.cache
def _kernels() -> ModuleType | None:
    """The compiled kernels, or None (logged once) where they cannot run."""
    if os.environ.get("EMBDIM_FUSED_ROWS", "1") == "0":
        return None
    # Starting numba's threading layer (its OpenMP runtime may be torch's) resets the process's
    # OpenMP thread count to all cores: keep torch's intra-op pool as train.threads set it.
    torch_threads = torch.get_num_threads()
    try:
        from embdim.train import _numba_rows
        _numba_rows.lazy_adam(*_tiny_adam_args())  # compile now (or load from numba's cache)
        _numba_rows.rowwise_adagrad(*_tiny_adagrad_args())
    except Exception as exc:  # ImportError, or a platform numba cannot compile for
        log.warning("fused row-wise table updates unavailable (%s: %s); using torch ops",
                    type(exc).__name__, exc)
        return None
    finally:
        if torch.get_num_threads() != torch_threads:
            torch.set_num_threads(torch_threads)
    return _numba_rows


def _tiny_adam_args():
    t, f32 = np.zeros((2, 1), np.float32), np.float32
    return t, t.copy(), t.copy(), np.zeros(1, np.int64), t[:1].copy(), f32(0.1), f32(0.9), \
        f32(0.1), f32(0.0), f32(1.0)


def _tiny_adagrad_args():
    return (np.zeros((2, 1), np.float32), np.zeros(2, np.float32), np.zeros(1, np.int64),
            np.zeros((1, 1), np.float32), np.float32(0.0), np.float32(1.0))


def fused_rows_available(*tensors: torch.Tensor) -> bool:
    """Whether the fused kernels can update ``tensors`` (tables, states, gradient values) in place."""
    return (all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
                for t in tensors) and _kernels() is not None)


def _array(t: torch.Tensor) -> np.ndarray:
    """A NumPy view of ``t``'s memory (writes go to the tensor)."""
    return t.detach().numpy()


def _set_threads(kernels: ModuleType) -> None:
    """Run the kernels' loops on as many threads as torch's intra-op pool."""
    numba = kernels.numba
    numba.set_num_threads(max(1, min(torch.get_num_threads(), numba.config.NUMBA_NUM_THREADS)))


def lazy_adam_rows_(value: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                    rows: torch.Tensor, grad: torch.Tensor, *, beta1: float, beta2: float,
                    step_size: float, eps: float) -> None:
    """SparseAdam's update of ``rows`` (distinct, int64) with their summed gradients ``grad``
    ``[len(rows), D]``, in place on the table ``value`` and its moments (``LazyAdam``'s rule)."""
    kernels, f32 = _kernels(), np.float32
    _set_threads(kernels)
    kernels.lazy_adam(_array(value), _array(exp_avg), _array(exp_avg_sq), _array(rows),
                      _array(grad), f32(1 - beta1), f32(beta2), f32(1 - beta2), f32(-step_size),
                      f32(eps))


def rowwise_adagrad_rows_(value: torch.Tensor, state_sum: torch.Tensor, rows: torch.Tensor,
                          grad: torch.Tensor, *, lr: float, eps: float) -> None:
    """Exact row-wise Adagrad's update of ``rows`` (distinct, int64) with their summed gradients
    ``grad`` ``[len(rows), D]``, in place on ``value`` and its per-row ``state_sum``."""
    kernels = _kernels()
    _set_threads(kernels)
    kernels.rowwise_adagrad(_array(value), _array(state_sum), _array(rows), _array(grad),
                            np.float32(-lr), np.float32(eps))
