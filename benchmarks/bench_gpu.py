"""GPU training throughput at Criteo shape: the library's trainer vs a torch.compile'd minimal loop.

Data: a synthetic Criteo-shaped prepared dataset (39 fields, cardinalities log-spaced 10..1e6,
Zipf values, min_count 1: about 1.5M ids) written to a temporary folder, or ``--prepared DIR``.
Everything trains from data already on the GPU (the library's in-memory BatchLoader copies the
split there once).

Timed, each as the median of ``--repeats`` windows of ``--steps`` steps after a warm-up:

* ``minimal``: pytorch-fm-style DeepFM (one ``nn.Embedding`` with offsets), ``torch.compile``d,
  ``torch.optim.Adam``, batches sliced in order from GPU tensors — the reference loop;
* ``library/<variant>``: ``embdim.train.Trainer.train_epoch`` (shuffled batches, the fused Adam) for
  DeepFM at a uniform width, with and without CUDA-graph replay (``train.cuda_graphs``),
  bfloat16 autocast (``train.amp``) and ``torch.compile`` (``train.compile``);
* ``library/mixed-*``: the same for a mixed-width plan (what SSEDS and AutoDim retrain);
* ``autodim-search``: the AutoDim search loop (supernet over the candidate widths, bilevel
  updates), its training samples per second over ``--search-steps`` steps.

It also measures the device-to-device copy bandwidth and prints a memory-bandwidth bound for the
DeepFM step: the bytes a step must move at least (embedding rows gathered and their gradients
scattered, the dense embedding gradient zeroed, Adam reading parameters, gradients and two
moments and writing three of them, the MLP activations written once and read back in the
backward) divided by that bandwidth.

    python benchmarks/bench_gpu.py                          # 4M rows, batch 8192, MLP 400x3
    python benchmarks/bench_gpu.py --batch 4096 --mlp 128 128 --variants graphs-amp

Prints one line per variant and writes benchmarks/results/gpu.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import traceback
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parent))
from bench_train import synthetic_criteo_shaped, time_minimal_loop  # noqa: E402

from embdim.config import TrainConfig  # noqa: E402
from embdim.data.dataset import PreparedDataset  # noqa: E402
from embdim.nn.models import ModelOptions, build_model  # noqa: E402
from embdim.plan import DimensionPlan  # noqa: E402
from embdim.train.trainer import Trainer, seed_everything  # noqa: E402

RESULTS = Path(__file__).parent / "results"

# name -> (cuda_graphs, amp, compile)
VARIANTS = {
    "eager": (False, False, False),
    "eager-amp": (False, True, False),
    "graphs": (True, False, False),
    "graphs-amp": (True, True, False),
    "compile-amp": (False, True, True),
    "graphs-compile-amp": (True, True, True),
    "graphs-compile": (True, False, True),
}


def sync() -> None:
    torch.cuda.synchronize()


def mixed_plan(dataset: PreparedDataset, full_dim: int) -> DimensionPlan:
    """A mixed-width plan like SSEDS / AutoDim produce: widths cycling through 1/8..1 of full."""
    schema = dataset.schema
    cycle = [max(1, full_dim * k // 8) for k in (1, 2, 4, 8, 3, 6)]
    dims = [cycle[i % len(cycle)] for i in range(schema.num_fields)]
    return DimensionPlan(method="mixed", field_names=schema.field_names,
                         vocab_sizes=schema.vocab_sizes, dims=dims, full_dim=full_dim,
                         schema_hash=schema.content_hash)


def time_library(dataset: PreparedDataset, args, graphs: bool, amp: bool, compile_: bool,
                 plan: DimensionPlan | None = None) -> tuple[list[float], float]:
    seed_everything(0)
    options = ModelOptions(name="deepfm", mlp=list(args.mlp), dropout=args.dropout)
    model = build_model("deepfm", dataset.schema, plan, dim=args.dim, options=options)
    cfg = TrainConfig(batch_size=args.batch, epochs=1, max_steps_per_epoch=args.warmup,
                      log_every=100, amp=amp, device="cuda", cuda_graphs=graphs,
                      compile=compile_, eval_batch_size=65536)
    trainer = Trainer(model, dataset, cfg, quiet=True)
    trainer.train_epoch(0)  # warm-up: allocator, capture, compilation
    trainer.cfg.max_steps_per_epoch = args.steps
    rates = []
    for r in range(args.repeats):
        _, samples, seconds = trainer.train_epoch(1 + r)
        rates.append(samples / seconds)
    trainer.predict("valid")
    _, _, infer_seconds = trainer.predict("valid")
    return rates, len(dataset.split("valid")) / infer_seconds


def time_autodim_search(dataset: PreparedDataset, args) -> float:
    from embdim.search import SearchContext, make_method

    train = TrainConfig(batch_size=args.batch, epochs=1, early_stop=0, device="cuda",
                        max_steps_per_epoch=args.search_steps, seed=0, eval_batch_size=65536)
    opts = ModelOptions(name="deepfm", mlp=list(args.mlp), dropout=args.dropout)
    method = make_method({"name": "autodim", "epochs": 1})
    seed_everything(0)
    sync()
    t0 = time.perf_counter()
    method.search(dataset, SearchContext(model_options=opts, train=train, quiet=True,
                                         log=lambda m: None))
    sync()
    return args.search_steps * args.batch / (time.perf_counter() - t0)


def copy_bandwidth() -> float:
    """Device-to-device copy, bytes read + written per second."""
    a = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    b = torch.empty_like(a)
    for _ in range(3):
        b.copy_(a)
    sync()
    t0 = time.perf_counter()
    for _ in range(20):
        b.copy_(a)
    sync()
    return 2 * a.numel() * 20 / (time.perf_counter() - t0)


def bandwidth_bound(dataset: PreparedDataset, args, bandwidth: float) -> dict[str, float]:
    """Samples/s if a DeepFM step only moved the bytes it must (fp32, no recomputation)."""
    b, f, d = args.batch, dataset.schema.num_fields, args.dim
    ids = sum(dataset.schema.vocab_sizes)
    gather = b * f * (d + 1) * 4 * 2  # rows read + written (embedding + first-order weight)
    scatter = b * f * (d + 1) * 4 * 3  # gradient rows read, table rows read + written
    zero_grad = ids * (d + 1) * 4  # the dense embedding gradient zeroed
    widths = [f * d, *args.mlp, 1]
    dense_params = sum(i * o + o for i, o in zip(widths[:-1], widths[1:], strict=True))
    adam = (ids * (d + 1) + dense_params) * 4 * 7  # read p, g, m, v; write p, m, v
    activations = sum(b * h * 4 for h in args.mlp) * 3 * 2  # linear, BN, act; fwd + bwd
    total = gather + scatter + zero_grad + adam + activations
    return {"bytes_per_step": total, "adam_bytes_per_step": adam,
            "bound_samples_per_second": b * bandwidth / total}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--prepared", help="prepared dataset folder (default: synthetic Criteo-shaped, "
                   "written to a temporary folder, or to --data-dir if given and kept there)")
    p.add_argument("--data-dir", help="where to write (and on a later call reuse) the synthetic data")
    p.add_argument("--rows", type=int, default=4_000_000)
    p.add_argument("--batch", type=int, default=8192)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--mlp", type=int, nargs="+", default=[400, 400, 400])
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--steps", type=int, default=100)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--warmup", type=int, default=10)
    p.add_argument("--search-steps", type=int, default=200)
    p.add_argument("--variants", nargs="+", default=list(VARIANTS) + ["mixed-eager", "mixed-graphs-amp"],
                   help="library variants to time (also: minimal, autodim)")
    p.add_argument("--no-minimal", dest="minimal", action="store_false")
    p.add_argument("--no-autodim", dest="autodim", action="store_false")
    p.add_argument("--out", default=str(RESULTS / "gpu.json"))
    args = p.parse_args()
    if not torch.cuda.is_available():
        sys.exit("bench_gpu.py needs a CUDA device")
    torch.backends.cuda.matmul.allow_tf32 = True
    torch.backends.cudnn.allow_tf32 = True
    result: dict = {"device": torch.cuda.get_device_name(), "torch": torch.__version__,
                    "batch": args.batch, "dim": args.dim, "mlp": args.mlp, "steps": args.steps,
                    "repeats": args.repeats, "variants": {}}
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        data_dir = Path(args.data_dir or tmp) / f"criteo-shaped-{args.rows}"
        if args.prepared:
            dataset = PreparedDataset(args.prepared)
        elif (data_dir / "schema.json").exists():
            dataset = PreparedDataset(data_dir)
        else:
            dataset = synthetic_criteo_shaped(data_dir, args.rows, min_count=1)
        schema = dataset.schema
        result.update(fields=schema.num_fields, ids=int(sum(schema.vocab_sizes)),
                      train_rows=schema.splits["train"])
        print(f"data: {schema.num_fields} fields, {sum(schema.vocab_sizes):,} ids, "
              f"{schema.splits['train']:,} training rows ({time.perf_counter() - t0:.0f}s); "
              f"{result['device']}, torch {torch.__version__}", flush=True)
        bw = copy_bandwidth()
        bound = bandwidth_bound(dataset, args, bw)
        result["copy_bandwidth_GBps"] = round(bw / 1e9)
        result["bandwidth_bound"] = {k: round(v) for k, v in bound.items()}
        print(f"copy bandwidth {bw / 1e9:.0f} GB/s; DeepFM step moves >= "
              f"{bound['bytes_per_step'] / 1e6:.0f} MB (Adam {bound['adam_bytes_per_step'] / 1e6:.0f}"
              f" MB) -> bound {bound['bound_samples_per_second'] / 1e6:.1f}M samples/s", flush=True)
        med = lambda r: round(float(np.median(r)))  # noqa: E731
        if args.minimal:
            try:
                rates = time_minimal_loop(dataset, args, device="cuda", compile_model=True)
                result["variants"]["minimal-compiled"] = {"train_samples_per_second": med(rates),
                                                          "windows": [round(r) for r in rates]}
                print(f"{'minimal (torch.compile)':28s} train {med(rates) / 1e6:6.2f}M samples/s",
                      flush=True)
            except Exception:
                traceback.print_exc()
        for name in args.variants:
            mixed = name.startswith("mixed-")
            graphs, amp, compile_ = VARIANTS[name.removeprefix("mixed-")]
            plan = mixed_plan(dataset, args.dim) if mixed else None
            try:
                rates, infer = time_library(dataset, args, graphs, amp, compile_, plan)
            except Exception:
                print(f"library/{name}: failed")
                traceback.print_exc()
                continue
            result["variants"][f"library/{name}"] = {
                "train_samples_per_second": med(rates), "infer_samples_per_second": round(infer),
                "windows": [round(r) for r in rates]}
            print(f"{'library/' + name:28s} train {med(rates) / 1e6:6.2f}M samples/s, "
                  f"inference {infer / 1e6:6.1f}M samples/s", flush=True)
        if args.autodim:
            try:
                rate = time_autodim_search(dataset, args)
                result["variants"]["autodim-search"] = {"train_samples_per_second": round(rate)}
                print(f"{'autodim-search':28s} train {rate / 1e6:6.2f}M samples/s "
                      f"(incl. setup and one validation pass)", flush=True)
            except Exception:
                traceback.print_exc()
    result["peak_gpu_memory_GiB"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
