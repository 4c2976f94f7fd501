"""The weight-sharing multi-size embedding of NIS (Joglekar et al., "Neural Input Search for Large
Scale Recommendation Models", KDD 2020, sec. 3): one supernet holding every Embedding Block.

Each field's ids, in descending training-frequency order, are split into vocabulary buckets
``s = 1 .. S`` (contiguous id ranges, :func:`~embdim.nn.block_embedding.frequency_blocks`); the
dimension is split into ``T`` blocks of ``block_dim`` columns. Embedding Block ``E_{s,t}`` is the
``[n_s, block_dim]`` slice of bucket ``s``'s rows and block ``t``'s columns, with its own projection
``P_{s,t} [block_dim, D]`` to the common width ``D = T * block_dim`` (sec. 3.1). An architecture
gives every bucket a number of blocks ``a_s in 0 .. T`` (a Multi-size Embedding, sec. 3.2); a value
``v`` of bucket ``s`` is embedded as::

    e_v = sum_{t <= a_s} E_{s,t}[v] @ P_{s,t}  =  E_s[v, :a_s * block_dim] @ P_s[:a_s * block_dim]

(``a_s = 0``: the zero vector, the value is out of the vocabulary). All architectures share these
weights (one-shot search): a training step updates only the blocks the sampled architecture uses.
Storing bucket ``s``'s blocks side by side as one ``[n_s, D]`` table and its projections stacked as
one ``[D, D]`` matrix makes the first-``a_s``-blocks sum a column mask, and the derived architecture
is exactly :class:`~embdim.nn.block_embedding.BlockFieldEmbedding` with ``dim = a_s * block_dim``
per bucket (same function class, same initialisation ``P = [I | 0]``, tables N(0, 1e-4^2)).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import Tensor, nn

from embdim.nn.block_embedding import block_ids
from embdim.nn.embedding import _offsets, init_embedding_


class MultiSizeSupernet(nn.Module):
    """Every Embedding Block of every field, with a settable architecture.

    Args:
        vocab_sizes: per field, the number of ids.
        buckets: per field, its vocabulary buckets ``{"start", "stop"[, "reserved_ids"]}``, most
            frequent first; together they hold each id of the field exactly once.
        block_dim: the width of one Embedding Block.
        num_blocks: ``T``, the blocks per bucket; the output width is ``T * block_dim``.

    ``architecture`` (a buffer ``[F, S]`` of block counts, ``S`` the most buckets of any field) is
    set with :meth:`set_architecture`; it starts at ``T`` everywhere (the full embedding). Input ids
    ``[B, F]``, output ``[B, F, T * block_dim]``.
    """

    def __init__(self, vocab_sizes: list[int], buckets: list[list[dict[str, Any]]], *,
                 block_dim: int, num_blocks: int):
        super().__init__()
        if len(vocab_sizes) != len(buckets):
            raise ValueError(f"{len(vocab_sizes)} vocab sizes but buckets for {len(buckets)} fields")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.buckets = [[dict(b) for b in field] for field in buckets]
        self.block_dim, self.num_blocks = int(block_dim), int(num_blocks)
        self.out_dim = self.block_dim * self.num_blocks
        self.kept_fields = list(range(len(self.vocab_sizes)))
        self.max_buckets = max(len(f) for f in self.buckets)
        slot = torch.empty(sum(self.vocab_sizes), dtype=torch.long)  # global id -> its bucket slot
        for off, vocab, field in zip(_offsets(self.vocab_sizes).tolist(), self.vocab_sizes,
                                     self.buckets, strict=True):
            ids = [i for b in field for i in block_ids(b)]
            if sorted(ids) != list(range(vocab)):
                raise ValueError(f"the buckets must hold each id 0..{vocab - 1} exactly once")
            for s, b in enumerate(field):
                slot[[off + i for i in block_ids(b)]] = s
        self.table = nn.Parameter(torch.empty(sum(self.vocab_sizes), self.out_dim))
        # P[f, s] = [P_{s,1}; ...; P_{s,T}] stacked: [D, D] per (field, bucket slot)
        self.projection = nn.Parameter(torch.empty(len(self.vocab_sizes), self.max_buckets,
                                                   self.out_dim, self.out_dim))
        self.register_buffer("offsets", _offsets(self.vocab_sizes), persistent=False)
        self.register_buffer("slot", slot, persistent=False)
        self.register_buffer("architecture", torch.full((len(self.vocab_sizes), self.max_buckets),
                                                        self.num_blocks, dtype=torch.long),
                             persistent=False)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_embedding_(self.table)
        with torch.no_grad():
            self.projection.copy_(torch.eye(self.out_dim).expand_as(self.projection))

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_output_fields(self) -> int:
        return self.num_fields

    @property
    def embedding_params(self) -> int:
        """Entries of every Embedding Block: ``sum vocab x T x block_dim``."""
        return self.table.numel()

    def set_architecture(self, blocks: Tensor) -> None:
        """``blocks [F, S]``: the number of Embedding Blocks of each field's buckets (0 .. T)."""
        self.architecture.copy_(blocks)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> [B, F, D]: each value's first ``a_s`` blocks, projected and summed."""
        rows = ids + self.offsets  # [B, F] int64
        x = self.table.index_select(0, rows.view(-1)).view(*ids.shape, self.out_dim)
        slot = self.slot.index_select(0, rows.view(-1)).view(ids.shape)  # [B, F]
        width = self.architecture.gather(1, slot.t()).t() * self.block_dim  # [B, F] columns kept
        cols = torch.arange(self.out_dim, device=ids.device)
        x = x * (cols < width.unsqueeze(-1)).to(x.dtype)
        if self.max_buckets == 1:
            return torch.einsum("bfk,fkd->bfd", x, self.projection[:, 0])
        # every bucket's projection at once (one batched matmul per field), then each row's own
        nf, nb, d = self.num_fields, ids.shape[0], self.out_dim
        stacked = self.projection.permute(0, 2, 1, 3).reshape(nf, d, self.max_buckets * d)
        y = torch.bmm(x.transpose(0, 1), stacked).view(nf, nb, self.max_buckets, d)
        pick = slot.t().reshape(nf, nb, 1, 1).expand(nf, nb, 1, d)
        return y.gather(2, pick).squeeze(2).transpose(0, 1)

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, buckets={[len(f) for f in self.buckets]}, "
                f"blocks={self.num_blocks} x {self.block_dim}")
