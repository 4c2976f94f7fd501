"""Data: schema, preparation of raw files, prepared datasets on disk, batches, synthetic data.

``embdim.data.prepare(format, inputs, out, ...)`` turns raw files into a prepared dataset folder;
``embdim.data.PreparedDataset(path)`` opens one (memory-mapped).

Preparation (which needs polars) is imported on first use, so that training on an already
prepared dataset works where only torch and numpy are installed.
"""

from typing import Any

from embdim.data.dataset import PreparedDataset, PreparedDatasetWriter
from embdim.data.schema import FieldSpec, Schema

__all__ = ["FieldSpec", "PreparedDataset", "PreparedDatasetWriter", "Schema", "load_vocabulary",
           "prepare"]


def __getattr__(name: str) -> Any:
    if name in ("prepare", "load_vocabulary"):
        from embdim.data import preparation

        return getattr(preparation, name)
    raise AttributeError(f"module 'embdim.data' has no attribute {name!r}")
