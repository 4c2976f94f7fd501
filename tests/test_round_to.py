"""Kernel-friendly widths: ``DimensionPlan.rounded`` and the ``method.round_to`` option of every method
(the plan's widths rounded up to a multiple before the retrain, the parameter cost recorded)."""

import json

import pytest
import torch

from embdim.config import config_from_dict
from embdim.data import PreparedDataset
from embdim.errors import ConfigError, EmbdimError
from embdim.experiment import run_experiment
from embdim.plan import DimensionPlan
from embdim.search import FDE, make_method


def _plan(**kw):
    return DimensionPlan(method="hand", field_names=list("abcd"), vocab_sizes=[5, 6, 7, 8],
                         dims=kw.pop("dims", [3, 0, 5, 8]), full_dim=8, **kw)


def test_rounded_widths_are_the_next_multiple_and_dropped_fields_stay_dropped():
    plan = _plan()
    r = plan.rounded(4)
    assert r.dims == [4, 0, 8, 8]
    assert r.embedding_params == 5 * 4 + 7 * 8 + 8 * 8 and plan.embedding_params == 5 * 3 + 7 * 5 + 8 * 8
    assert r.extra["unrounded_dims"] == [3, 0, 5, 8]
    assert r.extra["unrounded_embedding_params"] == plan.embedding_params
    assert r.options["round_to"] == 4 and r.full_dim == plan.full_dim
    assert plan.dims == [3, 0, 5, 8]  # the original is untouched
    assert plan.rounded(1).dims == plan.dims and plan.rounded(2).dims == [4, 0, 6, 8]
    assert DimensionPlan.from_dict(r.to_dict()) == r  # it saves and loads like any plan
    with pytest.raises(EmbdimError, match="round_to"):
        plan.rounded(0)


def test_rounding_extends_sseds_kept_columns_and_mde_blocks():
    plan = _plan(kept_indices=[[1, 4, 6], [], [0, 2, 3, 5, 7], list(range(8))])
    r = plan.rounded(4)
    assert r.kept_indices == [[0, 1, 4, 6], [], list(range(8)), list(range(8))]
    with pytest.raises(EmbdimError, match="would need 8 of the 6 pretrained columns"):
        DimensionPlan(method="hand", field_names=["a"], vocab_sizes=[5], dims=[5], full_dim=6,
                      kept_indices=[[0, 1, 2, 3, 4]]).rounded(4)
    blocks = [[{"start": 2, "stop": v, "dim": 3, "reserved_ids": [0, 1]}] for v in (5, 6, 7, 8)]
    mde = _plan(dims=[3, 3, 3, 3], value_dim_rule={"blocks": blocks}).rounded(4)
    assert [b["dim"] for f in mde.value_dim_rule["blocks"] for b in f] == [4, 4, 4, 4]
    assert mde.embedding_params == (5 + 6 + 7 + 8) * 4


def test_round_to_is_an_option_of_every_method():
    assert config_from_dict({"method": {"name": "sseds", "round_to": "4"}}).method["round_to"] == 4
    for bad in (0, 2.5, "x"):
        with pytest.raises(ConfigError, match="round_to"):
            config_from_dict({"method": {"name": "fde", "round_to": bad}})
    with pytest.raises(ConfigError, match="'round_to'"):  # listed among the valid options
        config_from_dict({"method": {"name": "fde", "roundto": 4}})
    with pytest.raises(ConfigError, match="inherit.*round_to"):  # refused when the run opens
        make_method(config_from_dict({"method": {"name": "autodim", "inherit": True, "round_to": 4}}).method)


def test_search_from_python_returns_the_rounded_plan(small):
    plan = FDE(dim=3, round_to=4).search(PreparedDataset(small), train={"epochs": 1})
    assert set(plan.dims) == {4} and plan.extra["unrounded_dims"] == [3] * 4


def _cfg(small, method):
    return {"data": {"path": str(small)}, "model": {"name": "deepfm", "mlp": [16]}, "method": method,
            "train": {"epochs": 1, "batch_size": 500, "seed": 1, "threads": 1}}


def test_a_run_retrains_at_the_rounded_widths_and_reports_the_cost(small, tmp_path):
    schema = PreparedDataset(small).schema
    hand = DimensionPlan(method="hand", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[0, 3, 2, 6], full_dim=8, schema_hash=schema.content_hash)
    hand.save(tmp_path / "plan.json")
    m = run_experiment(_cfg(small, {"name": "plan", "path": str(tmp_path / "plan.json"), "round_to": 4}),
                       tmp_path / "run", quiet=True)
    saved = json.loads((tmp_path / "run" / "plan.json").read_text())
    assert [f["dim"] for f in saved["fields"]] == [0, 4, 4, 8]
    v = schema.vocab_sizes
    assert m["embedding_params"] == v[1] * 4 + v[2] * 4 + v[3] * 8  # what was trained
    assert m["unrounded_embedding_params"] == hand.embedding_params and m["round_to"] == 4
    assert m["unrounded_dims"] == dict(zip(schema.field_names, [0, 3, 2, 6], strict=True))
    best = torch.load(tmp_path / "run" / "checkpoints" / "best.pt", weights_only=True)
    widths = {t.shape[1] for k, t in best["model"].items() if k.endswith("table.weight")}
    assert widths == {4, 8}


def test_sseds_with_round_to_hands_over_the_extended_ticket(small, tmp_path):
    method = {"name": "sseds", "budget": 0.3, "pretrain_width": 8, "round_to": 4}
    m = run_experiment(_cfg(small, method), tmp_path / "run", quiet=True)
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    assert all(d % 4 == 0 for d in plan.dims) and m["embedding_params"] == plan.embedding_params
    assert all(len(k) == d for k, d in zip(plan.kept_indices, plan.dims, strict=True))
    assert m["unrounded_embedding_params"] <= m["embedding_params"]
