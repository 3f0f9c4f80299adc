"""The data contract's bad-rows table, applied in DuckDB SQL.

Raw tables (from :mod:`convert.sources.readers`) become typed contract tables ``leads``,
``accounts``, ``events`` and ``stages`` in the same connection. Each rule of the
contract is one declared :class:`~convert.sources.rules.Rule` (column, SQL condition,
reason; :mod:`convert.sources.rules` lists them); a row is quarantined for the first rule it
breaks, and rows of a quarantined lead follow it.
Errors stop with a :class:`~convert.exceptions.ContractError` naming file, row and
column. Working in SQL keeps exports of a hundred million events within memory.

Beyond the contract's table, the rules also set aside input that would break what comes
later (:mod:`convert.sources.rules` says which); control characters in other text are
removed and counted, and a non-finite event value is emptied like a non-numeric one.
"""

from __future__ import annotations

import math
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import duckdb
import pandas as pd

from convert.config import DataConfig
from convert.exceptions import ContractError
from convert.features.engine import event_type_enum
from convert.schema import (
    CONTRACT_TABLES,
    DUCKDB_TYPES,
    Accounts,
    Events,
    Leads,
    Rejects,
    Stages,
    TableSchema,
)
from convert.sources.mapping import CsvFormat
from convert.sources.readers import ROW, Source, TextFacts, is_view, scan_error, text_facts
from convert.sources.rules import (
    CONTROL,
    NUMERIC_TYPE,
    Rule,
    account_rules,
    control_warning,
    event_rules,
    has_control,
    lead_rules,
    stage_rules,
    text_of_typed,
    text_sql,
    typed_sql,
    without_control,
)
from convert.sql import fetch_row, lit, quote

L, A, E = Leads, Accounts, Events

@dataclass
class TableReport:
    """What loading one table did: rows read, loaded, quarantined (by reason) and warnings."""

    table: str
    file: str | None
    rows_read: int = 0
    rows_loaded: int = 0
    quarantined: int = 0
    reasons: dict[str, int] = field(default_factory=dict)
    warnings: dict[str, int] = field(default_factory=dict)


@dataclass
class LoadReport:
    """The per-table report of a load and the quarantined rows (the rejects file's content)."""

    tables: dict[str, TableReport]
    rejects: pd.DataFrame

    @property
    def quarantined(self) -> int:
        return sum(t.quarantined for t in self.tables.values())

    @property
    def warnings(self) -> int:
        return sum(sum(t.warnings.values()) for t in self.tables.values())

    def lines(self) -> list[str]:
        out = [f"{'table':<10} {'file':<18} {'read':>10} {'loaded':>10} {'quarantined':>12}"]
        for t in self.tables.values():
            out.append(
                f"{t.table:<10} {t.file or '(absent)':<18} {t.rows_read:>10,} {t.rows_loaded:>10,} "
                f"{t.quarantined:>12,}"
            )
            for reason, n in sorted(t.reasons.items(), key=lambda kv: -kv[1]):
                out.append(f"    quarantined {n:>8,}  {reason}")
            for warning, n in sorted(t.warnings.items(), key=lambda kv: -kv[1]):
                out.append(f"    warning     {n:>8,}  {warning}")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())


# --- typing ---------------------------------------------------------------------------------


def _parsed_select(
    schema: type[TableSchema], raw: str, columns: dict[str, str], dirty: frozenset[str] = frozenset()
) -> str:
    """SELECT of a raw table with each contract column typed (``c``) and as text (``raw__c``)."""
    parts = [f"rowid + 1 AS {ROW}"]
    for col in schema.columns():
        if col in columns:
            parts.append(f"{typed_sql(col, columns[col], col in dirty)} AS {quote(col)}")
            parts.append(f"{text_sql(col, columns[col])} AS {quote('raw__' + col)}")
        else:
            parts.append(f"CAST(NULL AS {DUCKDB_TYPES[col.dtype]}) AS {quote(col)}")
            parts.append(f"CAST(NULL AS VARCHAR) AS {quote('raw__' + col)}")
    for extra in columns:
        if extra not in schema.names():
            if extra in dirty:  # extra attributes are text too: cleaned, and counted
                parts.append(f"{without_control(quote(extra))} AS {quote(extra)}")
                parts.append(f"{has_control(quote(extra))} AS {quote('ctl__' + extra)}")
            else:
                parts.append(quote(extra))
    return f"SELECT {', '.join(parts)} FROM {raw}"


def _case(rules: list[Rule], what: str) -> str:
    arms = " ".join(
        f"WHEN {r.condition} THEN '{(r.column if what == 'column' else r.reason).replace(chr(39), chr(39) * 2)}'"
        for r in rules
    )
    return f"CASE {arms} ELSE NULL END"


def _value_case(rules: list[Rule]) -> str:
    """The offending raw value, its control characters shown as U+FFFD (the rejects file is text)."""
    arms = " ".join(f"WHEN {r.condition} THEN {quote('raw__' + r.column)}" for r in rules)
    return f"regexp_replace(CASE {arms} ELSE NULL END, '{CONTROL}', '\ufffd', 'g')"


# --- validation -----------------------------------------------------------------------------


def validate(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    raw_columns: dict[str, list[str]],
    config: DataConfig,
    strict: bool | None = None,
    csv_format: CsvFormat | None = None,
) -> LoadReport:
    """Type and check the raw tables; create the typed contract tables in *con*.

    A raw child table may be a view over its file (:func:`~convert.sources.readers.load_raw`):
    an error met while scanning it is named by file, row and column (*csv_format*: how the
    CSV file is written).

    Raises
    ------
    ContractError
        For a missing column, a duplicate key, too large a quarantined share, or any
        quarantine under ``strict``.
    """
    strict = config.strict if strict is None else strict
    raw_types = {
        table: dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE raw_{table})").fetchall())
        for table in raw_columns
    }
    for table, schema in CONTRACT_TABLES.items():
        if table in raw_columns:
            _require_columns(schema, raw_columns[table], source.label(table))

    reports = {t: TableReport(t, source.label(t) if t in raw_columns else None) for t in CONTRACT_TABLES}
    valid = config.valid_range()
    # Child tables (events: the big one) are checked optimistically as clean: their one pass
    # also tells whether any text holds a control character, and only then is it redone.
    children_facts = _facts_meanwhile(source, [t for t in (Events.table, Stages.table) if t in raw_columns])
    dirty = {
        table: frozenset() if table in (Events.table, Stages.table) else _with_control(con, table, raw_types[table])
        for table in raw_columns
    }
    none: frozenset[str] = frozenset()

    _check_table(con, Leads, lead_rules(valid, dirty.get("leads", none)), raw_types.get("leads", {}), source,
                 dirty.get("leads", none))
    if "accounts" in raw_columns:
        _check_table(con, Accounts, account_rules(dirty["accounts"]), raw_types["accounts"], source,
                     dirty["accounts"])
    children: dict[str, pd.DataFrame] = {}
    for schema, rules in ((Events, event_rules), (Stages, stage_rules)):
        if schema.table in raw_columns:
            table = schema.table
            facts = children_facts[table].result()
            if is_view(con, f"raw_{table}__src"):  # mapped values may be rewritten: trim them
                facts = TextFacts(control=facts.control, unread=facts.unread)
            try:
                rejected = _check_child(con, schema, rules(valid, none), raw_types[table], raw_columns[table],
                                        none, reports[table], facts)
                if rejected is None:  # a control character somewhere, or an unread key to trim: check again
                    dirty[table] = _with_control(con, table, raw_types[table])
                    rejected = _check_child(con, schema, rules(valid, dirty[table]), raw_types[table],
                                            raw_columns[table], dirty[table], reports[table])
            except duckdb.Error as exc:
                raise scan_error(exc, source, table, csv_format) from exc
            assert rejected is not None
            children[table] = rejected

    rejects = []
    for table, schema in CONTRACT_TABLES.items():
        if table not in raw_columns:
            _create_empty(con, schema)
            continue
        if table in children:
            rejects.append(children[table])
            continue
        rep = reports[table]
        rep.rows_read = fetch_row(con, f"SELECT count(*) FROM checked_{table}")[0]
        rep.reasons = dict(
            con.execute(
                f"SELECT reason, count(*) FROM checked_{table} WHERE reason IS NOT NULL "
                "GROUP BY reason ORDER BY reason"
            ).fetchall()
        )
        rep.quarantined = sum(rep.reasons.values())
        rep.rows_loaded = rep.rows_read - rep.quarantined
        rep.warnings.update(_control_counts(con, schema, dirty[table]))
        rejects.append(
            con.execute(
                f"SELECT '{table}' AS {quote(Rejects.table_name)}, {ROW} AS {quote(Rejects.row)}, "
                f"bad_column AS {quote(Rejects.column)}, bad_value AS {quote(Rejects.value)}, "
                f"reason AS {quote(Rejects.reason)} FROM checked_{table} WHERE reason IS NOT NULL "
                f"ORDER BY {ROW}"
            ).df()
        )
        _create_typed(con, schema, raw_columns[table])

    _lead_warnings(con, reports, has_accounts="accounts" in raw_columns)

    frame = (
        pd.concat(rejects, ignore_index=True)
        if rejects
        else pd.DataFrame(columns=Rejects.names())
    )
    report = LoadReport(reports, frame)
    enforce_thresholds(report, source, config, strict)
    for table in raw_columns:
        con.execute(f"DROP TABLE IF EXISTS checked_{table}")
    return report


def _facts_meanwhile(source: Source, tables: list[str]) -> dict[str, Future[TextFacts]]:
    """:func:`~convert.sources.readers.text_facts` of each child table, found in a thread while
    DuckDB (without the GIL) checks the leads and accounts: ~0.6 s for 15M events in CSV. A
    Parquet file's lead key is left unread (a hash of each value when it is not dictionary
    encoded, as sorted files often are): the rule pass checks it (:func:`_unread_keys_differ`)."""
    pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="convert-text-facts")
    try:
        return {table: pool.submit(text_facts, source, table, (E.lead_id,)) for table in tables}
    finally:
        pool.shutdown(wait=False)


def _with_control(con: duckdb.DuckDBPyConnection, table: str, raw_types: dict[str, str]) -> frozenset[str]:
    """The text columns of ``raw_<table>`` holding a control character somewhere: one scan,
    so that clean columns (the usual case) skip the cleaning and the id rules."""
    text = [c for c, t in raw_types.items() if t == "VARCHAR"]
    if not text:
        return frozenset()
    anywhere = f"regexp_matches(concat({', '.join(quote(c) for c in text)}), '{CONTROL}')"
    if not fetch_row(con, f"SELECT coalesce(bool_or({anywhere}), false) FROM raw_{table}")[0]:
        return frozenset()  # one pass over the row's text: the usual, clean case
    found = fetch_row(con, "SELECT " + ", ".join(f"coalesce(bool_or({has_control(quote(c))}), false)" for c in text)
                      + f" FROM raw_{table}")
    return frozenset(c for c, hit in zip(text, found, strict=True) if hit)


def _control_counts(con: duckdb.DuckDBPyConnection, schema: type[TableSchema], dirty: frozenset[str]) -> dict[str, int]:
    """Loaded rows per text column whose control characters were removed (a warning each)."""
    names = schema.names()
    checks = {
        str(c): has_control(quote("raw__" + c))
        for c in schema.columns()
        if c.dtype == "string" and not c.identifier and c in dirty
    }
    checks.update({c: quote("ctl__" + c) for c in sorted(dirty) if c not in names})
    if not checks:
        return {}
    counts = fetch_row(
        con,
        "SELECT " + ", ".join(f"count(*) FILTER (WHERE {sql})" for sql in checks.values())
        + f" FROM checked_{schema.table} WHERE reason IS NULL",
    )
    return {
        control_warning(column): int(n)
        for column, n in zip(checks, counts, strict=True)
        if n
    }


def _require_columns(schema: type[TableSchema], present: list[str], file: str) -> None:
    for col in schema.required_columns():
        if col not in present:
            raise ContractError(
                f"the required column is missing (found: {', '.join(present)}). Column names are "
                "case-sensitive; rename it in the export or map it with --mapping",
                file=file,
                column=col,
            )


def _check_table(
    con: duckdb.DuckDBPyConnection,
    schema: type[TableSchema],
    rules: list[Rule],
    raw_types: dict[str, str],
    source: Source,
    dirty: frozenset[str] = frozenset(),
) -> None:
    table = schema.table
    key = schema.key[0]
    parsed = _parsed_select(schema, f"raw_{table}", raw_types, dirty)
    con.execute(
        f"CREATE OR REPLACE TEMP TABLE checked_{table} AS SELECT *, {_case(rules, 'column')} AS bad_column, "
        f"{_value_case(rules)} AS bad_value, {_case(rules, 'reason')} AS reason FROM ({parsed})"
    )
    dups = con.execute(
        f"SELECT {quote(key)}, list({ROW} ORDER BY {ROW}) FROM checked_{table} "
        f"WHERE {quote(key)} IS NOT NULL GROUP BY 1 HAVING count(*) > 1 ORDER BY min({ROW}) LIMIT 1"
    ).fetchall()
    if dups:
        dup = dups[0]
        value, rows = dup
        raise ContractError(
            f"duplicate {key} {value!r} (also at row {rows[0]}); {key} must be unique in {table}. "
            "Remove the duplicate or fix the export's keys",
            file=source.label(table),
            row=rows[1],
            column=key,
        )


VALUE_WARNING = "value is not a finite number; the event is kept with no value"


def _local(rule: Rule) -> bool:
    """Whether *rule* reads only its own row (not the lead the row belongs to)."""
    return "lead__" not in rule.condition


def _check_child(
    con: duckdb.DuckDBPyConnection,
    schema: type[TableSchema],
    rules: list[Rule],
    raw_types: dict[str, str],
    raw: list[str],
    dirty: frozenset[str],
    report: TableReport,
    facts: TextFacts | None = None,
) -> pd.DataFrame | None:
    """Check a child table (``events``, ``stages``) set-based; return its rejects.

    One scan of ``raw_<table>`` (a view over the file, :func:`~convert.sources.readers.load_raw`)
    writes the typed table, in file order (so a row's file row number is ``rowid + 1``), with
    no text copy of its columns: beside the typed values it keeps only the warnings' flags and,
    for a rule's column whose typed value does not tell its text, the raw text of the rows
    whose typed value is missing or implausible (nearly none). A second, narrow pass joins the
    typed ids and times with the (small) checked leads and yields each rejected row's first
    broken rule; only those rows are deleted, and only for them is the rejects file's text
    built. No global sort. Fills *report* (rows read, reasons, warnings).

    With *dirty* empty the scan also looks for a control character in any text column (one
    regular expression over the row's text; skipped when the file surely holds none, *facts*
    from :func:`~convert.sources.readers.text_facts`); when it finds one, the table is dropped
    and None returned, for the caller to find the dirty columns and check again. Text that
    surely needs no trimming (*facts*) is taken as it is, without a trimmed copy; a lead key
    the facts left unread is checked on the rows rejected for their lead alone, and None is
    returned too should one need trimming or hold a control character.
    """
    facts = facts or TextFacts()
    table = schema.table
    contract = schema.names()
    inner: list[str] = []
    kept: list[str] = []  # raw text of a rule's column, kept where its own rules may fire
    flags: dict[str, str] = {}
    verbatim = {c for c in schema.columns() if c.dtype == "string" and raw_types.get(c) == "VARCHAR"
                and not facts.untrimmed and not dirty}  # text taken as the file holds it
    # A stored number is copied as a double; its non-finite values are emptied after the pass
    # (:func:`_empty_non_finite`), which costs a scan of one column instead of a flag per row.
    number = E.value if table == Events.table and NUMERIC_TYPE.fullmatch(raw_types.get(E.value, "")) else None
    for col in schema.columns():
        if col in raw_types:
            typed = (quote(col) if col in verbatim else f"TRY_CAST({quote(col)} AS DOUBLE)" if col == number
                     else typed_sql(col, raw_types[col], col in dirty, trim=False))
            inner.append(f"{typed} AS {quote(col)}")
            if col.dtype == "string" and not col.identifier and col in dirty:
                flags[control_warning(col)] = has_control(text_sql(col, raw_types[col]))
        else:
            inner.append(f"CAST(NULL AS {DUCKDB_TYPES[col.dtype]}) AS {quote(col)}")
    columns = {str(c): c for c in schema.columns()}
    derived: dict[str, str] = {}  # a rule's column whose text its typed value tells (the rejects')
    for name in dict.fromkeys(r.column for r in rules):
        if name in raw_types and not columns[name].identifier:
            told = text_of_typed(columns[name], raw_types[name], f"e.{quote(name)}", name in dirty)
            if told is not None:
                derived[name] = told
                continue
            inner.append(f"{quote(name)} AS {quote('raw__' + name)}")  # a reference: no copy
            kept.append(name)
    extras = [c for c in raw if c not in contract]
    for extra in extras:
        inner.append(f"{without_control(quote(extra))} AS {quote(extra)}" if extra in dirty else quote(extra))
    for extra in sorted(c for c in dirty if c in extras):
        flags[control_warning(extra)] = has_control(quote(extra))
    if table == Events.table and E.value in raw_types and not number:
        flags[VALUE_WARNING] = (f"{text_sql(E.value, raw_types[E.value])} IS NOT NULL AND "
                                f"{typed_sql(E.value, raw_types[E.value])} IS NULL")
    inner += [f"{sql} AS {quote(f'flag__{i}')}" for i, sql in enumerate(flags.values())]
    text = [c for c, t in raw_types.items() if t == "VARCHAR"]
    probe = not dirty and bool(text) and facts.control
    if probe:
        inner.append(f"regexp_matches(concat({', '.join(quote(c) for c in text)}), '{CONTROL}') AS __ctl")
    # The raw text of a rule's column is kept where a rule of the row's own fires (its typed
    # value is NULL, or a timestamp is implausible): an outer CASE over the inner typed values.
    outer = [quote(c) for c in [*contract, *extras]]
    for name in kept:
        fires = " OR ".join(f"({r.condition})" for r in rules if r.column == name and _local(r))
        outer.append(f"CASE WHEN {fires or 'false'} THEN {text_sql('raw__' + name, raw_types[name])} END "
                      f"AS {quote('raw__' + name)}")
    outer += [quote(f"flag__{i}") for i in range(len(flags))] + (["__ctl"] if probe else [])
    con.execute(f"DROP TABLE IF EXISTS {table}")
    con.execute(f"CREATE TABLE {table} AS SELECT {', '.join(outer)} FROM (SELECT {', '.join(inner)} FROM raw_{table})")
    if probe and fetch_row(con, f"SELECT coalesce(bool_or(__ctl), false) FROM {table}")[0]:
        con.execute(f"DROP TABLE {table}")
        return None
    bad = _child_rules_broken(con, schema, rules, dirty, facts.event_types if E.event_type in verbatim else None)
    if _unread_keys_differ(con, table, rules, bad, facts.unread):
        con.execute(f"DROP TABLE {table}")
        return None
    report.rows_read = int(fetch_row(con, f"SELECT count(*) FROM {table}")[0])
    report.reasons = {}
    for i, n in bad["__rule"].value_counts().items():
        reason = rules[int(i)].reason
        report.reasons[reason] = report.reasons.get(reason, 0) + int(n)
    report.reasons = dict(sorted(report.reasons.items()))
    report.quarantined = len(bad)
    report.rows_loaded = report.rows_read - report.quarantined
    rejects = _child_rejects(con, schema, rules, raw_types, bad, derived)
    if len(bad):
        con.register("_child_bad", bad)
        try:
            con.execute(f"DELETE FROM {table} WHERE rowid IN (SELECT {quote(ROW)} - 1 FROM _child_bad)")
        finally:
            con.unregister("_child_bad")
    report.warnings = {}
    if flags:
        counts = fetch_row(con, "SELECT " + ", ".join(f"count(*) FILTER (WHERE flag__{i})" for i in range(len(flags)))
                           + f" FROM {table}")
        report.warnings.update({w: int(n) for w, n in zip(flags, counts, strict=True) if n})
    if number and (emptied := _empty_non_finite(con, table, number)):
        report.warnings[VALUE_WARNING] = emptied
    drop = [*(f"raw__{c}" for c in kept), *(f"flag__{i}" for i in range(len(flags))), *(["__ctl"] if probe else [])]
    for name in drop:
        con.execute(f"ALTER TABLE {table} DROP COLUMN {quote(name)}")
    return rejects


def _empty_non_finite(con: duckdb.DuckDBPyConnection, table: str, column: str) -> int:
    """Empty the non-finite values (NaN, infinities) of double *column* of *table*; how many.
    A finite sum proves there are none (any NaN or infinity makes it non-finite) at a third of
    the cost of testing every value; only a non-finite sum (or an overflow) counts them."""
    total = fetch_row(con, f"SELECT sum({quote(column)}) FROM {table}")[0]
    if total is None or math.isfinite(total):
        return 0
    n = int(fetch_row(con, f"SELECT count(*) FILTER (WHERE NOT isfinite({quote(column)})) FROM {table}")[0])
    if n:
        con.execute(f"UPDATE {table} SET {quote(column)} = NULL WHERE NOT isfinite({quote(column)})")
    return n


def _unread_keys_differ(
    con: duckdb.DuckDBPyConnection, table: str, rules: list[Rule], bad: pd.DataFrame, unread: tuple[str, ...]
) -> bool:
    """Whether a rejected row's text in an *unread* column (the lead key; the file's facts did
    not look at it, :func:`_facts_meanwhile`) needs trimming or holds a control character: then
    the pass must be redone with the key trimmed and checked. A row kept matched a checked
    lead's id (trimmed, with no control character), so only rows rejected for their lead can
    tell; there are few, and the check reads them alone."""
    lead = [i for i, r in enumerate(rules) if r.column in unread and not _local(r)]
    rows = bad.loc[bad["__rule"].isin(lead), [ROW]]
    if not len(rows):
        return False
    differs = " OR ".join(f"{quote(c)} IS DISTINCT FROM {text_sql(c, 'VARCHAR')} OR {has_control(quote(c))}"
                          for c in unread)
    con.register("_child_keys", rows)
    try:
        return bool(fetch_row(con, f"SELECT coalesce(bool_or({differs}), false) FROM {table} "
                                   f"WHERE rowid IN (SELECT {quote(ROW)} - 1 FROM _child_keys)")[0])
    finally:
        con.unregister("_child_keys")


#: The child tables whose rule pass also writes their compact keyed copy (:func:`keyed_table`),
#: and the columns it keeps beside the lead key: what the feature engine's indexed events hold
#: (:func:`convert.features.engine.index_events`), so that events are joined with leads once.
KEYED_COLUMNS: dict[str, tuple[str, ...]] = {Events.table: (E.event_type, E.occurred_at)}
#: The lead key: each loaded lead's rank in ``lead_id`` order (1, 2, ...), as the feature
#: engine numbers the loaded leads.
LEAD_KEY = "lead_key"


def _keyed_select(con: duckdb.DuckDBPyConnection, table: str, types: tuple[str, ...] | None) -> list[str]:
    """The keyed copy's columns of child *table* beside the lead key, as SQL (none: no copy):
    event types as the feature engine's ``ENUM``, created here from the typed rows or the
    *types* known already (text would cost this pass and a later copy more than the cast)."""
    keep = KEYED_COLUMNS.get(table, ())
    enum = event_type_enum(con, table, types) if E.event_type in keep else None
    return [f"CAST({quote(c)} AS {enum}) AS {quote(c)}" if c == E.event_type and enum else quote(c) for c in keep]


def keyed_table(table: str) -> str:
    """The table the rule pass of child *table* writes when it keeps a keyed copy: the file
    row number (``__row``), the first broken rule (``__rule``, NULL when kept), the row's
    lead key (NULL unless its lead was loaded) and :data:`KEYED_COLUMNS` (the event type as
    the feature engine's ``ENUM``)."""
    return f"_{table}_keyed"


def _child_rules_broken(
    con: duckdb.DuckDBPyConnection, schema: type[TableSchema], rules: list[Rule], dirty: frozenset[str],
    types: tuple[str, ...] | None = None,
) -> pd.DataFrame:
    """The rejected rows of a typed child table (row number, index of the first rule broken):
    one narrow pass over its ids, times and kinds joined with the checked leads. For a table of
    :data:`KEYED_COLUMNS` the pass keeps every row's lead key and those columns in
    :func:`keyed_table` (the join the feature engine's index would otherwise do again)."""
    table = schema.table
    ids = [c for c in schema.columns() if c.identifier]
    keep = KEYED_COLUMNS.get(table, ())
    used = [c for c in schema.columns() if any(c in r.condition for r in rules) or c in keep]
    cols = [f"rowid + 1 AS {quote(ROW)}", *(quote(c) for c in used),
            *(f"{quote(c)} AS {quote('raw__' + c)}" for c in ids)]
    arms = " ".join(f"WHEN {r.condition} THEN {i}" for i, r in enumerate(rules))
    # a loaded lead's key: its rank among the loaded leads (checked, no reason) by lead_id
    key = (f"CAST(CASE WHEN reason IS NULL THEN row_number() OVER (PARTITION BY reason IS NULL "
           f"ORDER BY {L.lead_id}) END AS INTEGER) AS {LEAD_KEY}") if keep else f"NULL AS {LEAD_KEY}"
    def checked(known: tuple[str, ...] | None) -> str:
        return (f"SELECT {quote(ROW)}, CAST(CASE {arms} END AS SMALLINT) AS __rule, {LEAD_KEY}"
                + "".join(f", {c}" for c in _keyed_select(con, table, known))
                + f" FROM (SELECT c.*, l.{L.lead_id} IS NOT NULL AS lead__exists, l.reason AS lead__reason, "
                f"l.{L.created_at} AS lead__created_at, l.{LEAD_KEY} FROM (SELECT {', '.join(cols)} FROM {table}) c "
                f"LEFT JOIN (SELECT {L.lead_id}, reason, {L.created_at}, {key} FROM checked_leads) l "
                f"ON c.lead_id = l.{L.lead_id})")
    if not keep:
        return con.execute(
            f"SELECT {quote(ROW)}, __rule FROM ({checked(None)}) WHERE __rule IS NOT NULL ORDER BY {quote(ROW)}"
        ).df()
    try:
        con.execute(f"CREATE OR REPLACE TABLE {keyed_table(table)} AS {checked(types)}")
    except duckdb.ConversionException:  # a type the known ones lack (e.g. a value mapped): find them all
        con.execute(f"CREATE OR REPLACE TABLE {keyed_table(table)} AS {checked(None)}")
    return con.execute(
        f"SELECT {quote(ROW)}, __rule FROM {keyed_table(table)} WHERE __rule IS NOT NULL ORDER BY {quote(ROW)}"
    ).df()


def _child_rejects(
    con: duckdb.DuckDBPyConnection, schema: type[TableSchema], rules: list[Rule], raw_types: dict[str, str],
    bad: pd.DataFrame, derived: dict[str, str],
) -> pd.DataFrame:
    """The rejects file's rows for a child table, built only for the rejected rows: the
    offending raw text is an id's typed value (an id is its trimmed text), the text its typed
    value tells (*derived*, :func:`~convert.sources.rules.text_of_typed`), the text the typed
    table kept, or (for a rule on the row's lead, e.g. dated before it) read again from the
    file by row number; control characters are shown as U+FFFD."""
    table = schema.table
    names = Rejects
    row = quote(ROW)
    if not len(bad):
        return pd.DataFrame({c: pd.Series(dtype="object") for c in names.names()})
    ids = {str(c) for c in schema.columns() if c.identifier}
    reread = sorted({r.column for i, r in enumerate(rules) if r.column in raw_types and not _local(r)
                     and r.column not in ids and r.column not in derived and (bad["__rule"] == i).any()})
    value_arms = []
    for i, r in enumerate(rules):
        if r.column not in raw_types:
            value = "NULL"
        elif r.column in ids:
            value = f"e.{quote(r.column)}"
        elif r.column in derived:
            value = derived[r.column]
        elif _local(r):
            value = f"e.{quote('raw__' + r.column)}"
        else:  # read again from the file (only when such a row is rejected)
            value = f"t.{quote(r.column)}" if r.column in reread else "NULL"
        value_arms.append(f"WHEN {i} THEN {value}")
    column_arms = " ".join(f"WHEN {i} THEN {lit(r.column)}" for i, r in enumerate(rules))
    reason_arms = " ".join(f"WHEN {i} THEN {lit(r.reason)}" for i, r in enumerate(rules))
    con.register("_child_bad", bad)
    try:
        join_text = ""
        if reread:  # file order, so rowid matches the typed table's
            con.execute("CREATE OR REPLACE TEMP TABLE _child_text AS SELECT "
                        + ", ".join(f"{text_sql(c, raw_types[c])} AS {quote(c)}" for c in reread) + f" FROM raw_{table}")
            join_text = f" LEFT JOIN _child_text t ON t.rowid + 1 = b.{row}"
        return con.execute(
            f"SELECT '{table}' AS {quote(names.table_name)}, b.{row} AS {quote(names.row)}, "
            f"CASE b.__rule {column_arms} END AS {quote(names.column)}, "
            f"regexp_replace(CASE b.__rule {' '.join(value_arms)} END, '{CONTROL}', '\ufffd', 'g') "
            f"AS {quote(names.value)}, CASE b.__rule {reason_arms} END AS {quote(names.reason)} "
            f"FROM _child_bad b JOIN {table} e ON e.rowid + 1 = b.{row}{join_text} ORDER BY b.{row}"
        ).df()
    finally:
        con.unregister("_child_bad")
        con.execute("DROP TABLE IF EXISTS _child_text")


def _create_typed(con: duckdb.DuckDBPyConnection, schema: type[TableSchema], raw: list[str]) -> None:
    contract = schema.names()
    extras = [quote(c) for c in raw if c not in contract]
    cols = ", ".join([quote(c) for c in contract] + extras)
    con.execute(
        f"CREATE OR REPLACE TABLE {schema.table} AS SELECT {cols} FROM checked_{schema.table} "
        f"WHERE reason IS NULL ORDER BY {ROW}"
    )


def _create_empty(con: duckdb.DuckDBPyConnection, schema: type[TableSchema]) -> None:
    cols = ", ".join(f"{quote(c)} {DUCKDB_TYPES[c.dtype]}" for c in schema.columns())
    con.execute(f"CREATE OR REPLACE TABLE {schema.table} ({cols})")


def _lead_warnings(
    con: duckdb.DuckDBPyConnection, reports: dict[str, TableReport], has_accounts: bool
) -> None:
    if not has_accounts:
        return
    missing, quarantined = fetch_row(
        con,
        f"SELECT count(*) FILTER (WHERE a.account_id IS NULL), "
        f"count(*) FILTER (WHERE a.account_id IS NOT NULL AND a.reason IS NOT NULL) "
        f"FROM checked_leads l LEFT JOIN checked_accounts a ON l.{L.account_id} = a.{A.account_id} "
        f"WHERE l.reason IS NULL AND l.{L.account_id} IS NOT NULL",
    )
    if missing:
        reports["leads"].warnings["account_id not found in accounts; lead kept without firmographics"] = missing
    if quarantined:
        reports["leads"].warnings["account quarantined; lead kept without firmographics"] = quarantined


def enforce_thresholds(report: LoadReport, source: Source, config: DataConfig, strict: bool | None = None) -> None:
    """Stop on too large a quarantined share, or on any quarantine under *strict* (default
    ``config.strict``); run on every load, a cached one included."""
    _enforce_thresholds(report, source, config.max_quarantine_share, config.strict if strict is None else strict)


def _enforce_thresholds(report: LoadReport, source: Source, max_share: float, strict: bool) -> None:
    if strict and report.quarantined:
        first = report.rejects.iloc[0]
        table = str(first[Rejects.table_name])
        raise ContractError(
            f"{first[Rejects.reason]} (value {first[Rejects.value]!r}); --strict turns every "
            f"quarantine into an error and {report.quarantined:,} rows would be quarantined. "
            "Fix the export, or run without --strict to set such rows aside in the rejects file",
            file=source.label(table),
            row=int(first[Rejects.row]),
            column=str(first[Rejects.column]),
        )
    for t in report.tables.values():
        if t.rows_read and t.quarantined / t.rows_read > max_share:
            top = max(t.reasons.items(), key=lambda kv: kv[1])
            raise ContractError(
                f"{t.quarantined:,} of {t.rows_read:,} rows ({t.quarantined / t.rows_read:.1%}) would "
                f"be quarantined, more than the allowed {max_share:.0%}; the export is probably "
                f"mis-mapped (most common: {top[0]!r}, {top[1]:,} rows). Check the column mapping "
                "and timestamp formats, or raise data.max_quarantine_share",
                file=t.file,
            )
