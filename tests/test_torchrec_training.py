"""Sharded training on TorchRec (``train.parallel: torchrec``) and its optimiser, row-wise Adagrad.

* ``RowwiseAdagrad`` is FBGEMM's ``EXACT_ROWWISE_ADAGRAD``: the rule by hand, and the same weights
  as FBGEMM's CPU table-batched kernel after a few steps with repeated ids;
* under DDP (dense gradients) it trains as one process does on the same global batches;
* 2 CPU processes (gloo) under ``torchrun`` train a mixed-width plan (one field dropped) with its
  tables sharded table-wise by ``DistributedModelParallel`` and end where one process ends that
  trains on the same global batches with ``train.optimizer: rowwise_adagrad``; the test AUC is
  within 0.02 of an ordinary single-process run.

The TorchRec tests skip when TorchRec is not installed, except with EMBDIM_REQUIRE_TORCHREC=1 (CI).
"""

from __future__ import annotations

import json
import textwrap

import pytest
import torch
import torch.distributed as dist
import yaml
from test_distributed import WORKER as DDP_WORKER
from test_distributed import _GlobalBatches, _torchrun

from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.errors import ConfigError
from embdim.experiment import run_experiment
from embdim.nn.models import build_model
from embdim.plan import DimensionPlan
from embdim.train.optim import ROWWISE_ADAGRAD_EPS, RowwiseAdagrad, TableAdam, make_optimizer
from embdim.train.trainer import Trainer, seed_everything

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:fbgemm_gpu")

TRAIN = {"epochs": 2, "batch_size": 1000, "lr": 0.05, "early_stop": 0, "seed": 7, "log_every": 1,
         "optimizer": "rowwise_adagrad"}
DIMS = [0, 4, 8, 4, 12, 4]  # mixed widths, multiples of 4; field 0 (pure noise) dropped


# ---- the optimiser -----------------------------------------------------------------------------
def test_rowwise_adagrad_follows_the_rule_on_sparse_and_dense_gradients():
    w0 = torch.randn(5, 4)
    rows = torch.tensor([1, 3, 1])  # row 1 read twice: its gradients are summed first
    g = torch.randn(3, 4)
    sparse = torch.nn.Parameter(w0.clone())
    sparse.grad = torch.sparse_coo_tensor(rows.unsqueeze(0), g, (5, 4))
    dense = torch.nn.Parameter(w0.clone())
    dense.grad = sparse.grad.to_dense()
    for p in (sparse, dense):
        RowwiseAdagrad([p], lr=0.1).step()
    expected = w0.clone()
    for r, gr in ((1, g[0] + g[2]), (3, g[1])):
        state = gr.pow(2).mean()
        expected[r] -= 0.1 * gr / (state.sqrt() + ROWWISE_ADAGRAD_EPS)
    torch.testing.assert_close(sparse.detach(), expected)
    torch.testing.assert_close(dense.detach(), expected)
    assert torch.equal(sparse.detach()[[0, 2, 4]], w0[[0, 2, 4]])  # rows not read do not move


def test_rowwise_adagrad_is_fbgemms_exact_rowwise_adagrad(torchrec):
    from fbgemm_gpu.split_embedding_configs import EmbOptimType
    from fbgemm_gpu.split_table_batched_embeddings_ops_common import EmbeddingLocation
    from fbgemm_gpu.split_table_batched_embeddings_ops_training import (
        ComputeDevice,
        SplitTableBatchedEmbeddingBagsCodegen,
    )

    vocab, width, lr = [30, 50], [4, 8], 0.05
    kernel = SplitTableBatchedEmbeddingBagsCodegen(
        [(v, d, EmbeddingLocation.HOST, ComputeDevice.CPU) for v, d in zip(vocab, width, strict=True)],
        optimizer=EmbOptimType.EXACT_ROWWISE_ADAGRAD, learning_rate=lr, eps=ROWWISE_ADAGRAD_EPS)
    tables = [torch.nn.Parameter(w.detach().clone()) for w in kernel.split_embedding_weights()]
    opt = RowwiseAdagrad(tables, lr=lr)
    gen = torch.Generator().manual_seed(0)
    for _ in range(4):
        batch = 16
        ids = [torch.randint(0, v // 3, (batch,), generator=gen) for v in vocab]  # many repeats
        upstream = torch.randn(batch, sum(width), generator=gen)
        out = kernel(torch.cat(ids), torch.arange(2 * batch + 1))  # one id per bag
        (out * upstream).sum().backward()  # the fused update happens here
        opt.zero_grad()
        ours = torch.cat([torch.nn.functional.embedding(i, t, sparse=True)
                          for i, t in zip(ids, tables, strict=True)], dim=1)
        (ours * upstream).sum().backward()
        opt.step()
    for t, w in zip(tables, kernel.split_embedding_weights(), strict=True):
        torch.testing.assert_close(t.detach(), w, rtol=1e-5, atol=1e-7)


def test_rowwise_adagrad_option_updates_the_tables_row_wise():
    model = build_model("deepfm", [40, 60, 30], dim=4, options={"mlp": [8]})
    opt = make_optimizer(model, "rowwise_adagrad", lr=0.01)
    assert isinstance(opt, TableAdam) and isinstance(opt.sparse, RowwiseAdagrad)
    assert len(opt.sparse.param_groups[0]["params"]) == 2  # embedding table + first-order weights


def test_torchrec_options_are_checked():
    with pytest.raises(ConfigError, match="rowwise_adagrad"):
        TrainConfig(parallel="torchrec", optimizer="adam").validate()
    TrainConfig(parallel="torchrec").validate()  # auto: rowwise_adagrad (embdim.train.optim)
    with pytest.raises(ConfigError, match="train.parallel"):
        TrainConfig(parallel="fsdp").validate()
    with pytest.raises(ConfigError, match="weight decay"):
        TrainConfig(optimizer="rowwise_adagrad", weight_decay=1e-5).validate()


def test_torchrec_needs_widths_that_are_multiples_of_4(torchrec, planted):
    ds = PreparedDataset(planted)
    plan = DimensionPlan(method="t", field_names=ds.schema.field_names,
                         vocab_sizes=ds.schema.vocab_sizes, dims=[3, 4, 8, 4, 12, 4], full_dim=12)
    model = build_model("fm", ds.schema, plan)
    with pytest.raises(ConfigError, match=r"widths \[3\].*method.round_to: 4"):
        Trainer(model, ds, TrainConfig(**{**TRAIN, "parallel": "torchrec"}), quiet=True)


def test_resume_is_refused_under_torchrec(planted, tmp_path):
    cfg = {"data": {"path": str(planted)}, "model": {"name": "fm"}, "method": {"name": "fde", "dim": 8},
           "train": {**TRAIN, "parallel": "torchrec"}}
    with pytest.raises(ConfigError, match="--resume is not supported with train.parallel torchrec"):
        run_experiment(cfg, tmp_path / "run", resume=True)


# ---- 2 processes -------------------------------------------------------------------------------
WORKER = textwrap.dedent("""
    import json, sys
    from pathlib import Path
    import torch
    from embdim import distributed
    from embdim.config import TrainConfig
    from embdim.data.dataset import PreparedDataset
    from embdim.errors import ConfigError
    from embdim.nn.models import build_model
    from embdim.plan import DimensionPlan
    from embdim.train.sharded import snapshot
    from embdim.train.trainer import Trainer, seed_everything

    data, out, train, dims = sys.argv[1], sys.argv[2], json.loads(sys.argv[3]), json.loads(sys.argv[4])
    distributed.init_from_environment("cpu")
    ds = PreparedDataset(data)
    s = ds.schema
    plan = DimensionPlan(method="t", field_names=s.field_names, vocab_sizes=s.vocab_sizes, dims=dims,
                         full_dim=max(dims))
    seed_everything(0)
    model = build_model("fm", s, plan)
    trainer = Trainer(model, ds, TrainConfig(**train), quiet=True)
    fit = trainer.fit()
    test = trainer.evaluate("test")
    # Uneven evaluation slices (550 / 650 rows in batches of 100: 6 vs 7 collective forwards)
    even, _, _ = trainer.predict("test")
    half = len(ds.split("test")) // 2 - 50
    distributed.evaluation_shard = lambda n: (0, half) if distributed.rank() == 0 else (half, n)
    trainer.cfg.eval_batch_size = 100
    uneven, _, _ = trainer.predict("test")
    trainer.checkpoint_dir = Path(out + "-ckpt")  # a folder with a (DDP) checkpoint in it
    trainer.checkpoint_dir.mkdir(exist_ok=True)
    (trainer.checkpoint_dir / "last.pt").write_bytes(b"")
    try:
        trainer.fit(resume=True)
        refused = ""
    except ConfigError as e:
        refused = str(e)
    # every table, from the process that holds it
    tables = {k: v for k, v in snapshot(trainer.model).items() if ".ebc." in k}
    parts = distributed.gather_objects(tables)
    if distributed.is_main():
        state = {k: v for part in parts for k, v in part.items()}
        state.update({k: v for k, v in snapshot(trainer.model).items() if ".ebc." not in k})
        torch.save(state, out + ".pt")
        with open(out + ".json", "w") as f:
            json.dump({"test": test, "history": fit.history, "refused": refused,
                       "uneven_vs_even": float(abs(uneven - even).max()), "rows": len(uneven),
                       "tables_per_rank": [sorted(p) for p in parts],
                       "embedding_params": model.embedding_params}, f)
    distributed.shutdown()
""")


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_two_torchrec_processes_match_one_process_with_the_same_optimizer(torchrec, planted, tmp_path):
    (tmp_path / "worker.py").write_text(WORKER)
    train = {**TRAIN, "parallel": "torchrec"}
    _torchrun(str(tmp_path / "worker.py"), str(planted), str(tmp_path / "tr"), json.dumps(train),
              json.dumps(DIMS), cwd=tmp_path)
    sharded = json.loads((tmp_path / "tr.json").read_text())
    state = torch.load(tmp_path / "tr.pt", weights_only=True)
    assert "does not resume from checkpoints" in sharded["refused"]
    assert sharded["rows"] == len(PreparedDataset(planted).split("test"))
    assert sharded["uneven_vs_even"] < 1e-6  # every row predicted once, in order, either way
    # table-wise: each kept field's table lives on exactly one process, both processes hold some
    held = [t for rank in sharded["tables_per_rank"] for t in rank]
    assert sorted(held) == sorted(f"embedding.ebc.embedding_bags.t_f{i}.weight" for i in range(1, 6))
    assert all(sharded["tables_per_rank"])

    ds = PreparedDataset(planted)
    plan = DimensionPlan(method="t", field_names=ds.schema.field_names,
                         vocab_sizes=ds.schema.vocab_sizes, dims=DIMS, full_dim=max(DIMS))
    torch.set_num_threads(1)

    def single(global_batches: bool):
        seed_everything(0)
        model = build_model("fm", ds.schema, plan)
        trainer = Trainer(model, ds, TrainConfig(**TRAIN), quiet=True)
        if global_batches:
            trainer.train_loader = _GlobalBatches(ds.split("train"), TRAIN["batch_size"], TRAIN["seed"])
        fit = trainer.fit()
        return model, fit, trainer.evaluate("test")

    # One process on the same global batches, the same optimiser: the same weights up to float
    # rounding (the tables' gradients are summed across processes in another order).
    model, fit, test = single(global_batches=True)
    assert sharded["embedding_params"] == model.embedding_params
    for i in range(1, 6):
        torch.testing.assert_close(state[f"embedding.ebc.embedding_bags.t_f{i}.weight"],
                                   model.embedding.field_weight(i).detach(), rtol=1e-3, atol=1e-5)
    torch.testing.assert_close(state["linear.weight.weight"], model.linear.weight.weight.detach(),
                               rtol=1e-3, atol=1e-5)
    assert sharded["test"]["auc"] == pytest.approx(test["auc"], abs=1e-4)
    for a, b in zip(sharded["history"], fit.history, strict=True):
        assert a["train_loss"] == pytest.approx(b["train_loss"], rel=1e-4)

    # An ordinary single-process run (its own shuffling of the whole split): within 0.02 AUC, the
    # DDP tests' margin (measured: 2 processes 0.764; one process, shuffling seeds 7-9: 0.769-0.776).
    _, _, plain = single(global_batches=False)
    assert abs(sharded["test"]["auc"] - plain["auc"]) <= 0.02, (sharded["test"]["auc"], plain["auc"])
    assert sharded["test"]["auc"] > 0.7


@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_rowwise_adagrad_under_ddp_matches_one_process_on_the_same_global_batches(planted, tmp_path):
    """Under train.parallel ddp the tables' gradients are dense (DDP averages them): the same
    update as one process's sparse gradients."""
    (tmp_path / "worker.py").write_text(DDP_WORKER)
    _torchrun(str(tmp_path / "worker.py"), str(planted), str(tmp_path / "ddp"), json.dumps(TRAIN),
              cwd=tmp_path)
    ddp = json.loads((tmp_path / "ddp.json").read_text())
    ds = PreparedDataset(planted)
    torch.set_num_threads(1)
    seed_everything(0)
    model = build_model("fm", ds.schema, dim=8)  # as the DDP worker builds it
    trainer = Trainer(model, ds, TrainConfig(**TRAIN), quiet=True)
    trainer.train_loader = _GlobalBatches(ds.split("train"), TRAIN["batch_size"], TRAIN["seed"])
    trainer.fit()
    state = torch.load(tmp_path / "ddp.pt", weights_only=True)["state"]
    for name, value in model.state_dict().items():
        torch.testing.assert_close(state[name], value, rtol=1e-3, atol=1e-5, msg=name)
    assert ddp["test"]["auc"] == pytest.approx(trainer.evaluate("test")["auc"], abs=1e-4)


@pytest.mark.slow
@pytest.mark.skipif(not dist.is_available(), reason="torch without torch.distributed")
def test_torchrun_embdim_run_retrains_an_sseds_plan_sharded(torchrec, planted, tmp_path):
    cfg = {"data": {"path": str(planted)}, "model": {"name": "deepfm", "mlp": [32]},
           "method": {"name": "sseds", "budget": 0.5, "pretrain_width": 8, "round_to": 4},
           "train": {**TRAIN, "parallel": "torchrec"}}
    (tmp_path / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    proc = _torchrun("-m", "embdim", "--quiet", "run", str(tmp_path / "cfg.yaml"), "--out",
                     str(tmp_path / "run"), cwd=tmp_path)
    assert proc.stdout.count("test_auc=") == 1  # only rank 0 reports
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    plan = DimensionPlan.load(tmp_path / "run" / "plan.json")
    kept = [d for d in plan.dims if d]
    assert kept and all(d % 4 == 0 for d in kept)
    assert metrics["embedding_params"] == plan.embedding_params
    assert "table_wise" in (tmp_path / "run" / "log.txt").read_text()
    assert metrics["test_auc"] > 0.65
