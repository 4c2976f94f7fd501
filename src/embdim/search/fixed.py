"""``plan``: retrain with a plan that already exists (the second stage of ``embdim retrain``).

The plan is loaded from JSON and refused, with what differs, if it was searched on another dataset.
The model is retrained as the method that made the plan retrains it (the options that method
gives the retrained model: AutoDim's unifying method, bias and largest-candidate width, SSEDS'
alignment, ...), read from the plan's ``method`` and ``options``, so ``embdim retrain --plan``
trains the same model as the retraining stage of ``embdim run``. Weights a search hands over
(SSEDS' winning ticket, AutoDim's ``inherit``) exist only in the run that searched.
"""

from __future__ import annotations

from dataclasses import dataclass

from embdim.errors import ConfigError, SchemaMismatchError
from embdim.plan import DimensionPlan
from embdim.search.base import METHODS, SearchContext, SearchMethod, register


@dataclass
class FixedPlanOptions:
    path: str | None = None  # the plan.json to retrain with

    def validate(self) -> None:
        if not self.path:
            raise ConfigError("method 'plan' needs method.path (a plan.json)")
        DimensionPlan.load(self.path)  # a missing or malformed plan is refused before any run starts


@register
class FixedPlan(SearchMethod):
    name = "plan"
    Options = FixedPlanOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        plan = self._load_for(dataset)
        plan.extra.pop("search_seconds", None)  # the retrain run did no search of its own
        return plan

    def check_dataset(self, dataset) -> None:
        self._load_for(dataset)

    def _load_for(self, dataset) -> DimensionPlan:
        """The plan, refused (naming its file and what differs) if made for another dataset."""
        plan = DimensionPlan.load(self.options.path)
        try:
            plan.check_schema(dataset.schema)
        except SchemaMismatchError as e:
            raise SchemaMismatchError(f"{self.options.path}: {e} ({dataset.path})") from None
        return plan

    def _plan_method(self, plan: DimensionPlan) -> SearchMethod | None:
        """The method that made the plan, with the plan's options; None for an unknown method or
        options that no longer parse."""
        source = METHODS.get(plan.method)
        if source is None or source is FixedPlan:
            return None
        try:
            return source(source.make_options(dict(plan.options)))
        except (ConfigError, TypeError):
            return None

    def retrain_model_options(self, model_options, plan: DimensionPlan):
        """The options the plan's own method gives its retrained model (see the module docstring);
        the experiment's options for a plan of an unknown method or with options that no longer
        parse."""
        method = self._plan_method(plan)
        return model_options if method is None else method.retrain_model_options(model_options, plan)

    def retrain_train_options(self, train, plan: DimensionPlan):
        """The training options the plan's own method gives its retraining (as above)."""
        method = self._plan_method(plan)
        return train if method is None else method.retrain_train_options(train, plan)
