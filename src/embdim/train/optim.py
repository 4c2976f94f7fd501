"""The training optimisers: Adam (the papers'), or Adam with lazy row-wise updates of the tables.

``train.optimizer: auto`` (default) names one of the rules below for each run
(:func:`resolve_optimizer`): ``sparse_adam`` where it runs (one CPU process, no weight decay) and
is the faster (a vocabulary of at least 3 ids per row a batch reads; below, both take the same time
and the papers' Adam is kept), ``rowwise_adagrad`` for
TorchRec's sharded tables, ``adam`` otherwise. The paper-reproduction grids name ``adam``, the
papers' optimiser.

``train.optimizer: adam``: Adam on every parameter (fused where torch has it). Each step
then reads and writes every row of every embedding table (its gradient, two moments, the value),
so a step's cost grows with the vocabulary, not with the batch.

``train.optimizer: sparse_adam``: the embedding tables (and the first-order weights) produce
sparse gradients over the distinct rows a batch reads (``embdim.nn.embedding.gather_rows``) and
are updated by :class:`LazyAdam`, torch's ``SparseAdam`` rule ("lazy Adam": the moments and values
of the rows a batch reads only, bias correction by the table's step count); every other parameter
by Adam. A step then costs O(rows in the batch), whatever the vocabulary. The update differs
from dense Adam for rows a batch does not read (dense Adam keeps moving them with their decaying
momentum; lazy Adam leaves them); measured against Adam in docs/training.md (equal or better test
AUC), and ``auto`` picks it on CPU for large vocabularies for that reason. No weight
decay on the tables (SparseAdam has none), not under torchrun (DDP) and no CUDA graphs.

``train.optimizer: rowwise_adagrad``: the tables (and the first-order weights) are updated by
exact row-wise Adagrad, the rule of FBGEMM's ``EXACT_ROWWISE_ADAGRAD`` (the fused optimizer that
TorchRec's sharded tables run, ``train.parallel: torchrec``, docs/torchrec.md), every other
parameter by Adam. One accumulator per row: for each row ``r`` a batch reads, with ``g_r`` its
gradient summed over the batch's occurrences of ``r`` (``D`` the table width)::

    state_r += mean(g_r ** 2)                     # over the D columns
    w_r     -= lr * g_r / (sqrt(state_r) + eps)   # eps = 1e-8, FBGEMM's default; no weight decay

Rows a batch does not read do not move. Same sparse gradients as ``sparse_adam`` (under torchrun
with ``train.parallel: ddp``, dense gradients averaged by DDP: the same update); the same
``train.lr`` for the tables and for Adam; not with ``train.weight_decay`` (FBGEMM's default
weight-decay mode is none).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from embdim.train.row_kernels import fused_rows_available, lazy_adam_rows_, rowwise_adagrad_rows_

ROWWISE_ADAGRAD_EPS = 1e-8  # FBGEMM's default eps (SplitTableBatchedEmbeddingBagsCodegen)


LAZY_VOCABULARY_RATIO = 3  # auto: lazy Adam once the ids outnumber the rows a batch reads 3:1


def resolve_optimizer(name: str, *, device_type: str, distributed: bool, sharded: bool,
                      weight_decay: float, vocabulary: int, rows_per_batch: int) -> str:
    """The optimiser a run uses for ``train.optimizer: name``: ``name`` itself unless it is
    ``auto``, which picks

    * ``rowwise_adagrad`` for TorchRec's sharded tables (the only table rule FBGEMM fuses on CPU);
    * ``sparse_adam`` in one CPU process without weight decay when the ``vocabulary`` (ids over all
      fields) is at least ``LAZY_VOCABULARY_RATIO`` times the rows a batch reads
      (``rows_per_batch``: batch size x fields): there dense Adam's pass over every row of the
      tables costs more than lazy Adam's work on the rows read (measured crossover about 3:1 on a
      2-core CPU: 12% slower at 0.7:1, 11% faster at 6:1; docs/training.md), at equal or better
      test AUC;
    * ``adam`` otherwise: smaller vocabularies, GPUs (where dense Adam is captured in the step's
      CUDA graph), torchrun with DDP (which averages dense gradients), weight decay (lazy Adam has
      none)."""
    if name != "auto":
        return name
    if sharded:
        return "rowwise_adagrad"
    if (device_type == "cpu" and not distributed and weight_decay == 0
            and vocabulary >= LAZY_VOCABULARY_RATIO * rows_per_batch):
        return "sparse_adam"
    return "adam"


def make_adam(params, *, lr: float, weight_decay: float = 0.0,
              capturable: bool = False) -> torch.optim.Adam:
    """Adam (the papers' optimiser), in its fused single-kernel form where this torch has one for
    the parameters' device (same update rule, ~10% faster training steps on CPU), else the default
    form. ``capturable=True`` (CUDA only) keeps the step count on the device so that the update can
    be captured in a CUDA graph."""
    params = list(params)
    extra = {"capturable": True} if capturable else {}
    try:
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, fused=True, **extra)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, weight_decay=weight_decay, **extra)


def coalesced(grad: torch.Tensor) -> torch.Tensor:
    """A sparse table gradient with each row once, in order. The tables' own gradients are built
    that way (``embdim.nn.embedding.gather_rows``) but autograd drops the flag that says so when it
    stores them in ``.grad``; strictly increasing row indices (an O(rows) check) are the proof, and
    only other gradients pay for ``coalesce``'s sort."""
    if grad.is_coalesced():
        return grad
    rows = grad._indices()[0]
    if grad._indices().shape[0] == 1 and bool((rows[1:] > rows[:-1]).all()):
        return grad._coalesced_(True)
    return grad.coalesce()


class RowwiseAdagrad(torch.optim.Optimizer):
    """Exact row-wise Adagrad (FBGEMM's ``EXACT_ROWWISE_ADAGRAD``) for 2-D tables, sparse or dense
    gradients (a row whose gradient is zero does not move either way); see the module docstring.
    State per table: ``sum`` ``[rows]``, the accumulated ``mean(g_r ** 2)``."""

    def __init__(self, params, *, lr: float, eps: float = ROWWISE_ADAGRAD_EPS):
        super().__init__(params, {"lr": lr, "eps": eps})

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            lr, eps = group["lr"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.dim() != 2:
                    raise ValueError(f"row-wise Adagrad updates 2-D tables, got shape {tuple(p.shape)}")
                state = self.state[p]
                if "sum" not in state:
                    state["sum"] = torch.zeros(p.shape[0], dtype=torch.float32, device=p.device)
                grad = p.grad
                if grad.is_sparse:
                    grad = coalesced(grad)  # duplicate rows summed: the "exact" variant
                    rows, g = grad.indices()[0], grad.values().float()
                    if fused_rows_available(p, state["sum"], g):
                        rowwise_adagrad_rows_(p, state["sum"], rows, g, lr=lr, eps=eps)
                        continue
                else:
                    rows, g = None, grad.float()
                mean_sq = g.pow(2).mean(dim=1)
                if rows is None:
                    state["sum"].add_(mean_sq)
                    step = g / (state["sum"].sqrt() + eps).unsqueeze(1)
                    p.sub_((lr * step).to(p.dtype))
                else:
                    acc = state["sum"].index_add_(0, rows, mean_sq).index_select(0, rows)
                    step = g / (acc.sqrt() + eps).unsqueeze(1)
                    p.index_add_(0, rows, (-lr * step).to(p.dtype))
        return None


class LazyAdam(torch.optim.SparseAdam):
    """``torch.optim.SparseAdam``'s update, state and checkpoints, computed on the rows of the
    gradient only: on CPU in one fused loop over those rows (``embdim.train.row_kernels``),
    elsewhere by gathering the rows' moments and values, updating them and writing them back.
    torch's own step builds several sparse tensors per table and sorts
    the gradient to coalesce it; the tables' gradients here are coalesced already
    (``embdim.nn.embedding.gather_rows``), so a step costs one pass over the rows read.
    For each row ``r`` of the gradient (``t`` the table's step count)::

        m_r = beta1 m_r + (1 - beta1) g_r;   v_r = beta2 v_r + (1 - beta2) g_r^2
        w_r -= lr * sqrt(1 - beta2^t) / (1 - beta1^t) * m_r / (sqrt(v_r) + eps)
    """

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            lr, eps = float(group["lr"]), group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                if not p.grad.is_sparse:
                    raise RuntimeError("LazyAdam updates tables with sparse gradients; "
                                       "got a dense gradient")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                grad = coalesced(p.grad)
                rows, g = grad._indices()[0], grad._values()
                if group.get("maximize", False):
                    g = -g
                t = state["step"]
                step_size = lr * math.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
                if fused_rows_available(p, state["exp_avg"], state["exp_avg_sq"], g):
                    lazy_adam_rows_(p, state["exp_avg"], state["exp_avg_sq"], rows, g, beta1=beta1,
                                    beta2=beta2, step_size=step_size, eps=eps)
                    continue
                m = state["exp_avg"].index_select(0, rows).lerp_(g, 1 - beta1)
                v = state["exp_avg_sq"].index_select(0, rows).mul_(beta2).addcmul_(
                    g, g, value=1 - beta2)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
                w = p.index_select(0, rows).addcdiv_(m, v.sqrt_().add_(eps), value=-step_size)
                p.index_copy_(0, rows, w)  # each row once: a copy, cheaper than an index_add_
        return loss


class TableAdam:
    """Adam on the dense parameters, a row-wise optimiser on the tables (lazy Adam,
    ``SparseAdam``, or :class:`RowwiseAdagrad`); the optimiser interface the trainer uses
    (``zero_grad``, ``step``, ``state_dict``, ``load_state_dict``)."""

    def __init__(self, params: list[nn.Parameter], tables: list[nn.Parameter], *, lr: float,
                 weight_decay: float = 0.0, table_rule: str = "sparse_adam"):
        table_ids = {id(p) for p in tables}
        self.dense = make_adam([p for p in params if id(p) not in table_ids], lr=lr,
                               weight_decay=weight_decay)
        if not tables:
            self.sparse = None
        elif table_rule == "rowwise_adagrad":
            self.sparse = RowwiseAdagrad(tables, lr=lr)
        else:
            self.sparse = LazyAdam(tables, lr=lr)
        self.param_groups = self.dense.param_groups + (self.sparse.param_groups if self.sparse else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.sparse is not None:
            self.sparse.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.dense.step()
        if self.sparse is not None:
            self.sparse.step()

    def state_dict(self) -> dict[str, Any]:
        return {"dense": self.dense.state_dict(),
                "sparse": None if self.sparse is None else self.sparse.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.dense.load_state_dict(state["dense"])
        if self.sparse is not None:
            self.sparse.load_state_dict(state["sparse"])


def sparse_tables(model: nn.Module) -> list[nn.Parameter]:
    """Switch every module that reads rows of a table (``sparse_rows`` attribute: the embedding
    width groups, the first-order weights) to sparse gradients; return those tables."""
    tables = []
    for module in model.modules():
        if hasattr(module, "sparse_rows"):
            module.sparse_rows = True
            tables.append(module.row_table())
    return tables


def row_tables(model: nn.Module) -> list[nn.Parameter]:
    """The tables of every module that reads rows of one (gradients left as they are)."""
    return [m.row_table() for m in model.modules() if hasattr(m, "sparse_rows")]


def make_optimizer(model: nn.Module, name: str, *, lr: float, weight_decay: float = 0.0,
                   capturable: bool = False, sparse: bool = True):
    """The optimiser ``name`` (a resolved ``train.optimizer``, see :func:`resolve_optimizer`) for
    ``model`` (see the module docstring).
    ``sparse=False`` (under DDP, which averages dense gradients): ``rowwise_adagrad`` on the
    tables' dense gradients, the same update (a row whose gradient is zero does not move)."""
    if name == "rowwise_adagrad" and not sparse:
        return TableAdam(list(model.parameters()), row_tables(model), lr=lr,
                         weight_decay=weight_decay, table_rule=name)
    if name in ("sparse_adam", "rowwise_adagrad"):
        return TableAdam(list(model.parameters()), sparse_tables(model), lr=lr,
                         weight_decay=weight_decay, table_rule=name)
    return make_adam(model.parameters(), lr=lr, weight_decay=weight_decay, capturable=capturable)
