"""Field embedding layers: uniform and mixed-dimension, with alignment to one width.

Implements the embedding component of the base models and the *re-training* embedding of
AutoDim (Zhao et al., "Memory-efficient Embedding for Recommendations", sec. 2.2.2 and 2.4.2) and
SSEDS (Qu et al., "Single-shot Embedding Dimension Search", sec. 3.2.3): each kept field ``i`` has
its own table of width ``d_i`` and is aligned to a common width ``out_dim`` either by

* ``align="linear"``: a per-field linear transform ``x_i W_i (+ b_i)`` with ``W_i: [d_i, out_dim]``
  (SSEDS eq. 13; AutoDim eq. 1 adds the bias ``b_i``: ``bias=True``), or
* ``align="pad"``: zero padding to ``out_dim`` (AutoDim method 2; no parameters), or
* ``align="scatter"``: a fixed placement of field ``i``'s column ``k`` at coordinate
  ``positions[i][k]`` of ``out_dim`` (no parameters; zeros elsewhere). With the columns SSEDS kept
  and their pretrained coordinates, the slim model is exactly the masked pretrained model of SSEDS
  eq. 8 (``V ⊙ alpha`` with the binary ``alpha`` of eq. 12); ``positions = 0 .. d_i - 1`` is ``pad``.

As in the papers' re-training stage there is no BatchNorm in the embedding path. A field with
``d_i = 0`` is dropped: it has no table and no output slot.

Layout (the training hot path): fields of equal width share one table over their concatenated
vocabularies, addressed through per-field row offsets, so a batch costs one gather per distinct width
(one in the uniform case) and one batched einsum per width for the linear alignment. The gather is
``weight.index_select(0, int64 rows)``: its backward is an ``index_add_`` that is several times faster on
CPU than ``F.embedding``'s dense backward, and int64 row ids come for free from adding the int64 offset
buffer to int32 or int64 ids (``int32`` ``index_add_`` is itself slow, so no int32 path is kept).

Initialisation (chosen by a small planted-interaction FM experiment, see docs/models.md):

* embedding rows ~ N(0, 1e-4^2), as FuxiCTR and DeepCTR-Torch do. pytorch-fm's
  ``xavier_uniform_`` over the concatenated table makes the scale depend on the total vocabulary (a
  mixed layout would give each width group another scale) and learned FM interactions far more
  slowly here, as did std 1e-2; with Adam the tiny scale does not slow learning;
* alignment ``W_i = [I_{d_i} | 0]`` (``torch.eye(d_i, out_dim)``): the layer starts as zero padding
  and learns from there. This beat Xavier-initialised projections clearly on FM;
* no alignment bias by default (``bias=False``, as SSEDS eq. 13). AutoDim eq. 1 has ``b_i``
  (``bias=True``), but a per-field constant vector is absorbed by the first MLP layer's bias in an MLP
  part and, in FM-type models, it behaves like a first-order term that slowed the learning of the
  pairwise interactions markedly.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

ALIGN_MODES = ("linear", "pad", "scatter")
EMBEDDING_INIT_STD = 1e-4


def init_embedding_(weight: Tensor, std: float = EMBEDDING_INIT_STD) -> Tensor:
    """The library's embedding initialisation, in place: N(0, std^2)."""
    return nn.init.normal_(weight, mean=0.0, std=std)


def _offsets(vocab_sizes: list[int]) -> Tensor:
    """Row offset of each field in a table over the concatenated vocabularies: [F] int64."""
    return torch.tensor([0, *vocab_sizes[:-1]], dtype=torch.long).cumsum(0)


MARKS_PER_ROW_READ = 8  # distinct_rows marks rows in a byte map while the table has at most
#                        this many rows per row read (its scan then costs less than a sort)


def distinct_rows(rows: Tensor, slots: Tensor, marks: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """The distinct values of ``rows`` (sorted) and, for each element, its position among them:
    ``torch.unique(rows, sorted=True, return_inverse=True)`` without sorting ``rows``. ``slots``
    is scratch space with one int64 entry per table row (its content is irrelevant and is
    overwritten); ``marks``, if given, one uint8 per table row, all zero (and left so).

    With ``marks`` and a table of at most ``MARKS_PER_ROW_READ`` rows per element of ``rows``,
    every row read is marked in the byte map and the map's non-zero positions are the distinct
    values, already in order (one scatter and one scan of a byte per table row). Otherwise each
    row value first claims a slot (one writer of duplicate ids wins, whichever it is: a
    ``scatter_``, 3x faster than ``index_copy_`` here, with an unspecified winner); the elements
    that find their own position in their row's slot are the one representative per distinct
    value; only those ``U`` values are sorted (O(len(rows)) work plus a sort of ``U``, whatever
    the table's size). Either way the slots then hold the ranks of the distinct values, read back
    for every element."""
    n = rows.numel()
    if marks is not None and marks.numel() <= MARKS_PER_ROW_READ * n:
        marks.scatter_(0, rows, torch.ones((), dtype=marks.dtype, device=rows.device).expand(n))
        distinct = marks.nonzero().view(-1)
        marks.index_fill_(0, distinct, 0)  # all zero again
    else:
        positions = torch.arange(n, device=rows.device)
        slots.scatter_(0, rows, positions)
        representative = slots.index_select(0, rows) == positions
        distinct = rows[representative].sort().values
    slots.index_copy_(0, distinct, torch.arange(distinct.numel(), device=rows.device))
    return distinct, slots.index_select(0, rows)


class _GatherRowsSparseGrad(torch.autograd.Function):
    """``weight[rows]`` whose gradient is a *coalesced* sparse tensor: the distinct rows read
    (sorted) and the sum of their gradients. What ``F.embedding(sparse=True)`` computes, without
    its uncoalesced ``[len(rows), D]`` gradient and the optimiser's sort to coalesce it."""

    @staticmethod
    def forward(ctx, weight: Tensor, rows: Tensor, slots: Tensor, marks: Tensor) -> Tensor:
        ctx.save_for_backward(rows)
        ctx.slots, ctx.marks = slots, marks  # scratch space, not saved (see distinct_rows)
        ctx.table_shape = weight.shape
        return weight.index_select(0, rows)

    @staticmethod
    def backward(ctx, grad: Tensor):
        (rows,) = ctx.saved_tensors
        distinct, inverse = _distinct_rows_of_batch(rows, ctx.slots, ctx.marks)
        values = grad.new_zeros(distinct.numel(), grad.shape[1]).index_add_(0, inverse, grad)
        sparse = torch.sparse_coo_tensor(distinct.unsqueeze(0), values, ctx.table_shape,
                                         is_coalesced=True, check_invariants=False)
        return sparse, None, None, None


_LAST_DISTINCT: list = []  # (rows, distinct, inverse) of the last lookup's backward


def _distinct_rows_of_batch(rows: Tensor, slots: Tensor, marks: Tensor) -> tuple[Tensor, Tensor]:
    """:func:`distinct_rows`, reusing the last backward's result when ``rows`` holds the same
    values: the embedding table and the first-order weights of a model read the same rows of
    equally long tables (one comparison instead of a second pass)."""
    if _LAST_DISTINCT:
        last_rows, distinct, inverse = _LAST_DISTINCT
        if (last_rows.shape == rows.shape and last_rows.device == rows.device
                and slots.shape[0] > int(distinct[-1]) and torch.equal(last_rows, rows)):
            return distinct, inverse
    distinct, inverse = distinct_rows(rows, slots, marks)
    _LAST_DISTINCT[:] = [rows, distinct, inverse]
    return distinct, inverse


def gather_rows(weight: Tensor, rows: Tensor, sparse: bool) -> Tensor:
    """``weight[rows]``: ``index_select`` (its backward is an ``index_add_`` into a dense gradient,
    several times faster on CPU than ``F.embedding``'s dense backward), or with ``sparse`` a lookup
    whose gradient is a coalesced sparse tensor over the rows read only (for the row-wise table
    optimisers, ``train.optimizer: sparse_adam | rowwise_adagrad``): its cost is O(rows read),
    whatever the table's size."""
    if sparse and weight.requires_grad and torch.is_grad_enabled():
        return _GatherRowsSparseGrad.apply(weight, rows, *_row_scratch(weight))
    return weight.index_select(0, rows)


def _row_scratch(weight: Tensor) -> tuple[Tensor, Tensor]:
    """Scratch space for :func:`distinct_rows`, kept on the table itself and reused across steps:
    int64 slots (never read before being written) and uint8 marks (all zero between calls), one
    of each per row of ``weight`` (9 bytes per row)."""
    scratch = getattr(weight, "_row_scratch", None)
    if scratch is None or scratch[0].shape[0] != weight.shape[0] or scratch[0].device != weight.device:
        scratch = (torch.empty(weight.shape[0], dtype=torch.long, device=weight.device),
                   torch.zeros(weight.shape[0], dtype=torch.uint8, device=weight.device))
        weight._row_scratch = scratch
    return scratch


class WidthGroup(nn.Module):
    """The fields sharing one embedding width: one table, their offsets and their alignment.

    ``fields`` are positions in the input id matrix; ``table`` has ``sum(vocab of fields)`` rows.
    """

    def __init__(self, fields: list[int], vocab_sizes: list[int], width: int, out_dim: int,
                 align: str | None, bias: bool, positions: list[list[int]] | None = None):
        super().__init__()
        self.width, self.out_dim, self.align = width, out_dim, align
        self.vocab_sizes = list(vocab_sizes)
        self.register_buffer("fields", torch.tensor(fields, dtype=torch.long), persistent=False)
        self.register_buffer("offsets", _offsets(vocab_sizes), persistent=False)
        self.table = nn.Embedding(sum(vocab_sizes), width)
        self.sparse_rows = False  # sparse table gradients (embdim.train.optim)
        if align == "linear":
            self.weight = nn.Parameter(torch.empty(len(fields), width, out_dim))  # [F_g, w, D]
            self.bias = nn.Parameter(torch.empty(len(fields), out_dim)) if bias else None  # [F_g, D]
        elif align == "scatter":  # a fixed placement: column k of field f -> coordinate positions[f][k]
            if positions is None:
                positions = [list(range(width))] * len(fields)
            index = torch.tensor(positions, dtype=torch.long).view(len(fields), width)
            self.register_buffer("positions", index, persistent=False)  # [F_g, w], for the forward
            # the same placement as a one-hot [F_g, w, D] in the state dict: a checkpoint says where
            # each column sits and at which width (the export hands it on as a fixed W_i)
            self.register_buffer("placement", F.one_hot(index, out_dim).float())
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_embedding_(self.table.weight)
        if self.align == "linear":  # start as zero padding: W_i = [I_d | 0]
            with torch.no_grad():
                self.weight.copy_(torch.eye(self.width, self.out_dim).expand_as(self.weight))
            if self.bias is not None:
                nn.init.zeros_(self.bias)

    def row_table(self) -> nn.Parameter:
        return self.table.weight

    def extra_repr(self) -> str:
        return (f"fields={self.fields.tolist()}, width={self.width}, out_dim={self.out_dim}, "
                f"align={self.align}")

    def forward(self, ids: Tensor, select: bool = True) -> Tensor:
        """ids [B, F_all] (int32/int64; or [B, F_g] with ``select=False``) -> [B, F_g, out_dim]."""
        if select:
            ids = ids.index_select(1, self.fields)
        rows = ids + self.offsets  # int64 whatever the ids' dtype
        emb = gather_rows(self.table.weight, rows.view(-1), self.sparse_rows).view(*rows.shape,
                                                                                  self.width)
        if self.align == "linear":
            emb = torch.einsum("bfw,fwd->bfd", emb, self.weight)
            return emb if self.bias is None else emb + self.bias
        if self.align == "pad" and self.width < self.out_dim:
            return F.pad(emb, (0, self.out_dim - self.width))
        if self.align == "scatter":
            out = emb.new_zeros(*emb.shape[:-1], self.out_dim)
            return out.scatter(-1, self.positions.expand(*emb.shape[:-2], -1, -1), emb)
        return emb


def _check_positions(positions: list[list[int]], dims: list[int], out_dim: int) -> list[list[int]]:
    """Per-field output coordinates for ``align="scatter"``: ``dims[i]`` distinct ints in
    ``[0, out_dim)`` per field (a dropped field's list is ignored)."""
    if len(positions) != len(dims):
        raise ValueError(f"{len(positions)} position lists for {len(dims)} fields")
    out = []
    for i, (pos, d) in enumerate(zip(positions, dims, strict=True)):
        pos = [int(p) for p in pos]
        if d and (len(pos) != d or len(set(pos)) != d or min(pos) < 0 or max(pos) >= out_dim):
            raise ValueError(f"field {i}: positions {pos} are not {d} distinct coordinates in "
                             f"[0, {out_dim})")
        out.append(pos)
    return out


class FieldEmbedding(nn.Module):
    """Per-field embeddings of mixed widths, aligned to ``out_dim``.

    Args:
        vocab_sizes: per input field, the number of ids (ids are local: ``0 .. vocab_size - 1``).
        dims: per input field, its embedding width; ``0`` drops the field.
        align: ``"linear"`` (per-field ``x_i W_i (+ b_i)``, ``W_i [d_i, out_dim]``), ``"pad"`` (zeros) or
            ``"scatter"`` (column ``k`` at coordinate ``positions[i][k]``). Used when some kept width
            differs from ``out_dim`` (or with ``always_align``); then *every* kept field is aligned,
            as in AutoDim eq. 1 and SSEDS eq. 13 (a full-width field gets a square ``W_i``).
        out_dim: the aligned width; defaults to ``max(dims)``.
        bias: whether the linear alignment has a bias ``b_i`` (AutoDim eq. 1: yes; SSEDS: no; the
            default is no, see the module docstring).
        positions: per input field, the output coordinates of its columns (``align="scatter"``;
            ``len(positions[i]) == dims[i]``, distinct, ``< out_dim``); None: ``0 .. d_i - 1``.
        always_align: align even when every kept field already has width ``out_dim`` (SSEDS eq. 13
            has one ``M_i`` per kept field whatever the widths).

    Input ``ids [B, F_all]`` (int32 or int64), output ``[B, F_kept, out_dim]`` in the input order
    of the kept fields. Ids are not range-checked here (the prepared dataset guarantees them); an
    id beyond its field's vocabulary reads another field's row or raises ``IndexError``.
    """

    def __init__(self, vocab_sizes: list[int], dims: list[int], *, align: str = "linear",
                 out_dim: int | None = None, bias: bool = False,
                 positions: list[list[int]] | None = None, always_align: bool = False):
        super().__init__()
        if len(vocab_sizes) != len(dims):
            raise ValueError(f"{len(vocab_sizes)} vocab sizes but {len(dims)} dims")
        if any(v < 1 for v in vocab_sizes) or any(d < 0 for d in dims):
            raise ValueError(f"vocab sizes must be >= 1 and dims >= 0: {vocab_sizes}, {dims}")
        if align not in ALIGN_MODES:
            raise ValueError(f"align must be one of {ALIGN_MODES}, got {align!r}")
        self.vocab_sizes, self.dims = [int(v) for v in vocab_sizes], [int(d) for d in dims]
        self.kept_fields = [i for i, d in enumerate(self.dims) if d > 0]
        if not self.kept_fields:
            raise ValueError("every field has dim 0: nothing to embed")
        self.out_dim = int(out_dim or max(self.dims))
        widths = sorted({self.dims[i] for i in self.kept_fields})
        if positions is not None:
            positions = _check_positions(positions, self.dims, self.out_dim)
        identity = positions is None or all(positions[i] == list(range(self.dims[i]))
                                            for i in self.kept_fields)
        self.uniform = widths == [self.out_dim] and not (always_align and (align == "linear"
                                                                           or not identity))
        if align in ("pad", "scatter") and not self.uniform and widths[-1] > self.out_dim:
            raise ValueError(f"align={align!r} cannot shrink width {widths[-1]} to out_dim {self.out_dim}")
        self.align = align
        group_align = None if self.uniform else align
        groups = [[i for i in self.kept_fields if self.dims[i] == w] for w in widths]
        self.groups = nn.ModuleList(
            WidthGroup(g, [self.vocab_sizes[i] for i in g], w, self.out_dim, group_align, bias,
                       None if positions is None else [positions[i] for i in g])
            for g, w in zip(groups, widths, strict=True))
        # Groups come out concatenated in width order; ``order`` puts the fields back in input order.
        concat = [i for g in groups for i in g]
        self._identity_order = concat == sorted(concat)
        self.register_buffer("order", torch.tensor(concat).argsort(), persistent=False)
        # A single group over every input field needs no column selection at all.
        self._select = len(self.groups) > 1 or len(self.kept_fields) < len(self.dims)

    @classmethod
    def from_plan(cls, plan, *, align: str = "linear", out_dim: int | None = None,
                  bias: bool = False, always_align: bool = False) -> FieldEmbedding:
        """The re-training embedding of a :class:`~embdim.plan.DimensionPlan` (``dim 0`` = dropped);
        ``align="scatter"`` places the columns at the plan's ``kept_indices`` (if it has them)."""
        positions = plan.kept_indices if align == "scatter" else None
        return cls(plan.vocab_sizes, plan.dims, align=align, out_dim=out_dim, bias=bias,
                   positions=positions, always_align=always_align)

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        """Number of input fields (columns of the id matrix), dropped ones included."""
        return len(self.dims)

    @property
    def num_output_fields(self) -> int:
        return len(self.kept_fields)

    @property
    def embedding_params(self) -> int:
        """Embedding-table entries: exactly ``sum(vocab_i * d_i)`` (what a plan counts)."""
        return sum(g.table.weight.numel() for g in self.groups)

    @property
    def alignment_params(self) -> int:
        """Parameters of the linear alignment (0 for the uniform layout and for ``pad``)."""
        return sum(p.numel() for g in self.groups for name, p in g.named_parameters()
                   if not name.startswith("table."))

    # ---- access per field (e.g. SSEDS copies its pruned pretrained columns in) ------------------
    def _locate(self, field: int) -> tuple[WidthGroup, int]:
        if field not in self.kept_fields:
            raise KeyError(f"field {field} is dropped (dim 0) or out of range")
        group = next(g for g in self.groups if g.width == self.dims[field])
        return group, group.fields.tolist().index(field)

    def field_weight(self, field: int) -> Tensor:
        """A view ``[vocab_size, d]`` of input field ``field``'s rows; write to it under no_grad."""
        group, k = self._locate(field)
        return group.table.weight.narrow(0, int(group.offsets[k]), self.vocab_sizes[field])

    def field_alignment(self, field: int) -> tuple[Tensor, Tensor | None] | None:
        """Views ``(W [d, out_dim], b [out_dim] or None)`` of the field's linear alignment, if any."""
        group, k = self._locate(field)
        if group.align != "linear":
            return None
        return group.weight[k], None if group.bias is None else group.bias[k]

    def field_positions(self, field: int) -> list[int] | None:
        """The fixed output coordinates of the field's columns (``align="scatter"``), if any."""
        group, k = self._locate(field)
        return group.positions[k].tolist() if group.align == "scatter" else None

    def field_placement(self, field: int) -> Tensor | None:
        """The fixed placement as a one-hot ``W [d, out_dim]`` (``align="scatter"``), if any."""
        group, k = self._locate(field)
        return group.placement[k] if group.align == "scatter" else None

    def reset_parameters(self) -> None:
        for g in self.groups:
            g.reset_parameters()

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F_all] int32/int64 -> aligned embeddings [B, F_kept, out_dim] (input order)."""
        if len(self.groups) == 1:
            return self.groups[0](ids, select=self._select)
        out = torch.cat([g(ids) for g in self.groups], dim=1)
        return out if self._identity_order else out.index_select(1, self.order)

    def extra_repr(self) -> str:
        widths = {g.width: len(g.vocab_sizes) for g in self.groups}
        return (f"fields={self.num_fields}, kept={self.num_output_fields}, widths(fields)={widths}, "
                f"out_dim={self.out_dim}, align={'none' if self.uniform else self.align}")


class FeaturesLinear(nn.Module):
    """First-order (wide / LR) part: ``b + sum_i w_i[id_i]`` over the kept fields.

    One ``[sum(vocab of kept fields), 1]`` table with per-field offsets, plus a scalar bias.
    ``ids [B, F_all]`` (int32/int64) -> ``[B]``. A dropped field (not in ``kept_fields``) has no
    weights at all.
    """

    def __init__(self, vocab_sizes: list[int], kept_fields: list[int] | None = None):
        super().__init__()
        self.kept_fields = list(range(len(vocab_sizes))) if kept_fields is None else list(kept_fields)
        if not self.kept_fields:
            raise ValueError("FeaturesLinear needs at least one field")
        kept_vocab = [int(vocab_sizes[i]) for i in self.kept_fields]
        self._select = self.kept_fields != list(range(len(vocab_sizes)))
        self.register_buffer("fields", torch.tensor(self.kept_fields, dtype=torch.long),
                             persistent=False)
        self.register_buffer("offsets", _offsets(kept_vocab), persistent=False)
        self.weight = nn.Embedding(sum(kept_vocab), 1)
        self.bias = nn.Parameter(torch.zeros(1))
        self.sparse_rows = False  # sparse table gradients (embdim.train.optim)
        init_embedding_(self.weight.weight)

    def row_table(self) -> nn.Parameter:
        return self.weight.weight

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F_all] -> [B]."""
        if self._select:
            ids = ids.index_select(1, self.fields)
        rows = ids + self.offsets
        return (gather_rows(self.weight.weight, rows.view(-1), self.sparse_rows).view(rows.shape).sum(1)
                + self.bias)
