"""SQL text and DuckDB basics every layer uses: identifiers, literals, a query's first row.

A foundation module (it imports nothing of convert), so that the feature code, the
readers, the contract checks and the scorer all quote and fetch the same way without the
core importing the IO edge. Every name or value spliced into SQL text goes through
:func:`quote` or :func:`lit`; names taken from configuration are first checked with
:func:`is_identifier` so that they can be written unquoted in any database.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import duckdb

#: A plain identifier: letters, digits and underscores, not starting with a digit, at
#: most 63 characters (the longest PostgreSQL keeps without truncating it).
IDENTIFIER = r"[A-Za-z_][A-Za-z0-9_]{0,62}"


def is_identifier(name: str) -> bool:
    """Whether *name* is a plain :data:`IDENTIFIER`, safe unquoted in every supported database."""
    return re.fullmatch(IDENTIFIER, name) is not None


def quote(name: str) -> str:
    """Quote an identifier for DuckDB (and Spark-compatible SQL written with double quotes)."""
    return '"' + name.replace('"', '""') + '"'


def lit(value: str) -> str:
    """A string literal in standard SQL (DuckDB, SQLite, PostgreSQL): ``'`` doubled."""
    return "'" + value.replace("'", "''") + "'"


def fetch_row(con: duckdb.DuckDBPyConnection, sql: str, params: list[Any] | None = None) -> tuple[Any, ...]:
    """The first row of a query, reading the whole result (DuckDB refuses further work on a
    connection while a result is only partly fetched)."""
    rows = con.execute(sql, params or []).fetchall()
    if not rows:
        raise RuntimeError(f"query returned no row: {sql[:80]}")
    return tuple(rows[0])
