"""NIS: the multi-size supernet and its derived block embedding, the controller, the reward's memory
cost (it moves the chosen sizes down on planted data), exact resume, every base model end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

from embdim.config import config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.block_embedding import BlockFieldEmbedding
from embdim.nn.models import MODEL_NAMES, build_model
from embdim.nn.multisize import MultiSizeSupernet
from embdim.plan import DimensionPlan
from embdim.search import make_method
from embdim.search.nis import Controller, NISOptions, NISSearch, memory_cost, memory_entries
from embdim.train.trainer import seed_everything

TRAIN = {"epochs": 2, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 1, "threads": 1}
BUCKETS = [[{"start": 2, "stop": 5}, {"start": 5, "stop": 9, "reserved_ids": [0, 1]}],
           [{"start": 0, "stop": 3}, {"start": 3, "stop": 6}, {"start": 6, "stop": 7}]]
VOCAB = [9, 7]


def test_the_supernet_with_an_architecture_is_the_block_embedding_it_derives():
    """Sec. 3.1-3.2: value v of bucket s reads its first a_s blocks, each projected by its own
    P_{s,t}; the derived plan's BlockFieldEmbedding (dim a_s x block_dim) computes the same."""
    torch.manual_seed(0)
    net = MultiSizeSupernet(VOCAB, BUCKETS, block_dim=2, num_blocks=3)
    with torch.no_grad():
        net.table.normal_()
        net.projection.normal_()
    arch = torch.tensor([[3, 1, 0], [2, 0, 1]])  # field 0 has 2 buckets (slot 2 unused)
    net.set_architecture(arch)
    blocks = [[{**b, "dim": int(a) * 2} for b, a in zip(f, row, strict=False)]
              for f, row in zip(BUCKETS, arch.tolist(), strict=True)]
    emb = BlockFieldEmbedding(VOCAB, blocks, out_dim=6)
    k = 0
    with torch.no_grad():
        for f, field in enumerate(blocks):
            off = [0, VOCAB[0]][f]
            for s, b in enumerate(field):
                if b["dim"] == 0:
                    continue
                ids = list(range(b["start"], b["stop"])) + b.get("reserved_ids", [])
                emb.tables[k].copy_(net.table[[off + i for i in ids], :b["dim"]])
                emb.projections[k].copy_(net.projection[f, s, :b["dim"]])
                k += 1
    ids = torch.tensor([[i % 9, i % 7] for i in range(40)])
    assert torch.allclose(net(ids), emb(ids), atol=1e-6)
    dropped = ids[:, 1] >= 3  # field 1's bucket 1 (ids 3..5) has 0 blocks: zeros
    dropped &= ids[:, 1] < 6
    assert dropped.any() and torch.all(net(ids)[dropped, 1] == 0)
    # only the blocks the architecture uses get a gradient
    net(ids).sum().backward()
    grad, o = net.table.grad, VOCAB[0]
    assert torch.all(grad[o + 3:o + 6] == 0)  # field 1, bucket 1: no block
    assert torch.all(grad[[0, 1, 5, 6, 7, 8], 2:] == 0) and torch.all(grad[o:o + 3, 4:] == 0)
    assert torch.all(grad[2:5].abs().sum(0) > 0)  # bucket 0 of field 0: all three blocks


def test_a_plan_can_leave_buckets_and_fields_without_embedding():
    blocks = [[{"start": 0, "stop": 5, "dim": 4}, {"start": 5, "stop": 9, "dim": 0}],
              [{"start": 0, "stop": 7, "dim": 0}]]
    plan = DimensionPlan(method="nis", field_names=["a", "b"], vocab_sizes=VOCAB, dims=[4, 0],
                         full_dim=8, value_dim_rule={"blocks": blocks})
    again = DimensionPlan.from_dict(json.loads(json.dumps(plan.to_dict())))
    assert again.embedding_params == 20 and again.dropped_fields == ["b"]
    model = build_model("deepfm", VOCAB, again, options={"aligned_dim": 8})
    assert model.embedding.kept_fields == [0] and model.embedding_params == 20
    out = model.embedding(torch.tensor([[1, 3], [7, 2]]))
    assert out.shape == (2, 1, 8) and torch.all(out[1] == 0) and not torch.all(out[0] == 0)
    assert model(torch.tensor([[1, 3], [7, 2]])).shape == (2,)


def test_the_memory_cost_is_the_paper_form_relative_to_the_budget():
    sizes = torch.tensor([[3, 6, 0], [2, 2, 1]])
    arch = torch.tensor([[[4, 2, 0], [1, 1, 0]], [[0, 0, 0], [0, 0, 0]]])
    entries = memory_entries(arch, sizes, 8)
    assert entries.tolist() == [(12 + 12 + 2 + 2) * 8, 0]
    full = 14 * 32
    hinge = NISOptions(budget=0.25, cost_weight=2.0)
    assert memory_cost(entries, hinge, full).tolist() == pytest.approx([2 * (224 / 112 - 1), 0.0])
    assert memory_cost(torch.tensor([100]), hinge, full).item() == 0.0  # within the budget: free
    linear = NISOptions(cost="linear", cost_weight=0.5)
    assert memory_cost(entries, linear, full).tolist() == pytest.approx([0.5 * 224 / 448, 0.0])


def test_the_controller_samples_monotone_multisize_embeddings_and_their_log_probability():
    torch.manual_seed(0)
    c = Controller([2, 3], num_blocks=3, monotone=True)
    with torch.no_grad():
        c.logits.normal_()
    gen = torch.Generator().manual_seed(0)
    arch, logp, _ = c.sample(500, gen)
    assert arch.shape == (500, 2, 3) and torch.all(arch[:, 0, 2] == 0)  # field 0 has 2 buckets
    assert torch.all(arch[..., 1:] <= arch[..., :-1])  # never more blocks for a rarer bucket
    # log pi of one architecture, by hand: product of the masked softmaxes
    a = arch[0]
    expect = 0.0
    for f, n in enumerate([2, 3]):
        prev = 3
        for s in range(n):
            p = torch.softmax(c.logits[f, s, :prev + 1].detach(), 0)
            expect += float(torch.log(p[a[f, s]]))
            prev = int(a[f, s])
    assert float(logp[0].detach()) == pytest.approx(expect, abs=1e-5)
    uniform, _, _ = c.sample(4000, gen, uniform=True)
    assert abs(float((uniform[:, 0, 0] == 0).float().mean()) - 0.25) < 0.03


def _cost_run(planted, weight):
    seed_everything(TRAIN["seed"])  # as the pipeline does before a search
    method = make_method({"name": "nis", "budget": 0.1, "cost_weight": weight})
    return method.search(PreparedDataset(planted), model="fm", train={**TRAIN, "epochs": 3})


def test_the_rewards_cost_term_moves_the_chosen_sizes_down(planted):
    """Sec. 4: R = Q - C(M). On planted data with a 10% budget, the controller trained with the
    memory cost chooses far fewer embedding entries than the same search without it."""
    free, costed = _cost_run(planted, 0.0), _cost_run(planted, 1.0)
    full = free.extra["budget"]["full_entries"]
    assert free.embedding_params > 2 * 0.1 * full  # quality alone: far above the budget
    assert costed.embedding_params < 0.5 * free.embedding_params
    last_free, last_cost = free.extra["search_history"][-1], costed.extra["search_history"][-1]
    assert last_free["mean_cost"] == 0.0 and last_cost["mean_cost"] >= 0.0
    assert costed.extra["search_history"][0]["mean_cost"] > last_cost["mean_cost"]


@pytest.mark.slow
def test_the_quality_term_teaches_the_controller_to_drop_noise_fields(planted):
    """Sec. 4: with the validation AUC as the reward, the controller learns that the pure-noise
    fields (f0, f5) can go without an embedding and the planted-interaction fields cannot."""
    seed_everything(TRAIN["seed"])
    plan = make_method({"name": "nis", "cost_weight": 0.0}).search(
        PreparedDataset(planted), model="deepfm", train={**TRAIN, "epochs": 8})
    probs = plan.extra["controller_probabilities"]
    drop = {f: probs[f][0][0] for f in probs}  # P(0 blocks) of each field's most frequent bucket
    noise, signal = [drop["f0"], drop["f5"]], [drop[f] for f in ("f1", "f2", "f3", "f4")]
    assert min(noise) > 3 * max(signal), drop


def test_options_are_validated_with_one_line_errors():
    for bad in ({"buckets": 0}, {"block_dim": 2.5}, {"budget": 0}, {"budget": 1.5}, {"cost": "log"},
                {"quality": "acc"}, {"bucket_split": "x"}, {"samples": 0}, {"warmup_steps": -1},
                {"baseline_decay": 1.0}, {"controller_lr": 0}, {"colour": 1}):
        with pytest.raises(ConfigError):
            make_method({"name": "nis", **bad})


def _cfg(path, model="deepfm", **method):
    return config_from_dict({
        "data": {"path": str(path)}, "model": {"name": model},
        "method": {"name": "nis", "epochs": 2, "warmup_steps": 4, **method},
        "train": {**TRAIN, "epochs": 2}})


def test_an_interrupted_search_resumes_exactly(planted, tmp_path, monkeypatch):
    whole = run_experiment(_cfg(planted), tmp_path / "whole", quiet=True)
    original = NISSearch._save

    def save_then_die(self, epoch, state):
        original(self, epoch, state)
        raise KeyboardInterrupt  # killed right after the first search checkpoint

    monkeypatch.setattr(NISSearch, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(_cfg(planted), tmp_path / "cut", quiet=True)
    assert (tmp_path / "cut" / "search" / "nis" / "search.pt").exists()
    assert not (tmp_path / "cut" / "plan.json").exists()
    monkeypatch.setattr(NISSearch, "_save", original)
    again = run_experiment(_cfg(planted), tmp_path / "cut", resume=True, quiet=True)
    plans = [json.loads((tmp_path / r / "plan.json").read_text()) for r in ("whole", "cut")]
    assert plans[0]["extra"]["controller_probabilities"] == plans[1]["extra"]["controller_probabilities"]
    assert plans[0]["value_dim_rule"] == plans[1]["value_dim_rule"]
    hist = [[{k: v for k, v in h.items() if k != "seconds"} for h in p["extra"]["search_history"]]
            for p in plans]
    assert hist[0] == hist[1]
    assert again["test_auc"] == whole["test_auc"] and again["embedding_params"] == whole["embedding_params"]


@pytest.mark.parametrize("model", [m for m in MODEL_NAMES if m != "lr"])
def test_nis_runs_end_to_end_on_every_base_model(small, tmp_path, model):
    m = run_experiment(_cfg(small, model, max_steps=6), tmp_path / "run", quiet=True)
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    assert m["embedding_params"] == plan.embedding_params > 0
    assert m["fde_embedding_params"] == sum(plan.vocab_sizes) * 32
    assert np.isfinite(m["test_auc"])


def test_nis_on_the_linear_model_is_refused_before_the_run_folder_exists(small, tmp_path):
    with pytest.raises(ConfigError, match="nis searches the embedding layer; model 'lr' has none"):
        run_experiment(_cfg(small, "lr"), tmp_path / "run", quiet=True)
    assert not (tmp_path / "run").exists()
