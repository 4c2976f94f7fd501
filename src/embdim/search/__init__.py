"""Dimension-search methods: one module per method, all producing a DimensionPlan."""

# importing the modules registers the methods
from embdim.search import autodim, fde, fixed, mde, random, sseds  # noqa: F401
from embdim.search.base import METHODS, SearchContext, SearchMethod, make_method

__all__ = ["METHODS", "SearchContext", "SearchMethod", "make_method"]
