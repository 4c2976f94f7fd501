"""Regenerate docs/results.md: prepare the data, run the grids of examples/results/, write the report.

    python benchmarks/make_results.py                       # everything (about 30-40 min on 2 cores)
    python benchmarks/make_results.py --work /tmp/results-work --synthetic-rows 200000

Steps, each timed (wall seconds), each restartable (prepared datasets are kept, finished grid cells
are skipped, so an interrupted run continues where it stopped):

1. data, into WORK/data/: ``synthetic`` (the demo's planted spec, ``--synthetic-rows`` rows,
   split seed 2022, with its ``truth.json``), ``adult`` (``embdim prepare csv`` of UCI Adult) and
   ``ml-latest-small`` (``embdim prepare movielens``), read from ``--data-root``
   (default ``../shared/data`` next to the repository);
2. ``embdim grid examples/results/<method>.yaml --out WORK/runs/<method>`` for fde, ras, mde,
   autodim and sseds, run in WORK (the grids name their data relative to it), in two lanes of
   single-threaded processes (``--lanes 1``: one after the other);
3. ``embdim report WORK/runs --out WORK/report`` (tables, CSV, PNG plots);
4. ``docs/results.md`` (machine, commands, wall times, data, a headline table, the full report)
   and ``docs/results/*.png``; the headline table is also printed, for the README.

Every number written comes from the run folders and the timings of this script (``WORK/timings.json``
keeps the time of steps that a restart skips).
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
# examples/results/<name>.yaml; AutoDim's Table 2 columns, then SSEDS and its Fig. 2-3 baselines
METHODS = ("fde", "mde", "dpq", "nis", "mgqe", "autoemb", "ras", "autodim-s", "autodim", "sseds", "pep",
           "deeplight")
ALL_METHODS = METHODS  # ``--methods`` narrows METHODS (what runs); tables list every grid run
# The grids run in two lanes at once, each grid one process with one torch thread (train.threads: 1
# in the YAML files): on a two-core machine that others share too, two single-threaded processes
# lose far less to waiting at thread barriers than one process with two threads. The lanes hold
# about the same work.
LANES = (("autodim", "nis", "mgqe", "sseds", "autodim-s"),
         ("fde", "mde", "ras", "dpq", "pep", "deeplight", "autoemb"))
DATASETS = {"data/synthetic": "Synthetic (planted)", "data/adult": "UCI Adult",
            "data/ml-latest-small": "MovieLens latest-small"}
ADULT_ARGS = ["--label", "income", "--positive", ">50K", "--na-values", "?",
              "--categorical", "workclass,education,marital-status,occupation,relationship,race,"
              "gender,native-country",
              "--numeric", "age,fnlwgt,educational-num,capital-gain,capital-loss,hours-per-week"]
EMBDIM = [sys.executable, "-m", "embdim.cli"]
REPORT_PLOTS = ("auc_params_", "dims_", "saliency_")  # the plots `embdim report` writes (embdim.plots)


def shell(cmd: list[str]) -> str:
    """The command as a user types it (``embdim`` for the module call, quoted where needed)."""
    import shlex

    words = ["embdim"] + cmd[len(EMBDIM):] if cmd[:len(EMBDIM)] == EMBDIM else cmd
    text = " ".join(shlex.quote(str(w)) for w in words)
    # the repository root (and the shared data beside it), whatever machine this ran on
    return text.replace(str(REPO.parent / "shared"), "$REPO/../shared").replace(str(REPO), "$REPO")


class Steps:
    """Runs and times the steps; keeps the timings of earlier invocations in WORK/timings.json."""

    def __init__(self, work: Path):
        import threading

        self.lock = threading.Lock()
        self.path = work / "timings.json"
        self.timings: dict[str, dict] = json.loads(self.path.read_text()) if self.path.exists() else {}
        self.commands: list[str] = []
        self.worked: set[str] = set()  # steps that did work in this invocation

    def record(self, name: str, seconds: float, did_work: bool, **info) -> None:
        with self.lock:
            self._record(name, seconds, did_work, **info)

    def _record(self, name: str, seconds: float, did_work: bool, **info) -> None:
        if did_work:
            self.worked.add(name)
        if did_work or name not in self.timings:  # a skipped step keeps the time it took when it ran
            self.timings[name] = {"seconds": round(seconds, 1), **info,
                                  "finished": datetime.now(timezone.utc).isoformat(timespec="seconds")}
        self.path.write_text(json.dumps(self.timings, indent=1))

    def run(self, name: str, cmd: list[str], cwd: Path, listed: bool = True) -> tuple[str, float]:
        if listed:
            self.commands.append(shell(cmd))
        print(f"[{name}] {shell(cmd)}", flush=True)
        t0 = time.perf_counter()
        proc = subprocess.run(cmd, cwd=cwd, text=True, stdout=subprocess.PIPE)
        seconds = time.perf_counter() - t0
        if proc.returncode != 0:
            raise SystemExit(f"[{name}] failed (exit {proc.returncode}): {shell(cmd)}\n{proc.stdout[-3000:]}")
        return proc.stdout, seconds


def prepare_data(work: Path, data_root: Path, rows: int, steps: Steps) -> None:
    data = work / "data"
    data.mkdir(parents=True, exist_ok=True)
    if not (data / "synthetic" / "schema.json").exists():
        from embdim.data.synthetic import default_demo_spec, write_synthetic_dataset

        t0 = time.perf_counter()
        shutil.rmtree(data / "synthetic", ignore_errors=True)
        write_synthetic_dataset(data / "synthetic", default_demo_spec(), rows, seed=2022)
        steps.record("data: synthetic", time.perf_counter() - t0, True, rows=rows)
    steps.commands.append(f"python -c 'from embdim.data.synthetic import default_demo_spec, "
                          f"write_synthetic_dataset as w; w(\"data/synthetic\", default_demo_spec(), "
                          f"{rows}, seed=2022)'")
    jobs = [("adult", ["prepare", "csv", str(data_root / "adult" / "adult.csv"), "--out",
                       "data/adult", *ADULT_ARGS]),
            ("ml-latest-small", ["prepare", "movielens", str(data_root / "ml-latest-small"),
                                 "--out", "data/ml-latest-small"])]
    for name, args in jobs:
        cmd = [*EMBDIM, "--quiet", *args]
        if (data / name / "schema.json").exists():
            steps.commands.append(shell(cmd))
            continue
        _, seconds = steps.run(f"data: {name}", cmd, work)
        steps.record(f"data: {name}", seconds, True)


def run_grids(work: Path, steps: Steps, lanes: int) -> None:
    from concurrent.futures import ThreadPoolExecutor

    for method in METHODS:
        steps.commands.append(shell([*EMBDIM, "--quiet", "grid", str(REPO / "examples" / "results" /
                                                                     f"{method}.yaml"),
                                     "--out", f"runs/{method}", "--no-plots"]))
    order = LANES if lanes > 1 else (tuple(m for lane in LANES for m in lane),)
    with ThreadPoolExecutor(len(order)) as pool:
        for future in [pool.submit(run_lane, work, steps, lane) for lane in order]:
            future.result()


def _matches(given: dict, recorded: dict) -> bool:
    """Every key the grid sets has the recorded value (keys the grid leaves to their defaults are
    not compared, so a newer embdim with more config keys still accepts the record)."""
    return all(_matches(v, recorded.get(k) or {}) if isinstance(v, dict) and isinstance(
        recorded.get(k), dict) else recorded.get(k) == v for k, v in given.items())


def _searched_with_current_options(run: Path, method_cfg: dict) -> bool:
    """Whether the run's plan records the search options this embdim resolves for
    ``method_cfg``, the defaults included (config.yaml holds only the keys the grid gives, so a
    changed default shows only here)."""
    import dataclasses

    from embdim.search.base import make_method

    recorded = json.loads((run / "plan.json").read_text()).get("options") or {}
    now = json.loads(json.dumps(dataclasses.asdict(make_method(method_cfg).options)))
    return all(k in recorded and recorded[k] == v for k, v in now.items())


def grid_finished(work: Path, method: str) -> bool:
    """Whether every cell of the grid has finished with the settings the grid file gives (and
    the method's current defaults). A finished cell searched with other defaults is moved to
    ``WORK/runs-stale/`` so that the grid runs it again."""
    import yaml

    from embdim.grid import expand, load_grid

    finished = True
    for cell in expand(*load_grid(REPO / "examples" / "results" / f"{method}.yaml")):
        run = work / "runs" / method / cell.name
        if not (run / "metrics.json").exists():
            finished = False
        elif not _matches(cell.config, yaml.safe_load((run / "config.yaml").read_text())):
            finished = False
        elif not _searched_with_current_options(run, cell.config["method"]):
            stale = work / "runs-stale" / method / time.strftime("%Y%m%d-%H%M%S") / cell.name
            stale.parent.mkdir(parents=True, exist_ok=True)
            run.rename(stale)
            print(f"[grid: {method}] {cell.name} was searched with other defaults: moved to {stale}",
                  flush=True)
            finished = False
    return finished


def run_lane(work: Path, steps: Steps, methods: tuple[str, ...]) -> None:
    for method in methods:
        cmd = [*EMBDIM, "--quiet", "grid", str(REPO / "examples" / "results" / f"{method}.yaml"),
               "--out", f"runs/{method}", "--no-plots"]
        if grid_finished(work, method):  # nothing to run (and a newer embdim may resolve more keys)
            print(f"[grid: {method}] every cell finished earlier with these settings: skipped", flush=True)
            continue
        out, seconds = steps.run(f"grid: {method}", cmd, work, listed=False)
        summary = next((line for line in out.splitlines() if " cell(s): " in line), "")
        ran = int(summary.split(": ", 1)[1].split(" run")[0]) if " run" in summary else 1
        steps.record(f"grid: {method}", seconds, ran > 0, cells=summary.split(" -> ")[0], ran=ran)
        print(f"[grid: {method}] {summary.split(' -> ')[0]} in {seconds:.0f} s", flush=True)


def settings_lines(work: Path) -> list[str]:
    """The shared base config and each grid's method section and grid keys, read from the YAML
    files of the grids that ran (a folder under WORK/runs/)."""
    import yaml

    ran = [m for m in ALL_METHODS if (work / "runs" / m).is_dir()] or list(METHODS)
    specs = {m: yaml.safe_load((REPO / "examples" / "results" / f"{m}.yaml").read_text())
             for m in ran}
    first = specs[ran[0]]["base"]

    def flow(d) -> str:
        return yaml.safe_dump(d, default_flow_style=True, width=1000).strip()

    lines = ["Common to every grid: model `" + flow(first["model"]) + "`, train `"
             + flow({k: v for k, v in first["train"].items() if k != "seed"}) + "`.", "",
             "| grid file | method | varied over |", "|---|---|---|"]
    for m, spec in specs.items():
        varied = "; ".join(f"`{k}`: {', '.join(map(str, v))}" for k, v in spec["grid"].items())
        lines.append(f"| [{m}.yaml](../examples/results/{m}.yaml) | `{flow(spec['base']['method'])}` "
                     f"| {varied} |")
    return lines


GRIDS_STEP = "all grids (wall, lanes together)"
REPRODUCE = "runs/autodim/path-data_adult_seed-1"  # the cell re-run to check reproducibility


def reproduce(work: Path, steps: Steps) -> list[str]:
    """Re-run one finished cell from its run folder's config.yaml (the documented way) and compare
    the metrics with the recorded ones; returns the lines for results.md."""
    rerun = work / "rerun" / Path(REPRODUCE).name
    shutil.rmtree(rerun, ignore_errors=True)
    cmd = [*EMBDIM, "--quiet", "run", f"{REPRODUCE}/config.yaml", "--out", str(rerun.relative_to(work))]
    _, seconds = steps.run("reproduce", cmd, work, listed=False)
    old = json.loads((work / REPRODUCE / "metrics.json").read_text())
    new = json.loads((rerun / "metrics.json").read_text())
    keys = ("test_auc", "test_logloss", "embedding_params")
    same = all(old[k] == new[k] for k in keys) and old["dims"] == new["dims"]
    lines = ["| | " + " | ".join(keys) + " | dims |", "|---" * (len(keys) + 2) + "|"]
    for label, m in (("recorded", old), ("re-run", new)):
        lines.append(f"| {label} | " + " | ".join(repr(m[k]) for k in keys) + " | "
                     + ", ".join(map(str, m["dims"].values())) + " |")
    return [f"`{shell(cmd)}` (in WORK, {fmt_seconds(seconds)}): the metrics are "
            + ("identical to the last digit." if same else "**not** identical:"), "", *lines]


def machine(work: Path) -> dict[str, str]:
    """What the run folders recorded about the machine and versions (every distinct value)."""
    seen: dict[str, list[str]] = {}
    labels = {"cpu": "CPU", "cpu_count": "cores (os.cpu_count)", "torch_threads": "torch threads per run",
              "torch": "torch", "numpy": "numpy", "embdim": "embdim", "python": "python",
              "platform": "platform"}
    for path in sorted((work / "runs").rglob("metrics.json")):
        m = json.loads(path.read_text())
        record = {**m.get("environment", {}), **m.get("versions", {})}
        for key in labels:
            value = str(record.get(key, "not recorded"))
            if value not in seen.setdefault(key, []):
                seen[key].append(value)
    return {label: ", ".join(seen.get(key, ["not recorded"])) for key, label in labels.items()}


def fmt_seconds(s: float) -> str:
    return f"{s:.0f} s" if s < 120 else f"{s / 60:.1f} min"


def dataset_rows(work: Path) -> list[str]:
    lines = ["| data | folder | fields | ids (all fields) | train / valid / test rows | content hash |",
             "|---|---|---|---|---|---|"]
    for path, label in DATASETS.items():
        schema = json.loads((work / path / "schema.json").read_text())
        splits = schema.get("splits", {})
        ids = sum(f["vocab_size"] for f in schema["fields"])
        lines.append(f"| {label} | `{path}` | {len(schema['fields'])} | {ids:,} | "
                     f"{' / '.join(f'{splits.get(s, 0):,}' for s in ('train', 'valid', 'test'))} | "
                     f"`{schema.get('content_hash', '')[:12]}` |")
    return lines


def planted_truth(work: Path) -> str:
    truth_path = work / "data" / "synthetic" / "truth.json"
    if not truth_path.exists():
        return ""
    truth = json.loads(truth_path.read_text())
    dims = truth.get("true_dims") or truth.get("spec", {}).get("true_dims")
    names = truth.get("field_names") or truth.get("spec", {}).get("field_names")
    text = ""
    if dims and names:
        text = "Planted dimensions of the synthetic fields (0 = pure noise): " + ", ".join(
            f"{n} {d}" for n, d in zip(names, dims, strict=True)) + "."
    if truth.get("bayes_auc"):
        text += f" Test AUC of the planted (Bayes-optimal) probabilities: {truth['bayes_auc']:.4f}."
    return text


def headline(rows: list[dict[str, str]]) -> list[str]:
    """Per dataset: each method's test AUC (mean ± std, significance mark) and its embedding
    parameters as a share of the widest FDE's (the full-dimension reference)."""
    fde = [r for r in rows if r["method"].split()[0] == "fde"]
    widest = max(fde, key=lambda r: float(r["embedding_params_mean"]))["method"] if fde else "fde"
    lines = [f"| data | method | test AUC | test Logloss | embedding params | of {widest} |",
             "|---|---|---|---|---|---|"]
    for path, label in DATASETS.items():
        rs = [r for r in rows if r["data"] == path]
        full = next((float(r["embedding_params_mean"]) for r in rs if r["method"] == widest), None)
        order = {m: i for i, m in enumerate(ALL_METHODS)}
        for r in sorted(rs, key=lambda r: (order.get(r["method"].split()[0], 99), r["method"])):
            mark = {"better": "*", "worse": "†"}.get(r["auc_significant"], "")
            share = (f"{float(r['embedding_params_mean']) / full:.1%}" if full else "–")
            lines.append(f"| {label} | {r['method']} | {float(r['test_auc_mean']):.4f} ± "
                         f"{float(r['test_auc_std']):.4f}{mark} | {float(r['test_logloss_mean']):.4f} | "
                         f"{float(r['embedding_params_mean']):,.0f} | {share} |")
    return lines


def readme_table(rows: list[dict[str, str]]) -> list[str]:
    """Methods x datasets: test AUC mean ± std (significance mark) and, in brackets, embedding
    parameters as a share of the widest FDE's; for the README."""
    fde = [r for r in rows if r["method"].split()[0] == "fde"]
    widest = max(fde, key=lambda r: float(r["embedding_params_mean"]))["method"] if fde else ""
    order = {m: i for i, m in enumerate(ALL_METHODS)}
    methods = sorted({r["method"] for r in rows}, key=lambda m: (order.get(m.split()[0], 99), m))
    lines = ["| method | " + " | ".join(DATASETS.values()) + " |", "|---" * (len(DATASETS) + 1) + "|"]
    for method in methods:
        cells = []
        for path in DATASETS:
            r = next((r for r in rows if r["data"] == path and r["method"] == method), None)
            full = next((float(x["embedding_params_mean"]) for x in rows
                         if x["data"] == path and x["method"] == widest), None)
            if r is None:
                cells.append("–")
                continue
            mark = {"better": "*", "worse": "†"}.get(r["auc_significant"], "")
            share = f" ({float(r['embedding_params_mean']) / full:.0%})" if full else ""
            cells.append(f"{float(r['test_auc_mean']):.4f} ± {float(r['test_auc_std']):.4f}{mark}{share}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return lines


def write_results(work: Path, steps: Steps, out_md: Path, assets: Path, total_seconds: float,
                  reproduced: list[str]) -> list[str]:
    report = work / "report"
    rows = list(csv.DictReader(open(report / "report.csv")))
    body = (report / "report.md").read_text().split("\n", 1)[1].strip()  # drop "# embdim report"
    rel = os.path.relpath(assets, out_md.parent)
    assets.mkdir(parents=True, exist_ok=True)
    for old in assets.glob("*.png"):  # the report's earlier plots (embdim.plots' names); the
        #                               other benchmarks' pages (sseds_vs_fde.py, ...) keep theirs
        if old.name.startswith(REPORT_PLOTS):
            old.unlink()
    for png in sorted(report.glob("*.png")):
        shutil.copyfile(png, assets / png.name)
        body = body.replace(f"]({png.name})", f"]({rel}/{png.name})")
    body = body.replace("\n### ", "\n#### ").replace("\n## ", "\n### ")
    if body.startswith("### "):
        body = "#" + body
    head = headline(rows)
    env = machine(work)
    grids = steps.timings.get(GRIDS_STEP, {})
    timing_lines = ["| step | wall time | cells |", "|---|---|---|"]
    for path in DATASETS:  # prepared by an invocation whose timings were not kept
        if f"data: {Path(path).name}" not in steps.timings:
            timing_lines.append(f"| data: {Path(path).name} | not recorded (prepared earlier) | |")
    for name, t in steps.timings.items():
        timing_lines.append(f"| {name} | {fmt_seconds(t['seconds'])} | {t.get('cells', '')} |")
    wall = sum(t["seconds"] for n, t in steps.timings.items() if not n.startswith("grid: "))
    text = [
        "# Results",
        "",
        "Generated by `python benchmarks/make_results.py` (see its docstring) from the grids in",
        "[examples/results/](../examples/results/), one per method. Every number below was measured",
        "by that script. Each run folder under `WORK/runs/` holds its resolved config, plan, metrics",
        "(seed, dataset content hash, versions, machine) and log, and",
        "`embdim run runs/GRID/CELL/config.yaml --out NEW` (in WORK) re-runs a cell and gives the",
        "same metrics on the same machine.",
        "",
        "SSEDS in the paper's setting (pretrained at width 128) against uniform widths at equal",
        "embedding size, with its variants and the AUC-vs-parameters plot, is on its own page:",
        "[results/sseds_vs_fde.md](results/sseds_vs_fde.md) (`python benchmarks/sseds_vs_fde.py`).",
        "",
        *settings_lines(work),
        "",
        "The settings are cut down from the papers' (fewer epochs, short searches, SSEDS pretrained",
        "at the FDE reference width rather than 64-128) so that the whole set runs in about half an",
        "hour on two CPU cores. The datasets are small, so these results show that every method",
        "works end to end on real data; they do not show the memory savings of the papers'",
        "Criteo/Avazu settings.",
        "",
        "## Machine",
        "",
        "| | |",
        "|---|---|",
        *[f"| {k} | {v} |" for k, v in env.items()],
        f"| grids started (UTC) | {grids.get('started', 'not recorded')} |",
        f"| load average (1, 5, 15 min) when the grids started / ended | "
        f"{grids.get('load_start', 'not recorded')} / {grids.get('load_end', 'not recorded')} |",
        "",
        "The two cores were shared with other work while this ran, so the seconds below (and the",
        "search / retrain seconds and samples/s in the tables) are inflated by an unknown amount;",
        "the AUC, Logloss and parameter counts do not depend on it.",
        "",
        "## Commands and wall times",
        "",
        "From an empty work folder WORK (the script's `--work`), with REPO the repository root, in",
        "order:",
        "",
        "```bash",
        "cd WORK",
        *steps.commands,
        "embdim report runs --out report",
        "```",
        "",
        "The script runs the `embdim grid` commands in two lanes at once ("
        + "; ".join(" then ".join(lane) for lane in LANES) + "), each a single-threaded process.",
        "",
        *timing_lines,
        "",
        f"Wall time from the raw data to the report: {fmt_seconds(wall)} (the data steps, the grids'",
        "lanes together, the report; the `grid:` rows overlap, as two lanes run at once). This",
        f"invocation of the script: {fmt_seconds(total_seconds)} (a restart skips the finished",
        "steps and keeps the time they took when they ran).",
        "",
        "## Data",
        "",
        *dataset_rows(work),
        "",
        planted_truth(work),
        "",
        "## Headline",
        "",
        *head,
        "",
        f"Mean ± sample std over {'/'.join(sorted({r['runs'] for r in rows}))} seeds. `*` / `†`: AUC",
        "significantly better / worse than the best",
        "baseline (FDE, RaS, MDE: the one with the highest mean AUC) of the same dataset, two-sided",
        "Welch t-test p < 0.05 (p-values in the full report's CSV).",
        "",
        "## Reproducing a cell",
        "",
        *reproduced,
        "",
        "## Full report",
        "",
        "The output of `embdim report` over all run folders: per dataset the methods x model table,",
        "the dimension chosen per field (one value per seed where the seeds disagree) and the cost",
        "table; then the plots.",
        "",
        body,
        "",
    ]
    out_md.write_text("\n".join(text))
    shutil.copyfile(report / "report.csv", assets / "report.csv")
    return head


def select_methods(names: list[str]) -> None:
    """Run (and list) only the grids of ``names``."""
    global METHODS, LANES
    METHODS = tuple(m for m in METHODS if m in names)
    LANES = tuple(lane for lane in (tuple(m for m in lane if m in METHODS) for lane in LANES) if lane)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", type=Path, default=Path("/tmp/results-work"),
                    help="folder for prepared data, run folders and the report (default /tmp/results-work)")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data",
                    help="folder holding adult/adult.csv and ml-latest-small/ (default ../shared/data)")
    ap.add_argument("--synthetic-rows", type=int, default=200_000)
    ap.add_argument("--lanes", type=int, choices=(1, 2), default=2,
                    help="grids running at once (default 2: " + " | ".join(", ".join(lane)
                                                                            for lane in LANES) + ")")
    ap.add_argument("--methods", nargs="+", choices=METHODS, default=None,
                    help="run only these grids (default: all); the report covers every run folder")
    ap.add_argument("--out", type=Path, default=REPO / "docs" / "results.md")
    ap.add_argument("--assets", type=Path, default=REPO / "docs" / "results",
                    help="where the PNGs (and report.csv) referenced by --out go")
    args = ap.parse_args()
    if args.methods:
        select_methods(args.methods)
    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    steps = Steps(work)
    prepare_data(work, args.data_root.resolve(), args.synthetic_rows, steps)
    t_grids = time.perf_counter()
    grids_started = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M")
    load_start = ", ".join(f"{x:.2f}" for x in os.getloadavg())
    run_grids(work, steps, args.lanes)
    grids_seconds = time.perf_counter() - t_grids
    steps.record(GRIDS_STEP, grids_seconds, any(f"grid: {m}" in steps.worked for m in METHODS),
                 lanes=args.lanes, started=grids_started, load_start=load_start,
                 load_end=", ".join(f"{x:.2f}" for x in os.getloadavg()))
    cmd = [*EMBDIM, "--quiet", "report", "runs", "--out", "report"]
    _, seconds = steps.run("report", cmd, work)
    steps.commands.pop()  # listed separately in results.md
    steps.record("report", seconds, True)
    reproduced = reproduce(work, steps)
    head = write_results(work, steps, args.out.resolve(), args.assets.resolve(),
                         time.perf_counter() - t0, reproduced)
    print("\n".join(head))
    rows = list(csv.DictReader(open(work / "report" / "report.csv")))
    print("\nFor the README:\n" + "\n".join(readme_table(rows)))
    print(f"\nwrote {args.out} and {args.assets}/ in {fmt_seconds(time.perf_counter() - t0)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
