"""MDE (Ginart et al., "Mixed Dimension Embeddings with Application to Memory-Efficient Recommendation
Systems", 2021), the field-level form used as a baseline by AutoDim (sec. 3.4 (ii)).

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

Not implemented: MDE's per-frequency-block widths inside a field (it needs per-value widths in the
embedding layer).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

from embdim.errors import ConfigError
from embdim.nn.models import ModelOptions
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.fde import DEFAULT_CANDIDATES
from embdim.search.random import align_to_largest, score_plans


def mde_dims(vocab_sizes: list[int], alpha: float, base: int, min_dim: int = 1) -> list[int]:
    """Per-field widths ``round(base * (n_min / n_i) ** alpha)`` clipped to ``[min_dim, base]``."""
    n_min = min(vocab_sizes)
    return [int(min(base, max(min_dim, round(base * (n_min / n) ** alpha)))) for n in vocab_sizes]


@dataclass
class MDEOptions:
    temperatures: list[float] = field(default_factory=lambda: [0.1, 0.2, 0.3, 0.4])  # alpha grid
    base_dims: list[int] = field(default_factory=lambda: [8, 16, 24, 32])  # width of the most popular
    min_dim: int = 1
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))  # FDE = the largest
    trial_epochs: int | None = None  # epochs per setting; None = train.epochs

    def validate(self) -> None:
        if not self.temperatures or not all(0.0 <= float(a) <= 1.0 for a in self.temperatures):
            raise ConfigError(f"method.temperatures must be in [0, 1], got {self.temperatures}")
        if not self.base_dims or not all(isinstance(d, int) and d > 0 for d in self.base_dims):
            raise ConfigError(f"method.base_dims must be positive integers, got {self.base_dims}")
        if self.min_dim < 1 or not self.candidates or min(self.candidates) < 1:
            raise ConfigError("method.min_dim and method.candidates must be >= 1")


@register
class MDE(SearchMethod):
    """Mixed-dimension embeddings by popularity: the best of a temperature x base-width grid."""

    name = "mde"
    Options = MDEOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        opts, schema = self.options, dataset.schema
        full = max(*opts.candidates, *opts.base_dims)
        plans, seen = [], set()
        for base in opts.base_dims:
            for alpha in opts.temperatures:
                dims = mde_dims(schema.vocab_sizes, float(alpha), int(base), opts.min_dim)
                if tuple(dims) in seen:  # two settings giving the same widths are trained once
                    continue
                seen.add(tuple(dims))
                plans.append(DimensionPlan(method=self.name, field_names=schema.field_names,
                                           vocab_sizes=schema.vocab_sizes, dims=dims, full_dim=full,
                                           schema_hash=schema.content_hash,
                                           extra={"setting": {"temperature": float(alpha),
                                                              "base_dim": int(base)}}))
        trials = score_plans(dataset, ctx, plans, epochs=opts.trial_epochs, label="mde")
        best = max(range(len(trials)), key=lambda k: trials[k]["valid_auc"])
        plan = plans[best]
        plan.options = dataclasses.asdict(opts)
        plan.value_dim_rule = {"rule": "d_i = round(base * (n_min / n_i) ** alpha)", "per": "field",
                               **plan.extra["setting"], "min_dim": opts.min_dim}
        plan.extra = {"trials": trials, "best_trial": best, "setting": plan.extra["setting"]}
        return plan

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        return align_to_largest(model_options, plan)
