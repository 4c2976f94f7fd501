"""FDE (Full Dimension Embedding): every field at the same width — the baseline of all three papers.

AutoDim (Sec. 3.4) sets that width to the largest candidate; with ``dim`` given it is that width.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from embdim.errors import ConfigError
from embdim.plan import DimensionPlan
from embdim.search.base import SearchContext, SearchMethod, register

DEFAULT_CANDIDATES = [2, 8, 16, 24, 32]


@dataclass
class FDEOptions:
    dim: int | None = None  # the uniform width; default: the largest candidate
    candidates: list[int] = field(default_factory=lambda: list(DEFAULT_CANDIDATES))

    def validate(self) -> None:
        if self.dim is not None and int(self.dim) <= 0:
            raise ConfigError(f"method.dim must be positive, got {self.dim}")
        if not self.candidates or any(int(c) <= 0 for c in self.candidates):
            raise ConfigError(f"method.candidates must be positive widths, got {self.candidates}")

    @property
    def width(self) -> int:
        return int(self.dim) if self.dim is not None else max(int(c) for c in self.candidates)


@register
class FDE(SearchMethod):
    name = "fde"
    Options = FDEOptions

    def _search(self, dataset, ctx: SearchContext) -> DimensionPlan:
        w = self.options.width
        # The full-dimension reference is the largest candidate (AutoDim Sec. 3.4), so an FDE run
        # at a smaller width reports its size relative to it.
        full = max(w, max(int(c) for c in self.options.candidates))
        return DimensionPlan.uniform(dataset.schema, w, method=self.name, full_dim=full,
                                     options={"dim": w, "candidates": list(self.options.candidates)})
