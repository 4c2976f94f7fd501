"""Exceptions that carry a message meant for the user (the CLI prints them without a traceback)."""

from __future__ import annotations


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
