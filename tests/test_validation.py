"""The contract's bad-rows table, one test per row: error or quarantine, counts, rejects."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.conftest import write_export

from convert import load
from convert.cli import main
from convert.config import Config
from convert.exceptions import ContractError
from convert.sources.validation import VALUE_WARNING


def _load(tmp_path, cfg, fmt="csv", **tables):
    return load(write_export(tmp_path / "crm", fmt, **tables), cfg)


def _rejects(data, table):
    r = data.report.rejects
    return r[r["table"] == table].reset_index(drop=True)


def test_clean_export_loads_everything(tmp_path, tables):
    data = _load(tmp_path, Config(), **tables)
    r = data.report
    assert r.quarantined == 0
    assert r.tables["leads"].rows_loaded == len(tables["leads"])
    assert r.tables["events"].rows_loaded == len(tables["events"])
    leads = data.frame("leads")
    assert str(leads["created_at"].dtype).startswith("datetime64")
    # an all-empty timestamp column is still a timestamp, not text
    assert str(leads["disqualified_at"].dtype).startswith("datetime64")
    assert leads["disqualified_at"].isna().all()


def test_parquet_and_csv_load_the_same(tmp_path, tables):
    a = load(write_export(tmp_path / "a", "csv", **tables))
    b = load(write_export(tmp_path / "b", "parquet", **tables))
    for t in ("leads", "accounts", "events", "stages"):
        pd.testing.assert_frame_equal(a.frame(t), b.frame(t), check_dtype=False)


def test_offsets_are_honoured_and_naive_times_are_utc(tmp_path, tables):
    leads = tables["leads"].copy()
    leads.loc[0, "created_at"] = "2025-01-01T10:00:00+02:00"
    leads.loc[1, "created_at"] = "2025-01-01T08:00:00Z"
    leads.loc[2, "created_at"] = "2025-01-01"
    data = _load(tmp_path, Config(), **{**tables, "leads": leads})
    got = data.frame("leads").set_index("lead_id")["created_at"]
    assert got["L000"] == pd.Timestamp("2025-01-01 08:00")
    assert got["L001"] == pd.Timestamp("2025-01-01 08:00")
    assert got["L002"] == pd.Timestamp("2025-01-01 00:00")


# --- errors -------------------------------------------------------------------------------


def test_missing_required_table_is_an_error(tmp_path, tables):
    folder = write_export(tmp_path / "crm", events=tables["events"])
    with pytest.raises(ContractError, match="required table 'leads'"):
        load(folder)


def test_missing_required_column_names_file_and_column(tmp_path, tables):
    leads = tables["leads"].drop(columns=["created_at"])
    with pytest.raises(ContractError) as err:
        _load(tmp_path, Config(), **{**tables, "leads": leads})
    assert err.value.file == "leads.csv" and err.value.column == "created_at"


def test_unparseable_file_is_an_error(tmp_path, tables):
    folder = write_export(tmp_path / "crm", **tables)
    (folder / "events.csv").write_text('lead_id,occurred_at,event_type\nL000,"2025-01-02,page_view\n')
    with pytest.raises(ContractError, match="never closed") as err:
        load(folder)
    assert "events.csv" in str(err.value)
    assert (err.value.file, err.value.row, err.value.column) == ("events.csv", 1, "occurred_at")


def test_duplicate_lead_id_is_an_error_naming_the_row(tmp_path, tables):
    leads = pd.concat([tables["leads"], tables["leads"].iloc[[3]]], ignore_index=True)
    with pytest.raises(ContractError) as err:
        _load(tmp_path, Config(), **{**tables, "leads": leads})
    assert (err.value.file, err.value.row, err.value.column) == ("leads.csv", len(leads), "lead_id")


def test_duplicate_account_id_is_an_error(tmp_path, tables):
    accounts = pd.concat([tables["accounts"], tables["accounts"].iloc[[0]]], ignore_index=True)
    with pytest.raises(ContractError) as err:
        _load(tmp_path, Config(), **{**tables, "accounts": accounts})
    assert (err.value.file, err.value.row, err.value.column) == ("accounts.csv", 4, "account_id")


def test_too_large_quarantined_share_is_an_error(tmp_path, tables):
    leads = tables["leads"].copy()
    leads.loc[:5, "created_at"] = "not a date"  # 6 of 40 = 15%
    with pytest.raises(ContractError, match="mis-mapped"):
        _load(tmp_path, Config(), **{**tables, "leads": leads})
    cfg = Config.from_dict({"data": {"max_quarantine_share": 0.2}})
    assert _load(tmp_path / "ok", cfg, **{**tables, "leads": leads}).report.tables["leads"].quarantined == 6


def test_strict_turns_a_quarantine_into_an_error(tmp_path, tables, lenient):
    events = tables["events"].copy()
    events.loc[2, "occurred_at"] = "yesterday"
    folder = write_export(tmp_path / "crm", **{**tables, "events": events})
    with pytest.raises(ContractError) as err:
        load(folder, lenient, strict=True)
    assert (err.value.file, err.value.row, err.value.column) == ("events.csv", 3, "occurred_at")


# --- quarantines --------------------------------------------------------------------------


def test_empty_lead_id_quarantines_the_lead(tmp_path, tables, lenient):
    leads = tables["leads"].copy()
    leads.loc[4, "lead_id"] = ""
    data = _load(tmp_path, lenient, **{**tables, "leads": leads})
    rej = _rejects(data, "leads")
    assert rej[["row", "column", "reason"]].values.tolist() == [[5, "lead_id", "empty lead_id"]]
    # its events now point at an unknown lead and are quarantined too
    n_events = int((tables["events"]["lead_id"] == "L004").sum())
    assert data.report.tables["events"].reasons == {"lead_id not found in leads": n_events}


def test_unparseable_created_at_quarantines_the_lead_with_its_events_and_stages(tmp_path, tables, lenient):
    leads = tables["leads"].copy()
    leads.loc[7, "created_at"] = "31/02/2025"
    data = _load(tmp_path, lenient, **{**tables, "leads": leads})
    rej = _rejects(data, "leads")
    assert rej.loc[0, ["row", "column", "value"]].tolist() == [8, "created_at", "31/02/2025"]
    n_events = int((tables["events"]["lead_id"] == "L007").sum())
    assert data.report.tables["events"].reasons == {"its lead is quarantined": n_events}
    assert data.report.tables["stages"].reasons == {"its lead is quarantined": 1}
    assert "L007" not in set(data.frame("events")["lead_id"])


@pytest.mark.parametrize(
    ("column", "value", "reason"),
    [
        ("converted_at", "soon", "converted_at is not an ISO 8601 timestamp"),
        ("converted_at", "2020-01-01", "converted_at is earlier than created_at"),
        ("disqualified_at", "2025-13-45", "disqualified_at is not an ISO 8601 timestamp"),
        ("disqualified_at", "2020-01-01", "disqualified_at is earlier than created_at"),
    ],
)
def test_bad_outcome_timestamps_quarantine_the_lead(tmp_path, tables, lenient, column, value, reason):
    leads = tables["leads"].copy()
    leads.loc[9, column] = value
    data = _load(tmp_path, lenient, **{**tables, "leads": leads})
    rej = _rejects(data, "leads")
    assert rej[["row", "column", "value", "reason"]].values.tolist() == [[10, column, value, reason]]
    assert data.report.tables["leads"].rows_loaded == len(leads) - 1


@pytest.mark.parametrize("column", ["employees", "annual_revenue"])
def test_non_numeric_firmographics_quarantine_the_account(tmp_path, tables, lenient, column):
    accounts = tables["accounts"].copy()
    accounts.loc[1, column] = "lots"
    data = _load(tmp_path, lenient, **{**tables, "accounts": accounts})
    rej = _rejects(data, "accounts")
    assert rej[["row", "column", "value"]].values.tolist() == [[2, column, "lots"]]
    # its leads stay, without firmographics, and are counted
    n = int((tables["leads"]["account_id"] == "A2").sum())
    assert data.report.tables["leads"].rows_loaded == len(tables["leads"])
    assert data.report.tables["leads"].warnings == {"account quarantined; lead kept without firmographics": n}


def test_unknown_account_keeps_the_lead_with_a_warning(tmp_path, tables):
    leads = tables["leads"].copy()
    leads.loc[[1, 5], "account_id"] = "NOPE"
    data = _load(tmp_path, Config(), **{**tables, "leads": leads})
    assert data.report.quarantined == 0
    assert data.report.tables["leads"].warnings == {
        "account_id not found in accounts; lead kept without firmographics": 2
    }


@pytest.mark.parametrize("table,time_col", [("events", "occurred_at"), ("stages", "entered_at")])
def test_child_rows_of_unknown_leads_or_bad_times_are_quarantined(tmp_path, tables, lenient, table, time_col):
    frame = tables[table].copy()
    frame.loc[0, "lead_id"] = "GHOST"
    frame.loc[1, time_col] = "not a time"
    frame.loc[2, time_col] = "2000-01-01T00:00:00"
    data = _load(tmp_path, lenient, **{**tables, table: frame})
    rej = _rejects(data, table)
    assert rej[["row", "column", "reason"]].values.tolist() == [
        [1, "lead_id", "lead_id not found in leads"],
        [2, time_col, f"{time_col} is empty or not an ISO 8601 timestamp"],
        [3, time_col, f"{time_col} is earlier than the lead's created_at"],
    ]
    assert data.report.tables[table].rows_loaded == len(frame) - 3


# --- the command --------------------------------------------------------------------------


def test_validate_command_writes_rejects_and_exits_2_on_errors(tmp_path, tables, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    events = tables["events"].copy()
    events.loc[0, "lead_id"] = "GHOST"
    folder = write_export(tmp_path / "crm", **{**tables, "events": events})
    main(["validate", "--data", str(folder)])
    out = capsys.readouterr().out
    assert "lead_id not found in leads" in out
    rejects = pd.read_csv(tmp_path / "rejects.csv")
    assert rejects[["table", "row", "column", "value"]].values.tolist() == [["events", 1, "lead_id", "GHOST"]]

    with pytest.raises(SystemExit) as code:
        main(["validate", "--data", str(folder), "--strict", "--rejects", str(tmp_path / "r2.csv")])
    assert code.value.code == 2
    assert "events.csv, row 1, column 'lead_id'" in capsys.readouterr().err


# --- one read of a child table's file -----------------------------------------------------


def test_a_broken_row_in_events_csv_is_named_by_file_row_and_column(tmp_path, tables):
    folder = write_export(tmp_path / "crm", **tables)
    lines = (folder / "events.csv").read_text().splitlines()
    lines[3] += ",extra"  # the third data row has a field too many
    (folder / "events.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(ContractError) as err:
        load(folder, Config(), cache=False)
    assert (err.value.file, err.value.row) == ("events.csv", 3) and "fields" in str(err.value)


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_text_facts_tell_what_a_file_surely_lacks(tmp_path, tables, fmt):
    from convert.sources.readers import find_source, text_facts

    events = tables["events"].copy()
    clean = text_facts(find_source(write_export(tmp_path / "clean", fmt, **{**tables, "events": events})), "events")
    assert not clean.control and clean.untrimmed == (fmt == "csv")  # CSV bytes do not tell trimming
    for value in ("web\x01", "web\u0085", "web\r"):
        events.loc[0, "channel"] = value
        facts = text_facts(find_source(write_export(tmp_path / f"x{ord(value[-1])}", fmt, **{**tables, "events": events})),
                           "events")
        assert facts.control, value
    if fmt == "parquet":
        events.loc[0, "channel"] = " web "
        facts = text_facts(find_source(write_export(tmp_path / "untrimmed", fmt, **{**tables, "events": events})), "events")
        assert facts.untrimmed and not facts.control


def test_control_bytes_are_exactly_the_control_characters_of_utf8():
    """The vectorised byte test agrees with the contract's regular expression on every byte,
    and finds the two-byte C1 characters (and not other two-byte characters)."""
    from convert.sources.readers import _bytes_hold_control
    from convert.sources.rules import CONTROL_RE

    for b in range(128):
        text = f"ab{chr(b)}cd"
        assert _bytes_hold_control(text.encode()) == bool(CONTROL_RE.search(text)), b
    for text in ("x\u0085y", "x\u009fy", "caf\u00e9 \u00a3", "\u00c2\u0080"):
        assert _bytes_hold_control(bytearray(text.encode()) + b"\x01", len(text.encode())) == \
            bool(CONTROL_RE.search(text)), text


def test_untrimmed_parquet_text_is_trimmed_and_empty_text_is_missing(tmp_path, tables):
    events = tables["events"].copy()
    events.loc[0, "channel"] = "  email "
    events.loc[1, "channel"] = ""
    events.loc[2, "lead_id"] = f" {events.loc[2, 'lead_id']} "
    data = _load(tmp_path, Config(), fmt="parquet", **{**tables, "events": events})
    got = data.frame("events")
    assert "email" in set(got["channel"]) and "" not in set(got["channel"].dropna())
    assert data.report.tables["events"].rows_loaded == len(events)


@pytest.mark.parametrize("tz", [None, "UTC"])
@pytest.mark.parametrize("unit", ["us", "ns"])
def test_rejected_stored_timestamps_show_their_text_without_a_kept_copy(tmp_path, tables, tz, unit):
    """A Parquet file's stored timestamps (naive or with a time zone) keep no raw text copy
    when in microseconds: a rejected row's value is rebuilt from its typed instant, the same
    text DuckDB prints for the stored value, for a rule of its own (implausible) and one on its
    lead (dated before it). Nanoseconds (which the typed value does not hold) keep their text."""
    events = tables["events"].copy()
    events["occurred_at"] = pd.to_datetime(events["occurred_at"]).dt.tz_localize(tz)
    events.loc[0, "occurred_at"] = pd.Timestamp("1900-01-02 03:04:05", tz=tz)
    lead_created = pd.Timestamp(tables["leads"].set_index("lead_id").loc[events.loc[1, "lead_id"], "created_at"])
    events.loc[1, "occurred_at"] = (lead_created - pd.Timedelta(hours=1)).tz_localize(tz)
    events["occurred_at"] = events["occurred_at"].astype(f"datetime64[{unit}{', UTC' if tz else ''}]")
    folder = write_export(tmp_path / "crm", "parquet", **{**tables, "events": events})
    data = load(folder, Config.from_dict({"data": {"max_quarantine_share": 0.5}}), cache=False)
    printed = [str(v) for v in data.con.execute(
        f"SELECT CAST(occurred_at AS VARCHAR) FROM read_parquet('{folder / 'events.parquet'}') LIMIT 2").fetchall()]
    got = _rejects(data, "events").set_index("row")
    assert list(got.index) == [1, 2]
    assert got.loc[1, "reason"].startswith("occurred_at is implausible")
    assert got.loc[2, "reason"] == "occurred_at is earlier than the lead's created_at"
    assert [f"('{got.loc[1, 'value']}',)", f"('{got.loc[2, 'value']}',)"] == printed
    assert got.loc[1, "value"].startswith("1900-01-02 03:04:05")
    data.close()


@pytest.mark.parametrize(("values", "emptied"), [
    ([1.0, 2.0, 3.5], 0),
    ([1e308, 1e308, 7.0], 0),  # finite values whose sum overflows: counted, none emptied
    ([1e308, float("inf"), float("-inf")], 2),
    ([float("nan"), float("inf"), 1.0], 1),  # a NaN is a null in Parquet: not a warning
])
def test_stored_event_values_that_are_not_finite_are_emptied_and_counted(tmp_path, tables, values, emptied):
    events = tables["events"].copy()
    events["value"] = [values[i % len(values)] if i < len(values) else 1.0 for i in range(len(events))]
    data = load(write_export(tmp_path / "crm", "parquet", **{**tables, "events": events}), Config(), cache=False)
    got = data.frame("events")["value"]
    assert data.report.tables["events"].warnings.get(VALUE_WARNING, 0) == emptied
    assert got.notna().sum() == len(events) - emptied - (1 if np.isnan(values[0]) else 0)
    assert np.isfinite(got.dropna()).all() and (got.dropna() == 1e308).sum() == values.count(1e308)
    data.close()


CONTROL_KEY = "lead_id contains a control character (a NUL byte or another non-printing one)"


@pytest.mark.parametrize(("key", "reason", "lead_too"), [
    (" {} ", None, False),  # trimmed, it is its lead's id: loaded
    ("", "empty lead_id", False),
    ("{}\x01", CONTROL_KEY, False),
    ("{}\x01", CONTROL_KEY, True),  # the (quarantined) lead's id holds the same character: it matches
])
def test_a_parquet_lead_key_left_unread_is_still_trimmed_and_checked(tmp_path, tables, key, reason, lead_too):
    """The text facts of a Parquet child file leave its lead key unread (costly to read when it
    is not dictionary encoded); the rule pass then checks the keys of the rows it rejected for
    their lead, and redoes the pass when one needs trimming or holds a control character: the
    same rows and reasons as with every column read."""
    from convert.sources.readers import find_source, text_facts

    events, leads = tables["events"].copy(), tables["leads"].copy()
    lead = events.loc[0, "lead_id"]
    events["lead_id"] = events["lead_id"].astype(object)
    events.loc[0, "lead_id"] = key.format(lead)
    if lead_too:
        leads["lead_id"] = leads["lead_id"].astype(object)
        leads.loc[leads["lead_id"] == lead, "lead_id"] = key.format(lead)
    changed = {**tables, "events": events, "leads": leads}
    facts = text_facts(find_source(write_export(tmp_path / "facts", "parquet", **changed)), "events", ("lead_id",))
    assert facts.unread == ("lead_id",) and not facts.control and not facts.untrimmed
    data = load(write_export(tmp_path / "crm", "parquet", **changed), Config.from_dict(
        {"data": {"max_quarantine_share": 0.5}}), cache=False)
    rejected = _rejects(data, "events")
    rejected = rejected[rejected["row"] == 1]
    if reason is None:
        assert rejected.empty and lead in set(data.frame("events")["lead_id"])
    else:
        assert list(rejected["reason"]) == [reason], rejected
    data.close()


@pytest.mark.parametrize("fmt", ["csv", "parquet"])
def test_indexed_events_are_the_loaded_events_under_their_leads_keys(tmp_path, fmt):
    """The feature engine's indexed events come from the validation pass's own join with the
    checked leads: with quarantined leads and events (which shift every later lead's key), each
    indexed event joined back through the keyed leads is exactly a loaded event, and the
    per-day activity built on first use matches the events."""
    from convert.features.engine import ensure_indexed
    from convert.simulator.crm import generate_crm
    from convert.sources.readers import has_table

    generate_crm(tmp_path / "crm", n_leads=1500, seed=11, fmt=fmt, bad_rows=True)
    data = load(tmp_path / "crm", Config.from_dict({"data": {"max_quarantine_share": 0.5}}), cache=False)
    assert data.report.tables["leads"].quarantined > 0 and data.report.tables["events"].quarantined > 0
    assert not has_table(data.con, "_events_keyed")  # the validation pass's table is gone
    cols = "lead_id, event_type, occurred_at"
    indexed = data.con.execute(
        "SELECT l.lead_id, CAST(e.event_type AS VARCHAR) AS event_type, e.occurred_at "
        "FROM _events_indexed e JOIN _leads_indexed l USING (lead_key)"
    ).df()
    loaded = data.con.execute(f"SELECT {cols} FROM events").df()
    assert len(indexed) == len(loaded) > 1000
    key = cols.split(", ")
    pd.testing.assert_frame_equal(
        indexed.sort_values(key).reset_index(drop=True), loaded.sort_values(key).reset_index(drop=True)
    )
    assert not has_table(data.con, "_active_days")  # built by the first feature query, not the load
    ensure_indexed(data.con)
    days = data.con.execute(
        "SELECT l.lead_id, count(*) AS n FROM _active_days a JOIN _leads_indexed l USING (lead_key) GROUP BY 1"
    ).df().set_index("lead_id")["n"].sort_index()
    expected = loaded.assign(day=loaded["occurred_at"].dt.floor("D")).groupby("lead_id")["day"].nunique()
    pd.testing.assert_series_equal(days, expected.sort_index(), check_names=False)
    first = data.con.execute("SELECT lead_id, _first_event_at FROM _leads_indexed WHERE _first_event_at IS NOT NULL").df()
    pd.testing.assert_series_equal(
        first.set_index("lead_id")["_first_event_at"].sort_index(),
        loaded.groupby("lead_id")["occurred_at"].min().sort_index(),
        check_names=False,
    )
    data.close()


def test_event_types_from_parquet_dictionaries_make_the_same_enum(tmp_path, monkeypatch):
    """A Parquet events file's event types come from its dictionaries (read by the text-facts
    thread) instead of a DISTINCT over the typed events: the same ENUM, in DuckDB's byte order.
    Known types that lack one (e.g. a value a mapping rewrote) are found all again."""
    import pyarrow.parquet as pq

    from convert.features import engine
    from convert.simulator.crm import generate_crm
    from convert.sources import readers, validation

    generate_crm(tmp_path / "crm", n_leads=600, seed=5, fmt="parquet")
    path = tmp_path / "crm" / "events.parquet"
    expected = sorted(set(pq.read_table(path, columns=["event_type"]).column(0).to_pylist()) - {None},
                      key=lambda t: t.encode())
    assert sorted(readers._parquet_text_facts(path, "event_type").event_types, key=lambda t: t.encode()) == expected
    given: list[object] = []

    def spy(con, relation, types=None):
        given.append(types)
        return engine.event_type_enum(con, relation, types)

    monkeypatch.setattr(validation, "event_type_enum", spy)
    for facts in (None, readers.TextFacts(control=False, untrimmed=False, event_types=(expected[0],))):
        if facts is not None:
            monkeypatch.setattr(validation, "text_facts", lambda source, table, skip, facts=facts: facts)
        given.clear()
        data = load(tmp_path / "crm", Config(), cache=False)
        members = data.con.execute("SELECT enum_range(NULL::_event_type)").fetchone()[0]
        assert list(members) == expected
        # the dictionaries' types were used; when they lacked one, the DISTINCT ran after them
        assert given[0] is not None and (given[1:] == [None] if facts is not None else given[1:] == [])
        data.close()
