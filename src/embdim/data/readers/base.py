"""What every reader hands to ``prepare``: a :class:`Recipe` (fields as polars expressions over
validated chunks) and the bad-row bookkeeping shared by all formats.

A reader turns raw files into a stream of *validated* polars DataFrames (one per chunk, every
row good: numeric columns parse, labels are 0/1, ...) and says, as expressions over those frames,
what the label, the fields and the time column are. ``prepare`` does the rest (vocabularies,
splits, ids) the same way for every format.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import polars as pl

from embdim.data.schema import FieldKind
from embdim.errors import DataError

ON_BAD_ROW = ("error", "skip")
MAX_REPORTED_BAD_ROWS = 10


@dataclass(frozen=True)
class RowCheck:
    """A per-row validity test: ``bad`` is a boolean expression over a cast chunk (True = bad)."""

    column: str
    bad: pl.Expr
    message: str


@dataclass
class ColumnRules:
    """What a reader keeps and checks in every chunk.

    ``read``: the columns kept (raw names); ``casts``: columns that must hold numbers of that
    dtype (a value that does not cast is a bad row, "not a number"); ``checks``: further per-row
    tests, evaluated with the ``casts`` applied (label is 0/1, time present, ...). The validated
    chunk keeps the columns as read (text columns stay String): recipes cast what they need.
    """

    read: list[str]
    casts: dict[str, pl.DataType] = field(default_factory=dict)
    checks: list[RowCheck] = field(default_factory=list)


@dataclass
class Chunk:
    """A validated chunk: ``frame`` holds only good rows; ``progress`` is how far the reader got
    (bytes for text files, rows for Parquet) since the previous chunk."""

    frame: pl.DataFrame
    progress: int


ChunkSource = Callable[[int, "BadRowLog"], Iterator[Chunk]]  # (chunk_rows, bad rows) -> chunks
ValueMap = Callable[[pl.Expr], pl.Expr]  # raw String values -> field values (String, null = missing)


@dataclass
class FieldRecipe:
    """One output field, as an expression over a validated chunk.

    ``quantile=False``: ``expr`` yields the field's raw value as a String (null = missing), and
    ``value_map``, if given, turns raw values into the field's values (null = missing). It is
    applied once per *distinct* raw value when the vocabulary is built, not per row, so a
    transform such as Criteo's ``floor(ln(v)^2)`` costs nothing in the streaming pass.
    ``quantile=True``: ``expr`` yields a Float64 (null/NaN = missing) that ``prepare`` buckets
    at training-split quantiles.
    """

    name: str
    kind: FieldKind
    expr: pl.Expr
    value_map: ValueMap | None = None
    quantile: bool = False


@dataclass
class Recipe:
    """How one format becomes a prepared dataset.

    ``label``: expression yielding 0/1; ``time``: expression yielding a Float64 time (for
    ``split="time"``; ``None`` = the row order is the time order); ``chunks(chunk_rows, bad)``
    yields validated :class:`Chunk` s; ``progress_total``/``progress_unit`` size the progress bar;
    ``options``: format-specific options recorded in ``schema.json``.
    """

    format: str
    label_name: str
    label: pl.Expr
    fields: list[FieldRecipe]
    chunks: ChunkSource
    time: pl.Expr | None = None
    progress_total: int = 0
    progress_unit: str = "B"
    options: dict[str, Any] = field(default_factory=dict)


class BadRowLog:
    """Collects bad rows: raises on the first one (``mode="error"``) or counts them (``"skip"``)."""

    def __init__(self, mode: str):
        if mode not in ON_BAD_ROW:
            raise ValueError(f"on_bad_row must be one of {ON_BAD_ROW}, not {mode!r}")
        self.mode = mode
        self.count = 0
        self.first: list[dict[str, Any]] = []

    def report(self, path: Path | str, line: int, column: str | None, message: str) -> None:
        """One bad row at 1-based ``line`` (the header counts as line 1)."""
        if self.mode == "error":
            raise DataError(f"{message} (use --on-bad-row skip to drop such rows)", path=str(path),
                            line=int(line), column=column)
        self.count += 1
        if len(self.first) < MAX_REPORTED_BAD_ROWS:
            self.first.append({"file": Path(path).name, "line": int(line), "column": column,
                               "message": message})

    def report_rows(self, path: Path | str, details: list[tuple[int, str | None, str]], *,
                    count: int) -> None:
        """``count`` bad rows at once; ``details`` = (line, column, message) of the first few,
        sorted by line."""
        if count == 0:
            return
        if self.mode == "error":
            self.report(path, *details[0])
        room = max(0, MAX_REPORTED_BAD_ROWS - len(self.first))
        for line, column, message in details[:room]:
            self.first.append({"file": Path(path).name, "line": int(line), "column": column,
                               "message": message})
        self.count += count

    def summary(self) -> dict[str, Any]:
        return {"on_bad_row": self.mode, "bad_rows": self.count, "first_bad_rows": list(self.first)}


def criteo_log_bucket(value: pl.Expr) -> pl.Expr:
    """The Criteo-winner transform of numbers (or numeric strings) as a categorical value:
    ``v > 2 -> floor(ln(v)^2)``, else ``floor(v)`` (``v`` itself for integers); a String
    expression, null when missing (or NaN)."""
    v = value.cast(pl.Float64)
    bucket = pl.when(v > 2).then((v.log() ** 2).floor()).otherwise(v.floor())
    return bucket.cast(pl.Int64, strict=False).cast(pl.String)


def blank_to_null(value: pl.Expr) -> pl.Expr:
    """A String expression with empty strings turned into nulls (missing)."""
    s = value.cast(pl.String)
    return pl.when(s.str.len_bytes() == 0).then(None).otherwise(s)


def binary_label_check(column: str) -> RowCheck:
    """Label must be present and a number equal to 0 or 1."""
    c = pl.col(column).cast(pl.Float64, strict=False)
    return RowCheck(column, c.is_null() | ((c != 0) & (c != 1)), "label must be 0 or 1")


RATING_RANGE = (0.5, 5.0)  # MovieLens (0.5-5 stars) and Netflix (1-5) ratings


def rating_range_check(column: str) -> RowCheck:
    """A present rating must be a number in :data:`RATING_RANGE` (99, -3, 1e400 are bad rows)."""
    low, high = RATING_RANGE
    c = pl.col(column).cast(pl.Float64, strict=False)
    return RowCheck(column, c.is_not_null() & ~c.is_between(low, high),
                    f"rating must be between {low:g} and {high:g}")


def present_check(column: str, what: str) -> RowCheck:
    return RowCheck(column, pl.col(column).is_null() | pl.col(column).cast(pl.Float64).is_nan(),
                    f"{what} is missing")


def require_file(path: Path) -> Path:
    """``path`` if it is a readable file, else a DataError naming it."""
    if not path.exists():
        raise DataError("no such file", path=str(path))
    if not path.is_file():
        raise DataError("not a file", path=str(path))
    return path
