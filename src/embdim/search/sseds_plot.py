"""Plots of an SSEDS plan in the layout of the paper's Fig. 7-8 (sec. 4.6): the distribution of the
saliency scores (sorted, log scale: the paper finds a power law) and the searched dimension per field.

    python -c "from embdim.search.sseds_plot import plot_plan; plot_plan('RUN/plan.json', 'RUN/sseds.png')"
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from embdim.errors import EmbdimError
from embdim.plan import DimensionPlan


def plot_plan(plan: DimensionPlan | str | Path, out: str | Path) -> Path:
    """Write a two-panel PNG for an SSEDS plan (``extra["saliency"]`` ``[fields, d]``); return its path.

    Drawn on matplotlib's Agg canvas directly (no pyplot, no global backend switch) and written
    atomically. ``embdim report`` draws the same distribution over seeds and budgets
    (:func:`embdim.plots.plot_saliency`)."""
    from embdim.plots import figure, save_figure

    if not isinstance(plan, DimensionPlan):
        plan = DimensionPlan.load(plan)
    if "saliency" not in plan.extra:
        raise EmbdimError(f"plan of method {plan.method!r} has no saliency matrix (not an SSEDS plan)")
    s = np.asarray(plan.extra["saliency"], dtype=float)  # [F, d]
    fig = figure(11, 3.8)
    ax1, ax2 = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    ranked = np.sort(s.reshape(-1))[::-1]
    ax1.plot(np.arange(1, ranked.size + 1), np.maximum(ranked, 1e-12))
    ax1.set_xscale("log")
    ax1.set_yscale("log")
    ax1.set_xlabel("rank of (field, dimension) cell")
    ax1.set_ylabel("saliency s_ij")
    kappa = plan.extra.get("budget", {}).get("kappa")
    ax1.set_title(f"saliency distribution ({s.shape[0]} fields x {s.shape[1]} dims)")
    ax2.bar(range(len(plan.dims)), plan.dims, color=["C0" if d else "C3" for d in plan.dims])
    ax2.set_xticks(range(len(plan.dims)))
    ax2.set_xticklabels(plan.field_names, rotation=60, ha="right", fontsize=8)
    ax2.set_ylabel("searched dimension")
    ax2.set_title(f"dims per field (kappa={kappa}; red: dropped)")
    out = Path(out)
    save_figure(fig, out)
    return out
