"""Sharded training on TorchRec (``train.parallel: torchrec``): a plan's mixed-width tables as an
``EmbeddingBagCollection`` sharded by ``DistributedModelParallel``, launched with ``torchrun``.

Under ``train.parallel: ddp`` (the default) every process holds every table
(:mod:`embdim.distributed`). Under ``torchrec`` the model's :class:`~embdim.nn.embedding.FieldEmbedding`
is replaced by a :class:`KJTFieldEmbedding`: one TorchRec table per kept field (the tables of
:func:`embdim.export.torchrec.torchrec_export`, exact widths), read through a
``KeyedJaggedTensor`` and aligned exactly as the ``FieldEmbedding`` aligns them; the model is then
wrapped in ``DistributedModelParallel``:

* the **tables** are sharded (each lives on one process with ``table_wise``; on CUDA the planner
  may also choose ``row_wise``, ``table_row_wise`` or ``column_wise``) and trained by FBGEMM's fused
  ``EXACT_ROWWISE_ADAGRAD`` in the backward pass, with ``train.lr`` and eps ``1e-8`` — the rule of
  ``train.optimizer: rowwise_adagrad`` (:class:`embdim.train.optim.RowwiseAdagrad`), so that one
  process and ``W`` processes train the same model with the same optimiser. TorchRec divides the
  tables' gradients by ``W`` (``comm_ops.GRADIENT_DIVISION``): each process's loss is the mean over
  its ``B / W`` rows, so the tables see the gradient of the global batch's mean loss, as the
  dense parameters do under DDP;
* every **other parameter** (alignment, body, first-order weights) is replicated and wrapped in
  DDP by ``DistributedModelParallel``; the first-order weights are trained by the same row-wise
  Adagrad (dense gradients: a row whose gradient is zero does not move), the rest by Adam.

Limits: every kept width must be a multiple of 4 (FBGEMM's kernels; ``method.round_to: 4``);
per-value widths (MDE ``blocks``) are not supported; on CPU the tables are forced ``table_wise``
(TorchRec 1.8 offers ``row_wise``, ``table_row_wise`` and ``grid_shard`` on CUDA only, and its
planner would put small tables ``data_parallel``, not sharded); no checkpoint files are written and
``--resume`` is refused (the sharded tables' state is not in embdim's checkpoint format).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from embdim import distributed
from embdim.errors import ConfigError
from embdim.export.torchrec import require_torchrec, table_name
from embdim.nn.embedding import EMBEDDING_INIT_STD, FieldEmbedding
from embdim.train.optim import ROWWISE_ADAGRAD_EPS, RowwiseAdagrad, make_adam

KERNEL_MULTIPLE = 4  # FBGEMM's table-batched kernels accept widths that are multiples of 4


def _init_rows(weight: Tensor) -> None:
    """The library's embedding initialisation N(0, 1e-4^2), for TorchRec's ``init_fn``."""
    with torch.no_grad():
        weight.normal_(0.0, EMBEDDING_INIT_STD)


def check_widths(source: FieldEmbedding) -> None:
    """Refuse kept widths that FBGEMM's sharded kernels do not take (not multiples of 4)."""
    odd = sorted({source.dims[i] for i in source.kept_fields if source.dims[i] % KERNEL_MULTIPLE})
    if odd:
        raise ConfigError(f"train.parallel torchrec: widths {odd} are not multiples of "
                          f"{KERNEL_MULTIPLE} (FBGEMM's sharded kernels need them): set "
                          f"method.round_to: {KERNEL_MULTIPLE}")


class KJTFieldEmbedding(nn.Module):
    """A :class:`FieldEmbedding`'s computation on a TorchRec ``EmbeddingBagCollection``.

    ``ids [B, F_all]`` -> ``KeyedJaggedTensor`` (one feature per kept field, one id per example:
    lengths 1, values field-major) -> pooled ``[B, d_i]`` per table (SUM of one row = the row) ->
    aligned like the ``FieldEmbedding`` (linear ``W_i (+ b_i)``, zero padding, fixed scatter, or none
    when every width is the output width) -> ``[B, F_kept, out_dim]`` in input order.
    The tables start from N(0, 1e-4^2) (:func:`shard_model` then copies the ``FieldEmbedding``'s rows
    in), the alignment from the ``FieldEmbedding``'s values.
    """

    def __init__(self, source: FieldEmbedding, device: torch.device):
        super().__init__()
        torchrec = require_torchrec()
        check_widths(source)
        widths = [source.dims[i] for i in source.kept_fields]
        self.kept_fields = list(source.kept_fields)
        self.vocab_sizes, self.dims = list(source.vocab_sizes), list(source.dims)
        self.widths, self.out_dim, self.align = widths, source.out_dim, source.align
        self.uniform = source.uniform
        self.features = [f"f{i}" for i in self.kept_fields]  # KJT keys, one per kept field
        tables = []
        for i, w in zip(self.kept_fields, widths, strict=True):
            tables.append(torchrec.EmbeddingBagConfig(
                name=table_name(f"f{i}"), embedding_dim=w, num_embeddings=self.vocab_sizes[i],
                feature_names=[f"f{i}"], pooling=torchrec.PoolingType.SUM, init_fn=_init_rows))
        self.ebc = torchrec.EmbeddingBagCollection(tables=tables, device=device)
        self.register_buffer("cols", torch.tensor(self.kept_fields, dtype=torch.long), persistent=False)
        # The alignment, per kept field, from the source (same initial values).
        self.align_weight = nn.ParameterList()
        self.align_bias = nn.ParameterList()
        if not self.uniform:
            for i in self.kept_fields:
                linear = source.field_alignment(i)
                if linear is not None:
                    w, b = linear
                    self.align_weight.append(nn.Parameter(w.detach().clone()))
                    if b is not None:
                        self.align_bias.append(nn.Parameter(b.detach().clone()))
                placed = source.field_placement(i)
                if placed is not None:
                    self.register_buffer(f"placement_{i}", placed.detach().clone())

    @property
    def num_fields(self) -> int:
        return len(self.dims)

    @property
    def num_output_fields(self) -> int:
        return len(self.kept_fields)

    @property
    def embedding_params(self) -> int:
        """``sum(vocab_i * d_i)`` over the kept fields, as the plan counts (all processes together)."""
        return sum(self.vocab_sizes[i] * self.dims[i] for i in self.kept_fields)

    @property
    def alignment_params(self) -> int:
        return sum(p.numel() for p in self.align_weight) + sum(p.numel() for p in self.align_bias)

    def kjt(self, ids: Tensor):
        """The ``KeyedJaggedTensor`` of a batch ``ids [B, F_all]``: key ``f<i>`` per kept field ``i``,
        its column's ids (int64), one per example."""
        from torchrec import KeyedJaggedTensor

        values = ids.index_select(1, self.cols).t().reshape(-1).long()
        lengths = torch.ones(values.numel(), dtype=torch.int32, device=ids.device)
        return KeyedJaggedTensor(keys=self.features, values=values, lengths=lengths)

    def forward(self, ids: Tensor) -> Tensor:
        pooled = self.ebc(self.kjt(ids)).to_dict()
        out = []
        for k, feature in enumerate(self.features):
            emb = pooled[feature]  # [B, d_i]
            if self.uniform:
                pass
            elif self.align == "linear":
                emb = emb @ self.align_weight[k]
                if len(self.align_bias):
                    emb = emb + self.align_bias[k]
            elif self.align == "scatter":
                emb = emb @ getattr(self, f"placement_{self.kept_fields[k]}")
            elif emb.shape[1] < self.out_dim:  # pad
                emb = F.pad(emb, (0, self.out_dim - emb.shape[1]))
            out.append(emb)
        return torch.stack(out, dim=1)


class ShardedOptimizer:
    """Adam on the replicated dense parameters, row-wise Adagrad on the replicated first-order
    tables; the sharded tables are updated inside the backward pass by FBGEMM's fused optimiser
    (``dmp.fused_optimizer``). The optimiser interface the trainer uses."""

    def __init__(self, dmp: nn.Module, linear_tables: list[nn.Parameter], *, lr: float):
        table_ids = {id(p) for p in linear_tables}
        dense = [p for name, p in dmp.named_parameters()
                 if ".ebc." not in f".{name}" and id(p) not in table_ids and p.requires_grad]
        self.dense = make_adam(dense, lr=lr)
        self.rows = RowwiseAdagrad(linear_tables, lr=lr) if linear_tables else None
        self.fused = dmp.fused_optimizer
        self.param_groups = self.dense.param_groups + (self.rows.param_groups if self.rows else [])

    def zero_grad(self, set_to_none: bool = True) -> None:
        self.dense.zero_grad(set_to_none=set_to_none)
        if self.rows is not None:
            self.rows.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        self.dense.step()
        if self.rows is not None:
            self.rows.step()

    def state_dict(self) -> dict[str, Any]:
        raise ConfigError("train.parallel torchrec writes no checkpoints")

    def load_state_dict(self, state: dict[str, Any]) -> None:
        raise ConfigError("train.parallel torchrec does not resume from checkpoints")


def shard_model(model: nn.Module, *, lr: float, device: torch.device) -> tuple[nn.Module, ShardedOptimizer]:
    """Replace ``model.embedding`` (a :class:`FieldEmbedding`) by a :class:`KJTFieldEmbedding`, shard
    its tables with ``DistributedModelParallel`` and return ``(dmp, optimiser)``. Every process
    must call this (the sharding plan is agreed collectively)."""
    require_torchrec()
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from torchrec.distributed.embeddingbag import EmbeddingBagCollectionSharder
    from torchrec.distributed.model_parallel import DistributedModelParallel
    from torchrec.distributed.planner import EmbeddingShardingPlanner, ParameterConstraints, Topology

    source = getattr(model, "embedding", None)
    if not isinstance(source, FieldEmbedding):
        raise ConfigError("train.parallel torchrec trains models whose embedding is a FieldEmbedding "
                          f"(the base models of a plan); this model's is {type(source).__name__}")
    check_widths(source)
    if not distributed.is_distributed():
        raise ConfigError("train.parallel torchrec needs torchrun (2 or more processes): "
                          "torchrun --nproc_per_node=N -m embdim ...")
    model.embedding = KJTFieldEmbedding(source, device)
    linear_tables = [m.row_table() for m in model.modules() if hasattr(m, "sparse_rows")]
    sharder = EmbeddingBagCollectionSharder(fused_params={
        "optimizer": EmbOptimType.EXACT_ROWWISE_ADAGRAD, "learning_rate": lr,
        "eps": ROWWISE_ADAGRAD_EPS})
    sharding_types = (["table_wise", "row_wise", "table_row_wise", "column_wise"]
                      if device.type == "cuda" else ["table_wise"])
    constraints = {cfg.name: ParameterConstraints(sharding_types=sharding_types, compute_kernels=["fused"])
                   for cfg in model.embedding.ebc.embedding_bag_configs()}
    planner = EmbeddingShardingPlanner(
        topology=Topology(world_size=distributed.world_size(), compute_device=device.type),
        constraints=constraints)
    plan = planner.collective_plan(model, [sharder], torch.distributed.GroupMember.WORLD)
    dmp = DistributedModelParallel(model, device=device, plan=plan, sharders=[sharder])
    _copy_rows(dmp, source)
    return dmp, ShardedOptimizer(dmp, linear_tables, lr=lr)


def _copy_rows(dmp: nn.Module, source: FieldEmbedding) -> None:
    """Start the sharded tables from the ``FieldEmbedding``'s rows: each process writes its shards
    (row and column offsets from the shard metadata), so that the model starts where one process
    would."""
    state = dmp.state_dict()
    with torch.no_grad():
        for i in source.kept_fields:
            value = state[f"embedding.ebc.embedding_bags.{table_name(f'f{i}')}.weight"]
            rows = source.field_weight(i)
            for shard in value.local_shards():
                (r0, c0), (nr, nc) = shard.metadata.shard_offsets, shard.metadata.shard_sizes
                shard.tensor.copy_(rows[r0:r0 + nr, c0:c0 + nc])


def sharding_summary(dmp: nn.Module) -> str:
    """One line: each table's sharding type and ranks, from the DMP's plan."""
    parts = []
    for module_plan in dmp.plan.plan.values():
        for table, spec in module_plan.items():
            ranks = sorted({r for r in (spec.ranks or [])})
            parts.append(f"{table}:{spec.sharding_type}@{ranks}")
    return ", ".join(parts)


def _local(value: Any) -> Tensor | None:
    """A state-dict entry's tensor on this process: a plain tensor, or a ShardedTensor's one local
    shard (None when this process holds no shard of it)."""
    if isinstance(value, Tensor) and not hasattr(value, "local_shards"):
        return value
    shards = value.local_shards()
    return shards[0].tensor if shards else None


def snapshot(dmp: nn.Module) -> dict[str, Tensor]:
    """A copy of this process's part of the model: replicated tensors and its table shards."""
    out = {}
    for k, v in dmp.state_dict().items():
        t = _local(v)
        if t is not None:
            out[k] = t.detach().clone()
    return out


def restore(dmp: nn.Module, saved: dict[str, Tensor]) -> None:
    """Write a :func:`snapshot` back in place (into the fused kernels' own weight storage)."""
    with torch.no_grad():
        for k, v in dmp.state_dict().items():
            t = _local(v)
            if t is not None:
                t.copy_(saved[k])
