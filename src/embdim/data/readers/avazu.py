"""Avazu CTR CSV: header ``id,click,hour,C1,banner_pos,site_id,...,C21``.

``id`` is dropped, ``click`` is the label, ``hour`` (``YYMMDDHH``) becomes two fields, ``hour``
(hour of day, 0-23) and ``weekday`` (1 = Monday .. 7 = Sunday); every other column is categorical,
in header order. ``hour`` is also the time column for ``split="time"``.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import polars as pl

from embdim.data.readers.base import (
    BadRowLog,
    Chunk,
    ColumnRules,
    FieldRecipe,
    Recipe,
    RowCheck,
    binary_label_check,
)
from embdim.data.readers.text import TextLayout, read_header, read_text_chunks
from embdim.errors import DataError

LAYOUT = TextLayout(separator=",", has_header=True, quote_char='"')
DROPPED = ("id",)
LABEL = "click"
HOUR = "hour"


def _date(hour: pl.Expr) -> pl.Expr:
    """The calendar date of a ``YYMMDDHH`` integer (null when it is not one)."""
    return (hour // 100).cast(pl.String).str.strptime(pl.Date, "%y%m%d", strict=False)


def _hour_of_day(raw: pl.Expr) -> pl.Expr:
    return (raw.cast(pl.Int64) % 100).cast(pl.String)


def _weekday(raw: pl.Expr) -> pl.Expr:
    return _date(raw.cast(pl.Int64)).dt.weekday().cast(pl.String)


def avazu_recipe(inputs: list[Path]) -> Recipe:
    """The Avazu recipe over ``inputs`` (each a CSV with the Avazu header)."""
    names = read_header(inputs[0], LAYOUT)
    for need in (LABEL, HOUR):
        if need not in names:
            raise DataError(f"not an Avazu file: no {need!r} column in the header "
                            f"({', '.join(names)})", path=str(inputs[0]), line=1)
    features = [c for c in names if c not in (*DROPPED, LABEL, HOUR)]
    hour = pl.col(HOUR)  # an Int64 in checks; a String in the validated chunk
    bad_hour = (hour < 0) | (hour > 99_99_99_99) | (hour % 100 > 23) | _date(hour).is_null()
    rules = ColumnRules(read=[LABEL, HOUR, *features],
                        casts={HOUR: pl.Int64},
                        checks=[binary_label_check(LABEL),
                                RowCheck(HOUR, bad_hour, "hour must be YYMMDDHH")])

    def chunks(chunk_rows: int, bad: BadRowLog) -> Iterator[Chunk]:
        for path in inputs:
            yield from read_text_chunks(path, LAYOUT, rules, chunk_rows=chunk_rows, bad=bad)

    fields = [FieldRecipe("hour", "categorical", hour, value_map=_hour_of_day),
              FieldRecipe("weekday", "categorical", hour, value_map=_weekday)]
    fields += [FieldRecipe(c, "categorical", pl.col(c)) for c in features]
    return Recipe(format="avazu", label_name=LABEL, label=pl.col(LABEL).cast(pl.Float64),
                  fields=fields,
                  chunks=chunks, time=hour.cast(pl.Float64),
                  progress_total=sum(p.stat().st_size for p in inputs),
                  options={"hour": "YYMMDDHH -> hour (0-23), weekday (1=Mon..7=Sun)",
                           "dropped_columns": list(DROPPED)})
