"""RaS and MDE: every trial trained and logged, the best on validation AUC returned, plans retrained."""

from __future__ import annotations

import json

import pytest

from embdim.config import config_from_dict
from embdim.experiment import run_experiment
from embdim.plan import DimensionPlan
from embdim.search.mde import mde_dims


def _cfg(path, method):
    return config_from_dict({"data": {"path": str(path)}, "model": {"name": "deepfm", "mlp": [16]},
                             "method": method,
                             "train": {"batch_size": 500, "epochs": 1, "seed": 3, "threads": 1}})


def test_ras_trains_every_trial_and_keeps_the_best_on_validation(small, tmp_path):
    metrics = run_experiment(_cfg(small, {"name": "ras", "trials": 3, "candidates": [2, 8, 16]}),
                             tmp_path / "run", quiet=True)
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    trials = plan.extra["trials"]
    assert len(trials) == 3
    assert all(set(t["dims"]) <= {2, 8, 16} for t in trials)
    best = max(trials, key=lambda t: t["valid_auc"])
    assert plan.dims == best["dims"] and plan.extra["best_trial"] == trials.index(best)
    assert metrics["embedding_params"] == plan.embedding_params == best["embedding_params"]
    # the winner retrained with the trials' seed reproduces its validation AUC
    assert metrics["valid_auc"] == pytest.approx(best["valid_auc"], abs=1e-6)
    log = (tmp_path / "run" / "log.txt").read_text()
    assert log.count("ras trial") == 3


def test_mde_widths_follow_popularity():
    assert mde_dims([10, 100, 1000], 0.0, 16) == [16, 16, 16]
    assert mde_dims([10, 100, 1000], 0.5, 16) == [16, 5, 2]
    assert mde_dims([10, 100, 1000], 1.0, 16, min_dim=2) == [16, 2, 2]


def test_mde_grid_search_returns_the_best_setting(small, tmp_path):
    method = {"name": "mde", "temperatures": [0.0, 0.5], "base_dims": [4, 8]}
    run_experiment(_cfg(small, method), tmp_path / "run", quiet=True)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    trials = plan["extra"]["trials"]
    assert len(trials) == 4 and {t["base_dim"] for t in trials} == {4, 8}
    best = max(trials, key=lambda t: t["valid_auc"])
    assert [f["dim"] for f in plan["fields"]] == best["dims"]
    assert plan["value_dim_rule"]["temperature"] == best["temperature"]
