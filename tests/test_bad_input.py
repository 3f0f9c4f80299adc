"""Bad input from the wild: each case is handled or refused naming file, row and column,
and a property test mutates valid files: the loaders succeed (counting every row) or raise
convert's own error, never anything else."""

from __future__ import annotations

import csv
import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from tests.conftest import flat_table, small_tables, write_export

from convert import load
from convert.config import Config
from convert.exceptions import ContractError, ConvertError
from convert.sources.flat import load_flat
from convert.sources.mapping import mapping_from_dict

HEADER = "lead_id,created_at,account_id,lead_source,country,job_title,converted_at,disqualified_at"
LENIENT = Config.from_dict({"data": {"max_quarantine_share": 1.0}})


def _leads_csv(rows: list[str]) -> str:
    return HEADER + "\n" + "\n".join(rows) + "\n"


# --- encodings ----------------------------------------------------------------------------------


@pytest.mark.parametrize("encoding", ["cp1252", "latin-1"])
def test_another_encoding_is_refused_naming_file_row_and_column_or_read_as_declared(tmp_path, encoding):
    folder = tmp_path / "crm"
    folder.mkdir()
    text = _leads_csv(["L1,2025-01-01,,web,FR,Ingénieur,,", "L2,2025-01-02,,web,FR,Directrice générale,,"])
    (folder / "leads.csv").write_bytes(text.encode(encoding))
    with pytest.raises(ContractError) as err:
        load(folder)
    assert (err.value.file, err.value.row, err.value.column) == ("leads.csv", 1, "job_title")
    assert "0xE9" in str(err.value) and "encoding: cp1252" in str(err.value)
    data = load(folder, mapping=mapping_from_dict({"csv": {"encoding": encoding}}))
    assert data.frame("leads")["job_title"].tolist() == ["Ingénieur", "Directrice générale"]


def test_undecodable_byte_in_a_declared_encoding_names_the_row(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes(b"id,name,y\n1,ok,1\n2,bad \x81 byte,0\n")  # 0x81 is undefined in cp1252
    with pytest.raises(ContractError) as err:
        load_flat(path, Config(), mapping_from_dict({"csv": {"encoding": "cp1252"}}), target="y")
    assert (err.value.row, err.value.column) == (2, "name") and "not valid cp1252" in str(err.value)


def test_byte_order_mark_is_handled(tmp_path):
    folder = write_export(tmp_path / "crm", **small_tables())
    text = (folder / "leads.csv").read_text(encoding="utf-8")
    (folder / "leads.csv").write_text("\ufeff" + text, encoding="utf-8")
    assert load(folder).report.tables["leads"].rows_loaded == 40
    path = tmp_path / "flat.csv"
    path.write_text("\ufeffid,y\n1,1\n2,0\n", encoding="utf-8")
    assert load_flat(path, Config(), target="y", id_column="id").ids.tolist() == ["1", "2"]


# --- separators and numbers ------------------------------------------------------------------------


def test_semicolons_and_decimal_commas(tmp_path):
    path = tmp_path / "r.csv"
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "amount": ["1.234,5", "2,25", "", "10"], "y": ["1", "0", "1", "0"]})
    frame.to_csv(path, sep=";", index=False)
    with pytest.raises(ContractError) as err:  # read as the contract's comma-separated CSV
        load_flat(path, Config(), target="y")
    assert err.value.file == "r.csv" and err.value.column == "id;amount;y" and "delimiter: ';'" in str(err.value)
    table = load_flat(path, Config(), mapping_from_dict({"csv": {"delimiter": ";", "decimal": ",", "thousands": "."}}),
                      target="y", id_column="id")
    assert table.kinds["amount"] == "numeric"
    assert table.frame["amount"].tolist()[:2] == [1234.5, 2.25] and np.isnan(table.frame["amount"][2])


def test_rows_with_too_many_or_too_few_fields_name_row_and_column(tmp_path, tables):
    folder = write_export(tmp_path / "crm", **tables)
    (folder / "leads.csv").write_text(_leads_csv(["L1,2025-01-01,,web,FR,CEO,,", "L2,2025-01-01,,web,FR,CEO,,,extra"]))
    with pytest.raises(ContractError) as err:
        load(folder)
    assert (err.value.file, err.value.row) == ("leads.csv", 2) and "disqualified_at" in err.value.column
    (folder / "leads.csv").write_text(_leads_csv(["L1,2025-01-01,,web", "L2,2025-01-01,,web,FR,CEO,,"]))
    with pytest.raises(ContractError) as err:
        load(folder)
    assert (err.value.row, err.value.column) == (1, "country") and "4 fields, the header 8" in str(err.value)


# --- structure ------------------------------------------------------------------------------


def test_quoted_newlines_are_handled_and_rows_count_records(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text('id,note,y\n1,"two\nlines",1\n2,plain,0\n3,"x",maybe\n')
    table = load_flat(path, LENIENT, target="y", id_column="id")
    assert table.frame["note"].tolist() == ["two\nlines", "plain"]
    assert table.report.rejects[["row", "value"]].values.tolist() == [[3, "maybe"]]  # the 3rd record


def test_duplicate_header_names_are_refused(tmp_path, tables):
    folder = write_export(tmp_path / "crm", **tables)
    (folder / "leads.csv").write_text(HEADER + ",country\nL1,2025-01-01,,web,FR,CEO,,,DE\n")
    with pytest.raises(ContractError) as err:
        load(folder)
    assert (err.value.file, err.value.column) == ("leads.csv", "country")
    assert "header row names this column twice (columns 5 and 9)" in str(err.value)


def test_wholly_empty_columns_are_handled(tmp_path, tables):
    leads = tables["leads"].assign(converted_at="", notes="")  # nobody converted, no notes
    data = load(write_export(tmp_path / "crm", **{**tables, "leads": leads}))
    frame = data.frame("leads")
    assert str(frame["converted_at"].dtype).startswith("datetime64") and frame["notes"].isna().all()
    path = tmp_path / "r.csv"
    flat_table(300).assign(Empty="").to_csv(path, index=False)
    (path.parent / "trailing.csv").write_text(path.read_text().replace("\n", ",\n"))  # Excel's trailing column
    for file in (path, path.parent / "trailing.csv"):
        table = load_flat(file, Config(), target="Converted")
        assert "empty in every row" in table.dropped.values()


def test_empty_files_and_header_only_files(tmp_path):
    path = tmp_path / "r.csv"
    path.write_text("")
    with pytest.raises(ContractError, match="empty"):
        load_flat(path, Config(), target="y")
    path.write_text("id,y\n")
    with pytest.raises(ContractError, match="no data rows"):
        load_flat(path, Config(), target="y")


def test_outcome_outside_the_positive_negative_pair(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"x": range(6), "y": ["Won", "Lost", "Open"] * 2}).to_csv(path, index=False)
    with pytest.raises(ContractError) as err:
        load_flat(path, Config(), target="y")
    assert (err.value.file, err.value.row, err.value.column) == ("r.csv", 1, "y")


# --- the property: mutated files ------------------------------------------------------------------


def _flat_bytes() -> bytes:
    frame = flat_table(40, seed=9, leaks=True)
    return frame.to_csv(index=False).encode("utf-8")


def _leads_bytes() -> bytes:
    return small_tables(30, seed=3)["leads"].to_csv(index=False).encode("utf-8")


SPECIAL = [b",", b";", b'"', b"\n", b"\r", b"\x00", b"\xff", b"\xe9", b"\xef\xbb\xbf", b" ", b"", b"Select",
           b"yes", b"no", b"maybe", b"nan", b"inf", b"-1e309", b"1,5", b"2025-13-45"]


@st.composite
def mutated(draw, original: bytes) -> bytes:
    """1-4 kinds of damage; in half the examples only cell values (the header and the shape stay),
    which the loaders must load, quarantining rows, so the row counts get checked, not only the
    refusals that damage to the file's structure mostly brings."""
    data = bytearray(original)
    values_only = draw(st.booleans())
    kinds = ["cell"] if values_only else ["cell", "cell", "cell", "replace", "insert", "delete",
                                          "duplicate_line", "truncate", "encode"]
    for _ in range(draw(st.integers(1, 4))):
        kind = draw(st.sampled_from(kinds))
        pos = draw(st.integers(0, max(0, len(data) - 1)))
        if kind == "cell":  # one value replaced by a nasty one, quoted as a CSV writer would
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(1 if values_only else 0, max(0, len(lines) - 2)))
            cells = lines[i].split(b",")
            j = draw(st.integers(0, len(cells) - 1))
            token = draw(st.sampled_from(SPECIAL) | st.text(max_size=6).map(lambda t: t.encode("utf-8")))
            if any(ch in token for ch in (b",", b'"', b"\n", b"\r")):
                token = b'"' + token.replace(b'"', b'""') + b'"'
            cells[j] = token
            lines[i] = b",".join(cells)
            data = bytearray(b"\n".join(lines))
        elif kind == "replace" and data:
            data[pos:pos + 1] = draw(st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=3))
        elif kind == "insert":
            data[pos:pos] = draw(st.sampled_from(SPECIAL) | st.binary(max_size=4))
        elif kind == "delete":
            del data[pos:pos + draw(st.integers(1, 20))]
        elif kind == "duplicate_line":
            lines = bytes(data).split(b"\n")
            i = draw(st.integers(0, len(lines) - 1))
            lines.insert(i, lines[i])
            data = bytearray(b"\n".join(lines))
        elif kind == "truncate":
            del data[pos:]
        elif kind == "encode":
            data = bytearray(bytes(data).decode("utf-8", errors="replace").encode(draw(st.sampled_from(["utf-16", "cp1252", "latin-1"])), errors="replace"))
    return bytes(data)


def _records(raw: bytes) -> int | None:
    """Data records as Python's strict csv reader sees them (None: it cannot tell)."""
    try:
        text = raw.decode("utf-8-sig")
        rows = list(csv.reader(io.StringIO(text, newline=""), strict=True))
    except (UnicodeDecodeError, csv.Error):
        return None
    return sum(1 for r in rows[1:] if r)


# derandomize: the same 60 examples on every run, so the reached-share floors below are checked
# deterministically (with random seeds the export loader reached 17–46 of 60, and a seed could fail it)
PROPERTY = settings(max_examples=60, deadline=None, derandomize=True,
                    suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.mark.min_reached(0.35, "half the examples damage values only and load; of the others, "
                          "damaging the structure, a few load too (measured about 60 % in all); "
                          "35 % is three standard deviations below that at 60 examples")
@PROPERTY
@given(raw=mutated(_flat_bytes()))
def test_flat_loader_succeeds_or_raises_convert_errors(tmp_path_factory, examples, raw):
    examples.ran()
    path = tmp_path_factory.mktemp("prop") / "report.csv"
    path.write_bytes(raw)
    mapping = mapping_from_dict({"missing_values": ["Select"]})
    try:
        table = load_flat(path, LENIENT, mapping, target="Converted", id_column="Lead Id")
    except ConvertError:
        return
    examples.reached()
    r = table.report.tables["leads"]
    assert r.rows_read == r.rows_loaded + r.quarantined == len(table.ids) + len(table.report.rejects)
    assert len(table.frame) == len(table.label) == len(table.ids)
    expected = _records(raw)
    if expected is not None:
        assert r.rows_read == expected  # nothing silently dropped


@pytest.mark.min_reached(0.3, "half the examples damage values only and mostly load, the others are "
                         "mostly refused whole (measured about 50 % in all); 30 % is three standard "
                         "deviations below that at 60 examples")
@pytest.mark.slow  # 60 loads of an export; the flat loader's twin above stays in the fast lane
@PROPERTY
@given(raw=mutated(_leads_bytes()))
def test_export_loader_succeeds_or_raises_convert_errors(tmp_path_factory, examples, raw):
    examples.ran()
    folder = tmp_path_factory.mktemp("prop_export")
    (folder / "leads.csv").write_bytes(raw)
    try:
        data = load(folder, LENIENT)
    except ConvertError:
        return
    examples.reached()
    r = data.report.tables["leads"]
    assert r.rows_read == r.rows_loaded + r.quarantined
    assert len(data.frame("leads")) == r.rows_loaded
    expected = _records(raw)
    if expected is not None:
        assert r.rows_read == expected
    data.close()


def test_mutation_strategy_makes_bad_files(tmp_path):
    """The property tests above see real damage (a guard against a toothless strategy)."""
    path = tmp_path / "r.csv"
    path.write_bytes(_flat_bytes().replace(b"\n", b"\n\"", 1))
    with pytest.raises(ConvertError):
        load_flat(path, LENIENT, target="Converted")


def test_paths_that_are_not_files(tmp_path):
    with pytest.raises(ContractError, match="does not exist"):
        load_flat(tmp_path / "absent.csv", Config(), target="y")
    (tmp_path / "r.xlsx").write_bytes(b"PK\x03\x04")
    with pytest.raises(ContractError, match="neither .csv nor .parquet"):
        load_flat(tmp_path / "r.xlsx", Config(), target="y")
    (tmp_path / "r.parquet").write_bytes(b"not parquet")
    with pytest.raises(ContractError, match="valid Parquet"):
        load_flat(tmp_path / "r.parquet", Config(), target="y")



def test_utf16_is_recognised_and_readable_when_declared(tmp_path):
    path = tmp_path / "r.csv"
    path.write_bytes("id,name,y\n1,Zoë,1\n2,Ana,0\n".encode("utf-16"))
    with pytest.raises(ContractError, match="UTF-16"):
        load_flat(path, Config(), target="y")
    table = load_flat(path, Config(), mapping_from_dict({"csv": {"encoding": "utf-16"}}), target="y")
    assert table.frame["name"].tolist() == ["Zoë", "Ana"]


_names = st.sampled_from(["Lead Id", "Source", "Visits", "Region", "Converted", "Status Note", "nope", "", "lead_id"])
_values = st.one_of(st.text(max_size=8), st.integers(), st.none(), st.lists(st.text(max_size=4), max_size=3))


def _mappings(sane: bool) -> st.SearchStrategy[dict]:
    """Mapping dictionaries. Unless ``sane``, options take valid and invalid values alike (and an
    unknown key), so most are ConfigErrors; ``sane`` ones take valid values only, so most get
    as far as loading the file, where the row count is checked."""

    def one(good: list, bad: list) -> st.SearchStrategy:
        return st.sampled_from(good if sane else good + bad)

    missing = st.text(max_size=6) if sane else st.one_of(st.text(max_size=6), st.integers())
    optional = {
        "missing_values": st.lists(missing, max_size=3),
        "csv": st.fixed_dictionaries({}, optional={
            "delimiter": one([",", ";", "\\t"], ["ab", ""]), "decimal": one([".", ","], ["x"]),
            "thousands": one(["", ".", ","], []), "encoding": one(["utf-8", "cp1252"], ["nope"])}),
        "dates": st.fixed_dictionaries({}, optional={
            "formats": st.lists(one(["%d/%m/%Y", "%Y"], ["%z", "plain"]), max_size=2),
            "timezone": one(["UTC", "Europe/Paris"], ["Nowhere/Else"])}),
        "flat": st.fixed_dictionaries({}, optional={
            "target": _names, "id": _names, "positive": st.lists(st.text(max_size=4), max_size=2),
            "rename": st.dictionaries(_names, _names, max_size=3),
            "values": st.dictionaries(_names, st.dictionaries(st.text(max_size=4), st.text(max_size=4), max_size=2), max_size=2),
            "exclude": st.dictionaries(_names, st.text(max_size=5), max_size=3),
            "categorical": st.lists(_names, max_size=2), "numeric": st.lists(_names, max_size=2),
            "split": one(["random", "ordered"], ["diagonal"])}),
    }
    if not sane:
        optional["surprise"] = _values
    return st.fixed_dictionaries({}, optional=optional)


_mapping = st.booleans().flatmap(_mappings)


@pytest.mark.min_reached(0.2, "half the mappings mix invalid values in and are ConfigErrors by design; "
                         "of the sane half some still fail to load (a ';' delimiter, the target renamed "
                         "away): measured about 38 % in all, 20 % is three standard deviations below")
@PROPERTY
@given(raw=_mapping)
def test_any_mapping_is_valid_or_a_config_error_and_loads_or_fails_cleanly(tmp_path_factory, examples, raw):
    from convert.exceptions import ConfigError

    examples.ran()
    try:
        mapping = mapping_from_dict(raw)
    except ConfigError:
        return
    path = tmp_path_factory.mktemp("mapprop") / "report.csv"
    path.write_bytes(_flat_bytes())
    try:
        table = load_flat(path, LENIENT, mapping, target=None if mapping.flat.target else "Converted")
    except ConvertError:
        return
    examples.reached()
    r = table.report.tables["leads"]
    assert r.rows_read == 40 == r.rows_loaded + r.quarantined
