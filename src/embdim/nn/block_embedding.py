"""Per-frequency-block mixed-dimension embeddings (Ginart et al., "Mixed Dimension Embeddings with
Application to Memory-Efficient Recommendation Systems", 2021): MDE's block variant.

The values of every field are split into frequency blocks; block ``k`` of a field has its own table
``T_k [n_k, d_k]`` and a projection ``P_k [d_k, D]`` to the common width ``D`` (``align="linear"``,
MDE's projection; ``"pad"`` zero-pads instead and has no parameters). ``P_k`` starts as
``[I_{d_k} | 0]`` and the tables as N(0, 1e-4^2), like :class:`~embdim.nn.embedding.FieldEmbedding`.

A block is given as a dict ``{"start": a, "stop": b, "dim": d}`` (optionally with
``"reserved_ids": [...]``): it holds the value ids ``a .. b - 1`` plus the listed reserved ids (0 =
OOV, 1 = missing), which are not part of the contiguous frequency order of the value ids (see
:func:`frequency_blocks`). The blocks of a field must hold each of its ids exactly once.

A block of width 0 (NIS: a vocabulary bucket given no embedding block) has no table and no
projection: its ids read a zero vector, as values outside the vocabulary would; a field all of whose
blocks have width 0 is dropped.

Forward (baseline, simple and loop-free over rows): every step builds the projected table of every
block, ``T_k @ P_k [n_k, D]``, concatenates all blocks of all fields into one ``[sum vocab, D]``
matrix and reads it with ONE gather (ids + per-field offsets, remapped to the block-ordered rows).
The cost is ``~ sum_k n_k * d_k * D`` per step whatever the batch size: fine for the small and
medium vocabularies of a baseline, wasteful for multi-million-id fields (projecting only the rows a
batch reads would be the next step).
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from embdim.nn.embedding import _offsets, init_embedding_

ALIGN_MODES = ("linear", "pad")  # a block has no SSEDS coordinates to scatter to
BLOCK_SPLITS = ("mass", "count")  # frequency_blocks: equal frequency mass (MDE) or equal id counts


def block_ids(block: dict[str, Any]) -> list[int]:
    """The ids a block holds, in its row order: the value range, then its reserved ids."""
    return list(range(int(block["start"]), int(block["stop"]))) + [int(i) for i in
                                                                   block.get("reserved_ids", [])]


def block_size(block: dict[str, Any]) -> int:
    """``n_k``: the number of ids in a block."""
    return int(block["stop"]) - int(block["start"]) + len(block.get("reserved_ids", []))


def frequency_order(counts, reserved: int = 2) -> list[int]:
    """One field's ids from most to least frequent: the value ids ``>= reserved`` in id order (the
    prepared data sorts them by descending training count), each reserved id (OOV, missing) inserted
    after the values of greater or equal count."""
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    order = list(range(reserved, n))
    for r in range(min(reserved, n)):  # insert each reserved id after the values of >= its count
        pos = int(np.searchsorted(-counts[order], -counts[r], side="right")) if order else 0
        # the values are descending, so -counts is ascending: ``side="right"`` puts ties first
        order.insert(pos, r)
    return order


def frequency_blocks(counts, num_blocks: int, reserved: int = 2, *,
                     split: str = "mass") -> list[list[int]]:
    """Split one field's ids into at most ``num_blocks`` frequency blocks of about equal mass (or
    of about equal numbers of ids, ``split="count"``).

    ``counts[i]`` is id ``i``'s training count; the value ids ``>= reserved`` are sorted by
    descending count (the prepared-data convention). The frequency order is the value ids in id order
    with each reserved id (OOV, missing) inserted where its count places it (after the values of equal
    count: with no or few counts, they end in the least-frequent block). With ``split="mass"`` the
    order is cut where the cumulative count crosses ``k / num_blocks`` of the total (``k = 1 ..
    num_blocks - 1``; every id with a zero total: equal id counts); with ``split="count"`` after
    ``round(k * n / num_blocks)`` ids (NIS's vocabulary buckets). Empty blocks are dropped, so a
    field gets fewer blocks when a single id carries more than ``1 / num_blocks`` of the mass or it
    has fewer ids than blocks.

    Returns the blocks, most frequent first, each the list of its ids in frequency order.
    """
    if split not in BLOCK_SPLITS:
        raise ValueError(f"split must be one of {BLOCK_SPLITS}, got {split!r}")
    counts = np.asarray(counts, dtype=np.int64)
    n = len(counts)
    order = frequency_order(counts, reserved)
    mass = np.cumsum(counts[order])
    total = int(mass[-1]) if n else 0
    if total > 0 and split == "mass":
        cuts = [int(np.searchsorted(mass, k * total / num_blocks, side="left")) + 1
                for k in range(1, num_blocks)]
    else:
        cuts = [round(k * n / num_blocks) for k in range(1, num_blocks)]
    bounds = sorted({0, n, *(min(max(c, 0), n) for c in cuts)})
    return [order[a:b] for a, b in zip(bounds[:-1], bounds[1:], strict=True) if b > a]


def blocks_to_ranges(blocks: list[list[int]], reserved: int = 2) -> list[dict[str, Any]]:
    """Blocks as id lists (from :func:`frequency_blocks`) -> ``{"start", "stop"[, "reserved_ids"]}``."""
    out = []
    for ids in blocks:
        values = [i for i in ids if i >= reserved]
        start = values[0] if values else 0
        stop = values[-1] + 1 if values else 0
        if values and stop - start != len(values):
            raise ValueError(f"block values {values[:5]}... are not a contiguous id range")
        entry: dict[str, Any] = {"start": int(start), "stop": int(stop)}
        extra = sorted(int(i) for i in ids if i < reserved)
        if extra:
            entry["reserved_ids"] = extra
        out.append(entry)
    return out


class BlockFieldEmbedding(nn.Module):
    """Per-field, per-frequency-block embeddings projected to a common width ``out_dim``.

    Args:
        vocab_sizes: per field, the number of ids.
        blocks: per field, its blocks ``{"start", "stop", "dim"[, "reserved_ids"]}`` (module
            docstring); together they must hold each id ``0 .. vocab_size - 1`` exactly once. A block
            of ``dim`` 0 has no table: its ids read a zero vector (out of the vocabulary, NIS); a
            field whose blocks all have ``dim`` 0 is dropped (no output slot).
        align: ``"linear"`` (``P_k [d_k, D]``, MDE) or ``"pad"`` (zeros). When every block already has
            width ``out_dim`` there is no alignment at all.
        out_dim: ``D``; defaults to the largest block width.
        bias: add a per-block bias ``b_k [D]`` to the linear projection.

    Input ``ids [B, F]`` (int32 or int64), output ``[B, F_kept, out_dim]``.
    """

    def __init__(self, vocab_sizes: list[int], blocks: list[list[dict[str, Any]]], *,
                 align: str = "linear", out_dim: int | None = None, bias: bool = False):
        super().__init__()
        if len(vocab_sizes) != len(blocks):
            raise ValueError(f"{len(vocab_sizes)} vocab sizes but blocks for {len(blocks)} fields")
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.blocks = [[dict(b) for b in field] for field in blocks]
        rows = []  # per field, the block-ordered ids: row r of the field holds id rows[r]
        for f, (vocab, field) in enumerate(zip(self.vocab_sizes, self.blocks, strict=True)):
            if not field or any(int(b["dim"]) < 0 or block_size(b) < 1 for b in field):
                raise ValueError(f"field {f}: every block needs dim >= 0 and at least one id")
            ids = [i for b in field for i in block_ids(b)]
            if sorted(ids) != list(range(vocab)):
                raise ValueError(f"field {f}: the blocks must hold each id 0..{vocab - 1} exactly once")
            rows.append(ids)
        self.dims = [max(int(b["dim"]) for b in field) for field in self.blocks]
        self.kept_fields = [f for f, d in enumerate(self.dims) if d > 0]
        if not self.kept_fields:
            raise ValueError("every block of every field has dim 0: nothing to embed")
        self.out_dim = int(out_dim or max(self.dims))
        widths = [int(b["dim"]) for f in self.kept_fields for b in self.blocks[f] if int(b["dim"]) > 0]
        zero_blocks = any(int(b["dim"]) == 0 for f in self.kept_fields for b in self.blocks[f])
        self.align = None if all(w == self.out_dim for w in widths) else align
        if self.align == "pad" and max(widths) > self.out_dim:
            raise ValueError(f"align='pad' cannot shrink width {max(widths)} to out_dim {self.out_dim}")
        self.tables = nn.ParameterList(nn.Parameter(torch.empty(block_size(b), int(b["dim"])))
                                       for f in self.kept_fields for b in self.blocks[f]
                                       if int(b["dim"]) > 0)
        if self.align == "linear":
            self.projections = nn.ParameterList(nn.Parameter(torch.empty(w, self.out_dim)) for w in widths)
            self.biases = (nn.ParameterList(nn.Parameter(torch.empty(self.out_dim)) for _ in widths)
                           if bias else None)
        # global id of a kept field (offset + id) -> row of the concatenated block-ordered matrix
        kept_vocab = [self.vocab_sizes[f] for f in self.kept_fields]
        offsets = _offsets(kept_vocab)
        order = torch.tensor([int(off) + i for off, f in zip(offsets.tolist(), self.kept_fields, strict=True)
                              for i in rows[f]])
        remap = torch.empty_like(order)
        remap[order] = torch.arange(len(order))
        self._identity_rows = bool(torch.equal(order, torch.arange(len(order))))
        self._all_fields = len(self.kept_fields) == len(self.vocab_sizes)
        self._has_zero_blocks = zero_blocks
        self.register_buffer("offsets", offsets, persistent=False)
        self.register_buffer("remap", remap, persistent=False)
        self.register_buffer("kept_index", torch.tensor(self.kept_fields, dtype=torch.long),
                             persistent=False)
        self.reset_parameters()

    @classmethod
    def from_plan(cls, plan, *, align: str = "linear", out_dim: int | None = None,
                  bias: bool = False) -> BlockFieldEmbedding:
        """The embedding of a plan whose ``value_dim_rule`` carries ``blocks`` (MDE, ``blocks: K``)."""
        return cls(plan.vocab_sizes, plan.value_dim_rule["blocks"], align=align, out_dim=out_dim,
                   bias=bias)

    def reset_parameters(self) -> None:
        for t in self.tables:
            init_embedding_(t)
        if self.align == "linear":
            with torch.no_grad():
                for p in self.projections:
                    p.copy_(torch.eye(*p.shape))
            for b in self.biases or []:
                nn.init.zeros_(b)

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_output_fields(self) -> int:
        return len(self.kept_fields)

    @property
    def embedding_params(self) -> int:
        """Embedding-table entries: exactly ``sum_k n_k * d_k`` over all blocks of all fields."""
        return sum(t.numel() for t in self.tables)

    @property
    def alignment_params(self) -> int:
        """Parameters of the projections (and biases); 0 for ``pad`` or when no block needs one."""
        if self.align != "linear":
            return 0
        return sum(p.numel() for p in self.projections) + sum(b.numel() for b in self.biases or [])

    # ---- forward ------------------------------------------------------------------------------
    def projected_table(self) -> Tensor:
        """All blocks of the kept fields projected to ``out_dim``: ``[sum kept vocab, out_dim]``
        (block order; the rows of a ``dim 0`` block are zeros)."""
        parts, k = [], 0
        like = self.tables[0]
        for f in self.kept_fields:
            for b in self.blocks[f]:
                if int(b["dim"]) == 0:
                    parts.append(like.new_zeros(block_size(b), self.out_dim))
                    continue
                t = self.tables[k]
                if self.align == "linear":
                    t = t @ self.projections[k]
                    if self.biases is not None:
                        t = t + self.biases[k]
                elif self.align == "pad" and t.shape[1] < self.out_dim:
                    t = F.pad(t, (0, self.out_dim - t.shape[1]))
                parts.append(t)
                k += 1
        return torch.cat(parts, dim=0)

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] int32/int64 -> [B, F_kept, out_dim]."""
        if not self._all_fields:
            ids = ids.index_select(1, self.kept_index)
        rows = (ids + self.offsets).view(-1)  # int64 whatever the ids' dtype
        if not self._identity_rows:
            rows = self.remap.index_select(0, rows)
        return self.projected_table().index_select(0, rows).view(*ids.shape, self.out_dim)

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, kept={len(self.kept_fields)}, "
                f"blocks={[len(f) for f in self.blocks]}, out_dim={self.out_dim}, "
                f"align={self.align or 'none'}")
