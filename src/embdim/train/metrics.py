"""Evaluation metrics of the papers: AUC and Logloss (binary cross-entropy).

Exact, and lean in memory: about 10 bytes per row (a boolean label mask, the sorted negative scores)
instead of the ~100 of general-purpose implementations (float64 copies, a sort index, one-hot
labels), which made evaluating a 4.5M-row split cost +500 MB of peak memory. Checked against
scikit-learn in the tests.
"""

from __future__ import annotations

import numpy as np

LOGLOSS_EPS = 1e-7
CHUNK_ROWS = 1 << 18


def _positive_mask(labels: np.ndarray) -> np.ndarray:
    pos = np.empty(len(labels), dtype=bool)
    for s in range(0, len(labels), CHUNK_ROWS):
        pos[s:s + CHUNK_ROWS] = np.asarray(labels[s:s + CHUNK_ROWS]) > 0.5
    return pos


def roc_auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC of ``scores`` [N] (any monotone score: probabilities or logits) for 0/1 ``labels``
    [N]: for each positive, the share of negatives scored below it, ties counting one half (binary
    search in the sorted negative scores). NaN when only one class is present."""
    scores = np.asarray(scores)
    if not np.isfinite(scores).all():
        raise ValueError("scores contain NaN or infinity")
    pos = _positive_mask(labels)
    n_pos = int(np.count_nonzero(pos))
    n_neg = len(pos) - n_pos
    if n_pos == 0 or n_neg == 0:
        return float("nan")
    neg = np.sort(scores[~pos])
    below2 = 0  # twice the number of (positive, negative) pairs ordered correctly, ties once
    for s in range(0, len(pos), CHUNK_ROWS):
        score = scores[s:s + CHUNK_ROWS][pos[s:s + CHUNK_ROWS]]
        below2 += int(np.searchsorted(neg, score, "left").sum(dtype=np.int64))
        below2 += int(np.searchsorted(neg, score, "right").sum(dtype=np.int64))
    return below2 / (2 * n_pos * n_neg)


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    """Mean binary cross-entropy of ``probs`` [N] (clipped to [1e-7, 1 - 1e-7]) against 0/1
    ``labels`` [N], summed chunk by chunk in float64."""
    n = len(probs)
    if n == 0:
        return float("nan")
    total = 0.0
    for s in range(0, n, CHUNK_ROWS):
        q = np.clip(np.asarray(probs[s:s + CHUNK_ROWS], dtype=np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
        y = np.asarray(labels[s:s + CHUNK_ROWS]) > 0.5
        total -= float(np.where(y, np.log(q), np.log1p(-q)).sum())
    return total / n


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and Logloss of predicted click probabilities ``probs`` [N] against 0/1 ``labels`` [N].

    AUC is undefined when only one class is present; it is then reported as NaN.
    """
    if len(probs) == 0:
        return {"auc": float("nan"), "logloss": float("nan")}
    return {"auc": float(roc_auc(labels, probs)), "logloss": float(logloss(labels, probs))}
