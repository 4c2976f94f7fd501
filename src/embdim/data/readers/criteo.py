"""Criteo display-ads (Kaggle) TSV: ``label, I1..I13, C1..C26``, no header, tab-separated.

Recipe (AutoDim section 3.1, after the Criteo competition winner): an integer ``v > 2`` becomes
``floor(ln(v)^2)``, other integers stay as they are; the result is a categorical value (kind
``numeric_bucketed``). ``C1..C26`` are categorical as read. Empty fields are missing. The file's row
order is its time order, so ``split="time"`` cuts by row order.
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
    binary_label_check,
    criteo_log_bucket,
)
from embdim.data.readers.text import TextLayout, read_text_chunks

INT_FIELDS = tuple(f"I{i}" for i in range(1, 14))
CAT_FIELDS = tuple(f"C{i}" for i in range(1, 27))
COLUMNS = ("label", *INT_FIELDS, *CAT_FIELDS)
LAYOUT = TextLayout(separator="\t", columns=COLUMNS, has_header=False, quote_char=None)


def criteo_recipe(inputs: list[Path]) -> Recipe:
    """The Criteo recipe over ``inputs`` (read in order, e.g. ``day_0 .. day_23``)."""
    rules = ColumnRules(read=list(COLUMNS),
                        casts=dict.fromkeys(INT_FIELDS, pl.Int64),
                        checks=[binary_label_check("label")])

    def chunks(chunk_rows: int, bad: BadRowLog) -> Iterator[Chunk]:
        for path in inputs:
            yield from read_text_chunks(path, LAYOUT, rules, chunk_rows=chunk_rows, bad=bad)

    fields = [FieldRecipe(c, "numeric_bucketed", pl.col(c), value_map=criteo_log_bucket)
              for c in INT_FIELDS]
    fields += [FieldRecipe(c, "categorical", pl.col(c)) for c in CAT_FIELDS]
    return Recipe(format="criteo", label_name="label", label=pl.col("label").cast(pl.Float64),
                  fields=fields,
                  chunks=chunks, time=None, progress_total=sum(p.stat().st_size for p in inputs),
                  options={"integer_transform": "v > 2 -> floor(ln(v)^2), else v"})
