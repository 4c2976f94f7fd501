"""One experiment = one run folder: config -> search -> plan -> retrain -> evaluate -> metrics.

Run folder contents::

    config.yaml      the fully resolved configuration (every default written out)
    plan.json        the DimensionPlan the method produced
    metrics.json     test AUC / Logloss, parameter counts, timings, and what reproduces them: the
                     seed, the dataset's content hash (``schema_hash``), the package versions
                     (``versions``) and the machine (``environment``: CPU, cores, torch threads)
    log.txt          what was printed, one line per event
    checkpoints/     last.pt (every epoch, for --resume) and best.pt (best validation AUC)

Every file is written atomically; ``metrics.json`` is written last, so its presence marks a
finished run. Creating, refusing and resuming run folders, ``log.txt`` and the ``versions`` record
are :mod:`embdim.folders`' (shared with the streaming runner, :mod:`embdim.autoemb.run`).

Re-running a finished run: ``embdim run RUNDIR/config.yaml --out NEW`` (from the folder the run was
started in, if ``data.path`` is relative) gives the same metrics on the same machine with the same
versions and thread count. :func:`check_against_record` lists what differs from the record
(dataset content hash, versions, machine), and the command prints it as warnings before it runs.
"""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import torch

import embdim
from embdim import distributed
from embdim.config import ExperimentConfig, config_from_dict, recorded_config
from embdim.data.dataset import PreparedDataset
from embdim.errors import ConfigError
from embdim.folders import RunLog, prepare_run_folder, versions, write_metrics
from embdim.io import atomic_write_yaml
from embdim.nn.models import build_model
from embdim.plan import DimensionPlan
from embdim.search import SearchContext, make_method
from embdim.train.trainer import FitResult, Trainer, seed_everything


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(cfg: ExperimentConfig) -> dict[str, Any]:
    """The machine a run ran on: what, besides the versions, its metrics depend on (floating-point
    sums are split across torch's intra-op threads, so the thread count matters too)."""
    return {"cpu": cpu_model(), "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "device": cfg.train.device, "data_path": str(Path(cfg.data.path).resolve())}


def check_against_record(config_path: str | Path, cfg: ExperimentConfig) -> list[str]:
    """Differences between a finished run folder's record (the ``metrics.json`` next to
    ``config_path``) and what re-running ``cfg`` here would use: dataset content hash, package
    versions, CPU and thread count. Empty when there is no record or nothing differs; each entry
    is a sentence for a warning (the metrics may then differ from the recorded ones)."""
    record_path = Path(config_path).parent / "metrics.json"
    if not record_path.is_file():
        return []
    try:
        record = json.loads(record_path.read_text())
    except (OSError, ValueError):
        return []
    notes = []
    recorded_hash = record.get("schema_hash")
    data = Path(cfg.data.path or "")
    if recorded_hash and (data / "schema.json").is_file():
        current = PreparedDataset(data).schema.content_hash
        if current != recorded_hash:
            notes.append(f"dataset {data} has content hash {current}, but {record_path} was measured "
                         f"on {recorded_hash}: the data changed, so the metrics will differ")
    elif recorded_hash and not data.exists():
        where = record.get("environment", {}).get("data_path")
        notes.append(f"dataset {data} not found from {Path.cwd()}" + (f"; the recorded run read "
                     f"{where}" if where else ""))
    old, new = record.get("versions", {}), versions()
    changed = [f"{k} {old[k]} -> {new.get(k)}" for k in ("embdim", "torch", "numpy", "python")
               if k in old and old[k] != new.get(k)]
    if changed:
        notes.append(f"versions differ from {record_path} ({', '.join(changed)}): the metrics may differ")
    env = record.get("environment", {})
    threads = cfg.train.threads or torch.get_num_threads()
    if env.get("torch_threads") and env["torch_threads"] != threads:
        notes.append(f"{record_path} was measured with {env['torch_threads']} torch thread(s), this run "
                     f"uses {threads} (set train.threads={env['torch_threads']} to match): the metrics "
                     f"may differ in the last digits")
    if env.get("cpu") and env["cpu"] != cpu_model():
        notes.append(f"{record_path} was measured on another CPU ({env['cpu']}): the metrics may "
                     f"differ in the last digits")
    return notes


def _prepare_run_dir(run_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
    """Check and create the run folder (rank 0 under torchrun; the others get its verdict)."""
    error = None
    if distributed.is_main():
        try:
            _check_and_create_run_dir(run_dir, cfg, resume)
        except ConfigError as e:
            error = str(e)
    error = distributed.broadcast_object(error)
    if error is not None:
        raise ConfigError(error)


def _check_and_create_run_dir(run_dir: Path, cfg: ExperimentConfig, resume: bool) -> None:
    prepare_run_folder(run_dir, cfg.to_dict(), resume=resume, recorded=recorded_config)


def open_experiment(cfg: ExperimentConfig | dict[str, Any],
                    opened: dict[Path, PreparedDataset] | None = None):
    """``(config, dataset, method)``: the config validated, its dataset opened with every split
    checked (:meth:`PreparedDataset.check_all`), its method built and checked against the dataset
    (a given plan made for another dataset is refused). Raises before anything is written.
    ``opened``: datasets already opened, by resolved path (a grid opens each once)."""
    if isinstance(cfg, dict):
        cfg = config_from_dict(cfg)
    if not cfg.data.path:
        raise ConfigError("data.path is not set: point it at a folder written by `embdim prepare`")
    key = Path(cfg.data.path).resolve()
    if opened is not None and key in opened:
        dataset = opened[key]
    else:
        dataset = PreparedDataset(cfg.data.path).check_all()
        if opened is not None:
            opened[key] = dataset
    method = make_method(cfg.method)
    method.check_dataset(dataset)  # a given plan made for another dataset, ...
    method.check_model(cfg.model)  # a model the method cannot search (NIS on lr)
    return cfg, dataset, method


def _context(cfg: ExperimentConfig, out_dir: Path, quiet: bool, log: RunLog) -> SearchContext:
    # The searches run data-parallel (DDP) under torchrun; train.parallel torchrec shards the
    # retrain of the plan only (the search loops read FieldEmbedding's tables directly).
    # train.validate_start is for the retraining (a start from trained weights), not the searches
    train = dataclasses.replace(cfg.train, parallel="ddp", validate_start=False)
    return SearchContext(model_options=cfg.model, train=train, work_dir=out_dir / "search",
                         quiet=quiet, log=log)


def _search(cfg: ExperimentConfig, dataset: PreparedDataset, method, out_dir: Path, quiet: bool,
            log: RunLog) -> DimensionPlan:
    """Run the method's search (seeded), time it, save ``plan.json``."""
    seed_everything(cfg.train.seed)
    t0 = time.perf_counter()
    plan = method.search(dataset, _context(cfg, out_dir, quiet, log))
    plan.extra["search_seconds"] = time.perf_counter() - t0
    plan = distributed.broadcast_object(plan)  # under torchrun: every process retrains rank 0's
    if distributed.is_main():
        plan.save(out_dir / "plan.json")
    return plan


DENSE_PARAMS_NOTE = "entries of the dense embedding tables: sum over fields of vocab_i x d_i"


def embedding_storage_params(model) -> int:
    """32-bit words the embedding's tables take in storage: the dense entries, or what the
    embedding reports for its own format (a pruned table: CSR, see embdim.nn.masked_embedding)."""
    emb = model.embedding
    return 0 if emb is None else int(getattr(emb, "storage_params", emb.embedding_params))


def embedding_params_note(model, plan: DimensionPlan) -> str:
    """How ``embedding_params`` was counted (the method's note for a non-table embedding)."""
    if model.embedding is None:
        return "the base model has no embedding table"
    return str((plan.embedding or {}).get("params_note", DENSE_PARAMS_NOTE))


def _describe(plan: DimensionPlan) -> str:
    return (f"plan: dims {plan.dims_by_field()}; embedding params {plan.embedding_params} "
            f"({plan.embedding_params / max(1, plan.fde_embedding_params):.1%} of full dimension)")


def run_search(cfg: ExperimentConfig | dict[str, Any], out_dir: str | Path, *,
               quiet: bool = False) -> DimensionPlan:
    """Only the search stage: write ``config.yaml``, ``plan.json`` and ``log.txt`` into ``out_dir``."""
    cfg, dataset, method = open_experiment(cfg)
    out_dir = Path(out_dir)
    if (out_dir / "plan.json").exists():
        raise ConfigError(f"{out_dir} already holds a plan.json; choose another --out")
    if distributed.is_main():
        out_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_yaml(out_dir / "config.yaml", cfg.to_dict())
    log = RunLog(out_dir / "log.txt")
    plan = _search(cfg, dataset, method, out_dir, quiet, log)
    log(_describe(plan))
    return plan


def run_experiment(cfg: ExperimentConfig | dict[str, Any], run_dir: str | Path, *,
                   resume: bool = False, quiet: bool = False) -> dict[str, Any]:
    """Run one experiment into ``run_dir`` and return its metrics (also in metrics.json)."""
    cfg, dataset, method = open_experiment(cfg)
    if resume and cfg.train.parallel == "torchrec":
        raise ConfigError("--resume is not supported with train.parallel torchrec (no checkpoints "
                          "of the sharded tables are written): start a new --out folder")
    run_dir = Path(run_dir)
    _prepare_run_dir(run_dir, cfg, resume)
    log = RunLog(run_dir / "log.txt")
    log(f"embdim {embdim.__version__}: {cfg.method['name']} on {cfg.model.name}, data "
        f"{cfg.data.path} (schema {dataset.schema.content_hash}), seed {cfg.train.seed}")

    # ---- search (or reuse the plan of an interrupted run) -------------------------------------
    plan_path = run_dir / "plan.json"
    if resume and plan_path.exists():
        plan = DimensionPlan.load(plan_path)
        plan.check_schema(dataset.schema)
        log(f"reusing {plan_path}")
    else:
        plan = _search(cfg, dataset, method, run_dir, quiet, log)
    search_seconds = float(plan.extra.get("search_seconds", 0.0))
    log(_describe(plan))

    # ---- retrain the base model with the plan -------------------------------------------------
    seed_everything(cfg.train.seed)
    # A method may adjust the retrained model's options (AutoDim: align to the largest candidate).
    model_options = method.retrain_model_options(cfg.model, plan)
    model = build_model(cfg.model.name, dataset.schema, plan, options=model_options)
    if not (resume and (run_dir / "checkpoints" / "last.pt").exists()):
        method.init_retrain_model(model, plan, _context(cfg, run_dir, quiet, log))
    fingerprint = {"model": cfg.model.name, "dims": list(plan.dims), "seed": cfg.train.seed}
    total_params = int(sum(p.numel() for p in model.parameters()))  # before any sharding
    train_options = method.retrain_train_options(cfg.train, plan)
    if train_options != cfg.train:
        changed = {k: v for k, v in dataclasses.asdict(train_options).items()
                   if getattr(cfg.train, k) != v}
        log(f"retrain: training options set by {plan.method}: {changed}")
    trainer = Trainer(model, dataset, train_options, checkpoint_dir=run_dir / "checkpoints",
                      quiet=quiet, log=log, fingerprint=fingerprint)
    t0 = time.perf_counter()
    if method.retrains:
        fit = method.fit_retrain(trainer, resume=resume)
    else:  # an ablation that evaluates the handed-over model as it is (SSEDS "w/o retraining")
        log("no retraining: evaluating the model as init_retrain_model left it")
        fit = FitResult(best_epoch=0, best_valid_auc=trainer.evaluate("valid")["auc"])
    retrain_seconds = time.perf_counter() - t0
    test = trainer.evaluate("test")
    metrics = {
        "method": plan.method,
        "model": cfg.model.name,
        "test_auc": test["auc"],
        "test_logloss": test["logloss"],
        "valid_auc": fit.best_valid_auc,
        "best_epoch": fit.best_epoch,
        **({"start_valid_auc": fit.start_valid_auc} if fit.start_valid_auc is not None else {}),
        "epochs_run": fit.epochs_run,
        "stopped_early": fit.stopped_early,
        "embedding_params": int(model.embedding_params),
        "embedding_storage_params": embedding_storage_params(model),
        "embedding_params_note": embedding_params_note(model, plan),
        "alignment_params": int(model.alignment_params),
        "fde_embedding_params": int(plan.fde_embedding_params),
        "embedding_params_ratio": model.embedding_params / max(1, plan.fde_embedding_params),
        "total_params": total_params,
        "dims": plan.dims_by_field(),
        "search_seconds": search_seconds,
        "retrain_seconds": retrain_seconds,
        "optimizer": trainer.optimizer_name,  # train.optimizer as resolved for this run
        "train_samples_per_second": fit.train_samples_per_second,
        "infer_samples_per_second": test["samples_per_second"],
        "seed": cfg.train.seed,
        "schema_hash": dataset.schema.content_hash,
        "history": fit.history,
        "versions": versions(),
        "environment": environment(cfg),
        **method.retrain_metrics(),
    }
    if "unrounded_embedding_params" in plan.extra:  # method.round_to: what the rounding cost
        metrics["round_to"] = int(plan.options.get("round_to", 1))
        metrics["unrounded_embedding_params"] = int(plan.extra["unrounded_embedding_params"])
        metrics["unrounded_dims"] = dict(zip(plan.field_names, plan.extra["unrounded_dims"], strict=True))
    if distributed.is_main():
        write_metrics(run_dir, metrics)
    log(f"test_auc={test['auc']:.5f} test_logloss={test['logloss']:.5f} "
        f"embedding_params={metrics['embedding_params']}")
    return metrics
