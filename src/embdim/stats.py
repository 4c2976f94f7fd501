"""Statistics shared by the reports (CTR methods × models, and the streaming Table 2)."""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy import stats


def welch_ttest(a: Any, b: Any) -> float | None:
    """Two-sided Welch t-test p-value of mean(a) != mean(b); None where it is undefined (fewer than
    two values on a side, or no variance on either side)."""
    a, b = np.asarray(a, dtype=float), np.asarray(b, dtype=float)
    if len(a) < 2 or len(b) < 2:
        return None
    if a.var(ddof=1) / len(a) + b.var(ddof=1) / len(b) == 0:
        return None
    return float(stats.ttest_ind(a, b, equal_var=False).pvalue)
