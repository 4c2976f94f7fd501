"""The schema of a prepared dataset (``schema.json``): fields, vocabularies, splits, options, hash.

Id conventions shared by every reader, model and search method:

* every field is encoded as int32 ids ``0 .. vocab_size - 1`` local to that field;
* id ``OOV_ID = 0`` is the out-of-vocabulary id: values seen fewer than ``min_count`` times in the
  training split, and values never seen in training, share it;
* id ``MISSING_ID = 1`` is the id of a missing (empty / null) value;
* ids ``>= FIRST_VALUE_ID`` are the kept values, sorted by descending training frequency (ties by
  value), so that frequency blocks (MDE) are contiguous id ranges and id order is popularity order.
"""

from __future__ import annotations

import json
import typing
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np

from embdim.config import coerce, typed_fields
from embdim.errors import ConfigError, DataError, short_repr
from embdim.io import atomic_write_json

SCHEMA_FORMAT_VERSION = 1
OOV_ID = 0
MISSING_ID = 1
FIRST_VALUE_ID = 2
RESERVED_IDS = 2

FieldKind = Literal["categorical", "numeric_bucketed"]
SPLITS = ("train", "valid", "test")


def frequency_summary(frequencies: np.ndarray, rare_values: int, train_rows: int) -> dict[str, Any]:
    """The ``frequency`` entry of a FieldSpec from one field's training id counts [vocab_size]:
    counts of the OOV and missing ids, number of kept and of rare (folded into OOV) values, the
    most frequent value's share of the training rows, and quantiles of the kept values' counts."""
    kept = np.asarray(frequencies[FIRST_VALUE_ID:])
    quantiles = {}
    if kept.size:
        for name, q in (("min", 0.0), ("p50", 0.5), ("p90", 0.9), ("p99", 0.99), ("max", 1.0)):
            quantiles[name] = int(np.quantile(kept, q, method="lower"))
    return {"oov": int(frequencies[OOV_ID]), "missing": int(frequencies[MISSING_ID]),
            "kept_values": int(kept.size), "rare_values": int(rare_values),
            "top_share": round(float(kept[0]) / train_rows, 6) if kept.size and train_rows else 0.0,
            "count_quantiles": quantiles}


@dataclass
class FieldSpec:
    """One input field after preparation."""

    name: str
    kind: FieldKind
    vocab_size: int  # including the reserved OOV and missing ids
    # Summary of the training-split value frequencies: counts of the OOV and missing ids, number of
    # kept values, share of the most frequent value, frequency quantiles of the kept values.
    frequency: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.vocab_size < RESERVED_IDS:
            raise ValueError(f"field {self.name!r}: vocab_size {self.vocab_size} < {RESERVED_IDS}")


@dataclass
class Schema:
    """Everything needed to interpret a prepared dataset's arrays."""

    label: str
    fields: list[FieldSpec]
    splits: dict[str, int]  # rows per split
    options: dict[str, Any]  # the preprocessing options used (format, min_count, split, seed, ...)
    content_hash: str = ""
    format_version: int = SCHEMA_FORMAT_VERSION
    # The largest id of each field over every split, recorded when the arrays were written (None
    # in folders written before it was): opening a folder checks it against vocab_size for free.
    max_ids: list[int] | None = None

    @property
    def field_names(self) -> list[str]:
        return [f.name for f in self.fields]

    @property
    def vocab_sizes(self) -> list[int]:
        return [f.vocab_size for f in self.fields]

    @property
    def num_fields(self) -> int:
        return len(self.fields)

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        # Keep the version first in the file: it is what a reader checks first.
        return {"format_version": d.pop("format_version"), **d}

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "schema") -> Schema:
        if not isinstance(d, dict):
            raise DataError(f"malformed schema: expected a JSON object, got {type(d).__name__}",
                            path=source)
        version = d.get("format_version")
        if version != SCHEMA_FORMAT_VERSION:
            raise DataError(f"unsupported schema format_version {version!r} "
                            f"(this embdim reads {SCHEMA_FORMAT_VERSION})", path=source)
        try:
            schema = cls._typed_from_dict(d)
        except ConfigError as e:  # a value of the wrong type, named by its place in the file
            raise DataError(f"malformed schema: {e}", path=source) from None
        except (KeyError, TypeError, ValueError) as e:
            raise DataError(f"malformed schema: {e}", path=source) from e
        schema.check_max_ids(source)
        return schema

    @classmethod
    def _typed_from_dict(cls, d: dict[str, Any]) -> Schema:
        """Every value typed as the dataclasses say (a field's ``vocab_size`` an integer, its
        ``kind`` one of :data:`FieldKind`, names unique strings, split sizes integers >= 0)."""
        entries = coerce(d["fields"], list[dict], "fields")
        if not entries:
            raise ConfigError("fields: the schema lists no field")
        fields = [FieldSpec(**typed_fields(FieldSpec, f, f"fields[{i}]")) for i, f in enumerate(entries)]
        kinds = typing.get_args(FieldKind)
        for i, f in enumerate(fields):
            if f.kind not in kinds:
                raise ConfigError(f"fields[{i}].kind: expected one of {list(kinds)}, got "
                                  f"{short_repr(f.kind)}")
        names = [f.name for f in fields]
        twice = sorted({n for n in names if names.count(n) > 1})
        if twice:
            raise ConfigError(f"fields: the name {twice[0]!r} is used twice")
        splits = coerce(d["splits"], dict, "splits")
        missing = [name for name in SPLITS if name not in splits]
        if missing:
            raise ConfigError(f"splits: no size for the {missing[0]!r} split")
        sizes = {name: coerce(splits[name], int, f"splits.{name}") for name in SPLITS}
        if any(n < 0 for n in sizes.values()):
            raise ConfigError(f"splits: sizes must be >= 0, got {sizes}")
        return cls(label=coerce(d["label"], str, "label"), fields=fields, splits=sizes,
                   options=coerce(d.get("options") or {}, dict, "options"),
                   content_hash=coerce(d.get("content_hash") or "", str, "content_hash"),
                   format_version=d["format_version"],
                   max_ids=coerce(d.get("max_ids"), list[int] | None, "max_ids"))

    def check_max_ids(self, source: str = "schema") -> None:
        """Every field's recorded largest id must lie below its ``vocab_size`` (a schema.json
        edited after the arrays were written would otherwise train on the wrong rows)."""
        if self.max_ids is None:
            return
        if len(self.max_ids) != self.num_fields:
            raise DataError(f"malformed schema: {len(self.max_ids)} max_ids for {self.num_fields} "
                            "fields", path=source)
        for f, top in zip(self.fields, self.max_ids, strict=True):
            if top >= f.vocab_size:
                raise DataError(f"field {f.name!r} holds ids up to {top} but its vocab_size is "
                                f"{f.vocab_size}: the schema does not match the arrays", path=source)

    def save(self, path: str | Path) -> None:
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> Schema:
        path = Path(path)
        try:
            d = json.loads(path.read_text())
        except FileNotFoundError:
            raise DataError("no schema.json: not a prepared dataset (was `embdim prepare` run to "
                            "the end?)", path=str(path)) from None
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise DataError(f"not valid JSON: {e}", path=str(path)) from None
        return cls.from_dict(d, source=str(path))
