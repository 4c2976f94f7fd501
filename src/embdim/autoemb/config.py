"""Configuration of a streaming run (AutoEmb sec. 3.1-3.2 defaults), in the YAML shape of the
library's experiments:

.. code-block:: yaml

    data:   {path: prepared/ml-latest-stream, offline_fraction: 0.7, rating_threshold: 4.0}
    model:  {task: regression, widths: [2, 16, 128], hidden: [512, 512], fixed_width: 0,
             norm: running, fse_transform: true, one_over_n: false}
    method: {name: autoemb, order: second, xi: 0.01, controller_hidden: [512, 512],
             controller_lr: 0.001, controller_inputs: [popularity, context], validation: scored}
    train:  {batch_size: 500, lr: 0.01, optimizer: sgd, seed: 2022, device: cpu,
             checkpoint_seconds: 60}

Parsing, typing and the one-line errors are the library's (:mod:`embdim.config`:
``section_from_dict``, ``typed_fields``, ``--set`` overrides); this module declares the streaming
sections, their range checks and the alias ``train.sparse_tables`` (:func:`resolve_aliases`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from embdim.config import (  # noqa: F401  (config_diff: re-exported)
    check_sections,
    coerce,
    config_diff,
    load_config_dict,
    section_from_dict,
)
from embdim.errors import ConfigError

METHODS = ("autoemb", "sam", "darts", "fse")
VALIDATIONS = ("scored", "replay")
ORDERS = ("first", "second")
NORMS = ("running", "renorm", "batch", "row")
CONTROLLER_INPUTS = ("popularity", "context")
STREAM_OPTIMIZERS = ("sgd", "adam", "sparse_adam")  # adam, sparse_adam: of embdim.config.OPTIMIZERS


@dataclass
class StreamDataConfig:
    path: str | None = None  # a folder written by `embdim stream prepare` (None: the synthetic demo)
    offline_fraction: float = 0.7  # share of the stream used for offline parameter estimation
    rating_threshold: float = 4.0  # regression label: rating >= threshold
    limit: int = 0  # use only the first `limit` interactions (0 = all)


@dataclass
class StreamModelConfig:
    task: str = "regression"  # regression (binarised rating, MSE) | classification (5 classes, CE)
    widths: list[int] = field(default_factory=lambda: [2, 16, 128])  # candidate widths d_1 < ... < d_N
    hidden: list[int] = field(default_factory=lambda: [512, 512])  # DLRS hidden layers (tanh)
    fixed_width: int = 0  # FSE width; 0 = sum(widths) (146 for the defaults: same table size)
    # normalisation of eq. 2: running (statistics of earlier batches: a row's score never depends
    # on the other rows of its batch) | renorm (running's value, eq. 2's gradient through the
    # batch statistics) | row | batch (the mini-batch's own statistics, eq. 2 as written)
    norm: str = "running"
    fse_transform: bool = True  # FSE: the same linear map to max(widths), norm and tanh (eq. 1-2)
    # soft selection: false = sum_n alpha_n e_n (sec. 2.4's "weighted sum"; one-hot alpha = eq. 6),
    # true = eq. 7 as printed, (1/N) sum_n alpha_n e_n
    one_over_n: bool = False


@dataclass
class StreamMethodConfig:
    name: str = "autoemb"  # autoemb | sam | darts | fse
    order: str = "second"  # second (DARTS unrolled step, xi > 0) | first (xi = 0)
    xi: float = 0.0  # virtual step size of the second-order update; 0 = train.lr
    eps_scale: float = 0.01  # finite-difference step: eps = eps_scale / ||grad_W' L_val||
    controller_hidden: list[int] = field(default_factory=lambda: [512, 512])
    controller_lr: float = 1e-3  # Adam lr of the controllers (SAM, AutoEmb) / weight tables (DARTS)
    # the controllers' validation mini-batch (AutoEmb, DARTS): scored (the batch just scored, with
    # the DLRS that scored it, before it trains on it: held out from W) | replay (a uniform sample
    # of earlier interactions, all already trained on, with the popularity their ids have now)
    validation: str = "scored"
    val_batch_size: int = 0  # replay's validation mini-batch; 0 = train.batch_size
    # what the controllers see (AutoEmb, SAM): popularity (bucket one-hot + log) and/or context
    # (last weights, last loss, seen flag); a part left out is fed as zeros (ablation)
    controller_inputs: list[str] = field(default_factory=lambda: ["popularity", "context"])


@dataclass
class StreamTrainConfig:
    batch_size: int = 500
    lr: float = 0.01  # the DLRS's learning rate (sec. 3.2: 0.01); also eq. 9's xi by default
    seed: int = 2022
    device: str = "cpu"
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    # the DLRS's optimiser: "sgd" (default): plain gradient descent W - lr grad_W L_train, the
    # training step that eq. 9's virtual step W - xi grad_W L_train stands for (sec. 2.5: W is
    # updated "through gradient descent") | "adam" (every parameter) | "sparse_adam": id tables
    # with sparse gradients and lazy Adam (rows of the batch only), for large id counts; adam and
    # sparse_adam are the CTR trainer's train.optimizer, the same embdim.train.optim.TableAdam.
    # Alias: train.sparse_tables: true|false (resolve_aliases) = sparse_adam|adam.
    optimizer: str = "sgd"
    curve_points: int = 100  # points of the metric curve over the stream (Fig. 8)
    log_every: int = 20  # batches between progress-bar updates
    # Checkpoints (run_folder/checkpoints/last.pt, for --resume) are written after a batch once
    # `checkpoint_every` batches or `checkpoint_seconds` of work have passed since the last one
    # (0 = that trigger off), and always at the end of the offline stage and of the stream.
    checkpoint_every: int = 0
    checkpoint_seconds: float = 60.0


@dataclass
class StreamConfig:
    data: StreamDataConfig = field(default_factory=StreamDataConfig)
    model: StreamModelConfig = field(default_factory=StreamModelConfig)
    method: StreamMethodConfig = field(default_factory=StreamMethodConfig)
    train: StreamTrainConfig = field(default_factory=StreamTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @property
    def xi(self) -> float:
        """The second-order step size actually used (0 for first order)."""
        if self.method.order == "first":
            return 0.0
        return self.method.xi or self.train.lr

    @property
    def sparse_tables(self) -> bool:
        """Id tables with sparse gradients and lazy Adam (``train.optimizer: sparse_adam``)."""
        return self.train.optimizer == "sparse_adam"

    @property
    def fixed_width(self) -> int:
        return self.model.fixed_width or sum(self.model.widths)

    def validate(self) -> StreamConfig:
        m, d, t = self.method, self.data, self.train
        if m.name not in METHODS:
            raise ConfigError(f"method.name {m.name!r}: expected one of {', '.join(METHODS)}")
        if m.validation not in VALIDATIONS:
            raise ConfigError(f"method.validation {m.validation!r}: expected scored or replay")
        if m.order not in ORDERS:
            raise ConfigError(f"method.order {m.order!r}: expected first or second")
        if self.model.task not in ("regression", "classification"):
            raise ConfigError(f"model.task {self.model.task!r}: expected regression or classification")
        w = [int(x) for x in self.model.widths]
        if not w or any(x <= 0 for x in w) or sorted(set(w)) != w:
            raise ConfigError(f"model.widths {self.model.widths}: expected increasing positive widths")
        if self.model.norm not in NORMS:
            raise ConfigError(f"model.norm {self.model.norm!r}: expected one of {', '.join(NORMS)}")
        bad = [x for x in m.controller_inputs if x not in CONTROLLER_INPUTS]
        if bad or len(set(m.controller_inputs)) != len(m.controller_inputs):
            raise ConfigError(f"method.controller_inputs {m.controller_inputs}: expected a list of "
                              f"distinct parts from {list(CONTROLLER_INPUTS)} (may be empty)")
        if not 0.0 <= d.offline_fraction < 1.0:
            raise ConfigError("data.offline_fraction must be in [0, 1)")
        if t.batch_size <= 0 or t.lr <= 0 or m.controller_lr <= 0 or m.xi < 0 or m.val_batch_size < 0:
            raise ConfigError("train.batch_size, train.lr and method.controller_lr must be positive; "
                              "method.xi and method.val_batch_size >= 0")
        if d.limit < 0 or t.curve_points <= 0 or t.log_every <= 0:
            raise ConfigError("data.limit must be >= 0; train.curve_points and train.log_every > 0")
        if t.optimizer not in STREAM_OPTIMIZERS:
            raise ConfigError(f"train.optimizer {t.optimizer!r}: a streaming run takes "
                              f"{', '.join(STREAM_OPTIMIZERS[:-1])} or {STREAM_OPTIMIZERS[-1]}")
        if t.checkpoint_every < 0 or t.checkpoint_seconds < 0:
            raise ConfigError("train.checkpoint_every and train.checkpoint_seconds must be >= 0 "
                              "(0 = that trigger off)")
        return self


SECTIONS = {"data": StreamDataConfig, "model": StreamModelConfig, "method": StreamMethodConfig,
            "train": StreamTrainConfig}
# hints for keys of the CTR pipeline's config that a streaming config does not have
HINTS = {"method": {"candidates": " (the candidate widths of a streaming run are model.widths)"},
         "model": {"name": " (a streaming run has one model, the DLRS of AutoEmb sec. 2.1; "
                           "see docs/autoemb.md)"}}


def resolve_aliases(d: dict[str, Any]) -> dict[str, Any]:
    """``d`` with the documented alias ``train.sparse_tables: true|false`` (the streaming runner's
    name before it shared ``train.optimizer`` with the CTR trainer, still in older configs and run
    folders) replaced by ``train.optimizer: sparse_adam|adam``; both keys at once must agree."""
    train = d.get("train")
    if not isinstance(train, dict) or "sparse_tables" not in train:
        return d
    train = dict(train)
    alias = coerce(train.pop("sparse_tables"), bool, "train.sparse_tables")
    named = "sparse_adam" if alias else "adam"
    if train.get("optimizer", named) != named:
        raise ConfigError(f"train.sparse_tables: {str(alias).lower()} (an alias of train.optimizer: "
                          f"{named}) contradicts train.optimizer: {train['optimizer']}; keep one")
    train["optimizer"] = named
    return {**d, "train": train}


def stream_config_from_dict(d: dict[str, Any]) -> StreamConfig:
    check_sections(d, SECTIONS)
    d = resolve_aliases(d)
    parts = {name: section_from_dict(cls, d.get(name), name, HINTS.get(name))
             for name, cls in SECTIONS.items()}
    return StreamConfig(**parts).validate()


def load_stream_config(path: str | Path | None, overrides: list[str] | None = None) -> StreamConfig:
    """Read a YAML config (or start from the defaults), apply ``--set`` overrides, validate."""
    return stream_config_from_dict(load_config_dict(path, overrides))


