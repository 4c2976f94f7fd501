"""AUC and Logloss: equal to scikit-learn's (ties, clipping, one class, NaN refused)."""

import numpy as np
import pytest


@pytest.mark.parametrize("n, ties", [(1, False), (50, True), (2000, False), (300_000, True)])
def test_auc_and_logloss_match_scikit_learn(n, ties):
    from sklearn.metrics import log_loss, roc_auc_score

    from embdim.train.metrics import binary_metrics

    rng = np.random.default_rng(n)
    y = (rng.random(n) < 0.3).astype(np.float32)
    p = rng.random(n).astype(np.float32)
    if ties:
        p = np.round(p, 1)  # many equal scores: ties count one half
    p[: n // 10] = 0.0  # clipped to 1e-7 in the Logloss
    m = binary_metrics(y, p)
    if 0 < y.sum() < n:
        assert m["auc"] == pytest.approx(roc_auc_score(y, p), rel=1e-12)
    else:
        assert np.isnan(m["auc"])
    clipped = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    assert m["logloss"] == pytest.approx(log_loss(y, clipped, labels=[0.0, 1.0]), rel=1e-10)
    with pytest.raises(ValueError):
        binary_metrics(y, np.full(n, np.nan))
