"""DimensionPlan: the artefact every search method produces (``plan.json``).

A plan says how wide each field's embedding is (``dim = 0`` drops the field), which method and
options produced it, and which dataset (schema content hash) it was searched on. It is plain, typed
data: it loads from JSON without executing anything and can be applied to any base model.

Optional parts, filled by the methods that need them:

* ``kept_indices`` (SSEDS): per field, which columns of the pretrained full-width table were kept;
* ``value_dim_rule`` (MDE, NIS, AutoEmb on CTR data and on streams): the rule that maps a value's
  frequency/popularity to a width (a streaming run's ``kind: "popularity_buckets"`` rows, see
  :mod:`embdim.autoemb.plan`); with ``"blocks"`` in it (MDE's per-frequency-block variant, NIS's
  multi-size embedding), per field the list of its blocks ``{"start", "stop", "dim"[,
  "reserved_ids"]}`` (see :mod:`embdim.nn.block_embedding`): the model then has one table per
  block of ``dim > 0`` (a block of ``dim`` 0 has no embedding), ``dims[i]`` is field ``i``'s
  largest block width (0: the field is dropped) and ``embedding_params`` counts ``sum n_k * d_k``
  over the blocks;
* ``embedding`` (pruning and quantisation methods: PEP, DeepLight, DPQ, MGQE; AutoEmb's streaming
  mixture, ``kind: "autoemb_mixture"``, which no CTR base model builds): an embedding that
  is not a set of dense per-field tables, ``{"kind": ..., "embedding_params": N, "params_note": ...,
  <the kind's options>}``. ``kind`` names a builder registered in :mod:`embdim.nn.plan_embeddings`;
  ``embedding_params`` is the method's honest count on the common basis (non-zero entries of a
  pruned table; codebooks plus code bits in 32-bit parameters) and ``params_note`` says how it was
  counted. Arrays the embedding needs (a pruning mask, initial weights) are the plan's ``payload``,
  saved beside ``plan.json`` as ``plan.payload.npz`` (plain arrays, read with
  ``allow_pickle=False``; ``embedding["payload"]`` names the file), so a plan stays one artefact that
  loads without executing anything;
* ``extra``: method-specific results (final architecture weights, saliency matrix, ...).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embdim.config import coerce
from embdim.errors import ConfigError, EmbdimError, SchemaMismatchError
from embdim.io import atomic_write, atomic_write_json

PLAN_FORMAT_VERSION = 1
MAX_DIM = 1 << 16  # the widest embedding a plan may ask for (a larger one is a corrupt plan)


def _check_value_blocks(blocks: Any, names: list[str], vocab_sizes: list[int], dims: list[int]) -> None:
    """MDE's and NIS's ``value_dim_rule["blocks"]``: per field, blocks ``{"start", "stop", "dim"[,
    "reserved_ids"]}`` of integers that hold each id ``0 .. vocab_size - 1`` exactly once, widths
    ``0 .. MAX_DIM`` (0: the block's values have no embedding), the field's ``dim`` its largest block
    width; else a ConfigError naming the place."""
    blocks = coerce(blocks, list[list[dict]], "value_dim_rule.blocks")
    if len(blocks) != len(names):
        raise ConfigError(f"value_dim_rule.blocks: {len(blocks)} fields of blocks for {len(names)} "
                          "fields")
    for f, (name, vocab, field_blocks) in enumerate(zip(names, vocab_sizes, blocks, strict=True)):
        where = f"value_dim_rule.blocks[{f}]"
        spans = []
        for k, b in enumerate(field_blocks):
            at = f"{where}[{k}]"
            start, stop = coerce(b["start"], int, f"{at}.start"), coerce(b["stop"], int, f"{at}.stop")
            dim = coerce(b["dim"], int, f"{at}.dim")
            if not 0 <= dim <= MAX_DIM:
                raise ConfigError(f"{at}.dim: expected 0..{MAX_DIM:,}, got {dim}")
            reserved = coerce(b.get("reserved_ids", []), list[int], f"{at}.reserved_ids")
            if stop < start or stop - start + len(reserved) < 1:
                raise ConfigError(f"{at}: an empty block (start {start}, stop {stop})")
            spans += [(start, stop)] if stop > start else []
            spans += [(i, i + 1) for i in reserved]
        covered = 0
        for start, stop in sorted(spans):
            if start != covered:
                raise ConfigError(f"{where}: the blocks of field {name!r} must hold each id "
                                  f"0..{vocab - 1} exactly once")
            covered = stop
        if covered != vocab:
            raise ConfigError(f"{where}: the blocks of field {name!r} must hold each id "
                              f"0..{vocab - 1} exactly once")
        widest = max((int(b["dim"]) for b in field_blocks), default=0)
        if widest != dims[f]:
            raise ConfigError(f"{where}: field {name!r} has dim {dims[f]} but its widest block "
                              f"has {widest}")


def width_overlap(a: list[int], b: list[int]) -> float:
    """How alike two plans' widths are: ``sum_i min(a_i, b_i) / sum_i max(a_i, b_i)`` (1: the same
    widths, 0: no field kept by both)."""
    top = sum(max(x, y) for x, y in zip(a, b, strict=True))
    return sum(min(x, y) for x, y in zip(a, b, strict=True)) / top if top else 1.0


@dataclass
class DimensionPlan:
    """Per-field embedding widths, with provenance."""

    method: str
    field_names: list[str]
    vocab_sizes: list[int]
    dims: list[int]
    full_dim: int  # the width of the full-dimension (FDE) baseline the plan is compared with
    schema_hash: str = ""
    options: dict[str, Any] = field(default_factory=dict)
    kept_indices: list[list[int]] | None = None
    value_dim_rule: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
    format_version: int = PLAN_FORMAT_VERSION
    embedding: dict[str, Any] | None = None
    payload: dict[str, np.ndarray] = field(default_factory=dict, repr=False, compare=False)

    def __post_init__(self) -> None:
        n = len(self.field_names)
        if len(self.vocab_sizes) != n or len(self.dims) != n:
            raise EmbdimError(f"plan has {n} field names, {len(self.vocab_sizes)} vocab sizes and "
                              f"{len(self.dims)} dims: they must match")
        if any(d < 0 for d in self.dims):
            raise EmbdimError(f"plan dims must be >= 0, got {self.dims}")
        if self.full_dim < 1 or any(v < 1 for v in self.vocab_sizes):
            raise EmbdimError(f"plan full_dim and vocab sizes must be >= 1 (full_dim {self.full_dim}, "
                              f"vocab sizes {self.vocab_sizes})")
        if max(self.dims, default=0) > MAX_DIM or self.full_dim > MAX_DIM:
            raise EmbdimError(f"plan widths must be at most {MAX_DIM:,} (dims {self.dims}, full_dim "
                              f"{self.full_dim}): refused before allocating the tables")
        if all(d == 0 for d in self.dims):
            raise EmbdimError("plan drops every field")
        if self.kept_indices is not None:
            if len(self.kept_indices) != n:
                raise EmbdimError("kept_indices must have one entry per field")
            for name, d, idx in zip(self.field_names, self.dims, self.kept_indices, strict=True):
                if len(idx) != d:
                    raise EmbdimError(f"field {name!r}: dim {d} but {len(idx)} kept indices")
        if self.embedding is not None:
            _check_embedding_entry(self.embedding)

    # ---- construction -------------------------------------------------------------------------
    @classmethod
    def uniform(cls, schema, dim: int, *, method: str = "fde", full_dim: int | None = None,
                options: dict[str, Any] | None = None) -> DimensionPlan:
        """Every field at width ``dim`` (the FDE baseline)."""
        return cls(method=method, field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                   dims=[int(dim)] * schema.num_fields, full_dim=int(full_dim or dim),
                   schema_hash=schema.content_hash, options=dict(options or {}))

    # ---- derived quantities -------------------------------------------------------------------
    @property
    def kept_fields(self) -> list[int]:
        """Indices of the fields with ``dim > 0``."""
        return [i for i, d in enumerate(self.dims) if d > 0]

    @property
    def dropped_fields(self) -> list[str]:
        return [n for n, d in zip(self.field_names, self.dims, strict=True) if d == 0]

    @property
    def max_dim(self) -> int:
        return max(self.dims)

    @property
    def embedding_params(self) -> int:
        """Number of embedding-table entries: sum over fields of vocab_size x dim (with frequency
        blocks in ``value_dim_rule``: sum over blocks of n_k x d_k; with an ``embedding`` entry: the
        count its method recorded, see ``embedding["params_note"]``)."""
        if self.embedding is not None:
            return int(self.embedding["embedding_params"])
        if self.value_dim_rule and "blocks" in self.value_dim_rule:
            return sum((int(b["stop"]) - int(b["start"]) + len(b.get("reserved_ids", []))) * int(b["dim"])
                       for field in self.value_dim_rule["blocks"] for b in field)
        return sum(v * d for v, d in zip(self.vocab_sizes, self.dims, strict=True))

    @property
    def fde_embedding_params(self) -> int:
        """Entries of the full-dimension baseline: every field at ``full_dim``."""
        return sum(self.vocab_sizes) * self.full_dim

    def dims_by_field(self) -> dict[str, int]:
        return dict(zip(self.field_names, self.dims, strict=True))

    def to_torchrec(self, schema=None, *, round_to: int = 4) -> list:
        """TorchRec ``EmbeddingBagConfig``s: one table per kept field (``dim 0`` fields, listed in
        :attr:`dropped_fields`, get none), ``num_embeddings`` = the field's vocabulary size, width
        rounded up to a multiple of ``round_to`` (FBGEMM's sharded kernels need multiples of 4;
        ``1`` keeps exact widths), SUM pooling. Checked against ``schema`` when given. Needs the
        ``torchrec`` extra; see :mod:`embdim.export.torchrec`."""
        from embdim.export.torchrec import embedding_bag_configs

        return embedding_bag_configs(self, schema, round_to=round_to)

    def rounded(self, multiple: int) -> DimensionPlan:
        """This plan with every kept width rounded **up** to a multiple of ``multiple`` (the widths
        FBGEMM's sharded TorchRec kernels accept: 4; docs/serving.md), to retrain at those widths.

        Dropped fields stay dropped; MDE frequency blocks are rounded block by block; SSEDS's
        ``kept_indices`` gain the lowest pretrained columns not yet kept (a field that would need
        more than ``full_dim`` columns is refused). The result records ``options["round_to"]``,
        ``extra["unrounded_dims"]`` and ``extra["unrounded_embedding_params"]``; ``multiple=1`` (or
        widths already at multiples) returns an equal plan.
        """
        from embdim.export.torchrec import round_up

        round_up(1, multiple)  # validates multiple
        dims = [round_up(d, multiple) if d else 0 for d in self.dims]
        if dims == self.dims and not (self.value_dim_rule and "blocks" in self.value_dim_rule):
            return DimensionPlan.from_dict(self.to_dict())
        kept = None
        if self.kept_indices is not None:
            kept = []
            for name, idx, d in zip(self.field_names, self.kept_indices, dims, strict=True):
                spare = [c for c in range(self.full_dim) if c not in set(idx)]
                if d - len(idx) > len(spare):
                    raise EmbdimError(f"round_to {multiple}: field {name!r} would need {d} of the "
                                      f"{self.full_dim} pretrained columns")
                kept.append(sorted([*idx, *spare[:d - len(idx)]]))
        rule = self.value_dim_rule
        if rule and "blocks" in rule:
            rule = {**rule, "blocks": [[{**b, "dim": round_up(int(b["dim"]), multiple)} for b in field]
                                       for field in rule["blocks"]]}
        extra = {**self.extra, "unrounded_dims": list(self.dims),
                 "unrounded_embedding_params": int(self.embedding_params)}
        return DimensionPlan(method=self.method, field_names=list(self.field_names),
                             vocab_sizes=list(self.vocab_sizes), dims=dims, full_dim=self.full_dim,
                             schema_hash=self.schema_hash, options={**self.options, "round_to": multiple},
                             kept_indices=kept, value_dim_rule=rule, extra=extra)

    # ---- validation against a dataset ---------------------------------------------------------
    def check_schema(self, schema) -> None:
        """Refuse a plan made for another dataset, saying what differs."""
        problems = []
        if self.field_names != schema.field_names:
            problems.append(f"fields differ: plan {self.field_names} vs dataset {schema.field_names}")
        elif self.vocab_sizes != schema.vocab_sizes:
            diff = [f"{n}: {a} vs {b}" for n, a, b in
                    zip(self.field_names, self.vocab_sizes, schema.vocab_sizes, strict=True) if a != b]
            problems.append("vocabulary sizes differ (plan vs dataset): " + ", ".join(diff))
        if self.schema_hash and schema.content_hash and self.schema_hash != schema.content_hash:
            problems.append(f"schema hash differs: plan {self.schema_hash} vs dataset "
                            f"{schema.content_hash}")
        if problems:
            raise SchemaMismatchError("plan does not match the dataset: " + "; ".join(problems))

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        fields = []
        for i, (name, vocab, dim) in enumerate(zip(self.field_names, self.vocab_sizes, self.dims,
                                                   strict=True)):
            entry: dict[str, Any] = {"name": name, "vocab_size": vocab, "dim": dim}
            if self.kept_indices is not None:
                entry["kept_indices"] = list(self.kept_indices[i])
            fields.append(entry)
        return {
            "format_version": self.format_version,
            "method": self.method,
            "options": self.options,
            "schema_hash": self.schema_hash,
            "full_dim": self.full_dim,
            "embedding_params": self.embedding_params,
            "fde_embedding_params": self.fde_embedding_params,
            "dropped_fields": self.dropped_fields,
            "fields": fields,
            "value_dim_rule": self.value_dim_rule,
            "embedding": self.embedding,
            "extra": self.extra,
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> DimensionPlan:
        if not isinstance(d, dict):
            raise EmbdimError(f"malformed plan: expected a JSON object, got {type(d).__name__}")
        if d.get("kind") == "stream":
            raise EmbdimError("this is an AutoEmb streaming plan in the format of older run "
                              "folders; read it with embdim.autoemb.plan.load_stream_plan")
        if d.get("format_version") != PLAN_FORMAT_VERSION:
            raise EmbdimError(f"unsupported plan format_version {d.get('format_version')!r}")
        try:
            return cls._typed_from_dict(d)
        except ConfigError as e:  # a value of the wrong type, named by its place in the file
            raise EmbdimError(f"malformed plan: {e}") from None
        except (KeyError, TypeError, ValueError) as e:
            raise EmbdimError(f"malformed plan: {e!r}") from e

    @classmethod
    def _typed_from_dict(cls, d: dict[str, Any]) -> DimensionPlan:
        """Every value typed as the dataclass says (``dim: 2.5`` or ``true`` is not a width), the
        mappings checked to be mappings, MDE's frequency blocks checked against the fields."""
        fields = coerce(d["fields"], list[dict], "fields")
        if not fields:
            raise ConfigError("fields: the plan lists no field")
        names = [coerce(f["name"], str, f"fields[{i}].name") for i, f in enumerate(fields)]
        vocab_sizes = [coerce(f["vocab_size"], int, f"fields[{i}].vocab_size")
                       for i, f in enumerate(fields)]
        dims = [coerce(f["dim"], int, f"fields[{i}].dim") for i, f in enumerate(fields)]
        kept = None
        if "kept_indices" in fields[0]:
            kept = [coerce(f["kept_indices"], list[int], f"fields[{i}].kept_indices")
                    for i, f in enumerate(fields)]
        rule = coerce(d.get("value_dim_rule"), dict | None, "value_dim_rule")
        if rule is not None and "blocks" in rule:
            _check_value_blocks(rule["blocks"], names, vocab_sizes, dims)
        return cls(method=coerce(d["method"], str, "method"), field_names=names,
                   vocab_sizes=vocab_sizes, dims=dims, full_dim=coerce(d["full_dim"], int, "full_dim"),
                   schema_hash=coerce(d.get("schema_hash") or "", str, "schema_hash"),
                   options=coerce(d.get("options") or {}, dict, "options"), kept_indices=kept,
                   value_dim_rule=rule, extra=coerce(d.get("extra") or {}, dict, "extra"),
                   embedding=coerce(d.get("embedding"), dict | None, "embedding"))

    def save(self, path: str | Path) -> None:
        """Write ``plan.json`` (and, for a plan with a payload, ``plan.payload.npz`` beside it,
        written first so the JSON never names a missing file)."""
        path = Path(path)
        if self.payload:
            if self.embedding is None:
                raise EmbdimError("a plan payload needs an embedding entry that names its kind")
            name = payload_path(path).name
            atomic_write(payload_path(path), lambda f: np.savez_compressed(f, **self.payload),
                         mode="wb")
            self.embedding["payload"] = name
        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> DimensionPlan:
        d = read_plan_json(path)
        try:
            plan = cls.from_dict(d)
            if plan.embedding is not None and "payload" in plan.embedding:
                plan.payload = _load_payload(Path(path).parent / str(plan.embedding["payload"]))
            return plan
        except EmbdimError as e:
            raise type(e)(f"{path}: {e}") from None


def read_plan_json(path: str | Path) -> Any:
    """The parsed JSON of a plan file, or an EmbdimError naming the file (missing, not JSON)."""
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError:
        raise EmbdimError(f"{path}: plan file not found") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise EmbdimError(f"{path}: not valid JSON: {e}") from None


def payload_path(plan_path: str | Path) -> Path:
    """Where the payload arrays of the plan saved at ``plan_path`` go: ``<stem>.payload.npz``."""
    plan_path = Path(plan_path)
    return plan_path.with_name(f"{plan_path.stem}.payload.npz")


def _load_payload(path: Path) -> dict[str, np.ndarray]:
    """The arrays of a plan payload file (plain arrays only: nothing is executed)."""
    import zipfile

    try:
        with np.load(path, allow_pickle=False) as npz:
            return {k: npz[k] for k in npz.files}
    except FileNotFoundError:
        raise EmbdimError(f"the plan's payload file {path.name} is missing (it belongs beside "
                          "plan.json)") from None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise EmbdimError(f"the plan's payload file {path.name} is corrupt: {e}") from None


def _check_embedding_entry(entry: dict[str, Any]) -> None:
    """A plan's ``embedding`` entry: a mapping with a ``kind`` name and an ``embedding_params`` count."""
    kind = coerce(entry.get("kind"), str, "embedding.kind")
    if not kind:
        raise ConfigError("embedding.kind: a non-empty name is required")
    if coerce(entry.get("embedding_params"), int, "embedding.embedding_params") < 0:
        raise ConfigError("embedding.embedding_params: expected >= 0")
