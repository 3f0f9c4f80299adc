"""``convert-leads score`` with each lead's change since its previous score (issue 17), end to end.

The core (:mod:`convert.scoring.changes`) is tested in ``test_changes.py``; here the score
step writes the changes to real targets (files, SQLite, PostgreSQL) and reads them back:
the same columns and types everywhere, tables from before the columns migrated on the
first run, ``new`` on the first run, ``previous_score + sum(movements) = score`` through the
step, a re-run at the same as-of, the recheck under the lock, and the alerts.
"""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from conftest import require_postgres
from convert import steps
from convert.io.writers import read_previous, read_table, write_scores
from convert.io.writers.frames import Layout
from convert.schema import ScoreChanges as C
from convert.schema import ScoreOutput as O
from convert.scoring.alerts import DROPPED, ROUTED, TOP_GRADES, AlertOutput, alerts_of
from convert.scoring.changes import NEW, UNKNOWN
from convert.scoring.movements import FLAT_WHY, RunChanges, without_movements
from convert.scoring.score import iter_scores

T1, T2 = pd.Timestamp("2025-04-01"), pd.Timestamp("2025-05-01")
CHANGE_TYPES = {"previous_score": "integer", "previous_as_of": "timestamp", "score_change": "integer",
                "trend": "string", "change_1": "string", "change_2": "string", "change_3": "string",
                "events_seen": "integer"}


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> str:
    result, _ = trained
    return str(result.model.save(tmp_path_factory.mktemp("bundle") / "lead-conversion"))


def score(sim_export, config, as_of, out, bundle, **kwargs) -> steps.ScoreSummary:
    return steps.score_step(sim_export, config, as_of, out, bundle, progress=False, **kwargs)


def assert_adds_up(summary: steps.ScoreSummary) -> int:
    """previous_score + the sum of each lead's movements = score, for every exact lead."""
    scores = summary.scores
    assert summary.changes is not None
    moved, exact = summary.changes.movement_sums()
    assert len(moved) == len(scores)
    trend = scores[C.trend].to_numpy()
    assert (exact == ~np.isin(trend, [NEW, UNKNOWN])).all()
    prev = scores[C.previous_score].to_numpy(dtype="float64")
    assert (prev[exact] + moved[exact] == scores[O.score].to_numpy()[exact]).all()
    have = scores[C.previous_score].notna().to_numpy()
    change = scores[C.score_change].to_numpy(dtype="float64")
    assert (change[have] == scores[O.score].to_numpy()[have] - prev[have]).all()
    return int(exact.sum())


@pytest.fixture(scope="module")
def sqlite_runs(sim_export, fast_config, bundle, tmp_path_factory):
    """Three runs into one SQLite table: T1 (first), T2, and T2 again (a re-run)."""
    db = f"sqlite:///{tmp_path_factory.mktemp('db') / 'crm.db'}"
    alerts = str(tmp_path_factory.mktemp("alerts") / "alerts.csv")
    first = score(sim_export, fast_config, T1, db, bundle, alerts=alerts)
    second = score(sim_export, fast_config, T2, db, bundle, alerts=alerts)
    second_alerts = pd.read_csv(alerts)
    rerun = score(sim_export, fast_config, T2, db, bundle, alerts=db)
    return db, first, second, rerun, second_alerts


@pytest.mark.slow
def test_first_run_is_new_then_movements_add_up_through_the_step(sqlite_runs):
    db, first, second, _, _ = sqlite_runs
    assert (first.scores[C.trend] == NEW).all()
    assert first.scores[[C.previous_score, C.previous_as_of, C.score_change, *C.CHANGES]].isna().all().all()
    assert first.scores[C.events_seen].notna().all()
    exact = assert_adds_up(second)
    assert exact > 0.8 * len(second.scores)
    had = second.scores[C.previous_score].notna()
    assert (pd.to_datetime(second.scores.loc[had, C.previous_as_of]) == T1).all()
    assert second.scores.loc[~had, C.trend].eq(NEW).all()
    # what the table holds is what the step computed
    table = read_table(db).set_index(O.lead_id).loc[second.scores[O.lead_id]]
    for column in C.names():
        left = table[column].astype(object).where(table[column].notna(), None).tolist()
        right = second.scores[column].astype(object).where(second.scores[column].notna(), None).tolist()
        if column == C.previous_as_of:
            left, right = pd.to_datetime(pd.Series(left)).tolist(), pd.to_datetime(pd.Series(right)).tolist()
        assert [None if pd.isna(v) else v for v in left] == [None if pd.isna(v) else v for v in right], column
    # the history keeps the fingerprint the next run checks
    history = read_table(db, "lead_scores_history")
    assert history[C.events_seen].notna().all()


@pytest.mark.slow
def test_a_rerun_at_the_same_as_of_compares_with_the_earlier_as_of(sqlite_runs):
    _, _, second, rerun, _ = sqlite_runs
    assert_adds_up(rerun)
    had = rerun.scores[C.previous_score].notna()
    assert had.sum() == second.scores[C.previous_score].notna().sum() > 0
    assert (pd.to_datetime(rerun.scores.loc[had, C.previous_as_of]) == T1).all()
    cols = [C.previous_score, C.score_change, C.trend, *C.CHANGES]
    pd.testing.assert_frame_equal(rerun.scores[cols], second.scores[cols])


@pytest.mark.slow
def test_alerts_are_counted_printed_and_written(sqlite_runs, fast_config):
    db, first, second, rerun, second_alerts = sqlite_runs
    s = fast_config.scoring
    assert first.alerts is not None and first.alerts.frame.empty  # nothing to compare with
    found = second.alerts
    assert found is not None
    scores = second.scores[second.scores[C.previous_score].notna()]
    before, now = scores[C.previous_score].astype(int), scores[O.score]
    routed = set(scores.loc[(before < s.route_to_sales_min_score) & (now >= s.route_to_sales_min_score), O.lead_id])
    dropped = set(scores.loc[(before >= s.route_to_sales_min_score) & (now < s.route_to_sales_min_score), O.lead_id])
    best = list(s.grade_cutoffs)[:2]
    top_now = now >= s.grade_cutoffs[best[1]]
    top_then = before >= s.grade_cutoffs[best[1]]
    entered = set(scores.loc[top_now & ~top_then, O.lead_id])
    assert found.counts == {TOP_GRADES: len(entered), ROUTED: len(routed), DROPPED: len(dropped)}
    assert set(found.frame[AlertOutput.lead_id]) == entered | routed | dropped
    assert len(found.frame) > 0
    printed = "\n".join(second.notes)
    assert f"{len(entered):,} leads moved into grade A or B" in printed
    assert f"{len(routed):,} crossed route_to_sales_min_score ({s.route_to_sales_min_score}) upward" in printed
    assert f"{len(dropped):,} dropped below it" in printed
    assert "the 10 largest movements:" in printed
    # the file holds the alerts with their movements
    assert list(second_alerts.columns) == AlertOutput.names()
    assert set(second_alerts[AlertOutput.lead_id]) == set(found.frame[AlertOutput.lead_id])
    row = second_alerts.iloc[0]
    assert row[AlertOutput.score] - row[AlertOutput.previous_score] == row[AlertOutput.score_change]
    assert str(row[AlertOutput.change_1])[0] in "+-\u2212"
    # the re-run wrote them to a database table (lead_score_alerts), replaced on each run
    table = read_table(db, AlertOutput.table, schema=AlertOutput)
    assert set(table[AlertOutput.lead_id]) == set(rerun.alerts.frame[AlertOutput.lead_id])


@pytest.mark.slow
def test_columns_and_types_are_identical_in_files_sqlite_and_postgresql(sim_export, fast_config, bundle, tmp_path):
    import sqlalchemy as sa

    from convert.io.writers import engine_url

    pg = require_postgres()
    table = f"changes_{uuid.uuid4().hex[:8]}"
    targets = [str(tmp_path / "s.csv"), str(tmp_path / "s.parquet"), f"sqlite:///{tmp_path / 's.db'}", pg]
    frames = []
    try:
        for target in targets:
            for as_of in (T1, T2):
                summary = score(sim_export, fast_config, as_of, target, bundle, table=table)
            frames.append(read_table(target, table).drop(columns=[O.scored_at]).sort_values(O.lead_id,
                                                                                             ignore_index=True))
            assert list(frames[-1].columns) == [c for c in C.output_names() if c != O.scored_at]
        for other in frames[1:]:
            pd.testing.assert_frame_equal(other, frames[0], check_exact=True)
        assert frames[0][C.trend].ne(NEW).any()
        import pyarrow.parquet as pq

        arrow = pq.read_schema(tmp_path / "s.parquet")
        kinds = {"integer": "int32", "timestamp": "timestamp[us]", "string": "string"}
        assert {c: str(arrow.field(c).type) for c in CHANGE_TYPES} == {c: kinds[t] for c, t in CHANGE_TYPES.items()}
        for url in targets[2:]:
            engine = sa.create_engine(engine_url(url))
            try:
                for name in (table, f"{table}_history"):
                    columns = {c["name"]: c["type"] for c in sa.inspect(engine).get_columns(name)}
                    for c, t in CHANGE_TYPES.items():
                        expected = {"integer": sa.Integer, "timestamp": sa.DateTime, "string": sa.Text}[t]
                        assert isinstance(columns[c], expected), (url, name, c, columns[c])
            finally:
                engine.dispose()
        assert summary.written.rows_written == len(frames[0])
    finally:
        _drop_pg(pg, table)


def _drop_pg(url: str, *tables: str) -> None:
    import sqlalchemy as sa

    from convert.io.writers import engine_url

    engine = sa.create_engine(engine_url(url))
    with engine.begin() as conn:
        for t in tables:
            conn.exec_driver_sql(f'DROP TABLE IF EXISTS "{t}", "{t}_history" CASCADE')
    engine.dispose()


# --- tables written before the change columns existed ----------------------------------------


def _old_tables(url: str, table: str) -> None:
    """The current and history tables as the previous version of convert created them
    (ScoreOutput's columns only), each holding one scored row."""
    import sqlalchemy as sa

    from convert.io.writers import engine_url
    from convert.io.writers.base import parse_table
    from convert.io.writers.database import Tables

    old = Layout.of(O)
    tables = Tables.build("temp", parse_table(table, suffix=0), old, old.history_key)
    row = {O.lead_id: "L00000001", O.as_of: T1.to_pydatetime(), O.probability: 0.1, O.score: 10, O.grade: "C",
           O.base_score: 4, O.fit_points: 3, O.engagement_points: 3, O.action: "nurture",
           O.model_version: "old/1", O.scored_at: T1.to_pydatetime()}
    engine = sa.create_engine(engine_url(url))
    with engine.begin() as conn:
        for t in (tables.current, tables.history):
            t.create(conn)
            conn.execute(t.insert().values(row))
    engine.dispose()


def _scores(as_of: pd.Timestamp, n: int = 5, version: str = "old/2") -> pd.DataFrame:
    ids = [f"L{i:08d}" for i in range(1, n + 1)]
    score = np.arange(n) * 10 + 20
    return pd.DataFrame({O.lead_id: ids, O.as_of: as_of, O.probability: score / 100, O.score: score,
                         O.grade: "B", O.base_score: 4, O.fit_points: 1, O.engagement_points: score - 5,
                         **{c: None for c in (*O.REASONS, *O.RISKS)}, O.action: "nurture",
                         O.model_version: version, O.scored_at: as_of + pd.Timedelta(hours=6)})


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
def test_tables_from_before_gain_the_columns_on_the_first_run(backend, tmp_path):
    url = f"sqlite:///{tmp_path / 'old.db'}" if backend == "sqlite" else require_postgres()
    table = f"old_{uuid.uuid4().hex[:8]}"
    try:
        _old_tables(url, table)
        previous = read_previous(url, T2, table)  # before the migration: what the old history holds
        assert previous[O.lead_id].tolist() == ["L00000001"] and C.events_seen not in previous
        batch = _scores(T2)
        batch = batch.assign(**{C.previous_score: 10, C.previous_as_of: T1, C.score_change: batch[O.score] - 10,
                                C.trend: "improving", C.change_1: "+10 something", C.change_2: None,
                                C.change_3: None, C.events_seen: 3})
        write_scores(batch, url, table, guards=None)
        for name in (table, f"{table}_history"):
            frame = read_table(url, name)
            assert list(frame.columns) == C.output_names()
        history = read_table(url, f"{table}_history")
        old_row = history[history[O.as_of] == T1]
        assert old_row[C.names()].isna().all().all()  # rows from before: the new columns empty
        assert history.loc[history[O.as_of] == T2, C.events_seen].eq(3).all()
        again = read_previous(url, pd.Timestamp("2025-06-01"), table)
        assert (again[O.as_of] == T2).all() and len(again) == 5 and again[C.events_seen].eq(3).all()
    finally:
        if backend == "postgresql":
            _drop_pg(url, table)


@pytest.mark.parametrize("backend", ["sqlite", "postgresql", "parquet"])
def test_the_recheck_runs_under_the_lock_and_its_batch_is_written(backend, tmp_path):
    url = {"sqlite": f"sqlite:///{tmp_path / 'r.db'}", "parquet": str(tmp_path / "r.parquet")}.get(backend)
    url = url or require_postgres()
    table = f"re_{uuid.uuid4().hex[:8]}"
    try:
        write_scores(_scores(T1), url, table)
        seen: list[pd.DataFrame] = []

        def recheck(rows: pd.DataFrame) -> pd.DataFrame | None:
            seen.append(rows)
            return batch.assign(**{c: None for c in C.names()}).assign(**{C.trend: "steady", C.change_1: "rechecked"})

        batch = _scores(T2)
        write_scores(batch, url, table, recheck=recheck)
        assert len(seen) == 1 and (seen[0][O.as_of] == T1).all() and len(seen[0]) == 5
        written = read_table(url, table)
        assert written[C.change_1].eq("rechecked").all() and written[C.trend].eq("steady").all()
        # a recheck with nothing to change writes the batch as staged
        write_scores(_scores(pd.Timestamp("2025-06-01")), url, table, recheck=lambda rows: None)
        assert read_table(url, table)[C.trend].isna().all()
    finally:
        if backend == "postgresql":
            _drop_pg(url, table)


@pytest.mark.slow
def test_a_run_that_read_stale_previous_rows_is_corrected_under_the_lock(trained, fast_config, sqlite_runs):
    """Another run wrote between the first read and the lock: the recheck recomputes the
    changes of every lead whose previous row moved, as a run that saw them from the start."""
    result, data = trained
    db = sqlite_runs[0]
    model, version = result.model, sqlite_runs[2].scores[O.model_version].iloc[0]
    rows = read_previous(db, pd.Timestamp("2025-06-01"), "lead_scores")
    stale = RunChanges(model, pd.Timestamp("2025-06-01"), fast_config, version, rows.iloc[:0], source=data)
    scores = pd.concat(list(iter_scores(data, model, pd.Timestamp("2025-06-01"), fast_config, version,
                                        scored_at=T2, on_chunk=stale.chunk)), ignore_index=True)
    assert (scores[C.trend] == NEW).all()
    fixed = stale.recheck(scores, rows)
    assert fixed is not None
    fresh = RunChanges(model, pd.Timestamp("2025-06-01"), fast_config, version, rows, source=data)
    expected = pd.concat(list(iter_scores(data, model, pd.Timestamp("2025-06-01"), fast_config, version,
                                          scored_at=T2, on_chunk=fresh.chunk)), ignore_index=True)
    cols = [C.previous_score, C.score_change, C.trend, *C.CHANGES, C.events_seen]
    pd.testing.assert_frame_equal(fixed[cols].astype(object), expected[cols].astype(object))
    for mine, theirs in zip(stale.movement_sums(), fresh.movement_sums(), strict=True):
        assert (mine == theirs).all()
    assert stale.rechecked is fixed
    assert stale.recheck(fixed, rows) is None  # now in step with the target


# --- pure parts ----------------------------------------------------------------------------------


def test_flat_rows_get_the_change_and_trend_without_movements(fast_config):
    scored = _scores(T2, n=4)
    previous = pd.DataFrame({O.lead_id: ["L00000001", "L00000002", "L00000003"], O.as_of: T1,
                             O.score: [20, 10, 60], O.model_version: "old/2"})
    from convert.scoring.changes import previous_scores

    frame = without_movements(scored, previous_scores(previous, T2), fast_config, FLAT_WHY)
    assert frame[C.previous_score].tolist()[:3] == [20, 10, 60] and pd.isna(frame[C.previous_score].iloc[3])
    assert frame[C.trend].tolist() == ["steady", "improving", "declining", NEW]
    assert pd.isna(frame[C.change_1].iloc[0])  # no change, nothing to say
    assert frame[C.change_1].iloc[1] == f"10 \u2192 30: {FLAT_WHY}"
    assert frame[C.events_seen].isna().all()
    first = without_movements(scored, previous_scores(previous.iloc[:0], T2), fast_config, FLAT_WHY)
    assert first[C.trend].eq(NEW).all() and first[[C.previous_score, C.previous_as_of, C.change_1]].isna().all().all()


def test_alerts_of_a_batch(fast_config):
    s = fast_config.scoring  # A >= 50, B >= 25, route_to_sales >= 40
    scores = _scores(T2, n=4).assign(**{O.score: [45, 30, 20, 60]})
    scores[C.previous_score] = pd.array([35, 30, 45, None], dtype="Int64")
    scores[C.previous_as_of] = T1
    scores[C.trend] = ["improving", "steady", "declining", NEW]
    for c in C.CHANGES:
        scores[c] = None
    found = alerts_of(scores, s)
    assert found.counts == {TOP_GRADES: 0, ROUTED: 1, DROPPED: 1}
    assert found.frame[AlertOutput.lead_id].tolist() == ["L00000003", "L00000001"]  # largest change first
    assert found.frame[AlertOutput.alert].tolist() == [DROPPED, ROUTED]
    scores[C.previous_score] = pd.array([10, 30, 45, None], dtype="Int64")
    found = alerts_of(scores, s)
    assert found.frame.set_index(AlertOutput.lead_id).loc["L00000001", AlertOutput.alert] == f"{TOP_GRADES}, {ROUTED}"


def test_an_empty_alerts_file_replaces_the_last_one(tmp_path: Path):
    target = tmp_path / "alerts.parquet"
    scores = _scores(T1, n=3).assign(**{C.previous_score: [90, 90, 90], C.previous_as_of: T1 - pd.Timedelta(days=1),
                                        C.trend: "declining"})
    for c in (*C.CHANGES, C.score_change, C.events_seen):
        scores[c] = None
    from convert.config import ScoringConfig

    found = alerts_of(scores, ScoringConfig())
    write_scores(found.frame, target, schema=AlertOutput, allow_empty=True)
    assert len(read_table(target, schema=AlertOutput)) == 2  # 20 and 30 dropped below 40; 40 did not
    none = alerts_of(scores.assign(**{C.previous_score: scores[O.score]}).assign(**{O.as_of: T2}), ScoringConfig())
    write_scores(none.frame, target, schema=AlertOutput, allow_empty=True)  # exempt from the shrink guard
    assert read_table(target, schema=AlertOutput).empty


@pytest.mark.slow
def test_the_command_prints_the_alerts_and_writes_them_to_a_table(sim_export, bundle, sqlite_runs, tmp_path):
    from typer.testing import CliRunner

    from conftest import FAST
    from convert.cli import app

    config = tmp_path / "params.yaml"
    import yaml

    config.write_text(yaml.safe_dump(FAST))
    db = sqlite_runs[0]
    result = CliRunner().invoke(app, ["score", "--data", str(sim_export), "--as-of", "2025-06-01", "--out", db,
                                      "--model", bundle, "--config", str(config), "--alerts", db,
                                      "--alerts-table", "hot_leads"])
    assert result.exit_code == 0, result.output
    assert "since their previous score:" in result.output and "crossed route_to_sales_min_score" in result.output
    table = read_table(db, "hot_leads", schema=AlertOutput)
    counted = result.output.split("since their previous score: ")[1].split(" leads moved")[0]
    assert (table[AlertOutput.alert].str.contains(TOP_GRADES)).sum() == int(counted.replace(",", ""))
    assert (pd.to_datetime(table[AlertOutput.previous_as_of]) == T2).all()


@pytest.mark.parametrize("backend", ["sqlite", "parquet"])
def test_the_report_finds_the_previous_run_in_the_scores(backend, tmp_path, monkeypatch):
    """`report --scores`: the movements start at the last run before the as-of that the scores
    hold (a database's history; a file's run, or the run its rows carry on a re-run)."""
    from convert.steps.report import previous_run_as_of

    target = f"sqlite:///{tmp_path / 's.db'}" if backend == "sqlite" else str(tmp_path / "s.parquet")
    first, second = pd.Timestamp("2025-05-01"), pd.Timestamp("2025-05-08")
    assert previous_run_as_of(target, "lead_scores", second) is None  # nothing written yet
    write_scores(_scores(first), target, "lead_scores")
    batch = _scores(second)
    batch = batch.assign(**{C.previous_score: batch[O.score], C.previous_as_of: first, C.score_change: 0,
                            C.trend: "steady", C.change_1: None, C.change_2: None, C.change_3: None,
                            C.events_seen: 3})
    write_scores(batch, target, "lead_scores")
    assert previous_run_as_of(target, "lead_scores", pd.Timestamp("2025-05-15")) == second
    assert previous_run_as_of(target, "lead_scores", second) == first  # a re-run of the last as-of
    assert previous_run_as_of(target, "lead_scores", first) is None
    monkeypatch.setenv("SCORES_AT", target)
    assert previous_run_as_of("env:SCORES_AT", "lead_scores", pd.Timestamp("2025-06-01")) == second
