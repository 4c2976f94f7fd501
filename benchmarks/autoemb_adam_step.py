"""How far the DLRS's real step is from eq. 9's virtual step ``xi grad_W L_train`` (xi = train.lr)
under Adam (docs/autoemb.md, "The DLRS's optimiser"):

    python benchmarks/autoemb_adam_step.py [--stream prepared/mls-stream] [--optimizer adam]

Runs FSE (regression, seed 1, lr 0.01, the paper's sizes) over the first 60 batches of the stream
and prints, for batches 5, 20 and 59, the norm of each parameter's actual change and of
``lr * grad`` (the gradient of that batch), and their ratio (1 for ``--optimizer sgd``).
"""

from __future__ import annotations

import argparse

import torch

from embdim.autoemb.config import load_stream_config
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.stream import InteractionStream

SHOWN = ("users.table.weight", "items.table.weight", "users.transforms.0.bias",
         "items.transforms.0.bias", "mlp.0.weight")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--stream", default="prepared/mls-stream")
    ap.add_argument("--optimizer", default="adam", choices=["adam", "sgd", "sparse_adam"])
    ap.add_argument("--lr", type=float, default=0.01)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_stream_config(None, [f"data.path={args.stream}", "train.threads=1", f"train.lr={args.lr}",
                                    f"train.optimizer={args.optimizer}", "train.seed=1", "method.name=fse"])
    learner = StreamLearner(InteractionStream.open(cfg.data.path), cfg, quiet=True)
    bs = cfg.train.batch_size
    print("| batch | parameter | actual step | lr * grad | ratio |\n|---|---|---|---|---|")
    for i in range(60):
        before = [p.detach().clone() for p in learner.model.parameters()]
        learner.step(i * bs, (i + 1) * bs, 0)
        if i not in (5, 20, 59):
            continue
        for (name, p), b in zip(learner.model.named_parameters(), before, strict=True):
            if name in SHOWN and p.grad is not None:  # the gradient of this batch (cleared next step)
                step = float((p.detach() - b).norm())
                virtual = float((args.lr * p.grad.to_dense()).norm())
                print(f"| {i} | {name} | {step:.2e} | {virtual:.2e} | {step / max(virtual, 1e-30):.0f} |")


if __name__ == "__main__":
    main()
