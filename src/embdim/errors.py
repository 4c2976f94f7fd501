"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations

import errno
import os


def short_repr(value: object, limit: int = 80) -> str:
    """``repr(value)`` cut to about ``limit`` characters: messages quote user values, which may be
    megabytes long."""
    text = repr(value)
    return text if len(text) <= limit else text[:limit - 3] + "..."


class EmbdimError(Exception):
    """Base class of every error the library raises on purpose."""


class DataError(EmbdimError):
    """Bad input data: names the file and, where known, the line and column."""

    def __init__(self, message: str, *, path: str | None = None, line: int | None = None,
                 column: str | None = None):
        where = []
        if path is not None:
            where.append(str(path))
        if line is not None:
            where.append(f"line {line}")
        if column is not None:
            where.append(f"column {column!r}")
        prefix = ", ".join(where)
        super().__init__(f"{prefix}: {message}" if prefix else message)
        self.path, self.line, self.column = path, line, column


class SchemaMismatchError(EmbdimError):
    """A plan or checkpoint does not fit the dataset schema it is used with."""


class ConfigError(EmbdimError):
    """An experiment configuration that cannot be run."""


class TrainingDivergedError(EmbdimError):
    """The loss became NaN or infinite."""


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised like Ctrl-C's KeyboardInterrupt (the CLI turns the signal into it), so
    every clean-up that runs on Ctrl-C (temporary folders removed, ...) runs on SIGTERM too."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)  # no space, quota, file-size limit


class DiskFullError(EmbdimError):
    """The disk (or the user's quota or file-size limit) has no room for a file being written."""


def disk_full_message(error: OSError, path: object = None, nbytes: int | None = None) -> str:
    """``no space left on device while writing FILE (N MB needed)`` for a disk-full OSError."""
    what = os.strerror(error.errno).lower() if error.errno else "no space left on device"
    where = path if path is not None else error.filename
    text = what + (f" while writing {where}" if where else "")
    return text + (f" ({nbytes / 1e6:,.1f} MB needed)" if nbytes is not None else "")
