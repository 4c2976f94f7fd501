"""PEP: learnable embedding sizes by soft-threshold pruning, then the lottery-ticket retrain.

Liu et al., "Learnable Embedding Sizes for Recommender Systems" (ICLR 2021); the reference code is
the authors' repository ssui-liu/learnable-embed-sizes-for-RecSys (``models/pep_embedding.py``,
``engine.py``, ``train_criteo.py``).

1. **Search** (sec. 3.2, eq. 5-7): the embedding table ``V [sum_i vocab_i, d]`` is used through the
   soft threshold ``S(V, s) = sign(V) * ReLU(|V| - g(s))``, ``g = sigmoid``, and ``V`` and the
   threshold parameters ``s`` are trained together with the base model. ``s`` has one of the
   repository's granularities (``threshold_type``): ``global`` (one scalar), ``dimension`` (one per
   column), ``feature`` (one per value), ``feature_dim`` (one per entry; the repository's default),
   ``field`` and ``field_dim``. Adam's weight decay on every parameter (the repository's
   ``l2_regularization``) pulls the very negative initial ``s`` up, so the thresholds grow and more
   and more entries become exactly 0.
2. **Target** (``engine.py``, ``save_pruned_embedding``): after every step the non-zero entries of
   ``S(V, s)`` are counted; when they first fall to the target (here ``budget`` x the full table,
   SSEDS' kappa) the search stops and the non-zero pattern is the mask.
3. **Retrain** (sec. 3.3, "lottery ticket"; ``init_retrain``): the mask is kept and the weights are
   rewound to their values before the search (``retrain: rewind``; the repository's
   ``re_init=False``), or drawn afresh (``random``, ``re_init=True``); ``none`` evaluates the pruned
   searched model as it is. The retrained embedding is :class:`~embdim.nn.masked_embedding.
   MaskedFieldEmbedding` (no threshold: ``gk = 0`` in the repository).

See docs/pruning.md for the options and what differs from the paper.
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from embdim.errors import ConfigError
from embdim.nn.models import RecModel
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.budget import budget_entries
from embdim.search.pruning import (
    FullTableEmbedding,
    TargetReached,
    build_search_model,
    hand_over_,
    load_state_payload,
    make_trainer,
    masked_plan,
    no_embedding_plan,
    search_train_config,
    state_payload,
    target_problems,
    training_problems,
)
from embdim.train.optim import make_adam

THRESHOLD_TYPES = ("global", "dimension", "feature", "feature_dim", "field", "field_dim")
RETRAINS = ("rewind", "random", "none")


@dataclass
class PEPOptions:
    """The ``method:`` section of a PEP experiment (every key optional; defaults: the authors'
    Criteo configuration, ``train_criteo.py``, except where noted)."""

    budget: float = 0.1  # kept (non-zero) entries <= budget x the full table (SSEDS' kappa)
    width: int = 24  # d, the width of the full table that is pruned (repository, Criteo: 24)
    threshold_type: str = "feature_dim"  # granularity of s (repository: feature_dim)
    threshold_init: float = -150.0  # initial s (repository: -150 Criteo/Avazu, -15 MovieLens)
    threshold_lr: float | None = None  # Adam step size of s; None: train.lr (repository)
    weight_decay: float = 1e-5  # Adam weight decay on every search parameter (repository: 1e-5);
    #                             what moves s up from a very negative init
    epochs: int | None = None  # the most search epochs before giving up; None: train.epochs
    retrain: str = "rewind"  # "rewind" (lottery ticket), "random" (fresh weights), "none"

    def validate(self) -> None:
        problems = target_problems(self)
        if self.threshold_type not in THRESHOLD_TYPES:
            problems.append(f"method.threshold_type must be one of {', '.join(THRESHOLD_TYPES)}, "
                            f"got {self.threshold_type!r}")
        if self.threshold_lr is not None and self.threshold_lr <= 0:
            problems.append(f"method.threshold_lr must be positive, got {self.threshold_lr!r}")
        problems += training_problems(self, RETRAINS)
        if problems:
            raise ConfigError("pep: " + "; ".join(problems))


class SoftThresholdEmbedding(FullTableEmbedding):
    """PEP's search embedding (eq. 5-7): looked-up rows ``S(V, s) = sign(V) ReLU(|V| - sigmoid(s))``.

    ``threshold`` has shape ``[1]`` (global), ``[D]`` (dimension), ``[N, 1]`` (feature), ``[N, D]``
    (feature_dim), ``[F, 1]`` (field) or ``[F, D]`` (field_dim). The buffer ``found`` holds the
    mask once the target is reached (``reached`` = 1) and ``step`` counts optimiser steps.
    """

    def __init__(self, vocab_sizes: list[int], width: int, threshold_type: str, threshold_init: float):
        super().__init__(vocab_sizes, width)
        n, f = sum(self.vocab_sizes), len(self.vocab_sizes)
        shape = {"global": (1,), "dimension": (width,), "feature": (n, 1), "feature_dim": (n, width),
                 "field": (f, 1), "field_dim": (f, width)}[threshold_type]
        self.threshold_type = threshold_type
        self.threshold = nn.Parameter(torch.full(shape, float(threshold_init)))
        self.register_buffer("step", torch.zeros((), dtype=torch.long))
        self.register_buffer("reached", torch.zeros((), dtype=torch.long))
        self.register_buffer("found", torch.zeros(n, width, dtype=torch.bool))

    def _threshold_of(self, rows: Tensor, fields: Tensor) -> Tensor:
        """``g(s)`` for table rows ``rows`` of fields ``fields`` (same shape), broadcastable to
        ``[*rows.shape, D]``."""
        s = self.threshold
        if self.threshold_type in ("feature", "feature_dim"):
            s = s[rows]
        elif self.threshold_type in ("field", "field_dim"):
            s = s[fields]
        return torch.sigmoid(s)

    @staticmethod
    def soft_threshold(v: Tensor, t: Tensor) -> Tensor:
        """Eq. 6: ``sign(v) * ReLU(|v| - t)``."""
        return torch.sign(v) * torch.relu(v.abs() - t)

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> S(V, s) rows [B, F, D]."""
        rows = self.rows(ids)
        fields = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
        v = self.weight.index_select(0, rows.reshape(-1)).view(*rows.shape, self.out_dim)
        return self.soft_threshold(v, self._threshold_of(rows, fields))

    @torch.no_grad()
    def sparse_table(self) -> Tensor:
        """``S(V, s)`` over the whole table ``[N, D]``."""
        rows = torch.arange(self.weight.shape[0], device=self.weight.device)
        return self.soft_threshold(self.weight, self._threshold_of(rows, self.row_field))

    @torch.no_grad()
    def non_zero(self) -> int:
        return int(self.sparse_table().count_nonzero())


@register
class PEP(SearchMethod):
    """Soft-threshold pruning to ``budget``, then the lottery-ticket retrain of the masked table."""

    name = "pep"
    Options = PEPOptions

    def __init__(self, options: PEPOptions | None = None, **option_values):
        super().__init__(options, **option_values)
        self._searched: RecModel | None = None

    @property
    def retrains(self) -> bool:
        return self.options.retrain != "none"

    def build_search_model(self, vocab_sizes: list[int], ctx: SearchContext) -> RecModel:
        o = self.options
        emb = SoftThresholdEmbedding(vocab_sizes, o.width, o.threshold_type, o.threshold_init)
        return build_search_model(ctx, vocab_sizes, emb)

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        o, schema = self.options, dataset.schema
        options = dataclasses.asdict(o)
        model = self.build_search_model(schema.vocab_sizes, ctx)
        if model.embedding is None:
            ctx.log(f"pep: model {model.name} has no embedding table: nothing to prune")
            return no_embedding_plan(self.name, schema, o.width, options)
        initial = state_payload("initial_state", model)
        emb: SoftThresholdEmbedding = model.embedding
        total = emb.weight.numel()
        target = budget_entries(o.budget, total)
        cfg = search_train_config(ctx, o.epochs or ctx.train.epochs, weight_decay=o.weight_decay)

        def after_step() -> None:
            emb.step += 1
            if emb.reached.item():
                raise TargetReached
            if emb.non_zero() <= target:
                emb.found.copy_(emb.sparse_table() != 0)
                emb.reached.fill_(1)
                raise TargetReached

        trainer = make_trainer(model, dataset, cfg, ctx, "pep", after_step,
                               {"model": model.name, "width": o.width, "seed": cfg.seed,
                                "threshold_type": o.threshold_type})
        if o.threshold_lr is not None:  # s on its own step size (one Adam, two groups)
            others = [p for p in model.parameters() if p is not emb.threshold]
            trainer.optimizer = make_adam([{"params": others},
                                           {"params": [emb.threshold], "lr": o.threshold_lr}],
                                          lr=cfg.lr, weight_decay=cfg.weight_decay)
        ctx.log(f"pep: searching {model.name} at width {o.width} ({o.threshold_type} thresholds, "
                f"init {o.threshold_init}) until at most {target} of {total} entries are non-zero")
        t0 = time.perf_counter()
        try:
            trainer.fit_to_end(resume=True)
        except TargetReached:
            pass
        if not emb.reached.item():
            raise ConfigError(
                f"pep: after {cfg.epochs} epoch(s) ({int(emb.step)} steps) {emb.non_zero()} of "
                f"{total} entries are non-zero, above the target {target} (budget {o.budget}): give "
                f"the search more epochs (method.epochs), a larger method.threshold_lr or "
                f"method.weight_decay, or a higher method.threshold_init")
        mask = emb.found.cpu().numpy()
        self._searched = model
        ctx.log(f"pep: target reached after {int(emb.step)} steps: {int(mask.sum())} of {total} "
                f"entries non-zero")
        payload = dict(initial) if o.retrain == "rewind" else {}
        if o.retrain == "none":
            payload.update(state_payload("searched_state", model))
        threshold = torch.sigmoid(emb.threshold.detach()).cpu().numpy()
        return masked_plan(self.name, schema, mask, o.width, options, payload=payload, extra={
            "budget": {"kappa": float(o.budget), "budget_params": target,
                       "kept_params": int(mask.sum()), "total_params": total},
            "search_steps": int(emb.step),
            "prune_seconds": time.perf_counter() - t0,
            "threshold_summary": {"min": float(threshold.min()), "mean": float(threshold.mean()),
                                  "max": float(threshold.max())}})

    def init_retrain_model(self, model: RecModel, plan: DimensionPlan, ctx: SearchContext) -> None:
        """``rewind``: the search model's initial weights (embedding table times the mask, and the
        rest of the network) — the lottery ticket (sec. 3.3); ``none``: the searched model, its
        table as ``S(V, s)``; ``random``: the fresh initialisation (times the mask)."""
        if model.embedding is None or self.options.retrain == "random":
            return
        source = self.build_search_model(plan.vocab_sizes, ctx)
        prefix = "initial_state" if self.options.retrain == "rewind" else "searched_state"
        if not load_state_payload(source, plan.payload, prefix):
            raise ConfigError(f"pep: retrain={self.options.retrain} needs the plan's payload "
                              f"'{prefix}' arrays, and this plan has none")
        emb: SoftThresholdEmbedding = source.embedding
        table = emb.weight.detach() if prefix == "initial_state" else emb.sparse_table()
        missing = hand_over_(model, source, table, plan.vocab_sizes)
        what = "initial (rewound)" if prefix == "initial_state" else "searched"
        ctx.log(f"pep: the masked model starts from the {what} weights"
                + (f"; fresh: {', '.join(missing)}" if missing else ""))
