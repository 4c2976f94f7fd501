"""TorchRec export: a :class:`~embdim.plan.DimensionPlan` as ``EmbeddingBagConfig``s, a run's trained
embedding tables as an ``EmbeddingBagCollection`` state dict, and ``embdim export --format torchrec``.

Tables
------
One ``EmbeddingBagConfig`` per kept field (TorchRec's convention: one table per sparse feature):

* ``name = "t_<field>"`` (characters other than letters, digits and ``_`` become ``_``: TorchRec keys
  its modules by table name), ``feature_names = [<field>]``: the ``KeyedJaggedTensor`` key is the
  field name;
* ``num_embeddings`` = the field's vocabulary size. The ids are those of the prepared dataset
  (:mod:`embdim.data.schema`): field-local, ``0`` = out-of-vocabulary, ``1`` = missing, ``2..`` the
  kept values by descending training frequency; data fed to the tables must be encoded the same way;
* ``embedding_dim`` = the plan's width rounded **up** to a multiple of ``round_to`` (default 4);
* ``pooling = SUM``: an embdim field holds one id per example, so the pooled bag is that id's row.

A field with width 0 (dropped by the search) gets no table; :attr:`TorchRecExport.dropped_fields`
lists them.

Why widths are rounded up to a multiple of 4
--------------------------------------------
An unsharded ``EmbeddingBagCollection`` (one ``nn.EmbeddingBag`` per table) accepts any width.
Sharded and fused tables (``DistributedModelParallel``, ``FusedEmbeddingBagCollection``) run on
FBGEMM's table-batched embedding (TBE) kernels, which refuse a width that is not a multiple of 4
(``embedding_dim must be a multiple of 4``; each column-wise shard must be one too). Searched widths
are arbitrary (AutoDim candidates of 2, SSEDS's per-field pruned widths), so by default each is
rounded up; ``round_to=1`` keeps the exact widths for unsharded use. Exported weights fill the added
columns with zeros and the linear alignment gets zero rows for them, so a model reading the tables
computes exactly what the embdim model did; only the table memory grows
(:attr:`TorchRecExport.embedding_params` vs :attr:`TorchRecExport.plan_embedding_params`).

Plans with per-value widths (MDE ``blocks: K``) have several tables of different widths per field;
TorchRec has one width per table, so such a field's table gets its largest block width (``plan.dims``)
and the per-block saving is not represented. Their trained weights are not exported.

Trained weights
---------------
:func:`export_weights` reads a run folder's ``checkpoints/best.pt`` (``weights_only=True``, nothing
executed), takes each kept field's rows from the model's embedding layer, zero-pads the rounded
columns and returns them keyed as an ``EmbeddingBagCollection`` state dict
(``embedding_bags.<table>.weight``), with each field's linear alignment ``W_i [d_i, D]`` (and ``b_i``)
when the model has one: the model's aligned field embedding is ``pooled[field] @ W_i (+ b_i)``. The
first-order (wide / FM linear) weights and the model body are not part of the export.

TorchRec is an optional dependency (``pip install embdim[torchrec]``, CPU recipe in
docs/torchrec.md). It is imported only where TorchRec objects are built (:meth:`TorchRecExport.configs`,
:meth:`TorchRecExport.embedding_bag_collection`, :func:`load_configs`); planning the export, writing
its JSON and exporting weights need torch only.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from embdim.errors import EmbdimError, SchemaMismatchError

EXPORT_FORMAT = "embdim-torchrec/1"
WEIGHTS_FORMAT = "embdim-torchrec-weights/1"
DEFAULT_ROUND_TO = 4
ID_CONVENTION = ("field-local ids of the prepared dataset: 0 = out-of-vocabulary, 1 = missing, "
                 "2.. = kept values by descending training frequency")
INSTALL_HINT = ("install the TorchRec extra: `pip install \"embdim[torchrec]\"` on a CUDA machine; on a "
                "CPU-only machine `pip install \"embdim[torchrec-cpu]\"` then `pip install --no-deps "
                "torchrec==1.8.0` (see docs/torchrec.md)")


def require_torchrec():
    """Import TorchRec, or raise an :class:`EmbdimError` that says how to install it."""
    try:
        import torchrec
    except (ImportError, OSError) as e:  # OSError: FBGEMM's shared library failed to load
        raise EmbdimError(f"TorchRec is not available ({e}); {INSTALL_HINT}") from e
    return torchrec


def round_up(dim: int, multiple: int) -> int:
    """The smallest multiple of ``multiple`` that is ``>= dim`` (``dim`` itself when ``multiple`` is 1)."""
    if multiple < 1:
        raise EmbdimError(f"round_to must be >= 1, got {multiple}")
    return -(-int(dim) // int(multiple)) * int(multiple)


def table_name(field_name: str) -> str:
    """``t_<field>`` with every character other than a letter, digit or ``_`` replaced by ``_``."""
    return "t_" + re.sub(r"[^0-9A-Za-z_]", "_", field_name)


@dataclass(frozen=True)
class TableSpec:
    """One exported table: what an ``EmbeddingBagConfig`` needs, plus the searched width."""

    name: str
    feature: str  # the field name; the KeyedJaggedTensor key
    field_index: int  # position of the field in the plan / schema
    num_embeddings: int
    embedding_dim: int  # the exported width (rounded up)
    searched_dim: int  # the plan's width

    @property
    def padding(self) -> int:
        """Columns added by rounding (zeros in exported weights)."""
        return self.embedding_dim - self.searched_dim

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "feature_names": [self.feature], "num_embeddings": self.num_embeddings,
                "embedding_dim": self.embedding_dim, "searched_dim": self.searched_dim,
                "field_index": self.field_index}


@dataclass
class TorchRecExport:
    """The TorchRec tables of a plan (see the module docstring); JSON-serialisable."""

    tables: list[TableSpec]
    dropped_fields: list[str]
    round_to: int
    method: str = ""
    schema_hash: str = ""
    plan_embedding_params: int = 0  # what the plan counts (exact widths)
    per_value_widths: bool = False  # the plan has per-value widths (MDE blocks), see module doc
    weights: str | None = None  # file name of the exported weights, when written beside the JSON
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def embedding_params(self) -> int:
        """Entries of the exported tables: sum of ``num_embeddings x embedding_dim``."""
        return sum(t.num_embeddings * t.embedding_dim for t in self.tables)

    @property
    def feature_names(self) -> list[str]:
        return [t.feature for t in self.tables]

    # ---- TorchRec objects ---------------------------------------------------------------------
    def configs(self) -> list:
        """The ``torchrec.EmbeddingBagConfig``s, one per table, SUM pooling."""
        torchrec = require_torchrec()
        return [torchrec.EmbeddingBagConfig(name=t.name, embedding_dim=t.embedding_dim,
                                            num_embeddings=t.num_embeddings, feature_names=[t.feature],
                                            pooling=torchrec.PoolingType.SUM)
                for t in self.tables]

    def embedding_bag_collection(self, weights: dict[str, Any] | str | Path | None = None,
                                 device=None):
        """An ``EmbeddingBagCollection`` over :meth:`configs`; with ``weights`` (the dict returned by
        :func:`export_weights`, or the path of a file written by :func:`save_weights`) its tables
        are loaded from them, otherwise they keep TorchRec's initialisation."""
        import torch

        torchrec = require_torchrec()
        ebc = torchrec.EmbeddingBagCollection(tables=self.configs(),
                                              device=torch.device(device or "cpu"))
        if weights is not None:
            if not isinstance(weights, dict):
                weights = load_weights(weights)
            try:
                ebc.load_state_dict(weights["state_dict"])
            except RuntimeError as e:
                raise SchemaMismatchError(f"the weights do not fit these tables: {e}") from e
        return ebc

    def kjt(self, ids):
        """A ``KeyedJaggedTensor`` of a batch of prepared-dataset rows for these tables.

        ``ids [B, F]``: one row per example, one column per field of the plan (the layout of a
        prepared dataset's ``x`` arrays, dropped fields included), int32/int64 array or tensor. Each
        table's feature gets its field's column, one id per example (lengths 1).
        """
        import torch

        torchrec = require_torchrec()
        ids = torch.as_tensor(ids)
        if ids.dim() != 2:
            raise EmbdimError(f"ids must be [batch, fields], got shape {tuple(ids.shape)}")
        width = 1 + max([t.field_index for t in self.tables] or [-1])
        if ids.shape[1] < width:
            raise EmbdimError(f"ids have {ids.shape[1]} columns but the tables read field {width - 1}")
        cols = torch.tensor([t.field_index for t in self.tables], dtype=torch.long)
        values = ids.index_select(1, cols).t().reshape(-1).long()
        lengths = torch.ones(len(self.tables) * ids.shape[0], dtype=torch.int32)
        return torchrec.KeyedJaggedTensor.from_lengths_sync(keys=self.feature_names, values=values,
                                                            lengths=lengths)

    # ---- (de)serialisation --------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        return {
            "format": EXPORT_FORMAT,
            "method": self.method,
            "schema_hash": self.schema_hash,
            "round_to": self.round_to,
            "pooling": "SUM",
            "ids": ID_CONVENTION,
            "embedding_params": self.embedding_params,
            "plan_embedding_params": self.plan_embedding_params,
            "per_value_widths": self.per_value_widths,
            "dropped_fields": list(self.dropped_fields),
            "weights": self.weights,
            "tables": [t.to_dict() for t in self.tables],
            **({"extra": self.extra} if self.extra else {}),
        }

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TorchRecExport:
        if d.get("format") != EXPORT_FORMAT:
            raise EmbdimError(f"not an embdim TorchRec export (format {d.get('format')!r}, expected "
                              f"{EXPORT_FORMAT!r})")
        try:
            tables = [TableSpec(name=str(t["name"]), feature=str(t["feature_names"][0]),
                                field_index=int(t["field_index"]), num_embeddings=int(t["num_embeddings"]),
                                embedding_dim=int(t["embedding_dim"]), searched_dim=int(t["searched_dim"]))
                      for t in d["tables"]]
            return cls(tables=tables, dropped_fields=list(d.get("dropped_fields", [])),
                       round_to=int(d["round_to"]), method=d.get("method", ""),
                       schema_hash=d.get("schema_hash", ""),
                       plan_embedding_params=int(d.get("plan_embedding_params", 0)),
                       per_value_widths=bool(d.get("per_value_widths", False)),
                       weights=d.get("weights"), extra=dict(d.get("extra") or {}))
        except (KeyError, IndexError, TypeError, ValueError) as e:
            raise EmbdimError(f"malformed TorchRec export: {e!r}") from e

    def save(self, path: str | Path) -> None:
        from embdim.io import atomic_write_json

        atomic_write_json(path, self.to_dict())

    @classmethod
    def load(cls, path: str | Path) -> TorchRecExport:
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except FileNotFoundError:
            raise EmbdimError(f"{path}: file not found") from None
        except json.JSONDecodeError as e:
            raise EmbdimError(f"{path}: not valid JSON: {e}") from e


def torchrec_export(plan, schema=None, *, round_to: int = DEFAULT_ROUND_TO) -> TorchRecExport:
    """The TorchRec tables of ``plan`` (no TorchRec needed). With ``schema``, the plan is first
    checked against it (a plan searched on another dataset is refused, saying what differs)."""
    if schema is not None:
        plan.check_schema(schema)
    round_to = int(round_to)
    round_up(1, round_to)  # validates round_to
    tables, names = [], set()
    for i, (fname, vocab, dim) in enumerate(zip(plan.field_names, plan.vocab_sizes, plan.dims,
                                                strict=True)):
        if dim == 0:
            continue
        name = table_name(fname)
        if name in names:  # two field names that differ only in replaced characters
            name = f"{name}_{i}"
        names.add(name)
        tables.append(TableSpec(name=name, feature=fname, field_index=i, num_embeddings=int(vocab),
                                embedding_dim=round_up(dim, round_to), searched_dim=int(dim)))
    return TorchRecExport(tables=tables, dropped_fields=list(plan.dropped_fields), round_to=round_to,
                          method=plan.method, schema_hash=plan.schema_hash,
                          plan_embedding_params=int(plan.embedding_params),
                          per_value_widths=bool(plan.value_dim_rule))


def embedding_bag_configs(plan, schema=None, *, round_to: int = DEFAULT_ROUND_TO) -> list:
    """``torchrec.EmbeddingBagConfig``s for ``plan``: one per kept field (see the module docstring)."""
    return torchrec_export(plan, schema, round_to=round_to).configs()


def load_configs(path: str | Path) -> list:
    """The ``EmbeddingBagConfig``s of a JSON file written by ``embdim export --format torchrec``."""
    return TorchRecExport.load(path).configs()


# ---- trained weights ---------------------------------------------------------------------------
def _checkpoint_path(source: Path) -> Path:
    if source.is_file():
        return source
    path = source / "checkpoints" / "best.pt"
    if not path.exists():
        raise EmbdimError(f"{source}: no checkpoints/best.pt (not a run folder, or the run has not "
                          "trained an epoch yet)")
    return path


def export_weights(run_dir: str | Path, export: TorchRecExport | None = None, *, plan=None,
                   checkpoint: str | Path | None = None) -> dict[str, Any]:
    """The trained embedding tables of a run as an ``EmbeddingBagCollection`` state dict.

    Args:
        run_dir: a run folder (``plan.json`` and ``checkpoints/best.pt``).
        export: the tables to fill (default: :func:`torchrec_export` of the run's plan, widths
            rounded to multiples of 4); rounded columns are zero.
        plan: the run's plan (default: ``run_dir/plan.json``).
        checkpoint: another checkpoint of the same run (default ``checkpoints/best.pt``).

    Returns a dict of plain tensors and values (``torch.save`` / ``torch.load(weights_only=True)``
    safe): ``state_dict`` (``embedding_bags.<table>.weight`` -> ``[num_embeddings, embedding_dim]``),
    ``alignment`` (field -> ``{"weight": [embedding_dim, D]``, and ``"bias": [D]`` if the model has
    one``}``; empty when the model has no linear alignment), ``out_dim`` (``D`` or ``None``),
    ``checkpoint``, ``epoch``, ``format``.
    """
    import torch
    from torch.nn import functional as F

    from embdim.nn.embedding import FieldEmbedding
    from embdim.plan import DimensionPlan
    from embdim.train.trainer import CHECKPOINT_FORMAT

    run_dir = Path(run_dir)
    if plan is None:
        plan = DimensionPlan.load(run_dir / "plan.json")
    if export is None:
        export = torchrec_export(plan)
    if plan.value_dim_rule and "blocks" in plan.value_dim_rule:
        raise EmbdimError("the plan has per-frequency-block tables (MDE blocks): each block has its "
                          "own width and projection, which one TorchRec table per field cannot hold; "
                          "export the table configs only (without weights)")
    path = Path(checkpoint) if checkpoint is not None else _checkpoint_path(run_dir)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EmbdimError(f"{path}: checkpoint not found") from None
    except Exception as e:  # a corrupt or foreign file
        raise EmbdimError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise EmbdimError(f"{path}: not an embdim checkpoint")
    ck_dims = (state.get("fingerprint") or {}).get("dims")
    if ck_dims is not None and list(ck_dims) != list(plan.dims):
        raise SchemaMismatchError(f"{path} was trained with dims {list(ck_dims)}, the plan has "
                                  f"{list(plan.dims)}")

    emb = {k[len("embedding."):]: v for k, v in state["model"].items() if k.startswith("embedding.")}
    if not emb:
        raise EmbdimError(f"{path}: the model has no embedding tables (a first-order-only model)")
    linear = [v for k, v in emb.items() if re.fullmatch(r"groups\.\d+\.weight", k)]
    placed = [v for k, v in emb.items() if re.fullmatch(r"groups\.\d+\.placement", k)]
    has_bias = any(re.fullmatch(r"groups\.\d+\.bias", k) for k in emb)
    if placed:  # align: scatter (SSEDS): fixed one-hot W_i, handed on like a linear alignment
        layer = FieldEmbedding(plan.vocab_sizes, plan.dims, align="scatter",
                               out_dim=int(placed[0].shape[-1]), positions=plan.kept_indices)
    else:
        layer = FieldEmbedding(plan.vocab_sizes, plan.dims, align="linear" if linear else "pad",
                               out_dim=int(linear[0].shape[-1]) if linear else None, bias=has_bias)
    linear = linear or placed
    try:
        layer.load_state_dict(emb)
    except RuntimeError as e:
        raise SchemaMismatchError(f"{path}: its embedding layer does not match the plan: {e}") from e

    state_dict, alignment = {}, {}
    with torch.no_grad():
        for t in export.tables:
            i = t.field_index
            if plan.field_names[i] != t.feature or plan.dims[i] != t.searched_dim:
                raise SchemaMismatchError(f"table {t.name} ({t.feature}, width {t.searched_dim}) does "
                                          f"not match the plan's field {i} ({plan.field_names[i]}, "
                                          f"width {plan.dims[i]})")
            rows = layer.field_weight(i).float()
            state_dict[f"embedding_bags.{t.name}.weight"] = F.pad(rows, (0, t.padding)).contiguous().clone()
            aligned = layer.field_alignment(i)
            if aligned is None and layer.field_placement(i) is not None:  # the fixed placement
                aligned = layer.field_placement(i), None
            if aligned is not None:
                w, b = aligned
                entry = {"weight": F.pad(w.float(), (0, 0, 0, t.padding)).contiguous().clone()}
                if b is not None:
                    entry["bias"] = b.float().contiguous().clone()
                alignment[t.feature] = entry
    return {"format": WEIGHTS_FORMAT, "state_dict": state_dict, "alignment": alignment,
            "out_dim": int(linear[0].shape[-1]) if linear else None, "checkpoint": str(path),
            "epoch": int(state.get("epoch", 0))}


def save_weights(path: str | Path, weights: dict[str, Any]) -> None:
    """Write the dict of :func:`export_weights` atomically with ``torch.save``."""
    from embdim.io import atomic_torch_save

    atomic_torch_save(path, weights)


def load_weights(path: str | Path) -> dict[str, Any]:
    """Read a file written by :func:`save_weights` (``weights_only=True``: nothing is executed)."""
    import torch

    try:
        weights = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise EmbdimError(f"{path}: file not found") from None
    except Exception as e:
        raise EmbdimError(f"{path}: cannot read weights: {e}") from e
    if not isinstance(weights, dict) or weights.get("format") != WEIGHTS_FORMAT:
        raise EmbdimError(f"{path}: not an embdim TorchRec weights file")
    return weights


# ---- the `embdim export --format torchrec` command -------------------------------------------
def _run_schema(run_dir: Path | None, data: str | None):
    """The schema to check against: ``--data``, else the run's ``data.path`` if it is still there."""
    from embdim.data.schema import Schema

    if data is not None:
        return Schema.load(Path(data) / "schema.json")
    if run_dir is None or not (run_dir / "config.yaml").exists():
        return None
    import yaml

    cfg = yaml.safe_load((run_dir / "config.yaml").read_text()) or {}
    path = (cfg.get("data") or {}).get("path")
    if path and (Path(path) / "schema.json").exists():
        return Schema.load(Path(path) / "schema.json")
    return None


def cli_export(args: argparse.Namespace) -> int:
    """``embdim export RUN_OR_PLAN --format torchrec`` (the parser: :mod:`embdim.export.command`)."""
    from embdim.plan import DimensionPlan

    source = Path(args.source)
    if source.is_dir():
        run_dir, plan_path = source, source / "plan.json"
        if not plan_path.exists():
            raise EmbdimError(f"{source}: no plan.json (not a run or search folder)")
    elif source.exists():
        run_dir, plan_path = None, source
    else:
        raise EmbdimError(f"{source}: no such run folder or plan file")
    plan = DimensionPlan.load(plan_path)
    schema = _run_schema(run_dir, args.data)
    round_to = DEFAULT_ROUND_TO if args.round_to is None else args.round_to
    export = torchrec_export(plan, schema, round_to=round_to)

    if args.out is None:
        raise EmbdimError("--format torchrec needs --out FILE (the JSON of table configs)")
    out = Path(args.out)
    weights_path = None
    if args.weights:
        if run_dir is None:
            raise EmbdimError("--weights needs a run folder (with checkpoints/best.pt), not a plan file")
        weights_path = out.with_suffix(".pt")
        if weights_path == out:
            raise EmbdimError(f"--out {out}: give the JSON file a suffix other than .pt")
        save_weights(weights_path, export_weights(run_dir, export, plan=plan))
        export.weights = weights_path.name
    export.save(out)

    print(f"TorchRec tables (EmbeddingBagConfig, SUM pooling) of the {plan.method} plan:")
    for t in export.tables:
        rounded = f" (searched {t.searched_dim})" if t.padding else ""
        print(f"  {t.name}: {t.num_embeddings:,} x {t.embedding_dim}{rounded}")
    if export.dropped_fields:
        print(f"dropped fields (width 0, no table): {', '.join(export.dropped_fields)}")
    if export.per_value_widths:
        print("note: the plan has per-value widths; each field's table has its largest width",
              file=sys.stderr)
    if schema is None:
        print("note: the plan was not checked against a dataset (pass --data DIR to check it)",
              file=sys.stderr)
    print(f"{len(export.tables)} tables, {export.embedding_params:,} embedding parameters "
          f"(plan: {export.plan_embedding_params:,}, rounded to multiples of {export.round_to}) -> {out}"
          + (f" and {weights_path}" if weights_path else ""))
    return 0
