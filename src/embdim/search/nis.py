"""NIS (Joglekar et al., "Neural Input Search for Large Scale Recommendation Models", KDD 2020),
re-implemented from the paper (no reference code exists): the Multi-size Embedding search.

* Search space (sec. 3.1-3.2): per field, the ids in descending training-frequency order are cut into
  ``buckets`` vocabulary buckets; the dimension into ``dim_blocks`` Embedding Blocks of ``block_dim``
  columns. A Multi-size Embedding gives every bucket ``s`` a number of blocks ``a_s in 0 .. T``
  (``monotone``: never more for a less frequent bucket); ``a_s = 0`` leaves the bucket's values out of
  the vocabulary, and a field with every ``a_s = 0`` is dropped.
* One-shot supernet (sec. 4): the base model runs on :class:`~embdim.nn.multisize.MultiSizeSupernet`
  (every block, shared by all architectures). Each main-model step samples an architecture from the
  controller and trains the model on a training batch with it.
* Controller (sec. 4): one softmax policy per decision (field, bucket), logits ``theta [F, S, T+1]``,
  sampled bucket after bucket within a field. Every ``update_every`` main-model steps it samples
  ``samples`` architectures, scores each on one validation batch and takes a REINFORCE step with a
  moving-average baseline: ``grad = -(R - b) grad log pi(a)``, ``b <- beta b + (1 - beta) mean R``.
  During ``warmup_steps`` the controller is not updated (architectures uniformly random), so that
  every block is trained before the controller judges it.
* Reward (sec. 4): ``R(a) = Q(a) - C(a)``, ``Q`` the validation-batch AUC (``quality``) of the
  supernet with ``a``, ``C`` a memory cost of ``M(a) = sum_s n_s a_s block_dim`` embedding entries
  against the budget ``B = budget x sum vocab x T x block_dim`` (``cost``: ``hinge`` =
  ``cost_weight x max(0, M/B - 1)``, ``linear`` = ``cost_weight x M / M_full``).
* Derive: per decision the most probable choice (monotone, bucket after bucket) -> ``plan.json`` with
  the blocks in ``value_dim_rule`` (MDE's format: ``dim = a_s x block_dim``); the pipeline retrains
  that :class:`~embdim.nn.block_embedding.BlockFieldEmbedding` from scratch on any base model.

The search checkpoints after every search epoch (``search/nis/search.pt`` of the run folder) and
resumes from it exactly: same batches, dropout masks, architecture samples and controller state.
docs/nis.md names every choice the paper leaves open.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from embdim.data.loader import BatchLoader
from embdim.data.schema import RESERVED_IDS
from embdim.errors import ConfigError, EmbdimError, SchemaMismatchError, TrainingDivergedError
from embdim.io import atomic_torch_save
from embdim.nn.block_embedding import BLOCK_SPLITS, block_size, blocks_to_ranges, frequency_blocks
from embdim.nn.models import ModelOptions, RecModel, build_model
from embdim.nn.multisize import MultiSizeSupernet
from embdim.plan import DimensionPlan
from embdim.search.base import (
    SearchContext,
    SearchMethod,
    register,
    require_embedding_layer,
    search_schedule,
)
from embdim.search.bilevel import w_step
from embdim.search.random import align_to_largest
from embdim.train.metrics import binary_metrics, roc_auc
from embdim.train.optim import make_adam
from embdim.train.trainer import resolve_device

COSTS = ("hinge", "linear")
QUALITIES = ("auc", "neg_logloss")
CHECKPOINT_FORMAT = 1


@dataclass
class NISOptions:
    """The YAML ``method:`` section of ``nis`` (docs/nis.md gives the paper section of each)."""

    buckets: int = 5  # S vocabulary buckets per field (sec. 3.1; Fig. 2: 5 buckets)
    bucket_split: str = "count"  # "count": equal numbers of ids (sec. 3.1); "mass": equal frequency
    block_dim: int = 8  # columns of one Embedding Block (Fig. 2: 64 of 256)
    dim_blocks: int = 4  # T blocks per bucket (Fig. 2: 4); full width T x block_dim = 32
    monotone: bool = True  # a less frequent bucket never gets more blocks than a more frequent one
    budget: float = 0.4  # memory budget: share of the full table (every bucket at T blocks)
    cost: str = "hinge"  # "hinge": w max(0, M/B - 1); "linear": w M / M_full
    cost_weight: float = 1.0  # w, the weight of the memory cost in the reward
    quality: str = "auc"  # the reward's quality term on a validation batch: "auc" | "neg_logloss"
    samples: int = 4  # architectures sampled and scored per controller update
    update_every: int = 1  # one controller update per this many main-model steps
    controller_lr: float = 0.05  # Adam on the controller logits
    baseline_decay: float = 0.95  # beta of the moving-average reward baseline
    entropy_weight: float = 0.0  # bonus on the policy entropy (0: plain REINFORCE)
    warmup_steps: int | None = None  # main-model steps before the first controller update; None: 20%
    epochs: int | None = None  # search epochs; None = train.epochs
    max_steps: int | None = None  # cap on main-model steps per search epoch; None = train's cap

    def validate(self) -> None:
        problems = []
        for key in ("buckets", "block_dim", "dim_blocks", "samples", "update_every"):
            v = getattr(self, key)
            if isinstance(v, bool) or not (isinstance(v, int) and v >= 1):
                problems.append(f"method.{key} must be a positive integer, got {v!r}")
        for key in ("epochs", "max_steps"):
            v = getattr(self, key)
            if v is not None and (isinstance(v, bool) or not (isinstance(v, int) and v >= 1)):
                problems.append(f"method.{key} must be a positive integer or null, got {v!r}")
        if self.warmup_steps is not None and not (isinstance(self.warmup_steps, int)
                                                  and self.warmup_steps >= 0):
            problems.append(f"method.warmup_steps must be an integer >= 0 or null, got "
                            f"{self.warmup_steps!r}")
        for key, valid in (("bucket_split", BLOCK_SPLITS), ("cost", COSTS), ("quality", QUALITIES)):
            if getattr(self, key) not in valid:
                problems.append(f"method.{key} must be one of {', '.join(valid)}, got "
                                f"{getattr(self, key)!r}")
        if not 0 < float(self.budget) <= 1:
            problems.append(f"method.budget must be in (0, 1], got {self.budget!r}")
        if self.cost_weight < 0 or self.entropy_weight < 0:
            problems.append("method.cost_weight and method.entropy_weight must be >= 0")
        if self.controller_lr <= 0 or not 0 <= self.baseline_decay < 1:
            problems.append("method: need controller_lr > 0 and baseline_decay in [0, 1)")
        if problems:
            raise ConfigError("nis: " + "; ".join(problems))

    @property
    def full_dim(self) -> int:
        return self.block_dim * self.dim_blocks


# ---- the search space -------------------------------------------------------------------------
def vocabulary_buckets(frequencies: list[np.ndarray], options: NISOptions) -> list[list[dict[str, Any]]]:
    """Per field, its vocabulary buckets ``{"start", "stop"[, "reserved_ids"]}``, most frequent
    first (ids are in descending-count order, so a bucket is a contiguous id range; the reserved ids
    join the bucket their counts place them in)."""
    return [blocks_to_ranges(frequency_blocks(c, options.buckets, RESERVED_IDS,
                                              split=options.bucket_split), RESERVED_IDS)
            for c in frequencies]


class Controller(torch.nn.Module):
    """Independent softmax policies, one per (field, bucket) decision: ``logits [F, S, T + 1]``.

    Decisions of a field are drawn bucket after bucket; with ``monotone`` bucket ``s`` may not take
    more blocks than bucket ``s - 1`` (the choices above are masked out of its softmax). Slots past
    a field's last bucket are not decisions (their choice is 0 and adds nothing to ``log pi``).
    """

    def __init__(self, bucket_counts: list[int], num_blocks: int, monotone: bool):
        super().__init__()
        self.num_blocks, self.monotone = int(num_blocks), bool(monotone)
        slots = max(bucket_counts)
        self.logits = torch.nn.Parameter(torch.zeros(len(bucket_counts), slots, num_blocks + 1))
        valid = torch.tensor([[s < n for s in range(slots)] for n in bucket_counts])
        self.register_buffer("valid", valid, persistent=False)

    def _masked(self, s: int, previous: torch.Tensor) -> torch.Tensor:
        """Logits of slot ``s`` ``[K, F, T+1]`` with the forbidden choices at -inf."""
        logits = self.logits[:, s].unsqueeze(0).expand(previous.shape[0], -1, -1)
        choices = torch.arange(self.num_blocks + 1, device=logits.device)
        allowed = choices <= previous.unsqueeze(-1) if self.monotone else torch.ones_like(logits,
                                                                                            dtype=torch.bool)
        return logits.masked_fill(~allowed, float("-inf"))

    def sample(self, k: int, generator: torch.Generator | None = None, *, greedy: bool = False,
               uniform: bool = False) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``k`` architectures ``[K, F, S]`` (block counts), their ``log pi`` ``[K]`` and the summed
        entropy of their decisions ``[K]``. ``greedy``: the most probable choice per decision;
        ``uniform``: every allowed choice equally likely (the warm-up)."""
        nf, slots, _ = self.logits.shape
        previous = torch.full((k, nf), self.num_blocks, dtype=torch.long, device=self.logits.device)
        arch, logp, entropy = [], torch.zeros(k, device=self.logits.device), torch.zeros(
            k, device=self.logits.device)
        for s in range(slots):
            logits = self._masked(s, previous)
            if uniform:
                logits = torch.where(torch.isinf(logits), logits, torch.zeros_like(logits))
            log_probs = torch.log_softmax(logits, dim=-1)  # [K, F, T+1]
            if greedy:
                choice = log_probs.argmax(-1)
            else:
                choice = torch.multinomial(log_probs.detach().exp().view(-1, self.num_blocks + 1), 1,
                                           generator=generator).view(k, nf)
            valid = self.valid[:, s].unsqueeze(0)
            choice = torch.where(valid, choice, torch.zeros_like(choice))
            picked = log_probs.gather(-1, choice.unsqueeze(-1)).squeeze(-1)
            logp = logp + torch.where(valid, picked, torch.zeros_like(picked)).sum(-1)
            p = log_probs.exp()
            h = -(p * torch.where(p > 0, log_probs, torch.zeros_like(log_probs))).sum(-1)
            entropy = entropy + torch.where(valid, h, torch.zeros_like(h)).sum(-1)
            previous = torch.where(valid, choice, previous)
            arch.append(choice)
        return torch.stack(arch, dim=-1), logp, entropy

    def probabilities(self) -> torch.Tensor:
        """``softmax(logits) [F, S, T + 1]`` without the monotone masking (for the record)."""
        return torch.softmax(self.logits.detach(), dim=-1)


def memory_entries(arch: torch.Tensor, bucket_sizes: torch.Tensor, block_dim: int) -> torch.Tensor:
    """``M(a) = sum_{f,s} n_{f,s} a_{f,s} block_dim``: embedding entries of architectures
    ``arch [..., F, S]`` with bucket sizes ``[F, S]`` (0 past a field's last bucket) -> ``[...]``."""
    return (arch * bucket_sizes).sum((-1, -2)) * block_dim


def memory_cost(entries: torch.Tensor, options: NISOptions, full_entries: int) -> torch.Tensor:
    """``C(a)``: ``hinge`` = ``w max(0, M / B - 1)`` with ``B = budget x M_full``; ``linear`` =
    ``w M / M_full`` (``w = cost_weight``)."""
    m = entries.double()
    if options.cost == "hinge":
        return options.cost_weight * torch.clamp(m / (float(options.budget) * full_entries) - 1, min=0)
    return options.cost_weight * m / full_entries


def _batch_quality(logits: torch.Tensor, labels: torch.Tensor, quality: str) -> float:
    """The reward's quality term on one validation batch (NaN: AUC with one class only)."""
    if quality == "auc":
        return float(roc_auc(labels.cpu().numpy(), logits.float().cpu().numpy()))
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits.float(), labels.float())
    return -float(loss)


# ---- the search loop --------------------------------------------------------------------------
@dataclass
class NISResult:
    architecture: list[list[int]]  # per field, per bucket: blocks of the derived architecture
    probabilities: list[list[list[float]]]
    history: list[dict[str, Any]]
    steps: int
    controller_updates: int
    baseline: float
    seconds: float


class NISSearch:
    """The one-shot NIS search over one prepared dataset: build it, then :meth:`run`."""

    def __init__(self, dataset, ctx: SearchContext, options: NISOptions):
        self.dataset, self.ctx, self.options = dataset, ctx, options
        schema, train = dataset.schema, ctx.train
        self.device = resolve_device(train.device)
        if train.threads:
            torch.set_num_threads(train.threads)
        model_options = ctx.model_options or ModelOptions()
        require_embedding_layer("nis", model_options)
        self.buckets = vocabulary_buckets(dataset.frequencies(), options)
        self.supernet = MultiSizeSupernet(schema.vocab_sizes, self.buckets, block_dim=options.block_dim,
                                          num_blocks=options.dim_blocks)
        self.model: RecModel = build_model(model_options.name, schema, options=model_options,
                                           embedding=self.supernet).to(self.device)
        self.controller = Controller([len(b) for b in self.buckets], options.dim_blocks,
                                     options.monotone).to(self.device)
        self.w_params = list(self.model.parameters())
        self.w_optimizer = make_adam(self.w_params, lr=train.lr, weight_decay=train.weight_decay)
        self.c_optimizer = torch.optim.Adam(self.controller.parameters(), lr=options.controller_lr)
        self.generator = torch.Generator(device=self.device).manual_seed(train.seed + 17)
        sizes = [[block_size(b) for b in f] + [0] * (self.supernet.max_buckets - len(f))
                 for f in self.buckets]
        self.bucket_sizes = torch.tensor(sizes, dtype=torch.long, device=self.device)
        self.full_entries = sum(schema.vocab_sizes) * options.full_dim
        self.train_loader = BatchLoader(dataset.split("train"), train.batch_size, shuffle=True,
                                        seed=train.seed, device=self.device,
                                        max_memory_bytes=train.in_memory_limit_bytes)
        valid = dataset.split("valid")  # whole batches for the reward (a short one: a noisy AUC)
        self.valid_loader = BatchLoader(valid, train.batch_size, shuffle=True, seed=train.seed + 1,
                                        drop_last=len(valid) >= train.batch_size, device=self.device,
                                        max_memory_bytes=train.in_memory_limit_bytes)
        self.eval_loader = BatchLoader(dataset.split("valid"), train.eval_batch_size, shuffle=False,
                                       device=self.device, max_memory_bytes=train.in_memory_limit_bytes)
        self.epochs, self.steps_per_epoch, self.warmup_steps = search_schedule(
            options.epochs, options.max_steps, options.warmup_steps, train, len(self.train_loader))
        self.checkpoint_path = Path(ctx.work_dir) / "nis" / "search.pt" if ctx.work_dir else None
        self.fingerprint = {"schema_hash": schema.content_hash, "options": dataclasses.asdict(options),
                            "model": dataclasses.asdict(model_options), "seed": train.seed,
                            "batch_size": train.batch_size, "lr": train.lr, "epochs": self.epochs,
                            "steps_per_epoch": self.steps_per_epoch}
        self.baseline: float | None = None

    def _log(self, msg: str) -> None:
        self.ctx.log(msg)
        if not self.ctx.quiet:
            tqdm.write(msg)

    # ---- the controller step (REINFORCE) ------------------------------------------------------
    @torch.no_grad()
    def rewards(self, arch: torch.Tensor, batch) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(R, Q, C)`` ``[K]`` of architectures ``arch [K, F, S]`` on one validation batch (the
        model in eval mode: no dropout, BatchNorm running statistics)."""
        ids, labels = batch
        self.model.eval()
        quality = []
        for a in arch:
            self.supernet.set_architecture(a)
            quality.append(_batch_quality(self.model(ids), labels, self.options.quality))
        self.model.train()
        q = torch.tensor(quality, dtype=torch.float64, device=self.device)
        c = memory_cost(memory_entries(arch, self.bucket_sizes, self.options.block_dim), self.options,
                        self.full_entries)
        return q - c, q, c

    def controller_step(self, batch) -> dict[str, float] | None:
        """Sample ``samples`` architectures, score them, one REINFORCE step with the baseline.
        None (no update) when the batch's quality is undefined (one class only)."""
        arch, logp, entropy = self.controller.sample(self.options.samples, self.generator)
        reward, quality, cost = self.rewards(arch, batch)
        if not torch.isfinite(reward).all():
            return None
        mean = float(reward.mean())
        baseline = mean if self.baseline is None else self.baseline
        advantage = (reward - baseline).to(logp.dtype)
        loss = -(advantage * logp).mean() - self.options.entropy_weight * entropy.mean()
        self.c_optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.c_optimizer.step()
        beta = self.options.baseline_decay
        self.baseline = beta * baseline + (1 - beta) * mean
        return {"reward": mean, "quality": float(quality.mean()), "cost": float(cost.mean())}

    # ---- checkpoints --------------------------------------------------------------------------
    def _save(self, epoch: int, state: dict[str, Any]) -> None:
        if self.checkpoint_path is None:
            return
        atomic_torch_save(self.checkpoint_path, {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint, "epoch": epoch,
            "model": self.model.state_dict(), "w_optimizer": self.w_optimizer.state_dict(),
            "controller": self.controller.state_dict(), "c_optimizer": self.c_optimizer.state_dict(),
            "baseline": self.baseline, "generator": self.generator.get_state(),
            "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            **state})

    def _load(self) -> dict[str, Any] | None:
        path = self.checkpoint_path
        if path is None or not path.exists():
            return None
        try:
            state = torch.load(path, map_location=self.device, weights_only=True)
        except Exception as e:  # a corrupt or foreign file
            raise EmbdimError(f"{path}: cannot read the NIS search checkpoint ({type(e).__name__}); "
                              "the run folder is damaged: choose another --out") from None
        if not isinstance(state, dict) or state.get("format") != CHECKPOINT_FORMAT:
            raise EmbdimError(f"{path}: not a NIS search checkpoint of format {CHECKPOINT_FORMAT}")
        if state.get("fingerprint") != self.fingerprint:
            theirs = state.get("fingerprint") or {}
            diff = sorted(k for k in set(theirs) | set(self.fingerprint)
                          if theirs.get(k) != self.fingerprint.get(k))
            raise SchemaMismatchError(f"{path} belongs to another NIS search (differs in {diff})")
        self.model.load_state_dict(state["model"])
        self.w_optimizer.load_state_dict(state["w_optimizer"])
        self.controller.load_state_dict(state["controller"])
        self.c_optimizer.load_state_dict(state["c_optimizer"])
        self.baseline = state["baseline"]
        self.generator.set_state(state["generator"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        return state

    # ---- run ----------------------------------------------------------------------------------
    def run(self) -> NISResult:
        opts, model = self.options, self.model
        history: list[dict[str, Any]] = []
        step, updates, start_epoch, seconds = 0, 0, 0, 0.0
        saved = self._load()
        if saved is not None:
            history, step, updates = list(saved["history"]), int(saved["step"]), int(saved["updates"])
            start_epoch, seconds = int(saved["epoch"]), float(saved["seconds"])
            self._log(f"nis search: resumed from {self.checkpoint_path} after epoch {start_epoch}")
        valid_iter = self.valid_loader.batches()
        for _ in range(int(saved["valid_batches"]) if saved is not None else 0):
            next(valid_iter)  # the validation stream continues where it stopped
        valid_batches = int(saved["valid_batches"]) if saved is not None else 0
        if start_epoch == 0:
            self._log(f"nis search: {self.epochs} epoch(s) x {self.steps_per_epoch} steps, warm-up "
                      f"{self.warmup_steps} steps, buckets {[len(b) for b in self.buckets]}, "
                      f"{opts.dim_blocks} blocks x {opts.block_dim}, budget {opts.budget} "
                      f"({opts.cost}, weight {opts.cost_weight})")
        model.train()
        for epoch in range(start_epoch, self.epochs):
            t0 = time.perf_counter()
            bar = tqdm(total=self.steps_per_epoch, desc=f"nis {epoch + 1}/{self.epochs}", unit="batch",
                       disable=self.ctx.quiet, leave=False, dynamic_ncols=True)
            loss_sum = torch.zeros((), device=self.device)
            rewards: list[dict[str, float]] = []
            for i, batch in enumerate(self.train_loader.epoch(epoch)):
                if i >= self.steps_per_epoch:
                    break
                searching = step >= self.warmup_steps
                if searching and (step - self.warmup_steps) % opts.update_every == 0:
                    out = self.controller_step(next(valid_iter))
                    valid_batches += 1
                    if out is not None:
                        rewards.append(out)
                        updates += 1
                with torch.no_grad():
                    arch, _, _ = self.controller.sample(1, self.generator, uniform=not searching)
                self.supernet.set_architecture(arch[0])
                loss_sum += w_step(model, self.w_params, self.w_optimizer, batch)
                step += 1
                bar.update(1)
            bar.close()
            mean_loss = float(loss_sum) / max(1, self.steps_per_epoch)
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(f"nis search diverged in epoch {epoch + 1} (loss "
                                            f"{mean_loss}); try a lower train.lr")
            greedy = self.derive()
            entry = {"epoch": epoch + 1, "train_loss": mean_loss, "steps": step,
                     "controller_updates": updates,
                     "valid_auc_greedy": self.validate(greedy),
                     "greedy_entries": int(memory_entries(greedy, self.bucket_sizes, opts.block_dim)),
                     "greedy_blocks": greedy.tolist(),
                     "seconds": time.perf_counter() - t0}
            if rewards:
                for key in ("reward", "quality", "cost"):
                    entry[f"mean_{key}"] = float(np.mean([r[key] for r in rewards]))
            history.append(entry)
            seconds += entry["seconds"]
            self._log(f"nis search epoch {epoch + 1}: train_loss={mean_loss:.5f} greedy valid_auc="
                      f"{entry['valid_auc_greedy']:.5f} greedy entries {entry['greedy_entries']:,} "
                      f"({entry['greedy_entries'] / self.full_entries:.1%} of full)"
                      + (f" reward={entry['mean_reward']:.4f}" if rewards else ""))
            self._save(epoch + 1, {"history": history, "step": step, "updates": updates,
                                   "valid_batches": valid_batches, "seconds": seconds})
        if updates == 0:
            raise ConfigError(
                f"nis: the controller was never updated: the search ran {step} step(s), all of "
                f"them warm-up ({self.warmup_steps}); give the search more steps (method.epochs, "
                f"train.max_steps_per_epoch) or fewer warm-up steps (method.warmup_steps)")
        arch = self.derive()
        probs = self.controller.probabilities().cpu()
        return NISResult(architecture=arch.tolist(),
                         probabilities=[[[round(float(p), 6) for p in probs[f, s]]
                                         for s in range(len(self.buckets[f]))]
                                        for f in range(len(self.buckets))],
                         history=history, steps=step, controller_updates=updates,
                         baseline=float(self.baseline or 0.0), seconds=seconds)

    @torch.no_grad()
    def derive(self) -> torch.Tensor:
        """The most probable architecture ``[F, S]`` (decision by decision, bucket after bucket)."""
        return self.controller.sample(1, greedy=True)[0][0]

    @torch.no_grad()
    def validate(self, arch: torch.Tensor) -> float:
        """AUC on the whole validation split of the supernet with architecture ``arch``."""
        self.supernet.set_architecture(arch)
        self.model.eval()
        probs, labels = [], []
        for ids, y in self.eval_loader.epoch(0):
            probs.append(torch.sigmoid(self.model(ids).float()).cpu())
            labels.append(y.cpu())
        self.model.train()
        return binary_metrics(torch.cat(labels).numpy(), torch.cat(probs).numpy())["auc"]


def architecture_plan(result: NISResult, buckets: list[list[dict[str, Any]]], schema,
                      options: NISOptions, method: str) -> DimensionPlan:
    """The derived Multi-size Embedding as a plan: per bucket a block of ``dim = a_s x block_dim``
    (0: no embedding for its values); a field's ``dim`` is its widest bucket (0: dropped)."""
    blocks = [[{**b, "dim": int(a) * options.block_dim} for b, a in zip(field, arch, strict=False)]
              for field, arch in zip(buckets, result.architecture, strict=True)]
    dims = [max(b["dim"] for b in field) for field in blocks]
    if not any(dims):
        raise ConfigError(f"nis: the derived architecture gives no field an embedding block (budget "
                          f"{options.budget}, cost weight {options.cost_weight}): raise "
                          "method.budget, lower method.cost_weight or search longer")
    entries = sum(block_size(b) * b["dim"] for field in blocks for b in field)
    full = sum(schema.vocab_sizes) * options.full_dim
    rule = {"rule": "multi-size embedding: per vocabulary bucket, a_s blocks of block_dim columns",
            "per": "block", "method": "nis", "block_dim": options.block_dim,
            "dim_blocks": options.dim_blocks, "num_blocks": options.buckets,
            "split": "equal id counts" if options.bucket_split == "count" else "equal frequency mass",
            "blocks": blocks}
    extra = {
        "architecture": {n: a[:len(f)] for n, a, f in zip(schema.field_names, result.architecture,
                                                           buckets, strict=True)},
        "controller_probabilities": dict(zip(schema.field_names, result.probabilities, strict=True)),
        "budget": {"budget": float(options.budget), "budget_entries": int(options.budget * full),
                   "entries": entries, "full_entries": full,
                   "within_budget": entries <= int(options.budget * full)},
        "search_history": result.history, "search_steps": result.steps,
        "controller_updates": result.controller_updates, "final_baseline": result.baseline,
        "search_loop_seconds": result.seconds,
    }
    return DimensionPlan(method=method, field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=dims, full_dim=options.full_dim, schema_hash=schema.content_hash,
                         options=dataclasses.asdict(options), value_dim_rule=rule, extra=extra)


@register
class NIS(SearchMethod):
    """Neural Input Search: a REINFORCE controller picks a Multi-size Embedding per field under a
    memory cost; the derived architecture is retrained from scratch."""

    name = "nis"
    Options = NISOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        searcher = NISSearch(dataset, ctx, self.options)
        result = searcher.run()
        plan = architecture_plan(result, searcher.buckets, dataset.schema, self.options, self.name)
        budget = plan.extra["budget"]
        share = budget["entries"] / budget["full_entries"]
        ctx.log(f"nis: derived {budget['entries']:,} embedding entries ({share:.1%} of the full "
                f"table, budget {self.options.budget:.0%}); dims {plan.dims_by_field()}")
        return plan

    def check_model(self, model_options: ModelOptions) -> None:
        require_embedding_layer(self.name, model_options)

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        """Every bucket projected to the full width ``dim_blocks x block_dim`` (sec. 3.1), unless the
        model config sets ``aligned_dim``."""
        return align_to_largest(model_options, plan)
