"""A dimension plan as a drop-in embedding module for a model of your own.

:class:`PlanEmbedding` reads the ids of every field of the dataset, ``[B, F_all]`` (int32/int64, the
prepared dataset's field-local ids; a dropped field's column is read by nothing), and returns

* ``output="stack"`` (default): the kept fields' embeddings aligned to one width, ``[B, F, D]`` — what
  models with interactions between fields (FM, attention, inner products) need, and what every
  embdim base model reads. ``align`` and ``out_dim`` as in :class:`~embdim.nn.embedding.FieldEmbedding`
  (a plan with MDE frequency blocks gets :class:`~embdim.nn.block_embedding.BlockFieldEmbedding`);
* ``output="concat"``: each kept field at its own width, concatenated in field order,
  ``[B, sum_i d_i]`` — for a model that flattens its embeddings into an MLP anyway; no alignment
  parameters at all.

It holds exactly ``plan.embedding_params`` table entries, initialised as the library does
(N(0, 1e-4^2)). ``PlanEmbedding.from_file("plan.json", schema)`` loads and checks a plan.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn

from embdim.errors import ConfigError
from embdim.nn.block_embedding import BlockFieldEmbedding
from embdim.nn.embedding import FieldEmbedding

OUTPUTS = ("stack", "concat")


class PlanEmbedding(nn.Module):
    """The mixed-width embedding of a :class:`~embdim.plan.DimensionPlan` (module docstring).

    Args:
        plan: the plan (``dims[i] = 0`` drops field ``i``).
        output: ``"stack"`` -> ``[B, F, D]`` or ``"concat"`` -> ``[B, sum_i d_i]``.
        align, out_dim, bias: ``stack`` only: how mixed widths reach ``D`` (``"linear"``: ``x_i W_i``,
            ``"pad"``: zeros, ``"scatter"``: the plan's ``kept_indices``), ``D`` (default: the largest
            width) and whether ``W_i`` has a bias.
        schema: the dataset's :class:`~embdim.data.schema.Schema`, to refuse a plan searched on
            another dataset.

    Attributes: ``kept_fields`` (input columns read), ``field_names`` (their names),
    ``out_features`` (``D`` for stack, ``sum_i d_i`` for concat), ``num_output_fields``,
    ``embedding_params`` (= ``plan.embedding_params``).
    """

    def __init__(self, plan, *, output: str = "stack", align: str = "linear", out_dim: int | None = None,
                 bias: bool = False, schema=None):
        super().__init__()
        if output not in OUTPUTS:
            raise ConfigError(f"output must be one of {', '.join(OUTPUTS)}, got {output!r}")
        if schema is not None:
            plan.check_schema(schema)
        blocks = "blocks" in (plan.value_dim_rule or {})
        if blocks and output == "concat":
            raise ConfigError("a plan with per-frequency-block widths (MDE blocks) has one width per "
                              "block, not per field: use output='stack'")
        self.output = output
        if blocks:
            self.layer = BlockFieldEmbedding.from_plan(plan, align=align, out_dim=out_dim, bias=bias)
        elif output == "stack":
            self.layer = FieldEmbedding.from_plan(plan, align=align, out_dim=out_dim, bias=bias)
        else:  # each field at its own width: the layer's width groups, unaligned
            self.layer = FieldEmbedding(plan.vocab_sizes, plan.dims, align="pad",
                                        out_dim=max(plan.dims))
            for g in self.layer.groups:
                g.align = None
        self.kept_fields = list(self.layer.kept_fields)
        self.field_names = [plan.field_names[i] for i in self.kept_fields]
        self.dims = [int(plan.dims[i]) for i in self.kept_fields]
        if output == "concat":
            # the groups come out in width order; ``_order`` puts the fields back in input order
            slots = {f: k for k, f in enumerate(self.kept_fields)}
            order = [slots[f] for g in self.layer.groups for f in g.fields.tolist()]
            self._in_order = order == sorted(order)
            self.register_buffer("_order", torch.tensor(order).argsort(), persistent=False)

    @classmethod
    def from_file(cls, path: str | Path, schema=None, **kwargs) -> PlanEmbedding:
        """From a ``plan.json`` (checked against ``schema`` when given)."""
        from embdim.plan import DimensionPlan

        return cls(DimensionPlan.load(path), schema=schema, **kwargs)

    @property
    def out_features(self) -> int:
        return sum(self.dims) if self.output == "concat" else int(self.layer.out_dim)

    @property
    def num_output_fields(self) -> int:
        return len(self.kept_fields)

    @property
    def out_dim(self) -> int:
        return int(self.layer.out_dim)

    @property
    def embedding_params(self) -> int:
        return int(self.layer.embedding_params)

    def forward(self, ids: Tensor) -> Tensor:
        """ids ``[B, F_all]`` -> ``[B, F, D]`` (stack) or ``[B, sum_i d_i]`` (concat)."""
        if self.output == "stack":
            return self.layer(ids)
        select = self.layer._select
        parts = [g(ids, select=select).flatten(1) for g in self.layer.groups]  # [B, F_g * w_g] each
        if len(parts) == 1:
            return parts[0]
        if self._in_order:
            return torch.cat(parts, dim=1)
        fields = [p.view(p.shape[0], len(g.fields), g.width).unbind(1)
                  for p, g in zip(parts, self.layer.groups, strict=True)]
        flat = [f for group in fields for f in group]  # per field, in group order
        return torch.cat([flat[i] for i in self._order.tolist()], dim=1)

    def extra_repr(self) -> str:
        return f"output={self.output}, fields={self.field_names}, dims={self.dims}"
