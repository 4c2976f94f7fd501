"""``embdim prepare``: raw files -> a prepared dataset folder, streaming, with bounded memory.

The pipeline (one parse of the input, then work on compact integer arrays):

1. **Encode** (one pass over the input): a reader (:mod:`embdim.data.readers`) yields validated
   chunks; each field's values are dictionary-encoded to provisional codes (a polars ``Categorical``
   per field, first-seen order) and appended, with the labels (and times, and raw numbers of
   quantile-bucketed columns), to compact files in a temporary folder beside the output.
2. **Split**: every row gets train/valid/test. ``random``: rows are ranked by a bijective hash of
   ``(seed, row index)`` and the first ``round(0.8 n)`` are train, the next ``round(0.9 n) -
   round(0.8 n)`` valid, the rest test: exact sizes, deterministic, independent of the chunk size.
   ``time``: ranked by ``(time, row index)`` instead (row order when the format has no time).
3. **Count** the training rows' codes per field (and quantile edges from a bounded sample), build
   each field's vocabulary: values seen ``>= min_count`` times in train get ids from 2 by
   descending training count (ties by value), the rest share OOV id 0, missing is id 1.
4. **Write**: remap the codes with one gather per field and stream the rows through
   :class:`~embdim.data.dataset.PreparedDatasetWriter` (atomic: ``schema.json`` last, folder
   renamed into place), with ``vocabulary.parquet`` beside the arrays.

Memory: the vocabularies (every distinct value seen, with its count), one chunk of input, one byte
per row for the split assignment, and for ``split="time"`` the time column (8 bytes per row, plus a
copy while the cut is found). Disk: the temporary codes take about as much as the output arrays.
"""

from __future__ import annotations

import hashlib
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm import tqdm

from embdim.data.dataset import PreparedDatasetWriter
from embdim.data.readers import FORMATS, BadRowLog, FieldRecipe, Recipe, build_recipe
from embdim.data.readers.base import ON_BAD_ROW
from embdim.data.schema import (
    FIRST_VALUE_ID,
    MISSING_ID,
    OOV_ID,
    SPLITS,
    FieldSpec,
    Schema,
    frequency_summary,
)
from embdim.errors import DISK_FULL_ERRNOS, ConfigError, DataError, DiskFullError, disk_full_message
from embdim.folders import check_output_folder, make_temp_sibling, remove_stale_siblings

DEFAULT_CHUNK_ROWS = 1 << 18
SPLIT_KINDS = ("random", "time")
VOCABULARY_FILE = "vocabulary.parquet"
QUANTILE_SAMPLE_ROWS = 1 << 20  # training values sampled per numeric column for its edges

__all__ = ["DEFAULT_CHUNK_ROWS", "FORMATS", "VOCABULARY_FILE", "load_vocabulary", "prepare"]


def prepare(format: str, inputs: Sequence[str | Path], out: str | Path, *, min_count: int = 10,
            split: str = "random", split_ratios: Sequence[float] = (0.8, 0.1, 0.1),
            seed: int = 2022, on_bad_row: str = "error", chunk_rows: int = DEFAULT_CHUNK_ROWS,
            quiet: bool = False, overwrite: bool = False, time_column: str | None = None,
            label: str | None = None, categorical: Sequence[str] | None = None,
            numeric: Sequence[str] | None = None, positive: Sequence[str] | None = None,
            na_values: Sequence[str] | None = None, numeric_buckets: int | None = None,
            numeric_bucketing: str | None = None, separator: str | None = None,
            rating_threshold: float | None = None, genres: str | None = None) -> Schema:
    """Prepare ``inputs`` of ``format`` into the dataset folder ``out``; return its schema.

    ``format``: ``criteo``, ``avazu``, ``movielens``, ``csv`` or ``parquet`` (see docs/data.md).
    Common options: ``min_count`` (values seen fewer times in train -> OOV id 0), ``split``
    (``"random"`` with ``seed``, or ``"time"``), ``split_ratios`` (train, valid, test),
    ``on_bad_row`` (``"error"``: raise DataError naming file/line/column; ``"skip"``: drop and
    count), ``chunk_rows`` (rows parsed at a time; does not change the result), ``overwrite``.
    Format options (``None`` = the format's default; one a format does not use is refused):
    csv/parquet ``label``, ``categorical``, ``numeric``, ``positive``, ``na_values``,
    ``numeric_buckets`` (10), ``numeric_bucketing`` (``"quantile"`` | ``"log2"``), ``separator``
    (csv, ``","``), ``time_column``; movielens ``rating_threshold`` (4), ``genres``
    (``"all"`` | ``"first"``).
    """
    started = time.perf_counter()
    out = Path(out)
    paths = [Path(p) for p in inputs]
    ratios = _check_common_options(paths, out, min_count, split, split_ratios, on_bad_row,
                                   chunk_rows, time_column, overwrite)
    recipe = build_recipe(
        format, paths, label=label, categorical=_as_list(categorical), numeric=_as_list(numeric),
        positive=_as_list(positive), na_values=_as_list(na_values), numeric_buckets=numeric_buckets,
        numeric_bucketing=numeric_bucketing, separator=separator, time_column=time_column,
        rating_threshold=rating_threshold, genres=genres)
    bad = BadRowLog(on_bad_row)
    remove_stale_siblings(out)  # left by a killed preparation of the same folder
    work = make_temp_sibling(out, "prepare")
    try:
        store = _encode(recipe, _BlockStore(work), chunk_rows, bad, quiet)
        if store.rows == 0:
            raise DataError("no valid rows to prepare (every row was bad)",
                            path=", ".join(map(str, paths)))
        splitter = _Splitter.create(split, ratios, seed, store,
                                    time_ordered=recipe.time is not None)
        tallies = _count_training(recipe, store, splitter, seed)
        vocabs = [_build_vocabulary(f, t, min_count, splitter.sizes[0])
                  for f, t in zip(recipe.fields, tallies, strict=True)]
        options = _options(recipe, paths, min_count, split, ratios, seed, bad, vocabs, splitter)
        _report_bad_rows(bad)
        split_rows = dict(zip(SPLITS, splitter.sizes, strict=True))
        with PreparedDatasetWriter(out, len(vocabs), split_rows, overwrite=overwrite) as writer:
            _write_rows(writer, store, splitter, vocabs, quiet)
            _vocabulary_frame(vocabs).write_parquet(writer.tmp_dir / VOCABULARY_FILE)
            frequencies = np.concatenate([v.frequencies for v in vocabs])
            schema = writer.finish(label=recipe.label_name, fields=[v.spec for v in vocabs],
                                   options=options, frequencies=frequencies)
    except OSError as e:  # a full disk while writing temporary files: say so, in one line
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(disk_full_message(e, e.filename or work)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if not quiet:
        seconds = time.perf_counter() - started
        print(f"prepared {store.rows:,} rows x {len(vocabs)} fields in {seconds:.1f} s "
              f"({store.rows / max(seconds, 1e-9):,.0f} rows/s) -> {out}", file=sys.stderr)
    return schema


def load_vocabulary(dataset: str | Path) -> dict[str, pl.DataFrame]:
    """The vocabularies of a prepared dataset, to encode new data the same way: field name ->
    DataFrame ``value`` (String), ``id`` (Int32, >= 2), ``count`` (training rows), sorted by id,
    for every field in schema order. A value not listed maps to OOV id 0, a missing one to id 1.
    Quantile-bucketed fields list bucket numbers (edges: ``numeric_edges`` in the schema options);
    Criteo-style fields list transformed values (apply the transform first)."""
    folder = Path(dataset)
    schema = Schema.load(folder / "schema.json")
    path = folder / VOCABULARY_FILE
    if not path.is_file():
        raise DataError("no vocabulary file in the prepared dataset", path=str(path))
    table = pl.read_parquet(path)
    return {name: table.filter(pl.col("field") == name).drop("field").sort("id")
            for name in schema.field_names}


# ---------------------------------------------------------------------------------------------
# option checks


def _as_list(value: Sequence[str] | str | None) -> list[str] | None:
    if value is None:
        return None
    return [value] if isinstance(value, str) else list(value)


def _check_common_options(paths: list[Path], out: Path, min_count: int, split: str,
                          split_ratios: Sequence[float], on_bad_row: str, chunk_rows: int,
                          time_column: str | None, overwrite: bool) -> tuple[float, float, float]:
    if not paths:
        raise ConfigError("no input files")
    if split not in SPLIT_KINDS:
        raise ConfigError(f"split must be one of {SPLIT_KINDS}, not {split!r}")
    if time_column and split != "time":
        raise ConfigError("a time column is only used with split='time'")
    if on_bad_row not in ON_BAD_ROW:
        raise ConfigError(f"on_bad_row must be one of {ON_BAD_ROW}, not {on_bad_row!r}")
    if min_count < 1:
        raise ConfigError(f"min_count must be >= 1, not {min_count}")
    if chunk_rows < 1:
        raise ConfigError(f"chunk_rows must be >= 1, not {chunk_rows}")
    ratios = tuple(float(r) for r in split_ratios)
    if len(ratios) != 3 or min(ratios) < 0 or ratios[0] <= 0 or abs(sum(ratios) - 1) > 1e-6:
        raise ConfigError(f"split ratios must be 3 non-negative numbers summing to 1 with a "
                          f"positive train share, not {list(split_ratios)}")
    for p in paths:
        if not p.exists():
            raise DataError("no such file", path=str(p))
    check_output_folder(out, paths, overwrite=overwrite, marker="schema.json")
    return ratios  # type: ignore[return-value]


# ---------------------------------------------------------------------------------------------
# 1. encode: one pass over the input -> provisional codes in a temporary folder


class _BlockStore:
    """Arrays appended chunk by chunk to one file per kind, read back in the same blocks.

    Kinds: ``codes`` uint32 [categorical fields, rows] (0 = missing, c >= 1 = provisional value
    c - 1), ``numbers`` float64 [quantile fields, rows] (NaN = missing), ``label`` float32 [rows],
    ``time`` float64 [rows].
    """

    DTYPES = {"codes": np.uint32, "numbers": np.float64, "label": np.float32, "time": np.float64}

    def __init__(self, folder: Path):
        self.folder = folder
        self.block_rows: list[int] = []
        self.width: dict[str, int] = {}
        self.categories: list[pl.Categories] = []  # one per categorical field (provisional codes)
        self.keepalive: list[pl.Series] = []  # a Categories mapping lives while data uses it
        self.assign: list[np.ndarray] = []  # uint8 split of every row, per block (after counting)
        self.max_code = np.zeros(0, dtype=np.int64)  # per categorical field, over all blocks
        self._files = {k: open(folder / f"{k}.bin", "wb") for k in self.DTYPES}  # noqa: SIM115

    @property
    def rows(self) -> int:
        return sum(self.block_rows)

    def append(self, arrays: dict[str, np.ndarray]) -> None:
        codes = arrays["codes"]
        block_max = codes.max(axis=1).astype(np.int64) if codes.shape[1] else 0
        self.max_code = np.maximum(self.max_code, block_max) if self.max_code.size else block_max
        for kind, a in arrays.items():
            self.width[kind] = a.shape[0] if a.ndim == 2 else 1
            data = np.ascontiguousarray(a, dtype=self.DTYPES[kind])
            try:  # file.write, not ndarray.tofile: a full disk keeps its errno
                self._files[kind].write(data.reshape(-1).view(np.uint8))
            except OSError as e:
                if e.errno not in DISK_FULL_ERRNOS:
                    raise
                raise DiskFullError(disk_full_message(e, self.folder / f"{kind}.bin")) from None
        self.block_rows.append(len(arrays["label"]))

    def close(self) -> None:
        for f in self._files.values():
            f.close()

    def blocks(self, kinds: Sequence[str]) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first row, {kind: block}) for every block, in order. The arrays are views of buffers
        reused from block to block: copy what must outlive the iteration."""
        largest = max(self.block_rows, default=0)
        buffers = {k: np.empty(self.width.get(k, 0) * largest, dtype=self.DTYPES[k]) for k in kinds}
        files = {k: open(self.folder / f"{k}.bin", "rb") for k in kinds}  # noqa: SIM115
        try:
            start = 0
            for m in self.block_rows:
                out = {}
                for k, f in files.items():
                    w = self.width.get(k, 0)
                    a = buffers[k][:w * m]
                    if f.readinto(a) != a.nbytes:
                        raise OSError(f"temporary file {k}.bin is shorter than expected")
                    out[k] = a.reshape(w, m) if k in ("codes", "numbers") else a
                yield start, out
                start += m
        finally:
            for f in files.values():
                f.close()

    def column(self, kind: str) -> np.ndarray:
        """A 1-D kind (``time``) memory-mapped whole: [rows]."""
        return np.memmap(self.folder / f"{kind}.bin", dtype=self.DTYPES[kind], mode="r",
                         shape=(self.rows,))


class _ChunkEncoder:
    """Validated chunk -> the arrays of one store block (see :class:`_BlockStore`).

    Each categorical field's raw values are looked up in (and added to) that field's polars
    ``Categories``: its physical code + 1 is the provisional code, 0 = missing. The casts run one
    column after another: on two cores that beats polars' parallel cast, whose threads contend on
    the shared dictionaries, and it leaves the other core to parse the next chunk.
    """

    def __init__(self, recipe: Recipe, store: _BlockStore):
        self.n_cat = sum(not f.quantile for f in recipe.fields)
        self.n_num = len(recipe.fields) - self.n_cat
        self.with_time = recipe.time is not None
        store.categories = [pl.Categories.random(namespace="embdim.prepare")
                            for _ in range(self.n_cat)]
        store.keepalive = [pl.Series([], dtype=pl.Categorical(c)) for c in store.categories]
        self.dtypes = [pl.Categorical(c) for c in store.categories]
        exprs = [recipe.label.cast(pl.Float32).alias("__y")]
        if self.with_time:
            exprs.append(recipe.time.cast(pl.Float64).alias("__t"))
        cat = (f for f in recipe.fields if not f.quantile)
        num = (f for f in recipe.fields if f.quantile)
        exprs += [f.expr.cast(pl.String).alias(f"__c{i}") for i, f in enumerate(cat)]
        exprs += [f.expr.cast(pl.Float64).fill_null(float("nan")).alias(f"__n{i}")
                  for i, f in enumerate(num)]
        self.exprs = exprs

    def __call__(self, frame: pl.DataFrame) -> dict[str, np.ndarray]:
        m = frame.height
        columns = frame.select(self.exprs)
        codes = np.empty((self.n_cat, m), dtype=np.uint32)
        for i, dtype in enumerate(self.dtypes):
            physical = columns[f"__c{i}"].cast(dtype).to_physical()
            codes[i] = (physical + 1).fill_null(0).to_numpy()
        numbers = np.empty((self.n_num, m), dtype=np.float64)
        for i in range(self.n_num):
            numbers[i] = columns[f"__n{i}"].to_numpy()
        arrays = {"label": columns["__y"].to_numpy(), "codes": codes, "numbers": numbers}
        if self.with_time:
            arrays["time"] = columns["__t"].to_numpy()
        return arrays


def _encode(recipe: Recipe, store: _BlockStore, chunk_rows: int, bad: BadRowLog,
            quiet: bool) -> _BlockStore:
    """The pass over the input: validated chunks -> provisional codes appended to ``store``.

    Chunk k is encoded in a worker thread while the reader parses chunk k + 1 (polars releases
    the GIL), so both cores stay busy.
    """
    bar = tqdm(total=recipe.progress_total or None, unit=recipe.progress_unit, unit_scale=True,
               desc="prepare: read", disable=quiet, file=sys.stderr, leave=False)
    pending: Future | None = None
    try:
        encode = _ChunkEncoder(recipe, store)
        with ThreadPoolExecutor(max_workers=1) as pool:
            for chunk in recipe.chunks(chunk_rows, bad):
                bar.update(chunk.progress)
                if chunk.frame.height == 0:
                    continue
                submitted = pool.submit(encode, chunk.frame)
                if pending is not None:
                    store.append(pending.result())
                pending = submitted
            if pending is not None:
                store.append(pending.result())
    finally:
        bar.close()
        store.close()
    return store


# ---------------------------------------------------------------------------------------------
# 2. split


def _mix64(x: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser: a bijection of uint64 that scatters consecutive integers."""
    x = x + np.uint64(0x9E3779B97F4A7C15)
    x = (x ^ (x >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
    x = (x ^ (x >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return x ^ (x >> np.uint64(31))


def _row_keys(seed: int, start: int, stop: int, salt: int = 0) -> np.ndarray:
    """Distinct pseudo-random uint64 keys of rows ``start..stop-1`` (a bijection of the index)."""
    offset = _mix64(np.array([(seed * 2 + salt) % (1 << 64)], dtype=np.uint64))[0]
    return _mix64(np.arange(start, stop, dtype=np.uint64) + offset)


_KEY_BLOCK = 1 << 22
_BUCKET_SHIFT = np.uint64(48)


def _kth_smallest_keys(seed: int, n: int, ranks: list[int]) -> list[np.uint64]:
    """The keys of rank ``ranks`` (0-based) among the ``n`` row keys, in bounded memory:
    a histogram of the top 16 bits finds each rank's bucket, whose few keys are then sorted."""
    hist = np.zeros(1 << 16, dtype=np.int64)
    for a in range(0, n, _KEY_BLOCK):
        top = (_row_keys(seed, a, min(n, a + _KEY_BLOCK)) >> _BUCKET_SHIFT).astype(np.intp)
        hist += np.bincount(top, minlength=1 << 16)
    cum = np.cumsum(hist)
    buckets = [int(np.searchsorted(cum, r, side="right")) for r in ranks]
    found: dict[int, list[np.ndarray]] = {b: [] for b in buckets}
    for a in range(0, n, _KEY_BLOCK):
        keys = _row_keys(seed, a, min(n, a + _KEY_BLOCK))
        top = keys >> _BUCKET_SHIFT
        for b in found:
            found[b].append(keys[top == np.uint64(b)])
    out = []
    for r, b in zip(ranks, buckets, strict=True):
        below = int(cum[b - 1]) if b > 0 else 0
        out.append(np.sort(np.concatenate(found[b]))[r - below])
    return out


@dataclass
class _Splitter:
    """Assigns rows to splits 0 (train), 1 (valid), 2 (test) by their rank in a total order.

    ``order``: ``"hash"`` (random split: rank of the row's key), ``"time"`` (rank of
    ``(time, row index)``) or ``"row"`` (row index). ``cuts[j]`` describes the first row *not* in
    splits ``0..j``, ``None`` when every row is.
    """

    order: str
    sizes: tuple[int, int, int]
    seed: int
    cuts: list[Any]
    description: str

    @classmethod
    def create(cls, split: str, ratios: tuple[float, float, float], seed: int,
               store: _BlockStore, *, time_ordered: bool) -> _Splitter:
        n = store.rows
        n_train = int(n * ratios[0] + 0.5)
        n_train_valid = max(n_train, int(n * (ratios[0] + ratios[1]) + 0.5))
        sizes = (n_train, n_train_valid - n_train, n - n_train_valid)
        ranks = [n_train, n_train_valid]
        if split == "random":
            keys = _kth_smallest_keys(seed, n, [r for r in ranks if r < n])
            cuts = [keys.pop(0) if r < n else None for r in ranks]
            return cls("hash", sizes, seed, cuts, "random: rows ranked by a hash of (seed, row)")
        if not time_ordered:
            return cls("row", sizes, seed, [r if r < n else None for r in ranks],
                       "time: by row order (the file order is the time order)")
        times = store.column("time")
        cuts = [_kth_time(times, r) if r < n else None for r in ranks]
        return cls("time", sizes, seed, cuts, "time: rows ranked by (time, row order)")

    def assign(self, start: int, times: np.ndarray | None, rows: int) -> np.ndarray:
        """uint8 split of rows ``start..start+rows-1``."""
        out = np.zeros(rows, dtype=np.uint8)
        for cut in self.cuts:
            if cut is not None:
                out += ~self._before(cut, start, times, rows)
        return out

    def _before(self, cut: Any, start: int, times: np.ndarray | None, rows: int) -> np.ndarray:
        if self.order == "hash":
            return _row_keys(self.seed, start, start + rows) < cut
        index = np.arange(start, start + rows, dtype=np.int64)
        if self.order == "row":
            return index < cut
        t_cut, i_cut = cut
        assert times is not None
        return (times < t_cut) | ((times == t_cut) & (index < i_cut))


def _kth_time(times: np.ndarray, rank: int) -> tuple[float, int]:
    """The ``(time, row index)`` pair of 0-based ``rank`` in the (time, row) order."""
    t = float(np.partition(np.asarray(times), rank)[rank])
    less = int(np.count_nonzero(times < t))
    return t, int(np.flatnonzero(times == t)[rank - less])


# ---------------------------------------------------------------------------------------------
# 3. count training values, build vocabularies


@dataclass
class _Tally:
    """Training counts of one field: ``counts[c]`` for provisional code c (0 = missing; sized to
    cover every code seen in any split), ``values[c - 1]`` the raw value of code c; ``edges``
    for quantile-bucketed fields."""

    counts: np.ndarray
    values: pl.Series
    edges: np.ndarray | None = None


def _count_training(recipe: Recipe, store: _BlockStore, splitter: _Splitter,
                    seed: int) -> list[_Tally]:
    """One pass over the codes: each row's split (kept in ``store.assign``), training counts."""
    cat_sizes = [int(c) + 1 for c in store.max_code]
    cat_counts = [np.zeros(s, dtype=np.int64) for s in cat_sizes]
    n_num = sum(f.quantile for f in recipe.fields)
    samples: list[list[np.ndarray]] = [[] for _ in range(n_num)]
    sample_rate = min(1.0, QUANTILE_SAMPLE_ROWS / max(1, splitter.sizes[0]))
    kinds = ["codes", "numbers"] + (["time"] if splitter.order == "time" else [])
    store.assign = []
    for start, block in store.blocks(kinds):
        m = block["codes"].shape[1]
        assign = splitter.assign(start, block.get("time"), m)
        store.assign.append(assign)
        train = assign == 0
        codes = block["codes"][:, train]
        for i, size in enumerate(cat_sizes):
            cat_counts[i] += np.bincount(codes[i], minlength=size)
        if n_num:
            pick = train
            if sample_rate < 1:
                u = (_row_keys(seed, start, start + m, salt=1) >> np.uint64(11)) * 2.0**-53
                pick = train & (u < sample_rate)
            for i in range(n_num):
                v = block["numbers"][i][pick]
                samples[i].append(v[~np.isnan(v)])
    tallies: list[_Tally] = []
    cats = iter(zip(cat_counts, store.categories, strict=True))
    buckets = int(recipe.options.get("numeric_buckets") or 10)
    edges = iter([_quantile_edges(np.concatenate(s), buckets) for s in samples])
    for f in recipe.fields:
        if f.quantile:
            e = next(edges)
            tallies.append(_Tally(np.zeros(len(e) + 2, dtype=np.int64),
                                  pl.Series([str(k) for k in range(len(e) + 1)]), e))
        else:
            counts, c = next(cats)
            codes = pl.Series(np.arange(len(counts) - 1, dtype=np.uint32))
            tallies.append(_Tally(counts, codes.cat.to(pl.Categorical(c)).cast(pl.String)))
    if n_num:
        _count_buckets(store, [t for t in tallies if t.edges is not None])
    return tallies


def _quantile_edges(sample: np.ndarray, buckets: int) -> np.ndarray:
    """Inner bucket edges at the training quantiles (sample values, duplicates merged)."""
    if sample.size == 0:
        return np.zeros(0)
    q = np.linspace(0, 1, buckets + 1)[1:-1]
    return np.unique(np.quantile(sample, q, method="lower"))


def _bucketize(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Float values [n] -> codes [n]: 0 missing (NaN), k + 1 for bucket k = #edges < value, i.e.
    ``edges[k-1] < value <= edges[k]`` (a value repeated past several quantiles, like the zeros
    of a mostly-zero column, thus gets a bucket of its own)."""
    codes = np.searchsorted(edges, values, side="left").astype(np.int64) + 1
    codes[np.isnan(values)] = 0
    return codes


def _count_buckets(store: _BlockStore, tallies: list[_Tally]) -> None:
    for (_, block), assign in zip(store.blocks(["numbers"]), store.assign, strict=True):
        train = assign == 0
        for i, t in enumerate(tallies):
            assert t.edges is not None
            codes = _bucketize(block["numbers"][i][train], t.edges)
            t.counts += np.bincount(codes, minlength=len(t.counts))


@dataclass
class _Vocabulary:
    """A field's final encoding: ``lut[c]`` = id of provisional code c; ``frequencies`` [vocab]
    training count per id; ``table`` the kept values (field, value, id, count)."""

    spec: FieldSpec
    lut: np.ndarray
    frequencies: np.ndarray
    table: pl.DataFrame
    edges: np.ndarray | None = None


def _build_vocabulary(f: FieldRecipe, tally: _Tally, min_count: int,
                      train_rows: int) -> _Vocabulary:
    """Values with training count >= ``min_count`` get ids 2.. by descending count, ties by value;
    every other value -> OOV id 0, missing -> 1. With a ``value_map``, raw values are mapped
    first and the counts of raw values with the same mapped value are added up."""
    codes = pl.DataFrame({"raw": tally.values, "count": tally.counts[1:]})
    if f.value_map is not None:
        codes = codes.with_columns(f.value_map(pl.col("raw")).alias("value"))
        totals = (codes.filter(pl.col("value").is_not_null())
                  .group_by("value").agg(pl.col("count").sum()))
    else:
        codes = codes.with_columns(pl.col("raw").alias("value"))
        totals = codes.filter(pl.col("value").is_not_null()).select("value", "count")
    kept = (totals.filter(pl.col("count") >= min_count)
            .sort(["count", "value"], descending=[True, False])
            .with_row_index("id", offset=FIRST_VALUE_ID))
    ids = (codes.join(kept.select("value", "id"), on="value", how="left", maintain_order="left")
           .select(pl.when(pl.col("value").is_null()).then(MISSING_ID)
                   .otherwise(pl.col("id").fill_null(OOV_ID)).cast(pl.Int32)))
    lut = np.concatenate([[MISSING_ID], ids.to_series().to_numpy()]).astype(np.int32)
    kept_counts = kept["count"].to_numpy()
    missing = int(tally.counts[0]) + int(codes.filter(pl.col("value").is_null())["count"].sum())
    frequencies = np.concatenate([[train_rows - missing - int(kept_counts.sum()), missing],
                                  kept_counts]).astype(np.int64)
    rare = totals.filter((pl.col("count") > 0) & (pl.col("count") < min_count)).height
    spec = FieldSpec(name=f.name, kind=f.kind, vocab_size=len(frequencies),
                     frequency=frequency_summary(frequencies, rare, train_rows))
    table = kept.select(pl.lit(f.name).alias("field"), pl.col("value").cast(pl.String),
                        pl.col("id").cast(pl.Int32), pl.col("count").cast(pl.Int64))
    return _Vocabulary(spec, lut, frequencies, table, tally.edges)


def _vocabulary_frame(vocabs: list[_Vocabulary]) -> pl.DataFrame:
    """All fields' kept values: ``field``, ``value``, ``id``, ``count``."""
    return pl.concat([v.table for v in vocabs])


# ---------------------------------------------------------------------------------------------
# 4. write


def _write_rows(writer: PreparedDatasetWriter, store: _BlockStore, splitter: _Splitter,
                vocabs: list[_Vocabulary], quiet: bool) -> None:
    """Remap provisional codes to ids (one gather per field) and append rows to their split.

    The writer copies and hashes block k in a worker thread while block k + 1 is remapped."""
    bar = tqdm(total=store.rows, unit="rows", unit_scale=True, desc="prepare: write",
               disable=quiet, file=sys.stderr, leave=False)
    pending: Future | None = None
    try:
        with ThreadPoolExecutor(max_workers=1) as pool:
            blocks = store.blocks(["codes", "numbers", "label"])
            for (_, block), assign in zip(blocks, store.assign, strict=True):
                x = _remap_block(block, vocabs)
                y = block["label"].copy()  # the block's buffer is reused for the next block
                if pending is not None:
                    pending.result()
                pending = pool.submit(_write_block, writer, x, y, assign)
                bar.update(len(y))
            if pending is not None:
                pending.result()
    finally:
        bar.close()


def _remap_block(block: dict[str, np.ndarray], vocabs: list[_Vocabulary]) -> np.ndarray:
    """Provisional codes of a block -> ids int32 [rows, fields]."""
    m = block["codes"].shape[1]
    x = np.empty((m, len(vocabs)), dtype=np.int32)
    ci = ni = 0
    for j, v in enumerate(vocabs):
        if v.edges is None:
            x[:, j] = v.lut[block["codes"][ci]]
            ci += 1
        else:
            x[:, j] = v.lut[_bucketize(block["numbers"][ni], v.edges)]
            ni += 1
    return x


def _write_block(writer: PreparedDatasetWriter, x: np.ndarray, y: np.ndarray,
                 assign: np.ndarray) -> None:
    """Append the rows of one block to their splits (x [rows, fields], y [rows], assign [rows])."""
    for s, name in enumerate(SPLITS):
        rows = assign == s
        n = int(np.count_nonzero(rows))
        if n == len(y):
            writer.write(name, x, y)
        elif n:
            writer.write(name, x[rows], y[rows])


# ---------------------------------------------------------------------------------------------
# schema options, reporting


def _options(recipe: Recipe, paths: list[Path], min_count: int, split: str,
             ratios: tuple[float, float, float], seed: int, bad: BadRowLog,
             vocabs: list[_Vocabulary], splitter: _Splitter) -> dict[str, Any]:
    options: dict[str, Any] = {
        "format": recipe.format,
        "inputs": [p.name for p in paths],
        **recipe.options,
        "min_count": min_count,
        "split": split,
        "split_ratios": list(ratios),
        "split_order": splitter.description,
        "seed": seed,
        **bad.summary(),
        "vocabulary_file": VOCABULARY_FILE,
        "vocabulary_hash": _vocabulary_hash(vocabs),
    }
    if any(v.edges is not None for v in vocabs):
        options["numeric_edges"] = {v.spec.name: [float(e) for e in v.edges]
                                    for v in vocabs if v.edges is not None}
    return options


def _vocabulary_hash(vocabs: list[_Vocabulary]) -> str:
    return vocabulary_hash([(v.spec.name, v.table["value"].to_list(), v.table["id"].to_numpy())
                            for v in vocabs])


def vocabulary_hash(tables: list[tuple[str, list[str], np.ndarray]]) -> str:
    """The ``vocabulary_hash`` of ``schema.json`` from each field's (name, kept values, their
    int32 ids) in schema order, sorted by id."""
    h = hashlib.blake2b(digest_size=16)
    for name, values, ids in tables:
        h.update(name.encode() + b"\x00")
        h.update("\x1f".join(values).encode())
        h.update(np.asarray(ids, dtype=np.int32).tobytes())
    return h.hexdigest()


def _report_bad_rows(bad: BadRowLog) -> None:
    """Say how many rows ``--on-bad-row skip`` dropped, and where: a warning, so even ``--quiet``
    (which only silences progress) prints it."""
    if bad.count == 0:
        return
    first = "; ".join(f"{b['file']}:{b['line']}" + (f" ({b['column']})" if b["column"] else "")
                      + f" {b['message']}" for b in bad.first[:5])
    print(f"skipped {bad.count:,} bad row(s); first: {first}", file=sys.stderr)
