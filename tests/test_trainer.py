"""Trainer and run folders: learning on planted data, exact resume, divergence, refusals."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import yaml

from embdim.config import TrainConfig, config_from_dict
from embdim.data.dataset import PreparedDataset
from embdim.errors import ConfigError, SchemaMismatchError, TrainingDivergedError
from embdim.experiment import run_experiment
from embdim.nn.models import build_model
from embdim.train.trainer import Trainer, seed_everything


def _cfg(path, **train):
    t = {"epochs": 3, "batch_size": 500, "lr": 3e-3, "early_stop": 0, "seed": 7, **train}
    return config_from_dict({"data": {"path": str(path)}, "model": {"name": "deepfm", "mlp": [32]},
                             "method": {"name": "fde", "dim": 8}, "train": t})


def test_short_training_beats_constant_predictor(planted, tmp_path):
    m = run_experiment(_cfg(planted), tmp_path / "run", quiet=True)
    y = PreparedDataset(planted).split("test").y
    p = float(np.mean(y))
    constant_logloss = -(p * math.log(p) + (1 - p) * math.log(1 - p))
    assert m["test_auc"] > 0.70
    assert m["test_logloss"] < constant_logloss - 0.03


def test_run_folder_holds_the_contract_files(planted, tmp_path):
    run = tmp_path / "run"
    m = run_experiment(_cfg(planted, epochs=1), run, quiet=True)
    for name in ("config.yaml", "plan.json", "metrics.json", "log.txt", "checkpoints/last.pt",
                 "checkpoints/best.pt"):
        assert (run / name).exists(), name
    metrics = json.loads((run / "metrics.json").read_text())
    for key in ("test_auc", "test_logloss", "embedding_params", "fde_embedding_params",
                "search_seconds", "retrain_seconds", "train_samples_per_second",
                "infer_samples_per_second", "seed", "versions"):
        assert key in metrics, key
    assert metrics["versions"]["torch"] == torch.__version__
    schema = PreparedDataset(planted).schema
    assert m["embedding_params"] == sum(schema.vocab_sizes) * 8
    assert m["fde_embedding_params"] == sum(schema.vocab_sizes) * 32  # the largest candidate
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["batch_size"] == 500
    state = torch.load(run / "checkpoints" / "last.pt", weights_only=True)
    assert state["epoch"] == 1 and state["done"]
    for resume in (False, True):  # a finished run is never rewritten
        with pytest.raises(ConfigError, match="already holds a finished run"):
            run_experiment(_cfg(planted, epochs=1), run, quiet=True, resume=resume)


def test_resume_ends_with_exactly_the_metrics_of_an_uninterrupted_run(planted, interrupt_and_resume):
    full, resumed = interrupt_and_resume(_cfg(planted))

    assert resumed["test_auc"] == full["test_auc"]
    assert resumed["test_logloss"] == full["test_logloss"]
    assert [h["train_loss"] for h in resumed["history"]] == [h["train_loss"] for h in full["history"]]
    assert [h["valid_auc"] for h in resumed["history"]] == [h["valid_auc"] for h in full["history"]]


def test_resume_refuses_a_changed_config(planted, tmp_path):
    run_experiment(_cfg(planted, epochs=1), tmp_path / "run", quiet=True)
    (tmp_path / "run" / "metrics.json").unlink()  # as if interrupted (a finished run is refused)
    with pytest.raises(ConfigError, match="train.lr"):
        run_experiment(_cfg(planted, epochs=1, lr=0.5), tmp_path / "run", resume=True, quiet=True)


def test_checkpoint_of_another_model_is_refused(planted, tmp_path):
    ds = PreparedDataset(planted)
    cfg = TrainConfig(epochs=1, batch_size=1000, early_stop=0)
    a = Trainer(build_model("fm", ds.schema, dim=4), ds, cfg, checkpoint_dir=tmp_path, quiet=True,
                fingerprint={"dims": [4]})
    a.fit()
    b = Trainer(build_model("fm", ds.schema, dim=8), ds, cfg, checkpoint_dir=tmp_path, quiet=True,
                fingerprint={"dims": [8]})
    with pytest.raises(SchemaMismatchError, match="dims"):
        b.fit(resume=True)


def test_divergence_stops_with_a_clear_message(planted):
    ds = PreparedDataset(planted)
    seed_everything(0)
    model = build_model("deepfm", ds.schema, dim=4)
    with torch.no_grad():
        next(model.parameters()).fill_(float("nan"))
    trainer = Trainer(model, ds, TrainConfig(epochs=1, batch_size=1000, log_every=3), quiet=True)
    with pytest.raises(TrainingDivergedError, match="diverged.*nan.*epoch 1.*steps 1-3"):
        trainer.fit()


def test_early_stopping_keeps_the_best_epoch(planted, tmp_path):
    m = run_experiment(_cfg(planted, epochs=30, early_stop=1, lr=0.05), tmp_path / "run",
                       quiet=True)
    aucs = [h["valid_auc"] for h in m["history"]]
    assert m["epochs_run"] < 30 and m["stopped_early"]
    assert m["best_epoch"] == int(np.argmax(aucs)) + 1
    assert m["valid_auc"] == max(aucs)


# ---- BatchNorm recalibration (train.bn_recalibration) ---------------------------------------------
def _bn_trainer(planted, **train):
    cfg = _cfg(planted, **train)
    ds = PreparedDataset(planted)
    seed_everything(7)
    model = build_model("widedeep", ds.schema, dim=8, options={"mlp": [16, 16], "dropout": 0.2})
    return Trainer(model, ds, cfg.train, quiet=True), model


def test_bn_recalibration_sets_the_statistics_of_the_training_rows(planted):
    """The re-estimated running statistics of the first BatchNorm are the average of its input's
    batch statistics over the recalibration batches (a whole epoch here), whatever the stale
    statistics were before."""
    trainer, model = _bn_trainer(planted, bn_recalibration=1000)
    trainer.train_epoch(0)
    bn = model.body.mlp[1]
    with torch.no_grad():
        bn.running_mean.add_(5.0)  # stale statistics, as after a fast drift of the inputs
        bn.running_var.mul_(40.0)
    seen = []
    hook = model.body.mlp[0].register_forward_hook(lambda m, i, out: seen.append(out.detach()))
    trainer.recalibrate_batchnorm(0)
    hook.remove()
    assert sum(b.shape[0] for b in seen) == len(PreparedDataset(planted).split("train"))
    means = torch.stack([b.mean(0) for b in seen]).mean(0)
    variances = torch.stack([b.var(0) for b in seen]).mean(0)
    assert torch.allclose(bn.running_mean, means, rtol=1e-4, atol=1e-6)
    assert torch.allclose(bn.running_var, variances, rtol=1e-3, atol=1e-8)
    assert bn.momentum == 0.1  # the training's moving average afterwards


def test_bn_recalibration_changes_only_the_evaluation(planted):
    """The recalibration forwards run under a forked RNG: training draws exactly what it would
    have drawn (same losses, same weights); only the BatchNorm statistics differ."""
    plain, plain_model = _bn_trainer(planted)
    losses_plain = [plain.train_epoch(epoch)[0] for epoch in range(2)]
    recal, recal_model = _bn_trainer(planted, bn_recalibration=3)
    losses_recal = []
    for epoch in range(2):
        losses_recal.append(recal.train_epoch(epoch)[0])
        recal.recalibrate_batchnorm(epoch)
    assert losses_plain == losses_recal
    for (name, a), b in zip(plain_model.state_dict().items(), recal_model.state_dict().values(),
                            strict=True):
        if "running" in name:
            assert not torch.equal(a, b), name
        elif "num_batches_tracked" not in name:
            assert torch.equal(a, b), name


def test_bn_recalibration_is_validated():
    with pytest.raises(ConfigError, match="bn_recalibration"):
        TrainConfig(bn_recalibration=-1).validate()
    with pytest.raises(ConfigError, match="bn_recalibration"):
        TrainConfig(bn_recalibration=10, parallel="torchrec", optimizer="rowwise_adagrad").validate()


# ---- the starting weights as epoch 0 (train.validate_start) ----------------------------------------
def _trained_then_ruined_by(planted, tmp_path, **train):
    """A model trained 3 epochs, then fitted again at a learning rate that only makes it worse."""
    ds = PreparedDataset(planted)
    seed_everything(7)
    model = build_model("deepfm", ds.schema, dim=8, options={"mlp": [32]})
    Trainer(model, ds, _cfg(planted).train, quiet=True).fit()
    start = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _cfg(planted, epochs=2, lr=1.0, **train).train
    return Trainer(model, ds, cfg, checkpoint_dir=tmp_path / "ck", quiet=True).fit(), model, start


def test_validate_start_keeps_the_starting_weights_when_no_epoch_beats_them(planted, tmp_path):
    fit, model, start = _trained_then_ruined_by(planted, tmp_path / "a", validate_start=True)
    assert fit.best_epoch == 0 and fit.start_valid_auc == fit.best_valid_auc
    assert all(h["valid_auc"] < fit.best_valid_auc for h in fit.history) and fit.epochs_run == 2
    assert all(torch.equal(v, start[k]) for k, v in model.state_dict().items())
    best = torch.load(tmp_path / "a" / "ck" / "best.pt", weights_only=True)
    assert best["epoch"] == 0 and all(torch.equal(v, start[k]) for k, v in best["model"].items())
    plain, _, _ = _trained_then_ruined_by(planted, tmp_path / "b")
    assert plain.best_epoch >= 1 and plain.start_valid_auc is None
    assert plain.best_valid_auc < fit.best_valid_auc


def test_a_fit_stopped_after_the_epoch_0_checkpoint_resumes_to_the_same_end(planted, tmp_path):
    """Interrupted right after the starting weights were validated and saved, the resumed fit
    ends with the weights, history and best epoch of the uninterrupted one."""
    def trainer(folder):
        ds = PreparedDataset(planted)
        seed_everything(7)
        model = build_model("deepfm", ds.schema, dim=8, options={"mlp": [32]})
        cfg = _cfg(planted, epochs=2, validate_start=True).train
        return Trainer(model, ds, cfg, checkpoint_dir=tmp_path / folder, quiet=True), model

    full_trainer, full_model = trainer("full")
    full = full_trainer.fit()
    first, _ = trainer("cut")
    first._validate_start(full.__class__())  # the interruption: only epoch 0 ran and was saved
    resumed_trainer, resumed_model = trainer("cut")
    resumed = resumed_trainer.fit(resume=True)
    assert resumed.history == [{**h, "seconds": r["seconds"], "samples_per_second": r["samples_per_second"]}
                               for h, r in zip(full.history, resumed.history, strict=True)]
    assert (resumed.best_epoch, resumed.start_valid_auc) == (full.best_epoch, full.start_valid_auc)
    assert all(torch.equal(v, resumed_model.state_dict()[k]) for k, v in full_model.state_dict().items())


def test_sseds_retraining_validates_its_start_only_from_trained_weights():
    from embdim.search.sseds import SSEDS

    train = TrainConfig()
    assert not SSEDS().retrain_train_options(train, None).validate_start  # the default: Alg. 1
    assert SSEDS(keep_start=True).retrain_train_options(train, None).validate_start
    fresh = SSEDS(keep_start=True, ticket=False, inherit_network=False)  # never worth keeping
    assert not fresh.retrain_train_options(train, None).validate_start
