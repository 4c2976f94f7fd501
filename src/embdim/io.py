"""Atomic file writing: write to a temporary name in the same folder, then rename.

A reader therefore sees either the previous complete file or the new complete file, never a
half-written one, even if the process is killed in the middle of a write.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import yaml

from embdim.errors import DISK_FULL_ERRNOS, DiskFullError, disk_full_message

_UMASK = os.umask(0)
os.umask(_UMASK)


def atomic_write(path: str | os.PathLike, write: Callable[[Any], None], mode: str = "w") -> None:
    """Call ``write(fileobj)`` on a temporary file next to ``path`` and rename it to ``path``."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual permissions
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(e, OSError) and e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(disk_full_message(e, path)) from None
        raise


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write(path, lambda f: f.write(text))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def atomic_write_yaml(path: str | os.PathLike, obj: Any) -> None:
    atomic_write_text(path, yaml.safe_dump(obj, sort_keys=False))


def atomic_copy(source: str | os.PathLike, path: str | os.PathLike) -> None:
    """Copy the file ``source`` to ``path`` through :func:`atomic_write` (never a partial file)."""
    def write(f) -> None:
        with open(source, "rb") as src:
            shutil.copyfileobj(src, f)

    atomic_write(path, write, mode="wb")


def atomic_torch_save(path: str | os.PathLike, obj: Any) -> None:
    import torch

    atomic_write(path, lambda f: torch.save(obj, f), mode="wb")


def read_checkpoint(path: str | os.PathLike, *, fmt: str, fingerprint: dict[str, Any],
                    map_location: Any = None) -> dict[str, Any]:
    """A checkpoint written by :func:`atomic_torch_save` (a dict with ``format`` and
    ``fingerprint``), loaded with ``torch.load(..., weights_only=True)`` (nothing is executed).
    Refused in one line: an unreadable file, another ``format`` than ``fmt``
    (:class:`~embdim.errors.EmbdimError`), a ``fingerprint`` that differs from the given one, each
    differing key listed (:class:`~embdim.errors.SchemaMismatchError`)."""
    import torch

    from embdim.errors import EmbdimError, SchemaMismatchError

    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # a corrupt or foreign file; torch's own message runs to many lines
        text = str(e).split("WeightsUnpickler error:")[-1]  # not torch's weights_only advice
        first = next((line.strip() for line in text.splitlines() if line.strip()), type(e).__name__)
        raise EmbdimError(f"{path}: cannot read checkpoint ({first[:160]}); the run "
                          "folder is damaged: choose another --out") from None
    if not isinstance(state, dict) or state.get("format") != fmt:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise EmbdimError(f"{path}: unsupported checkpoint format {found!r} (expected {fmt!r})")
    theirs = state.get("fingerprint", {})
    diff = [f"{k}: checkpoint {theirs.get(k)!r} vs now {v!r}" for k, v in fingerprint.items()
            if theirs.get(k) != v]
    if diff:
        raise SchemaMismatchError(f"{path} belongs to another run: " + "; ".join(diff))
    return state


def allocate(path: str | os.PathLike) -> None:
    """Give the existing file ``path`` its whole size on disk now (``posix_fallocate``), so that a
    full disk is a :class:`~embdim.errors.DiskFullError` here, naming the file, and not a SIGBUS
    later when a memory map of it is written. A file system without fallocate keeps it sparse."""
    size = os.path.getsize(path)
    try:
        with open(path, "r+b") as f:
            os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        if e.errno in DISK_FULL_ERRNOS:
            raise DiskFullError(disk_full_message(e, path, size)) from None
        if e.errno not in (errno.EOPNOTSUPP, errno.EINVAL, errno.ENOSYS):
            raise
