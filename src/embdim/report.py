"""``embdim report``: tables from finished run folders, in the layout of AutoDim's Table 2 and 4.

Rows are methods (the method section of each run's ``config.yaml``: its name and options), column
groups are base models, and each cell holds the mean ± sample standard deviation over the runs
that differ only in ``train.seed``: test AUC, test Logloss and embedding parameters. A second
table gives the selected width of every field (Table 4), one value per seed where they differ.
A Markdown file and a long-format CSV (one row per method x model x dataset) are written.

Significance, as in the papers: for each dataset x model, every method's test AUC over its seeds is
compared with the *best baseline* (the method among fde, ras, random and mde with the highest mean
AUC) by a two-sided **Welch** t-test (unequal variances: methods differ in how much their AUC moves
with the seed, so pooling variances as Student's test does would be wrong). A cell is marked ``*``
when the method is better than the best baseline with p < 0.05 and ``†`` when it is worse with
p < 0.05. The test needs two or more seeds on both sides and a nonzero variance on at least one; the
p-value (and the baseline it was measured against) is in the CSV, empty where no test applies.

Plots (PNG, next to report.md and embedded in it): see :mod:`embdim.plots`.
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from embdim.errors import EmbdimError
from embdim.io import atomic_write_text
from embdim.plan import width_overlap
from embdim.stats import ALPHA, format_mean_std, mean_std, welch_ttest
from embdim.stats import significance_mark as stats_mark

METRICS = ("test_auc", "test_logloss", "embedding_params", "params")
BASELINES = ("fde", "ras", "random", "mde")  # method names the proposed methods are tested against


@dataclass
class Group:
    """The runs of one (dataset, method, model) that differ only in their seed."""

    data: str
    method: str
    model: str
    runs: list[dict[str, Any]] = field(default_factory=list)
    name: str = ""  # the method's name alone (``fde``), for telling baselines apart
    baseline: str | None = None  # label of the best baseline this group was tested against
    baseline_auc: float | None = None  # that baseline's mean test AUC
    p_value: float | None = None  # two-sided Welch t-test of test AUC against that baseline
    options: dict[str, Any] | None = None  # the method section (for short plot labels)

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for a single run) of a metric."""
        return mean_std(self.values(key))

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r["seed"]) for r in self.runs)

    def values(self, key: str) -> np.ndarray:
        """One value per run; ``params`` is the embedding layer's size: table entries plus the
        alignment parameters (``M_i``, ``W_i``), what comparisons at equal size count."""
        if key == "params":
            return np.array([r["embedding_params"] + r.get("alignment_params", 0) for r in self.runs],
                            dtype=float)
        return np.array([r[key] for r in self.runs], dtype=float)

    @property
    def is_baseline(self) -> bool:
        return self.name in BASELINES


def add_significance(groups: list[Group]) -> None:
    """Set ``baseline`` and ``p_value`` of every group: per dataset x model, its test AUC against the
    baseline group with the highest mean AUC (the best baseline itself is not tested)."""
    by_cell: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_cell[(g.data, g.model)].append(g)
    for gs in by_cell.values():
        baselines = [g for g in gs if g.is_baseline]
        if not baselines:
            continue
        best = max(baselines, key=lambda g: g.stat("test_auc")[0])
        for g in gs:
            if g is best:
                continue
            g.baseline, g.baseline_auc = best.method, best.stat("test_auc")[0]
            g.p_value = welch_ttest(g.values("test_auc"), best.values("test_auc"))


def significance_mark(g: Group) -> str:
    """``*`` significantly better than the best baseline, ``†`` significantly worse, else ''."""
    if g.baseline_auc is None:
        return ""
    return stats_mark(g.p_value, better=g.stat("test_auc")[0] > g.baseline_auc)


def method_label(method: dict[str, Any]) -> str:
    """``sseds budget=0.1``: the method's name and its options, sorted."""
    opts = " ".join(f"{k}={v}" for k, v in sorted(method.items()) if k != "name")
    return f"{method.get('name', '?')} {opts}".strip()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every finished run folder (one with metrics.json) at or below the given paths: CTR and
    streaming runs alike (:func:`is_stream_metrics` tells them apart)."""
    found: list[Path] = []
    for p in map(Path, paths):
        if not p.exists():
            raise EmbdimError(f"{p}: no such run folder")
        found += sorted(m.parent for m in ([p / "metrics.json"] if (p / "metrics.json").exists()
                                           else p.rglob("metrics.json")))
    if not found:
        raise EmbdimError(f"no finished run (metrics.json) under {', '.join(map(str, paths))}")
    return found


def collect(run_dirs: list[Path]) -> list[Group]:
    groups: dict[tuple[str, str, str], Group] = {}
    for run in run_dirs:
        metrics = json.loads((run / "metrics.json").read_text())
        config = yaml.safe_load((run / "config.yaml").read_text())
        key = (str(config["data"]["path"]), method_label(config["method"]), metrics["model"])
        group = groups.setdefault(key, Group(*key, name=str(config["method"].get("name", "?")),
                                             options=dict(config["method"])))
        group.runs.append({**metrics, "run": str(run)})
    result = list(groups.values())
    add_significance(result)
    return result


def _cell(g: Group | None, key: str, fmt: str, mark: bool = False) -> str:
    if g is None:
        return "–"
    return format_mean_std(g.values(key), fmt) + (significance_mark(g) if mark else "")


def markdown_table(groups: list[Group]) -> str:
    """One table per dataset: methods x (model: AUC, Logloss, Params)."""
    out = []
    by_data: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        by_data[g.data].append(g)
    for data, gs in by_data.items():
        models = sorted({g.model for g in gs})
        methods = sorted({g.method for g in gs})
        index = {(g.method, g.model): g for g in gs}
        header = ["method"] + [f"{m} {k}" for m in models for k in ("AUC", "Logloss", "Params")]
        lines = [f"### {data}", "", "| " + " | ".join(header) + " |", "|---" * len(header) + "|"]
        for method in methods:
            cells = [method]
            for m in models:
                g = index.get((method, m))
                cells += [_cell(g, "test_auc", ".4f", mark=True), _cell(g, "test_logloss", ".4f"),
                          _cell(g, "params", ",.0f")]
            lines.append("| " + " | ".join(cells) + " |")
        seeds = sorted({len(g.runs) for g in gs})
        lines += ["", f"mean ± sample std over {'/'.join(map(str, seeds))} seed(s) per cell. Params: "
                  "embedding table entries plus alignment parameters. "
                  f"AUC `*` / `†`: better / worse than the best baseline ({', '.join(BASELINES)}) of "
                  f"the same model, two-sided Welch t-test p < {ALPHA}.", ""]
        ordered = sorted(gs, key=lambda g: (g.method, g.model))
        lines += dims_table(ordered)
        lines += [""] + efficiency_table(ordered)
        stability = stability_table(ordered)
        lines += [""] + stability if stability else []
        starts = retrain_start_table(ordered)
        lines += [""] + starts if starts else []
        out.append("\n".join(lines))
    return "\n\n".join(out)


EFFICIENCY = (("search_seconds", "search s", ".1f"), ("retrain_seconds", "retrain s", ".1f"),
              ("train_samples_per_second", "train samples/s", ",.0f"),
              ("infer_samples_per_second", "infer samples/s", ",.0f"),
              ("embedding_params", "emb params", ",.0f"))


def efficiency_table(groups: list[Group]) -> list[str]:
    """Cost per method x model (AutoDim Fig. 6 / SSEDS search cost): search and retrain seconds,
    training and inference throughput, embedding parameters; mean ± std over seeds."""
    keys = [k for k in EFFICIENCY if all(k[0] in r for g in groups for r in g.runs)]
    if not keys:
        return []
    lines = ["| method | model | " + " | ".join(label for _, label, _ in keys) + " |",
             "|---" * (len(keys) + 2) + "|"]
    for g in groups:
        lines.append(f"| {g.method} | {g.model} | "
                     + " | ".join(_cell(g, key, fmt) for key, _, fmt in keys) + " |")
    return lines


def dims_table(groups: list[Group]) -> list[str]:
    """Selected width per field: rows method x model, one value per seed joined by '/' if they
    differ (0 = field dropped)."""
    fields = list(groups[0].runs[0].get("dims", {})) if groups else []
    if not fields:
        return []
    lines = ["| method | model | " + " | ".join(fields) + " |", "|---" * (len(fields) + 2) + "|"]
    for g in groups:
        cells = []
        for f in fields:
            values = [str(r.get("dims", {}).get(f, "?")) for r in g.runs]
            cells.append(values[0] if len(set(values)) == 1 else "/".join(values))
        lines.append(f"| {g.method} | {g.model} | " + " | ".join(cells) + " |")
    return lines


def stability_table(groups: list[Group]) -> list[str]:
    """How much to trust the plans (SSEDS runs, whose plan.json has ``stability``): the overlap of
    the chosen plan with the plans of other single saliency batches (kept-cell Jaccard, width
    overlap; mean over batches and seeds), and the width overlap between the seeds' plans (mean
    over pairs of seeds). 1 = always the same plan."""
    rows = []
    for g in groups:
        batches = [_plan_extra(r).get("stability") for r in g.runs]
        batches = [b for b in batches if b and b.get("batches")]
        if not batches:
            continue
        jaccard = np.mean([np.mean(b["cell_jaccard"]) for b in batches])
        widths = np.mean([np.mean(b["width_overlap"]) for b in batches])
        dims = [list(r["dims"].values()) for r in g.runs if isinstance(r.get("dims"), dict)]
        pairs = [width_overlap(a, b) for i, a in enumerate(dims) for b in dims[i + 1:]]
        seeds = f"{np.mean(pairs):.2f}" if pairs else "-"
        rows.append(f"| {g.method} | {g.model} | {jaccard:.2f} | {widths:.2f} | {seeds} |")
    if not rows:
        return []
    return ["Plan stability (1 = the same plan): against the plans of other single saliency batches "
            "of the same pretrained model, and between seeds.", "",
            "| method | model | batches: kept-cell Jaccard | batches: width overlap | seeds: width "
            "overlap |", "|---|---|---|---|---|", *rows]


def retrain_start_table(groups: list[Group]) -> list[str]:
    """Where the retraining started (SSEDS runs, whose metrics.json has ``retrain_start``): the
    ``rewind`` option, the start each seed kept (``best``: the best pretrained weights, ``rewind``:
    the early ones) and the validation AUC each retrained candidate reached (mean over the seeds
    that trained it). Selection uses validation only, so these are validation, not test, AUCs."""
    records = [(g, [r["retrain_start"] for r in g.runs if isinstance(r.get("retrain_start"), dict)])
               for g in groups]
    records = [(g, rs) for g, rs in records if rs]
    if not records:
        return []
    names = sorted(dict.fromkeys(n for _, rs in records for r in rs for n in r.get("candidates", {})),
                   key=lambda n: n != "best")  # the best pretrained weights (the paper's) first
    lines = ["Retraining start (`retrain_start` in metrics.json): the start each seed kept and the "
             "validation AUC each start retrained to (mean over seeds).", "",
             "| method | model | rewind | kept (per seed) | "
             + " | ".join(f"{n}: valid AUC" for n in names) + " |",
             "|---" * (len(names) + 4) + "|"]
    for g, rs in records:
        cells = []
        for n in names:
            aucs = [r["candidates"][n]["valid_auc"] for r in rs if n in r.get("candidates", {})]
            cells.append(f"{np.mean(aucs):.4f}" if aucs else "-")
        rewind = "/".join(dict.fromkeys(str(r.get("rewind", "?")) for r in rs))
        kept = "/".join(str(r.get("chosen", "?")) for r in rs)
        lines.append(f"| {g.method} | {g.model} | {rewind} | {kept} | " + " | ".join(cells) + " |")
    return lines


def _plan_extra(run: dict[str, Any]) -> dict[str, Any]:
    path = Path(run.get("run", "")) / "plan.json"
    try:
        return json.loads(path.read_text()).get("extra") or {}
    except (OSError, ValueError, AttributeError):
        return {}


def csv_table(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["data", "method", "model", "runs", "seeds"]
               + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")]
               + ["best_baseline", "auc_p_value", "auc_significant"])
    for g in groups:
        row = [g.data, g.method, g.model, len(g.runs), " ".join(map(str, g.seeds))]
        for k in METRICS:
            row += list(g.stat(k))
        row += [g.baseline or "", "" if g.p_value is None else f"{g.p_value:.6g}",
                {"*": "better", "†": "worse"}.get(significance_mark(g), "")]
        w.writerow(row)
    return buf.getvalue()


def write_report(paths: list[str | Path], out: str | Path, *, plots: bool = True) -> str:
    """Collect the runs under ``paths`` and write ``out/report.md``, ``out/report.csv`` and (with
    ``plots``) one PNG pair per dataset x model, embedded in report.md. Returns the tables."""
    runs = find_runs(paths)
    streams = [r for r in runs if _is_stream_run(r)]
    ctr = [r for r in runs if r not in streams]
    out = Path(out)
    table, body = "", ""
    if ctr:
        groups = collect(ctr)
        table = markdown_table(groups)
        body = table
        if plots:
            from embdim.plots import write_plots

            figures = write_plots(groups, out)
            lines = ["## Plots", ""]
            for (data, model), files in figures.items():
                lines += [f"### {data}, {model}", ""]
                for caption, name in files:
                    lines += [f"![{caption}, {data}, {model}]({name})", ""]
            body = f"{table}\n\n" + "\n".join(lines)
        atomic_write_text(out / "report.csv", csv_table(groups))
    if streams:
        # AutoEmb runs: its Table 2 layout and Fig. 6-8 plots (embdim.autoemb.run.stream_report,
        # which also writes stream_report.md / .csv), embedded here under their own heading.
        from embdim.autoemb.run import stream_report

        stream_table = stream_report(streams, out, plots=plots)
        stream_body = (out / "stream_report.md").read_text().split("\n", 2)[2]
        stream_body = stream_body.replace("\n## Plots", "\n### Plots")
        body += ("\n\n" if body else "") + "## AutoEmb (streaming runs)\n\n" + stream_body
        table += ("\n\n" if table else "") + stream_table
    atomic_write_text(out / "report.md", f"# embdim report\n\n{body.rstrip()}\n")
    return table


def _is_stream_run(run: Path) -> bool:
    return is_stream_metrics(json.loads((run / "metrics.json").read_text()))


def is_stream_metrics(metrics: dict[str, Any]) -> bool:
    """The ``metrics.json`` of an AutoEmb streaming run (online metrics by popularity) rather than
    of a CTR run."""
    return "by_popularity" in metrics and "online_accuracy" in metrics and "test_auc" not in metrics
