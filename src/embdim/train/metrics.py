"""Evaluation metrics of the papers: AUC and Logloss (binary cross-entropy)."""

from __future__ import annotations

import numpy as np
from sklearn.metrics import log_loss, roc_auc_score

LOGLOSS_EPS = 1e-7


def binary_metrics(labels: np.ndarray, probs: np.ndarray) -> dict[str, float]:
    """AUC and Logloss of predicted click probabilities ``probs`` [N] against 0/1 ``labels`` [N].

    AUC is undefined when only one class is present; it is then reported as NaN.
    """
    labels = np.asarray(labels, dtype=np.float64)
    probs = np.clip(np.asarray(probs, dtype=np.float64), LOGLOSS_EPS, 1 - LOGLOSS_EPS)
    if labels.size == 0:
        return {"auc": float("nan"), "logloss": float("nan")}
    both = 0 < labels.sum() < labels.size
    auc = float(roc_auc_score(labels, probs)) if both else float("nan")
    return {"auc": auc, "logloss": float(log_loss(labels, probs, labels=[0.0, 1.0]))}
