"""AutoDim against uniform widths (FDE) at equal embedding size: the budget-mode table and Pareto
plot of docs/results/autodim_budget.md.

    python benchmarks/autodim_budget.py --work /tmp/results-work --out docs/results/autodim_budget.md
    python benchmarks/autodim_budget.py --work W --datasets adult --models deepfm --seeds 1 --lane 0/2

For each dataset (prepared as benchmarks/make_results.py does: the planted synthetic data, UCI Adult,
MovieLens latest-small), base model (DeepFM, W&D) and seed, with the settings of
examples/results/autodim.yaml (MLP [128, 128], dropout 0.2, BatchNorm, Adam 1e-3, batch 1024, up to
8 epochs, early stop after 2; the search: 4 epochs, first order, ``alpha_lr 0.03``, one alpha update
per 2 W-steps, the short-search settings of docs/autodim.md, since these datasets give a few
hundred W-steps per epoch where the paper's Criteo gives 18,000; candidates {2, 8, 16, 24, 32}):

1. ``autodim``: search, derive the argmax plan (eq. 13), retrain (``embdim run``);
2. for each kappa, the plan the same search derives with ``method.budget: kappa``
   (:func:`embdim.search.autodim.plan_under_budget` on the run's plan.json: the most probable
   plan under the learned alpha whose tables fit kappa x FDE-32), retrained as AutoDim retrains
   (``method: plan``, which applies AutoDim's retraining options);
3. FDE at width 32 (the largest candidate) and at ``round(kappa x 32)`` for each kappa (the
   uniform model of the same size; ``round(0.1 x 32) = 3``: 94% of the 0.1 budget);
4. the same uniform widths retrained as AutoDim retrains (the searched plan with every field at
   ``round(kappa x 32)``, ``method: plan``: linear alignment to 32 with eq. 1's bias, sec. 2.4.2,
   and the BatchNorm statistics re-estimated before each validation, ``retrain_bn_recalibration``;
   FDE keeps the running averages, ``train.bn_recalibration: 0``).
   Against FDE it measures what the retraining architecture alone costs or gains; against the
   budget plan, what alpha's choice of widths adds at the same size and architecture.

With ``--vocab-cap`` the same searches are also run with ``vocab_cap: true`` (every derived width
cut at its field's vocabulary; the budget counts the cut tables), prefix ``autodim-vocabcap``, and
the page gets their rows.

Every run is an ordinary run folder under ``WORK/autodim-budget/`` (``embdim report`` reads them);
finished runs are skipped on a restart. Embedding parameters count the tables only (the budget's
basis); the alignment parameters are listed separately in the JSON.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from sseds_vs_fde import run  # noqa: E402 - one finished-run-aware runner for the equal-size scripts

FULL = 32
MODELS = {"deepfm": "DeepFM", "widedeep": "W&D"}
MODEL = {"mlp": [128, 128], "dropout": 0.2, "batch_norm": True}
TRAIN = {"batch_size": 1024, "lr": 0.001, "epochs": 8, "early_stop": 2, "device": "cpu",
         "optimizer": "adam"}  # the papers' optimiser (the library default is auto)
SEARCH = {"name": "autodim", "epochs": 4, "alpha_lr": 0.03, "update_every": 2}
DATASETS = {"synthetic": "Synthetic (planted)", "adult": "UCI Adult",
            "ml-latest-small": "MovieLens latest-small"}


def fde_width(kappa: float) -> int:
    return max(1, round(kappa * FULL))


def run_searched(root: Path, base: dict, name: str, search: dict, seed: int, kappas: list[float],
                 threads: int):
    """One AutoDim run (search, argmax plan, retrain) and its budget plans, retrained alike."""
    from embdim.plan import DimensionPlan
    from embdim.search.autodim import plan_under_budget

    run({**base, "method": search}, root / f"{name}_seed-{seed}", threads)
    searched = DimensionPlan.load(root / f"{name}_seed-{seed}" / "plan.json")
    for k in kappas:
        plan_path = root / "plans" / f"{name}-{k}_seed-{seed}.json"
        if not plan_path.exists():
            plan_under_budget(searched, k).save(plan_path)
        run({**base, "method": {"name": "plan", "path": str(plan_path)}},
            root / f"{name}-{k}_seed-{seed}", threads)
    return searched


def run_cell(work: Path, ds: str, model: str, seed: int, kappas: list[float], threads: int,
             vocab_cap: bool = False) -> None:
    """Every run of one (dataset, model, seed): AutoDim, its budget plans, the FDE widths."""
    root = work / "autodim-budget" / ds / model
    base = {"data": {"path": f"data/{ds}"}, "model": {"name": model, **MODEL},
            "train": {**TRAIN, "seed": seed}}
    searched = run_searched(root, base, "autodim", SEARCH, seed, kappas, threads)
    if vocab_cap:
        run_searched(root, base, "autodim-vocabcap", {**SEARCH, "vocab_cap": True}, seed, kappas,
                     threads)
    for w in [FULL] + [fde_width(k) for k in kappas]:
        run({**base, "method": {"name": "fde", "dim": w}}, root / f"fde-{w}_seed-{seed}", threads)
    for w in [fde_width(k) for k in kappas]:
        plan_path = root / "plans" / f"aligned-{w}_seed-{seed}.json"
        if not plan_path.exists():
            uniform = copy.deepcopy(searched)
            uniform.dims = [w] * len(uniform.dims)
            uniform.save(plan_path)
        run({**base, "method": {"name": "plan", "path": str(plan_path)}},
            root / f"aligned-{w}_seed-{seed}", threads)


def summarise(work: Path, datasets, models, seeds, kappas) -> tuple[str, dict]:
    def stats(prefix):
        ms = [json.loads(p.read_text()) for s in seeds
              if (p := work / "autodim-budget" / f"{prefix}_seed-{s}" / "metrics.json").exists()]
        if not ms:
            return None
        auc = np.array([m["test_auc"] for m in ms])
        return {"auc": float(auc.mean()), "std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                "params": float(np.mean([m["embedding_params"] for m in ms])),
                "alignment": float(np.mean([m.get("alignment_params", 0) for m in ms])),
                "ratio": float(np.mean([m["embedding_params_ratio"] for m in ms])), "n": len(ms)}

    def cell(st, ref=None):
        if st is None:
            return "-"
        delta = f"; {st['auc'] - ref['auc']:+.4f}" if ref else ""
        return f"{st['auc']:.4f} ± {st['std']:.4f} ({st['ratio']:.1%}{delta})"

    data, lines = {}, []
    for ds in datasets:
        for model in models:
            p = f"{ds}/{model}"
            full, argmax = stats(f"{p}/fde-{FULL}"), stats(f"{p}/autodim")
            capped = stats(f"{p}/autodim-vocabcap")
            rows = [{"kappa": k, "fde_width": fde_width(k), "fde": stats(f"{p}/fde-{fde_width(k)}"),
                     "aligned": stats(f"{p}/aligned-{fde_width(k)}"),
                     "autodim": stats(f"{p}/autodim-{k}"),
                     "vocabcap": stats(f"{p}/autodim-vocabcap-{k}")} for k in kappas]
            data[p] = {"fde_full": full, "autodim_argmax": argmax, "rows": rows}
            cap_line, cap_rows = "", []
            if capped is not None:
                data[p]["vocabcap_argmax"] = capped
                cap_line = f" With `vocab_cap: true`: {cell(capped, full)}."
                cap_rows = ["| AutoDim, `budget: kappa`, `vocab_cap: true` | "
                            + " | ".join(cell(r["vocabcap"], r["fde"]) for r in rows) + " |"]
            lines += [f"### {DATASETS.get(ds, ds)}, {MODELS.get(model, model)}", "",
                      f"FDE-{FULL}: {cell(full)}; AutoDim (argmax, eq. 13): {cell(argmax, full)}."
                      + cap_line,
                      "", "| | " + " | ".join(f"kappa {k}" for k in kappas) + " |",
                      "|---|" + "---|" * len(kappas),
                      f"| FDE (width {' / '.join(str(fde_width(k)) for k in kappas)}) | "
                      + " | ".join(cell(r["fde"]) for r in rows) + " |",
                      "| same widths, AutoDim's retraining | "
                      + " | ".join(cell(r["aligned"], r["fde"]) for r in rows) + " |",
                      "| AutoDim, `budget: kappa` | "
                      + " | ".join(cell(r["autodim"], r["fde"]) for r in rows) + " |",
                      "| AutoDim, `budget: kappa`, difference to the uniform widths retrained alike | "
                      + " | ".join(cell(r["autodim"], r["aligned"]) for r in rows) + " |",
                      *cap_rows, ""]
    return "\n".join(lines), data


def plot(data: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    keys = list(data)
    cols = min(3, len(keys))
    rows = (len(keys) + cols - 1) // cols
    fig = Figure(figsize=(5 * cols, 4 * rows))
    FigureCanvasAgg(fig)
    for j, key in enumerate(keys):
        d, ax = data[key], fig.add_subplot(rows, cols, j + 1)
        for name, pts, style in (
                ("FDE (uniform)", [r["fde"] for r in d["rows"]] + [d["fde_full"]], "o-"),
                ("uniform, AutoDim's retraining", [r["aligned"] for r in d["rows"]], "v--"),
                ("AutoDim, budget", [r["autodim"] for r in d["rows"]], "s-"),
                ("AutoDim, argmax", [d["autodim_argmax"]], "D"),
                ("AutoDim, budget, vocab_cap", [r.get("vocabcap") for r in d["rows"]]
                 + [d.get("vocabcap_argmax")], "x:")):
            pts = sorted((s for s in pts if s), key=lambda s: s["ratio"])
            if pts:
                ax.errorbar([s["ratio"] for s in pts], [s["auc"] for s in pts],
                            [s["std"] for s in pts], fmt=style, label=name, capsize=2)
        ds, model = key.split("/")
        ax.set_xlabel(f"embedding parameters / FDE-{FULL}")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{DATASETS.get(ds, ds)}, {MODELS.get(model, model)}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder with data/ (created if missing)")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--synthetic-rows", type=int, default=200_000)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--models", default=",".join(MODELS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--kappas", default="0.1,0.25,0.5")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lane", default="0/1", help="I/N: run every N-th cell from the I-th (parallel lanes)")
    ap.add_argument("--vocab-cap", action="store_true",
                    help="also run every search with method.vocab_cap: true (prefix autodim-vocabcap)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="Markdown summary (PNG and JSON beside it)")
    args = ap.parse_args()
    datasets, models = args.datasets.split(","), args.models.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    work = args.work.resolve()
    out = args.out.resolve() if args.out else None
    work.mkdir(parents=True, exist_ok=True)
    os.chdir(work)
    if not args.summary_only:
        import make_results

        make_results.prepare_data(work, args.data_root.resolve(), args.synthetic_rows,
                                  make_results.Steps(work))
        lane, lanes = (int(x) for x in args.lane.split("/"))
        todo = [(ds, m, s) for s in seeds for ds in datasets for m in models]  # every dataset early
        for i, (ds, m, s) in enumerate(todo):
            if i % lanes == lane:
                run_cell(work, ds, m, s, kappas, args.threads, vocab_cap=args.vocab_cap)
    text, data = summarise(work, datasets, models, seeds, kappas)
    print(text)
    if out:
        png = out.with_suffix(".png")
        plot(data, png)
        command = " ".join(["python benchmarks/autodim_budget.py",
                            *(a for a in sys.argv[1:] if a not in ("--summary-only",))])
        out.write_text(
            "<!-- written by benchmarks/autodim_budget.py -->\n\n# AutoDim against uniform widths "
            f"at equal size\n\n`{command}` runs every cell missing under `WORK/autodim-budget/` "
            "(finished runs are kept; `--summary-only` runs nothing) and writes this page. Setting: "
            "the docstring of benchmarks/autodim_budget.py. Cells: test AUC mean ± std over seeds "
            f"(embedding parameters / FDE-{FULL}; difference to FDE of the same size or, for the "
            "argmax plan, to FDE-32; in the row \"difference to the uniform widths retrained alike\", "
            "to the same widths retrained as AutoDim retrains). A `-` is a cell that was not run.\n\n"
            + text + f"\n![AUC against embedding parameters]({png.name})\n")
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
