"""What the pruning methods (PEP, DeepLight) share: the search model over one full-width table, a
trainer that calls the method after every optimiser step, and the plan of a pruned embedding.

The search trains the experiment's base model with the method's embedding (every field at
``width``) through :class:`~embdim.train.trainer.Trainer`, so checkpoints and exact ``--resume``
work as for every training: the method's state that changes during training (a step counter, the
mask found so far) lives in buffers of the embedding module and travels in the checkpoints.
The search trains for its epochs without early stopping (pruning lowers the validation AUC on
purpose) and ends with the *last* weights, not the best-validation ones.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from embdim.nn.embedding import _offsets, init_embedding_
from embdim.nn.masked_embedding import field_dims_of_mask, masked_embedding_entry
from embdim.nn.models import MODELS, RecModel, build_model, resolve_model_name
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext
from embdim.train.trainer import FitResult, Trainer


class FullTableEmbedding(nn.Module):
    """One ``[sum_i vocab_i, width]`` table over every field (per-field row offsets), the
    interface of :class:`~embdim.nn.embedding.FieldEmbedding`; subclasses transform the looked-up
    rows (PEP's soft threshold) or the table (DeepLight's pruning)."""

    def __init__(self, vocab_sizes: list[int], width: int):
        super().__init__()
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.out_dim = int(width)
        self.kept_fields = list(range(len(self.vocab_sizes)))
        self.weight = nn.Parameter(torch.empty(sum(self.vocab_sizes), self.out_dim))
        init_embedding_(self.weight)
        self.register_buffer("offsets", _offsets(self.vocab_sizes), persistent=False)
        self.register_buffer("row_field", torch.repeat_interleave(  # [N] the field of each row
            torch.arange(len(self.vocab_sizes)), torch.tensor(self.vocab_sizes)), persistent=False)

    num_output_fields = property(lambda self: len(self.vocab_sizes))
    alignment_params = 0

    @property
    def embedding_params(self) -> int:
        return int(self.weight.numel())

    def rows(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> global row numbers [B, F] (int64)."""
        return ids + self.offsets



class PruningTrainer(Trainer):
    """The one trainer, with ``after_step()`` called after every optimiser step (a method may raise
    :class:`TargetReached` there to end the training), no CUDA graphs (the step is not static) and
    the last weights kept at the end."""

    def __init__(self, *args, after_step: Callable[[], None], **kwargs):
        super().__init__(*args, **kwargs)
        self._after_step = after_step
        self._use_graphs = False
        self.final_state: dict[str, Tensor] | None = None

    def _eager_step(self, ids: Tensor, labels: Tensor) -> None:
        super()._eager_step(ids, labels)
        self._after_step()

    def train_epoch(self, epoch: int):
        out = super().train_epoch(epoch)
        self.final_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
        return out

    def fit_to_end(self, *, resume: bool = True) -> FitResult:
        """``fit`` (resuming an interrupted search), leaving the last weights in the model."""
        fit = self.fit(resume=resume)
        if self.final_state is None and self._last_path is not None and self._last_path.exists():
            self.final_state = self._read(self._last_path)["model"]  # finished in an earlier run
        if self.final_state is not None:
            self.model.load_state_dict(self.final_state)
        return fit


class TargetReached(Exception):  # noqa: N818 - a signal, not an error
    """Raised from ``after_step`` to end a search when its target is reached."""


def search_train_config(ctx: SearchContext, epochs: int, **changes: Any):
    """The search's training options: the experiment's, for ``epochs``, without early stopping,
    CUDA graphs or compilation; ``train.optimizer: auto`` is Adam here (the pruning schedules and
    PEP's threshold step are the papers', written for dense Adam)."""
    optimizer = "adam" if ctx.train.optimizer == "auto" else ctx.train.optimizer
    return dataclasses.replace(ctx.train, epochs=epochs, early_stop=0, cuda_graphs=False,
                               compile=False, **{"optimizer": optimizer, **changes})


def build_search_model(ctx: SearchContext, vocab_sizes: list[int], embedding: nn.Module) -> RecModel:
    """The experiment's base model over ``embedding`` (every field at its width); a model without
    an embedding (``lr``) is built without it."""
    opts = dataclasses.replace(ctx.model_options, aligned_dim=None)
    if not getattr(MODELS[resolve_model_name(opts.name)], "uses_embedding", True):
        return build_model(opts.name, vocab_sizes, options=opts)
    return build_model(opts.name, vocab_sizes, options=opts, embedding=embedding)


def make_trainer(model: RecModel, dataset, cfg, ctx: SearchContext, stage: str,
                 after_step: Callable[[], None], fingerprint: dict[str, Any]) -> PruningTrainer:
    ckpt = Path(ctx.work_dir) / stage if ctx.work_dir else None
    return PruningTrainer(model, dataset, cfg, checkpoint_dir=ckpt, quiet=ctx.quiet, log=ctx.log,
                          fingerprint={"stage": stage, **fingerprint}, after_step=after_step)


def masked_plan(method: str, schema, mask: np.ndarray, width: int, options: dict[str, Any], *,
                payload: dict[str, np.ndarray], extra: dict[str, Any],
                entry_options: dict[str, Any] | None = None) -> DimensionPlan:
    """The plan of a pruned embedding: per field the width (0 = every entry pruned), the ``masked``
    embedding entry with its counts, the mask (and e.g. initial weights) as payload, and per field
    the kept entries and mean kept width in ``extra``."""
    mask = np.asarray(mask, dtype=bool)
    vocab = schema.vocab_sizes
    starts = np.cumsum([0, *vocab])
    per_field = {name: {"non_zero": int(mask[a:b].sum()), "entries": int((b - a) * width),
                        "mean_width": float(mask[a:b].sum(1).mean())}
                 for name, a, b in zip(schema.field_names, starts[:-1], starts[1:], strict=True)}
    return DimensionPlan(
        method=method, field_names=schema.field_names, vocab_sizes=vocab,
        dims=field_dims_of_mask(mask, vocab), full_dim=int(width), schema_hash=schema.content_hash,
        options=options, embedding=masked_embedding_entry(mask, **(entry_options or {})),
        payload={"mask": mask, **payload}, extra={"per_field": per_field, **extra})


def no_embedding_plan(method: str, schema, width: int, options: dict[str, Any]) -> DimensionPlan:
    """The plan for a model without an embedding (``lr``): nothing to prune; the retrained model
    is the plain first-order model and ``embedding_params`` is 0."""
    mask = np.ones((sum(schema.vocab_sizes), int(width)), dtype=bool)
    plan = masked_plan(method, schema, mask, width, options, payload={}, extra={
        "note": "the base model has no embedding table: nothing was pruned"})
    plan.embedding.update({"embedding_params": 0, "storage_params": 0,
                           "params_note": "the base model has no embedding table"})
    return plan


# ---- hand-over to the retrained model --------------------------------------------------------
def state_payload(prefix: str, model: nn.Module) -> dict[str, np.ndarray]:
    """``model``'s state as plain payload arrays ``{prefix/key: array}``."""
    return {f"{prefix}/{k}": v.detach().cpu().clone().numpy() for k, v in model.state_dict().items()}


def load_state_payload(model: nn.Module, payload: dict[str, np.ndarray], prefix: str) -> bool:
    """Load the arrays saved by :func:`state_payload` into ``model``; False if the plan has none."""
    state = {k[len(prefix) + 1:]: torch.from_numpy(np.array(v)) for k, v in payload.items()
             if k.startswith(prefix + "/")}
    if not state:
        return False
    model.load_state_dict(state)
    return True


@torch.no_grad()
def hand_over_(model: RecModel, source: RecModel, table: Tensor, vocab_sizes: list[int]) -> list[str]:
    """Start the retrained masked ``model`` from ``source`` (a search model): its embedding table
    ``table [sum_i vocab_i, D]`` (times the mask), first-order weights and body (the blocks of
    dropped fields cut out). Returns what could not be handed over."""
    from embdim.search.sseds import inherit_network_

    model.embedding.load_table_(table.to(model.embedding.mask.device))
    return inherit_network_(model, source.to(model.embedding.mask.device), vocab_sizes)


def target_problems(opts) -> list[str]:
    """What is wrong with the options every pruning method shares at its start: ``budget``
    (kappa in (0, 1]) and the pruned table's ``width``."""
    problems = []
    if isinstance(opts.budget, bool) or not 0 < float(opts.budget) <= 1:
        problems.append(f"method.budget must be in (0, 1], got {opts.budget!r}")
    if opts.width < 1:
        problems.append(f"method.width must be a positive integer, got {opts.width!r}")
    return problems


def training_problems(opts, retrains: tuple[str, ...]) -> list[str]:
    """What is wrong with the search-training options every pruning method shares:
    ``weight_decay``, ``epochs`` and ``retrain`` (one of ``retrains``)."""
    problems = []
    if opts.weight_decay < 0:
        problems.append(f"method.weight_decay must be >= 0, got {opts.weight_decay!r}")
    if opts.epochs is not None and opts.epochs < 1:
        problems.append(f"method.epochs must be a positive integer or null, got {opts.epochs!r}")
    if opts.retrain not in retrains:
        problems.append(f"method.retrain must be one of {', '.join(retrains)}, got "
                        f"{opts.retrain!r}")
    return problems

