"""How wide AutoDim's argmax plan (eq. 13) is under search options: the search alone, no retraining.

    python benchmarks/autodim_argmax_size.py --data WORK/data/ml-latest-small --model deepfm \
        --set scale_init=null --set scale_init=1.0 --seeds 1,2,3

For each option setting (``--set KEY=VALUE`` for one method option, the value read as YAML; a
``--set`` with several comma-free assignments joined by ``;`` sets them together; none = the
settings below as they are), each seed: search with the settings of benchmarks/autodim_budget.py
(4 search epochs, ``alpha_lr 0.03``, one alpha update per 2 W-steps, candidates {2, 8, 16, 24, 32},
MLP [128, 128], dropout 0.2, BatchNorm, Adam 1e-3, batch 1024) and print the argmax plan's
embedding entries as a share of FDE-32's, its widths and every field's final alpha; then the mean
share per setting. Used by docs/autodim.md ("Why the argmax plan stays wide on small data").
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "benchmarks"))
from autodim_budget import MODEL, SEARCH, TRAIN  # noqa: E402 - the same settings as the budget page


def parse_setting(text: str) -> dict:
    out = {}
    for part in filter(None, text.split(";")):
        key, _, value = part.partition("=")
        out[key.strip()] = yaml.safe_load(value)
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, required=True, help="a prepared dataset folder")
    ap.add_argument("--model", default="deepfm")
    ap.add_argument("--seeds", default="1,2,3")
    ap.add_argument("--set", dest="settings", action="append", default=None,
                    help="KEY=VALUE[;KEY=VALUE]: one option setting (repeatable)")
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()

    import torch

    from embdim.config import config_from_dict
    from embdim.data.dataset import PreparedDataset
    from embdim.search import SearchContext, make_method
    from embdim.train.trainer import seed_everything

    torch.set_num_threads(args.threads)
    dataset = PreparedDataset(args.data)
    for setting in [parse_setting(s) for s in (args.settings or [""])]:
        shares = []
        for seed in (int(s) for s in args.seeds.split(",")):
            cfg = config_from_dict({
                "data": {"path": str(args.data)}, "model": {"name": args.model, **MODEL},
                "method": {**SEARCH, **setting},
                "train": {**TRAIN, "seed": seed, "threads": args.threads}})
            seed_everything(seed)
            ctx = SearchContext(model_options=cfg.model, train=cfg.train, quiet=True, log=lambda m: None)
            plan = make_method(cfg.method).search(dataset, ctx)
            share = plan.embedding_params / (sum(plan.vocab_sizes) * plan.full_dim)
            shares.append(share)
            alpha = "; ".join(f"{n} {' '.join(f'{a:.2f}' for a in plan.extra['alpha'][n])}"
                              for n in plan.field_names)
            print(f"{args.model} {setting or 'defaults'} seed {seed}: {share:.1%} of FDE-{plan.full_dim}, "
                  f"dims {dict(zip(plan.field_names, plan.dims, strict=True))}; alpha {alpha}", flush=True)
        mean = sum(shares) / len(shares)
        print(f"== {args.data.name} {args.model} {setting or 'defaults'}: mean {mean:.1%} "
              f"of FDE at the largest candidate ({len(shares)} seeds)", flush=True)


if __name__ == "__main__":
    main()
