"""RaS (random search), the AutoDim paper's field-level baseline (sec. 3.4 (vii)).

Each of ``trials`` trials draws every field's width uniformly from the candidates, trains the base
model with that plan (the library's Trainer: Adam, early stopping on validation AUC) and scores it
by its best validation AUC; the best trial's plan is returned and the pipeline retrains and tests
it like any plan. Every trial (its dims, validation AUC / Logloss, parameters, seconds) is logged
and kept in ``plan.extra["trials"]``. :func:`score_plans` is shared with MDE's grid search.
With ``budget: kappa`` every trial is drawn among the assignments whose tables fit ``kappa`` x FDE
(:func:`draw_under_budget`; :mod:`embdim.search.budget`).
"""

from __future__ import annotations

import dataclasses
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from embdim.errors import ConfigError
from embdim.nn.models import ModelOptions, build_model
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.budget import budget_params, check_feasible, check_kappa
from embdim.search.fde import DEFAULT_CANDIDATES
from embdim.train.trainer import Trainer, seed_everything


def align_to_largest(model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
    """The model options with ``aligned_dim`` = the plan's full width, unless the config sets one."""
    if model_options.aligned_dim is not None:
        return model_options
    return dataclasses.replace(model_options, aligned_dim=int(plan.full_dim))


def score_plans(dataset, ctx: SearchContext, plans: list[DimensionPlan], *, epochs: int | None,
                label: str) -> list[dict[str, Any]]:
    """Train the base model once per plan (seeded like the retraining) and return, per plan, its
    dims, best validation AUC / Logloss, embedding parameters and seconds."""
    train = dataclasses.replace(ctx.train, epochs=epochs or ctx.train.epochs)
    trials = []
    for k, plan in enumerate(plans):
        seed_everything(train.seed)
        model = build_model(ctx.model_options.name, dataset.schema, plan,
                            options=align_to_largest(ctx.model_options, plan))
        t0 = time.perf_counter()
        fit = Trainer(model, dataset, train, quiet=ctx.quiet).fit()
        valid_logloss = next(h["valid_logloss"] for h in fit.history if h["epoch"] == fit.best_epoch)
        trial = {"trial": k, "dims": list(plan.dims), "valid_auc": fit.best_valid_auc,
                 "valid_logloss": valid_logloss, "embedding_params": plan.embedding_params,
                 "seconds": time.perf_counter() - t0, **plan.extra.get("setting", {})}
        trials.append(trial)
        ctx.log(f"{label} trial {k + 1}/{len(plans)}: dims {trial['dims']} valid_auc "
                f"{trial['valid_auc']:.5f} params {trial['embedding_params']}")
    return trials


@dataclass
class RandomSearchOptions:
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    trials: int = 10  # K random assignments, each trained
    trial_epochs: int | None = None  # epochs per trial; None = train.epochs
    seed: int | None = None  # draws the assignments; None = train.seed
    budget: float | None = None  # kappa: only assignments with tables <= kappa * FDE are drawn

    def validate(self) -> None:
        if not self.candidates or not all(isinstance(c, int) and c > 0 for c in self.candidates):
            raise ConfigError(f"method.candidates must be positive integer widths, got {self.candidates}")
        if not isinstance(self.trials, int) or self.trials < 1:
            raise ConfigError(f"method.trials must be a positive integer, got {self.trials!r}")
        if self.trial_epochs is not None and self.trial_epochs < 1:
            raise ConfigError(f"method.trial_epochs must be positive, got {self.trial_epochs}")
        check_kappa(self.budget)


@register
class RandomSearch(SearchMethod):
    """RaS: the best of ``trials`` uniformly random field-level assignments, by validation AUC."""

    name = "ras"
    Options = RandomSearchOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        opts, schema = self.options, dataset.schema
        rng = np.random.default_rng(ctx.train.seed if opts.seed is None else opts.seed)
        cands = sorted(set(opts.candidates))
        plans = []
        for _ in range(opts.trials):
            if opts.budget is None:
                dims = [int(d) for d in rng.choice(cands, size=schema.num_fields)]
            else:
                dims = draw_under_budget(rng, cands, schema.vocab_sizes,
                                         budget_params(schema.vocab_sizes, max(cands), opts.budget))
            plans.append(DimensionPlan(method=self.name, field_names=schema.field_names,
                                       vocab_sizes=schema.vocab_sizes, dims=dims, full_dim=max(cands),
                                       schema_hash=schema.content_hash))
        trials = score_plans(dataset, ctx, plans, epochs=opts.trial_epochs, label="ras")
        best = max(range(len(trials)), key=lambda k: trials[k]["valid_auc"])
        plan = plans[best]
        plan.options = dataclasses.asdict(opts)
        plan.extra = {"trials": trials, "best_trial": best}
        return plan

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        return align_to_largest(model_options, plan)

    def check_dataset(self, dataset) -> None:
        """Refuse, before anything is written, a budget below the narrowest plan."""
        if self.options.budget is None:
            return
        vocab, cands = dataset.schema.vocab_sizes, sorted(set(self.options.candidates))
        check_feasible(vocab, [cands] * len(vocab), budget_params(vocab, cands[-1], self.options.budget),
                       self.options.budget, cands[-1], self.name)


def draw_under_budget(rng: np.random.Generator, candidates: list[int], vocab_sizes: list[int],
                      budget: int) -> list[int]:
    """A random assignment whose tables fit ``budget``: the fields in a random order, each drawn
    uniformly from the candidates that leave room for the narrowest width of every later field."""
    dims = [0] * len(vocab_sizes)
    order = rng.permutation(len(vocab_sizes))
    room = budget - sum(vocab_sizes) * candidates[0]  # what is left above the narrowest plan
    for i in order:
        fitting = [c for c in candidates if vocab_sizes[i] * (c - candidates[0]) <= room]
        dims[i] = int(rng.choice(fitting))
        room -= vocab_sizes[i] * (dims[i] - candidates[0])
    return dims


@register
class RandomSearchAlias(RandomSearch):
    """``random``: another name for ``ras``."""

    name = "random"
