"""The enhanced DLRS of AutoEmb (sec. 2.2, 2.4, 3.2): multi-width user/item embeddings, unified to
the largest width, mixed by soft selection, then an MLP with a regression or classification head.

Shapes: ``B`` batch, ``N`` candidate widths ``d_1 < ... < d_N``, ``D = d_N``.

* :class:`MultiWidthEmbedding` — one table per entity holding the N candidate embeddings side by
  side (``[num, d_1 + ... + d_N]``: one gather per lookup, sec. 3.2); per candidate a linear map to
  ``D`` (eq. 1), normalisation without affine parameters and tanh (eq. 2): ``ids [B] -> [B, N, D]``.
  Normalisation (:class:`StreamNorm`) is ``running`` by default: the statistics of the *earlier*
  batches, so that a row's score never depends on the other rows of its batch; ``batch`` is eq. 2
  as written (the mini-batch's own mean and variance).
* soft selection (sec. 2.4): ``u = sum_n alpha_n e_n`` with ``alpha [B, N]`` from a controller, the
  "weighted sum" of the text, which for a one-hot ``alpha`` is eq. 6's hard selection; eq. 7 as
  printed adds a factor ``1/N`` (``one_over_n=True``, ``model.one_over_n``);
* :class:`AutoEmbModel` — ``h_0 = [u; v]`` (``[B, 2D]``), hidden layers ``tanh(W h + b)`` (eq. 4),
  output (eq. 5): one logit (``regression``: sigmoid, trained with MSE on the binarised rating) or
  five logits (``classification``: softmax over the rating classes, cross-entropy);
* :class:`FixedWidthModel` — the FSE baseline, the basic DLRS of sec. 2.1: one embedding of a fixed
  width per user/item, concatenated into the same hidden layers. With ``transform`` (the default)
  the embedding goes through the same linear map to ``D``, normalisation and tanh as one AutoEmb
  candidate, so that FSE and AutoEmb differ only in the candidate widths and their weights.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

TASKS = ("regression", "classification")
NUM_CLASSES = 5
NORMS = ("running", "renorm", "batch", "row")


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


class StreamNorm(nn.Module):
    """Eq. 2's normalisation without affine parameters, ``[B, C] -> [B, C]``, in one of four modes.

    * ``running`` (default): ``(x - mu) / sqrt(var + eps)`` with ``mu, var`` the running mean and
      variance of the batches seen *before* this one (exponential average, ``momentum`` 0.1, from
      ``mu = 0, var = 1``); in training mode the batch's own statistics are folded in *after* it
      has been normalised (no gradient flows through them). A row's output therefore depends on
      its own input and on earlier batches only, never on the other rows of its batch — the
      inference form of BatchNorm (Ioffe & Szegedy, the paper's [11]) applied to every batch of
      the evaluate-then-train loop. A one-row batch is normalised like any other; its variance is
      undefined, so it updates the running mean only.
    * ``renorm``: the value of ``running`` (so a row's score still depends only on its own input
      and earlier batches) with the gradient of eq. 2, through the mini-batch mean and variance
      (Batch Renormalization, Ioffe 2017, ``r``/``d`` unclipped; :func:`_batch_gradient`). With
      ``running`` no gradient flows through the statistics, so shrinking a candidate's
      pre-normalisation activations lowers the loss until the statistics catch up, again and
      again: a mixture candidate the model would rather not use has its running variance driven
      towards 0 and its normalised output amplified by up to ``1 / sqrt(eps)``. With eq. 2's
      gradient the scale of the activations gets no gradient (BatchNorm's scale invariance).
    * ``batch``: eq. 2 as written: ``mu_B, sigma_B^2`` of the mini-batch itself in training mode
      (``torch.nn.BatchNorm1d``); a one-row batch (no variance) uses the running statistics.
    * ``row``: each candidate's transformed embedding is normalised over its own ``D`` features
      (mean 0, variance 1 per row and candidate, gradients through the statistics): also
      magnitude-comparable candidates (the purpose eq. 2 states), from the row alone.

    The buffers are those of ``BatchNorm1d`` (``running_mean``, ``running_var``,
    ``num_batches_tracked``). With ``update_stats = False`` (set during the controller update's
    extra passes, :mod:`embdim.autoemb.bilevel`) the running statistics are left untouched.
    """

    def __init__(self, channels: int, mode: str = "running", momentum: float = 0.1, eps: float = 1e-5,
                 groups: int = 1):
        super().__init__()
        if mode not in NORMS:
            raise ValueError(f"norm must be one of {NORMS}, not {mode!r}")
        self.mode = mode
        self.groups = groups  # row mode: the N candidates are normalised separately
        self.update_stats = True
        self.bn = nn.BatchNorm1d(channels, affine=False, momentum=momentum, eps=eps)

    def forward(self, x: Tensor) -> Tensor:
        bn = self.bn
        if self.mode == "row":
            g = x.view(len(x), self.groups, -1)
            return nn.functional.layer_norm(g, g.shape[-1:], eps=bn.eps).view_as(x)
        if self.mode == "batch" and self.training and len(x) > 1:
            if self.update_stats:
                return bn(x)
            return nn.functional.batch_norm(x, None, None, training=True, eps=bn.eps)
        out = (x - bn.running_mean) / torch.sqrt(bn.running_var + bn.eps)
        if self.mode == "renorm" and self.training and len(x) > 1 and torch.is_grad_enabled():
            out = out.detach() + _batch_gradient(x, bn.running_var, bn.eps)
        if self.mode in ("running", "renorm") and self.training and self.update_stats and len(x) > 0:
            with torch.no_grad():
                m = bn.momentum
                bn.running_mean.mul_(1 - m).add_(x.detach().mean(0), alpha=m)
                if len(x) > 1:
                    bn.running_var.mul_(1 - m).add_(x.detach().var(0, unbiased=True), alpha=m)
                bn.num_batches_tracked.add_(1)
        return out


def _batch_gradient(x: Tensor, running_var: Tensor, eps: float) -> Tensor:
    """``[B, C]``, value exactly 0, whose gradient w.r.t. ``x`` is BatchNorm's with the mini-batch
    statistics, scaled by ``r = sigma_B / sigma_running`` (Batch Renormalization, Ioffe 2017, with
    ``r`` and ``d`` unclipped): added to the running-statistics output, the value stays that of the
    earlier batches' statistics and the gradient is eq. 2's, through ``mu_B`` and ``sigma_B``."""
    sd_b = torch.sqrt(x.var(0, unbiased=False) + eps)
    r = (sd_b / torch.sqrt(running_var + eps)).detach()
    y = (x - x.mean(0)) / sd_b * r
    return y - y.detach()


class MultiWidthEmbedding(nn.Module):
    """``ids [B] -> [B, N, D]``: the N candidate embeddings of each id, transformed to width D
    (default: the largest candidate width)."""

    def __init__(self, num: int, widths: Sequence[int], init_std: float = 0.1, *,
                 out_dim: int | None = None, norm: str = "running", sparse: bool = False):
        super().__init__()
        widths = [int(w) for w in widths]
        if not widths or any(w <= 0 for w in widths) or sorted(set(widths)) != widths:
            raise ValueError(f"candidate widths must be positive and increasing, got {widths}")
        self.widths = widths
        self.out_dim = int(out_dim or widths[-1])
        self.table = nn.Embedding(num, sum(widths), sparse=sparse)
        nn.init.normal_(self.table.weight, std=init_std)
        self.transforms = nn.ModuleList(nn.Linear(w, self.out_dim) for w in widths)
        # One normalisation over the N stacked outputs is N independent ones (eq. 2).
        self.norm = StreamNorm(len(widths) * self.out_dim, norm, groups=len(widths))

    @property
    def num_candidates(self) -> int:
        return len(self.widths)

    def forward(self, ids: Tensor) -> Tensor:
        parts = self.table(ids).split(self.widths, dim=1)
        unified = torch.cat([t(p) for t, p in zip(self.transforms, parts, strict=True)], dim=1)
        return torch.tanh(self.norm(unified)).view(len(ids), len(self.widths), self.out_dim)


def soft_select(candidates: Tensor, weights: Tensor, one_over_n: bool = True) -> Tensor:
    """Soft selection, ``[B, N, D], [B, N] -> [B, D]``: eq. 7, ``(1/N) sum_n w_n e_n``, or with
    ``one_over_n=False`` the weighted sum ``sum_n w_n e_n`` that sec. 2.4's text describes (for a
    one-hot ``w`` it is eq. 6's hard selection, on the scale of one candidate)."""
    mixed = torch.einsum("bnd,bn->bd", candidates, weights)
    return mixed / candidates.shape[1] if one_over_n else mixed


class AutoEmbModel(nn.Module):
    """The enhanced DLRS: ``(users [B], items [B], alpha [B, N], beta [B, N]) -> [B] or [B, 5]``."""

    def __init__(self, num_users: int, num_items: int, widths: Sequence[int] = (2, 16, 128),
                 hidden: Sequence[int] = (512, 512), task: str = "regression", *,
                 norm: str = "running", sparse: bool = False, one_over_n: bool = False):
        super().__init__()
        self.task = task
        self.one_over_n = one_over_n  # eq. 7's 1/N factor (model.one_over_n)
        self.users = MultiWidthEmbedding(num_users, widths, norm=norm, sparse=sparse)
        self.items = MultiWidthEmbedding(num_items, widths, norm=norm, sparse=sparse)
        self.mlp = hidden_layers(2 * self.users.out_dim, hidden, task_outputs(task))

    @property
    def num_candidates(self) -> int:
        return self.users.num_candidates

    def forward(self, users: Tensor, items: Tensor, alpha: Tensor, beta: Tensor) -> Tensor:
        u = soft_select(self.users(users), alpha, self.one_over_n)
        v = soft_select(self.items(items), beta, self.one_over_n)
        out = self.mlp(torch.cat([u, v], dim=1))
        return out.squeeze(1) if self.task == "regression" else out

    def tables(self) -> list[nn.Embedding]:
        return [self.users.table, self.items.table]

    def embedding_params(self) -> int:
        return sum(t.weight.numel() for t in self.tables())


class FixedWidthModel(nn.Module):
    """FSE (sec. 3.4): ``(users [B], items [B]) -> [B] or [B, 5]`` with one width for everyone.

    ``transform`` (default): the embedding of width ``width`` is mapped to ``out_dim`` (AutoEmb's
    ``D``), normalised and passed through tanh exactly like one AutoEmb candidate (eq. 1-2), so the
    two models differ only in the candidates and their weights; without it, the plain embeddings are
    concatenated (the basic DLRS of sec. 2.1)."""

    def __init__(self, num_users: int, num_items: int, width: int = 146,
                 hidden: Sequence[int] = (512, 512), task: str = "regression", init_std: float = 0.1,
                 *, transform: bool = True, out_dim: int = 128, norm: str = "running",
                 sparse: bool = False):
        super().__init__()
        self.task = task
        self.transform = transform
        if transform:
            self.users: nn.Module = MultiWidthEmbedding(num_users, [width], init_std, out_dim=out_dim,
                                                        norm=norm, sparse=sparse)
            self.items: nn.Module = MultiWidthEmbedding(num_items, [width], init_std, out_dim=out_dim,
                                                        norm=norm, sparse=sparse)
            in_dim = 2 * out_dim
        else:
            self.users = nn.Embedding(num_users, width, sparse=sparse)
            self.items = nn.Embedding(num_items, width, sparse=sparse)
            nn.init.normal_(self.users.weight, std=init_std)
            nn.init.normal_(self.items.weight, std=init_std)
            in_dim = 2 * width
        self.mlp = hidden_layers(in_dim, hidden, task_outputs(task))

    def forward(self, users: Tensor, items: Tensor, alpha: Tensor | None = None,
                beta: Tensor | None = None) -> Tensor:
        u, v = self.users(users), self.items(items)
        if self.transform:
            u, v = u[:, 0], v[:, 0]
        out = self.mlp(torch.cat([u, v], dim=1))
        return out.squeeze(1) if self.task == "regression" else out

    def tables(self) -> list[nn.Embedding]:
        return [self.users.table, self.items.table] if self.transform else [self.users, self.items]

    def embedding_params(self) -> int:
        return sum(t.weight.numel() for t in self.tables())


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
