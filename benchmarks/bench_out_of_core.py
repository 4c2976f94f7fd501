"""Out-of-core training: peak RSS against the number of rows, the model held fixed.

For each size in ``--rows`` a Criteo-shaped synthetic prepared dataset (39 fields, cardinalities
log-spaced 10..``--max-card``, Zipf(``--zipf``) values, ``--min-count``) is written to
``--data-dir``/rows-N (or reused when it is already there with the same spec). The spec is chosen
so that the vocabulary saturates (Zipf 0.5, min_count 1): from 2M rows on, nearly every value of
every field is seen in the training split (464,634 of 464,642 ids at 2M, all from 10M), so the
model (DeepFM, dim 16, MLP [128, 128]) and its Adam state are the same at every size and only the
data grows. The ids of every size are printed; check they agree.

Each size is then measured in a fresh Python process (so each peak RSS is its own): open the
PreparedDataset (memory-mapped), build the model and a Trainer with ``train.in_memory_limit_gb=0``
(always out of core: blocks of rows read from the .npy files with plain file I/O), run one
``train_epoch`` of ``--steps`` steps and one full ``evaluate("valid")`` (every validation row: 10 %
of the rows). For the smallest size the same is run with the default in-memory mode (the splits
copied into RAM) for comparison. Reported per run: peak RSS (``ru_maxrss``) after training and at
the end, RSS after the model and Trainer are built, RSS after training (model + gradients + Adam
moments), the peaks of anonymous and file-backed resident memory (sampled from /proc every 20 ms),
training samples/s, evaluation rows/s (wall time of the whole ``evaluate``: reading, forward,
metrics) and the dataset's bytes on disk. The writer's time and peak memory are reported too.

    python benchmarks/bench_out_of_core.py                                # 2M, 10M, 45M rows
    python benchmarks/bench_out_of_core.py --rows 200000 1000000 --steps 50 --out /tmp/ooc.json
    python benchmarks/bench_out_of_core.py --delete-data                  # remove datasets after

The writer makes about 90k rows/s on two idle cores; 45M rows (7.2 GB) took 16.5 minutes on a
shared machine. ``--write-only`` writes the datasets, a later call measures them.
Prints a table and writes benchmarks/results/out_of_core.json.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).parent / "results"
MB = 1 << 20


# ---- memory probes ------------------------------------------------------------------------------

def peak_rss_mb() -> float:
    """Peak resident set size of this process so far (Linux ru_maxrss is in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def proc_status_mb() -> dict[str, float]:
    """VmRSS, RssAnon, RssFile, RssShmem of this process now, in MiB (Linux)."""
    out = {}
    try:
        with open("/proc/self/status") as f:
            for line in f:
                key, _, rest = line.partition(":")
                if key in ("VmRSS", "RssAnon", "RssFile", "RssShmem"):
                    out[key] = int(rest.split()[0]) / 1024
    except OSError:
        pass
    return out


class MemorySampler:
    """Samples /proc/self/status every ``interval`` s in a thread; keeps the peak of each field."""

    def __init__(self, interval: float = 0.02):
        self.interval = interval
        self.peak: dict[str, float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.sample()
            time.sleep(self.interval)

    def sample(self) -> None:
        for k, v in proc_status_mb().items():
            self.peak[k] = max(self.peak.get(k, 0.0), v)

    def reset(self) -> None:
        self.peak = {}

    def __enter__(self) -> MemorySampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.sample()


# ---- the data -----------------------------------------------------------------------------------

def make_spec(max_card: float, zipf: float):
    from embdim.data.synthetic import SyntheticSpec

    cards = np.round(np.geomspace(10, max_card, 39)).astype(int).tolist()
    return SyntheticSpec(cardinalities=cards, true_dims=[4] * 39, zipf_exponent=zipf, seed=0)


def dataset_dir(args, rows: int) -> Path:
    return Path(args.data_dir) / f"rows-{rows}"


def matches(path: Path, spec, min_count: int, rows: int) -> bool:
    """Whether ``path`` is a finished prepared dataset of this spec, min_count and size."""
    try:
        opts = json.loads((path / "schema.json").read_text())["options"]
    except (OSError, ValueError, KeyError):
        return False
    return (opts.get("spec") == json.loads(json.dumps(spec.to_dict()))
            and opts.get("min_count") == min_count and opts.get("rows") == rows)


def bytes_on_disk(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def child_write(args) -> dict:
    """Write the dataset of ``args.child_rows`` rows; time and memory of the writer."""
    from embdim.data.synthetic import write_synthetic_dataset

    spec = make_spec(args.max_card, args.zipf)
    out = dataset_dir(args, args.child_rows)
    with MemorySampler(0.2) as mem:
        t0 = time.perf_counter()
        schema, _ = write_synthetic_dataset(out, spec, args.child_rows, seed=0,
                                            min_count=args.min_count, overwrite=True)
        seconds = time.perf_counter() - t0
    return {"rows": args.child_rows, "seconds": round(seconds, 1),
            "rows_per_second": round(args.child_rows / seconds),
            "ids": int(sum(schema.vocab_sizes)), "bytes_on_disk": bytes_on_disk(out),
            "peak_rss_mb": round(peak_rss_mb()),
            "peak_anon_mb": round(mem.peak.get("RssAnon", float("nan"))),
            "peak_file_mb": round(mem.peak.get("RssFile", float("nan")))}


# ---- one measured run -----------------------------------------------------------------------------

def child_measure(args) -> dict:
    """Train ``args.steps`` steps and evaluate the whole valid split of one prepared dataset."""
    import torch

    from embdim.config import TrainConfig
    from embdim.data.dataset import PreparedDataset
    from embdim.nn.models import ModelOptions, build_model
    from embdim.train.trainer import Trainer, seed_everything

    limit_gb = 0.0 if args.child_mode == "out_of_core" else TrainConfig().in_memory_limit_gb
    with MemorySampler() as mem:
        rss_start = proc_status_mb().get("VmRSS")
        path = dataset_dir(args, args.child_rows)
        dataset = PreparedDataset(path)
        schema = dataset.schema
        seed_everything(0)
        options = ModelOptions(name="deepfm", mlp=list(args.mlp), dropout=args.dropout)
        model = build_model("deepfm", schema, dim=args.dim, options=options)
        cfg = TrainConfig(batch_size=args.batch, epochs=1, max_steps_per_epoch=args.steps,
                          in_memory_limit_gb=limit_gb, threads=args.threads,
                          eval_batch_size=args.eval_batch, log_every=50)
        trainer = Trainer(model, dataset, cfg, quiet=True)
        assert trainer.train_loader.in_memory == (args.child_mode == "in_memory")
        rss_model = proc_status_mb().get("VmRSS")
        peak_before_train = peak_rss_mb()
        mem.reset()

        loss, samples, train_seconds = trainer.train_epoch(0)
        rss_after_train = proc_status_mb().get("VmRSS")
        peak_after_train = peak_rss_mb()
        train_peak = dict(mem.peak)
        mem.reset()

        valid_rows = len(dataset.split("valid"))
        t0 = time.perf_counter()
        metrics = trainer.evaluate("valid")
        eval_seconds = time.perf_counter() - t0
        eval_peak = dict(mem.peak)
    params = sum(p.numel() for p in model.parameters())
    return {
        "rows": args.child_rows, "mode": args.child_mode,
        "train_rows": schema.splits["train"], "valid_rows": valid_rows,
        "ids": int(sum(schema.vocab_sizes)), "params": int(params),
        "bytes_on_disk": bytes_on_disk(path),
        "threads": torch.get_num_threads(), "torch": torch.__version__,
        "steps": args.steps, "batch": args.batch, "eval_batch": args.eval_batch,
        "rss_start_mb": round(rss_start), "rss_after_model_mb": round(rss_model),
        "peak_rss_before_train_mb": round(peak_before_train),
        "rss_after_train_mb": round(rss_after_train),
        "peak_rss_after_train_mb": round(peak_after_train),
        "peak_rss_mb": round(peak_rss_mb()),
        "train_peak_anon_mb": round(train_peak.get("RssAnon", float("nan"))),
        "train_peak_file_mb": round(train_peak.get("RssFile", float("nan"))),
        "eval_peak_rss_mb": round(eval_peak.get("VmRSS", float("nan"))),
        "eval_peak_anon_mb": round(eval_peak.get("RssAnon", float("nan"))),
        "eval_peak_file_mb": round(eval_peak.get("RssFile", float("nan"))),
        "train_loss": round(loss, 5), "train_samples": samples,
        "train_seconds": round(train_seconds, 2),
        "train_samples_per_second": round(samples / train_seconds),
        "eval_seconds": round(eval_seconds, 2),
        "eval_rows_per_second": round(valid_rows / eval_seconds),
        "eval_forward_rows_per_second": round(metrics["samples_per_second"]),
        "valid_auc": round(metrics["auc"], 5),
    }


# ---- the driver -------------------------------------------------------------------------------------

def run_child(args, what: str, rows: int, mode: str = "out_of_core") -> dict:
    """Run this script as a fresh process for one write or one measurement; its JSON result."""
    cmd = [sys.executable, __file__, "--child", what, "--child-rows", str(rows),
           "--child-mode", mode, "--data-dir", args.data_dir, "--max-card", str(args.max_card),
           "--zipf", str(args.zipf), "--min-count", str(args.min_count),
           "--steps", str(args.steps), "--batch", str(args.batch),
           "--eval-batch", str(args.eval_batch), "--dim", str(args.dim),
           "--dropout", str(args.dropout), "--threads", str(args.threads),
           "--mlp", *map(str, args.mlp)]
    proc = subprocess.run(cmd, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--rows", type=int, nargs="+", default=[2_000_000, 10_000_000, 45_000_000])
    p.add_argument("--data-dir", default="/tmp/embdim-ooc",
                   help="prepared datasets are written (or reused) here as rows-N")
    p.add_argument("--max-card", type=float, default=1e5,
                   help="largest field cardinality (fields log-spaced 10..this)")
    p.add_argument("--zipf", type=float, default=0.5,
                   help="Zipf exponent of the values (0.5: every value of the 1e5 field is seen "
                        "about 8+ times in 1.6M training rows, so the vocabulary saturates)")
    p.add_argument("--min-count", type=int, default=1)
    p.add_argument("--steps", type=int, default=300, help="training steps per size")
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--eval-batch", type=int, default=16384)
    p.add_argument("--dim", type=int, default=16)
    p.add_argument("--mlp", type=int, nargs="+", default=[128, 128])
    p.add_argument("--dropout", type=float, default=0.2)
    p.add_argument("--threads", type=int, default=0, help="torch threads (default: torch's)")
    p.add_argument("--no-in-memory", action="store_true",
                   help="skip the in-memory comparison run on the smallest size")
    p.add_argument("--write-only", action="store_true",
                   help="only write the datasets (then measure in a later call, which reuses them)")
    p.add_argument("--delete-data", action="store_true",
                   help="delete each dataset once measured")
    p.add_argument("--out", default=str(RESULTS / "out_of_core.json"))
    p.add_argument("--child", choices=["write", "measure"], help=argparse.SUPPRESS)
    p.add_argument("--child-rows", type=int, help=argparse.SUPPRESS)
    p.add_argument("--child-mode", default="out_of_core", help=argparse.SUPPRESS)
    args = p.parse_args()

    if args.child:
        result = child_write(args) if args.child == "write" else child_measure(args)
        print(json.dumps(result))
        return

    spec = make_spec(args.max_card, args.zipf)
    sizes = sorted(args.rows)
    writes, runs = [], []
    for rows in sizes:
        path = dataset_dir(args, rows)
        log = path.parent / f"{path.name}.write.json"  # the writer's figures, kept beside it
        if matches(path, spec, args.min_count, rows):
            print(f"{rows:>12,} rows: reusing {path}", flush=True)
            written = json.loads(log.read_text()) if log.exists() else None
            if written:
                writes.append(written)
        else:
            print(f"{rows:>12,} rows: writing {path} ...", flush=True)
            written = run_child(args, "write", rows)
            writes.append(written)
            log.write_text(json.dumps(written) + "\n")
        if written:
            print(f"{'':14s} {written['seconds']:.0f} s ({written['rows_per_second']:,} rows/s), "
                  f"{written['bytes_on_disk'] / 1e9:.2f} GB, {written['ids']:,} ids, writer peak "
                  f"RSS {written['peak_rss_mb']:,} MB (anon {written['peak_anon_mb']:,}, "
                  f"file-backed {written['peak_file_mb']:,})", flush=True)
        if args.write_only:
            continue
        modes = ["out_of_core"]
        if rows == sizes[0] and not args.no_in_memory:
            modes.append("in_memory")
        for mode in modes:
            r = run_child(args, "measure", rows, mode)
            runs.append(r)
            print(f"{'':14s} {mode}: {r['ids']:,} ids, peak RSS {r['peak_rss_mb']:,} MB "
                  f"(after model {r['rss_after_model_mb']:,}, after train "
                  f"{r['rss_after_train_mb']:,}, train peak {r['peak_rss_after_train_mb']:,}), "
                  f"train {r['train_samples_per_second']:,} samples/s, eval "
                  f"{r['eval_rows_per_second']:,} rows/s ({r['valid_rows']:,} rows in "
                  f"{r['eval_seconds']:.1f} s)", flush=True)
        if args.delete_data:
            shutil.rmtree(path, ignore_errors=True)
            log.unlink(missing_ok=True)

    if args.write_only:
        return
    ids = sorted({r["ids"] for r in runs})
    print(f"\ntotal ids per size: {[(r['rows'], r['ids']) for r in runs if r['mode'] == 'out_of_core']}"
          f" ({'equal' if len(ids) == 1 else f'spread {ids[-1] - ids[0]:,} ids'})")
    cols = [("rows", "rows", "{:,}"), ("mode", "mode", "{}"), ("disk GB", "bytes_on_disk", None),
            ("ids", "ids", "{:,}"), ("RSS model MB", "rss_after_model_mb", "{:,}"),
            ("RSS trained MB", "rss_after_train_mb", "{:,}"),
            ("peak train MB", "peak_rss_after_train_mb", "{:,}"),
            ("peak RSS MB", "peak_rss_mb", "{:,}"), ("train samples/s", "train_samples_per_second",
                                                      "{:,}"),
            ("eval rows/s", "eval_rows_per_second", "{:,}"), ("eval s", "eval_seconds", "{:.1f}")]

    def cell(r, key, fmt):
        return f"{r[key] / 1e9:.2f}" if fmt is None else fmt.format(r[key])

    widths = [max(len(h), *(len(cell(r, k, f)) for r in runs)) for h, k, f in cols]
    print("  ".join(h.rjust(w) for (h, _, _), w in zip(cols, widths, strict=True)))
    for r in runs:
        print("  ".join(cell(r, k, f).rjust(w) for (_, k, f), w in zip(cols, widths, strict=True)))

    result = {
        "command": "python benchmarks/bench_out_of_core.py " + " ".join(sys.argv[1:]),
        "data": f"synthetic Criteo-shaped: 39 fields, cardinalities log-spaced 10..{args.max_card:g}, "
                f"Zipf({args.zipf}) values, min_count {args.min_count}, split 0.8/0.1/0.1",
        "model": {"name": "deepfm", "dim": args.dim, "mlp": args.mlp, "dropout": args.dropout},
        "train": {"batch_size": args.batch, "steps": args.steps, "eval_batch_size": args.eval_batch,
                  "in_memory_limit_gb": "0 (out_of_core) / 8 default (in_memory)"},
        "cpu_count": os.cpu_count(),
        "memory_unit": "*_mb figures are MiB (2**20 bytes)",
        "writes": writes,
        "runs": runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
