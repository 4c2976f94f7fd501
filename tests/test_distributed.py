"""Data-parallel training on torch.distributed: 2 CPU processes (gloo) launched with torchrun.

* exactness: 2 processes (each on its own shard, half the batch) end with the weights and metrics
  of one process that trains on the same global batches, up to float rounding (the all-reduce sums
  the two half-batch gradients in another order than one full-batch backward);
* the documented entry (``torchrun -m embdim run``) trains FDE, the AutoDim search + retrain and
  SSEDS, writes one run folder from rank 0, and lands within one process's spread over seeds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
import torch.distributed as dist
import yaml

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.data.loader import BatchLoader
from embdim.experiment import run_experiment
from embdim.nn.models import build_model
from embdim.train.trainer import Trainer, seed_everything

pytestmark = pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")

TRAIN = {"epochs": 2, "batch_size": 1000, "lr": 3e-3, "early_stop": 0, "seed": 7,
         "log_every": 1, "optimizer": "adam"}  # auto is adam under torchrun, sparse_adam alone

WORKER = textwrap.dedent("""
    import json, sys
    import torch
    from embdim import distributed
    from embdim.config import TrainConfig
    from embdim.data.dataset import PreparedDataset
    from embdim.nn.models import build_model
    from embdim.train.trainer import Trainer, seed_everything

    data, out, train = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
    distributed.init_from_environment("cpu")
    ds = PreparedDataset(data)
    seed_everything(0)
    model = build_model("fm", ds.schema, dim=8)
    trainer = Trainer(model, ds, TrainConfig(**train), quiet=True)
    fit = trainer.fit()
    test = trainer.evaluate("test")
    probs, _, _ = trainer.predict("test")  # each rank predicts a slice; gathered in row order
    if distributed.is_main():
        torch.save({"state": model.state_dict(), "probs": torch.from_numpy(probs)}, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump({"test": test, "history": fit.history,
                       "world": distributed.world_size()}, f)
    distributed.shutdown()
""")


def _torchrun(*args: str, cwd) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nnodes=1",
           "--nproc_per_node=2", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=env, cwd=cwd)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


class _GlobalBatches:
    """One process replaying what 2 data-parallel processes see together: at every step the
    concatenation of both shards' local batches."""

    def __init__(self, split, batch_size: int, seed: int):
        half = len(split) // 2
        self.shards = [BatchLoader(split, batch_size // 2, shuffle=True, seed=seed,
                                   row_range=(r * half, (r + 1) * half)) for r in range(2)]

    def __len__(self) -> int:
        return len(self.shards[0])

    def epoch(self, epoch: int):
        for (x0, y0), (x1, y1) in zip(self.shards[0].epoch(epoch), self.shards[1].epoch(epoch),
                                      strict=True):
            yield torch.cat([x0, x1]), torch.cat([y0, y1])


def test_two_processes_match_one_process_on_the_same_global_batches(planted, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    _torchrun(str(tmp_path / "worker.py"), str(planted), str(tmp_path / "ddp"), json.dumps(TRAIN),
              cwd=tmp_path)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    assert ddp["world"] == 2

    ds = PreparedDataset(planted)
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_model("fm", ds.schema, dim=8)
    trainer = Trainer(model, ds, TrainConfig(**TRAIN), quiet=True)
    trainer.train_loader = _GlobalBatches(ds.split("train"), TRAIN["batch_size"], TRAIN["seed"])
    fit = trainer.fit()
    test = trainer.evaluate("test")

    saved = torch.load(tmp_path / "ddp.pt", weights_only=True)
    ddp_state = saved["state"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(ddp_state[name], value, rtol=1e-4, atol=1e-6, msg=name)
    assert ddp["test"]["auc"] == pytest.approx(test["auc"], abs=1e-5)
    assert ddp["test"]["logloss"] == pytest.approx(test["logloss"], abs=1e-5)
    for a, b in zip(ddp["history"], fit.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-5)
        assert a["valid_auc"] == pytest.approx(b["valid_auc"], abs=1e-5)
    # Evaluation: every test row predicted exactly once, gathered in row order.
    probs, _, _ = trainer.predict("test")
    assert saved["probs"].shape == (len(ds.split("test")),)
    np.testing.assert_allclose(saved["probs"].numpy(), probs, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", [{"name": "autodim", "epochs": 1, "candidates": [2, 4, 8]},
                                    {"name": "sseds", "budget": 0.5, "pretrain_width": 8}])
def test_torchrun_embdim_run_writes_one_run_folder_close_to_one_process(planted, tmp_path, method):
    cfg = {"data": {"path": str(planted)}, "model": {"name": "deepfm", "mlp": [32]},
           "method": method, "train": {**TRAIN, "epochs": 3}}
    cfg_path = tmp_path / "cfg.yaml"
    cfg_path.write_text(yaml.safe_dump(cfg))
    proc = _torchrun("-m", "embdim", "--quiet", "run", str(cfg_path), "--out",
                     str(tmp_path / "ddp"), cwd=tmp_path)
    assert proc.stdout.count("test_auc=") == 1  # only rank 0 reports
    ddp = json.loads((tmp_path / "ddp" / "metrics.json").read_text())
    assert (tmp_path / "ddp" / "checkpoints" / "last.pt").exists()
    assert sorted(p.name for p in (tmp_path / "ddp").iterdir() if p.suffix == ".json") == \
        ["metrics.json", "plan.json"]

    # The search sees other batches on two processes (half-batch shards, per-process BatchNorm
    # statistics), so it may settle on another plan: the stated tolerance is the spread of one
    # process over seeds (about 0.035 AUC on this data) widened by 0.02 on each side.
    torch.set_num_threads(1)
    single = [run_experiment({**cfg, "train": {**cfg["train"], "seed": seed}},
                             tmp_path / f"single-{seed}", quiet=True)["test_auc"]
              for seed in (TRAIN["seed"], TRAIN["seed"] + 1, TRAIN["seed"] + 2)]
    assert min(single) - 0.02 <= ddp["test_auc"] <= max(single) + 0.02, (ddp["test_auc"], single)
    assert ddp["test_auc"] > 0.6


RESUME_WORKER = textwrap.dedent("""
    import json, sys
    from embdim import distributed
    from embdim.experiment import run_experiment
    from embdim.train.trainer import Trainer

    cfg, out, mode = json.loads(sys.argv[1]), sys.argv[2], sys.argv[3]
    distributed.init_from_environment("cpu")
    if mode == "cut":  # interrupted after its first epoch's checkpoint
        real = Trainer.train_epoch

        def train_epoch(self, epoch):
            if epoch == 1:
                raise SystemExit(0)
            return real(self, epoch)

        Trainer.train_epoch = train_epoch
    try:
        run_experiment(cfg, out, resume=(mode == "resume"), quiet=True)
    except SystemExit:  # the simulated interruption (both ranks at the same epoch): close the
        pass            # process group, or gloo's threads may abort the exiting interpreter
    distributed.shutdown()
""")


def test_torchrun_fde_run_and_resume_end_with_exactly_the_same_metrics(planted, tmp_path):
    cfg = {"data": {"path": str(planted)}, "model": {"name": "deepfm", "mlp": [32]},
           "method": {"name": "fde", "dim": 8}, "train": {**TRAIN, "epochs": 2}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = _torchrun("-m", "embdim", "run", str(tmp_path / "cfg.yaml"), "--out",
                     str(tmp_path / "full"), cwd=tmp_path)
    assert proc.stdout.count("test_auc=") == 1  # only rank 0 reports
    (tmp_path / "resume.py").write_text(RESUME_WORKER)
    run = lambda out, mode: _torchrun(str(tmp_path / "resume.py"), json.dumps(cfg),  # noqa: E731
                                      str(tmp_path / out), mode, cwd=tmp_path)
    run("cut", "cut")
    assert (tmp_path / "cut" / "checkpoints" / "last.pt").exists()
    assert not (tmp_path / "cut" / "metrics.json").exists()
    run("cut", "resume")
    full = json.loads((tmp_path / "full" / "metrics.json").read_text())
    resumed = json.loads((tmp_path / "cut" / "metrics.json").read_text())
    assert resumed["test_auc"] == full["test_auc"]
    assert resumed["test_logloss"] == full["test_logloss"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
