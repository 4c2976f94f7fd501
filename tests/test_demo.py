"""`embdim demo`: runs end to end and prints its table (a small version; the full one is slow)."""

import json

import pytest

from embdim.cli import main
from embdim.demo import DEMO_WIDTHS, fresh_dir


def test_small_demo_writes_runs_and_a_summary(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["--quiet", "demo", "--out", str(out), "--rows", "6000", "--epochs", "1"]) == 0
    printed = capsys.readouterr().out
    assert "| run | test AUC |" in printed and "Bayes-optimal" in printed
    for w in DEMO_WIDTHS:
        metrics = json.loads((out / f"fde-{w}" / "metrics.json").read_text())
        assert set(metrics["dims"].values()) == {w}
    assert (out / "summary.md").exists() and (out / "data" / "truth.json").exists()
    assert fresh_dir(out) == tmp_path / "demo-2"  # a second demo never overwrites the first


@pytest.mark.slow
def test_full_demo_learns_the_planted_signal(tmp_path):
    from embdim.demo import run_demo

    results = run_demo(tmp_path / "demo", quiet=True)
    by_run = {r["run"]: r for r in results}
    assert by_run["fde-32"]["test_auc"] > 0.75
    assert by_run["fde-32"]["test_auc"] > by_run["fde-2"]["test_auc"]
