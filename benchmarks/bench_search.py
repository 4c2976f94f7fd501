"""Search cost of every method as a ratio of one FDE training on the same data (AutoDim Fig. 7a).

FDE is ``embdim.train.Trainer.fit`` at the largest candidate width for ``--epochs`` epochs
(validation AUC after each, no early stop); each method runs its ``search`` with the same model,
data, batch size and epochs (the per-method settings below make the search cover ``--epochs``
passes over the training split where the method has such an option). Pruning, quantisation and
streaming methods whose cost is in their retraining are listed with their search only.

    python benchmarks/bench_search.py                           # synthetic demo data, 200k rows
    python benchmarks/bench_search.py --prepared prepared/criteo2m --candidates 2 4 8 16 \\
        --batch-size 4096 --methods autodim sseds
    python benchmarks/bench_search.py --methods autodim ad-1 ad-3 autodim-s --order second

Each figure is the fastest of ``--repeats`` runs (2 by default: timings on shared or virtual
machines vary by 10-15% from run to run). Prints one line per method and writes
benchmarks/results/search.json. Run it on a quiet machine.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import ModelOptions, build_model
from embdim.search import METHODS, SearchContext, make_method
from embdim.train.trainer import Trainer, seed_everything

RESULTS = Path(__file__).parent / "results"
AUTODIM_FAMILY = ("autodim", "autodim-s", "ad-1", "ad-2", "ad-3", "ad-4")
NOT_SEARCHES = ("plan", "fde", "random")  # no search of their own (``random`` is ``ras``)


def method_config(name: str, epochs: int, candidates: list[int], order: str) -> dict:
    """The method's options for a search of ``epochs`` passes with these candidates."""
    cfg: dict = {"name": name}
    if name in AUTODIM_FAMILY:
        cfg.update(epochs=epochs, candidates=candidates)
        if name != "autodim-s":
            cfg["order"] = order
    elif name == "sseds":
        cfg.update(pretrain_width=max(candidates))
    elif name == "ras":
        cfg.update(trials=2, trial_epochs=epochs, candidates=candidates)
    elif name == "mde":
        cfg.update(trial_epochs=epochs, candidates=candidates)
    return cfg


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", help="a prepared dataset folder (default: synthetic demo data)")
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic rows (without --prepared)")
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--mlp", type=int, nargs="+", default=[128, 128])
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=4096)
    ap.add_argument("--candidates", type=int, nargs="+", default=[2, 8, 16, 24, 32])
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=None,
                    help="default: every registered method that searches")
    ap.add_argument("--order", default="first", choices=["first", "second"])
    ap.add_argument("--repeats", type=int, default=2,
                    help="runs of each search (and of FDE, at least 2); the fastest is reported")
    args = ap.parse_args()
    methods = args.methods or [m for m in METHODS if m not in NOT_SEARCHES]

    tmp = None
    if args.prepared:
        path = Path(args.prepared)
    else:
        from embdim.data.synthetic import default_demo_spec, write_synthetic_dataset

        tmp = tempfile.TemporaryDirectory()
        path = Path(tmp.name) / "data"
        write_synthetic_dataset(path, default_demo_spec(), args.rows, seed=0)
    ds = PreparedDataset(path)
    train = TrainConfig(batch_size=args.batch_size, epochs=args.epochs, early_stop=0,
                        threads=args.threads, seed=0)
    opts = ModelOptions(name=args.model, mlp=args.mlp, dropout=0.0)
    full = max(args.candidates)

    def fde_fit() -> float:
        seed_everything(0)
        model = build_model(args.model, ds.schema, dim=full, options=opts)
        t0 = time.perf_counter()
        Trainer(model, ds, train, quiet=True).fit()
        return time.perf_counter() - t0

    # the first run in a process pays its warm-up; each figure is the fastest of --repeats runs
    fde_seconds = min(fde_fit() for _ in range(max(2, args.repeats)))
    results = {"data": str(args.prepared or f"synthetic demo spec, {args.rows} rows"),
               "model": args.model, "mlp": args.mlp, "epochs": args.epochs,
               "batch_size": args.batch_size, "candidates": args.candidates,
               "train_rows": len(ds.split("train")), "torch_threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(),
               f"fde{full}_fit_seconds": fde_seconds, "methods": {}}
    print(f"FDE-{full} fit, {args.epochs} epoch(s): {fde_seconds:.1f} s")
    for name in methods:
        cfg = method_config(name, args.epochs, args.candidates, args.order)

        def search_seconds(cfg: dict = cfg) -> float:
            method = make_method(cfg)
            seed_everything(0)
            with tempfile.TemporaryDirectory() as work:
                ctx = SearchContext(model_options=opts, train=train, work_dir=Path(work),
                                    quiet=True, log=lambda m: None)
                t0 = time.perf_counter()
                method.search(ds, ctx)
                return time.perf_counter() - t0

        seconds = min(search_seconds() for _ in range(args.repeats))
        results["methods"][name] = {"search_seconds": seconds, "ratio_to_fde": seconds / fde_seconds,
                                    "options": cfg}
        print(f"{name}: search {seconds:.1f} s = {seconds / fde_seconds:.2f} x FDE-{full} fit")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "search.json").write_text(json.dumps(results, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
