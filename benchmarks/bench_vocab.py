"""Does a training step grow with the vocabulary? Samples/s at ~110k and at ~1M ids, in one process.

    python benchmarks/bench_vocab.py                          # synthetic, 1M rows, min_count 10 and 1
    python benchmarks/bench_vocab.py --small DIR --large DIR  # two prepared dataset folders

The two datasets are bench_train.py's synthetic Criteo-shaped data (39 fields, cardinalities
log-spaced 10..1e6, Zipf values) with values seen fewer than 10 times sharing the OOV id (108,878
ids) and with every value kept (1,002,784 ids). One library trainer per dataset (DeepFM dim 16, MLP
[128, 128], dropout 0, batch 4096, ``--optimizer``, default the library's ``auto``) runs its
warm-up, then the two alternate ``--steps``-step windows ``--repeats`` times, so that a drift of the
host's speed (10-30% between runs on a shared virtual machine) falls on both alike. Prints each
one's median samples/s, the optimiser ``auto`` chose for it, and the ratio large / small; writes
them to benchmarks/results/vocab.json. ``--optimizer adam,sparse_adam`` builds one trainer per
optimiser on each dataset (all alternating): the comparison behind ``auto``'s rule.

    python benchmarks/bench_vocab.py --optimizer adam,sparse_adam --out /tmp/vocab_optimizers.json
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import ModelOptions, build_model
from embdim.train.trainer import Trainer, seed_everything

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import print_and_write, synthetic_criteo_shaped  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def make_trainer(dataset: PreparedDataset, args, optimizer: str) -> Trainer:
    seed_everything(0)
    options = ModelOptions(name="deepfm", mlp=[128, 128], dropout=0.0)
    model = build_model("deepfm", dataset.schema, dim=16, options=options)
    cfg = TrainConfig(batch_size=args.batch, epochs=1, max_steps_per_epoch=args.warmup,
                      log_every=50, optimizer=optimizer)
    trainer = Trainer(model, dataset, cfg, quiet=True)
    trainer.train_epoch(0)  # warm-up: allocator, threads, the optimiser's state
    trainer.cfg.max_steps_per_epoch = args.steps
    return trainer


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--small", help="prepared dataset folder with the smaller vocabulary")
    p.add_argument("--large", help="prepared dataset folder with the larger vocabulary")
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (default 1M)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--steps", type=int, default=20, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=10, help="windows per dataset; medians reported")
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--optimizer", default="auto",
                   help="train.optimizer (default auto), or several, comma-separated")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", default=str(RESULTS / "vocab.json"))
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        data = {}
        for name, folder, min_count in (("small", args.small, 10), ("large", args.large, 1)):
            data[name] = (PreparedDataset(folder) if folder else
                          synthetic_criteo_shaped(Path(tmp) / name, args.rows, min_count))
        optimizers = args.optimizer.split(",")
        trainers = {(name, o): make_trainer(ds, args, o) for name, ds in data.items() for o in optimizers}
        rates: dict[tuple[str, str], list[float]] = {key: [] for key in trainers}
        for r in range(args.repeats):
            for key, trainer in trainers.items():
                _, samples, seconds = trainer.train_epoch(1 + r)
                rates[key].append(samples / seconds)
    result = {"batch": args.batch, "threads": torch.get_num_threads(), "torch": torch.__version__,
              "cpu_capability": torch.backends.cpu.get_cpu_capability(),
              "steps_per_window": args.steps, "windows": args.repeats}
    for (name, o), trainer in trainers.items():
        median = statistics.median(rates[name, o])
        result[f"{name} {o}"] = {"ids": int(sum(data[name].schema.vocab_sizes)),
                                 "optimizer": trainer.optimizer_name,
                                 "train_samples_per_second": round(median),
                                 "ms_per_step": round(1000 * args.batch / median, 1),
                                 "windows": [round(x) for x in rates[name, o]]}
    for o in optimizers:
        result[f"large_vs_small {o}"] = round(result[f"large {o}"]["train_samples_per_second"]
                                              / result[f"small {o}"]["train_samples_per_second"], 3)
    print_and_write(result, args.out, width=24)


if __name__ == "__main__":
    t0 = time.perf_counter()
    main()
    print(f"{time.perf_counter() - t0:.0f}s")
