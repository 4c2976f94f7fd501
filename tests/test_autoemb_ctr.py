"""AutoEmb as a field-level CTR method: the popularity embedding, the bilevel controller updates,
the bucket -> frequency-block plan, `embdim run` on every base model, resume, the report."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim.cli import main
from embdim.data.dataset import PreparedDataset
from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.block_embedding import BlockFieldEmbedding, block_ids
from embdim.nn.models import MODEL_NAMES, build_model
from embdim.nn.popularity_embedding import PopularityEmbedding
from embdim.plan import DimensionPlan
from embdim.search import AutoEmb, make_context, make_method
from embdim.search.autoemb import AutoEmbSearch, bucket_blocks

TRAIN = {"batch_size": 500, "lr": 2e-3, "epochs": 2, "seed": 1, "early_stop": 0, "threads": 1}
FAST = {"controller_hidden": [32], "candidates": [2, 4, 8]}  # small widths: seconds per search


def _ctx(model="deepfm", **train):
    return make_context(model, {**TRAIN, **train})


# ---- the module -----------------------------------------------------------------------------
def test_popularity_embedding_mixes_candidates_by_controller_weights(planted):
    ds = PreparedDataset(planted)
    emb = PopularityEmbedding(ds.schema.vocab_sizes, ds.frequencies(), [2, 4, 8], hidden=[16])
    ids = torch.tensor(np.array(ds.split("train").x[:64]))
    rows = ids.long() + emb.offsets
    distinct = torch.unique(rows.view(-1))
    # the controllers start from equal weights and see each value's training count
    torch.testing.assert_close(emb.controller_weights(distinct), torch.full((len(distinct), 3), 1 / 3))
    counts = np.concatenate(ds.frequencies())
    assert emb.popularity.tolist() == counts.astype(np.float32).tolist()
    with torch.no_grad():  # give the controllers' output layers some non-uniform weights
        for c in emb.controllers:
            c.net[-1].weight.normal_()
    out = emb(ids)
    assert out.shape == (64, ds.schema.num_fields, 8)
    # eq. 7 by hand: (1/N) sum_n w_n e^n, with the weights of each value's own row
    w = emb.controller_weights(distinct)[torch.searchsorted(distinct, rows.view(-1))].view(64, -1, 3)
    assert float(w.detach().std()) > 0.01
    expected = (emb.candidate_embeddings(rows) * w.unsqueeze(-1)).sum(2) / 3
    torch.testing.assert_close(out, expected)
    # eq. 2: tanh of BatchNorm -> every candidate output in (-1, 1), per coordinate mean ~ 0
    cand = emb.candidate_embeddings(rows)
    assert float(cand.detach().abs().max()) < 1 and float(cand.detach().mean(0).abs().max()) < 0.2


def test_one_controller_per_field_or_shared(planted):
    ds = PreparedDataset(planted)
    per_field = PopularityEmbedding(ds.schema.vocab_sizes, ds.frequencies(), [2, 4], hidden=[8])
    shared = PopularityEmbedding(ds.schema.vocab_sizes, ds.frequencies(), [2, 4], hidden=[8],
                                 controllers="shared")
    assert len(per_field.controllers) == ds.schema.num_fields and len(shared.controllers) == 1
    ids = torch.tensor(np.array(ds.split("train").x[:32]))
    assert shared(ids).shape == per_field(ids).shape == (32, ds.schema.num_fields, 4)
    with pytest.raises(ValueError, match="increasing"):
        PopularityEmbedding(ds.schema.vocab_sizes, ds.frequencies(), [4, 2])


# ---- Alg. 1: controller on validation batches, W on training batches --------------------------
def test_controller_learns_on_validation_batches_and_model_on_training_batches(planted):
    search = AutoEmbSearch(PreparedDataset(planted), _ctx(), AutoEmb.Options(**FAST))
    train_batch = next(iter(search.train_loader.epoch(0)))
    valid_batch = next(iter(search.valid_loader.epoch(0)))
    theta0 = [p.detach().clone() for p in search.theta]
    w0 = [p.detach().clone() for p in search.w_params]
    search.controller_step(train_batch, valid_batch)  # second order: W is restored exactly
    assert any(not torch.equal(a, b) for a, b in zip(theta0, search.theta, strict=True))
    assert all(torch.equal(a, b) for a, b in zip(w0, search.w_params, strict=True))
    theta1 = [p.detach().clone() for p in search.theta]
    search.model_step(train_batch)
    assert all(torch.equal(a, b) for a, b in zip(theta1, search.theta, strict=True))
    assert any(not torch.equal(a, b) for a, b in zip(w0, search.w_params, strict=True))
    # the batch's values now have a context: the weights they got, and their rows' loss
    emb = search.embedding
    rows = torch.unique(train_batch[0].long() + emb.offsets)
    assert bool(emb.context.seen[rows].all()) and float(emb.context.seen.sum()) == len(rows)
    assert float(emb.context.last_loss[rows].min()) > 0


def test_each_iteration_updates_the_controller_on_a_validation_batch_then_the_model(planted):
    """Alg. 1 order: controller step (on the next validation batch), then the W-step (on the
    training batch), every ``update_every`` steps."""
    search = AutoEmbSearch(PreparedDataset(planted), _ctx(epochs=1, max_steps_per_epoch=4),
                           AutoEmb.Options(**FAST, order="first", update_every=2))
    calls = []
    real_controller, real_model = search.controller_step, search.model_step
    search.controller_step = lambda t, v: calls.append(("theta", t, v)) or real_controller(t, v)
    search.model_step = lambda b: calls.append(("w", b)) or real_model(b)
    search.run()
    valid = search.valid_loader.batches()
    train = iter(search.train_loader.epoch(0))
    assert [c[0] for c in calls] == ["theta", "w", "w", "theta", "w", "w"]
    for c in calls:
        if c[0] == "w":
            expected = next(train)
            assert torch.equal(c[1][0], expected[0])
        else:
            assert torch.equal(c[2][0], next(valid)[0])  # a validation batch, in loader order


# ---- derive: popularity buckets -> frequency blocks --------------------------------------------
def test_bucket_blocks_group_by_popularity_bucket_and_merge_equal_neighbours():
    # ids 0 (OOV), 1 (missing), then values by descending count
    counts = np.array([1, 40, 100, 90, 20, 18, 5, 4, 0])
    buckets = np.floor(np.log2(1 + counts)).astype(int)  # 1, 5, 6, 6, 4, 4, 2, 2, 0
    widths = [2, 16, 128]
    big, mid, small = [0, 0, 1.0], [0, 1.0, 0], [1.0, 0, 0]
    # bucket 2 (ids 6, 7): the values' own argmaxes are 16 and 128, their MEAN weights pick 2
    weights = np.array([small, mid, big, big, big, big, [0.4, 0.6, 0], [0.4, 0, 0.6], small])
    blocks, table = bucket_blocks(buckets, weights, widths)
    assert [(e["bucket"], e["dim"]) for e in table] == [(6, 128), (5, 16), (4, 128), (2, 2),
                                                        (1, 2), (0, 2)]
    # buckets 6 and 4 (128) merge, as do 2 and 0 (2); OOV (bucket 1, no value in it) joins the
    # block of its width; missing (bucket 5, width 16, no block of that width) gets its own
    assert blocks == [{"start": 2, "stop": 6, "dim": 128},
                      {"start": 6, "stop": 9, "dim": 2, "reserved_ids": [0]},
                      {"start": 0, "stop": 0, "dim": 16, "reserved_ids": [1]}]
    assert sorted(i for b in blocks for i in block_ids(b)) == list(range(len(counts)))
    with pytest.raises(ValueError, match="descending"):
        bucket_blocks(np.array([0, 0, 1, 3]), np.ones((4, 3)), widths)


def test_bucket_blocks_keep_a_non_monotone_rule_as_separate_blocks():
    counts = np.array([0, 0, 64, 32, 16, 8, 4])  # buckets 6, 5, 4, 3, 2 for the values
    buckets = np.floor(np.log2(1 + counts)).astype(int)
    weights = np.eye(3)[[0, 0, 2, 0, 2, 0, 2]]  # 128, 2, 128, 2, 128 along the frequency order
    blocks, _ = bucket_blocks(buckets, weights, [2, 16, 128])
    assert [(b["start"], b["stop"], b["dim"]) for b in blocks] == [
        (2, 3, 128), (3, 4, 2), (4, 5, 128), (5, 6, 2), (6, 7, 128)]
    assert blocks[1]["reserved_ids"] == [0, 1]  # their bucket 0 has no value: first 2-wide block


# ---- the search end to end -------------------------------------------------------------------
@pytest.fixture(scope="module")
def searched(planted):
    method = make_method({"name": "autoemb", **FAST})
    plan = method.search(PreparedDataset(planted), _ctx(epochs=1))
    return method, plan


def test_search_gives_a_valid_plan_of_frequency_blocks(searched, planted, tmp_path):
    method, plan = searched
    schema = PreparedDataset(planted).schema
    rule = plan.value_dim_rule
    assert plan.method == "autoemb" and plan.full_dim == 8 and rule["candidates"] == [2, 4, 8]
    for f, (vocab, blocks) in enumerate(zip(schema.vocab_sizes, rule["blocks"], strict=True)):
        assert sorted(i for b in blocks for i in block_ids(b)) == list(range(vocab))
        assert {b["dim"] for b in blocks} <= {2, 4, 8}
        assert plan.dims[f] == max(b["dim"] for b in blocks)
    assert plan.embedding_params == sum((b["stop"] - b["start"] + len(b.get("reserved_ids", [])))
                                        * b["dim"] for f in rule["blocks"] for b in f)
    plan.save(tmp_path / "plan.json")
    loaded = DimensionPlan.load(tmp_path / "plan.json")
    assert loaded.value_dim_rule["blocks"] == rule["blocks"]
    model = build_model("deepfm", schema, loaded, options=method.retrain_model_options(
        make_context("deepfm").model_options, loaded))
    assert isinstance(model.embedding, BlockFieldEmbedding)
    assert model.embedding_params == plan.embedding_params and model.embedding.out_dim == 8
    assert plan.extra["controller_updates"] == plan.extra["search_steps"] > 0


def test_options_are_validated():
    for bad in ({"candidates": [16, 2]}, {"candidates": [0, 2]}, {"candidates": []},
                {"order": "third"}, {"controllers": "row"}, {"controller_lr": 0},
                {"update_every": 0}, {"epochs": 0}, {"xi": -1}, {"controller_hidden": [0]},
                {"controller_inputs": ["popularity", "age"]}, {"colour": "red"}):
        with pytest.raises(ConfigError):
            make_method({"name": "autoemb", **bad})
    opts = AutoEmb.Options()
    assert (opts.candidates, opts.controller_hidden, opts.order, opts.controller_lr,
            opts.update_every) == ([2, 16, 128], [512, 512], "second", 1e-3, 1)


# ---- the outcome on planted data: frequent values get wider embeddings --------------------------
@pytest.fixture(scope="module")
def zipf_field(tmp_path_factory):
    """A 500-value field with an 8-dim planted signal and a heavy tail (Zipf 1.2, 20k rows: ~90
    values seen at most twice in training), beside two 4-dim fields and a noise field."""
    out = tmp_path_factory.mktemp("data") / "zipf"
    spec = SyntheticSpec(cardinalities=[500, 20, 20, 50], true_dims=[8, 4, 4, 0], zipf_exponent=1.2,
                         first_order_std=1.0, interaction_std=2.0, seed=3)
    write_synthetic_dataset(out, spec, 20_000, seed=3)
    return out


def _frequent_minus_rare_log_width(data, **options) -> float:
    """Search, then: mean over the 500-value field's values seen >= 20 times of the expected log2
    width under the controller's weights, minus the same over values seen <= 2 times."""
    ds = PreparedDataset(data)
    method = make_method({"name": "autoemb", "order": "first", **options})
    method.search(ds, _ctx(epochs=6))
    emb = method.searcher.embedding
    weights = emb.value_weights()[0].numpy()  # the 500-value field
    expected_log_width = weights @ np.log2(emb.widths)
    counts = ds.frequencies()[0]
    values = np.arange(2, len(counts))
    frequent, rare = values[counts[values] >= 20], values[counts[values] <= 2]
    assert len(frequent) > 50 and len(rare) > 50
    return float(expected_log_width[frequent].mean() - expected_log_width[rare].mean())


@pytest.mark.slow
def test_frequent_values_get_wider_embeddings_than_rare_ones(zipf_field):
    """AutoEmb's premise (sec. 1, Fig. 7): the controller gives values seen often more weight on the
    wide candidates than values seen once or twice. Paper defaults except the first-order
    controller gradient (``order: first``, for time); 6 search epochs. (Measured: 1.6.)"""
    gap = _frequent_minus_rare_log_width(zipf_field)
    assert gap > 0.8, gap  # in log2 units: 1 = twice as wide


@pytest.mark.slow
def test_without_the_popularity_input_the_gap_disappears(zipf_field):
    """The ablation ``controller_inputs: [context]``: the same search with the popularity input
    blanked gives frequent and rare values about the same widths. (Measured: 0.12.)"""
    gap = _frequent_minus_rare_log_width(zipf_field, controller_inputs=["context"])
    assert abs(gap) < 0.4, gap


# ---- `embdim run` on every base model, the report ------------------------------------------------
@pytest.fixture(scope="module")
def runs(small, tmp_path_factory):
    root = tmp_path_factory.mktemp("autoemb-runs")
    for name in MODEL_NAMES:
        sets = [f"data.path={small}", f"model.name={name}", "model.mlp=[16]", "method.name=autoemb",
                "method.candidates=[2,4,8]", "method.controller_hidden=[16]", "train.epochs=1",
                "train.batch_size=500", "train.threads=1", "train.early_stop=0",
                "model.attention_dim=4", "model.attention_layers=1"]
        assert main(["--quiet", "run", *[a for s in sets for a in ("--set", s)],
                     "--out", str(root / name)]) == 0
    return root


def test_embdim_run_works_with_every_base_model(runs):
    for name in MODEL_NAMES:
        metrics = json.loads((runs / name / "metrics.json").read_text())
        plan = DimensionPlan.load(runs / name / "plan.json")
        assert metrics["method"] == "autoemb" and 0.5 < metrics["test_auc"] <= 1
        assert metrics["embedding_params"] == (0 if name == "lr" else plan.embedding_params)
        assert "blocks" in plan.value_dim_rule


def test_autoemb_appears_in_the_methods_by_models_report(runs, tmp_path, capsys):
    assert main(["report", str(runs), "--out", str(tmp_path / "report")]) == 0
    table = (tmp_path / "report" / "report.md").read_text()
    rows = [line for line in table.splitlines() if line.startswith("| autoemb")]
    assert len(rows) >= len(MODEL_NAMES)


# ---- resume ------------------------------------------------------------------------------------
def _cfg(data):
    return {"data": {"path": str(data)}, "model": {"name": "fm"},
            "method": {"name": "autoemb", **FAST},
            "train": {**TRAIN, "epochs": 3}}


def test_resume_after_an_interrupted_retrain_reuses_the_plan(planted, tmp_path, monkeypatch,
                                                             interrupt_and_resume):
    full, resumed = interrupt_and_resume(_cfg(planted), before_resume=lambda: monkeypatch.setattr(
        AutoEmbSearch, "run", lambda self: pytest.fail("searched again")))
    assert "reusing" in (tmp_path / "cut" / "log.txt").read_text()
    for key in ("test_auc", "test_logloss", "embedding_params", "dims"):
        assert resumed[key] == full[key], key
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_resume_after_an_interrupted_search_searches_again_to_the_same_plan(planted, tmp_path,
                                                                            monkeypatch):
    full = run_experiment(_cfg(planted), tmp_path / "full", quiet=True)
    real_step = AutoEmbSearch.model_step
    calls = {"n": 0}

    def interrupted(self, batch):
        calls["n"] += 1
        if calls["n"] == 5:
            raise KeyboardInterrupt
        return real_step(self, batch)

    monkeypatch.setattr(AutoEmbSearch, "model_step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_cfg(planted), tmp_path / "cut", quiet=True)
    assert not (tmp_path / "cut" / "plan.json").exists()
    monkeypatch.setattr(AutoEmbSearch, "model_step", real_step)
    resumed = run_experiment(_cfg(planted), tmp_path / "cut", resume=True, quiet=True)
    plans = [json.loads((tmp_path / r / "plan.json").read_text()) for r in ("full", "cut")]
    assert plans[0]["value_dim_rule"] == plans[1]["value_dim_rule"]
    assert resumed["test_auc"] == full["test_auc"]


def test_a_stream_method_name_on_a_prepared_ctr_folder_is_still_refused(small, capsys):
    assert main(["run", "--set", f"data.path={small}", "--set", "method.name=sam"]) == 2
    assert "streaming method" in capsys.readouterr().err

