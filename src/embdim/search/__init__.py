"""Dimension-search methods: one module per method, all producing a DimensionPlan.

By name (``make_method({"name": "autodim", ...})``, as the YAML ``method:`` section does) or by
class (``AutoDim(candidates=[2, 8, 16]).search(dataset, model="deepfm")``).
"""

# importing the modules registers the methods
from embdim.search import (  # noqa: F401
    autodim,
    autoemb,
    deeplight,
    fde,
    fixed,
    mde,
    nis,
    pep,
    quantization,
    random,
    sseds,
)
from embdim.search.autodim import AutoDim, AutoDimS
from embdim.search.autoemb import AutoEmb
from embdim.search.base import (
    METHODS,
    SearchContext,
    SearchMethod,
    make_context,
    make_method,
    typed_method_section,
)
from embdim.search.deeplight import DeepLight
from embdim.search.fde import FDE
from embdim.search.fixed import FixedPlan
from embdim.search.mde import MDE
from embdim.search.nis import NIS
from embdim.search.pep import PEP
from embdim.search.quantization import DPQ, MGQE
from embdim.search.random import RandomSearch
from embdim.search.sseds import SSEDS

__all__ = ["DPQ", "FDE", "MDE", "METHODS", "MGQE", "NIS", "PEP", "SSEDS", "AutoDim", "AutoDimS", "AutoEmb",
           "DeepLight", "FixedPlan", "RandomSearch", "SearchContext", "SearchMethod", "make_context",
           "make_method",
           "typed_method_section"]
