"""The write-back contract, written once: what every writer guarantees and in which order.

A :class:`Writer` writes one validated batch (see :mod:`convert.io.writers.frames`) to one
target. :meth:`Writer.write` is the contract every implementation follows:

1. **stage** the batch where nothing visible changes (a temporary file beside the target, a
   temporary table, or the encoded COPY stream);
2. take the target's **lock** and open the **switch** (one transaction, or the file lock):
   read the current rows' :class:`TableState`, check the model and as-of **guards**
   (:class:`WriteGuards`) before anything changes;
3. **append the history**, **remove the leavers** (current rows missing from the batch:
   they left the population), check the shrink guard on that count, **replace the
   current rows** with the batch;
4. **commit**: all of it becomes visible at once, or (on any error, a guard's refusal, or
   a kill) none of it does.

The dialect-specific parts are the abstract methods; a new target (another database) is
one new subclass registered in :mod:`convert.io.writers.factory`.

This module also owns the names (``table`` / ``schema.table``, validated before anything
is opened and always quoted by the writers, never spliced unquoted), the guards and the
summary of a run. It imports no database driver.
"""

from __future__ import annotations

import logging
import re
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import pandas as pd

from convert.exceptions import WritebackError, WriteLockedError, WriteRefusedError
from convert.io.writers.frames import Layout
from convert.schema import ScoreChanges, ScoreOutput

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import Connection

    from convert.config import WritebackConfig

__all__ = [
    "HISTORY_SUFFIX",
    "PREVIOUS_READ",
    "Recheck",
    "MAX_IDENTIFIER",
    "TableName",
    "TableState",
    "WriteGuards",
    "WriteSummary",
    "Writer",
    "model_name",
    "parse_table",
]

logger = logging.getLogger("convert.io.writers")

HISTORY_SUFFIX = "_history"
STAGE_SUFFIX = "__stage"
AS_OF_INDEX_SUFFIX = "_as_of"
#: Room the derived names (history table, its index, the staging table) need after a name.
DERIVED_ROOM = max(len(HISTORY_SUFFIX) + len(AS_OF_INDEX_SUFFIX), len(STAGE_SUFFIX))
#: Longest identifier PostgreSQL keeps (longer ones are silently truncated).
MAX_IDENTIFIER = 63
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE_RE = re.compile(rf"(?:(?P<schema>{_IDENT})\.)?(?P<name>{_IDENT})")

#: The columns :meth:`Writer.previous` reads of each lead's previous row (those the target has).
PREVIOUS_READ = (ScoreOutput.lead_id, ScoreOutput.as_of, ScoreOutput.score, ScoreOutput.model_version,
                 ScoreOutput.scored_at, ScoreChanges.events_seen)
#: Called by :meth:`Writer.write` under the target's lock with the previous rows read there
#: (:meth:`Writer.previous`): returns the batch to write instead (typed, same keys, as-of and
#: model), or ``None`` when the staged batch stands.
Recheck = Callable[[pd.DataFrame], "pd.DataFrame | None"]


@contextmanager
def timed(step: str) -> Iterator[None]:
    """Log at DEBUG how long *step* took (the phases of a write, for tuning and the bench)."""
    started = time.perf_counter()
    yield
    logger.debug("writeback: %s took %.2f s", step, time.perf_counter() - started)


# --- names --------------------------------------------------------------------------------


@dataclass(frozen=True)
class TableName:
    """A validated ``table`` or ``schema.table`` (letters, digits, underscores only)."""

    schema: str | None
    name: str

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def parse_table(table: object, *, suffix: int) -> TableName:
    """Validate ``table`` or ``schema.table``; *suffix* is the room derived names need."""
    match = _TABLE_RE.fullmatch(table) if isinstance(table, str) else None
    if match is None:
        raise WritebackError(
            f"invalid table name {table!r}: use letters, digits and underscores, not starting "
            "with a digit, at most 63 characters, optionally as schema.table"
        )
    name = match["name"]
    if len(name) + suffix > MAX_IDENTIFIER:
        raise WritebackError(
            f"table name {name!r} is too long: at most {MAX_IDENTIFIER - suffix} characters, "
            f"so that the names derived from it ({name}{HISTORY_SUFFIX}{AS_OF_INDEX_SUFFIX}) fit "
            f"the {MAX_IDENTIFIER}-character limit of PostgreSQL identifiers"
        )
    return TableName(match["schema"], name)


# --- what a run did -----------------------------------------------------------------------


@dataclass(frozen=True)
class WriteSummary:
    """What one :func:`~convert.io.writers.write_scores` run did.

    ``target`` never contains a password. For file targets ``table`` is ``None`` and the
    removal and history counts are 0 (a file holds exactly the batch).
    """

    target: str
    table: str | None
    rows_written: int
    rows_removed: int
    history_rows_added: int
    seconds: float
    history_rows_updated: int = 0

    def __str__(self) -> str:
        if self.table is None:
            return f"wrote {self.rows_written:,} scores to {self.target} in {self.seconds:.1f} s"
        text = (
            f"wrote {self.rows_written:,} scores to table {self.table} at {self.target} "
            f"in {self.seconds:.1f} s; removed {self.rows_removed:,} leads no longer in the "
            f"population; added {self.history_rows_added:,} rows to {self.table}{HISTORY_SUFFIX}"
        )
        if self.history_rows_updated:
            text += f" (updated {self.history_rows_updated:,})"
        return text


# --- guards -------------------------------------------------------------------------------


def model_name(version: object) -> str:
    """The model name of a ``model_version``: the part before ``/`` (``lead-conversion/3``
    -> ``lead-conversion``; a bundle folder's ``NAME/VERSION`` -> ``NAME``)."""
    return str(version).split("/", 1)[0]


def _stamp(value: object) -> pd.Timestamp | None:
    if value is None:
        return None
    stamp = pd.Timestamp(value)  # type: ignore[arg-type]
    return None if pd.isna(stamp) else stamp


@dataclass(frozen=True)
class TableState:
    """What a table's rows hold, as the guards compare them: a current table, or a batch.

    ``models`` are model names (:func:`model_name`), sorted.
    """

    rows: int
    oldest_as_of: pd.Timestamp | None
    newest_as_of: pd.Timestamp | None
    models: tuple[str, ...]

    @classmethod
    def of_frame(
        cls,
        frame: pd.DataFrame,
        as_of: str = ScoreOutput.as_of,
        version: str = ScoreOutput.model_version,
    ) -> TableState:
        """The state of the rows of *frame* (columns *as_of* and *version*)."""
        if frame.empty:
            return cls(0, None, None, ())
        stamps = pd.to_datetime(frame[as_of])
        versions = frame[version].dropna().unique()
        return cls(
            len(frame),
            _stamp(stamps.min()),
            _stamp(stamps.max()),
            tuple(sorted({model_name(v) for v in versions})),
        )

    @classmethod
    def of_table(
        cls,
        conn: Connection,
        table: sa.Table,
        as_of: str = ScoreOutput.as_of,
        version: str = ScoreOutput.model_version,
    ) -> TableState:
        """The state of a database table, in one scan (call it inside the locked transaction)."""
        import sqlalchemy as sa

        rows = conn.execute(
            sa.select(
                table.c[version],
                sa.func.count(),
                sa.func.min(table.c[as_of]),
                sa.func.max(table.c[as_of]),
            ).group_by(table.c[version])
        ).all()
        if not rows:
            return cls(0, None, None, ())
        olds = [s for s in (_stamp(r[2]) for r in rows) if s is not None]
        news = [s for s in (_stamp(r[3]) for r in rows) if s is not None]
        return cls(
            sum(int(r[1]) for r in rows),
            min(olds) if olds else None,
            max(news) if news else None,
            tuple(sorted({model_name(r[0]) for r in rows if r[0] is not None})),
        )


@dataclass(frozen=True)
class WriteGuards:
    """What one write may do to the rows it replaces, and how long it waits for a lock.

    Built from the ``writeback:`` section and the command's flags with :meth:`from_config`:

    * **shrink**: a run that would remove more than ``max_removed_share`` of the current rows
      (a partial export) is refused unless ``allow_shrink`` (``--allow-shrink``);
    * **older as-of**: a run whose (oldest) as-of is strictly older than the newest as-of in
      the current rows is refused unless ``allow_older`` (``--allow-older``); a re-run at the
      same as-of is fine, and an allowed older run appends its history like any run;
    * **one model per table**: the current rows hold one model name's scores (the part of
      ``model_version`` before ``/``); a run of another model is refused unless ``replace``
      (``--replace``), which replaces them all (the shrink and as-of guards compare runs of
      one model, so they do not apply then).

    The checks take the current rows' :class:`TableState` read under the target's lock, so
    two runs cannot both pass them on the same old state. A refusal raises
    :class:`~convert.exceptions.WriteRefusedError` (exit code 2) and changes nothing.
    """

    max_removed_share: float = 0.2
    allow_shrink: bool = False
    allow_older: bool = False
    replace: bool = False
    lock_timeout_s: float = 600.0

    def __post_init__(self) -> None:
        if not 0.0 <= self.max_removed_share <= 1.0:
            raise WritebackError(
                f"max_removed_share must be between 0 and 1, got {self.max_removed_share!r}"
            )
        if not self.lock_timeout_s > 0:
            raise WritebackError(f"lock_timeout_s must be positive, got {self.lock_timeout_s!r}")

    @classmethod
    def from_config(
        cls,
        config: WritebackConfig,
        *,
        allow_shrink: bool = False,
        allow_older: bool = False,
        replace: bool = False,
    ) -> WriteGuards:
        """The guards of the ``writeback:`` section with the command's flags."""
        return cls(
            max_removed_share=config.max_removed_share,
            allow_shrink=allow_shrink,
            allow_older=allow_older,
            replace=replace,
            lock_timeout_s=config.lock_timeout_s,
        )

    def check_batch(self, batch: TableState) -> None:
        """A batch holds one model's rows (checked before anything is opened)."""
        if len(batch.models) > 1:
            raise WriteRefusedError(
                f"refused: the rows to write come from {len(batch.models)} models "
                f"({', '.join(map(repr, batch.models))}), but a table holds one model's rows; "
                "write each model's rows to its own table (--table). Nothing was changed."
            )

    def check_switch(self, label: str, current: TableState, batch: TableState) -> bool:
        """The model and as-of guards, before anything changes.

        Returns whether the shrink guard then applies (not when ``replace`` swaps the rows of
        another model for this batch's).
        """
        if not current.rows:
            return False
        other = [m for m in current.models if m not in batch.models]
        if other and batch.models:
            if not self.replace:
                raise WriteRefusedError(
                    f"refused: {label} holds scores of model {', '.join(map(repr, other))}; "
                    f"this run's come from model {batch.models[0]!r}. Writing them would "
                    f"replace all {current.rows:,} current rows of the other model. Nothing "
                    "was changed. Pass --replace to replace them (their history is kept), or "
                    "write this model's scores to another table (--table)."
                )
            return False
        newest, oldest = current.newest_as_of, batch.oldest_as_of
        if newest is not None and oldest is not None and oldest < newest and not self.allow_older:
            raise WriteRefusedError(
                f"refused: this run's as-of {oldest} is older than the newest as-of {newest} "
                f"in {label}; writing it would put older scores over newer ones for up to "
                f"{current.rows:,} leads. Nothing was changed. Pass --allow-older to write "
                "them anyway (the history keeps both runs)."
            )
        return True

    def check_removal(self, label: str, current_rows: int, removed: int) -> None:
        """The shrink guard: *removed* of *current_rows* rows would leave the table."""
        if not current_rows or self.allow_shrink:
            return
        share = removed / current_rows
        if share > self.max_removed_share:
            raise WriteRefusedError(
                f"refused: this run would remove {removed:,} of the {current_rows:,} current "
                f"rows of {label} ({share:.1%}; writeback.max_removed_share is "
                f"{self.max_removed_share:.1%}): rows missing from the batch leave the table. "
                "Nothing was changed. Check that the export is complete; pass --allow-shrink "
                "if the population really shrank."
            )


def lock_error(what: str, where: str, timeout_s: float) -> WriteLockedError:
    """The error of a lock wait past ``writeback.lock_timeout_s`` (nothing was changed)."""
    return WriteLockedError(
        f"another run holds {what} at {where}: waited {timeout_s:g} s for its lock "
        "(writeback.lock_timeout_s). Nothing was changed: the previous scores are intact. "
        "Let that run finish, or end the session holding the lock (PostgreSQL: see pg_locks "
        "and pg_stat_activity), then run again."
    )


def reason(exc: BaseException) -> str:
    """The driver's message, without SQLAlchemy's statement and parameters."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= 600 else text[:597] + "..."


# --- the contract -------------------------------------------------------------------------


@dataclass(frozen=True)
class Counts:
    """What the switch changed: leads removed, history rows added and updated."""

    removed: int = 0
    added: int = 0
    updated: int = 0


class Writer(ABC):
    """One target (a file, a database table and its history) and the way to write it.

    Subclasses implement the dialect's steps; :meth:`write` runs them in the contract's
    order (see the module docs). *layout* is the written schema (scores or assignments).
    """

    #: shown in messages and the summary: never a password
    display: str
    #: the table (``None`` for files)
    table: TableName | None

    def __init__(self, layout: Layout) -> None:
        self.layout = layout

    @property
    def label(self) -> str:
        """What the guards' messages call the target (a table or a file)."""
        return self.table.display if self.table else self.display

    # the contract -------------------------------------------------------------------------

    def write(
        self, frame: pd.DataFrame, batch: TableState, guards: WriteGuards, chunk_rows: int,
        recheck: Recheck | None = None,
    ) -> Counts:
        """Stage, lock, check the guards, switch, commit; a failure or refusal changes nothing.

        With *recheck* (the score changes of issue 17), the previous rows are read again
        under the lock, after the guards, and handed to it: when another run wrote between
        the caller's first read and the lock, it returns the batch with its changes
        recomputed against them, which is staged again here, still under the lock.
        """
        with self.session(guards):
            stage = self.stage(frame, chunk_rows)
            try:
                with self.switch(guards):
                    with timed("guards"):
                        current = self.current_state()
                        shrink_guard = guards.check_switch(self.label, current, batch)
                    if recheck is not None and batch.oldest_as_of is not None:
                        with timed("previous rows"):
                            redo = recheck(self.previous(batch.oldest_as_of))
                        if redo is not None:
                            self.discard(stage)
                            frame = redo
                            stage = self.stage(frame, chunk_rows)
                    added, updated = self.append_history(stage, frame)
                    removed = self.remove_leavers(stage)
                    if shrink_guard:
                        guards.check_removal(self.label, current.rows, removed)
                    self.replace_current(stage, current)
            finally:
                self.discard(stage)
        return Counts(removed, added, updated)

    def read(self) -> pd.DataFrame:
        """The rows of the target (for ``read_table``), untyped."""
        raise NotImplementedError

    @abstractmethod
    def previous(self, as_of: pd.Timestamp, lock_timeout_s: float = 600.0) -> pd.DataFrame:
        """Each lead's latest row with an as-of strictly earlier than *as_of* (the latest
        ``scored_at`` among rows of one as-of): the :data:`PREVIOUS_READ` columns the target
        has, typed. From the history table (databases) or the file being replaced (files);
        empty when there is none. Inside :meth:`write` it reads under the lock; called
        alone, it reads what is committed now (the caller's first, optimistic read), waiting
        at most *lock_timeout_s* for a lock another session holds on the tables (else
        :class:`WriteLockedError`)."""

    # the dialect's parts ------------------------------------------------------------------

    @abstractmethod
    def session(self, guards: WriteGuards) -> AbstractContextManager[None]:
        """Open what the run needs (a connection) and check the existing target can take the
        rows; turn the dialect's errors into :class:`WritebackError` without secrets."""

    @abstractmethod
    def stage(self, frame: pd.DataFrame, chunk_rows: int) -> Any:
        """Put the batch where nothing visible changes; returns what the switch reads."""

    @abstractmethod
    def switch(self, guards: WriteGuards) -> AbstractContextManager[None]:
        """Take the target's lock (waiting at most ``guards.lock_timeout_s``, else
        :class:`WriteLockedError`) and open the one transaction; commit on a clean exit,
        roll back on any exception."""

    @abstractmethod
    def current_state(self) -> TableState:
        """The current rows' state, read under the lock."""

    @abstractmethod
    def append_history(self, stage: Any, frame: pd.DataFrame) -> tuple[int, int]:
        """Add the batch to the history; returns (rows added, rows updated)."""

    @abstractmethod
    def remove_leavers(self, stage: Any) -> int:
        """Remove (or count, for a file replaced whole) the current rows missing from the batch."""

    @abstractmethod
    def replace_current(self, stage: Any, current: TableState) -> None:
        """Make the current rows exactly the batch's (unchanged rows may stay untouched)."""

    def discard(self, stage: Any) -> None:  # noqa: B027 - optional: most stages end with the session
        """Remove what :meth:`stage` left behind (after the switch, or on failure)."""
