"""The base CTR models and :func:`build_model`.

A :class:`RecModel` is ``embedding`` (ids ``[B, F_all]`` -> aligned field embeddings ``[B, F, D]``)
+ optional ``linear`` (first-order part over the same kept fields, ids -> ``[B]``) + ``body`` (the
interaction part, ``[B, F, D]`` -> logits ``[B]``). The body never sees how the embeddings were made,
so a search method only swaps ``embedding`` (DESIGN.md, "The key separation").

Bodies (one small class each, registered by name):

* ``lr``       — logistic regression: the linear part only, no embedding;
* ``fm``       — FM (Rendle, ICDM 2010): linear + pairwise inner products;
* ``widedeep`` — Wide & Deep (Cheng et al., DLRS 2016): linear (wide) + MLP over the embeddings;
* ``deepfm``   — DeepFM (Guo et al., IJCAI 2017): linear + FM + MLP, sharing the embeddings;
* ``nfm``      — NFM (He & Chua, SIGIR 2017): linear + MLP over bi-interaction pooling;
* ``ipnn``     — IPNN (Qu et al., ICDM 2016): MLP over [embeddings, pairwise inner products];
* ``autoint``  — AutoInt (Song et al., CIKM 2019): stacked self-attention (+ MLP for AutoInt+).

MLP defaults follow the AutoDim paper, sec. 3.2: hidden [128, 128], BatchNorm, ReLU, dropout 0.2.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor, nn

from embdim.errors import ConfigError, SchemaMismatchError
from embdim.nn.block_embedding import BlockFieldEmbedding
from embdim.nn.embedding import ALIGN_MODES, FeaturesLinear, FieldEmbedding
from embdim.nn.layers import (
    MLP,
    BiInteraction,
    Dropout,
    FactorizationMachine,
    InnerProduct,
    Linear,
    SelfAttentionLayer,
)
from embdim.nn.plan_embeddings import build_plan_embedding
from embdim.plan import DimensionPlan

if TYPE_CHECKING:
    from embdim.data.schema import Schema


@dataclass
class ModelOptions:
    """Everything that shapes a base model besides the data and the dimension plan.

    The YAML ``model:`` section maps onto it one key to one field (``ModelOptions.from_dict``).
    """

    name: str = "deepfm"
    mlp: list[int] = field(default_factory=lambda: [128, 128])  # hidden widths of every MLP
    dropout: float = 0.2  # after each hidden MLP layer
    batch_norm: bool = True  # in each hidden MLP layer
    align: str = "linear"  # mixed widths -> out_dim: "linear" (W_i x + b_i), "pad" (zeros) or
    #                        "scatter" (columns at the plan's kept_indices, zeros elsewhere)
    aligned_dim: int | None = None  # the common width D; None: the plan's largest width
    align_bias: bool = False  # add b_i to the linear alignment (see docs/models.md: off by default)
    align_always: bool = False  # align every kept field even when all have width D (SSEDS eq. 13)
    linear_fields: str = "kept"  # first-order (wide/LR) weights for the "kept" fields or "all" fields
    # NFM: BatchNorm and dropout on the bi-interaction vector (NFM paper, sec. 3.1).
    bi_batch_norm: bool = True
    bi_dropout: float = 0.2
    # AutoInt (paper sec. 5.1.3: 3 layers, 2 heads, d' = 32 per head, residual connections).
    attention_layers: int = 3
    attention_heads: int = 2
    attention_dim: int = 32  # per head
    residual: bool = True
    attention_scaled: bool = False  # divide scores by sqrt(attention_dim) (the paper does not)
    use_mlp: bool = False  # AutoInt+: add an MLP over the flattened embeddings
    # Free-form options of a user-defined body (``name: mypkg.module:Class``); the built-in bodies
    # ignore them. The body reads them as ``opts.body_options``.
    body_options: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.mlp = list(self.mlp)
        problems = []
        if not all(isinstance(w, int) and w > 0 for w in self.mlp):
            problems.append(f"mlp must be a list of positive integers, got {self.mlp!r}")
        for key in ("dropout", "bi_dropout"):
            if not 0.0 <= getattr(self, key) < 1.0:
                problems.append(f"{key} must be in [0, 1), got {getattr(self, key)!r}")
        if self.align not in ALIGN_MODES:
            problems.append(f"align must be one of {', '.join(ALIGN_MODES)}, got {self.align!r}")
        if self.linear_fields not in ("kept", "all"):
            problems.append(f"linear_fields must be 'kept' or 'all', got {self.linear_fields!r}")
        if self.aligned_dim is not None and not (isinstance(self.aligned_dim, int) and self.aligned_dim > 0):
            problems.append(f"aligned_dim must be a positive integer or null, got {self.aligned_dim!r}")
        for key in ("attention_layers", "attention_heads", "attention_dim"):
            if not (isinstance(getattr(self, key), int) and getattr(self, key) > 0):
                problems.append(f"{key} must be a positive integer, got {getattr(self, key)!r}")
        if not isinstance(self.body_options, dict):
            problems.append(f"body_options must be a mapping, got {self.body_options!r}")
        if problems:
            raise ConfigError("model options: " + "; ".join(problems))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ModelOptions:
        """Build from a config mapping; unknown keys are an error naming the valid ones."""
        valid = [f.name for f in dataclasses.fields(cls)]
        unknown = sorted(set(d) - set(valid))
        if unknown:
            raise ConfigError(f"unknown model option(s) {', '.join(map(repr, unknown))}; "
                              f"valid options: {', '.join(valid)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ---- registry ---------------------------------------------------------------------------------
MODELS: dict[str, type[nn.Module]] = {}
ALIASES: dict[str, str] = {}


def register_model(name: str, *aliases: str) -> Callable[[type[nn.Module]], type[nn.Module]]:
    """Class decorator: make a body available to :func:`build_model` as ``name`` (and aliases).

    A body is built as ``cls(num_fields, dim, options)`` — ``num_fields`` = the kept fields ``F``
    (a plan's dropped fields are gone), ``dim`` = the aligned width ``D``, ``options`` the
    :class:`ModelOptions` (a user-defined body reads its own settings from ``options.body_options``)
    — and maps ``[B, F, D]`` to logits ``[B]`` (pre-sigmoid). Class attributes: ``wide = True`` adds
    the first-order :class:`FeaturesLinear` (default: no); ``uses_embedding = False`` marks a
    linear-only model (``lr``). A body can also be named by import path in a config
    (``model.name: mypkg.module:ClassName``, :func:`import_body`) without registering it.
    """
    def register(cls: type[nn.Module]) -> type[nn.Module]:
        MODELS[name] = cls
        ALIASES.update({a: name for a in aliases})
        return cls
    return register


def resolve_model_name(name: str) -> str:
    """The registered name of model ``name``: a built-in or registered name or alias
    (case-insensitive, ``-`` = ``_``), or ``module.path:ClassName``, a body class imported by path
    (:func:`import_body`)."""
    if ":" in str(name):
        return import_body(str(name).strip())
    key = name.strip().lower().replace("-", "_")
    key = ALIASES.get(key, key)
    if key not in MODELS:
        raise ConfigError(f"unknown model {name!r}; valid models: {', '.join(MODELS)}"
                          f" (aliases: {', '.join(f'{a}={n}' for a, n in ALIASES.items())}), or a "
                          "body class by import path, module.path:ClassName")
    return key


def import_body(path: str) -> str:
    """Import the body class ``module.path:ClassName`` and register it under ``path`` itself.

    The module must be importable: installed, on ``PYTHONPATH``, or a ``.py`` file (or package) in
    the current folder. Importing it runs its code, as any Python import does: name only modules you
    trust in a config. The class must be a ``torch.nn.Module`` built as ``cls(num_fields, dim,
    options)`` that maps ``[B, F, D]`` to logits ``[B]`` (see :func:`register_model`).
    """
    if path in MODELS:
        return path
    module_name, _, attr = path.partition(":")
    if not module_name or not attr or ":" in attr:
        raise ConfigError(f"model {path!r}: expected module.path:ClassName")
    try:
        module = _import_module(module_name)
    except ModuleNotFoundError as e:
        raise ConfigError(f"model {path!r}: cannot import {module_name!r} ({e}); the module must be "
                          "installed, on PYTHONPATH, or a file in the current folder") from None
    except Exception as e:  # the user's module failed while importing
        raise ConfigError(f"model {path!r}: importing {module_name!r} failed: {type(e).__name__}: {e}"
                          ) from e
    cls = getattr(module, attr, None)
    if cls is None:
        raise ConfigError(f"model {path!r}: module {module_name!r} has no {attr!r}")
    if not (isinstance(cls, type) and issubclass(cls, nn.Module)):
        raise ConfigError(f"model {path!r}: {attr} is not a torch.nn.Module class")
    MODELS[path] = cls
    return path


def _import_module(module_name: str):
    """``importlib.import_module``, retried with the current folder on the path (the ``embdim``
    console script does not put it there, ``python -m embdim`` does)."""
    import importlib
    import os
    import sys

    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as e:
        cwd = os.getcwd()
        if e.name != module_name.split(".")[0] or cwd in sys.path or "" in sys.path:
            raise
        sys.path.append(cwd)
        try:
            return importlib.import_module(module_name)
        finally:
            sys.path.remove(cwd)


def check_body(body: nn.Module, num_fields: int, dim: int, name: str) -> None:
    """Run a user-defined body once on ``[2, F, D]`` zeros (eval mode, no grad) and refuse, naming
    the model, one that does not return logits ``[2]``."""
    was_training = body.training
    body.eval()
    try:
        with torch.no_grad():
            out = body(torch.zeros(2, num_fields, dim))
    except Exception as e:
        raise ConfigError(f"model {name!r}: its body fails on embeddings of shape [2, {num_fields}, "
                          f"{dim}]: {type(e).__name__}: {e}") from e
    finally:
        body.train(was_training)
    if not isinstance(out, Tensor) or tuple(out.shape) != (2,):
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ConfigError(f"model {name!r}: its body maps [2, {num_fields}, {dim}] to {shape}; a body "
                          "must return one logit per example, shape [B]")


# ---- the model --------------------------------------------------------------------------------
class RecModel(nn.Module):
    """``logits [B] = body(embedding(ids)) + linear(ids)``; ids ``[B, F_all]`` int32/int64."""

    def __init__(self, embedding: nn.Module | None, body: nn.Module | None,
                 linear: FeaturesLinear | None = None, name: str = ""):
        super().__init__()
        if body is not None and embedding is None:
            raise ValueError("a body needs an embedding")
        if body is None and linear is None:
            raise ValueError("a model needs a body or a linear part")
        self.embedding, self.body, self.linear, self.name = embedding, body, linear, name

    @property
    def embedding_params(self) -> int:
        """Entries of the embedding tables (the first-order weights are not counted, as in plans)."""
        return 0 if self.embedding is None else int(self.embedding.embedding_params)

    @property
    def alignment_params(self) -> int:
        """Parameters of the alignment to one width (SSEDS' ``M_i``, AutoDim's ``W_i, b_i``)."""
        return int(getattr(self.embedding, "alignment_params", 0)) if self.embedding is not None else 0

    @property
    def kept_fields(self) -> list[int]:
        return list((self.embedding or self.linear).kept_fields)

    def auxiliary_loss(self) -> Tensor | None:
        """A loss term the embedding asks to add to the last training forward's loss (DPQ-VQ's
        codebook loss), or None; the trainer adds it to the binary cross-entropy."""
        pop = getattr(self.embedding, "pop_auxiliary_loss", None)
        return pop() if pop is not None else None

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F_all] -> logits [B] (pre-sigmoid)."""
        if self.body is None:
            return self.linear(ids)
        logits = self.body(self.embedding(ids))
        return logits if self.linear is None else logits + self.linear(ids)


# ---- bodies: [B, F, D] -> [B] ------------------------------------------------------------------
@register_model("lr", "logistic_regression")
class LR(nn.Module):
    """Logistic regression: the first-order part alone; no embedding, so plan widths are ignored
    (dropped fields stay dropped)."""

    wide, uses_embedding = True, False


@register_model("fm")
class FM(nn.Module):
    """FM: ``w_0 + sum_i w_i + sum_{i<j} <v_i, v_j>`` (the first two terms are ``RecModel.linear``)."""

    wide = True

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        self.fm = FactorizationMachine()

    def forward(self, emb: Tensor) -> Tensor:
        return self.fm(emb)


@register_model("widedeep", "wd", "wide_deep", "wide&deep")
class WideDeep(nn.Module):
    """Wide & Deep: linear part (wide) + MLP over the concatenated field embeddings (deep)."""

    wide = True

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        self.mlp = MLP(num_fields * dim, opts.mlp, opts.dropout, opts.batch_norm)

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(emb.flatten(1)).squeeze(1)


@register_model("deepfm")
class DeepFM(nn.Module):
    """DeepFM: linear + FM + MLP, the FM and MLP parts reading the same embeddings."""

    wide = True

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        self.fm = FactorizationMachine()
        self.mlp = MLP(num_fields * dim, opts.mlp, opts.dropout, opts.batch_norm)

    def forward(self, emb: Tensor) -> Tensor:
        return self.fm(emb) + self.mlp(emb.flatten(1)).squeeze(1)


@register_model("nfm")
class NFM(nn.Module):
    """NFM: linear + MLP over the bi-interaction vector (BatchNorm, dropout on it)."""

    wide = True

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        self.bi = nn.Sequential(BiInteraction(),
                                nn.BatchNorm1d(dim) if opts.bi_batch_norm else nn.Identity(),
                                Dropout(opts.bi_dropout))
        self.mlp = MLP(dim, opts.mlp, opts.dropout, opts.batch_norm)

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(self.bi(emb)).squeeze(1)


@register_model("ipnn", "pnn")
class IPNN(nn.Module):
    """IPNN: MLP over [flattened embeddings, all pairwise inner products]; no first-order part."""

    wide = False

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        self.product = InnerProduct(num_fields)
        self.mlp = MLP(num_fields * dim + self.product.num_pairs, opts.mlp, opts.dropout,
                       opts.batch_norm)

    def forward(self, emb: Tensor) -> Tensor:
        return self.mlp(torch.cat([emb.flatten(1), self.product(emb)], dim=1)).squeeze(1)


@register_model("autoint")
class AutoInt(nn.Module):
    """AutoInt: stacked multi-head self-attention over fields -> linear logit (+ MLP: AutoInt+)."""

    wide = False

    def __init__(self, num_fields: int, dim: int, opts: ModelOptions):
        super().__init__()
        layers, width = [], dim
        for _ in range(opts.attention_layers):
            layers.append(SelfAttentionLayer(width, opts.attention_dim, opts.attention_heads,
                                             opts.residual, opts.attention_scaled))
            width = layers[-1].out_dim
        self.attention = nn.Sequential(*layers)
        self.fc = Linear(num_fields * width, 1)
        self.mlp = MLP(num_fields * dim, opts.mlp, opts.dropout, opts.batch_norm) if opts.use_mlp else None

    def forward(self, emb: Tensor) -> Tensor:
        logits = self.fc(self.attention(emb).flatten(1)).squeeze(1)
        return logits if self.mlp is None else logits + self.mlp(emb.flatten(1)).squeeze(1)


MODEL_NAMES: tuple[str, ...] = tuple(MODELS)  # the built-in models: register new ones above


# ---- construction -----------------------------------------------------------------------------
def build_model(name: str, vocab_sizes_or_schema: Schema | list[int], plan: DimensionPlan | None = None,
                *, dim: int = 16, options: ModelOptions | dict[str, Any] | None = None,
                embedding: nn.Module | None = None) -> RecModel:
    """Build base model ``name`` for a dataset.

    Args:
        name: one of :data:`MODEL_NAMES` (or an alias such as ``wd``).
        vocab_sizes_or_schema: the dataset :class:`Schema` (the plan is checked against it) or the
            per-field vocabulary sizes.
        plan: per-field widths (``0`` drops a field); ``None``: every field at ``dim``. A plan with
            frequency blocks in ``value_dim_rule`` (MDE ``blocks: K``) gets a
            :class:`~embdim.nn.block_embedding.BlockFieldEmbedding`; one with an ``embedding``
            entry (pruned or quantised) the module its kind registered in
            :mod:`embdim.nn.plan_embeddings`.
        dim: the uniform width when there is no plan.
        options: :class:`ModelOptions` or a ``model:`` config mapping (``name`` may be omitted).
        embedding: a ready embedding module (a search supernet) used instead of building one from
            the plan; it must have ``kept_fields``, ``num_output_fields``, ``out_dim`` and
            ``embedding_params``, and the body is sized from it.
    """
    key = resolve_model_name(name)
    if options is None:
        options = ModelOptions(name=key)
    elif isinstance(options, dict):
        options = ModelOptions.from_dict({"name": key, **options})
    if resolve_model_name(options.name) != key:
        raise ConfigError(f"build_model({name!r}) was given options for model {options.name!r}")

    if hasattr(vocab_sizes_or_schema, "vocab_sizes"):  # a Schema
        vocab_sizes = vocab_sizes_or_schema.vocab_sizes
        if plan is not None:
            plan.check_schema(vocab_sizes_or_schema)
    else:
        vocab_sizes = [int(v) for v in vocab_sizes_or_schema]
        if plan is not None and plan.vocab_sizes != vocab_sizes:
            raise SchemaMismatchError(f"plan vocabulary sizes {plan.vocab_sizes} differ from the "
                                      f"model's {vocab_sizes}")
    dims = plan.dims if plan is not None else [int(dim)] * len(vocab_sizes)

    def first_order_fields(kept: list[int]) -> list[int]:
        return list(range(len(dims))) if options.linear_fields == "all" else list(kept)

    body_cls = MODELS[key]
    if not getattr(body_cls, "uses_embedding", True):
        if embedding is not None:
            raise ConfigError(f"model {key!r} has no embedding layer to replace")
        kept = [i for i, d in enumerate(dims) if d]
        return RecModel(None, None, FeaturesLinear(vocab_sizes, first_order_fields(kept)), name=key)
    if embedding is None and plan is not None and plan.embedding is not None:
        embedding = build_plan_embedding(plan, options)  # pruned / quantised (PEP, DPQ, ...)
    if embedding is None and plan is not None and "blocks" in (plan.value_dim_rule or {}):
        embedding = BlockFieldEmbedding.from_plan(plan, align=options.align, out_dim=options.aligned_dim,
                                                  bias=options.align_bias)  # MDE frequency blocks
    if embedding is None and plan is not None:
        embedding = FieldEmbedding.from_plan(plan, align=options.align, out_dim=options.aligned_dim,
                                             bias=options.align_bias, always_align=options.align_always)
    if embedding is None:
        embedding = FieldEmbedding(vocab_sizes, dims, align=options.align, out_dim=options.aligned_dim,
                                   bias=options.align_bias, always_align=options.align_always)
    body = body_cls(int(embedding.num_output_fields), int(embedding.out_dim), options)
    if key not in MODEL_NAMES:  # a user-defined body: check its contract once, with a clear message
        check_body(body, int(embedding.num_output_fields), int(embedding.out_dim), key)
    wide = getattr(body_cls, "wide", False)
    linear = FeaturesLinear(vocab_sizes, first_order_fields(embedding.kept_fields)) if wide else None
    return RecModel(embedding, body, linear, name=key)
