"""The SQLite writer: ``sqlite:///path.db``, staged with ``executemany``, switched under ``BEGIN IMMEDIATE``.

Owns what SQLite does differently from the portable SQL of
:class:`~convert.io.writers.database.DatabaseWriter`:

* connecting: pysqlite's own transaction handling is turned off (it does not cover DDL and
  cannot ``BEGIN IMMEDIATE``); the busy timeout is the lock timeout; the database is
  switched to WAL mode (existing files too), so an open reader never blocks the commit;
* the lock: the switch's transaction opens with ``BEGIN IMMEDIATE``, which takes the
  database's write lock (waiting at most the busy timeout);
* staging: the rows are inserted with ``executemany``, in key order, into a temporary
  table (timestamps as SQLAlchemy's SQLite text form), then indexed by ``lead_id``;
* the current table is upserted with ``INSERT ... ON CONFLICT (key) DO UPDATE ... WHERE``
  a value changed (so a re-run rewrites nothing).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

import numpy as np
import pandas as pd

from convert.exceptions import WritebackError
from convert.io.writers.database import DatabaseWriter, _quoted
from convert.schema import Column, ScoreOutput

if TYPE_CHECKING:
    from sqlalchemy.engine import URL, Connection, Engine

__all__ = ["SQLiteWriter"]

logger = logging.getLogger("convert.io.writers")

#: Text form of timestamps in SQLite (the form SQLAlchemy's SQLite dialect reads and writes).
_SQLITE_TIMESTAMP = "%Y-%m-%d %H:%M:%S.%f"
_SQLITE_DRIVERS = ("sqlite", "sqlite+pysqlite")


class SQLiteWriter(DatabaseWriter):
    """A table and its history in a SQLite file (see the module docs)."""

    backends: ClassVar[tuple[str, ...]] = ("sqlite",)
    temp_schema: ClassVar[str] = "temp"

    @classmethod
    def check_url(cls, url: URL, safe: str) -> URL:
        import sqlite3

        if url.drivername not in _SQLITE_DRIVERS:
            raise WritebackError(f"unsupported SQLite driver in {safe!r}: use sqlite:///path.db")
        if not url.database or url.database == ":memory:":
            raise WritebackError(
                f"SQLite target {safe!r} names no database file: use sqlite:///path.db"
            )
        if sqlite3.sqlite_version_info < (3, 24, 0):
            raise WritebackError(
                f"SQLite {sqlite3.sqlite_version} is too old for upserts; convert needs 3.24 or later"
            )
        return url

    def make_engine(self, lock_timeout_s: float, *, wal: bool = False) -> Engine:
        """Busy timeout *lock_timeout_s*; with *wal*, the database is switched to WAL mode
        (persistent: readers then never block a commit)."""
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        path = Path(self.url.database or "")
        path.parent.mkdir(parents=True, exist_ok=True)
        engine = sa.create_engine(
            self.url, poolclass=NullPool, connect_args={"timeout": lock_timeout_s}
        )
        display = self.display

        # pysqlite's own transaction handling does not cover DDL and cannot BEGIN IMMEDIATE:
        # turn it off and emit BEGIN ourselves (the recipe of SQLAlchemy's SQLite docs).
        @sa.event.listens_for(engine, "connect")
        def _no_implicit_begin(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.isolation_level = None
            if wal:
                _use_wal(dbapi_connection, display)

        @sa.event.listens_for(engine, "begin")
        def _begin(connection: Connection) -> None:
            connection.exec_driver_sql(connection.info.get("convert_begin", "BEGIN"))

        return engine

    def begin_switch(self, conn: Connection) -> None:
        # BEGIN IMMEDIATE takes the database's write lock now (within the busy timeout):
        # the lock of the contract, held until commit or rollback.
        conn.info["convert_begin"] = "BEGIN IMMEDIATE"

    def load_stage(self, conn: Connection, frame: pd.DataFrame, chunk_rows: int) -> None:
        import sqlalchemy as sa

        stage = self.tables.stage
        # Staged in key order, the rows reach the primary-key indexes in order.
        frame = frame.sort_values(ScoreOutput.lead_id, ignore_index=True)
        insert = str(stage.insert().compile(dialect=conn.dialect))
        for start in range(0, len(frame), chunk_rows):
            chunk = frame.iloc[start : start + chunk_rows]
            columns = [_python_values(chunk[c.name], c) for c in self.layout.columns]
            conn.exec_driver_sql(insert, list(zip(*columns, strict=True)))
        # the anti-join of the switch looks leads up by lead_id (a second staging of the run,
        # under the lock, finds the index already on the table: stage.create made it)
        name = f"{stage.name}_lead_id"
        if not any(index.name == name for index in stage.indexes):
            sa.Index(_quoted(name), stage.c.lead_id).create(conn)


def _use_wal(dbapi_connection: Any, display: str) -> None:
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
            display,
            mode,
        )


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
