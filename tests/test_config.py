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
