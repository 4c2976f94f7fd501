"""Dimension-search methods: one module per method, all producing a DimensionPlan."""

from embdim.search import fde  # noqa: F401  (registers the method)
from embdim.search.base import METHODS, SearchContext, SearchMethod, make_method

__all__ = ["METHODS", "SearchContext", "SearchMethod", "make_method"]
