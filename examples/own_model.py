"""Apply an embdim plan to a model of your own: a hand-written PyTorch model whose embedding layer is
``embdim.nn.PlanEmbedding``, trained with a plain PyTorch loop.

    python examples/own_model.py                      # makes a small synthetic dataset and searches a
                                                      # plan with a short SSEDS run first
    python examples/own_model.py PLAN.json DATA_DIR   # your plan and the prepared dataset it was
                                                      # searched on (`embdim prepare`)

The model (``ClickModel``) is what many production CTR models look like: the field embeddings
concatenated into an MLP. Only its
embedding layer comes from embdim, built from the plan: ``PlanEmbedding(plan, output="concat")`` gives
every kept field at its searched width, ``[B, sum_i d_i]``, with no alignment parameters, and reads
the dataset's id matrix ``[B, F_all]`` directly (a dropped field's column is ignored). The example
trains it and its full-width twin (every field at the plan's ``full_dim``) and prints both.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from torch import nn

from embdim.data import PreparedDataset
from embdim.nn import PlanEmbedding
from embdim.plan import DimensionPlan
from embdim.train.metrics import roc_auc


class ClickModel(nn.Module):
    """An MLP over the concatenated field embeddings (any widths): ids [B, F_all] -> logits [B]."""

    def __init__(self, plan: DimensionPlan, hidden: int = 64, schema=None):
        super().__init__()
        self.embedding = PlanEmbedding(plan, output="concat", schema=schema)  # [B, F_all] -> [B, sum d_i]
        self.mlp = nn.Sequential(nn.Linear(self.embedding.out_features, hidden), nn.ReLU(),
                                 nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, 1))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.mlp(self.embedding(ids)).squeeze(1)


def train(model: nn.Module, dataset: PreparedDataset, *, epochs: int = 3, batch_size: int = 500,
          lr: float = 3e-3, seed: int = 0) -> float:
    """A plain training loop (Adam, BCE on logits); returns the test AUC."""
    torch.manual_seed(seed)
    x = torch.from_numpy(np.array(dataset.split("train").x, dtype=np.int64))
    y = torch.from_numpy(np.array(dataset.split("train").y, dtype=np.float32))
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    loss_fn = nn.BCEWithLogitsLoss()
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(y)).split(batch_size):
            optimizer.zero_grad()
            loss_fn(model(x[idx]), y[idx]).backward()
            optimizer.step()
    model.eval()
    test = dataset.split("test")
    with torch.no_grad():
        scores = torch.sigmoid(model(torch.from_numpy(np.array(test.x, dtype=np.int64)))).numpy()
    return roc_auc(np.asarray(test.y), scores)


def search_plan(work: Path) -> tuple[Path, Path]:
    """A synthetic dataset with two pure-noise fields and an SSEDS plan at 15 % of the full table."""
    from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
    from embdim.search import SSEDS

    spec = SyntheticSpec(field_names=["noise_a", "user", "item", "category", "site", "noise_b"],
                         cardinalities=[5, 50, 200, 30, 100, 400], true_dims=[0, 2, 4, 2, 4, 0],
                         first_order_std=1.0, interaction_std=1.5, seed=3)
    write_synthetic_dataset(work / "data", spec, 12_000, seed=3)
    plan = SSEDS(budget=0.15, pretrain_width=16, saliency_batches=4).search(
        PreparedDataset(work / "data"), model="deepfm", train={"epochs": 2, "batch_size": 1000},
        work_dir=work / "search")
    plan.save(work / "plan.json")
    return work / "plan.json", work / "data"


def main(argv: list[str]) -> None:
    torch.set_num_threads(min(2, torch.get_num_threads()))
    with tempfile.TemporaryDirectory() as tmp:
        plan_path, data_dir = (Path(argv[0]), Path(argv[1])) if len(argv) == 2 else search_plan(Path(tmp))
        dataset = PreparedDataset(data_dir)
        plan = DimensionPlan.load(plan_path)
        print(f"{plan.method} plan: dims {plan.dims_by_field()}")
        full = DimensionPlan.uniform(dataset.schema, plan.full_dim)
        for name, p in (("plan", plan), (f"full width {plan.full_dim}", full)):
            model = ClickModel(p, schema=dataset.schema)
            auc = train(model, dataset)
            print(f"  ClickModel with the {name}: {model.embedding.embedding_params:,} embedding "
                  f"parameters, test AUC {auc:.4f}")


if __name__ == "__main__":
    main(sys.argv[1:])
