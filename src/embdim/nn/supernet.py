"""AutoDim's search supernet: candidate embeddings per field, unified and mixed by Gumbel-softmax.

Implements the dimensionality-search embedding of AutoDim (Zhao et al., "Memory-efficient Embedding
for Recommendations", sec. 2.2):

* **lookup** (sec. 2.2.1): ``"shared"`` (weight sharing, Fig. 3b: one table of the largest width
  ``d_N`` per field, candidate ``n`` = its first ``d_n`` columns) or ``"separate"`` (Fig. 3a: one
  table per candidate width);
* **unify** (sec. 2.2.2): ``"linear"`` (eq. 1-2: per field and candidate ``x W_n + b_n`` to ``d_N``,
  then BatchNorm without affine parameters) or ``"pad"`` (eq. 3-4: BatchNorm, then zero padding);
* **dimension selection** (sec. 2.2.3, eq. 5-7): architecture weights ``alpha_m = softmax(a_m)`` of
  a trainable vector ``a_m`` per field; in training, Gumbel-softmax weights
  ``p_m = softmax((log alpha_m + g) / tau)`` and the field embedding ``x_m = sum_n p_m^n xhat_m^n``
  (times a learned per-field scale, an addition of ours: docs/autodim.md).

It is a drop-in ``embedding`` for :func:`embdim.nn.models.build_model` (attributes ``kept_fields``,
``num_output_fields``, ``out_dim``, ``embedding_params``): ids ``[B, F]`` -> ``[B, F, D]`` with
``D = d_N``, so it works under every base model. Fields are vectorised (one gather per table, one
batched einsum per candidate); the only Python loop is over the few candidates.

Candidates may differ per field: the supernet works on the sorted union of all candidate widths and
masks, per field, the widths that are not its candidates (their weight is exactly 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from embdim.nn.embedding import _offsets, init_embedding_

LOOKUPS = ("shared", "separate")
UNIFIERS = ("linear", "pad")
GUMBEL_SCOPES = ("sample", "batch")
TRANSFORM_INITS = ("eye", "uniform")


def normalise_candidates(candidates: list[int] | list[list[int]], num_fields: int) -> list[list[int]]:
    """One sorted, de-duplicated candidate list per field (a flat list applies to every field)."""
    if not candidates:
        raise ValueError("candidates must not be empty")
    if all(isinstance(c, int) for c in candidates):
        per_field = [list(candidates)] * num_fields  # type: ignore[list-item]
    else:
        per_field = [list(c) for c in candidates]  # type: ignore[arg-type]
        if len(per_field) != num_fields:
            raise ValueError(f"{len(per_field)} per-field candidate lists for {num_fields} fields")
    out = []
    for c in per_field:
        c = sorted({int(d) for d in c})
        if not c or c[0] <= 0:
            raise ValueError(f"candidate widths must be positive, got {c}")
        out.append(c)
    return out


class SupernetEmbedding(nn.Module):
    """Candidate embeddings of every field, unified to ``out_dim`` and mixed by ``alpha``.

    Args:
        vocab_sizes: per field, the number of ids.
        candidates: candidate widths for every field (``[2, 8, 16, 24, 32]``), or one list per field.
        lookup: ``"shared"`` or ``"separate"`` (see the module docstring).
        unify: ``"linear"`` or ``"pad"``.
        bias: the ``b_n`` of eq. 1 (linear unify only).
        gumbel: ``"sample"`` draws Gumbel noise per example ``[B, F, N]``; ``"batch"`` one draw per
            field and step ``[F, N]``.
        hard: straight-through Gumbel-softmax (one-hot forward, soft gradient) instead of eq. 6-7's
            soft weights.
        transform_init: initial ``W_n`` of the linear unify: ``"uniform"`` (as ``nn.Linear``) or
            ``"eye"`` (``[I | 0]``, zero padding; trains poorly before a BatchNorm, see docs).
        scale_init: initial value of a learned per-field scale applied after the mixture (shared by
            the field's candidates, so they stay comparable); ``None``: no scale.

    State set by the search loop: ``tau`` (temperature) and ``sampling`` (``False``: the weights are
    ``alpha`` itself, no noise — the pre-train phase). In eval mode the weights are ``alpha``
    (``eval_weights = "alpha"``) or the one-hot argmax (``"argmax"``).

    Shapes: ids ``[B, F]`` int32/int64 -> ``[B, F, D]``; ``alpha_logits`` ``[F, N]`` with ``N`` the
    number of distinct widths over all fields.
    """

    def __init__(self, vocab_sizes: list[int], candidates: list[int] | list[list[int]], *,
                 lookup: str = "shared", unify: str = "linear", bias: bool = True,
                 gumbel: str = "sample", hard: bool = False, transform_init: str = "uniform",
                 scale_init: float | None = 0.1, bn_eps: float = 1e-5, bn_momentum: float = 0.1):
        super().__init__()
        if lookup not in LOOKUPS:
            raise ValueError(f"lookup must be one of {LOOKUPS}, got {lookup!r}")
        if unify not in UNIFIERS:
            raise ValueError(f"unify must be one of {UNIFIERS}, got {unify!r}")
        if gumbel not in GUMBEL_SCOPES:
            raise ValueError(f"gumbel must be one of {GUMBEL_SCOPES}, got {gumbel!r}")
        if transform_init not in TRANSFORM_INITS:
            raise ValueError(f"transform_init must be one of {TRANSFORM_INITS}, got {transform_init!r}")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        nf = len(self.vocab_sizes)
        self.field_candidates = normalise_candidates(candidates, nf)
        self.widths: list[int] = sorted({d for c in self.field_candidates for d in c})
        self.lookup, self.unify, self.gumbel, self.hard = lookup, unify, gumbel, hard
        self.transform_init = transform_init
        self.out_dim = self.widths[-1]
        self.kept_fields = list(range(nf))
        mask = torch.tensor([[d in c for d in self.widths] for c in self.field_candidates])
        self.register_buffer("mask", mask, persistent=False)  # [F, N] bool
        self.register_buffer("offsets", _offsets(self.vocab_sizes), persistent=False)
        rows = sum(self.vocab_sizes)
        if lookup == "shared":
            self.table = nn.Embedding(rows, self.out_dim)
        else:
            self.tables = nn.ModuleList(nn.Embedding(rows, d) for d in self.widths)
        d_out = self.out_dim
        if unify == "linear":
            self.weights = nn.ParameterList(nn.Parameter(torch.empty(nf, d, d_out)) for d in self.widths)
            self.biases = (nn.ParameterList(nn.Parameter(torch.empty(nf, d_out)) for _ in self.widths)
                           if bias else None)
            bn_widths = [d_out] * len(self.widths)
        else:
            self.weights, self.biases = None, None
            bn_widths = list(self.widths)
        # BatchNorm without affine parameters per (field, candidate, channel): eq. 2 and eq. 3.
        self.norms = nn.ModuleList(nn.BatchNorm1d(nf * w, eps=bn_eps, momentum=bn_momentum, affine=False)
                                   for w in bn_widths)
        # A per-field scale after the mixture (shared by the field's candidates, so it keeps them
        # comparable): BatchNorm makes every candidate unit-variance, which in FM-type bodies gives
        # pairwise terms of std ~sqrt(D); the scale lets the model choose the magnitude.
        self.field_scale = (nn.Parameter(torch.full((nf, 1), float(scale_init))) if scale_init
                            else None)
        self.alpha_logits = nn.Parameter(torch.zeros(nf, len(self.widths)))  # equal alpha at start
        self.tau = 1.0
        self.sampling = True
        self.eval_weights = "alpha"  # in eval mode: "argmax" (one-hot, eq. 13) or "alpha"
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for table in ([self.table] if self.lookup == "shared" else list(self.tables)):
            init_embedding_(table.weight)
        if self.weights is not None:
            with torch.no_grad():
                for w in self.weights:
                    if self.transform_init == "eye":  # start as zero padding: W_n = [I | 0]
                        w.copy_(torch.eye(w.shape[1], w.shape[2]).expand_as(w))
                    else:  # as nn.Linear(d_n, D): U(-1/sqrt(d_n), 1/sqrt(d_n))
                        bound = 1.0 / math.sqrt(w.shape[1])
                        nn.init.uniform_(w, -bound, bound)
            for b in self.biases or []:
                nn.init.zeros_(b)
        for bn in self.norms:
            bn.reset_running_stats()
        with torch.no_grad():
            self.alpha_logits.zero_()

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_output_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def embedding_params(self) -> int:
        """Entries of the search-stage tables (all candidates; Fig. 6a of the paper)."""
        if self.lookup == "shared":
            return self.table.weight.numel()
        return sum(t.weight.numel() for t in self.tables)

    @property
    def transform_params(self) -> int:
        """Parameters of the linear unifying transforms (0 for padding)."""
        if self.weights is None:
            return 0
        return sum(p.numel() for p in self.weights) + sum(p.numel() for p in self.biases or [])

    def architecture_parameters(self) -> list[nn.Parameter]:
        return [self.alpha_logits]

    # ---- architecture weights -----------------------------------------------------------------
    def log_alpha(self) -> Tensor:
        """``log alpha`` [F, N]: log-softmax of the trainable vector over each field's candidates."""
        return self.alpha_logits.masked_fill(~self.mask, float("-inf")).log_softmax(-1)

    def alpha(self) -> Tensor:
        """``alpha`` [F, N] (0 where a width is not a field's candidate)."""
        return self.log_alpha().exp()

    def mixing_weights(self, batch: int) -> Tensor:
        """``p`` of eq. 6: ``[B, F, N]`` (per-sample Gumbel), ``[F, N]`` (per-batch or no noise)."""
        log_alpha = self.log_alpha()
        if not self.training:
            if self.eval_weights == "argmax":  # the derived architecture (eq. 13)
                return F.one_hot(log_alpha.argmax(-1), log_alpha.shape[-1]).to(log_alpha.dtype)
            return log_alpha.exp()
        if not self.sampling:
            return log_alpha.exp()
        if self.gumbel == "sample":
            log_alpha = log_alpha.expand(batch, *log_alpha.shape)
        return F.gumbel_softmax(log_alpha, tau=self.tau, hard=self.hard, dim=-1)

    def selected_widths(self) -> list[int]:
        """Eq. 13: per field, the candidate width with the largest ``alpha``."""
        idx = self.alpha_logits.masked_fill(~self.mask, float("-inf")).argmax(-1).tolist()
        return [self.widths[k] for k in idx]

    # ---- forward ------------------------------------------------------------------------------
    def candidate_embeddings(self, ids: Tensor) -> list[Tensor]:
        """Unified candidate embeddings ``xhat^n`` (eq. 2 or 4), one ``[B, F, D]`` per width."""
        rows = (ids + self.offsets).view(-1)
        b, nf = ids.shape
        if self.lookup == "shared":
            full = self.table.weight.index_select(0, rows).view(b, nf, self.out_dim)
            raw = [full[..., :d] for d in self.widths]
        else:
            raw = [t.weight.index_select(0, rows).view(b, nf, d)
                   for t, d in zip(self.tables, self.widths, strict=True)]
        out = []
        for n, (x, d) in enumerate(zip(raw, self.widths, strict=True)):
            if self.weights is not None:  # eq. 1 then eq. 2
                x = torch.einsum("bfd,fde->bfe", x, self.weights[n])
                if self.biases is not None:
                    x = x + self.biases[n]
                x = self.norms[n](x.reshape(b, -1)).view(b, nf, self.out_dim)
            else:  # eq. 3 then eq. 4
                x = self.norms[n](x.reshape(b, -1)).view(b, nf, d)
                if d < self.out_dim:
                    x = F.pad(x, (0, self.out_dim - d))
            out.append(x)
        return out

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> field embeddings [B, F, D] (eq. 7)."""
        xhat = torch.stack(self.candidate_embeddings(ids), dim=2)  # [B, F, N, D]
        p = self.mixing_weights(ids.shape[0])
        if p.dim() == 2:
            out = torch.einsum("bfnd,fn->bfd", xhat, p.to(xhat.dtype))
        else:
            out = torch.einsum("bfnd,bfn->bfd", xhat, p.to(xhat.dtype))
        return out if self.field_scale is None else out * self.field_scale

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, widths={self.widths}, lookup={self.lookup}, "
                f"unify={self.unify}, gumbel={self.gumbel}, hard={self.hard}")
