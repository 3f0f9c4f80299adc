"""The synthetic CRM: determinism, the contract's shape, planted bad rows, and the story."""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from convert.exceptions import ConfigError
from convert.schema import CONTRACT_TABLES, Accounts, Events, Leads, Stages
from convert.simulator.crm import BAD_ROW_KINDS, UTM_MEDIUM, GenerateSummary, generate_crm

TABLES = tuple(CONTRACT_TABLES)
END = "2025-06-30"


def _ts(col: str) -> str:
    """SQL parsing an ISO 8601 text column to a naive UTC timestamp (NULL if unparseable)."""
    return f"TRY_CAST(TRY_CAST({col} AS TIMESTAMPTZ) AT TIME ZONE 'UTC' AS TIMESTAMP)"


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> Any:
    """The first row of a query (a tuple), or its only value when it has one column."""
    row = con.execute(sql).fetchone()
    assert row is not None
    return row[0] if len(row) == 1 else row


def _load(folder: Path, fmt: str = "csv") -> duckdb.DuckDBPyConnection:
    """The four tables as text (CSV) or as stored (Parquet) in a UTC DuckDB connection."""
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    for table in TABLES:
        path = (folder / f"{table}.{fmt}").as_posix()
        reader = (
            f"read_csv('{path}', all_varchar = true)" if fmt == "csv" else f"read_parquet('{path}')"
        )
        con.execute(f"CREATE TABLE {table} AS SELECT * FROM {reader}")
    return con


def _detect(con: duckdb.DuckDBPyConnection) -> dict[str, int]:
    """Count each bad-row kind in the files, by the contract's rules (independent SQL)."""
    L, A, E, S = Leads, Accounts, Events, Stages
    clean_leads = (
        f"SELECT {L.lead_id} AS id, {_ts(L.created_at)} AS created FROM leads "
        f"WHERE {L.lead_id} IS NOT NULL AND {_ts(L.created_at)} IS NOT NULL"
    )
    queries = {
        "leads.empty_lead_id": f"SELECT count(*) FROM leads WHERE coalesce({L.lead_id}, '') = ''",
        "leads.created_at_unparseable": f"SELECT count(*) FROM leads WHERE {_ts(L.created_at)} IS NULL",
        "leads.converted_at_unparseable": (
            f"SELECT count(*) FROM leads WHERE {L.converted_at} IS NOT NULL AND {_ts(L.converted_at)} IS NULL"
        ),
        "leads.disqualified_at_unparseable": (
            f"SELECT count(*) FROM leads WHERE {L.disqualified_at} IS NOT NULL "
            f"AND {_ts(L.disqualified_at)} IS NULL"
        ),
        "leads.converted_before_created": (
            f"SELECT count(*) FROM leads WHERE {_ts(L.converted_at)} < {_ts(L.created_at)}"
        ),
        "leads.disqualified_before_created": (
            f"SELECT count(*) FROM leads WHERE {_ts(L.disqualified_at)} < {_ts(L.created_at)}"
        ),
        "leads.account_not_found": (
            f"SELECT count(*) FROM leads WHERE {L.account_id} IS NOT NULL AND {L.account_id} NOT IN "
            f"(SELECT {A.account_id} FROM accounts)"
        ),
        "accounts.employees_not_numeric": (
            f"SELECT count(*) FROM accounts WHERE {A.employees} IS NOT NULL "
            f"AND TRY_CAST(CAST({A.employees} AS VARCHAR) AS DOUBLE) IS NULL"
        ),
        "accounts.annual_revenue_not_numeric": (
            f"SELECT count(*) FROM accounts WHERE {A.annual_revenue} IS NOT NULL "
            f"AND TRY_CAST(CAST({A.annual_revenue} AS VARCHAR) AS DOUBLE) IS NULL"
        ),
    }
    for table, schema_time in (("events", E.occurred_at), ("stages", S.entered_at)):
        queries[f"{table}.unknown_lead"] = (
            f"SELECT count(*) FROM {table} WHERE lead_id NOT IN (SELECT {L.lead_id} FROM leads "
            f"WHERE {L.lead_id} IS NOT NULL)"
        )
        queries[f"{table}.{schema_time}_unparseable"] = (
            f"SELECT count(*) FROM {table} WHERE {_ts(schema_time)} IS NULL"
        )
        queries[f"{table}.before_created"] = (
            f"SELECT count(*) FROM {table} t JOIN ({clean_leads}) l ON t.lead_id = l.id "
            f"WHERE {_ts('t.' + schema_time)} < l.created"
        )
    return {key: _one(con, sql) for key, sql in queries.items()}


@pytest.fixture(scope="module")
def crm(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("crm")
    return out, generate_crm(out, n_leads=2000, seed=7, end=END)


@pytest.fixture(scope="module")
def clean(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, GenerateSummary]:
    out = tmp_path_factory.mktemp("clean")
    return out, generate_crm(out, n_leads=2000, seed=7, end=END, bad_rows=False)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_same_arguments_give_byte_identical_files(
    tmp_path: Path, fmt: Literal["csv", "parquet"]
) -> None:
    a = generate_crm(tmp_path / "a", n_leads=700, seed=3, fmt=fmt, chunk_leads=300)
    b = generate_crm(tmp_path / "b", n_leads=700, seed=3, fmt=fmt, chunk_leads=300)
    assert a.rows == b.rows and a.bad_rows == b.bad_rows
    for table in TABLES:
        assert (tmp_path / "a" / f"{table}.{fmt}").read_bytes() == (
            tmp_path / "b" / f"{table}.{fmt}"
        ).read_bytes()
    generate_crm(tmp_path / "c", n_leads=700, seed=4, fmt=fmt, chunk_leads=300)
    assert (tmp_path / "c" / f"events.{fmt}").read_bytes() != (
        tmp_path / "a" / f"events.{fmt}"
    ).read_bytes()


def test_every_table_has_the_contract_columns(crm: tuple[Path, GenerateSummary]) -> None:
    out, summary = crm
    expected = {
        "leads": [*Leads.names(), UTM_MEDIUM],
        "accounts": Accounts.names(),
        "events": Events.names(),
        "stages": Stages.names(),
    }
    for table in TABLES:
        header = pd.read_csv(out / f"{table}.csv", nrows=0).columns.tolist()
        assert header == expected[table]
        assert summary.rows[table] > 0
    assert not list(out.glob(".*partial"))
    text = str(summary)
    assert all(t in text for t in TABLES) and "leads.empty_lead_id" in text


def test_nothing_is_dated_after_end(crm: tuple[Path, GenerateSummary]) -> None:
    con = _load(crm[0])
    latest = [
        _one(con, f"SELECT max({_ts(col)}) FROM {table}")
        for table, col in (
            ("leads", Leads.created_at),
            ("leads", Leads.converted_at),
            ("leads", Leads.disqualified_at),
            ("events", Events.occurred_at),
            ("stages", Stages.entered_at),
        )
    ]
    assert max(latest) < pd.Timestamp(END) + pd.Timedelta(days=1)
    assert max(latest) > pd.Timestamp(END) - pd.Timedelta(days=2)


def test_each_bad_row_kind_is_planted_and_found(crm: tuple[Path, GenerateSummary]) -> None:
    out, summary = crm
    assert set(summary.bad_rows) == {f"{t}.{k}" for t, k, _, _ in BAD_ROW_KINDS}
    assert all(n >= 1 for n in summary.bad_rows.values()), summary.bad_rows
    assert _detect(_load(out)) == summary.bad_rows
    for table in TABLES:  # well under the loader's 5 % threshold
        planted = sum(n for key, n in summary.bad_rows.items() if key.startswith(table + "."))
        assert planted / summary.rows[table] < 0.025


def test_no_bad_rows_when_disabled(clean: tuple[Path, GenerateSummary]) -> None:
    out, summary = clean
    assert not any(summary.bad_rows.values())
    assert not any(_detect(_load(out)).values())
    assert "no bad rows planted" in str(summary)


def test_parquet_and_csv_carry_the_same_rows(tmp_path: Path) -> None:
    for bad in (False, True):
        csv_dir, pq_dir = tmp_path / f"csv{bad}", tmp_path / f"pq{bad}"
        a = generate_crm(csv_dir, n_leads=600, seed=11, fmt="csv", bad_rows=bad)
        b = generate_crm(pq_dir, n_leads=600, seed=11, fmt="parquet", bad_rows=bad)
        assert a.rows == b.rows and a.bad_rows == b.bad_rows
        for table in TABLES:
            text = pd.read_csv(csv_dir / f"{table}.csv", dtype=str, keep_default_na=False)
            typed = pd.read_parquet(pq_dir / f"{table}.parquet")
            assert list(text.columns) == list(typed.columns)
            for col in text.columns:
                left, right = text[col].replace("", None), typed[col]
                if pd.api.types.is_datetime64_any_dtype(right):  # typed UTC timestamps
                    parsed = pd.to_datetime(left, format="ISO8601", utc=True)
                    pd.testing.assert_series_equal(
                        parsed, right.dt.tz_convert("UTC"), check_names=False, check_dtype=False
                    )
                elif pd.api.types.is_numeric_dtype(right):
                    np.testing.assert_allclose(
                        pd.to_numeric(left).to_numpy(float), right.to_numpy(float)
                    )
                else:  # text, including timestamps stored as text when bad rows are planted
                    assert left.fillna("").tolist() == right.fillna("").tolist(), (table, col)


def test_parquet_types(tmp_path: Path) -> None:
    """Typed columns in a clean export; text where bad values may be planted."""
    generate_crm(tmp_path / "t", n_leads=300, fmt="parquet", bad_rows=False)
    generate_crm(tmp_path / "s", n_leads=300, fmt="parquet", bad_rows=True)
    typed = pq.read_schema(tmp_path / "t" / "events.parquet")
    assert typed.field(Events.occurred_at).type == pa.timestamp("us", tz="UTC")
    assert typed.field(Events.value).type == pa.float64()
    accounts = pq.read_schema(tmp_path / "t" / "accounts.parquet")
    assert accounts.field(Accounts.employees).type == pa.int64()
    assert accounts.field(Accounts.annual_revenue).type == pa.float64()
    text = pq.read_schema(tmp_path / "s" / "leads.parquet")
    assert text.field(Leads.created_at).type == pa.string()
    assert (
        pq.read_schema(tmp_path / "s" / "accounts.parquet").field(Accounts.employees).type
        == pa.string()
    )


def test_clean_export_obeys_the_contract(clean: tuple[Path, GenerateSummary]) -> None:
    con = _load(clean[0])
    L = Leads
    assert _one(con, f"SELECT count(DISTINCT {L.lead_id}) = count(*) FROM leads")
    b2c, shared = _one(
        con,
        f"SELECT avg(({L.account_id} IS NULL)::INT), "
        f"(SELECT count(*) FROM (SELECT {L.account_id} FROM leads GROUP BY 1 HAVING count(*) > 1)) FROM leads",
    )
    assert 0.10 < b2c < 0.20 and shared > 50
    # outcomes after creation; funnel stages before the conversion; customer stage at it
    assert (
        _one(
            con,
            f"SELECT count(*) FROM leads WHERE {_ts(L.converted_at)} <= {_ts(L.created_at)} "
            f"OR {_ts(L.disqualified_at)} <= {_ts(L.created_at)} "
            f"OR ({L.converted_at} IS NOT NULL AND {L.disqualified_at} IS NOT NULL)",
        )
        == 0
    )
    assert (
        _one(
            con,
            f"SELECT count(*) FROM stages s JOIN leads l USING (lead_id) WHERE s.stage IN ('mql', 'sql', "
            f"'opportunity') AND {_ts('s.entered_at')} >= {_ts('l.converted_at')}",
        )
        == 0
    )
    stages = dict(con.execute("SELECT stage, count(*) FROM stages GROUP BY 1").fetchall())
    assert set(stages) == {"lead", "mql", "sql", "opportunity", "customer", "disqualified"}
    assert stages["lead"] == 2000 and stages["customer"] < stages["opportunity"]
    # the mix of timestamp forms the contract allows
    forms = _one(
        con,
        "SELECT count(*) FILTER (WHERE occurred_at LIKE '%Z'), count(*) FILTER (WHERE occurred_at LIKE '% %+%' "
        "OR occurred_at LIKE '% %-__:__'), count(*) FILTER (WHERE occurred_at LIKE '____-__-__T__:__:__') "
        "FROM events",
    )
    assert all(n > 0 for n in forms)
    assert _one(con, f"SELECT count(*) FROM leads WHERE length({L.created_at}) = 10") > 0


def test_rates_are_plausible(clean: tuple[Path, GenerateSummary]) -> None:
    _, summary = clean
    n = summary.rows["leads"]
    assert 0.08 < summary.converted / n < 0.22
    assert 0.05 < summary.disqualified / n < 0.15
    assert 20 < summary.rows["events"] / n < 45
    con = _load(clean[0])
    delay = _one(
        con,
        f"SELECT median(date_diff('day', {_ts(Leads.created_at)}, {_ts(Leads.converted_at)})) FROM leads",
    )
    assert 10 < delay < 90


def test_post_sale_events_follow_conversion(clean: tuple[Path, GenerateSummary]) -> None:
    con = _load(clean[0])
    after = dict(
        con.execute(
            f"SELECT e.event_type, count(*) FROM events e JOIN leads l USING (lead_id) "
            f"WHERE {_ts('e.occurred_at')} > {_ts('l.converted_at')} GROUP BY 1"
        ).fetchall()
    )
    assert after.get("invoice_paid", 0) > 0 and after.get("onboarding_call", 0) > 0
    assert after.get("page_view", 0) > 0
    # invoices and onboarding calls only ever follow a conversion
    conv = _ts("l.converted_at")
    assert (
        _one(
            con,
            f"SELECT count(*) FROM events e JOIN leads l USING (lead_id) WHERE e.event_type IN "
            f"('invoice_paid', 'onboarding_call') AND ({conv} IS NULL OR {_ts('e.occurred_at')} <= {conv})",
        )
        == 0
    )


def test_engagement_warms_up_before_conversion(clean: tuple[Path, GenerateSummary]) -> None:
    con = _load(clean[0])
    high = "('pricing_page_view', 'demo_request', 'quote_request', 'meeting')"
    share_before, share_else = _one(
        con,
        f"""SELECT avg((e.event_type IN {high})::INT) FILTER (WHERE l.converted_at IS NOT NULL
                 AND {_ts("e.occurred_at")} BETWEEN {_ts("l.converted_at")} - INTERVAL 30 DAY
                 AND {_ts("l.converted_at")}),
               avg((e.event_type IN {high})::INT) FILTER (WHERE l.converted_at IS NULL)
            FROM events e JOIN leads l USING (lead_id)""",
    )
    assert share_before > 2 * share_else
    types = {r[0] for r in con.execute("SELECT DISTINCT event_type FROM events").fetchall()}
    assert {"trial_signup", "chat_started", "case_study_view", "email_open", "email_click"} <= types
    # nurturing waves: one campaign_id reaches many leads at once
    widest = _one(
        con,
        "SELECT max(n) FROM (SELECT campaign_id, count(DISTINCT lead_id) n FROM events "
        "WHERE event_type = 'email_open' GROUP BY 1)",
    )
    assert widest >= 30


def test_chunks_cover_every_lead(tmp_path: Path) -> None:
    summary = generate_crm(tmp_path, n_leads=1000, seed=5, chunk_leads=128)
    leads = pd.read_csv(tmp_path / "leads.csv", dtype=str)
    assert len(leads) == 1000
    ids = leads[Leads.lead_id].dropna()
    assert ids.is_unique and len(ids) == 1000 - summary.bad_rows["leads.empty_lead_id"]
    assert all(n >= 1 for n in summary.bad_rows.values())


def test_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError):
        generate_crm(tmp_path / "x", n_leads=10, fmt="xlsx")  # type: ignore[arg-type]
    with pytest.raises(ConfigError):
        generate_crm(tmp_path / "x", n_leads=10, start="2025-01-01", end="2024-01-01")
    with pytest.raises(ConfigError):
        generate_crm(tmp_path / "x", n_leads=0)
    for activity in (0.0, -1.0, float("nan")):
        with pytest.raises(ConfigError, match="activity"):
            generate_crm(tmp_path / "x", n_leads=10, activity=activity)
    generate_crm(tmp_path / "y", n_leads=50, fmt="parquet")
    with pytest.raises(ConfigError, match="two files for one table"):
        generate_crm(tmp_path / "y", n_leads=50, fmt="csv")


def test_activity_scales_self_directed_engagement_only(tmp_path: Path) -> None:
    """A busier marketing operation: more visits, sessions and warm-up events per lead;
    the same leads, outcomes and nurturing sends."""
    base = generate_crm(tmp_path / "a", n_leads=600, seed=9, fmt="parquet", bad_rows=False)
    busy = generate_crm(tmp_path / "b", n_leads=600, seed=9, fmt="parquet", bad_rows=False, activity=4.0)
    assert (tmp_path / "a" / "leads.parquet").read_bytes() == (tmp_path / "b" / "leads.parquet").read_bytes()
    assert 2.5 < busy.rows["events"] / base.rows["events"] < 4.0
    counts = {
        name: duckdb.sql(
            f"SELECT event_type, count(*) FROM '{tmp_path / name / 'events.parquet'}' GROUP BY 1"
        ).fetchall()
        for name in ("a", "b")
    }
    a, b = (dict(counts[name]) for name in ("a", "b"))
    assert b["page_view"] > 3 * a["page_view"]
    assert b["pricing_page_view"] > 2.5 * a["pricing_page_view"]
    for kept in ("invoice_paid", "email_open"):  # post-sale and nurturing keep their rates
        assert abs(b[kept] / a[kept] - 1) < 0.2, (kept, a[kept], b[kept])


def test_reps_add_an_owner_column_and_change_nothing_else(tmp_path: Path) -> None:
    """Owners are drawn after the outcome from a stream of their own: with reps, leads (but
    for ``owner_id``), events, stages and accounts are those of the story without reps."""
    generate_crm(tmp_path / "a", n_leads=1500, seed=5, end=END, chunk_leads=600)
    generate_crm(tmp_path / "b", n_leads=1500, seed=5, end=END, chunk_leads=600, reps=6)
    for table in ("events", "stages", "accounts"):
        assert (tmp_path / "a" / f"{table}.csv").read_bytes() == (tmp_path / "b" / f"{table}.csv").read_bytes()
    a = pd.read_csv(tmp_path / "a" / "leads.csv", dtype=str, keep_default_na=False)
    b = pd.read_csv(tmp_path / "b" / "leads.csv", dtype=str, keep_default_na=False)
    assert list(b.columns) == [*a.columns, "owner_id"]
    pd.testing.assert_frame_equal(a, b.drop(columns="owner_id"))
    assert b["owner_id"].str.match(r"^R0[1-6]$").mean() > 0.9


def test_owner_after_the_outcome_has_the_joint_of_owner_first() -> None:
    """P(r | converted) ~ pi_r q_r and P(r | lost) ~ pi_r (1 - q_r) give the joint of "owner
    from the prior, then converting with q_r = p x effect": owners are uniform (round-robin)
    and each rep converts its leads at the mean of its q_r; the cap keeps the mean at p."""
    from convert.simulator.crm import P_CAP, _draw_team, _owners, _rep_probabilities

    team = _draw_team(np.random.SeedSequence(3), 4, 1000)
    rng = np.random.default_rng(0)
    n = 200_000
    src = rng.integers(0, team.effect.shape[1], n)
    band = rng.integers(-1, team.effect.shape[2] - 1, n)
    p = np.where(rng.random(n) < 0.1, 0.97, rng.uniform(0.01, 0.6, n))  # some leads hit the cap
    converts = rng.random(n) < p
    owner = _owners(team, 0, src, band, p, converts)
    q = _rep_probabilities(team, src, np.where(band < 0, team.effect.shape[2] - 1, band), p)
    assert (q <= P_CAP + 1e-12).all() and np.allclose(q.mean(axis=1), p)
    assert (q[p > 0.9] >= P_CAP - 1e-12).any()  # the cap binds somewhere
    for r in range(team.n):
        mine = owner == r
        assert mine.mean() == pytest.approx(1 / team.n, abs=0.006)
        se = np.sqrt(q[:, r].mean() * (1 - q[:, r].mean()) / mine.sum())
        assert abs(converts[mine].mean() - q[:, r].mean()) < 4 * se
    # against a fair share it is not: the effects show in the data
    rates = [converts[owner == r].mean() for r in range(team.n)]
    assert max(rates) - min(rates) > 0.01
