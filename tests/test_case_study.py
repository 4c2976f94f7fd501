"""``embdim case-study`` (AutoDim sec. 3.9, Table 4): single-field models next to searched widths."""

from __future__ import annotations

import json
import math

import pytest

from embdim.case_study import rank_correlation, run_case_study
from embdim.cli import main
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.errors import ConfigError
from embdim.plan import DimensionPlan


@pytest.fixture(scope="module")
def fde_run(tmp_path_factory):
    """A finished FDE run on planted data: one pure-noise field, one weak and two strong fields."""
    from embdim.config import config_from_dict
    from embdim.experiment import run_experiment

    root = tmp_path_factory.mktemp("case")
    spec = SyntheticSpec(cardinalities=[300, 20, 40, 40], true_dims=[0, 1, 8, 8], zipf_exponent=1.1,
                         first_order_std=0.0, interaction_std=2.0, seed=3)
    write_synthetic_dataset(root / "data", spec, 20_000, seed=3)
    cfg = config_from_dict({"data": {"path": str(root / "data")}, "model": {"name": "deepfm", "mlp": [16]},
                            "method": {"name": "fde", "dim": 8},
                            "train": {"batch_size": 500, "lr": 3e-3, "epochs": 2, "early_stop": 0,
                                      "seed": 1, "threads": 1}})
    run_experiment(cfg, root / "run", quiet=True)
    # the widths a search would have given: the test reads them back next to the single-field AUCs
    plan = DimensionPlan.load(root / "run" / "plan.json")
    plan.dims = [2, 2, 8, 6]
    plan.save(root / "run" / "plan.json")
    return root / "run"


def test_single_field_models_rank_the_informative_fields_first(fde_run, capsys):
    assert main(["--quiet", "case-study", str(fde_run), "--epochs", "2"]) == 0
    result = json.loads((fde_run / "case_study.json").read_text())
    auc = {r["field"]: r["single_field_auc"] for r in result["fields"]}
    assert [r["searched_dim"] for r in result["fields"]] == [2, 2, 8, 6]
    assert min(auc["f2"], auc["f3"]) > max(auc["f0"], auc["f1"]) + 0.02, auc
    assert auc["f0"] < 0.53, auc  # pure noise: nothing to learn from that field alone
    full = DimensionPlan.load(fde_run / "plan.json").full_dim
    assert result["single_field_model"] == "widedeep" and result["single_field_dim"] == full
    assert result["spearman_auc_vs_dim"] > 0.5
    table = (fde_run / "case_study.md").read_text()
    assert "| f2 |" in table and "Spearman" in table and "Spearman" in capsys.readouterr().out


def test_rank_correlation():
    assert rank_correlation([0.5, 0.6, 0.7], [2, 4, 8]) == pytest.approx(1.0)
    assert rank_correlation([0.5, 0.6, 0.7], [8, 4, 2]) == pytest.approx(-1.0)
    assert math.isnan(rank_correlation([0.5, 0.6], [4, 4]))


def test_a_folder_that_is_not_a_run_is_one_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="has no config.yaml"):
        run_case_study(tmp_path)
