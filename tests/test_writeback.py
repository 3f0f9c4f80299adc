"""convert.io.writers against real files, a real SQLite file and a real PostgreSQL server.

No mocks. PostgreSQL tests use ``CONVERT_TEST_PG_URL`` (default
``postgresql://postgres@127.0.0.1:5432/test``); they skip with the reason when the server
does not answer, and fail instead when ``CI=true``. Every test writes its own tables
(uuid-suffixed names), dropped afterwards on PostgreSQL.
"""

from __future__ import annotations

import logging
import os
import queue
import signal
import subprocess
import sys
import textwrap
import threading
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest
from tests.conftest import missing

from convert.exceptions import WritebackError, WriteLockedError, WriteRefusedError
from convert.io.writers import WriteGuards, WriteSummary, engine_url, read_table, write_scores
from convert.schema import ScoreChanges, ScoreOutput

PG_URL = os.environ.get("CONVERT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: rows of the batch a killed writer is writing (large enough for its phases to last)
KILL_ROWS = int(os.environ.get("CONVERT_TEST_KILL_ROWS", "300000"))

TEXTS = np.array(
    [
        "Visited the pricing page 4 times in the last 30 days",
        'Said "yes, call me", then left',
        "line one\nline two",
        "naïve café ✓ — 東京",
        "back\\slash \\N and \\.",
        "  padded  ",
        "",
        None,
    ],
    dtype=object,
)


def make_scores(
    n: int,
    as_of: str = "2025-01-31",
    seed: int = 0,
    version: str = "v1",
    ids: Sequence[int] | np.ndarray | None = None,
) -> pd.DataFrame:
    """A seeded ScoreOutput frame: *n* leads (or lead numbers *ids*), one as_of and version."""
    rng = np.random.default_rng(seed)
    numbers = np.arange(n) if ids is None else np.asarray(ids)
    n = len(numbers)
    probability = rng.beta(0.6, 6.0, n)
    score = np.clip(np.round(probability * 100), 0, 100).astype("int64")
    fit = rng.integers(-10, 30, n)
    base = np.full(n, 4)
    stamp = pd.Timestamp(as_of)
    frame = pd.DataFrame(
        {
            "lead_id": [f"00Q{i:09d}" for i in numbers],
            "as_of": stamp,
            "probability": probability,
            "score": score,
            "grade": np.select([score >= 50, score >= 25, score >= 10], ["A", "B", "C"], "D"),
            "base_score": base,
            "fit_points": fit,
            "engagement_points": score - base - fit,
            **{c: TEXTS[rng.integers(0, len(TEXTS), n)] for c in ScoreOutput.REASONS},
            **{c: TEXTS[rng.integers(0, len(TEXTS), n)] for c in ScoreOutput.RISKS},
            "action": np.select(
                [score >= 40, score <= 2], ["route_to_sales", "review_disqualify"], "nurture"
            ),
            "model_version": version,
            "scored_at": stamp + pd.Timedelta(hours=2, minutes=17, microseconds=123456),
        }
    )
    return frame[ScoreOutput.names()]


def normalized(*frames: pd.DataFrame) -> pd.DataFrame:
    """What read_table returns for *frames* written: contract types, '' as NULL, sorted."""
    frame = pd.concat(frames, ignore_index=True)
    out = {}
    for column in ScoreOutput.columns():
        values = frame[column.name]
        if column.dtype == "string":
            text = values.astype("string")
            out[column.name] = text.mask(text.eq("").fillna(False).astype(bool))
        elif column.dtype == "timestamp":
            out[column.name] = values.astype("datetime64[us]")
        elif column.dtype == "integer":
            out[column.name] = values.astype("int64")
        else:
            out[column.name] = values.astype("float64")
    # the score-change columns (issue 17), written empty for frames without them
    empty = {"string": "string", "timestamp": "datetime64[us]", "integer": "Int64"}
    for column in ScoreChanges.columns():
        out[column.name] = pd.Series(pd.NA if column.dtype != "timestamp" else pd.NaT,
                                     index=frame.index, dtype=empty[column.dtype])
    result = pd.DataFrame(out)
    keys = list(ScoreOutput.HISTORY_KEY)
    return result.sort_values(keys, ignore_index=True)


def assert_same(left: pd.DataFrame, right: pd.DataFrame) -> None:
    pd.testing.assert_frame_equal(left, right, check_exact=True)


def unique_table(prefix: str = "t") -> str:
    return f"{prefix}_{uuid.uuid4().hex[:10]}"


# --- PostgreSQL fixtures --------------------------------------------------------------------


def _libpq_url(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).set(drivername="postgresql").render_as_string(hide_password=False)


def _pg_execute(sql: str, params: Sequence[Any] = ()) -> list[tuple[Any, ...]]:
    import psycopg

    with psycopg.connect(_libpq_url(PG_URL), autocommit=True) as conn:
        cursor = conn.execute(sql, params)  # type: ignore[arg-type]
        return cursor.fetchall() if cursor.description else []


@pytest.fixture(scope="session")
def pg_url() -> str:
    """The PostgreSQL URL; skips (fails when CI=true) when the server does not answer."""
    import psycopg
    from sqlalchemy.engine import make_url

    shown = make_url(PG_URL).render_as_string(hide_password=True)
    try:
        with psycopg.connect(_libpq_url(PG_URL), connect_timeout=5) as conn:
            conn.execute("SELECT 1")
    except Exception as exc:  # any failure to reach the server
        missing(f"PostgreSQL at {shown} does not answer: {type(exc).__name__}: {exc}")
    return PG_URL


@pytest.fixture
def pg_tables(pg_url: str) -> Iterator[Callable[[str], str]]:
    """``new(prefix)`` -> a unique table name; the tables (and histories) are dropped after."""
    made: list[str] = []

    def new(prefix: str = "t") -> str:
        name = unique_table(prefix)
        made.append(name)
        return name

    yield new
    for name in made:
        _pg_execute(f'DROP TABLE IF EXISTS "{name}", "{name}_history" CASCADE')


@dataclass
class Db:
    """One database target of a parametrized test."""

    kind: str
    url: str
    new_table: Callable[[], str]


@pytest.fixture(params=["sqlite", "postgresql"])
def db(request: pytest.FixtureRequest, tmp_path: Path) -> Db:
    if request.param == "sqlite":
        return Db("sqlite", f"sqlite:///{tmp_path / 'scores.db'}", unique_table)
    new = request.getfixturevalue("pg_tables")
    return Db("postgresql", request.getfixturevalue("pg_url"), new)


# --- the module itself ----------------------------------------------------------------------


@pytest.mark.slow  # a fresh interpreter importing convert
def test_import_does_not_load_database_drivers() -> None:
    code = (
        "import sys, convert.io.writers\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'sqlalchemy', 'psycopg'}))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# --- files ----------------------------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_round_trip_and_atomic_replace(tmp_path: Path, suffix: str) -> None:
    first = make_scores(500, seed=1)
    path = tmp_path / "out" / f"scores{suffix}"
    summary = write_scores(first, str(path))
    assert isinstance(summary, WriteSummary)
    assert (summary.rows_written, summary.table, summary.target) == (500, None, str(path))
    assert "500 scores" in str(summary)
    assert_same(read_table(str(path)), normalized(first))

    second = make_scores(400, as_of="2025-02-28", seed=2, ids=range(100, 500))
    write_scores(second, path)  # a PathLike works too
    assert_same(read_table(path), normalized(second))
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no temp file left


def test_file_write_failure_leaves_no_temp_file(tmp_path: Path) -> None:
    target = tmp_path / "taken.csv"
    target.mkdir()  # os.replace cannot put a file over a directory
    (target / "keep.txt").write_text("previous")
    with pytest.raises(WritebackError, match="intact"):
        write_scores(make_scores(50), str(target))
    assert (target / "keep.txt").read_text() == "previous"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["taken.csv"]


# --- validation -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["x; drop table y", 'a"b', "", "1abc", "a.b.c", "lead_scores\n", "sp ace", "x" * 64, None],
)
def test_invalid_table_names_are_rejected(tmp_path: Path, bad: Any) -> None:
    db_path = tmp_path / "s.db"
    with pytest.raises(WritebackError, match="table name"):
        write_scores(make_scores(10), f"sqlite:///{db_path}", bad)
    assert not db_path.exists()  # rejected before connecting


def test_table_name_leaves_room_for_derived_names(tmp_path: Path) -> None:
    longest_ok = "t" * 49  # + "_history_as_of" = 63 characters
    write_scores(make_scores(10), f"sqlite:///{tmp_path / 's.db'}", longest_ok)
    with pytest.raises(WritebackError, match="too long"):
        write_scores(make_scores(10), f"sqlite:///{tmp_path / 's.db'}", "t" * 50)


def test_missing_and_extra_columns_are_named(tmp_path: Path) -> None:
    frame = make_scores(10).drop(columns=["grade", "risk_3"]).assign(secret_sauce=1)
    with pytest.raises(WritebackError) as info:
        write_scores(frame, str(tmp_path / "s.csv"))
    message = str(info.value)
    assert "'grade'" in message and "'risk_3'" in message and "'secret_sauce'" in message
    assert not (tmp_path / "s.csv").exists()


def test_a_batch_without_the_change_columns_gets_them_typed_empty() -> None:
    """Typed empty columns made directly (a batch of a caller that computes no changes) are
    the columns the coercion of given empty columns makes."""
    from convert.io.writers.frames import SCORES, prepare

    frame = make_scores(50)
    made = prepare(frame, allow_empty=False)
    coerced = prepare(frame.assign(**dict.fromkeys(SCORES.added)), allow_empty=False)
    pd.testing.assert_frame_equal(made, coerced)
    assert made[list(SCORES.added)].isna().all().all()


def test_types_are_coerced(tmp_path: Path) -> None:
    frame = make_scores(3)
    loose = frame.astype(object)
    loose["lead_id"] = [101, 102, 103]
    loose["as_of"] = ["2025-01-31T01:00:00+01:00"] * 3  # aware -> naive UTC
    loose["probability"] = ["0.25", "0.5", "0.125"]
    loose["score"] = [1.0, 2.0, 3.0]
    loose["reason_1"] = ["", None, "x"]
    path = tmp_path / "s.parquet"
    write_scores(loose, str(path))
    back = read_table(str(path))
    assert back["lead_id"].tolist() == ["101", "102", "103"]
    assert (back["as_of"] == pd.Timestamp("2025-01-31 00:00:00")).all()
    assert back["probability"].tolist() == [0.25, 0.5, 0.125]
    assert back["score"].dtype == np.int64 and back["score"].tolist() == [1, 2, 3]
    assert back["reason_1"].isna().tolist() == [True, True, False]


@pytest.mark.parametrize(
    ("column", "values", "match"),
    [
        ("score", [1.5, 2.0, 3.0], "'score'.*whole number"),
        ("probability", ["high", "0.1", "0.2"], "'probability'"),
        ("action", ["nurture", "", "nurture"], "'action'.*empty"),
        ("lead_id", ["a", "b", "a"], "repeat lead_id 'a'"),
        ("as_of", [1, 2, 3], "'as_of'"),
    ],
)
def test_bad_values_are_rejected(
    tmp_path: Path, column: str, values: list[Any], match: str
) -> None:
    frame = make_scores(3).astype({column: object})
    frame[column] = values
    with pytest.raises(WritebackError, match=match):
        write_scores(frame, f"sqlite:///{tmp_path / 's.db'}")


def test_empty_scores_are_refused_unless_allowed(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    write_scores(make_scores(20), url, "t")
    with pytest.raises(WritebackError, match="empty"):
        write_scores(make_scores(0), url, "t")
    assert len(read_table(url, "t")) == 20
    with pytest.raises(WriteRefusedError, match="remove 20 of the 20"):  # the shrink guard
        write_scores(make_scores(0), url, "t", allow_empty=True)
    everything = WriteGuards(allow_shrink=True)
    summary = write_scores(make_scores(0), url, "t", allow_empty=True, guards=everything)
    assert summary.rows_removed == 20 and read_table(url, "t").empty


@pytest.mark.parametrize(
    "target",
    ["scores.txt", "scores", "mysql://u:pw@localhost/db", "sqlite://", "postgresql+asyncpg://h/db"],
)
def test_unsupported_targets(target: str) -> None:
    with pytest.raises(WritebackError, match="unsupported|no database file"):
        write_scores(make_scores(5), target)


# --- database semantics (SQLite and PostgreSQL) ---------------------------------------------


def _inspect(url: str) -> Any:
    import sqlalchemy as sa

    real = url.replace("postgresql://", "postgresql+psycopg://", 1)
    return sa.create_engine(real, poolclass=sa.pool.NullPool)


def test_tables_created_with_keys_and_types(db: Db) -> None:
    import sqlalchemy as sa

    table = db.new_table()
    frame = make_scores(500, seed=3)
    summary = write_scores(frame, db.url, table)
    assert (summary.rows_written, summary.rows_removed, summary.history_rows_added) == (500, 0, 500)
    assert summary.table == table and str(summary).startswith("wrote 500 scores")

    engine = _inspect(db.url)
    try:
        inspector = sa.inspect(engine)
        pk = inspector.get_pk_constraint(table)["constrained_columns"]
        history_pk = inspector.get_pk_constraint(f"{table}_history")["constrained_columns"]
        types = {c["name"]: str(c["type"]) for c in inspector.get_columns(table)}
    finally:
        engine.dispose()
    assert pk == ["lead_id"]
    # PostgreSQL orders the history's key by run first (appends; see PostgresWriter.history_key)
    assert sorted(history_pk) == ["as_of", "lead_id", "model_version"]
    assert history_pk[0] == ("lead_id" if db.kind == "sqlite" else "as_of")
    # PostgreSQL: the key's text sorts by bytes (its index builds twice as fast)
    expected = {
        "sqlite": ("TEXT", "TIMESTAMP", "REAL", "INTEGER"),
        "postgresql": ('TEXT COLLATE "C"', "TIMESTAMP", "DOUBLE PRECISION", "INTEGER"),
    }[db.kind]
    assert (types["lead_id"], types["as_of"], types["probability"], types["score"]) == expected
    assert types["scored_at"] == expected[1] and types["reason_1"] == "TEXT"

    assert_same(read_table(db.url, table), normalized(frame))
    assert_same(read_table(db.url, f"{table}_history"), normalized(frame))


def test_same_data_twice_changes_nothing(db: Db) -> None:
    table = db.new_table()
    frame = make_scores(500, seed=4)
    write_scores(frame, db.url, table)
    again = write_scores(frame, db.url, table)
    assert (again.rows_removed, again.history_rows_added, again.history_rows_updated) == (0, 0, 0)
    current = read_table(db.url, table)
    history = read_table(db.url, f"{table}_history")
    assert current["lead_id"].is_unique and len(current) == 500
    assert not history.duplicated(list(ScoreOutput.HISTORY_KEY)).any()
    assert_same(current, normalized(frame))
    assert_same(history, normalized(frame))


def test_leavers_are_removed_from_current_but_kept_in_history(db: Db) -> None:
    table = db.new_table()
    first = make_scores(500, seed=5)
    write_scores(first, db.url, table)
    stay = first.iloc[50:]  # leads 0-49 converted or were disqualified
    summary = write_scores(stay, db.url, table)
    assert summary.rows_removed == 50 and summary.history_rows_added == 0
    assert_same(read_table(db.url, table), normalized(stay))
    assert_same(read_table(db.url, f"{table}_history"), normalized(first))


def test_new_as_of_appends_history(db: Db) -> None:
    table = db.new_table()
    first = make_scores(500, seed=6)
    second = make_scores(450, as_of="2025-02-28", seed=7, ids=range(100, 550))
    write_scores(first, db.url, table)
    summary = write_scores(second, db.url, table)
    assert (summary.rows_removed, summary.history_rows_added) == (100, 450)
    assert_same(read_table(db.url, table), normalized(second))
    assert_same(read_table(db.url, f"{table}_history"), normalized(first, second))


def test_rescoring_the_same_as_of_updates_history_in_place(db: Db) -> None:
    table = db.new_table()
    first = make_scores(300, seed=8)
    rescored = make_scores(300, seed=9)  # same leads, as_of and version; other scores
    write_scores(first, db.url, table)
    summary = write_scores(rescored, db.url, table)
    assert (summary.history_rows_added, summary.history_rows_updated) == (0, 300)
    assert "updated 300" in str(summary)
    assert_same(read_table(db.url, table), normalized(rescored))
    assert_same(read_table(db.url, f"{table}_history"), normalized(rescored))


def test_rows_of_one_batch_may_differ_in_as_of_and_version(db: Db) -> None:
    table = db.new_table()
    mixed = pd.concat(
        [
            make_scores(100, seed=10, version="m/1", ids=range(0, 100)),
            make_scores(100, as_of="2025-02-28", seed=11, version="m/2", ids=range(100, 200)),
        ],
        ignore_index=True,
    )
    write_scores(mixed, db.url, table)
    later = make_scores(200, as_of="2025-02-28", seed=12, version="m/2")
    summary = write_scores(later, db.url, table)
    # leads 100-199 already have (2025-02-28, v2) rows: updated, not added
    assert (summary.history_rows_added, summary.history_rows_updated) == (100, 100)
    history = read_table(db.url, f"{table}_history")
    assert_same(history, normalized(mixed.iloc[:100], later))


def test_existing_table_with_other_columns_is_left_alone(tmp_path: Path) -> None:
    import sqlite3

    path = tmp_path / "crm.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE lead_scores (lead_id TEXT PRIMARY KEY, points INTEGER)")
        conn.execute("INSERT INTO lead_scores VALUES ('a', 1)")
    with pytest.raises(WritebackError, match="lacks column.*as_of.*intact"):
        write_scores(make_scores(10), f"sqlite:///{path}")
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT * FROM lead_scores").fetchall() == [("a", 1)]
        names = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert names == {"lead_scores"}


def test_schema_qualified_table_names(db: Db) -> None:
    table = db.new_table()
    schema = "main" if db.kind == "sqlite" else "public"
    frame = make_scores(50, seed=13)
    summary = write_scores(frame, db.url, f"{schema}.{table}")
    assert summary.table == f"{schema}.{table}"
    assert_same(read_table(db.url, table), normalized(frame))


# --- PostgreSQL specifics -------------------------------------------------------------------


def test_views_grants_indexes_and_comments_on_the_current_table_survive_runs(
    pg_url: str, pg_tables: Any
) -> None:
    """What users put on the current table (a view over it, a grant, an index, a comment)
    still works after two runs: the writer never drops, renames or truncates the table,
    and the index is copied onto each run's table (where the current rows are)."""
    table = pg_tables("keep")
    suffix = uuid.uuid4().hex[:8]
    view, role = f"wbh_view_{suffix}", f"wbh_reader_{suffix}"
    first = make_scores(300, seed=70)
    write_scores(first, pg_url, table)
    _pg_execute(f'CREATE ROLE "{role}" NOLOGIN')
    try:
        _pg_execute(f'CREATE VIEW "{view}" AS SELECT lead_id, score FROM "{table}" WHERE score >= 0')
        _pg_execute(f'GRANT SELECT ON "{table}" TO "{role}"')
        _pg_execute(f'GRANT SELECT ON "{view}" TO "{role}"')
        _pg_execute(f'CREATE INDEX "{table}_by_score" ON "{table}" (score)')
        _pg_execute(f"COMMENT ON TABLE \"{table}\" IS 'scores for the sales team'")
        second = make_scores(280, as_of="2025-02-28", seed=71, ids=range(20, 300))
        third = make_scores(290, as_of="2025-03-31", seed=72, ids=range(10, 300))
        for frame in (second, third):
            write_scores(frame, pg_url, table)
        seen = _pg_execute(f'SELECT count(*), min(lead_id) FROM "{view}"')
        assert seen == [(290, "00Q000000010")]
        granted = _pg_execute(
            "SELECT has_table_privilege(%s, %s, 'SELECT'), has_table_privilege(%s, %s, 'SELECT')",
            (role, f'"{table}"', role, f'"{view}"'),
        )
        assert granted == [(True, True)]
        indexes = _pg_execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (table,))
        assert f"{table}_by_score" in {r[0] for r in indexes}
        copied = _pg_execute("SELECT indexdef FROM pg_indexes WHERE tablename = %s", (f"{table}_r3",))
        assert sorted(d.split(" USING ")[1] for d in (r[0] for r in copied)) == ["btree (lead_id)", "btree (score)"]
        comment = _pg_execute("SELECT obj_description(%s::regclass, 'pg_class')", (f'"{table}"',))
        assert comment == [("scores for the sales team",)]
        # the role reads the view and the table through its grants
        _pg_execute(f'SET ROLE "{role}"; SELECT count(*) FROM "{view}"; RESET ROLE')
        assert_same(read_table(pg_url, table), normalized(third))
    finally:
        _pg_execute(f'DROP VIEW IF EXISTS "{view}"')
        _pg_execute(f'DROP TABLE IF EXISTS "{table}", "{table}_history" CASCADE')
        _pg_execute(f'DROP ROLE IF EXISTS "{role}"')


def test_postgres_scheme_aliases_and_hidden_password(pg_url: str, pg_tables: Any) -> None:
    from sqlalchemy.engine import make_url

    table = pg_tables()
    url = make_url(pg_url)
    # trust authentication ignores the password; it must still never be shown
    with_password = url.set(password="Sup3rS3cret!").render_as_string(hide_password=False)
    for scheme in ("postgres://", "postgresql://"):
        target = scheme + with_password.split("://", 1)[1]
        summary = write_scores(make_scores(20), target, table)
        assert "Sup3rS3cret" not in str(summary) and "Sup3rS3cret" not in summary.target
        assert "***" in summary.target and summary.target.startswith(scheme)


def _run_tables(table: str, parent: str) -> list[str]:
    rows = _pg_execute(
        "SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid "
        "WHERE i.inhparent = %s::regclass ORDER BY 1",
        (f'"{parent}"',),
    )
    return [r[0] for r in rows]


def test_postgresql_run_tables_hold_each_run_once(pg_url: str, pg_tables: Any) -> None:
    """Each run's rows live in one run table, a child of the current table while it is the
    latest run and of the history for good; the parents hold no rows of their own. A re-run
    of the same as-of replaces the history rows it repeats, and a run table it leaves
    empty is dropped."""
    table = pg_tables("runs")
    first = make_scores(300, seed=21)
    second = make_scores(280, as_of="2025-02-28", seed=22, ids=range(40, 320))
    write_scores(first, pg_url, table)
    assert _run_tables(table, table) == [f"{table}_r1"]
    write_scores(second, pg_url, table)
    assert _run_tables(table, table) == [f"{table}_r2"]
    assert _run_tables(table, f"{table}_history") == [f"{table}_r1", f"{table}_r2"]
    own = _pg_execute(f'SELECT (SELECT count(*) FROM ONLY "{table}"), (SELECT count(*) FROM ONLY "{table}_history")')
    assert own == [(0, 0)]
    assert _pg_execute(f'SELECT count(*) FROM ONLY "{table}_r2"') == [(280,)]
    # the same as-of again (rescored): r2's rows are replaced, r2 left empty and dropped
    again = make_scores(280, as_of="2025-02-28", seed=23, ids=range(40, 320))
    summary = write_scores(again, pg_url, table)
    assert summary.history_rows_added == 0 and summary.history_rows_updated == 280
    assert _run_tables(table, table) == [f"{table}_r3"]
    assert _run_tables(table, f"{table}_history") == [f"{table}_r1", f"{table}_r3"]
    assert_same(read_table(pg_url, table), normalized(again))
    assert_same(read_table(pg_url, f"{table}_history"), normalized(first, again))
    # the history key stays unique across the run tables
    doubled = _pg_execute(
        f'SELECT count(*) FROM (SELECT 1 FROM "{table}_history" GROUP BY as_of, model_version, lead_id HAVING count(*) > 1) d'
    )
    assert doubled == [(0,)]


def test_postgresql_url_options_are_kept_beside_the_lock_timeout(pg_url: str) -> None:
    """A URL's own ``options`` (here a search_path) still apply: the writer adds its lock
    timeout to them instead of replacing them."""
    schema = f"wbh_opt_{uuid.uuid4().hex[:8]}"
    _pg_execute(f'CREATE SCHEMA "{schema}"')
    try:
        url = f"{pg_url}?options=-csearch_path%3D{schema}"
        write_scores(make_scores(20, seed=5), url, "scores")
        found = _pg_execute(
            "SELECT tablename FROM pg_tables WHERE schemaname = %s ORDER BY 1", (schema,)
        )
        assert [r[0] for r in found] == ["scores", "scores_history", "scores_r1"]
        assert_same(read_table(url, "scores"), normalized(make_scores(20, seed=5)))
    finally:
        _pg_execute(f'DROP SCHEMA IF EXISTS "{schema}" CASCADE')


def test_postgresql_tables_of_the_earlier_layout_take_run_tables(pg_url: str, pg_tables: Any) -> None:
    """Tables an earlier version wrote (the current rows in the current table itself, the
    history's rows in the history) move to run tables on their next run: same final tables
    as tables written by run tables from the start, the old history rows kept in place."""
    first = make_scores(400, seed=14)
    second = make_scores(350, as_of="2025-02-28", seed=15, ids=range(80, 430))
    fresh, old = pg_tables(), pg_tables()
    write_scores(first, pg_url, fresh)
    for suffix in ("", "_history"):
        _pg_execute(f'CREATE TABLE "{old}{suffix}" (LIKE "{fresh}{suffix}" INCLUDING ALL)')
        _pg_execute(f'INSERT INTO "{old}{suffix}" SELECT * FROM "{fresh}{suffix}"')
    for frame in (second, second):
        write_scores(frame, pg_url, fresh)
        write_scores(frame, pg_url, old)
    assert _tables_differ(pg_url, fresh, old) == []
    assert_same(read_table(pg_url, old), normalized(second))
    own = _pg_execute(f'SELECT (SELECT count(*) FROM ONLY "{old}"), (SELECT count(*) FROM ONLY "{old}_history")')
    assert own == [(0, 400)]  # the first run's history rows stay where the old version wrote them


def test_engine_url_maps_postgresql_to_psycopg() -> None:
    assert engine_url("postgresql://u:p@h:5433/db") == "postgresql+psycopg://u:p@h:5433/db"
    assert engine_url("postgres://u@h/db") == "postgresql+psycopg://u@h/db"
    assert engine_url("sqlite:///x.db") == "sqlite:///x.db"
    with pytest.raises(WritebackError):
        engine_url("scores.csv")


def test_password_never_appears_in_errors(caplog: pytest.LogCaptureFixture, tmp_path: Path) -> None:
    secret = "Pa55w0rd-XYZ"
    caplog.set_level(logging.DEBUG)
    targets = [
        f"postgresql://scorer:{secret}@127.0.0.1:1/crm",  # connection refused
        f"postgresql+psycopg://scorer:{secret}@127.0.0.1:1/crm",
        f"mysql://scorer:{secret}@127.0.0.1/crm",  # unsupported scheme
        f"postgresql+pg8000://scorer:{secret}@127.0.0.1/crm",  # unsupported driver
        f"postgresql://scorer:{secret}@[::1/crm",  # not a valid URL
    ]
    for target in targets:
        with pytest.raises(WritebackError) as info:
            write_scores(make_scores(5), target)
        texts = [str(info.value), repr(info.value)]
        cause: BaseException | None = info.value
        while cause is not None:
            texts += [str(cause), repr(cause)]
            cause = cause.__cause__ or cause.__context__
        assert not any(secret in t for t in texts), target
    refused = str(pytest.raises(WritebackError, write_scores, make_scores(5), targets[0]).value)
    assert "scorer:***@127.0.0.1:1" in refused and "intact" in refused
    assert secret not in caplog.text


def test_permission_error_is_a_writeback_error(pg_url: str, pg_tables: Any) -> None:
    import psycopg
    from sqlalchemy.engine import make_url

    role = f"ro_{uuid.uuid4().hex[:8]}"
    table = pg_tables()
    write_scores(make_scores(30), pg_url, table)
    try:
        _pg_execute(f'CREATE ROLE "{role}" LOGIN')
    except psycopg.errors.InsufficientPrivilege:
        pytest.skip("the test user may not create a read-only role")
    try:
        _pg_execute(f'GRANT SELECT ON "{table}", "{table}_history" TO "{role}"')
        as_reader = make_url(pg_url).set(username=role, password="s3cret-ro")
        url = as_reader.render_as_string(hide_password=False)
        with pytest.raises(WritebackError, match="permission denied|intact") as info:
            write_scores(make_scores(30, seed=1), url, table)
        assert "s3cret-ro" not in str(info.value)
        assert_same(read_table(pg_url, table), normalized(make_scores(30)))
    finally:
        _pg_execute(f'REVOKE ALL ON "{table}", "{table}_history" FROM "{role}"')
        _pg_execute(f'DROP ROLE IF EXISTS "{role}"')


WRITER = textwrap.dedent(
    """
    import json
    import os
    import sys
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy import event

    PAUSE_ON = os.environ.get("CONVERT_TEST_PAUSE_ON")

    @event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _show(conn, cursor, statement, parameters, context, executemany):
        print("SQL " + " ".join(statement.split())[:200], flush=True)
        if PAUSE_ON and statement.startswith(PAUSE_ON):
            print("PAUSED", flush=True)
            sys.stdin.readline()  # the test resumes the run by writing a line

    from convert.exceptions import ConvertError
    from convert.io.writers import WriteGuards, write_scores

    frame = pd.read_parquet(sys.argv[1])
    guards = WriteGuards(**json.loads(sys.argv[4])) if len(sys.argv) > 4 else None
    print("START", flush=True)
    try:
        write_scores(frame, sys.argv[2], sys.argv[3], guards=guards)
    except ConvertError as exc:  # as the CLI does: the message, exit code 2
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(exc.exit_code)
    print("DONE", flush=True)
    """
)


class Writer:
    """A writer in its own process; with *pause_on*, it stops before the first statement
    starting with that text (holding what it holds) until :meth:`resume`."""

    def __init__(
        self,
        batch: Path,
        url: str,
        table: str,
        guards: dict[str, Any] | None = None,
        pause_on: str | None = None,
    ) -> None:
        env = dict(os.environ)
        env.pop("CONVERT_TEST_PAUSE_ON", None)
        if pause_on:
            env["CONVERT_TEST_PAUSE_ON"] = pause_on
        args = [sys.executable, "-c", WRITER, str(batch), url, table]
        if guards is not None:
            import json

            args.append(json.dumps(guards))
        self.proc = subprocess.Popen(
            args,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        self.seen: list[str] = []
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def wait_for(self, text: str, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while True:
            line = self.lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail(f"the writer ended before {text!r}: " + self.finish()[1])
            self.seen.append(line)
            if line.startswith(text):
                return

    def resume(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write("\n")
        self.proc.stdin.flush()

    def finish(self, timeout: float = 300) -> tuple[int, str]:
        """(exit code, stderr) once the process ended."""
        try:
            _, err = self.proc.communicate(timeout=timeout)
        finally:
            if self.proc.poll() is None:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode, err


#: the first statement a writer sends after its lock and guards (SQLite deletes the leavers;
#: PostgreSQL creates the run's table)
_AFTER_GUARDS = {"sqlite": "DELETE FROM", "postgresql": "CREATE TABLE"}


def _spellings(db: Db, table: str) -> tuple[str, str]:
    """Two names of one table: bare and schema-qualified."""
    return table, f"{'main' if db.kind == 'sqlite' else 'public'}.{table}"


def _wait_until_waiting_for_the_lock(db: Db, run: Writer, table: str) -> None:
    """Block until *run* waits for the write-back lock another run holds on *table*
    (PostgreSQL: a wait for that table's advisory lock in pg_locks; SQLite: its BEGIN
    IMMEDIATE issued)."""
    if db.kind == "postgresql":
        deadline = time.monotonic() + 60
        while not _pg_waiting_on_advisory_lock(table):
            assert time.monotonic() < deadline, "the second run never waited for the lock"
            time.sleep(0.05)
    else:
        run.wait_for("SQL BEGIN IMMEDIATE")


def _pg_waiting_on_advisory_lock(table: str) -> int:
    """Waits for *table*'s write-back lock in this database only: another test (a second
    pytest-xdist worker) or another database's run waiting on a lock of its own is not one."""
    from convert.io.writers.postgres import lock_key

    key = lock_key(f"public.{table}") & 0xFFFFFFFFFFFFFFFF  # a bigint key: classid high, objid low
    rows = _pg_execute(
        "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted"
        " AND database = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND classid::bigint = %s AND objid::bigint = %s AND objsubid = 1",
        (key >> 32, key & 0xFFFFFFFF),
    )
    return int(rows[0][0])


@pytest.mark.slow
def test_concurrent_runs_on_t_and_schema_t_are_serialized(db: Db, tmp_path: Path) -> None:
    """A run on ``public.t`` (``main.t``) waits for a run on ``t`` that holds the lock, then
    checks its guards against what that run committed."""
    table = db.new_table()
    bare, qualified = _spellings(db, table)
    first = make_scores(5_000, seed=40)
    write_scores(first, db.url, bare)
    a_batch = make_scores(5_000, as_of="2025-02-28", seed=41)
    b_batch = make_scores(5_000, as_of="2025-02-28", seed=42)
    files = [tmp_path / "a.parquet", tmp_path / "b.parquet"]
    a_batch.to_parquet(files[0])
    b_batch.to_parquet(files[1])

    a = Writer(files[0], db.url, bare, pause_on=_AFTER_GUARDS[db.kind])  # after lock + guards
    a.wait_for("PAUSED")
    b = Writer(files[1], db.url, qualified)
    try:
        _wait_until_waiting_for_the_lock(db, b, table)
        time.sleep(1.0)
        assert b.proc.poll() is None  # still waiting: A holds the table
        assert_same(read_table(db.url, bare), normalized(first))  # nothing committed yet
    finally:
        a.resume()
    assert a.finish() == (0, "")
    code, err = b.finish()
    assert code == 0, err
    # B committed after A: the current table is B's batch; A's history rows were updated by B
    assert_same(read_table(db.url, bare), normalized(b_batch))
    assert_same(read_table(db.url, f"{bare}_history"), normalized(first, b_batch))


@pytest.mark.slow
def test_of_two_concurrent_runs_the_older_as_of_no_longer_wins(db: Db, tmp_path: Path) -> None:
    """Finding 2: of two concurrent runs, whichever committed last won, even with the older
    as-of. The guards are read under the lock: the older run, waiting, sees the newer
    run's rows and is refused (exit code 2), whatever the order of the commits."""
    table = db.new_table()
    bare, qualified = _spellings(db, table)
    write_scores(make_scores(5_000, as_of="2025-01-31", seed=47), db.url, bare)
    newer = make_scores(5_000, as_of="2025-03-31", seed=48)
    files = [tmp_path / "newer.parquet", tmp_path / "older.parquet"]
    newer.to_parquet(files[0])
    make_scores(5_000, as_of="2025-02-28", seed=49).to_parquet(files[1])
    a = Writer(files[0], db.url, bare, pause_on=_AFTER_GUARDS[db.kind])  # holds the lock
    a.wait_for("PAUSED")
    b = Writer(files[1], db.url, qualified)  # older, but staged and waiting before A commits
    try:
        _wait_until_waiting_for_the_lock(db, b, table)
    finally:
        a.resume()
    assert a.finish() == (0, "")
    code, err = b.finish()
    assert code == 2 and "older than the newest as-of 2025-03-31" in err and "--allow-older" in err
    assert_same(read_table(db.url, bare), normalized(newer))


@pytest.mark.slow
def test_a_stuck_lock_ends_in_a_clear_error_within_the_timeout(db: Db, tmp_path: Path) -> None:
    """Another run holding the lock (paused) makes a run on the other spelling stop with
    exit code 2 after writeback.lock_timeout_s, changing nothing."""
    table = db.new_table()
    bare, qualified = _spellings(db, table)
    first = make_scores(2_000, seed=43)
    write_scores(first, db.url, qualified)
    batch = tmp_path / "b.parquet"
    make_scores(2_000, as_of="2025-02-28", seed=44).to_parquet(batch)
    holder = Writer(batch, db.url, qualified, pause_on=_AFTER_GUARDS[db.kind])
    holder.wait_for("PAUSED")
    try:
        started = time.monotonic()
        waiter = Writer(batch, db.url, bare, guards={"lock_timeout_s": 2.0})
        code, err = waiter.finish(timeout=60)
        elapsed = time.monotonic() - started
    finally:
        holder.resume()
    assert code == 2, err
    expected = qualified  # the message names the table by its schema-qualified name
    assert f"another run holds {expected}" in err and "Traceback" not in err
    assert 2.0 <= elapsed < 60, elapsed  # 2 s of waiting + start-up and staging; not 600 s
    assert holder.finish()[0] == 0


def test_sqlite_reader_held_open_does_not_block_the_write(tmp_path: Path) -> None:
    """WAL mode: an open read transaction (a BI tool, a CRM sync) never blocks the commit,
    also for a database created in the old rollback-journal mode."""
    import sqlite3

    path = tmp_path / "crm.db"
    url = f"sqlite:///{path}"
    with sqlite3.connect(path) as conn:  # an existing file, rollback-journal mode
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        conn.execute("CREATE TABLE other (x INTEGER)")
    first = make_scores(300, seed=45)
    write_scores(first, url, "t")
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    reader = sqlite3.connect(path, isolation_level=None)
    try:
        reader.execute("BEGIN")
        assert reader.execute("SELECT count(*) FROM t").fetchone() == (300,)  # holds a snapshot
        second = make_scores(300, as_of="2025-02-28", seed=46)
        started = time.monotonic()
        write_scores(second, url, "t", guards=WriteGuards(lock_timeout_s=5))
        assert time.monotonic() - started < 5
        # the reader still sees its snapshot; a new transaction sees the new scores
        assert reader.execute("SELECT max(as_of) FROM t").fetchone()[0].startswith("2025-01-31")
        reader.execute("COMMIT")
        assert reader.execute("SELECT max(as_of) FROM t").fetchone()[0].startswith("2025-02-28")
    finally:
        reader.close()
    assert_same(read_table(url, "t"), normalized(second))


# --- guards ---------------------------------------------------------------------------------


def _state(url: str, table: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    return read_table(url, table), read_table(url, f"{table}_history")


def _assert_unchanged(url: str, table: str, before: tuple[pd.DataFrame, pd.DataFrame]) -> None:
    after = _state(url, table)
    assert_same(after[0], before[0])
    assert_same(after[1], before[1])


def test_shrink_guard_refuses_a_partial_batch(db: Db) -> None:
    """Finding 2: scoring a partial export removed 2,053 of 2,296 current scores, exit 0."""
    table = db.new_table()
    full = make_scores(2_296, seed=50)
    write_scores(full, db.url, table)
    partial = make_scores(243, seed=51, ids=range(243))  # a partial export
    before = _state(db.url, table)
    with pytest.raises(WriteRefusedError) as info:
        write_scores(partial, db.url, table)
    message = str(info.value)
    assert "remove 2,053 of the 2,296 current rows" in message and "--allow-shrink" in message
    assert "max_removed_share" in message and "Nothing was changed" in message
    _assert_unchanged(db.url, table, before)
    # up to the share is fine; a stricter setting refuses it
    most = make_scores(2_000, seed=52, ids=range(2_000))  # removes 296 = 12.9 %
    with pytest.raises(WriteRefusedError, match="12.9%"):
        write_scores(most, db.url, table, guards=WriteGuards(max_removed_share=0.1))
    assert write_scores(most, db.url, table).rows_removed == 296
    # --allow-shrink writes the partial batch
    summary = write_scores(partial, db.url, table, guards=WriteGuards(allow_shrink=True))
    assert summary.rows_removed == 2_000 - 243
    assert_same(read_table(db.url, table), normalized(partial))



def test_shrink_guard_on_a_newer_run(db: Db) -> None:
    """A run newer than every current row (PostgreSQL replaces the rows first, then deletes
    the rows of older runs): the guard counts the same leavers, a refusal changes nothing,
    and an allowed run leaves exactly the batch, with every run in the history."""
    table = db.new_table()
    full = make_scores(1_000, seed=53)
    write_scores(full, db.url, table)
    partial = make_scores(300, as_of="2025-02-28", seed=54, ids=range(500, 800))
    before = _state(db.url, table)
    with pytest.raises(WriteRefusedError, match="remove 700 of the 1,000 current rows"):
        write_scores(partial, db.url, table)
    _assert_unchanged(db.url, table, before)
    summary = write_scores(partial, db.url, table, guards=WriteGuards(allow_shrink=True))
    assert (summary.rows_removed, summary.history_rows_added) == (700, 300)
    assert_same(read_table(db.url, table), normalized(partial))
    history = read_table(db.url, f"{table}_history")
    assert len(history) == 1_300
    # two as-of values in one newer batch, a leaver and a new lead
    mixed = pd.concat(
        [
            make_scores(150, as_of="2025-03-31", seed=55, ids=range(500, 650)),
            make_scores(151, as_of="2025-04-30", seed=56, ids=range(650, 801)),
        ],
        ignore_index=True,
    )
    summary = write_scores(mixed, db.url, table)
    assert (summary.rows_removed, summary.rows_written) == (0, 301)
    assert_same(read_table(db.url, table), normalized(mixed))

def test_older_as_of_is_refused_unless_allowed(db: Db) -> None:
    """Finding 2: a run with an older --as-of silently replaced newer scores."""
    table = db.new_table()
    newer = make_scores(500, as_of="2025-03-31", seed=53)
    write_scores(newer, db.url, table)
    older = make_scores(500, as_of="2025-02-28", seed=54)
    before = _state(db.url, table)
    with pytest.raises(WriteRefusedError) as info:
        write_scores(older, db.url, table)
    message = str(info.value)
    assert "as-of 2025-02-28 00:00:00 is older than the newest as-of 2025-03-31" in message
    assert "--allow-older" in message
    _assert_unchanged(db.url, table, before)
    # a re-run at the same as-of is fine
    again = make_scores(500, as_of="2025-03-31", seed=55)
    assert write_scores(again, db.url, table).history_rows_updated == 500
    # allowed: the current table takes the older run, the history appends it
    summary = write_scores(older, db.url, table, guards=WriteGuards(allow_older=True))
    assert summary.history_rows_added == 500
    assert_same(read_table(db.url, table), normalized(older))
    assert_same(read_table(db.url, f"{table}_history"), normalized(again, older))


def test_another_model_is_refused_unless_replace(db: Db) -> None:
    """Finding 2: scoring a flat model into the event-mode table removed all its scores."""
    table = db.new_table()
    event_scores = make_scores(400, seed=56, version="lead-conversion/3")
    write_scores(event_scores, db.url, table)
    flat_scores = make_scores(
        300, seed=57, version="lead-conversion-flat/1", ids=range(10_000, 10_300)
    )
    before = _state(db.url, table)
    with pytest.raises(WriteRefusedError) as info:
        write_scores(flat_scores, db.url, table)
    message = str(info.value)
    assert "holds scores of model 'lead-conversion'" in message
    assert "'lead-conversion-flat'" in message and "--replace" in message
    _assert_unchanged(db.url, table, before)
    # a new version of the same model is the same model
    v4 = make_scores(400, seed=58, version="lead-conversion/4")
    write_scores(v4, db.url, table)
    # --replace: all of the other model's rows go (no shrink refusal), history keeps both
    summary = write_scores(flat_scores, db.url, table, guards=WriteGuards(replace=True))
    assert (summary.rows_removed, summary.history_rows_added) == (400, 300)
    assert_same(read_table(db.url, table), normalized(flat_scores))
    assert_same(read_table(db.url, f"{table}_history"), normalized(event_scores, v4, flat_scores))


def test_a_batch_of_two_models_is_refused(tmp_path: Path) -> None:
    mixed = pd.concat(
        [make_scores(5, version="a/1"), make_scores(5, version="b/1", ids=range(5, 10))],
        ignore_index=True,
    )
    with pytest.raises(WriteRefusedError, match="2 models"):
        write_scores(mixed, f"sqlite:///{tmp_path / 's.db'}")
    assert not (tmp_path / "s.db").exists()


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_targets_are_guarded_too(tmp_path: Path, suffix: str) -> None:
    path = tmp_path / f"scores{suffix}"
    full = make_scores(1_000, as_of="2025-03-31", seed=60, version="m/1")
    write_scores(full, path)
    original = path.read_bytes()
    refusals = [
        (make_scores(100, as_of="2025-03-31", seed=61, version="m/1"), "remove 900 of"),
        (make_scores(1_000, as_of="2025-02-28", seed=62, version="m/1"), "older than"),
        (make_scores(1_000, as_of="2025-03-31", seed=63, version="n/1"), "model 'm'"),
    ]
    for frame, match in refusals:
        with pytest.raises(WriteRefusedError, match=match):
            write_scores(frame, path)
        assert path.read_bytes() == original
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name]  # no lock or temp file
    write_scores(refusals[0][0], path, guards=WriteGuards(allow_shrink=True))
    assert_same(read_table(path), normalized(refusals[0][0]))
    # a file that is not a scores file is overwritten only with replace
    path.write_text("name,value\nx,1\n")
    with pytest.raises(WriteRefusedError, match="not a scores file"):
        write_scores(full, path)
    write_scores(full, path, guards=WriteGuards(replace=True))
    assert_same(read_table(path), normalized(full))


def test_file_lock_times_out_while_another_run_holds_it(tmp_path: Path) -> None:
    from convert.io.writers import file_lock

    path = tmp_path / "scores.csv"
    write_scores(make_scores(10), path)
    before = path.read_bytes()
    with file_lock(path, 1.0):
        started = time.monotonic()
        with pytest.raises(WriteLockedError, match=f"another run holds {path}"):
            write_scores(make_scores(10, seed=1), path, guards=WriteGuards(lock_timeout_s=0.5))
        assert 0.5 <= time.monotonic() - started < 5
    assert path.read_bytes() == before
    write_scores(make_scores(10, seed=1), path)  # released: the next run goes through


def test_guards_come_from_the_writeback_section() -> None:
    from convert.config import Config

    config = Config.from_dict({"writeback": {"max_removed_share": 0.5, "lock_timeout_s": 30}})
    guards = WriteGuards.from_config(config.writeback, allow_older=True)
    assert guards == WriteGuards(
        max_removed_share=0.5, allow_shrink=False, allow_older=True, lock_timeout_s=30.0
    )
    assert Config().writeback.max_removed_share == 0.2 and Config().writeback.lock_timeout_s == 600
    with pytest.raises(WritebackError, match="max_removed_share"):
        WriteGuards(max_removed_share=1.5)


# --- killed writers -------------------------------------------------------------------------


@dataclass
class KillCase:
    """A small previous state, a big next batch, and the reference tables of both runs."""

    previous: pd.DataFrame
    batch_file: Path
    reference: str


def _kill_case(url: str, reference: str, tmp: Path) -> KillCase:
    previous = make_scores(20_000, seed=30)
    batch = make_scores(KILL_ROWS, as_of="2025-02-28", seed=31, ids=range(1_000, 1_000 + KILL_ROWS))
    batch_file = tmp / "batch.parquet"
    batch.to_parquet(batch_file)
    write_scores(previous, url, reference)  # the uninterrupted run, on its own table
    write_scores(batch, url, reference)
    return KillCase(previous, batch_file, reference)


@pytest.fixture(scope="module")
def sqlite_kill_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[str, KillCase]:
    tmp = tmp_path_factory.mktemp("kill-sqlite")
    url = f"sqlite:///{tmp / 'scores.db'}"
    return url, _kill_case(url, "reference", tmp)


@pytest.fixture(scope="module")
def pg_kill_case(
    pg_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[str, KillCase]]:
    reference = unique_table("ref")
    try:
        yield pg_url, _kill_case(pg_url, reference, tmp_path_factory.mktemp("kill-pg"))
    finally:
        _pg_execute(f'DROP TABLE IF EXISTS "{reference}", "{reference}_history" CASCADE')


def _tables_differ(url: str, left: str, right: str) -> list[str]:
    """Rows in one table and not the other (exact, typed comparison in the database)."""
    import sqlalchemy as sa

    engine = _inspect(url)
    problems = []
    try:
        with engine.connect() as conn:
            except_ = sa.except_all if engine.dialect.name == "postgresql" else sa.except_
            for suffix in ("", "_history"):
                a, b = sa.table(left + suffix), sa.table(right + suffix)
                rows_a, rows_b = (sa.select(sa.text("*")).select_from(t) for t in (a, b))
                counts = [
                    conn.execute(sa.select(sa.func.count()).select_from(t)).scalar_one()
                    for t in (a, b)
                ]
                extra, missing = (
                    conn.execute(
                        sa.select(sa.func.count()).select_from(except_(x, y).subquery())
                    ).scalar_one()
                    for x, y in ((rows_a, rows_b), (rows_b, rows_a))
                )
                if counts[0] != counts[1] or extra or missing:
                    problems.append(f"{a}: {counts}, {extra} extra rows, {missing} missing rows")
    finally:
        engine.dispose()
    return problems


def _run_and_kill(
    url: str,
    table: str,
    batch_file: Path,
    trigger: Callable[[str], bool],
    after: Callable[[], None],
) -> list[str]:
    """Start a writer, SIGKILL it once a printed statement matches *trigger* (then *after*)."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(batch_file), url, table],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    lines: queue.Queue[str | None] = queue.Queue()

    def pump() -> None:
        assert proc.stdout is not None
        for line in proc.stdout:
            lines.put(line.rstrip("\n"))
        lines.put(None)

    threading.Thread(target=pump, daemon=True).start()
    seen: list[str] = []
    deadline = time.monotonic() + 300
    try:
        while True:
            line = lines.get(timeout=max(0.1, deadline - time.monotonic()))
            if line is None:
                pytest.fail("the writer ended before the kill point:\n" + "\n".join(seen[-20:]))
            seen.append(line)
            if line.startswith("SQL ") and trigger(line[4:]):
                break
        after()
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, (
        f"the writer exited with {proc.returncode} before the kill: raise CONVERT_TEST_KILL_ROWS"
    )
    return seen


def _check_kill(
    url: str, case: KillCase, table: str, trigger: Callable[[str], bool], after: Callable[[], None]
) -> None:
    write_scores(case.previous, url, table)
    before = read_table(url, table), read_table(url, f"{table}_history")
    assert_same(before[0], normalized(case.previous))

    _run_and_kill(url, table, case.batch_file, trigger, after)

    # the previous tables, exactly
    assert_same(read_table(url, table), before[0])
    assert_same(read_table(url, f"{table}_history"), before[1])
    # a re-run ends where the uninterrupted run ended
    summary = write_scores(pd.read_parquet(case.batch_file), url, table)
    assert summary.rows_written == KILL_ROWS and summary.history_rows_updated == 0
    assert _tables_differ(url, table, case.reference) == []


def _sleep(seconds: float) -> Callable[[], None]:
    return lambda: time.sleep(seconds)


SQLITE_KILL_POINTS = {
    # executemany into the temporary staging table: the database file is not touched yet
    "staging": lambda t: lambda sql: sql.startswith(f'INSERT INTO "temp"."{t}__stage"'),
    # inside the switch transaction, leavers deleted, upserting the current table
    "switch-current": lambda t: lambda sql: sql.startswith(f'INSERT INTO "{t}" '),
    # the last statement of the switch: current fully rewritten, history half written
    "switch-history": lambda t: lambda sql: sql.startswith(f'INSERT INTO "{t}_history" '),
}


@pytest.mark.slow
@pytest.mark.xdist_group("kill_sqlite")  # one worker writes the reference once
@pytest.mark.parametrize("point", list(SQLITE_KILL_POINTS))
def test_sqlite_writer_killed_mid_write(sqlite_kill_case: tuple[str, KillCase], point: str) -> None:
    url, case = sqlite_kill_case
    table = unique_table("k")
    journal = Path(url.removeprefix("sqlite:///") + "-journal")
    _check_kill(url, case, table, SQLITE_KILL_POINTS[point](table), _sleep(0.2))
    if point.startswith("switch"):
        assert not journal.exists()  # the hot journal was rolled back by the next reader


def _pg_copy_running(table: str) -> Callable[[], None]:
    """Wait until the writer's COPY into *table* is running."""

    def wait() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = _pg_execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f'COPY "{table}"%',),
            )
            if rows[0][0]:
                time.sleep(0.2)
                return
            time.sleep(0.01)
        pytest.fail(f"the writer's COPY into {table} never showed in pg_stat_activity")

    return wait


def _pg_run_table_locked(table: str, run: str) -> Callable[[], None]:
    """Hold a reader's lock on the run table *run* (the current rows) until the writer's
    switch waits for it, and a second more, past the kill, then release it: the writer is
    killed with its run table loaded and keyed, inside the switch."""

    def hold() -> None:
        import psycopg

        locked, seen = threading.Event(), threading.Event()

        def run_reader() -> None:
            with psycopg.connect(_libpq_url(PG_URL)) as conn:
                conn.execute(f'LOCK TABLE "{run}" IN ACCESS SHARE MODE')
                locked.set()
                seen.wait(150)
                time.sleep(1.0)
                conn.rollback()

        threading.Thread(target=run_reader, daemon=True).start()
        assert locked.wait(60), f"could not lock {run}"
        deadline = time.monotonic() + 120
        try:
            while time.monotonic() < deadline:
                waiting = _pg_execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                    "AND query LIKE %s",
                    (f'ALTER TABLE "{run}" NO INHERIT "{table}"%',),
                )
                if waiting[0][0]:
                    return
                time.sleep(0.01)
        finally:
            seen.set()
        pytest.fail(f"the writer's switch never waited for {run}")

    return hold


PG_KILL_POINTS = {
    # COPY into the run's own table, inside the switch's transaction
    "copy-run": lambda t: (
        lambda sql: "pg_advisory_xact_lock" in sql,
        _pg_copy_running(f"{t}_r2"),
    ),
    # the run table loaded, building its primary key
    "run-keys": lambda t: (
        lambda sql: sql.startswith(f'ALTER TABLE "{t}_r2" ADD PRIMARY KEY'),
        _sleep(0.1),
    ),
    # the switch: the previous run table (held by a reader) leaving the current table
    "switch": lambda t: (
        lambda sql: "pg_advisory_xact_lock" in sql,
        _pg_run_table_locked(t, f"{t}_r1"),
    ),
}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.xdist_group("kill_pg")  # one worker writes the reference once
@pytest.mark.parametrize("point", list(PG_KILL_POINTS))
def test_postgresql_writer_killed_mid_write(
    pg_kill_case: tuple[str, KillCase], pg_tables: Any, point: str
) -> None:
    url, case = pg_kill_case
    table = pg_tables("k")
    trigger, after = PG_KILL_POINTS[point](table)
    _check_kill(url, case, table, trigger, after)
    # the killed run's table went with it: the re-run is r2, beside the previous run's r1
    assert _run_tables(table, f"{table}_history") == [f"{table}_r1", f"{table}_r2"]



@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("point", ["copy-run", "run-keys"])
def test_postgresql_first_run_killed_leaves_no_tables(
    pg_kill_case: tuple[str, KillCase], pg_tables: Any, point: str
) -> None:
    """The first run creates both tables and its run table inside its transaction and
    builds the run table's key after loading: killed while loading or building the key, no
    table is left behind, and the next run creates them with their keys."""
    url, case = pg_kill_case
    table = pg_tables("f")
    trigger, after = {
        "copy-run": (
            lambda sql: "pg_advisory_xact_lock" in sql,
            _pg_copy_running(f"{table}_r1"),
        ),
        "run-keys": (
            lambda sql: sql.startswith(f'ALTER TABLE "{table}_r1" ADD PRIMARY KEY'),
            _sleep(0.1),
        ),
    }[point]
    _run_and_kill(url, table, case.batch_file, trigger, after)
    deadline = time.monotonic() + 30
    while _pg_execute(
        "SELECT count(*) FROM pg_class WHERE relname IN (%s, %s, %s)",
        (table, f"{table}_history", f"{table}_r1"),
    )[0][0]:
        assert time.monotonic() < deadline, "a killed first run left a table behind"
        time.sleep(0.2)
    batch = pd.read_parquet(case.batch_file)
    write_scores(batch, url, table)
    assert_same(read_table(url, table), normalized(batch))
    keys = _pg_execute(
        "SELECT conrelid::regclass::text, conname FROM pg_constraint WHERE contype = 'p' "
        "AND conrelid IN (%s::regclass, %s::regclass) ORDER BY 1",
        (f'"{table}"', f'"{table}_history"'),
    )
    assert keys == [(table, f"{table}_pkey"), (f"{table}_history", f"{table}_history_pkey")]

# --- the score command: guards and locks end to end (issue 14, finding 2) -------------------


@pytest.fixture(scope="module")
def score_models(trained: Any, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Bundle folders of an event-mode model and a flat model, and the flat file."""
    from tests.conftest import FAST, flat_table

    from convert.config import Config
    from convert.model.train import train_flat
    from convert.sources.flat import load_flat
    from convert.sources.mapping import mapping_from_dict

    folder = tmp_path_factory.mktemp("models")
    result, _ = trained
    event = result.model.save(folder / "lead-conversion")
    report = folder / "report.csv"
    flat_table(1_000).to_csv(report, index=False)
    mapping = {"missing_values": ["Select"], "flat": {"categorical": ["Region"]}}
    table = load_flat(
        report, Config.from_dict(FAST), mapping_from_dict(mapping), target="Converted",
        id_column="Lead Id",
    )
    flat = train_flat(table, Config.from_dict(FAST), mapping_from_dict(mapping)).model
    (folder / "flat.yaml").write_text(
        "missing_values: [Select]\nflat:\n  categorical: [Region]\n  id: Lead Id\n"
    )
    return {
        "event": event,
        "flat": flat.save(folder / "lead-conversion-flat"),
        "report": report,
        "mapping": folder / "flat.yaml",
    }


def _partial_export(source: Path, target: Path, share: float) -> Path:
    """A copy of an export holding only the first *share* of its leads (an interrupted export)."""
    target.mkdir()
    leads = pd.read_csv(source / "leads.csv", dtype=str, keep_default_na=False)
    kept = set(leads["lead_id"].iloc[: int(len(leads) * share)])
    for file in source.glob("*.csv"):  # the tables, not the folder's cache of validated tables
        frame = pd.read_csv(file, dtype=str, keep_default_na=False)
        if "lead_id" in frame.columns:
            frame = frame[frame["lead_id"].isin(kept)]
        frame.to_csv(target / file.name, index=False)
    return target


def _cli(args: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    from convert.cli import main

    try:
        main(args)
        code = 0
    except SystemExit as exc:
        code = int(exc.code or 0)
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_score_command_guards(
    db: Db,
    score_models: dict[str, Path],
    sim_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """A partial export, an older --as-of and a flat model into the event table all exit 2
    with the flag to use, changing nothing; the flags then write, appending history."""
    import yaml
    from tests.conftest import FAST

    table = db.new_table()
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    base = ["--out", db.url, "--table", table, "--config", str(config)]
    event = ["score", "--model", str(score_models["event"]), *base]

    code, out, err = _cli([*event, "--data", str(sim_export), "--as-of", "2025-07-01"], capsys)
    assert code == 0, err
    first = _state(db.url, table)
    population = len(first[0])
    assert population > 500 and {v.split("/")[0] for v in first[0]["model_version"]} == {"lead-conversion"}

    # a partial export (a quarter of the leads) would remove most current scores
    partial = _partial_export(sim_export, tmp_path / "partial", 0.25)
    code, out, err = _cli([*event, "--data", str(partial), "--as-of", "2025-07-01"], capsys)
    assert code == 2 and "Traceback" not in err
    assert "refused: this run would remove" in err and "--allow-shrink" in err
    _assert_unchanged(db.url, table, first)

    # an older as-of would put older scores over newer ones
    code, out, err = _cli([*event, "--data", str(sim_export), "--as-of", "2025-06-01"], capsys)
    assert code == 2 and "is older than the newest as-of 2025-07-01" in err and "--allow-older" in err
    _assert_unchanged(db.url, table, first)

    # a flat model into the event-mode table
    flat = ["score", "--model", str(score_models["flat"]), "--data", str(score_models["report"]),
            "--mapping", str(score_models["mapping"]), "--as-of", "2025-07-02", *base]
    code, out, err = _cli(flat, capsys)
    assert code == 2 and "holds scores of model 'lead-conversion'" in err and "--replace" in err
    _assert_unchanged(db.url, table, first)

    # the flags write, and the history keeps every run
    code, out, err = _cli([*event, "--data", str(sim_export), "--as-of", "2025-06-01",
                           "--allow-older"], capsys)
    assert code == 0, err
    older = read_table(db.url, table)
    assert set(older["as_of"]) == {pd.Timestamp("2025-06-01")}
    history = read_table(db.url, f"{table}_history")
    assert len(history) == population + len(older)
    code, out, err = _cli([*event, "--data", str(partial), "--as-of", "2025-06-01",
                           "--allow-shrink"], capsys)
    assert code == 0, err
    assert len(read_table(db.url, table)) < len(older) / 2
    code, out, err = _cli([*flat, "--replace"], capsys)
    assert code == 0, err
    current = read_table(db.url, table)
    assert len(current) == 1_000 and {v.split("/")[0] for v in current["model_version"]} == {"lead-conversion-flat"}
    history = read_table(db.url, f"{table}_history")
    assert len(history) == population + len(older) + 1_000


@pytest.mark.slow
def test_score_command_stops_on_a_stuck_lock(
    db: Db,
    score_models: dict[str, Path],
    sim_export: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Another session holding the table (PostgreSQL: LOCK TABLE; SQLite: an open write
    transaction): the run stops with exit 2 after writeback.lock_timeout_s, changing nothing."""
    import sqlite3

    import yaml
    from tests.conftest import FAST

    table = db.new_table()
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump({**FAST, "writeback": {"lock_timeout_s": 2}}))
    args = ["score", "--model", str(score_models["event"]), "--data", str(sim_export),
            "--as-of", "2025-07-01", "--out", db.url, "--table", table, "--config", str(config)]
    code, _, err = _cli(args, capsys)
    assert code == 0, err
    before = _state(db.url, table)

    holder: Any
    if db.kind == "sqlite":
        holder = sqlite3.connect(db.url.removeprefix("sqlite:///"), isolation_level=None)
        holder.execute("BEGIN IMMEDIATE")
        expected = f"main.{table}"
    else:
        import psycopg

        holder = psycopg.connect(_libpq_url(db.url))
        holder.execute(f'LOCK TABLE "{table}" IN ACCESS EXCLUSIVE MODE')
        expected = f"public.{table}"
    try:
        started = time.monotonic()
        code, _, err = _cli(args, capsys)
        elapsed = time.monotonic() - started
    finally:
        holder.rollback() if db.kind == "postgresql" else holder.execute("ROLLBACK")
        holder.close()
    assert code == 2 and f"another run holds {expected}" in err and "Traceback" not in err
    assert "lock_timeout_s" in err
    _assert_unchanged(db.url, table, before)
    # the wait was the configured 2 s, not the default 600 s (scoring itself takes a few s)
    assert 2 <= elapsed < 60
    code, _, err = _cli(args, capsys)  # the lock released: the run goes through
    assert code == 0, err
