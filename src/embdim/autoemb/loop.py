"""The streaming loop of AutoEmb (Algorithm 1, sec. 2.5) and of its baselines FSE, SAM and DARTS
(sec. 3.4), "evaluate, train, evaluate, train ..." over a time-ordered interaction stream.

The stream is cut into an *offline* part (the first ``offline_fraction``, parameter estimation) and
an *online* part (the rest, where the reported metrics come from); the same loop runs over both,
in mini-batches of ``batch_size`` consecutive interactions (a batch never straddles the two parts).
For each batch, in this order:

1. the controllers give ``alpha, beta`` for the new batch (popularity and context as they are now,
   before the batch), the DLRS predicts, and the predictions are **scored** and recorded;
2. (AutoEmb, DARTS) the controllers (DARTS: the per-user/item weight tables) take one Adam step
   on ``grad_Theta L_val(W - xi grad_W L_train(W, Theta), Theta)``
   (:mod:`embdim.autoemb.bilevel`) on a **validation** mini-batch of earlier interactions,
   ``method.validation``:

   * ``scored`` (default): the batch just scored — its labels are known now and the DLRS has not
     trained on it — with the popularity and context its rows were scored with, evaluated by the
     DLRS that scored it (parameters and normalisation statistics of before any update on it);
   * ``replay``: a uniform sample, with replacement, of the interactions *before* the batch, fed
     with the popularity and context their user/item has now, taken *before* step 1. Every one of
     them has been trained on, so its loss rewards memorisation (the widest width, for every id),
     and a row of popularity 0 never occurs in it.

   The training batch of the virtual step is the *previous* batch, the last one the model has
   trained on;
3. the context (weights given, loss obtained) of the batch's users and items is stored;
4. the DLRS takes one Adam step on the batch's training loss (SAM: the controllers too, on the
   same loss; AutoEmb/DARTS: the weights are constants in this step). FSE has no weights.

Steps 1 and 4 share one forward pass (its gradient is taken before step 2, its update applied
after): the parameters that score a batch are those from before any update on it.

**Popularity** has one definition everywhere: the number of the user's (item's) interactions the
model has been *trained on* so far, i.e. in the batches before the current one
(:meth:`StreamLearner.popularity_now`). A scored row, a validation row and a row of the virtual
step asked about at the same moment get the same number for the same user, and the Fig. 6/7
buckets (:mod:`embdim.autoemb.metrics`) use the number the controller was given. (The stream's
precomputed ``user_popularity`` — earlier interactions including the unseen ones earlier in the
same batch — is not used by the loop.)

**Normalisation** (``model.norm``, :class:`embdim.autoemb.model.StreamNorm`): ``running`` (default)
normalises every batch with the statistics of the earlier batches, so a row's score depends on its
own inputs and the state left by earlier batches only, not on which rows share its batch;
``renorm`` has the same values with eq. 2's gradient (through the mini-batch statistics);
``batch`` is eq. 2 as written.

**Checkpoints and resume.** With a ``checkpoint_path``, the learner's whole state is written
atomically at batch boundaries (:meth:`StreamLearner.state_dict`): the model, the controllers (DARTS:
the weight tables) and the per-user/item contexts, both Adam optimisers, the running popularity
counts, the RNG states (torch's global generator and the validation sampler's generator; no numpy
generator is used), the loop position, the seconds spent per stage and every metric sum and curve
point so far. The previous batch (the training batch of the next virtual step) is re-read from the
stream. :meth:`StreamLearner.load_checkpoint` restores all of it (``torch.load(...,
weights_only=True)``), refusing a checkpoint of another stream or model; the rest of the stream then
runs exactly as it would have without the interruption (same machine, versions and thread count),
so the metrics are identical; only the timings differ.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from embdim.autoemb.bilevel import apply_gradient, controller_gradient
from embdim.autoemb.config import StreamConfig
from embdim.autoemb.controller import ControllerWeights, TableWeights
from embdim.autoemb.metrics import StreamMetrics
from embdim.autoemb.model import AutoEmbModel, FixedWidthModel, labels_for, per_example_loss
from embdim.autoemb.stream import InteractionStream
from embdim.errors import EmbdimError, TrainingDivergedError
from embdim.io import atomic_torch_save, read_checkpoint
from embdim.train.optim import TableAdam, make_adam
from embdim.train.trainer import resolve_device

CHECKPOINT_FORMAT = "embdim-stream-checkpoint-2"


@dataclass
class Batch:
    users: Tensor  # long [B]
    items: Tensor  # long [B]
    labels: Tensor  # float [B] (regression) or long [B] (classification)
    user_pop: Tensor  # long [B]
    item_pop: Tensor  # long [B]


class StreamLearner:
    """One method (``cfg.method.name``) on one stream: the model, its weight source, optimisers,
    running popularity counts, and the loop."""

    def __init__(self, stream: InteractionStream, cfg: StreamConfig, *, quiet: bool = False,
                 log: Callable[[str], None] | None = None,
                 on_scored: Callable[[int, Tensor], None] | None = None,
                 checkpoint_path: str | Path | None = None):
        cfg.validate()
        self.stream, self.cfg, self.quiet = stream, cfg, quiet
        self._log = log or (lambda msg: None)
        self.on_scored = on_scored  # called with (batch start, predictions) after each scoring
        self.device = resolve_device(cfg.train.device)
        if cfg.train.threads:
            torch.set_num_threads(cfg.train.threads)
        torch.manual_seed(cfg.train.seed)
        self.method = cfg.method.name
        nu, ni = stream.num_users, stream.num_items
        m = cfg.model
        sparse = cfg.sparse_tables
        if self.method == "fse":
            self.model: nn.Module = FixedWidthModel(nu, ni, cfg.fixed_width, m.hidden, m.task,
                                                    transform=m.fse_transform, out_dim=max(m.widths),
                                                    norm=m.norm, sparse=sparse)
            self.weights: nn.Module | None = None
        else:
            self.model = AutoEmbModel(nu, ni, m.widths, m.hidden, m.task, norm=m.norm, sparse=sparse,
                                      one_over_n=m.one_over_n)
            if self.method == "darts":
                self.weights = TableWeights(nu, ni, len(m.widths))
            else:
                self.weights = ControllerWeights(nu, ni, len(m.widths), cfg.method.controller_hidden,
                                                 inputs=cfg.method.controller_inputs)
        self.model.to(self.device)
        self.w_params = [p for p in self.model.parameters()]
        self.table_params = [t.weight for t in self.model.tables()] if sparse else []
        # train.optimizer: sgd = plain gradient descent, W - lr grad_W L_train: the step that eq. 9's
        # virtual step W - xi grad_W L_train (xi = lr) stands for; adam; sparse_adam = lazy Adam on
        # the id tables (embdim.train.optim)
        if cfg.train.optimizer == "sgd":
            self.w_opt: Any = torch.optim.SGD(self.w_params, lr=cfg.train.lr)
        else:
            self.w_opt = TableAdam(self.w_params, self.table_params, lr=cfg.train.lr)
        if self.weights is not None:
            self.weights.to(self.device)
            self.theta_params = [p for p in self.weights.parameters()]
            self.theta_opt = make_adam(self.theta_params, lr=cfg.method.controller_lr)
        self.user_counts = torch.zeros(nu, dtype=torch.long, device=self.device)
        self.item_counts = torch.zeros(ni, dtype=torch.long, device=self.device)
        self.sampler = torch.Generator().manual_seed(cfg.train.seed + 1)
        self.metrics = StreamMetrics(len(m.widths), self.device)
        self.prev: tuple[int, int] | None = None  # [start, stop) of the last batch trained on
        n = len(stream) if not cfg.data.limit else min(len(stream), cfg.data.limit)
        self.length = n
        self.offline_end = int(n * cfg.data.offline_fraction)
        # loop state (all of it in the checkpoints)
        self.checkpoint_path = Path(checkpoint_path) if checkpoint_path is not None else None
        self.position = 0  # index of the next batch in self.bounds()
        self.seconds = [0.0, 0.0]  # per stage, checkpoint writing excluded
        self.window = torch.zeros((), device=self.device)  # loss sum since the last progress update

    def bounds(self) -> list[tuple[int, int, int]]:
        """``(start, stop, stage)`` of every batch: offline part first, then online."""
        bs, n = self.cfg.train.batch_size, self.length
        bounds = [(s, min(s + bs, self.offline_end), 0) for s in range(0, self.offline_end, bs)]
        return bounds + [(s, min(s + bs, n), 1) for s in range(self.offline_end, n, bs)]

    # ---- data -------------------------------------------------------------------------------------
    def _tensor(self, a: np.ndarray, dtype=torch.long) -> Tensor:
        return torch.from_numpy(np.array(a)).to(self.device, dtype)  # a copy: memmaps are read-only

    def _labels(self, ratings: np.ndarray) -> Tensor:
        return labels_for(self.cfg.model.task, self._tensor(ratings, torch.float32),
                          self.cfg.data.rating_threshold)

    def popularity_now(self, users: Tensor, items: Tensor) -> tuple[Tensor, Tensor]:
        """The popularity of each user and item now: its interactions the model has trained on
        (module docstring; the one definition used by scoring, validation and the buckets)."""
        return self.user_counts[users], self.item_counts[items]

    def batch(self, start: int, stop: int) -> Batch:
        """Interactions ``[start, stop)`` with the popularity their users/items have now."""
        a = self.stream.arrays
        users, items = self._tensor(a["users"][start:stop]), self._tensor(a["items"][start:stop])
        return Batch(users, items, self._labels(a["ratings"][start:stop]),
                     *self.popularity_now(users, items))

    def validation_batch(self, before: int) -> Batch:
        """A uniform sample (with replacement) of interactions ``[0, before)``, with the popularity
        their user/item has now."""
        size = self.cfg.method.val_batch_size or self.cfg.train.batch_size
        idx = torch.randint(0, before, (size,), generator=self.sampler).numpy()
        idx.sort()  # sequential reads from a memory-mapped stream
        a = self.stream.arrays
        users, items = self._tensor(a["users"][idx]), self._tensor(a["items"][idx])
        return Batch(users, items, self._labels(a["ratings"][idx]), *self.popularity_now(users, items))

    # ---- model ------------------------------------------------------------------------------------
    def forward(self, b: Batch) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Predictions and the weights used (None for FSE)."""
        if self.weights is None:
            return self.model(b.users, b.items), None, None
        alpha, beta = self.weights(b.users, b.items, b.user_pop, b.item_pop)
        return self.model(b.users, b.items, alpha, beta), alpha, beta

    def loss(self, b: Batch) -> Tensor:
        return per_example_loss(self.cfg.model.task, self.forward(b)[0], b.labels)[0].mean()

    def update_controllers(self, val: Batch) -> None:
        """Alg. 1 line 3 (AutoEmb, DARTS)."""
        prev = self.batch(*self.prev) if self.prev is not None else None  # popularity as of now
        train_loss = (lambda: self.loss(prev)) if prev is not None else None
        grads, _ = controller_gradient(
            self.w_params, self.theta_params, train_loss, lambda: self.loss(val), xi=self.cfg.xi,
            eps_scale=self.cfg.method.eps_scale, modules=[self.model],
            sparse_params=self.table_params)
        apply_gradient(self.theta_params, grads, self.theta_opt)

    def _buffers(self) -> dict[str, Tensor]:
        return {k: b.detach().clone() for k, b in self.model.named_buffers()}

    @torch.no_grad()
    def _load_buffers(self, saved: dict[str, Tensor]) -> None:
        for k, b in self.model.named_buffers():
            b.copy_(saved[k])

    def step(self, start: int, stop: int, stage: int) -> Tensor:
        """One batch of Algorithm 1; returns its training loss (detached)."""
        bilevel = self.method in ("autoemb", "darts")
        scored_validation = bilevel and self.cfg.method.validation == "scored"
        if bilevel and not scored_validation and start > 0:
            self.update_controllers(self.validation_batch(start))
        b = self.batch(start, stop)
        joint = self.method == "sam"
        scoring_buffers = self._buffers() if scored_validation else None
        with torch.set_grad_enabled(True):
            if self.weights is not None and not joint:
                with torch.no_grad():
                    alpha, beta = self.weights(b.users, b.items, b.user_pop, b.item_pop)
                out = self.model(b.users, b.items, alpha, beta)
            else:
                out, alpha, beta = self.forward(b)
            per_example, correct = per_example_loss(self.cfg.model.task, out, b.labels)
        # score and record before any update on this batch
        if self.on_scored is not None:
            self.on_scored(start, out.detach().clone())
        self.metrics.add(stage, per_example.detach(), correct, b.user_pop, b.item_pop,
                         None if alpha is None else alpha.detach(),
                         None if beta is None else beta.detach())
        # the DLRS's gradient on this batch (its step comes last)
        loss = per_example.mean()
        self.w_opt.zero_grad(set_to_none=True)
        if joint:
            self.theta_opt.zero_grad(set_to_none=True)
            loss.backward(inputs=self.w_params + self.theta_params)
            self.theta_opt.step()
        else:
            loss.backward(inputs=self.w_params)
        if scored_validation:
            # Alg. 1 lines 2-3 with the batch just scored as the validation mini-batch: its labels
            # are known now and W has not trained on it; the DLRS that scored it (parameters and
            # normalisation statistics), the popularity and context its rows were scored with.
            trained_buffers = self._buffers()
            self._load_buffers(scoring_buffers)
            self.update_controllers(b)
            self._load_buffers(trained_buffers)
        if self.weights is not None:
            self.weights.record(b.users, b.items, alpha.detach(), beta.detach(), per_example.detach())
        self.w_opt.step()
        self.user_counts.index_add_(0, b.users, torch.ones_like(b.users))
        self.item_counts.index_add_(0, b.items, torch.ones_like(b.items))
        self.prev = (start, stop)
        return loss.detach()

    # ---- checkpoints ------------------------------------------------------------------------------
    def fingerprint(self) -> dict[str, Any]:
        """What a checkpoint must match to be resumed here."""
        return {"method": self.method, "task": self.cfg.model.task, "norm": self.cfg.model.norm,
                "one_over_n": self.cfg.model.one_over_n,  # absent (None) before: refused
                "sparse_tables": self.cfg.sparse_tables,  # (train.optimizer; key kept: old checkpoints)
                "optimizer": self.cfg.train.optimizer,  # absent before sgd existed: refused
                "widths": [int(w) for w in self.cfg.model.widths], "hidden": list(self.cfg.model.hidden),
                "users": self.stream.num_users, "items": self.stream.num_items,
                "interactions": self.length, "offline_end": self.offline_end,
                "batch_size": self.cfg.train.batch_size,
                "stream_hash": self.stream.meta.get("content_hash")}

    def state_dict(self) -> dict[str, Any]:
        """Everything the rest of the stream depends on (module docstring)."""
        state: dict[str, Any] = {
            "format": CHECKPOINT_FORMAT, "fingerprint": self.fingerprint(),
            "position": self.position, "seconds": list(self.seconds), "window": self.window.clone(),
            "model": self.model.state_dict(), "w_opt": self.w_opt.state_dict(),
            "user_counts": self.user_counts.clone(), "item_counts": self.item_counts.clone(),
            "sampler": self.sampler.get_state(), "torch_rng": torch.get_rng_state(),
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "metrics": self.metrics.state_dict()}
        if self.weights is not None:
            state["weights"] = self.weights.state_dict()
            state["theta_opt"] = self.theta_opt.state_dict()
            if isinstance(self.weights, ControllerWeights):
                state["contexts"] = self.weights.context_state()
        return state

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.model.load_state_dict(state["model"])
        self.w_opt.load_state_dict(state["w_opt"])
        if self.weights is not None:
            self.weights.load_state_dict(state["weights"])
            self.theta_opt.load_state_dict(state["theta_opt"])
            if isinstance(self.weights, ControllerWeights):
                self.weights.load_context_state(state["contexts"])
        self.user_counts.copy_(state["user_counts"])
        self.item_counts.copy_(state["item_counts"])
        self.sampler.set_state(state["sampler"].cpu())
        torch.set_rng_state(state["torch_rng"].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([t.cpu() for t in state["cuda_rng"]])
        self.metrics.load_state_dict(state["metrics"])
        self.position = int(state["position"])
        self.seconds = [float(x) for x in state["seconds"]]
        self.window = state["window"].to(self.device).clone()
        bounds = self.bounds()
        # the training batch of the next virtual step: the last batch trained on
        self.prev = tuple(bounds[self.position - 1][:2]) if self.position > 0 else None

    def save_checkpoint(self) -> None:
        if self.checkpoint_path is not None:
            atomic_torch_save(self.checkpoint_path, self.state_dict())

    def load_checkpoint(self, path: str | Path | None = None) -> bool:
        """Restore the state saved at ``path`` (default: the checkpoint path); False when there is
        no checkpoint there. Refuses one written for another stream, method or model."""
        path = Path(path) if path is not None else self.checkpoint_path
        if path is None or not path.exists():
            return False
        state = read_checkpoint(path, fmt=CHECKPOINT_FORMAT, fingerprint=self.fingerprint(),
                                map_location=self.device)
        self.load_state_dict(state)
        return True

    @property
    def resumed_at(self) -> int:
        """The first interaction the loop has not processed yet."""
        bounds = self.bounds()
        return bounds[self.position][0] if self.position < len(bounds) else self.length

    # ---- the loop ---------------------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        """Run the stream from :attr:`position` (0, or where a loaded checkpoint left off) to the
        end; returns the metrics summary (see :mod:`embdim.autoemb.metrics`)."""
        n = self.length
        if n < 2:
            raise EmbdimError(f"the stream has {n} interaction(s): nothing to learn from")
        bounds = self.bounds()
        curve_every = max(1, len(bounds) // self.cfg.train.curve_points)
        every = self.cfg.train.log_every
        ckpt_batches, ckpt_seconds = self.cfg.train.checkpoint_every, self.cfg.train.checkpoint_seconds
        bar = tqdm(total=n, initial=self.resumed_at, desc=f"{self.method} {self.cfg.model.task}",
                   unit="int", disable=self.quiet, leave=False, dynamic_ncols=True)
        self.model.train()
        t0 = last_checkpoint = time.perf_counter()
        since_checkpoint = 0
        for i in range(self.position, len(bounds)):
            start, stop, stage = bounds[i]
            self.window += self.step(start, stop, stage)
            last = i + 1 == len(bounds) or bounds[i + 1][2] != stage
            if (i + 1) % curve_every == 0 or last:
                self.metrics.close_window(stop, stage)
            if (i + 1) % every == 0 or last:
                value = float(self.window) / ((i % every) + 1)
                if not np.isfinite(value):
                    bar.close()
                    raise TrainingDivergedError(f"training diverged at interaction {stop:,}: loss "
                                                f"{value}; try a lower train.lr (now {self.cfg.train.lr})")
                bar.set_postfix(loss=f"{value:.4f}", stage=("offline", "online")[stage])
                self.window.zero_()
            bar.update(stop - start)
            self.position = i + 1
            since_checkpoint += 1
            now = time.perf_counter()
            self.seconds[stage] += now - t0
            t0 = now
            if self.checkpoint_path is not None and (
                    last or (ckpt_batches and since_checkpoint >= ckpt_batches)
                    or (ckpt_seconds and now - last_checkpoint >= ckpt_seconds)):
                self.save_checkpoint()
                since_checkpoint = 0
                t0 = last_checkpoint = time.perf_counter()
        bar.close()
        loss_name = "mse" if self.cfg.model.task == "regression" else "cross_entropy"
        summary = self.metrics.summary(loss_name)
        total = sum(self.seconds)
        summary["seconds"] = {"offline": self.seconds[0], "online": self.seconds[1], "total": total}
        summary["interactions_per_second"] = n / total if total > 0 else float("nan")
        summary["online_start"] = self.offline_end
        return summary

    def popularity_counts(self) -> tuple[Tensor, Tensor]:
        """Interactions per user and per item so far (the popularity at the end of the stream once
        :meth:`run` has finished)."""
        return self.user_counts, self.item_counts

    def embedding_params(self) -> int:
        return int(self.model.embedding_params())

    def controller_params(self) -> int:
        return 0 if self.weights is None else sum(p.numel() for p in self.weights.parameters())
