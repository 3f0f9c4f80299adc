"""Which writer a target gets, and the two calls the steps use: ``write_scores``, ``read_table``.

Owns the choice: a path ending ``.parquet`` / ``.csv`` gets the
:class:`~convert.io.writers.files.FileWriter`; a database URL (parsed, resolved and
redacted by :mod:`convert.io.urls`) gets the writer in :data:`DATABASE_WRITERS` whose
``backends`` hold the URL's backend. A new database is one new
:class:`~convert.io.writers.database.DatabaseWriter` subclass added to that tuple.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from pathlib import Path

import pandas as pd

from convert.exceptions import WritebackError
from convert.io.urls import engine_url as _sqlalchemy_url
from convert.io.urls import is_database_url, redact_url
from convert.io.writers.base import (
    DERIVED_ROOM,
    Recheck,
    TableState,
    WriteGuards,
    Writer,
    WriteSummary,
    parse_table,
)
from convert.io.writers.database import DatabaseWriter
from convert.io.writers.files import FileWriter
from convert.io.writers.frames import SCORES, Layout, coerce, layout_of, prepare
from convert.io.writers.postgres import PostgresWriter
from convert.io.writers.sqlite import SQLiteWriter
from convert.schema import ScoreOutput, TableSchema

__all__ = ["DATABASE_WRITERS", "engine_url", "read_previous", "read_table", "write_scores", "writer_for"]

logger = logging.getLogger("convert.io.writers")

#: The database writers, tried in order by URL backend: one class per database.
DATABASE_WRITERS: tuple[type[DatabaseWriter], ...] = (SQLiteWriter, PostgresWriter)

_TARGET_HELP = (
    "use a path ending .parquet or .csv, sqlite:///path.db or postgresql://user@host:port/db"
)


def writer_for(
    target: object, table: object = ScoreOutput.table, layout: Layout = SCORES, *, room: int = DERIVED_ROOM
) -> Writer:
    """The writer of *target* (a path or a database URL) and *table* (database targets).

    The table name is validated first (with *room* for the names derived from it), so a bad
    name is refused before anything is opened.
    """
    name = parse_table(table, suffix=room)
    try:
        text = os.fspath(target)  # type: ignore[call-overload]
    except TypeError:
        raise WritebackError(
            f"target must be a path or a database URL, got {type(target).__name__}"
        ) from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if not is_database_url(text):
        path = Path(text)
        if FileWriter.accepts(path):
            return FileWriter(path, layout)
        raise WritebackError(f"unsupported target {redact_url(text)!r}: {_TARGET_HELP}")
    safe = redact_url(text)
    try:
        url = _sqlalchemy_url(text)
    except ValueError:
        raise WritebackError(f"target {safe!r} is not a valid database URL: {_TARGET_HELP}") from None
    backend = url.get_backend_name()
    for writer in DATABASE_WRITERS:
        if backend in writer.backends:
            return writer(writer.check_url(url, safe), text, safe, name, layout)
    raise WritebackError(f"unsupported target scheme {backend!r} in {safe!r}: {_TARGET_HELP}")


def write_scores(
    scores: pd.DataFrame,
    target: str | os.PathLike[str],
    table: str = ScoreOutput.table,
    *,
    chunk_rows: int = 100_000,
    allow_empty: bool = False,
    guards: WriteGuards | None = None,
    schema: type[TableSchema] = ScoreOutput,
    recheck: Recheck | None = None,
) -> WriteSummary:
    """Write *scores* (the :class:`ScoreOutput` columns) to *target*; see :mod:`convert.io.writers`.

    Parameters
    ----------
    scores:
        One row per lead of the scored population, exactly the ``ScoreOutput`` columns.
    target:
        ``*.parquet`` / ``*.csv`` path, ``sqlite:///path.db`` or ``postgresql://...`` URL.
    table:
        Current table (database targets); the history table is ``{table}_history``.
        Letters, digits and underscores, optionally ``schema.table``.
    chunk_rows:
        Rows per staging chunk (bounds the memory of one chunk's encoded form).
    allow_empty:
        An empty batch would delete every current score (the whole population left), so it
        is refused unless this is true (the shrink guard applies on top).
    guards:
        What the run may do to the scores it replaces, and how long it waits for a lock
        (default: ``WriteGuards()``, the defaults of the ``writeback:`` section).
    schema:
        The table's schema (a :class:`~convert.schema.TableSchema` with ``key`` and
        ``HISTORY_KEY``): ``ScoreOutput``, or ``AssignmentOutput`` for ``allocate``. A schema
        whose ``SHRINK_GUARD`` is false (assignments, which churn every day) skips the shrink
        guard; the lock, the model and the as-of guards apply to every schema.
    recheck:
        Called under the lock, after the guards, with each lead's previous row as the
        target holds it then (:meth:`~convert.io.writers.base.Writer.previous`); returns the
        scores to write instead (their changes recomputed against those rows: another run
        wrote since the caller read them with :func:`read_previous`), or ``None``.

    Raises
    ------
    WriteRefusedError
        A guard refused the run; nothing was changed (the message names the flag).
    WriteLockedError
        Another run held the target's lock past ``guards.lock_timeout_s``; nothing changed.
    WritebackError
        Invalid frame, table name or target, or the write failed; the previous scores are
        intact (the message says so, or says what to do in the rare case it cannot know).
    """
    started = time.perf_counter()
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise WritebackError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    guards = WriteGuards() if guards is None else guards
    layout = layout_of(schema)
    writer = writer_for(target, table, layout)
    if not layout.shrink_guard:
        guards = dataclasses.replace(guards, allow_shrink=True)
    frame = prepare(scores, allow_empty=allow_empty, layout=layout)
    batch = TableState.of_frame(frame)
    guards.check_batch(batch)
    locked: Recheck | None = None
    if recheck is not None:
        check = recheck

        def locked(previous: pd.DataFrame) -> pd.DataFrame | None:
            redo = check(previous)
            if redo is None:
                return None
            typed = prepare(redo, allow_empty=allow_empty, layout=layout)
            if TableState.of_frame(typed) != batch or not typed[ScoreOutput.lead_id].equals(frame[ScoreOutput.lead_id]):
                raise WritebackError("the rechecked scores must keep the batch's leads, as-of and model")
            return typed

    counts = writer.write(frame, batch, guards, chunk_rows, locked)
    summary = WriteSummary(
        target=writer.display,
        table=writer.table.display if writer.table else None,
        rows_written=len(frame),
        rows_removed=counts.removed,
        history_rows_added=counts.added,
        seconds=time.perf_counter() - started,
        history_rows_updated=counts.updated,
    )
    logger.info("%s", summary)
    return summary


def read_table(
    target: str | os.PathLike[str], table: str = ScoreOutput.table, *, schema: type[TableSchema] = ScoreOutput
) -> pd.DataFrame:
    """Read scores back from a file or a database table (e.g. ``lead_scores_history``).

    The schema's columns get their contract types (as :func:`write_scores` writes them);
    rows are sorted by its history key (``lead_id``, ``as_of``, ``model_version``). For file
    targets *table* is ignored.
    """
    layout = layout_of(schema)
    frame = writer_for(target, table, layout, room=0).read()
    for column in layout.columns:
        if column.name in frame.columns:
            frame[column.name] = coerce(frame[column.name].reset_index(drop=True), column)
    keys = [k for k in layout.history_key if k in frame.columns]
    if keys:
        frame = frame.sort_values(keys, kind="stable")
    return frame.reset_index(drop=True)


def read_previous(target: str | os.PathLike[str], as_of: pd.Timestamp, table: str = ScoreOutput.table,
                  lock_timeout_s: float = 600.0) -> pd.DataFrame:
    """Each lead's previous row before *as_of* as *target* holds it now (no lock of its own,
    waiting at most *lock_timeout_s* for another session's): the history table of a
    database, or the scores file a run would replace. The score step's first read;
    :func:`write_scores` reads again under the lock (its *recheck*)."""
    return writer_for(target, table, SCORES).previous(pd.Timestamp(as_of), lock_timeout_s)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL to open a database target with (keeps the password: connect only).

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (SQLAlchemy would
    pick psycopg2, which convert does not install); other schemes are refused like
    :func:`write_scores` refuses them.
    """
    writer = writer_for(url, ScoreOutput.table)
    if not isinstance(writer, DatabaseWriter):
        raise WritebackError(f"{url!r} is a file path, not a database URL: {_TARGET_HELP}")
    return writer.url.render_as_string(hide_password=False)
