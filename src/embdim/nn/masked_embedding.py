"""Pruned embeddings: dense per-field tables times a fixed 0/1 mask (plan ``embedding.kind: masked``).

The retraining embedding of the pruning methods, PEP (Liu et al., ICLR 2021, sec. 3.2-3.3: the
pruned embedding retrained as a "winning ticket") and DeepLight (Deng et al., WSDM 2021, sec. 4:
the structurally pruned embedding). The plan carries the mask ``[sum_i vocab_i, D]`` (one row per
value of every field, fields in schema order) as its payload ``"mask"``; a field whose every entry
is pruned is dropped (plan ``dim 0``), the others have a dense ``[vocab_i, D]`` table whose
looked-up rows are multiplied by their mask rows. A pruned entry therefore contributes nothing and
gets no gradient.

Parameter accounting (the papers' convention): ``embedding_params`` counts the **non-zero
entries** (``mask.sum()``). What a sparse table really costs to store is reported beside it,
:func:`csr_storage_params`: compressed sparse rows, ``values + column indices + row pointers``,
each a 32-bit word: ``2 nnz + rows + 1``.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from embdim.errors import ConfigError
from embdim.nn.embedding import FieldEmbedding, _offsets
from embdim.nn.plan_embeddings import register_embedding_kind

NONZERO_NOTE = ("non-zero entries of the pruned embedding tables (the pruning papers' count); "
                "storage: CSR in 32-bit words, 2 x nnz + rows + 1")


def csr_storage_params(mask: np.ndarray) -> int:
    """32-bit words to store a table with this non-zero pattern ``[rows, D]`` in CSR form: values
    and column indices (one each per non-zero entry) and ``rows + 1`` row pointers."""
    mask = np.asarray(mask)
    return int(2 * np.count_nonzero(mask) + mask.shape[0] + 1)


def masked_embedding_entry(mask: np.ndarray, **options: Any) -> dict[str, Any]:
    """A plan's ``embedding`` entry for ``mask [sum_i vocab_i, D]``: kind, counts and note."""
    return {"kind": "masked", "embedding_params": int(np.count_nonzero(mask)),
            "storage_params": csr_storage_params(mask), "params_note": NONZERO_NOTE,
            "mask_shape": [int(s) for s in mask.shape], **options}


def field_dims_of_mask(mask: np.ndarray, vocab_sizes: list[int]) -> list[int]:
    """Per field: the table width ``D`` if any of its entries is kept, else 0 (dropped)."""
    starts = np.cumsum([0, *vocab_sizes])
    return [int(mask.shape[1]) if mask[a:b].any() else 0 for a, b in zip(starts[:-1], starts[1:],
                                                                           strict=True)]


class MaskedFieldEmbedding(nn.Module):
    """``e_i = (V_i ⊙ M_i)[x_i]``: dense per-field tables (a :class:`FieldEmbedding`) times a fixed
    mask. ``ids [B, F_all]`` -> ``[B, F_kept, D]``.

    Args:
        vocab_sizes: per input field, the number of ids.
        mask: ``[sum_i vocab_i, D]``, 0/1 (bool or float), rows of all fields in schema order.
    """

    def __init__(self, vocab_sizes: list[int], mask: np.ndarray | Tensor):
        super().__init__()
        mask = torch.as_tensor(np.asarray(mask)).bool()
        if mask.dim() != 2 or mask.shape[0] != sum(vocab_sizes) or mask.shape[1] < 1:
            raise ConfigError(f"the plan's mask has shape {tuple(mask.shape)}; expected "
                              f"[{sum(vocab_sizes)}, width] (one row per value of every field)")
        width = int(mask.shape[1])
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        dims = field_dims_of_mask(mask.numpy(), self.vocab_sizes)
        if not any(dims):
            raise ConfigError("the plan's mask keeps no embedding entry")
        self.inner = FieldEmbedding(self.vocab_sizes, dims)
        self.kept_fields = list(self.inner.kept_fields)
        self.out_dim = width
        self.register_buffer("mask", mask.float())  # [N_all, D], saved with the checkpoints
        self.register_buffer("offsets", _offsets(self.vocab_sizes), persistent=False)
        self.register_buffer("kept", torch.tensor(self.kept_fields, dtype=torch.long),
                             persistent=False)

    num_output_fields = property(lambda self: len(self.kept_fields))

    def _kept_rows(self) -> Tensor:
        starts = [0, *np.cumsum(self.vocab_sizes).tolist()]
        return torch.cat([torch.arange(starts[i], starts[i + 1]) for i in self.kept_fields])

    @property
    def embedding_params(self) -> int:
        """Non-zero (kept) entries of the kept fields' tables."""
        return int(self.mask.count_nonzero())

    @property
    def storage_params(self) -> int:
        return csr_storage_params(self.mask.cpu().numpy()[self._kept_rows().numpy()])

    @property
    def alignment_params(self) -> int:
        return 0

    def field_mask(self, field: int) -> Tensor:
        """Field ``field``'s mask rows ``[vocab_i, D]``."""
        start = int(self.offsets[field])
        return self.mask.narrow(0, start, self.vocab_sizes[field])

    def field_weight(self, field: int) -> Tensor:
        """A view ``[vocab_i, D]`` of field ``field``'s dense table (write under no_grad)."""
        return self.inner.field_weight(field)

    @torch.no_grad()
    def load_table_(self, table: Tensor | np.ndarray) -> None:
        """Copy ``table [sum_i vocab_i, D]`` (all fields, schema order) times the mask into the kept
        fields' tables."""
        table = torch.as_tensor(np.asarray(table) if not isinstance(table, Tensor) else table)
        for i in self.kept_fields:
            start = int(self.offsets[i])
            rows = table[start:start + self.vocab_sizes[i]].to(self.mask)
            self.field_weight(i).copy_(rows * self.field_mask(i))

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F_all] -> [B, F_kept, D]."""
        rows = ids.index_select(1, self.kept) + self.offsets.index_select(0, self.kept)
        mask = self.mask.index_select(0, rows.reshape(-1)).view(*rows.shape, self.out_dim)
        return self.inner(ids) * mask

    def extra_repr(self) -> str:
        return (f"fields={len(self.vocab_sizes)}, kept={len(self.kept_fields)}, width={self.out_dim}, "
                f"non_zero={self.embedding_params}")


@register_embedding_kind("masked")
def build_masked_embedding(plan, options) -> MaskedFieldEmbedding:
    """The embedding of a pruning plan: its payload ``mask`` over dense per-field tables."""
    if "mask" not in plan.payload:
        raise ConfigError("a 'masked' plan needs its payload mask (plan.payload.npz beside plan.json)")
    return MaskedFieldEmbedding(plan.vocab_sizes, plan.payload["mask"])
