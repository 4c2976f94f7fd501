"""Data-parallel speed-up: ``torchrun --nproc_per_node=N -m embdim run`` vs one process.

Trains DeepFM (FDE, dim 16, MLP [128, 128], batch 4096, ``--steps`` steps of one epoch) on a
synthetic Criteo-shaped dataset (39 fields; ``--rows`` rows) and reads the training samples/s that
each run folder's ``metrics.json`` records (for N processes: the rows of all of them per second).
Compared: one process with 1 thread, one process with N threads (torch's intra-op parallelism),
N processes with 1 thread each (gloo all-reduce of the gradients).

    python benchmarks/bench_distributed.py                  # N = 2, 500k rows
    python benchmarks/bench_distributed.py --procs 4 --rows 2000000

Prints the figures and writes benchmarks/results/distributed.json.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import yaml

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import synthetic_criteo_shaped  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def run(cmd: list[str], threads: int) -> float:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    t0 = time.perf_counter()
    subprocess.run(cmd, check=True, env=env, stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, default=500_000)
    p.add_argument("--procs", type=int, default=2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--out", default=str(RESULTS / "distributed.json"))
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        data = tmp / "data"
        synthetic_criteo_shaped(data, args.rows, min_count=10)
        result = {"rows": args.rows, "procs": args.procs, "steps": args.steps,
                  "torch": torch.__version__, "cpus": os.cpu_count(), "runs": {}}

        def config(threads: int) -> Path:
            cfg = {"data": {"path": str(data)},
                   "model": {"name": "deepfm", "mlp": [128, 128]},
                   "method": {"name": "fde", "dim": 16},
                   "train": {"batch_size": 4096, "epochs": 1, "early_stop": 0, "seed": 0,
                             "max_steps_per_epoch": args.steps, "threads": threads}}
            path = tmp / f"cfg-{threads}.yaml"
            path.write_text(yaml.safe_dump(cfg))
            return path

        embdim = [sys.executable, "-m", "embdim", "--quiet", "run"]
        torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
                    f"--nproc_per_node={args.procs}"]
        cases = {
            "1 process, 1 thread": (embdim + [str(config(1))], 1),
            f"1 process, {args.procs} threads": (embdim + [str(config(args.procs))], args.procs),
            f"{args.procs} processes (DDP, gloo), 1 thread each":
                (torchrun + ["-m", "embdim", "--quiet", "run", str(config(1))], 1),
        }
        for i, (name, (cmd, threads)) in enumerate(cases.items()):
            out = tmp / f"run{i}"
            wall = run(cmd + ["--out", str(out)], threads)
            m = json.loads((out / "metrics.json").read_text())
            result["runs"][name] = {"train_samples_per_second": round(m["train_samples_per_second"]),
                                    "test_auc": m["test_auc"], "wall_seconds": round(wall, 1)}
            print(f"{name:45s} train {m['train_samples_per_second']:9,.0f} samples/s "
                  f"(test AUC {m['test_auc']:.4f}, {wall:.0f} s wall)", flush=True)
    base = result["runs"]["1 process, 1 thread"]["train_samples_per_second"]
    for r in result["runs"].values():
        r["speedup_vs_1_thread"] = round(r["train_samples_per_second"] / base, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
