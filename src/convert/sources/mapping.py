"""Column and value mapping: a CRM's own export, renamed and recoded onto the data contract.

A mapping file (YAML, ``--mapping FILE``) says how one source differs from the contract:
which file or database table holds each contract table, what its columns are called, how
it spells event names and other values, how it writes dates, which tokens mean "no value"
(``Select``, ``(No value)``), which columns to leave out and why, and how its CSV files are
written (separator, encoding, decimal comma). For a flat table it also names the outcome,
the id and the split. ``docs/mappings/`` holds documented examples.

:func:`load_mapping` validates the file into a typed :class:`Mapping`; :func:`mapped_select`
writes the SQL that rewrites one raw table (renames, missing tokens, value maps, dates
parsed into ISO 8601 UTC text, decimal commas), so the contract's validation then applies
its rules exactly as to an export that needed no mapping: a date the formats cannot read is
left as it was and quarantined by the contract's rule, naming the original value.
"""

from __future__ import annotations

import codecs
import re
import zoneinfo
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from convert.config import validation_problems
from convert.exceptions import ConfigError, ContractError
from convert.schema import CONTRACT_TABLES, TableSchema
from convert.sql import lit, quote

TableName = Literal["leads", "accounts", "events", "stages"]

#: How a parsed date is written back as text for the contract's validation (naive UTC).
_ISO = "%Y-%m-%dT%H:%M:%S.%f"


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class CsvFormat(_Strict):
    """How the source writes its CSV files (the contract's default: UTF-8, comma, point)."""

    delimiter: str = ","
    quote: str = '"'
    encoding: str = "utf-8"
    decimal: Literal[".", ","] = "."
    thousands: Literal["", ".", ",", " ", "'"] = ""

    @field_validator("delimiter", "quote")
    @classmethod
    def _one_character(cls, value: str) -> str:
        value = "\t" if value in ("\\t", "tab") else value
        if len(value) != 1 or value in "\r\n":
            raise ValueError(f"must be one character (\\t for a tab), not {value!r}")
        return value

    @field_validator("encoding")
    @classmethod
    def _known_encoding(cls, value: str) -> str:
        try:
            return codecs.lookup(value).name
        except LookupError:
            raise ValueError(f"unknown encoding {value!r} (e.g. utf-8, cp1252, latin-1)") from None

    @model_validator(mode="after")
    def _distinct(self) -> CsvFormat:
        if self.delimiter == self.quote:
            raise ValueError("delimiter and quote must differ")
        if self.thousands and self.thousands == self.decimal:
            raise ValueError("thousands and decimal separators must differ")
        return self

    @property
    def is_utf8(self) -> bool:
        return self.encoding in ("utf-8", "utf-8-sig")


class DateFormat(_Strict):
    """How the source writes timestamps that are not ISO 8601.

    ``formats`` are strptime formats (``%d/%m/%Y %H:%M``) tried in order; values they match
    are local times in ``timezone`` and become UTC. Values they do not match are read as ISO
    8601 (an offset honoured, none meaning UTC) or quarantined by the contract.
    """

    formats: tuple[str, ...] = ()
    timezone: str = "UTC"

    @field_validator("formats")
    @classmethod
    def _no_offsets(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        for fmt in value:
            if "%z" in fmt or "%Z" in fmt:
                raise ValueError(
                    f"format {fmt!r} reads an offset; values with offsets are read as ISO 8601 "
                    "already, formats are for local times (see dates.timezone)"
                )
            if "%" not in fmt:
                raise ValueError(f"format {fmt!r} holds no strptime directive such as %Y")
        return value

    @field_validator("timezone")
    @classmethod
    def _known_zone(cls, value: str) -> str:
        try:
            zoneinfo.ZoneInfo(value)
        except (zoneinfo.ZoneInfoNotFoundError, ValueError):
            raise ValueError(f"unknown time zone {value!r} (e.g. UTC, Europe/Paris)") from None
        return value

    @property
    def active(self) -> bool:
        return bool(self.formats) or self.timezone != "UTC"


class TableMapping(_Strict):
    """One table of the source: where it is, its column names, values and exclusions.

    ``rename`` maps the source's column names to the contract's; ``values`` maps, per
    (contract) column, the source's values to the standard ones (``event_type``:
    ``EMAIL_OPEN: email_open``); ``exclude`` lists source columns to leave out, each with
    its reason.
    """

    source: str | None = None
    rename: dict[str, str] = Field(default_factory=dict)
    values: dict[str, dict[str, str]] = Field(default_factory=dict)
    exclude: dict[str, str] = Field(default_factory=dict)

    @field_validator("rename")
    @classmethod
    def _renames_distinct(cls, value: dict[str, str]) -> dict[str, str]:
        targets = list(value.values())
        dup = {t for t in targets if targets.count(t) > 1}
        if dup:
            raise ValueError(f"several columns are renamed to {sorted(dup)[0]!r}")
        if any(not k.strip() or not v.strip() for k, v in value.items()):
            raise ValueError("column names must not be empty")
        return value

    @field_validator("exclude")
    @classmethod
    def _reasons(cls, value: dict[str, str]) -> dict[str, str]:
        for column, reason in value.items():
            if not str(reason or "").strip():
                raise ValueError(f"excluded column {column!r} needs a reason")
        return value

    @field_validator("source")
    @classmethod
    def _source(cls, value: str | None) -> str | None:
        if value is not None and (not value.strip() or "/" in value or "\\" in value):
            raise ValueError(
                f"source {value!r} must be a file name in the export folder or a database "
                "table name ([schema.]table), not a path"
            )
        return value

    def output_name(self, column: str) -> str:
        return self.rename.get(column, column)


class FlatMapping(TableMapping):
    """A flat table: outcome, id, split and column kinds (command-line flags override)."""

    target: str | None = None
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    id: str | None = None
    split: Literal["random", "ordered"] | None = None
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    engagement: tuple[str, ...] = ()


class Mapping(_Strict):
    """A whole mapping file."""

    name: str = ""
    description: str = ""
    csv: CsvFormat = CsvFormat()
    dates: DateFormat = DateFormat()
    missing_values: tuple[str, ...] = ()
    tables: dict[TableName, TableMapping] = Field(default_factory=dict)
    flat: FlatMapping = FlatMapping()
    #: leakage suspects kept after review (like ``--allow``)
    allow: tuple[str, ...] = ()

    @field_validator("missing_values")
    @classmethod
    def _tokens(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(str(v).strip() for v in value if str(v).strip()))

    def table(self, name: str) -> TableMapping:
        return self.tables.get(name, TableMapping())  # type: ignore[call-overload]

    def source_name(self, table: str) -> str | None:
        return self.table(table).source

    def label(self) -> str:
        return self.name or "mapping"


def load_mapping(path: str | Path | None) -> Mapping:
    """Read and validate a mapping file; errors name the file and the key. ``None``: no mapping."""
    if path is None:
        return Mapping()
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise ConfigError(f"mapping file {path} not found") from exc
    except (yaml.YAMLError, UnicodeDecodeError) as exc:
        raise ConfigError(f"mapping file {path} is not valid YAML: {exc}") from exc
    return mapping_from_dict(raw or {}, source=str(path))


def mapping_from_dict(raw: Any, source: str = "mapping") -> Mapping:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source} must be a YAML mapping (key: value), not {type(raw).__name__}")
    try:
        return Mapping.model_validate(raw)
    except ValidationError as exc:
        raise ConfigError(f"{source} is invalid: {validation_problems(exc)}") from exc


# --- the SQL that applies a mapping to one raw table -------------------------------------------


@dataclass
class MappedTable:
    """What mapping one table did: the SELECT, the output columns and the exclusions."""

    sql: str
    columns: list[str]
    renamed: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)
    #: renamed columns the table does not have (optional ones; reported, not an error)
    absent: list[str] = field(default_factory=list)

    @property
    def changes(self) -> bool:
        return bool(self.sql)


def mapped_select(
    mapping: Mapping,
    table: TableMapping,
    raw: str,
    raw_types: dict[str, str],
    label: str,
    schema: type[TableSchema] | None = None,
    keep: tuple[str, ...] = (),
) -> MappedTable:
    """The SELECT that maps raw table *raw* (columns and DuckDB types in *raw_types*).

    *schema* types the contract's columns (dates parsed, decimal commas read); without one
    (a flat table) every column stays text. Returns an empty ``sql`` when nothing changes.
    *keep* names columns an exclusion must not remove (the flat table's id and outcome).

    Raises
    ------
    ContractError
        When the mapping renames to a required contract column a column the table lacks
        (other absent columns are listed in ``absent``), or two columns end up with the
        same name.
    """
    present = list(raw_types)
    required = {c.name for c in schema.required_columns()} if schema is not None else set()
    absent = [source for source in table.rename if source not in raw_types]
    for source in absent:
        if table.rename[source] in required and table.rename[source] not in raw_types:
            raise ContractError(
                f"the mapping renames {source!r} to the required column "
                f"{table.rename[source]!r}, but the table lacks it (found: "
                f"{', '.join(present[:30])}). Fix the name in the mapping file (names are "
                "case-sensitive)",
                file=label,
                column=source,
            )
    excluded: dict[str, str] = {}
    for column, reason in table.exclude.items():
        hits = [c for c in present if c == column or table.output_name(c) == column]
        for hit in hits:
            if table.output_name(hit) not in keep:
                excluded[hit] = reason
    kept = [c for c in present if c not in excluded]
    outputs = [table.output_name(c) for c in kept]
    seen: dict[str, str] = {}
    for source, out in zip(kept, outputs, strict=True):
        if out in seen:
            raise ContractError(
                f"two columns would be named {out!r} ({seen[out]!r} and {source!r}); rename or "
                "exclude one in the mapping file",
                file=label,
                column=out,
            )
        seen[out] = source
    typed = {c.name: c.dtype for c in schema.columns()} if schema is not None else {}
    exprs: list[str] = []
    changed = bool(excluded) or any(table.output_name(c) != c for c in kept)
    for source, out in zip(kept, outputs, strict=True):
        expr, touched = _column_expr(mapping, table, source, out, raw_types[source], typed.get(out))
        changed = changed or touched
        exprs.append(f"{expr} AS {quote(out)}")
    renamed = {c: table.output_name(c) for c in kept if table.output_name(c) != c}
    sql = f"SELECT {', '.join(exprs)} FROM {raw}" if changed else ""
    return MappedTable(sql, outputs, renamed, excluded, absent)


def _column_expr(
    mapping: Mapping, table: TableMapping, source: str, out: str, raw_type: str, dtype: str | None
) -> tuple[str, bool]:
    """SQL of one output column, and whether it differs from the raw column."""
    col = quote(source)
    text_column = raw_type == "VARCHAR"
    values = table.values.get(out) or table.values.get(source) or {}
    if not text_column:
        if dtype == "timestamp" and mapping.dates.timezone != "UTC" and raw_type == "TIMESTAMP":
            return f"timezone('UTC', timezone({lit(mapping.dates.timezone)}, {col}))", True
        if not values:  # typed columns (Parquet, databases) hold no placeholder tokens
            return col, False
        col = f"CAST({col} AS VARCHAR)"
    touched = False
    expr = f"NULLIF(trim({col}), '')"
    if mapping.missing_values:
        tokens = ", ".join(lit(t) for t in mapping.missing_values)
        expr = f"CASE WHEN trim({col}) IN ({tokens}) THEN NULL ELSE {expr} END"
        touched = True
    if values:
        arms = " ".join(f"WHEN {lit(str(k).strip())} THEN {lit(str(v))}" for k, v in values.items())
        expr = f"CASE {expr} {arms} ELSE {expr} END"
        touched = True
    if dtype == "timestamp" and mapping.dates.active and text_column:
        parsed = f"try_strptime({expr}, [{', '.join(lit(f) for f in mapping.dates.formats)}])"
        if not mapping.dates.formats:  # a zone alone: naive ISO text is local time
            parsed = f"TRY_CAST({expr} AS TIMESTAMP)"
            offset = r"\d:\d\d(:\d\d(\.\d+)?)?\s*(Z|[+-]\d\d(:?\d\d)?)$"
            parsed = f"CASE WHEN regexp_matches({expr}, {lit(offset)}) THEN NULL ELSE {parsed} END"
        if mapping.dates.timezone != "UTC":
            parsed = f"timezone('UTC', timezone({lit(mapping.dates.timezone)}, {parsed}))"
        expr = f"coalesce(strftime({parsed}, {lit(_ISO)}), {expr})"
        touched = True
    if dtype in ("integer", "number") and text_column and (
        mapping.csv.decimal != "." or mapping.csv.thousands
    ):
        expr = number_text_sql(expr, mapping.csv)
        touched = True
    return expr, touched or not text_column


def number_text_sql(expr: str, csv: CsvFormat) -> str:
    """SQL turning a number written with the source's separators into ``1234.5``."""
    if csv.thousands:
        expr = f"replace({expr}, {lit(csv.thousands)}, '')"
    if csv.decimal != ".":
        expr = f"replace({expr}, {lit(csv.decimal)}, '.')"
    return expr


_IDENT = r"[A-Za-z_][A-Za-z0-9_$]{0,62}"
_TABLE_RE = re.compile(rf"(?:({_IDENT})\.)?({_IDENT})")


def split_table_name(name: str) -> tuple[str | None, str]:
    """``schema.table`` or ``table`` as (schema, table), validated (never spliced raw into SQL)."""
    m = _TABLE_RE.fullmatch(name.strip())
    if not m:
        raise ConfigError(
            f"database table name {name!r} is not a plain identifier ([schema.]table of letters, "
            "digits and underscores)"
        )
    return m.group(1), m.group(2)


def contract_table(name: str) -> type[TableSchema]:
    return CONTRACT_TABLES[name]
