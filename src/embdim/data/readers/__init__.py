"""Readers: one module per input format, each turning raw files into a :class:`Recipe`.

``build_recipe(format, inputs, **options)`` is the entry point used by
:func:`embdim.data.prepare`; ``text`` holds the chunked, bad-row-aware delimited-text
reader the formats share.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embdim.data.readers.avazu import avazu_recipe
from embdim.data.readers.base import BadRowLog, FieldRecipe, Recipe
from embdim.data.readers.criteo import criteo_recipe
from embdim.data.readers.generic import generic_recipe
from embdim.data.readers.movielens import movielens_recipe
from embdim.errors import ConfigError

FORMATS = ("criteo", "avazu", "movielens", "csv", "parquet")

# Which keyword options each format accepts (everything else must be left at None).
FORMAT_OPTIONS: dict[str, tuple[str, ...]] = {
    "criteo": (),
    "avazu": (),
    "movielens": ("rating_threshold", "genres"),
    "csv": ("label", "categorical", "numeric", "positive", "na_values", "numeric_buckets",
            "numeric_bucketing", "separator", "time_column"),
    "parquet": ("label", "categorical", "numeric", "positive", "na_values", "numeric_buckets",
                "numeric_bucketing", "time_column"),
}


def build_recipe(format: str, inputs: list[Path], **options: Any) -> Recipe:
    """The :class:`Recipe` of ``format`` over ``inputs``; ``options`` left at ``None`` take the
    format's default, one the format does not use is refused."""
    if format not in FORMATS:
        raise ConfigError(f"unknown format {format!r}; expected one of {', '.join(FORMATS)}")
    given = {k: v for k, v in options.items() if v is not None}
    unused = sorted(set(given) - set(FORMAT_OPTIONS[format]))
    if unused:
        flags = ", ".join("--" + k.replace("_", "-") for k in unused)
        raise ConfigError(f"{format}: option(s) {flags} do not apply to this format")
    if format == "criteo":
        return criteo_recipe(inputs)
    if format == "avazu":
        return avazu_recipe(inputs)
    if format == "movielens":
        return movielens_recipe(inputs, **given)
    return generic_recipe(format, inputs, **given)


__all__ = ["FORMATS", "BadRowLog", "FieldRecipe", "Recipe", "build_recipe"]
