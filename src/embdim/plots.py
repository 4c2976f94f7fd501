"""Report plots (PNG), one pair per dataset x model:

- ``auc_params_<data>_<model>.png``: test AUC against embedding parameters (log x), one series per
  method name (its option settings, e.g. budgets, are the points of the series, joined in order of
  size), mean over seeds with sample-std error bars — the accuracy/size trade-off (Pareto front).
- ``dims_<data>_<model>.png``: the selected width of every field, one bar per method (grouped by
  field), mean over seeds with std error bars where the seeds disagree; 0 = field dropped.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
they can be written from any process, headless or not.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from embdim.io import atomic_write

if TYPE_CHECKING:
    from embdim.report import Group


def slug(text: str) -> str:
    """A filesystem-safe name: runs of characters other than letters, digits, ``.``, ``-`` become ``_``."""
    return re.sub(r"[^A-Za-z0-9.\-]+", "_", text).strip("_.") or "x"


def _figure(width: float, height: float):
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def _save(fig, path: Path) -> None:
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def _options(g: Group) -> str:
    return g.method[len(g.name):].strip() if g.method.startswith(g.name) else g.method


def plot_auc_vs_params(groups: list[Group], path: str | Path, title: str) -> Path:
    """Test AUC vs embedding parameters of the groups of one dataset x model."""
    path = Path(path)
    fig = _figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        series[g.name or g.method].append(g)
    for name in sorted(series):
        gs = sorted(series[name], key=lambda g: g.stat("embedding_params")[0])
        x = np.array([g.stat("embedding_params")[0] for g in gs])
        y = np.array([g.stat("test_auc")[0] for g in gs])
        err = np.array([g.stat("test_auc")[1] for g in gs])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="-" if len(gs) > 1 else "none",
                    label=name)
        if len(gs) > 1:  # tell the points of a series apart (budgets, dims, ...)
            for g, xi, yi in zip(gs, x, y, strict=True):
                ax.annotate(_options(g), (xi, yi), textcoords="offset points", xytext=(4, 4), fontsize=7)
    if all(g.stat("embedding_params")[0] > 0 for g in groups):
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 19,000 rather than 1.9 x 10^4
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))  # labels that do not overlap
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("embedding parameters (log scale)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="method", fontsize=8)
    _save(fig, path)
    return path


def plot_dims(groups: list[Group], path: str | Path, title: str) -> Path | None:
    """Grouped bars: selected width per field, one bar per method. None if no run records dims."""
    groups = [g for g in groups if g.runs and g.runs[0].get("dims")]
    if not groups:
        return None
    path = Path(path)
    fields: list[str] = []
    for g in groups:
        fields += [f for f in g.runs[0]["dims"] if f not in fields]
    groups = sorted(groups, key=lambda g: g.method)
    width = 0.8 / len(groups)
    x = np.arange(len(fields))
    fig = _figure(max(6.0, 0.6 * len(fields) * max(1, len(groups)) ** 0.5 + 2), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for i, g in enumerate(groups):
        values = np.array([[float(r.get("dims", {}).get(f, np.nan)) for f in fields] for r in g.runs])
        mean = np.nanmean(values, axis=0) if len(values) else np.zeros(len(fields))
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(len(fields))
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=np.nan_to_num(std) if np.any(std > 0) else None, capsize=2, label=g.method)
    ax.set_xticks(x)
    many = len(fields) > 8
    ax.set_xticklabels(fields, rotation=45 if many else 0, ha="right" if many else "center")
    ax.set_xlabel("field")
    ax.set_ylabel("embedding dimension (0 = dropped)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars
    _save(fig, path)
    return path


def write_plots(groups: list[Group], out: str | Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Write both plots for every dataset x model into ``out``; returns, per (data, model), the
    (caption, file name) pairs written."""
    out = Path(out)
    by_cell: dict[tuple[str, str], list[Group]] = defaultdict(list)
    for g in groups:
        by_cell[(g.data, g.model)].append(g)
    written: dict[tuple[str, str], list[tuple[str, str]]] = {}
    used: set[str] = set()
    for (data, model), gs in sorted(by_cell.items()):
        stem = f"{slug(Path(data).name or data)}_{slug(model)}"
        while stem in used:  # two data paths with the same last part
            stem += "_"
        used.add(stem)
        files = []
        p = plot_auc_vs_params(gs, out / f"auc_params_{stem}.png", f"Test AUC vs embedding parameters "
                               f"— {Path(data).name or data}, {model}")
        files.append(("AUC vs embedding parameters", p.name))
        p = plot_dims(gs, out / f"dims_{stem}.png", f"Dimensions per field — {Path(data).name or data}, "
                      f"{model}")
        if p is not None:
            files.append(("dimensions per field", p.name))
        written[(data, model)] = files
    return written
