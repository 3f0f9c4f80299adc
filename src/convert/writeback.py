"""Write scores back: to a file, SQLite or PostgreSQL, staged and switched atomically.

This edge module is the only place that writes scores. :func:`write_scores` takes a frame
with exactly the :class:`~convert.schema.ScoreOutput` columns (or, with ``schema=``, another
output schema's, e.g. the lead assignments of ``convert.allocate``) and a target:

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
3. then ONE transaction creates the tables when absent, deletes from the current table the
   leads missing from this run's batch (they left the population: converted or
   disqualified), upserts the batch into the current table and into the history table.
   The upserts only rewrite rows whose values changed, so a re-run is idempotent. SQLite
   runs ``INSERT ... ON CONFLICT (lead_id) DO UPDATE``; PostgreSQL gets the same result
   faster in bulk with one ``MERGE`` (before version 15: ``UPDATE ... FROM`` the staging
   table, then ``INSERT`` of the new leads). The history takes a plain ``INSERT`` when it
   holds no row of the batch's (as_of, model_version) pairs (the normal run), else
   ``INSERT ... ON CONFLICT (lead_id, as_of, model_version) DO UPDATE``.

Killed at any moment, the previous tables stay as they were (the staging table dies with
the session; the switch commits in full or not at all), and a re-run gives the same final
tables as an uninterrupted run. Concurrent runs on the same PostgreSQL table are
serialized by a transaction-level advisory lock (SQLite: ``BEGIN IMMEDIATE``).

Tables: ``lead_id`` TEXT, ``as_of``/``scored_at`` TIMESTAMP (naive UTC), ``probability``
DOUBLE PRECISION (SQLite REAL), the points INTEGER, the rest TEXT (empty text is NULL).
On PostgreSQL the current table has ``fillfactor = 50`` (each run rewrites most rows; the
free space makes those HOT updates) and the history an index on (as_of, model_version).

SQLAlchemy, psycopg and pyarrow are imported lazily, inside the functions that need them:
``import convert.writeback`` stays light and does not import a database driver.
"""

from __future__ import annotations

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
from urllib.parse import quote, quote_plus

import numpy as np
import pandas as pd

from convert.exceptions import WritebackError
from convert.schema import Column, ScoreOutput, TableSchema

if TYPE_CHECKING:
    import pyarrow as pa
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Connection, Engine

__all__ = ["WriteSummary", "engine_url", "read_table", "write_scores"]

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
_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.\-]*://")
_USERINFO_RE = re.compile(r"(://[^:/@\s]*:)[^@\s]*@")
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

    @classmethod
    def of(cls, schema: type[TableSchema]) -> _Layout:
        history = tuple(getattr(schema, "HISTORY_KEY", (*schema.key, "as_of", "model_version")))
        return cls(tuple(schema.columns()), tuple(schema.names()), tuple(schema.key), history)


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
        is refused unless this is true.
    schema:
        The table's schema (a :class:`~convert.schema.TableSchema` with ``key`` and
        ``HISTORY_KEY``): ``ScoreOutput``, or ``AssignmentOutput`` for ``allocate``.

    Raises
    ------
    WritebackError
        Invalid frame, table name or target, or the write failed; the previous scores are
        intact (the message says so, or says what to do in the rare case it cannot know).
    """
    started = time.perf_counter()
    if isinstance(chunk_rows, bool) or not isinstance(chunk_rows, int) or chunk_rows < 1:
        raise WritebackError(f"chunk_rows must be a positive integer, got {chunk_rows!r}")
    name = _parse_table(table, suffix=_DERIVED_ROOM)
    dest = _parse_target(target)
    layout = _SCORES if schema is ScoreOutput else _Layout.of(schema)
    frame = _prepare(scores, allow_empty=allow_empty, layout=layout)
    if isinstance(dest, _FileTarget):
        _write_file(frame, dest, layout)
        summary = WriteSummary(
            target=dest.display,
            table=None,
            rows_written=len(frame),
            rows_removed=0,
            history_rows_added=0,
            seconds=time.perf_counter() - started,
        )
    else:
        removed, added, updated = _write_database(frame, dest, name, chunk_rows, layout)
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


def _redact(text: str) -> str:
    """A URL-ish string without the password of its user info, for unparsable targets."""
    return _USERINFO_RE.sub(r"\1***@", text)


def _parse_target(target: object) -> _FileTarget | _DbTarget:
    try:
        text = os.fspath(target)  # type: ignore[call-overload]
    except TypeError:
        raise WritebackError(
            f"target must be a path or a database URL, got {type(target).__name__}"
        ) from None
    if isinstance(text, bytes):
        text = os.fsdecode(text)
    if _URL_RE.match(text):
        return _parse_url(text)
    path = Path(text)
    suffix = path.suffix.lower()
    if suffix == ".parquet":
        return _FileTarget(path, "parquet")
    if suffix == ".csv":
        return _FileTarget(path, "csv")
    raise WritebackError(f"unsupported target {_redact(text)!r}: {_TARGET_HELP}")


def _parse_url(text: str) -> _DbTarget:
    from sqlalchemy.engine import make_url
    from sqlalchemy.exc import ArgumentError

    try:
        url = make_url(text)
    except (ArgumentError, ValueError):
        raise WritebackError(
            f"target {_redact(text)!r} is not a valid database URL: {_TARGET_HELP}"
        ) from None
    safe = url.render_as_string(hide_password=True)
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
    password = url.password
    secrets: tuple[str, ...] = ()
    if password:
        spellings = {str(password), quote_plus(str(password)), quote(str(password), safe="")}
        secrets = tuple(sorted(spellings, key=len, reverse=True))
    return _DbTarget(url, dialect, secrets, safe)


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


# --- files ----------------------------------------------------------------------------------


def _write_file(frame: pd.DataFrame, dest: _FileTarget, layout: _Layout = _SCORES) -> None:
    """Write to a temporary file next to the target, then move it over the target."""
    path = dest.path
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
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


def _engine(dest: _DbTarget) -> Engine:
    import sqlalchemy as sa
    from sqlalchemy.pool import NullPool

    if dest.dialect == "sqlite":
        path = Path(dest.url.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(dest.url, poolclass=NullPool, connect_args={"timeout": 60})

        # pysqlite's own transaction handling does not cover DDL and cannot BEGIN IMMEDIATE:
        # turn it off and emit BEGIN ourselves (the recipe of SQLAlchemy's SQLite docs).
        @sa.event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql(connection.info.get("convert_begin", "BEGIN"))

        return engine
    connect_args: dict[str, Any] = {"connect_timeout": 15}
    if "application_name" not in dest.url.query:
        connect_args["application_name"] = "convert-writeback"
    return sa.create_engine(dest.url, poolclass=NullPool, connect_args=connect_args)


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
    frame: pd.DataFrame, dest: _DbTarget, name: _TableName, chunk_rows: int, layout: _Layout = _SCORES
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
    try:
        engine = _engine(dest)
        try:
            with engine.connect() as conn:
                phase = "checking the existing tables"
                _prepare_session(conn, dest)
                _check_existing(conn, tables, name)
                conn.rollback()
                phase = "staging the scores"
                with _timed("staging"), conn.begin():
                    _stage(conn, dest.dialect, tables.stage, frame, chunk_rows, layout)
                phase = "switching to the new scores"
                conn.info["convert_begin"] = "BEGIN IMMEDIATE"
                transaction = conn.begin()
                try:
                    counts = _switch(conn, dest.dialect, tables, name, _batch_keys(frame))
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
    name: _TableName,
    batch_keys: list[tuple[Any, str]],
) -> tuple[int, int, int]:
    """The one transaction: create, delete leavers, upsert current, upsert history.

    *batch_keys* are the distinct (as_of, model_version) pairs of the batch.
    Returns (leads removed, history rows added, history rows updated).
    """
    import sqlalchemy as sa

    if dialect == "postgresql":
        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        # serializes concurrent runs on the same table (released at commit or rollback)
        conn.execute(
            sa.select(sa.func.pg_advisory_xact_lock(sa.func.hashtext(f"convert:{name.display}")))
        )
    current, history, stage = tables.current, tables.history, tables.stage
    current_key, history_key = tables.layout.current_key, tables.layout.history_key
    current.create(conn, checkfirst=True)
    history.create(conn, checkfirst=True)
    tables.history_as_of.create(conn, checkfirst=True)

    leavers = sa.delete(current).where(~sa.exists().where(stage.c.lead_id == current.c.lead_id))
    with _timed("delete leavers"):
        removed = _rowcount(conn, leavers)
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
