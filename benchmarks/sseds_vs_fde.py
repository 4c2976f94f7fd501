"""SSEDS against uniform widths (FDE) at equal embedding size: the table and plot of docs/results.md.

    python benchmarks/sseds_vs_fde.py --work /tmp/results-work            # everything
    python benchmarks/sseds_vs_fde.py --work W --datasets adult --seeds 1 --variants per-entry-r5

For each dataset (prepared as benchmarks/make_results.py does: the planted synthetic data, UCI Adult,
MovieLens latest-small) and seed, DeepFM in the SSEDS paper's setting (sec. 4.1.3: Adam 1e-3, batch
2048, ReLU MLP without BatchNorm or dropout; the MLP is [256, 256] instead of [1024, 1024] to fit two
CPU cores; up to 10 epochs, early stop after 2 without a better validation AUC):

1. FDE at width 128 (the pretrained model of SSEDS, sec. 3.2.1) and at ``round(kappa x 128)`` for each
   kappa (the uniform model of the same embedding size);
2. SSEDS at each kappa and each retraining variant, starting from that seed's FDE-128 weights
   (``method.pretrain_checkpoint``), so every variant prunes the same pretrained model:
   ``scatter`` (the paper's single shot, ``rank: saliency, saliency_rounds: 1``, with the default
   retraining: kept columns at their pretrained coordinates, no parameters),
   ``linear-select`` (trainable ``M_i`` of eq. 13 at width 128, starting as the selection; its
   parameters count against kappa), ``linear-random`` (``M_i`` at ``d_max``, random, fresh
   body: the paper's text), ``scatter-avg20`` (the default with ``|g|`` averaged over 20
   batches instead of the paper's one), ``scatter-noticket`` (ablation "w/o ticket": the
   searched widths at the same coordinates, retrained from a fresh initialisation), ``pad``
   (columns packed first, zero padding, fresh body) and ``per-entry`` (cells ranked by saliency per
   table entry instead of saliency, one round) and ``per-entry-avg20`` (both changes),
   ``per-entry-noticket`` (per-entry plans retrained from a fresh initialisation), ``per-entry-r5``
   (per-entry ranking pruned in 5 rounds, ``|g|`` measured again at each round's mask: the
   library's defaults, ``rank: per_entry, saliency_rounds: 5``),
   ``per-entry-r5-noticket`` (its plans from a fresh initialisation), ``per-entry-r5-freshbody``
   (its plans with the kept pretrained columns but a fresh body and first-order weights, the
   reading of the paper's text: ``inherit_network: false``), ``per-entry-valid-r5`` (the
   rounds with the saliency taken on validation batches: ``saliency_split: valid``),
   ``per-entry-r5-noretrain`` (its plans, the pruned pretrained model evaluated without
   retraining: ``retrain: false``), ``per-entry-r5-rewind1`` (its plans, the slim model
   started from the pretraining's weights after epoch 1 instead of its best ones:
   ``rewind: always, rewind_epoch: 1``; as the pretraining is the FDE-128 cell, the script runs
   that cell's seeded training once more, stopped after 1 epoch, ``fde-128-epoch1``, and passes
   its weights as ``rewind_checkpoint``), ``per-entry-r5-auto`` (its plans retrained from
   both starting points, the one with the better validation AUC kept: ``rewind: auto``, the
   library's defaults before ``vocab_cap``), ``per-entry-r5-rewind0`` (its plans retrained from
   the pretraining's initial weights: ``rewind: always, rewind_epoch: 0``, rebuilt from the
   seed), ``per-entry-r5-avg20`` (the rounds with ``|g|`` averaged over 20 batches),
   ``per-entry-r5-cap`` (the rounds with no field wider than its vocabulary: ``vocab_cap: true``)
   and ``per-entry-r5-cap-auto`` (that with ``rewind: auto``: the library's defaults). The
   variants set ``vocab_cap: false`` unless named, and retrain from one start
   (``rewind: never``) unless named.

Every run is an ordinary run folder under ``WORK/sseds-vs-fde/`` (``embdim report`` reads them); a
finished run is skipped on a restart. The script writes ``--out`` (Markdown: the comparison table at
equal size, mean ± std over seeds, and the commands) and a PNG of AUC against embedding parameters
beside it. Embedding parameters count the tables plus any alignment parameters.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

PRETRAIN_WIDTH = 128
MODEL = {"name": "deepfm", "mlp": [256, 256], "dropout": 0.0, "batch_norm": False}
TRAIN = {"batch_size": 2048, "lr": 0.001, "epochs": 10, "early_stop": 2, "device": "cpu",
         "optimizer": "adam"}  # the papers' optimiser (the library default is auto)
# The variants name every search option they rely on: the library's defaults have changed since
# some of these cells were run (then: rank saliency, one round, retraining from the best weights;
# now: per_entry, 5 rounds, rewind auto).
NEVER = {"rewind": "never", "vocab_cap": False}  # the retraining starts from the best pretrained
#                                                 weights (the paper); widths not capped (eq. 12)
PAPER = {"rank": "saliency", "saliency_rounds": 1, **NEVER}  # eq. 10-12: one shot, by saliency
SINGLE = {"saliency_rounds": 1, **NEVER}
R5 = {"rank": "per_entry", "saliency_rounds": 5, **NEVER}  # the search defaults before vocab_cap
VARIANTS = {
    "scatter": {**PAPER},
    "linear-select": {**PAPER, "align": "linear"},
    "linear-random": {**PAPER, "align": "linear", "align_width": "max", "align_init": "random"},
    "scatter-avg20": {**PAPER, "saliency_batches": 20},
    "scatter-noticket": {**PAPER, "ticket": False},
    "pad": {**PAPER, "align": "pad", "align_width": "max"},
    "per-entry": {**SINGLE, "rank": "per_entry"},
    "per-entry-avg20": {**SINGLE, "rank": "per_entry", "saliency_batches": 20},
    "per-entry-noticket": {**SINGLE, "rank": "per_entry", "ticket": False},
    "per-entry-r5": {**R5},
    "per-entry-r5-noticket": {**R5, "ticket": False},
    "per-entry-valid-r5": {**R5, "saliency_split": "valid"},
    "per-entry-r5-freshbody": {**R5, "inherit_network": False},
    "per-entry-r5-noretrain": {**R5, "retrain": False},
    "per-entry-r5-rewind1": {**R5, "rewind": "always", "rewind_epoch": 1},
    "per-entry-r5-auto": {**R5, "rewind": "auto", "rewind_epoch": 1},  # the defaults before vocab_cap
    "per-entry-r5-rewind0": {**R5, "rewind": "always", "rewind_epoch": 0},
    "per-entry-r5-avg20": {**R5, "saliency_batches": 20},
    "per-entry-r5-cap": {**R5, "vocab_cap": True},
    "per-entry-r5-cap-auto": {**R5, "vocab_cap": True, "rewind": "auto", "rewind_epoch": 1},  # the
    #                                                                    library's defaults
    "per-entry-r5-cap-auto-keep": {**R5, "vocab_cap": True, "rewind": "auto", "rewind_epoch": 1,
                                   "keep_start": True},  # ... with the start kept if best
}
DATASETS = {"synthetic": "Synthetic (planted)", "adult": "UCI Adult",
            "ml-latest-small": "MovieLens latest-small"}


def fde_width(kappa: float) -> int:
    return max(1, round(kappa * PRETRAIN_WIDTH))


def run(cfg: dict, out: Path, threads: int) -> dict:
    from embdim.experiment import run_experiment

    if (out / "metrics.json").exists():
        return json.loads((out / "metrics.json").read_text())
    cfg = {**cfg, "train": {**cfg["train"], "threads": threads}}
    t0 = time.perf_counter()
    resume = (out / "config.yaml").exists()
    m = run_experiment(cfg, out, resume=resume, quiet=True)
    params = m["embedding_params"] + m.get("alignment_params", 0)
    print(f"  {out.name}: test AUC {m['test_auc']:.4f}, {params:,} params, "
          f"{time.perf_counter() - t0:.0f} s", flush=True)
    return m


def cells(datasets, seeds, kappas, variants):
    """(name, config) in run order; SSEDS cells after their FDE-128 (and its first epochs, where a
    variant rewinds: the same seeded run stopped after that epoch)."""
    rewinds = sorted({VARIANTS[v]["rewind_epoch"] for v in variants
                      if VARIANTS[v].get("rewind", "never") != "never" and VARIANTS[v]["rewind_epoch"]})
    for ds in datasets:
        for seed in seeds:
            base = {"data": {"path": f"data/{ds}"}, "model": MODEL, "train": {**TRAIN, "seed": seed}}
            for w in [PRETRAIN_WIDTH] + [fde_width(k) for k in kappas]:
                yield f"{ds}/fde-{w}_seed-{seed}", {**base, "method": {"name": "fde", "dim": w}}
            for e in rewinds:
                yield (f"{ds}/fde-{PRETRAIN_WIDTH}-epoch{e}_seed-{seed}",
                       {**base, "train": {**base["train"], "epochs": e},
                        "method": {"name": "fde", "dim": PRETRAIN_WIDTH}})
            for k in kappas:
                for v in variants:
                    method = {"name": "sseds", "budget": k, "pretrain_width": PRETRAIN_WIDTH,
                              **VARIANTS[v], "pretrain_checkpoint":
                              f"sseds-vs-fde/{ds}/fde-{PRETRAIN_WIDTH}_seed-{seed}/checkpoints/best.pt"}
                    if method.get("rewind", "never") != "never" and method["rewind_epoch"]:
                        # the early weights: pretrained in the FDE cells (epoch 0, the initial
                        # weights, are rebuilt from the seed)
                        method["rewind_checkpoint"] = (
                            f"sseds-vs-fde/{ds}/fde-{PRETRAIN_WIDTH}-epoch{method.pop('rewind_epoch')}"
                            f"_seed-{seed}/checkpoints/best.pt")
                    yield f"{ds}/sseds-{v}-{k}_seed-{seed}", {**base, "method": method}


def summarise(work: Path, datasets, seeds, kappas, variants) -> tuple[str, dict]:
    def load(name):
        p = work / "sseds-vs-fde" / name / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else None

    def stats(prefix):
        ms = [m for s in seeds if (m := load(f"{prefix}_seed-{s}"))]
        if not ms:
            return None
        auc = np.array([m["test_auc"] for m in ms])
        params = np.mean([m["embedding_params"] + m.get("alignment_params", 0) for m in ms])
        std = float(auc.std(ddof=1)) if len(auc) > 1 else 0.0  # sample std, as embdim report
        return {"auc": float(auc.mean()), "std": std, "params": float(params), "n": len(ms)}

    def paired(prefix, fde_prefix):
        """SSEDS minus FDE seed by seed (the same seed's pretrained model and FDE run)."""
        d = np.array([a["test_auc"] - b["test_auc"] for s in seeds
                      if (a := load(f"{prefix}_seed-{s}")) and (b := load(f"{fde_prefix}_seed-{s}"))])
        if not len(d):
            return None
        return float(d.mean()), float(d.std(ddof=1)) if len(d) > 1 else 0.0

    data, lines = {}, []
    for ds in datasets:
        full = stats(f"{ds}/fde-{PRETRAIN_WIDTH}")
        data[ds] = {"fde-128": full, "rows": []}
        lines += [f"### {DATASETS.get(ds, ds)}", "",
                  f"FDE-{PRETRAIN_WIDTH} (the pretrained model): " + (
                      f"test AUC {full['auc']:.4f} ± {full['std']:.4f}, {full['params']:,.0f} params"
                      if full else "not run") + ". Cells: test AUC mean ± std over seeds (params; "
                  "difference to FDE at the same size, seed by seed: mean ± std).", "",
                  "| method | " + " | ".join(f"kappa {k}" for k in kappas) + " |",
                  "|---|" + "---|" * len(kappas)]
        rows = {k: {"kappa": k, "fde_width": fde_width(k), "fde": stats(f"{ds}/fde-{fde_width(k)}")}
                for k in kappas}
        cells = []
        for k in kappas:
            f = rows[k]["fde"]
            cells.append(f"{f['auc']:.4f} ± {f['std']:.4f} ({f['params']:,.0f})" if f else "-")
        lines.append(f"| FDE (width {' / '.join(str(fde_width(k)) for k in kappas)}) | "
                     + " | ".join(cells) + " |")
        for v in variants:
            cells = []
            for k in kappas:
                st, f = stats(f"{ds}/sseds-{v}-{k}"), rows[k]["fde"]
                rows[k][v] = st
                if st is None:
                    cells.append("-")
                    continue
                diff = paired(f"{ds}/sseds-{v}-{k}", f"{ds}/fde-{fde_width(k)}")
                st["diff"] = diff
                delta = f"; {diff[0]:+.4f} ± {diff[1]:.4f}" if diff else ""
                cells.append(f"{st['auc']:.4f} ± {st['std']:.4f} ({st['params']:,.0f}{delta})")
            lines.append(f"| SSEDS {v} | " + " | ".join(cells) + " |")
        data[ds]["rows"] = [rows[k] for k in kappas]
        lines += ["", *stability_lines(work, ds, seeds, kappas, variants), ""]
    return "\n".join(lines), data


def stability_lines(work: Path, ds: str, seeds, kappas, variants) -> list[str]:
    """Plan stability of each variant: the width overlap of the chosen plan with the plans of 4
    other single saliency batches (plan.json ``stability``, mean over batches and seeds) and between
    the seeds' plans (mean over pairs); 1 = always the same widths."""
    from embdim.plan import width_overlap

    rows = []
    for v in variants:
        cells = []
        for k in kappas:
            plans = [json.loads(p.read_text()) for s in seeds
                     if (p := work / "sseds-vs-fde" / ds / f"sseds-{v}-{k}_seed-{s}" / "plan.json").exists()]
            if not plans:
                cells.append("-")
                continue
            dims = [[f["dim"] for f in p["fields"]] for p in plans]
            stab = [p["extra"]["stability"]["width_overlap"] for p in plans
                    if (p["extra"].get("stability") or {}).get("batches")]
            pairs = [width_overlap(a, b) for i, a in enumerate(dims) for b in dims[i + 1:]]
            cells.append(f"{np.mean([np.mean(x) for x in stab]):.2f}" if stab else "-")
            cells[-1] += f" / {np.mean(pairs):.2f}" if pairs else " / -"
        if any(c != "-" for c in cells):
            rows.append(f"| SSEDS {v} | " + " | ".join(cells) + " |")
    if not rows:
        return []
    return ["Plan stability, width overlap `sum_i min(d_i, d'_i) / sum_i max(d_i, d'_i)` (1 = the "
            "same widths): against the plans of 4 other single saliency batches of the same "
            "pretrained model (mean over them and the seeds) / between the seeds' plans.", "",
            "| method | " + " | ".join(f"kappa {k}" for k in kappas) + " |",
            "|---|" + "---|" * len(kappas), *rows]


def plot(data: dict, variants, path: Path) -> None:
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    colours = colormaps["tab20"]  # one distinct colour per variant (up to 20)
    fig = Figure(figsize=(5 * len(data), 4.5))
    FigureCanvasAgg(fig)
    for j, (ds, d) in enumerate(data.items()):
        ax = fig.add_subplot(1, len(data), j + 1)
        fde = [r["fde"] for r in d["rows"] if r["fde"]] + ([d["fde-128"]] if d["fde-128"] else [])
        fde.sort(key=lambda s: s["params"])
        ax.errorbar([s["params"] for s in fde], [s["auc"] for s in fde], [s["std"] for s in fde],
                    marker="o", label="FDE (uniform)", color="black")
        for v in variants:  # one colour per variant in every panel
            pts = sorted((r[v] for r in d["rows"] if r.get(v)), key=lambda s: s["params"])
            if pts:
                ax.errorbar([s["params"] for s in pts], [s["auc"] for s in pts],
                            [s["std"] for s in pts], marker="s", label=f"SSEDS {v}", capsize=2,
                            color=colours(list(VARIANTS).index(v) % 20))
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("embedding parameters (tables + alignment)")
        ax.set_ylabel("test AUC")
        ax.set_title(f"{DATASETS.get(ds, ds)}, DeepFM")
        ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--work", type=Path, required=True, help="folder with data/ (created if missing)")
    ap.add_argument("--data-root", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--synthetic-rows", type=int, default=200_000)
    ap.add_argument("--datasets", default=",".join(DATASETS))
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--kappas", default="0.1,0.25,0.5")
    ap.add_argument("--variants", default=",".join(VARIANTS))
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--lane", default="0/1", help="I/N: run every N-th cell from the I-th (parallel lanes)")
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="Markdown summary (PNG beside it)")
    args = ap.parse_args()
    datasets, variants = args.datasets.split(","), args.variants.split(",")
    seeds = [int(s) for s in args.seeds.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    work = args.work.resolve()
    out = args.out.resolve() if args.out else None

    import os

    os.chdir(work) if work.exists() else (work.mkdir(parents=True), os.chdir(work))
    if not args.summary_only:
        import make_results

        make_results.prepare_data(work, args.data_root.resolve(), args.synthetic_rows,
                                  make_results.Steps(work))
        lane, lanes = (int(x) for x in args.lane.split("/"))
        todo = list(cells(datasets, seeds, kappas, variants))
        fde_first = [c for c in todo if "/fde-" in c[0]] + [c for c in todo if "/sseds-" in c[0]]
        for i, (name, cfg) in enumerate(fde_first):
            if i % lanes != lane:
                continue
            for pretrain in (cfg["method"].get("pretrain_checkpoint"),
                             cfg["method"].get("rewind_checkpoint")):
                while pretrain and not (Path(pretrain).parents[1] / "metrics.json").exists():
                    time.sleep(10)  # the other lane is still training the pretrained model
            run(cfg, work / "sseds-vs-fde" / name, args.threads)
    text, data = summarise(work, datasets, seeds, kappas, variants)
    print(text)
    if out:
        png = out.with_suffix(".png")
        plot(data, variants, png)
        command = " ".join(["python benchmarks/sseds_vs_fde.py",
                            *(a for a in sys.argv[1:] if a != "--summary-only")])
        out.write_text(
            f"<!-- written by benchmarks/sseds_vs_fde.py -->\n\n# SSEDS against uniform widths at "
            f"equal size\n\n`{command}` runs every cell that is missing under "
            f"`WORK/sseds-vs-fde/` (finished runs are kept; with `--summary-only` nothing runs) and "
            f"writes this page. Setting: the docstring of benchmarks/sseds_vs_fde.py. A `-` is a "
            f"cell that was not run.\n\n" + text + f"\n![AUC against embedding parameters]({png.name})\n")
        out.with_suffix(".json").write_text(json.dumps(data, indent=1))


if __name__ == "__main__":
    main()
