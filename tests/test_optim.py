"""``train.optimizer``: Adam, or lazy row-wise Adam on the tables (``sparse_adam``)."""

from __future__ import annotations

import pytest
import torch

from embdim.config import TrainConfig, config_from_dict
from embdim.errors import ConfigError
from embdim.nn.models import build_model
from embdim.train.optim import TableAdam, make_optimizer


def _batch(vocab, rows=64, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.stack([torch.randint(0, v // 2, (rows,), generator=g) for v in vocab], 1)  # low half
    return ids, torch.randint(0, 2, (rows,), generator=g).float()


@pytest.mark.parametrize("model_name", ["deepfm", "widedeep"])
def test_sparse_adam_moves_only_the_rows_a_batch_reads(model_name):
    vocab = [40, 60, 30]
    model = build_model(model_name, vocab, dim=4, options={"mlp": [8]})
    opt = make_optimizer(model, "sparse_adam", lr=0.01)
    assert isinstance(opt, TableAdam)
    tables = [p for g in opt.sparse.param_groups for p in g["params"]]
    assert len(tables) == 2  # the embedding table and the first-order weights
    before = [t.detach().clone() for t in tables]
    ids, y = _batch(vocab)
    for _ in range(3):
        opt.zero_grad()
        torch.nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
        assert all(t.grad.is_sparse for t in tables)
        opt.step()
    offsets = torch.tensor([0, 40, 100])
    read = torch.zeros(130, dtype=torch.bool)
    read[(ids + offsets).unique()] = True
    for t, b in zip(tables, before, strict=True):
        moved = (t.detach() != b).any(1)
        assert moved[read].all() and not moved[~read].any()


def test_dense_adam_keeps_moving_rows_after_the_batch_has_left():
    """What sets the two apart: with momentum, dense Adam changes a row on steps that do not read
    it (zero gradient), lazy Adam does not."""
    vocab = [40, 60, 30]
    changed = {}
    for name in ("adam", "sparse_adam"):
        torch.manual_seed(0)
        model = build_model("deepfm", vocab, dim=4, options={"mlp": [8]})
        opt = make_optimizer(model, name, lr=0.01)
        table = model.embedding.groups[0].table.weight
        for step, seed in enumerate((0, 1)):
            ids, y = _batch(vocab, seed=seed)
            if step == 1:
                ids = ids.clone()
                ids[:, 0] = 39  # the second batch never reads field 0's rows 0..19
                snapshot = table.detach()[:20].clone()
            opt.zero_grad()
            torch.nn.functional.binary_cross_entropy_with_logits(model(ids), y).backward()
            opt.step()
        changed[name] = bool((table.detach()[:20] != snapshot).any())
    assert changed == {"adam": True, "sparse_adam": False}


def test_sparse_adam_trains_and_resumes_exactly(planted, interrupt_and_resume):
    cfg = config_from_dict({"data": {"path": str(planted)}, "model": {"name": "widedeep", "mlp": [16]},
                            "method": {"name": "fde", "dim": 8},
                            "train": {"epochs": 3, "batch_size": 500, "lr": 3e-3, "early_stop": 0,
                                      "seed": 7, "optimizer": "sparse_adam"}})
    full, resumed = interrupt_and_resume(cfg)
    assert full["test_auc"] > 0.70
    assert resumed["test_auc"] == full["test_auc"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]


def test_optimizer_option_is_checked():
    with pytest.raises(ConfigError, match="train.optimizer must be"):
        TrainConfig(optimizer="sgd").validate()
    with pytest.raises(ConfigError, match="no weight decay"):
        TrainConfig(optimizer="sparse_adam", weight_decay=1e-5).validate()
