"""Mapping files: the shipped HubSpot and Salesforce examples end to end, and each mapping rule."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from tests.conftest import write_export

from convert import load
from convert.config import Config
from convert.exceptions import ConfigError, ContractError
from convert.sources.mapping import Mapping, load_mapping, mapping_from_dict

MAPPINGS = Path(__file__).resolve().parents[1] / "docs" / "mappings"
CONTRACT_COLUMNS = {
    "leads": ["lead_id", "created_at", "account_id", "lead_source", "country", "job_title", "converted_at",
              "disqualified_at"],
    "accounts": ["account_id", "industry", "employees", "annual_revenue", "country"],
    "events": ["lead_id", "occurred_at", "event_type", "channel", "campaign_id", "url", "value"],
    "stages": ["lead_id", "stage", "entered_at"],
}
TIMESTAMPS = {"created_at", "converted_at", "disqualified_at", "occurred_at", "entered_at"}
NUMBERS = {"employees", "annual_revenue", "value"}
#: columns a real export carries and the example mappings exclude, with a value each
EXTRAS = {
    "hubspot": {"leads": {"Lead Status": "OPEN_DEAL", "Email": "x@example.com"},
                "accounts": {"Company name": "Acme"}},
    "salesforce": {"leads": {"Lead Status": "Closed - Converted", "Rating": "Hot", "Email": "x@example.com"},
                   "accounts": {"Account Name": "Société Générale"}},
}


def _format_time(text: str, mapping: Mapping) -> str:
    """An ISO 8601 value as the source writes it (local time, first format); bad values stay."""
    ts = pd.to_datetime(text, utc=True, format="ISO8601", errors="coerce")
    if pd.isna(ts):
        return text
    return ts.tz_convert(mapping.dates.timezone).strftime(mapping.dates.formats[0])


def _format_number(text: str, mapping: Mapping) -> str:
    try:
        x = float(text)
    except ValueError:
        return text
    fmt = mapping.csv
    if x.is_integer() and abs(x) < 1e15:
        out = f"{int(x):,}".replace(",", fmt.thousands)
    else:
        out = repr(x)
    return out.replace(".", fmt.decimal) if not (x.is_integer() and abs(x) < 1e15) else out


def _ambiguous(ts: pd.Timestamp, zone: str) -> bool:
    """A local time that occurs twice (the hour repeated when daylight saving time ends)."""
    naive = ts.tz_convert(zone).tz_localize(None)
    try:
        naive.tz_localize(zone, ambiguous="raise")
    except Exception:  # noqa: BLE001 - pytz/zoneinfo raise different types
        return True
    return False


def unambiguous_copy(export: Path, zone: str, out: Path) -> Path:
    """The export with every instant whose local time in *zone* is ambiguous moved 2 hours
    later: an export without offsets cannot tell those instants apart (the mapping reads
    them as standard time), so the round trip below would differ there by construction."""
    out.mkdir(parents=True, exist_ok=True)
    for table in CONTRACT_COLUMNS:
        frame = pd.read_csv(export / f"{table}.csv", dtype=str, keep_default_na=False)
        for col in TIMESTAMPS & set(frame.columns):
            def fix(v: str) -> str:
                ts = pd.to_datetime(v, utc=True, format="ISO8601", errors="coerce") if v else pd.NaT
                if pd.isna(ts) or not _ambiguous(ts, zone):
                    return v
                return (ts + pd.Timedelta(hours=2)).strftime("%Y-%m-%dT%H:%M:%SZ")
            frame[col] = frame[col].map(fix)
        frame.to_csv(out / f"{table}.csv", index=False)
    return out


def to_source_shape(export: Path, mapping: Mapping, out: Path, flavour: str) -> Path:
    """Rewrite a contract export the way the mapped CRM writes it (names, values, dates,
    numbers, separator, encoding), adding columns the mapping excludes."""
    out.mkdir(parents=True, exist_ok=True)
    for table in CONTRACT_COLUMNS:
        tm = mapping.table(table)
        frame = pd.read_csv(export / f"{table}.csv", dtype=str, keep_default_na=False)
        for col in frame.columns:
            inverse = {v: k for k, v in tm.values.get(col, {}).items()}
            if inverse:
                frame[col] = frame[col].map(lambda v, inv=inverse: inv.get(v, v))
            if col in TIMESTAMPS:
                frame[col] = frame[col].map(lambda v: _format_time(v, mapping) if v else v)
            if col in NUMBERS:
                frame[col] = frame[col].map(lambda v: _format_number(v, mapping) if v else v)
        if table == "leads" and flavour == "salesforce":  # accented text survives cp1252
            frame.loc[frame.index % 7 == 0, "job_title"] = "Directrice générale"
        for name, value in EXTRAS.get(flavour, {}).get(table, {}).items():
            frame[name] = value
        inverse_names = {v: k for k, v in tm.rename.items()}
        frame = frame.rename(columns=lambda c, inv=inverse_names: inv.get(c, c))
        frame.to_csv(out / (tm.source or f"{table}.csv"), index=False, sep=mapping.csv.delimiter,
                     encoding=mapping.csv.encoding, quoting=csv.QUOTE_MINIMAL)
    return out


@pytest.fixture(scope="module")
def sim_small(tmp_path_factory) -> Path:
    from convert.simulator.crm import generate_crm

    folder = tmp_path_factory.mktemp("sim_small")
    generate_crm(folder, n_leads=400, seed=11, start="2023-01-01", end="2024-12-31")
    return folder


@pytest.mark.slow  # builds a source-shaped copy of a simulated CRM and loads both
@pytest.mark.parametrize("flavour", ["hubspot", "salesforce"])
def test_example_mapping_loads_a_source_shaped_export_like_the_contract_export(
    flavour, sim_small, tmp_path
):
    mapping = load_mapping(MAPPINGS / f"{flavour}.yaml")
    base = unambiguous_copy(sim_small, mapping.dates.timezone, tmp_path / "base")
    source = to_source_shape(base, mapping, tmp_path / flavour, flavour)
    assert not (source / "leads.csv").exists()  # the files carry the CRM's own names
    expected = load(base, Config())
    got = load(source, Config(), mapping=mapping)
    for table in CONTRACT_COLUMNS:
        a = expected.frame(table)
        b = got.frame(table)
        if table == "leads" and flavour == "salesforce":
            titles = b["job_title"].copy()
            assert (titles == "Directrice générale").sum() > 0
            b = b.drop(columns="job_title")
            a = a.drop(columns="job_title")
        assert list(b.columns) == list(a.columns), table  # excluded columns are gone
        pd.testing.assert_frame_equal(a, b, check_dtype=False, obj=table)
    keys = ["table", "row", "column", "reason"]
    pd.testing.assert_frame_equal(expected.report.rejects[keys], got.report.rejects[keys])
    assert set(got.mapped["leads"].excluded) == set(EXTRAS[flavour]["leads"])


def test_hubspot_values_dates_and_missing_tokens(tmp_path):
    mapping = load_mapping(MAPPINGS / "hubspot.yaml")
    folder = tmp_path / "hs"
    folder.mkdir()
    pd.DataFrame({
        "Record ID": ["101", "102"], "Create Date": ["2024-03-15 10:22", "2024-07-01 09:00:00"],
        "Associated Company ID": ["", ""], "Original Source": ["ORGANIC_SEARCH", "(No value)"],
        "Country/Region": ["US", "(No value)"], "Job Title": ["VP Sales", ""],
        "Became a Customer Date": ["2024-04-01", ""], "Disqualification Date": ["", ""],
        "Lead Status": ["OPEN_DEAL", "NEW"],
    }).to_csv(folder / "contacts.csv", index=False)
    pd.DataFrame({"Contact ID": ["101"], "Activity Date": ["2024-03-16 08:00"],
                  "Activity Type": ["EMAIL_OPEN"]}).to_csv(folder / "activities.csv", index=False)
    data = load(folder, Config(), mapping=mapping)
    leads = data.frame("leads").set_index("lead_id")
    # New York is UTC-4 in March (daylight saving time) and July
    assert leads.loc["101", "created_at"] == pd.Timestamp("2024-03-15 14:22")
    assert leads.loc["102", "created_at"] == pd.Timestamp("2024-07-01 13:00")
    assert leads.loc["101", "converted_at"] == pd.Timestamp("2024-04-01 04:00")  # local midnight
    assert leads.loc["101", "lead_source"] == "organic"
    assert pd.isna(leads.loc["102", "lead_source"]) and pd.isna(leads.loc["102", "country"])
    assert "Lead Status" not in leads.columns
    events = data.frame("events")
    assert events["event_type"].tolist() == ["email_open"]
    assert events["occurred_at"].tolist() == [pd.Timestamp("2024-03-16 12:00")]


def test_salesforce_encoding_separators_and_decimal_commas(tmp_path):
    mapping = load_mapping(MAPPINGS / "salesforce.yaml")
    folder = tmp_path / "sf"
    folder.mkdir()
    (folder / "Leads.csv").write_bytes(
        "Lead ID;Created Date;Account ID;Lead Source;Country;Title;Converted Date;Disqualified Date\n"
        "00Q1;15/03/2024 10:22;001A;Web;FR;Directrice générale;;\n"
        "00Q2;01/08/2024;001A;--None--;[not provided];Ingénieur;;\n".encode("cp1252")
    )
    (folder / "Accounts.csv").write_bytes(
        "Account ID;Industry;Employees;Annual Revenue;Billing Country\n"
        '001A;Technology;1.250;"2.500.000,50";FR\n'.encode("cp1252")
    )
    data = load(folder, Config(), mapping=mapping)
    leads = data.frame("leads").set_index("lead_id")
    assert leads.loc["00Q1", "job_title"] == "Directrice générale"
    assert leads.loc["00Q1", "created_at"] == pd.Timestamp("2024-03-15 09:22")  # Paris is UTC+1 in March
    assert leads.loc["00Q2", "created_at"] == pd.Timestamp("2024-07-31 22:00")  # local midnight, UTC+2
    assert leads.loc["00Q1", "lead_source"] == "web_form"
    assert pd.isna(leads.loc["00Q2", "lead_source"]) and pd.isna(leads.loc["00Q2", "country"])
    account = data.frame("accounts").iloc[0]
    assert account["industry"] == "software"
    assert account["employees"] == 1250 and account["annual_revenue"] == pytest.approx(2_500_000.5)


def test_unparseable_mapped_date_is_quarantined_with_its_original_value(tmp_path, lenient):
    mapping = mapping_from_dict({"dates": {"formats": ["%d/%m/%Y"]}})
    leads = pd.DataFrame({"lead_id": ["a", "b"], "created_at": ["15/03/2024", "31/02/2024"]})
    for column in CONTRACT_COLUMNS["leads"][2:]:
        leads[column] = ""
    data = load(write_export(tmp_path / "x", leads=leads), lenient, mapping=mapping)
    assert data.frame("leads")["lead_id"].tolist() == ["a"]
    rejects = data.report.rejects
    assert rejects[["row", "column", "value"]].values.tolist() == [[2, "created_at", "31/02/2024"]]


def test_rename_of_a_missing_required_column_names_file_and_column(tmp_path, tables):
    leads = tables["leads"].drop(columns="lead_id")
    mapping = mapping_from_dict({"tables": {"leads": {"rename": {"Record ID": "lead_id", "Persona": "persona"}}}})
    with pytest.raises(ContractError) as err:
        load(write_export(tmp_path / "x", **{**tables, "leads": leads}), Config(), mapping=mapping)
    assert err.value.file == "leads.csv" and err.value.column == "Record ID"
    # an optional column the export lacks is reported, not an error
    data = load(write_export(tmp_path / "y", **tables), Config(), mapping=mapping.model_copy(
        update={"tables": {"leads": mapping.table("leads").model_copy(update={"rename": {"Persona": "persona"}})}}))
    assert data.mapped["leads"].absent == ["Persona"]


def test_rename_onto_an_existing_column_is_an_error(tmp_path, tables):
    mapping = mapping_from_dict({"tables": {"leads": {"rename": {"country": "lead_source"}}}})
    with pytest.raises(ContractError, match="two columns would be named 'lead_source'"):
        load(write_export(tmp_path / "x", **tables), Config(), mapping=mapping)


def test_the_mapped_leads_file_must_exist(tmp_path, tables):
    mapping = mapping_from_dict({"tables": {"leads": {"source": "contacts.csv"}}})
    with pytest.raises(ContractError, match="contacts.csv"):
        load(write_export(tmp_path / "x", **tables), Config(), mapping=mapping)


def test_excluded_extra_attribute_never_reaches_the_data(tmp_path, tables):
    leads = tables["leads"].assign(lead_status=np.where(tables["leads"]["converted_at"] != "", "Won", "Open"))
    mapping = mapping_from_dict({"tables": {"leads": {"exclude": {"lead_status": "post-outcome"}}}})
    data = load(write_export(tmp_path / "x", **{**tables, "leads": leads}), Config(), mapping=mapping)
    assert "lead_status" not in data.frame("leads").columns
    assert data.mapped["leads"].excluded == {"lead_status": "post-outcome"}


@pytest.mark.parametrize(
    "raw, message",
    [
        ({"csv": {"delimiter": ";;"}}, "csv.delimiter"),
        ({"csv": {"encoding": "klingon"}}, "unknown encoding"),
        ({"dates": {"timezone": "Mars/Olympus"}}, "unknown time zone"),
        ({"dates": {"formats": ["%Y-%m-%dT%H:%M:%S%z"]}}, "offset"),
        ({"tables": {"leads": {"exclude": {"x": ""}}}}, "needs a reason"),
        ({"tables": {"opportunities": {}}}, "tables.opportunities"),
        ({"tables": {"leads": {"rename": {"a": "lead_id", "b": "lead_id"}}}}, "renamed to 'lead_id'"),
        ({"flat": {"split": "sideways"}}, "flat.split"),
        ({"unknown_key": 1}, "unknown_key"),
        (["not", "a", "mapping"], "must be a YAML mapping"),
    ],
)
def test_invalid_mapping_files_are_config_errors_naming_the_key(raw, message):
    with pytest.raises(ConfigError, match=message):
        mapping_from_dict(raw, source="m.yaml")


def test_mapping_file_errors(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_mapping(tmp_path / "absent.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("tables: [unclosed")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_mapping(bad)
