"""DeepLight: gradual magnitude pruning of the embedding table toward a target sparsity.

Deng et al., "DeepLight: Deep Lightweight Feature Interactions for Accelerating CTR Predictions in
Ad Serving" (WSDM 2021), sec. 4 (structural pruning); the reference code is the authors'
repository WayneDW/DeepLight_Deep-Lightweight-Feature-Interactions (``model/DeepFMs.py``, ``fit``).

1. The base model is trained with every field at ``width``; after ``warmup_epochs`` of plain
   training, every ``prune_every`` steps the entries of the embedding table with the smallest
   magnitudes are set to 0 so that a share ``S_t`` of the whole table (all fields together) is 0.
   Between two pruning steps pruned entries may grow back (the repository zeroes weights, it keeps
   no mask). ``S_t`` follows the repository's damped schedule ``S_t = S (1 - D^(t / 100))``
   (``schedule: exponential``, ``D = damping = 0.99``, ``t`` = steps since the warm-up), or the
   cubic schedule of Zhu & Gupta (2017), ``S_t = S (1 - (1 - t / T)^3)`` over the remaining
   ``T`` steps (``schedule: cubic``). ``S = 1 - budget``.
2. At the end of the search the table is pruned once more, to exactly ``S``: the mask keeps the
   ``floor(budget x entries)`` largest magnitudes (SSEDS' kappa, an exact count whatever the
   schedule reached).
3. DeepLight's result is the pruned model itself. The pipeline's retraining continues training
   it with the mask fixed (``retrain: finetune``, the default: the searched weights and network
   are handed over); ``random`` trains the masked model from a fresh initialisation and ``none``
   evaluates the pruned model as it is.

Only the embedding is pruned, as in SSEDS' comparison (its footnote 6); the repository's pruning
of the DNN weights and of the FwFM field matrix is not implemented. See docs/pruning.md.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass

import torch
from torch import Tensor

from embdim.errors import ConfigError
from embdim.nn.models import RecModel
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.budget import budget_entries
from embdim.search.pruning import (
    FullTableEmbedding,
    build_search_model,
    hand_over_,
    load_state_payload,
    make_trainer,
    masked_plan,
    no_embedding_plan,
    search_train_config,
    state_payload,
    target_problems,
    training_problems,
)

SCHEDULES = ("exponential", "cubic")
RETRAINS = ("finetune", "random", "none")


@dataclass
class DeepLightOptions:
    """The ``method:`` section of a DeepLight experiment (every key optional; defaults: the
    repository's structural-pruning command in its README, except where noted)."""

    budget: float = 0.1  # kept (non-zero) entries = floor(budget x the full table); S = 1 - budget
    width: int = 10  # the embedding width (repository: embedding_size 10)
    warmup_epochs: float = 2.0  # epochs of plain training before pruning (README: -warm 2)
    prune_every: int = 10  # steps between two pruning steps (repository: every 10 batches)
    schedule: str = "exponential"  # "exponential" (repository) or "cubic" (Zhu & Gupta)
    damping: float = 0.99  # D of the exponential schedule (repository: 0.99)
    damping_steps: int = 100  # S_t = S (1 - D^(t / damping_steps)) (repository: 100)
    weight_decay: float = 6e-7  # Adam weight decay during the search (README: -l2 6e-7)
    epochs: int | None = None  # search epochs; None: train.epochs
    retrain: str = "finetune"  # "finetune" (mask fixed), "random" (fresh masked model) or "none"

    def validate(self) -> None:
        problems = target_problems(self)
        if self.warmup_epochs < 0:
            problems.append(f"method.warmup_epochs must be >= 0, got {self.warmup_epochs!r}")
        if self.prune_every < 1 or self.damping_steps < 1:
            problems.append("method.prune_every and method.damping_steps must be positive integers")
        if not 0 < self.damping < 1:
            problems.append(f"method.damping must be in (0, 1), got {self.damping!r}")
        if self.schedule not in SCHEDULES:
            problems.append(f"method.schedule must be one of {', '.join(SCHEDULES)}, got "
                            f"{self.schedule!r}")
        problems += training_problems(self, RETRAINS)
        if problems:
            raise ConfigError("deeplight: " + "; ".join(problems))

    def sparsity_at(self, t: int, pruning_steps: int) -> float:
        """``S_t`` after ``t`` steps since the warm-up (0 before), ``pruning_steps`` = T."""
        target = 1.0 - float(self.budget)
        if t <= 0:
            return 0.0
        if self.schedule == "cubic":
            return target * (1.0 - (1.0 - min(1.0, t / max(1, pruning_steps))) ** 3)
        return target * (1.0 - self.damping ** (t / self.damping_steps))


class MagnitudePrunedEmbedding(FullTableEmbedding):
    """A plain full-width table whose smallest-magnitude entries are zeroed by :meth:`prune_to`;
    the buffer ``step`` counts optimiser steps (it travels in the checkpoints)."""

    def __init__(self, vocab_sizes: list[int], width: int):
        super().__init__(vocab_sizes, width)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, ids: Tensor) -> Tensor:
        rows = self.rows(ids)
        return self.weight.index_select(0, rows.reshape(-1)).view(*rows.shape, self.out_dim)

    @torch.no_grad()
    def prune_to(self, sparsity: float) -> int:
        """Zero the ``floor(sparsity x entries)`` smallest-magnitude entries; returns that count."""
        n = math.floor(sparsity * self.weight.numel())
        if n > 0:
            idx = torch.topk(self.weight.abs().view(-1), n, largest=False, sorted=False).indices
            self.weight.view(-1)[idx] = 0.0
        return n

    @torch.no_grad()
    def top_mask(self, keep: int) -> Tensor:
        """``[N, D]`` bool: the ``keep`` largest-magnitude entries."""
        mask = torch.zeros(self.weight.numel(), dtype=torch.bool, device=self.weight.device)
        if keep > 0:
            mask[torch.topk(self.weight.abs().view(-1), keep, sorted=False).indices] = True
        return mask.view_as(self.weight)


@register
class DeepLight(SearchMethod):
    """Gradual magnitude pruning of the embedding to ``budget``; the pruned model fine-tuned."""

    name = "deeplight"
    Options = DeepLightOptions

    def __init__(self, options: DeepLightOptions | None = None, **option_values):
        super().__init__(options, **option_values)
        self.prune_log: list[tuple[int, float, int]] = []  # (t, S_t, entries zeroed)

    @property
    def retrains(self) -> bool:
        return self.options.retrain != "none"

    def build_search_model(self, vocab_sizes: list[int], ctx: SearchContext) -> RecModel:
        return build_search_model(ctx, vocab_sizes,
                                  MagnitudePrunedEmbedding(vocab_sizes, self.options.width))

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        o, schema = self.options, dataset.schema
        options = dataclasses.asdict(o)
        model = self.build_search_model(schema.vocab_sizes, ctx)
        if model.embedding is None:
            ctx.log(f"deeplight: model {model.name} has no embedding table: nothing to prune")
            return no_embedding_plan(self.name, schema, o.width, options)
        emb: MagnitudePrunedEmbedding = model.embedding
        cfg = search_train_config(ctx, o.epochs or ctx.train.epochs, weight_decay=o.weight_decay)
        trainer = make_trainer(model, dataset, cfg, ctx, "deeplight", lambda: after_step(),
                               {"model": model.name, "width": o.width, "seed": cfg.seed})
        steps_per_epoch = len(trainer.train_loader)
        if cfg.max_steps_per_epoch:
            steps_per_epoch = min(steps_per_epoch, cfg.max_steps_per_epoch)
        warm = int(round(o.warmup_epochs * steps_per_epoch))
        pruning_steps = cfg.epochs * steps_per_epoch - warm
        if pruning_steps <= 0:
            raise ConfigError(f"deeplight: the warm-up ({o.warmup_epochs} epochs, {warm} steps) "
                              f"leaves no pruning step in {cfg.epochs} epoch(s) of "
                              f"{steps_per_epoch} steps: lower method.warmup_epochs or raise "
                              f"method.epochs")
        self.prune_log = []

        def after_step() -> None:
            emb.step += 1
            t = int(emb.step) - warm
            if t > 0 and t % o.prune_every == 0:
                s_t = o.sparsity_at(t, pruning_steps)
                self.prune_log.append((t, s_t, emb.prune_to(s_t)))

        ctx.log(f"deeplight: training {model.name} at width {o.width}, pruning every "
                f"{o.prune_every} steps after {warm} warm-up steps toward sparsity "
                f"{1 - o.budget:.3f} ({o.schedule} schedule)")
        t0 = time.perf_counter()
        trainer.fit_to_end(resume=True)
        total = emb.weight.numel()
        keep = budget_entries(o.budget, total)
        reached = o.sparsity_at(int(emb.step) - warm, pruning_steps)
        mask = emb.top_mask(keep)
        with torch.no_grad():
            emb.weight.mul_(mask)  # the final pruning step, to exactly S
        ctx.log(f"deeplight: schedule reached sparsity {reached:.3f}; final pruning keeps {keep} "
                f"of {total} entries")
        payload = state_payload("searched_state", model) if o.retrain != "random" else {}
        return masked_plan(self.name, schema, mask.cpu().numpy(), o.width, options,
                           payload=payload, extra={
            "budget": {"kappa": float(o.budget), "budget_params": keep, "kept_params": keep,
                       "total_params": total},
            "search_steps": int(emb.step), "warmup_steps": warm,
            "schedule_sparsity_at_end": reached, "prune_seconds": time.perf_counter() - t0})

    def init_retrain_model(self, model: RecModel, plan: DimensionPlan, ctx: SearchContext) -> None:
        """``finetune`` / ``none``: the pruned searched model (table times the mask, first-order
        weights, body); ``random``: the fresh initialisation times the mask."""
        if model.embedding is None or self.options.retrain == "random":
            return
        source = self.build_search_model(plan.vocab_sizes, ctx)
        if not load_state_payload(source, plan.payload, "searched_state"):
            raise ConfigError(f"deeplight: retrain={self.options.retrain} needs the plan's payload "
                              "'searched_state' arrays, and this plan has none")
        missing = hand_over_(model, source, source.embedding.weight.detach(), plan.vocab_sizes)
        ctx.log("deeplight: the masked model starts from the pruned searched model"
                + (f"; fresh: {', '.join(missing)}" if missing else ""))
