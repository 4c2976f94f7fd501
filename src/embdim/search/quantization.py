"""DPQ and MGQE: product-quantised embeddings, the quantisation baselines of AutoDim's Table 2
(sec. 3.4 (iii) and (v)).

* **DPQ** (Chen et al., ICML 2020, "Differentiable Product Quantization for End-to-End Embedding
  Compression"; reference: chentingpc/dpq_embedding_compression, TensorFlow; CTR adaptation:
  Hsword/Hetu ``tools/EmbeddingMemoryCompression``);
* **MGQE** (Kang et al., WWW 2020, "Learning Multi-granular Quantized Embeddings for Large-Vocab
  Categorical Features"): DPQ where the rare ids of a field may use fewer centroids. The paper has
  no official code; Hetu's is the only public implementation and this one follows it.

A quantised embedding is trained from scratch, end to end, with the base model, so there is no
separate search: the "search" writes the plan (the options, MGQE's frequency tiers, the parameter
count) and the pipeline's retraining trains the quantised model on the base model
(:class:`~embdim.nn.quantized_embedding.ProductQuantizedEmbedding`, built from the plan's
``embedding`` entry), then evaluates it with the discrete codes fixed (the compressed model).

Parameter accounting (``plan.embedding["embedding_params"]`` = ``metrics.json``
``embedding_params``): what serving stores, in 32-bit parameters: the value codebooks (floats) plus
the codes' bits ``sum_ids D * ceil(log2 K_id)`` divided by 32. Training also holds the full-size query
table (``vocab x d``) and, for SX, the key codebooks: recorded as ``training_params``.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from embdim.data.schema import RESERVED_IDS
from embdim.errors import ConfigError
from embdim.nn.block_embedding import blocks_to_ranges, frequency_order
from embdim.nn.quantized_embedding import CODEBOOK_LAYOUTS, VARIANTS, quantized_params
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register
from embdim.search.fde import DEFAULT_CANDIDATES


@dataclass
class DPQOptions:
    """DPQ's options; the source of each default is in docs/quantization.md."""

    variant: str = "sx"  # "sx" (softmax, DPQ sec. 2) or "vq" (nearest centroid, DPQ sec. 2)
    num_centroids: int = 32  # K, centroids per codebook (DPQ sec. 2)
    num_groups: int = 8  # D, sub-vectors per embedding (DPQ sec. 2)
    dim: int | None = None  # d, the embedding width; None: the largest candidate (FDE's width)
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))
    share_centroids: bool = False  # one codebook for all D groups (DPQ reference: kdq_share_subspace)
    codebooks: str = "shared"  # "shared": one codebook set for all fields; "per_field"
    temperature: float = 1.0  # SX softmax temperature tau (DPQ sec. 2; reference 1.0)
    batch_norm: bool = True  # batch-normalise the responses (both references)
    beta: float = 0.0  # VQ commitment weight / SX code regulariser (both references: 0)

    @property
    def width(self) -> int:
        return int(self.dim) if self.dim is not None else max(int(c) for c in self.candidates)

    def centroid_tiers(self) -> list[int]:
        return [int(self.num_centroids)]

    def validate(self) -> None:
        if self.variant not in VARIANTS:
            raise ConfigError(f"method.variant must be one of {', '.join(VARIANTS)}, got {self.variant!r}")
        if self.codebooks not in CODEBOOK_LAYOUTS:
            raise ConfigError(f"method.codebooks must be one of {', '.join(CODEBOOK_LAYOUTS)}, got "
                              f"{self.codebooks!r}")
        if not self.candidates or any(int(c) <= 0 for c in self.candidates):
            raise ConfigError(f"method.candidates must be positive widths, got {self.candidates}")
        if self.dim is not None and self.dim <= 0:
            raise ConfigError(f"method.dim must be positive, got {self.dim}")
        if self.num_groups < 1 or self.width % self.num_groups:
            raise ConfigError(f"method.num_groups ({self.num_groups}) must divide the embedding width "
                              f"({self.width})")
        if any(k < 2 for k in self.centroid_tiers()):
            raise ConfigError(f"method.num_centroids must be >= 2, got {self.num_centroids}")
        if not self.temperature > 0:
            raise ConfigError(f"method.temperature must be positive, got {self.temperature}")
        if self.beta < 0:
            raise ConfigError(f"method.beta must be >= 0, got {self.beta}")


@dataclass
class MGQEOptions(DPQOptions):
    """MGQE's options; defaults: Hetu's MGQE setting (``run_compressed.py``)."""

    variant: str = "vq"
    num_centroids: list[int] = field(default_factory=lambda: [256, 64])  # K per tier, most frequent first
    tier_fractions: list[float] = field(default_factory=lambda: [0.1])  # share of a field's ids per
    #                                         tier but the last (the most frequent first)
    num_groups: int = 4
    codebooks: str = "per_field"

    def centroid_tiers(self) -> list[int]:
        return [int(k) for k in self.num_centroids]

    def validate(self) -> None:
        super().validate()
        ks, fractions = self.centroid_tiers(), [float(p) for p in self.tier_fractions]
        if not ks or any(a < b for a, b in zip(ks, ks[1:], strict=False)):
            raise ConfigError(f"method.num_centroids must be a non-increasing list (most frequent "
                              f"tier first), got {self.num_centroids}")
        if len(fractions) != len(ks) - 1:
            raise ConfigError(f"method.tier_fractions needs one share per tier but the last: "
                              f"{len(ks) - 1} for num_centroids {ks}, got {self.tier_fractions}")
        if any(p <= 0 for p in fractions) or sum(fractions) >= 1:
            raise ConfigError(f"method.tier_fractions must be positive and sum below 1, got "
                              f"{self.tier_fractions}")


def frequency_tiers(counts, fractions: list[float], centroids: list[int]) -> list[dict[str, Any]]:
    """One field's MGQE tiers: its ids from most to least frequent
    (:func:`~embdim.nn.block_embedding.frequency_order`), the first ``ceil(fractions[0] * n)`` in
    tier 0, the next ``ceil(fractions[1] * n)`` in tier 1, ..., the rest in the last tier; tier
    ``t`` may use ``centroids[t]`` centroids. Returns the non-empty tiers as
    ``{"start", "stop"[, "reserved_ids"], "num_centroids"}``."""
    order = frequency_order(counts, RESERVED_IDS)
    n, cuts, at = len(order), [], 0
    for p in fractions:
        at = min(n, at + math.ceil(p * n))
        cuts.append(at)
    bounds = [0, *cuts, n]
    tiers = [(order[a:b], k) for a, b, k in zip(bounds[:-1], bounds[1:], centroids, strict=True) if b > a]
    ranges = blocks_to_ranges([ids for ids, _ in tiers], RESERVED_IDS)
    return [{**r, "num_centroids": int(k)} for r, (_, k) in zip(ranges, tiers, strict=True)]


class _ProductQuantization(SearchMethod):
    """Shared by DPQ and MGQE: write the plan of the quantised embedding (nothing is trained here)."""

    def tiers(self, dataset) -> list[list[dict[str, Any]]] | None:
        return None

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        opts, schema = self.options, dataset.schema
        tiers = self.tiers(dataset)
        per_field = None if tiers is None else [
            [(int(t["stop"]) - int(t["start"]) + len(t.get("reserved_ids", [])), int(t["num_centroids"]))
             for t in f] for f in tiers]
        k = max(opts.centroid_tiers())
        size = quantized_params(schema.vocab_sizes, opts.width, opts.num_groups, k, per_field,
                                codebooks=opts.codebooks, share_centroids=opts.share_centroids)
        training = size["query_entries"] + size["value_entries"] * (2 if opts.variant == "sx" else 1)
        bits = "ceil(log2 K_tier)" if tiers else f"ceil(log2 {k}) = {math.ceil(math.log2(k))}"
        embedding = {
            "kind": self.name, "embedding_params": size["embedding_params"],
            "params_note": (f"serving storage in 32-bit parameters: {size['value_entries']} value-"
                            f"codebook entries + {size['code_bits']} code bits / 32 (D = "
                            f"{opts.num_groups} codes of {bits} bits per id); training also holds the "
                            f"full query table ({size['query_entries']} entries)"
                            + (" and the key codebooks" if opts.variant == "sx" else "")),
            "training_params": training, "code_bits": size["code_bits"],
            "value_entries": size["value_entries"],
            "variant": opts.variant, "dim": opts.width, "num_groups": opts.num_groups,
            "num_centroids": k, "codebooks": opts.codebooks, "share_centroids": opts.share_centroids,
            "temperature": opts.temperature, "batch_norm": opts.batch_norm, "beta": opts.beta,
        }
        if tiers is not None:
            embedding["tiers"] = tiers
        full = max(opts.width, *(int(c) for c in opts.candidates))
        return DimensionPlan(method=self.name, field_names=schema.field_names,
                             vocab_sizes=schema.vocab_sizes, dims=[opts.width] * schema.num_fields,
                             full_dim=full, schema_hash=schema.content_hash,
                             options=dataclasses.asdict(opts), embedding=embedding)


@register
class DPQ(_ProductQuantization):
    """Differentiable product quantisation (Chen et al., ICML 2020)."""

    name = "dpq"
    Options = DPQOptions


@register
class MGQE(_ProductQuantization):
    """Multi-granular quantised embeddings (Kang et al., WWW 2020): DPQ with frequency tiers."""

    name = "mgqe"
    Options = MGQEOptions

    def tiers(self, dataset) -> list[list[dict[str, Any]]]:
        fractions = [float(p) for p in self.options.tier_fractions]
        return [frequency_tiers(c, fractions, self.options.centroid_tiers())
                for c in dataset.frequencies()]
