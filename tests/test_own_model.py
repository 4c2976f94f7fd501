"""Your own model: a user-defined body named by import path in the config (every search method runs on
it), the body contract checked with a clear message, the Python registration path, the drop-in
``embdim.nn.PlanEmbedding`` and examples/own_model.py."""

import importlib.util
import json
import sys
from pathlib import Path

import pytest
import torch

from embdim.config import config_from_dict
from embdim.data import PreparedDataset
from embdim.errors import ConfigError, SchemaMismatchError
from embdim.experiment import run_experiment
from embdim.nn import FieldEmbedding, PlanEmbedding, build_model, register_model
from embdim.nn import models as models_module
from embdim.plan import DimensionPlan

BODY_MODULE = '''
import torch
from torch import nn


class MeanPoolMLP(nn.Module):
    """[B, F, D] -> logits [B]: an MLP over [flattened embeddings, their mean over fields]."""

    built = []  # (num_fields, dim, body_options) of every instance, for the test to read

    def __init__(self, num_fields, dim, opts):
        super().__init__()
        hidden = opts.body_options.get("hidden", 8)
        MeanPoolMLP.built.append((num_fields, dim, dict(opts.body_options)))
        self.mlp = nn.Sequential(nn.Linear(num_fields * dim + dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, emb):
        return self.mlp(torch.cat([emb.flatten(1), emb.mean(1)], dim=1)).squeeze(1)


class WrongShape(MeanPoolMLP):
    def forward(self, emb):
        return super().forward(emb).unsqueeze(1)  # [B, 1]: not one logit per example


not_a_class = 3
'''


@pytest.fixture
def user_module(tmp_path, monkeypatch):
    """``mybodies.py`` importable from ``tmp_path``; the registry and sys.modules restored after."""
    (tmp_path / "mybodies.py").write_text(BODY_MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(models_module, "MODELS", dict(models_module.MODELS))
    yield "mybodies"
    sys.modules.pop("mybodies", None)


def _cfg(data, method, **model):
    return {"data": {"path": str(data)},
            "model": {"name": "mybodies:MeanPoolMLP", "body_options": {"hidden": 12}, **model},
            "method": method,
            "train": {"epochs": 1, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 1, "threads": 1}}


@pytest.mark.parametrize("method", [
    {"name": "fde", "dim": 4},
    {"name": "autodim", "candidates": [2, 4], "pretrain_steps": 2, "update_every": 1},
    {"name": "sseds", "budget": 0.3, "pretrain_width": 4},
    {"name": "mde", "blocks": 2},
], ids=lambda m: m["name"])
def test_every_search_method_runs_on_a_body_named_by_import_path(user_module, small, tmp_path, method):
    metrics = run_experiment(_cfg(small, method), tmp_path / "run", quiet=True)
    body = sys.modules[user_module].MeanPoolMLP
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    kept, width = len(plan.kept_fields), metrics["total_params"]
    assert metrics["model"] == "mybodies:MeanPoolMLP" and 0 < metrics["test_auc"] <= 1
    # the retrained model is the user's body over the plan's kept fields, with its own option
    # (not necessarily the last body built: SSEDS builds its uniform pretrained model again to
    # hand its weights over)
    retrained = [(dim, options) for num_fields, dim, options in body.built if num_fields == kept]
    assert retrained and all(options == {"hidden": 12} for _, options in retrained)
    assert width > 0 and max(dim for dim, _ in retrained) >= max(plan.dims)
    cfg = (tmp_path / "run" / "config.yaml").read_text()
    assert "mybodies:MeanPoolMLP" in cfg and "hidden: 12" in cfg


def test_the_body_learns_the_planted_signal(user_module, small, tmp_path):
    cfg = _cfg(small, {"name": "fde", "dim": 4})
    cfg["train"]["epochs"] = 3
    assert run_experiment(cfg, tmp_path / "run", quiet=True)["test_auc"] > 0.6  # 0.5: nothing learnt


@pytest.mark.parametrize("name, message", [
    ("nomodule_xyz:Body", "cannot import 'nomodule_xyz'"),
    ("mybodies:Missing", "has no 'Missing'"),
    ("mybodies:not_a_class", "not a torch.nn.Module class"),
    ("mybodies", "unknown model"),
])
def test_bad_import_paths_are_refused_before_anything_runs(user_module, small, name, message):
    with pytest.raises(ConfigError, match=message):
        config_from_dict(_cfg(small, {"name": "fde"}, name=name))


def test_a_body_that_breaks_the_contract_gets_a_clear_message(user_module, small):
    schema = PreparedDataset(small).schema
    with pytest.raises(ConfigError, match=r"mybodies:WrongShape.*\(2, 1\).*one logit per example"):
        build_model("mybodies:WrongShape", schema, dim=4)


def test_a_body_registered_from_python(small, monkeypatch):
    monkeypatch.setattr(models_module, "MODELS", dict(models_module.MODELS))

    @register_model("sum_of_squares")
    class SumOfSquares(torch.nn.Module):
        wide = True

        def __init__(self, num_fields, dim, opts):
            super().__init__()
            self.scale = torch.nn.Parameter(torch.ones(1))

        def forward(self, emb):
            return self.scale * emb.pow(2).sum((1, 2))

    schema = PreparedDataset(small).schema
    plan = DimensionPlan(method="hand", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[0, 2, 3, 4], full_dim=4, schema_hash=schema.content_hash)
    model = build_model("sum_of_squares", schema, plan)
    assert isinstance(model.body, SumOfSquares) and model.linear is not None
    assert model(torch.zeros(5, 4, dtype=torch.long)).shape == (5,)


# ---- PlanEmbedding ---------------------------------------------------------------------------------
def _plan(**kw):
    return DimensionPlan(method="hand", field_names=list("abcde"), vocab_sizes=[5, 6, 7, 8, 9],
                         dims=[4, 0, 2, 8, 2], full_dim=8, **kw)


def _ids(n=16):
    g = torch.Generator().manual_seed(0)
    return torch.stack([torch.randint(0, v, (n,), generator=g) for v in [5, 6, 7, 8, 9]], dim=1)


def test_concat_output_is_each_kept_field_at_its_width_in_field_order():
    emb = PlanEmbedding(_plan(), output="concat")
    ids = _ids()
    out = emb(ids)
    assert out.shape == (16, 4 + 2 + 8 + 2) == (16, emb.out_features)
    assert emb.field_names == ["a", "c", "d", "e"] and emb.embedding_params == _plan().embedding_params
    want = torch.cat([emb.layer.field_weight(i)[ids[:, i]] for i in (0, 2, 3, 4)], dim=1)
    assert torch.equal(out, want)
    assert sum(p.numel() for p in emb.parameters()) == _plan().embedding_params  # no alignment


def test_stack_output_is_the_base_models_embedding():
    emb = PlanEmbedding(_plan(), align="linear")
    ref = FieldEmbedding.from_plan(_plan(), align="linear")
    ref.load_state_dict(emb.layer.state_dict())
    ids = _ids()
    assert emb(ids).shape == (16, 4, 8) and torch.equal(emb(ids), ref(ids))


def test_block_plans_stack_and_refuse_concat(tmp_path, small):
    blocks = [[{"start": 2, "stop": v, "dim": 2, "reserved_ids": [0, 1]}] for v in [5, 6, 7, 8, 9]]
    plan = _plan(value_dim_rule={"blocks": blocks})
    plan.dims = [2] * 5
    assert PlanEmbedding(plan)(_ids()).shape == (16, 5, 2)
    with pytest.raises(ConfigError, match="output='stack'"):
        PlanEmbedding(plan, output="concat")
    _plan().save(tmp_path / "plan.json")
    with pytest.raises(SchemaMismatchError):
        PlanEmbedding.from_file(tmp_path / "plan.json", PreparedDataset(small).schema)


# ---- the example --------------------------------------------------------------------------------------
def test_own_model_example_trains_its_model_with_a_plan(small, tmp_path):
    path = Path(__file__).parent.parent / "examples" / "own_model.py"
    spec = importlib.util.spec_from_file_location("own_model_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    dataset = PreparedDataset(small)
    schema = dataset.schema
    plan = DimensionPlan(method="hand", field_names=schema.field_names, vocab_sizes=schema.vocab_sizes,
                         dims=[0, 2, 2, 4], full_dim=4, schema_hash=schema.content_hash)
    model = example.ClickModel(plan, schema=schema)
    assert model.embedding.embedding_params == plan.embedding_params
    assert model.embedding.out_features == 8
    auc = example.train(model, dataset, epochs=3)
    assert auc > 0.6  # 0.5: nothing learnt
    plan.save(tmp_path / "plan.json")
    json.loads((tmp_path / "plan.json").read_text())  # the file main() reads
