"""The case study of AutoDim sec. 3.9 (Table 4): are the fields the search made wider the more
predictive ones?

For every field, a base model with **only that field** (the paper: W&D) is trained on the run's
data with the run's training options and evaluated on the test split; its test AUC / Logloss
measure how predictive the field is. Next to them the table shows the width the run's plan gave
the field, and the Spearman rank correlation between single-field AUC and searched width (the
paper reads Table 4 by eye: "AutoDim assigns larger embedding dimensions to important (highly
predictive) feature fields"). Choices the paper leaves open: the single-field width is the plan's
full (largest candidate) width; the single-field model keeps the run's model options (MLP,
dropout, ...) with the body replaced by ``--model`` (default ``widedeep``); the seed is the run's.

``embdim case-study RUN_DIR`` writes ``RUN_DIR/case_study.json`` and ``case_study.md`` and prints
the table.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
from pathlib import Path
from typing import Any

from embdim.errors import ConfigError
from embdim.io import atomic_write_json, atomic_write_text


def single_field_plan(plan, field: int, dim: int):
    """A plan that keeps only ``field``, at width ``dim``."""
    from embdim.plan import DimensionPlan

    dims = [dim if i == field else 0 for i in range(len(plan.dims))]
    return DimensionPlan(method="single-field", field_names=plan.field_names,
                         vocab_sizes=plan.vocab_sizes, dims=dims, full_dim=dim,
                         schema_hash=plan.schema_hash)


def rank_correlation(x: list[float], y: list[float]) -> float:
    """Spearman's rho (ties averaged); NaN when either side is constant."""
    from scipy.stats import spearmanr

    if len(set(x)) < 2 or len(set(y)) < 2:
        return math.nan
    return float(spearmanr(x, y).statistic)


def run_case_study(run_dir: str | Path, *, model: str = "widedeep", epochs: int | None = None,
                   dim: int | None = None, quiet: bool = True, log: Any = print) -> dict[str, Any]:
    """Train one single-field model per field of the run's dataset; return (and write into the
    run folder) the per-field table and the rank correlation with the plan's widths."""
    from embdim.config import load_config
    from embdim.data.dataset import PreparedDataset
    from embdim.nn.models import build_model, resolve_model_name
    from embdim.plan import DimensionPlan
    from embdim.train.trainer import Trainer, seed_everything

    run_dir = Path(run_dir)
    for name in ("config.yaml", "plan.json"):
        if not (run_dir / name).exists():
            raise ConfigError(f"{run_dir} has no {name}: give a run folder written by `embdim run`")
    cfg = load_config(run_dir / "config.yaml")
    plan = DimensionPlan.load(run_dir / "plan.json")
    dataset = PreparedDataset(cfg.data.path)
    plan.check_schema(dataset.schema)
    key = resolve_model_name(model)
    options = dataclasses.replace(cfg.model, name=key, aligned_dim=None, linear_fields="kept")
    train = dataclasses.replace(cfg.train, epochs=epochs or cfg.train.epochs)
    width = int(dim or plan.full_dim)
    rows = []
    for i, name in enumerate(plan.field_names):
        seed_everything(train.seed)
        net = build_model(key, dataset.schema, single_field_plan(plan, i, width), options=options)
        trainer = Trainer(net, dataset, train, quiet=quiet)
        trainer.fit()
        test = trainer.evaluate("test")
        rows.append({"field": name, "single_field_auc": test["auc"],
                     "single_field_logloss": test["logloss"], "searched_dim": plan.dims[i]})
        log(f"case study {i + 1}/{len(plan.field_names)}: {name}: AUC {test['auc']:.4f} "
            f"Logloss {test['logloss']:.4f}, searched dim {plan.dims[i]}")
    result = {"run": str(run_dir), "method": plan.method, "single_field_model": key,
              "single_field_dim": width, "epochs": train.epochs, "seed": train.seed, "fields": rows,
              "spearman_auc_vs_dim": rank_correlation([r["single_field_auc"] for r in rows],
                                                      [r["searched_dim"] for r in rows])}
    atomic_write_json(run_dir / "case_study.json", result)
    atomic_write_text(run_dir / "case_study.md", case_study_table(result))
    return result


def case_study_table(result: dict[str, Any]) -> str:
    """Table 4's layout in Markdown, most predictive field first."""
    lines = [f"Single-field {result['single_field_model']} (width {result['single_field_dim']}, "
             f"{result['epochs']} epochs, seed {result['seed']}) vs the widths of "
             f"{result['method']} in {result['run']}", "",
             "| field | single-field AUC | single-field Logloss | searched dim |", "|---|---|---|---|"]
    for r in sorted(result["fields"], key=lambda r: -r["single_field_auc"]):
        lines.append(f"| {r['field']} | {r['single_field_auc']:.4f} | {r['single_field_logloss']:.4f} "
                     f"| {r['searched_dim']} |")
    rho = result["spearman_auc_vs_dim"]
    lines += ["", f"Spearman rank correlation (single-field AUC vs searched dim): "
                  f"{'undefined (a constant column)' if math.isnan(rho) else f'{rho:.3f}'}"]
    return "\n".join(lines) + "\n"


def register(sub) -> None:
    p = sub.add_parser("case-study", help="single-field models vs the searched widths (AutoDim Table 4)",
                       description="Train one model per field with only that field and compare its "
                                   "test AUC with the width the run's plan gave it (AutoDim sec. 3.9).")
    p.add_argument("run", metavar="RUN_DIR", help="a run folder written by `embdim run`")
    p.add_argument("--model", default="widedeep", help="single-field base model (default widedeep)")
    p.add_argument("--epochs", type=int, help="training epochs per field (default: the run's)")
    p.add_argument("--dim", type=int, help="single-field width (default: the plan's full width)")
    p.set_defaults(handler=_cmd_case_study)


def _cmd_case_study(args: argparse.Namespace) -> int:
    result = run_case_study(args.run, model=args.model, epochs=args.epochs, dim=args.dim,
                            quiet=args.quiet, log=(lambda msg: None) if args.quiet else print)
    print(case_study_table(result), end="")
    print(f"-> {Path(args.run) / 'case_study.md'}")
    return 0
