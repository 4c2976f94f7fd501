"""``plan``: retrain with a plan that already exists (the second stage of ``embdim retrain``).

The plan is loaded from JSON and refused, with what differs, if it was searched on another dataset.
"""

from __future__ import annotations

from dataclasses import dataclass

from embdim.errors import ConfigError, SchemaMismatchError
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register


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
