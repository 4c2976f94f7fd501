"""A prepared dataset on disk: writing it atomically, opening it memory-mapped.

Layout of a prepared dataset folder::

    schema.json          the Schema (written last: its presence marks a finished dataset)
    train.x.npy          int32 [rows, fields]  per-field local ids (see embdim.data.schema)
    train.y.npy          float32 [rows]        labels
    valid.x.npy, valid.y.npy, test.x.npy, test.y.npy
    frequencies.npy      int64 [sum(vocab_sizes)] training-split count of every id, fields
                         concatenated in schema order

All arrays are ``.npy`` files, so ``np.load(..., mmap_mode="r")`` maps them without reading them
into memory. The writer builds everything in a hidden temporary folder beside the destination and
renames it into place only when every array is complete: an interrupted preparation never leaves
something that looks like a finished dataset.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embdim.data.schema import SPLITS, FieldSpec, Schema
from embdim.errors import DataError
from embdim.folders import check_output_folder, make_temp_sibling, mark_as_ours, unmark

X_DTYPE = np.int32
Y_DTYPE = np.float32


@dataclass
class SplitArrays:
    """The arrays of one split: ``x`` int32 [rows, fields], ``y`` float32 [rows] (memory-mapped)."""

    x: np.ndarray
    y: np.ndarray

    def __len__(self) -> int:
        return int(self.y.shape[0])


class PreparedDataset:
    """A prepared dataset folder opened read-only and memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError("prepared dataset folder does not exist", path=str(self.path))
        self.schema = Schema.load(self.path / "schema.json")
        self._splits: dict[str, SplitArrays] = {}

    def split(self, name: str) -> SplitArrays:
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name not in self._splits:
            x = self._load(f"{name}.x.npy")
            y = self._load(f"{name}.y.npy")
            rows = self.schema.splits.get(name, 0)
            if x.shape != (rows, self.schema.num_fields) or y.shape != (rows,):
                raise DataError(f"split {name!r} arrays have shapes {x.shape}, {y.shape}; schema says "
                                f"{rows} rows x {self.schema.num_fields} fields", path=str(self.path))
            self._splits[name] = SplitArrays(x=x, y=y)
        return self._splits[name]

    def frequencies(self) -> list[np.ndarray]:
        """Training-split count of every id, one int64 array per field."""
        counts = self._load("frequencies.npy")
        bounds = np.cumsum([0] + self.schema.vocab_sizes)
        return [np.asarray(counts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _load(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r")
        except FileNotFoundError:
            raise DataError(f"missing array {name}", path=str(self.path)) from None


class PreparedDatasetWriter:
    """Writes a prepared dataset chunk by chunk, with bounded memory.

    Usage::

        with PreparedDatasetWriter(out, field_names, {"train": n1, "valid": n2, "test": n3}) as w:
            w.write("train", x_chunk, y_chunk)   # rows appended in order, per split
            ...
            schema = w.finish(label=..., fields=[FieldSpec...], options={...}, frequencies=counts)

    The arrays are preallocated memory-mapped ``.npy`` files in a temporary folder; ``finish``
    checks every split is full, computes the content hash, writes ``schema.json`` last and renames
    the folder to ``out``. Leaving the ``with`` block without ``finish`` (an exception, a
    KeyboardInterrupt) deletes the temporary folder.
    """

    def __init__(self, out_dir: str | os.PathLike, num_fields: int, split_rows: dict[str, int],
                 *, overwrite: bool = False):
        self.out_dir = Path(out_dir)
        check_output_folder(self.out_dir, [], overwrite=overwrite, marker="schema.json")
        self.overwrite = overwrite
        self.num_fields = num_fields
        self.split_rows = {s: int(split_rows.get(s, 0)) for s in SPLITS}
        self.tmp_dir = make_temp_sibling(self.out_dir, "tmp")
        self._x: dict[str, np.memmap] = {}
        self._y: dict[str, np.memmap] = {}
        self._cursor = dict.fromkeys(SPLITS, 0)
        # x and y hashed separately, so the hash does not depend on how rows were chunked.
        self._hash = {(s, a): hashlib.blake2b(digest_size=16) for s in SPLITS for a in "xy"}
        for s in SPLITS:
            n = self.split_rows[s]
            self._x[s] = np.lib.format.open_memmap(self.tmp_dir / f"{s}.x.npy", mode="w+",
                                                   dtype=X_DTYPE, shape=(n, num_fields))
            self._y[s] = np.lib.format.open_memmap(self.tmp_dir / f"{s}.y.npy", mode="w+",
                                                   dtype=Y_DTYPE, shape=(n,))
        self._finished = False

    def __enter__(self) -> PreparedDatasetWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if not self._finished:
            self.abort()

    def write(self, split: str, x: np.ndarray, y: np.ndarray) -> None:
        """Append rows ``x`` int [n, fields] and labels ``y`` [n] to ``split``."""
        n = len(y)
        if x.shape != (n, self.num_fields):
            raise ValueError(f"chunk shape {x.shape} != ({n}, {self.num_fields})")
        start = self._cursor[split]
        if start + n > self.split_rows[split]:
            raise ValueError(f"split {split!r} overflow: {start + n} > {self.split_rows[split]} rows")
        xs = np.ascontiguousarray(x, dtype=X_DTYPE)
        ys = np.ascontiguousarray(y, dtype=Y_DTYPE)
        self._x[split][start:start + n] = xs
        self._y[split][start:start + n] = ys
        self._hash[split, "x"].update(xs.tobytes())
        self._hash[split, "y"].update(ys.tobytes())
        self._cursor[split] = start + n

    def finish(self, *, label: str, fields: list[FieldSpec], options: dict[str, Any],
               frequencies: np.ndarray) -> Schema:
        for s in SPLITS:
            if self._cursor[s] != self.split_rows[s]:
                raise ValueError(f"split {s!r} has {self._cursor[s]} of {self.split_rows[s]} rows")
        if len(fields) != self.num_fields:
            raise ValueError(f"{len(fields)} field specs for {self.num_fields} columns")
        frequencies = np.asarray(frequencies, dtype=np.int64)
        if frequencies.shape != (sum(f.vocab_size for f in fields),):
            raise ValueError("frequencies must hold one count per id of every field")
        for s in SPLITS:
            self._x[s].flush()
            self._y[s].flush()
        np.save(self.tmp_dir / "frequencies.npy", frequencies)
        schema = Schema(label=label, fields=fields, splits=dict(self.split_rows), options=options)
        h = hashlib.blake2b(digest_size=16)
        h.update(repr(schema.to_dict()).encode())
        for s in SPLITS:
            h.update(self._hash[s, "x"].digest())
            h.update(self._hash[s, "y"].digest())
        h.update(frequencies.tobytes())
        schema.content_hash = h.hexdigest()
        self._x.clear()
        self._y.clear()
        schema.save(self.tmp_dir / "schema.json")
        unmark(self.tmp_dir)
        self._install()
        self._finished = True
        return schema

    def abort(self) -> None:
        self._x.clear()
        self._y.clear()
        shutil.rmtree(self.tmp_dir, ignore_errors=True)

    def _install(self) -> None:
        if self.out_dir.exists():
            old = self.out_dir.parent / f".{self.out_dir.name}.old-{uuid.uuid4().hex[:8]}"
            os.replace(self.out_dir, old)
            mark_as_ours(old)  # removed below, or by a later preparation if killed before that
            os.replace(self.tmp_dir, self.out_dir)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self.tmp_dir, self.out_dir)
