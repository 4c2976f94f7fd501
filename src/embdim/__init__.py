"""embdim: automated embedding-dimension search for deep recommender systems.

The pipeline: raw files -> ``embdim.data.prepare`` -> a prepared dataset folder -> a search method
-> a :class:`~embdim.plan.DimensionPlan` -> ``embdim.build_model`` -> train / evaluate -> report.
"""

from __future__ import annotations

__version__ = "0.1.0"

from embdim.plan import DimensionPlan  # noqa: E402

__all__ = ["DimensionPlan", "__version__", "build_model"]


def build_model(*args, **kwargs):
    """Build a base model; see :func:`embdim.nn.models.build_model`."""
    from embdim.nn.models import build_model as _build_model

    return _build_model(*args, **kwargs)
