"""Dataset output folders: what ``--overwrite`` may replace, and the hidden temporary siblings a
folder is built in.

``embdim prepare`` and ``embdim stream prepare`` build their output in hidden siblings
``.OUT.KIND-XXXXXXXX`` (same file system, so the finished folder is renamed into place). Each holds
an owner mark (the pid and host of the process that made it): a later preparation of the same
``OUT`` removes the siblings whose process no longer runs (killed with ``kill -9``, power loss),
and never those of a preparation still running or made by anything else.

``--overwrite`` replaces only a folder that is a dataset written by embdim (it holds the
dataset's ``schema.json`` / ``stream.json`` with a content hash) and holds no input.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import tempfile
from pathlib import Path

from embdim.errors import DataError

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
