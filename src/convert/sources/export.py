"""A loaded CRM export: typed contract tables in a DuckDB connection, with its load report.

:func:`load` is the public entry (``convert.load``): find the tables (a folder of files, or
a database), read them raw, apply the mapping (when the source needs one), apply the
contract, and return a :class:`CRMData` the feature and label steps query.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import duckdb
import numpy as np
import pandas as pd

from convert.config import Config
from convert.features.engine import index_events
from convert.schema import CONTRACT_TABLES, Accounts, Events, Leads, Stages
from convert.sources.cache import cache_dir, cache_key, entry, restore, store
from convert.sources.mapping import MappedTable, Mapping, mapped_select
from convert.sources.readers import (
    Source,
    connect,
    find_database_source,
    find_source,
    is_database_url,
    load_database,
    load_raw,
    resolve_data,
)
from convert.sources.validation import LoadReport, enforce_thresholds, validate
from convert.sql import fetch_row, quote


@dataclass
class CRMData:
    """Typed contract tables (``leads``, ``accounts``, ``events``, ``stages``) in *con*."""

    con: duckdb.DuckDBPyConnection
    source: Source
    report: LoadReport
    mapped: dict[str, MappedTable] = field(default_factory=dict)
    #: Whether the tables were copied from the cache of validated tables (:mod:`convert.sources.cache`).
    from_cache: bool = False

    def frame(self, table: str) -> pd.DataFrame:
        """A whole contract table as pandas (meant for small tables and tests)."""
        if table not in ("leads", "accounts", "events", "stages"):
            raise ValueError(f"unknown table {table!r}")
        return self.con.execute(f"SELECT * FROM {table}").df()

    def latest_timestamp(self) -> pd.Timestamp:
        """The latest timestamp anywhere in the export (the default training as-of is the day after)."""
        row = fetch_row(
            self.con,
            f"SELECT greatest("
            f"(SELECT max({Leads.created_at}) FROM leads), "
            f"(SELECT max({Leads.converted_at}) FROM leads), "
            f"(SELECT max({Leads.disqualified_at}) FROM leads), "
            f"(SELECT max({Events.occurred_at}) FROM events), "
            f"(SELECT max({Stages.entered_at}) FROM stages))",
        )
        if row[0] is None:
            raise ValueError("the export holds no timestamps")
        return pd.Timestamp(row[0])

    def earliest_created(self) -> pd.Timestamp:
        row = fetch_row(self.con, f"SELECT min({Leads.created_at}) FROM leads")
        return pd.Timestamp(row[0]) if row[0] is not None else pd.NaT

    def close(self) -> None:
        self.con.close()

    # --- raw attributes (what the leakage guard screens) ----------------------------------

    def extra_columns(self) -> dict[str, list[str]]:
        """The non-contract columns of ``leads`` and ``accounts`` (the extra attributes)."""
        out: dict[str, list[str]] = {}
        for schema in (Leads, Accounts):
            present = [r[0] for r in self.con.execute(f"DESCRIBE {schema.table}").fetchall()]
            out[schema.table] = [c for c in present if c not in schema.names()]
        return out

    def attributes(self) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per lead: its extra attributes and its account's (an account column that
        shares a lead column's name is called ``accounts.NAME``), and whether the lead
        converted. The raw material of the leakage guard in event mode."""
        extras = self.extra_columns()
        parts = [f"l.{quote(c)} AS {quote(c)}" for c in extras["leads"]]
        parts += [
            f"a.{quote(c)} AS {quote(c if c not in extras['leads'] else 'accounts.' + c)}"
            for c in extras["accounts"]
        ]
        parts.append(f"l.{Leads.converted_at} IS NOT NULL AS __converted")
        frame = self.con.execute(
            f"SELECT {', '.join(parts)} FROM leads l LEFT JOIN accounts a "
            f"ON l.{Leads.account_id} = a.{Accounts.account_id} ORDER BY l.{Leads.lead_id}"
        ).df()
        label = frame.pop("__converted").to_numpy(dtype="int64")
        return frame, label

    def drop_attributes(self, columns: list[str]) -> list[str]:
        """Remove extra attributes from ``leads``/``accounts`` (``accounts.NAME`` names an
        account column); return the ones removed."""
        extras = self.extra_columns()
        dropped = []
        for column in columns:
            table, name = ("accounts", column[9:]) if column.startswith("accounts.") else ("leads", column)
            for t in ((table,) if column.startswith("accounts.") else ("leads", "accounts")):
                if name in extras[t]:
                    self.con.execute(f"ALTER TABLE {t} DROP COLUMN {quote(name)}")
                    dropped.append(column if t == table else f"accounts.{name}")
        return dropped


def load(
    path: str | Path,
    config: Config | None = None,
    *,
    strict: bool | None = None,
    mapping: Mapping | None = None,
    cache: bool | None = None,
) -> CRMData:
    """Load a CRM export by the data contract.

    Parameters
    ----------
    path:
        A folder holding ``leads`` and optionally ``accounts``, ``events``, ``stages``
        as ``.csv`` or ``.parquet``; or a SQLAlchemy database URL (``sqlite:///crm.db``,
        ``postgresql://user@host/db``) whose database holds those tables; or ``env:NAME``,
        the environment variable holding either.
    config:
        The configuration (quarantine threshold, DuckDB memory limit).
    strict:
        Turn every quarantine into an error (overrides ``config.data.strict``).
    mapping:
        How the source differs from the contract (:func:`convert.sources.mapping.load_mapping`).
    cache:
        Use the cache of validated tables for a folder or file export (default
        ``config.data.cache``; :mod:`convert.sources.cache`). A cached load gives the same tables,
        report and rejects as an uncached one.

    Returns
    -------
    CRMData
        The typed tables and the load report; ``report.rejects`` holds the quarantined rows.

    Raises
    ------
    ContractError
        When the export breaks the contract in a way that stops the command.
    """
    config = config or Config()
    mapping = mapping or Mapping()
    location = resolve_data(path)
    database = is_database_url(location)
    source = find_database_source(location, mapping) if database else find_source(location, mapping)
    con = connect(config.features)
    use_cache = (config.data.cache if cache is None else cache) and not database and bool(source.files)
    folder = key = None
    try:
        if use_cache:
            folder = cache_dir(source, config)
            if folder is not None:
                key = cache_key(source, config, mapping)
                hit = entry(folder, key)
                restored = restore(con, hit) if hit.exists() else None
                if restored is not None:
                    report, mapped = restored
                    enforce_thresholds(report, source, config.data, strict)
                    return CRMData(con=con, source=source, report=report, mapped=mapped, from_cache=True)
        if database:
            raw_columns = load_database(con, source, config.data.db_chunk_rows)
        else:
            raw_columns = load_raw(con, source, mapping.csv)
        mapped = apply_mapping(con, source, raw_columns, mapping)
        report = validate(con, source, raw_columns, config.data, strict=strict)
        for table in raw_columns:
            con.execute(f"DROP TABLE IF EXISTS raw_{table}")
        index_events(con)
        if folder is not None and key is not None:
            store(con, folder, key, report, mapped, config.data.cache_keep)
    except BaseException:
        con.close()
        raise
    return CRMData(con=con, source=source, report=report, mapped=mapped)


def apply_mapping(
    con: duckdb.DuckDBPyConnection, source: Source, raw_columns: dict[str, list[str]], mapping: Mapping
) -> dict[str, MappedTable]:
    """Rewrite each ``raw_<table>`` by the mapping, in place; *raw_columns* is updated."""
    done: dict[str, MappedTable] = {}
    for table in list(raw_columns):
        raw = f"raw_{table}"
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {raw})").fetchall())
        mapped = mapped_select(
            mapping, mapping.table(table), f"{raw}__src", types, source.label(table), CONTRACT_TABLES[table]
        )
        if mapped.changes:
            con.execute(f"ALTER TABLE {raw} RENAME TO {raw}__src")
            con.execute(f"CREATE TABLE {raw} AS {mapped.sql}")
            con.execute(f"DROP TABLE {raw}__src")
            raw_columns[table] = mapped.columns
        done[table] = mapped
    return done
