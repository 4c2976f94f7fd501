"""Experiment configuration: the YAML shape of DESIGN.md, with defaults and validation.

.. code-block:: yaml

    data:   {path: prepared/ml-1m}
    model:  {name: deepfm, mlp: [128, 128], dropout: 0.2, batch_norm: true}
    method: {name: fde, candidates: [2, 8, 16, 24, 32]}
    train:  {batch_size: 2000, lr: 0.001, epochs: 10, early_stop: 2, seed: 2022, device: cpu}

``--set section.key=value`` overrides any key; the value is parsed as YAML (``--set
model.mlp=[64,64]``). Unknown sections or keys are refused with the list of valid ones. The method
section is validated by the method itself (each method declares its own options).

Every value is checked against its dataclass field's type in one place, :func:`typed_fields`
(``train.lr: 1e-3``, which YAML reads as a string, becomes the number 0.001; ``method.dim: 2.5``
for an ``int`` field and ``method.budget: true`` for a ``float`` are refused by name). Range checks
(``train.lr`` positive, ...) stay with each options class.
"""

from __future__ import annotations

import math
import types
import typing
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

import yaml

from embdim.errors import ConfigError, short_repr

# train.optimizer's choices (the optimisers themselves: embdim.train.optim.make_optimizer; "auto"
# is resolved per run by embdim.train.optim.resolve_optimizer)
OPTIMIZERS = ("auto", "adam", "sparse_adam", "rowwise_adagrad")


@dataclass
class DataConfig:
    path: str | None = None  # a folder written by `embdim prepare` (or the demo's synthetic data)


@dataclass
class TrainConfig:
    batch_size: int = 2000
    lr: float = 1e-3
    weight_decay: float = 0.0
    epochs: int = 10
    early_stop: int = 2  # epochs without validation-AUC improvement before stopping; 0 = never
    seed: int = 2022
    device: str = "cpu"
    eval_batch_size: int = 16384
    threads: int = 0  # torch intra-op threads; 0 = torch's default
    log_every: int = 50  # steps between progress/loss-finiteness checks
    max_steps_per_epoch: int = 0  # 0 = the whole training split each epoch
    amp: bool = False  # bfloat16 autocast for the dense layers (CPUs with AVX512-BF16/AMX, GPUs)
    cuda_graphs: bool = True  # on CUDA: replay the whole training step as one captured CUDA graph
    compile: bool = False  # torch.compile the model's training forward (fuses elementwise ops)
    # "auto" (sparse_adam in one CPU process without weight decay, rowwise_adagrad with
    # train.parallel torchrec, adam otherwise) | "adam" (the papers') | "sparse_adam" (lazy Adam on
    # the tables) | "rowwise_adagrad" (exact row-wise Adagrad on the tables, FBGEMM's rule);
    # docs/training.md, embdim.train.optim
    optimizer: str = "auto"
    # "ddp" (every table replicated, DistributedDataParallel under torchrun) | "torchrec" (tables
    # sharded by TorchRec's DistributedModelParallel; docs/torchrec.md)
    parallel: str = "ddp"
    # Splits up to this size are loaded into RAM (or GPU memory) once; larger ones are streamed
    # from the memory-mapped arrays block by block (out of core). 0 = always stream.
    in_memory_limit_gb: float = 8.0
    # Before each validation, re-estimate every BatchNorm's running statistics from this many
    # training batches (train-mode forwards without gradient; docs/training.md); 0 = off: the
    # running averages of the training steps
    bn_recalibration: int = 0
    # Validate the model once before the first epoch ("epoch 0") and let early stopping keep it
    # when no epoch beats it: for a fit that starts from trained weights (SSEDS' retraining)
    validate_start: bool = False

    @property
    def in_memory_limit_bytes(self) -> int:
        return int(self.in_memory_limit_gb * 2**30)

    def validate(self) -> None:
        if self.batch_size <= 0 or self.eval_batch_size <= 0:
            raise ConfigError("train.batch_size and train.eval_batch_size must be positive")
        if self.lr <= 0:
            raise ConfigError("train.lr must be positive")
        if self.epochs <= 0:
            raise ConfigError("train.epochs must be positive")
        if self.early_stop < 0:
            raise ConfigError("train.early_stop must be >= 0 (0 = off)")
        for key in ("weight_decay", "threads", "max_steps_per_epoch", "in_memory_limit_gb",
                    "bn_recalibration"):
            if getattr(self, key) < 0:
                raise ConfigError(f"train.{key} must be >= 0, got {getattr(self, key)!r}")
        if self.log_every <= 0:
            raise ConfigError(f"train.log_every must be positive, got {self.log_every!r}")
        if not (self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps"):
            raise ConfigError(f"train.device {self.device!r}: expected cpu, cuda, cuda:N or mps")
        if self.optimizer not in OPTIMIZERS:
            raise ConfigError("train.optimizer must be 'auto', 'adam', 'sparse_adam' or "
                              f"'rowwise_adagrad', got {self.optimizer!r}")
        if self.optimizer in ("sparse_adam", "rowwise_adagrad") and self.weight_decay > 0:
            raise ConfigError(f"train.optimizer {self.optimizer} has no weight decay for the tables: "
                              "set train.weight_decay to 0 or use adam")
        if self.parallel not in ("ddp", "torchrec"):
            raise ConfigError(f"train.parallel must be 'ddp' or 'torchrec', got {self.parallel!r}")
        if self.parallel == "torchrec" and self.bn_recalibration:
            raise ConfigError("train.bn_recalibration is not supported with train.parallel torchrec: "
                              "set it to 0")
        if self.parallel == "torchrec" and self.optimizer not in ("auto", "rowwise_adagrad"):
            raise ConfigError("train.parallel torchrec trains the sharded tables with FBGEMM's fused "
                              "row-wise Adagrad: set train.optimizer to rowwise_adagrad")


@dataclass
class ExperimentConfig:
    data: DataConfig = field(default_factory=DataConfig)
    model: Any = None  # embdim.nn.models.ModelOptions
    method: dict[str, Any] = field(default_factory=lambda: {"name": "fde"})
    train: TrainConfig = field(default_factory=TrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"data": asdict(self.data), "model": asdict(self.model), "method": dict(self.method),
                "train": asdict(self.train)}


SECTIONS = ("data", "model", "method", "train")


def section_from_dict(cls, d: Any, section: str, hints: dict[str, str] | None = None):
    """The dataclass ``cls`` from the config section ``d`` (a mapping, or None for the defaults):
    unknown keys are refused with the list of valid ones (plus ``hints[key]`` for a known
    mistake, e.g. a key that belongs to another pipeline), every value typed by
    :func:`typed_fields`."""
    d = {} if d is None else d
    if not isinstance(d, dict):
        raise ConfigError(f"section '{section}' must be a mapping, got {d!r}")
    valid = {f.name for f in fields(cls)}
    unknown = sorted(set(d) - valid)
    if unknown:
        hint = "".join(hints[k] for k in unknown if k in (hints or {}))
        raise ConfigError(f"unknown key(s) {unknown} in section '{section}'; valid keys: "
                          f"{sorted(valid)}{hint}")
    return cls(**typed_fields(cls, d, section))


# ---- typed values -----------------------------------------------------------------------------

def typed_fields(cls: type, values: dict[str, Any], section: str) -> dict[str, Any]:
    """``values`` with each key that names a field of the dataclass ``cls`` coerced to the field's
    annotated type (``int``, ``float``, ``bool``, ``str``, ``list[...]``, ``X | None``; ``Any`` is
    left as it is; ``dict`` is checked to be a mapping); other keys are passed through for ``cls``
    to refuse by name.

    A number written as ``1e-3`` (a string to YAML) is a float; an integral float is an int; a
    bool is never a number. A value of the wrong type is a ConfigError
    ``section.key: expected a number, got 'abc'``.
    """
    hints = typing.get_type_hints(cls)
    names = {f.name for f in fields(cls)}
    return {k: coerce(v, hints[k], f"{section}.{k}") if k in names else v
            for k, v in values.items()}


def coerce(value: Any, annotation: Any, where: str) -> Any:
    """``value`` as the type ``annotation`` (see :func:`typed_fields`); ``where`` names the key."""
    origin, args = typing.get_origin(annotation), typing.get_args(annotation)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        if value is None:
            return None if len(inner) < len(args) else _refuse(value, "a value", where)
        return coerce(value, inner[0], where) if len(inner) == 1 else value
    if origin is list:
        if not isinstance(value, list | tuple):
            _refuse(value, _expected(annotation), where)
        item = args[0] if args else Any
        return [coerce(v, item, f"{where}[{i}]") for i, v in enumerate(value)]
    if annotation is dict or origin is dict:
        return value if isinstance(value, dict) else _refuse(value, "a mapping", where)
    if annotation is int:
        return _as_int(value, where)
    if annotation is float:
        return _as_float(value, where)
    if annotation in (bool, str):
        return value if isinstance(value, annotation) else _refuse(value, _expected(annotation), where)
    return value


def _as_float(value: Any, where: str) -> float:
    number = _number(value)
    if number is None:
        _refuse(value, "a number", where)
    if not math.isfinite(number):
        _refuse(value, "a finite number", where)
    return float(number)


def _as_int(value: Any, where: str) -> int:
    number = _number(value)
    if isinstance(number, float) and number.is_integer():
        number = int(number)
    if not isinstance(number, int):
        _refuse(value, "an integer", where)
    return number


def _number(value: Any) -> int | float | None:
    """An int or float from a number or a numeric string (``"1e-3"``), else None; a bool is not
    a number."""
    if isinstance(value, bool):
        return None
    if isinstance(value, int | float):
        return value
    if isinstance(value, str):
        for parse in (int, float):
            try:
                return parse(value.strip())
            except ValueError:
                pass
    return None


_NOUNS = {int: ("an integer", "integers"), float: ("a number", "numbers"),
          bool: ("true or false", "true/false values"), str: ("a string", "strings")}


def _expected(annotation: Any) -> str:
    """What a value of type ``annotation`` looks like, for messages."""
    if typing.get_origin(annotation) is list:
        args = typing.get_args(annotation)
        return f"a list of {_NOUNS[args[0]][1]}" if args and args[0] in _NOUNS else "a list"
    return _NOUNS[annotation][0] if annotation in _NOUNS else str(annotation)


def _refuse(value: Any, expected: str, where: str) -> typing.NoReturn:
    raise ConfigError(f"{where}: expected {expected}, got {short_repr(value)}")



def check_sections(d: Any, sections) -> None:
    """Refuse a config that is not a mapping of the known top-level sections."""
    if not isinstance(d, dict):
        raise ConfigError("the config must be a mapping with sections " + ", ".join(sections))
    unknown = sorted(set(d) - set(sections))
    if unknown:
        raise ConfigError(f"unknown section(s) {unknown}; valid sections: {list(sections)}")


def config_from_dict(d: dict[str, Any]) -> ExperimentConfig:
    """Build and validate an ExperimentConfig from a plain dict (parsed YAML): every section, the
    model name and the method's options (by the method), so nothing is written for a config
    that cannot run."""
    from embdim.nn.models import ModelOptions, resolve_model_name
    from embdim.search import typed_method_section  # importing embdim.search registers the methods

    check_sections(d, SECTIONS)
    for s in SECTIONS:
        if d.get(s) is not None and not isinstance(d[s], dict):
            raise ConfigError(f"section '{s}' must be a mapping, got {d[s]!r}")
    data = section_from_dict(DataConfig, d.get("data"), "data")
    model = ModelOptions.from_dict(typed_fields(ModelOptions, dict(d.get("model") or {"name": "deepfm"}),
                                                "model"))
    resolve_model_name(model.name)  # an unknown model is refused here, before any file is written
    method = dict(d.get("method") or {"name": "fde"})
    method.setdefault("name", "fde")
    method = typed_method_section(method)
    train = section_from_dict(TrainConfig, d.get("train"), "train")
    train.validate()
    return ExperimentConfig(data=data, model=model, method=method, train=train)


def apply_overrides(d: dict[str, Any], overrides: list[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a config dict in place."""
    for item in overrides:
        if "=" not in item:
            raise ConfigError(f"--set {item!r}: expected key=value, e.g. method.name=sseds")
        key, raw = item.split("=", 1)
        parts = key.strip().split(".")
        if len(parts) < 2 or not all(parts):
            raise ConfigError(f"--set {item!r}: key must be section.name, e.g. train.lr=0.01")
        try:
            value = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"--set {item!r}: value is not valid YAML: {e}") from e
        set_dotted(d, key.strip(), value, where=f"--set {item!r}")
    return d


def set_dotted(d: dict[str, Any], key: str, value: Any, *, where: str) -> None:
    """``d["a"]["b"] = value`` for ``key = "a.b"``, creating missing sections; ``where`` names the
    source of the key in the error when a part of the path is not a section."""
    node = d
    parts = key.split(".")
    for p in parts[:-1]:
        if node.get(p) is None:
            node[p] = {}
        if not isinstance(node[p], dict):
            raise ConfigError(f"{where}: {p!r} is not a section")
        node = node[p]
    node[parts[-1]] = value


def load_config_dict(path: str | Path | None, overrides: list[str] | None = None) -> dict[str, Any]:
    d: dict[str, Any] = {}
    if path is not None:
        try:
            d = yaml.safe_load(Path(path).read_text()) or {}
        except FileNotFoundError:
            raise ConfigError(f"{path}: config file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{path}: not valid YAML: {e}") from e
    return apply_overrides(d, list(overrides or []))


def load_config(path: str | Path | None, overrides: list[str] | None = None) -> ExperimentConfig:
    """Read a YAML config, apply ``--set`` overrides, validate."""
    return config_from_dict(load_config_dict(path, overrides))


def config_diff(old: dict[str, Any], new: dict[str, Any], prefix: str = "") -> list[str]:
    """``section.key: old -> new`` for every key whose value differs between two config dicts."""
    out = []
    for k in sorted(set(old) | set(new)):
        a, b = old.get(k), new.get(k)
        if isinstance(a, dict) and isinstance(b, dict):
            out += config_diff(a, b, f"{prefix}{k}.")
        elif a != b:
            out.append(f"{prefix}{k}: {a!r} -> {b!r}")
    return out


def recorded_config(recorded: dict[str, Any], parse: Any = None) -> dict[str, Any]:
    """A run folder's recorded ``config.yaml`` resolved by this version of the library (``parse``:
    the pipeline's config parser, :func:`config_from_dict` by default): keys added since it was
    written take their defaults and renamed keys their new names, so a run made before a new
    option existed still compares equal to the same config today (resume, grid restart).
    Returned unchanged when it no longer validates (the comparison then shows the differences)."""
    import copy

    try:
        return (parse or config_from_dict)(copy.deepcopy(recorded)).to_dict()
    except ConfigError:
        return recorded
