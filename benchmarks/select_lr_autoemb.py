"""Pick each streaming method's DLRS optimiser and learning rate on the offline stage only (AutoEmb
sec. 3.2: hyper-parameters, the baselines' included, chosen by cross-validation).

    python benchmarks/select_lr_autoemb.py runs/mls-lr01 runs/mls-lr001
    python benchmarks/select_lr_autoemb.py runs/mls-sgd-lr01 runs/mls-adam-lr01 \
        --out benchmarks/results/autoemb_optimizer_selection.json

Reads every finished streaming run below the folders and groups them by (task, method,
``train.optimizer``, ``train.lr``); for each task and method it picks the setting with the lowest mean
**offline-stage** loss over the seeds (``offline_mse`` / ``offline_cross_entropy``: the first
``data.offline_fraction`` of the stream, before any online interaction is seen). The online
metrics are never read. Prints the table and the choice; writes JSON (``--out``).
"""

from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

import numpy as np

from embdim.autoemb.run import find_stream_runs
from embdim.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+")
    ap.add_argument("--out", default=str(RESULTS / "autoemb_lr_selection.json"))
    args = ap.parse_args()
    groups: dict[tuple[str, str], dict[tuple[str, float], list[float]]] = \
        defaultdict(lambda: defaultdict(list))
    for m in find_stream_runs(args.folders):
        key = "offline_mse" if m["task"] == "regression" else "offline_cross_entropy"
        label = m["method"]
        inputs = m["_config"].method.controller_inputs
        if m["method"] in ("autoemb", "sam") and list(inputs) != ["popularity", "context"]:
            label += f" [{','.join(inputs)}]"
        train = m["_config"].train
        groups[(m["task"], label)][(train.optimizer, train.lr)].append(m[key])
    result = []
    print("| task | method | optimizer | lr | seeds | offline loss (mean) | chosen |")
    print("|---|---|---|---|---|---|---|")
    for (task, method), by_lr in sorted(groups.items()):
        means = {lr: float(np.mean(v)) for lr, v in by_lr.items()}
        best = min(means, key=means.get)
        for opt, lr in sorted(means, key=lambda k: (k[0], -k[1])):
            print(f"| {task} | {method} | {opt} | {lr:g} | {len(by_lr[opt, lr])} | "
                  f"{means[opt, lr]:.4f} | {'yes' if (opt, lr) == best else ''} |")
        result.append({"task": task, "method": method, "chosen_optimizer": best[0],
                       "chosen_lr": best[1],
                       "offline_loss": {f"{opt} {lr:g}": v for (opt, lr), v in means.items()},
                       "seeds": {f"{opt} {lr:g}": len(v) for (opt, lr), v in by_lr.items()}})
    atomic_write_json(Path(args.out), result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
