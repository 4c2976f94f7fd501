"""Streaming throughput of AutoEmb and its baselines: interactions per second through the whole
evaluate-then-train loop (controller update, scoring, model update), at the paper's sizes
(widths 2/16/128, hidden 512x512, controllers 512x512, batch 500).

    python benchmarks/bench_autoemb.py                                   # planted stream, 20k interactions
    python benchmarks/bench_autoemb.py --stream prepared/mls-stream      # a prepared stream
    python benchmarks/bench_autoemb.py --ml20m                           # ML-20M's id counts
    python benchmarks/bench_autoemb.py --methods autoemb --orders first second --threads 2

``--ml20m``: a planted stream with ML-20M's 138,493 users and 26,744 items (the id counts are
what make a dense pass over the tables expensive). Every method is timed with dense id tables
(Adam over every row) and with ``train.optimizer: sparse_adam`` (rows of the batch only), unless
``--tables`` says otherwise.

Prints one line per method and writes benchmarks/results/autoemb.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from pathlib import Path

import torch

from embdim.autoemb.config import stream_config_from_dict
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.stream import InteractionStream
from embdim.autoemb.synthetic import PlantedStreamSpec, planted_stream
from embdim.io import atomic_write_json

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream", help="a prepared stream folder (default: a planted stream)")
    ap.add_argument("--interactions", type=int, default=20_000, help="interactions timed per method")
    ap.add_argument("--users", type=int, default=600, help="planted stream: users")
    ap.add_argument("--items", type=int, default=9_000, help="planted stream: items")
    ap.add_argument("--methods", nargs="+", default=["fse", "sam", "darts", "autoemb"])
    ap.add_argument("--orders", nargs="+", default=["second", "first"],
                    help="orders timed for autoemb and darts")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=500)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ml20m", action="store_true",
                    help="planted stream with ML-20M's id counts (138,493 users, 26,744 items)")
    ap.add_argument("--tables", nargs="+", choices=("dense", "sparse"), default=["dense", "sparse"],
                    help="id-table updates to time (train.optimizer adam / sparse_adam)")
    ap.add_argument("--out", default=str(RESULTS / "autoemb.json"))
    args = ap.parse_args()

    if args.ml20m:
        args.users, args.items = 138_493, 26_744
    if args.stream:
        stream = InteractionStream.open(args.stream)
        source = args.stream
    else:
        stream, _ = planted_stream(PlantedStreamSpec(num_users=args.users, num_items=args.items,
                                                     interactions=args.interactions, seed=0))
        source = f"planted stream ({args.users} users, {args.items} items)"
    torch.set_num_threads(args.threads)
    rows = []
    for method in args.methods:
        for order, tables in [(o, t) for o in (args.orders if method in ("autoemb", "darts") else ["-"])
                              for t in args.tables]:
            cfg = stream_config_from_dict({
                "data": {"limit": args.interactions},
                "method": {"name": method, **({"order": order} if order != "-" else {})},
                "train": {"batch_size": args.batch_size, "threads": args.threads, "device": args.device,
                          "optimizer": "sparse_adam" if tables == "sparse" else "adam"}})
            learner = StreamLearner(stream, cfg, quiet=True)
            t0 = time.perf_counter()
            summary = learner.run()
            wall = time.perf_counter() - t0
            row = {"method": method, "order": order, "tables": tables, "interactions": learner.length,
                   "seconds": round(wall, 3),
                   "interactions_per_second": round(learner.length / wall, 1)}
            rows.append(row)
            print(f"{method:8s} order={order:6s} tables={tables:6s} "
                  f"{row['interactions_per_second']:>10,.0f} interactions/s "
                  f"({learner.length:,} in {wall:.1f} s; online accuracy "
                  f"{summary['online']['accuracy']:.4f})", flush=True)
    result = {
        "benchmark": "autoemb streaming throughput",
        "source": source, "users": stream.num_users, "items": stream.num_items,
        "batch_size": args.batch_size, "threads": args.threads, "device": args.device,
        "widths": [2, 16, 128], "hidden": [512, 512], "controller_hidden": [512, 512],
        "machine": {"cpu_count": os.cpu_count(), "processor": platform.processor() or platform.machine(),
                    "torch": torch.__version__, "load_average_1min": os.getloadavg()[0]},
        "results": rows,
    }
    atomic_write_json(args.out, result)
    print(f"-> {args.out}")


if __name__ == "__main__":
    main()
