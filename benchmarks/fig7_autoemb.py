"""AutoEmb's Fig. 7: the mean weight the controller puts on each candidate width, per popularity
bucket, with the popularity input and without it (``method.controller_inputs``).

    python benchmarks/fig7_autoemb.py planted                 # the planted stream, seeds 1-3
    python benchmarks/fig7_autoemb.py runs runs/mls-fig7      # run folders of `embdim stream run`

``planted``: the planted stream of ``tests/test_autoemb.py`` (:func:`embdim.autoemb.synthetic.
fig7_spec`: users arrive over the first 90% of the stream; heavy users have rich tastes, light
users' ratings depend on the item only plus noise), each seed's stream and model
drawn from that seed, for each set of controller inputs (``--inputs``: ``popularity``,
``none``, ``popularity,context``, ``context``). ``runs``: every finished
streaming run below the folders, grouped by task, method and controller inputs. Both print, per
user (and item) popularity bucket of the online stage, the interactions and the mean weight on
each width (mean over seeds), and write JSON (``--out``).
"""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from embdim.autoemb.config import stream_config_from_dict
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.run import find_stream_runs
from embdim.autoemb.synthetic import fig7_spec, planted_stream
from embdim.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"
INPUTS = {"popularity": ["popularity"], "none": [], "popularity,context": ["popularity", "context"],
          "context": ["context"]}


def planted_fig7_config(seed: int, inputs: list[str], **method: Any):
    return stream_config_from_dict({
        "model": {"widths": [1, 2, 16], "hidden": [64, 64]},
        "method": {"name": "autoemb", "order": "first", "controller_hidden": [32, 32],
                   "controller_lr": 0.01, "controller_inputs": inputs, **method},
        "train": {"batch_size": 100, "threads": 1, "seed": seed, "optimizer": "adam"}})


def weights_by_bucket(runs: list[dict[str, Any]], entity: str = "user",
                      stage: str = "online") -> dict[int, dict[str, Any]]:
    """min popularity -> interactions (summed) and mean weight per width (mean over runs)."""
    per: dict[int, list[tuple[int, list[float]]]] = defaultdict(list)
    for m in runs:
        for r in m["by_popularity"][entity][stage]:
            if "weights" in r:
                per[r["min_popularity"]].append((r["interactions"], r["weights"]))
    return {p: {"interactions": int(sum(c for c, _ in v)), "runs": len(v),
                "weights": np.mean([w for _, w in v], axis=0).round(4).tolist()}
            for p, v in sorted(per.items())}


def print_table(title: str, table: dict[int, dict[str, Any]], widths: list[int]) -> None:
    print(f"\n{title}")
    print("| popularity | interactions | " + " | ".join(f"w(d={w})" for w in widths) + " |")
    print("|---" * (len(widths) + 2) + "|")
    for p, row in table.items():
        cells = " | ".join(f"{x:.2f}" for x in row["weights"])
        print(f"| {p}+ | {row['interactions']:,} | {cells} |")


def planted(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for label in args.inputs:
        inputs = INPUTS[label]
        runs = []
        for seed in args.seeds:
            stream, _ = planted_stream(fig7_spec(seed, args.interactions))
            cfg = planted_fig7_config(seed, inputs, validation=args.validation)
            summary = StreamLearner(stream, cfg, quiet=True).run()
            runs.append(summary)
            rows = summary["by_popularity"]["user"]["online"]
            print(f"[{label}] seed {seed}: online MSE {summary['online']['mse']:.4f}; weight on "
                  "d=16 by popularity " + " ".join(f"{r['min_popularity']}:{r['weights'][-1]:.2f}"
                                                    for r in rows), flush=True)
        table = weights_by_bucket(runs)
        out[label] = {"online_mse": [r["online"]["mse"] for r in runs], "user": table}
        print_table(f"planted stream, controller inputs [{label}] (users, online, mean of seeds "
                    f"{args.seeds})", table, [1, 2, 16])
    return out


def from_runs(args: argparse.Namespace) -> dict[str, Any]:
    groups: dict[tuple[str, str, str], list[dict[str, Any]]] = defaultdict(list)
    for m in find_stream_runs(args.folders):
        if m["method"] == "fse":
            continue
        inputs = ",".join(m["_config"].method.controller_inputs)
        groups[(m["task"], m["method"], inputs)].append(m)
    out: dict[str, Any] = {}
    for (task, method, inputs), runs in sorted(groups.items()):
        key = f"{task} {method} inputs=[{inputs}]"
        loss = "mse" if task == "regression" else "cross_entropy"
        out[key] = {"seeds": sorted(m["seed"] for m in runs),
                    f"online_{loss}": [m[f"online_{loss}"] for m in runs]}
        for entity in ("user", "item"):
            table = weights_by_bucket(runs, entity)
            out[key][entity] = table
            print_table(f"{key}, {entity}s, online, seeds {out[key]['seeds']}", table,
                        runs[0]["_config"].model.widths)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    sub = ap.add_subparsers(dest="what", required=True)
    p = sub.add_parser("planted", help="the planted stream, with and without popularity")
    p.add_argument("--seeds", type=int, nargs="+", default=[1, 2, 3])
    p.add_argument("--interactions", type=int, default=30_000)
    p.add_argument("--validation", default="scored", choices=["scored", "replay"],
                   help="method.validation (the controllers' validation mini-batch)")
    p.add_argument("--inputs", nargs="+", default=list(INPUTS), choices=list(INPUTS),
                   help="controller inputs to compare (method.controller_inputs)")
    p.add_argument("--out", default=str(RESULTS / "autoemb_fig7_planted.json"))
    r = sub.add_parser("runs", help="tables from finished run folders")
    r.add_argument("folders", nargs="+")
    r.add_argument("--out", default=str(RESULTS / "autoemb_fig7_runs.json"))
    args = ap.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    result = planted(args) if args.what == "planted" else from_runs(args)
    atomic_write_json(Path(args.out), result)
    print(f"\n-> {args.out}")


if __name__ == "__main__":
    main()
