"""The one trainer: fit with Adam, early stopping on validation AUC, checkpoints, exact resume.

Algorithm 2 of the AutoDim paper (parameter retraining) and the plain training of every baseline
are this loop: minimise the binary cross-entropy (the papers' Logloss, Eq. 10; plus the auxiliary
loss an embedding asks for, such as DPQ-VQ's codebook loss) with Adam over mini-batches of the
training split; after each epoch evaluate AUC on the validation split, keep the best weights,
stop after ``early_stop`` epochs without improvement, and report the test metrics of the best
weights.

Resume: a checkpoint is written (atomically) after every epoch with the model, the optimiser, the
torch RNG state, the early-stopping state and the history. The loader's shuffling is a function of
``(seed, epoch)``, so ``fit(resume=True)`` continues with exactly the batches, dropout masks and
optimiser state an uninterrupted run would have had, and ends with the same metrics.
Checkpoints load with ``torch.load(..., weights_only=True)``: nothing in them is executed.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from tqdm.auto import tqdm

from embdim import distributed
from embdim.config import TrainConfig
from embdim.data.dataset import PreparedDataset
from embdim.data.loader import BatchLoader
from embdim.errors import ConfigError, EmbdimError, TrainingDivergedError
from embdim.io import atomic_torch_save, read_checkpoint
from embdim.train.host import cpu_has_fast_bf16, keep_memory_in_process
from embdim.train.metrics import binary_metrics
from embdim.train.optim import make_optimizer, resolve_optimizer

CHECKPOINT_FORMAT = 1


@dataclass
class FitResult:
    history: list[dict[str, Any]] = field(default_factory=list)
    best_epoch: int = -1
    best_valid_auc: float = float("-inf")
    epochs_run: int = 0
    stopped_early: bool = False
    train_seconds: float = 0.0
    train_samples: int = 0
    start_valid_auc: float | None = None  # train.validate_start: the model before the first epoch

    @property
    def train_samples_per_second(self) -> float:
        return self.train_samples / self.train_seconds if self.train_seconds > 0 else float("nan")


def seed_everything(seed: int) -> None:
    """Seed torch (CPU and CUDA) and numpy's legacy global RNG."""
    torch.manual_seed(seed)
    np.random.seed(seed % (2**32))


def resolve_device(name: str) -> torch.device:
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise EmbdimError(f"train.device={name!r} but CUDA is not available on this machine")
    return device


class Trainer:
    """Train and evaluate a model (ids [B, F] -> logits [B]) on a prepared dataset."""

    def __init__(self, model: torch.nn.Module, dataset: PreparedDataset, cfg: TrainConfig, *,
                 checkpoint_dir: str | Path | None = None, quiet: bool = False,
                 log: Callable[[str], None] | None = None,
                 fingerprint: dict[str, Any] | None = None):
        self.cfg = cfg
        self.device = distributed.local_device(resolve_device(cfg.device))
        self.distributed = distributed.is_distributed()
        # train.parallel torchrec: tables sharded by DistributedModelParallel (embdim.train.sharded)
        self.sharded = cfg.parallel == "torchrec"
        # train.optimizer auto -> the rule this run uses (embdim.train.optim.resolve_optimizer)
        self.optimizer_name = resolve_optimizer(
            cfg.optimizer, device_type=self.device.type, distributed=self.distributed,
            sharded=self.sharded, weight_decay=cfg.weight_decay,
            vocabulary=sum(dataset.schema.vocab_sizes),
            rows_per_batch=cfg.batch_size * dataset.schema.num_fields)
        if self.distributed and not self.sharded and self.optimizer_name == "sparse_adam":
            raise ConfigError("train.optimizer sparse_adam does not run under torchrun with "
                              "train.parallel ddp (DDP averages dense gradients): use adam or "
                              "rowwise_adagrad")
        if self.sharded and cfg.compile:
            raise ConfigError("train.compile does not apply to train.parallel torchrec: set it to false")
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        if self.device.type == "cpu":
            keep_memory_in_process()  # no page-fault storm from per-step buffers (embdim.train.host)
        self._log = log or (lambda msg: None)
        self.quiet = quiet
        # bf16 autocast only where the CPU computes bf16 in hardware (else it is ~8x slower)
        self.amp = bool(cfg.amp)
        if self.amp and self.device.type == "cpu" and not cpu_has_fast_bf16():
            self.amp = False
            message = ("train.amp: this CPU has neither AVX512-BF16 nor AMX, where bf16 autocast is "
                       "several times slower than fp32; training in fp32")
            warnings.warn(message, stacklevel=2)
            self._log(message)
        self.model = model.to(self.device)
        self.dataset = dataset
        self.checkpoint_dir = Path(checkpoint_dir) if checkpoint_dir else None
        # Identifies what a checkpoint belongs to; a resume with anything different is refused.
        self.fingerprint = {"schema_hash": dataset.schema.content_hash, **(fingerprint or {})}
        if self.optimizer_name != "adam":  # its state is another optimiser's: no resume across
            self.fingerprint["optimizer"] = self.optimizer_name
        # On CUDA the whole training step is captured once as a CUDA graph and replayed
        # (train.cuda_graphs): one launch per step instead of hundreds of small kernels.
        # (Not under torch.distributed: DDP's gradient all-reduce stays outside the graph.)
        self._use_graphs = (self.device.type == "cuda" and cfg.cuda_graphs and not self.distributed
                            and self.optimizer_name == "adam" and not self.sharded)
        if self.sharded:
            from embdim.train.sharded import shard_model, sharding_summary

            self.model, self.optimizer = shard_model(self.model, lr=cfg.lr, device=self.device)
            self.log(f"train.parallel torchrec: {sharding_summary(self.model)}")
        else:
            self.optimizer = make_optimizer(self.model, self.optimizer_name, lr=cfg.lr,
                                            weight_decay=cfg.weight_decay, capturable=self._use_graphs,
                                            sparse=not self.distributed)
        if cfg.optimizer == "auto":
            self._log(f"train.optimizer auto: {self.optimizer_name} (docs/training.md)")
        # Data-parallel (torchrun): this process's shard of the rows, its share of the batch.
        train_split = dataset.split("train")
        self.train_loader = BatchLoader(
            train_split, shuffle=True, seed=cfg.seed, device=self.device,
            max_memory_bytes=cfg.in_memory_limit_bytes,
            **distributed.training_loader_options(len(train_split), cfg.batch_size))
        # The training forward: DistributedDataParallel under torchrun (gradients averaged over
        # the processes in backward), torch.compile'd with train.compile (evaluation stays eager,
        # so that evaluation batch sizes cause no recompilation).
        forward: torch.nn.Module = self.model
        if self.distributed and not self.sharded:  # (DistributedModelParallel wraps its own DDP)
            forward = torch.nn.parallel.DistributedDataParallel(
                self.model, device_ids=[self.device] if self.device.type == "cuda" else None)
        if self.distributed:
            # Dropout masks differ between processes (as they would between the rows of one batch).
            torch.manual_seed(cfg.seed + 1_000_003 * distributed.rank())
        self._train_forward = torch.compile(forward, dynamic=False) if cfg.compile else forward
        self._loss_window = torch.zeros((), device=self.device)  # sum of losses since last log
        self._graph: CapturedTrainStep | None = None

    def sibling(self, *, checkpoint_dir: str | Path | None, **fingerprint: Any) -> Trainer:
        """A trainer of the same model, data and options with a fresh optimiser, its own
        checkpoints and these fingerprint entries added (a method that trains the retraining
        model more than once: SSEDS' ``rewind: auto``)."""
        return Trainer(self.model, self.dataset, self.cfg, checkpoint_dir=checkpoint_dir,
                       quiet=self.quiet, log=self._log, fingerprint={**self.fingerprint, **fingerprint})

    # ---- logging ------------------------------------------------------------------------------
    def log(self, msg: str) -> None:
        if not distributed.is_main():
            return
        self._log(msg)
        if not self.quiet:
            tqdm.write(msg)

    def _autocast(self):
        """bfloat16 autocast when ``train.amp`` is on, else a no-op context. (Autocast's weight
        cache is off with CUDA graphs: cached casts must not outlive the capture.)"""
        return torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.amp,
                              cache_enabled=not self._use_graphs)

    # ---- one step -----------------------------------------------------------------------------
    def _eager_step(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        """Forward, loss, backward, Adam; the loss is added to the on-device loss window."""
        with self._autocast():
            logits = self._train_forward(ids)
        loss = F.binary_cross_entropy_with_logits(logits.float(), labels)
        extra = self.model.auxiliary_loss() if hasattr(self.model, "auxiliary_loss") else None
        if extra is not None:  # an embedding's own loss term (DPQ-VQ's codebook loss)
            loss = loss + extra.float()
        # After a capture the gradients live in the graph's memory: zero them in place.
        self.optimizer.zero_grad(set_to_none=self._graph is None)
        loss.backward()
        self.optimizer.step()
        self._loss_window += loss.detach()

    def _step(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        """One training step: a CUDA-graph replay for full batches on CUDA, else eager."""
        if self._use_graphs and ids.shape[0] == self.cfg.batch_size:
            if self._graph is None:
                self._graph = CapturedTrainStep.capture(self, ids, labels)
                if self._graph is None:  # capture failed: stay eager from now on
                    self._use_graphs = False
            if self._graph is not None:
                self._graph.replay(ids, labels)
                return
        self._eager_step(ids, labels)

    # ---- one epoch ----------------------------------------------------------------------------
    def train_epoch(self, epoch: int) -> tuple[float, int, float]:
        """Run one epoch; return (mean loss, samples, seconds)."""
        self.model.train()
        loader = self.train_loader
        steps = len(loader)
        if self.cfg.max_steps_per_epoch:
            steps = min(steps, self.cfg.max_steps_per_epoch)
        every = max(1, self.cfg.log_every)
        bar = tqdm(total=steps, desc=f"epoch {epoch + 1}/{self.cfg.epochs}", unit="batch",
                   disable=self.quiet or not distributed.is_main(), leave=False, dynamic_ncols=True)
        loss_window = self._loss_window
        loss_window.zero_()
        loss_total, samples, window_steps = 0.0, 0, 0
        t0 = time.perf_counter()
        for step, (ids, labels) in enumerate(loader.epoch(epoch)):
            if step >= steps:
                break
            self._step(ids, labels)
            samples += labels.shape[0] * distributed.world_size()
            window_steps += 1
            if window_steps == every or step == steps - 1:
                # One host sync per `log_every` steps: check finiteness, update the bar. (Under
                # torchrun the mean over the processes, so that all of them stop together.)
                window = float(distributed.all_reduce_sum_(loss_window)) / (
                    window_steps * distributed.world_size())
                if not math.isfinite(window):
                    bar.close()
                    raise TrainingDivergedError(
                        f"training diverged: loss is {window} in epoch {epoch + 1}, steps "
                        f"{step + 2 - window_steps}-{step + 1}; try a lower train.lr "
                        f"(now {self.cfg.lr})")
                loss_total += window * window_steps
                bar.update(window_steps)
                bar.set_postfix(loss=f"{window:.4f}")
                loss_window.zero_()
                window_steps = 0
        seconds = time.perf_counter() - t0
        bar.close()
        return loss_total / max(1, steps), samples, seconds

    # ---- evaluation ---------------------------------------------------------------------------
    @torch.no_grad()
    def recalibrate_batchnorm(self, epoch: int) -> None:
        """Re-estimate every BatchNorm's running statistics (``train.bn_recalibration``).

        The running averages a BatchNorm keeps during training lag behind the model: each is a
        moving average (momentum 0.1) over the last ~10 steps' batch statistics, taken while the
        layers before it were still moving. When the inputs of a BatchNorm drift fast compared
        with their spread, evaluation (which uses those averages) sees a shifted model. This resets
        the statistics and re-estimates them as the plain average over the first
        ``bn_recalibration`` batches of the epoch's training order, in train mode without gradient
        (dropout as in training), under a forked RNG, so the training that follows draws exactly
        what it would have drawn. Under torchrun each process uses its own shard and the
        statistics are averaged over the processes."""
        norms = [m for m in self.model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
                 and m.track_running_stats]
        if not norms:
            return
        momenta = [m.momentum for m in norms]
        for m in norms:
            m.reset_running_stats()
            m.momentum = None  # cumulative average over the recalibration batches
        devices = [self.device] if self.device.type == "cuda" else []
        self.model.train()
        try:
            with torch.random.fork_rng(devices=devices):
                for step, (ids, _) in enumerate(self.train_loader.epoch(epoch)):
                    if step >= self.cfg.bn_recalibration:
                        break
                    with self._autocast():
                        self.model(ids)
        finally:
            for m, momentum in zip(norms, momenta, strict=True):
                m.momentum = momentum
        stats = [t for m in norms for t in (m.running_mean, m.running_var)]
        for t, mean in zip(stats, distributed.average_tensors(stats), strict=True):
            t.copy_(mean)

    @torch.no_grad()
    def predict(self, split: str) -> tuple[np.ndarray, np.ndarray, float]:
        """Click probabilities [N] and labels [N] of a split, and the seconds the forward took."""
        arrays = self.dataset.split(split)
        # Under torchrun each process predicts a contiguous slice; the slices are gathered below.
        shard = distributed.evaluation_shard(len(arrays)) if self.distributed else None
        loader = BatchLoader(arrays, self.cfg.eval_batch_size, shuffle=False, device=self.device,
                             row_range=shard, max_memory_bytes=self.cfg.in_memory_limit_bytes)
        self.model.eval()
        # Probabilities stay on the device until the end: no host sync per batch on a GPU.
        probs = torch.empty(loader.rows, dtype=torch.float32, device=self.device)
        start, seconds = 0, 0.0
        if self.sharded:  # every process must run as many (collective) forwards as the others
            spare = distributed.max_over_processes(len(loader)) - len(loader)
            for _ in range(spare):
                self.model(torch.zeros((1, self.dataset.schema.num_fields), dtype=torch.long,
                                       device=self.device))
        for ids, _ in loader.epoch(0):
            t0 = time.perf_counter()
            with self._autocast():
                logits = self.model(ids)
            probs[start:start + len(logits)] = torch.sigmoid(logits.float())
            seconds += time.perf_counter() - t0
            start += len(logits)
        t0 = time.perf_counter()
        out = distributed.gather_rows(probs).cpu().numpy()
        seconds += time.perf_counter() - t0
        return out, np.asarray(arrays.y), seconds

    def evaluate(self, split: str) -> dict[str, float]:
        """AUC, Logloss and inference samples/s on a split."""
        probs, labels, seconds = self.predict(split)
        metrics = None
        if distributed.is_main():  # once, over every row of the split
            metrics = binary_metrics(labels, probs)
            metrics["samples_per_second"] = len(labels) / seconds if seconds > 0 else float("nan")
        return distributed.broadcast_object(metrics)

    # ---- fit ----------------------------------------------------------------------------------
    def fit(self, *, resume: bool = False,
            on_epoch_end: Callable[[int, torch.nn.Module], None] | None = None) -> FitResult:
        """Train for ``cfg.epochs`` with early stopping; leave the best weights in the model.

        ``on_epoch_end(epoch, model)``, if given, is called after each epoch's training and
        validation (``epoch`` counts from 1; epochs a resumed fit does not run again are not
        reported again)."""
        result = FitResult()
        best_state: dict[str, torch.Tensor] | None = None
        bad_epochs, start_epoch = 0, 0
        if resume and self.sharded and self._last_path and self._last_path.exists():
            raise ConfigError(f"{self._last_path}: train.parallel torchrec does not resume from "
                              "checkpoints (it writes none of the sharded tables): use a new folder")
        resumed = bool(resume and self._last_path and self._last_path.exists())
        if resumed:
            result, bad_epochs, start_epoch, done = self._load_checkpoint()
            self.log(f"resumed from {self._last_path} after epoch {start_epoch}")
            if done:
                self._restore_best()
                return result
        elif self.cfg.validate_start:
            best_state = self._validate_start(result)
        for epoch in range(start_epoch, self.cfg.epochs):
            loss, samples, seconds = self.train_epoch(epoch)
            if self.cfg.bn_recalibration:
                self.recalibrate_batchnorm(epoch)
            valid = self.evaluate("valid")
            result.train_seconds += seconds
            result.train_samples += samples
            result.epochs_run = epoch + 1
            entry = {"epoch": epoch + 1, "train_loss": loss, "valid_auc": valid["auc"],
                     "valid_logloss": valid["logloss"], "seconds": seconds,
                     "samples_per_second": samples / seconds if seconds > 0 else float("nan")}
            result.history.append(entry)
            improved = valid["auc"] > result.best_valid_auc or result.best_epoch < 0
            if improved:
                result.best_valid_auc, result.best_epoch, bad_epochs = valid["auc"], epoch + 1, 0
                best_state = self._snapshot()
            else:
                bad_epochs += 1
            self.log(f"epoch {epoch + 1}: train_loss={loss:.5f} valid_auc={valid['auc']:.5f} "
                     f"valid_logloss={valid['logloss']:.5f} "
                     f"({entry['samples_per_second']:.0f} samples/s){' *' if improved else ''}")
            stop = bool(self.cfg.early_stop) and bad_epochs >= self.cfg.early_stop
            done = stop or epoch + 1 == self.cfg.epochs
            result.stopped_early = stop and epoch + 1 < self.cfg.epochs
            if on_epoch_end is not None:  # before last.pt: a resume never skips a reported epoch
                on_epoch_end(epoch + 1, self.model)
            self._save_checkpoint(result, bad_epochs, epoch + 1, done, best_state if improved else None)
            if stop:
                self.log(f"early stop: no validation-AUC improvement for {bad_epochs} epoch(s); "
                         f"best epoch {result.best_epoch}")
                break
        if best_state is not None:
            self._load_snapshot(best_state)
        else:
            self._restore_best()
        return result

    def _validate_start(self, result: FitResult) -> dict[str, torch.Tensor]:
        """``train.validate_start``: the model as handed over is "epoch 0", a candidate for the
        best weights like any epoch (``best.pt`` written; ``best_epoch`` 0 if no epoch beats it)."""
        if self.cfg.bn_recalibration:
            self.recalibrate_batchnorm(0)
        valid = self.evaluate("valid")
        result.start_valid_auc = result.best_valid_auc = valid["auc"]
        result.best_epoch = 0
        state = self._snapshot()
        self.log(f"epoch 0 (the starting weights): valid_auc={valid['auc']:.5f} "
                 f"valid_logloss={valid['logloss']:.5f}")
        self._save_checkpoint(result, 0, 0, False, state)
        return state

    def _snapshot(self) -> dict[str, torch.Tensor]:
        if self.sharded:
            from embdim.train.sharded import snapshot

            return snapshot(self.model)
        return {k: v.detach().clone() for k, v in self.model.state_dict().items()}

    def _load_snapshot(self, state: dict[str, torch.Tensor]) -> None:
        if self.sharded:
            from embdim.train.sharded import restore

            restore(self.model, state)
        else:
            self.model.load_state_dict(state)

    # ---- checkpoints --------------------------------------------------------------------------
    @property
    def _last_path(self) -> Path | None:
        return self.checkpoint_dir / "last.pt" if self.checkpoint_dir else None

    @property
    def _best_path(self) -> Path | None:
        return self.checkpoint_dir / "best.pt" if self.checkpoint_dir else None

    def _save_checkpoint(self, result: FitResult, bad_epochs: int, epoch: int, done: bool,
                         best_state: dict[str, torch.Tensor] | None) -> None:
        if not self.checkpoint_dir or self.sharded:  # no checkpoints of sharded tables
            return
        rng_per_rank = distributed.gather_objects(torch.get_rng_state())  # a collective: all ranks
        if not distributed.is_main():
            return
        if best_state is not None:
            atomic_torch_save(self._best_path, {"format": CHECKPOINT_FORMAT,
                                                "fingerprint": self.fingerprint,
                                                "epoch": epoch, "model": best_state})
        state = {
            "format": CHECKPOINT_FORMAT,
            "fingerprint": self.fingerprint,
            "epoch": epoch,
            "done": done,
            "bad_epochs": bad_epochs,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "torch_rng": torch.get_rng_state(),
            "torch_rng_per_rank": rng_per_rank,
            "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "result": {"history": result.history, "best_epoch": result.best_epoch,
                       "best_valid_auc": result.best_valid_auc, "epochs_run": result.epochs_run,
                       "stopped_early": result.stopped_early,
                       "train_seconds": result.train_seconds, "train_samples": result.train_samples,
                       "start_valid_auc": result.start_valid_auc},
        }
        atomic_torch_save(self._last_path, state)

    def _read(self, path: Path) -> dict[str, Any]:
        return read_checkpoint(path, fmt=CHECKPOINT_FORMAT, fingerprint=self.fingerprint,
                               map_location=self.device)

    def _load_checkpoint(self) -> tuple[FitResult, int, int, bool]:
        state = self._read(self._last_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        per_rank = state.get("torch_rng_per_rank") or [state["torch_rng"]]
        if len(per_rank) != distributed.world_size():
            raise EmbdimError(f"{self._last_path} was written by {len(per_rank)} process(es), this "
                              f"run has {distributed.world_size()}: resume with as many")
        torch.set_rng_state(per_rank[distributed.rank()].cpu())
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all([s.cpu() for s in state["cuda_rng"]])
        r = state["result"]
        result = FitResult(history=list(r["history"]), best_epoch=int(r["best_epoch"]),
                           best_valid_auc=float(r["best_valid_auc"]), epochs_run=int(r["epochs_run"]),
                           stopped_early=bool(r["stopped_early"]),
                           train_seconds=float(r["train_seconds"]),
                           train_samples=int(r["train_samples"]),
                           start_valid_auc=r.get("start_valid_auc"))
        return result, int(state["bad_epochs"]), int(state["epoch"]), bool(state["done"])

    def _restore_best(self) -> None:
        if self._best_path and self._best_path.exists():
            self.model.load_state_dict(self._read(self._best_path)["model"])


class CapturedTrainStep:
    """The whole training step — forward, loss, backward, Adam update, loss accumulation —
    captured once as a CUDA graph and replayed for every full batch.

    A step of a CTR model is hundreds of small kernels; launched one by one from Python they keep
    a GPU mostly idle. Replaying the captured graph is one launch. Capture follows PyTorch's
    "whole network capture" recipe: a few warm-up steps on a side stream (they allocate the
    gradients and Adam's moments), then the capture. Warm-up and capture run real updates, so
    the weights, buffers, optimiser state and RNG are put back afterwards (in place: the graph
    refers to those tensors' memory); training then proceeds exactly as if no step had run.
    """

    WARMUP_STEPS = 3

    def __init__(self, graph: torch.cuda.CUDAGraph, ids: torch.Tensor, labels: torch.Tensor):
        self.graph = graph
        self.ids = ids  # the static input buffers the graph reads
        self.labels = labels

    def replay(self, ids: torch.Tensor, labels: torch.Tensor) -> None:
        self.ids.copy_(ids)
        self.labels.copy_(labels)
        self.graph.replay()

    @classmethod
    def capture(cls, trainer: Trainer, ids: torch.Tensor,
                labels: torch.Tensor) -> CapturedTrainStep | None:
        """Capture ``trainer``'s step for batches shaped like ``ids``; None (with a log line)
        when the model cannot be captured, and the trainer stays eager."""
        model, optimizer = trainer.model, trainer.optimizer
        saved_model = {k: v.detach().clone() for k, v in model.state_dict().items()}
        params = [p for group in optimizer.param_groups for p in group["params"]]
        saved_opt = {p: {k: v.clone() for k, v in optimizer.state[p].items()}
                     for p in params if p in optimizer.state}
        saved_rng = torch.cuda.get_rng_state(trainer.device)
        saved_window = trainer._loss_window.clone()
        static_ids, static_labels = ids.clone(), labels.clone()
        graph = torch.cuda.CUDAGraph()
        try:
            side = torch.cuda.Stream(trainer.device)
            side.wait_stream(torch.cuda.current_stream(trainer.device))
            with torch.cuda.stream(side):
                for _ in range(cls.WARMUP_STEPS):
                    trainer._eager_step(static_ids, static_labels)
            torch.cuda.current_stream(trainer.device).wait_stream(side)
            optimizer.zero_grad(set_to_none=True)
            with torch.cuda.graph(graph):
                trainer._eager_step(static_ids, static_labels)
            captured: CapturedTrainStep | None = cls(graph, static_ids, static_labels)
        except Exception as e:  # an op that cannot be captured: train eagerly
            trainer.log(f"CUDA graph capture failed ({type(e).__name__}: {e}); training eagerly")
            captured = None
            optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize(trainer.device)
        with torch.no_grad():
            for k, v in model.state_dict().items():
                v.copy_(saved_model[k])
            for p in params:  # a fresh Adam state is all zeros (step 0, no moments)
                for k, v in optimizer.state.get(p, {}).items():
                    if p in saved_opt:
                        v.copy_(saved_opt[p][k])
                    else:
                        v.zero_()
            trainer._loss_window.copy_(saved_window)
        torch.cuda.set_rng_state(saved_rng, trainer.device)
        return captured
