"""SSEDS: single-shot embedding dimension search to a parameter budget.

Qu et al., "Single-shot Embedding Dimension Search in Recommender System" (SIGIR 2022), sec. 3-4:

1. **Pretraining** (sec. 3.2.1): the base model with every field at one width ``d`` (default 128) is
   trained in the ordinary way (the experiment's model and train options) — or a state the user
   already has is loaded (``pretrain_checkpoint``).
2. **Saliency** (eq. 8-11): an indicator ``alpha [F, d]``, shared by all values of a field, multiplies
   the field embeddings (:class:`IndicatorEmbedding`). One forward-backward pass on a training
   mini-batch gives ``g = dL/d alpha`` at ``alpha = 1``, the first-order estimate of the loss change
   ``Delta L_ij`` from masking cell ``(i, j)`` (eq. 9-10); ``s = |g| / sum |g|`` (eq. 11). Optionally
   ``|g|`` is averaged over several mini-batches, taken on validation batches (``saliency_split``),
   or the budget is reached in rounds with ``|g|`` measured again at each round's mask
   (``saliency_rounds``; beyond the paper's single shot; the default is 5 rounds, 1 is the paper's).
3. **Pruning to the budget** (eq. 12): cells are ranked by saliency (``rank: saliency``, the paper)
   or by saliency per table entry (``rank: per_entry``, the default) and kept, first ranked first,
   while the kept embedding entries (a cell of field ``i`` costs ``vocab_i``) stay within
   ``kappa x sum_i vocab_i x d``; the first ranked cell that does not fit ends the selection (the
   quantile ``s~`` of eq. 12); with ``vocab_cap`` (the default; not in the paper) a field keeps at
   most ``vocab_i`` columns, the cells past that passed over. Fields with no kept cell are
   dropped (feature selection, footnote 2).
4. **Retraining** (sec. 3.2.3, eq. 13-14): the pipeline builds the slim model from the plan — field
   ``i`` at width ``d_i``, aligned by ``M_i`` (no bias) to ``d_max`` — and
   :meth:`SSEDS.init_retrain_model` copies the kept columns of the pretrained tables in (the
   "winning ticket"; ``ticket: false`` = ablation "w/o ticket") and, following Algorithm 1
   (``V*, Theta* <- V~, Theta^``), the rest of the pretrained network where its shapes allow —
   from the best pretrained weights, from an early epoch of the pretraining (late rewinding; epoch
   0: its initial weights), or
   — the default, ``rewind: auto`` — from whichever of the two retrains to the better
   *validation* AUC (:meth:`SSEDS.fit_retrain` trains both; not in the paper).
   ``retrain: false`` is the ablation "w/o retraining" (sec. 4.5): the pruned pretrained model is
   evaluated as it is.

See docs/sseds.md for every option and for the choices the paper leaves open.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embdim import distributed
from embdim.data.loader import BatchLoader
from embdim.errors import ConfigError, SchemaMismatchError
from embdim.io import atomic_copy, atomic_torch_save
from embdim.nn.models import RecModel, build_model
from embdim.plan import DimensionPlan, width_overlap
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.budget import budget_entries
from embdim.train.trainer import FitResult, Trainer, resolve_device, seed_everything

ALIGNS = ("scatter", "linear", "pad")
ALIGN_WIDTHS = ("pretrain", "max")
ALIGN_INITS = ("select", "random")
RANKS = ("saliency", "per_entry")
SALIENCY_SPLITS = ("train", "valid")
REWINDS = ("auto", "always", "never")


@dataclass
class SSEDSOptions:
    """The ``method:`` section of an SSEDS experiment (every key optional).

    The retraining options resolve what the paper leaves inconsistent (sec. 3.2.3 text: "randomly
    initialize ... M"; Algorithm 1: ``V*, Theta* <- V~, Theta^``; eq. 13 aligns to ``d_max``, where
    ``Theta^`` no longer fits). The defaults make the slim model start *exactly* as the masked
    pretrained model of eq. 8 (binary ``alpha`` of eq. 12) for every kappa and every base model.
    The search defaults are not the paper's single shot: cells are ranked by saliency per table
    entry and the budget is reached in 5 rounds (``rank: per_entry``, ``saliency_rounds: 5``);
    ``rank: saliency, saliency_rounds: 1, vocab_cap: false`` is the paper's eq. 10-12
    (examples/sseds_paper.yaml); ``vocab_cap`` (default) keeps no field wider than its vocabulary.
    Nor is the default retraining start: ``rewind: auto`` retrains from the best pretrained weights
    (the paper's) and from those after pretraining epoch 1 and keeps the better on validation;
    ``rewind: never`` is the paper's.
    docs/sseds.md gives the measurements behind every default.
    """

    budget: float = 0.1  # kappa: kept embedding entries <= budget x the full table (paper: 0.1)
    pretrain_width: int = 128  # d, the uniform width of the pretrained model (paper: 128)
    pretrain_epochs: int | None = None  # None: train.epochs (with train.early_stop as usual)
    pretrain_checkpoint: str | None = None  # a state of the uniform model to start from instead
    rewind: str = "auto"  # where the retraining starts: "never" (the best pretrained weights,
    #                       the paper's ticket), "always" (the early weights below: late rewinding)
    #                       or "auto" (retrain from both, keep the better validation AUC; not in
    #                       the paper)
    rewind_epoch: int = 1  # the early weights: the pretraining's weights after this epoch (0: its
    #                        initial weights, rebuilt from the seed: the lottery ticket's rewind) ...
    rewind_checkpoint: str | None = None  # ... or this state of the uniform model (e.g. an early
    #                                       epoch of the run behind pretrain_checkpoint)
    saliency_batch_size: int | None = None  # None: train.batch_size (paper: one batch of 2048)
    saliency_batches: int = 1  # |g| is averaged over this many training mini-batches (paper: 1)
    saliency_split: str = "train"  # the split the saliency batches come from: "train" (the paper's
    #                                D_b) or "valid" (held-out rows; not in the paper)
    saliency_rounds: int = 5  # R > 1: prune in R rounds to the budgets kappa^(r/R), |g| measured
    #                           again at each round's mask (not in the paper); 1: the paper's single
    #                           shot (eq. 10-12)
    stability_batches: int = 4  # after the search, the plans of this many other single batches are
    #                             compared with the chosen one (plan.json "stability"); 0: skip
    fill: bool = False  # after the first cell that does not fit, keep adding smaller ones that do
    vocab_cap: bool = True  # a field keeps at most vocab_i columns (its rows span no more; not in
    #                         the paper, whose eq. 12 is vocab_cap: false)
    rank: str = "per_entry"  # "per_entry": saliency / vocab_i (a knapsack's greedy order; not in
    #                          the paper) or "saliency" (eq. 12)
    ticket: bool = True  # copy the kept pretrained columns into the slim tables ("w/o ticket": false)
    inherit_network: bool | None = None  # start the rest of the network from the pretrained one
    #                     (Algorithm 1); None: the same as ``ticket`` (when the aligned width fits)
    retrain: bool = True  # false: ablation "w/o retraining", evaluate the pruned pretrained model
    keep_start: bool = False  # the retraining also validates the slim model as it starts (epoch
    #                           0) and keeps it when no epoch beats it (train.validate_start; not in
    #                           the paper; off: in every measured run epoch 1 beat the start)
    # ---- how the slim model's fields reach one width (sec. 3.2.3) ----
    align: str = "scatter"  # "scatter": each kept column at its pretrained coordinate, no
    #                         parameters (eq. 8's masked model); "linear": trainable M_i (eq. 13);
    #                         "pad": columns packed first, zero padding (AutoDim's), fresh body
    align_width: str = "pretrain"  # the common width: "pretrain" (d, Theta^ always fits) or "max"
    #                                (d_max = max_i d_i, eq. 13; linear only)
    align_init: str = "select"  # linear M_i: "select" (column k -> its pretrained coordinate, the
    #                             slim model starts as the masked one) or "random" (sec. 3.2.3 text)
    count_alignment: bool = True  # M_i's parameters count against the budget (linear only)
    prune_first_order: bool = False  # also drop the first-order (wide/LR) weights of dropped
    #                                  fields (the paper prunes only the embedding table)

    def validate(self) -> None:
        problems = []
        if isinstance(self.budget, bool) or not (isinstance(self.budget, (int, float))
                                                 and 0 < float(self.budget) <= 1):
            problems.append(f"method.budget (kappa) must be in (0, 1], got {self.budget!r}")
        if not (isinstance(self.pretrain_width, int) and self.pretrain_width > 0):
            problems.append(f"method.pretrain_width must be a positive integer, got "
                            f"{self.pretrain_width!r}")
        for key in ("pretrain_epochs", "saliency_batch_size"):
            v = getattr(self, key)
            if v is not None and not (isinstance(v, int) and v > 0):
                problems.append(f"method.{key} must be a positive integer or null, got {v!r}")
        if not (isinstance(self.rewind_epoch, int) and not isinstance(self.rewind_epoch, bool)
                and self.rewind_epoch >= 0):
            problems.append(f"method.rewind_epoch must be an integer >= 0, got "
                            f"{self.rewind_epoch!r}")
        if not (isinstance(self.saliency_batches, int) and self.saliency_batches > 0):
            problems.append(f"method.saliency_batches must be a positive integer, got "
                            f"{self.saliency_batches!r}")
        if not (isinstance(self.saliency_rounds, int) and not isinstance(self.saliency_rounds, bool)
                and self.saliency_rounds > 0):
            problems.append(f"method.saliency_rounds must be a positive integer, got "
                            f"{self.saliency_rounds!r}")
        if not (isinstance(self.stability_batches, int) and not isinstance(self.stability_batches, bool)
                and self.stability_batches >= 0):
            problems.append(f"method.stability_batches must be an integer >= 0, got "
                            f"{self.stability_batches!r}")
        for key, valid in (("align", ALIGNS), ("align_width", ALIGN_WIDTHS), ("align_init", ALIGN_INITS),
                           ("rank", RANKS), ("saliency_split", SALIENCY_SPLITS),
                           ("rewind", REWINDS)):
            if getattr(self, key) not in valid:
                problems.append(f"method.{key} must be one of {', '.join(valid)}, got "
                                f"{getattr(self, key)!r}")
        if self.align_width == "max" and self.align == "scatter":
            problems.append("method.align=scatter places columns at their pretrained coordinates, so "
                            "it needs align_width=pretrain (use align=linear for d_max)")
        if self.align_width == "max" and self.align == "linear" and self.align_init == "select":
            problems.append("method.align_init=select needs align_width=pretrain (the pretrained "
                            "coordinates only exist at the pretrain width); use align_init=random")
        if self.rewind == "never" and self.rewind_checkpoint:
            problems.append("method.rewind_checkpoint names early weights that rewind=never does "
                            "not use: unset it, or set rewind to always or auto")
        if self.rewind == "always" and self.pretrain_checkpoint and self.early_weights == "epoch":
            problems.append("method.rewind=always rewinds to the weights after pretraining epoch "
                            "rewind_epoch, but with pretrain_checkpoint the pretraining does not run "
                            "here: give the early weights as rewind_checkpoint")
        if self.rewind == "always" and not (self.ticket or self.inherits_network):
            problems.append("method.rewind=always chooses the weights the ticket and the inherited "
                            "network come from: it needs ticket=true or inherit_network=true")
        if self.rewind == "always" and not self.retrain:
            problems.append("method.retrain=false evaluates the pruned *best* pretrained model: it "
                            "cannot rewind (set rewind to never or auto)")
        if not self.retrain and not (self.ticket and self.inherits_network):
            problems.append("method.retrain=false evaluates the pruned *pretrained* model: it needs "
                            "ticket=true and inherit_network=true (or null)")
        if not self.retrain and self.align_width != "pretrain":
            problems.append("method.retrain=false needs align_width=pretrain")
        if problems:
            raise ConfigError("sseds: " + "; ".join(problems))

    @property
    def early_weights_unavailable(self) -> str | None:
        """Why ``rewind: auto`` has only one starting point (the best weights), or None."""
        if not self.retrain:
            return "retrain=false evaluates the pruned best pretrained model"
        if not (self.ticket or self.inherits_network):
            return "the slim model starts from a fresh initialisation (ticket=false)"
        if self.pretrain_checkpoint and self.early_weights == "epoch":
            return "with pretrain_checkpoint and no rewind_checkpoint there are no early weights"
        return None

    @property
    def early_weights(self) -> str:
        """Where the early weights come from: ``"checkpoint"`` (``rewind_checkpoint``),
        ``"initial"`` (``rewind_epoch: 0``, rebuilt from the seed) or ``"epoch"`` (the pretraining's
        weights after ``rewind_epoch``)."""
        if self.rewind_checkpoint:
            return "checkpoint"
        return "initial" if self.rewind_epoch == 0 else "epoch"

    @property
    def keeps_early_weights(self) -> bool:
        """Whether the pretraining keeps its weights after ``rewind_epoch`` (``epoch-K.pt``)."""
        return self.rewind != "never" and not self.pretrain_checkpoint and self.early_weights == "epoch"

    @property
    def inherits_network(self) -> bool:
        if self.inherit_network is None:  # the pretrained body reads its own coordinates only
            return self.ticket and self.align_width == "pretrain" and self.align != "pad"
        return bool(self.inherit_network)

    @property
    def align_cost(self) -> int | str:
        """How the budget counts ``M_i`` (:func:`prune_to_budget`): 0 (no ``M_i``, or not counted),
        the pretrain width, or ``"max"``."""
        if self.align != "linear" or not self.count_alignment:
            return 0
        return "max" if self.align_width == "max" else self.pretrain_width


# ---- saliency (eq. 8-11) ------------------------------------------------------------------------
class IndicatorEmbedding(nn.Module):
    """``alpha [F, d]`` multiplied into a uniform field embedding (eq. 8): ``e_i -> alpha_i * e_i``.

    ``alpha_ij`` is shared by every value of field ``i``, so multiplying the looked-up embedding
    ``e_i = V_i x_i`` equals multiplying the table column (also for multi-hot ``x_i``). It exposes
    the attributes :func:`~embdim.nn.models.build_model` needs of an embedding module.
    """

    def __init__(self, base: nn.Module):
        super().__init__()
        self.base = base
        like = next(base.parameters())
        self.alpha = nn.Parameter(torch.ones(int(base.num_output_fields), int(base.out_dim),
                                             dtype=like.dtype, device=like.device))

    kept_fields = property(lambda self: self.base.kept_fields)
    num_output_fields = property(lambda self: self.base.num_output_fields)
    out_dim = property(lambda self: self.base.out_dim)
    embedding_params = property(lambda self: self.base.embedding_params)

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> [B, F, d]."""
        return self.base(ids) * self.alpha


def loss_gradient_wrt_alpha(model: RecModel, ids: Tensor, labels: Tensor,
                            alpha: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """``(L, dL/d alpha)`` of the mean binary cross-entropy on one batch, at ``alpha`` (default 1).

    ``model`` is a uniform-width model; it is evaluated as given (call ``.eval()`` first for the
    deterministic inference function). Returns the loss (scalar) and the gradient ``[F, d]``.
    """
    original = model.embedding
    wrapper = IndicatorEmbedding(original)
    if alpha is not None:
        with torch.no_grad():
            wrapper.alpha.copy_(alpha)
    model.embedding = wrapper
    try:
        logits = model(ids)
        loss = F.binary_cross_entropy_with_logits(logits, labels.to(logits.dtype))
        (grad,) = torch.autograd.grad(loss, wrapper.alpha)
    finally:
        model.embedding = original
    return loss.detach(), grad.detach()


def batch_gradient_magnitudes(model: RecModel, loader: BatchLoader, start: int, count: int,
                              alpha: Tensor | None = None):
    """``|dL/d alpha|`` at ``alpha`` (default 1) of batches ``start .. start + count - 1`` of
    ``loader``'s successive shuffled passes, one ``[F, d]`` tensor each (the model in eval mode: no
    dropout, BatchNorm running statistics)."""
    was_training = model.training
    model.eval()
    try:
        for b, (ids, labels) in enumerate(loader.batches()):
            if b >= start + count:
                break
            if b >= start:
                yield loss_gradient_wrt_alpha(model, ids, labels, alpha)[1].abs()
    finally:
        model.train(was_training)


def normalise_saliency(magnitude: Tensor) -> np.ndarray:
    """Eq. 11: ``s = |g| / sum |g|`` as float64 numpy (uniform if every gradient is 0)."""
    mag = magnitude.double().cpu().numpy()
    s = mag.sum()
    return mag / s if s > 0 else np.full_like(mag, 1.0 / mag.size)


def compute_saliency(model: RecModel, loader: BatchLoader, batches: int = 1, start: int = 0,
                     alpha: Tensor | None = None) -> np.ndarray:
    """Eq. 10-11: ``s = mean_b |g_b| / sum(mean_b |g_b|)`` over ``batches`` batches of ``loader``
    from batch ``start`` (the model in eval mode), ``g`` taken at ``alpha`` (default 1). -> [F, d]."""
    mags = list(batch_gradient_magnitudes(model, loader, start, batches, alpha))
    return normalise_saliency(torch.stack(mags).mean(0))


def round_budgets(kappa: float, rounds: int) -> list[float]:
    """The budgets of the pruning rounds: ``kappa^(r/R)`` for ``r = 1 .. R`` (the same fraction of
    the remaining cells' cost goes in every round; the last is ``kappa`` itself)."""
    return [float(kappa) ** (r / rounds) for r in range(1, rounds)] + [float(kappa)]


def prune_in_rounds(saliency_at, kappa: float, rounds: int, prune) -> tuple[np.ndarray, PruneResult]:
    """Prune to ``kappa`` in ``rounds`` rounds (``rounds = 1``: the single shot of eq. 10-12).

    ``saliency_at(alpha)`` gives the normalised saliency ``[F, d]`` with ``g`` taken at ``alpha``
    (``None``: 1); ``prune(s, kappa, allowed)`` keeps cells of ``allowed`` (``None``: all) by eq.
    12. Round ``r`` measures ``|g|`` at the binary mask of round ``r - 1`` and keeps the cells within
    ``kappa^(r/R)``: a first-order estimate is only accurate near the point it is taken at, and a
    field's remaining columns gain saliency as its other columns go, so the last columns of a field
    are judged without the ones already pruned. Returns the last round's saliency and selection.
    """
    allowed, saliency, result = None, None, None
    for k in round_budgets(kappa, rounds):
        alpha = None if allowed is None else torch.as_tensor(allowed, dtype=torch.float32)
        saliency = saliency_at(alpha)
        result = prune(saliency, k, allowed)
        allowed = result.mask
    return saliency, result


def plan_stability(model: RecModel, loader: BatchLoader, chosen: PruneResult, start: int, count: int,
                   prune, search=None) -> dict[str, Any]:
    """How much to trust a single-shot plan: the plans that ``count`` other single batches (batches
    ``start ..`` of the same pass) would have given, compared with ``chosen``: the Jaccard overlap
    of the kept cells and the width overlap ``sum_i min(d_i, d'_i) / sum_i max(d_i, d'_i)``.
    ``search(batch)``, if given, makes the plan of one batch (e.g. in several rounds) instead of
    ``prune`` of its saliency at ``alpha = 1``."""
    jaccard, widths = [], []
    plans = ((search(b) for b in range(start, start + count)) if search is not None else
             (prune(normalise_saliency(mag))
              for mag in batch_gradient_magnitudes(model, loader, start, count)))
    for other in plans:
        jaccard.append(float((chosen.mask & other.mask).sum() / max(1, (chosen.mask | other.mask).sum())))
        widths.append(width_overlap(chosen.dims, other.dims))
    return {"batches": len(jaccard), "cell_jaccard": jaccard, "width_overlap": widths}


# ---- pruning (eq. 12) ---------------------------------------------------------------------------
@dataclass
class PruneResult:
    """Which cells survive: ``mask [F, d]`` bool, and the exact accounting of eq. 12."""

    mask: np.ndarray
    budget_params: int  # floor(kappa x total_params)
    kept_params: int  # kept cells' cost: table entries (+ alignment rows, if counted)
    total_params: int
    next_cell_cost: int | None  # cost of the first ranked cell that was not kept (None: all kept)

    @property
    def dims(self) -> list[int]:
        return [int(c) for c in self.mask.sum(1)]

    @property
    def kept_indices(self) -> list[list[int]]:
        return [np.flatnonzero(row).tolist() for row in self.mask]


def alignment_params(dims: list[int], align_cost: int | str) -> int:
    """Parameters of the linear alignments ``M_i [d_i, D]`` of the kept fields: ``D = align_cost``
    (an int; 0: not counted or no ``M_i``) or ``D = max(dims)`` (``"max"``, eq. 13's ``d_max``)."""
    width = max(dims, default=0) if align_cost == "max" else int(align_cost)
    return sum(dims) * width


def prune_to_budget(saliency: np.ndarray, vocab_sizes: list[int], kappa: float, *,
                    fill: bool = False, align_cost: int | str = 0,
                    per_entry: bool = False, allowed: np.ndarray | None = None,
                    vocab_cap: bool = False) -> PruneResult:
    """Keep cells most-salient-first while their cost stays ``<= floor(kappa x total)``.

    ``saliency [F, d]``; ``total`` is the full table, ``sum_i vocab_i x d``. A cell of field ``i``
    costs ``vocab_sizes[i]`` table entries plus what it adds to the linear alignments when those are
    counted (``align_cost``, see :func:`alignment_params`: a row of ``M_i`` of width ``D``, or with
    ``"max"`` also the growth of every ``M_j`` when the cell raises ``d_max``). Ties are broken by
    field, then dimension index (a stable sort). The selection stops at the first ranked cell that
    does not fit; with ``fill`` it skips that cell and goes on with the cheaper ones that still fit.
    ``per_entry`` ranks by saliency per table entry, ``s_ij / vocab_i`` (not in the paper: the
    greedy order of a knapsack over the cells), instead of by saliency (eq. 12). ``allowed``
    ``[F, d]`` bool: only those cells can be kept (the others are passed over, as already pruned).
    ``vocab_cap``: a field keeps at most ``vocab_i`` columns (not in the paper): its ``vocab_i``
    rows span at most ``vocab_i`` dimensions, so a further column is a linear combination of the
    kept ones for every linear map the model applies to the field's embedding (an MLP's first
    layer); its cells are passed over like cells not ``allowed``.
    """
    num_fields, d = saliency.shape
    vocab = [int(v) for v in vocab_sizes]
    total = sum(vocab) * d
    budget = budget_entries(kappa, total)
    score = saliency / np.asarray(vocab, dtype=np.float64)[:, None] if per_entry else saliency
    order = np.argsort(-score.reshape(-1), kind="stable")
    mask = np.zeros(num_fields * d, dtype=bool)
    widths = [0] * num_fields
    kept, next_cost, aligned = 0, None, 0
    flat_allowed = None if allowed is None else np.asarray(allowed, dtype=bool).reshape(-1)
    for cell in order:
        if flat_allowed is not None and not flat_allowed[cell]:
            continue
        i = int(cell) // d
        if vocab_cap and widths[i] >= vocab[i]:
            continue
        widths[i] += 1
        aligned_after = alignment_params(widths, align_cost)
        c = vocab[i] + aligned_after - aligned
        if kept + c <= budget:
            mask[cell] = True
            kept, aligned = kept + c, aligned_after
        else:
            widths[i] -= 1
            if next_cost is None:
                next_cost = c
            if not fill:
                break
    return PruneResult(mask.reshape(num_fields, d), budget, kept, total, next_cost)


# ---- handing the pretrained weights to the slim model (sec. 3.2.3) -------------------------------
def copy_ticket_(slim: RecModel, pretrained: RecModel, kept_indices: list[list[int]]) -> None:
    """The winning ticket: slim table of field ``i`` <- pretrained table ``[:, kept_indices[i]]``."""
    with torch.no_grad():
        for i in slim.embedding.kept_fields:
            src = pretrained.embedding.field_weight(i)  # [vocab_i, d]
            idx = torch.as_tensor(kept_indices[i], dtype=torch.long, device=src.device)
            slim.embedding.field_weight(i).copy_(src.index_select(1, idx))


def select_alignment_(slim: RecModel, kept_indices: list[list[int]], width: int) -> bool:
    """Set each ``M_i`` so the kept column ``k`` lands at its pretrained position
    ``kept_indices[i][k]`` (``W_i [d_i, d]`` with one 1 per row). Needs the slim model aligned to
    the pretrain width; returns False (nothing changed) when it is not."""
    emb = slim.embedding
    if int(emb.out_dim) != width:
        return False
    with torch.no_grad():
        for i in emb.kept_fields:
            align = emb.field_alignment(i)
            if align is None:  # no alignment: only possible when every field kept all d columns
                if kept_indices[i] != list(range(width)):
                    return False
                continue
            w, b = align
            w.zero_()
            w[torch.arange(len(kept_indices[i])), torch.as_tensor(kept_indices[i])] = 1.0
            if b is not None:
                b.zero_()
    return True


def _field_block_slice(src: Tensor, shape: torch.Size, num_fields: int, kept: list[int]) -> Tensor | None:
    """``src`` with one axis of ``num_fields x k`` entries cut to the kept fields' blocks so it has
    ``shape`` (e.g. the first MLP layer over flattened field embeddings), or None."""
    if src.dim() != len(shape):
        return None
    diff = [a for a in range(src.dim()) if src.shape[a] != shape[a]]
    if len(diff) != 1:
        return None
    a = diff[0]
    if src.shape[a] % num_fields or shape[a] != len(kept) * (src.shape[a] // num_fields):
        return None
    blocks = src.unflatten(a, (num_fields, src.shape[a] // num_fields))
    idx = torch.as_tensor(kept, dtype=torch.long, device=src.device)
    return blocks.index_select(a, idx).flatten(a, a + 1)


def inherit_network_(slim: RecModel, pretrained: RecModel, vocab_sizes: list[int]) -> list[str]:
    """Copy the pretrained first-order weights (of the fields the slim model keeps them for) and
    body into ``slim``.

    The body is taken all-or-nothing: every tensor must have the same shape or differ only by
    per-field blocks (the dropped fields' blocks are cut). A body with parameters or buffers needs
    the slim model to read the embeddings at the pretrain width. Returns what could not be
    inherited (empty: everything).
    """
    missing: list[str] = []
    num_fields = len(vocab_sizes)
    with torch.no_grad():
        if slim.linear is not None and pretrained.linear is not None:
            w = pretrained.linear.weight.weight  # [sum_i vocab_i over all fields, 1]
            starts = [0, *np.cumsum(vocab_sizes)[:-1].tolist()]
            src = torch.cat([w[starts[i]:starts[i] + vocab_sizes[i]] for i in slim.linear.kept_fields])
            slim.linear.weight.weight.copy_(src)
            slim.linear.bias.copy_(pretrained.linear.bias)
        body_state = slim.body.state_dict() if slim.body is not None else {}
        if not body_state:  # FM, or a body without parameters: nothing to hand over
            return missing
        if int(slim.embedding.out_dim) != int(pretrained.embedding.out_dim):
            return ["body (the slim model's aligned width differs from the pretrain width)"]
        kept = list(slim.embedding.kept_fields)
        src_state = pretrained.body.state_dict()
        copies: dict[str, Tensor] = {}
        for key, dst in body_state.items():
            src = src_state.get(key)
            if src is not None and src.shape != dst.shape:
                src = _field_block_slice(src, dst.shape, num_fields, kept)
            if src is None:
                missing.append(f"body.{key}")
            else:
                copies[key] = src
        if missing:
            return missing
        for key, src in copies.items():
            body_state[key].copy_(src)
    return missing


def randomise_alignment_(slim: RecModel) -> None:
    """``align_init=random`` (sec. 3.2.3: "randomly initialize ... M"): every ``M_i`` drawn
    Xavier-uniform over its ``[d_i, D]`` shape, biases zero."""
    emb = slim.embedding
    with torch.no_grad():
        for i in emb.kept_fields:
            align = emb.field_alignment(i)
            if align is not None:
                nn.init.xavier_uniform_(align[0])
                if align[1] is not None:
                    align[1].zero_()


# ---- the method ---------------------------------------------------------------------------------
@register
class SSEDS(SearchMethod):
    """Pretrain at ``pretrain_width``, prune once to ``budget`` by saliency, retrain the slim model."""

    name = "sseds"
    Options = SSEDSOptions

    def __init__(self, options: SSEDSOptions | None = None, **option_values):
        super().__init__(options, **option_values)
        self._pretrained_state: dict[str, Tensor] | None = None
        self._rewind_state: dict[str, Tensor] | None = None  # weights after rewind_epoch
        self._starts: dict[str, dict[str, Tensor]] = {}  # rewind=auto: the slim model's candidate
        #                                                  starting states, "best" and "rewind"
        self._start_record: dict[str, Any] | None = None  # metrics.json "retrain_start"
        self._single_start_reason: str | None = None  # why rewind=auto retrains once

    @property
    def retrains(self) -> bool:
        """False for the "w/o retraining" ablation: the pipeline then skips ``Trainer.fit``."""
        return bool(self.options.retrain)

    # ---- pretraining --------------------------------------------------------------------------
    def _pretrain_options(self, ctx: SearchContext):
        return dataclasses.replace(ctx.model_options, aligned_dim=None)

    def build_pretrain_model(self, vocab_sizes: list[int], ctx: SearchContext) -> RecModel:
        """The uniform base model the search prunes (the experiment's model at ``pretrain_width``)."""
        opts = self._pretrain_options(ctx)
        return build_model(opts.name, vocab_sizes, dim=self.options.pretrain_width, options=opts)

    def initial_model(self, vocab_sizes: list[int], ctx: SearchContext) -> RecModel:
        """The uniform model as the pretraining started (``rewind_epoch: 0``, the lottery ticket's
        rewind to initialisation): built as the pipeline builds it, right after seeding with
        ``train.seed`` — so also for a ``pretrain_checkpoint`` of an FDE run at ``pretrain_width``
        with that seed. The global random stream is left as it was."""
        numpy_state = np.random.get_state()
        try:
            with torch.random.fork_rng(devices=[]):
                seed_everything(ctx.train.seed)
                return self.build_pretrain_model(vocab_sizes, ctx)
        finally:
            np.random.set_state(numpy_state)

    def _load_checkpoint_state(self, path: str | Path, model: RecModel, schema_hash: str,
                               option: str = "pretrain_checkpoint") -> None:
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise ConfigError(f"method.{option} {path}: file not found") from None
        except Exception as e:  # noqa: BLE001 - a corrupt or non-weights file
            raise ConfigError(f"method.{option} {path}: cannot read it as a weights-only "
                              f"torch file: {e}") from e
        if isinstance(state, dict) and "model" in state and isinstance(state["model"], dict):
            theirs = (state.get("fingerprint") or {}).get("schema_hash")
            if theirs and schema_hash and theirs != schema_hash:
                raise SchemaMismatchError(f"{path} was trained on another dataset: schema hash "
                                          f"{theirs} vs {schema_hash}")
            state = state["model"]
        if not isinstance(state, dict):
            raise ConfigError(f"{path}: expected a model state_dict or a trainer checkpoint")
        own = model.state_dict()
        problems = [f"missing {k}" for k in own if k not in state]
        problems += [f"unexpected {k}" for k in state if k not in own]
        problems += [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(v.shape)}"
                     for k, v in own.items() if k in state and state[k].shape != v.shape]
        if problems:
            raise SchemaMismatchError(
                f"{path} does not fit a {model.name} model at width {self.options.pretrain_width} "
                f"on this dataset: " + "; ".join(problems[:8]) + (" ..." if len(problems) > 8 else ""))
        model.load_state_dict(state)

    def pretrain(self, dataset, ctx: SearchContext) -> tuple[RecModel, dict[str, Any]]:
        """Return the trained uniform model (best validation weights) and what to record of it."""
        schema = dataset.schema
        model = self.build_pretrain_model(schema.vocab_sizes, ctx)
        o = self.options
        if o.pretrain_checkpoint:
            self._load_checkpoint_state(o.pretrain_checkpoint, model, schema.content_hash)
            ctx.log(f"sseds: pretrained weights from {o.pretrain_checkpoint}")
            return model.to(resolve_device(ctx.train.device)), {
                "pretrained_checkpoint": str(o.pretrain_checkpoint)}
        cfg = dataclasses.replace(ctx.train, epochs=o.pretrain_epochs or ctx.train.epochs)
        ckpt_dir = Path(ctx.work_dir) / "pretrain" if ctx.work_dir else None
        fingerprint = {"stage": "sseds-pretrain", "model": model.name, "width": o.pretrain_width,
                       "seed": cfg.seed, "epochs": cfg.epochs}
        trainer = Trainer(model, dataset, cfg, checkpoint_dir=ckpt_dir, quiet=ctx.quiet,
                          log=ctx.log, fingerprint=fingerprint)
        ctx.log(f"sseds: pretraining {model.name} at width {o.pretrain_width} for up to "
                f"{cfg.epochs} epoch(s)")

        def keep_rewind_state(epoch: int, trained: nn.Module) -> None:
            if epoch == o.rewind_epoch:
                self._rewind_state = {k: v.detach().cpu().clone()
                                      for k, v in trained.state_dict().items()}
                if ckpt_dir is not None and distributed.is_main():
                    atomic_torch_save(ckpt_dir / f"epoch-{epoch}.pt", self._rewind_state)

        # continues an interrupted pretraining, if any (its epoch-k.pt is already on disk)
        fit = trainer.fit(resume=True,
                          on_epoch_end=keep_rewind_state if o.keeps_early_weights else None)
        info: dict[str, Any] = {"pretrain_valid_auc": fit.best_valid_auc,
                                "pretrain_best_epoch": fit.best_epoch,
                                "pretrain_epochs_run": fit.epochs_run}
        if ckpt_dir is not None:
            info["pretrained_checkpoint"] = str(ckpt_dir / "best.pt")
        return model, info

    # ---- search ------------------------------------------------------------------------------
    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        o = self.options
        schema = dataset.schema
        t0 = time.perf_counter()
        model, info = self.pretrain(dataset, ctx)
        pretrain_seconds = time.perf_counter() - t0

        t0 = time.perf_counter()
        device = next(model.parameters()).device
        split = dataset.split(o.saliency_split)
        loader = BatchLoader(split, shuffle=True, seed=ctx.train.seed + 1, device=device,
                             max_memory_bytes=ctx.train.in_memory_limit_bytes,
                             **distributed.training_loader_options(
                                 len(split), o.saliency_batch_size or ctx.train.batch_size))

        def prune(scores: np.ndarray, kappa: float = o.budget, allowed=None) -> PruneResult:
            return prune_to_budget(scores, schema.vocab_sizes, kappa, fill=o.fill,
                                   align_cost=o.align_cost, per_entry=o.rank == "per_entry",
                                   allowed=allowed, vocab_cap=o.vocab_cap)

        def search(start: int, count: int) -> tuple[np.ndarray, PruneResult]:
            # Data-parallel (torchrun): the mean over the processes' batches, the same on every rank.
            return prune_in_rounds(lambda alpha: distributed.all_reduce_mean(compute_saliency(
                model, loader, count, start, alpha)), o.budget, o.saliency_rounds, prune)

        saliency, pruned = search(0, o.saliency_batches)
        prune_seconds = time.perf_counter() - t0
        stability = (plan_stability(model, loader, pruned, o.saliency_batches, o.stability_batches,
                                    prune, (lambda b: search(b, 1)[1]) if o.saliency_rounds > 1
                                    else None) if o.stability_batches else None)
        if not any(pruned.dims):
            raise ConfigError(f"sseds: budget {o.budget} allows {pruned.budget_params} embedding "
                              f"entries, less than the most salient cell costs "
                              f"({pruned.next_cell_cost}): raise method.budget")
        self._pretrained_state = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        plan = DimensionPlan(
            method=self.name, field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
            dims=pruned.dims, full_dim=o.pretrain_width, schema_hash=schema.content_hash,
            options=dataclasses.asdict(o), kept_indices=pruned.kept_indices,
            extra={
                "saliency": saliency.tolist(),
                "dropped_fields": [n for n, d in zip(schema.field_names, pruned.dims, strict=True)
                                   if d == 0],
                "budget": {"kappa": float(o.budget), "budget_params": pruned.budget_params,
                           "kept_params": pruned.kept_params, "total_params": pruned.total_params,
                           "next_cell_cost": pruned.next_cell_cost, "fill": bool(o.fill),
                           "alignment_params": alignment_params(pruned.dims, o.align_cost)},
                "pretrain_seconds": pretrain_seconds,
                "prune_seconds": prune_seconds,
                **({"stability": stability} if stability else {}),
                **info,
            })
        counted = " and alignment parameters" if o.align_cost else ""
        ctx.log(f"sseds: kept {pruned.kept_params} of {pruned.total_params} embedding entries"
                f"{counted} (budget {pruned.budget_params}); dims {plan.dims_by_field()}")
        if plan.extra["dropped_fields"]:
            ctx.log(f"sseds: dropped fields (no dimension kept): {plan.extra['dropped_fields']}")
        if stability and stability["batches"]:
            ctx.log(f"sseds: plan stability over {stability['batches']} other single batches: kept-cell "
                    f"Jaccard {np.mean(stability['cell_jaccard']):.2f}, width overlap "
                    f"{np.mean(stability['width_overlap']):.2f} (1 = the same plan)")
        return plan

    # ---- retraining --------------------------------------------------------------------------
    def _pretrained_model(self, plan: DimensionPlan, ctx: SearchContext) -> RecModel:
        model = self.build_pretrain_model(plan.vocab_sizes, ctx)
        if self._pretrained_state is not None:
            model.load_state_dict(self._pretrained_state)
            return model
        # A resumed run: the search ran in an earlier process. Prefer the run's own folder (it may
        # have moved since), then the path the plan recorded.
        own = Path(ctx.work_dir) / "pretrain" / "best.pt" if ctx.work_dir else None
        path = own if own is not None and own.exists() else plan.extra.get("pretrained_checkpoint")
        if not path:
            raise ConfigError("sseds: the pretrained weights are not available (no checkpoint was "
                              "written: run with a work folder, or set method.pretrain_checkpoint)")
        self._load_checkpoint_state(path, model, plan.schema_hash)
        return model

    def _rewound_model(self, plan: DimensionPlan, ctx: SearchContext,
                       required: bool = True) -> RecModel | None:
        """The uniform model at the rewind point (``rewind_epoch`` of this run's pretraining, or
        ``rewind_checkpoint``): the weights the ticket and the inherited network come from. When
        the pretraining kept no such weights: an error, or None if not ``required``."""
        o = self.options
        if o.early_weights == "initial":
            return self.initial_model(plan.vocab_sizes, ctx)
        model = self.build_pretrain_model(plan.vocab_sizes, ctx)
        if o.rewind_checkpoint:
            self._load_checkpoint_state(o.rewind_checkpoint, model, plan.schema_hash,
                                        option="rewind_checkpoint")
            return model
        if self._rewind_state is not None:
            model.load_state_dict(self._rewind_state)
            return model
        own = Path(ctx.work_dir) / "pretrain" / f"epoch-{o.rewind_epoch}.pt" if ctx.work_dir else None
        if (own is None or not own.exists()) and not required:
            return None
        if own is None or not own.exists():
            ran = plan.extra.get("pretrain_epochs_run")
            raise ConfigError(f"sseds: method.rewind_epoch {o.rewind_epoch}: the pretraining ran "
                              f"{ran if ran is not None else 'fewer'} epoch(s), so it has no weights "
                              f"after epoch {o.rewind_epoch}: lower rewind_epoch")
        self._load_checkpoint_state(own, model, plan.schema_hash, option="rewind_epoch")
        return model

    def retrain_model_options(self, model_options, plan: DimensionPlan):
        """The slim model (sec. 3.2.3): every kept field aligned (one ``M_i`` per kept field, eq. 13,
        or the parameter-free placement), to the pretrain width or ``d_max``; the first-order weights
        of dropped fields kept unless ``prune_first_order``. The model's own ``align`` and
        ``aligned_dim`` are replaced by the method's ``align`` and ``align_width``."""
        o = self.options
        return dataclasses.replace(
            model_options, align=o.align, align_always=True,
            aligned_dim=o.pretrain_width if o.align_width == "pretrain" else None,
            linear_fields="kept" if o.prune_first_order else "all")

    def retrain_train_options(self, train, plan: DimensionPlan):
        """``keep_start: true``: the retraining validates the slim model before its first epoch and
        keeps it if no epoch beats it (``train.validate_start``) when it is set to start from
        trained weights (``ticket`` or the inherited network; a saved plan retrained with
        ``method: plan`` starts fresh, and a fresh start is validated too but never kept in
        practice). Off by default: in the measured runs (docs/sseds.md, the bullet "Keeping the
        pruned start") the pruned start was always below the first retraining epoch."""
        o = self.options
        if o.keep_start and (o.ticket or o.inherits_network) and not train.validate_start:
            return dataclasses.replace(train, validate_start=True)
        return train

    def _early_weights(self) -> str:
        o = self.options
        if o.early_weights == "checkpoint":
            return f"the weights of {o.rewind_checkpoint}"
        if o.early_weights == "initial":
            return "the pretraining's initial weights (epoch 0)"
        return f"the weights after pretraining epoch {o.rewind_epoch}"

    def init_retrain_model(self, model: RecModel, plan: DimensionPlan, ctx: SearchContext) -> None:
        """Winning ticket (sec. 3.2.3): the kept pretrained columns; per Algorithm 1 the rest of the
        pretrained network (first-order weights, body); ``M_i`` as ``align_init`` says. With the
        defaults the slim model computes exactly the masked pretrained model at step 0 — of the
        best pretrained weights, or of the early ones (``rewind``). With ``rewind: auto`` both
        starting states are kept for :meth:`fit_retrain`; the model is left at the best one."""
        o = self.options
        if o.align == "linear" and o.align_init == "random":
            randomise_alignment_(model)
            ctx.log("sseds: M_i initialised at random (align_init=random)")
        if not o.ticket and not o.inherits_network:
            ctx.log("sseds: w/o ticket: the slim model starts from a fresh initialisation")
            return
        if o.rewind == "always":
            ctx.log(f"sseds: rewinding: the slim model starts from {self._early_weights()}")
            self._hand_over(model, self._rewound_model(plan, ctx), plan, ctx)
            return
        fresh = {k: v.detach().clone() for k, v in model.state_dict().items()}
        self._hand_over(model, self._pretrained_model(plan, ctx), plan, ctx)
        if o.rewind == "never" or o.early_weights_unavailable:
            return
        best = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(fresh)
        with torch.random.fork_rng(devices=[]):  # the random stream stays the single start's
            early = self._rewound_model(plan, ctx, required=False)
            if early is None:  # e.g. a pretraining of an earlier run that kept no early weights
                self._single_start_reason = (f"the pretraining kept no weights after epoch "
                                             f"{o.rewind_epoch}")
                model.load_state_dict(best)
                return
            self._hand_over(model, early, plan, ctx, quiet=True)
        rewound = {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}
        model.load_state_dict(best)
        if all(torch.equal(best[k], rewound[k]) for k in best):  # the best epoch is the early one
            self._single_start_reason = f"{self._early_weights()} are the best ones"
            return
        self._starts = {"best": best, "rewind": rewound}

    def _hand_over(self, model: RecModel, pretrained: RecModel, plan: DimensionPlan,
                   ctx: SearchContext, quiet: bool = False) -> None:
        """Copy the ticket, the inherited network and the selecting ``M_i`` from ``pretrained``."""
        o = self.options
        log = (lambda msg: None) if quiet else ctx.log
        pretrained = pretrained.to(next(model.parameters()).device)
        if o.ticket:
            copy_ticket_(model, pretrained, plan.kept_indices)
            log("sseds: slim tables initialised from the kept pretrained columns (ticket)")
        if o.inherits_network:
            missing = inherit_network_(model, pretrained, plan.vocab_sizes)
            if missing and (o.inherit_network or not o.retrain):
                raise ConfigError("sseds: the pretrained network does not fit the slim model "
                                  f"({', '.join(missing)}): use align_width=pretrain or "
                                  "inherit_network=false")
            if missing:
                log(f"sseds: kept a fresh initialisation for {', '.join(missing)} (its shape "
                    "depends on the dropped fields)")
            else:
                log("sseds: first-order weights and body inherited from the pretrained model")
        if o.align == "linear" and o.align_init == "select":
            if not select_alignment_(model, plan.kept_indices, o.pretrain_width):
                raise ConfigError("sseds: align_init=select needs the slim model aligned to the "
                                  "pretrain width")
            log("sseds: each M_i places its kept columns at their pretrained coordinates")

    def fit_retrain(self, trainer: Trainer, *, resume: bool = False) -> FitResult:
        """The retraining. ``rewind: auto`` (with two distinct starting states): the slim model is
        trained from the best pretrained weights and from the early ones, each an ordinary
        ``Trainer.fit`` (its own checkpoints in ``checkpoints/start-best/`` and
        ``checkpoints/start-rewind/``, the same seeded batches), and the one with the better
        *validation* AUC is kept (a tie keeps the best weights, the paper's start); its best
        weights are left in the model and its ``best.pt`` and ``last.pt`` copied to
        ``checkpoints/``. The test split is not read. Costs the two retrainings. A resumed run
        continues each candidate from its own checkpoints (then no starting state is needed)."""
        o = self.options
        record: dict[str, Any] = {"rewind": o.rewind, "early_weights": self._early_weights()}
        folders = ({n: trainer.checkpoint_dir / f"start-{n}" for n in ("best", "rewind")}
                   if trainer.checkpoint_dir is not None else {})
        finished = (o.rewind == "auto" and resume and bool(folders)
                    and all((f / "last.pt").exists() for f in folders.values()))
        if (len(self._starts) < 2 and not finished) or trainer.sharded:
            if o.rewind == "auto":
                reason = (o.early_weights_unavailable or self._single_start_reason
                          or ("train.parallel torchrec retrains once" if trainer.sharded else
                              "a resumed run that had retrained once"))
                trainer.log(f"sseds: rewind=auto: retraining from the best pretrained weights only "
                            f"({reason})")
                record["single_start_reason"] = reason
            record["chosen"] = "rewind" if o.rewind == "always" else "best"
            fit = trainer.fit(resume=resume)
            record["candidates"] = {record["chosen"]: _fit_summary(fit)}
            self._start_record = record
            return fit
        rng = torch.get_rng_state()  # each candidate sees the random stream the single fit would
        cuda_rng = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        fits: dict[str, tuple[FitResult, dict[str, Tensor]]] = {}
        for name in ("best", "rewind"):
            torch.set_rng_state(rng)
            if cuda_rng is not None:
                torch.cuda.set_rng_state_all(cuda_rng)
            if name in self._starts:  # (else its finished checkpoints are read back)
                trainer.model.load_state_dict(self._starts[name])
            trainer.log("sseds: rewind=auto: retraining from " + (
                "the best pretrained weights" if name == "best" else self._early_weights()))
            candidate = trainer.sibling(checkpoint_dir=folders.get(name), start=name)
            fit = candidate.fit(resume=resume)
            fits[name] = (fit, {k: v.detach().clone() for k, v in trainer.model.state_dict().items()})
        chosen = max(fits, key=lambda n: (fits[n][0].best_valid_auc, n == "best"))
        fit, state = fits[chosen]
        trainer.model.load_state_dict(state)
        if folders and distributed.is_main():  # the run folder's checkpoints are the kept ones
            for file in ("best.pt", "last.pt"):
                atomic_copy(folders[chosen] / file, trainer.checkpoint_dir / file)
        record.update(chosen=chosen, candidates={n: _fit_summary(f) for n, (f, _) in fits.items()})
        trainer.log("sseds: rewind=auto: validation AUC " + ", ".join(
            f"{n} {f.best_valid_auc:.5f} (epoch {f.best_epoch})" for n, (f, _) in fits.items())
            + f": keeping the start from the {chosen} weights")
        self._start_record = record
        # the cost of the selection: both retrainings count
        fit.train_seconds = sum(f.train_seconds for f, _ in fits.values())
        fit.train_samples = sum(f.train_samples for f, _ in fits.values())
        return fit

    def retrain_metrics(self) -> dict[str, Any]:
        """``retrain_start`` in metrics.json: the ``rewind`` option, the early weights, which start
        was kept and each retrained candidate's validation AUC, best epoch and epochs run."""
        return {"retrain_start": self._start_record} if self._start_record else {}


def _fit_summary(fit: FitResult) -> dict[str, Any]:
    return {"valid_auc": fit.best_valid_auc, "best_epoch": fit.best_epoch,
            "epochs_run": fit.epochs_run}
