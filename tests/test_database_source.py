"""--data DATABASE_URL: the contract's tables (or mapped ones) read from SQLite and PostgreSQL
in chunks, validated exactly as the same tables in files."""

from __future__ import annotations

import uuid
from pathlib import Path

import pandas as pd
import pytest
import sqlalchemy as sa
from tests.conftest import require_postgres, write_export

from convert import load
from convert.cli import main
from convert.config import Config
from convert.exceptions import ContractError
from convert.sources.mapping import mapping_from_dict
from convert.sources.readers import database_url

TABLES = ("leads", "accounts", "events", "stages")
CHUNKED = Config.from_dict({"data": {"db_chunk_rows": 100}})


@pytest.fixture(scope="module")
def export(tmp_path_factory) -> Path:
    from convert.simulator.crm import generate_crm

    folder = tmp_path_factory.mktemp("db_export")
    generate_crm(folder, n_leads=300, seed=4, start="2023-01-01", end="2024-12-31")
    return folder


def _copy_to_database(export: Path, url: str, schema: str | None = None, names: dict[str, str] | None = None) -> None:
    """Every table of the export as text columns, rows in file order (PostgreSQL: COPY, which
    keeps the order; a multi-row INSERT need not)."""
    engine = sa.create_engine(database_url(url))
    with engine.begin() as conn:
        if schema:
            conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
    for table in TABLES:
        frame = pd.read_csv(export / f"{table}.csv", dtype=str, keep_default_na=False).replace({"": None})
        name = (names or {}).get(table, table)
        if engine.dialect.name != "postgresql":
            frame.to_sql(name, engine, schema=schema, index=False, chunksize=1000)
            continue
        import psycopg

        with psycopg.connect(url) as conn:
            cols = ", ".join(f'"{c}" text' for c in frame.columns)
            conn.execute(f'CREATE TABLE "{schema}"."{name}" ({cols})')
            with conn.cursor().copy(f'COPY "{schema}"."{name}" FROM STDIN') as copy:
                for row in frame.itertuples(index=False):
                    copy.write_row(list(row))
    engine.dispose()


def _assert_same(a, b) -> None:
    for table in TABLES:
        pd.testing.assert_frame_equal(a.frame(table), b.frame(table), check_dtype=False, obj=table)
    pd.testing.assert_frame_equal(a.report.rejects.reset_index(drop=True), b.report.rejects.reset_index(drop=True))
    for table in TABLES:
        ra, rb = a.report.tables[table], b.report.tables[table]
        assert (ra.rows_read, ra.quarantined, ra.reasons, ra.warnings) == (rb.rows_read, rb.quarantined, rb.reasons, rb.warnings)


def test_sqlite_database_loads_like_the_files(export, tmp_path):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    _copy_to_database(export, url)
    expected = load(export, CHUNKED)
    got = load(url, CHUNKED)
    assert expected.report.quarantined > 0  # the planted bad rows are there, and treated alike
    _assert_same(expected, got)
    assert got.source.display == url and got.report.tables["leads"].file == "leads"


def test_sqlite_mapped_table_names_and_env_url(export, tmp_path, monkeypatch):
    url = f"sqlite:///{tmp_path / 'crm.db'}"
    names = {"leads": "crm_contacts", "accounts": "crm_companies", "events": "crm_activities", "stages": "crm_stages"}
    _copy_to_database(export, url, names=names)
    mapping = mapping_from_dict({"tables": {t: {"source": n} for t, n in names.items()}})
    monkeypatch.setenv("CRM_URL", url)
    got = load("env:CRM_URL", CHUNKED, mapping=mapping)
    _assert_same(load(export, CHUNKED), got)
    with pytest.raises(ContractError, match="no table 'leads'"):
        load(url, CHUNKED)


def test_sqlite_typed_columns_and_mixed_values(tmp_path, tables, lenient):
    """Typed columns (numbers, timestamps) and SQLite's mixed-type cells become text, as in a CSV."""
    url = f"sqlite:///{tmp_path / 'typed.db'}"
    engine = sa.create_engine(url)
    leads = tables["leads"].copy()
    leads["created_at"] = pd.to_datetime(leads["created_at"])
    leads.loc[3, "job_title"] = None
    leads.to_sql("leads", engine, index=False)
    accounts = tables["accounts"].assign(employees=[120, 15, 4000], annual_revenue=[2.5e7, 1e6, 9e8])
    accounts.to_sql("accounts", engine, index=False)
    with engine.begin() as conn:  # SQLite keeps a text value in an INTEGER column as it is
        conn.execute(sa.text("INSERT INTO accounts VALUES ('A4', 'retail', 'lots', 5.5, 'FR')"))
    engine.dispose()
    data = load(url, lenient)
    accounts_loaded = data.frame("accounts").set_index("account_id")
    assert accounts_loaded.loc["A1", "employees"] == 120
    assert accounts_loaded.loc["A1", "annual_revenue"] == 2.5e7
    assert data.report.rejects[["table", "row", "column", "value"]].values.tolist() == [["accounts", 4, "employees", "lots"]]
    got = data.frame("leads").set_index("lead_id")["created_at"]
    assert got["L000"] == pd.Timestamp(tables["leads"].loc[0, "created_at"])


@pytest.mark.postgres
def test_postgresql_database_loads_like_the_files(export, tmp_path):
    base = require_postgres()
    schema = f"convert_src_{uuid.uuid4().hex[:8]}"
    _copy_to_database(export, base, schema=schema)
    mapping = mapping_from_dict({"tables": {t: {"source": f"{schema}.{t}"} for t in TABLES}})
    try:
        got = load(base, CHUNKED, mapping=mapping)
        _assert_same(load(export, CHUNKED), got)
        assert got.report.tables["events"].file == f"{schema}.events"
    finally:
        engine = sa.create_engine(database_url(base))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.postgres
def test_postgresql_typed_tables_and_cli(tables, tmp_path, capsys, lenient):
    base = require_postgres()
    schema = f"convert_typed_{uuid.uuid4().hex[:8]}"
    engine = sa.create_engine(database_url(base))
    with engine.begin() as conn:
        conn.execute(sa.text(f'CREATE SCHEMA "{schema}"'))
        conn.execute(sa.text(  # primary keys: rows are read in key order
            f'CREATE TABLE "{schema}".leads (row_key int PRIMARY KEY, lead_id text, created_at timestamptz, '
            "account_id text, lead_source text, country text, job_title text, converted_at timestamptz, "
            "disqualified_at timestamptz)"))
        conn.execute(sa.text(
            f'CREATE TABLE "{schema}".events (row_key int PRIMARY KEY, lead_id text, occurred_at timestamp, '
            "event_type text, value double precision)"))
    leads = tables["leads"].replace({"": None})
    for col in ("created_at", "converted_at", "disqualified_at"):
        leads[col] = pd.to_datetime(leads[col]).dt.tz_localize("UTC")
    leads.insert(0, "row_key", range(len(leads)))
    leads.to_sql("leads", engine, schema=schema, index=False, if_exists="append")
    events = tables["events"].assign(value=1.5)
    events["occurred_at"] = pd.to_datetime(events["occurred_at"])
    events.insert(0, "row_key", range(len(events)))
    events.to_sql("events", engine, schema=schema, index=False, if_exists="append")
    mapping_file = tmp_path / "m.yaml"
    mapping_file.write_text(
        f"tables:\n  leads: {{source: {schema}.leads, exclude: {{row_key: order only}}}}\n"
        f"  events: {{source: {schema}.events, exclude: {{row_key: order only}}}}\n")
    try:
        data = load(base, lenient, mapping=mapping_from_dict({"tables": {
            t: {"source": f"{schema}.{t}", "exclude": {"row_key": "order only"}} for t in ("leads", "events")}}))
        expected = load(write_export(tmp_path / "files", leads=tables["leads"], events=tables["events"].assign(value=1.5)), lenient)
        pd.testing.assert_frame_equal(expected.frame("leads"), data.frame("leads"), check_dtype=False)
        pd.testing.assert_frame_equal(expected.frame("events"), data.frame("events"), check_dtype=False)
        main(["validate", "--data", base, "--mapping", str(mapping_file), "--rejects", str(tmp_path / "r.csv")])
        out = capsys.readouterr().out
        assert f"{schema}.leads" in out and "40" in out
    finally:
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP SCHEMA "{schema}" CASCADE'))
        engine.dispose()


@pytest.mark.postgres
def test_database_errors_never_show_the_password(tmp_path):
    base = require_postgres()
    url = sa.engine.make_url(database_url(base)).set(password="s3cret-pw", database="no_such_db_for_convert")
    text = url.render_as_string(hide_password=False).replace("postgresql+psycopg", "postgresql")
    with pytest.raises(ContractError) as err:
        load(text, Config())
    assert "s3cret-pw" not in str(err.value) and "***" in str(err.value)
