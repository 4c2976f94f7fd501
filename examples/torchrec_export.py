"""Build a TorchRec EmbeddingBagCollection from an embdim plan and run a forward pass.

    python examples/torchrec_export.py            # makes a small synthetic dataset and an SSEDS run
                                                  # in a temporary folder first (~20 s on 2 CPU cores)
    python examples/torchrec_export.py RUN_DIR    # a finished run folder of yours

Steps: the plan's TorchRec configs (one table per kept field, widths rounded up to multiples of 4),
an EmbeddingBagCollection over them filled with the run's trained rows (checkpoints/best.pt), a
KeyedJaggedTensor of a test batch of the prepared dataset, the forward pass, and each field's
aligned embedding as the embdim model computes it (pooled row @ W_i). Needs the torchrec extra
(docs/torchrec.md).
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import torch
import yaml

from embdim.data import PreparedDataset
from embdim.errors import EmbdimError
from embdim.export.torchrec import export_weights, torchrec_export
from embdim.plan import DimensionPlan


def make_run(work: Path) -> Path:
    """A synthetic dataset with planted field dims (two pure-noise fields) and a short SSEDS run."""
    from embdim.data.synthetic import SyntheticSpec, write_synthetic_dataset
    from embdim.experiment import run_experiment

    spec = SyntheticSpec(field_names=["noise_a", "user", "item", "category", "site", "noise_b"],
                         cardinalities=[5, 50, 200, 30, 100, 400], true_dims=[0, 2, 4, 2, 4, 0],
                         first_order_std=1.0, interaction_std=1.5, seed=3)
    write_synthetic_dataset(work / "data", spec, 12_000, seed=3)
    cfg = {"data": {"path": str(work / "data")}, "model": {"name": "deepfm"},
           "method": {"name": "sseds", "budget": 0.15, "pretrain_width": 16, "saliency_batches": 4},
           "train": {"epochs": 2, "batch_size": 1000, "seed": 2022}}
    run_experiment(cfg, work / "run", quiet=True)
    return work / "run"


def main(run_dir: Path) -> None:
    from torchrec import EmbeddingBagCollection

    plan = DimensionPlan.load(run_dir / "plan.json")
    data_path = yaml.safe_load((run_dir / "config.yaml").read_text())["data"]["path"]
    dataset = PreparedDataset(data_path)

    # The configs alone: plan.to_torchrec(schema) (checks the plan against the dataset first).
    configs = plan.to_torchrec(dataset.schema)
    print(f"{plan.method} plan, dims {plan.dims_by_field()}")
    if plan.dropped_fields:
        print(f"dropped fields (no table): {plan.dropped_fields}")
    for c in configs:
        print(f"  EmbeddingBagConfig {c.name}: {c.num_embeddings} x {c.embedding_dim}, "
              f"features {c.feature_names}, pooling {c.pooling.name}")

    ebc = EmbeddingBagCollection(tables=configs, device=torch.device("cpu"))
    export = torchrec_export(plan, dataset.schema)
    try:
        weights = export_weights(run_dir, export, plan=plan)
        ebc.load_state_dict(weights["state_dict"])
        print(f"loaded the trained rows of {weights['checkpoint']} (epoch {weights['epoch']})")
    except EmbdimError as e:
        weights = None
        print(f"no trained weights exported ({e}); the tables keep TorchRec's initialisation")

    ids = torch.from_numpy(dataset.split("test").x[:8].copy())  # [B, F] prepared ids
    kjt = export.kjt(ids)  # one feature per kept field, one id per example
    pooled = ebc(kjt)  # KeyedTensor
    print(f"forward on a batch of {ids.shape[0]}: pooled values {tuple(pooled.values().shape)}")
    for t in export.tables:
        line = f"  {t.feature}: pooled {tuple(pooled[t.feature].shape)}"
        if weights is not None and t.feature in weights["alignment"]:
            a = weights["alignment"][t.feature]
            aligned = pooled[t.feature] @ a["weight"] + a.get("bias", 0)
            line += f" -> aligned {tuple(aligned.shape)}"
        print(line)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        main(Path(sys.argv[1]))
    else:
        with tempfile.TemporaryDirectory() as tmp:
            print("making a synthetic dataset and an SSEDS run ...")
            main(make_run(Path(tmp)))
