"""The PostgreSQL writer: ``postgresql://`` (psycopg 3), binary COPY, one locked transaction.

Owns what PostgreSQL does differently from the portable SQL of
:class:`~convert.io.writers.database.DatabaseWriter`:

* connecting: ``postgresql://`` and ``postgres://`` are driven by psycopg 3; on 14+ the
  session notices a killed client within a second (its backend then rolls back instead of
  holding the lock);
* the lock: ``SET LOCAL lock_timeout``, then a transaction-level advisory lock keyed on the
  schema-qualified table name (released at commit or rollback);
* **each run's rows are written once**, into a table of their own, the *run table*
  ``{table}_r{N}`` (N counts the runs), that is a child of both tables by PostgreSQL's table
  inheritance: a query of ``{table}`` reads its children's rows, and so does a query of
  ``{table}_history``. The current table and the history are the parents users know; their
  own rows are none (the history keeps those of runs written before this layout). A run:

  1. creates the run table (``LIKE`` the current table: its columns, defaults and checks)
     and loads the batch by ``COPY ... FROM STDIN (FORMAT binary, FREEZE)`` (encoded by
     :mod:`convert.io.writers.pgcopy` while the server loads the previous chunk), then builds
     its primary key by one sort, copies the current table's own indexes onto it (those users
     created, so that their queries of the current rows keep their index) and adds a
     ``CHECK`` on its as-of range (queries of the history by as-of skip the other runs);
  2. a re-run (the history holds rows of the batch's (as_of, model_version) pairs) deletes
     the rows it replaces from the history (counting those that changed), so every history
     key stays unique;
  3. makes the run table a child of the history, counts the leavers (current rows whose lead
     is not in the batch) for the shrink guard;
  4. the switch: the previous run table stops being a child of the current table (it stays
     in the history), the new one becomes one. Catalog changes only, at the very end.

  Every row is sent once and written once (the old layout wrote it into the history and
  again into the current table: 0.23x a raw COPY; see ``bench/writeback.py``). Everything
  happens in the switch's transaction: readers see the previous rows until the commit, a
  kill or an error rolls it all back, run table included;
* tables written by earlier versions (the current rows in the table itself) take this layout
  on their next run: the current table's own rows are deleted in the switch (once), the
  history's stay where they are.

What users put on the current table stays: grants (a query of the parent checks the
parent's privileges only), views, comments, its own indexes (copied onto each run table).
What changes with inheritance (the README's Write-back section says it too): the parent's
``DROP TABLE`` needs ``CASCADE`` (it drops the run tables); row triggers on the current table
no longer fire (no row is inserted into it); a foreign key cannot reference it (its own rows
are none); and the switch needs a brief ``ACCESS EXCLUSIVE`` lock on the previous run table,
so a long query reading the current table delays it (at most ``writeback.lock_timeout_s``);
and a repeatable-read transaction that began before the switch but first reads the current
table after it sees the new rows though its snapshot predates them (which tables are its
children is catalog state, not versioned by snapshots; the rows are written frozen). One that
read it before holds its lock: the switch waits for it to end.

Rejected, measured (issue 16): the MERGE of each run's rows into the current table after
COPYing them into the history (0.23x a raw COPY: every row written twice, the MERGE alone
4.8 s at 1M rows); ``TRUNCATE`` + ``COPY`` of the current table (an ACCESS EXCLUSIVE lock for
the whole switch, still two writes); declarative partitioning (a partition has one parent,
so the history would have to become a view, and existing tables could not be converted in
place).
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from convert.exceptions import WritebackError
from convert.io.writers import pgcopy
from convert.io.writers.base import DERIVED_ROOM, TableState, timed
from convert.io.writers.database import DatabaseWriter
from convert.io.writers.frames import to_arrow
from convert.schema import ScoreOutput

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import URL, Connection, Engine

__all__ = ["RUN_INFIX", "PostgresWriter", "lock_key"]

#: A run table is ``{table}{RUN_INFIX}{N}``: N is 1 + the largest N of the schema's run tables.
RUN_INFIX = "_r"

_AS_OF = ScoreOutput.as_of
_PG_DRIVERS = ("postgresql", "postgres", "postgresql+psycopg", "postgres+psycopg")


@dataclass
class _Batch:
    """The staged batch: typed Arrow rows and (once created in the switch) the run table's
    quoted name."""

    arrow: pa.Table
    chunk_rows: int
    run: str = ""


def lock_key(qualified: str) -> int:
    """A 64-bit advisory-lock key for a schema-qualified table name."""
    # the key string predates the writers package: runs of older versions must take the same lock
    digest = hashlib.blake2b(f"convert.writeback:{qualified}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


class PostgresWriter(DatabaseWriter):
    """A table and its history in PostgreSQL, each run's rows in a run table (see the module docs)."""

    backends: ClassVar[tuple[str, ...]] = ("postgresql", "postgres")
    temp_schema: ClassVar[str] = "pg_temp"
    #: the tables (oids) a re-run deleted history rows from: dropped at the switch when
    #: they are run tables left empty
    _emptied: set[int]

    @classmethod
    def check_url(cls, url: URL, safe: str) -> URL:
        if url.drivername not in _PG_DRIVERS:
            raise WritebackError(
                f"unsupported PostgreSQL driver in {safe!r}: convert writes with psycopg 3; "
                "use postgresql://user@host:port/db"
            )
        return url.set(drivername="postgresql+psycopg")

    def history_key(self) -> tuple[str, ...]:
        """(as_of, model_version, then the rest): the key's prefix finds a run's rows among the
        history's own, so no separate as-of index is kept. Existing tables keep their key
        (any order of the same columns works)."""
        key = self.layout.history_key
        first = tuple(k for k in ("as_of", "model_version") if k in key)
        return first + tuple(k for k in key if k not in first)

    def errors(self) -> tuple[type[BaseException], ...]:
        import psycopg

        return (*super().errors(), psycopg.Error)

    def make_engine(self, lock_timeout_s: float, *, wal: bool = False) -> Engine:
        import sqlalchemy as sa
        from sqlalchemy.pool import NullPool

        # every lock wait of the session (a reader's too) ends after the run's lock timeout;
        # after the URL's own options (e.g. a search_path), which these must not replace
        timeout_ms = max(1, round(lock_timeout_s * 1000))
        given = self.url.query.get("options", "")
        given = given if isinstance(given, str) else " ".join(given)
        options = f"{given} -c lock_timeout={timeout_ms}".strip()
        connect_args: dict[str, Any] = {"connect_timeout": 15, "options": options}
        if "application_name" not in self.url.query:
            connect_args["application_name"] = "convert-writeback"
        return sa.create_engine(self.url, poolclass=NullPool, connect_args=connect_args)

    def prepare_session(self, conn: Connection) -> None:
        version = conn.dialect.server_version_info or (0,)
        if version >= (14,):
            # A killed client's backend notices within a second and rolls back, instead of
            # holding the table lock until its current statement ends.
            conn.exec_driver_sql("SET client_connection_check_interval = 1000")
        conn.commit()

    def default_schema(self, conn: Connection) -> str:
        import sqlalchemy as sa

        return str(conn.execute(sa.text("SELECT current_schema()")).scalar() or "public")

    def lock(self, conn: Connection, timeout_s: float) -> None:
        """``lock_timeout`` for every lock of the transaction, then an advisory lock keyed on
        the schema-qualified name; a wait past the timeout raises SQLSTATE 55P03."""
        import sqlalchemy as sa

        conn.exec_driver_sql("SET LOCAL work_mem = '256MB'")
        conn.exec_driver_sql("SET LOCAL maintenance_work_mem = '256MB'")
        conn.exec_driver_sql(f"SET LOCAL lock_timeout = {max(1, round(timeout_s * 1000))}")
        key = sa.bindparam("key", lock_key(self.qualified), type_=sa.BigInteger())
        conn.execute(sa.select(sa.func.pg_advisory_xact_lock(key)))
        self._emptied = set()

    def stage(self, frame: pd.DataFrame, chunk_rows: int) -> _Batch:
        """The batch typed as Arrow columns, ready to COPY (nothing is sent yet)."""
        self.phase = "staging the scores"
        with timed("encoding"):
            arrow = to_arrow(frame, self.layout)
        return _Batch(arrow, chunk_rows)

    # the run table ------------------------------------------------------------------------

    def _quote(self, name: str) -> str:
        """A run table's name (in the current table's schema), quoted."""
        preparer = self.conn.dialect.identifier_preparer
        schema = self.tables.current.schema
        quoted = preparer.quote_identifier(name)  # always quoted, as the parents' names are
        return f"{preparer.quote(schema)}.{quoted}" if schema else quoted

    def _run_tables(self, parent: str | None = None) -> list[str]:
        """The schema's run tables of this table (children of *parent*, a quoted name, only)."""
        import sqlalchemy as sa

        base = str(self.tables.current.name)
        pattern = re.compile(re.escape(base) + re.escape(RUN_INFIX) + r"[0-9]+")
        schema = self.qualified.rsplit(".", 1)[0]
        if parent is None:
            query = sa.text(
                "SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = :schema AND c.relkind = 'r' AND starts_with(c.relname, :base)"
            ).bindparams(schema=schema, base=base + RUN_INFIX)
        else:
            query = sa.text(
                "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
                "WHERE i.inhparent = CAST(:parent AS regclass)"
            ).bindparams(parent=parent)
        names = [str(row[0]) for row in self.conn.execute(query)]
        return sorted((n for n in names if pattern.fullmatch(n)), key=lambda n: int(n[len(base) + len(RUN_INFIX):]))

    def _new_run_name(self) -> str:
        base = str(self.tables.current.name)
        taken = [int(n[len(base) + len(RUN_INFIX):]) for n in self._run_tables()]
        name = f"{base}{RUN_INFIX}{max(taken, default=0) + 1}"
        if len(name) > len(base) + DERIVED_ROOM:  # 10^12 runs: not in this universe
            raise WritebackError(f"no room for another run table name after {name!r}")
        return name

    def _create_run(self, batch: _Batch) -> str:
        """Create the run table, COPY the batch into it, then build its keys and checks."""
        import pyarrow.compute as pc

        conn = self.conn
        preparer = conn.dialect.identifier_preparer
        current = preparer.format_table(self.tables.current)
        run = self._quote(self._new_run_name())
        names = ", ".join(preparer.quote(n) for n in self.layout.names)
        with timed("COPY into the run table"):
            conn.exec_driver_sql(f"CREATE TABLE {run} (LIKE {current} INCLUDING DEFAULTS INCLUDING CONSTRAINTS)")
            for key in self.layout.history_key:
                conn.exec_driver_sql(f"ALTER TABLE {run} ALTER COLUMN {preparer.quote(key)} SET NOT NULL")
            copy = f"COPY {run} ({names}) FROM STDIN (FORMAT binary, FREEZE)"
            raw = conn.connection.driver_connection
            assert raw is not None
            with raw.cursor() as cursor, cursor.copy(copy) as stream:
                for piece in pgcopy.stream(batch.arrow, self.layout, batch.chunk_rows):
                    stream.write(piece)
        with timed("keys of the run table"):
            key = ", ".join(map(preparer.quote, self.layout.current_key))
            conn.exec_driver_sql(f"ALTER TABLE {run} ADD PRIMARY KEY ({key})")
            for definition in self._own_indexes():
                conn.exec_driver_sql(f"CREATE {definition[0]}INDEX ON {run} USING {definition[1]}")
            as_of = batch.arrow.column(_AS_OF)
            low, high = pc.min(as_of).as_py(), pc.max(as_of).as_py()
            if low is not None and high is not None:
                # literals made here from two datetimes, not from any text a user gave
                bounds = f"TIMESTAMP '{pd.Timestamp(low).isoformat(sep=' ')}' AND TIMESTAMP '{pd.Timestamp(high).isoformat(sep=' ')}'"
                conn.exec_driver_sql(f"ALTER TABLE {run} ADD CHECK ({preparer.quote(_AS_OF)} BETWEEN {bounds})")
        return run

    def _own_indexes(self) -> list[tuple[str, str]]:
        """The current table's own indexes but its primary key, as ("UNIQUE " or "", the
        definition after ``USING``), from the server's ``pg_get_indexdef``."""
        import sqlalchemy as sa

        query = sa.text(
            "SELECT i.indisunique, pg_get_indexdef(i.indexrelid) FROM pg_index i "
            "WHERE i.indrelid = CAST(:table AS regclass) AND NOT i.indisprimary ORDER BY i.indexrelid"
        ).bindparams(table=self.conn.dialect.identifier_preparer.format_table(self.tables.current))
        found = []
        for unique, definition in self.conn.execute(query):
            head, _, tail = str(definition).partition(" USING ")
            if tail and " ON " in head:
                found.append(("UNIQUE " if unique else "", tail))
        return found

    # the contract's steps -----------------------------------------------------------------

    def append_history(self, stage: _Batch, frame: pd.DataFrame) -> tuple[int, int]:
        """The run table, loaded and keyed; a re-run's replaced history rows deleted; then
        the run table joins the history."""
        conn = self.conn
        preparer = conn.dialect.identifier_preparer
        history = preparer.format_table(self.tables.history)
        # The statistics do not know the run table yet: the joins must not be index loops.
        conn.exec_driver_sql("SET LOCAL enable_nestloop = off")
        stage.run = self._create_run(stage)
        added, updated = len(stage.arrow), 0
        if self.history_overlaps(frame):
            with timed("replace the re-run's history rows"):
                matched, updated = self._delete_replaced(stage.run)
            added -= matched
        conn.exec_driver_sql(f"ALTER TABLE {stage.run} INHERIT {history}")
        return added, updated

    def _delete_replaced(self, run: str) -> tuple[int, int]:
        """Delete the history rows the run replaces (same history key); returns (rows
        deleted, of which changed). Run tables a re-run empties are dropped at the switch."""
        import sqlalchemy as sa

        conn, layout = self.conn, self.layout
        quote = conn.dialect.identifier_preparer.quote
        history = conn.dialect.identifier_preparer.format_table(self.tables.history)
        rest = [n for n in layout.names if n not in layout.history_key]
        keys = " AND ".join(f"h.{quote(k)} = s.{quote(k)}" for k in layout.history_key)
        changed = " OR ".join(f"h.{quote(n)} IS DISTINCT FROM s.{quote(n)}" for n in rest) or "false"
        rows = conn.execute(sa.text(
            f"WITH gone AS (DELETE FROM {history} AS h USING {run} AS s WHERE {keys} "  # noqa: S608 - quoted names
            f"RETURNING h.tableoid AS part, ({changed}) AS changed) "
            "SELECT part, count(*), count(*) FILTER (WHERE changed) FROM gone GROUP BY part"
        )).all()
        self._emptied.update(int(r[0]) for r in rows)
        return sum(int(r[1]) for r in rows), sum(int(r[2]) for r in rows)

    def remove_leavers(self, stage: _Batch) -> int:
        """Count the current rows whose lead is not in the batch: the switch leaves them in
        the history only (nothing is deleted row by row)."""
        import sqlalchemy as sa

        quote = self.conn.dialect.identifier_preparer.quote
        current = self.conn.dialect.identifier_preparer.format_table(self.tables.current)
        key = " AND ".join(f"s.{quote(k)} = t.{quote(k)}" for k in self.layout.current_key)
        with timed("count leavers"):
            return int(self.conn.execute(sa.text(
                f"SELECT count(*) FROM {current} AS t "  # noqa: S608 - quoted names
                f"WHERE NOT EXISTS (SELECT 1 FROM {stage.run} AS s WHERE {key})"
            )).scalar_one())

    def replace_current(self, stage: _Batch, current: TableState) -> None:
        """The switch: the current table's own rows (a table of an earlier layout) deleted,
        the previous run table detached from it, the new one attached; catalog changes."""
        import sqlalchemy as sa

        conn = self.conn
        table = conn.dialect.identifier_preparer.format_table(self.tables.current)
        with timed("switch the run tables"):
            own = conn.execute(sa.text(f"SELECT EXISTS (SELECT 1 FROM ONLY {table})")).scalar_one()  # noqa: S608
            if own:
                conn.exec_driver_sql(f"DELETE FROM ONLY {table}")
            previous = self._run_tables(table)
            for name in previous:
                conn.exec_driver_sql(f"ALTER TABLE {self._quote(name)} NO INHERIT {table}")
            conn.exec_driver_sql(f"ALTER TABLE {stage.run} INHERIT {table}")
            emptied = set(previous)
            if self._emptied:
                oids = sa.text("SELECT relname FROM pg_class WHERE oid = ANY(:oids)").bindparams(
                    oids=sorted(self._emptied)
                )
                emptied |= {str(r[0]) for r in conn.execute(oids)} & set(self._run_tables())
            for name in sorted(emptied):
                quoted = self._quote(name)
                if quoted != stage.run and not conn.execute(
                    sa.text(f"SELECT EXISTS (SELECT 1 FROM ONLY {quoted})")  # noqa: S608 - a run table's quoted name
                ).scalar_one():
                    conn.exec_driver_sql(f"DROP TABLE {quoted}")
