"""Report plots: valid PNG files for series with several settings, missing dims, odd names."""

import pytest

from embdim.plots import plot_auc_vs_params, plot_dims, slug, write_plots
from embdim.report import Group

PNG = b"\x89PNG\r\n\x1a\n"


def _group(method, name, model, aucs, params, dims=None, data="data/x"):
    runs = [{"seed": s, "test_auc": a, "test_logloss": 0.4, "embedding_params": params,
             **({"dims": dims} if dims is not None else {})} for s, a in enumerate(aucs, 1)]
    return Group(data, method, model, runs, name=name)


@pytest.fixture
def groups():
    return [_group("sseds budget=0.1", "sseds", "fm", [0.78, 0.79], 100, {"a": 0, "b": 4}),
            _group("sseds budget=0.3", "sseds", "fm", [0.80, 0.81], 300, {"a": 2, "b": 8}),
            _group("fde dim=16", "fde", "fm", [0.79], 1000, {"a": 16, "b": 16}),
            _group("fde dim=16", "fde", "deepfm", [0.8], 1000, {"a": 16, "b": 16}, data="other/x")]


def test_slug():
    assert slug("prepared/ml-1m") == "prepared_ml-1m"
    assert slug("a b/c:d") == "a_b_c_d"
    assert slug("///") == "x"


def test_plots_are_pngs(groups, tmp_path):
    p = plot_auc_vs_params(groups[:3], tmp_path / "a.png", "AUC")
    assert p.read_bytes()[:8] == PNG
    p = plot_dims(groups[:3], tmp_path / "d.png", "dims")
    assert p.read_bytes()[:8] == PNG
    assert plot_dims([_group("m", "m", "fm", [0.7], 10)], tmp_path / "none.png", "t") is None
    zero = [_group("m", "m", "fm", [0.7, 0.8], 0)]  # zero params: linear x axis, still drawn
    assert plot_auc_vs_params(zero, tmp_path / "z.png", "t").exists()


def test_write_plots_names_unique_per_dataset_and_model(groups, tmp_path):
    written = write_plots(groups, tmp_path)
    names = [name for files in written.values() for _, name in files]
    assert len(names) == len(set(names)) == 4  # data/x and other/x both end in x: kept apart
    assert all((tmp_path / n).read_bytes()[:8] == PNG for n in names)
    assert not list(tmp_path.glob(".*.tmp"))  # written atomically, nothing left behind


def _sseds_run(root, name, saliency, dims, seed):
    import json

    d = root / name
    d.mkdir(parents=True)
    fields = [{"name": f, "vocab_size": 10, "dim": k} for f, k in zip(("a", "b", "c"), dims, strict=True)]
    (d / "plan.json").write_text(json.dumps({"method": "sseds", "fields": fields,
                                             "extra": {"saliency": saliency}}))
    return {"seed": seed, "test_auc": 0.8, "test_logloss": 0.4, "embedding_params": 10, "run": str(d)}


def test_saliency_plot_from_sseds_plans(tmp_path):
    from embdim.plots import _saliency_runs, plot_saliency

    s1 = [[0.5, 0.25, 0.0, 0.0], [0.1, 0.1, 0.05, 0.0], [0.0, 0.0, 0.0, 0.0]]  # field c: no signal
    s2 = [[0.4, 0.3, 0.0, 0.0], [0.2, 0.05, 0.05, 0.0], [0.0, 0.0, 0.0, 0.0]]
    runs = [_sseds_run(tmp_path, "s1", s1, [2, 3, 0], 1), _sseds_run(tmp_path, "s2", s2, [2, 3, 0], 2),
            {"seed": 3, "test_auc": 0.8, "test_logloss": 0.4, "embedding_params": 10}]  # no plan
    g = Group("data/x", "sseds budget=0.3", "fm", runs, name="sseds")
    found = _saliency_runs(g)
    assert len(found) == 2 and found[0][0] == ["a", "b", "c"] and found[0][2] == 5
    p = plot_saliency([g], tmp_path / "s.png", "saliency")
    assert p.read_bytes()[:8] == PNG
    assert plot_saliency([_group("fde", "fde", "fm", [0.7], 10)], tmp_path / "n.png", "t") is None
    assert not (tmp_path / "n.png").exists()


def test_plot_labels_keep_only_the_options_that_differ():
    from embdim.plots import _label, _options

    a = Group("d", "sseds budget=0.1 pretrain_width=32", "fm", [], name="sseds",
              options={"name": "sseds", "budget": 0.1, "pretrain_width": 32})
    b = Group("d", "sseds budget=0.3 pretrain_width=32", "fm", [], name="sseds",
              options={"name": "sseds", "budget": 0.3, "pretrain_width": 32})
    c = Group("d", "autodim epochs=4", "fm", [], name="autodim", options={"name": "autodim", "epochs": 4})
    assert _options(a, [a, b, c]) == "budget=0.1"
    assert _label(b, [a, b, c]) == "sseds budget=0.3"
    assert _label(c, [a, b, c]) == "autodim"
    old = Group("d", "fde dim=16", "fm", [], name="fde")  # no options recorded: the full label
    assert _label(old, [old]) == "fde dim=16" and _options(old) == "dim=16"
