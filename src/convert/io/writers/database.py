"""What every database writer shares: SQLAlchemy tables, the session, the switch transaction.

Owns the database side of the contract (:class:`~convert.io.writers.base.Writer`) in
portable SQL; the SQLite and PostgreSQL writers override only what their dialect does
differently (connecting, staging, locking, the upsert of the current table):

* two tables: the current table (``table``, primary key = the schema's key) and the history
  (``{table}_history``, primary key = ``HISTORY_KEY``, plus an index on (as_of,
  model_version)); created when absent, refused when an existing one lacks a column or the
  key the upserts need;
* one session per run; its errors become :class:`~convert.exceptions.WritebackError` naming
  the phase, with the password scrubbed from every message and never chained when the
  driver's own text would show it;
* the switch: one transaction holding the table's lock (keyed on the schema-qualified
  name, whichever spelling names it), committed in full or not at all.

Every identifier reaches SQL through SQLAlchemy's quoting (or the dialect's
``identifier_preparer``) after :func:`~convert.io.writers.base.parse_table` validated it;
values are bound, never spliced. SQLAlchemy is imported inside the methods.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, ClassVar

import pandas as pd

from convert.exceptions import WritebackError
from convert.io.urls import scrub as scrub_secrets
from convert.io.urls import secrets_of
from convert.io.writers.base import (
    AS_OF_INDEX_SUFFIX,
    HISTORY_SUFFIX,
    PREVIOUS_READ,
    STAGE_SUFFIX,
    TableName,
    TableState,
    WriteGuards,
    Writer,
    lock_error,
    reason,
    timed,
)
from convert.io.writers.frames import Layout, coerce
from convert.schema import Column, ScoreOutput

if TYPE_CHECKING:
    import sqlalchemy as sa
    from sqlalchemy.engine import URL, Connection, Engine

__all__ = ["DatabaseWriter", "is_lock_timeout"]


def _quoted(name: str) -> sa.sql.elements.quoted_name:
    from sqlalchemy.sql.elements import quoted_name

    return quoted_name(name, quote=True)


def _column_type(column: Column, *, key: bool = False) -> Any:
    """The SQL type of *column*; a text column of the current table's key sorts by bytes
    on PostgreSQL (``COLLATE "C"``: equality is the same, its index builds twice as fast)."""
    import sqlalchemy as sa

    if key and column.dtype == "string":
        return sa.Text().with_variant(sa.Text(collation="C"), "postgresql")
    if column.dtype == "timestamp":
        return sa.TIMESTAMP()
    if column.dtype == "number":
        return sa.Double().with_variant(sa.REAL(), "sqlite")
    if column.dtype == "integer":
        return sa.Integer()
    return sa.Text()


@dataclass(frozen=True)
class Tables:
    """The SQLAlchemy tables of one run: current, history (and its as-of index), staging."""

    current: sa.Table
    history: sa.Table
    #: None when the history's key starts with (as_of, model_version) and serves as that index
    history_as_of: sa.Index | None
    stage: sa.Table
    layout: Layout

    @classmethod
    def build(cls, temp_schema: str, name: TableName, layout: Layout, history_key: tuple[str, ...]) -> Tables:
        """*history_key* orders the history's primary key (the writer's choice; same columns)."""
        import sqlalchemy as sa

        metadata = sa.MetaData()
        schema = _quoted(name.schema) if name.schema else None

        def table(table_name: str, key: tuple[str, ...], **kwargs: Any) -> sa.Table:
            columns = [
                sa.Column(
                    _quoted(c.name),
                    _column_type(c, key=c.name in layout.current_key),
                    nullable=c.nullable and c.name not in key,
                    autoincrement=False,
                )
                for c in layout.columns
            ]
            constraints = [sa.PrimaryKeyConstraint(*key)] if key else []
            return sa.Table(_quoted(table_name), metadata, *columns, *constraints, **kwargs)

        history = table(name.name + HISTORY_SUFFIX, history_key, schema=schema)
        # (as_of, model_version) repeat over a whole batch: with B-tree deduplication this
        # index stays tiny, finds a run's rows for monitoring, and tells a new batch apart.
        history_as_of = None
        if tuple(history_key[:2]) != ("as_of", "model_version"):
            history_as_of = sa.Index(
                _quoted(name.name + HISTORY_SUFFIX + AS_OF_INDEX_SUFFIX),
                history.c.as_of,
                history.c.model_version,
            )
        return cls(
            current=table(name.name, layout.current_key, schema=schema),
            history=history,
            history_as_of=history_as_of,
            stage=table(
                name.name + STAGE_SUFFIX, (), schema=_quoted(temp_schema), prefixes=["TEMPORARY"]
            ),
            layout=layout,
        )


def is_lock_timeout(exc: BaseException) -> bool:
    """Whether *exc* (or the driver error it wraps) is a lock wait that timed out."""
    original = getattr(exc, "orig", None) or exc
    if getattr(original, "sqlstate", None) == "55P03":  # PostgreSQL lock_not_available
        return True
    code = getattr(original, "sqlite_errorcode", None)
    if code is not None:
        return int(code) & 0xFF in (5, 6)  # SQLITE_BUSY, SQLITE_LOCKED
    return "database is locked" in str(original)


def rowcount(conn: Connection, statement: Any) -> int:
    """Rows *statement* changed (SQLAlchemy 2.1 keeps INSERT's rowcount only when asked)."""
    result = conn.execute(statement, execution_options={"preserve_rowcount": True})
    count = int(result.rowcount)
    if count < 0:
        raise RuntimeError(f"the driver did not report a row count for: {statement}")
    return count


class DatabaseWriter(Writer):
    """A table and its history in a SQL database reached through SQLAlchemy.

    Subclasses set :attr:`backends` (the URL backends they take) and implement
    :meth:`make_engine` and :meth:`load_stage`; the rest is portable SQL they may override.
    """

    #: SQLAlchemy backend names (``url.get_backend_name()``) this writer takes
    backends: ClassVar[tuple[str, ...]] = ()
    #: the schema temporary tables live in
    temp_schema: ClassVar[str] = "temp"

    def __init__(self, url: URL, text: str, display: str, table: TableName, layout: Layout) -> None:
        super().__init__(layout)
        self.url = url
        self.display = display
        self.table = table
        secrets = set(secrets_of(text))
        if url.password:
            secrets.add(str(url.password))
        self.secrets = tuple(sorted(secrets, key=len, reverse=True))
        self.tables = Tables.build(self.temp_schema, table, layout, self.history_key())
        self.phase = "connecting"
        self.qualified = table.display
        self._conn: Connection | None = None

    # the dialect's parts ------------------------------------------------------------------

    @classmethod
    def check_url(cls, url: URL, safe: str) -> URL:
        """*url* as the writer connects with it; raise :class:`WritebackError` (naming the
        redacted *safe* URL) when its driver or database cannot be written."""
        return url

    def make_engine(self, lock_timeout_s: float, *, wal: bool = False) -> Engine:
        """An engine for one run (no pool: one connection, closed at the end)."""
        raise NotImplementedError

    def prepare_session(self, conn: Connection) -> None:
        """Session settings for the run (e.g. memory for the staging table)."""

    def begin_switch(self, conn: Connection) -> None:
        """Before the switch's transaction begins (SQLite: ``BEGIN IMMEDIATE``)."""

    def lock(self, conn: Connection, timeout_s: float) -> None:
        """Serialize writers of :attr:`qualified` for the rest of the transaction."""

    def default_schema(self, conn: Connection) -> str:
        """The schema a bare table name resolves to."""
        return "main"

    def load_stage(self, conn: Connection, frame: pd.DataFrame, chunk_rows: int) -> None:
        """Fill the (created, empty) staging table with the batch."""
        raise NotImplementedError

    def history_key(self) -> tuple[str, ...]:
        """The column order of the history's primary key in new tables."""
        return self.layout.history_key

    def errors(self) -> tuple[type[BaseException], ...]:
        """The exceptions a failing database raises (mapped to :class:`WritebackError`)."""
        import sqlite3

        import sqlalchemy as sa

        return (sa.exc.SQLAlchemyError, sqlite3.Error, OSError)

    # the contract's steps -----------------------------------------------------------------

    @property
    def conn(self) -> Connection:
        assert self._conn is not None, "the writer's session is not open"
        return self._conn

    @contextmanager
    def session(self, guards: WriteGuards) -> Iterator[None]:
        self.phase = "connecting"
        try:
            engine = self.make_engine(guards.lock_timeout_s, wal=True)
            try:
                with engine.connect() as conn:
                    self._conn = conn
                    self.phase = "checking the existing tables"
                    self.prepare_session(conn)
                    self.qualified = self.qualified_name(conn)
                    self._check_existing(conn)
                    conn.rollback()
                    yield
            finally:
                self._conn = None
                engine.dispose()
        except WritebackError:
            raise
        except self.errors() as exc:
            if self.phase != "committing" and is_lock_timeout(exc):
                raise lock_error(self.qualified, self.display, guards.lock_timeout_s) from None
            raise self._database_error(exc) from self._safe_cause(exc)

    def stage(self, frame: pd.DataFrame, chunk_rows: int) -> Any:
        self.phase = "staging the scores"
        stage = self.tables.stage
        # under the switch's lock (a batch recomputed by write's recheck) it joins that transaction
        within: AbstractContextManager[Any] = nullcontext() if self.conn.in_transaction() else self.conn.begin()
        with timed("staging"), within:
            # (not stage.drop(checkfirst=True): inside the switch's transaction SQLite's
            # check misses the temporary table staged before it)
            preparer = self.conn.dialect.identifier_preparer
            self.conn.exec_driver_sql(f"DROP TABLE IF EXISTS {preparer.format_table(stage)}")
            stage.create(self.conn)
            self.load_stage(self.conn, frame, chunk_rows)
        return stage

    @contextmanager
    def switch(self, guards: WriteGuards) -> Iterator[None]:
        self.phase = "switching to the new scores"
        conn = self.conn
        self.begin_switch(conn)
        transaction = conn.begin()
        try:
            # serializes concurrent runs on the same table (released at commit or rollback)
            self.lock(conn, guards.lock_timeout_s)
            self.tables.current.create(conn, checkfirst=True)
            self.tables.history.create(conn, checkfirst=True)
            if self.tables.history_as_of is not None:
                self.tables.history_as_of.create(conn, checkfirst=True)
            self.add_columns()
            yield
            self.phase = "committing"
            with timed("commit"):
                transaction.commit()
        finally:
            if transaction.is_active:
                transaction.rollback()

    def current_state(self) -> TableState:
        return TableState.of_table(self.conn, self.tables.current)

    def add_columns(self) -> None:
        """Give tables written before the layout's added columns existed those columns
        (``ALTER TABLE ... ADD COLUMN``, nullable, no default: existing rows get them empty,
        a change of the catalog only). Runs under the lock, inside the switch's transaction,
        so it commits with the run or not at all. No manual migration step."""
        import sqlalchemy as sa

        if not self.layout.added:
            return
        conn = self.conn
        preparer = conn.dialect.identifier_preparer
        inspector = sa.inspect(conn)
        for table in (self.tables.current, self.tables.history):
            present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
            for name in self.layout.added:
                if name not in present:
                    kind = table.c[name].type.compile(dialect=conn.dialect)
                    conn.exec_driver_sql(
                        f"ALTER TABLE {preparer.format_table(table)} ADD COLUMN {preparer.quote(name)} {kind}"
                    )

    def previous(self, as_of: pd.Timestamp, lock_timeout_s: float = 600.0) -> pd.DataFrame:
        """From the history: ``ROW_NUMBER()`` over each lead's rows older than *as_of*, newest
        (as_of, scored_at) first; its first row. Inside the session (under the lock) on its
        connection, else on a connection of its own; no history table: no rows."""
        if self._conn is not None:
            return self._previous(self._conn, as_of)
        engine = self.make_engine(lock_timeout_s)
        try:
            with engine.connect() as conn:
                self.qualified = self.qualified_name(conn)
                return self._previous(conn, as_of)
        except WritebackError:
            raise
        except self.errors() as exc:
            if is_lock_timeout(exc):
                raise lock_error(self.qualified, self.display, lock_timeout_s) from None
            raise WritebackError(
                f"could not read the previous scores of {self.qualified} at {self.display}: "
                f"{self.scrub(reason(exc))}"
            ) from self._safe_cause(exc)
        finally:
            engine.dispose()

    def _previous(self, conn: Connection, as_of: pd.Timestamp) -> pd.DataFrame:
        import sqlalchemy as sa

        history = self.tables.history
        inspector = sa.inspect(conn)
        if not inspector.has_table(history.name, schema=history.schema):
            return _empty_previous(self.layout)
        present = {c["name"] for c in inspector.get_columns(history.name, schema=history.schema)}
        names = [n for n in PREVIOUS_READ if n in present]
        order = [history.c[n].desc() for n in (ScoreOutput.as_of, ScoreOutput.scored_at) if n in present]
        rank = sa.func.row_number().over(partition_by=history.c.lead_id, order_by=order).label("rank_")
        stamp = pd.Timestamp(as_of).to_pydatetime()
        rows = sa.select(*(history.c[n] for n in names), rank).where(history.c.as_of < stamp).subquery("h")
        result = conn.execute(sa.select(*(rows.c[n] for n in names)).where(rows.c.rank_ == 1))
        frame = pd.DataFrame(result.fetchall(), columns=names)
        columns = {c.name: c for c in self.layout.columns}
        return pd.DataFrame({n: coerce(frame[n].reset_index(drop=True), columns[n]) for n in names})

    def remove_leavers(self, stage: Any) -> int:
        import sqlalchemy as sa

        current = self.tables.current
        leavers = sa.delete(current).where(
            ~sa.exists().where(stage.c.lead_id == current.c.lead_id)
        )
        with timed("delete leavers"):
            return rowcount(self.conn, leavers)

    def replace_current(self, stage: Any, current: TableState) -> None:
        with timed("upsert current"):
            self.conn.execute(
                self.insert_from_stage(self.tables.current, stage, self.layout.current_key, upsert=True)
            )

    def append_history(self, stage: Any, frame: pd.DataFrame) -> tuple[int, int]:
        """A plain ``INSERT`` when no history row shares the batch's (as_of, model_version)
        pairs (the normal run: ON CONFLICT's speculative insertion costs ~30% more), else
        an upsert of the rows that changed (a re-run)."""
        history = self.tables.history
        if not self.history_overlaps(frame):
            with timed("insert history"):
                insert = self.insert_from_stage(history, stage, self.layout.history_key, upsert=False)
                return rowcount(self.conn, insert), 0
        with timed("upsert history"):
            added, changed = self.upsert_history(stage)
        return added, changed - added

    def upsert_history(self, stage: sa.Table) -> tuple[int, int]:
        """Upsert the staged rows into the history; returns (rows inserted, rows written)."""
        import sqlalchemy as sa

        history, key = self.tables.history, self.layout.history_key
        known = sa.exists().where(*(history.c[k] == stage.c[k] for k in key))
        added = self.conn.execute(sa.select(sa.func.count()).select_from(stage).where(~known)).scalar_one()
        changed = rowcount(self.conn, self.insert_from_stage(history, stage, key, upsert=True))
        return int(added), changed

    # shared SQL ---------------------------------------------------------------------------

    def history_overlaps(self, frame: pd.DataFrame) -> bool:
        """Whether the history holds a row of one of the batch's (as_of, model_version) pairs
        (a re-run), or the batch has too many pairs to ask cheaply."""
        import sqlalchemy as sa

        history = self.tables.history
        pairs = batch_keys(frame)
        if len(pairs) > 100:
            return True
        found = self.conn.execute(
            sa.select(sa.literal(1))
            .select_from(history)
            .where(sa.tuple_(history.c.as_of, history.c.model_version).in_(pairs))
            .limit(1)
        ).first()
        return found is not None

    def insert_from_stage(
        self, target: sa.Table, stage: sa.Table, key: tuple[str, ...], *, upsert: bool
    ) -> Any:
        """``INSERT INTO target SELECT ... FROM stage``.

        ``upsert=True``: every staged row, ``ON CONFLICT (key) DO UPDATE`` the rows that
        changed. ``upsert=False``: only the staged rows whose key is not in *target*.
        """
        import sqlalchemy as sa
        from sqlalchemy.dialects import postgresql, sqlite

        insert: Any = postgresql.insert if self.conn.dialect.name == "postgresql" else sqlite.insert
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

    def qualified_name(self, conn: Connection) -> str:
        """The table as ``schema.t``, the schema the server resolves a bare name to: the
        name locks are keyed on (``t`` and ``public.t`` are one table)."""
        name = self.table
        assert name is not None
        return f"{name.schema or self.default_schema(conn)}.{name.name}"

    def _check_existing(self, conn: Connection) -> None:
        """Fail before staging when existing tables cannot take the rows."""
        import sqlalchemy as sa

        inspector = sa.inspect(conn)
        name = self.table
        assert name is not None
        if name.schema and conn.dialect.name == "postgresql" and not inspector.has_schema(name.schema):
            raise WritebackError(
                f"schema {name.schema!r} does not exist in the database; create it first. "
                "Nothing was written."
            )
        layout = self.layout
        for table, key in (
            (self.tables.current, layout.current_key),
            (self.tables.history, layout.history_key),
        ):
            if not inspector.has_table(table.name, schema=table.schema):
                continue
            label = f"{table.schema}.{table.name}" if table.schema else str(table.name)
            present = {c["name"] for c in inspector.get_columns(table.name, schema=table.schema)}
            # the layout's added columns are added under the lock (add_columns)
            missing = [c for c in layout.names if c not in present and c not in layout.added]
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

    # reading ------------------------------------------------------------------------------

    def read(self) -> pd.DataFrame:
        import sqlalchemy as sa

        name = self.table
        assert name is not None
        engine = self.make_engine(600.0)
        try:
            with engine.connect() as conn:
                schema = _quoted(name.schema) if name.schema else None
                if not sa.inspect(conn).has_table(_quoted(name.name), schema=schema):
                    raise WritebackError(f"table {name.display} does not exist at {self.display}")
                table = sa.Table(_quoted(name.name), sa.MetaData(), schema=schema, autoload_with=conn)
                # the driver's values, without SQLAlchemy's per-value processing (10x faster);
                # read_table types the schema's columns afterwards
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
        except self.errors() as exc:
            raise WritebackError(
                f"could not read {name.display} at {self.display}: {self.scrub(reason(exc))}"
            ) from self._safe_cause(exc)
        finally:
            engine.dispose()

    # errors -------------------------------------------------------------------------------

    def scrub(self, text: str) -> str:
        """*text* without the password (in any of its spellings)."""
        return scrub_secrets(text, self.secrets)

    def _safe_cause(self, exc: BaseException) -> BaseException | None:
        """*exc* to chain, unless its text (or its cause's) would show the password."""
        texts: list[str] = []
        seen: BaseException | None = exc
        while seen is not None and len(texts) < 5:
            texts.append(f"{seen!s} {seen!r}")
            seen = seen.__cause__ or seen.__context__
        shown = " ".join(texts)
        return exc if self.scrub(shown) == shown else None

    def _database_error(self, exc: BaseException) -> WritebackError:
        text = self.scrub(reason(exc))
        if self.phase == "committing":
            return WritebackError(
                f"could not write scores to {self.display}: the final commit failed ({text}). "
                "The switch to the new scores either happened in full or not at all; re-run the "
                "write (re-runs are idempotent) to be sure the tables hold them."
            )
        return WritebackError(
            f"could not write scores to {self.display} while {self.phase}: {text}. Nothing was "
            "changed: the previous scores are intact."
        )


def _empty_previous(layout: Layout) -> pd.DataFrame:
    """No previous rows, with the :data:`PREVIOUS_READ` columns typed."""
    columns = {c.name: c for c in layout.columns}
    return pd.DataFrame({n: coerce(pd.Series([], dtype=object), columns[n]) for n in PREVIOUS_READ if n in columns})


def batch_keys(frame: pd.DataFrame) -> list[tuple[Any, str]]:
    """The distinct (as_of, model_version) pairs of the batch (at most 101), as bind values."""
    pairs = frame[[ScoreOutput.as_of, ScoreOutput.model_version]].drop_duplicates().head(101)
    return [
        (pd.Timestamp(as_of).to_pydatetime(), str(version))
        for as_of, version in pairs.itertuples(index=False, name=None)
    ]

