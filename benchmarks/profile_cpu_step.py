"""Where a CPU training step spends its time, against its floor: wall-clock phases, no profiler.

    python benchmarks/profile_cpu_step.py PREPARED_DIR            # DeepFM dim 16, MLP [128, 128]
    python benchmarks/profile_cpu_step.py PREPARED_DIR --steps 200 --threads 2

Runs the library's trainer (``embdim.train.Trainer``, fp32, dropout 0, batch 4096) on a prepared
dataset and times each phase of its steps with ``time.perf_counter`` through module hooks (the
torch profiler slows some kernels of this step several-fold, so its table is not used): reading the
batch, the embedding lookups (field table and first-order weights), the FM and MLP forwards, the
body's backward (from the gradient reaching the model's output to the gradient reaching the field
embeddings), the lookups' backward (from there to the last table gradient), the optimizer step, and the rest
(loss, zeroing the gradients, Python). The floor is what the step cannot avoid: the
MLP's matrix products (forward and backward, timed alone at the step's shapes; BatchNorm, ReLU and
everything else excluded) plus one pass over the step's unavoidable memory traffic (the gathered
rows, the MLP input and its gradient, the table gradient, Adam's pass over every parameter),
timed as a copy of that many bytes. Prints one table and the floor in samples/s.
"""

from __future__ import annotations

import argparse
import collections
import time

import torch
from torch import nn

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.nn.models import ModelOptions, build_model
from embdim.train.trainer import Trainer, seed_everything

T = time.perf_counter


def _timed(fn, repeats: int = 30) -> float:
    for _ in range(5):
        fn()
    t0 = T()
    for _ in range(repeats):
        fn()
    return (T() - t0) / repeats


def _floor_seconds(model, batch: int, params: int) -> tuple[float, float]:
    """(GEMM seconds, memory-pass seconds) per step for the MLP of ``model`` at ``batch``."""
    linears = [m for m in model.body.mlp if isinstance(m, nn.Linear)]
    x0 = torch.randn(batch, linears[0].in_features)
    weights = [layer.weight.detach().clone() for layer in linears]

    def gemms():
        acts, x = [x0], x0
        for w in weights:
            x = x @ w.t()
            acts.append(x)
        g = torch.randn_like(x)
        for w, a in zip(reversed(weights), reversed(acts[:-1]), strict=True):
            _ = g.t() @ a  # weight gradient
            g = g @ w  # input gradient

    dim = model.embedding.out_dim
    fields = model.embedding.num_fields
    # bytes: rows gathered (+ their gradient), the MLP input and its gradient, Adam's pass over
    # the parameters it updates (value, gradient, two moments read; value, two moments written):
    # every parameter for dense Adam, the rows read (at most) and the dense ones for row-wise rules
    traffic = 4 * (2 * batch * fields * dim + 2 * batch * fields * dim + 7 * params)
    src = torch.empty(traffic // 8, dtype=torch.float32)
    dst = torch.empty_like(src)
    copy = _timed(lambda: dst.copy_(src))  # reads and writes traffic / 2 bytes each
    return _timed(gemms), copy


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("prepared")
    ap.add_argument("--steps", type=int, default=150)
    ap.add_argument("--warmup", type=int, default=20)
    ap.add_argument("--batch", type=int, default=4096)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--optimizer", default="auto",
                    help="train.optimizer (default auto, the library's; adam, sparse_adam, ...)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)

    ds = PreparedDataset(args.prepared)
    seed_everything(0)
    model = build_model("deepfm", ds.schema, dim=16,
                        options=ModelOptions(name="deepfm", mlp=[128, 128], dropout=0.0))
    cfg = TrainConfig(batch_size=args.batch, epochs=1, max_steps_per_epoch=args.warmup, seed=0,
                      device="cpu", optimizer=args.optimizer)
    trainer = Trainer(model, ds, cfg, quiet=True)
    trainer.train_epoch(0)  # warm-up: allocator, first-touch pages, kernels

    acc: collections.Counter = collections.Counter()
    marks: dict[str, float] = {}
    lookups = [model.embedding, model.linear]

    def before(_m, _inp):
        marks["fwd0"] = T()

    def _mark_backward_start(_grad):
        marks.setdefault("bwd0", T())

    def after(module, _inp, out):
        acc["lookup forward"] += T() - marks["fwd0"]
        if module is model.embedding and out.requires_grad:  # the body's gradient is done
            out.register_hook(_mark_backward_start)
        return out

    for m in lookups:
        m.register_forward_pre_hook(before)
        m.register_forward_hook(after)

    def timed_forward(module, name):
        def pre(_m, _inp):
            marks[name] = T()

        def post(_m, _inp, _out):
            acc[name] += T() - marks[name]
        module.register_forward_pre_hook(pre)
        module.register_forward_hook(post)

    timed_forward(model.body.fm, "FM forward")
    timed_forward(model.body.mlp, "MLP forward")

    def output_hook(_m, _inp, out):  # the backward starts where the model's output gets its gradient
        if out.requires_grad:
            out.register_hook(lambda g: marks.__setitem__("bwd_start", T()))

    model.register_forward_hook(output_hook)
    tables = [p for m in lookups for p in m.parameters()]

    def table_done(_p):
        marks["bwd1"] = T()

    for p in tables:
        p.register_post_accumulate_grad_hook(table_done)

    step_fn, optimizer = trainer._eager_step, trainer.optimizer
    opt_step = optimizer.step

    def timed_opt_step(*a, **k):
        t0 = T()
        r = opt_step(*a, **k)
        acc["optimizer"] += T() - t0
        return r

    optimizer.step = timed_opt_step

    def timed_step(ids, labels):
        marks.clear()
        t0 = T()
        step_fn(ids, labels)
        acc["step"] += T() - t0
        acc["lookup backward"] += marks["bwd1"] - marks["bwd0"]
        acc["body backward"] += marks["bwd0"] - marks["bwd_start"]
        acc["steps"] += 1

    trainer._eager_step = timed_step
    loader = trainer.train_loader
    epoch_batches = loader.epoch

    def timed_epoch(epoch):
        it = iter(epoch_batches(epoch))
        while True:
            t0 = T()
            try:
                batch = next(it)
            except StopIteration:
                return
            acc["read batch"] += T() - t0
            yield batch

    loader.epoch = timed_epoch
    trainer.cfg.max_steps_per_epoch = args.steps
    t0 = T()
    trainer.train_epoch(1)
    wall = T() - t0
    n = acc["steps"]
    per = {k: v / n * 1e3 for k, v in acc.items() if k != "steps"}
    step = per["step"]
    other = (step - per["lookup forward"] - per["FM forward"] - per["MLP forward"]
             - per["body backward"] - per["lookup backward"] - per["optimizer"])
    params = sum(p.numel() for p in model.parameters())
    optimized = params  # the parameters the optimiser reads and writes in a step
    if trainer.optimizer_name != "adam":  # row-wise tables: only the rows a batch reads move
        table_entries = sum(p.numel() for p in tables)
        optimized = params - table_entries + args.batch * model.embedding.num_fields * (
            model.embedding.out_dim + 1)  # the field rows and the first-order weights read
    gemm, memory = _floor_seconds(model, args.batch, optimized)
    floor_ms = (gemm + memory) * 1e3
    print(f"DeepFM dim 16, MLP [128, 128], batch {args.batch}, {args.threads} threads, "
          f"{sum(ds.schema.vocab_sizes):,} ids, "
          f"{params:,} parameters, CPU {torch.backends.cpu.get_cpu_capability()}, {n} steps")
    print(f"optimizer {args.optimizer} ({trainer.optimizer_name})")
    print(f"{'phase':<34}{'ms/step':>10}{'share':>8}")
    rows = [("read batch", per["read batch"]), ("lookups forward", per["lookup forward"]),
            ("FM forward", per["FM forward"]), ("MLP forward", per["MLP forward"]),
            ("body backward (FM + MLP)", per["body backward"]),
            ("lookups backward", per["lookup backward"]), ("optimizer step", per["optimizer"]),
            ("loss, zero_grad, the rest", other)]
    total = per["read batch"] + step
    for name, ms in rows:
        print(f"{name:<34}{ms:>10.2f}{ms / total:>8.0%}")
    print(f"{'total':<34}{total:>10.2f}   = {args.batch / total * 1e3:,.0f} samples/s "
          f"(epoch wall {wall:.1f} s)")
    print(f"floor: MLP matrix products {gemm * 1e3:.2f} ms + one memory pass {memory * 1e3:.2f} ms "
          f"= {floor_ms:.2f} ms = {args.batch / floor_ms * 1e3:,.0f} samples/s; "
          f"the step is {total / floor_ms:.2f}x its floor")


if __name__ == "__main__":
    main()
