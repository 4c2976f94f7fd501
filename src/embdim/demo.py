"""``embdim demo``: the embedded default experiment, on synthetic data with planted truth.

It writes a synthetic CTR dataset whose fields have known "true" dimensions (some are pure noise),
trains the base model with a few uniform widths (FDE), then SSEDS at a 25% budget, RaS and AutoDim,
and prints a table of test AUC / Logloss / embedding parameters / seconds next to the
Bayes-optimal AUC of the planted model. It runs in about two minutes on two quiet CPU cores.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

from embdim.config import config_from_dict
from embdim.io import atomic_write_text

DEMO_WIDTHS = (2, 8, 32)
DEMO_ROWS = 400_000
DEMO_EPOCHS = 4


def fresh_dir(base: Path) -> Path:
    """``base`` if it is absent or empty, else ``base-2``, ``base-3``, ... (never overwrite)."""
    if not base.exists() or not any(base.iterdir()):
        return base
    i = 2
    while Path(f"{base}-{i}").exists():
        i += 1
    return Path(f"{base}-{i}")


def demo_runs(out: Path) -> list[tuple[str, dict[str, Any]]]:
    """(run name, method section) of every run the demo makes, in order."""
    runs = [(f"fde-{w}", {"name": "fde", "dim": w}) for w in DEMO_WIDTHS]
    # SSEDS: keep 25% of the entries (the size of fde-8) of the widest FDE model, which it takes
    # as its pretrained model (the same model, options and seed as its own pretraining would be);
    # saliency averaged over 20 batches (one batch is noisy, docs/sseds.md).
    widest = max(DEMO_WIDTHS)
    runs.append(("sseds-0.25", {
        "name": "sseds", "budget": 0.25, "pretrain_width": widest, "saliency_batches": 20,
        "pretrain_checkpoint": str(out / f"fde-{widest}" / "checkpoints" / "best.pt")}))
    # RaS: 2 random field-level assignments from AutoDim's candidates, 1 epoch each.
    runs.append(("ras-2", {"name": "ras", "trials": 2, "trial_epochs": 1}))
    # AutoDim: a 2-epoch search; with only ~300 alpha updates, alpha takes larger steps than the
    # paper's 1e-3 (docs/autodim.md, "Short searches").
    runs.append(("autodim", {"name": "autodim", "epochs": 2, "alpha_lr": 0.03, "update_every": 2}))
    return runs


def format_table(rows: list[dict[str, Any]]) -> str:
    header = ["run", "test AUC", "Logloss", "emb params", "of full", "seconds", "dims"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for r in rows:
        dims = list(r["dims"].values())
        dims_text = str(dims[0]) if len(set(dims)) == 1 else ",".join(map(str, dims))
        lines.append(f"| {r['run']} | {r['test_auc']:.4f} | {r['test_logloss']:.4f} | "
                     f"{r['embedding_params']:,} | {r['embedding_params_ratio']:.1%} | "
                     f"{r['search_seconds'] + r['retrain_seconds']:.1f} | {dims_text} |")
    return "\n".join(lines)


def run_demo(out: str | Path = "runs/demo", *, rows: int = DEMO_ROWS, epochs: int = DEMO_EPOCHS,
             model: str = "deepfm", seed: int = 2022, quiet: bool = False) -> list[dict[str, Any]]:
    from embdim.data.synthetic import default_demo_spec, write_synthetic_dataset
    from embdim.experiment import run_experiment

    out = fresh_dir(Path(out))
    out.mkdir(parents=True, exist_ok=True)
    say = (lambda m: None) if quiet else print
    t0 = time.perf_counter()
    spec = default_demo_spec()
    schema, truth = write_synthetic_dataset(out / "data", spec, rows, seed=seed)
    say(f"synthetic data: {rows:,} rows, {schema.num_fields} fields, planted dims "
        f"{dict(zip(truth.field_names, truth.true_dims, strict=True))} -> {out / 'data'}")
    results = []
    for name, method in demo_runs(out):
        cfg = config_from_dict({
            "data": {"path": str(out / "data")},
            "model": {"name": model},
            "method": method,
            "train": {"epochs": epochs, "batch_size": 2000, "seed": seed, "early_stop": 1},
        })
        say(f"\n== {name} ==")
        m = run_experiment(cfg, out / name, quiet=quiet)
        results.append({"run": name, **m})
    table = format_table(results)
    bayes = getattr(truth, "bayes_auc", None)
    footer = f"\nBayes-optimal test AUC of the planted model: {bayes:.4f}" if bayes else ""
    footer += (f"\nsseds-0.25 starts from fde-{max(DEMO_WIDTHS)} as its pretrained model: its "
               "seconds are the pruning and the retraining.")
    atomic_write_text(out / "summary.md", f"# embdim demo\n\n{table}\n{footer}\n")
    print(f"\n{table}{footer}\n\nwrote {out} in {time.perf_counter() - t0:.0f}s")
    return results
