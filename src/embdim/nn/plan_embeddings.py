"""Embeddings built from a plan's ``embedding`` entry: pruned (PEP, DeepLight) and quantised (DPQ,
MGQE) embeddings, which are not dense per-field tables of a plain width.

A method whose plan is not (only) per-field widths writes ``plan.embedding = {"kind": K, ...}``
(and, if it needs arrays such as a pruning mask, ``plan.payload``; see :mod:`embdim.plan`) and
registers a builder for ``K`` here::

    @register_embedding_kind("masked")
    def build_masked(plan, options):      # options: embdim.nn.models.ModelOptions
        return MaskedFieldEmbedding(...)

:func:`embdim.nn.models.build_model` then builds that embedding for every base model. A builder
returns a module with the interface of :class:`~embdim.nn.embedding.FieldEmbedding`: ``forward(ids
[B, F_all]) -> [B, F_kept, out_dim]`` and the attributes ``kept_fields``, ``num_output_fields``,
``out_dim`` and ``embedding_params`` (counted on the same basis as the plan's).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from embdim.errors import ConfigError

EMBEDDING_KINDS: dict[str, Callable[[Any, Any], nn.Module]] = {}


def register_embedding_kind(kind: str) -> Callable[[Callable], Callable]:
    """Decorator: register ``builder(plan, model_options) -> nn.Module`` for plans of ``kind``."""

    def register(builder: Callable[[Any, Any], nn.Module]) -> Callable[[Any, Any], nn.Module]:
        EMBEDDING_KINDS[kind] = builder
        return builder

    return register


def build_plan_embedding(plan, options) -> nn.Module:
    """The embedding module of a plan with an ``embedding`` entry (its ``kind``'s builder)."""
    kind = str(plan.embedding.get("kind", ""))
    if kind not in EMBEDDING_KINDS:
        raise ConfigError(f"the plan's embedding kind {kind!r} is unknown; known kinds: "
                          f"{sorted(EMBEDDING_KINDS)}")
    return EMBEDDING_KINDS[kind](plan, options)
