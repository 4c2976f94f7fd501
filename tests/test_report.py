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
                                                "dims": dims or {"a": 2, "b": 8},
                                                "search_seconds": 10.0 * seed,
                                                "retrain_seconds": 5.0}))


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


def test_welch_ttest_known_values():
    from scipy import stats

    from embdim.report import welch_ttest

    a, b = [0.80, 0.82, 0.84], [0.78, 0.79, 0.77]
    # by hand: means .82/.78, variances 4e-4/1e-4, t = .04 / sqrt(5e-4/3) = 3.0984, Welch df = 2.941
    assert stats.ttest_ind(a, b, equal_var=False).statistic == pytest.approx(3.0983867)
    assert welch_ttest(a, b) == pytest.approx(0.0547868, rel=1e-5)
    assert welch_ttest(a, b) == pytest.approx(stats.ttest_ind(a, b, equal_var=False).pvalue)
    # Student's pooled test would give p = 0.036 here (df 4): the report uses Welch, so no '*'
    assert stats.ttest_ind(a, b).pvalue == pytest.approx(0.0363, abs=1e-3)
    assert welch_ttest(a, [0.79, 0.80]) == pytest.approx(0.1536945, rel=1e-5)
    assert welch_ttest(a, [0.60, 0.61, 0.62]) == pytest.approx(0.000565114, rel=1e-5)
    assert welch_ttest(a, [0.79]) is None  # one seed: no test
    assert welch_ttest([0.8, 0.8], [0.7, 0.7]) is None  # no variance anywhere: undefined


def test_significance_against_best_baseline(tmp_path):
    aucs = {("autodim", "fm"): [0.80, 0.82, 0.84], ("sseds", "fm"): [0.60, 0.61, 0.62],
            ("fde", "fm"): [0.70, 0.71, 0.72], ("random", "fm"): [0.78, 0.79, 0.77],
            ("autodim", "deepfm"): [0.80, 0.82, 0.84], ("fde", "deepfm"): [0.79, 0.80, 0.81]}
    for (method, model), values in aucs.items():
        for seed, auc in enumerate(values, 1):
            _run(tmp_path, f"{method}-{model}-{seed}", {"name": method}, model, seed, auc, 0.4, 100)
    groups = {(g.method, g.model): g for g in collect(find_runs([tmp_path]))}
    best = groups[("random", "fm")]  # the baseline (fde/ras/random/mde) with the highest mean AUC
    assert best.p_value is None and best.baseline is None
    assert groups[("autodim", "fm")].baseline == "random"
    assert groups[("autodim", "fm")].p_value == pytest.approx(0.0547868, rel=1e-5)  # not < .05
    assert groups[("sseds", "fm")].p_value < 0.05  # significantly worse
    assert groups[("fde", "fm")].baseline == "random"
    assert groups[("autodim", "deepfm")].baseline == "fde"
    table = write_report([tmp_path], tmp_path / "out", plots=False)
    assert "| sseds | – | – | – | 0.6100 ± 0.0100† |" in table
    assert "| autodim | 0.8200 ± 0.0200 |" in table  # deepfm column first, p = .37: no mark
    assert "| autodim | 0.8200 ± 0.0200 | 0.4000 ± 0.0000 | 100 ± 0 | 0.8200 ± 0.0200 |" in table
    rows = {(r["method"], r["model"]): r for r in csv.DictReader(open(tmp_path / "out" / "report.csv"))}
    assert float(rows[("autodim", "fm")]["auc_p_value"]) == pytest.approx(0.0547868, rel=1e-4)
    assert rows[("sseds", "fm")]["auc_significant"] == "worse"
    assert rows[("random", "fm")]["auc_p_value"] == "" and rows[("random", "fm")]["best_baseline"] == ""
    assert not list((tmp_path / "out").glob("*.png"))


def test_significantly_better_is_starred(tmp_path):
    for seed, (a, b) in enumerate(((0.80, 0.70), (0.81, 0.71), (0.82, 0.70)), 1):
        _run(tmp_path, f"ad-{seed}", {"name": "autodim"}, "fm", seed, a, 0.4, 100)
        _run(tmp_path, f"mde-{seed}", {"name": "mde", "alpha": 0.3}, "fm", seed, b, 0.4, 100)
    table = write_report([tmp_path], tmp_path / "out", plots=False)
    assert "| autodim | 0.8100 ± 0.0100* |" in table
    assert "| mde alpha=0.3 | 0.7033 ± 0.0058 |" in table


def test_report_plots_are_written_and_embedded(runs, tmp_path):
    out = tmp_path / "out"
    write_report([runs], out)
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == ["auc_params_x_deepfm.png", "auc_params_x_fm.png", "dims_x_deepfm.png", "dims_x_fm.png"]
    report = (out / "report.md").read_text()
    for name in pngs:
        assert (out / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"({name})" in report


def test_efficiency_table(runs):
    from embdim.report import efficiency_table

    groups = sorted(collect(find_runs([runs])), key=lambda g: (g.method, g.model))
    lines = efficiency_table(groups)
    assert lines[0] == "| method | model | search s | retrain s | emb params |"
    assert "| autodim | fm | 20.0 ± 10.0 | 5.0 ± 0.0 | 100 ± 0 |" in lines


def test_report_of_small_sseds_runs_has_the_saliency_distribution(small, tmp_path):
    """End to end: real SSEDS runs (2 seeds) and an FDE run on a small planted dataset; the report
    draws the saliency distribution from the runs' plan.json and embeds it."""
    from embdim.experiment import run_experiment

    base = {"data": {"path": str(small)}, "model": {"name": "fm"},
            "train": {"epochs": 1, "batch_size": 1000, "early_stop": 0}}
    for seed in (1, 2):
        run_experiment({**base, "method": {"name": "sseds", "budget": 0.3, "pretrain_width": 8,
                                           "saliency_batches": 2},
                        "train": {**base["train"], "seed": seed}}, tmp_path / "runs" / f"sseds-{seed}",
                       quiet=True)
    run_experiment({**base, "method": {"name": "fde", "dim": 8}}, tmp_path / "runs" / "fde", quiet=True)
    out = tmp_path / "report"
    write_report([tmp_path / "runs"], out)
    report = (out / "report.md").read_text()
    saliency = list(out.glob("saliency_*.png"))
    assert [p.name for p in saliency] == ["saliency_small_fm.png"]
    assert saliency[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and saliency[0].stat().st_size > 10_000
    assert "![SSEDS saliency distribution, " in report and "(saliency_small_fm.png)" in report
    assert "(auc_params_small_fm.png)" in report and "(dims_small_fm.png)" in report


def test_no_saliency_plot_without_sseds_plans(runs, tmp_path):
    write_report([runs], tmp_path / "out")  # runs without plan.json: no saliency figure, no error
    assert not list((tmp_path / "out").glob("saliency_*.png"))
    assert "saliency" not in (tmp_path / "out" / "report.md").read_text()


def test_params_count_alignment_and_sseds_plans_get_a_stability_table(tmp_path):
    """Comparisons at equal size count the alignment parameters (M_i) with the tables; SSEDS runs
    whose plan.json records "stability" get the plan-stability table."""
    for seed, dims in ((1, {"a": 2, "b": 8}), (2, {"a": 4, "b": 8})):
        _run(tmp_path, f"sseds-{seed}", {"name": "sseds", "budget": 0.1}, "fm", seed, 0.8, 0.4, 100,
             dims)
        m = json.loads((tmp_path / f"sseds-{seed}" / "metrics.json").read_text())
        (tmp_path / f"sseds-{seed}" / "metrics.json").write_text(json.dumps({**m, "alignment_params": 20}))
        (tmp_path / f"sseds-{seed}" / "plan.json").write_text(json.dumps({"extra": {"stability": {
            "batches": 2, "cell_jaccard": [0.5, 0.7], "width_overlap": [0.8, 1.0]}}}))
    _run(tmp_path, "fde-1", {"name": "fde", "dim": 32}, "fm", 1, 0.79, 0.45, 400)
    groups = {g.method: g for g in collect(find_runs([tmp_path]))}
    assert groups["sseds budget=0.1"].stat("params") == (120.0, 0.0)
    assert groups["fde dim=32"].stat("params") == (400.0, 0.0)
    table = write_report([tmp_path], tmp_path / "out", plots=False)
    assert "| sseds budget=0.1 | fm | 0.60 | 0.90 | 0.83 |" in table  # seeds: (2+8)/(4+8)
    assert "| fde dim=32 | fm | 0." not in table.split("Plan stability")[1]


def test_sseds_runs_get_a_retraining_start_table(tmp_path):
    """metrics.json "retrain_start" (rewind auto: which start each seed kept and both candidates'
    validation AUC) becomes a table; runs without it (FDE) get no row."""
    for seed, chosen, aucs in ((1, "best", (0.90, 0.88)), (2, "rewind", (0.80, 0.84))):
        _run(tmp_path, f"sseds-{seed}", {"name": "sseds", "budget": 0.1}, "fm", seed, 0.8, 0.4, 100)
        m = json.loads((tmp_path / f"sseds-{seed}" / "metrics.json").read_text())
        record = {"rewind": "auto", "early_weights": "the weights after pretraining epoch 1",
                  "chosen": chosen, "candidates": {
                      "best": {"valid_auc": aucs[0], "best_epoch": 2, "epochs_run": 4},
                      "rewind": {"valid_auc": aucs[1], "best_epoch": 3, "epochs_run": 5}}}
        (tmp_path / f"sseds-{seed}" / "metrics.json").write_text(
            json.dumps({**m, "retrain_start": record}))
    _run(tmp_path, "fde-1", {"name": "fde", "dim": 32}, "fm", 1, 0.79, 0.45, 400)
    # a run that retrained from the early weights only (rewind always) comes first: best stays
    # the first column
    _run(tmp_path, "a-always", {"name": "sseds", "budget": 0.05, "rewind": "always"}, "fm", 1, 0.8,
         0.4, 100)
    m = json.loads((tmp_path / "a-always" / "metrics.json").read_text())
    (tmp_path / "a-always" / "metrics.json").write_text(json.dumps({**m, "retrain_start": {
        "rewind": "always", "chosen": "rewind", "candidates": {
            "rewind": {"valid_auc": 0.7, "best_epoch": 1, "epochs_run": 2}}}}))
    table = write_report([tmp_path], tmp_path / "out", plots=False)
    section = table.split("Retraining start")[1]
    assert "| sseds budget=0.05 rewind=always | fm | always | rewind | - | 0.7000 |" in section
    assert "| method | model | rewind | kept (per seed) | best: valid AUC | rewind: valid AUC |" in section
    assert "| sseds budget=0.1 | fm | auto | best/rewind | 0.8500 | 0.8600 |" in section
    assert "fde dim=32" not in section
    assert "Retraining start" in (tmp_path / "out" / "report.md").read_text()
