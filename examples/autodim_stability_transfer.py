"""AutoDim's stability and transferability (AutoDim paper, Sec. 3.7 / RQ5), on any prepared dataset.

* **Stability**: search with several seeds and report the Pearson correlation of the selected
  per-field dims between every pair of seeds (the paper: the selections are highly correlated).
* **Transferability**: search once with FM as the base model, then retrain that plan on other
  base models (NFM, IPNN, AutoInt by default) next to their full-dimension (FDE) versions.

    python examples/autodim_stability_transfer.py prepared/ml-1m --out runs/rq5
    python examples/autodim_stability_transfer.py DIR --seeds 1 2 3 4 5 --models nfm ipnn autoint \\
        --set train.epochs=3 --set method.alpha_lr=0.03

Prints two Markdown tables and writes them, with every run folder, under ``--out``.
"""

from __future__ import annotations

import argparse
import itertools
from pathlib import Path

import numpy as np

from embdim.config import apply_overrides, config_from_dict
from embdim.data import PreparedDataset
from embdim.experiment import run_experiment, run_search
from embdim.io import atomic_write_text


def base_config(data: str, overrides: list[str]) -> dict:
    d = {"data": {"path": data}, "model": {"name": "fm"},
         "method": {"name": "autodim", "candidates": [2, 8, 16, 24, 32]}, "train": {}}
    return apply_overrides(d, overrides)


def stability(args) -> str:
    dims = {}
    for seed in args.seeds:
        cfg = base_config(args.data, args.set + [f"train.seed={seed}"])
        plan = run_search(config_from_dict(cfg), args.out / f"search-seed{seed}", quiet=args.quiet)
        dims[seed] = np.array(plan.dims, dtype=float)
    names = PreparedDataset(args.data).schema.field_names
    lines = ["| seed | " + " | ".join(names) + " |", "|---" * (len(names) + 1) + "|"]
    lines += [f"| {s} | " + " | ".join(str(int(d)) for d in dims[s]) + " |" for s in args.seeds]
    pairs = [(a, b, float(np.corrcoef(dims[a], dims[b])[0, 1]))
             for a, b in itertools.combinations(args.seeds, 2)]
    lines += ["", "| seeds | Pearson r of the selected dims |", "|---|---|"]
    lines += [f"| {a} vs {b} | {r:.3f} |" for a, b, r in pairs]
    finite = [r for _, _, r in pairs if np.isfinite(r)]
    if finite:
        lines.append(f"| mean | {np.mean(finite):.3f} |")
    return "\n".join(lines)


def transferability(args) -> str:
    source = base_config(args.data, args.set + [f"train.seed={args.seeds[0]}"])
    plan_path = args.out / f"search-seed{args.seeds[0]}" / "plan.json"
    if not plan_path.exists():
        run_search(config_from_dict(source), plan_path.parent, quiet=args.quiet)
    lines = ["| model | FDE AUC | FDE Logloss | FDE params | AutoDim(FM) AUC | Logloss | params |",
             "|---|---|---|---|---|---|---|"]
    for model in args.models:
        row = []
        for label, method in (("fde", {"name": "fde"}), ("transfer", {"name": "plan",
                                                                      "path": str(plan_path)})):
            cfg = base_config(args.data, args.set)
            cfg["model"]["name"] = model
            cfg["method"] = method
            if label == "transfer":  # align to the largest candidate, as AutoDim's own retraining
                cfg["model"]["aligned_dim"] = max(source["method"].get("candidates", [32]))
            m = run_experiment(config_from_dict(cfg), args.out / f"{model}-{label}", quiet=args.quiet)
            row += [f"{m['test_auc']:.4f}", f"{m['test_logloss']:.4f}", f"{m['embedding_params']:,}"]
        lines.append(f"| {model} | " + " | ".join(row) + " |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("data", help="a prepared dataset folder")
    p.add_argument("--out", type=Path, default=Path("runs/autodim-rq5"))
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3, 4, 5])
    p.add_argument("--models", nargs="+", default=["nfm", "ipnn", "autoint"])
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="config override for every run, e.g. train.epochs=3")
    p.add_argument("--quiet", action="store_true")
    args = p.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = (f"# AutoDim stability and transferability\n\ndata: {args.data}\n\n## Stability\n\n"
              f"{stability(args)}\n\n## Transferability (plan searched with FM)\n\n"
              f"{transferability(args)}\n")
    atomic_write_text(args.out / "rq5.md", report)
    print(report)


if __name__ == "__main__":
    main()
