"""Issue 15: nothing is written for a config that cannot run, a finished run is never rewritten."""

from __future__ import annotations

import pytest

from embdim.cli import main


def _run(small, out, *extra):
    return main(["--quiet", "run", "--set", f"data.path={small}", "--set", "model.name=fm",
                 "--set", "train.epochs=1", "--set", "train.early_stop=0", "--out", str(out), *extra])


@pytest.mark.parametrize("override, message", [
    ("model.name=bogus", "unknown model 'bogus'"),
    ("method.name=bogus", "unknown method 'bogus'"),
    ("method.dim=2.5", "method.dim: expected an integer, got 2.5"),
    ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
])
def test_a_bad_config_creates_no_run_folder_and_the_fixed_one_runs(small, tmp_path, capsys, override,
                                                                  message):
    out = tmp_path / "run"
    assert _run(small, out, "--set", override) == 2
    err = capsys.readouterr().err
    assert err.startswith("embdim: error: ") and message in err and err.count("\n") == 1
    assert not out.exists()
    assert _run(small, out) == 0 and (out / "metrics.json").exists()


def test_resume_of_a_finished_run_is_refused_and_rewrites_nothing(small, tmp_path, capsys):
    out = tmp_path / "run"
    assert _run(small, out) == 0
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for extra in ([], ["--resume"]):
        assert _run(small, out, *extra) == 2
        err = capsys.readouterr().err
        assert err == (f"embdim: error: run folder {out} already holds a finished run "
                       "(metrics.json); choose another --out\n")
    assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


def test_a_damaged_dataset_is_refused_before_the_run_folder_exists(small, tmp_path, capsys):
    import shutil

    import numpy as np

    data = tmp_path / "data"
    shutil.copytree(small, data)
    y = np.load(data / "test.y.npy")
    y[0] = 2.0
    np.save(data / "test.y.npy", y)
    out = tmp_path / "run"
    assert main(["--quiet", "run", "--set", f"data.path={data}", "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "test rows: row 0: label 2 is not 0 or 1" in err and err.count("\n") == 1
    assert not out.exists()


def test_a_data_path_that_is_not_a_string_is_a_typed_error(tmp_path, capsys):
    assert main(["--quiet", "run", "--set", "data.path=3", "--out", str(tmp_path / "run")]) == 2
    assert capsys.readouterr().err == "embdim: error: data.path: expected a string, got 3\n"


def _plan_for(dataset, path):
    from embdim.data.dataset import PreparedDataset
    from embdim.plan import DimensionPlan

    DimensionPlan.uniform(PreparedDataset(dataset).schema, 4).save(path)
    return path


@pytest.mark.parametrize("how", ["retrain", "run"])
def test_a_plan_for_another_dataset_is_refused_before_the_run_folder_exists(small, planted, tmp_path,
                                                                            capsys, how):
    plan = _plan_for(planted, tmp_path / "plan.json")
    out = tmp_path / "run"
    if how == "retrain":
        argv = ["retrain", "/dev/null", "--plan", str(plan)]
    else:
        argv = ["run", "--set", "method.name=plan", "--set", f"method.path={plan}"]
    assert main(["--quiet", *argv, "--set", f"data.path={small}", "--out", str(out)]) == 2
    assert not out.exists()
    err = capsys.readouterr().err
    assert err.startswith(f"embdim: error: {plan}: plan does not match the dataset: fields differ")
    assert err.count("\n") == 1 and str(small) in err


def test_a_plan_for_the_same_dataset_retrains(small, tmp_path):
    plan = _plan_for(small, tmp_path / "plan.json")
    out = tmp_path / "run"
    assert main(["--quiet", "retrain", "/dev/null", "--plan", str(plan), "--set", f"data.path={small}",
                 "--set", "model.name=fm", "--set", "train.epochs=1", "--out", str(out)]) == 0
    assert (out / "metrics.json").exists()


def test_sigterm_during_run_is_one_line_and_resume_gives_the_uninterrupted_metrics(planted, tmp_path,
                                                                                 capsys):
    """``kill`` (SIGTERM) during training: exit 143 with one line, no traceback, no metrics.json;
    ``--resume`` then ends with exactly the metrics of a run that was never interrupted."""
    import json
    import signal
    import subprocess
    import sys
    import time

    sets = [f"data.path={planted}", "model.name=fm", "method.name=fde", "method.dim=4",
            "train.epochs=4", "train.batch_size=256", "train.early_stop=0", "train.threads=1",
            "train.seed=3"]
    args = [a for s in sets for a in ("--set", s)]
    cut = tmp_path / "cut"
    proc = subprocess.Popen([sys.executable, "-m", "embdim", "--quiet", "run", *args, "--out", str(cut)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not (cut / "checkpoints" / "last.pt").exists() and proc.poll() is None:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    if (cut / "metrics.json").exists():
        pytest.skip("the run finished before it could be signalled")
    assert proc.returncode == 143, err
    assert err.startswith("embdim: terminated") and err.count("\n") == 1 and "Traceback" not in err

    assert main(["--quiet", "run", *args, "--out", str(cut), "--resume"]) == 0
    assert "resumed from" in (cut / "log.txt").read_text()
    assert main(["--quiet", "run", *args, "--out", str(tmp_path / "full")]) == 0
    resumed, full = (json.loads((tmp_path / r / "metrics.json").read_text()) for r in ("cut", "full"))
    for key in ("test_auc", "test_logloss", "valid_auc", "best_epoch", "epochs_run"):
        assert resumed[key] == full[key], key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
