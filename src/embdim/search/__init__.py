"""Dimension-search methods: one module per method, all producing a DimensionPlan."""

from embdim.search import fde, fixed  # noqa: F401  (importing registers the methods)
from embdim.search.base import METHODS, SearchContext, SearchMethod, make_method

__all__ = ["METHODS", "SearchContext", "SearchMethod", "make_method"]
