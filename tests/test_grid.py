"""`embdim grid`: cartesian expansion, stable cell names, restart skips finished cells, report."""

import json

import pytest
import yaml

import embdim.grid as grid_mod
from embdim.cli import main
from embdim.errors import ConfigError, EmbdimError
from embdim.grid import cell_names, expand, load_grid, run_grid


def _spec(data, **grid):
    return {"base": {"data": {"path": str(data)}, "model": {"name": "fm"}, "method": {"name": "fde"},
                     "train": {"epochs": 1, "batch_size": 2000, "early_stop": 0, "seed": 1}},
            "grid": grid or {"method.name": ["fde", "random"], "train.seed": [1, 2]}}


def test_expand_cartesian_product_and_names():
    base = {"method": {"name": "fde"}, "train": {"seed": 0}}
    cells = expand(base, {"method.name": ["fde", "sseds"], "model.name": ["fm", "deepfm"],
                          "train.seed": [1, 2, 3], "method.budget": [0.1, 0.3]})
    assert len(cells) == 24
    assert cells[0].name == "method-fde_model-fm_seed-1_budget-0.1"
    assert cells[0].config == {"method": {"name": "fde", "budget": 0.1}, "model": {"name": "fm"},
                               "train": {"seed": 1}}
    assert base == {"method": {"name": "fde"}, "train": {"seed": 0}}  # base left untouched
    assert len({c.name for c in cells}) == 24
    again = expand(base, {"method.name": ["fde", "sseds"], "model.name": ["fm", "deepfm"],
                          "train.seed": [1, 2, 3], "method.budget": [0.1, 0.3]})
    assert [c.name for c in again] == [c.name for c in cells]  # stable


def test_cell_names_are_filesystem_safe_and_unique():
    names = cell_names([{"model.mlp": [64, 64], "data.path": "a/b c"},
                        {"model.mlp": [64, 64], "data.path": "a_b:c"},
                        {"model.mlp": ["x" * 200], "data.path": "d"}])
    assert names[0].startswith("mlp-64-64_path-a_b_c_") and names[0] != names[1]
    assert all(set(n) <= set("abcdefghijklmnopqrstuvwxyz0123456789._-") for n in names)
    assert len(names[2]) <= grid_mod.MAX_NAME + 9
    # two keys with the same last part keep their full dotted key
    assert cell_names([{"model.dropout": 0.1, "train.dropout": 0.2}]) == [
        "model.dropout-0.1_train.dropout-0.2"]


@pytest.mark.parametrize("spec, match", [
    ({"base": {}, "grid": {"seed": [1]}}, "section.key"),
    ({"base": {}, "grid": {"train.seed": []}}, "one or more values"),
    ({"base": {}, "grid": {"train.seed": 3}}, "one or more values"),
    ({"base": {}, "cells": {}}, "`base`"),
])
def test_bad_grids_are_refused(spec, match):
    with pytest.raises(ConfigError, match=match):
        load_grid(spec)


def test_cell_config_validated_before_anything_runs(tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(grid_mod, "run_experiment", lambda *a, **k: calls.append(a))
    with pytest.raises(ConfigError, match="grid cell .*seed-1.*batch_size"):
        run_grid(_spec(tmp_path, **{"train.seed": [1], "train.batch_size": [0]}), tmp_path / "g")
    assert calls == []


def _fake_run(calls):
    def run(cfg, run_dir, *, resume=False, quiet=False):
        calls.append((run_dir.name, resume))
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.to_dict()))
        metrics = {"model": cfg.model.name, "seed": cfg.train.seed, "test_auc": 0.7 + cfg.train.seed / 100,
                   "test_logloss": 0.5, "embedding_params": 100, "dims": {"a": 2}}
        (run_dir / "metrics.json").write_text(json.dumps(metrics))
        return metrics
    return run


def test_restart_skips_finished_and_resumes_unfinished(small, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(grid_mod, "run_experiment", _fake_run(calls))
    out = tmp_path / "g"
    first = run_grid(_spec(small), out, quiet=True)
    assert sorted(c for c, _ in calls) == ["method-fde_seed-1", "method-fde_seed-2",
                                           "method-random_seed-1", "method-random_seed-2"]
    assert all(not resume for _, resume in calls) and len(first.ran) == 4
    # an interrupted cell: folder without metrics.json -> resumed; the others are skipped
    (out / "method-random_seed-2" / "metrics.json").unlink()
    calls.clear()
    second = run_grid(_spec(small), out, quiet=True)
    assert calls == [("method-random_seed-2", True)]
    assert second.skipped == ["method-fde_seed-1", "method-fde_seed-2", "method-random_seed-1"]
    calls.clear()
    assert run_grid(_spec(small), out, quiet=True).ran == [] and calls == []
    report = (out / "report.md").read_text()
    assert "| fde | 0.7150 ± 0.0071 |" in report and "(auc_params_" in report
    assert (out / "report.csv").exists() and yaml.safe_load((out / "grid.yaml").read_text())["grid"]
    # a finished cell whose config no longer matches the grid is refused, not silently reused
    spec = _spec(small)
    spec["base"]["train"]["epochs"] = 2
    with pytest.raises(ConfigError, match="finished with another config.*epochs: 1 -> 2"):
        run_grid(spec, out, quiet=True)


def test_keep_going_and_cli(small, tmp_path, monkeypatch, capsys):
    calls = []
    fake = _fake_run(calls)

    def flaky(cfg, run_dir, **kw):
        if cfg.method["name"] == "random" and cfg.train.seed == 2:
            raise ConfigError("boom")
        return fake(cfg, run_dir, **kw)

    monkeypatch.setattr(grid_mod, "run_experiment", flaky)
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_spec(small)))
    assert main(["--quiet", "grid", str(path), "--out", str(tmp_path / "g")]) == 2  # stops at the error
    assert len(calls) == 3
    calls.clear()
    assert main(["--quiet", "grid", str(path), "--out", str(tmp_path / "g"), "--keep-going"]) == 1
    assert calls == []  # the three finished cells skipped
    out = capsys.readouterr().out
    assert "3 already finished, 1 failed (method-random_seed-2)" in out and "| random |" in out


def test_real_grid_on_planted_data(planted, tmp_path):
    out = tmp_path / "g"
    spec = _spec(planted, **{"train.seed": [1, 2]})
    result = run_grid(spec, out, quiet=True)
    assert result.ran == ["seed-1", "seed-2"]
    metrics = json.loads((out / "seed-2" / "metrics.json").read_text())
    assert metrics["seed"] == 2 and 0.5 < metrics["test_auc"] <= 1
    assert run_grid(spec, out, quiet=True).skipped == ["seed-1", "seed-2"]
    assert "| fde | " in (out / "report.md").read_text()
    assert (out / "dims_planted_fm.png").read_bytes()[:4] == b"\x89PNG"


def test_a_cell_recorded_before_a_new_option_existed_still_counts_as_finished(small, tmp_path):
    """A config.yaml written before a train option was added (the key is missing, the new default
    applies) is the same config: the grid restart skips the cell instead of refusing it."""
    spec = {"base": {"data": {"path": str(small)}, "model": {"name": "fm"},
                     "method": {"name": "fde", "dim": 4},
                     "train": {"epochs": 1, "batch_size": 1000, "seed": 1}},
            "grid": {"train.seed": [1]}}
    first = run_grid(spec, tmp_path / "g", quiet=True, plots=False)
    cell = tmp_path / "g" / first.cells[0].name
    recorded = yaml.safe_load((cell / "config.yaml").read_text())
    del recorded["train"]["in_memory_limit_gb"]  # as written by an older version
    (cell / "config.yaml").write_text(yaml.safe_dump(recorded))
    again = run_grid(spec, tmp_path / "g", quiet=True, plots=False)
    assert again.skipped == [first.cells[0].name]


@pytest.mark.parametrize("key, values, match", [
    ("method.name", ["fde", "bogus"], "unknown method 'bogus'"),
    ("model.name", ["fm", "nosuchmodel"], "unknown model 'nosuchmodel'"),
    ("method.candidates", [[2, 8], [2, 8.5]], r"method.candidates\[1\]: expected an integer"),
])
def test_a_bad_name_in_any_cell_fails_before_the_first_cell_runs(tmp_path, monkeypatch, key, values,
                                                                 match):
    calls = []
    monkeypatch.setattr(grid_mod, "run_experiment", _fake_run(calls))
    with pytest.raises(ConfigError, match=match):
        run_grid(_spec(tmp_path, **{key: values}), tmp_path / "g", quiet=True)
    assert calls == [] and not (tmp_path / "g").exists()


@pytest.mark.parametrize("damage, words", [
    ("missing", "prepared dataset folder does not exist"),
    ("labels", "test rows: row 0: label 2 is not 0 or 1"),
    ("array", "valid.x.npy is not a readable .npy array"),
])
def test_a_missing_or_damaged_dataset_in_any_cell_fails_before_the_first_cell_runs(
        small, tmp_path, monkeypatch, capsys, damage, words):
    import shutil

    import numpy as np

    calls = []
    monkeypatch.setattr(grid_mod, "run_experiment", _fake_run(calls))
    bad = tmp_path / "bad"
    if damage != "missing":
        shutil.copytree(small, bad)
    if damage == "labels":
        y = np.load(bad / "test.y.npy")
        y[0] = 2.0
        np.save(bad / "test.y.npy", y)
    elif damage == "array":
        (bad / "valid.x.npy").write_bytes(b"\x93NUMPY garbage")
    path = tmp_path / "grid.yaml"
    path.write_text(yaml.safe_dump(_spec(small, **{"data.path": [str(small), str(bad)]})))
    assert main(["--quiet", "grid", str(path), "--out", str(tmp_path / "g")]) == 2
    assert calls == [] and not (tmp_path / "g").exists()
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: grid cell path-") and err.count("\n") == 1, err
    assert words in err, err


def test_a_plan_for_another_dataset_in_any_cell_fails_before_the_first_cell_runs(
        small, planted, tmp_path, monkeypatch):
    from embdim.data.dataset import PreparedDataset
    from embdim.plan import DimensionPlan

    calls = []
    monkeypatch.setattr(grid_mod, "run_experiment", _fake_run(calls))
    plan = tmp_path / "plan.json"
    DimensionPlan.uniform(PreparedDataset(small).schema, 4).save(plan)
    spec = _spec(small, **{"data.path": [str(small), str(planted)]})
    spec["base"]["method"] = {"name": "plan", "path": str(plan)}
    with pytest.raises(EmbdimError, match="grid cell path-.*plan does not match the dataset"):
        run_grid(spec, tmp_path / "g", quiet=True)
    assert calls == [] and not (tmp_path / "g").exists()
