"""Training / inference throughput of DeepFM through the library vs a minimal pure-PyTorch loop.

The library path is what `embdim run` does: a prepared dataset folder (memory-mapped arrays) read
by embdim's BatchLoader (shuffled, one index_select per batch), the model from
`embdim.build_model`, one epoch step of `embdim.train.Trainer`. The reference is the smallest loop
that computes the same model: a pytorch-fm-style DeepFM (one nn.Embedding with offsets, stock
dropout, torch.optim.Adam) over in-memory tensors sliced in order.

Data: a prepared dataset folder (`--prepared DIR`, e.g. `embdim prepare criteo` of the 2M-line
file from ../shared/tools/gen_criteo_synth.py), or by default a synthetic Criteo-shaped one (39
fields, cardinalities log-spaced 10..1e6, Zipf values, min_count 10) written to a temporary folder.

    python benchmarks/bench_train.py                       # synthetic, 1M rows
    python benchmarks/bench_train.py --prepared prepared/criteo2m --amp

Each figure is the median of ``--repeats`` timed windows of ``--steps`` steps. Prints the figures
and writes them to benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import ModelOptions, build_model
from embdim.train.trainer import Trainer, seed_everything

RESULTS = Path(__file__).parent / "results"


class MinimalDeepFM(nn.Module):
    """pytorch-fm's DeepFM: linear + FM + MLP over one embedding table with field offsets."""

    def __init__(self, vocab_sizes: list[int], dim: int, mlp: list[int], dropout: float):
        super().__init__()
        total = sum(vocab_sizes)
        self.register_buffer("offsets", torch.tensor(np.cumsum([0] + vocab_sizes[:-1])))
        self.embedding = nn.Embedding(total, dim)
        self.linear = nn.Embedding(total, 1)
        self.bias = nn.Parameter(torch.zeros(1))
        nn.init.normal_(self.embedding.weight, std=1e-4)
        nn.init.zeros_(self.linear.weight)
        layers, width = [], len(vocab_sizes) * dim
        for h in mlp:
            layers += [nn.Linear(width, h), nn.BatchNorm1d(h), nn.ReLU(), nn.Dropout(dropout)]
            width = h
        layers.append(nn.Linear(width, 1))
        self.mlp = nn.Sequential(*layers)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        ids = ids.long() + self.offsets
        e = self.embedding(ids)
        fm = 0.5 * (e.sum(1).pow(2) - e.pow(2).sum(1)).sum(1)
        return self.linear(ids).sum((1, 2)) + self.bias + fm + self.mlp(e.flatten(1)).squeeze(1)


def time_minimal_loop(dataset: PreparedDataset, args, *, device: str = "cpu",
                      compile_model: bool = False) -> list[float]:
    """Samples/s of ``args.repeats`` timed windows of ``args.steps`` steps (after a warm-up), on
    ``device`` (data there too), optionally ``torch.compile``d (the GPU reference loop)."""
    train = dataset.split("train")
    x = torch.from_numpy(np.array(train.x)).to(device)
    y = torch.from_numpy(np.array(train.y)).to(device)
    seed_everything(0)
    model = MinimalDeepFM(dataset.schema.vocab_sizes, args.dim, args.mlp, args.dropout).to(device)
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    forward = torch.compile(model) if compile_model else model
    b, n = args.batch, len(y)
    nb = n // b
    sync = torch.cuda.synchronize if device.startswith("cuda") else (lambda: None)

    def step(i: int) -> None:
        s = (i % nb) * b
        loss = F.binary_cross_entropy_with_logits(forward(x[s:s + b]), y[s:s + b])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for i in range(args.warmup):
        step(i)
    sync()
    rates, i = [], args.warmup
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step(i)
            i += 1
        sync()
        rates.append(args.steps * b / (time.perf_counter() - t0))
    return rates


def time_library(dataset: PreparedDataset, args, amp: bool) -> tuple[list[float], float, str]:
    """Training samples/s of ``args.repeats`` windows, inference samples/s on valid, and the
    optimiser the trainer uses (what ``train.optimizer: auto`` chose)."""
    seed_everything(0)
    options = ModelOptions(name="deepfm", mlp=list(args.mlp), dropout=args.dropout)
    model = build_model("deepfm", dataset.schema, dim=args.dim, options=options)
    cfg = TrainConfig(batch_size=args.batch, epochs=1, max_steps_per_epoch=args.warmup,
                      log_every=50, amp=amp, eval_batch_size=16384, optimizer=args.optimizer)
    trainer = Trainer(model, dataset, cfg, quiet=True)
    trainer.train_epoch(0)  # warm-up (allocator, threads)
    trainer.cfg.max_steps_per_epoch = args.steps
    rates = []
    for r in range(args.repeats):
        _, samples, seconds = trainer.train_epoch(1 + r)
        rates.append(samples / seconds)
    _, _, infer_seconds = trainer.predict("valid")
    return rates, len(dataset.split("valid")) / infer_seconds, trainer.optimizer_name


def synthetic_criteo_shaped(out: Path, rows: int, min_count: int = 10) -> PreparedDataset:
    """39 fields, cardinalities log-spaced 10..1e6, Zipf(1.1) values, min_count 10 (as Criteo)."""
    from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset

    cards = np.round(np.geomspace(10, 1e6, 39)).astype(int).tolist()
    spec = SyntheticSpec(cardinalities=cards, true_dims=[4] * 39, zipf_exponent=1.1, seed=0)
    write_synthetic_dataset(out, spec, rows, seed=0, min_count=min_count)
    return PreparedDataset(out)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prepared", help="prepared dataset folder (default: synthetic Criteo-shaped)")
    p.add_argument("--rows", type=int, default=1_000_000, help="synthetic rows (default 1M)")
    p.add_argument("--min-count", type=int, default=10,
                   help="synthetic data: values seen fewer times share the OOV id (default 10)")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--mlp", type=int, nargs="+", default=[128, 128])
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=40, help="steps per timed window")
    p.add_argument("--repeats", type=int, default=5, help="timed windows; the median is reported")
    p.add_argument("--warmup", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--optimizer", default="auto", choices=["auto", "adam", "sparse_adam", "rowwise_adagrad"],
                   help="train.optimizer of the library path (default auto, the library's: lazy "
                        "row-wise Adam on the tables for vocabularies of >= 3 ids per row a batch "
                        "reads, else dense Adam)")
    p.add_argument("--amp", action="store_true",
                   help="also time the library with train.amp (bfloat16 matrix products)")
    p.add_argument("--out", default=str(RESULTS / "train.json"))
    args = p.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory() as tmp:
        if args.prepared:
            dataset = PreparedDataset(args.prepared)
        else:
            t0 = time.perf_counter()
            dataset = synthetic_criteo_shaped(Path(tmp) / "criteo-shaped", args.rows,
                                              args.min_count)
            print(f"synthetic Criteo-shaped data: {args.rows:,} rows in {time.perf_counter() - t0:.0f}s")
        schema = dataset.schema
        print(f"data: {schema.num_fields} fields, {sum(schema.vocab_sizes):,} ids, "
              f"{schema.splits['train']:,} training rows; batch {args.batch}, dim {args.dim}, "
              f"MLP {args.mlp}, {torch.get_num_threads()} threads")
        minimal = time_minimal_loop(dataset, args)
        fp32, infer_fp32, optimizer = time_library(dataset, args, amp=False)
        bf16, infer_bf16, _ = time_library(dataset, args, amp=True) if args.amp else ([], 0.0, "")
    med = lambda r: round(float(np.median(r))) if r else None
    result = {
        "data": args.prepared or f"synthetic criteo-shaped {args.rows} rows, min_count "
                                 f"{args.min_count}",
        "fields": schema.num_fields, "ids": int(sum(schema.vocab_sizes)),
        "batch": args.batch, "dim": args.dim, "mlp": args.mlp,
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "optimizer": args.optimizer, "resolved_optimizer": optimizer,
        "cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "steps_per_window": args.steps, "windows": args.repeats,
        "minimal_loop_train_samples_per_second": med(minimal),
        "library_train_samples_per_second": med(fp32),
        "library_infer_samples_per_second": round(infer_fp32),
        "library_vs_minimal": round(med(fp32) / med(minimal), 3),
        "library_amp_train_samples_per_second": med(bf16),
        "library_amp_infer_samples_per_second": round(infer_bf16) if bf16 else None,
        "windows_samples_per_second": {"minimal": [round(r) for r in minimal],
                                       "library": [round(r) for r in fp32],
                                       "library_amp": [round(r) for r in bf16]},
    }
    print_and_write(result, args.out)


def print_and_write(result: dict, out: str, width: int = 40) -> None:
    """One line per figure, then the figures as JSON in ``out``."""
    for k, v in result.items():
        print(f"{k:{width}s} {v}")
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    Path(out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
