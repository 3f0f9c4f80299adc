"""The one exception hierarchy of convert.

Every error the package raises on purpose derives from :class:`ConvertError`, so
callers (and the CLI, which maps them to exit code 2) can tell a problem with the
user's input or configuration from a bug. Messages say what was wrong, where, and
how to fix it.
"""

from __future__ import annotations


class ConvertError(Exception):
    """Base class of every error convert raises deliberately."""

    exit_code: int = 2


class ConfigError(ConvertError):
    """The configuration (``params.yaml`` or command-line flags) is invalid."""


class ContractError(ConvertError):
    """The input violates the data contract in a way that stops the command.

    Parameters
    ----------
    message:
        What is wrong and how to fix it.
    file, row, column:
        Where: the file (or table), the 1-based data row and the column, when known.
    """

    def __init__(
        self,
        message: str,
        *,
        file: str | None = None,
        row: int | None = None,
        column: str | None = None,
    ) -> None:
        self.file = file
        self.row = row
        self.column = column
        where = ", ".join(
            part
            for part in (
                f"file {file}" if file else "",
                f"row {row}" if row is not None else "",
                f"column {column!r}" if column else "",
            )
            if part
        )
        super().__init__(f"{where}: {message}" if where else message)


class InsufficientDataError(ConvertError):
    """Too little history or too few positive labels to train honestly."""


class FeatureMismatchError(ConvertError):
    """Scoring data lacks a feature, or carries a different type, than the model was trained on."""


class ModelNotFoundError(ConvertError):
    """The requested model (registry alias, version or path) does not exist."""


class BundleError(ModelNotFoundError):
    """A model bundle is damaged: a file missing, extra, altered or unreadable (named in the message)."""


class ConvertWarning(UserWarning):
    """Something the user should know that does not stop the command (the CLI prints it)."""


class WritebackError(ConvertError):
    """Scores could not be written to the target; the previous scores are intact."""


class WriteRefusedError(WritebackError):
    """A write-back guard refused the run (it would empty much of the table, put older scores
    over newer ones, or mix models in one table); nothing was changed. The message names the
    flag that allows it."""


class WriteLockedError(WritebackError):
    """Another run (or session) held the target's lock past ``writeback.lock_timeout_s``;
    nothing was changed."""


class ResourceError(ConvertError):
    """A configured resource is too small for the data (DuckDB's memory limit)."""


class LeakageError(ConvertError):
    """An input attribute looks like it was filled after the outcome.

    ``report`` carries the leakage guard's figures (a :class:`convert.model.leakage.LeakageReport`).
    """

    def __init__(self, message: str, *, report: object | None = None) -> None:
        self.report = report
        super().__init__(message)


class UnsupportedModelError(ConvertError, ValueError):
    """The booster has a shape the fast explainer does not handle (multiclass, linear trees)."""
