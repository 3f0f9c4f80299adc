"""convert.writeback against real files, a real SQLite file and a real PostgreSQL server.

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

from convert.exceptions import WritebackError
from convert.schema import ScoreOutput
from convert.writeback import WriteSummary, engine_url, read_table, write_scores

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
        reason = f"PostgreSQL at {shown} does not answer: {type(exc).__name__}: {exc}"
        if os.environ.get("CI") == "true":
            pytest.fail(reason + " (CI=true: PostgreSQL tests must run)")
        pytest.skip(reason)
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
        _pg_execute(f'DROP TABLE IF EXISTS "{name}", "{name}_history"')


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


def test_import_does_not_load_database_drivers() -> None:
    code = (
        "import sys, convert.writeback\n"
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

    second = make_scores(300, as_of="2025-02-28", seed=2, ids=range(200, 500))
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
    summary = write_scores(make_scores(0), url, "t", allow_empty=True)
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
    assert history_pk == ["lead_id", "as_of", "model_version"]
    expected = {
        "sqlite": ("TEXT", "TIMESTAMP", "REAL", "INTEGER"),
        "postgresql": ("TEXT", "TIMESTAMP", "DOUBLE PRECISION", "INTEGER"),
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
            make_scores(100, seed=10, ids=range(0, 100)),
            make_scores(100, as_of="2025-02-28", seed=11, version="v2", ids=range(100, 200)),
        ],
        ignore_index=True,
    )
    write_scores(mixed, db.url, table)
    later = make_scores(200, as_of="2025-02-28", seed=12, version="v2")
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


def test_postgresql_before_merge_gives_the_same_tables(
    pg_url: str, pg_tables: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Servers before 15 (no MERGE) take UPDATE ... FROM + INSERT: the same final tables."""
    import convert.writeback as writeback

    first = make_scores(400, seed=14)
    second = make_scores(350, as_of="2025-02-28", seed=15, ids=range(100, 450))
    with_merge, without_merge = pg_tables(), pg_tables()
    for frame in (first, second, second):
        write_scores(frame, pg_url, with_merge)
    monkeypatch.setattr(writeback, "_PG_MERGE_VERSION", (999,))
    summaries = [write_scores(frame, pg_url, without_merge) for frame in (first, second, second)]
    assert [s.rows_removed for s in summaries] == [0, 100, 0]
    assert _tables_differ(pg_url, with_merge, without_merge) == []
    assert_same(read_table(pg_url, without_merge), normalized(second))


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
    import sys
    import pandas as pd
    import sqlalchemy as sa
    from sqlalchemy import event

    @event.listens_for(sa.engine.Engine, "before_cursor_execute")
    def _show(conn, cursor, statement, parameters, context, executemany):
        print("SQL " + " ".join(statement.split())[:200], flush=True)

    from convert.writeback import write_scores

    frame = pd.read_parquet(sys.argv[1])
    print("START", flush=True)
    write_scores(frame, sys.argv[2], sys.argv[3])
    print("DONE", flush=True)
    """
)


def test_concurrent_writers_are_serialized(pg_url: str, pg_tables: Any, tmp_path: Path) -> None:
    table = pg_tables()
    batches = [
        make_scores(40_000, seed=20, ids=range(0, 40_000)),
        make_scores(40_000, as_of="2025-02-28", seed=21, ids=range(20_000, 60_000)),
    ]
    files = []
    for i, batch in enumerate(batches):
        files.append(tmp_path / f"b{i}.parquet")
        batch.to_parquet(files[-1])
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", WRITER, str(f), pg_url, table],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for f in files
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err.decode()
    current = read_table(pg_url, table)
    # one batch or the other, never a mix of the two
    assert any(current.equals(normalized(b)) for b in batches)
    assert_same(read_table(pg_url, f"{table}_history"), normalized(*batches))


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
        _pg_execute(f'DROP TABLE IF EXISTS "{reference}", "{reference}_history"')


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
@pytest.mark.parametrize("point", list(SQLITE_KILL_POINTS))
def test_sqlite_writer_killed_mid_write(sqlite_kill_case: tuple[str, KillCase], point: str) -> None:
    url, case = sqlite_kill_case
    table = unique_table("k")
    journal = Path(url.removeprefix("sqlite:///") + "-journal")
    _check_kill(url, case, table, SQLITE_KILL_POINTS[point](table), _sleep(0.2))
    if point.startswith("switch"):
        assert not journal.exists()  # the hot journal was rolled back by the next reader


def _pg_copy_running(table: str) -> Callable[[], None]:
    """Wait until the writer's COPY into its staging table is running."""

    def wait() -> None:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            rows = _pg_execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f'COPY "pg_temp"."{table}__stage"%',),
            )
            if rows[0][0]:
                time.sleep(0.2)
                return
            time.sleep(0.01)
        pytest.fail("the writer's COPY never showed in pg_stat_activity")

    return wait


PG_KILL_POINTS = {
    "staging": lambda t: (
        lambda sql: sql.startswith('CREATE TEMPORARY TABLE "pg_temp"'),
        _pg_copy_running(t),
    ),
    # MERGE (PostgreSQL 15+) or UPDATE ... FROM + INSERT into the current table
    "switch-current": lambda t: (
        lambda sql: sql.startswith((f'MERGE INTO "{t}" ', f'UPDATE "{t}" ')),
        _sleep(0.3),
    ),
    "switch-history": lambda t: (
        lambda sql: sql.startswith(f'INSERT INTO "{t}_history" '),
        _sleep(0.3),
    ),
}


@pytest.mark.slow
@pytest.mark.postgres
@pytest.mark.parametrize("point", list(PG_KILL_POINTS))
def test_postgresql_writer_killed_mid_write(
    pg_kill_case: tuple[str, KillCase], pg_tables: Any, point: str
) -> None:
    url, case = pg_kill_case
    table = pg_tables("k")
    trigger, after = PG_KILL_POINTS[point](table)
    _check_kill(url, case, table, trigger, after)
    # the killed session's temporary staging table went with it
    deadline = time.monotonic() + 30
    while _pg_execute("SELECT count(*) FROM pg_class WHERE relname = %s", (f"{table}__stage",))[0][
        0
    ]:
        assert time.monotonic() < deadline, "the staging table outlived the killed writer"
        time.sleep(0.2)
