"""The `embdim` command: run, search + retrain, errors as messages (not tracebacks)."""

import json

import pytest
import yaml

from embdim.cli import main
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    out = tmp_path_factory.mktemp("cli") / "data"
    spec = SyntheticSpec(cardinalities=[5, 40, 100], true_dims=[0, 2, 4], seed=1)
    write_synthetic_dataset(out, spec, 4000, seed=1)
    return out


@pytest.fixture
def config(tmp_path, data):
    p = tmp_path / "exp.yaml"
    p.write_text(yaml.safe_dump({"data": {"path": str(data)}, "model": {"name": "fm"},
                                 "method": {"name": "fde", "dim": 4},
                                 "train": {"epochs": 1, "batch_size": 500}}))
    return p


def test_run_writes_a_run_folder(config, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["--quiet", "run", str(config), "--set", "method.dim=2", "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["dims"].values()) == {2}
    assert "test_auc=" in capsys.readouterr().out


def test_search_then_retrain(config, tmp_path):
    assert main(["--quiet", "search", str(config), "--out", str(tmp_path / "s")]) == 0
    plan = json.loads((tmp_path / "s" / "plan.json").read_text())
    plan["fields"][0]["dim"] = 0  # hand-edit the plan: drop the first field
    (tmp_path / "s" / "plan.json").write_text(json.dumps(plan))
    assert main(["--quiet", "retrain", str(config), "--plan", str(tmp_path / "s" / "plan.json"),
                 "--out", str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert metrics["dims"]["f0"] == 0
    assert metrics["embedding_params"] == sum(f["vocab_size"] * f["dim"] for f in plan["fields"])


def test_errors_are_messages(config, tmp_path, capsys):
    assert main(["run", str(config), "--set", "train.lrr=1", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert "embdim: error:" in err and "lrr" in err and "Traceback" not in err
    assert main(["run", str(tmp_path / "missing.yaml")]) == 2
    assert "config file not found" in capsys.readouterr().err
    assert main(["run", str(config), "--set", "data.path=/nonexistent", "--out",
                 str(tmp_path / "y")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_python_api_search_by_class(data, tmp_path):
    from embdim import build_model
    from embdim.data import PreparedDataset
    from embdim.errors import ConfigError
    from embdim.search import FDE, SSEDS

    ds = PreparedDataset(data)
    plan = FDE(dim=4).search(ds, model="fm")
    assert set(plan.dims) == {4}
    plan = SSEDS(budget=0.5, pretrain_width=8).search(
        ds, model={"name": "fm"}, train={"epochs": 1, "batch_size": 500}, work_dir=tmp_path)
    assert plan.embedding_params <= 0.5 * plan.fde_embedding_params
    assert build_model("fm", ds.schema, plan).embedding_params == plan.embedding_params
    with pytest.raises(ConfigError, match="budgett"):
        SSEDS(budgett=0.1)


@pytest.mark.parametrize("method, alignment", [("ad-1", "pad"), ("autodim", "linear"), ("fde", "none")])
def test_retrain_of_a_saved_plan_trains_the_model_its_method_retrains(config, data, tmp_path, method,
                                                                      alignment):
    """`embdim retrain --plan` applies the retraining options of the method that made the plan
    (AD-1 zero-pads to the largest candidate; AutoDim aligns linearly with eq. 1's bias)."""
    from embdim.data.dataset import PreparedDataset
    from embdim.plan import DimensionPlan

    schema = PreparedDataset(data).schema
    dims = [2, 8] + [16] * (schema.num_fields - 2)
    DimensionPlan(method=method, field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                  dims=dims, full_dim=32, schema_hash=schema.content_hash).save(tmp_path / "plan.json")
    assert main(["--quiet", "retrain", str(config), "--plan", str(tmp_path / "plan.json"), "--out",
                 str(tmp_path / "r")]) == 0
    metrics = json.loads((tmp_path / "r" / "metrics.json").read_text())
    kept = [d for d in dims if d]
    expected = {"pad": 0, "none": sum(d * 16 for d in kept) if len(set(kept)) > 1 else 0,
                "linear": sum(d * 32 + 32 for d in kept)}[alignment]
    assert metrics["alignment_params"] == expected
