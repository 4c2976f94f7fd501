"""PEP and DeepLight against uniform widths (FDE) at equal embedding size (SSEDS Fig. 2-3 baselines).

    python benchmarks/pruning_vs_fde.py --work /tmp/work --datasets adult --out docs/results/pruning_vs_fde.md

The setting of benchmarks/sseds_vs_fde.py (DeepFM [256, 256] without BatchNorm or dropout, Adam
1e-3, batch 2048, up to 10 epochs with early stop 2; seeds 1, 2, 3; the same prepared data under
``WORK/data``) with every method at full width 128 (SSEDS sec. 4.1.3: "the initial (maximum)
embedding dimension as 128 for all baseline models") and pruned to ``kappa`` of the 128-wide table:

* FDE at ``round(kappa x 128)`` (the cells of sseds_vs_fde.py, shared: a finished cell is reused);
* PEP (``feature_dim`` thresholds, lottery-ticket rewind) with the threshold started at -10 and
  its own step size 0.05: the repository's -150 and step 1e-3 need ~10^5 steps, these data sets
  have 10^2-10^3 (docs/pruning.md);
* DeepLight (embedding only, as SSEDS footnote 6) with the cubic schedule over the search epochs
  after a 1-epoch warm-up, pruning every 10 steps: the repository's damped schedule reaches its
  target only after ~4.6 x 10^4 steps; then fine-tuned with the mask fixed.

``planted-50k`` (docs/results/pruning_vs_fde.md) is 50k rows of the demo's planted spec:
``write_synthetic_dataset(WORK / "data/planted-50k", default_demo_spec(), 50_000, seed=2022)``.
Each run is an ordinary run folder under ``WORK/sseds-vs-fde/`` (``embdim report`` reads them).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

from sseds_vs_fde import DATASETS, MODEL, TRAIN, fde_width, run  # noqa: E402

WIDTH = 128
METHODS = {
    "pep": {"name": "pep", "width": WIDTH, "threshold_init": -10, "threshold_lr": 0.05,
            "epochs": 30},
    "deeplight": {"name": "deeplight", "width": WIDTH, "warmup_epochs": 1, "schedule": "cubic"},
}


def cells(datasets, seeds, kappas, methods):
    for ds in datasets:
        for seed in seeds:
            base = {"data": {"path": f"data/{ds}"}, "model": MODEL, "train": {**TRAIN, "seed": seed}}
            for k in kappas:
                yield f"{ds}/fde-{fde_width(k)}_seed-{seed}", {**base, "method": {
                    "name": "fde", "dim": fde_width(k)}}
                for m in methods:
                    yield f"{ds}/{m}-{k}_seed-{seed}", {**base, "method": {**METHODS[m], "budget": k}}


def summarise(work: Path, datasets, seeds, kappas, methods) -> str:
    def stats(prefix):
        ms = [json.loads(p.read_text()) for s in seeds
              if (p := work / "sseds-vs-fde" / f"{prefix}_seed-{s}" / "metrics.json").exists()]
        if not ms:
            return None
        auc = np.array([m["test_auc"] for m in ms])
        return {"auc": float(auc.mean()), "std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                "params": float(np.mean([m["embedding_params"] for m in ms])), "n": len(ms),
                "storage": float(np.mean([m.get("embedding_storage_params", m["embedding_params"])
                                          for m in ms])),
                "seconds": float(np.mean([m["search_seconds"] + m["retrain_seconds"] for m in ms]))}

    lines = []
    for ds in datasets:
        lines += [f"### {DATASETS.get(ds, ds)}", "",
                  "Cells: test AUC mean ± std over seeds (non-zero embedding params; CSR storage in "
                  "32-bit words; difference to FDE at the same size; seeds).", "",
                  "| method | " + " | ".join(f"kappa {k}" for k in kappas) + " |",
                  "|---|" + "---|" * len(kappas)]
        fde = {k: stats(f"{ds}/fde-{fde_width(k)}") for k in kappas}
        lines.append(f"| FDE (width {' / '.join(str(fde_width(k)) for k in kappas)}) | " + " | ".join(
            f"{f['auc']:.4f} ± {f['std']:.4f} ({f['params']:,.0f}; n={f['n']})" if f else "-"
            for f in fde.values()) + " |")
        for m in methods:
            out = []
            for k in kappas:
                st, f = stats(f"{ds}/{m}-{k}"), fde[k]
                if st is None:
                    out.append("-")
                    continue
                delta = f"; {st['auc'] - f['auc']:+.4f}" if f else ""
                out.append(f"{st['auc']:.4f} ± {st['std']:.4f} ({st['params']:,.0f}; storage "
                           f"{st['storage']:,.0f}{delta}; n={st['n']})")
            lines.append(f"| {m} | " + " | ".join(out) + " |")
        lines.append("")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder with data/ (as sseds_vs_fde.py)")
    ap.add_argument("--datasets", default="synthetic,adult")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--kappas", default="0.1,0.25,0.5")
    ap.add_argument("--methods", default=",".join(METHODS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--lane", default="0/1", help="I/N: run every N-th cell from the I-th")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="Markdown summary")
    args = ap.parse_args()
    datasets, methods = args.datasets.split(","), args.methods.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    work = args.work.resolve()
    out = args.out.resolve() if args.out else None
    import os

    os.chdir(work)
    if not args.summary_only:
        lane, lanes = (int(x) for x in args.lane.split("/"))
        for i, (name, cfg) in enumerate(cells(datasets, seeds, kappas, methods)):
            if i % lanes == lane:
                run(cfg, work / "sseds-vs-fde" / name, args.threads)
    text = summarise(work, datasets, seeds, kappas, methods)
    print(text)
    if out:
        command = " ".join(["python benchmarks/pruning_vs_fde.py",
                            *(a for a in sys.argv[1:] if a != "--summary-only")])
        out.write_text(f"<!-- written by benchmarks/pruning_vs_fde.py -->\n\n# PEP and DeepLight "
                       f"against uniform widths at equal size\n\n`{command}`; setting: the docstring "
                       f"of benchmarks/pruning_vs_fde.py.\n\n" + text)


if __name__ == "__main__":
    main()
