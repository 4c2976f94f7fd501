"""The enhanced DLRS of AutoEmb (sec. 2.2, 2.4, 3.2): multi-width user/item embeddings, unified to
the largest width, mixed by soft selection, then an MLP with a regression or classification head.

Shapes: ``B`` batch, ``N`` candidate widths ``d_1 < ... < d_N``, ``D = d_N``.

* :class:`MultiWidthEmbedding` — one table per entity holding the N candidate embeddings side by
  side (``[num, d_1 + ... + d_N]``: one gather per lookup, sec. 3.2); per candidate a linear map to
  ``D`` (eq. 1), BatchNorm without affine parameters and tanh (eq. 2): ``ids [B] -> [B, N, D]``.
* soft selection (eq. 7): ``u = (1/N) sum_n alpha_n e_n`` with ``alpha [B, N]`` from a controller;
* :class:`AutoEmbModel` — ``h_0 = [u; v]`` (``[B, 2D]``), hidden layers ``tanh(W h + b)`` (eq. 4),
  output (eq. 5): one logit (``regression``: sigmoid, trained with MSE on the binarised rating) or
  five logits (``classification``: softmax over the rating classes, cross-entropy);
* :class:`FixedWidthModel` — the FSE baseline, the basic DLRS of sec. 2.1: one embedding of a fixed
  width per user/item, concatenated into the same hidden layers.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS = ("regression", "classification")
NUM_CLASSES = 5


def task_outputs(task: str) -> int:
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}, not {task!r}")
    return 1 if task == "regression" else NUM_CLASSES


def hidden_layers(in_dim: int, hidden: Sequence[int], out_dim: int) -> nn.Sequential:
    """``[B, in_dim] -> [B, out_dim]``: Linear + tanh per hidden width (eq. 4), then a Linear (eq. 5;
    the output activation lives in the loss)."""
    layers: list[nn.Module] = []
    for width in hidden:
        layers += [nn.Linear(in_dim, width), nn.Tanh()]
        in_dim = width
    layers.append(nn.Linear(in_dim, out_dim))
    return nn.Sequential(*layers)


class MultiWidthEmbedding(nn.Module):
    """``ids [B] -> [B, N, D]``: the N candidate embeddings of each id, transformed to width D."""

    def __init__(self, num: int, widths: Sequence[int], init_std: float = 0.1):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w <= 0 for w in widths) or sorted(set(widths)) != widths:
            raise ValueError(f"candidate widths must be positive and increasing, got {widths}")
        self.widths = widths
        self.out_dim = widths[-1]
        self.table = nn.Embedding(num, sum(widths))
        nn.init.normal_(self.table.weight, std=init_std)
        self.transforms = nn.ModuleList(nn.Linear(w, self.out_dim) for w in widths)
        # One BatchNorm over the N stacked outputs is N independent BatchNorms (eq. 2).
        self.norm = nn.BatchNorm1d(len(widths) * self.out_dim, affine=False)

    @property
    def num_candidates(self) -> int:
        return len(self.widths)

    def forward(self, ids: Tensor) -> Tensor:
        parts = self.table(ids).split(self.widths, dim=1)
        unified = torch.cat([t(p) for t, p in zip(self.transforms, parts, strict=True)], dim=1)
        return torch.tanh(self.norm(unified)).view(len(ids), len(self.widths), self.out_dim)


def soft_select(candidates: Tensor, weights: Tensor) -> Tensor:
    """Eq. 7: ``[B, N, D], [B, N] -> [B, D]``, ``(1/N) sum_n w_n e_n``."""
    return torch.einsum("bnd,bn->bd", candidates, weights) / candidates.shape[1]


class AutoEmbModel(nn.Module):
    """The enhanced DLRS: ``(users [B], items [B], alpha [B, N], beta [B, N]) -> [B] or [B, 5]``."""

    def __init__(self, num_users: int, num_items: int, widths: Sequence[int] = (2, 16, 128),
                 hidden: Sequence[int] = (512, 512), task: str = "regression"):
        super().__init__()
        self.task = task
        self.users = MultiWidthEmbedding(num_users, widths)
        self.items = MultiWidthEmbedding(num_items, widths)
        self.mlp = hidden_layers(2 * self.users.out_dim, hidden, task_outputs(task))

    @property
    def num_candidates(self) -> int:
        return self.users.num_candidates

    def forward(self, users: Tensor, items: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        u = soft_select(self.users(users), alpha)
        v = soft_select(self.items(items), beta)
        out = self.mlp(torch.cat([u, v], dim=1))
        return out.squeeze(1) if self.task == "regression" else out

    def embedding_params(self) -> int:
        return self.users.table.weight.numel() + self.items.table.weight.numel()


class FixedWidthModel(nn.Module):
    """FSE (sec. 3.4): ``(users [B], items [B]) -> [B] or [B, 5]`` with one width for everyone."""

    def __init__(self, num_users: int, num_items: int, width: int = 146,
                 hidden: Sequence[int] = (512, 512), task: str = "regression", init_std: float = 0.1):
        super().__init__()
        self.task = task
        self.users = nn.Embedding(num_users, width)
        self.items = nn.Embedding(num_items, width)
        nn.init.normal_(self.users.weight, std=init_std)
        nn.init.normal_(self.items.weight, std=init_std)
        self.mlp = hidden_layers(2 * width, hidden, task_outputs(task))

    def forward(self, users: Tensor, items: Tensor, alpha: Tensor | None = None,
                beta: Tensor | None = None) -> Tensor:
        out = self.mlp(torch.cat([self.users(users), self.items(items)], dim=1))
        return out.squeeze(1) if self.task == "regression" else out

    def embedding_params(self) -> int:
        return self.users.weight.numel() + self.items.weight.numel()


def labels_for(task: str, ratings: Tensor, threshold: float) -> Tensor:
    """Regression: ``rating >= threshold`` as 0./1. (sec. 3.3); classification: the class
    ``clamp(ceil(rating) - 1, 0, 4)`` (ratings 1..5 -> 0..4; half stars round up)."""
    if task == "regression":
        return (ratings >= threshold).float()
    return (torch.ceil(ratings) - 1).clamp(0, NUM_CLASSES - 1).long()


def per_example_loss(task: str, output: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
    """Per-example loss ``[B]`` (squared error of the sigmoid, or cross-entropy) and whether each
    prediction is right ``[B]`` (sigmoid >= 0.5, or argmax)."""
    if task == "regression":
        p = torch.sigmoid(output)
        return (p - labels).square(), ((p >= 0.5).float() == labels).float()
    return F.cross_entropy(output, labels, reduction="none"), (output.argmax(1) == labels).float()
