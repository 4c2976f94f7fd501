"""Data: schema, preparation of raw files, prepared datasets on disk, batches, synthetic data.

``embdim.data.prepare(format, inputs, out, ...)`` turns raw files into a prepared dataset folder;
``embdim.data.PreparedDataset(path)`` opens one (memory-mapped).
"""

from embdim.data.dataset import PreparedDataset, PreparedDatasetWriter
from embdim.data.preparation import load_vocabulary, prepare
from embdim.data.schema import FieldSpec, Schema

__all__ = ["FieldSpec", "PreparedDataset", "PreparedDatasetWriter", "Schema", "load_vocabulary",
           "prepare"]
