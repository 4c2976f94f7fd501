"""Product-quantised embeddings trained end to end: DPQ (Chen et al., ICML 2020, "Differentiable
Product Quantization for End-to-End Embedding Compression") and MGQE (Kang et al., WWW 2020,
"Learning Multi-granular Quantized Embeddings for Large-Vocab Categorical Features").

Every id has a *query* vector ``q [d]`` (a row of a full-size table, needed only while training),
cut into ``D`` groups (sub-vectors) ``q^(j) [d/D]`` (DPQ sec. 2). Group ``j`` has a codebook of
``K`` centroids: keys ``K^(j) [K, d/D]`` and values ``V^(j) [K, d/D]``. The id's code in group ``j``
is the centroid whose key answers the query best (DPQ eq. 2),

    c_j = argmax_k  BN(r_jk),   r_jk = <q^(j), K^(j)_k>  (SX)   or   -||q^(j) - K^(j)_k||^2  (VQ)

(``BN``: a batch normalisation of the responses without scale and shift, as both references do),
and the embedding is the concatenation of the chosen values ``[V^(1)_{c_1}, ..., V^(D)_{c_D}]``.
Training passes gradients through the discrete choice:

* **SX** (DPQ-SX, DPQ sec. 2): ``w = softmax(BN(r) / tau)``, forward with the one-hot of the
  argmax, backward through ``w`` (straight-through: ``w + sg(onehot - w)``); keys and values are
  separate;
* **VQ** (DPQ-VQ, DPQ sec. 2): keys are the values, the output is
  ``q + sg(V_c - q)`` (the query's gradient is the output's), and the centroids learn from the
  auxiliary loss ``mean((V_c - sg(q))^2) + beta * mean((sg(V_c) - q)^2)`` (the second term, the
  commitment loss, has weight ``beta = 0`` in both references).

For SX, ``beta > 0`` adds the references' code regulariser ``-beta * mean(sum_k w_k log p_k)``.

MGQE (Kang et al.) gives the ids of a field *tiers* by training frequency: an id of tier
``t`` may only use the first ``K_t`` centroids of its codebook (the frequent ids all ``K``, the rare
ones fewer, so their codes take fewer bits). Here: a per-row centroid limit masks the responses
before the argmax (and the softmax), as Hetu's ``argmax_partial`` does.

Codebooks: one set for all fields (``codebooks="shared"``, Hetu's DPQ over the concatenated
vocabulary) or one per field (``"per_field"``, Hetu's MGQE); within a set, one codebook per group
or one shared by all ``D`` groups (``share_centroids``, the DPQ reference's ``kdq_share_subspace``).

**Inference uses the stored codes.** The module keeps a buffer ``codes [sum vocab, D]``. Switching
to evaluation (``model.eval()``) recomputes every id's code from the current query table (batch
norm with its running statistics), and the evaluation forward is then a plain codebook lookup
``V[codes[id]]``: exactly the compressed model that is stored for serving (codes + value codebooks;
the query table and the keys are only needed for training). The buffer is part of the state dict,
so a checkpoint holds the compressed model.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from embdim.nn.embedding import _offsets, init_embedding_
from embdim.nn.plan_embeddings import register_embedding_kind

VARIANTS = ("sx", "vq")
CODEBOOK_LAYOUTS = ("shared", "per_field")
BN_EPS = 1e-3  # TensorFlow's batch-normalisation epsilon, as in the DPQ reference
REFRESH_ROWS = 65536  # rows per chunk when the codes of the whole vocabulary are recomputed


def code_bits(num_centroids: int) -> int:
    """Bits of one code choosing among ``num_centroids`` centroids: ``ceil(log2 K)`` (at least 1)."""
    return max(1, math.ceil(math.log2(num_centroids)))


def quantized_params(vocab_sizes: list[int], dim: int, num_groups: int, num_centroids: int,
                     row_centroids: list[list[tuple[int, int]]] | None = None, *,
                     codebooks: str = "shared", share_centroids: bool = False) -> dict[str, int]:
    """The storage of a product-quantised embedding, in 32-bit parameters.

    ``value_entries``: the value codebooks, ``sets * (1 if share_centroids else D) * K * d/D``
    floats (``sets``: 1 shared or one per field); ``code_bits``: per id, ``D * ceil(log2 K_id)``
    bits (``K_id``: the centroids its tier may use; ``row_centroids[f]`` lists ``(number of ids,
    K)`` per tier of field ``f``; None: every id uses ``K``); ``embedding_params`` = value entries
    + ``ceil(code_bits / 32)``. ``training_params``: what training holds (query table, keys, values).
    """
    sets = 1 if codebooks == "shared" else len(vocab_sizes)
    books = 1 if share_centroids else num_groups
    sub = dim // num_groups
    values = sets * books * num_centroids * sub
    if row_centroids is None:
        row_centroids = [[(v, num_centroids)] for v in vocab_sizes]
    bits = sum(n * num_groups * code_bits(k) for field in row_centroids for n, k in field)
    return {"value_entries": values, "code_bits": bits,
            "embedding_params": values + math.ceil(bits / 32),
            "query_entries": sum(vocab_sizes) * dim}


class ProductQuantizedEmbedding(nn.Module):
    """DPQ / MGQE embedding of every field: ids ``[B, F]`` -> ``[B, F, dim]``.

    Args:
        vocab_sizes: per field, the number of ids.
        dim: ``d``, the embedding width (a multiple of ``num_groups``).
        num_groups: ``D``, the number of sub-vectors (groups) per embedding.
        num_centroids: ``K``, centroids per codebook.
        variant: ``"sx"`` (softmax, straight-through) or ``"vq"`` (nearest centroid).
        row_centroids: per global row (field offset + id), how many of the ``K`` centroids it may
            use (MGQE tiers); None: all ``K`` for every row (DPQ).
        codebooks: ``"shared"`` (one codebook set for all fields) or ``"per_field"``.
        share_centroids: one codebook shared by the ``D`` groups instead of one per group.
        temperature: SX softmax temperature ``tau``.
        batch_norm: normalise the responses (no scale/shift) before the argmax and the softmax.
        beta: VQ commitment weight; SX code-regulariser weight.
    """

    def __init__(self, vocab_sizes: list[int], dim: int, num_groups: int, num_centroids: int, *,
                 variant: str = "vq", row_centroids: Tensor | None = None,
                 codebooks: str = "shared", share_centroids: bool = False,
                 temperature: float = 1.0, batch_norm: bool = True, beta: float = 0.0):
        super().__init__()
        if variant not in VARIANTS:
            raise ValueError(f"variant must be one of {VARIANTS}, got {variant!r}")
        if codebooks not in CODEBOOK_LAYOUTS:
            raise ValueError(f"codebooks must be one of {CODEBOOK_LAYOUTS}, got {codebooks!r}")
        if dim < 1 or num_groups < 1 or dim % num_groups:
            raise ValueError(f"dim {dim} must be a positive multiple of num_groups {num_groups}")
        if num_centroids < 2:
            raise ValueError(f"num_centroids must be >= 2, got {num_centroids}")
        self.vocab_sizes = [int(v) for v in vocab_sizes]
        self.dim, self.num_groups, self.num_centroids = int(dim), int(num_groups), int(num_centroids)
        self.sub_dim = self.dim // self.num_groups
        self.variant, self.codebook_layout, self.share_centroids = variant, codebooks, share_centroids
        self.temperature, self.beta = float(temperature), float(beta)
        num_fields = len(self.vocab_sizes)
        self.kept_fields = list(range(num_fields))
        self.out_dim = self.dim
        sets = 1 if codebooks == "shared" else num_fields
        books = 1 if share_centroids else self.num_groups
        total = sum(self.vocab_sizes)
        self.query = nn.Parameter(torch.empty(total, self.dim))  # [sum V, d], training only
        self.keys = nn.Parameter(torch.empty(sets, books, self.num_centroids, self.sub_dim))
        self.values = (self.keys if variant == "vq" else
                       nn.Parameter(torch.empty(sets, books, self.num_centroids, self.sub_dim)))
        self.bn = (nn.BatchNorm1d(self.num_centroids, eps=BN_EPS, affine=False)
                   if batch_norm else None)
        self.register_buffer("offsets", _offsets(self.vocab_sizes), persistent=False)
        self.register_buffer("field_index", torch.arange(num_fields), persistent=False)
        # which codebook set each field reads: [F]
        self.register_buffer("field_set", torch.arange(num_fields) if sets > 1
                             else torch.zeros(num_fields, dtype=torch.long), persistent=False)
        if row_centroids is not None:
            row_centroids = torch.as_tensor(row_centroids, dtype=torch.long)
            if row_centroids.shape != (total,) or int(row_centroids.min()) < 1 or \
                    int(row_centroids.max()) > self.num_centroids:
                raise ValueError(f"row_centroids must be [{total}] in 1..{self.num_centroids}")
        self.register_buffer("row_centroids", row_centroids, persistent=False)
        # the compressed model: every id's D codes, and whether they are older than the weights
        self.register_buffer("codes", torch.zeros(total, self.num_groups, dtype=torch.long))
        self.register_buffer("codes_stale", torch.ones((), dtype=torch.bool))
        self._auxiliary_loss: Tensor | None = None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        init_embedding_(self.query)
        init_embedding_(self.keys)
        if self.values is not self.keys:
            init_embedding_(self.values)
        with torch.no_grad():
            self.codes_stale.fill_(True)

    # ---- sizes --------------------------------------------------------------------------------
    @property
    def num_fields(self) -> int:
        return len(self.vocab_sizes)

    @property
    def num_output_fields(self) -> int:
        return len(self.kept_fields)

    def storage(self) -> dict[str, int]:
        """:func:`quantized_params` of this module (the serving storage and the training size)."""
        if self.row_centroids is None:
            per_row = None
        else:
            per_row = [[(int(n), int(k)) for k, n in zip(*torch.unique(
                self.row_centroids[int(a):int(a) + v], return_counts=True), strict=True)]
                for a, v in zip(self.offsets.tolist(), self.vocab_sizes, strict=True)]
        return quantized_params(self.vocab_sizes, self.dim, self.num_groups, self.num_centroids,
                                per_row, codebooks=self.codebook_layout,
                                share_centroids=self.share_centroids)

    @property
    def embedding_params(self) -> int:
        """Serving storage in 32-bit parameters: value codebooks + code bits / 32 (see
        :func:`quantized_params`); the query table and the keys are not counted."""
        return self.storage()["embedding_params"]

    # ---- the pieces of the forward --------------------------------------------------------------
    def _codebooks(self, table: Tensor, fields: Tensor) -> Tensor:
        """The codebooks the given fields read: ``[F, D, K, d/D]`` (a broadcast view when the
        groups share one codebook)."""
        return table.index_select(0, self.field_set.index_select(0, fields)).expand(
            -1, self.num_groups, -1, -1)

    def responses(self, query: Tensor, fields: Tensor, rows: Tensor) -> Tensor:
        """Normalised responses ``[B, F, D, K]`` of queries ``[B, F, d]`` of the fields ``[F]``
        (global rows ``[B, F]``), with the centroids beyond a row's tier at ``-inf``."""
        q = query.view(*query.shape[:2], self.num_groups, self.sub_dim)  # [B, F, D, s]
        keys = self._codebooks(self.keys, fields)  # [F, D, K, s]
        dot = torch.einsum("bfds,fdks->bfdk", q, keys)
        if self.variant == "vq":  # -||q - k||^2 = 2 q.k - ||q||^2 - ||k||^2
            resp = 2 * dot - q.pow(2).sum(-1, keepdim=True) - keys.pow(2).sum(-1)
        else:
            resp = dot
        if self.bn is not None:
            resp = self.bn(resp.reshape(-1, self.num_centroids)).view_as(resp)
        if self.row_centroids is not None:
            limit = self.row_centroids[rows]  # [B, F]
            beyond = torch.arange(self.num_centroids, device=resp.device) >= limit[..., None, None]
            resp = resp.masked_fill(beyond, float("-inf"))
        return resp

    def lookup(self, codes: Tensor, fields: Tensor) -> Tensor:
        """The embeddings ``[B, F, d]`` (concatenated values) of codes ``[B, F, D]`` of the fields
        ``[F]``."""
        books = 1 if self.share_centroids else self.num_groups
        group = torch.arange(self.num_groups, device=codes.device) if books > 1 else 0
        sets = self.field_set.index_select(0, fields)[:, None]  # [F, 1]
        flat = (sets * books + group) * self.num_centroids + codes  # [B, F, D]
        table = self.values.reshape(-1, self.sub_dim)
        return table.index_select(0, flat.reshape(-1)).view(*codes.shape[:2], self.dim)

    # ---- forward ------------------------------------------------------------------------------
    def forward(self, ids: Tensor) -> Tensor:
        """ids [B, F] (int32/int64) -> [B, F, dim]: the training forward (straight-through) in
        training mode, a lookup of the stored codes in evaluation mode."""
        rows = ids + self.offsets  # [B, F] int64
        fields = self.field_index
        if not self.training:
            return self.lookup(self.codes[rows], fields)
        self.codes_stale.fill_(True)
        query = self.query[rows]  # [B, F, d]
        resp = self.responses(query, fields, rows)  # [B, F, D, K]
        codes = resp.argmax(-1)  # [B, F, D]
        if self.variant == "vq":
            chosen = self.lookup(codes, fields)  # [B, F, d]
            out = query + (chosen - query).detach()
            loss = (chosen - query.detach()).pow(2).mean()
            if self.beta:
                loss = loss + self.beta * (chosen.detach() - query).pow(2).mean()
        else:
            prob = torch.softmax(resp / self.temperature, dim=-1)  # [B, F, D, K]
            weights = prob + (F.one_hot(codes, self.num_centroids).to(prob.dtype) - prob).detach()
            values = self._codebooks(self.values, fields)  # [F, D, K, s]
            out = torch.einsum("bfdk,fdks->bfds", weights, values).reshape(*ids.shape, self.dim)
            loss = None
            if self.beta:
                loss = -self.beta * (weights * torch.log(prob + 1e-10)).sum(-1).mean()
        self._auxiliary_loss = loss
        return out

    def pop_auxiliary_loss(self) -> Tensor | None:
        """The auxiliary loss of the last training forward (VQ's codebook loss; SX's regulariser
        when ``beta > 0``), handed over once; None when there is none."""
        loss, self._auxiliary_loss = self._auxiliary_loss, None
        return loss

    # ---- the compressed model -----------------------------------------------------------------
    @torch.no_grad()
    def refresh_codes(self) -> None:
        """Recompute every id's codes from the current weights (batch norm: running statistics)."""
        was_training = self.bn.training if self.bn is not None else False
        if self.bn is not None:
            self.bn.eval()
        for f, (start, vocab) in enumerate(zip(self.offsets.tolist(), self.vocab_sizes, strict=True)):
            field = self.field_index[f:f + 1]
            for a in range(start, start + vocab, REFRESH_ROWS):
                rows = torch.arange(a, min(a + REFRESH_ROWS, start + vocab),
                                    device=self.codes.device)[:, None]  # [n, 1]
                resp = self.responses(self.query[rows], field, rows)  # [n, 1, D, K]
                self.codes[rows[:, 0]] = resp.argmax(-1)[:, 0]
        if self.bn is not None:
            self.bn.train(was_training)
        self.codes_stale.fill_(False)

    def train(self, mode: bool = True) -> ProductQuantizedEmbedding:
        """Switching to evaluation fixes the codes (recomputed if the weights changed since)."""
        super().train(mode)
        if not mode and bool(self.codes_stale):
            self.refresh_codes()
        return self

    def compressed(self) -> dict[str, Tensor]:
        """What serving stores: ``codes [sum vocab, D]`` (the smallest unsigned integer type that
        holds them) and the value codebooks ``values [sets, D or 1, K, d/D]``; ``offsets [F]``
        locate each field's rows. The embedding of id ``i`` of field ``f`` is the concatenation
        over ``j`` of ``values[set(f), j or 0, codes[offsets[f] + i, j]]``."""
        if bool(self.codes_stale):
            self.refresh_codes()
        dtype = torch.uint8 if self.num_centroids <= 256 else torch.int16 \
            if self.num_centroids <= 32768 else torch.int32
        return {"codes": self.codes.to(dtype).cpu(), "values": self.values.detach().cpu().clone(),
                "offsets": self.offsets.cpu().clone()}

    def extra_repr(self) -> str:
        return (f"fields={self.num_fields}, dim={self.dim}, D={self.num_groups}, "
                f"K={self.num_centroids}, variant={self.variant}, codebooks={self.codebook_layout}, "
                f"share_centroids={self.share_centroids}, tiers={self.row_centroids is not None}")


def row_centroids_from_tiers(vocab_sizes: list[int], tiers: list[list[dict[str, Any]]]) -> Tensor:
    """Per global row, its tier's number of centroids: ``[sum vocab]``. ``tiers[f]``: field ``f``'s
    tiers ``{"start", "stop"[, "reserved_ids"], "num_centroids"}`` (each id exactly once)."""
    from embdim.nn.block_embedding import block_ids

    out = []
    for f, (vocab, field) in enumerate(zip(vocab_sizes, tiers, strict=True)):
        limit = torch.zeros(vocab, dtype=torch.long)
        seen = 0
        for tier in field:
            ids = block_ids(tier)
            limit[ids] = int(tier["num_centroids"])
            seen += len(ids)
        if seen != vocab or int(limit.min()) < 1:
            raise ValueError(f"field {f}: the tiers must hold each id 0..{vocab - 1} exactly once")
        out.append(limit)
    return torch.cat(out)


def build_quantized(plan, options) -> ProductQuantizedEmbedding:
    """The embedding of a DPQ / MGQE plan (``plan.embedding``, written by
    :mod:`embdim.search.quantization`)."""
    e = plan.embedding
    tiers = e.get("tiers")
    rows = row_centroids_from_tiers(plan.vocab_sizes, tiers) if tiers else None
    module = ProductQuantizedEmbedding(
        plan.vocab_sizes, int(e["dim"]), int(e["num_groups"]), int(e["num_centroids"]),
        variant=str(e["variant"]), row_centroids=rows, codebooks=str(e["codebooks"]),
        share_centroids=bool(e["share_centroids"]), temperature=float(e["temperature"]),
        batch_norm=bool(e["batch_norm"]), beta=float(e["beta"]))
    if module.embedding_params != int(e["embedding_params"]):
        raise ValueError(f"the plan counts {e['embedding_params']} embedding parameters but its "
                         f"{e['kind']} embedding has {module.embedding_params}")
    return module


register_embedding_kind("dpq")(build_quantized)
register_embedding_kind("mgqe")(build_quantized)
