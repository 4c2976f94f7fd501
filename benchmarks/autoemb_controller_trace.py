"""Trace one streaming run: every 10th batch, the batch's training loss, the mean weight the
controllers give its users and items per width, the users' controller's mean softmax logit range
(max - min: 9-10 means a weight above 0.999 on one width) and the users' running variance of
each candidate's pre-normalisation activations (docs/autoemb.md, "The DLRS's optimiser").

    python benchmarks/autoemb_controller_trace.py OUT.json [--set KEY=VALUE ...]
    python benchmarks/autoemb_controller_trace.py trace.json --set train.lr=0.01 \\
        --set train.optimizer=adam --set train.seed=2

Starts from examples/autoemb.yaml with data.path=prepared/mls-stream; prints the online and
offline loss and writes them with the trace to OUT.json.
"""

from __future__ import annotations

import argparse
import json

import torch

from embdim.autoemb.config import load_stream_config
from embdim.autoemb.controller import ControllerWeights, controller_features
from embdim.autoemb.loop import StreamLearner
from embdim.autoemb.stream import InteractionStream


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("--set", dest="overrides", action="append", default=[])
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = load_stream_config("examples/autoemb.yaml", ["data.path=prepared/mls-stream",
                                                       "train.threads=1", *args.overrides])
    learner = StreamLearner(InteractionStream.open(cfg.data.path), cfg, quiet=True)
    trace = []
    step = learner.step

    def traced_step(start: int, stop: int, stage: int):
        loss = step(start, stop, stage)
        if (start // cfg.train.batch_size) % 10:
            return loss
        row = {"start": start, "stage": stage, "loss": float(loss)}
        w = learner.weights
        if isinstance(w, ControllerWeights):
            b = learner.batch(start, stop)  # popularity as of now (the batch has been trained on)
            with torch.no_grad():
                alpha, beta = w(b.users, b.items, b.user_pop, b.item_pop)
                logits = w.user_controller.net(controller_features(b.user_pop, b.users,
                                                                   w.user_context, w.inputs))
            row["user_weights"] = alpha.mean(0).tolist()
            row["item_weights"] = beta.mean(0).tolist()
            row["user_logit_range"] = float((logits.max(1).values - logits.min(1).values).mean())
        users = learner.model.users
        if hasattr(users, "norm"):
            var = users.norm.bn.running_var.view(len(users.widths), -1).mean(1)
            row["user_running_var"] = var.tolist()
        trace.append(row)
        return loss

    learner.step = traced_step
    summary = learner.run()
    key = "mse" if cfg.model.task == "regression" else "cross_entropy"
    result = {"overrides": args.overrides, "online": summary["online"][key],
              "offline": summary["offline"][key], "trace": trace}
    with open(args.out, "w") as f:
        json.dump(result, f, indent=1)
    print(f"online {key} {result['online']:.4f}, offline {result['offline']:.4f}")
    for r in trace[::2]:
        print(r["start"], f"loss {r['loss']:.3f}",
              " ".join(f"{k} {[round(x, 3) for x in v] if isinstance(v, list) else round(v, 2)}"
                       for k, v in r.items() if k not in ("start", "stage", "loss")))


if __name__ == "__main__":
    main()
