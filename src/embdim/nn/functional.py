"""Hot-path functions: a faster CPU dropout and the FM interaction with a closed-form backward.

:func:`dropout` is inverted dropout whose mask comes from 16-bit random integers (two masks per
32-bit draw) instead of ``bernoulli_`` on floats: about 3x faster on CPU for a [4096, 128]
activation. The drop probability is rounded to a multiple of 1/65536 (0.2 -> 0.199997). On other
devices it is the stock ``F.dropout``.

:func:`fm_interaction` is FM's ``sum_{i<j} <v_i, v_j> = 0.5 (|sum_i v_i|^2 - sum_i |v_i|^2)`` with
the backward written out, ``d/dv_i = g (s - v_i)`` (``s = sum_i v_i``), one fused pass over
``[B, F, D]`` instead of autograd's ``pow`` backward, expanded-gradient copy and separate sums (about
2x faster for DeepFM's [4096, 39, 16]). The backward is itself made of differentiable operations.

(The embedding gather needs no such helper: ``weight.index_select(0, int64 rows)`` already has an
``index_add_`` backward, several times faster on CPU than ``F.embedding``'s dense backward.)
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

_INT16_SPAN = 1 << 16


def dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """Inverted dropout: zero each element with probability ``p``, scale the rest by 1/(1-p)."""
    if not training or p <= 0.0:
        return x
    if p >= 1.0:
        return torch.zeros_like(x)
    if x.device.type != "cpu":
        return F.dropout(x, p, True)
    n = x.numel()
    draws = torch.randint(-(2**31), 2**31 - 1, ((n + 1) // 2,), dtype=torch.int32)
    r = draws.view(torch.int16)[:n].view(x.shape)
    # r is uniform on [-32768, 32767]; keep an element when r >= threshold.
    threshold = int(round(p * _INT16_SPAN)) - (1 << 15)
    mask = (r >= threshold).to(x.dtype).mul_(1.0 / (1.0 - p))  # 0 or 1/(1-p)
    return x * mask


class _FMInteraction(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        s = x.sum(1)  # [B, D]
        ctx.save_for_backward(x, s)
        return 0.5 * (s.square().sum(1) - torch.linalg.vector_norm(x, dim=(1, 2)).square())

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> torch.Tensor:
        x, s = ctx.saved_tensors
        if torch.is_grad_enabled():  # a double backward: s as a function of x
            s = x.sum(1)
        # g (s - x) in one pass: g s (per row) minus g x
        return torch.addcmul((g.unsqueeze(1) * s).unsqueeze(1), x, g[:, None, None], value=-1.0)


def fm_interaction(x: torch.Tensor) -> torch.Tensor:
    """``[B, F, D] -> [B]``: ``sum_{i<j} <v_i, v_j>`` (FM's pairwise term)."""
    return _FMInteraction.apply(x)
