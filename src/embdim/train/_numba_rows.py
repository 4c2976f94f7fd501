"""The loops of :mod:`embdim.train.row_kernels`, compiled by numba (imported only when a row-wise
optimiser first updates a CPU table). Arguments are NumPy views of the tensors, scalars float32."""

from __future__ import annotations

import math

import numba
import numpy as np


def _compile(fn):
    """Compile ``fn`` as a parallel loop, cached on disk where numba can write (a read-only
    installation compiles once per process instead)."""
    try:
        return numba.njit(parallel=True, cache=True, boundscheck=False)(fn)
    except RuntimeError:  # no writable cache location
        return numba.njit(parallel=True, boundscheck=False)(fn)


def _lazy_adam(value, exp_avg, exp_avg_sq, rows, grad, weight1, beta2, weight2, neg_step_size, eps):
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        for k in range(grad.shape[1]):
            g = grad[i, k]
            m = exp_avg[r, k]
            m = m + weight1 * (g - m)  # torch.lerp(m, g, 1 - beta1), weight below 0.5
            v = exp_avg_sq[r, k] * beta2 + weight2 * g * g  # .mul_(beta2).addcmul_(g, g, 1 - beta2)
            exp_avg[r, k] = m
            exp_avg_sq[r, k] = v
            value[r, k] = value[r, k] + neg_step_size * m / (math.sqrt(v) + eps)  # .addcdiv_


def _rowwise_adagrad(value, state_sum, rows, grad, neg_lr, eps):
    width = grad.shape[1]
    for i in numba.prange(rows.shape[0]):
        r = rows[i]
        sum_sq = np.float32(0.0)
        for k in range(width):
            sum_sq += grad[i, k] * grad[i, k]
        acc = state_sum[r] + sum_sq / np.float32(width)
        state_sum[r] = acc
        denom = math.sqrt(acc) + eps
        for k in range(width):
            value[r, k] = value[r, k] + neg_lr * grad[i, k] / denom


lazy_adam = _compile(_lazy_adam)
rowwise_adagrad = _compile(_rowwise_adagrad)
