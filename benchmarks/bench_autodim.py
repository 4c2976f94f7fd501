"""AutoDim search wall time as a ratio of one FDE training run on the same data (AutoDim Fig. 7a).

Both sides train the same base model for the same number of epochs over the same training split:
FDE is `embdim.train.Trainer.fit` at the largest candidate width (validation AUC after each epoch,
no early stop); AutoDim is the search loop (supernet, alpha updated on validation batches once per
``update_every`` steps, validation AUC after each epoch). Variants AD-1..AD-4, AutoDim-s and the
second-order step are timed with ``--methods``.

    python benchmarks/bench_autodim.py                         # the demo's synthetic data, 200k rows
    python benchmarks/bench_autodim.py --prepared prepared/criteo2m --epochs 1
    python benchmarks/bench_autodim.py --methods autodim ad-1 ad-3 autodim-s --order second

Prints one line per method and writes benchmarks/results/autodim.json.
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
from embdim.search import SearchContext, make_method
from embdim.train.trainer import Trainer, seed_everything

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--prepared", help="a prepared dataset folder (default: synthetic demo data)")
    ap.add_argument("--rows", type=int, default=200_000, help="synthetic rows (without --prepared)")
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--epochs", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--methods", nargs="+", default=["autodim"])
    ap.add_argument("--order", default="first", choices=["first", "second"])
    args = ap.parse_args()

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
    opts = ModelOptions(name=args.model)

    seed_everything(0)
    model = build_model(args.model, ds.schema, dim=32, options=opts)
    t0 = time.perf_counter()
    Trainer(model, ds, train, quiet=True).fit()
    fde_seconds = time.perf_counter() - t0
    results = {"data": str(args.prepared or f"synthetic demo spec, {args.rows} rows"),
               "model": args.model, "epochs": args.epochs, "train_rows": len(ds.split("train")),
               "torch_threads": torch.get_num_threads(), "fde32_fit_seconds": fde_seconds,
               "methods": {}}
    print(f"FDE-32 fit, {args.epochs} epoch(s): {fde_seconds:.1f} s")
    for name in args.methods:
        method_cfg = {"name": name, "epochs": args.epochs}
        if name != "autodim-s":
            method_cfg["order"] = args.order
        method = make_method(method_cfg)
        seed_everything(0)
        t0 = time.perf_counter()
        method.search(ds, SearchContext(model_options=opts, train=train, quiet=True, log=lambda m: None))
        seconds = time.perf_counter() - t0
        results["methods"][name] = {"search_seconds": seconds, "ratio_to_fde": seconds / fde_seconds,
                                    "order": method_cfg.get("order", "joint")}
        print(f"{name} search ({method_cfg.get('order', 'joint')}), {args.epochs} epoch(s): "
              f"{seconds:.1f} s = {seconds / fde_seconds:.2f} x FDE-32 fit")
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "autodim.json").write_text(json.dumps(results, indent=2) + "\n")
    if tmp is not None:
        tmp.cleanup()


if __name__ == "__main__":
    main()
