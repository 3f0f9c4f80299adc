"""Opening sources: a CRM export folder becomes raw tables in a DuckDB connection.

This is an edge module: it is the only place (with ``writeback`` and ``registry``)
that opens files. It finds each contract table as ``NAME.csv`` or ``NAME.parquet``,
loads it as raw text columns plus its 1-based data row number, and hands the
connection to :mod:`convert.validation`, which types and checks it by the contract.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd

from convert.config import FeaturesConfig
from convert.exceptions import ContractError
from convert.schema import CONTRACT_TABLES, REQUIRED_TABLES

ROW = "__row"
"""Name given to a raw row's 1-based data row number (``rowid + 1``) in validation queries."""

_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Source:
    """Where each contract table of an export lives."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)

    def file(self, table: str) -> Path | None:
        return self.files.get(table)

    def label(self, table: str) -> str:
        """The file name used in messages (``leads.csv``)."""
        path = self.files.get(table)
        return path.name if path else f"{table}.csv"


def find_source(path: str | Path) -> Source:
    """Locate the contract's tables in a folder; a missing required table is an error."""
    root = Path(path)
    if not root.exists():
        raise ContractError(f"the data folder {root} does not exist", file=str(root))
    if not root.is_dir():
        raise ContractError(
            f"{root} is a file; the CRM export is a folder holding leads.csv (or .parquet) "
            "and optionally accounts, events and stages (single flat files come with --target)",
            file=str(root),
        )
    files: dict[str, Path] = {}
    for table in CONTRACT_TABLES:
        found = [root / f"{table}.{fmt}" for fmt in _FORMATS if (root / f"{table}.{fmt}").exists()]
        if len(found) > 1:
            raise ContractError(
                f"both {found[0].name} and {found[1].name} exist; keep one file per table",
                file=str(found[0]),
            )
        if found:
            files[table] = found[0]
    for table in REQUIRED_TABLES:
        if table not in files:
            raise ContractError(
                f"the required table '{table}' is missing: expected {table}.csv or {table}.parquet "
                f"in {root}",
                file=str(root / f"{table}.csv"),
            )
    return Source(root=root, files=files)


def connect(config: FeaturesConfig | None = None, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the configured memory limit and threads.

    Spilling goes to a temporary directory so that large exports stay within the limit.
    """
    config = config or FeaturesConfig()
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{_checked_memory_limit(config.duckdb_memory_limit)}'")
    con.execute("SET preserve_insertion_order = true")
    spill = Path(tempfile.gettempdir()) / "convert-duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = '{spill.as_posix()}'")
    if config.duckdb_threads:
        con.execute(f"SET threads = {int(config.duckdb_threads)}")
    return con


def _checked_memory_limit(value: str) -> str:
    import re

    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value.strip()):
        raise ContractError(f"duckdb_memory_limit {value!r} is not a size such as '8GB'")
    return value.strip()


def load_raw(con: duckdb.DuckDBPyConnection, source: Source) -> dict[str, list[str]]:
    """Create ``raw_<table>`` for each table found and return its columns.

    CSV columns are read as text (typing is the contract's job, never inference);
    Parquet columns keep their stored types. Tables keep file order, so a row's
    1-based data row number is ``rowid + 1`` (see :data:`ROW`).
    """
    columns: dict[str, list[str]] = {}
    for table, path in source.files.items():
        raw = f"raw_{table}"
        literal = "'" + str(path).replace("'", "''") + "'"
        try:
            if path.suffix == ".csv":
                con.execute(
                    f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM read_csv({literal}, "
                    "header = true, all_varchar = true, delim = ',', quote = '\"', escape = '\"', "
                    "encoding = 'utf-8', null_padding = false, strict_mode = true)"
                )
            else:
                con.execute(f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM read_parquet({literal})")
        except duckdb.Error as exc:
            raise ContractError(
                f"the file cannot be parsed: {str(exc).splitlines()[0]}. Check that it is "
                "UTF-8, comma-separated with a header row (or valid Parquet)",
                file=str(path),
            ) from exc
        columns[table] = [row[0] for row in con.execute(f"DESCRIBE {raw}").fetchall()]
    return columns


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    """The first row of a query, reading the whole result (DuckDB refuses further work on a
    connection while a result is only partly fetched)."""
    rows = con.execute(sql, params or []).fetchall()
    if not rows:
        raise RuntimeError(f"query returned no row: {sql[:80]}")
    return tuple(rows[0])


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a small table to CSV or Parquet (by suffix) atomically: temp file, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path
