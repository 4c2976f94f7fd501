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

import functools
import hashlib
import os
import shutil
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from embdim.data.schema import SPLITS, FieldSpec, Schema
from embdim.errors import DataError
from embdim.folders import check_output_folder, make_temp_sibling, mark_as_ours, unmark
from embdim.io import allocate

X_DTYPE = np.int32
Y_DTYPE = np.float32
SAMPLE_ROWS = 4096  # rows at each end of a split whose ids and labels are checked on open


@dataclass
class SplitArrays:
    """The arrays of one split: ``x`` int32 [rows, fields], ``y`` float32 [rows] (memory-mapped).

    ``check(x, y, first_row)``, when set, raises a DataError for rows read from the split whose
    ids or labels are out of range: :class:`~embdim.data.loader.BatchLoader` calls it on every
    block it reads, so a damaged row in the middle of a split is an error, never a silently
    wrong embedding row (opening the folder checks only both ends)."""

    x: np.ndarray
    y: np.ndarray
    check: Callable[[np.ndarray, np.ndarray, int], None] | None = None

    def __len__(self) -> int:
        return int(self.y.shape[0])


class PreparedDataset:
    """A prepared dataset folder opened read-only and memory-mapped."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        if not self.path.is_dir():
            raise DataError("prepared dataset folder does not exist", path=str(self.path))
        self.schema = Schema.load(self.path / "schema.json")  # checks max_ids against vocab_size
        self._splits: dict[str, SplitArrays] = {}

    def split(self, name: str) -> SplitArrays:
        """The split's arrays, memory-mapped; their dtypes and shapes are checked, and so are the
        ids and labels of their first and last rows (cheap: :func:`verify_dataset` reads all)."""
        if name not in SPLITS:
            raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}")
        if name not in self._splits:
            x = self._load(f"{name}.x.npy")
            y = self._load(f"{name}.y.npy")
            rows = self.schema.splits.get(name, 0)
            if x.dtype != X_DTYPE or y.dtype != Y_DTYPE:
                raise DataError(f"split {name!r} arrays are {x.dtype}, {y.dtype}; expected "
                                f"{np.dtype(X_DTYPE)} ids and {np.dtype(Y_DTYPE)} labels",
                                path=str(self.path))
            if x.shape != (rows, self.schema.num_fields) or y.shape != (rows,):
                raise DataError(f"split {name!r} arrays have shapes {x.shape}, {y.shape}; schema says "
                                f"{rows} rows x {self.schema.num_fields} fields", path=str(self.path))
            for rows_ in (slice(0, SAMPLE_ROWS), slice(max(0, rows - SAMPLE_ROWS), rows)):
                check_ids_and_labels(self.schema, x[rows_], y[rows_], f"{name} rows",
                                     path=self.path, first_row=rows_.start)
            check = functools.partial(_check_rows, self.schema, f"{name} rows", self.path)
            self._splits[name] = SplitArrays(x=x, y=y, check=check)
        return self._splits[name]

    def check_all(self) -> PreparedDataset:
        """Open every split and the frequencies now (the cheap checks of :meth:`split`), so a
        damaged folder is refused before a run writes anything; returns ``self``."""
        for name in SPLITS:
            self.split(name)
        self.frequencies()
        return self

    def frequencies(self) -> list[np.ndarray]:
        """Training-split count of every id, one int64 array per field."""
        counts = self._load("frequencies.npy")
        if counts.shape != (sum(self.schema.vocab_sizes),):
            raise DataError(f"frequencies.npy has shape {counts.shape}; expected "
                            f"({sum(self.schema.vocab_sizes)},)", path=str(self.path))
        if counts.dtype.kind not in "iu" or (counts.size and int(counts.min()) < 0):
            raise DataError(f"frequencies.npy holds {counts.dtype} values"
                            + (f" down to {counts.min()}" if counts.size else "")
                            + "; expected counts (integers >= 0)", path=str(self.path))
        bounds = np.cumsum([0] + self.schema.vocab_sizes)
        return [np.asarray(counts[a:b]) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]

    def _load(self, name: str) -> np.ndarray:
        try:
            return np.load(self.path / name, mmap_mode="r", allow_pickle=False)
        except FileNotFoundError:
            raise DataError(f"missing array {name}", path=str(self.path)) from None
        except (ValueError, OSError, EOFError) as e:  # truncated, garbage, 0 bytes, an object array
            raise DataError(f"{name} is not a readable .npy array ({e})", path=str(self.path)) from None


def _check_rows(schema: Schema, what: str, path: Path, x: np.ndarray, y: np.ndarray,
                first_row: int) -> None:
    check_ids_and_labels(schema, x, y, what, path=path, first_row=first_row)


def check_ids_and_labels(schema: Schema, x: np.ndarray, y: np.ndarray, what: str, *,
                         path: Path, first_row: int = 0) -> None:
    """Every id of ``x`` [rows, fields] in ``0 .. vocab_size - 1`` of its field and every label of
    ``y`` [rows] 0 or 1, else a DataError naming the first bad row (``first_row`` + position).
    Per-field minima and maxima first (no temporary as large as ``x``); the rows are searched
    only when one is out of range."""
    vocab = np.asarray(schema.vocab_sizes)
    if len(x) and ((x.min(axis=0) < 0).any() or (x.max(axis=0) >= vocab).any()):
        bad = (x < 0) | (x >= vocab)
        r, c = np.argwhere(bad)[0]
        raise DataError(f"{what}: row {first_row + r}, field {schema.fields[c].name!r}: id "
                        f"{x[r, c]} outside 0..{vocab[c] - 1} (vocab_size {vocab[c]})",
                        path=str(path))
    bad_y = (y != 0) & (y != 1)
    if bad_y.any():
        r = int(np.flatnonzero(bad_y)[0])
        raise DataError(f"{what}: row {first_row + r}: label {float(y[r]):g} is not 0 or 1",
                        path=str(path))


def verify_dataset(path: str | os.PathLike, block_rows: int = 1 << 20) -> Schema:
    """Read a prepared dataset folder in full: every id in range, every label 0/1, and the
    ``content_hash`` recomputed from the arrays (and ``vocabulary.parquet``, when the schema records
    its hash); return the schema, or raise a DataError naming the first problem."""
    import json

    dataset = PreparedDataset(path)
    schema = dataset.schema
    digests = {}
    max_ids = np.full(schema.num_fields, -1, dtype=np.int64)
    for name in SPLITS:
        split = dataset.split(name)
        hx, hy = hashlib.blake2b(digest_size=16), hashlib.blake2b(digest_size=16)
        for start in range(0, len(split), block_rows):
            x = np.ascontiguousarray(split.x[start:start + block_rows])
            y = np.ascontiguousarray(split.y[start:start + block_rows])
            check_ids_and_labels(schema, x, y, f"{name} rows", path=dataset.path, first_row=start)
            if len(x):
                np.maximum(max_ids, x.max(axis=0), out=max_ids)
            hx.update(x.tobytes())
            hy.update(y.tobytes())
        digests[name, "x"], digests[name, "y"] = hx.digest(), hy.digest()
    dataset.frequencies()  # checks the shape
    frequencies = dataset._load("frequencies.npy")
    recorded = json.loads((dataset.path / "schema.json").read_text())
    hashes = {content_hash(recorded, digests, frequencies),
              content_hash(recorded, digests, frequencies, derived=True)}  # older writers
    if schema.content_hash not in hashes:
        raise DataError("content hash mismatch: the arrays or schema.json changed after the dataset "
                        "was written (prepare it again)", path=str(dataset.path))
    if schema.max_ids is not None and schema.max_ids != max_ids.tolist():
        raise DataError(f"schema.json records max_ids {schema.max_ids} but the arrays hold ids up to "
                        f"{max_ids.tolist()} (prepare it again)", path=str(dataset.path))
    _verify_vocabulary(dataset.path, schema)
    return schema


def _verify_vocabulary(folder: Path, schema: Schema) -> None:
    from embdim.data.preparation import VOCABULARY_FILE, load_vocabulary, vocabulary_hash

    recorded = schema.options.get("vocabulary_hash")
    if not recorded:
        return
    if not (folder / VOCABULARY_FILE).is_file():
        raise DataError(f"missing {VOCABULARY_FILE}", path=str(folder))
    tables = load_vocabulary(folder)
    if vocabulary_hash([(name, t["value"].to_list(), t["id"].to_numpy()) for name, t in tables.items()]) \
            != recorded:
        raise DataError(f"{VOCABULARY_FILE} does not match the vocabulary_hash in schema.json",
                        path=str(folder))


# Schema entries derived from the arrays (not choices that made them): left out of the content
# hash, so recording a new statistic never changes the hash of the same data (plans and
# checkpoints name the hash they were made for). `embdim check` compares them with the arrays.
DERIVED_SCHEMA_KEYS = ("max_ids",)


def content_hash(schema: dict[str, Any], digests: dict[tuple[str, str], bytes],
                 frequencies: np.ndarray, *, derived: bool = False) -> str:
    """The dataset's ``content_hash``: the schema as a dict (its ``content_hash`` ignored, and
    the :data:`DERIVED_SCHEMA_KEYS` left out), the BLAKE2b digests of every split's ``x`` and ``y``
    bytes (keys ``(split, "x" | "y")``), and the frequencies. ``derived=True``: the hash as the
    versions that hashed ``max_ids`` too wrote it (only ``embdim check`` still accepts it)."""
    recorded = {k: v for k, v in schema.items() if derived or k not in DERIVED_SCHEMA_KEYS}
    h = hashlib.blake2b(digest_size=16)
    h.update(repr({**recorded, "content_hash": ""}).encode())
    for s in SPLITS:
        h.update(digests[s, "x"])
        h.update(digests[s, "y"])
    h.update(np.asarray(frequencies, dtype=np.int64).tobytes())
    return h.hexdigest()


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
        self._x: dict[str, np.memmap] = {}
        self._y: dict[str, np.memmap] = {}
        self._cursor = dict.fromkeys(SPLITS, 0)
        self._max_ids = np.full(num_fields, -1, dtype=np.int64)  # per field, over every split
        # x and y hashed separately, so the hash does not depend on how rows were chunked.
        self._hash = {(s, a): hashlib.blake2b(digest_size=16) for s in SPLITS for a in "xy"}
        self._finished = False
        self.tmp_dir = make_temp_sibling(self.out_dir, "tmp")
        try:
            self._allocate_arrays()
        except BaseException:
            self.abort()
            raise

    def _allocate_arrays(self) -> None:
        """The split arrays as memory-mapped ``.npy`` files, their disk space reserved."""
        for s in SPLITS:
            n = self.split_rows[s]
            self._x[s] = np.lib.format.open_memmap(self.tmp_dir / f"{s}.x.npy", mode="w+",
                                                   dtype=X_DTYPE, shape=(n, self.num_fields))
            self._y[s] = np.lib.format.open_memmap(self.tmp_dir / f"{s}.y.npy", mode="w+",
                                                   dtype=Y_DTYPE, shape=(n,))
            allocate(self.tmp_dir / f"{s}.x.npy")
            allocate(self.tmp_dir / f"{s}.y.npy")

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
        if n:
            np.maximum(self._max_ids, xs.max(axis=0), out=self._max_ids)
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
        schema = Schema(label=label, fields=fields, splits=dict(self.split_rows), options=options,
                        max_ids=[int(m) for m in self._max_ids])
        schema.check_max_ids()
        schema.content_hash = content_hash(schema.to_dict(), {k: h.digest() for k, h in self._hash.items()},
                                           frequencies)
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
