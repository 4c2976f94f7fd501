"""Any CSV or Parquet table: the user names the label, the categorical and the numeric columns.

* label: 0/1 numbers, or, with ``positive=[...]``, "value is one of these strings" -> 1, else 0
  (UCI Adult: ``positive=[">50K"]``); a missing label is a bad row;
* categorical columns: the value as a string (empty and ``na_values`` = missing);
* numeric columns: numbers (non-numeric text is a bad row, empty/``na_values``/NaN = missing),
  bucketed into a categorical field (kind ``numeric_bucketed``) either at training-split
  quantiles (``numeric_bucketing="quantile"``, ``numeric_buckets`` buckets) or by the Criteo
  ``floor(ln(v)^2)`` recipe (``"log2"``);
* fields come in the file's column order; other columns are ignored;
* ``time_column`` (for ``split="time"``): numbers (e.g. Unix seconds, ``YYYYMMDDHH``) or, in
  Parquet, a date/datetime column.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np
import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq

from embdim.data.readers.base import (
    MAX_REPORTED_BAD_ROWS,
    BadRowLog,
    Chunk,
    ColumnRules,
    FieldRecipe,
    Recipe,
    RowCheck,
    binary_label_check,
    blank_to_null,
    criteo_log_bucket,
    present_check,
    require_file,
)
from embdim.data.readers.text import TextLayout, read_header, read_text_chunks, validate_frame
from embdim.errors import ConfigError, DataError, short_repr

BUCKETINGS = ("quantile", "log2")


def generic_recipe(format: str, inputs: list[Path], *, label: str | None = None,
                   categorical: list[str] | None = None, numeric: list[str] | None = None,
                   positive: list[str] | None = None, na_values: list[str] | None = None,
                   numeric_buckets: int = 10, numeric_bucketing: str = "quantile",
                   separator: str = ",", time_column: str | None = None) -> Recipe:
    """The recipe for ``format`` ``"csv"`` or ``"parquet"`` (see the module docstring)."""
    categorical, numeric = list(categorical or []), list(numeric or [])
    na_values = list(na_values or [])
    if not label:
        raise ConfigError(f"{format}: name the label column (--label COL)")
    if not categorical and not numeric:
        raise ConfigError(f"{format}: name the feature columns (--categorical / --numeric)")
    if numeric_bucketing not in BUCKETINGS:
        raise ConfigError(f"numeric_bucketing must be one of {BUCKETINGS}, not {numeric_bucketing!r}")
    if numeric_buckets < 1:
        raise ConfigError(f"numeric_buckets must be >= 1, not {numeric_buckets}")
    named = [label, *categorical, *numeric]
    dupes = sorted({c for c in named if named.count(c) > 1})
    if dupes:
        raise ConfigError(f"{format}: column(s) named twice: {', '.join(dupes)}")

    if format == "csv":
        if len(separator) != 1:
            raise ConfigError(f"csv separator must be one character, not {separator!r}")
        layout = TextLayout(separator=separator, has_header=True, quote_char='"',
                            null_values=tuple(na_values))
        columns = read_header(require_file(inputs[0]), layout)
    else:
        columns = _parquet_columns(inputs[0])
    wanted = [label, *categorical, *numeric] + ([time_column] if time_column else [])
    for c in wanted:
        if c not in columns:
            raise DataError(f"no column {c!r} (columns are: {', '.join(columns)})",
                            path=str(inputs[0]), line=1 if format == "csv" else None, column=c)
    read = [c for c in columns if c in set(wanted)]

    casts: dict[str, pl.DataType] = dict.fromkeys(numeric, pl.Float64)
    checks: list[RowCheck] = []
    if positive:
        label_expr = pl.col(label).cast(pl.String).is_in(list(positive)).cast(pl.Int8)
        checks.append(RowCheck(label, pl.col(label).is_null(), "label is missing"))
    else:
        checks.append(binary_label_check(label))
        label_expr = pl.col(label).cast(pl.Float64)
    time_expr = None
    if time_column:
        if format == "csv":
            casts[time_column] = pl.Float64
        checks.append(present_check(time_column, "time"))
        time_expr = pl.col(time_column).cast(pl.Float64)  # Parquet dates: see _na_to_null
    rules = ColumnRules(read=read, casts=casts, checks=checks)

    def chunks(chunk_rows: int, bad: BadRowLog) -> Iterator[Chunk]:
        for path in inputs:
            if format == "csv":
                yield from read_text_chunks(path, layout, rules, chunk_rows=chunk_rows, bad=bad)
            else:
                yield from _parquet_chunks(path, rules, na_values, chunk_rows, bad)

    fields = []
    for c in read:
        if c in categorical:
            fields.append(FieldRecipe(c, "categorical", pl.col(c).cast(pl.String),
                                      value_map=blank_to_null))
        elif c in numeric and numeric_bucketing == "quantile":
            fields.append(FieldRecipe(c, "numeric_bucketed", pl.col(c).cast(pl.Float64),
                                      quantile=True))
        elif c in numeric:
            fields.append(FieldRecipe(c, "numeric_bucketed", pl.col(c).cast(pl.String),
                                      value_map=criteo_log_bucket))
    if format == "csv":
        total, unit = sum(p.stat().st_size for p in inputs), "B"
    else:
        total, unit = sum(_parquet_rows(p) for p in inputs), "rows"
    options = {"label": label, "positive": list(positive) if positive else None,
               "na_values": na_values, "categorical": categorical, "numeric": numeric,
               "numeric_bucketing": numeric_bucketing,
               "numeric_buckets": numeric_buckets if numeric_bucketing == "quantile" else None}
    if format == "csv":
        options["separator"] = separator
    return Recipe(format=format, label_name=label, label=label_expr, fields=fields, chunks=chunks,
                  time=time_expr, progress_total=total, progress_unit=unit, options=options)


def _open_parquet(path: Path) -> pq.ParquetFile:
    require_file(path)
    try:
        return pq.ParquetFile(path)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"not a readable Parquet file: {e}", path=str(path)) from None


def _parquet_columns(path: Path) -> list[str]:
    """The column names of a Parquet file; a name used twice is refused, as in a CSV header."""
    names = list(_open_parquet(path).schema_arrow.names)
    twice = sorted({n for n in names if names.count(n) > 1})
    if twice:
        raise DataError(f"duplicate column name {twice[0]!r}", path=str(path), column=twice[0])
    return names


def _check_parquet_types(path: Path, columns: list[str]) -> None:
    """Refuse nested columns (lists, structs, maps): a field holds one number or string per row."""
    schema = _open_parquet(path).schema_arrow
    for c in columns:
        dtype = schema.field(c).type
        if pa.types.is_nested(dtype):
            raise DataError(f"column holds {dtype} values; expected one number or string per row",
                            path=str(path), column=c)


def _parquet_rows(path: Path) -> int:
    return int(_open_parquet(path).metadata.num_rows)


def _parquet_chunks(path: Path, rules: ColumnRules, na_values: list[str], chunk_rows: int,
                    bad: BadRowLog) -> Iterator[Chunk]:
    """Validated chunks of a Parquet file; "line" numbers are 1-based row numbers."""
    pf = _open_parquet(path)
    missing = [c for c in rules.read if c not in pf.schema_arrow.names]
    if missing:
        raise DataError(f"no column {missing[0]!r}", path=str(path), column=missing[0])
    _parquet_columns(path)  # no duplicate names
    _check_parquet_types(path, rules.read)
    if pf.metadata.num_rows == 0:
        raise DataError("no data rows", path=str(path))
    first_row = 1
    try:
        for batch in pf.iter_batches(batch_size=chunk_rows, columns=rules.read):
            frame = pl.from_arrow(batch)
            assert isinstance(frame, pl.DataFrame)
            frame, numbers = _binary_as_text(frame, bad, path, first_row)
            frame = frame.with_columns(_na_to_null(frame, c, na_values) for c in frame.columns)
            frame = validate_frame(frame, rules, bad, path, lambda rows, n=numbers: n[rows])
            first_row += batch.num_rows
            yield Chunk(frame, batch.num_rows)
    except (pa.ArrowException, OSError) as e:
        raise DataError(f"cannot read Parquet data near row {first_row}: {e}",
                        path=str(path)) from None


def _binary_as_text(frame: pl.DataFrame, bad: BadRowLog, path: Path, first_row: int
                    ) -> tuple[pl.DataFrame, np.ndarray]:
    """Binary columns as UTF-8 text, as a CSV's bytes are read: a value that is not UTF-8 makes its
    row bad ("undecodable bytes"), reported and dropped like any bad row. Returns ``frame`` with
    only the good rows and the binary columns as String, and the good rows' 1-based row numbers."""
    numbers = first_row + np.arange(frame.height)
    binary = [c for c, t in frame.schema.items() if t == pl.Binary]
    if not binary:
        return frame, numbers
    try:  # the common case: every value is UTF-8
        return frame.with_columns(pl.col(c).cast(pl.String) for c in binary), numbers
    except pl.exceptions.PolarsError:  # else decode value by value (invalid -> null)
        text = frame.with_columns(pl.Series(c, [_utf8_or_none(v) for v in frame[c]], dtype=pl.String)
                                  for c in binary)
    flags = pl.DataFrame([(frame[c].is_not_null() & text[c].is_null()).alias(c) for c in binary])
    rows = np.flatnonzero(flags.select(pl.any_horizontal(pl.all())).to_series().to_numpy())
    if len(rows):
        details = []
        for r in rows[:MAX_REPORTED_BAD_ROWS]:
            column = binary[int(np.argmax(flags.row(int(r))))]
            details.append((first_row + int(r), column, f"undecodable bytes "
                            f"{short_repr(frame[column][int(r)])} (not UTF-8)"))
        bad.report_rows(path, details, count=len(rows))
        keep = np.ones(frame.height, dtype=bool)
        keep[rows] = False
        text, numbers = text.filter(pl.Series(keep)), numbers[keep]
    return text, numbers


def _utf8_or_none(value: bytes | None) -> str | None:
    try:
        return None if value is None else value.decode("utf-8")
    except UnicodeDecodeError:
        return None


def _na_to_null(frame: pl.DataFrame, column: str, na_values: list[str]) -> pl.Expr:
    """A Parquet column as the text reader would give it: ``na_values`` strings and NaN as
    null; dates and datetimes as microseconds since the epoch (for a time column)."""
    col = pl.col(column)
    dtype = frame.schema[column]
    if dtype in (pl.Date, pl.Datetime):
        return col.dt.epoch("us").alias(column)
    if dtype == pl.String and na_values:
        return pl.when(col.is_in(na_values)).then(None).otherwise(col).alias(column)
    if dtype.is_float():
        return pl.when(col.is_nan()).then(None).otherwise(col).alias(column)
    return col

