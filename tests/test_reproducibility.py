"""Run folders record what reproduces them, and re-running a run folder's config.yaml gives the same
metrics exactly (same machine, same versions)."""

import json
import shutil

import numpy as np
import pytest
import torch
import yaml

import embdim
from embdim.cli import main
from embdim.config import config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.experiment import check_against_record, run_experiment


def _config(data, method):
    return {"data": {"path": str(data)}, "model": {"name": "deepfm", "mlp": [16]}, "method": method,
            "train": {"epochs": 1, "batch_size": 1000, "early_stop": 0, "seed": 7}}


@pytest.mark.parametrize("method", [
    {"name": "fde", "dim": 8},
    {"name": "ras", "candidates": [2, 4, 8], "trials": 2, "trial_epochs": 1},
    {"name": "sseds", "budget": 0.3, "pretrain_width": 8, "saliency_batches": 2},
], ids=lambda m: m["name"])
def test_rerunning_a_run_folders_config_reproduces_its_metrics(small, tmp_path, capsys, method):
    first = run_experiment(_config(small, method), tmp_path / "first", quiet=True)
    config = yaml.safe_load((tmp_path / "first" / "config.yaml").read_text())
    assert config == config_from_dict(_config(small, method)).to_dict()  # every default written out
    assert main(["--quiet", "run", str(tmp_path / "first" / "config.yaml"),
                 "--out", str(tmp_path / "again")]) == 0
    assert "warning" not in capsys.readouterr().err  # same data, versions and machine
    again = json.loads((tmp_path / "again" / "metrics.json").read_text())
    assert again["test_auc"] == first["test_auc"]  # exactly, not approximately
    assert again["test_logloss"] == first["test_logloss"]
    assert again["dims"] == first["dims"]
    assert [h["valid_auc"] for h in again["history"]] == [h["valid_auc"] for h in first["history"]]


def test_the_record(small, tmp_path):
    metrics = run_experiment(_config(small, {"name": "fde", "dim": 4}), tmp_path / "r", quiet=True)
    on_disk = json.loads((tmp_path / "r" / "metrics.json").read_text())
    assert on_disk["seed"] == 7
    assert on_disk["schema_hash"] == PreparedDataset(small).schema.content_hash
    assert len(on_disk["schema_hash"]) == 32
    assert on_disk["versions"]["embdim"] == embdim.__version__
    assert on_disk["versions"]["torch"] == torch.__version__
    assert on_disk["versions"]["numpy"] == np.__version__
    assert {"python", "platform"} <= set(on_disk["versions"])
    env = on_disk["environment"]
    assert env["torch_threads"] == torch.get_num_threads() and env["cpu_count"] >= 1
    assert env["cpu"] and env["device"] == "cpu" and env["data_path"] == str(small.resolve())
    assert metrics["environment"] == env


def test_rerun_warns_when_the_record_differs(small, tmp_path, capsys):
    run_experiment(_config(small, {"name": "fde", "dim": 4}), tmp_path / "r", quiet=True)
    cfg = config_from_dict(_config(small, {"name": "fde", "dim": 4}))
    assert check_against_record(tmp_path / "r" / "config.yaml", cfg) == []
    assert check_against_record(tmp_path / "nowhere" / "config.yaml", cfg) == []  # no record
    tampered = tmp_path / "tampered"
    shutil.copytree(tmp_path / "r", tampered)
    record = json.loads((tampered / "metrics.json").read_text())
    record["schema_hash"] = "0" * 32
    record["versions"]["torch"] = "0.0.1"
    record["environment"]["torch_threads"] = torch.get_num_threads() + 1
    (tampered / "metrics.json").write_text(json.dumps(record))
    notes = check_against_record(tampered / "config.yaml", cfg)
    assert len(notes) == 3
    assert "content hash" in notes[0] and "0" * 32 in notes[0] and "data changed" in notes[0]
    assert "torch 0.0.1 -> " + torch.__version__ in notes[1]
    assert f"train.threads={torch.get_num_threads() + 1}" in notes[2]
    assert main(["--quiet", "run", str(tampered / "config.yaml"), "--out", str(tmp_path / "x")]) == 0
    err = capsys.readouterr().err
    assert err.count("embdim: warning:") == 3 and "data changed" in err
    moved = config_from_dict({**_config(small, {"name": "fde"}), "data": {"path": "no/such/data"}})
    notes = check_against_record(tmp_path / "r" / "config.yaml", moved)
    assert len(notes) == 1 and "not found" in notes[0] and str(small.resolve()) in notes[0]
