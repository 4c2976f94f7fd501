"""AutoEmb's popularity-controlled soft-selection embedding (Zhao et al., "AutoEmb: Automated
Embedding Dimensionality Search in Streaming Recommendations", sec. 2.2-2.3) for every field of a
CTR dataset: the search supernet of the ``autoemb`` method (:mod:`embdim.search.autoemb`).

Shapes: ``B`` batch, ``F`` fields, ``N`` candidate widths ``d_1 < ... < d_N``, ``D = d_N``.

Per feature *value* (not per field) the layer holds N candidate embeddings ``e^1 .. e^N`` (one
table ``[sum vocab, d_1 + ... + d_N]`` over the concatenated vocabularies: one gather per batch,
sec. 3.2) and, per field and candidate, the paper's unifying transform and normalisation:

* eq. 1: ``e~^n = e^n W_n + b_n`` with ``W_n [d_n, D]`` (one per field and candidate, as the paper
  has one per entity type: users, items);
* eq. 2: ``e^^n = tanh(BatchNorm(e~^n))`` (BatchNorm without affine parameters, one per field,
  candidate and coordinate; batch statistics in training, running statistics in evaluation);
* eq. 7: ``e = (1/N) sum_n w_n e^^n`` with the weights ``w [N]`` of a controller
  (:class:`embdim.autoemb.controller.Controller`, Fig. 4: tanh layers, softmax) fed the value's
  *popularity* and its *context* (:func:`embdim.autoemb.controller.controller_features`: 32 log2
  popularity buckets, log popularity, the weights and loss the value got the last time a training
  batch held it, a seen flag; 38 inputs for N = 3).

Popularity of a value = its count in the training split (``frequencies.npy`` of the prepared
dataset). It is fixed: the same number when the controller is trained (on validation batches), when
the model trains, and when the plan is derived. One controller per field (``controllers="field"``,
as the paper has one for users and one for items) or one for all fields (``"shared"``).
``inputs`` leaves out a part of the controller input for an ablation: a left-out part is blanked to
what a value without it would show (popularity 0; the context of a value never seen), so the input
size stays the paper's.

Input ``ids [B, F]`` (int32/int64), output ``[B, F, D]``; every field is kept. The controller runs
once per distinct id in the batch (its output depends only on the id's popularity and context).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import Tensor, nn

from embdim.autoemb.controller import (
    POPULARITY_BUCKETS,
    Context,
    Controller,
    controller_features,
    popularity_bucket,
)
from embdim.autoemb.model import soft_select
from embdim.nn.embedding import _offsets

CONTROLLER_SCOPES = ("field", "shared")
CONTROLLER_INPUTS = ("popularity", "context")


class ValueContext(nn.Module):
    """The controllers' per-value context as buffers (saved with the model, moved by ``.to``):
    ``last_weights [V, N]`` (``1/N`` before a value's first training batch), ``last_loss [V]``,
    ``seen [V]``; updated by :meth:`update` (AutoEmb's :class:`~embdim.autoemb.controller.Context`
    rule: a value held several times in one batch gets the mean of its weights and losses)."""

    update = Context.update  # reads and writes only the three tensors below

    def __init__(self, num: int, num_candidates: int):
        super().__init__()
        self.register_buffer("last_weights", torch.full((num, num_candidates), 1.0 / num_candidates))
        self.register_buffer("last_loss", torch.zeros(num))
        self.register_buffer("seen", torch.zeros(num))


class PopularityEmbedding(nn.Module):
    """Per-value soft selection over candidate widths, weighted by popularity controllers.

    Args:
        vocab_sizes: per field, the number of ids.
        frequencies: per field, the training count of every id (``PreparedDataset.frequencies()``).
        candidates: the candidate widths (sorted, distinct); ``D`` is the largest.
        hidden: the controllers' hidden widths (the paper: 512, 512).
        controllers: ``"field"`` (one controller per field) or ``"shared"`` (one for all).
        inputs: the parts of the controller input used: ``"popularity"``, ``"context"`` (both: the
            paper); a part left out is blanked.
        init_std: std of the N(0, std^2) candidate tables (0.1, as AutoEmb's streaming model).
    """

    def __init__(self, vocab_sizes: Sequence[int], frequencies: Sequence[np.ndarray],
                 candidates: Sequence[int] = (2, 16, 128), *, hidden: Sequence[int] = (512, 512),
                 controllers: str = "field", inputs: Sequence[str] = CONTROLLER_INPUTS,
                 init_std: float = 0.1):
        super().__init__()
        widths = [int(w) for w in candidates]
        if not widths or widths[0] < 1 or sorted(set(widths)) != widths:
            raise ValueError(f"candidate widths must be positive and increasing, got {widths}")
        if controllers not in CONTROLLER_SCOPES:
            raise ValueError(f"controllers must be one of {CONTROLLER_SCOPES}, got {controllers!r}")
        if not set(inputs) <= set(CONTROLLER_INPUTS):
            raise ValueError(f"inputs must be among {CONTROLLER_INPUTS}, got {list(inputs)}")
        self.inputs = tuple(i for i in CONTROLLER_INPUTS if i in inputs)
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        if len(frequencies) != len(self.vocab_sizes) or any(
                len(c) != v for c, v in zip(frequencies, self.vocab_sizes, strict=True)):
            raise ValueError("frequencies must hold one count per id of every field")
        self.widths, self.out_dim, self.controllers_scope = widths, widths[-1], controllers
        nf, n, d = len(self.vocab_sizes), len(widths), widths[-1]
        total = sum(self.vocab_sizes)
        self.register_buffer("offsets", _offsets(self.vocab_sizes))
        self.register_buffer("popularity", torch.as_tensor(
            np.concatenate([np.asarray(c, dtype=np.float64) for c in frequencies]), dtype=torch.float32))
        self.table = nn.Parameter(torch.empty(total, sum(widths)))
        nn.init.normal_(self.table, std=init_std)
        # eq. 1 per field and candidate: W_n [F, d_n, D], b_n [F, D] (nn.Linear's initialisation)
        self.weights = nn.ParameterList(nn.Parameter(torch.empty(nf, w, d)) for w in widths)
        self.biases = nn.ParameterList(nn.Parameter(torch.empty(nf, d)) for _ in widths)
        for w, weight, bias in zip(widths, self.weights, self.biases, strict=True):
            bound = 1.0 / w ** 0.5
            nn.init.uniform_(weight, -bound, bound)
            nn.init.uniform_(bias, -bound, bound)
        self.norm = nn.BatchNorm1d(nf * n * d, affine=False)  # eq. 2: one per field, candidate, coord
        self.controllers = nn.ModuleList(Controller(n, hidden)
                                         for _ in range(nf if controllers == "field" else 1))
        self.context = ValueContext(total, n)
        self._last: tuple[Tensor, Tensor] | None = None  # (rows, weights) of the last training forward

    # ---- the interface build_model expects of an embedding ------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_output_fields(self) -> int:
        return self.num_fields

    @property
    def kept_fields(self) -> list[int]:
        return list(range(self.num_fields))

    @property
    def num_candidates(self) -> int:
        return len(self.widths)

    @property
    def embedding_params(self) -> int:
        """Candidate-table entries: ``sum vocab x (d_1 + ... + d_N)``."""
        return self.table.numel()

    def controller_parameters(self) -> list[nn.Parameter]:
        """``Theta``: the parameters the bilevel search updates on validation batches."""
        return list(self.controllers.parameters())

    # ---- controller ---------------------------------------------------------------------------
    def controller_weights(self, rows: Tensor) -> Tensor:
        """Soft-selection weights ``[R, N]`` of the global rows ``rows [R]`` (sorted, distinct)."""
        popularity = self.popularity[rows]
        if "popularity" not in self.inputs:
            popularity = torch.zeros_like(popularity)
        features = controller_features(popularity, rows, self.context)
        if "context" not in self.inputs:  # last weights 1/N, last loss 0, never seen
            features = features.clone()
            n, first = self.num_candidates, POPULARITY_BUCKETS + 1
            features[:, first:first + n] = 1.0 / n
            features[:, first + n:] = 0.0
        if len(self.controllers) == 1:
            return self.controllers[0](features)
        bounds = torch.searchsorted(rows, torch.cat([self.offsets, self.offsets.new_tensor(
            [len(self.popularity)])])).tolist()
        return torch.cat([self.controllers[f](features[a:b])
                          for f, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True))
                          if b > a])

    @torch.no_grad()
    def value_weights(self, chunk: int = 65536) -> list[Tensor]:
        """Per field, the controller weights ``[vocab, N]`` of every id with its current context."""
        rows = torch.arange(len(self.popularity), device=self.popularity.device)
        weights = torch.cat([self.controller_weights(rows[a:a + chunk])
                             for a in range(0, len(rows), chunk)]).cpu()
        return list(weights.split(self.vocab_sizes))

    def popularity_buckets(self) -> list[np.ndarray]:
        """Per field, the controller's popularity bucket of every id (``floor(log2(1 + count))``)."""
        buckets = popularity_bucket(self.popularity.cpu()).numpy()
        return list(np.split(buckets, np.cumsum(self.vocab_sizes)[:-1]))

    @torch.no_grad()
    def record(self, per_example_loss: Tensor) -> None:
        """Update the context of the values of the last training forward with the weights they got
        and their rows' loss ``[B]`` (called after each training step)."""
        if self._last is None:
            return
        rows, weights = self._last
        loss = per_example_loss.detach().unsqueeze(1).expand(-1, self.num_fields).reshape(-1)
        self.context.update(rows, weights, loss)
        self._last = None

    # ---- forward ------------------------------------------------------------------------------
    def candidate_embeddings(self, rows: Tensor) -> Tensor:
        """Eq. 1-2: ``rows [B, F] -> [B, F, N, D]``, ``tanh(BatchNorm(e^n W_n + b_n))``."""
        b, nf = rows.shape
        parts = self.table.index_select(0, rows.reshape(-1)).view(b, nf, -1).split(self.widths, dim=2)
        unified = torch.stack([torch.einsum("bfd,fdk->bfk", p, w) + bias for p, w, bias in
                               zip(parts, self.weights, self.biases, strict=True)], dim=2)
        return torch.tanh(self.norm(unified.reshape(b, -1))).view(b, nf, self.num_candidates,
                                                                   self.out_dim)

    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] -> [B, F, D] (eq. 7)."""
        rows = ids.long() + self.offsets
        flat = rows.reshape(-1)
        distinct, inverse = torch.unique(flat, return_inverse=True)
        weights = self.controller_weights(distinct)[inverse]  # [B F, N]
        if self.training:
            self._last = (flat, weights.detach())
        b, nf = ids.shape
        mixed = soft_select(self.candidate_embeddings(rows).view(b * nf, self.num_candidates,
                                                                 self.out_dim), weights)
        return mixed.view(b, nf, self.out_dim)

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, candidates={self.widths}, "
                f"controllers={self.controllers_scope}, inputs={list(self.inputs)}")
