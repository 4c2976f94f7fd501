"""Streaming run folders, the Table 2 report and the streaming demo (AutoEmb sec. 3).

A run folder is the library's (:mod:`embdim.folders`: resolved ``config.yaml``, ``log.txt``,
atomic writes, resume and its refusals, ``metrics.json`` written last) with ``plan.json`` (a
:class:`embdim.plan.DimensionPlan` whose rule maps popularity to width, :mod:`embdim.autoemb.plan`),
``checkpoints/last.pt`` (the loop's, for ``--resume``) and PNG plots (``curve.png``,
``by_popularity.png``, ``weights.png``). ``metrics.json`` has the online and offline metrics
(``mse`` or ``cross_entropy``, ``accuracy``), flat keys ``online_<metric>`` for tables,
``by_popularity`` (per user/item popularity bucket and stage: interactions, metrics, mean weight
per width), ``curve``, ``seconds``, ``interactions_per_second``, parameter counts, the seed, the
stream's content hash and package versions.

``report`` groups runs by (stream, task, method) and prints the paper's Table 2: rows task x metric,
columns FSE, SAM, DARTS, AutoEmb, cells mean ± sample std over seeds. AutoEmb is compared with the
best other method by a two-sided Welch t-test (``*``: better, ``†``: worse, p < 0.05).
"""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict
from pathlib import Path
from typing import Any

import torch

from embdim.autoemb.config import StreamConfig, stream_config_from_dict
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.plan import stream_plan
from embdim.autoemb.plots import plot_by_popularity, plot_curve, plot_weights
from embdim.autoemb.stream import InteractionStream
from embdim.config import recorded_config
from embdim.errors import EmbdimError
from embdim.folders import RunLog, prepare_run_folder, read_recorded_config, versions, write_metrics
from embdim.io import atomic_write_text
from embdim.report import find_runs, is_stream_metrics
from embdim.stats import ALPHA, format_mean_std, mean_std, significance_mark, welch_ttest

METHOD_LABELS = {"fse": "FSE", "sam": "SAM", "darts": "DARTS", "autoemb": "AutoEmb"}


def run_stream(cfg: StreamConfig, out: str | Path, *, stream: InteractionStream | None = None,
               quiet: bool = False, plots: bool = True, resume: bool = False) -> dict[str, Any]:
    """Run ``cfg`` over its stream (``cfg.data.path``, or ``stream``) and write the run folder.

    A non-empty ``out`` is refused unless ``resume``: then the run continues from
    ``out/checkpoints/last.pt`` (from the start if none was written yet) with the same config
    (a changed one is refused, naming the differences) and ends with the metrics an uninterrupted
    run gives on the same machine."""
    out = Path(out)
    cfg.validate()
    if stream is None:
        if not cfg.data.path:
            raise EmbdimError("data.path is not set: give a folder written by `embdim stream prepare`")
        stream = InteractionStream.open(cfg.data.path)
    prepare_run_folder(out, cfg.to_dict(), resume=resume,
                       recorded=lambda d: recorded_config(d, stream_config_from_dict))
    log = RunLog(out / "log.txt")
    log(f"stream {cfg.data.path or stream.meta.get('source')}: {len(stream):,} interactions, "
        f"{stream.num_users:,} users, {stream.num_items:,} items")
    checkpoint = out / "checkpoints" / "last.pt"
    learner = StreamLearner(stream, cfg, quiet=quiet, log=log, checkpoint_path=checkpoint)
    log(f"method {cfg.method.name} ({cfg.method.order} order, xi={cfg.xi:g}), task {cfg.model.task}, "
        f"{learner.length:,} interactions, online from {learner.offline_end:,}")
    if resume:
        if learner.load_checkpoint():
            log(f"resumed from {checkpoint} at interaction {learner.resumed_at:,} "
                f"(batch {learner.position:,})")
        else:
            log(f"--resume: no checkpoint in {checkpoint.parent} yet, starting from the beginning")
    try:
        summary = learner.run()
    except KeyboardInterrupt:
        log(f"interrupted at interaction {learner.resumed_at:,}; `--resume` continues from the last "
            f"checkpoint in {checkpoint.parent}")
        raise
    loss_key = "mse" if cfg.model.task == "regression" else "cross_entropy"
    metrics: dict[str, Any] = {
        "method": cfg.method.name, "task": cfg.model.task, "seed": cfg.train.seed,
        "data": str(cfg.data.path or stream.meta.get("source")),
        "stream_hash": stream.meta.get("content_hash"),
        "widths": list(cfg.model.widths) if cfg.method.name != "fse" else [cfg.fixed_width],
        f"online_{loss_key}": summary["online"][loss_key],
        "online_accuracy": summary["online"]["accuracy"],
        f"offline_{loss_key}": summary["offline"][loss_key],
        "offline_accuracy": summary["offline"]["accuracy"],
        "interactions": learner.length,
        "interactions_per_second": summary["interactions_per_second"],
        "embedding_params": learner.embedding_params(),
        "controller_params": learner.controller_params(),
        **summary,
        "versions": versions(),
        "threads": torch.get_num_threads(),
    }
    log(f"online {loss_key}={metrics[f'online_{loss_key}']:.5f} "
        f"accuracy={metrics['online_accuracy']:.5f}; {metrics['interactions_per_second']:,.0f} "
        f"interactions/s")
    plan = stream_plan(cfg, metrics, num_users=stream.num_users, num_items=stream.num_items,
                       user_counts=learner.user_counts, item_counts=learner.item_counts)
    plan.save(out / "plan.json")
    if plan.value_dim_rule["kind"] == "popularity_buckets":
        rule = plan.value_dim_rule
        log("plan: expected width by user popularity bucket " + ", ".join(
            f"{r['bucket']}: {r['expected_width']:.1f}" for r in rule["user"]))
    if plots:
        title = f"{cfg.method.name}, {cfg.model.task}, seed {cfg.train.seed}"
        plot_curve({cfg.method.name: [metrics]}, out / "curve.png", f"Metric over the stream — {title}")
        plot_by_popularity({cfg.method.name: [metrics]}, out / "by_popularity.png",
                           f"By user popularity — {title}")
        plot_weights(metrics, out / "weights.png", f"Weight per width — {title}")
    write_metrics(out, metrics)
    return metrics


# ---- report -----------------------------------------------------------------------------------------

def find_stream_runs(paths: list[str | Path]) -> list[dict[str, Any]]:
    """metrics.json of every finished streaming run at or below ``paths`` (found by the library's
    :func:`embdim.report.find_runs`), with its config (``_config``; an older run's aliases
    resolved) and folder (``_run``)."""
    runs = []
    for run in find_runs(paths):
        metrics = json.loads((run / "metrics.json").read_text())
        if is_stream_metrics(metrics):
            recorded = read_recorded_config(run / "config.yaml")
            metrics["_config"] = stream_config_from_dict(recorded)
            metrics["_run"] = str(run)
            runs.append(metrics)
    if not runs:
        raise EmbdimError(f"no finished streaming run under {', '.join(map(str, paths))}")
    return runs


def _variant(m: dict[str, Any]) -> str:
    """The method's label: its name, plus ``first-order`` when it is not the default order."""
    cfg: StreamConfig = m["_config"]
    label = METHOD_LABELS.get(m["method"], m["method"])
    if m["method"] in ("autoemb", "darts") and cfg.method.order == "first":
        label += " (1st)"
    return label


def stream_report(paths: list[str | Path], out: str | Path | None = None, *,
                  plots: bool = True) -> str:
    """Table 2 (Markdown, also CSV) from streaming runs; with ``out``, write ``stream_report.md``,
    ``stream_report.csv`` and the Fig. 6/7/8 plots there. Returns the Markdown tables."""
    runs = find_stream_runs(paths)
    groups: dict[str, dict[str, dict[str, list[dict[str, Any]]]]] = defaultdict(
        lambda: defaultdict(lambda: defaultdict(list)))
    for m in runs:
        groups[m["data"]][m["task"]][_variant(m)].append(m)
    order = {label: i for i, label in enumerate(METHOD_LABELS.values())}
    md: list[str] = []
    rows_csv: list[list[Any]] = []
    figures: list[tuple[str, str]] = []
    for data, tasks in groups.items():
        methods = sorted({v for t in tasks.values() for v in t}, key=lambda v: (order.get(v, 99), v))
        md += [f"### {data}", "", "| task | metric | " + " | ".join(methods) + " |",
               "|---" * (len(methods) + 2) + "|"]
        for task, by_method in tasks.items():
            loss_key = "mse" if task == "regression" else "cross_entropy"
            for key, label, better in ((f"online_{loss_key}", "MSE loss" if task == "regression"
                                        else "CE loss", min), ("online_accuracy", "accuracy", max)):
                stats = {v: mean_std([m[key] for m in ms]) for v, ms in by_method.items()}
                cells = []
                for v in methods:
                    if v not in stats:
                        cells.append("–")
                        continue
                    mean = stats[v][0]
                    mark = ""
                    if v.startswith("AutoEmb") and len(stats) > 1:
                        others = {o: s for o, s in stats.items() if not o.startswith("AutoEmb")}
                        if others:
                            best = better(others, key=lambda o: others[o][0])
                            p = welch_ttest([m[key] for m in by_method[v]], [m[key] for m in by_method[best]])
                            mark = significance_mark(p, better=better(mean, others[best][0]) == mean)
                            rows_csv.append([data, task, key, v, "p_vs_" + best, p])
                    n = len(by_method[v])
                    cells.append(format_mean_std([m[key] for m in by_method[v]], ".4f") + mark)
                    rows_csv.append([data, task, key, v, "mean", mean])
                    rows_csv.append([data, task, key, v, "std", stats[v][1]])
                    rows_csv.append([data, task, key, v, "seeds", n])
                md.append(f"| {task} | {label} | " + " | ".join(cells) + " |")
        md += ["", "Online stage; mean ± sample std over seeds. `*` / `†`: AutoEmb better / worse than "
               f"the best other method, two-sided Welch t-test p < {ALPHA}.", ""]
        md += ["| task | method | seeds | interactions/s | seconds | embedding params | controller params |",
               "|---|---|---|---|---|---|---|"]
        for task, by_method in tasks.items():
            for v in methods:
                if v not in by_method:
                    continue
                ms = by_method[v]
                ips, secs = mean_std([m["interactions_per_second"] for m in ms]), mean_std(
                    [m["seconds"]["total"] for m in ms])
                md.append(f"| {task} | {v} | {len(ms)} | {ips[0]:,.0f} ± {ips[1]:,.0f} | "
                          f"{secs[0]:.1f} | {ms[0]['embedding_params']:,} | {ms[0]['controller_params']:,} |")
        md.append("")
        if plots and out is not None:
            from embdim.plots import slug

            stem = slug(Path(data).name or data)
            for task, by_method in tasks.items():
                name = f"curve_{stem}_{task}.png"
                plot_curve(by_method, Path(out) / name, f"Over the stream — {Path(data).name}, {task}")
                figures.append((f"metric over the stream, {task}", name))
                name = f"by_popularity_{stem}_{task}.png"
                plot_by_popularity(by_method, Path(out) / name,
                                   f"By user popularity — {Path(data).name}, {task}")
                figures.append((f"metrics by user popularity, {task}", name))
                for v, ms in by_method.items():
                    name = f"weights_{stem}_{task}_{slug(v)}.png"
                    if plot_weights(ms[0], Path(out) / name, f"Weights — {v}, {task}, seed {ms[0]['seed']}"):
                        figures.append((f"weights by popularity, {v}, {task}", name))
    table = "\n".join(md)
    if out is not None:
        body = table + ("\n## Plots\n\n" + "\n".join(f"![{c}]({n})\n" for c, n in figures) if figures else "")
        atomic_write_text(Path(out) / "stream_report.md", f"# Streaming report\n\n{body}\n")
        buf = io.StringIO()
        w = csv.writer(buf)
        w.writerow(["data", "task", "metric", "method", "stat", "value"])
        w.writerows(rows_csv)
        atomic_write_text(Path(out) / "stream_report.csv", buf.getvalue())
    return table


# ---- demo -------------------------------------------------------------------------------------------

DEMO_METHODS = ("fse", "sam", "darts", "autoemb")


def run_demo(out: str | Path, *, interactions: int = 40_000, seed: int = 2022, quiet: bool = False,
             tasks: tuple[str, ...] = ("regression",)) -> str:
    """The four methods on a planted stream (:mod:`embdim.autoemb.synthetic`), small widths and
    layers so that it runs in about a minute on two CPU cores; writes the runs and the report."""
    from embdim.autoemb.synthetic import PlantedStreamSpec, planted_stream

    out = Path(out)
    stream, _ = planted_stream(PlantedStreamSpec(num_users=300, num_items=200,
                                                 interactions=interactions, latent_dim=4, seed=seed))
    stream_dir = out / "stream"
    if not (stream_dir / "stream.json").exists():
        stream.save(stream_dir)
    for task in tasks:
        for method in DEMO_METHODS:
            run_dir = out / f"{method}-{task}"
            if (run_dir / "metrics.json").exists():
                continue  # finished; an unfinished one is resumed below
            cfg = stream_config_from_dict({
                "data": {"path": str(stream_dir)},
                "model": {"task": task, "widths": [1, 2, 16], "hidden": [64, 64]},
                "method": {"name": method, "controller_hidden": [32, 32], "controller_lr": 0.01},
                "train": {"batch_size": 100, "seed": seed, "threads": 1, "optimizer": "adam"}})
            m = run_stream(cfg, run_dir, quiet=quiet, resume=True)
            if not quiet:
                key = "online_mse" if task == "regression" else "online_cross_entropy"
                print(f"{method:8s} {task}: {key}={m[key]:.4f} accuracy={m['online_accuracy']:.4f} "
                      f"({m['seconds']['total']:.1f} s)")
    return stream_report([out], out)
