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
