"""The interface every dimension-search method implements, and the method registry.

A method reads a prepared dataset and the experiment's model/training options and returns a
:class:`~embdim.plan.DimensionPlan`. The pipeline (``embdim.experiment``) then retrains a fresh
base model with that plan and evaluates it, identically for every method.

From Python::

    from embdim.search import AutoDim
    plan = AutoDim(candidates=[2, 8, 16]).search(dataset, model="deepfm", train={"epochs": 2})
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

from embdim.config import typed_fields
from embdim.errors import ConfigError


@dataclass
class SearchContext:
    """What a search gets besides the data: the base model's options, training options, where to
    write its own files (a subfolder of the run folder), and how to log."""

    model_options: Any  # embdim.nn.models.ModelOptions
    train: Any  # embdim.config.TrainConfig
    work_dir: Path | None = None
    quiet: bool = False
    log: Any = print


COMMON_OPTIONS = ("round_to",)  # options of every method, handled here rather than by the method


def check_round_to(value: Any) -> int:
    """``method.round_to``: an integer >= 1 (1 = the searched widths as they are)."""
    from embdim.config import coerce

    value = coerce(value, int, "method.round_to")
    if value < 1:
        raise ConfigError(f"method.round_to must be >= 1, got {value}")
    return value


class SearchMethod(ABC):
    """Base class: subclasses set ``name``, an ``Options`` dataclass, and implement ``search``.

    Every method also takes ``round_to`` (default 1): the searched plan's widths are rounded up to a
    multiple of it before the plan is returned (:meth:`DimensionPlan.rounded`), so the model is
    retrained at widths FBGEMM's sharded kernels accept (``round_to: 4``)."""

    name: ClassVar[str]
    Options: ClassVar[type]
    round_to: int = 1

    def __init__(self, options: Any = None, *, round_to: int = 1, **option_values: Any):
        """``Method(options)`` with an ``Options`` instance, or ``Method(key=value, ...)``."""
        self.round_to = check_round_to(round_to)
        if options is None:
            options = self.make_options(option_values)
        elif option_values:
            raise TypeError("pass either an Options instance or option keywords, not both")
        self.options = options

    @classmethod
    def make_options(cls, values: dict[str, Any]) -> Any:
        """Validated ``Options`` from a mapping; unknown keys are refused with the valid ones."""
        valid = {f.name for f in fields(cls.Options)}
        unknown = sorted(set(values) - valid)
        if unknown:
            raise ConfigError(f"method {cls.name!r}: unknown option(s) {unknown}; valid options: "
                              f"{sorted(valid | set(COMMON_OPTIONS))}")
        options = cls.Options(**typed_fields(cls.Options, values, "method"))
        if hasattr(options, "validate"):
            options.validate()
        return options

    @classmethod
    def from_config(cls, method_cfg: dict[str, Any]) -> SearchMethod:
        """From the YAML ``method:`` section (its ``name`` selects the class)."""
        options = {k: v for k, v in method_cfg.items() if k != "name" and k not in COMMON_OPTIONS}
        return cls(cls.make_options(options), round_to=method_cfg.get("round_to", 1))

    def search(self, dataset, ctx: SearchContext | None = None, *, model: Any = "deepfm",
               train: Any = None, work_dir: str | Path | None = None, quiet: bool = True):
        """Return the DimensionPlan for ``dataset`` (an ``embdim.data.PreparedDataset``).

        The pipeline passes a :class:`SearchContext`; from Python, give the base model instead
        (``model``: a name, a ``model:`` mapping or ``ModelOptions``) and optionally the training
        options (``train``: a ``train:`` mapping or ``TrainConfig``) and a folder for the method's
        own files (pretraining checkpoints).
        """
        if ctx is None:
            ctx = make_context(model, train, work_dir=work_dir, quiet=quiet)
        from embdim.train.host import keep_memory_in_process
        from embdim.train.trainer import resolve_device

        if resolve_device(ctx.train.device).type == "cpu":
            keep_memory_in_process()  # searches run their own loops: the trainer's memory setting
        plan = self._search(dataset, ctx)
        if self.round_to > 1:
            plan = plan.rounded(self.round_to)
            ctx.log(f"round_to {self.round_to}: dims {plan.extra['unrounded_dims']} -> {plan.dims}, "
                    f"embedding params {plan.extra['unrounded_embedding_params']:,} -> "
                    f"{plan.embedding_params:,}")
        return plan

    @abstractmethod
    def _search(self, dataset, ctx: SearchContext):
        """The method itself: ``dataset`` + ``ctx`` -> DimensionPlan."""

    def check_dataset(self, dataset) -> None:
        """Refuse, before the pipeline writes anything, a dataset this method cannot run on (a
        given plan made for another dataset). The default accepts every dataset."""
        return None

    def check_model(self, model_options) -> None:
        """Refuse, before the pipeline writes anything, a base model this method cannot search (one
        without an embedding layer: :func:`require_embedding_layer`). The default accepts every
        model."""
        return None

    @property
    def retrains(self) -> bool:
        """Whether the pipeline trains the model built from the plan (False only for ablations
        that evaluate a handed-over model as it is, such as SSEDS "w/o retraining")."""
        return True

    def retrain_model_options(self, model_options, plan):
        """The base-model options of the retrained model; a method may adjust them (AutoDim
        aligns to its largest candidate). The default keeps the experiment's options."""
        return model_options

    def retrain_train_options(self, train, plan):
        """The training options of the retraining (a ``TrainConfig``); a method may adjust them
        (AutoDim re-estimates the BatchNorm statistics before each validation). The default keeps
        the experiment's options."""
        return train

    def fit_retrain(self, trainer, *, resume: bool = False):
        """Train the retraining model (``trainer.model``, as :meth:`init_retrain_model` left it)
        and return the ``FitResult``, the best validation weights left in the model. The default
        is ``trainer.fit``; SSEDS' ``rewind: auto`` trains it from two starting points and keeps
        the one with the better validation AUC."""
        return trainer.fit(resume=resume)

    def retrain_metrics(self) -> dict[str, Any]:
        """Entries the method adds to ``metrics.json`` after the retraining (default: none)."""
        return {}

    def init_retrain_model(self, model, plan, ctx: SearchContext) -> None:
        """Called on the freshly built retraining model before it trains; the default keeps its
        fresh initialisation. A method that hands weights over (SSEDS' winning ticket, AutoDim's
        optional inheritance of searched weights) copies them in here, under ``torch.no_grad()``.
        On ``--resume`` it is not called: the checkpoint holds the weights."""
        return None


def search_schedule(epochs: int | None, max_steps: int | None, warmup_steps: int | None, train,
                    batches_per_epoch: int) -> tuple[int, int, int]:
    """``(epochs, steps per epoch, warm-up steps)`` of a supernet search (AutoDim, NIS): the
    method's ``epochs`` or ``train.epochs``; an epoch capped at the method's ``max_steps`` or
    ``train.max_steps_per_epoch``; the warm-up steps given, or 20% of all steps (AutoDim's
    pre-training, sec. 2.3.1; NIS's warm-up)."""
    epochs = epochs or train.epochs
    cap = max_steps or train.max_steps_per_epoch
    steps_per_epoch = min(batches_per_epoch, cap) if cap else batches_per_epoch
    warmup = warmup_steps if warmup_steps is not None else int(0.2 * epochs * steps_per_epoch)
    return epochs, steps_per_epoch, warmup


def require_embedding_layer(method: str, model_options) -> None:
    """A ConfigError for a base model without an embedding layer (``lr``): nothing to search."""
    from embdim.nn.models import MODELS, resolve_model_name

    if not getattr(MODELS[resolve_model_name(model_options.name)], "uses_embedding", True):
        raise ConfigError(f"{method} searches the embedding layer; model {model_options.name!r} has none")


def make_context(model: Any = "deepfm", train: Any = None, *, work_dir: str | Path | None = None,
                 quiet: bool = True, log: Any = None) -> SearchContext:
    """A SearchContext from a model name / mapping / ModelOptions and a train mapping / config."""
    from embdim.config import TrainConfig
    from embdim.nn.models import ModelOptions

    if isinstance(model, str):
        model = ModelOptions.from_dict({"name": model})
    elif isinstance(model, dict):
        model = ModelOptions.from_dict(typed_fields(ModelOptions, {"name": "deepfm", **model}, "model"))
    if train is None or isinstance(train, dict):
        cfg = TrainConfig(**typed_fields(TrainConfig, train or {}, "train"))
        cfg.validate()
        train = cfg
    return SearchContext(model_options=model, train=train,
                         work_dir=Path(work_dir) if work_dir else None, quiet=quiet,
                         log=log or (lambda msg: None))


METHODS: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    METHODS[cls.name] = cls
    return cls


def method_class(name: Any) -> type[SearchMethod]:
    """The registered method called ``name`` (case-insensitive), else a ConfigError listing them."""
    key = str(name).lower()
    if key not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[key]


def make_method(method_cfg: dict[str, Any]) -> SearchMethod:
    return method_class(method_cfg.get("name", "")).from_config(method_cfg)


def typed_method_section(method_cfg: dict[str, Any]) -> dict[str, Any]:
    """The YAML ``method:`` section validated by its method (unknown name or option, a value of
    the wrong type or range) and with its values typed; the keys stay those given."""
    cls = method_class(method_cfg.get("name", ""))
    options = {k: v for k, v in method_cfg.items() if k != "name" and k not in COMMON_OPTIONS}
    cls.make_options(options)
    common = {"round_to": check_round_to(method_cfg["round_to"])} if "round_to" in method_cfg else {}
    return {"name": method_cfg["name"], **typed_fields(cls.Options, options, "method"), **common}
