"""The CUDA training path: CUDA-graph replay equals eager training; exact resume on the GPU.

Skipped where no CUDA device is present (CI); run them on a GPU machine with plain ``pytest``.
Deterministic CUDA algorithms are switched on for these tests: the embedding backward
(``index_add_``) otherwise sums with atomics in a varying order, and Adam turns those last-bit
differences into visible ones within a few steps.
"""

from __future__ import annotations

import os

os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS

import pytest
import torch

from embdim.config import TrainConfig, config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.experiment import run_experiment
from embdim.nn.models import ModelOptions, build_model
from embdim.train.trainer import Trainer, seed_everything

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.fixture(autouse=True)
def deterministic():
    torch.use_deterministic_algorithms(True)
    yield
    torch.use_deterministic_algorithms(False)


def _train(path, *, graphs: bool, model: str, amp: bool = False, plan_dims=None):
    ds = PreparedDataset(path)
    seed_everything(0)
    plan = None
    if plan_dims is not None:
        from embdim.plan import DimensionPlan

        plan = DimensionPlan(method="t", field_names=ds.schema.field_names,
                             vocab_sizes=ds.schema.vocab_sizes, dims=plan_dims, full_dim=8,
                             schema_hash=ds.schema.content_hash)
    net = build_model(model, ds.schema, plan, dim=8, options=ModelOptions(name=model, mlp=[32, 32],
                                                                          dropout=0.0))
    # 12k rows, 80% train, batch 1000: 9 full batches + a partial one (eager after the capture).
    cfg = TrainConfig(epochs=2, batch_size=1000, early_stop=0, lr=3e-3, device="cuda",
                      cuda_graphs=graphs, amp=amp, log_every=1)
    trainer = Trainer(net, ds, cfg, quiet=True)
    result = trainer.fit()
    return trainer, result


@pytest.mark.parametrize("model", ["deepfm", "autoint", "ipnn"])
def test_cuda_graph_training_matches_eager_training(planted, model):
    eager, r_eager = _train(planted, graphs=False, model=model)
    graphed, r_graphed = _train(planted, graphs=True, model=model)
    assert graphed._graph is not None, "the step was not captured"
    for a, b in zip(r_eager.history, r_graphed.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)
        assert a["valid_auc"] == pytest.approx(b["valid_auc"], abs=1e-4)
    # Same predictions. (Weights are not compared one by one: a bias followed by BatchNorm has a
    # gradient that is only rounding noise, which Adam normalises into visible differences.)
    p_eager, _, _ = eager.predict("test")
    p_graphed, _, _ = graphed.predict("test")
    assert abs(p_eager - p_graphed).max() < 2e-3


def test_cuda_graph_training_of_a_mixed_width_plan_matches_eager(planted):
    dims = [2, 8, 4, 0, 6, 8]
    _, r_eager = _train(planted, graphs=False, model="deepfm", plan_dims=dims)
    graphed, r_graphed = _train(planted, graphs=True, model="deepfm", plan_dims=dims)
    assert graphed._graph is not None
    assert [h["train_loss"] for h in r_graphed.history] == pytest.approx(
        [h["train_loss"] for h in r_eager.history], rel=1e-4)


def test_cuda_resume_ends_with_exactly_the_metrics_of_an_uninterrupted_run(planted, tmp_path,
                                                                         monkeypatch):
    def cfg():
        return config_from_dict({"data": {"path": str(planted)},
                                 "model": {"name": "deepfm", "mlp": [32]},
                                 "method": {"name": "fde", "dim": 8},
                                 "train": {"epochs": 3, "batch_size": 500, "lr": 3e-3,
                                           "early_stop": 0, "seed": 7, "device": "cuda"}})

    full = run_experiment(cfg(), tmp_path / "full", quiet=True)
    real_epoch = Trainer.train_epoch

    def interrupted(self, epoch):
        if epoch == 2:
            raise KeyboardInterrupt
        return real_epoch(self, epoch)

    monkeypatch.setattr(Trainer, "train_epoch", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg(), tmp_path / "cut", quiet=True)
    monkeypatch.setattr(Trainer, "train_epoch", real_epoch)
    resumed = run_experiment(cfg(), tmp_path / "cut", resume=True, quiet=True)
    assert resumed["test_auc"] == full["test_auc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_amp_with_cuda_graphs_learns(planted):
    _, result = _train(planted, graphs=True, model="deepfm", amp=True)
    assert result.history[-1]["valid_auc"] > 0.6


def test_nis_search_on_cuda_resumes_exactly(planted, tmp_path, monkeypatch):
    """NIS on the GPU: the controller's sampler lives on the device; an interrupted search resumes
    with exactly the plan and metrics of an uninterrupted one."""
    from embdim.search.nis import NISSearch

    def cfg():
        return config_from_dict({
            "data": {"path": str(planted)}, "model": {"name": "deepfm"},
            "method": {"name": "nis", "epochs": 2, "warmup_steps": 4},
            "train": {"epochs": 2, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 1,
                      "device": "cuda"}})

    whole = run_experiment(cfg(), tmp_path / "whole", quiet=True)
    original = NISSearch._save

    def save_then_die(self, epoch, state):
        original(self, epoch, state)
        raise KeyboardInterrupt

    monkeypatch.setattr(NISSearch, "_save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        run_experiment(cfg(), tmp_path / "cut", quiet=True)
    monkeypatch.setattr(NISSearch, "_save", original)
    again = run_experiment(cfg(), tmp_path / "cut", resume=True, quiet=True)
    assert again["dims"] == whole["dims"] and again["test_auc"] == whole["test_auc"]
