"""Inference throughput of an exported model (ONNX on onnxruntime, a torch.export program) vs the
eager PyTorch model, at batch sizes 1, 64 and 4096.

The model is a run's retrained model (``python benchmarks/bench_export.py runs/x``, as
``embdim export`` exports it) or by default a DeepFM over a Criteo-shaped mixed-width plan (39 fields,
vocabularies log-spaced 10..1e5, widths 2..16, one field dropped) with random weights: throughput
does not depend on the weights. Every path gets the same int64 ``ids [B, F]``; all run in inference
mode on the CPU with ``--threads`` intra-op threads (default 1).

    python benchmarks/bench_export.py                    # the synthetic DeepFM
    python benchmarks/bench_export.py runs/x --threads 4

Each figure is the median over ``--repeats`` timed windows of at least ``--min-seconds``. Prints a
table (samples/s) and writes it to benchmarks/results/export.json. Needs the export extra for the
ONNX column (``pip install "embdim[export]"``); without it that column is skipped.
"""

from __future__ import annotations

import argparse
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from embdim.export.serving import ServingModel, export_onnx, export_program, load_run_model
from embdim.nn.models import build_model
from embdim.plan import DimensionPlan

RESULTS = Path(__file__).parent / "results"
BATCHES = (1, 64, 4096)


def synthetic_model():
    vocab = [int(v) for v in np.logspace(1, 5, 39)]
    dims = [(2, 4, 8, 16)[i % 4] for i in range(39)]
    dims[5] = 0
    plan = DimensionPlan(method="bench", field_names=[f"C{i}" for i in range(39)], vocab_sizes=vocab,
                         dims=dims, full_dim=16)
    return build_model("deepfm", vocab, plan).eval(), vocab


def samples_per_second(fn, ids, repeats: int, min_seconds: float) -> float:
    fn(ids)  # warm-up
    rates = []
    for _ in range(repeats):
        n, t0 = 0, time.perf_counter()
        while True:
            fn(ids)
            n += 1
            elapsed = time.perf_counter() - t0
            if elapsed >= min_seconds:
                break
        rates.append(n * ids.shape[0] / elapsed)
    return statistics.median(rates)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("run_dir", nargs="?", help="a finished run folder (default: a synthetic DeepFM)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=0.5)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    if args.run_dir:
        run = load_run_model(args.run_dir)
        model, vocab = run.model, run.plan.vocab_sizes
    else:
        model, vocab = synthetic_model()
    serving = ServingModel(model).eval()
    paths = {}

    def eager(ids):
        with torch.inference_mode():
            return serving(torch.from_numpy(ids))

    paths["eager"] = eager
    program = export_program(model, vocab).module()

    def exported(ids):
        with torch.inference_mode():
            return program(torch.from_numpy(ids))

    paths["torch.export"] = exported
    tmp = tempfile.TemporaryDirectory()
    try:
        import onnxruntime as ort

        export_onnx(model, vocab, Path(tmp.name) / "m.onnx")
        opts = ort.SessionOptions()
        opts.intra_op_num_threads, opts.inter_op_num_threads = args.threads, 1
        session = ort.InferenceSession(str(Path(tmp.name) / "m.onnx"), opts,
                                       providers=["CPUExecutionProvider"])
        paths["onnxruntime"] = lambda ids: session.run(None, {"ids": ids})
    except ImportError as e:
        print(f"onnx / onnxruntime not installed ({e}): no ONNX column")

    rng = np.random.default_rng(0)
    results = {"model": "run " + args.run_dir if args.run_dir else "synthetic deepfm, 39 fields",
               "threads": args.threads, "torch": torch.__version__, "samples_per_second": {}}
    print(f"{results['model']}, {args.threads} thread(s); samples/s (median of {args.repeats})")
    print(f"{'batch':>6} " + " ".join(f"{name:>14}" for name in paths))
    for b in BATCHES:
        ids = np.stack([rng.integers(0, v, b) for v in vocab], axis=1).astype(np.int64)
        row = {name: samples_per_second(fn, ids, args.repeats, args.min_seconds)
               for name, fn in paths.items()}
        results["samples_per_second"][str(b)] = row
        print(f"{b:>6} " + " ".join(f"{row[name]:>14,.0f}" for name in paths))
    tmp.cleanup()
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "export.json").write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
