"""Grids of experiments: ``embdim grid GRID.yaml [--out DIR]`` / :func:`run_grid`.

.. code-block:: yaml

    base:                       # an experiment config, as for `embdim run`
      data:   {path: prepared/adult}
      model:  {name: fm}
      method: {name: fde}
      train:  {epochs: 5, seed: 1}
    grid:                       # dotted key -> list of values; the cartesian product is run
      method.name: [fde, autodim, sseds]
      model.name: [fm, deepfm]
      train.seed: [1, 2, 3]

Every cell (one combination of values) is run by :func:`embdim.experiment.run_experiment` into its
own folder ``DIR/<cell name>``, the name built from the cell's values (``method-fde_model-fm_seed-1``:
the last part of each key, or the section for ``*.name``; see :func:`cell_names`), so it is the same
every time the grid is run. On a restart a cell whose folder holds ``metrics.json`` is skipped (after
checking that its recorded config is still the cell's config), and a cell whose folder holds an
unfinished run is resumed from its last checkpoint. Before anything runs, every cell's config is
validated and every dataset a cell still to run reads is opened and checked (with the cell's
method: a given plan must fit it), so a typo or a missing or damaged dataset fails at once and not
hours into the grid. At the end the report of the grid's finished cells
(:func:`embdim.report.write_report`) is written into ``DIR``, and the grid file itself is kept as
``DIR/grid.yaml``. Relative data paths are resolved from the current folder, as for
``embdim run``.
"""

from __future__ import annotations

import copy
import hashlib
import itertools
import json
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from embdim.config import SECTIONS, config_diff, config_from_dict, recorded_config, set_dotted
from embdim.errors import ConfigError, EmbdimError
from embdim.experiment import open_experiment, run_experiment
from embdim.io import atomic_write_yaml
from embdim.plots import slug

MAX_NAME = 120  # longer cell names are cut and made unique with a hash of the values


@dataclass
class Cell:
    name: str
    values: dict[str, Any]  # dotted key -> this cell's value
    config: dict[str, Any]  # base with the values applied


@dataclass
class GridResult:
    out: Path
    cells: list[Cell]
    ran: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # already finished
    failed: dict[str, str] = field(default_factory=dict)  # cell name -> error (with keep_going)
    table: str = ""

    def summary(self) -> str:
        text = f"{len(self.cells)} cell(s): {len(self.ran)} run, {len(self.skipped)} already finished"
        if self.failed:
            text += f", {len(self.failed)} failed ({', '.join(self.failed)})"
        return text


def load_grid(spec: str | Path | dict[str, Any]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """``(base, grid)`` from a grid YAML file or an already parsed dict, validated."""
    where = "grid"
    if not isinstance(spec, dict):
        where = str(spec)
        try:
            spec = yaml.safe_load(Path(spec).read_text())
        except FileNotFoundError:
            raise ConfigError(f"{where}: grid file not found") from None
        except yaml.YAMLError as e:
            raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(spec, dict) or not set(spec) <= {"base", "grid"}:
        raise ConfigError(f"{where}: expected a mapping with the keys `base` (an experiment config) "
                          f"and `grid` (dotted key -> list of values)")
    base = spec.get("base") or {}
    grid = spec.get("grid") or {}
    if not isinstance(base, dict) or not isinstance(grid, dict):
        raise ConfigError(f"{where}: `base` and `grid` must be mappings")
    for key, values in grid.items():
        parts = str(key).split(".")
        if len(parts) < 2 or not all(parts) or parts[0] not in SECTIONS:
            raise ConfigError(f"{where}: grid key {key!r} must be section.key with a section in "
                              f"{list(SECTIONS)}, e.g. method.name")
        if not isinstance(values, list) or not values:
            raise ConfigError(f"{where}: grid key {key!r} must list one or more values, got {values!r}")
    return base, {str(k): list(v) for k, v in grid.items()}


def _short_keys(keys: list[str]) -> dict[str, str]:
    """``train.seed`` -> ``seed``, ``method.name`` -> ``method``; full keys where those collide."""
    short = {k: (k.split(".")[-2] if k.endswith(".name") else k.split(".")[-1]) for k in keys}
    clash = {s for s in short.values() if list(short.values()).count(s) > 1}
    return {k: (k if s in clash else s) for k, s in short.items()}


def _value_text(value: Any) -> str:
    if isinstance(value, (list, tuple)):
        return "-".join(map(_value_text, value))
    if isinstance(value, dict):
        return "-".join(f"{k}-{_value_text(v)}" for k, v in value.items())
    return str(value)


def _digest(values: dict[str, Any]) -> str:
    return hashlib.sha1(json.dumps(values, sort_keys=True, default=str).encode()).hexdigest()[:8]


def cell_names(combos: list[dict[str, Any]]) -> list[str]:
    """Stable, filesystem-safe folder names (letters, digits, ``.``, ``-``, ``_``) for the value
    combinations; a hash of the values is appended where names would be too long or collide."""
    if not combos:
        return []
    short = _short_keys(list(combos[0]))
    names = ["_".join(f"{slug(short[k])}-{slug(_value_text(v))}" for k, v in c.items()) or "base"
             for c in combos]
    names = [n if len(n) <= MAX_NAME else f"{n[:MAX_NAME]}_{_digest(c)}" for n, c in zip(names, combos,
                                                                                          strict=True)]
    dup = {n for n in names if names.count(n) > 1}
    return [f"{n}_{_digest(c)}" if n in dup else n for n, c in zip(names, combos, strict=True)]


def expand(base: dict[str, Any], grid: dict[str, list[Any]]) -> list[Cell]:
    """The cartesian product of the grid's lists (first key varies slowest), applied to ``base``."""
    keys = list(grid)
    combos = [dict(zip(keys, values, strict=True)) for values in itertools.product(*grid.values())]
    cells = []
    for name, combo in zip(cell_names(combos), combos, strict=True):
        config = copy.deepcopy(base)
        for k, v in combo.items():
            set_dotted(config, k, copy.deepcopy(v), where=f"grid key {k!r}")
        cells.append(Cell(name, combo, config))
    return cells


def run_grid(spec: str | Path | dict[str, Any], out: str | Path, *, quiet: bool = False,
             keep_going: bool = False, plots: bool = True) -> GridResult:
    """Run every cell of the grid into ``out/<cell name>`` (skipping finished cells, resuming
    unfinished ones), then write ``out/report.md`` / ``report.csv`` (and plots) over the cells."""
    from embdim.report import write_report

    base, grid = load_grid(spec)
    out = Path(out)
    cells = expand(base, grid)
    # Validate everything first: a typo in one cell fails now, not after hours of other cells.
    resolved = {}
    for cell in cells:
        try:
            resolved[cell.name] = config_from_dict(copy.deepcopy(cell.config))
        except ConfigError as e:
            raise ConfigError(f"grid cell {cell.name}: {e}") from None
        run_dir = out / cell.name
        if (run_dir / "metrics.json").exists() and (run_dir / "config.yaml").exists():
            old = recorded_config(yaml.safe_load((run_dir / "config.yaml").read_text()))
            new = resolved[cell.name].to_dict()
            if old != new:
                raise ConfigError(f"grid cell {run_dir} finished with another config "
                                  f"({'; '.join(config_diff(old, new))}); move it away or use another "
                                  "--out")
    # Open every dataset a cell still to run reads (each once, every split checked) and check
    # it against the cell's method: a missing or damaged dataset, or a plan made for another
    # one, fails now, before the first cell runs and before anything is written.
    opened: dict[Path, Any] = {}
    for cell in cells:
        if not (out / cell.name / "metrics.json").exists():
            try:
                open_experiment(resolved[cell.name], opened)
            except EmbdimError as e:
                raise type(e)(f"grid cell {cell.name}: {e}") from None
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(out / "grid.yaml", {"base": base, "grid": grid})

    result = GridResult(out=out, cells=cells)
    say = (lambda msg: None) if quiet else (lambda msg: print(msg, file=sys.stderr, flush=True))
    for i, cell in enumerate(cells, 1):
        run_dir = out / cell.name
        tag = f"[grid {i}/{len(cells)}] {cell.name}"
        if (run_dir / "metrics.json").exists():
            say(f"{tag}: finished earlier, skipped")
            result.skipped.append(cell.name)
            continue
        resume = run_dir.exists() and any(run_dir.iterdir())
        say(f"{tag}: {'resuming' if resume else 'running'}")
        try:
            run_experiment(resolved[cell.name], run_dir, resume=resume, quiet=quiet)
        except (EmbdimError, RuntimeError, ValueError) as e:
            if not keep_going:
                raise
            say(f"{tag}: failed: {e}")
            result.failed[cell.name] = str(e)
            continue
        result.ran.append(cell.name)
    finished = [out / c.name for c in cells if (out / c.name / "metrics.json").exists()]
    if finished:
        result.table = write_report(finished, out, plots=plots)
    say(f"[grid] {result.summary()}")
    return result
