"""SSEDS: saliency = first-order loss change, exact budget, noise fields pruned first, winning
ticket, dropped fields, the "w/o retraining" ablation, resume and checkpoints, end to end."""

from __future__ import annotations

import dataclasses
import json
import shutil

import numpy as np
import pytest
import torch

from embdim.config import TrainConfig, config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.data.loader import BatchLoader
from embdim.errors import ConfigError, SchemaMismatchError
from embdim.experiment import run_experiment
from embdim.nn.models import ModelOptions, build_model
from embdim.plan import DimensionPlan
from embdim.search import SearchContext, make_method
from embdim.search.sseds import (
    budget_entries,
    compute_saliency,
    loss_gradient_wrt_alpha,
    prune_to_budget,
)
from embdim.train.trainer import seed_everything

NOISE = ["f0", "f5"]
WIDTH = 8


def _ctx(work_dir=None, model="deepfm", **model_kw) -> SearchContext:
    train = TrainConfig(epochs=3, batch_size=500, lr=3e-3, early_stop=0, seed=7)
    return SearchContext(model_options=ModelOptions(name=model, mlp=[32], **model_kw), train=train,
                         work_dir=work_dir, quiet=True, log=lambda m: None)


@pytest.fixture(scope="module")
def searched(planted, tmp_path_factory):
    """One SSEDS search on the planted data (DeepFM, width 8, kappa 0.3): method, plan, work dir."""
    work = tmp_path_factory.mktemp("search")
    seed_everything(0)
    method = make_method({"name": "sseds", "budget": 0.3, "pretrain_width": WIDTH})
    plan = method.search(PreparedDataset(planted), _ctx(work))
    return method, plan, work


def _pretrained(method, plan, ctx):
    model = method.build_pretrain_model(plan.vocab_sizes, ctx)
    model.load_state_dict(method._pretrained_state)
    return model.eval()


# ---- eq. 12: the budget ------------------------------------------------------------------------
@pytest.mark.parametrize("kappa", [0.05, 0.1, 0.3, 0.57, 0.9, 1.0])
def test_budget_is_honoured_exactly_and_the_next_cell_would_exceed_it(kappa):
    rng = np.random.default_rng(0)
    vocab = [3, 17, 250, 40, 1000, 7, 90]
    s = rng.pareto(1.5, size=(len(vocab), 16))
    r = prune_to_budget(s, vocab, kappa)
    total = sum(vocab) * 16
    kept = sum(v * d for v, d in zip(vocab, r.dims, strict=True))
    assert r.total_params == total and r.kept_params == kept
    assert r.budget_params == budget_entries(kappa, total) and kept <= kappa * total + 1e-9
    order = np.argsort(-s.reshape(-1), kind="stable")
    n_kept = int(r.mask.sum())
    assert r.mask.reshape(-1)[order[:n_kept]].all()  # exactly the most salient cells
    if n_kept < s.size:  # ... and the next-ranked cell does not fit
        nxt = vocab[order[n_kept] // 16]
        assert r.next_cell_cost == nxt and kept + nxt > r.budget_params
    assert r.kept_indices == [sorted(np.flatnonzero(m).tolist()) for m in r.mask]


def test_budget_arithmetic_is_exact_and_fill_packs_cheaper_cells():
    assert budget_entries(0.57, 100) == 57 and budget_entries(0.1, 1000) == 100
    s = np.array([[3.0, 0.5], [2.0, 1.0]])  # ranking: (0,0) (1,0) (1,1) (0,1)
    plain = prune_to_budget(s, [1, 10], 0.5)  # total 22, budget 11
    assert plain.dims == [1, 1] and plain.kept_params == 11 and plain.next_cell_cost == 10
    tight = prune_to_budget(s, [1, 10], 0.4)  # budget 8: (1,0) does not fit, selection stops
    assert tight.dims == [1, 0] and tight.kept_params == 1
    filled = prune_to_budget(s, [1, 10], 0.4, fill=True)  # ... fill goes on to (0,1)
    assert filled.dims == [2, 0] and filled.kept_params == 2


# ---- eq. 9-11: saliency ------------------------------------------------------------------------
def _batch(planted, rows=2000):
    loader = BatchLoader(PreparedDataset(planted).split("train"), rows, shuffle=True, seed=1)
    return next(iter(loader.epoch(0)))


def test_saliency_gradient_is_exact(planted):
    """g = dL/d alpha at alpha = 1 against central differences, on a smooth (ReLU-free) FM."""
    torch.manual_seed(0)
    model = build_model("fm", PreparedDataset(planted).schema.vocab_sizes, dim=WIDTH).double().eval()
    with torch.no_grad():
        for p in model.parameters():
            p.normal_(0, 0.3)
    ids, labels = _batch(planted)
    ones = torch.ones(6, WIDTH, dtype=torch.float64)
    _, g = loss_gradient_wrt_alpha(model, ids, labels, ones)
    fd, h = torch.empty_like(g), 1e-6
    for i in range(6):
        for j in range(WIDTH):
            e = torch.zeros_like(ones)
            e[i, j] = h
            up = loss_gradient_wrt_alpha(model, ids, labels, ones + e)[0]
            down = loss_gradient_wrt_alpha(model, ids, labels, ones - e)[0]
            fd[i, j] = (up - down) / (2 * h)
    torch.testing.assert_close(g, fd, rtol=1e-5, atol=1e-9)


def test_saliency_predicts_the_loss_change_of_masking_a_cell(searched, planted):
    """Eq. 9-10: Delta L_ij = L(alpha = 1) - L(cell (i, j) masked) ~ g_ij, on the pretrained DeepFM."""
    method, plan, _ = searched
    model = _pretrained(method, plan, _ctx()).double()
    ids, labels = _batch(planted)
    ones = torch.ones(6, WIDTH, dtype=torch.float64)
    loss1, g = loss_gradient_wrt_alpha(model, ids, labels, ones)
    delta = torch.empty_like(g)
    for i in range(6):
        for j in range(WIDTH):
            e = torch.zeros_like(ones)
            e[i, j] = 1.0
            delta[i, j] = loss1 - loss_gradient_wrt_alpha(model, ids, labels, ones - e)[0]
    corr = np.corrcoef(g.flatten().numpy(), delta.flatten().numpy())[0, 1]
    assert corr > 0.9, corr
    big = g.abs() > g.abs().quantile(0.75)
    assert (torch.sign(g[big]) == torch.sign(delta[big])).float().mean() > 0.9


def test_saliency_is_normalised_and_noise_fields_are_pruned_first(searched):
    _, plan, _ = searched
    s = np.array(plan.extra["saliency"])
    assert s.shape == (6, WIDTH) and (s >= 0).all() and s.sum() == pytest.approx(1.0)
    per_field = dict(zip(plan.field_names, s.sum(1), strict=True))
    informative = [v for k, v in per_field.items() if k not in NOISE]
    assert max(per_field[n] for n in NOISE) < min(informative)
    assert sorted(plan.extra["dropped_fields"]) == NOISE == sorted(plan.dropped_fields)
    b = plan.extra["budget"]
    assert plan.embedding_params == b["kept_params"] <= b["budget_params"]
    assert b["kept_params"] + b["next_cell_cost"] > b["budget_params"]


def test_saliency_averages_over_batches(searched, planted):
    method, plan, _ = searched
    model = _pretrained(method, plan, _ctx())
    loader = BatchLoader(PreparedDataset(planted).split("train"), 500, shuffle=True, seed=2)
    batches = list(loader.epoch(0))[:3]
    mags = [loss_gradient_wrt_alpha(model, i, y)[1].abs() for i, y in batches]
    expected = (sum(mags) / 3).double().numpy()
    np.testing.assert_allclose(compute_saliency(model, loader, 3), expected / expected.sum(),
                               rtol=1e-5)


# ---- plan, ticket, dropped fields --------------------------------------------------------------
def test_plan_records_kept_indices_and_round_trips(searched, tmp_path):
    _, plan, _ = searched
    assert plan.full_dim == WIDTH and plan.method == "sseds"
    for d, idx in zip(plan.dims, plan.kept_indices, strict=True):
        assert len(idx) == d and idx == sorted(set(idx)) and all(0 <= j < WIDTH for j in idx)
    plan.save(tmp_path / "plan.json")
    back = DimensionPlan.load(tmp_path / "plan.json")
    assert back.kept_indices == plan.kept_indices and back.dims == plan.dims
    assert back.extra["saliency"] == plan.extra["saliency"]


def test_ticket_copies_exactly_the_kept_columns_and_dropped_fields_disappear(searched, planted):
    method, plan, _ = searched
    ctx = _ctx()
    pre = _pretrained(method, plan, ctx)
    slim = build_model("deepfm", PreparedDataset(planted).schema, plan, options=ctx.model_options)
    method.init_retrain_model(slim, plan, ctx)
    dropped = [plan.field_names.index(n) for n in NOISE]
    assert slim.kept_fields == [i for i in range(6) if i not in dropped]
    assert slim.embedding.num_output_fields == 4 and slim.embedding.out_dim == max(plan.dims)
    assert slim.embedding_params == plan.embedding_params
    assert slim.linear.weight.weight.shape[0] == sum(plan.vocab_sizes[i] for i in slim.kept_fields)
    for i in slim.kept_fields:
        torch.testing.assert_close(slim.embedding.field_weight(i),
                                   pre.embedding.field_weight(i)[:, plan.kept_indices[i]],
                                   rtol=0, atol=0)
    for i in dropped:
        with pytest.raises(KeyError):
            slim.embedding.field_weight(i)


def test_without_ticket_the_slim_model_keeps_its_fresh_initialisation(searched, planted):
    method, plan, _ = searched
    ctx = _ctx()
    schema = PreparedDataset(planted).schema
    torch.manual_seed(0)
    fresh = build_model("deepfm", schema, plan, options=ctx.model_options)
    torch.manual_seed(0)
    slim = build_model("deepfm", schema, plan, options=ctx.model_options)
    no_ticket = make_method({"name": "sseds", "budget": 0.3, "pretrain_width": WIDTH,
                             "ticket": False})
    no_ticket._pretrained_state = method._pretrained_state
    no_ticket.init_retrain_model(slim, plan, ctx)
    for a, b in zip(fresh.state_dict().values(), slim.state_dict().values(), strict=True):
        assert torch.equal(a, b)


def test_without_retraining_the_slim_model_is_the_masked_pretrained_model(searched, planted):
    """Aligned to the pretrain width, the inherited network reads each kept column at its old
    coordinate: the slim model equals the pretrained one with the pruned cells zeroed (eq. 8 with
    the binary alpha of eq. 12) and the dropped fields' first-order weights removed."""
    method, plan, _ = searched
    ctx = _ctx(aligned_dim=WIDTH)
    pre = _pretrained(method, plan, ctx)
    slim = build_model("deepfm", PreparedDataset(planted).schema, plan, options=ctx.model_options)
    method.init_retrain_model(slim, plan, ctx)
    slim.eval()
    alpha = torch.zeros(6, WIDTH)
    for i, idx in enumerate(plan.kept_indices):
        alpha[i, idx] = 1.0
    with torch.no_grad():
        for i in (plan.field_names.index(n) for n in plan.dropped_fields):
            pre.linear.weight.weight[sum(plan.vocab_sizes[:i]):sum(plan.vocab_sizes[:i + 1])] = 0
    ids = torch.from_numpy(np.array(PreparedDataset(planted).split("test").x[:512]))
    original = pre.embedding
    with torch.no_grad():
        expected = pre.body(original(ids) * alpha) + pre.linear(ids)
        torch.testing.assert_close(slim(ids), expected, rtol=1e-5, atol=1e-5)


# ---- pretraining: resume, user checkpoints -----------------------------------------------------
def test_pretraining_resumes_from_its_checkpoint_and_user_checkpoints_are_checked(
        searched, planted, tmp_path):
    method, plan, work = searched
    assert (work / "pretrain" / "best.pt").exists() and (work / "pretrain" / "last.pt").exists()
    again = make_method({"name": "sseds", "budget": 0.3, "pretrain_width": WIDTH})
    plan2 = again.search(PreparedDataset(planted), _ctx(work))  # finished pretraining: reused
    assert plan2.extra["saliency"] == plan.extra["saliency"] and plan2.dims == plan.dims

    state_path = tmp_path / "mine.pt"
    torch.save(method._pretrained_state, state_path)
    mine = make_method({"name": "sseds", "budget": 0.3, "pretrain_width": WIDTH,
                        "pretrain_checkpoint": str(state_path)})
    plan3 = mine.search(PreparedDataset(planted), _ctx())
    assert plan3.extra["saliency"] == plan.extra["saliency"]
    wrong = make_method({"name": "sseds", "pretrain_width": 4, "pretrain_checkpoint": str(state_path)})
    with pytest.raises(SchemaMismatchError, match="width 4"):
        wrong.search(PreparedDataset(planted), _ctx())


def test_options_are_validated():
    for bad in ({"budget": 0}, {"budget": 1.5}, {"pretrain_width": 0}, {"saliency_batches": 0},
                {"retrain": False, "ticket": False}, {"colour": "red"}):
        with pytest.raises(ConfigError):
            make_method({"name": "sseds", **bad})


# ---- end to end --------------------------------------------------------------------------------
def _cfg(path, method, **model):
    return config_from_dict({
        "data": {"path": str(path)}, "model": {"name": "deepfm", "mlp": [32], **model},
        "method": {"name": "sseds", "pretrain_width": WIDTH, **method},
        "train": {"epochs": 2, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 7}})


def test_run_experiment_with_sseds_writes_the_run_folder(planted, tmp_path):
    run = tmp_path / "run"
    m = run_experiment(_cfg(planted, {"budget": 0.2}), run, quiet=True)
    for name in ("config.yaml", "plan.json", "metrics.json", "log.txt", "checkpoints/best.pt",
                 "search/pretrain/best.pt"):
        assert (run / name).exists(), name
    plan = DimensionPlan.load(run / "plan.json")
    assert m["embedding_params"] == plan.embedding_params <= 0.2 * plan.fde_embedding_params
    assert plan.extra["pretrain_seconds"] > 0 and "prune_seconds" in plan.extra
    assert m["test_auc"] > 0.7 and m["epochs_run"] == 2
    assert "dropped fields" in (run / "log.txt").read_text()

    # interrupted after the search: --resume reuses plan.json and reads the pretrained weights
    # back from search/pretrain/best.pt for the ticket; the result is the same
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.json").unlink()
    again = run_experiment(_cfg(planted, {"budget": 0.2}), run, resume=True, quiet=True)
    assert again["test_auc"] == m["test_auc"] and again["dims"] == m["dims"]


def test_run_without_retraining_evaluates_the_pruned_model(planted, tmp_path):
    with pytest.raises(ConfigError, match="aligned_dim=8"):
        run_experiment(_cfg(planted, {"retrain": False}), tmp_path / "bad", quiet=True)
    m = run_experiment(_cfg(planted, {"retrain": False}, aligned_dim=WIDTH), tmp_path / "run",
                       quiet=True)
    assert m["epochs_run"] == 0 and m["test_auc"] > 0.6
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert metrics["best_epoch"] == 0


def test_retrain_with_an_explicit_plan_keeps_the_pretrain_width_reference(searched):
    _, plan, _ = searched
    d = dataclasses.asdict(make_method({"name": "sseds"}).options)
    assert d["budget"] == 0.1 and d["pretrain_width"] == 128 and d["ticket"] and d["retrain"]
    assert plan.fde_embedding_params == sum(plan.vocab_sizes) * WIDTH


def test_plot_of_saliency_and_dims(searched, tmp_path):
    from embdim.search.sseds_plot import plot_plan

    _, plan, _ = searched
    out = plot_plan(plan, tmp_path / "fig" / "sseds.png")
    assert out.exists() and out.stat().st_size > 1000
