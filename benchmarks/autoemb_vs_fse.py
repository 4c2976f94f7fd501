"""AutoEmb against FSE (or any two streaming methods) per task: per-seed online and offline loss,
mean ± sample std, and the Welch t-test p-value of the online loss (docs/autoemb.md, Results).

    python benchmarks/autoemb_vs_fse.py runs/mls-sgd-lr01 [--methods fse autoemb] [--out FILE]
    python benchmarks/autoemb_vs_fse.py runs/mls-sgd-lr01 runs/mls-sgd-lr01-fse2 --methods fse-2 autoemb

Reads every finished streaming run below the folders; runs of one (task, method) are the seeds
(FSE with ``model.fixed_width: W`` is the method ``fse-W``).
Prints a Markdown table; with ``--out`` also writes it as JSON.
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from embdim.autoemb.run import find_stream_runs
from embdim.io import atomic_write_json
from embdim.stats import welch_ttest


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--methods", nargs=2, default=["fse", "autoemb"], metavar=("BASELINE", "METHOD"))
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    runs: dict[tuple[str, str], dict[int, dict]] = defaultdict(dict)
    for m in find_stream_runs(args.folders):
        label = m["method"]  # FSE with a model.fixed_width of its own: fse-<width>
        if label == "fse" and m["_config"].model.fixed_width:
            label += f"-{m['_config'].model.fixed_width}"
        if label in args.methods:
            runs[(m["task"], label)][m["_config"].train.seed] = m
    result = []
    print("| task | method | online loss per seed | online mean ± std | offline mean | Welch p |")
    print("|---|---|---|---|---|---|")
    for task in ("regression", "classification"):
        key = "mse" if task == "regression" else "cross_entropy"
        online = {}
        for method in args.methods:
            by_seed = runs.get((task, method), {})
            if not by_seed:
                continue
            seeds = sorted(by_seed)
            on = [by_seed[s][f"online_{key}"] for s in seeds]
            off = [by_seed[s][f"offline_{key}"] for s in seeds]
            online[method] = on
            p = welch_ttest(online[args.methods[0]], on) if method == args.methods[1] and \
                args.methods[0] in online else None
            std = np.std(on, ddof=1) if len(on) > 1 else 0.0
            print(f"| {task} | {method} | {' / '.join(f'{x:.4f}' for x in on)} (seeds "
                  f"{', '.join(map(str, seeds))}) | {np.mean(on):.4f} ± {std:.4f} "
                  f"| {np.mean(off):.4f} | {'' if p is None else f'{p:.3f}'} |")
            result.append({"task": task, "method": method, "seeds": seeds, "online": on,
                           "offline": off, "welch_p_vs_baseline": p})
    if args.out:
        atomic_write_json(Path(args.out), result)
        print(f"-> {args.out}")


if __name__ == "__main__":
    main()
