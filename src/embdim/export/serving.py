"""Serving export: a finished run's retrained model as an ONNX graph or a ``torch.export`` program,
with a JSON sidecar that says how to encode a request.

The exported model
------------------
One input, one output, whatever the base model, plan or alignment:

* ``ids``: int64 ``[B, F]``, one row per example, one column per field of the dataset in schema order
  (dropped fields included: their column is read by nothing), each a field-local id of the prepared
  dataset (``0`` = out-of-vocabulary, ``1`` = missing, ``2..`` the kept values);
* ``probability``: float32 ``[B]``, ``sigmoid(logit)`` of the model in eval mode (dropout off,
  BatchNorm on its running statistics).

``B`` is dynamic. The graph is the retrained :class:`~embdim.nn.models.RecModel` itself (mixed-width
tables, their alignment, the body and the first-order part), traced by ``torch.export``; nothing is
re-implemented, so the exported model computes what the PyTorch model computes
(``tests/test_serving_export.py`` checks it to 1e-5 on onnxruntime for every base model, a plan with
a dropped field, SSEDS's scatter alignment and MDE's frequency blocks).

Formats
-------
* ``onnx``: ``torch.onnx.export(..., dynamo=True)`` (needs ``onnx`` and ``onnxscript``; run it with
  ``onnxruntime``: the ``export`` extra). Tables over 2 GB go to an external data file beside it.
* ``torch-export``: ``torch.export.save`` of the exported program (``.pt2``); load with
  ``torch.export.load(path).module()`` (torch only), or compile it ahead of time with AOTInductor.

The sidecar (``<out>.json``, format ``embdim-serving/1``)
---------------------------------------------------------
What a server needs to turn raw values into the ``ids`` row and to check it has the right model: the
dataset's ``schema_hash`` and ``vocabulary_hash``, the fields in column order with ``vocab_size``,
``kind``, ``dim`` (0 = dropped) and ``kept`` flag, the reserved ids (``oov_id`` 0, ``missing_id``
1, ``first_value_id`` 2), the preprocessing options of ``embdim prepare`` (``min_count``, numeric
bucket edges, ...), the input and output names, dtypes and shapes, the plan's method and widths,
the model, embedding parameters and the checkpoint's epoch. When the run's dataset folder is still
there, its ``vocabulary.parquet`` (``field, value, id, count``) is copied beside the model and named in
``vocabulary_file``: encode a value by looking it up in its field, ``oov_id`` if absent,
``missing_id`` if missing.

``round_to``
------------
``round_to=N`` (``--round-to N``) exports each table rounded up to a multiple of ``N`` columns, the
added columns zero and each field aligned through a linear map with zero rows for them (``pad`` and
``scatter`` alignments become their fixed one-hot maps), so the output is unchanged and only the
table memory grows: the sidecar reports ``embedding_params`` (exported) and
``plan_embedding_params``. To *train* at rounded widths instead, set ``round_to`` in the ``method:``
section (:func:`embdim.plan.DimensionPlan.rounded`).
"""

from __future__ import annotations

import argparse
import logging
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from embdim.errors import ConfigError, EmbdimError, SchemaMismatchError

SIDECAR_FORMAT = "embdim-serving/1"
FORMATS = ("onnx", "torch-export")
SUFFIXES = {"onnx": ".onnx", "torch-export": ".pt2"}
INPUT_NAME, OUTPUT_NAME = "ids", "probability"
ONNX_OPSET = 18
INSTALL_HINT = "install the export extra: `pip install \"embdim[export]\"` (onnx, onnxscript, onnxruntime)"


class ServingModel(nn.Module):
    """``ids [B, F] int64 -> probabilities [B]``: a :class:`~embdim.nn.models.RecModel` with the
    sigmoid applied, for export (call ``.eval()`` first)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, ids: Tensor) -> Tensor:
        return torch.sigmoid(self.model(ids))


# ---- the run's model ---------------------------------------------------------------------------
@dataclass
class RunModel:
    """A finished run's retrained model and what it was built from."""

    model: nn.Module  # RecModel, eval mode, best checkpoint loaded
    plan: Any  # DimensionPlan
    config: Any  # ExperimentConfig
    epoch: int
    checkpoint: Path


def load_run_model(run_dir: str | Path, checkpoint: str | Path | None = None) -> RunModel:
    """Rebuild the retrained model of a run folder (``config.yaml``, ``plan.json``) exactly as
    ``embdim run`` built it, and load ``checkpoints/best.pt`` (``weights_only=True``) into it."""
    import yaml

    from embdim.config import config_from_dict
    from embdim.nn.models import build_model
    from embdim.plan import DimensionPlan
    from embdim.search import make_method
    from embdim.train.trainer import CHECKPOINT_FORMAT

    run_dir = Path(run_dir)
    for name in ("config.yaml", "plan.json"):
        if not (run_dir / name).is_file():
            raise EmbdimError(f"{run_dir}: no {name} (not a run folder)")
    path = Path(checkpoint) if checkpoint is not None else run_dir / "checkpoints" / "best.pt"
    if not path.is_file():
        raise EmbdimError(f"{run_dir}: no {path.relative_to(run_dir) if checkpoint is None else path} "
                          "(the run has not trained an epoch yet, or it was a search only)")
    try:
        cfg = config_from_dict(yaml.safe_load((run_dir / "config.yaml").read_text()) or {})
    except yaml.YAMLError as e:
        raise EmbdimError(f"{run_dir / 'config.yaml'}: not valid YAML: {e}") from None
    plan = DimensionPlan.load(run_dir / "plan.json")
    options = make_method(cfg.method).retrain_model_options(cfg.model, plan)
    model = build_model(cfg.model.name, plan.vocab_sizes, plan, options=options)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a corrupt or foreign file
        raise EmbdimError(f"{path}: cannot read checkpoint: {e}") from e
    if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT or "model" not in state:
        raise EmbdimError(f"{path}: not an embdim checkpoint")
    try:
        model.load_state_dict(state["model"])
    except RuntimeError as e:
        raise SchemaMismatchError(f"{path} does not fit the model of {run_dir} (plan {plan.dims}): "
                                  f"{e}") from e
    return RunModel(model=model.eval(), plan=plan, config=cfg, epoch=int(state.get("epoch", 0)),
                    checkpoint=path)


# ---- rounding the exported tables --------------------------------------------------------------
def rounded_embedding(embedding: nn.Module, round_to: int) -> nn.Module:
    """A copy of a :class:`~embdim.nn.embedding.FieldEmbedding` whose tables are ``round_to``-multiple
    wide and that computes the same output (module docstring, ``round_to``). ``round_to=1`` or a
    layer already at multiples of ``round_to`` returns ``embedding`` itself."""
    from embdim.export.torchrec import round_up
    from embdim.nn.embedding import FieldEmbedding

    if not isinstance(embedding, FieldEmbedding):
        raise EmbdimError(f"--round-to applies to per-field tables; this model's embedding is a "
                          f"{type(embedding).__name__} (per-frequency-block tables cannot be rounded "
                          "on export)")
    dims = [round_up(d, round_to) if d else 0 for d in embedding.dims]
    if dims == embedding.dims:
        return embedding
    out = FieldEmbedding(embedding.vocab_sizes, dims, align="linear", out_dim=embedding.out_dim,
                         bias=any(g.align == "linear" and g.bias is not None for g in embedding.groups),
                         always_align=True)
    with torch.no_grad():
        for i in embedding.kept_fields:
            d = embedding.dims[i]
            out.field_weight(i).zero_()[:, :d].copy_(embedding.field_weight(i))
            w, b = out.field_alignment(i)
            w.zero_()
            if b is not None:
                b.zero_()
            aligned = embedding.field_alignment(i)
            if aligned is not None:  # linear: W_i with zero rows for the added columns
                w[:d].copy_(aligned[0])
                if b is not None and aligned[1] is not None:
                    b.copy_(aligned[1])
            else:  # scatter: the fixed one-hot placement; pad or a uniform layer: [I_d | 0]
                placement = embedding.field_placement(i)
                w[:d].copy_(placement if placement is not None else torch.eye(d, embedding.out_dim))
    return out


# ---- export ------------------------------------------------------------------------------------
def _example_ids(vocab_sizes: list[int], batch: int = 8) -> Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(0, v, (batch,), generator=g) for v in vocab_sizes], dim=1)


def _batch_dim():
    return {0: torch.export.Dim("batch", min=1)}


def export_program(model: nn.Module, vocab_sizes: list[int]):
    """``torch.export`` of ``ServingModel(model)`` with a dynamic batch dimension."""
    serving = ServingModel(model).eval()
    with torch.no_grad():
        return torch.export.export(serving, (_example_ids(vocab_sizes),), dynamic_shapes=(_batch_dim(),))


def export_onnx(model: nn.Module, vocab_sizes: list[int], path: str | Path) -> Path:
    """Write ``ServingModel(model)`` as ONNX (input ``ids``, output ``probability``, dynamic batch)."""
    try:
        import onnx  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError as e:
        raise EmbdimError(f"ONNX export needs onnx and onnxscript ({e}); {INSTALL_HINT}") from None
    serving = ServingModel(model).eval()
    for name in ("torch.onnx", "torch.onnx._internal.exporter._registration"):
        logging.getLogger(name).setLevel(logging.ERROR)
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        program = torch.onnx.export(serving, (_example_ids(vocab_sizes),), dynamic_shapes=(_batch_dim(),),
                                    input_names=[INPUT_NAME], output_names=[OUTPUT_NAME],
                                    opset_version=ONNX_OPSET, dynamo=True, verbose=False)
    return _write_then_move(path, lambda p: program.save(str(p)))


def _write_then_move(path: str | Path, write) -> Path:
    """``write(p)`` into a hidden folder beside ``path``, then move what it wrote (an ONNX model's
    external data file first, the model last) into place: a half-written export is never found."""
    path = Path(path)
    partial = path.parent / f".{path.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        write(partial / path.name)
        for f in sorted(partial.iterdir(), key=lambda f: f.name == path.name):
            f.replace(path.parent / f.name)
    finally:
        shutil.rmtree(partial, ignore_errors=True)
    return path


def save_program(program, path: str | Path) -> Path:
    """``torch.export.save`` of an exported program (written aside, then moved into place)."""
    return _write_then_move(path, lambda p: torch.export.save(program, str(p)))


# ---- the sidecar -------------------------------------------------------------------------------
def sidecar(run: RunModel, model: nn.Module, fmt: str, round_to: int, schema=None,
            vocabulary_file: str | None = None) -> dict[str, Any]:
    """The JSON sidecar of an exported run (module docstring)."""
    from embdim.data.schema import FIRST_VALUE_ID, MISSING_ID, OOV_ID

    plan = run.plan
    specs = {f.name: f for f in schema.fields} if schema is not None else {}
    fields = []
    for i, (name, vocab, dim) in enumerate(zip(plan.field_names, plan.vocab_sizes, plan.dims, strict=True)):
        entry: dict[str, Any] = {"name": name, "column": i, "vocab_size": vocab, "dim": dim,
                                 "kept": dim > 0}
        if name in specs:
            entry["kind"] = specs[name].kind
        fields.append(entry)
    return {
        "format": SIDECAR_FORMAT,
        "model_format": fmt,
        "model": run.config.model.name,
        "method": plan.method,
        "schema_hash": plan.schema_hash,
        "vocabulary_hash": (schema.options.get("vocabulary_hash") if schema is not None else None),
        "vocabulary_file": vocabulary_file,
        "label": schema.label if schema is not None else None,
        "preprocessing": dict(schema.options) if schema is not None else None,
        "input": {"name": INPUT_NAME, "dtype": "int64", "shape": ["batch", len(plan.field_names)]},
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "shape": ["batch"],
                   "meaning": "probability of the positive label (sigmoid of the logit)"},
        "ids": {"oov_id": OOV_ID, "missing_id": MISSING_ID, "first_value_id": FIRST_VALUE_ID},
        "fields": fields,
        "dropped_fields": plan.dropped_fields,
        "round_to": round_to,
        "embedding_params": int(model.embedding_params),
        "plan_embedding_params": int(plan.embedding_params),
        "epoch": run.epoch,
        "checkpoint": str(run.checkpoint),
    }


@dataclass
class ServingExport:
    """What :func:`export_run` wrote."""

    model_path: Path
    sidecar_path: Path
    vocabulary_path: Path | None
    embedding_params: int
    plan_embedding_params: int


def _run_schema(run: RunModel, data: str | Path | None):
    from embdim.data.schema import Schema

    path = Path(data) if data is not None else Path(run.config.data.path or "")
    if data is None and not (path / "schema.json").is_file():
        return None, None
    schema = Schema.load(path / "schema.json")
    run.plan.check_schema(schema)
    return schema, path


def export_run(run_dir: str | Path, fmt: str = "onnx", out: str | Path | None = None, *,
               round_to: int = 1, data: str | Path | None = None) -> ServingExport:
    """Export a finished run's retrained model (``fmt``: ``onnx`` or ``torch-export``) to ``out``
    (default ``RUN_DIR/export/model.onnx`` / ``model.pt2``), with the sidecar ``<out>.json`` and, when
    the dataset folder (``data``, default the run's ``data.path``) is there, ``<out>.vocabulary.parquet``."""
    from embdim.export.torchrec import round_up

    if fmt not in FORMATS:
        raise ConfigError(f"unknown serving format {fmt!r}; valid: {', '.join(FORMATS)}")
    round_up(1, round_to)  # validates round_to
    run_dir = Path(run_dir)
    run = load_run_model(run_dir)
    schema, data_dir = _run_schema(run, data)
    model = run.model
    if getattr(model, "embedding", None) is not None and round_to > 1:
        model.embedding = rounded_embedding(model.embedding, round_to)
    out = Path(out) if out is not None else run_dir / "export" / f"model{SUFFIXES[fmt]}"
    out.parent.mkdir(parents=True, exist_ok=True)
    if fmt == "onnx":
        export_onnx(model, run.plan.vocab_sizes, out)
    else:
        save_program(export_program(model, run.plan.vocab_sizes), out)
    vocab_path = None
    vocab_src = data_dir / "vocabulary.parquet" if data_dir is not None else None
    if vocab_src is not None and vocab_src.is_file():
        vocab_path = out.with_name(out.name + ".vocabulary.parquet")
        tmp = vocab_path.with_name(vocab_path.name + ".tmp")
        shutil.copyfile(vocab_src, tmp)
        tmp.replace(vocab_path)
    from embdim.io import atomic_write_json

    side = out.with_name(out.name + ".json")
    atomic_write_json(side, sidecar(run, model, fmt, round_to, schema,
                                    vocab_path.name if vocab_path is not None else None))
    return ServingExport(model_path=out, sidecar_path=side, vocabulary_path=vocab_path,
                         embedding_params=int(model.embedding_params),
                         plan_embedding_params=int(run.plan.embedding_params))


def cli_export(args: argparse.Namespace) -> int:
    """``embdim export RUN_DIR --format onnx|torch-export``."""
    source = Path(args.source)
    if not source.is_dir():
        raise EmbdimError(f"{source}: --format {args.format} exports a run folder (with "
                          "checkpoints/best.pt), not a plan file")
    if args.weights:
        raise ConfigError("--weights belongs to --format torchrec; the serving formats always hold "
                          "the trained weights")
    result = export_run(source, args.format, args.out, round_to=1 if args.round_to is None else args.round_to,
                        data=args.data)
    print(f"{args.format} model: ids [batch, {len(load_plan_fields(result))}] int64 -> probability [batch] "
          f"-> {result.model_path}")
    print(f"sidecar (fields, ids, vocabulary, schema hash) -> {result.sidecar_path}")
    if result.vocabulary_path is not None:
        print(f"vocabulary -> {result.vocabulary_path}")
    else:
        print("note: the run's dataset folder was not found; the sidecar names no vocabulary file "
              "(pass --data DIR)")
    extra = result.embedding_params - result.plan_embedding_params
    print(f"embedding parameters: {result.embedding_params:,} (plan: {result.plan_embedding_params:,}"
          + (f"; +{extra:,} = +{extra / max(1, result.plan_embedding_params):.1%} from --round-to "
             f"{args.round_to}" if extra else "") + ")")
    return 0


def load_plan_fields(result: ServingExport) -> list[dict[str, Any]]:
    import json

    return json.loads(result.sidecar_path.read_text())["fields"]
