"""``embdim report``: tables from finished run folders, in the layout of AutoDim's Table 2 and 4.

Rows are methods (the method section of each run's ``config.yaml``: its name and options), column
groups are base models, and each cell holds the mean ± sample standard deviation over the runs
that differ only in ``train.seed``: test AUC, test Logloss and embedding parameters. A second
table gives the selected width of every field (Table 4), one value per seed where they differ.
A Markdown file and a long-format CSV (one row per method x model x dataset) are written.
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

METRICS = ("test_auc", "test_logloss", "embedding_params")


@dataclass
class Group:
    """The runs of one (dataset, method, model) that differ only in their seed."""

    data: str
    method: str
    model: str
    runs: list[dict[str, Any]] = field(default_factory=list)

    def stat(self, key: str) -> tuple[float, float]:
        """Mean and sample standard deviation (0 for a single run) of a metric."""
        values = np.array([r[key] for r in self.runs], dtype=float)
        std = float(values.std(ddof=1)) if len(values) > 1 else 0.0
        return float(values.mean()), std

    @property
    def seeds(self) -> list[int]:
        return sorted(int(r["seed"]) for r in self.runs)


def method_label(method: dict[str, Any]) -> str:
    """``sseds budget=0.1``: the method's name and its options, sorted."""
    opts = " ".join(f"{k}={v}" for k, v in sorted(method.items()) if k != "name")
    return f"{method.get('name', '?')} {opts}".strip()


def find_runs(paths: list[str | Path]) -> list[Path]:
    """Every finished run folder (one with metrics.json) at or below the given paths."""
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
        groups.setdefault(key, Group(*key)).runs.append({**metrics, "run": str(run)})
    return list(groups.values())


def _cell(g: Group | None, key: str, fmt: str) -> str:
    if g is None:
        return "–"
    mean, std = g.stat(key)
    return f"{mean:{fmt}} ± {std:{fmt}}" if len(g.runs) > 1 else f"{mean:{fmt}}"


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
                cells += [_cell(g, "test_auc", ".4f"), _cell(g, "test_logloss", ".4f"),
                          _cell(g, "embedding_params", ",.0f")]
            lines.append("| " + " | ".join(cells) + " |")
        seeds = sorted({len(g.runs) for g in gs})
        lines += ["", f"mean ± sample std over {'/'.join(map(str, seeds))} seed(s) per cell.", ""]
        lines += dims_table(sorted(gs, key=lambda g: (g.method, g.model)))
        out.append("\n".join(lines))
    return "\n\n".join(out)


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


def csv_table(groups: list[Group]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf)
    w.writerow(["data", "method", "model", "runs", "seeds"]
               + [f"{k}_{s}" for k in METRICS for s in ("mean", "std")])
    for g in groups:
        row = [g.data, g.method, g.model, len(g.runs), " ".join(map(str, g.seeds))]
        for k in METRICS:
            row += list(g.stat(k))
        w.writerow(row)
    return buf.getvalue()


def write_report(paths: list[str | Path], out: str | Path) -> str:
    """Collect the runs under ``paths`` and write ``out/report.md`` and ``out/report.csv``."""
    groups = collect(find_runs(paths))
    table = markdown_table(groups)
    out = Path(out)
    atomic_write_text(out / "report.md", f"# embdim report\n\n{table}\n")
    atomic_write_text(out / "report.csv", csv_table(groups))
    return table
