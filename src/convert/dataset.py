"""A loaded CRM export: typed contract tables in a DuckDB connection, with its load report.

:func:`load` is the public entry (``convert.load``): find the tables, read them raw,
apply the contract, and return a :class:`CRMData` the feature and label steps query.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import duckdb
import pandas as pd

from convert.config import Config
from convert.features import index_events
from convert.io import Source, connect, fetch_row, find_source, load_raw
from convert.schema import Events, Leads, Stages
from convert.validation import LoadReport, validate


@dataclass
class CRMData:
    """Typed contract tables (``leads``, ``accounts``, ``events``, ``stages``) in *con*."""

    con: duckdb.DuckDBPyConnection
    source: Source
    report: LoadReport

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


def load(path: str | Path, config: Config | None = None, *, strict: bool | None = None) -> CRMData:
    """Load a CRM export folder by the data contract.

    Parameters
    ----------
    path:
        A folder holding ``leads`` and optionally ``accounts``, ``events``, ``stages``
        as ``.csv`` or ``.parquet``.
    config:
        The configuration (quarantine threshold, DuckDB memory limit).
    strict:
        Turn every quarantine into an error (overrides ``config.data.strict``).

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
    source = find_source(path)
    con = connect(config.features)
    try:
        raw_columns = load_raw(con, source)
        report = validate(con, source, raw_columns, config.data, strict=strict)
        for table in raw_columns:
            con.execute(f"DROP TABLE IF EXISTS raw_{table}")
        index_events(con)
    except BaseException:
        con.close()
        raise
    return CRMData(con=con, source=source, report=report)
