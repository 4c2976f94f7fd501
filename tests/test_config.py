"""Experiment config: defaults, --set overrides, clear refusals."""

import pytest

from embdim.config import apply_overrides, config_from_dict, load_config
from embdim.errors import ConfigError


def test_defaults_and_overrides(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("data: {path: d}\nmodel: {name: fm}\nmethod: {name: fde, dim: 8}\n")
    cfg = load_config(p, ["train.lr=0.01", "model.mlp=[64, 32]", "method.name=fde",
                          "train.device=cpu"])
    assert cfg.train.lr == 0.01 and cfg.train.batch_size == 2000
    assert cfg.model.name == "fm" and cfg.model.mlp == [64, 32]
    assert cfg.method == {"name": "fde", "dim": 8}
    assert config_from_dict(cfg.to_dict()).to_dict() == cfg.to_dict()


@pytest.mark.parametrize("bad, words", [
    ({"trian": {}}, "unknown section"),
    ({"train": {"lr": -1}}, "train.lr"),
    ({"train": {"batchsize": 5}}, "batchsize"),
    ({"train": {"device": "tpu"}}, "train.device"),
])
def test_refusals_name_the_problem(bad, words):
    with pytest.raises(ConfigError, match=words):
        config_from_dict(bad)


def test_set_needs_key_value():
    with pytest.raises(ConfigError, match="key=value"):
        apply_overrides({}, ["train.lr"])
    with pytest.raises(ConfigError, match="section.name"):
        apply_overrides({}, ["lr=1"])


# ---- typed values (issue 15, item 5) ----------------------------------------------------------

@pytest.mark.parametrize("yaml_text, where, expected", [
    ("train: {lr: 1e-3}", ("train", "lr"), 0.001),  # YAML 1.1 reads 1e-3 as a string
    ("train: {lr: 1}", ("train", "lr"), 1.0),
    ("train: {epochs: 2.0}", ("train", "epochs"), 2),
    ("train: {max_steps_per_epoch: 1e3}", ("train", "max_steps_per_epoch"), 1000),
    ("model: {dropout: 5e-2}", ("model", "dropout"), 0.05),
    ("model: {mlp: [64.0, 32]}", ("model", "mlp"), [64, 32]),
])
def test_numbers_are_read_by_their_field_type(tmp_path, yaml_text, where, expected):
    p = tmp_path / "c.yaml"
    p.write_text(yaml_text + "\n")
    value = getattr(getattr(load_config(p), where[0]), where[1])
    assert value == expected and type(value) is type(expected)


@pytest.mark.parametrize("override, message", [
    ("train.lr=abc", "train.lr: expected a number, got 'abc'"),
    ("train.lr=.inf", "train.lr: expected a finite number, got inf"),
    ("train.lr=null", "train.lr: expected a number, got None"),
    ("train.epochs=2.5", "train.epochs: expected an integer, got 2.5"),
    ("train.batch_size=true", "train.batch_size: expected an integer, got True"),
    ("train.amp=1", "train.amp: expected true or false, got 1"),
    ("train.device=[1]", r"train.device: expected a string, got \[1\]"),
    ("model.mlp=[64, x]", r"model.mlp\[1\]: expected an integer, got 'x'"),
    ("model.mlp=64", "model.mlp: expected a list of integers, got 64"),
    ("train.max_steps_per_epoch=-1", "train.max_steps_per_epoch must be >= 0"),
    ("train.log_every=0", "train.log_every must be positive"),
    ("method.dim=2.5", "method.dim: expected an integer, got 2.5"),
])
def test_a_value_of_the_wrong_type_is_refused_by_name(override, message):
    from embdim.search import make_method

    with pytest.raises(ConfigError, match=f"^{message}"):
        cfg = load_config(None, [override])
        make_method(cfg.method)


@pytest.mark.parametrize("options, message", [
    ({"name": "fde", "dim": 2.5}, "method.dim: expected an integer, got 2.5"),
    ({"name": "sseds", "budget": True}, "method.budget: expected a number, got True"),
    ({"name": "random", "trials": "many"}, "method.trials: expected an integer, got 'many'"),
])
def test_method_options_are_typed(options, message):
    from embdim.search import make_method

    with pytest.raises(ConfigError, match=f"^{message}$"):
        make_method(options)
    assert make_method({"name": "sseds", "budget": "1e-1"}).options.budget == 0.1


def test_a_long_bad_value_is_cut_in_the_message():
    with pytest.raises(ConfigError) as e:
        load_config(None, ["train.lr=" + "x" * 10_000])
    assert len(str(e.value)) < 120


def test_stream_configs_are_typed_too():
    from embdim.autoemb.config import stream_config_from_dict

    assert stream_config_from_dict({"train": {"lr": "1e-2"}}).train.lr == 0.01
    with pytest.raises(ConfigError, match="^model.widths: expected a list of integers, got 'big'$"):
        stream_config_from_dict({"model": {"widths": "big"}})


def test_cli_reports_a_bad_value_in_one_line(tmp_path, capsys, monkeypatch):
    from embdim.cli import main

    monkeypatch.chdir(tmp_path)
    assert main(["run", "--set", "train.lr=abc", "--set", "data.path=d"]) == 2
    err = capsys.readouterr().err
    assert err == "embdim: error: train.lr: expected a number, got 'abc'\n"
    assert list(tmp_path.iterdir()) == []
