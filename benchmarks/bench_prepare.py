"""Throughput and peak memory of `embdim prepare criteo`, end to end, in a subprocess.

Input: a Criteo-format TSV (`--input FILE`), or one generated with `--lines N` (default 5M) by
../shared/tools/gen_criteo_synth.py (26 categorical fields with cardinalities 10..1e6, Zipf values,
13 heavy-tailed integer fields) when that tool is there, else by `write_criteo_tsv` of
`embdim.data.synthetic` if it exists, else by a small built-in generator of the same shape.
Generated files are cached in `--workdir` and reused.

The command `python -m embdim.cli --quiet prepare criteo FILE --out DIR` runs in a child process;
wall time, rows/s, CPU seconds and peak memory (polled every 50 ms over the process tree: RSS, and
the anonymous part of it, i.e. without the memory-mapped output arrays the writer fills, whose
pages count in RSS but are file cache) are printed and written to benchmarks/results/prepare.json.
The machine's load average is recorded too: on a shared machine other processes take cores from
the run.

    python benchmarks/bench_prepare.py --lines 2000000
    python benchmarks/bench_prepare.py --input /data/criteo/train.txt --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
RESULTS = Path(__file__).parent / "results"
SHARED_GENERATOR = ROOT.parent / "shared" / "tools" / "gen_criteo_synth.py"


def generate(path: Path, lines: int, seed: int = 1) -> str:
    """Write a synthetic Criteo-format file; returns which generator was used."""
    if SHARED_GENERATOR.exists():
        subprocess.run([sys.executable, str(SHARED_GENERATOR), str(path), str(lines), str(seed)],
                       check=True)
        return str(SHARED_GENERATOR.relative_to(ROOT.parent))
    try:
        from embdim.data.synthetic import write_criteo_tsv  # type: ignore[attr-defined]
    except ImportError:
        write_criteo_tsv = None
    if write_criteo_tsv is not None:
        write_criteo_tsv(path, lines, seed=seed)
        return "embdim.data.synthetic.write_criteo_tsv"
    _builtin_generator(path, lines, seed)
    return "bench_prepare built-in generator"


def _builtin_generator(path: Path, lines: int, seed: int, block: int = 250_000) -> None:
    """Criteo-shaped TSV: label, 13 integer fields (10% empty), 26 8-hex-digit fields with Zipf
    values over vocabularies of 10..1e6 values; written in blocks."""
    import polars as pl

    rng = np.random.default_rng(seed)
    cards = np.round(np.geomspace(10, 1e6, 26)).astype(np.int64)
    hex_digits = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)
    shifts = np.arange(28, -1, -4, dtype=np.uint64)
    with open(path, "wb") as f:
        for start in range(0, lines, block):
            n = min(block, lines - start)
            cols = {"label": pl.Series(rng.integers(0, 2, n))}
            for j in range(13):
                v = np.floor(rng.lognormal(2, 1.5, n)).astype(np.int64)
                cols[f"I{j + 1}"] = pl.Series(v).scatter(np.flatnonzero(rng.random(n) < 0.1), None)
            for j, k in enumerate(cards):
                v = ((np.minimum(rng.zipf(1.2, n), k) * 2654435761 + j) % 2**32).astype(np.uint64)
                chars = hex_digits[((v[:, None] >> shifts) & np.uint64(15)).astype(np.intp)]
                cols[f"C{j + 1}"] = pl.Series(chars.view("S8").ravel()).cast(pl.String)
            pl.DataFrame(cols).write_csv(f, separator="\t", include_header=False)


def count_lines(path: Path) -> int:
    with open(path, "rb") as f:
        return sum(np.count_nonzero(np.frombuffer(b, dtype=np.uint8) == 10)
                   for b in iter(lambda: f.read(1 << 24), b""))


def _anon_rss(pid: int) -> int:
    """Anonymous resident memory of a process (Linux; 0 elsewhere): RSS without the pages of
    memory-mapped files, such as the output arrays the writer fills."""
    try:
        with open(f"/proc/{pid}/status") as f:
            return next(int(line.split()[1]) * 1024 for line in f if line.startswith("RssAnon"))
    except (OSError, StopIteration):
        return 0


def run_prepare(src: Path, out: Path, chunk_rows: int | None) -> dict:
    """One `embdim prepare criteo` in a child process: wall, CPU and peak-memory figures."""
    import psutil

    cmd = [sys.executable, "-m", "embdim.cli", "--quiet", "prepare", "criteo", str(src),
           "--out", str(out), "--overwrite"]
    if chunk_rows:
        cmd += ["--chunk-rows", str(chunk_rows)]
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    load = os.getloadavg()[0]
    started = time.perf_counter()
    proc = subprocess.Popen(cmd)
    ps = psutil.Process(proc.pid)
    peak = peak_anon = 0
    while proc.poll() is None:
        try:
            tree = [ps, *ps.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
            peak_anon = max(peak_anon, sum(_anon_rss(p.pid) for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.05)
    wall = time.perf_counter() - started
    if proc.returncode != 0:
        raise SystemExit(f"prepare failed with exit code {proc.returncode}: {' '.join(cmd)}")
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return {"wall_s": round(wall, 3),
            "cpu_user_s": round(after.ru_utime - before.ru_utime, 2),
            "cpu_sys_s": round(after.ru_stime - before.ru_stime, 2),
            "peak_rss_mib": round(peak / 2**20, 1),
            "peak_anon_rss_mib": round(peak_anon / 2**20, 1),
            "loadavg_1min_at_start": round(load, 2),
            "command": " ".join(cmd)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--input", type=Path, help="an existing Criteo-format TSV")
    ap.add_argument("--lines", type=int, default=5_000_000, help="lines to generate (default 5M)")
    ap.add_argument("--workdir", type=Path, default=Path(tempfile.gettempdir()) / "embdim-bench",
                    help="where generated inputs are cached and the dataset is written")
    ap.add_argument("--chunk-rows", type=int, help="pass --chunk-rows to prepare")
    ap.add_argument("--repeat", type=int, default=1, help="runs; the fastest is reported")
    ap.add_argument("--keep", action="store_true", help="keep the prepared dataset")
    args = ap.parse_args()

    args.workdir.mkdir(parents=True, exist_ok=True)
    generator = "given"
    src = args.input
    if src is None:
        src = args.workdir / f"criteo_{args.lines}.tsv"
        if not src.exists():
            print(f"generating {args.lines:,} lines -> {src}", file=sys.stderr)
            generator = generate(src, args.lines)
        else:
            generator = "cached"
    lines = count_lines(src)
    out = args.workdir / "prepared"
    runs = [run_prepare(src, out, args.chunk_rows) for _ in range(args.repeat)]
    best = min(runs, key=lambda r: r["wall_s"])
    if not args.keep:
        shutil.rmtree(out, ignore_errors=True)

    import polars as pl

    result = {
        "input": str(src), "lines": int(lines), "bytes": src.stat().st_size, "generator": generator,
        "rows_per_s": round(lines / best["wall_s"]),
        "mb_per_s": round(src.stat().st_size / 2**20 / best["wall_s"], 1),
        **best, "runs_wall_s": [r["wall_s"] for r in runs],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version(), "polars": pl.__version__,
                    "numpy": np.__version__},
    }
    print(f"prepare criteo: {lines:,} lines ({result['bytes'] / 2**20:,.0f} MiB) in "
          f"{best['wall_s']:.1f} s = {result['rows_per_s']:,} rows/s ({result['mb_per_s']} MiB/s); "
          f"peak RSS {best['peak_rss_mib']:,.0f} MiB ({best['peak_anon_rss_mib']:,.0f} MiB "
          f"anonymous, the rest is mapped output); CPU {best['cpu_user_s']} s user + "
          f"{best['cpu_sys_s']} s sys; load average at start {best['loadavg_1min_at_start']}")
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "prepare.json"
    previous = json.loads(path.read_text()) if path.exists() else {}
    previous[f"criteo_{lines}"] = result
    path.write_text(json.dumps(previous, indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


if __name__ == "__main__":
    main()
