"""AutoEmb as a field-level CTR search method (the AutoEmb column of AutoDim's Table 2, sec. 3.4 (vi):
"based on DARTS, assigns embedding dimensions according to the frequencies of feature values").

* search (AutoEmb sec. 2.2-2.4, Alg. 1): the base model runs on a
  :class:`~embdim.nn.popularity_embedding.PopularityEmbedding` (per value N candidate widths, unified
  by eq. 1-2, soft-selected by eq. 7 with the weights of a controller fed the value's training
  count and context). As in Alg. 1, each iteration first updates the controllers ``Theta`` on a
  validation batch (its own Adam, ``controller_lr``), then the model ``W`` on a training batch (Adam,
  ``train.lr``), then records the weights and loss the batch's values got (their context). The
  controller gradient is the DARTS one of eq. 8-9: second order (``order: second``, the default: the
  paper's one-step approximation with ``xi`` = the model's learning rate, finite-difference
  Hessian-vector product, :func:`embdim.search.bilevel.second_order_alpha_grad`) or first order
  (``xi = 0``, "some speed-up, but empirically worse performance").
* derive (eq. 6: the width of the largest controller weight): a plan needs one width per value as a
  rule of its frequency, so the values of a field are grouped by the controller's own popularity
  bucket ``floor(log2(1 + count))`` (32 buckets, the one-hot input of the controller); each bucket gets
  the candidate with the largest *mean* weight over its ids (with their final contexts). Value ids are
  sorted by descending training count, so a bucket is a contiguous id range (the reserved ids 0 = OOV
  and 1 = missing join the bucket their own count places them in); adjacent buckets of equal width
  merge. The rule need not be monotone in the frequency: a bucket whose width differs from its
  neighbours' stays its own block (at most 32 blocks per field). ``plan.value_dim_rule["blocks"]``
  holds them (MDE's format), so the retrain is the library's
  :class:`~embdim.nn.block_embedding.BlockFieldEmbedding` on every base model, aligned to the largest
  candidate, and ``embedding_params`` counts ``sum n_k d_k`` over the blocks.
* retrain: done by the pipeline (``embdim.experiment``), fresh weights, no BatchNorm/tanh or
  controller in the embedding path.

A model without an embedding layer (``lr``) is searched with the ``fm`` body (logistic regression
plus the pairwise term: the closest model whose embeddings the controller can size); the retrained
``lr`` ignores the plan's widths.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from embdim import distributed
from embdim.config import coerce
from embdim.data.loader import BatchLoader
from embdim.data.schema import RESERVED_IDS
from embdim.errors import ConfigError, TrainingDivergedError
from embdim.nn.models import MODELS, ModelOptions, build_model, resolve_model_name
from embdim.nn.popularity_embedding import CONTROLLER_INPUTS, CONTROLLER_SCOPES, PopularityEmbedding
from embdim.plan import DimensionPlan
from embdim.search.autodim import _validate
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.bilevel import apply_alpha_grad, first_order_alpha_grad, second_order_alpha_grad
from embdim.search.random import align_to_largest
from embdim.train.optim import make_adam
from embdim.train.trainer import resolve_device

PAPER_CANDIDATES = (2, 16, 128)  # AutoEmb sec. 3.2: N = 3 widths


@dataclass
class AutoEmbOptions:
    """The YAML ``method:`` section of ``autoemb`` (docs/autoemb_ctr.md explains every option)."""

    candidates: list[int] = field(default_factory=lambda: list(PAPER_CANDIDATES))
    controller_hidden: list[int] = field(default_factory=lambda: [512, 512])  # sec. 3.2
    controllers: str = "field"  # one controller per field | "shared": one for every field
    controller_inputs: list[str] = field(default_factory=lambda: list(CONTROLLER_INPUTS))  # ablation
    controller_lr: float = 1e-3  # sec. 3.2
    controller_weight_decay: float = 0.0
    order: str = "second"  # "second" (eq. 9, DARTS one-step) | "first" (xi = 0)
    xi: float | None = None  # second order: the virtual step size; None = train.lr (eq. 9)
    fd_eps: float = 0.01  # second order: eps = fd_eps / ||grad_W' L_val||
    update_every: int = 1  # one controller update per this many W-steps (Alg. 1: every iteration)
    epochs: int | None = None  # search epochs; None = train.epochs
    max_steps: int | None = None  # cap on W-steps per search epoch; None = train.max_steps_per_epoch
    init_std: float = 0.1  # std of the candidate tables' N(0, std^2) initialisation

    def validate(self) -> None:
        self.candidates = coerce(self.candidates, list[int], "method.candidates")
        if (not self.candidates or self.candidates[0] < 1
                or sorted(set(self.candidates)) != self.candidates):
            raise ConfigError(f"method.candidates must be positive, distinct and increasing, got "
                              f"{self.candidates}")
        self.controller_hidden = coerce(self.controller_hidden, list[int], "method.controller_hidden")
        if any(h < 1 for h in self.controller_hidden):
            raise ConfigError(f"method.controller_hidden must be positive widths, got "
                              f"{self.controller_hidden}")
        if self.controllers not in CONTROLLER_SCOPES:
            raise ConfigError(f"method.controllers must be one of {list(CONTROLLER_SCOPES)}, got "
                              f"{self.controllers!r}")
        self.controller_inputs = coerce(self.controller_inputs, list[str], "method.controller_inputs")
        if not set(self.controller_inputs) <= set(CONTROLLER_INPUTS):
            raise ConfigError(f"method.controller_inputs must be among {list(CONTROLLER_INPUTS)}, "
                              f"got {self.controller_inputs}")
        if self.order not in ("first", "second"):
            raise ConfigError(f"method.order must be 'first' or 'second', got {self.order!r}")
        if not self.controller_lr > 0 or self.controller_weight_decay < 0:
            raise ConfigError("method: need controller_lr > 0 and controller_weight_decay >= 0")
        if self.xi is not None and self.xi < 0:
            raise ConfigError(f"method.xi must be >= 0, got {self.xi}")
        if not self.fd_eps > 0 or not self.init_std > 0:
            raise ConfigError("method: need fd_eps > 0 and init_std > 0")
        for key in ("update_every", "epochs", "max_steps"):
            v = getattr(self, key)
            if (v is not None or key == "update_every") and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"method.{key} must be a positive integer"
                                  + ("" if key == "update_every" else " or null") + f", got {v!r}")


def search_model_name(name: str) -> str:
    """The base model the supernet is searched in: the experiment's, or ``fm`` for a model without
    an embedding layer (``lr``)."""
    key = resolve_model_name(name)
    return key if getattr(MODELS[key], "uses_embedding", True) else "fm"


class AutoEmbSearch:
    """Alg. 1 over one prepared dataset: build it, optionally inspect ``model``, then ``run()``."""

    def __init__(self, dataset, ctx: SearchContext, options: AutoEmbOptions):
        self.dataset, self.ctx, self.options = dataset, ctx, options
        schema, train = dataset.schema, ctx.train
        self.device = resolve_device(train.device)
        if train.threads:
            torch.set_num_threads(train.threads)
        self.embedding = PopularityEmbedding(schema.vocab_sizes, dataset.frequencies(),
                                             options.candidates, hidden=options.controller_hidden,
                                             controllers=options.controllers,
                                             inputs=options.controller_inputs, init_std=options.init_std)
        model_options = ctx.model_options or ModelOptions()
        self.model_name = search_model_name(model_options.name)
        if self.model_name != resolve_model_name(model_options.name):
            model_options = dataclasses.replace(model_options, name=self.model_name)
        self.model = build_model(self.model_name, schema, options=model_options,
                                 embedding=self.embedding).to(self.device)
        self.theta = self.embedding.controller_parameters()
        theta_ids = {id(p) for p in self.theta}
        self.w_params = [p for p in self.model.parameters() if id(p) not in theta_ids]
        self.w_optimizer = make_adam(self.w_params, lr=train.lr, weight_decay=train.weight_decay)
        self.theta_optimizer = torch.optim.Adam(self.theta, lr=options.controller_lr,
                                                weight_decay=options.controller_weight_decay)
        train_split, valid_split = dataset.split("train"), dataset.split("valid")
        # a one-row batch cannot be normalised by eq. 2's BatchNorm: a short last batch is dropped
        self.train_loader = BatchLoader(
            train_split, shuffle=True, seed=train.seed, device=self.device,
            drop_last=len(train_split) > train.batch_size, max_memory_bytes=train.in_memory_limit_bytes,
            **distributed.training_loader_options(len(train_split), train.batch_size))
        self.valid_loader = BatchLoader(
            valid_split, shuffle=True, seed=train.seed + 1, device=self.device,
            drop_last=len(valid_split) > train.batch_size, max_memory_bytes=train.in_memory_limit_bytes,
            **distributed.training_loader_options(len(valid_split), train.batch_size))
        self.eval_loader = BatchLoader(valid_split, train.eval_batch_size, shuffle=False,
                                       device=self.device, max_memory_bytes=train.in_memory_limit_bytes)
        self.epochs = options.epochs or train.epochs
        cap = options.max_steps or train.max_steps_per_epoch
        self.steps_per_epoch = min(len(self.train_loader), cap) if cap else len(self.train_loader)
        self.xi = train.lr if options.xi is None else options.xi

    def _log(self, msg: str) -> None:
        self.ctx.log(msg)
        if not self.ctx.quiet:
            tqdm.write(msg)

    def controller_step(self, train_batch, valid_batch) -> None:
        """Alg. 1 line 3: one update of ``Theta`` on a validation batch (eq. 8-9)."""
        if self.options.order == "second":
            grads, _ = second_order_alpha_grad(self.model, self.w_params, self.theta, train_batch,
                                               valid_batch, xi=self.xi, eps_scale=self.options.fd_eps)
        else:
            grads, _ = first_order_alpha_grad(self.model, self.theta, valid_batch)
        apply_alpha_grad(self.theta, grads, self.theta_optimizer)

    def model_step(self, batch) -> torch.Tensor:
        """Alg. 1 lines 4-7: one update of ``W`` on a training batch, then the batch's values
        record the weights and (per-row) loss they got as their context."""
        ids, labels = batch
        logits = self.model(ids).float()
        per_row = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none")
        loss = per_row.mean()
        self.w_optimizer.zero_grad(set_to_none=True)
        loss.backward(inputs=self.w_params)
        distributed.average_gradients(self.w_params)
        self.w_optimizer.step()
        self.embedding.record(per_row)
        return loss.detach()

    def run(self) -> dict[str, Any]:
        opts, model = self.options, self.model
        valid_iter = self.valid_loader.batches()
        history: list[dict[str, Any]] = []
        step, updates, t_start = 0, 0, time.perf_counter()
        model.train()
        self._log(f"autoemb search: {self.epochs} epoch(s) x {self.steps_per_epoch} steps on "
                  f"{self.model_name}, {opts.order} order, controller update every "
                  f"{opts.update_every} step(s), candidates {opts.candidates}, "
                  f"controllers={opts.controllers}")
        for epoch in range(self.epochs):
            bar = tqdm(total=self.steps_per_epoch, desc=f"search {epoch + 1}/{self.epochs}",
                       unit="batch", disable=self.ctx.quiet, leave=False, dynamic_ncols=True)
            loss_sum = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            for i, batch in enumerate(self.train_loader.epoch(epoch)):
                if i >= self.steps_per_epoch:
                    break
                if step % opts.update_every == 0:
                    self.controller_step(batch, next(valid_iter))
                    updates += 1
                loss_sum += self.model_step(batch)
                step += 1
                bar.update(1)
            bar.close()
            mean_loss = float(loss_sum) / max(1, self.steps_per_epoch)
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(f"autoemb search diverged in epoch {epoch + 1} (loss "
                                            f"{mean_loss}); try a lower train.lr or "
                                            "method.controller_lr")
            valid = _validate(model, self.eval_loader)
            history.append({"epoch": epoch + 1, "train_loss": mean_loss, "valid_auc": valid["auc"],
                            "valid_logloss": valid["logloss"], "steps": step,
                            "controller_updates": updates, "seconds": time.perf_counter() - t0})
            self._log(f"search epoch {epoch + 1}: train_loss={mean_loss:.5f} "
                      f"valid_auc={valid['auc']:.5f}")
        return {"history": history, "steps": step, "controller_updates": updates,
                "seconds": time.perf_counter() - t_start}


def bucket_blocks(buckets: np.ndarray, weights: np.ndarray, widths: list[int],
                  reserved: int = RESERVED_IDS) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """One field's frequency blocks from its ids' popularity buckets ``[V]`` and controller weights
    ``[V, N]`` (module docstring).

    Each bucket gets the width of the largest mean weight over its ids (ties: the smaller width).
    The value ids (``>= reserved``, by descending count) of a bucket are a contiguous range; adjacent
    buckets of equal width merge into one block. A reserved id (OOV, missing) joins the block of its
    bucket; when no value shares its bucket, the first block of its bucket's width, or a block of its
    own (``start = stop = 0``). Returns the blocks ``{"start", "stop", "dim"[, "reserved_ids"]}``
    (most frequent first) and, per bucket, ``{"bucket", "ids", "mean_weights", "dim"}``.
    """
    values = buckets[reserved:]
    if len(values) > 1 and np.any(np.diff(values) > 0):
        raise ValueError("value ids are not sorted by descending training count")
    table, dim_of = [], {}
    for b in sorted({int(x) for x in buckets}, reverse=True):
        ids = np.flatnonzero(buckets == b)
        mean = weights[ids].mean(axis=0)
        dim_of[b] = int(widths[int(np.argmax(mean))])
        table.append({"bucket": b, "ids": int(len(ids)),
                      "mean_weights": [round(float(m), 6) for m in mean], "dim": dim_of[b]})
    blocks: list[dict[str, Any]] = []
    block_of_bucket: dict[int, dict[str, Any]] = {}
    for b in sorted({int(x) for x in values}, reverse=True):
        ids = np.flatnonzero(values == b) + reserved
        last = blocks[-1] if blocks else None
        if last is not None and last["dim"] == dim_of[b]:
            last["stop"] = int(ids[-1]) + 1
        else:
            last = {"start": int(ids[0]), "stop": int(ids[-1]) + 1, "dim": dim_of[b]}
            blocks.append(last)
        block_of_bucket[b] = last
    for r in range(min(reserved, len(buckets))):
        b = int(buckets[r])
        home = block_of_bucket.get(b) or next((k for k in blocks if k["dim"] == dim_of[b]), None)
        if home is None:
            home = {"start": 0, "stop": 0, "dim": dim_of[b]}
            blocks.append(home)
            block_of_bucket[b] = home
        home.setdefault("reserved_ids", []).append(r)
    return blocks, table


def derive_plan(embedding: PopularityEmbedding, schema, method: str, options: dict[str, Any],
                result: dict[str, Any]) -> DimensionPlan:
    """The plan of a searched :class:`PopularityEmbedding` (module docstring: per popularity bucket
    the candidate with the largest mean controller weight, eq. 6)."""
    widths = embedding.widths
    field_blocks, buckets_record, agreement = [], {}, {}
    for name, buckets, weights in zip(schema.field_names, embedding.popularity_buckets(),
                                      embedding.value_weights(), strict=True):
        w = weights.numpy()
        blocks, table = bucket_blocks(buckets, w, widths)
        field_blocks.append(blocks)
        buckets_record[name] = table
        # how often a value's own argmax (eq. 6 per value) equals the width its bucket got
        own = np.asarray(widths)[w.argmax(axis=1)]
        given = np.empty(len(own), dtype=np.int64)
        for b in blocks:
            ids = list(range(int(b["start"]), int(b["stop"]))) + list(b.get("reserved_ids", []))
            given[ids] = b["dim"]
        agreement[name] = round(float((own == given).mean()), 6)
    dims = [max(b["dim"] for b in f) for f in field_blocks]
    rule = {"rule": "per popularity bucket floor(log2(1 + training count)): the candidate with the "
                    "largest mean controller weight (AutoEmb eq. 6)",
            "per": "block", "candidates": list(widths), "blocks": field_blocks}
    extra = {"buckets": buckets_record, "value_argmax_agreement": agreement,
             "search_history": result["history"], "search_steps": result["steps"],
             "controller_updates": result["controller_updates"],
             "search_embedding_params": embedding.embedding_params}
    return DimensionPlan(method=method, field_names=schema.field_names,
                         vocab_sizes=schema.vocab_sizes, dims=dims, full_dim=int(widths[-1]),
                         schema_hash=schema.content_hash, options=options, value_dim_rule=rule,
                         extra=extra)


@register
class AutoEmb(SearchMethod):
    """AutoEmb's popularity controllers on a CTR dataset: per-value widths as frequency blocks."""

    name = "autoemb"
    Options = AutoEmbOptions

    def __init__(self, options: AutoEmbOptions | None = None, **option_values):
        super().__init__(options, **option_values)
        self.searcher: AutoEmbSearch | None = None

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        self.searcher = AutoEmbSearch(dataset, ctx, self.options)
        result = self.searcher.run()
        return derive_plan(self.searcher.embedding, dataset.schema, self.name,
                           dataclasses.asdict(self.options), result)

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        return align_to_largest(model_options, plan)
