"""PNG figures of streaming runs, in the layout of the AutoEmb paper:

* :func:`plot_by_popularity` (Fig. 6): loss and accuracy per user-popularity bucket, one line per
  method, for the offline and the online stage;
* :func:`plot_weights` (Fig. 7): the mean weight on each candidate width per user- and
  item-popularity bucket (stacked bars) of one run;
* :func:`plot_curve` (Fig. 8): the loss and accuracy over the stream (interactions seen), one line
  per method, with the start of the online stage marked.

Inputs are ``metrics.json`` dictionaries (:func:`embdim.autoemb.run.run_stream`); curves of several
seeds of a method are averaged point by point.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from embdim.plots import figure, save_figure


def _loss_key(metrics: dict[str, Any]) -> str:
    return "mse" if metrics["task"] == "regression" else "cross_entropy"


def _loss_label(key: str) -> str:
    return {"mse": "MSE", "cross_entropy": "cross-entropy"}[key]


def plot_by_popularity(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str) -> Path:
    """``runs``: method -> metrics of its seeds (one task)."""
    fig = figure(11, 7)
    first = next(iter(runs.values()))[0]
    key = _loss_key(first)
    for row, stage in enumerate(("offline", "online")):
        for col, (metric, label) in enumerate(((key, _loss_label(key)), ("accuracy", "accuracy"))):
            ax = fig.add_subplot(2, 2, 2 * row + col + 1)
            for method, ms in sorted(runs.items()):
                buckets: dict[int, list[float]] = {}
                names: dict[int, str] = {}
                for m in ms:
                    for b in m["by_popularity"]["user"][stage]:
                        buckets.setdefault(b["min_popularity"], []).append(b[metric])
                        names[b["min_popularity"]] = b["bucket"]
                xs = sorted(buckets)
                if xs:
                    ax.plot(range(len(xs)), [np.mean(buckets[x]) for x in xs], marker="o", label=method)
                    ax.set_xticks(range(len(xs)))
                    ax.set_xticklabels([names[x] for x in xs], rotation=45, ha="right", fontsize=7)
            ax.set_title(f"{stage}: {label}", fontsize=9)
            ax.set_xlabel("user popularity (earlier interactions)", fontsize=8)
            ax.grid(True, alpha=0.3)
            if row == 0 and col == 0:
                ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, Path(path))
    return Path(path)


def plot_weights(metrics: dict[str, Any], path: str | Path, title: str, stage: str = "online") -> Path | None:
    """Stacked bars of the mean weight per width, per popularity bucket (users and items)."""
    widths = metrics.get("widths") or []
    if not any(b.get("weights") for b in metrics["by_popularity"]["user"][stage]):
        return None
    fig = figure(11, 4.5)
    for col, who in enumerate(("user", "item")):
        ax = fig.add_subplot(1, 2, col + 1)
        rows = [b for b in metrics["by_popularity"][who][stage] if b.get("weights")]
        w = np.array([b["weights"] for b in rows])
        bottom = np.zeros(len(rows))
        for n in range(w.shape[1]):
            ax.bar(range(len(rows)), w[:, n], bottom=bottom, label=f"d={widths[n]}" if widths else str(n))
            bottom += w[:, n]
        ax.set_xticks(range(len(rows)))
        ax.set_xticklabels([b["bucket"] for b in rows], rotation=45, ha="right", fontsize=7)
        ax.set_xlabel(f"{who} popularity (earlier interactions)", fontsize=8)
        ax.set_ylabel("mean weight")
        ax.set_ylim(0, 1)
        ax.set_title(f"{who}s, {stage} stage", fontsize=9)
        ax.legend(fontsize=8, loc="upper left")
    fig.suptitle(title)
    save_figure(fig, Path(path))
    return Path(path)


def plot_curve(runs: dict[str, list[dict[str, Any]]], path: str | Path, title: str) -> Path:
    """Loss and accuracy over the stream, one line per method (mean over seeds)."""
    fig = figure(11, 4.5)
    first = next(iter(runs.values()))[0]
    key = _loss_key(first)
    for col, (metric, label) in enumerate(((key, _loss_label(key)), ("accuracy", "accuracy"))):
        ax = fig.add_subplot(1, 2, col + 1)
        for method, ms in sorted(runs.items()):
            n = min(len(m["curve"]) for m in ms)
            if n == 0:
                continue
            x = [p["interactions"] for p in ms[0]["curve"][:n]]
            field = "accuracy" if metric == "accuracy" else "loss"
            y = np.mean([[p[field] for p in m["curve"][:n]] for m in ms], axis=0)
            ax.plot(x, y, label=method, linewidth=1.2)
        ax.axvline(first["online_start"], color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel("interactions seen (dashed: online stage starts)", fontsize=8)
        ax.set_ylabel(f"{label} (per window)")
        ax.grid(True, alpha=0.3)
        if col == 0:
            ax.legend(fontsize=8)
    fig.suptitle(title)
    save_figure(fig, Path(path))
    return Path(path)
