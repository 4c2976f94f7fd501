"""The SSEDS paper's Fig. 2-3 grid (test AUC against embedding parameters, SSEDS at several kappa
against the base models at uniform widths) on a Criteo- or Avazu-format dataset, sized for a CPU.

    embdim prepare criteo train.txt --out W/criteo        # e.g. gen_criteo_synth.py's file
    python benchmarks/sseds_fig23.py --data W/criteo --work W --out docs/results/sseds_fig23_criteo.md

For each model (``--models``, the paper's FM, DeepFM, Wide&Deep) and seed: FDE at each width of
``--widths`` (the base models; the paper's 32 / 64 / 128 plus, by default, 13 = 0.1 x 128, the
size of kappa 0.1), then SSEDS at each kappa of ``--kappas`` pruning that seed's FDE-128 weights
(``method.pretrain_checkpoint``: the pretrained model is the base model at width 128, sec. 3.2.1).
The setting is the paper's (sec. 4.1.3: pretrain width 128, Adam 1e-3, batch 2048, two ReLU layers
without BatchNorm or dropout; 3 epochs as its sec. 4.4) except what ``--mlp`` and ``--epochs`` reduce.
SSEDS runs as ``--searches`` says: ``paper`` (eq. 10-12 single shot ranked by saliency, retrained
from the best pretrained weights: ``rank: saliency, saliency_rounds: 1, vocab_cap: false,
rewind: never``, as examples/sseds_fig23_sseds.yaml) and/or ``default`` (the library's defaults:
saliency per entry, 5 rounds, no field wider than its vocabulary, ``rewind: auto``; its early
weights are the FDE-128 run stopped after epoch 1, run as the cell ``fde-128-epoch1``), and/or
``default-keep`` (the defaults with ``keep_start: true``: the pruned start kept when no retraining
epoch beats it). Every
run is an ordinary run folder under ``WORK/sseds-fig23/`` (``embdim report`` reads them); finished
runs are skipped on a restart. ``--out`` gets the Markdown table (mean ± std over seeds; each
run's difference to FDE-128 of its seed) and a PNG beside it.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))

PRETRAIN_WIDTH = 128
SEARCHES = {
    "paper": {"rank": "saliency", "saliency_rounds": 1, "vocab_cap": False, "rewind": "never"},
    "default": {},  # the library's defaults (rewind auto: early weights after epoch 1)
    "default-keep": {"keep_start": True},  # ... and the pruned start kept if no epoch beats it
}
NAMES = {"fm": "FM", "deepfm": "DeepFM", "widedeep": "Wide&Deep"}


def cells(data: str, models, widths, kappas, seeds, searches, mlp, epochs):
    """(name, config) in run order: a seed's FDE cells (FDE-128 first), then its SSEDS cells."""
    for seed in seeds:
        for name in models:
            base = {"data": {"path": data},
                    "model": {"name": name, "mlp": mlp, "dropout": 0.0, "batch_norm": False},
                    "train": {"batch_size": 2048, "lr": 0.001, "epochs": epochs, "early_stop": 0,
                              "seed": seed, "device": "cpu", "optimizer": "adam"}}
            fde = f"{name}/fde-{PRETRAIN_WIDTH}_seed-{seed}"
            for w in sorted(set(widths) | {PRETRAIN_WIDTH}, reverse=True):
                yield f"{name}/fde-{w}_seed-{seed}", {**base, "method": {"name": "fde", "dim": w}}
            if any(s.startswith("default") for s in searches):
                yield (f"{name}/fde-{PRETRAIN_WIDTH}-epoch1_seed-{seed}",
                       {**base, "train": {**base["train"], "epochs": 1},
                        "method": {"name": "fde", "dim": PRETRAIN_WIDTH}})
            for search in searches:
                for k in kappas:
                    method = {"name": "sseds", "budget": k, "pretrain_width": PRETRAIN_WIDTH,
                              **SEARCHES[search],
                              "pretrain_checkpoint": f"sseds-fig23/{fde}/checkpoints/best.pt"}
                    if search.startswith("default"):  # rewind auto: the epoch-1 weights
                        method["rewind_checkpoint"] = (f"sseds-fig23/{name}/fde-{PRETRAIN_WIDTH}-"
                                                       f"epoch1_seed-{seed}/checkpoints/best.pt")
                    yield f"{name}/sseds-{search}-{k}_seed-{seed}", {**base, "method": method}


def summarise(work: Path, models, widths, kappas, seeds, searches) -> tuple[str, dict]:
    def load(name):
        p = work / "sseds-fig23" / name / "metrics.json"
        return json.loads(p.read_text()) if p.exists() else None

    def row(prefix):
        ms = {s: m for s in seeds if (m := load(f"{prefix}_seed-{s}"))}
        if not ms:
            return None
        auc = np.array([m["test_auc"] for m in ms.values()])
        full = [m["test_auc"] - f["test_auc"] for s, m in ms.items()
                if (f := load(f"{prefix.split('/')[0]}/fde-{PRETRAIN_WIDTH}_seed-{s}"))]
        return {"auc": float(auc.mean()), "std": float(auc.std(ddof=1)) if len(auc) > 1 else 0.0,
                "params": float(np.mean([m["embedding_params"] + m.get("alignment_params", 0)
                                         for m in ms.values()])),
                "vs_full": float(np.mean(full)) if full else None,
                "vs_full_each": [round(x, 4) for x in full], "n": len(ms)}

    lines, data = [], {}
    for name in models:
        rows = [(f"FDE width {w}", row(f"{name}/fde-{w}"))
                for w in sorted(set(widths) | {PRETRAIN_WIDTH})]
        rows += [(f"SSEDS {search}, kappa {k}", row(f"{name}/sseds-{search}-{k}"))
                 for search in searches for k in kappas]
        data[name] = {label: r for label, r in rows}
        lines += [f"### {NAMES.get(name, name)}", "",
                  "| model | embedding params | test AUC (mean ± std) | minus FDE-128, per seed | seeds |",
                  "|---|---|---|---|---|"]
        for label, r in rows:
            if r is None:
                lines.append(f"| {label} | - | - | - | 0 |")
                continue
            each = ", ".join(f"{x:+.4f}" for x in r["vs_full_each"])
            lines.append(f"| {label} | {r['params']:,.0f} | {r['auc']:.4f} ± {r['std']:.4f} | "
                         f"{each} | {r['n']} |")
        lines.append("")
    return "\n".join(lines), data


def plot(data: dict, path: Path) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.ticker import NullFormatter

    fig = Figure(figsize=(5 * len(data), 4.5))
    FigureCanvasAgg(fig)
    for j, (name, rows) in enumerate(data.items()):
        ax = fig.add_subplot(1, len(data), j + 1)
        groups: dict[str, list] = {}
        for label, r in rows.items():
            if r is not None:
                groups.setdefault(label.split(",")[0].rsplit(" width", 1)[0], []).append(r)
        for group, rs in groups.items():
            rs.sort(key=lambda r: r["params"])
            ax.errorbar([r["params"] for r in rs], [r["auc"] for r in rs], [r["std"] for r in rs],
                        marker="o" if group == "FDE" else "s", capsize=2, label=group)
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("embedding parameters")
        ax.set_ylabel("test AUC")
        ax.set_title(NAMES.get(name, name))
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", required=True, help="a prepared dataset folder (embdim prepare)")
    ap.add_argument("--work", type=Path, required=True, help="folder for the run folders")
    ap.add_argument("--models", default="fm,deepfm,widedeep")
    ap.add_argument("--widths", default="13,32,64,128", help="FDE widths (128 is always run)")
    ap.add_argument("--kappas", default="0.1,0.3,0.5")
    ap.add_argument("--seeds", default="1,2")
    ap.add_argument("--searches", default="paper",
                    help="paper, default and/or default-keep (comma-separated)")
    ap.add_argument("--mlp", default="1024,1024", help="hidden layers (the paper's 1024,1024)")
    ap.add_argument("--epochs", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--summary-only", action="store_true")
    ap.add_argument("--out", type=Path, default=None, help="Markdown table (PNG beside it)")
    args = ap.parse_args()
    models, searches = args.models.split(","), args.searches.split(",")
    widths = [int(w) for w in args.widths.split(",")]
    kappas = [float(k) for k in args.kappas.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    unknown = [s for s in searches if s not in SEARCHES]
    if unknown:
        ap.error(f"--searches: unknown {unknown}; choose from {', '.join(SEARCHES)}")
    data_path = str(Path(args.data).resolve())
    work = args.work.resolve()
    out = args.out.resolve() if args.out else None
    if not args.summary_only:
        import os

        from sseds_vs_fde import run

        work.mkdir(parents=True, exist_ok=True)
        os.chdir(work)  # the configs name the pretrained checkpoints relative to WORK
        for name, cfg in cells(data_path, models, widths, kappas, seeds, searches,
                               [int(h) for h in args.mlp.split(",")], args.epochs):
            run(cfg, work / "sseds-fig23" / name, args.threads)
    text, data = summarise(work, models, widths, kappas, seeds, searches)
    print(text)
    if out:
        plot(data, out.with_suffix(".png"))
        command = " ".join(["python benchmarks/sseds_fig23.py",
                            *(a for a in sys.argv[1:] if a != "--summary-only")])
        out.write_text(f"<!-- written by benchmarks/sseds_fig23.py -->\n\n# SSEDS Fig. 2-3 grid\n\n"
                       f"`{command}` (setting: the docstring of benchmarks/sseds_fig23.py). Cells: "
                       f"embedding parameters (tables plus any alignment parameters), test AUC "
                       f"over seeds, and the difference to FDE-128 (the pretrained base model) "
                       f"seed by seed.\n\n" + text
                       + f"\n![AUC against embedding parameters]({out.with_suffix('.png').name})\n")


if __name__ == "__main__":
    main()
