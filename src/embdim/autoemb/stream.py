"""Interaction streams for AutoEmb (AutoEmb paper sec. 2.5 and 3.1): (user, item, rating, timestamp)
ordered by time, with each interaction's *popularity* precomputed.

A prepared stream is a folder of memory-mappable ``.npy`` arrays, one value per interaction in
time order. Interactions with the same timestamp are put in a seeded pseudo-random order
(:func:`tie_keys`, ``tie_seed``), not in file order: Netflix dates are whole days and its files
list the ratings movie by movie, so file order would make a day's batches runs of one movie.

============================  ========  ==============================================================
file                          dtype     meaning
============================  ========  ==============================================================
``users.npy``                 int32     dense user id (0 .. users-1)
``items.npy``                 int32     dense item id (0 .. items-1)
``ratings.npy``               float32   the rating as given (MovieLens 0.5-5, Netflix 1-5)
``timestamps.npy``            int64     seconds since 1970 (Netflix: the date at 00:00 UTC)
``user_popularity.npy``       int32     interactions of this user strictly *before* this one
``item_popularity.npy``       int32     interactions of this item strictly *before* this one
``user_ids.npy``              int64     the raw user id of each dense id
``item_ids.npy``              int64     the raw item id of each dense id
``stream.json``               —         counts, rating values, source files, bad rows, content hash
============================  ========  ==============================================================

Preparation streams the input in chunks and sorts by time with bounded memory: chunks are spilled
to disk, then distributed into time ranges (from quantiles of a timestamp sample), and each range
is sorted on its own; popularity is a running count per id over the sorted ranges. Memory is
O(chunk + range + number of users and items), never O(interactions).

Readers: MovieLens (ml-100k ``u.data``, ml-1m ``ratings.dat``, ml-latest / ml-20m / ml-25m
``ratings.csv``; a folder or the ratings file itself) and Netflix-Prize format (``movie_id:`` lines
followed by ``user,rating,YYYY-MM-DD`` lines: the ``combined_data_*.txt`` files or a folder of
``mv_*.txt`` files).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl
from tqdm.auto import tqdm

from embdim.data.readers.base import (
    RATING_RANGE,
    BadRowLog,
    ColumnRules,
    present_check,
    rating_range_check,
    require_file,
)
from embdim.data.readers.movielens import VARIANTS
from embdim.data.readers.text import read_text_chunks
from embdim.errors import (
    DISK_FULL_ERRNOS,
    ConfigError,
    DataError,
    DiskFullError,
    EmbdimError,
    disk_full_message,
    short_repr,
)
from embdim.folders import (
    check_output_folder,
    make_temp_sibling,
    mark_as_ours,
    remove_stale_siblings,
    unmark,
)
from embdim.io import allocate, atomic_write_json

STREAM_FORMAT = 1
STREAM_FORMATS = ("movielens", "netflix")
META_FILE = "stream.json"
ARRAYS = {"users": np.int32, "items": np.int32, "ratings": np.float32, "timestamps": np.int64,
          "user_popularity": np.int32, "item_popularity": np.int32}
DEFAULT_CHUNK_ROWS = 1_000_000
DEFAULT_RANGE_ROWS = 4_000_000


@dataclass
class RawChunk:
    """One validated chunk of raw interactions (raw ids) and how many input bytes it covers."""

    users: np.ndarray  # int64 [n]
    items: np.ndarray  # int64 [n]
    ratings: np.ndarray  # float32 [n]
    timestamps: np.ndarray  # int64 [n]
    progress: int


# ---- readers ---------------------------------------------------------------------------------------

def _movielens_ratings_file(inputs: list[Path]) -> tuple[Any, Path]:
    if len(inputs) != 1:
        raise ConfigError("movielens stream: give one folder or one ratings file")
    p = inputs[0]
    for variant in VARIANTS:
        if p.is_dir() and (p / variant.ratings).exists():
            return variant, p / variant.ratings
        if p.name == variant.ratings:
            return variant, require_file(p)
    if not p.exists():
        raise DataError("no such file or folder", path=str(p))
    known = ", ".join(v.ratings for v in VARIANTS)
    raise DataError(f"no MovieLens ratings file found (looked for {known})", path=str(p))


def read_movielens(inputs: list[Path], *, chunk_rows: int, bad: BadRowLog) -> Iterator[RawChunk]:
    """MovieLens ratings (ml-100k, ml-1m, ml-latest, ml-20m/25m) as raw chunks."""
    variant, path = _movielens_ratings_file(inputs)
    raw = {ours: raw for raw, ours in variant.rename.items()}
    name = {c: raw.get(c, c) for c in ("user", "movie", "rating", "timestamp")}
    rules = ColumnRules(read=list(name.values()),
                        casts={name["user"]: pl.Int64, name["movie"]: pl.Int64,
                               name["rating"]: pl.Float64, name["timestamp"]: pl.Int64},
                        checks=[*(present_check(name[c], c) for c in ("user", "movie", "rating",
                                                                       "timestamp")),
                                rating_range_check(name["rating"])])
    for chunk in read_text_chunks(path, variant.ratings_layout, rules, chunk_rows=chunk_rows, bad=bad):
        f = chunk.frame.select(pl.col(name["user"]).cast(pl.Int64), pl.col(name["movie"]).cast(pl.Int64),
                               pl.col(name["rating"]).cast(pl.Float32),
                               pl.col(name["timestamp"]).cast(pl.Int64))
        cols = [s.to_numpy() for s in f.get_columns()]
        yield RawChunk(cols[0], cols[1], cols[2], cols[3], chunk.progress)


def _netflix_files(inputs: list[Path]) -> list[Path]:
    files: list[Path] = []
    for p in inputs:
        if p.is_dir():
            found = sorted(p.glob("mv_*.txt")) or sorted(p.glob("combined_data_*.txt"))
            if not found:
                raise DataError("no mv_*.txt or combined_data_*.txt files in this folder", path=str(p))
            files += found
        else:
            files.append(require_file(p))
    return files


def read_netflix(inputs: list[Path], *, chunk_rows: int, bad: BadRowLog) -> Iterator[RawChunk]:
    """Netflix-Prize format: a ``movie_id:`` line, then ``user,rating,YYYY-MM-DD`` lines."""
    block_bytes = max(1 << 16, chunk_rows * 24)
    for path in _netflix_files(inputs):
        movie: int | None = None  # the movie of the lines that follow, carried across blocks
        first_line = 1
        with open(path, "rb") as f:
            rest = b""
            while True:
                data = f.read(block_bytes)
                eof = not data
                data = rest + data
                if not eof:
                    cut = data.rfind(b"\n")
                    if cut < 0:
                        rest = data
                        continue
                    data, rest = data[:cut + 1], data[cut + 1:]
                if not data:
                    break
                chunk, movie, lines = _parse_netflix_block(data, path, first_line, movie, bad)
                first_line += lines
                if chunk is not None:
                    yield RawChunk(*chunk, progress=len(data))
                if eof:
                    break


def _parse_netflix_block(data: bytes, path: Path, first_line: int, movie: int | None,
                         bad: BadRowLog) -> tuple[tuple | None, int | None, int]:
    text = data.decode("utf-8", errors="replace")  # a line with undecodable bytes is a bad row
    lines = pl.Series("line", [text]).str.strip_suffix("\n").str.split("\n").explode()
    frame = pl.DataFrame({"line": lines.str.strip_chars_end("\r")}).with_row_index("n")
    n_lines = frame.height
    undecodable = pl.col("line").str.contains("\ufffd", literal=True)
    is_movie = pl.col("line").str.ends_with(":") & ~undecodable
    # A movie line that is not `<integer>:` is a bad row, and so are the ratings under it (their
    # movie is unknown): it gets the movie id -1 until the next good movie line.
    frame = frame.with_columns(
        pl.when(is_movie).then(pl.col("line").str.strip_suffix(":").str.strip_chars()
                               .cast(pl.Int64, strict=False).fill_null(-1)).alias("movie"),
        is_movie.alias("is_movie"), undecodable.alias("undecodable"))
    bad_movie = frame.filter(pl.col("is_movie") & (pl.col("movie") == -1))
    if bad_movie.height:
        bad.report_rows(path, [(first_line + int(n), None, "movie id line is not `<integer>:`")
                               for n in bad_movie["n"].head(10)], count=bad_movie.height)
    frame = frame.with_columns(pl.col("movie").forward_fill().fill_null(
        pl.lit(movie if movie is not None else None, dtype=pl.Int64)))
    last_movie = frame["movie"][-1] if frame.height else movie
    rows = frame.filter(~pl.col("is_movie") & (pl.col("line").str.len_bytes() > 0))
    parts = rows["line"].str.split(",")
    rows = rows.with_columns(
        parts.list.len().alias("fields"),
        parts.list.get(0, null_on_oob=True).str.strip_chars().cast(pl.Int64, strict=False).alias("user"),
        parts.list.get(1, null_on_oob=True).str.strip_chars().cast(pl.Float32, strict=False)
        .alias("rating"),
        parts.list.get(2, null_on_oob=True).str.strip_chars().str.to_date("%Y-%m-%d", strict=False)
        .alias("date"))
    low, high = RATING_RANGE
    problems = [(pl.col("undecodable"), None, "undecodable bytes (not UTF-8)"),
                (pl.col("movie").is_null(), None, "rating line before any `movie_id:` line"),
                (pl.col("movie") == -1, None, "rating line under a bad `movie_id:` line"),
                (pl.col("fields") != 3, None, "expected user,rating,date"),
                (pl.col("user").is_null(), "user", "user is not an integer"),
                (pl.col("rating").is_null() | pl.col("rating").is_nan(), "rating", "rating is not a number"),
                (~pl.col("rating").is_between(low, high), "rating",
                 f"rating must be between {low:g} and {high:g}"),
                (pl.col("date").is_null(), "date", "date is not YYYY-MM-DD")]
    bad_mask = pl.lit(False)
    for cond, _, _ in problems:
        bad_mask = bad_mask | cond
    bad_rows = rows.filter(bad_mask)
    if bad_rows.height:
        details = []
        for row in bad_rows.head(10).iter_rows(named=True):
            for cond, column, message in problems:
                if pl.DataFrame([row]).select(cond.fill_null(True)).item():
                    details.append((first_line + int(row["n"]), column, message))
                    break
        bad.report_rows(path, details, count=bad_rows.height)
        rows = rows.filter(~bad_mask)
    if rows.height == 0:
        return None, last_movie, n_lines
    seconds = rows["date"].cast(pl.Datetime("ms")).dt.epoch("s").to_numpy().astype(np.int64)
    return ((rows["user"].to_numpy().astype(np.int64), rows["movie"].to_numpy().astype(np.int64),
             rows["rating"].to_numpy().astype(np.float32), seconds), last_movie, n_lines)


def read_chunks(format: str, inputs: Sequence[str | Path], *, chunk_rows: int = DEFAULT_CHUNK_ROWS,
                bad: BadRowLog | None = None) -> Iterator[RawChunk]:
    """Validated raw chunks of ``inputs`` in ``format`` (``movielens`` or ``netflix``)."""
    bad = bad or BadRowLog("error")
    paths = [Path(p) for p in inputs]
    if format == "movielens":
        return read_movielens(paths, chunk_rows=chunk_rows, bad=bad)
    if format == "netflix":
        return read_netflix(paths, chunk_rows=chunk_rows, bad=bad)
    raise ConfigError(f"unknown stream format {format!r}; expected one of {', '.join(STREAM_FORMATS)}")


# ---- tie order ------------------------------------------------------------------------------------

_MASK64 = np.uint64(0xFFFFFFFFFFFFFFFF)


def tie_keys(positions: np.ndarray, seed: int) -> np.ndarray:
    """A pseudo-random uint64 key per input position (splitmix64 of ``position + seed * golden``):
    sorting equal timestamps by it is a seeded shuffle of the ties that depends only on the seed
    and the input positions (not on how the input is chunked), with no two positions sharing a
    key (splitmix64 is a bijection of 64-bit integers)."""
    with np.errstate(over="ignore"):
        z = np.asarray(positions).astype(np.uint64) + np.uint64(seed % (1 << 64)) * np.uint64(
            0x9E3779B97F4A7C15) + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return (z ^ (z >> np.uint64(31))) & _MASK64


# ---- popularity --------------------------------------------------------------------------------

def earlier_counts(ids: np.ndarray, counts: np.ndarray) -> np.ndarray:
    """For each position ``i`` of ``ids`` (in time order): ``counts[ids[i]]`` plus the number of
    earlier positions with the same id; then adds this chunk's occurrences to ``counts`` (in place).

    ``counts`` holds, per id, the interactions seen in earlier chunks. Never counts position ``i``
    itself or any later one. Vectorised: one stable sort per chunk.
    """
    ids = np.asarray(ids)
    n = len(ids)
    out = np.empty(n, dtype=np.int64)
    if n == 0:
        return out
    order = np.argsort(ids, kind="stable")
    sorted_ids = ids[order]
    starts = np.flatnonzero(np.r_[True, sorted_ids[1:] != sorted_ids[:-1]])
    lengths = np.diff(np.r_[starts, n])
    rank = np.arange(n) - np.repeat(starts, lengths)
    out[order] = counts[sorted_ids] + rank
    counts += np.bincount(ids, minlength=len(counts)).astype(counts.dtype)
    return out


def popularity(ids: np.ndarray, num_ids: int | None = None) -> np.ndarray:
    """Interactions of the same id strictly before each position, for a whole array in time order."""
    ids = np.asarray(ids)
    num = int(num_ids if num_ids is not None else (ids.max() + 1 if len(ids) else 0))
    return earlier_counts(ids, np.zeros(num, dtype=np.int64))


# ---- the prepared stream ------------------------------------------------------------------------

class InteractionStream:
    """A prepared stream: arrays in time order (memory-mapped when opened from a folder)."""

    def __init__(self, arrays: dict[str, np.ndarray], meta: dict[str, Any], path: Path | None = None):
        self.arrays = arrays
        self.meta = meta
        self.path = path

    @classmethod
    def open(cls, path: str | Path) -> InteractionStream:
        path = Path(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise EmbdimError(f"{path}: not a prepared stream (no {META_FILE}); "
                              "make one with `embdim stream prepare`")
        try:
            meta = json.loads(meta_path.read_text())
        except (ValueError, OSError) as e:  # not JSON, not UTF-8, unreadable
            raise EmbdimError(f"{meta_path}: not a valid stream description ({e})") from None
        if not isinstance(meta, dict) or not isinstance(meta.get("interactions"), int):
            raise EmbdimError(f"{meta_path}: not a valid stream description (expected a JSON "
                              "object with an integer 'interactions')")
        if meta.get("format_version") != STREAM_FORMAT:
            raise EmbdimError(f"{meta_path}: unsupported stream format {meta.get('format_version')!r}")
        for key in ("users", "items"):
            count = meta.get(key)
            if not isinstance(count, int) or isinstance(count, bool) or count < 1:
                raise EmbdimError(f"{meta_path}: not a valid stream description ({key!r} must be a "
                                  f"positive integer, got {short_repr(count)})")
        arrays = {}
        for name, dtype in ARRAYS.items():
            try:
                a = np.load(path / f"{name}.npy", mmap_mode="r", allow_pickle=False)
            except FileNotFoundError:
                raise EmbdimError(f"{path}: missing array {name}.npy (prepare the stream again)") from None
            except (ValueError, OSError, EOFError) as e:
                raise EmbdimError(f"{path / f'{name}.npy'}: not a readable .npy array ({e})") from None
            if a.dtype != dtype or a.ndim != 1 or len(a) != meta["interactions"]:
                raise EmbdimError(f"{path / f'{name}.npy'}: expected {meta['interactions']:,} "
                                  f"values of {np.dtype(dtype).name}, found {len(a):,} of {a.dtype}")
            arrays[name] = a
        for name in ("users", "items"):  # dense ids index the tables: one pass over each array
            a, count = arrays[name], meta[name]
            if len(a) and (int(a.min()) < 0 or int(a.max()) >= count):
                row = int(np.flatnonzero((a < 0) | (a >= count))[0])
                raise EmbdimError(f"{path / f'{name}.npy'}: interaction {row}: id {int(a[row])} outside "
                                  f"0..{count - 1} ({count:,} {name} in {META_FILE}); prepare the stream "
                                  "again")
        return cls(arrays, meta, path)

    @classmethod
    def from_arrays(cls, users: np.ndarray, items: np.ndarray, ratings: np.ndarray,
                    timestamps: np.ndarray | None = None, *, num_users: int | None = None,
                    num_items: int | None = None, source: str = "arrays") -> InteractionStream:
        """An in-memory stream from dense ids already in time order (popularity computed here)."""
        users = np.ascontiguousarray(users, dtype=np.int32)
        items = np.ascontiguousarray(items, dtype=np.int32)
        n = len(users)
        if len(items) != n or len(ratings) != n:
            raise ValueError("users, items and ratings must have the same length")
        ts = np.arange(n, dtype=np.int64) if timestamps is None else np.asarray(timestamps, np.int64)
        nu = int(num_users if num_users is not None else users.max() + 1)
        ni = int(num_items if num_items is not None else items.max() + 1)
        arrays = {"users": users, "items": items, "ratings": np.asarray(ratings, np.float32),
                  "timestamps": ts, "user_popularity": popularity(users, nu).astype(np.int32),
                  "item_popularity": popularity(items, ni).astype(np.int32)}
        return cls(arrays, _meta(arrays, nu, ni, source=source), None)

    def __len__(self) -> int:
        return int(self.meta["interactions"])

    @property
    def num_users(self) -> int:
        return int(self.meta["users"])

    @property
    def num_items(self) -> int:
        return int(self.meta["items"])

    def save(self, out: str | Path, *, overwrite: bool = False) -> Path:
        """Write this (in-memory) stream as a prepared folder."""
        with _StreamWriter(Path(out), len(self), overwrite=overwrite) as w:
            for name, a in self.arrays.items():
                w.arrays[name][:] = a
            w.finish({**self.meta}, np.arange(self.num_users, dtype=np.int64),
                     np.arange(self.num_items, dtype=np.int64))
        return Path(out)


def _meta(arrays: dict[str, np.ndarray], num_users: int, num_items: int, **extra: Any) -> dict[str, Any]:
    ratings = arrays["ratings"]
    values = np.unique(np.asarray(ratings[: min(len(ratings), 5_000_000)]))
    return {"format_version": STREAM_FORMAT, "interactions": int(len(arrays["users"])),
            "users": int(num_users), "items": int(num_items),
            "rating_values": [float(v) for v in values] if len(values) <= 20 else None,
            "rating_min": float(values.min()) if len(values) else None,
            "rating_max": float(values.max()) if len(values) else None, **extra}


class _StreamWriter:
    """Writes a stream folder into a temporary sibling and renames it into place on success."""

    def __init__(self, out: Path, rows: int, *, overwrite: bool):
        check_output_folder(out, [], overwrite=overwrite, marker=META_FILE)
        self.out, self.rows = out, rows
        self.tmp = make_temp_sibling(out, "stream")
        self.done = False
        self.arrays: dict[str, np.memmap] = {}
        try:
            for name, dtype in ARRAYS.items():
                self.arrays[name] = np.lib.format.open_memmap(self.tmp / f"{name}.npy", mode="w+",
                                                              dtype=dtype, shape=(rows,))
                allocate(self.tmp / f"{name}.npy")  # a full disk: an error now, not a SIGBUS
        except BaseException:
            self.arrays.clear()
            shutil.rmtree(self.tmp, ignore_errors=True)
            raise

    def __enter__(self) -> _StreamWriter:
        return self

    def finish(self, meta: dict[str, Any], user_ids: np.ndarray, item_ids: np.ndarray) -> None:
        digest = hashlib.blake2b(digest_size=16)
        for name, a in self.arrays.items():
            a.flush()
            for start in range(0, len(a), 1 << 22):
                digest.update(np.ascontiguousarray(a[start:start + (1 << 22)]).tobytes())
            digest.update(name.encode())
        np.save(self.tmp / "user_ids.npy", user_ids)
        np.save(self.tmp / "item_ids.npy", item_ids)
        self.arrays.clear()
        atomic_write_json(self.tmp / META_FILE, {**meta, "content_hash": digest.hexdigest()})
        unmark(self.tmp)
        self.done = True

    def __exit__(self, exc_type, exc, tb) -> None:
        self.arrays.clear()
        if not self.done or exc_type is not None:
            shutil.rmtree(self.tmp, ignore_errors=True)
            return
        if self.out.exists():
            old = self.out.with_name(f".{self.out.name}.old-{time.time_ns()}")
            self.out.rename(old)
            mark_as_ours(old)  # removed below, or by a later preparation if killed before that
            self.tmp.rename(self.out)
            shutil.rmtree(old, ignore_errors=True)
        else:
            self.tmp.rename(self.out)


def prepare_stream(format: str, inputs: Sequence[str | Path], out: str | Path, *,
                   chunk_rows: int = DEFAULT_CHUNK_ROWS, range_rows: int = DEFAULT_RANGE_ROWS,
                   on_bad_row: str = "error", overwrite: bool = False, tie_seed: int = 0,
                   quiet: bool = False) -> InteractionStream:
    """Read ``inputs`` (``format``: movielens | netflix), sort by time and write a stream folder.

    Interactions with equal timestamps are ordered by :func:`tie_keys` of their input position and
    ``tie_seed`` (a seeded shuffle within each timestamp, recorded in ``stream.json``).

    ``chunk_rows``: rows parsed at a time; ``range_rows``: target rows per time range sorted in
    memory (both bound the memory; neither changes the result). ``on_bad_row``: ``error`` stops
    at the first bad line (naming file, line, column), ``skip`` drops and counts bad lines.
    """
    started = time.perf_counter()
    out = Path(out)
    if chunk_rows <= 0 or range_rows <= 0:
        raise ConfigError("chunk_rows and range_rows must be positive")
    check_output_folder(out, [Path(p) for p in inputs], overwrite=overwrite, marker=META_FILE)
    bad = BadRowLog(on_bad_row)
    remove_stale_siblings(out)  # left by a killed preparation of the same folder
    work = make_temp_sibling(out, "work")
    try:
        # 1. spill validated chunks with raw ids; collect the id sets and a timestamp sample
        chunks: list[tuple[Path, int]] = []
        user_set = np.empty(0, np.int64)
        item_set = np.empty(0, np.int64)
        sample: list[np.ndarray] = []
        rng = np.random.default_rng(0)
        rows = 0
        bar = tqdm(desc="read", unit="row", disable=quiet, leave=False, dynamic_ncols=True)
        for i, c in enumerate(read_chunks(format, inputs, chunk_rows=chunk_rows, bad=bad)):
            n = len(c.users)
            if n == 0:
                continue
            path = work / f"chunk{i:06d}.npz"
            np.savez(path, u=c.users, i=c.items, r=c.ratings, t=c.timestamps)
            chunks.append((path, rows))
            rows += n
            user_set = np.union1d(user_set, np.unique(c.users))
            item_set = np.union1d(item_set, np.unique(c.items))
            sample.append(c.timestamps[rng.integers(0, n, size=min(n, 20_000))])
            bar.update(n)
        bar.close()
        if rows == 0:
            raise DataError("no valid interactions (every row was bad)",
                            path=", ".join(map(str, inputs)))
        # 2. time ranges from quantiles of the sample; distribute rows into per-range files
        ranges = max(1, -(-rows // range_rows))
        ts_sample = np.sort(np.concatenate(sample))
        edges = np.unique(ts_sample[(np.arange(1, ranges) * len(ts_sample)) // ranges]) if ranges > 1 \
            else np.empty(0, np.int64)
        part_files = [{k: open(work / f"range{r:05d}.{k}", "wb") for k in "uirts"}
                      for r in range(len(edges) + 1)]
        try:
            for path, offset in chunks:
                z = np.load(path)
                u = np.searchsorted(user_set, z["u"]).astype(np.int32)
                it = np.searchsorted(item_set, z["i"]).astype(np.int32)
                t = z["t"]
                seq = np.arange(offset, offset + len(t), dtype=np.int64)
                which = np.searchsorted(edges, t, side="right")
                for r in np.unique(which):
                    m = which == r
                    for k, a in (("u", u), ("i", it), ("r", z["r"]), ("t", t), ("s", seq)):
                        part_files[r][k].write(np.ascontiguousarray(a[m]).tobytes())
                path.unlink()
        finally:
            for files in part_files:
                for f in files.values():
                    f.close()
        # 3. sort each range by (time, seeded shuffle of ties), count popularity, write the arrays
        dtypes = {"u": np.int32, "i": np.int32, "r": np.float32, "t": np.int64, "s": np.int64}
        user_counts = np.zeros(len(user_set), np.int64)
        item_counts = np.zeros(len(item_set), np.int64)
        with _StreamWriter(out, rows, overwrite=overwrite) as w:
            pos = 0
            for r in range(len(part_files)):
                part = {k: np.fromfile(work / f"range{r:05d}.{k}", dtype=dt) for k, dt in dtypes.items()}
                order = np.lexsort((tie_keys(part["s"], tie_seed), part["t"]))
                n = len(order)
                users, items = part["u"][order], part["i"][order]
                sl = slice(pos, pos + n)
                w.arrays["users"][sl] = users
                w.arrays["items"][sl] = items
                w.arrays["ratings"][sl] = part["r"][order]
                w.arrays["timestamps"][sl] = part["t"][order]
                w.arrays["user_popularity"][sl] = earlier_counts(users, user_counts)
                w.arrays["item_popularity"][sl] = earlier_counts(items, item_counts)
                pos += n
            meta = _meta(w.arrays, len(user_set), len(item_set), source=format,
                         files=[str(p) for p in inputs], tie_order=f"seeded shuffle (seed {tie_seed})",
                         **bad.summary())
            meta.update(time_min=int(w.arrays["timestamps"][0]), time_max=int(w.arrays["timestamps"][-1]))
            w.finish(meta, user_set, item_set)
    except OSError as e:  # a full disk while writing temporary files: say so, in one line
        if e.errno not in DISK_FULL_ERRNOS:
            raise
        raise DiskFullError(disk_full_message(e, e.filename or work)) from None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    stream = InteractionStream.open(out)
    if not quiet:
        seconds = time.perf_counter() - started
        skipped = f"; skipped {bad.count:,} bad rows" if bad.count else ""
        print(f"prepared {len(stream):,} interactions ({stream.num_users:,} users, "
              f"{stream.num_items:,} items) in {seconds:.1f} s{skipped} -> {out}", file=sys.stderr)
    return stream
