"""AutoDim (Zhao et al., "Memory-efficient Embedding for Recommendations"): search, derive, retrain.

* search (sec. 2.2-2.3, Alg. 1): the base model runs on a :class:`~embdim.nn.supernet.SupernetEmbedding`;
  ``W`` is updated with Adam on training batches and the architecture weights ``alpha`` with their own
  Adam on validation batches, once every ``update_every`` W-steps (the paper's ``f``), first order
  (``xi = 0``) or with the DARTS second-order step (:mod:`embdim.search.bilevel`). The pre-train trick
  (sec. 2.3.1): the first ``pretrain_steps`` W-steps run with ``alpha`` fixed and equal (no noise).
  Gumbel temperature ``tau = max(tau_min, tau_start - tau_decay * t)`` (sec. 3.2), ``t`` the W-step.
* derive (sec. 2.4.1, eq. 13): per field the candidate with the largest ``alpha`` -> ``plan.json``
  (``extra``: final ``alpha`` per field, the candidates, the search history). With ``budget: kappa``
  (beyond the paper, :mod:`embdim.search.budget`): the plan of largest ``sum_i log alpha_i(d_i)``
  (the most probable architecture under the learned alpha) whose tables fit ``kappa`` x FDE.
  ``vocab_cap: true`` (beyond the paper, off by default): a width above the field's vocabulary is
  cut to it, the same function class behind the linear alignment (a ``v``-row table has rank
  ``<= v``).
* retrain (sec. 2.4.2, Alg. 2): done by the pipeline (``embdim.experiment``) with the base
  :class:`~embdim.nn.embedding.FieldEmbedding` — no BatchNorm in the embedding path, aligned by the
  model's ``align`` (linear by default) to the largest candidate; fresh weights unless
  ``inherit: true``, which copies the searched weights in (the chosen candidate's table, its
  unifying transform with the search BatchNorm statistics folded in, and the rest of the network).

Registered methods: ``autodim`` (AD-2 by default: shared lookup, linear unify), ``autodim-s``
(sec. 3.4: ``W`` and ``alpha`` updated together on the same training batch), and the component
variants of sec. 3.5: ``ad-1`` (shared + pad), ``ad-2`` (shared + linear), ``ad-3`` (separate + pad),
``ad-4`` (separate + linear).
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

from embdim import distributed
from embdim.config import coerce
from embdim.data.loader import BatchLoader
from embdim.errors import ConfigError, TrainingDivergedError, short_repr
from embdim.nn.models import ModelOptions, RecModel, build_model
from embdim.nn.supernet import GUMBEL_SCOPES, LOOKUPS, UNIFIERS, SupernetEmbedding, normalise_candidates
from embdim.plan import DimensionPlan
from embdim.search.base import (
    SearchContext,
    SearchMethod,
    register,
    require_embedding_layer,
    search_schedule,
)
from embdim.search.bilevel import (
    apply_alpha_grad,
    first_order_alpha_grad,
    joint_step,
    second_order_alpha_grad,
    w_step,
)
from embdim.search.budget import (
    best_widths_under_budget,
    budget_params,
    capped_at_vocab,
    check_feasible,
    check_kappa,
)
from embdim.search.fde import DEFAULT_CANDIDATES
from embdim.train.host import cpu_has_fast_bf16
from embdim.train.metrics import binary_metrics
from embdim.train.optim import make_adam
from embdim.train.trainer import resolve_device

RETRAIN_ALIGN = ("largest_candidate", "plan")


def typed_candidates(value: Any, where: str = "method.candidates"
                     ) -> list[int] | list[list[int]] | dict[str, list[int]]:
    """``candidates`` typed: a list of positive integer widths (every field), one such list per
    field, or a mapping field name (or ``default``) -> list. Integral numbers are integers (``8.0``
    is 8); anything else is a ConfigError naming the place (``method.candidates[1]: expected an
    integer, got 'x'``)."""
    if isinstance(value, dict):
        return {str(k): _widths(v, f"{where}.{k}") for k, v in value.items()}
    if isinstance(value, list | tuple) and value and all(isinstance(c, list | tuple) for c in value):
        return [_widths(c, f"{where}[{i}]") for i, c in enumerate(value)]
    if not isinstance(value, list | tuple):
        raise ConfigError(f"{where}: expected a list of widths, one list per field or a mapping "
                          f"field -> list, got {short_repr(value)}")
    return _widths(value, where)


def _widths(value: Any, where: str) -> list[int]:
    widths = coerce(value, list[int], where)
    if not widths:
        raise ConfigError(f"{where}: expected at least one width, got []")
    for i, d in enumerate(widths):
        if d < 1:
            raise ConfigError(f"{where}[{i}]: expected a positive integer, got {d}")
    return widths


@dataclass
class AutoDimOptions:
    """The YAML ``method:`` section of ``autodim`` (docs/autodim.md explains every option)."""

    candidates: Any = field(default_factory=lambda: list(DEFAULT_CANDIDATES))  # list, or per field
    lookup: str = "shared"  # "shared" (weight sharing) | "separate"
    unify: str = "linear"  # "linear" (W_n, b_n + BatchNorm) | "pad" (BatchNorm + zero padding)
    unify_bias: bool = True  # the b_n of eq. 1 in the search supernet
    scale_init: float | None = 0.1  # learned per-field output scale after the mixture; null: none
    order: str = "first"  # "first" (xi = 0) | "second" (DARTS unrolled step)
    xi: float | None = None  # second order: the virtual step size; None = train.lr
    fd_eps: float = 0.01  # second order: eps = fd_eps / ||grad_W' L_val||
    update_every: int = 10  # f: one alpha update per this many W-steps
    alpha_lr: float = 1e-3
    alpha_weight_decay: float = 0.0
    epochs: int | None = None  # search epochs; None = train.epochs
    max_steps: int | None = None  # cap on W-steps per search epoch; None = train.max_steps_per_epoch
    pretrain_steps: int | None = None  # W-steps with alpha fixed and equal; None = 20% of the search
    pretrain_noise: bool = False  # pre-training mixes with p = alpha (equal); True: Gumbel samples
    tau_start: float = 1.0
    tau_decay: float = 5e-5  # per W-step
    tau_min: float = 0.01
    gumbel: str = "sample"  # Gumbel noise per example ("sample") or per step ("batch")
    hard: bool = False  # straight-through Gumbel-softmax
    inherit: bool = False  # retrain from the searched weights instead of a fresh initialisation
    retrain_align: str = "largest_candidate"  # retrained aligned width: "largest_candidate" | "plan"
    retrain_bias: bool = True  # the retrained linear alignment has eq. 1's b_n (false: model.align_bias)
    # the retraining re-estimates its BatchNorm statistics from this many training batches before
    # each validation (train.bn_recalibration; a non-zero train.bn_recalibration wins); 0: off
    retrain_bn_recalibration: int = 100
    budget: float | None = None  # kappa: best plan from alpha with tables <= kappa * FDE (d_max)
    # a field's width capped at its vocabulary, min(d, vocab): the same function class behind the
    # linear alignment (a v-row table has rank <= v); only with unify: linear and without inherit.
    # Off by default (eq. 13 as written): on UCI Adult the cut argmax plans retrained 0.0004-0.0011
    # AUC lower (docs/autodim.md, "Widths above the vocabulary")
    vocab_cap: bool = False

    @property
    def caps_at_vocab(self) -> bool:
        """Whether the derived widths are capped at the field vocabularies (``vocab_cap``): only
        where it loses nothing, a linear retrained alignment (``unify: linear``) trained from a
        fresh start (``inherit`` copies the searched candidate's table at its searched width)."""
        return bool(self.vocab_cap) and self.unify == "linear" and not self.inherit

    def validate(self) -> None:
        choices = {"lookup": LOOKUPS, "unify": UNIFIERS, "order": ("first", "second"),
                   "gumbel": GUMBEL_SCOPES, "retrain_align": RETRAIN_ALIGN}
        for key, valid in choices.items():
            if getattr(self, key) not in valid:
                raise ConfigError(f"method.{key} must be one of {list(valid)}, got {getattr(self, key)!r}")
        if not isinstance(self.update_every, int) or self.update_every < 1:
            raise ConfigError(f"method.update_every must be a positive integer, got {self.update_every!r}")
        for key in ("epochs", "max_steps"):
            v = getattr(self, key)
            if v is not None and (not isinstance(v, int) or v < 1):
                raise ConfigError(f"method.{key} must be a positive integer or null, got {v!r}")
        if not isinstance(self.retrain_bn_recalibration, int) or self.retrain_bn_recalibration < 0:
            raise ConfigError("method.retrain_bn_recalibration must be an integer >= 0, got "
                              f"{self.retrain_bn_recalibration!r}")
        if self.pretrain_steps is not None and self.pretrain_steps < 0:
            raise ConfigError(f"method.pretrain_steps must be >= 0, got {self.pretrain_steps}")
        if self.alpha_lr <= 0 or self.tau_min <= 0 or self.tau_start < self.tau_min or self.tau_decay < 0:
            raise ConfigError("method: need alpha_lr > 0, tau_start >= tau_min > 0, tau_decay >= 0")
        if self.xi is not None and self.xi < 0:
            raise ConfigError(f"method.xi must be >= 0, got {self.xi}")
        check_kappa(self.budget)
        self.candidates = typed_candidates(self.candidates)

    def field_candidates(self, field_names: list[str]) -> list[list[int]]:
        """One sorted candidate list per field (a mapping by field name may cover only some fields;
        the others get the mapping's ``default`` entry or the default candidates)."""
        if isinstance(self.candidates, dict):
            unknown = sorted(set(self.candidates) - set(field_names) - {"default"})
            if unknown:
                raise ConfigError(f"method.candidates names unknown field(s) {unknown}")
            default = self.candidates.get("default", DEFAULT_CANDIDATES)
            per_field = [self.candidates.get(n, default) for n in field_names]
        else:
            per_field = self.candidates
        try:
            return normalise_candidates(per_field, len(field_names))
        except ValueError as e:
            raise ConfigError(f"method.candidates: {e}") from None

    def tau(self, step: int) -> float:
        """The annealed Gumbel temperature ``max(tau_min, tau_start - tau_decay t)`` (sec. 3.2) at
        search step ``t``, counted from the end of the pre-training (the first alpha update)."""
        return max(self.tau_min, self.tau_start - self.tau_decay * step)


@dataclass
class SearchResult:
    """What a search leaves behind: the supernet model (for ``inherit``) and its history."""

    model: RecModel
    supernet: SupernetEmbedding
    history: list[dict[str, Any]]
    steps: int
    alpha_updates: int
    seconds: float


@torch.no_grad()
def _validate(model: RecModel, loader: BatchLoader) -> dict[str, float]:
    """AUC and Logloss on the validation split with the mixture weights ``alpha`` (no noise)."""
    model.eval()
    probs, labels = [], []
    for ids, y in loader.epoch(0):
        probs.append(torch.sigmoid(model(ids).float()).cpu())
        labels.append(y.cpu())
    model.train()
    return binary_metrics(torch.cat(labels).numpy(), torch.cat(probs).numpy())


class AutoDimSearch:
    """The search loop of Alg. 1 (or AutoDim-s with ``joint=True``) over one prepared dataset.

    Build it, optionally inspect ``train_loader`` / ``valid_loader`` / ``model``, then ``run()``.
    """

    def __init__(self, dataset, ctx: SearchContext, options: AutoDimOptions, *, joint: bool = False):
        self.dataset, self.ctx, self.options, self.joint = dataset, ctx, options, joint
        schema, train = dataset.schema, ctx.train
        self.device = resolve_device(train.device)
        if train.threads:
            torch.set_num_threads(train.threads)
        self.candidates = options.field_candidates(schema.field_names)
        self.supernet = SupernetEmbedding(schema.vocab_sizes, self.candidates, lookup=options.lookup,
                                          unify=options.unify, bias=options.unify_bias,
                                          gumbel=options.gumbel, hard=options.hard,
                                          scale_init=options.scale_init)
        model_options = ctx.model_options or ModelOptions()
        self.model = build_model(model_options.name, schema, options=model_options,
                                 embedding=self.supernet).to(self.device)
        # The training step's fast paths where they apply: bf16 autocast for the body's matrix
        # products (train.amp; on CPU only with AVX512-BF16/AMX; the supernet's statistics stay
        # float32) and torch.compile of the forward (train.compile). CUDA graphs: not for the
        # search (its alpha steps and Gumbel draws change the step's graph).
        self.amp = bool(train.amp) and (self.device.type != "cpu" or cpu_has_fast_bf16())
        self.forward = torch.compile(self.model, dynamic=False) if train.compile else self.model
        self.alpha_params = self.supernet.architecture_parameters()
        alpha_ids = {id(p) for p in self.alpha_params}
        self.w_params = [p for p in self.model.parameters() if id(p) not in alpha_ids]
        self.w_optimizer = make_adam(self.w_params, lr=train.lr, weight_decay=train.weight_decay)
        self.alpha_optimizer = torch.optim.Adam(self.alpha_params, lr=options.alpha_lr,
                                                weight_decay=options.alpha_weight_decay)
        # Under torchrun: this process's shards, gradients averaged in the steps (bilevel.py).
        train_split, valid_split = dataset.split("train"), dataset.split("valid")
        self.train_loader = BatchLoader(
            train_split, shuffle=True, seed=train.seed, device=self.device,
            max_memory_bytes=train.in_memory_limit_bytes,
            **distributed.training_loader_options(len(train_split), train.batch_size))
        self.valid_loader = BatchLoader(
            valid_split, shuffle=True, seed=train.seed + 1, device=self.device,
            max_memory_bytes=train.in_memory_limit_bytes,
            **distributed.training_loader_options(len(valid_split), train.batch_size))
        self.eval_loader = BatchLoader(dataset.split("valid"), train.eval_batch_size, shuffle=False,
                                       device=self.device, max_memory_bytes=train.in_memory_limit_bytes)
        self.epochs, self.steps_per_epoch, self.pretrain_steps = search_schedule(
            options.epochs, options.max_steps, options.pretrain_steps, train, len(self.train_loader))
        self.xi = train.lr if options.xi is None else options.xi

    def _log(self, msg: str) -> None:
        self.ctx.log(msg)
        if not self.ctx.quiet:
            tqdm.write(msg)

    def _alpha_by_field(self) -> list[list[float]]:
        """Per field, the softmax of alpha over that field's candidates (4 decimals, for the history)."""
        alpha = self.supernet.alpha().detach().cpu()
        return [[round(float(a), 4) for a, ok in zip(row, mask, strict=True) if ok]
                for row, mask in zip(alpha, self.supernet.mask.tolist(), strict=True)]

    def _autocast(self):
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp)

    def _alpha_update(self, train_batch, valid_iter) -> None:
        valid_batch = next(valid_iter)
        with self._autocast():
            if self.options.order == "second":
                grads, _ = second_order_alpha_grad(self.forward, self.w_params, self.alpha_params,
                                                   train_batch, valid_batch, xi=self.xi,
                                                   eps_scale=self.options.fd_eps)
            else:
                grads, _ = first_order_alpha_grad(self.forward, self.alpha_params, valid_batch)
        apply_alpha_grad(self.alpha_params, grads, self.alpha_optimizer)

    def run(self) -> SearchResult:
        opts, model, net = self.options, self.model, self.supernet
        valid_iter = self.valid_loader.batches()
        history: list[dict[str, Any]] = []
        step, alpha_updates, t_start = 0, 0, time.perf_counter()
        model.train()
        mode = "AutoDim-s (joint)" if self.joint else f"bilevel, {opts.order} order, f={opts.update_every}"
        self._log(f"autodim search: {self.epochs} epoch(s) x {self.steps_per_epoch} steps, {mode}, "
                  f"pre-train {self.pretrain_steps} steps, candidates {net.widths}, "
                  f"lookup={opts.lookup}, unify={opts.unify}")
        for epoch in range(self.epochs):
            bar = tqdm(total=self.steps_per_epoch, desc=f"search {epoch + 1}/{self.epochs}", unit="batch",
                       disable=self.ctx.quiet, leave=False, dynamic_ncols=True)
            loss_sum = torch.zeros((), device=self.device)
            t0 = time.perf_counter()
            for i, batch in enumerate(self.train_loader.epoch(epoch)):
                if i >= self.steps_per_epoch:
                    break
                searching = step >= self.pretrain_steps
                net.sampling = searching or opts.pretrain_noise
                # tau anneals over the alpha-learning steps: t = 0 at the first alpha update, so
                # alpha sees the whole schedule however long the pre-training is (sec. 3.2)
                net.tau = opts.tau(max(0, step - self.pretrain_steps))
                update = searching and (step - self.pretrain_steps) % opts.update_every == 0
                if self.joint and update:
                    with self._autocast():
                        loss = joint_step(self.forward, self.w_params, self.alpha_params,
                                          self.w_optimizer, self.alpha_optimizer, batch)
                    alpha_updates += 1
                else:
                    if update and not self.joint:
                        self._alpha_update(batch, valid_iter)
                        alpha_updates += 1
                    with self._autocast():
                        loss = w_step(self.forward, self.w_params, self.w_optimizer, batch)
                loss_sum += loss
                step += 1
                if (i + 1) % 50 == 0 or i + 1 == self.steps_per_epoch:
                    bar.update(50 if (i + 1) % 50 == 0 else (i + 1) % 50)
                    bar.set_postfix(loss=f"{float(loss):.4f}", tau=f"{net.tau:.3f}")
            bar.close()
            mean_loss = float(loss_sum) / max(1, self.steps_per_epoch)
            if not math.isfinite(mean_loss):
                raise TrainingDivergedError(f"autodim search diverged in epoch {epoch + 1} (loss "
                                            f"{mean_loss}); try a lower train.lr or method.alpha_lr")
            valid = _validate(model, self.eval_loader)
            entry = {"epoch": epoch + 1, "train_loss": mean_loss, "valid_auc": valid["auc"],
                     "valid_logloss": valid["logloss"], "tau": net.tau, "steps": step,
                     "alpha_updates": alpha_updates, "seconds": time.perf_counter() - t0,
                     "dims": net.selected_widths(), "alpha": self._alpha_by_field()}
            history.append(entry)
            self._log(f"search epoch {epoch + 1}: train_loss={mean_loss:.5f} valid_auc={valid['auc']:.5f} "
                      f"tau={net.tau:.3f} dims={entry['dims']}")
        if alpha_updates == 0:  # argmax over equal weights would pick the smallest width everywhere
            raise ConfigError(
                f"autodim: alpha was never updated: the search ran {step} W-step(s), all of them "
                f"pre-training ({self.pretrain_steps} steps, alpha fixed); give the search more "
                f"steps (method.epochs, train.max_steps_per_epoch) or fewer pre-training steps "
                f"(method.pretrain_steps)")
        return SearchResult(model=model, supernet=net, history=history, steps=step,
                            alpha_updates=alpha_updates, seconds=time.perf_counter() - t_start)


def derive_plan(result: SearchResult, schema, method: str, options: dict[str, Any],
                budget: float | None = None, vocab_cap: bool = False) -> DimensionPlan:
    """Eq. 13: per field the candidate with the largest alpha; alpha and candidates in ``extra``.
    With ``budget`` (kappa), the most probable plan under alpha whose tables fit the budget. With
    ``vocab_cap`` every width is capped at its field's vocabulary (the budget counts the capped
    tables); ``extra["searched_dims"]`` keeps the uncapped argmax."""
    net = result.supernet
    searched = net.selected_widths()
    widths = net.field_candidates
    if vocab_cap:
        widths = capped_at_vocab(widths, schema.vocab_sizes)
    dims = [min(d, v) for d, v in zip(searched, schema.vocab_sizes, strict=True)] if vocab_cap else searched
    budget_record = None
    if budget is not None:
        log_alpha = net.log_alpha().detach().cpu().double()
        scores = [[float(log_alpha[i, net.widths.index(w)]) for w in cands]
                  for i, cands in enumerate(net.field_candidates)]
        limit = budget_params(schema.vocab_sizes, net.out_dim, budget)
        budget_record = {"kappa": float(budget), "max_params": limit, "argmax_dims": dims,
                         "argmax_params": sum(v * d for v, d in zip(schema.vocab_sizes, dims,
                                                                    strict=True))}
        dims = best_widths_under_budget(scores, widths, schema.vocab_sizes, limit)
    alpha = net.alpha().detach().cpu()
    names = schema.field_names
    extra = {
        "alpha": {n: [round(float(a), 6) for a, ok in zip(alpha[i], net.mask[i].tolist(), strict=True) if ok]
                  for i, n in enumerate(names)},
        "candidates": {n: c for n, c in zip(names, net.field_candidates, strict=True)},
        "searched_dims": searched,
        "vocab_cap": bool(vocab_cap),
        "search_history": result.history,
        "search_steps": result.steps,
        "alpha_updates": result.alpha_updates,
        "final_tau": net.tau,
        "search_embedding_params": net.embedding_params,
        "search_transform_params": net.transform_params,
    }
    if budget_record is not None:
        extra["budget"] = budget_record
    return DimensionPlan(method=method, field_names=names, vocab_sizes=schema.vocab_sizes, dims=dims,
                         full_dim=net.out_dim, schema_hash=schema.content_hash, options=options,
                         extra=extra)


def plan_under_budget(plan: DimensionPlan, kappa: float) -> DimensionPlan:
    """The plan an AutoDim search with ``budget: kappa`` derives, re-derived from the final alpha
    and candidates an (argmax or budget) AutoDim plan records in ``extra``: one search, plans at
    several budgets (alpha is stored to 6 decimals, enough for the same choices but in exact ties)."""
    import copy

    if "alpha" not in plan.extra or "candidates" not in plan.extra:
        raise ConfigError(f"plan of method {plan.method!r} records no alpha: only AutoDim plans can "
                          "be re-derived for a budget")
    check_kappa(kappa)
    names = plan.field_names
    widths = [list(plan.extra["candidates"][n]) for n in names]
    if plan.extra.get("vocab_cap"):
        widths = capped_at_vocab(widths, plan.vocab_sizes)
    scores = [[math.log(max(float(a), 1e-300)) for a in plan.extra["alpha"][n]] for n in names]
    limit = budget_params(plan.vocab_sizes, plan.full_dim, kappa)
    check_feasible(plan.vocab_sizes, widths, limit, kappa, plan.full_dim, plan.method)
    out = copy.deepcopy(plan)
    out.dims = best_widths_under_budget(scores, widths, plan.vocab_sizes, limit)
    previous = plan.extra.get("budget") or {}
    out.extra["budget"] = {"kappa": float(kappa), "max_params": limit,
                           "argmax_dims": previous.get("argmax_dims", list(plan.dims)),
                           "argmax_params": previous.get("argmax_params", plan.embedding_params)}
    out.options = {**plan.options, "budget": float(kappa)}
    return out


@torch.no_grad()
def inherit_searched_weights(model: RecModel, searched: RecModel, plan: DimensionPlan) -> None:
    """Copy the searched weights into the retraining ``model`` (the ``inherit`` option).

    Per field, the selected candidate's table and unifying transform, with the search BatchNorm's
    running statistics and the field's output scale ``k`` folded in (``k (x W + b - mu) / s`` ->
    ``k W / s``, ``k (b - mu) / s``); a
    retrained field without alignment gets its unified rows ``xhat`` directly, a padded one
    ``(x - mu) / s``. The rest of the network (first-order part, interaction body) is copied when its
    shapes match. The shift ``(b - mu) / s`` is dropped when the retrained alignment has no bias.
    """
    net: SupernetEmbedding = searched.embedding
    emb = model.embedding
    if emb is None:
        return
    for i in emb.kept_fields:
        d = plan.dims[i]
        n = net.widths.index(d)
        lo, hi = int(net.offsets[i]), int(net.offsets[i]) + net.vocab_sizes[i]
        table = net.table.weight[lo:hi, :d] if net.lookup == "shared" else net.tables[n].weight[lo:hi]
        means, variances = net.candidate_statistics(n)
        mu = means[i]
        s = torch.sqrt(variances[i] + net.norm.eps)
        if net.field_scale is not None:  # the per-field output scale folds into the normalisation
            s = s / net.field_scale[i]
        target = emb.field_weight(i)
        align = emb.field_alignment(i)
        if net.unify == "linear":
            w = net.weights[n][i] / s  # [d, D]
            b = ((net.biases[n][i] if net.biases is not None else 0.0) - mu) / s  # [D]
            if align is not None and align[0].shape == w.shape:
                target.copy_(table)
                align[0].copy_(w)
                if align[1] is not None:
                    align[1].copy_(b)
            elif target.shape[1] == w.shape[1]:  # retrained field without alignment, width D
                target.copy_(table @ w + b)
        else:
            rows = (table - mu) / s
            if target.shape == rows.shape:
                target.copy_(rows)
    for part in ("linear", "body"):
        src, dst = getattr(searched, part), getattr(model, part)
        if src is None or dst is None:
            continue
        src_state, dst_state = src.state_dict(), dst.state_dict()
        if src_state.keys() == dst_state.keys() and all(src_state[k].shape == dst_state[k].shape
                                                        for k in src_state):
            dst.load_state_dict(src_state)


@register
class AutoDim(SearchMethod):
    """AutoDim with bilevel (DARTS) optimisation; AD-2 (shared lookup, linear unify) by default."""

    name = "autodim"
    Options = AutoDimOptions
    joint = False  # AutoDim-s: W and alpha on the same training batch

    def __init__(self, options: AutoDimOptions | None = None, **option_values):
        super().__init__(options, **option_values)
        self.result: SearchResult | None = None
        if self.options.inherit and self.round_to > 1:
            raise ConfigError("method.inherit copies the searched tables at their searched widths; "
                              "it cannot be combined with method.round_to")

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        if self.options.vocab_cap and not self.options.caps_at_vocab:
            ctx.log(f"{self.name}: method.vocab_cap is not applied: it keeps the function class only "
                    "with unify: linear and without inherit")
        searcher = AutoDimSearch(dataset, ctx, self.options, joint=self.joint)
        self.result = searcher.run()
        opts = dataclasses.asdict(self.options)
        return derive_plan(self.result, dataset.schema, self.name, opts, budget=self.options.budget,
                           vocab_cap=self.options.caps_at_vocab)

    def check_model(self, model_options) -> None:
        require_embedding_layer(self.name, model_options)

    def check_dataset(self, dataset) -> None:
        """Refuse, before anything is written, a budget below the narrowest plan."""
        if self.options.budget is None:
            return
        schema = dataset.schema
        widths = self.options.field_candidates(schema.field_names)
        full = max(max(w) for w in widths)
        if self.options.caps_at_vocab:
            widths = capped_at_vocab(widths, schema.vocab_sizes)
        check_feasible(schema.vocab_sizes, widths, budget_params(schema.vocab_sizes, full,
                                                                 self.options.budget),
                       self.options.budget, full, self.name)

    def retrain_model_options(self, model_options: ModelOptions, plan: DimensionPlan) -> ModelOptions:
        """The retrained model keeps the search's unifying method (sec. 2.4.2): ``unify: pad``
        (AD-1, AD-3) retrains with zero padding, ``linear`` with the linear alignment; it aligns
        to the largest candidate unless the model config sets ``aligned_dim`` itself or
        ``retrain_align: plan``; the linear alignment has eq. 1's bias ``b_n`` unless
        ``retrain_bias: false`` (then ``model.align_bias`` decides)."""
        align = "pad" if self.options.unify == "pad" else "linear"
        options = dataclasses.replace(model_options, align=align)
        if align == "linear" and self.options.retrain_bias:  # eq. 1: x W_n + b_n
            options = dataclasses.replace(options, align_bias=True)
        if self.options.retrain_align != "largest_candidate" or model_options.aligned_dim is not None:
            return options
        return dataclasses.replace(options, aligned_dim=int(plan.full_dim))

    def retrain_train_options(self, train, plan: DimensionPlan):
        """The retraining re-estimates the BatchNorm running statistics before each validation
        (``retrain_bn_recalibration`` batches; the paper is silent on them). Eq. 1's ``b_n``
        shifts a field's whole embedding; the MLP's BatchNorm removes that shift in training, so
        Adam moves ``b_n`` on rounding noise (W&D) or on the FM part's gradient (DeepFM) faster
        than the running averages follow, and the model evaluated with them is off
        (docs/autodim.md, "Retraining at small widths"). ``train.bn_recalibration`` set in the
        experiment wins; under ``train.parallel: torchrec`` nothing is changed."""
        batches = self.options.retrain_bn_recalibration
        if train.bn_recalibration or not batches or train.parallel == "torchrec":
            return train
        return dataclasses.replace(train, bn_recalibration=batches)

    def init_retrain_model(self, model, plan, ctx: SearchContext) -> None:
        if not self.options.inherit:
            return
        if self.result is None:
            raise ConfigError("method.inherit: the searched weights are only available in the run "
                              "that searched (not when retraining a saved plan)")
        inherit_searched_weights(model, self.result.model, plan)
        ctx.log("retrain: inherited the searched weights")


@dataclass
class AutoDimSOptions(AutoDimOptions):
    update_every: int = 1  # AutoDim-s updates alpha with W at every step


@register
class AutoDimS(AutoDim):
    """AutoDim-s (sec. 3.4): ``W`` and ``alpha`` descend the same training-batch loss together."""

    name = "autodim-s"
    Options = AutoDimSOptions
    joint = True


def _variant(name: str, lookup: str, unify: str) -> type[AutoDim]:
    options = dataclass(type(f"{name.upper().replace('-', '')}Options", (AutoDimOptions,),
                             {"__annotations__": {"lookup": str, "unify": str},
                              "lookup": lookup, "unify": unify}))
    cls = type(f"AutoDim{name.upper().replace('-', '')}", (AutoDim,),
               {"name": name, "Options": options,
                "__doc__": f"AutoDim component variant {name.upper()} (sec. 3.5): {lookup} lookup, "
                           f"{unify} unify."})
    return register(cls)


AD1 = _variant("ad-1", "shared", "pad")
AD2 = _variant("ad-2", "shared", "linear")
AD3 = _variant("ad-3", "separate", "pad")
AD4 = _variant("ad-4", "separate", "linear")
