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
``D = d_N``, so it works under every base model. Fields and candidates are vectorised: one gather
per table, one batched matrix product for the linear unify of all candidates (shared lookup), one
BatchNorm over every (field, candidate, channel), one weighted sum.

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
        # BatchNorm without affine parameters per (field, candidate, channel): eq. 2 and eq. 3. Its
        # channels, field-major: (field, candidate, coordinate), the coordinates of candidate n
        # being 0..D-1 after the linear unify (eq. 1) or 0..d_n-1 before the padding (eq. 4).
        # ``channel_candidate`` / ``channel_coordinate`` say, per channel of one field, which
        # candidate it belongs to and which output coordinate it lands on.
        candidate = [n for n, w in enumerate(bn_widths) for _ in range(w)]
        coordinate = [j for w in bn_widths for j in range(w)]
        self.register_buffer("channel_candidate", torch.tensor(candidate), persistent=False)
        self.register_buffer("channel_coordinate", torch.tensor(coordinate), persistent=False)
        self.channels = len(candidate)  # per field
        self.norm = nn.BatchNorm1d(nf * self.channels, eps=bn_eps, momentum=bn_momentum, affine=False)
        # the shared lookup's training step: per (candidate, coordinate < d_n), its candidate and
        # coordinate in the concatenation of the candidates' prefixes
        prefix_candidates = [n for n, d in enumerate(self.widths) for _ in range(d)]
        prefix_coordinates = [j for d in self.widths for j in range(d)]
        self.register_buffer("_prefix_candidates", torch.tensor(prefix_candidates), persistent=False)
        self.register_buffer("_prefix_coordinates", torch.tensor(prefix_coordinates), persistent=False)
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
        self.norm.reset_running_stats()
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
        q = self._weights_fnb(batch)
        return q.permute(2, 0, 1) if self._per_example else q[..., 0]

    @property
    def _per_example(self) -> bool:
        return self.training and self.sampling and self.gumbel == "sample"

    def _weights_fnb(self, batch: int) -> Tensor:
        """Eq. 6's weights laid out ``[F, N, B]`` (per-example noise) or ``[F, N, 1]``: the softmax
        runs over the candidate axis with the batch contiguous (much faster than over a last axis
        of N = 4-6 entries), the Gumbel noise is ``-log(-log U)``."""
        log_alpha = self.log_alpha().unsqueeze(-1)  # [F, N, 1]
        if not self.training:
            if self.eval_weights == "argmax":  # the derived architecture (eq. 13)
                return F.one_hot(log_alpha.squeeze(-1).argmax(-1), log_alpha.shape[1]).to(
                    log_alpha.dtype).unsqueeze(-1)
            return log_alpha.exp()
        if not self.sampling:
            return log_alpha.exp()
        cols = batch if self.gumbel == "sample" else 1
        u = torch.empty(*log_alpha.shape[:2], cols, dtype=log_alpha.dtype, device=log_alpha.device)
        u.uniform_(torch.finfo(log_alpha.dtype).tiny, 1.0)
        # softmax((log alpha + g) / tau); masked widths: log alpha = -inf -> weight 0
        soft = torch.softmax((log_alpha - u.log_().neg_().log_()) / self.tau, 1)
        if not self.hard:
            return soft
        hard = F.one_hot(soft.argmax(1), soft.shape[1]).movedim(-1, 1).to(soft.dtype)
        return hard - soft.detach() + soft  # straight-through

    def selected_widths(self) -> list[int]:
        """Eq. 13: per field, the candidate width with the largest ``alpha``."""
        idx = self.alpha_logits.masked_fill(~self.mask, float("-inf")).argmax(-1).tolist()
        return [self.widths[k] for k in idx]

    # ---- forward ------------------------------------------------------------------------------
    # One pass over all candidates: the rows are gathered field-major, the linear unify of every
    # candidate is one batched matrix product per field (candidate n reads the first d_n columns of
    # the shared row, so its W_n is zero-padded to D rows and the N transforms are concatenated), and
    # one BatchNorm normalises the channels of every (field, candidate) at once. Layout [F, C, B]
    # keeps each channel's batch contiguous for the BatchNorm.
    def _normalised_channels(self, ids: Tensor) -> Tensor:
        """Eq. 1-2 (linear) or eq. 3 (pad) for every candidate: ``[F, C, B]``, C = ``channels``."""
        b, nf = ids.shape
        rows = (ids.t() + self.offsets[:, None]).reshape(-1)  # field-major: [F * B]
        if self.lookup == "shared":
            full = self.table.weight.index_select(0, rows).view(nf, b, self.out_dim)  # [F, B, D]
            raw = [full[..., :d] for d in self.widths]
        else:
            raw = [t.weight.index_select(0, rows).view(nf, b, d)
                   for t, d in zip(self.tables, self.widths, strict=True)]
        if self.weights is not None:  # eq. 1: x W_n + b_n, all candidates
            if self.lookup == "shared":
                d_max = self.out_dim
                w = torch.cat([F.pad(w_n, (0, 0, 0, d_max - w_n.shape[1])) for w_n in self.weights],
                              dim=2)  # [F, D, N * D]
                y = torch.bmm(w.transpose(1, 2), full.transpose(1, 2))  # [F, N * D, B]
            else:
                y = torch.cat([torch.bmm(w_n.transpose(1, 2), x.transpose(1, 2))
                               for w_n, x in zip(self.weights, raw, strict=True)], dim=1)
            if self.biases is not None:
                y = y + torch.cat(list(self.biases), dim=1).unsqueeze(-1)
        else:  # eq. 3 normalises the raw candidate embeddings
            y = torch.cat(raw, dim=2).transpose(1, 2)  # [F, sum d_n, B]
        return self.norm(y.reshape(1, nf * self.channels, b)).view(nf, self.channels, b)

    def _mix(self, y: Tensor, q: Tensor) -> Tensor:
        """Eq. 7 on ``[F, C, B]`` channels with weights ``q`` (``[F, N, B]`` or ``[F, N, 1]``):
        ``[F, D, B]`` (eq. 4's zero padding is where a candidate has no channel)."""
        nf, _, b = y.shape
        q = q.to(y.dtype)
        if self.weights is not None:  # every candidate fills all D coordinates
            return (y.view(nf, len(self.widths), self.out_dim, b) * q.unsqueeze(2)).sum(1)
        weighted = y * q.index_select(1, self.channel_candidate)
        out = y.new_zeros(nf, self.out_dim, b)
        return out.index_add(1, self.channel_coordinate, weighted)

    def candidate_embeddings(self, ids: Tensor) -> list[Tensor]:
        """Unified candidate embeddings ``xhat^n`` (eq. 2 or 4), one ``[B, F, D]`` per width."""
        y = self._normalised_channels(ids)
        eye = torch.eye(len(self.widths), dtype=y.dtype, device=y.device)
        return [self._mix(y, eye[n].expand(ids.shape[1], -1).unsqueeze(-1)).permute(2, 0, 1)
                for n in range(len(self.widths))]

    def candidate_statistics(self, n: int) -> tuple[Tensor, Tensor]:
        """The BatchNorm running mean and variance of candidate ``n``'s channels, ``[F, w]`` each
        (``w`` = D after the linear unify, ``d_n`` with padding)."""
        mask = self.channel_candidate == n
        mean = self.norm.running_mean.view(self.num_fields, self.channels)[:, mask]
        var = self.norm.running_var.view(self.num_fields, self.channels)[:, mask]
        return mean, var

    # ---- the training step of the shared lookup, from input statistics ---------------------------
    # With weight sharing every candidate reads a prefix of the same row x, so BatchNorm's batch
    # statistics of every candidate follow from x's mean mu and covariance S (per field):
    #   linear (eq. 1-2): xhat_n = (x_n W_n + b_n - mean) / sd = (x - mu)_{:d_n} W_n / sd_n,
    #                     sd_n^2 = diag(W_n^T S_{:d_n,:d_n} W_n) + eps   (b_n cancels, as in BatchNorm)
    #   pad (eq. 3-4):    xhat_n = ((x - mu) / sqrt(diag S + eps))_{:d_n}   (the same for every n)
    # and eq. 7 becomes one product: sum_n p_n xhat_n = [p_n (x - mu)_{:d_n}]_n  @  [W_n / sd_n]_n.
    # Exactly BatchNorm's training-mode output and gradient (tests/test_autodim.py compares both with
    # the equations written out per candidate), without ever forming the N candidate embeddings.
    def _shared_training_forward(self, ids: Tensor, p: Tensor) -> Tensor:
        """``[B, F, D]`` mixed embeddings times the field scale, training mode, shared lookup;
        updates the running statistics."""
        b, nf = ids.shape
        d_max, eps = self.out_dim, self.norm.eps
        rows = (ids.t() + self.offsets[:, None]).reshape(-1)
        x = self.table.weight.index_select(0, rows).view(nf, b, d_max)  # [F, B, D]
        q = p.to(x.dtype)  # [F, N, B | 1]
        scale = None if self.field_scale is None else self.field_scale.unsqueeze(-1)  # [F, 1, 1]
        if self.weights is None:  # pad: one normalisation, weighted by the candidates covering j
            mu = x.mean(1, keepdim=True)
            xc = x - mu  # [F, B, D]
            var = xc.square().mean(1, keepdim=True)  # [F, 1, D]
            xhat = (xc * torch.rsqrt(var + eps)).transpose(1, 2)  # [F, D, B]
            covers = (torch.arange(d_max, device=x.device)[None, :]
                      < torch.tensor(self.widths, device=x.device)[:, None]).to(x.dtype)  # [N, D]
            out = xhat * torch.einsum("nd,fnb->fdb", covers, q)
            self._update_running_stats(mu.squeeze(1), var.squeeze(1), b)
            out = out if scale is None else out * scale
            return out.permute(2, 0, 1).contiguous()
        xc_t, cov, mu = _CentredRows.apply(x)  # [F, D, B], [F, D, D], [F, 1, D]
        scaled, stats = [], []
        for w_n in self.weights:  # [F, d_n, D]
            d = w_n.shape[1]
            var_n = (torch.bmm(cov[:, :d, :d], w_n) * w_n).sum(1)  # [F, D]: diag(W^T S W)
            w_hat = w_n * torch.rsqrt(var_n + eps).unsqueeze(1)
            scaled.append(w_hat if scale is None else w_hat * scale)  # the field scale folds in
            stats.append((var_n, d))
        with torch.no_grad():
            mu_x = mu.squeeze(1)
            means = [torch.einsum("fd,fde->fe", mu_x[:, :d], w_n)
                     for w_n, (_, d) in zip(self.weights, stats, strict=True)]
            if self.biases is not None:
                means = [m + b_n for m, b_n in zip(means, self.biases, strict=True)]
            self._update_running_stats(torch.cat(means, dim=1),
                                       torch.cat([v for v, _ in stats], dim=1), b)
        if q.shape[-1] == 1:  # one weight per (field, candidate): mix the transforms, one product
            mixed = sum(F.pad(w_hat, (0, 0, 0, d_max - w_hat.shape[1])) * q[:, n:n + 1]
                        for n, w_hat in enumerate(scaled))  # [F, D, D]
            return torch.bmm(xc_t.transpose(1, 2), mixed).transpose(0, 1).contiguous()
        return _MixPrefixes.apply(xc_t, q, torch.cat(scaled, dim=1), self.widths)  # [B, F, D]

    @torch.no_grad()
    def _update_running_stats(self, mean: Tensor, var: Tensor, batch: int) -> None:
        """BatchNorm's running-statistics update (unbiased variance) from per-field channel
        statistics: ``[F, C]``, or ``[F, D]`` for the padding (every candidate's channels of
        coordinate j share the statistics of column j)."""
        if mean.shape[1] != self.channels:  # pad: coordinate j of every candidate covering it
            mean = mean.index_select(1, self.channel_coordinate)
            var = var.index_select(1, self.channel_coordinate)
        norm, m = self.norm, self.norm.momentum
        norm.running_mean.mul_(1 - m).add_(mean.reshape(-1).detach(), alpha=m)
        unbiased = var.reshape(-1).detach() * (batch / max(batch - 1, 1))
        norm.running_var.mul_(1 - m).add_(unbiased, alpha=m)
        norm.num_batches_tracked.add_(1)

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> field embeddings [B, F, D] (eq. 7). Float32 under autocast: BatchNorm's
        statistics (and the covariance they come from) need it."""
        with torch.autocast(ids.device.type, enabled=False):
            return self._forward(ids)

    def _shared_eval_forward(self, ids: Tensor, q: Tensor) -> Tensor:
        """``[B, F, D]`` in eval mode, shared lookup: with BatchNorm's running statistics every
        candidate is an affine map of the row, ``xhat_n = (x_{:d_n} W_n + b_n - m_n) / s_n``
        (``W_n = [I | 0]``, ``b_n = 0`` for the padding), so eq. 7 with the weights ``q``
        ``[F, N, 1]`` is one affine map per field: ``x M + c`` with ``M = sum_n q_n W_n / s_n``
        and ``c = sum_n q_n (b_n - m_n) / s_n`` (times the field scale)."""
        b, nf = ids.shape
        d_max = self.out_dim
        rows = (ids.t() + self.offsets[:, None]).reshape(-1)
        x = self.table.weight.index_select(0, rows).view(nf, b, d_max)  # [F, B, D]
        q = q.to(x.dtype)
        transform = x.new_zeros(nf, d_max, d_max)
        shift = x.new_zeros(nf, 1, d_max)
        for n, d in enumerate(self.widths):
            mean, var = self.candidate_statistics(n)  # [F, D] (linear) or [F, d_n] (pad)
            inv_sd = torch.rsqrt(var + self.norm.eps)
            weight = q[:, n]  # [F, 1]
            if self.weights is not None:
                transform[:, :d] += self.weights[n] * (inv_sd * weight).unsqueeze(1)
                bias = -mean if self.biases is None else self.biases[n] - mean
                shift[:, 0] += bias * inv_sd * weight
            else:
                transform[:, :d, :d] += torch.diag_embed(inv_sd * weight)
                shift[:, 0, :d] -= mean * inv_sd * weight
        if self.field_scale is not None:
            transform = transform * self.field_scale.unsqueeze(-1)
            shift = shift * self.field_scale.unsqueeze(-1)
        return torch.baddbmm(shift, x, transform).transpose(0, 1).contiguous()

    def _forward(self, ids: Tensor) -> Tensor:
        p = self._weights_fnb(ids.shape[0])  # [F, N, B | 1]
        if (self.training and self.lookup == "shared" and self.norm.momentum is not None
                and ids.shape[0] > 1):
            return self._shared_training_forward(ids, p)
        if not self.training and self.lookup == "shared" and p.shape[-1] == 1:
            return self._shared_eval_forward(ids, p)
        out = self._mix(self._normalised_channels(ids), p)
        if self.field_scale is not None:
            out = out * self.field_scale.unsqueeze(-1)
        return out.permute(2, 0, 1).contiguous()

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, widths={self.widths}, lookup={self.lookup}, "
                f"unify={self.unify}, gumbel={self.gumbel}, hard={self.hard}")


class _CentredRows(torch.autograd.Function):
    """BatchNorm's batch statistics of the shared rows ``x`` ``[F, B, D]``: the centred rows
    ``xc = x - mu`` laid out ``[F, D, B]`` (what :class:`_MixPrefixes` reads), their covariance
    ``S = xc^T xc / B`` ``[F, D, D]`` and the mean ``mu`` ``[F, 1, D]`` (no gradient: it only feeds
    the running statistics). The backward is the closed form
    ``grad_x = (g - mean_B g) + xc (G + G^T) / B`` (``g``, ``G``: the gradients of ``xc`` and ``S``;
    ``xc`` has zero batch mean, so centring leaves the covariance's part unchanged), one batched
    product and one addition instead of autograd's chain through the subtraction, the mean and both
    operands of the covariance's product."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        nf, b, d = x.shape
        mu = x.mean(1, keepdim=True)
        xc_t = x.new_empty(nf, d, b)
        torch.sub(x.transpose(1, 2), mu.transpose(1, 2), out=xc_t)
        cov = torch.bmm(xc_t, xc_t.transpose(1, 2)).div_(b)
        ctx.save_for_backward(xc_t)
        ctx.mark_non_differentiable(mu)
        return xc_t, cov, mu

    @staticmethod
    def backward(ctx, grad_xc_t: Tensor | None, grad_cov: Tensor | None, _grad_mu) -> Tensor:
        (xc_t,) = ctx.saved_tensors
        nf, d, b = xc_t.shape
        shift = (xc_t.new_zeros(nf, 1, d) if grad_xc_t is None
                 else grad_xc_t.mean(2).unsqueeze(1).neg_())  # -mean_B g
        if grad_cov is None:
            grad_x = shift.expand(nf, b, d).clone()
        else:  # [F, B, D] = -mean_B g + xc (G + G^T) / B
            sym = (grad_cov + grad_cov.transpose(1, 2)).div_(b)
            grad_x = torch.baddbmm(shift, xc_t.transpose(1, 2), sym)
        return grad_x if grad_xc_t is None else grad_x.add_(grad_xc_t.transpose(1, 2))


class _MixPrefixes(torch.autograd.Function):
    """Eq. 7 for the shared lookup with per-example weights, from the centred rows ``xc_t``
    ``[F, D, B]``: ``out[f, b] = sum_n q[f, n, b] * xc[f, b, :d_n] @ W_n[f]`` with ``W_n`` already divided by
    the candidate's standard deviation (``w_all`` = the ``W_n`` stacked over ``n``, ``[F, sum d_n,
    D]``). ``z[f, (n, j), b] = q[f, n, b] * xc[f, b, j]`` (``j < d_n``) is built slice by slice
    and the output is one batched product ``z^T w_all``; the backward writes the gradients of
    ``xc`` and ``q`` slice by slice as well, instead of going through gathers and scatters along
    the channel axis (what autograd would do for the same formula)."""

    @staticmethod
    def forward(ctx, xc_t: Tensor, q: Tensor, w_all: Tensor, widths: list[int]) -> Tensor:
        nf, _, b = xc_t.shape  # [F, D, B]: the slices below read it contiguously
        z = xc_t.new_empty(nf, w_all.shape[1], b)
        start = 0
        for n, d in enumerate(widths):
            torch.mul(xc_t[:, :d], q[:, n:n + 1], out=z[:, start:start + d])
            start += d
        ctx.save_for_backward(xc_t, q, w_all, z)
        ctx.widths = widths
        return torch.bmm(z.transpose(1, 2), w_all).transpose(0, 1).contiguous()  # [B, F, D]

    @staticmethod
    def backward(ctx, grad: Tensor):
        xc_t, q, w_all, z = ctx.saved_tensors
        grad = grad.transpose(0, 1).contiguous()  # [F, B, D]
        needs_xc, needs_q, needs_w = ctx.needs_input_grad[:3]  # W-steps: no q; alpha steps: only q
        grad_w = torch.bmm(z, grad) if needs_w else None  # [F, sum d_n, D]
        grad_z = torch.matmul(w_all, grad.transpose(1, 2))  # [F, sum d_n, B] (faster than bmm here)
        grad_xc = None  # [F, D, B]; the widest candidate (d = D, the last) covers every channel
        grad_q = torch.empty_like(q) if needs_q else None
        ends = torch.tensor(ctx.widths).cumsum(0).tolist()
        for n in reversed(range(len(ctx.widths))):
            d = ctx.widths[n]
            grad_zn = grad_z[:, ends[n] - d:ends[n]]
            if needs_xc and grad_xc is None:
                grad_xc = grad_zn * q[:, n:n + 1]
            elif needs_xc:
                grad_xc[:, :d].addcmul_(grad_zn, q[:, n:n + 1])
            if grad_q is not None:
                torch.sum(grad_zn * xc_t[:, :d], dim=1, out=grad_q[:, n])
        return grad_xc, grad_q, grad_w, None
