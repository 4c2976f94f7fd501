"""PEP and DeepLight: the soft threshold, the target sparsity, noise fields pruned most, the
lottery-ticket rewind, DeepLight's sparsity schedule at every pruning step, the masked plan through
plan.json into the retrain, every base model, and exact resume of search and retrain."""

from __future__ import annotations

import json
import math
import shutil

import numpy as np
import pytest
import torch

from embdim.config import TrainConfig, config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.masked_embedding import MaskedFieldEmbedding, csr_storage_params
from embdim.nn.models import MODEL_NAMES, ModelOptions, build_model
from embdim.plan import DimensionPlan
from embdim.search import SearchContext, make_method
from embdim.search.deeplight import DeepLightOptions
from embdim.search.pep import SoftThresholdEmbedding
from embdim.search.pruning import PruningTrainer
from embdim.train.trainer import seed_everything

NOISE = ["f0", "f5"]
WIDTH = 8
# PEP on 12k rows: the repository's s init (-150) and step size need ~10^5 steps; a threshold
# init near the weights' scale and a larger step size for s reach the target in a few epochs.
PEP_FAST = {"name": "pep", "width": WIDTH, "threshold_init": -10, "threshold_lr": 0.05, "epochs": 30}
DEEPLIGHT_FAST = {"name": "deeplight", "width": WIDTH, "warmup_epochs": 1, "schedule": "cubic",
                  "epochs": 3}


def _ctx(work_dir=None, model="deepfm", epochs=3, **train) -> SearchContext:
    cfg = TrainConfig(epochs=epochs, batch_size=500, lr=3e-3, early_stop=0, seed=7, **train)
    return SearchContext(model_options=ModelOptions(name=model, mlp=[32]), train=cfg,
                         work_dir=work_dir, quiet=True, log=lambda m: None)


def _cfg(path, method, model="deepfm", epochs=2, **train):
    return config_from_dict({
        "data": {"path": str(path)}, "model": {"name": model, "mlp": [32]}, "method": method,
        "train": {"epochs": epochs, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 7,
                  **train}})


@pytest.fixture(scope="module")
def pep_searched(planted, tmp_path_factory):
    seed_everything(0)
    method = make_method({**PEP_FAST, "budget": 0.2})
    plan = method.search(PreparedDataset(planted), _ctx(tmp_path_factory.mktemp("pep")))
    return method, plan


# ---- PEP ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("kind, shape", [("global", (1,)), ("dimension", (4,)), ("feature", (7, 1)),
                                         ("feature_dim", (7, 4)), ("field", (2, 1)),
                                         ("field_dim", (2, 4))])
def test_soft_threshold_is_sign_times_relu_of_magnitude_minus_sigmoid_threshold(kind, shape):
    emb = SoftThresholdEmbedding([3, 4], 4, kind, 0.0)
    assert tuple(emb.threshold.shape) == shape
    with torch.no_grad():
        emb.weight.copy_(torch.linspace(-1, 1, 28).view(7, 4))
        emb.threshold.copy_(torch.randn(shape))
    ids = torch.tensor([[0, 0], [2, 3], [1, 2]])
    out = emb(ids)
    rows = ids + torch.tensor([0, 3])
    s = emb.threshold
    field_of_row = torch.tensor([0, 0, 0, 1, 1, 1, 1])
    if kind in ("field", "field_dim"):  # one threshold (row) per field
        s = s[field_of_row]
    full = s.expand(7, 4)  # per table entry
    v = emb.weight[rows]
    expected = torch.sign(v) * torch.clamp(v.abs() - torch.sigmoid(full[rows]), min=0)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(emb.sparse_table(), torch.sign(emb.weight) * torch.clamp(
        emb.weight.abs() - torch.sigmoid(full), min=0))


def test_pep_reaches_the_target_sparsity_and_prunes_the_noise_fields_most(pep_searched):
    _, plan = pep_searched
    total = sum(plan.vocab_sizes) * WIDTH
    budget = plan.extra["budget"]
    assert budget["budget_params"] == int(0.2 * total)
    # reached: at most the target, and the step that reached it pruned only a few entries past it
    assert 0.9 * budget["budget_params"] <= plan.embedding_params <= budget["budget_params"]
    assert plan.embedding_params == int(plan.payload["mask"].sum())
    kept = {n: f["non_zero"] / f["entries"] for n, f in plan.extra["per_field"].items()}
    assert max(kept[n] for n in NOISE) < min(v for n, v in kept.items() if n not in NOISE), kept


def test_pep_rewind_starts_the_masked_model_from_the_initial_weights(pep_searched, planted):
    method, plan = pep_searched
    ctx = _ctx()
    model = build_model("deepfm", PreparedDataset(planted).schema, plan, options=ctx.model_options)
    method.init_retrain_model(model, plan, ctx)
    source = method.build_search_model(plan.vocab_sizes, ctx)
    seed_everything(0)  # the search's model as it was built before training (same seed)
    source = method.build_search_model(plan.vocab_sizes, ctx)
    mask = torch.from_numpy(plan.payload["mask"]).float()
    initial = torch.from_numpy(plan.payload["initial_state/embedding.weight"])
    torch.testing.assert_close(initial, source.embedding.weight.detach())  # the pre-search table
    for i in model.embedding.kept_fields:
        a = int(sum(plan.vocab_sizes[:i]))
        torch.testing.assert_close(model.embedding.field_weight(i).detach(),
                                   (initial * mask)[a:a + plan.vocab_sizes[i]])
    for k, v in model.body.state_dict().items():  # the rest of the network rewound too
        torch.testing.assert_close(v, source.body.state_dict()[k])


def test_pep_that_cannot_reach_its_target_says_what_to_change(planted):
    method = make_method({"name": "pep", "width": WIDTH, "budget": 0.1, "epochs": 1})  # init -150
    with pytest.raises(ConfigError, match=r"6320 of 6320 entries are non-zero, above the target "
                                          r"632 .*threshold_lr"):
        method.search(PreparedDataset(planted), _ctx())


# ---- DeepLight ---------------------------------------------------------------------------------
@pytest.mark.parametrize("schedule", ["exponential", "cubic"])
def test_deeplight_sparsity_follows_the_schedule_at_every_pruning_step(planted, schedule):
    o = {**DEEPLIGHT_FAST, "schedule": schedule, "budget": 0.25, "damping_steps": 10}
    method = make_method(o)
    seen = []  # (step, zeros right after the step) from the trainer's after-step hook
    original = PruningTrainer._eager_step

    def spy(self, ids, labels):
        original(self, ids, labels)
        seen.append((int(self.model.embedding.step),
                     int((self.model.embedding.weight == 0).sum())))

    PruningTrainer._eager_step = spy
    try:
        plan = method.search(PreparedDataset(planted), _ctx())
    finally:
        PruningTrainer._eager_step = original
    total = sum(plan.vocab_sizes) * WIDTH
    warm, steps = plan.extra["warmup_steps"], plan.extra["search_steps"]
    opts = DeepLightOptions(**{k: v for k, v in o.items() if k != "name"})
    pruned_at = {step: zeros for step, zeros in seen if step > warm and (step - warm) % 10 == 0}
    assert len(pruned_at) == (steps - warm) // 10 >= 3
    for step, zeros in pruned_at.items():
        s_t = opts.sparsity_at(step - warm, steps - warm)
        assert zeros == math.floor(s_t * total), (step, s_t)
    assert all(zeros == 0 for step, zeros in seen if step <= warm)  # no pruning in the warm-up
    s = [opts.sparsity_at(t, 100) for t in (0, 10, 50, 100, 200)]
    assert s[0] == 0 and all(a < b for a, b in zip(s[:3], s[1:4], strict=True)) and s[4] <= 0.75
    if schedule == "cubic":
        assert s[3] == pytest.approx(0.75) and s[2] == pytest.approx(0.75 * (1 - 0.5 ** 3))
    else:
        assert s[2] == pytest.approx(0.75 * (1 - 0.99 ** 5))
    # the final pruning keeps exactly floor(budget x entries), the largest magnitudes
    assert plan.embedding_params == int(plan.payload["mask"].sum()) == int(0.25 * total)
    assert method.prune_log[-1][0] == max(pruned_at) - warm


def test_deeplight_prunes_the_smallest_magnitudes_and_keeps_the_largest():
    from embdim.search.deeplight import MagnitudePrunedEmbedding

    emb = MagnitudePrunedEmbedding([2, 3], 2)
    values = torch.tensor([[0.5, -0.1], [-3.0, 0.2], [1.0, -0.05], [-0.3, 2.0], [0.01, -4.0]])
    with torch.no_grad():
        emb.weight.copy_(values)
    assert emb.prune_to(0.5) == 5  # the five smallest |w|: 0.01, -0.05, -0.1, 0.2, -0.3
    np.testing.assert_array_equal((emb.weight != 0).numpy(), (values.abs() >= 0.5).numpy())
    np.testing.assert_array_equal(emb.top_mask(3).numpy(), (values.abs() >= 2.0).numpy())


def test_deeplight_options_are_validated():
    for bad in ({"budget": 0}, {"schedule": "linear"}, {"damping": 1.0}, {"prune_every": 0},
                {"retrain": "rewind"}, {"width": 0}):
        with pytest.raises(ConfigError):
            make_method({"name": "deeplight", **bad})
    for bad in ({"threshold_type": "row"}, {"retrain": "finetune"}, {"budget": 2}):
        with pytest.raises(ConfigError):
            make_method({"name": "pep", **bad})


# ---- the masked plan ---------------------------------------------------------------------------
def test_masked_embedding_counts_non_zero_entries_and_csr_storage():
    mask = np.zeros((7, 4), dtype=bool)
    mask[0, :2] = mask[5, 1] = True  # field 0 (rows 0-2): 2 entries; field 1 (rows 3-6): 1
    emb = MaskedFieldEmbedding([3, 4], mask)
    assert emb.embedding_params == 3 and csr_storage_params(mask) == 2 * 3 + 7 + 1
    ids = torch.tensor([[0, 2], [1, 1]])
    out = emb(ids)
    assert out.shape == (2, 2, 4)
    assert (out[0, 0, 2:] == 0).all() and (out[1, 0] == 0).all() and (out[0, 1, [0, 2, 3]] == 0).all()
    out.sum().backward()  # pruned entries get no gradient; the kept looked-up ones do
    grad = emb.inner.groups[0].table.weight.grad  # one table over both fields (equal widths)
    assert torch.equal(grad != 0, torch.from_numpy(mask))


def test_masked_plan_round_trips_through_plan_json_into_the_retrain_and_resumes_exactly(
        planted, tmp_path):
    run = tmp_path / "run"
    method = {**DEEPLIGHT_FAST, "budget": 0.3}
    m = run_experiment(_cfg(planted, method), run, quiet=True)
    plan = DimensionPlan.load(run / "plan.json")
    assert (run / "plan.payload.npz").exists() and plan.embedding["kind"] == "masked"
    assert m["embedding_params"] == plan.embedding_params == int(plan.payload["mask"].sum())
    assert m["embedding_params"] == int(0.3 * m["fde_embedding_params"])
    assert m["embedding_storage_params"] == csr_storage_params(plan.payload["mask"])
    assert "non-zero" in m["embedding_params_note"] and m["test_auc"] > 0.7
    # the retrained model kept the mask: the pruned entries of its best weights are still 0
    state = torch.load(run / "checkpoints" / "best.pt", weights_only=True)["model"]
    mask = torch.from_numpy(plan.payload["mask"])
    table = torch.cat([state[k] for k in sorted(state) if k.startswith("embedding.inner.groups")])
    assert table.shape == mask.shape and (table[~mask] == 0).all() and (table[mask] != 0).all()
    # interrupted after the search: --resume rebuilds the retrain model from plan.json + payload
    shutil.rmtree(run / "checkpoints")
    (run / "metrics.json").unlink()
    again = run_experiment(_cfg(planted, method), run, resume=True, quiet=True)
    assert again["test_auc"] == m["test_auc"]


@pytest.mark.parametrize("method", [PEP_FAST, DEEPLIGHT_FAST], ids=["pep", "deeplight"])
def test_an_interrupted_search_resumes_to_the_same_mask_and_metrics(planted, tmp_path, method,
                                                                    monkeypatch):
    method = {**method, "budget": 0.2}
    whole = run_experiment(_cfg(planted, method), tmp_path / "whole", quiet=True)
    original = PruningTrainer.train_epoch

    def crash_in_second_epoch(self, epoch):
        if epoch == 1:
            raise KeyboardInterrupt
        return original(self, epoch)

    monkeypatch.setattr(PruningTrainer, "train_epoch", crash_in_second_epoch)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_cfg(planted, method), tmp_path / "cut", quiet=True)
    assert not (tmp_path / "cut" / "plan.json").exists()
    stage = method["name"]
    assert (tmp_path / "cut" / "search" / stage / "last.pt").exists()
    monkeypatch.setattr(PruningTrainer, "train_epoch", original)
    resumed = run_experiment(_cfg(planted, method), tmp_path / "cut", resume=True, quiet=True)
    a = DimensionPlan.load(tmp_path / "whole" / "plan.json").payload["mask"]
    b = DimensionPlan.load(tmp_path / "cut" / "plan.json").payload["mask"]
    np.testing.assert_array_equal(a, b)
    assert resumed["test_auc"] == whole["test_auc"]


@pytest.mark.parametrize("model", MODEL_NAMES)
@pytest.mark.parametrize("method", ["pep", "deeplight"])
def test_every_base_model_runs_with_both_methods(small, tmp_path, model, method):
    opts = ({"name": "pep", "width": 4, "budget": 0.5, "threshold_init": -9, "threshold_lr": 0.2,
             "epochs": 20} if method == "pep" else
            {"name": "deeplight", "width": 4, "budget": 0.5, "warmup_epochs": 0, "prune_every": 2,
             "epochs": 1})
    m = run_experiment(_cfg(small, opts, model=model, epochs=1, max_steps_per_epoch=6),
                       tmp_path / "run", quiet=True)
    plan = json.loads((tmp_path / "run" / "plan.json").read_text())
    if model == "lr":
        assert m["embedding_params"] == 0 == m["embedding_storage_params"]
    else:
        assert m["embedding_params"] == plan["embedding_params"] <= 0.5 * m["fde_embedding_params"]
        assert m["embedding_storage_params"] > m["embedding_params"]


@pytest.mark.parametrize("method", [PEP_FAST, DEEPLIGHT_FAST], ids=["pep", "deeplight"])
def test_retrain_none_hands_over_exactly_the_pruned_searched_model(planted, method):
    seed_everything(0)
    m = make_method({**method, "budget": 0.3, "retrain": "none"})
    assert not m.retrains
    plan = m.search(PreparedDataset(planted), _ctx())
    ctx = _ctx()
    model = build_model("deepfm", plan.vocab_sizes, plan, options=ctx.model_options)
    m.init_retrain_model(model, plan, ctx)
    source = m.build_search_model(plan.vocab_sizes, ctx)
    from embdim.search.pruning import load_state_payload

    assert load_state_payload(source, plan.payload, "searched_state")
    ids = torch.tensor(np.array(PreparedDataset(planted).split("valid").x[:256]), dtype=torch.long)
    model.eval(), source.eval()
    with torch.no_grad():
        torch.testing.assert_close(model(ids), source(ids))  # the masked model = the pruned one
    fresh = make_method({**method, "budget": 0.3, "retrain": "random"})
    assert "searched_state/embedding.weight" not in fresh.search(PreparedDataset(planted),
                                                                 _ctx()).payload
