"""Report plots (PNG), one pair per dataset x model:

- ``auc_params_<data>_<model>.png``: test AUC against embedding parameters (log x), one series per
  method name (its option settings, e.g. budgets, are the points of the series, joined in order of
  size), mean over seeds with sample-std error bars — the accuracy/size trade-off (Pareto front).
- ``dims_<data>_<model>.png``: the selected width of every field, one bar per method (grouped by
  field), mean over seeds with std error bars where the seeds disagree; 0 = field dropped.
- ``saliency_<data>_<model>.png`` (only where SSEDS runs are among the groups: their ``plan.json``
  holds the saliency matrix ``s [fields, dims]`` of the pretrained model, SSEDS eq. 8-11): left, the
  saliency distribution as in the SSEDS paper's Fig. 7 — every (field, dimension) cell's share of the
  total saliency, sorted, log-log (a straight line is a power law), mean over seeds per SSEDS setting,
  with a dashed line at the number of cells the budget kept; right, each field's share of the total
  saliency (mean ± std over seeds), i.e. where the pruning takes its dimensions from.

Figures are drawn with matplotlib's Agg canvas directly (no pyplot, no global backend switch), so
they can be written from any process, headless or not.
"""

from __future__ import annotations

import json
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


def figure(width: float, height: float):
    """A matplotlib Figure on its own Agg canvas (no pyplot): every report figure starts here."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(fig)
    return fig


def save_figure(fig, path: Path) -> None:
    """Write ``fig`` as PNG to ``path``, atomically."""
    fig.tight_layout()
    atomic_write(path, lambda f: fig.savefig(f, format="png"), mode="wb")


def _options(g: Group, groups: list[Group] | None = None) -> str:
    """The option settings that tell ``g`` apart from the other groups of the same method name in
    ``groups`` (``budget=0.3``), where the groups carry their options; else all of ``g``'s options."""
    same = [o for o in (groups or []) if o.name == g.name]
    if g.options is not None and same and all(o.options is not None for o in same):
        keys = sorted({k for o in same for k in o.options} - {"name"})
        differ = [k for k in keys if len({repr(o.options.get(k)) for o in same}) > 1]
        return " ".join(f"{k}={g.options.get(k)}" for k in differ)
    return g.method[len(g.name):].strip() if g.method.startswith(g.name) else g.method


def _label(g: Group, groups: list[Group]) -> str:
    """A legend label: the method name and only the options that differ between its groups in the
    plot (the tables keep every option)."""
    if g.options is None:
        return g.method
    return f"{g.name} {_options(g, groups)}".strip()


def plot_auc_vs_params(groups: list[Group], path: str | Path, title: str) -> Path:
    """Test AUC vs embedding parameters of the groups of one dataset x model."""
    path = Path(path)
    fig = figure(7.5, 5.0)
    ax = fig.add_subplot(1, 1, 1)
    series: dict[str, list[Group]] = defaultdict(list)
    for g in groups:
        series[g.name or g.method].append(g)
    for name in sorted(series):
        gs = sorted(series[name], key=lambda g: g.stat("params")[0])
        x = np.array([g.stat("params")[0] for g in gs])
        y = np.array([g.stat("test_auc")[0] for g in gs])
        err = np.array([g.stat("test_auc")[1] for g in gs])
        ax.errorbar(x, y, yerr=err, marker="o", capsize=3, linestyle="-" if len(gs) > 1 else "none",
                    label=name)
        if len(gs) > 1:  # tell the points of a series apart (budgets, dims, ...)
            for g, xi, yi in zip(gs, x, y, strict=True):
                ax.annotate(_options(g, groups), (xi, yi), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    if all(g.stat("params")[0] > 0 for g in groups):
        from matplotlib.ticker import FuncFormatter, LogLocator

        ax.set_xscale("log")
        plain = FuncFormatter(lambda v, _: f"{v:,.0f}")  # 19,000 rather than 1.9 x 10^4
        ax.xaxis.set_major_formatter(plain)
        ax.xaxis.set_minor_locator(LogLocator(base=10, subs=(2.0, 5.0)))  # labels that do not overlap
        ax.xaxis.set_minor_formatter(plain)
        ax.tick_params(axis="x", which="minor", labelsize=7)
    ax.set_xlabel("embedding parameters: tables + alignment (log scale)")
    ax.set_ylabel("test AUC (mean ± std over seeds)")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(title="method", fontsize=8)
    save_figure(fig, path)
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
    fig = figure(max(6.0, 0.6 * len(fields) * max(1, len(groups)) ** 0.5 + 2), 4.5)
    ax = fig.add_subplot(1, 1, 1)
    for i, g in enumerate(groups):
        values = np.array([[float(r.get("dims", {}).get(f, np.nan)) for f in fields] for r in g.runs])
        mean = np.nanmean(values, axis=0) if len(values) else np.zeros(len(fields))
        std = np.nanstd(values, axis=0, ddof=1) if len(values) > 1 else np.zeros(len(fields))
        ax.bar(x + (i - (len(groups) - 1) / 2) * width, np.nan_to_num(mean), width,
               yerr=np.nan_to_num(std) if np.any(std > 0) else None, capsize=2, label=_label(g, groups))
    ax.set_xticks(x)
    many = len(fields) > 8
    ax.set_xticklabels(fields, rotation=45 if many else 0, ha="right" if many else "center")
    ax.set_xlabel("field")
    ax.set_ylabel("embedding dimension (0 = dropped)")
    ax.set_title(title)
    ax.grid(True, axis="y", alpha=0.3)
    ax.legend(title="method", fontsize=8, loc="upper left", bbox_to_anchor=(1.0, 1.0))  # beside the bars
    save_figure(fig, path)
    return path


def _saliency_runs(g: Group) -> list[tuple[list[str], np.ndarray, int]]:
    """(field names, saliency [F, d], kept cells) of every run of ``g`` whose plan.json holds a
    saliency matrix (SSEDS plans); runs without one are left out."""
    found = []
    for r in g.runs:
        plan_path = Path(r["run"]) / "plan.json" if r.get("run") else None
        if plan_path is None or not plan_path.is_file():
            continue
        plan = json.loads(plan_path.read_text())
        s = (plan.get("extra") or {}).get("saliency")
        if not s:
            continue
        names = [f["name"] if isinstance(f, dict) else str(f) for f in plan.get("fields", [])]
        s = np.abs(np.asarray(s, dtype=float))
        if len(names) != s.shape[0]:
            names = [f"field {i}" for i in range(s.shape[0])]
        dims = [f.get("dim", 0) for f in plan.get("fields", []) if isinstance(f, dict)]
        found.append((names, s, int(sum(dims))))
    return found


def plot_saliency(groups: list[Group], path: str | Path, title: str) -> Path | None:
    """SSEDS saliency distribution (sorted shares, log-log) and saliency share per field, one series
    per SSEDS setting of one dataset x model. None if no group has a run with a saliency matrix.

    Settings that differ only in the budget prune the same pretrained models, so their saliency is
    the same: such groups share one curve and one set of bars (their labels joined), and each adds
    its own dashed line at the number of cells it kept."""
    series = [(g, runs) for g in sorted(groups, key=lambda g: g.method) if (runs := _saliency_runs(g))]
    if not series:
        return None
    path = Path(path)
    fields: list[str] = []
    for _, runs in series:
        for names, _, _ in runs:
            fields += [f for f in names if f not in fields]
    stats = []
    for g, runs in series:
        size = min(s.size for _, s, _ in runs)
        curve = np.mean([np.sort(s.reshape(-1))[::-1][:size] / max(s.sum(), 1e-300)
                         for _, s, _ in runs], axis=0)
        mass = np.full((len(runs), len(fields)), np.nan)
        for j, (names, s, _) in enumerate(runs):
            total = max(s.sum(), 1e-300)
            for name, row in zip(names, s, strict=True):
                mass[j, fields.index(name)] = row.sum() / total
        seen = (~np.isnan(mass)).sum(axis=0)
        mean = np.nan_to_num(mass).sum(axis=0) / np.maximum(seen, 1)
        dev = np.where(np.isnan(mass), 0.0, mass - mean) ** 2
        std = np.sqrt(dev.sum(axis=0) / np.maximum(seen - 1, 1))  # sample std; 0 for one seed
        kept = float(np.mean([k for _, _, k in runs]))
        stats.append({"g": g, "runs": len(runs), "curve": curve, "mean": mean, "std": std, "kept": kept})
    clusters: list[list[dict]] = []  # groups with the same saliency (same pretrained models)
    for st in stats:
        for c in clusters:
            ref = c[0]
            if (ref["curve"].shape == st["curve"].shape and np.allclose(ref["curve"], st["curve"])
                    and np.allclose(ref["mean"], st["mean"])):
                c.append(st)
                break
        else:
            clusters.append([st])
    fig = figure(max(11.0, 6.0 + 0.45 * len(fields) * max(1, len(clusters)) ** 0.5), 4.6)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    width = 0.8 / len(clusters)
    x = np.arange(len(fields))
    dashes = ("--", ":", "-.", (0, (5, 1, 1, 1)))
    for i, c in enumerate(clusters):
        color = f"C{i % 10}"
        labels = [_label(st["g"], groups) for st in c]
        label = labels[0] + "".join(f" | {lab.split(' ', 1)[-1]}" for lab in labels[1:])
        seeds = c[0]["runs"]
        rank = np.arange(1, c[0]["curve"].size + 1)
        ax1.plot(rank, np.maximum(c[0]["curve"], 1e-12), color=color,
                 label=f"{label} ({seeds} seed{'s' if seeds > 1 else ''})")
        for j, st in enumerate(c):
            if 0 < st["kept"] < rank.size:
                ax1.axvline(st["kept"], color=color, linestyle=dashes[j % len(dashes)], linewidth=1,
                            label=f"cells kept: {labels[j]}")
        ax2.bar(x + (i - (len(clusters) - 1) / 2) * width, c[0]["mean"], width, color=color,
                yerr=c[0]["std"] if np.any(c[0]["std"] > 0) else None, capsize=2, label=label)
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("rank of (field, dimension) cell, most salient first")
    ax1.set_ylabel("share of total saliency")
    ax1.set_title("saliency distribution", fontsize=10)
    ax1.grid(True, which="both", alpha=0.3)
    ax1.legend(fontsize=8)
    ax2.set_xticks(x)
    many = len(fields) > 6
    ax2.set_xticklabels(fields, rotation=45 if many else 0, ha="right" if many else "center", fontsize=8)
    ax2.set_ylabel("share of total saliency (mean ± std)")
    ax2.set_title("saliency per field", fontsize=10)
    ax2.grid(True, axis="y", alpha=0.3)
    if len(clusters) > 1:
        ax2.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, path)
    return path


def write_plots(groups: list[Group], out: str | Path) -> dict[tuple[str, str], list[tuple[str, str]]]:
    """Write the plots of every dataset x model into ``out``; returns, per (data, model), the
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
        p = plot_saliency([g for g in gs if g.name == "sseds"], out / f"saliency_{stem}.png",
                          f"SSEDS saliency — {Path(data).name or data}, {model}")
        if p is not None:
            files.append(("SSEDS saliency distribution", p.name))
        written[(data, model)] = files
    return written
