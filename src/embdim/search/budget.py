"""Budget mode: the best field-level plan whose embedding tables fit a parameter budget.

``method.budget: kappa`` (AutoDim, AutoDim-s, RaS, MDE) asks for a plan with

    sum_i vocab_i * d_i  <=  floor(kappa * sum_i vocab_i * d_max)

(``d_max``: the largest candidate, the FDE width the plan is compared with), so that every method
can be compared with FDE and SSEDS at equal size. The tables are what is counted, as in
``plan.embedding_params``; the alignment to one width (``W_i [d_i, D]`` per field, the same for
every plan) is not.

For the methods that learn a score per (field, width) (AutoDim's architecture weights alpha),
:func:`best_widths_under_budget` solves the multiple-choice knapsack exactly: one width per field,
maximising the summed scores under the budget (a small integer program, solved with SciPy's HiGHS
MILP interface).
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np

from embdim.errors import ConfigError


def check_kappa(kappa: float | None, where: str = "method.budget") -> None:
    """``None`` (no budget) or a fraction ``0 < kappa <= 1``; else a ConfigError."""
    if kappa is not None and not (isinstance(kappa, int | float) and 0.0 < float(kappa) <= 1.0):
        raise ConfigError(f"{where} must be a fraction in (0, 1] of the FDE embedding parameters "
                          f"(or null), got {kappa!r}")


def budget_entries(kappa: float, total: int) -> int:
    """``floor(kappa x total)`` computed exactly (kappa read as the decimal it prints as, so
    ``0.57 x 100`` is 57, not 56 by float rounding): every method's budget in entries."""
    return int(Fraction(str(float(kappa))) * total)


def budget_params(vocab_sizes: list[int], full_dim: int, kappa: float) -> int:
    """The budget in embedding-table entries: ``floor(kappa * sum(vocab) * full_dim)``."""
    return budget_entries(kappa, sum(vocab_sizes) * int(full_dim))


def capped_at_vocab(widths: list[list[int]], vocab_sizes: list[int]) -> list[list[int]]:
    """Each field's candidate widths capped at its vocabulary, ``min(d, vocab_i)``: a table of
    ``v`` rows has rank at most ``v``, so behind a linear alignment ``E_i W_i`` (``[v, d] x [d, D]``)
    width ``v`` represents every matrix width ``d > v`` does, with fewer entries (AutoDim's
    ``vocab_cap``). Capped candidates of one field may coincide; they keep their own scores."""
    return [[min(int(d), int(v)) for d in w] for w, v in zip(widths, vocab_sizes, strict=True)]


def check_feasible(vocab_sizes: list[int], widths: list[list[int]], budget: int, kappa: float,
                   full_dim: int, method: str) -> None:
    """Refuse a budget below the smallest plan (every field at its narrowest candidate)."""
    smallest = sum(v * min(w) for v, w in zip(vocab_sizes, widths, strict=True))
    if smallest > budget:
        need = smallest / (sum(vocab_sizes) * full_dim)
        raise ConfigError(f"{method}: method.budget {kappa} ({budget:,} entries) is below the smallest "
                          f"plan ({smallest:,} entries: every field at its narrowest candidate, i.e. "
                          f"kappa >= {need:.4f}); raise the budget or add narrower candidates")


def best_widths_under_budget(scores: list[list[float]], widths: list[list[int]],
                             vocab_sizes: list[int], budget: int) -> list[int]:
    """Per field one of ``widths[i]``, maximising ``sum_i scores[i][choice]`` subject to
    ``sum_i vocab_i * width_i <= budget`` (exact: an integer program, ties to the narrower plan).

    Raises ConfigError if even the narrowest widths exceed the budget.
    """
    from scipy.optimize import Bounds, LinearConstraint, milp

    if len(scores) != len(widths) or len(widths) != len(vocab_sizes):
        raise ValueError("scores, widths and vocab_sizes need one entry per field")
    smallest = sum(v * min(w) for v, w in zip(vocab_sizes, widths, strict=True))
    if smallest > budget:
        raise ConfigError(f"the budget ({budget:,} entries) is below the smallest plan ({smallest:,})")
    sizes = [len(w) for w in widths]
    if any(len(s) != n for s, n in zip(scores, sizes, strict=True)):
        raise ValueError("scores[i] needs one score per candidate width of field i")
    flat_scores = np.concatenate([np.asarray(s, dtype=np.float64) for s in scores])
    cost = np.concatenate([np.asarray(w, dtype=np.float64) * v
                           for w, v in zip(widths, vocab_sizes, strict=True)])
    # a tie-break far below any score difference that matters: of equally scored plans, the smaller
    span = float(np.ptp(flat_scores)) or 1.0
    objective = -(flat_scores - 1e-9 * span * cost / max(cost.max(), 1.0))
    one_per_field = np.zeros((len(widths), len(cost)))
    start = 0
    for i, n in enumerate(sizes):
        one_per_field[i, start:start + n] = 1.0
        start += n
    res = milp(objective, integrality=np.ones(len(cost)), bounds=Bounds(0, 1),
               constraints=[LinearConstraint(one_per_field, 1, 1),
                            LinearConstraint(cost[None, :], -np.inf, float(budget))],
               options={"mip_rel_gap": 0.0})
    if res.x is None:  # pragma: no cover - the smallest plan is feasible, checked above
        raise ConfigError(f"no plan fits the budget ({res.message})")
    chosen = np.round(res.x).astype(bool)
    dims, start = [], 0
    for w, n in zip(widths, sizes, strict=True):
        dims.append(int(np.asarray(w)[chosen[start:start + n]][0]))
        start += n
    if sum(v * d for v, d in zip(vocab_sizes, dims, strict=True)) > budget:  # pragma: no cover
        raise ConfigError("the knapsack solver returned a plan over the budget")
    return dims
