"""The interface every dimension-search method implements, and the method registry.

A method reads a prepared dataset and the experiment's model/training options and returns a
:class:`~embdim.plan.DimensionPlan`. The pipeline (``embdim.experiment``) then retrains a fresh
base model with that plan and evaluates it, identically for every method.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, ClassVar

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


class SearchMethod(ABC):
    """Base class: subclasses set ``name``, an ``Options`` dataclass, and implement ``search``."""

    name: ClassVar[str]
    Options: ClassVar[type]

    def __init__(self, options: Any):
        self.options = options

    @classmethod
    def from_config(cls, method_cfg: dict[str, Any]) -> SearchMethod:
        d = {k: v for k, v in method_cfg.items() if k != "name"}
        valid = {f.name for f in fields(cls.Options)}
        unknown = sorted(set(d) - valid)
        if unknown:
            raise ConfigError(f"method {cls.name!r}: unknown option(s) {unknown}; valid options: "
                              f"{sorted(valid)}")
        options = cls.Options(**d)
        if hasattr(options, "validate"):
            options.validate()
        return cls(options)

    @abstractmethod
    def search(self, dataset, ctx: SearchContext):
        """Return the DimensionPlan for ``dataset`` (an ``embdim.data.PreparedDataset``)."""

    @property
    def retrains(self) -> bool:
        """Whether the pipeline trains the model built from the plan (False only for ablations
        that evaluate a handed-over model as it is, such as SSEDS "w/o retraining")."""
        return True

    def retrain_model_options(self, model_options, plan):
        """The base-model options of the retrained model; a method may adjust them (AutoDim
        aligns to its largest candidate). The default keeps the experiment's options."""
        return model_options

    def init_retrain_model(self, model, plan, ctx: SearchContext) -> None:
        """Called on the freshly built retraining model before it trains; the default keeps its
        fresh initialisation. A method that hands weights over (SSEDS' winning ticket, AutoDim's
        optional inheritance of searched weights) copies them in here, under ``torch.no_grad()``.
        On ``--resume`` it is not called: the checkpoint holds the weights."""
        return None


METHODS: dict[str, type[SearchMethod]] = {}


def register(cls: type[SearchMethod]) -> type[SearchMethod]:
    METHODS[cls.name] = cls
    return cls


def make_method(method_cfg: dict[str, Any]) -> SearchMethod:
    name = str(method_cfg.get("name", "")).lower()
    if name not in METHODS:
        raise ConfigError(f"unknown method {name!r}; available: {sorted(METHODS)}")
    return METHODS[name].from_config(method_cfg)
