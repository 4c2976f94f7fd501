"""Output folders: the dataset folders ``prepare`` writes and the run folders ``run`` writes.

**Dataset folders.** ``embdim prepare`` and ``embdim stream prepare`` build their output in hidden
siblings ``.OUT.KIND-XXXXXXXX`` (same file system, so the finished folder is renamed into place).
Each holds an owner mark (the pid and host of the process that made it): a later preparation of
the same ``OUT`` removes the siblings whose process no longer runs (killed with ``kill -9``, power
loss), and never those of a preparation still running or made by anything else.

``--overwrite`` replaces only a folder that is a dataset written by embdim (it holds the
dataset's ``schema.json`` / ``stream.json`` with a content hash) and holds no input.

**Run folders** (``embdim run``, ``embdim stream run``; one experiment = one folder): the fully
resolved ``config.yaml`` is written first, ``log.txt`` grows one timestamped line per event
(:class:`RunLog`), every file is written atomically (:mod:`embdim.io`), and ``metrics.json`` is
written last (:func:`write_metrics`), so its presence marks a finished run.
:func:`prepare_run_folder` refuses a finished run (even with ``--resume``), a non-empty folder
without ``--resume``, and resuming with a config that differs from the recorded one (listing
``key: old -> new``); a damaged ``config.yaml`` is a one-line error.
"""

from __future__ import annotations

import json
import os
import platform
import shutil
import socket
import sys
import tempfile
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import yaml

from embdim.errors import ConfigError, DataError

OWNER_FILE = ".embdim-owner"
_UMASK = os.umask(0)
os.umask(_UMASK)


def check_output_folder(out: Path, inputs: list[Path], *, overwrite: bool, marker: str) -> None:
    """Refuse an output folder whose writing could lose data: a file; a folder that is (or holds)
    an input; a non-empty folder without ``overwrite``; with ``overwrite``, a non-empty folder that
    is not a dataset written by embdim (no ``marker`` file with a content hash in it)."""
    resolved = out.resolve()
    for p in inputs:
        if resolved == p.resolve() or resolved in p.resolve().parents:
            raise DataError("the output folder is or contains an input; choose another --out",
                            path=str(out))
    if not out.exists():
        return
    if not out.is_dir():
        raise DataError("output path exists and is not a folder", path=str(out))
    if not any(out.iterdir()):
        return
    if not overwrite:
        raise DataError("output folder exists and is not empty (use --overwrite)", path=str(out))
    if not _is_embdim_dataset(out / marker):
        raise DataError(f"--overwrite replaces only a dataset written by embdim, and this folder has "
                        f"no {marker} of one: remove it yourself or choose another --out",
                        path=str(out))


def _is_embdim_dataset(marker: Path) -> bool:
    try:
        record = json.loads(marker.read_text())
    except (OSError, ValueError):
        return False
    return isinstance(record, dict) and bool(record.get("content_hash"))


def make_temp_sibling(out: Path, kind: str) -> Path:
    """A new empty hidden folder ``.OUT.KIND-XXXXXXXX`` beside ``out``, marked as this process's
    (with the user's usual permissions, not ``mkdtemp``'s 0700)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix=f".{out.name}.{kind}-", dir=out.parent))
    os.chmod(folder, 0o777 & ~_UMASK)
    mark_as_ours(folder)
    return folder


def mark_as_ours(folder: Path) -> None:
    """Write the owner mark into ``folder`` (a temporary or a replaced old folder)."""
    (folder / OWNER_FILE).write_text(json.dumps({"pid": os.getpid(), "host": socket.gethostname()}))


def unmark(folder: Path) -> None:
    """Remove the owner mark (before a finished temporary folder is renamed into place)."""
    (folder / OWNER_FILE).unlink(missing_ok=True)


def remove_stale_siblings(out: Path) -> list[Path]:
    """Remove the hidden ``.OUT.*`` siblings of ``out`` made by an embdim process on this host that
    no longer runs; return them."""
    if not out.parent.is_dir():
        return []
    removed = []
    for sibling in out.parent.glob(f".{out.name}.*-*"):
        if sibling.is_dir() and not sibling.is_symlink() and _owner_is_gone(sibling / OWNER_FILE):
            shutil.rmtree(sibling, ignore_errors=True)
            removed.append(sibling)
    return removed


def _owner_is_gone(mark: Path) -> bool:
    try:
        owner = json.loads(mark.read_text())
        pid, host = int(owner["pid"]), owner["host"]
    except (OSError, ValueError, KeyError, TypeError):
        return False  # not ours (or unreadable): leave it
    if host != socket.gethostname() or pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # e.g. PermissionError: the process exists
        return False
    return False


# ---- run folders ------------------------------------------------------------------------------

METRICS_FILE = "metrics.json"


def is_finished_run(run_dir: Path) -> bool:
    """A run folder whose ``metrics.json`` (written last) exists."""
    return (Path(run_dir) / METRICS_FILE).exists()


def prepare_run_folder(run_dir: Path, resolved: dict[str, Any], *, resume: bool,
                       recorded: Callable[[dict[str, Any]], dict[str, Any]] | None = None) -> None:
    """Check ``run_dir`` for a run of the config ``resolved`` (a plain dict, every default written
    out), create it and write ``config.yaml``. Refused (ConfigError): a finished run, even with
    ``resume``; a non-empty folder without ``resume``; with ``resume``, a recorded ``config.yaml``
    that differs from ``resolved`` once resolved by ``recorded`` (the pipeline's
    :func:`embdim.config.recorded_config`, so options added or renamed since compare equal)."""
    from embdim.config import config_diff
    from embdim.io import atomic_write_yaml

    run_dir = Path(run_dir)
    cfg_path = run_dir / "config.yaml"
    if is_finished_run(run_dir):
        raise ConfigError(f"run folder {run_dir} already holds a finished run ({METRICS_FILE}); "
                          "choose another --out")
    if run_dir.exists() and any(run_dir.iterdir()):
        if not resume:
            raise ConfigError(f"run folder {run_dir} already holds an unfinished run; pass --resume "
                              "to continue it from its last checkpoint, or choose another --out")
        if cfg_path.exists():
            old = read_recorded_config(cfg_path)
            old = recorded(old) if recorded is not None else old
            if old != resolved:
                raise ConfigError(f"cannot resume {run_dir}: its config differs in "
                                  f"{config_diff(old, resolved)}")
    run_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_yaml(cfg_path, resolved)


def read_recorded_config(path: Path) -> dict[str, Any]:
    """A run folder's ``config.yaml`` as a mapping, or a ConfigError saying it is unreadable."""
    try:
        recorded = yaml.safe_load(Path(path).read_text())
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ConfigError(f"{path} is not valid YAML ({type(e).__name__}); the run folder is "
                          "damaged: choose another --out") from None
    except FileNotFoundError:
        raise ConfigError(f"{path}: the run folder has no config.yaml") from None
    if not isinstance(recorded, dict):
        raise ConfigError(f"{path} does not hold a config mapping; the run folder is damaged: "
                          "choose another --out")
    return recorded


def write_metrics(run_dir: Path, metrics: dict[str, Any]) -> None:
    """Write ``metrics.json``, atomically and last: from now on the run is finished."""
    from embdim.io import atomic_write_json

    atomic_write_json(Path(run_dir) / METRICS_FILE, metrics)


def versions() -> dict[str, str]:
    """The package versions a run's metrics depend on (``metrics.json``'s ``versions``)."""
    import numpy as np
    import torch

    import embdim

    return {"embdim": embdim.__version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": sys.version.split()[0], "platform": platform.platform()}


class RunLog:
    """Appends timestamped lines (UTC) to a run folder's ``log.txt``; a resumed run appends to the
    lines of the interrupted one. Under torchrun only rank 0 writes."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __call__(self, msg: str) -> None:
        from embdim import distributed

        if not distributed.is_main():
            return
        stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M:%S")
        with open(self.path, "a") as f:
            f.write(f"{stamp} {msg}\n")
