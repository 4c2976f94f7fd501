"""MDE (Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
Systems", 2021), the baseline of AutoDim's Table 2 (sec. 3.4 (ii): "assigns highly-frequent feature
values with larger embedding dimensions"): by default per frequency block of values (``blocks: 4``,
below); ``blocks: null`` is the field-level form (one width per field).

MDE sizes a block of embedding vectors by its popularity ``p`` (the probability that a query reads
one of its vectors): ``d = lambda * p ** alpha`` with a temperature ``alpha`` in [0, 1] (0: uniform
widths) and a scale ``lambda`` fixed by the base width of the most popular block. With one block per
field and every field read once per example, a vector of field ``i`` is read with probability
``p_i = 1 / n_i`` (``n_i`` its vocabulary size), so::

    d_i = round(base * (n_min / n_i) ** alpha),  clipped to [min_dim, base]

(more values -> narrower vectors; the narrower fields are projected to ``base`` by the model's
linear alignment, MDE's projection). As in AutoDim's evaluation, a small grid of temperatures x
base widths (default 4 x 4 = 16 settings) is trained and the setting with the best validation AUC
is returned; every setting's result is kept in ``plan.extra["trials"]``.

Per frequency block inside a field (option ``blocks: K``, default 4: the AutoDim paper does not say
how many blocks its MDE uses, Ginart et al. leave it to the user): each field's ids are cut into at most
``K`` blocks of about equal training-frequency mass (:func:`~embdim.nn.block_embedding.frequency_blocks`:
the value ids are already in descending-frequency order, so a block is a contiguous id range; the
reserved ids 0 = OOV and 1 = missing join the block their own counts place them in, the least frequent
one unless they are frequent). A vector of block ``k`` is read with probability
``p_k = c_k / (N * n_k)`` (``c_k`` its ids' total training count, ``n_k`` its number of ids, ``N`` the
training rows), and with the same rule as above, applied to the blocks of all fields together::

    d_k = round(base * (p_k / p_max) ** alpha),  clipped to [min_dim, base]

(``p_max``: the most popular block of any field, which gets ``base``). With ``K = 1`` this is the
field-level rule exactly (``p_i = 1 / n_i``). Each block has its own table ``[n_k, d_k]`` and a
projection ``[d_k, D]`` to the common width (:class:`~embdim.nn.block_embedding.BlockFieldEmbedding`);
the blocks are stored in ``plan.value_dim_rule["blocks"]`` and ``plan.dims`` holds each field's largest
block width.

With ``budget: kappa`` (:mod:`embdim.search.budget`) the grid is one setting per temperature: the
widest base width (up to ``max(base_dims, candidates)``) whose tables fit ``kappa`` x the FDE
parameters at the largest candidate; the best of those by validation AUC is returned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embdim.data.schema import RESERVED_IDS
from embdim.errors import ConfigError
from embdim.nn.block_embedding import block_size, blocks_to_ranges, frequency_blocks
from embdim.nn.models import ModelOptions
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.budget import budget_params, check_kappa
from embdim.search.fde import DEFAULT_CANDIDATES
from embdim.search.random import align_to_largest, score_plans


def mde_dims(vocab_sizes: list[int], alpha: float, base: int, min_dim: int = 1) -> list[int]:
    """Per-field widths ``round(base * (n_min / n_i) ** alpha)`` clipped to ``[min_dim, base]``."""
    n_min = min(vocab_sizes)
    return [int(min(base, max(min_dim, round(base * (n_min / n) ** alpha)))) for n in vocab_sizes]


def mde_block_dims(frequencies: list, blocks: list[list[list[int]]], alpha: float, base: int,
                   min_dim: int = 1) -> list[list[int]]:
    """Per field, per block: ``round(base * (p_k / p_max) ** alpha)`` clipped to ``[min_dim, base]``,
    with ``p_k`` proportional to the block's mean training count per id (``blocks`` as id lists)."""
    mean = [[float(np.asarray(counts)[ids].sum()) / len(ids) for ids in field]
            for counts, field in zip(frequencies, blocks, strict=True)]
    p_max = max(max(m) for m in mean) or 1.0
    return [[int(min(base, max(min_dim, round(base * (m / p_max) ** alpha)))) for m in field]
            for field in mean]


@dataclass
class MDEOptions:
    temperatures: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])  # alpha grid
    base_dims: list[int] = field(default_factory=lambda: [8, 16, 24, 32])  # width of the most popular
    min_dim: int = 1
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))  # FDE = the largest
    trial_epochs: int | None = None  # epochs per setting; None = train.epochs
    blocks: int | None = 4  # K frequency blocks per field (equal mass); None = one width per field
    budget: float | None = None  # kappa: per temperature the widest base with tables <= kappa * FDE

    def validate(self) -> None:
        if not self.temperatures or not all(0.0 <= float(a) <= 1.0 for a in self.temperatures):
            raise ConfigError(f"method.temperatures must be in [0, 1], got {self.temperatures}")
        if not self.base_dims or not all(isinstance(d, int) and d > 0 for d in self.base_dims):
            raise ConfigError(f"method.base_dims must be positive integers, got {self.base_dims}")
        if self.min_dim < 1 or not self.candidates or min(self.candidates) < 1:
            raise ConfigError("method.min_dim and method.candidates must be >= 1")
        if self.blocks is not None and not (isinstance(self.blocks, int) and self.blocks >= 1):
            raise ConfigError(f"method.blocks must be a positive integer or null, got {self.blocks!r}")
        check_kappa(self.budget)


@register
class MDE(SearchMethod):
    """Mixed-dimension embeddings by popularity: the best of a temperature x base-width grid."""

    name = "mde"
    Options = MDEOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        opts, schema = self.options, dataset.schema
        full = max(*opts.candidates, *opts.base_dims)
        if opts.blocks:
            freqs = dataset.frequencies()
            id_blocks = [frequency_blocks(c, opts.blocks, RESERVED_IDS) for c in freqs]
            ranges = [blocks_to_ranges(f, RESERVED_IDS) for f in id_blocks]
        def plan_for(alpha: float, base: int) -> tuple[tuple, DimensionPlan]:
            setting = {"temperature": float(alpha), "base_dim": int(base)}
            rule: dict[str, Any]
            if opts.blocks:
                block_dims = mde_block_dims(freqs, id_blocks, float(alpha), int(base), opts.min_dim)
                dims = [max(d) for d in block_dims]
                key = tuple(map(tuple, block_dims))
                rule = {"rule": "d_k = round(base * (p_k / p_max) ** alpha), p_k = c_k / (N n_k)",
                        "per": "block", "num_blocks": opts.blocks, "split": "equal frequency mass",
                        **setting, "min_dim": opts.min_dim,
                        "blocks": [[{**r, "dim": d} for r, d in zip(rf, df, strict=True)]
                                   for rf, df in zip(ranges, block_dims, strict=True)]}
            else:
                dims = mde_dims(schema.vocab_sizes, float(alpha), int(base), opts.min_dim)
                key = tuple(dims)
                rule = {"rule": "d_i = round(base * (n_min / n_i) ** alpha)", "per": "field",
                        **setting, "min_dim": opts.min_dim}
            return key, DimensionPlan(method=self.name, field_names=schema.field_names,
                                      vocab_sizes=schema.vocab_sizes, dims=dims, full_dim=full,
                                      schema_hash=schema.content_hash, value_dim_rule=rule,
                                      extra={"setting": setting})

        if opts.budget is None:
            settings = [(alpha, base) for base in opts.base_dims for alpha in opts.temperatures]
        else:  # per temperature, the widest base width whose tables fit the budget
            full = max(opts.candidates)
            limit = budget_params(schema.vocab_sizes, full, opts.budget)
            settings = []
            for alpha in opts.temperatures:
                fitting = [b for b in range(1, max(*opts.base_dims, full) + 1)
                           if plan_for(alpha, b)[1].embedding_params <= limit]
                settings += [(alpha, max(fitting))] if fitting else []
            if not settings:
                raise ConfigError(f"mde: no setting fits method.budget {opts.budget} ({limit:,} "
                                  f"entries) even at base width 1 (min_dim {opts.min_dim})")
        plans, seen = [], set()
        for alpha, base in settings:
            key, plan = plan_for(alpha, base)
            if key in seen:  # two settings giving the same widths are trained once
                continue
            seen.add(key)
            plans.append(plan)
        trials = score_plans(dataset, ctx, plans, epochs=opts.trial_epochs, label="mde")
        if opts.blocks:  # the block widths of every setting, for the record
            for t, p in zip(trials, plans, strict=True):
                t["block_dims"] = [[b["dim"] for b in f] for f in p.value_dim_rule["blocks"]]
        best = max(range(len(trials)), key=lambda k: trials[k]["valid_auc"])
        plan = plans[best]
        plan.options = dataclasses.asdict(opts)
        plan.extra = {"trials": trials, "best_trial": best, "setting": plan.extra["setting"]}
        if opts.blocks:
            plan.extra["block_sizes"] = [[block_size(b) for b in f] for f in ranges]
        return plan

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        return align_to_largest(model_options, plan)
