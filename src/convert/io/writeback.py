"""Write scores back: to a file, SQLite or PostgreSQL, staged and switched atomically.

This edge module is the only place that writes scores. :func:`write_scores` takes a frame
with exactly the :class:`~convert.schema.ScoreOutput` columns (or, with ``schema=``, another
output schema's, e.g. the lead assignments of ``convert.scoring.allocate``) and a target:

* a file path ending ``.parquet`` or ``.csv``: written to a temporary file in the same
  directory, then moved over the old file with :func:`os.replace` (readers see the old
  file or the new one, never half of one);
* a database URL, ``sqlite:///path.db`` or ``postgresql://user@host:port/db`` (a plain
  ``postgresql://`` or ``postgres://`` URL is driven by psycopg 3). Two tables are kept:
  the current table (``table``, one row per open lead, primary key ``lead_id``) and the
  history table (``{table}_history``, primary key ``(lead_id, as_of, model_version)``).

One database run:

1. the batch is validated and typed (missing/extra columns, types, empty values, repeated
   ``lead_id``), before anything is touched;
2. the rows are staged in chunks, in ``lead_id`` order, into a temporary table of the
   session (PostgreSQL: ``COPY ... FROM STDIN`` in the binary format; SQLite:
   ``executemany``); nothing visible changes;
3. then ONE transaction takes the table's lock, creates the tables when absent, checks the
   guards (below), deletes from the current table the leads missing from this run's batch
   (they left the population: converted or disqualified), upserts the batch into the
   current table and into the history table.
   The upserts only rewrite rows whose values changed, so a re-run is idempotent. SQLite
   runs ``INSERT ... ON CONFLICT (lead_id) DO UPDATE``; PostgreSQL gets the same result
   faster in bulk with one ``MERGE`` (before version 15: ``UPDATE ... FROM`` the staging
   table, then ``INSERT`` of the new leads). The history takes a plain ``INSERT`` when it
   holds no row of the batch's (as_of, model_version) pairs (the normal run), else
   ``INSERT ... ON CONFLICT (lead_id, as_of, model_version) DO UPDATE``.

Killed at any moment, the previous tables stay as they were (the staging table dies with
the session; the switch commits in full or not at all), and a re-run gives the same final
tables as an uninterrupted run.

Guards (:class:`WriteGuards`, the ``writeback:`` section of ``params.yaml``) are checked
inside the switch's transaction, under the lock, before anything changes; a refusal
(:class:`~convert.exceptions.WriteRefusedError`, exit code 2) rolls the transaction back:

* **shrink**: a run that would remove more than ``max_removed_share`` of the current rows
  (a partial export) is refused unless ``allow_shrink`` (``--allow-shrink``);
* **older as-of**: a run whose (oldest) as-of is strictly older than the newest as-of in
  the current table is refused unless ``allow_older`` (``--allow-older``); a re-run at the
  same as-of is fine, and an allowed older run appends its history like any run;
* **one model per table**: the current table holds one model name's scores (the part of
  ``model_version`` before ``/``); a run of another model is refused unless ``replace``
  (``--replace``), which replaces them all (the shrink and as-of guards compare runs of
  one model, so they do not apply then).

Locks: concurrent runs on one table are serialized, whichever spelling names it (``t``,
``public.t``: the lock is taken on the schema-qualified name). PostgreSQL takes a
transaction-level advisory lock keyed on that name, under ``SET LOCAL lock_timeout``;
SQLite takes ``BEGIN IMMEDIATE`` under a busy timeout, and its database is switched to WAL
mode (existing files too) so an open reader never blocks the commit. A file target is
guarded the same way under an exclusive lock file (``.NAME.lock`` beside it, removed
after). Waiting longer than ``lock_timeout_s`` stops the run with
:class:`~convert.exceptions.WriteLockedError` ("another run holds TABLE"), changing nothing.

The guards are not tied to the scores' columns: :class:`TableState` reads any table with
an as-of and a model-version column, and :func:`lock_table` / :func:`file_lock` take the
same locks. ``allocate``'s assignments (``schema=AssignmentOutput``) go through the same
lock, older-as-of and one-model-per-table guards and history table; the shrink guard does
not apply to them (``SHRINK_GUARD = False``: assignments churn every day).

Tables: ``lead_id`` TEXT, ``as_of``/``scored_at`` TIMESTAMP (naive UTC), ``probability``
DOUBLE PRECISION (SQLite REAL), the points INTEGER, the rest TEXT (empty text is NULL).
On PostgreSQL the current table has ``fillfactor = 50`` (each run rewrites most rows; the
free space makes those HOT updates) and the history an index on (as_of, model_version).

SQLAlchemy, psycopg and pyarrow are imported lazily, inside the functions that need them:
``import convert.io.writeback`` stays light and does not import a database driver.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import re
import stat
import time
import uuid
from collections import deque
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import pandas as pd

from convert.exceptions import WritebackError, WriteLockedError, WriteRefusedError
from convert.io.urls import engine_url as _sqlalchemy_url
from convert.io.urls import is_database_url, redact_url, secrets_of
from convert.schema import Column, ScoreOutput, TableSchema

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Connection, Engine

    from convert.config import WritebackConfig

__all__ = [
    "TableState",
    "WriteGuards",
    "WriteSummary",
    "engine_url",
    "file_lock",
    "lock_table",
    "model_name",
    "qualified_name",
    "read_table",
    "write_scores",
]

logger = logging.getLogger(__name__)

HISTORY_SUFFIX = "_history"
STAGE_SUFFIX = "__stage"
AS_OF_INDEX_SUFFIX = "_as_of"
#: Room the derived names (history table, its index, the staging table) need after a name.
_DERIVED_ROOM = max(len(HISTORY_SUFFIX) + len(AS_OF_INDEX_SUFFIX), len(STAGE_SUFFIX))
#: Longest identifier PostgreSQL keeps (longer ones are silently truncated).
MAX_IDENTIFIER = 63
_IDENT = r"[A-Za-z_][A-Za-z0-9_]{0,62}"
_TABLE_RE = re.compile(rf"(?:(?P<schema>{_IDENT})\.)?(?P<name>{_IDENT})")
#: Text form of timestamps in SQLite (the form SQLAlchemy's SQLite dialect reads and writes).
_SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"
_INT32 = (-(2**31), 2**31 - 1)
#: pandas.api.types.infer_dtype kinds that are numbers, not timestamps
_NUMBER_KINDS = frozenset(
    {"integer", "floating", "mixed-integer-float", "decimal", "boolean", "complex"}
)
_PG_DRIVERS = ("postgresql", "postgres", "postgresql+psycopg", "postgres+psycopg")
_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")
_TARGET_HELP = (
    "use a path ending .parquet or .csv, sqlite:///path.db or postgresql://user@host:port/db"
)
#: Columns that are neither the current key nor the history key: compared on re-runs.
_NAMES: tuple[str, ...] = tuple(ScoreOutput.names())
_CURRENT_KEY: tuple[str, ...] = tuple(ScoreOutput.key)
_HISTORY_KEY: tuple[str, ...] = tuple(ScoreOutput.HISTORY_KEY)


@dataclass(frozen=True)
class _Layout:
    """The written table's schema (ScoreOutput by default; ``allocate`` writes AssignmentOutput):
    its columns, the current table's key and the history's key (``HISTORY_KEY``)."""

    columns: tuple[Column, ...]
    names: tuple[str, ...]
    current_key: tuple[str, ...]
    history_key: tuple[str, ...]
    #: whether the shrink guard applies (not to assignments: they churn every day)
    shrink_guard: bool = True

    @classmethod
    def of(cls, schema: type[TableSchema]) -> _Layout:
        history = tuple(getattr(schema, "HISTORY_KEY", (*schema.key, "as_of", "model_version")))
        return cls(tuple(schema.columns()), tuple(schema.names()), tuple(schema.key), history,
                   bool(getattr(schema, "SHRINK_GUARD", True)))


_SCORES = _Layout.of(ScoreOutput)


@contextmanager
def _timed(step: str) -> Iterator[None]:
    """Log at DEBUG how long *step* took (the phases of a write, for tuning)."""
    started = time.perf_counter()
    yield
    logger.debug("writeback: %s took %.2f s", step, time.perf_counter() - started)


# --- public API ---------------------------------------------------------------------------


@dataclass(frozen=True)
class WriteSummary:
    """What one :func:`write_scores` run did.

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


def write_scores(
    scores: pd.DataFrame,
    target: str | os.PathLike[str],
    table: str = ScoreOutput.table,
    *,
    chunk_rows: int = 100_000,
    allow_empty: bool = False,
    guards: WriteGuards | None = None,
    schema: type[TableSchema] = ScoreOutput,
) -> WriteSummary:
    """Write *scores* (the :class:`ScoreOutput` columns) to *target*; see the module docs.

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
    name = _parse_table(table, suffix=_DERIVED_ROOM)
    dest = _parse_target(target)
    layout = _SCORES if schema is ScoreOutput else _Layout.of(schema)
    if not layout.shrink_guard:
        guards = dataclasses.replace(guards, allow_shrink=True)
    frame = _prepare(scores, allow_empty=allow_empty, layout=layout)
    batch = TableState.of_frame(frame)
    guards.check_batch(batch)
    if isinstance(dest, _FileTarget):
        _write_file(frame, dest, guards, batch, layout)
        summary = WriteSummary(
            target=dest.display,
            table=None,
            rows_written=len(frame),
            rows_removed=0,
            history_rows_added=0,
            seconds=time.perf_counter() - started,
        )
    else:
        removed, added, updated = _write_database(
            frame, dest, name, chunk_rows, guards, batch, layout
        )
        summary = WriteSummary(
            target=dest.display,
            table=name.display,
            rows_written=len(frame),
            rows_removed=removed,
            history_rows_added=added,
            seconds=time.perf_counter() - started,
            history_rows_updated=updated,
        )
    logger.info("%s", summary)
    return summary


def read_table(
    target: str | os.PathLike[str], table: str = ScoreOutput.table, *, schema: type[TableSchema] = ScoreOutput
) -> pd.DataFrame:
    """Read scores back from a file or a database table (e.g. ``lead_scores_history``).

    ``ScoreOutput`` columns get their contract types (as :func:`write_scores` writes them);
    rows are sorted by ``lead_id`` (then ``as_of``, ``model_version``). For file targets
    *table* is ignored.
    """
    dest = _parse_target(target)
    if isinstance(dest, _FileTarget):
        frame = _read_file(dest)
    else:
        frame = _read_database(dest, _parse_table(table, suffix=0))
    layout = _Layout.of(schema)
    for column in layout.columns:
        if column.name in frame.columns:
            frame[column.name] = _coerce(frame[column.name].reset_index(drop=True), column)
    keys = [k for k in layout.history_key if k in frame.columns]
    if keys:
        frame = frame.sort_values(keys, kind="stable")
    return frame.reset_index(drop=True)


def engine_url(url: str) -> str:
    """The SQLAlchemy URL to open a database target with (keeps the password: connect only).

    ``postgresql://`` and ``postgres://`` become ``postgresql+psycopg://`` (SQLAlchemy would
    pick psycopg2, which convert does not install); other schemes are refused like
    :func:`write_scores` refuses them.
    """
    dest = _parse_target(url)
    if isinstance(dest, _FileTarget):
        raise WritebackError(f"{url!r} is a file path, not a database URL: {_TARGET_HELP}")
    return dest.url.render_as_string(hide_password=False)


# --- names and targets --------------------------------------------------------------------


@dataclass(frozen=True)
class _TableName:
    schema: str | None
    name: str

    @property
    def display(self) -> str:
        return f"{self.schema}.{self.name}" if self.schema else self.name


def _parse_table(table: object, *, suffix: int) -> _TableName:
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
    return _TableName(match["schema"], name)


@dataclass(frozen=True)
class _FileTarget:
    path: Path
    fmt: Literal["parquet", "csv"]

    @property
    def display(self) -> str:
        return str(self.path)


@dataclass(frozen=True)
class _DbTarget:
    url: URL
    dialect: Literal["sqlite", "postgresql"]
    secrets: tuple[str, ...]
    #: the URL as the user wrote it, password hidden
    display: str

    def scrub(self, text: str) -> str:
        """*text* without the password (in any of its spellings)."""
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text


def _parse_target(target: object) -> _FileTarget | _DbTarget:
    try:
        text = os.fspath(target)  # type: ignore[call-overload]
    except TypeError:
        raise WritebackError(
            f"target must be a path or a database URL, got {type(target).__name__}"
        ) from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if is_database_url(text):
        return _parse_url(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _FileTarget(path, "parquet")
    if suffix == ".csv":
        return _FileTarget(path, "csv")
    raise WritebackError(f"unsupported target {redact_url(text)!r}: {_TARGET_HELP}")


def _parse_url(text: str) -> _DbTarget:
    safe = redact_url(text)
    try:
        url = _sqlalchemy_url(text)
    except ValueError:
        raise WritebackError(
            f"target {safe!r} is not a valid database URL: {_TARGET_HELP}"
        ) from None
    backend = url.get_backend_name()
    dialect: Literal["sqlite", "postgresql"]
    if backend in ("postgresql", "postgres"):
        if url.drivername not in _PG_DRIVERS:
            raise WritebackError(
                f"unsupported PostgreSQL driver in {safe!r}: convert writes with psycopg 3; "
                "use postgresql://user@host:port/db"
            )
        url = url.set(drivername="postgresql+psycopg")
        dialect = "postgresql"
    elif backend == "sqlite":
        if url.drivername not in _SQLITE_DRIVERS:
            raise WritebackError(f"unsupported SQLite driver in {safe!r}: use sqlite:///path.db")
        if not url.database or url.database == ":memory:":
            raise WritebackError(
                f"SQLite target {safe!r} names no database file: use sqlite:///path.db"
            )
        dialect = "sqlite"
    else:
        raise WritebackError(f"unsupported target scheme {backend!r} in {safe!r}: {_TARGET_HELP}")
    secrets = set(secrets_of(text))
    if url.password:
        secrets.add(str(url.password))
    return _DbTarget(url, dialect, tuple(sorted(secrets, key=len, reverse=True)), safe)


# --- the frame: columns, types, keys ------------------------------------------------------


def _prepare(scores: object, *, allow_empty: bool, layout: _Layout = _SCORES) -> pd.DataFrame:
    """*scores* with the ScoreOutput columns in order and their contract types; else raise."""
    if not isinstance(scores, pd.DataFrame):
        raise WritebackError(f"scores must be a pandas DataFrame, got {type(scores).__name__}")
    given = [str(c) for c in scores.columns]
    missing = [c for c in layout.names if c not in given]
    extra = [c for c in given if c not in layout.names]
    doubled = sorted({c for c in given if given.count(c) > 1})
    if missing or extra or doubled:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
        if doubled:
            problems.append(f"repeated column(s) {', '.join(map(repr, doubled))}")
        raise WritebackError(
            f"scores do not have the ScoreOutput columns: {'; '.join(problems)}. "
            f"Expected exactly: {', '.join(layout.names)}"
        )
    frame = scores.copy(deep=False)
    frame.columns = pd.Index(given)
    data: dict[str, pd.Series] = {}
    for column in layout.columns:
        series = _coerce(frame[column.name].reset_index(drop=True), column)
        if not column.nullable:
            empty = series.isna().to_numpy()
            if empty.any():
                raise WritebackError(
                    f"column {column.name!r} has {int(empty.sum()):,} empty value(s) "
                    f"(first at row {int(np.argmax(empty))}) but may not be empty"
                )
        data[column.name] = series
    result = pd.DataFrame(data)
    ids = result[ScoreOutput.lead_id]
    if not ids.is_unique:
        doubled_ids = ids.duplicated(keep=False).to_numpy()
        examples = result.loc[doubled_ids, ScoreOutput.lead_id].drop_duplicates().head(5)
        raise WritebackError(
            f"scores repeat lead_id {', '.join(map(repr, examples.tolist()))} "
            f"({int(doubled_ids.sum()):,} rows in all): the scores have one row per lead"
        )
    if result.empty and not allow_empty:
        raise WritebackError(
            "scores are empty: writing them would remove every current score; nothing was "
            "written (pass allow_empty=True if the population really is empty)"
        )
    return result


def _coerce(series: pd.Series, column: Column) -> pd.Series:
    """*series* as the contract type of *column* (nulls allowed; checked by the caller)."""
    try:
        if column.dtype == "string":
            return _as_text(series)
        if column.dtype == "timestamp":
            return _as_timestamp(series)
        if column.dtype == "number":
            return _as_float(series)
        return _as_int(series)
    except WritebackError as exc:
        raise WritebackError(f"column {column.name!r}: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise WritebackError(
            f"column {column.name!r} cannot be read as {column.dtype}: {exc}"
        ) from None


def _first_bad(series: pd.Series, bad: np.ndarray) -> str:
    position = int(np.argmax(bad))
    return f"{series.iloc[position]!r} at row {position}"


def _blank_to_na(series: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
        blank = series.astype("string").eq("").fillna(False).to_numpy(dtype=bool)
        if blank.any():
            return series.mask(blank)
    return series


def _as_text(series: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(series):
        values = series.dropna()
        if bool((values == np.floor(values)).all()):
            series = series.astype("Int64")  # 12.0 -> "12", as the id was written
    text = series.astype("string")
    blank = text.eq("").fillna(False).to_numpy(dtype=bool)
    if not blank.any():
        return text
    import pyarrow as pa
    import pyarrow.compute as pc

    # the Arrow kernel is several times faster than Series.mask on Arrow-backed strings
    values = pa.array(text)
    return pd.Series(
        pd.array(pc.if_else(blank, pa.scalar(None, values.type), values), dtype="string")
    )


def _as_timestamp(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        stamps = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(series):
        stamps = series
    elif pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise WritebackError(f"timestamps expected, got numbers ({series.dtype})")
    elif pd.api.types.infer_dtype(series, skipna=True) in _NUMBER_KINDS:
        raise WritebackError(
            f"timestamps expected, got numbers such as {series.dropna().iloc[0]!r}"
        )
    else:
        stamps = pd.to_datetime(_blank_to_na(series), utc=True, format="ISO8601")
        stamps = stamps.dt.tz_localize(None)
    return stamps.dt.floor("us").astype("datetime64[us]")


def _as_float(series: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(_blank_to_na(series), errors="raise").astype("float64")
    bad = np.isinf(numbers.to_numpy())
    if bad.any():
        raise WritebackError(f"not a finite number: {_first_bad(series, bad)}")
    return numbers


def _as_int(series: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(_blank_to_na(series), errors="raise")
    if pd.api.types.is_bool_dtype(numbers):
        raise WritebackError("integers expected, got booleans")
    values = numbers.astype("float64").to_numpy()
    known = ~np.isnan(values)
    bad = known & ((values != np.floor(values)) | np.isinf(values))
    if bad.any():
        raise WritebackError(f"not a whole number: {_first_bad(series, bad)}")
    bad = known & ((values < _INT32[0]) | (values > _INT32[1]))
    if bad.any():
        raise WritebackError(f"outside the INTEGER range: {_first_bad(series, bad)}")
    whole = numbers.astype("Int64")
    return whole if bool(whole.isna().any()) else whole.astype("int64")


def _to_arrow(frame: pd.DataFrame, layout: _Layout = _SCORES) -> pa.Table:
    """The prepared frame as an Arrow table with the contract types."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "timestamp": pa.timestamp("us"),
        "number": pa.float64(),
        "integer": pa.int32(),
    }
    schema = pa.schema(
        [pa.field(c.name, types[c.dtype], nullable=c.nullable) for c in layout.columns]
    )
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)


# --- guards and locks -----------------------------------------------------------------------


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

    Built from the ``writeback:`` section and the command's flags with
    :meth:`from_config`; see the module docs for the three guards. The checks take the
    current table's :class:`TableState` read under the lock, so two runs cannot both pass
    them on the same old state.
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


def _lock_key(qualified: str) -> int:
    """A 64-bit advisory-lock key for a schema-qualified table name."""
    digest = hashlib.blake2b(f"convert.io.writeback:{qualified}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def qualified_name(conn: Connection, table: str) -> str:
    """*table* (``t`` or ``schema.t``) as ``schema.t``, the schema the server resolves a bare
    name to (PostgreSQL: ``current_schema()``; SQLite: ``main``): the name locks are keyed on."""
    import sqlalchemy as sa

    name = _parse_table(table, suffix=0)
    if name.schema:
        return f"{name.schema}.{name.name}"
    if conn.dialect.name == "postgresql":
        schema = conn.execute(sa.text("SELECT current_schema()")).scalar() or "public"
    else:
        schema = "main"
    return f"{schema}.{name.name}"


def lock_table(conn: Connection, qualified: str, timeout_s: float) -> None:
    """Serialize writers of *qualified* for the rest of the current transaction.

    PostgreSQL: ``lock_timeout`` for every lock of the transaction, then an advisory lock
    keyed on the schema-qualified name (released at commit or rollback). SQLite: the
    ``BEGIN IMMEDIATE`` that opened the transaction holds the database's write lock
    already (waiting at most the busy timeout :func:`_engine` set); nothing more to take.
    A wait past the timeout raises a driver error that :func:`_is_lock_timeout` recognizes.
    """
    import sqlalchemy as sa

    if conn.dialect.name != "postgresql":
        return
    conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(timeout_s * 1000))}")
    key = sa.bindparam("key", _lock_key(qualified), type_=sa.BigInteger())
    conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))


def _is_lock_timeout(exc: BaseException) -> bool:
    """Whether *exc* (or the driver error it wraps) is a lock wait that timed out."""
    original = getattr(exc, "orig", None) or exc
    if getattr(original, "sqlstate", None) == "55P03":  # PostgreSQL lock_not_available
        return True
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "database is locked" in str(original)


def _lock_error(what: str, where: str, timeout_s: float) -> WriteLockedError:
    return WriteLockedError(
        f"another run holds {what} at {where}: waited {timeout_s:g} s for its lock "
        "(writeback.lock_timeout_s). Nothing was changed: the previous scores are intact. "
        "Let that run finish, or end the session holding the lock (PostgreSQL: see pg_locks "
        "and pg_stat_activity), then run again."
    )


@contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on *path* (through ``.NAME.lock`` beside it) while inside.

    The lock file is removed on the way out; a waiter that wakes on a removed lock file
    opens the new one, so two holders never overlap. Raises :class:`WriteLockedError`
    after *timeout_s* seconds.
    """
    import fcntl

    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise _lock_error(str(path), f"lock file {lock}", timeout_s) from None
                    time.sleep(0.05)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed this lock file: take the new one
    try:
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


# --- files ----------------------------------------------------------------------------------


def _write_file(
    frame: pd.DataFrame,
    dest: _FileTarget,
    guards: WriteGuards,
    batch: TableState,
    layout: _Layout = _SCORES,
) -> None:
    """Under the file's lock: check the guards against the file there, then write a
    temporary file next to it and move it over the target."""
    path = dest.path
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WritebackError(f"could not write {path}: {exc}. Nothing was written.") from exc
    with file_lock(path, guards.lock_timeout_s):
        if os.path.lexists(path):
            _check_file(frame, dest, guards, batch)
        _replace_file(frame, dest, layout)


def _check_file(
    frame: pd.DataFrame, dest: _FileTarget, guards: WriteGuards, batch: TableState
) -> None:
    """The guards, against the scores in the file the run would replace."""
    keys = [ScoreOutput.lead_id, ScoreOutput.as_of, ScoreOutput.model_version]
    try:
        if dest.fmt == "parquet":
            import pyarrow.parquet as pq

            old = pq.read_table(dest.path, columns=keys).to_pandas()
        else:
            old = pd.read_csv(
                dest.path, usecols=keys, dtype=str, keep_default_na=False, na_values=[""]
            )
        old[ScoreOutput.as_of] = pd.to_datetime(old[ScoreOutput.as_of], format="ISO8601")
    except Exception as exc:  # not a scores file this module wrote (or unreadable)
        if guards.replace:
            return
        raise WriteRefusedError(
            f"refused: {dest.path} exists but is not a scores file convert can read "
            f"({_reason(exc)}). Nothing was changed: the previous file is intact. Pass "
            "--replace to overwrite it, or "
            "write to another file."
        ) from None
    label = str(dest.path)
    current = TableState.of_frame(old)
    if guards.check_switch(label, current, batch):
        staying = old[ScoreOutput.lead_id].astype(str).isin(frame[ScoreOutput.lead_id])
        guards.check_removal(label, current.rows, int((~staying).sum()))


def _replace_file(frame: pd.DataFrame, dest: _FileTarget, layout: _Layout = _SCORES) -> None:
    """Write to a temporary file next to the target, then move it over the target."""
    path = dest.path
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        # O_EXCL: never follow or reuse an existing file; mode 0o666 lets the umask decide.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
        try:
            with os.fdopen(fd, "wb") as handle:
                if dest.fmt == "parquet":
                    import pyarrow.parquet as pq

                    pq.write_table(_to_arrow(frame, layout), handle)
                else:
                    text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
                    frame.to_csv(text, index=False, lineterminator="\n")
                    text.flush()
                    text.detach()
                handle.flush()
                os.fsync(handle.fileno())
            if path.exists():
                os.chmod(tmp, stat.S_IMODE(path.stat().st_mode))
            os.replace(tmp, path)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        _fsync_directory(path.parent)
    except WritebackError:
        raise
    except Exception as exc:  # OSError, pyarrow errors: the old file was not touched
        raise WritebackError(
            f"could not write {path}: {exc}. Nothing was replaced: the previous file is intact."
        ) from exc


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _read_file(dest: _FileTarget) -> pd.DataFrame:
    try:
        if dest.fmt == "parquet":
            import pyarrow.parquet as pq

            return pq.read_table(dest.path).to_pandas()
        return pd.read_csv(dest.path, dtype=str, keep_default_na=False, na_values=[""])
    except FileNotFoundError:
        raise WritebackError(f"{dest.path} does not exist") from None
    except Exception as exc:
        raise WritebackError(f"could not read {dest.path}: {exc}") from exc


# --- databases ------------------------------------------------------------------------------


def _engine(dest: _DbTarget, lock_timeout_s: float = 600.0, *, wal: bool = False) -> Engine:
    """An engine for one run. SQLite: busy timeout *lock_timeout_s*; with *wal*, the
    database is switched to WAL mode (persistent: readers then never block a commit)."""
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    if dest.dialect == "sqlite":
        path = Path(dest.url.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            dest.url, poolclass=NullPool, connect_args={"timeout": lock_timeout_s}
        )

        # pysqlite's own transaction handling does not cover DDL and cannot BEGIN IMMEDIATE:
        # turn it off and emit BEGIN ourselves (the recipe of SQLAlchemy's SQLite docs).
        @sa.event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            if wal:
                _use_wal(dbapi_connection, dest)

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql(connection.info.get("convert_begin", "BEGIN"))

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 15}
    if "application_name" not in dest.url.query:
        connect_args["application_name"] = "convert-writeback"
    return sa.create_engine(dest.url, poolclass=NullPool, connect_args=connect_args)


def _use_wal(dbapi_connection: Any, dest: _DbTarget) -> None:
    """Switch the SQLite database to WAL mode (a no-op when it is already)."""
    import sqlite3

    try:
        mode = dbapi_connection.execute("PRAGMA journal_mode = WAL").fetchone()[0]
    except sqlite3.OperationalError as exc:  # locked by a reader of the old journal mode
        mode = f"unchanged ({exc})"
    if str(mode).lower() != "wal":
        logger.warning(
            "could not switch %s to WAL mode (journal mode %s): an open reader may block "
            "this write until it ends",
            dest.display,
            mode,
        )


def _quoted(name: str) -> sa.sql.elements.quoted_name:
    from sqlalchemy.sql.elements import quoted_name

    return quoted_name(name, quote=True)


def _column_type(column: Column) -> Any:
    import sqlalchemy as sa

    if column.dtype == "timestamp":
        return sa.TIMESTAMP()
    if column.dtype == "number":
        return sa.Double().with_variant(sa.REAL(), "sqlite")
    if column.dtype == "integer":
        return sa.Integer()
    return sa.Text()


@dataclass(frozen=True)
class _Tables:
    current: sa.Table
    history: sa.Table
    history_as_of: sa.Index
    stage: sa.Table
    layout: _Layout = _SCORES

    @classmethod
    def build(
        cls, dialect: Literal["sqlite", "postgresql"], name: _TableName, layout: _Layout = _SCORES
    ) -> _Tables:
        import sqlalchemy as sa

        metadata = sa.MetaData()
        schema = _quoted(name.schema) if name.schema else None

        def table(table_name: str, key: tuple[str, ...], **kwargs: Any) -> sa.Table:
            columns = [
                sa.Column(
                    _quoted(c.name),
                    _column_type(c),
                    primary_key=c.name in key,
                    nullable=c.nullable and c.name not in key,
                    autoincrement=False,
                )
                for c in layout.columns
            ]
            return sa.Table(_quoted(table_name), metadata, *columns, **kwargs)

        temp_schema = "temp" if dialect == "sqlite" else "pg_temp"
        history = table(name.name + HISTORY_SUFFIX, layout.history_key, schema=schema)
        # (as_of, model_version) repeat over a whole batch: with B-tree deduplication this
        # index stays tiny, finds a run's rows for monitoring, and tells a new batch apart.
        history_as_of = sa.Index(
            _quoted(name.name + HISTORY_SUFFIX + AS_OF_INDEX_SUFFIX),
            history.c.as_of,
            history.c.model_version,
        )
        return cls(
            # Every run rewrites most current rows (new as_of); half-empty pages let PostgreSQL
            # update them in place (HOT updates: no new index entries), about 3x faster.
            current=table(
                name.name, layout.current_key, schema=schema, postgresql_with={"fillfactor": 50}
            ),
            history=history,
            history_as_of=history_as_of,
            stage=table(
                name.name + STAGE_SUFFIX, (), schema=_quoted(temp_schema), prefixes=["TEMPORARY"]
            ),
            layout=layout,
        )


def _write_database(
    frame: pd.DataFrame,
    dest: _DbTarget,
    name: _TableName,
    chunk_rows: int,
    guards: WriteGuards,
    batch: TableState,
    layout: _Layout = _SCORES,
) -> tuple[int, int, int]:
    """Stage, then switch in one transaction; returns (removed, history added, updated)."""
    import sqlite3

    import sqlalchemy as sa

    errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, sqlite3.Error, OSError)
    if dest.dialect == "postgresql":
        import psycopg

        errors = (*errors, psycopg.Error)
    if dest.dialect == "sqlite" and sqlite3.sqlite_version_info < (3, 24, 0):
        raise WritebackError(
            f"SQLite {sqlite3.sqlite_version} is too old for upserts; convert needs 3.24 or later"
        )
    tables = _Tables.build(dest.dialect, name, layout)
    phase = "connecting"
    qualified = name.display
    try:
        engine = _engine(dest, guards.lock_timeout_s, wal=True)
        try:
            with engine.connect() as conn:
                phase = "checking the existing tables"
                _prepare_session(conn, dest)
                qualified = qualified_name(conn, name.display)
                _check_existing(conn, tables, name)
                conn.rollback()
                phase = "staging the scores"
                with _timed("staging"), conn.begin():
                    _stage(conn, dest.dialect, tables.stage, frame, chunk_rows, layout)
                phase = "switching to the new scores"
                conn.info["convert_begin"] = "BEGIN IMMEDIATE"
                transaction = conn.begin()
                try:
                    counts = _switch(
                        conn, dest.dialect, tables, qualified, _batch_keys(frame), guards, batch
                    )
                    phase = "committing"
                    with _timed("commit"):
                        transaction.commit()
                finally:
                    if transaction.is_active:
                        transaction.rollback()
        finally:
            engine.dispose()
    except WritebackError:
        raise
    except errors as exc:
        if phase != "committing" and _is_lock_timeout(exc):
            raise _lock_error(qualified, dest.display, guards.lock_timeout_s) from None
        raise _database_error(exc, dest, phase) from _safe_cause(exc, dest)
    return counts


def _batch_keys(frame: pd.DataFrame) -> list[tuple[Any, str]]:
    """The distinct (as_of, model_version) pairs of the batch, as bind parameters."""
    pairs = frame[[ScoreOutput.as_of, ScoreOutput.model_version]].drop_duplicates().head(101)
    return [
        (pd.Timestamp(as_of).to_pydatetime(), str(version))
        for as_of, version in pairs.itertuples(index=False, name=None)
    ]


def _prepare_session(conn: Connection, dest: _DbTarget) -> None:
    if dest.dialect != "postgresql":
        return
    version = conn.dialect.server_version_info or (0,)
    # The staging table is a temporary table, cached in the session's local buffers (8 MB
    # by default): room for a large batch avoids spilling it to disk and reading it back.
    conn.exec_driver_sql("SET temp_buffers = '512MB'")
    if version >= (14,):
        # A killed client's backend notices within a second and rolls back, instead of
        # holding the table lock until its current statement ends.
        conn.exec_driver_sql("SET client_connection_check_interval = 1000")
    conn.commit()


def _check_existing(conn: Connection, tables: _Tables, name: _TableName) -> None:
    """Fail before staging when existing tables cannot take the scores."""
    import sqlalchemy as sa

    inspector = sa.inspect(conn)
    if name.schema and conn.dialect.name == "postgresql" and not inspector.has_schema(name.schema):
        raise WritebackError(
            f"schema {name.schema!r} does not exist in the database; create it first. "
            "Nothing was written."
        )
    layout = tables.layout
    for table, key in ((tables.current, layout.current_key), (tables.history, layout.history_key)):
        if not inspector.has_table(table.name, schema=table.schema):
            continue
        label = f"{table.schema}.{table.name}" if table.schema else str(table.name)
        present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
        missing = [c for c in layout.names if c not in present]
        if missing:
            raise WritebackError(
                f"table {label} exists but lacks column(s) {', '.join(missing)}: it was not "
                "written by this version of convert; migrate or rename it. Nothing was "
                "written: the previous scores are intact."
            )
        unique_keys = [
            set(inspector.get_pk_constraint(table.name, schema=table.schema)["constrained_columns"])
        ]
        unique_keys += [
            set(u["column_names"])
            for u in inspector.get_unique_constraints(table.name, schema=table.schema)
        ]
        unique_keys += [
            {c for c in ix["column_names"] if c is not None}
            for ix in inspector.get_indexes(table.name, schema=table.schema)
            if ix.get("unique")
        ]
        if set(key) not in unique_keys:
            raise WritebackError(
                f"table {label} exists but ({', '.join(key)}) is not its primary key or a "
                "unique key, which the upsert needs. Nothing was written: the previous "
                "scores are intact."
            )


def _stage(
    conn: Connection,
    dialect: Literal["sqlite", "postgresql"],
    stage: sa.Table,
    frame: pd.DataFrame,
    chunk_rows: int,
    layout: _Layout = _SCORES,
) -> None:
    import sqlalchemy as sa

    stage.drop(conn, checkfirst=True)
    stage.create(conn)
    if dialect == "postgresql":
        with _timed("COPY into staging"):
            _copy_postgresql(conn, stage, frame, chunk_rows, layout)
        with _timed("ANALYZE staging"):
            preparer = conn.dialect.identifier_preparer
            conn.exec_driver_sql(
                f"ANALYZE {preparer.format_table(stage)} ({preparer.quote(ScoreOutput.lead_id)})"
            )
        return
    # Staged in key order, the rows reach the primary-key indexes in order.
    frame = frame.sort_values(ScoreOutput.lead_id, ignore_index=True)
    insert = str(stage.insert().compile(dialect=conn.dialect))
    for start in range(0, len(frame), chunk_rows):
        chunk = frame.iloc[start : start + chunk_rows]
        columns = [_python_values(chunk[c.name], c) for c in layout.columns]
        conn.exec_driver_sql(insert, list(zip(*columns, strict=True)))
    # the anti-join of the switch looks leads up by lead_id
    sa.Index(_quoted(f"{stage.name}_lead_id"), stage.c.lead_id).create(conn)


def _copy_postgresql(
    conn: Connection, stage: sa.Table, frame: pd.DataFrame, chunk_rows: int, layout: _Layout = _SCORES
) -> None:
    """Bulk-load the frame with ``COPY ... FROM STDIN (FORMAT binary)``, in chunks.

    The rows go in ``lead_id`` order, so the upserts reach the primary-key indexes in order
    (neighbouring inserts share index pages: 2-3x faster than random order on 1M rows).
    The binary format spares the server parsing text (about half the CPU of CSV COPY, as
    measured). Each chunk is encoded by :func:`_copy_binary_rows` in a worker thread (Arrow
    releases the GIL) while the previous one is sent; at most two encoded chunks wait.
    """
    import pyarrow.compute as pc

    preparer = conn.dialect.identifier_preparer
    columns = ", ".join(preparer.quote(c.name) for c in stage.columns)
    statement = f"COPY {preparer.format_table(stage)} ({columns}) FROM STDIN (FORMAT binary)"
    arrow = _to_arrow(frame, layout)
    arrow = arrow.take(pc.sort_indices(arrow.column(ScoreOutput.lead_id)))

    def encode(start: int) -> memoryview:
        return _copy_binary_rows(arrow.slice(start, chunk_rows), layout)

    raw = conn.connection.driver_connection
    assert raw is not None
    with (
        ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert-copy") as pool,
        raw.cursor() as cursor,
        cursor.copy(statement) as copy,
    ):
        copy.write(_COPY_SIGNATURE)
        pending: deque[Future[memoryview]] = deque()
        for start in range(0, len(frame), chunk_rows):
            pending.append(pool.submit(encode, start))
            if len(pending) > 1:
                copy.write(pending.popleft().result())
        while pending:
            copy.write(pending.popleft().result())
        copy.write(_COPY_TRAILER)


#: PostgreSQL's binary COPY format: signature, flags, header extension length; trailer.
_COPY_SIGNATURE = b"PGCOPY\n\xff\r\n\x00" + bytes(8)
_COPY_TRAILER = b"\xff\xff"
#: Microseconds from the Unix epoch to PostgreSQL's (2000-01-01).
_PG_EPOCH_US = 946_684_800_000_000


def _copy_binary_rows(table: pa.Table, layout: _Layout = _SCORES) -> memoryview:
    """The rows of *table* (ScoreOutput types) in PostgreSQL's binary COPY tuple format.

    Each tuple is a 16-bit field count, then per field a 32-bit length (-1 for NULL) and
    the value in network byte order: text as UTF-8, timestamp as int64 microseconds since
    2000-01-01, float8, int4. The pieces are built column-wise with numpy and glued row-wise
    by Arrow's ``binary_join_element_wise``; no Python loop over rows.
    """
    import pyarrow as pa
    import pyarrow.compute as pc

    rows = len(table)
    null = pa.scalar(b"\xff\xff\xff\xff", pa.large_binary())
    glue = pa.scalar(b"", pa.large_binary())

    def fixed(values: np.ndarray) -> pa.Array:
        # length prefix + big-endian value, as one fixed-size binary per row
        record = np.empty(rows, dtype=[("length", ">i4"), ("value", values.dtype)])
        record["length"] = values.dtype.itemsize
        record["value"] = values
        width = record.dtype.itemsize
        array = pa.FixedSizeBinaryArray.from_buffers(
            pa.binary(width), rows, [None, pa.py_buffer(record.tobytes())]
        )
        return array.cast(pa.large_binary())

    pieces = []
    for column in layout.columns:
        values = table.column(column.name).combine_chunks()
        if column.dtype == "string":
            data = values.cast(pa.large_binary()).fill_null(b"")
            lengths = pc.binary_length(data).to_numpy().astype(">i4")
            prefix = pa.FixedSizeBinaryArray.from_buffers(
                pa.binary(4), rows, [None, pa.py_buffer(lengths.tobytes())]
            ).cast(pa.large_binary())
            piece = pc.binary_join_element_wise(prefix, data, glue)
        elif column.dtype == "timestamp":
            micros = values.cast(pa.int64()).fill_null(0).to_numpy()
            piece = fixed((micros - _PG_EPOCH_US).astype(">i8"))
        elif column.dtype == "number":
            piece = fixed(values.fill_null(0.0).to_numpy().astype(">f8"))
        else:
            piece = fixed(values.cast(pa.int32()).fill_null(0).to_numpy().astype(">i4"))
        if values.null_count:
            piece = pc.if_else(values.is_valid(), piece, null)
        pieces.append(piece)
    count = pa.scalar(len(pieces).to_bytes(2, "big"), pa.large_binary())
    joined = pc.binary_join_element_wise(count, *pieces, glue)
    offsets = np.frombuffer(joined.buffers()[1], dtype=np.int64)
    first, last = offsets[joined.offset], offsets[joined.offset + rows]
    return memoryview(joined.buffers()[2])[first:last]


def _python_values(series: pd.Series, column: Column) -> list[Any]:
    """Values the sqlite3 module binds: str, float, int, None; timestamps as text."""
    if column.dtype == "timestamp":
        codes, uniques = pd.factorize(series)
        texts = np.array(
            [*pd.DatetimeIndex(uniques).strftime(_SQLITE_TIMESTAMP), None], dtype=object
        )
        return texts[codes].tolist()  # code -1 (missing) picks the trailing None
    values = series.astype(object)
    return values.where(series.notna(), None).tolist()


def _switch(
    conn: Connection,
    dialect: Literal["sqlite", "postgresql"],
    tables: _Tables,
    qualified: str,
    batch_keys: list[tuple[Any, str]],
    guards: WriteGuards,
    batch: TableState,
) -> tuple[int, int, int]:
    """The one transaction: lock, create, check the guards, delete leavers, upsert current,
    upsert history. A guard's refusal raises, and the caller rolls it all back.

    *batch_keys* are the distinct (as_of, model_version) pairs of the batch.
    Returns (leads removed, history rows added, history rows updated).
    """
    import sqlalchemy as sa

    if dialect == "postgresql":
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
    # serializes concurrent runs on the same table (released at commit or rollback)
    lock_table(conn, qualified, guards.lock_timeout_s)
    current, history, stage = tables.current, tables.history, tables.stage
    current_key, history_key = tables.layout.current_key, tables.layout.history_key
    current.create(conn, checkfirst=True)
    history.create(conn, checkfirst=True)
    tables.history_as_of.create(conn, checkfirst=True)

    with _timed("guards"):
        state = TableState.of_table(conn, current)
        shrink_guard = guards.check_switch(qualified, state, batch)
    leavers = sa.delete(current).where(~sa.exists().where(stage.c.lead_id == current.c.lead_id))
    with _timed("delete leavers"):
        removed = _rowcount(conn, leavers)
    if shrink_guard:
        guards.check_removal(qualified, state.rows, removed)
    if dialect == "postgresql":
        with _timed("update and insert current"):
            _merge_postgresql(conn, current, stage, tables.layout)
    else:
        with _timed("upsert current"):
            conn.execute(_insert_from_stage(dialect, current, stage, current_key, upsert=True))

    # Normally no history row shares this batch's (as_of, model_version): a plain INSERT
    # then does (ON CONFLICT's speculative insertion costs ~30% more). Re-runs upsert.
    overlap = (
        len(batch_keys) > 100
        or conn.execute(
            sa.select(sa.literal(1))
            .select_from(history)
            .where(sa.tuple_(history.c.as_of, history.c.model_version).in_(batch_keys))
            .limit(1)
        ).first()
        is not None
    )
    if not overlap:
        with _timed("insert history"):
            insert = _insert_from_stage(dialect, history, stage, history_key, upsert=False)
            return removed, _rowcount(conn, insert), 0
    upsert = _insert_from_stage(dialect, history, stage, history_key, upsert=True)
    with _timed("upsert history"):
        if dialect == "postgresql":
            # xmax is 0 for a freshly inserted row and set for an updated one.
            written = upsert.returning(
                sa.literal_column("(xmax = 0)", sa.Boolean).label("inserted")
            ).cte("written")
            counts = conn.execute(
                sa.select(sa.func.count().filter(written.c.inserted), sa.func.count()).select_from(
                    written
                )
            ).one()
            added, changed = int(counts[0]), int(counts[1])
        else:
            known = sa.exists().where(*(history.c[k] == stage.c[k] for k in history_key))
            added = conn.execute(
                sa.select(sa.func.count()).select_from(stage).where(~known)
            ).scalar_one()
            changed = _rowcount(conn, upsert)
    return removed, added, changed - added


#: First PostgreSQL version with MERGE.
_PG_MERGE_VERSION = (15,)


def _merge_postgresql(
    conn: Connection, current: sa.Table, stage: sa.Table, layout: _Layout = _SCORES
) -> None:
    """Upsert the staged rows into the current table, in bulk (the leavers are gone already).

    The same result as ``INSERT ... ON CONFLICT (lead_id) DO UPDATE ... WHERE changed``,
    faster for a whole population: one hash join instead of a speculative insertion per
    row, and unchanged rows are not even locked. PostgreSQL 15+ runs one ``MERGE``; older
    servers an ``UPDATE ... FROM`` the staging table, then an ``INSERT`` of the new leads.
    Nothing else writes the table meanwhile (the advisory lock of :func:`_switch`); were a
    foreign writer to insert a lead, the primary key would fail the transaction, not
    corrupt the table.
    """
    import sqlalchemy as sa

    rest = [n for n in layout.names if n not in layout.current_key]
    if (conn.dialect.server_version_info or (0,)) < _PG_MERGE_VERSION:
        changed_rows = (
            sa.update(current)
            .where(current.c.lead_id == stage.c.lead_id)
            .where(sa.or_(*(current.c[n].is_distinct_from(stage.c[n]) for n in rest)))
            .values({n: stage.c[n] for n in rest})
        )
        conn.execute(changed_rows)
        conn.execute(
            _insert_from_stage("postgresql", current, stage, layout.current_key, upsert=False)
        )
        return
    # SQLAlchemy has no MERGE construct: every identifier below is a validated name quoted
    # by the dialect's preparer, and no value is spliced in.
    quote = conn.dialect.identifier_preparer.quote
    names = [quote(n) for n in layout.names]
    changed = " OR ".join(f"t.{quote(n)} IS DISTINCT FROM s.{quote(n)}" for n in rest)
    assignments = ", ".join(f"{quote(n)} = s.{quote(n)}" for n in rest)
    key = " AND ".join(f"t.{quote(k)} = s.{quote(k)}" for k in layout.current_key)
    format_table = conn.dialect.identifier_preparer.format_table
    merge = (
        f"MERGE INTO {format_table(current)} AS t USING {format_table(stage)} AS s ON {key} "
        f"WHEN MATCHED AND ({changed}) THEN UPDATE SET {assignments} "
        f"WHEN NOT MATCHED THEN INSERT ({', '.join(names)}) "
        f"VALUES ({', '.join('s.' + n for n in names)})"
    )
    conn.exec_driver_sql(merge)


def _rowcount(conn: Connection, statement: Any) -> int:
    """Rows *statement* changed (SQLAlchemy 2.1 keeps INSERT's rowcount only when asked)."""
    result = conn.execute(statement, execution_options={"preserve_rowcount": True})
    count = int(result.rowcount)
    if count < 0:
        raise RuntimeError(f"the driver did not report a row count for: {statement}")
    return count


def _insert_from_stage(
    dialect: Literal["sqlite", "postgresql"],
    target: sa.Table,
    stage: sa.Table,
    key: tuple[str, ...],
    *,
    upsert: bool,
) -> Any:
    """``INSERT INTO target SELECT ... FROM stage``.

    ``upsert=True``: every staged row, ``ON CONFLICT (key) DO UPDATE`` the rows that
    changed. ``upsert=False``: only the staged rows whose key is not in *target*.
    """
    import sqlalchemy as sa
    from sqlalchemy.dialects import postgresql, sqlite

    insert: Any = postgresql.insert if dialect == "postgresql" else sqlite.insert
    names = [c.name for c in stage.columns]
    # WHERE true: SQLite needs it to parse INSERT ... SELECT ... ON CONFLICT unambiguously.
    source = sa.select(*stage.columns).where(sa.true())
    if not upsert:
        return insert(target).from_select(
            names, source.where(~sa.exists().where(*(target.c[k] == stage.c[k] for k in key)))
        )
    statement = insert(target).from_select(names, source)
    rest = [n for n in names if n not in key]
    return statement.on_conflict_do_update(
        index_elements=list(key),
        set_={n: statement.excluded[n] for n in rest},
        where=sa.or_(*(target.c[n].is_distinct_from(statement.excluded[n]) for n in rest)),
    )


def _read_database(dest: _DbTarget, name: _TableName) -> pd.DataFrame:
    import sqlite3

    import sqlalchemy as sa

    errors: tuple[type[BaseException], ...] = (sa.exc.SQLAlchemyError, sqlite3.Error, OSError)
    engine = _engine(dest)
    try:
        with engine.connect() as conn:
            schema = _quoted(name.schema) if name.schema else None
            if not sa.inspect(conn).has_table(_quoted(name.name), schema=schema):
                raise WritebackError(f"table {name.display} does not exist at {dest.display}")
            table = sa.Table(_quoted(name.name), sa.MetaData(), schema=schema, autoload_with=conn)
            # the driver's values, without SQLAlchemy's per-value processing (10x faster);
            # read_table types the ScoreOutput columns afterwards
            query = str(sa.select(table).compile(dialect=conn.dialect))
            cursor = conn.connection.cursor()
            try:
                cursor.execute(query)
                names = [d[0] for d in cursor.description]
                rows = cursor.fetchall()
            finally:
                cursor.close()
            columns = list(zip(*rows, strict=True)) if rows else [()] * len(names)
            return pd.DataFrame(
                {n: pd.Series(list(v)) for n, v in zip(names, columns, strict=True)}
            )
    except WritebackError:
        raise
    except errors as exc:
        raise WritebackError(
            f"could not read {name.display} at {dest.display}: {dest.scrub(_reason(exc))}"
        ) from _safe_cause(exc, dest)
    finally:
        engine.dispose()


# --- errors ---------------------------------------------------------------------------------


def _reason(exc: BaseException) -> str:
    """The driver's message, without SQLAlchemy's statement and parameters."""
    original = getattr(exc, "orig", None)
    text = str(original if original is not None else exc)
    text = " ".join(line.strip() for line in text.splitlines() if line.strip())
    return text if len(text) <= 600 else text[:597] + "..."


def _safe_cause(exc: BaseException, dest: _DbTarget) -> BaseException | None:
    """*exc* to chain, unless its text (or its cause's) would show the password."""
    texts: list[str] = []
    seen: BaseException | None = exc
    while seen is not None and len(texts) < 5:
        texts.append(f"{seen!s} {seen!r}")
        seen = seen.__cause__ or seen.__context__
    shown = " ".join(texts)
    return exc if dest.scrub(shown) == shown else None


def _database_error(exc: BaseException, dest: _DbTarget, phase: str) -> WritebackError:
    reason = dest.scrub(_reason(exc))
    if phase == "committing":
        return WritebackError(
            f"could not write scores to {dest.display}: the final commit failed ({reason}). "
            "The switch to the new scores either happened in full or not at all; re-run the "
            "write (re-runs are idempotent) to be sure the tables hold them."
        )
    return WritebackError(
        f"could not write scores to {dest.display} while {phase}: {reason}. Nothing was "
        "changed: the previous scores are intact."
    )
