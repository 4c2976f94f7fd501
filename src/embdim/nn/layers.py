"""Interaction blocks shared by the base models (shapes: B batch, F fields, D embedding width).

* :class:`MLP` — the deep part (AutoDim sec. 3.2: Linear -> BatchNorm -> ReLU -> Dropout per layer);
* :class:`BiInteraction` — NFM's bi-interaction pooling (He & Chua, SIGIR 2017, eq. 4);
* :class:`FactorizationMachine` — FM's pairwise term (Rendle, ICDM 2010, eq. 5 trick);
* :class:`InnerProduct` — IPNN's pairwise inner products (Qu et al., ICDM 2016);
* :class:`SelfAttentionLayer` — AutoInt's interacting layer (Song et al., CIKM 2019, eq. 5-8).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from embdim.nn.functional import dropout, fm_interaction


class Dropout(nn.Module):
    """``nn.Dropout`` on :func:`embdim.nn.functional.dropout` (same result in law, faster on CPU)."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: Tensor) -> Tensor:
        return dropout(x, self.p, self.training)

    def extra_repr(self) -> str:
        return f"p={self.p}"


class Linear(nn.Linear):
    """``nn.Linear`` whose output keeps the input's dtype even under bfloat16 autocast (``train.amp``).

    Autocast runs the matrix product in bfloat16 (several times faster on CPUs with AVX512-BF16 or
    AMX); the BatchNorm / ReLU / dropout after it stay in float32, which is faster on CPU than the
    same elementwise ops in bfloat16. Without autocast the cast is a no-op.
    """

    def forward(self, x: Tensor) -> Tensor:
        y = super().forward(x)
        return y if y.dtype == x.dtype else y.to(x.dtype)


class MLP(nn.Sequential):
    """``[B, in_dim] -> [B, output_dim]`` (or ``[B, hidden[-1]]`` when ``output_dim`` is None).

    Each hidden layer is Linear -> BatchNorm1d (if ``batch_norm``) -> ReLU -> Dropout(``dropout``);
    the output layer is a plain Linear (the logit; the sigmoid lives in the loss).
    """

    def __init__(self, in_dim: int, hidden: list[int], dropout: float = 0.0, batch_norm: bool = True,
                 output_dim: int | None = 1):
        layers: list[nn.Module] = []
        for width in hidden:
            layers.append(Linear(in_dim, width))
            if batch_norm:
                layers.append(nn.BatchNorm1d(width))
            layers.append(nn.ReLU())
            if dropout > 0:
                layers.append(Dropout(dropout))
            in_dim = width
        if output_dim is not None:
            layers.append(Linear(in_dim, output_dim))
        super().__init__(*layers)
        self.out_dim = output_dim if output_dim is not None else in_dim


class BiInteraction(nn.Module):
    """``[B, F, D] -> [B, D]``: ``sum_{i<j} v_i * v_j = 0.5 * ((sum_i v_i)^2 - sum_i v_i^2)``."""

    def forward(self, x: Tensor) -> Tensor:
        return 0.5 * (x.sum(1).square() - x.square().sum(1))


class FactorizationMachine(nn.Module):
    """``[B, F, D] -> [B]``: ``sum_{i<j} <v_i, v_j>``, in O(F D) with the square-of-sum trick."""

    def forward(self, x: Tensor) -> Tensor:
        return fm_interaction(x)  # closed-form backward (embdim.nn.functional)


class InnerProduct(nn.Module):
    """``[B, F, D] -> [B, F(F-1)/2]``: ``<v_i, v_j>`` for every pair ``i < j`` (row-major order).

    One batched Gram matrix ``x x^T [B, F, F]`` and a gather of its strict upper triangle: far less
    memory than materialising the two ``[B, pairs, D]`` operands.
    """

    def __init__(self, num_fields: int):
        super().__init__()
        row, col = torch.triu_indices(num_fields, num_fields, offset=1)
        self.register_buffer("pairs", row * num_fields + col, persistent=False)
        self.num_pairs = len(row)

    def forward(self, x: Tensor) -> Tensor:
        gram = torch.bmm(x, x.transpose(1, 2))  # [B, F, F]
        return gram.flatten(1).index_select(1, self.pairs)


class SelfAttentionLayer(nn.Module):
    """AutoInt interacting layer: ``[B, F, in_dim] -> [B, F, heads * att_dim]``.

    Per head ``h``: ``softmax(Q_h K_h^T [* 1/sqrt(att_dim) if scaled]) V_h`` with ``Q_h, K_h, V_h``
    linear maps of the input (no bias); heads are concatenated, a residual projection
    ``W_res x`` is added (if ``residual``), then ReLU. The AutoInt paper does not scale the scores.
    """

    def __init__(self, in_dim: int, att_dim: int, heads: int, residual: bool = True,
                 scaled: bool = False):
        super().__init__()
        self.heads, self.att_dim, self.scaled = heads, att_dim, scaled
        self.qkv = Linear(in_dim, 3 * heads * att_dim, bias=False)
        self.res = Linear(in_dim, heads * att_dim, bias=False) if residual else None
        self.out_dim = heads * att_dim

    def forward(self, x: Tensor) -> Tensor:
        b, f, _ = x.shape
        q, k, v = self.qkv(x).view(b, f, 3, self.heads, self.att_dim).permute(2, 0, 3, 1, 4)
        scale = None if self.scaled else 1.0  # None: SDPA's default 1/sqrt(att_dim)
        out = F.scaled_dot_product_attention(q, k, v, scale=scale)  # [B, H, F, A]
        out = out.transpose(1, 2).reshape(b, f, self.out_dim)
        if self.res is not None:
            out = out + self.res(x)
        return torch.relu(out)
