"""`embdim report`: groups runs by method x model, mean ± sample std over seeds."""

import csv
import json

import pytest
import yaml

from embdim.cli import main
from embdim.errors import EmbdimError
from embdim.report import collect, find_runs, write_report


def _run(root, name, method, model, seed, auc, logloss, params, dims=None):
    d = root / name
    d.mkdir(parents=True)
    (d / "config.yaml").write_text(yaml.safe_dump({"data": {"path": "prepared/x"},
                                                   "method": method, "model": {"name": model}}))
    (d / "metrics.json").write_text(json.dumps({"model": model, "seed": seed, "test_auc": auc,
                                                "test_logloss": logloss,
                                                "embedding_params": params,
                                                "dims": dims or {"a": 2, "b": 8}}))


@pytest.fixture
def runs(tmp_path):
    for seed, auc in ((1, 0.80), (2, 0.82), (3, 0.84)):
        _run(tmp_path, f"ad-fm-{seed}", {"name": "autodim"}, "fm", seed, auc, 0.4, 100,
             {"a": 2, "b": 8 if seed < 3 else 16})
    _run(tmp_path, "fde-fm-1", {"name": "fde", "dim": 32}, "fm", 1, 0.79, 0.45, 400)
    _run(tmp_path, "fde-deepfm-1", {"name": "fde", "dim": 32}, "deepfm", 1, 0.81, 0.44, 400)
    (tmp_path / "unfinished").mkdir()
    return tmp_path


def test_groups_and_statistics(runs):
    groups = {(g.method, g.model): g for g in collect(find_runs([runs]))}
    assert len(groups) == 3
    ad = groups[("autodim", "fm")]
    mean, std = ad.stat("test_auc")
    assert mean == pytest.approx(0.82) and std == pytest.approx(0.02)  # sample std of .80 .82 .84
    assert ad.seeds == [1, 2, 3]
    assert groups[("fde dim=32", "deepfm")].stat("embedding_params") == (400.0, 0.0)


def test_report_files_and_cli(runs, tmp_path, capsys):
    table = write_report([runs], tmp_path / "out")
    assert "| autodim | – | – | – | 0.8200 ± 0.0200 | 0.4000 ± 0.0000 | 100 ± 0 |" in table
    assert "| autodim | fm | 2 | 8/8/16 |" in table  # per-field dims, per seed where they differ
    rows = list(csv.DictReader(open(tmp_path / "out" / "report.csv")))
    assert {r["method"] for r in rows} == {"autodim", "fde dim=32"}
    assert main(["report", str(runs), "--out", str(tmp_path / "o2")]) == 0
    assert "fde dim=32" in capsys.readouterr().out
    with pytest.raises(EmbdimError, match="no finished run"):
        find_runs([runs / "unfinished"])
