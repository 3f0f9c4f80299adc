"""Issue 14, findings 3 and 5: input that would break a later step is set aside at loading.

A NUL byte in a ``lead_id`` passed validation, then every PostgreSQL write failed; a
``created_at`` of ``0001-01-01`` made training fail far from the cause; revenue ``inf``,
``1e400``, ``NaN`` and negative firmographics were accepted silently. Now an id with a
control character quarantines its row, other text loses its control characters (tab and
newline stay) and the summary counts them, timestamps outside ``data.valid_from`` ..
``data.valid_to`` are quarantined as implausible, non-finite or negative firmographics
quarantine the account, and a non-finite event value is emptied with a warning. The same
holds for CSV, Parquet, a database source and (for ids and text) a flat file.
"""

from __future__ import annotations

import shutil
import sqlite3
import uuid

import numpy as np
import pandas as pd
import pytest
from tests.conftest import require_postgres, small_tables, write_export

from convert import load
from convert.config import Config
from convert.exceptions import ConfigError, ContractError

NUL_ID = "L900\x00x"
LENIENT = {"data": {"max_quarantine_share": 0.9}}


def odd_tables() -> dict[str, pd.DataFrame]:
    t = small_tables()
    leads, accounts, events = t["leads"], t["accounts"], t["events"]
    leads.loc[0, "job_title"] = "VP\x01 Sales\x7f\tEMEA\nand APAC"  # cleaned: tab and newline stay
    leads.loc[1, "lead_source"] = "web\x00form"
    leads["crm_note"] = ["ok"] * len(leads)
    leads.loc[2, "crm_note"] = "bell\x07"
    extra = {
        "lead_id": [NUL_ID, "L901", "L902", "L903", "L904\x1b"],
        "created_at": ["2025-01-05", "0001-01-01", "2025-01-06", "2025-01-07", "2025-01-08"],
        "account_id": ["A1", "", "", "A\x00", ""],
        "lead_source": "web_form", "country": "US", "job_title": "", "crm_note": "x",
        "converted_at": ["", "", "2999-01-01", "", ""], "disqualified_at": "",
    }
    leads = pd.concat([leads, pd.DataFrame(extra)], ignore_index=True)
    accounts = pd.concat([accounts, pd.DataFrame({
        "account_id": ["A4", "A5", "A6", "A7", "A8", "A9"],
        "industry": "software", "country": "US",
        "employees": ["inf", "-5", "NaN", "1e400", "40", "12"],
        "annual_revenue": ["1e6", "2e6", "3e6", "4e6", "-1", "Infinity"],
    })], ignore_index=True)
    events["value"] = "12"
    events.loc[0, "value"] = "inf"
    events.loc[1, "value"] = "NaN"
    events.loc[2, "value"] = "1e400"
    events.loc[3, "occurred_at"] = "1900-01-01T00:00:00"
    events.loc[4, "event_type"] = "page\x00view"
    events = pd.concat([events, pd.DataFrame({
        "lead_id": [NUL_ID, "L000\x00"], "occurred_at": "2025-02-01", "event_type": "page_view", "value": "1",
    })], ignore_index=True)
    return {**t, "leads": leads, "accounts": accounts, "events": events}


def rejected(data) -> pd.DataFrame:
    return data.report.rejects


def check_loaded(data) -> None:
    r = rejected(data)
    why = {(row.table, row.column, row.reason.split(":")[0].split(" (")[0]) for row in r.itertuples()}
    leads = data.frame("leads").set_index("lead_id")
    # ids with a control character: quarantined, never loaded
    assert ("leads", "lead_id", "lead_id contains a control character") in why
    assert ("leads", "lead_id", "lead_id contains a control character") in why
    assert NUL_ID not in leads.index and "L904\x1b" not in leads.index and "L903" not in leads.index
    assert ("leads", "account_id", "account_id contains a control character") in why
    assert ("events", "lead_id", "lead_id contains a control character") in why
    value = r.loc[(r["table"] == "leads") & (r["column"] == "lead_id"), "value"]
    assert "L900\ufffdx" in set(value)  # shown, not written as a NUL byte
    # other text: control characters removed, tab and newline kept, counted
    assert leads.loc["L000", "job_title"] == "VP Sales\tEMEA\nand APAC"
    assert leads.loc["L001", "lead_source"] == "webform"
    assert leads.loc["L002", "crm_note"] == "bell"
    lead_warnings = data.report.tables["leads"].warnings
    for column in ("job_title", "lead_source", "crm_note"):
        assert lead_warnings[f"control characters removed from {column!r} (NUL and others but tab and newline)"] == 1
    events = data.frame("events")
    assert not events["event_type"].str.contains("\x00").any() and (events["event_type"] == "pageview").sum() == 1
    assert "control characters removed from 'event_type' (NUL and others but tab and newline)" in \
        data.report.tables["events"].warnings
    # implausible timestamps
    assert ("leads", "created_at", "created_at is implausible") in why
    assert ("leads", "converted_at", "converted_at is implausible") in why
    assert ("events", "occurred_at", "occurred_at is implausible") in why
    assert data.earliest_created() >= pd.Timestamp("2025-01-01")
    # firmographics
    accounts = r[r["table"] == "accounts"].set_index("value")
    assert accounts.loc["inf", "reason"] == "employees is not a finite number (inf or NaN)"
    assert accounts.loc["NaN", "reason"] == "employees is not a finite number (inf or NaN)"
    assert accounts.loc["1e400", "reason"] == "employees is not a finite number (inf or NaN)"
    assert accounts.loc["-5", "reason"] == "employees is negative"
    assert accounts.loc["-1", "reason"] == "annual_revenue is negative"
    assert accounts.loc["Infinity", "reason"] == "annual_revenue is not a finite number (inf or NaN)"
    assert set(data.frame("accounts")["account_id"]) == {"A1", "A2", "A3"}
    # a non-finite event value: kept, emptied, a warning
    assert data.report.tables["events"].warnings["value is not a finite number; the event is kept with no value"] == 3
    assert np.isfinite(events["value"].dropna()).all() and events["value"].isna().sum() == 3


def test_csv_export(tmp_path):
    folder = write_export(tmp_path / "csv", **odd_tables())
    data = load(folder, Config.from_dict(LENIENT))
    try:
        check_loaded(data)
        assert "control characters removed from 'job_title'" in str(data.report)
    finally:
        data.close()


def test_parquet_export_with_typed_columns(tmp_path):
    t = odd_tables()
    t["accounts"]["employees"] = pd.to_numeric(t["accounts"]["employees"], errors="coerce")
    t["accounts"]["annual_revenue"] = pd.to_numeric(t["accounts"]["annual_revenue"], errors="coerce")
    t["events"]["value"] = pd.to_numeric(t["events"]["value"], errors="coerce")
    folder = write_export(tmp_path / "pq", fmt="parquet", **t)
    data = load(folder, Config.from_dict(LENIENT))
    try:
        r = rejected(data)
        reasons = set(r.loc[r["table"] == "accounts", "reason"])
        assert {"employees is not a finite number (inf or NaN)", "employees is negative",
                "annual_revenue is negative", "annual_revenue is not a finite number (inf or NaN)"} <= reasons
        assert NUL_ID not in set(data.frame("leads")["lead_id"])
        # inf and 1e400 (inf once parsed); a NaN is a null in Parquet, so no warning
        assert data.report.tables["events"].warnings[
            "value is not a finite number; the event is kept with no value"] == 2
        assert np.isfinite(data.frame("events")["value"].dropna()).all()
    finally:
        data.close()


def test_database_source(tmp_path):
    db = tmp_path / "crm.db"
    with sqlite3.connect(db) as conn:
        for name, frame in odd_tables().items():
            frame.to_sql(name, conn, index=False)
        conn.execute("INSERT INTO accounts (account_id, industry, country, employees, annual_revenue) "
                     "VALUES ('A10', 'software', 'US', '3', 9e999)")  # a REAL infinity
    data = load(f"sqlite:///{db}", Config.from_dict(LENIENT))
    try:
        check_loaded(data)
        r = rejected(data)
        inf = r[(r["value"].str.lower() == "inf") & (r["column"] == "annual_revenue")]
        assert inf["reason"].tolist() == ["annual_revenue is not a finite number (inf or NaN)"]
    finally:
        data.close()


def test_strict_turns_a_control_character_into_an_error(tmp_path):
    t = small_tables()
    t["leads"].loc[3, "lead_id"] = "L003\x00"
    folder = write_export(tmp_path / "strict", **t)
    with pytest.raises(ContractError, match="lead_id contains a control character") as info:
        load(folder, Config(), strict=True)
    assert "row 4" in str(info.value) and "\x00" not in str(info.value)


def test_the_plausible_range_is_configurable(tmp_path):
    folder = write_export(tmp_path / "range", **small_tables())
    cfg = Config.from_dict({"data": {"valid_to": "2025-03-01", "max_quarantine_share": 1.0}})
    data = load(folder, cfg)
    try:
        leads = data.frame("leads")
        assert (leads["created_at"] <= pd.Timestamp("2025-03-01")).all()
        assert data.report.tables["events"].reasons[
            "occurred_at is implausible: outside data.valid_from .. data.valid_to (1970-01-01 .. 2025-03-01)"] > 0
    finally:
        data.close()
    with pytest.raises(ConfigError, match="valid_from"):
        Config.from_dict({"data": {"valid_from": "the seventies"}})
    with pytest.raises(ConfigError, match="must be later"):
        Config.from_dict({"data": {"valid_from": "2025-01-01", "valid_to": "2024-01-01"}}).data.valid_range()


def test_flat_file_ids_and_text(tmp_path):
    from tests.conftest import flat_table

    from convert.sources import flat

    frame = flat_table(n=400)
    frame.loc[5, "Lead Id"] = "P\x00005"
    frame.loc[6, "Source"] = "web\x01"
    path = tmp_path / "flat.csv"
    frame.to_csv(path, index=False)
    table = flat.load_flat(path, Config(), target="Converted", positive="yes", id_column="Lead Id")
    rejects = table.report.rejects
    assert rejects["reason"].tolist() == ["Lead Id contains a control character (a NUL byte or another non-printing one)"]
    assert rejects["row"].tolist() == [6] and rejects["value"].tolist() == ["P\ufffd005"]
    assert "web" in set(table.frame["Source"]) and not table.frame["Source"].str.contains("\x01").any()
    assert table.report.tables["leads"].warnings[
        "control characters removed from 'Source' (NUL and others but tab and newline)"] == 1


def test_a_nul_lead_id_no_longer_breaks_the_postgresql_write(trained, sim_export, fast_config, tmp_path):
    """Before: `invalid byte sequence for encoding "UTF8": 0x00` on every write."""
    url = require_postgres()
    from convert.io.writers import read_table
    from convert.steps import score_step

    result, _ = trained
    bundle = result.model.save(tmp_path / "bundle")
    folder = tmp_path / "export"
    shutil.copytree(sim_export, folder)
    leads = pd.read_csv(folder / "leads.csv", dtype=str, keep_default_na=False)
    nul = leads.iloc[[10]].assign(lead_id="L\x00NUL", converted_at="", disqualified_at="")
    odd = leads.iloc[[11]].assign(lead_id="L-ODD", job_title="Head\x00 of\x1b Sales", converted_at="",
                                  disqualified_at="")
    pd.concat([leads, nul, odd]).to_csv(folder / "leads.csv", index=False)
    table = f"scores_{uuid.uuid4().hex[:10]}"
    cfg = fast_config.with_overrides(data__max_quarantine_share=0.2)
    scored = score_step(folder, cfg, pd.Timestamp("2025-07-01"), url, str(bundle), table,
                        rejects=str(tmp_path / "rejects.csv"), progress=False)
    written = read_table(url, table)
    assert len(written) == len(scored.scores) > 1000
    assert "L-ODD" in set(written["lead_id"]) and not written["lead_id"].str.contains("\x00").any()
    rejects = pd.read_csv(tmp_path / "rejects.csv", keep_default_na=False)
    assert "L\ufffdNUL" in set(rejects["value"])
    import sqlalchemy as sa

    from convert.io.writers import engine_url

    engine = sa.create_engine(engine_url(url))
    with engine.begin() as conn:
        for name in (table, f"{table}_history"):
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{name}" CASCADE'))
    engine.dispose()
