"""Statistics shared by the reports (CTR methods × models, and the streaming Table 2): mean ±
sample standard deviation over seeds, and the papers' significance marks (two-sided Welch t-test,
``*`` better / ``†`` worse at p < ``ALPHA``)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats

ALPHA = 0.05  # significance level of the reports' marks


def welch_ttest(a: Any, b: Any) -> float | None:
    """Two-sided Welch t-test p-value of mean(a) != mean(b); None where it is undefined (fewer than
    two values on a side, or no variance on either side)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b) == 0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)


def mean_std(values: Any) -> tuple[float, float]:
    """Mean and sample standard deviation (0 for a single value) of the values of the seeds."""
    a = np.asarray(values, dtype=float)
    return float(a.mean()), float(a.std(ddof=1)) if len(a) > 1 else 0.0


def format_mean_std(values: Any, fmt: str) -> str:
    """A table cell: ``mean ± std`` in the format ``fmt`` (e.g. ``.4f``), the mean alone for one
    value."""
    mean, std = mean_std(values)
    return f"{mean:{fmt}} ± {std:{fmt}}" if len(values) > 1 else f"{mean:{fmt}}"


def significance_mark(p_value: float | None, better: bool) -> str:
    """``*`` (significantly better) or ``†`` (significantly worse) where ``p_value < ALPHA``, else
    ''; ``better``: whether the tested method's mean is the better one."""
    if p_value is None or p_value >= ALPHA:
        return ""
    return "*" if better else "†"
