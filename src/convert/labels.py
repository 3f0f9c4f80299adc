"""Population and label per (lead_id, as_of), exactly as the data contract defines them.

For an as-of time ``t`` and a horizon of ``H`` days:

- population: ``created_at < t`` and (``converted_at`` empty or ``converted_at >= t``)
  and (``disqualified_at`` empty or ``disqualified_at >= t``);
- label: 1 when ``t <= converted_at < t + H``, else 0.

Training uses many as-of times (a grid at a configured frequency), keeping only those
whose horizon has fully elapsed before the training as-of ``T`` (``t + H <= T``), so
every label is known.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

import duckdb
import pandas as pd

from convert.exceptions import ConfigError, InsufficientDataError
from convert.schema import Labeled, Leads

_FREQUENCIES = {"weekly": "W-MON", "biweekly": "2W-MON", "monthly": "MS", "quarterly": "QS"}


def parse_as_of(value: str | pd.Timestamp | None, what: str = "--as-of") -> pd.Timestamp | None:
    """An ISO 8601 date or timestamp as a naive UTC timestamp (an offset is honoured).

    Raises
    ------
    ConfigError
        Naming *what* (the flag) when the text is empty, not ISO 8601 (``yesterday``), an
        impossible date (``2025-06-31``) or outside the range of timestamps.
    """
    if value is None:
        return None
    if isinstance(value, str):
        text = value.strip()
        hint = "give an ISO 8601 date or timestamp such as 2025-07-01 or 2025-07-01T08:00:00Z"
        if not text:
            raise ConfigError(f"{what} is empty: {hint}")
        try:
            ts = pd.Timestamp(datetime.fromisoformat(text))
        except ValueError as exc:
            raise ConfigError(f"{what} {value!r} is not a valid date or timestamp ({exc}): {hint}") from None
        except OverflowError as exc:  # pandas' range: 1677-09-21 .. 2262-04-11
            raise ConfigError(f"{what} {value!r} is outside the supported dates ({exc}): {hint}") from None
    else:
        ts = pd.Timestamp(value)
        if ts is pd.NaT:
            raise ConfigError(f"{what} is missing (NaT)")
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return ts


def as_of_grid(
    first_created: pd.Timestamp,
    train_as_of: pd.Timestamp,
    horizon_days: int,
    frequency: str = "monthly",
    min_history_days: int = 0,
) -> list[pd.Timestamp]:
    """Snapshot times from ``first_created + min_history_days`` whose horizon ends by ``train_as_of``."""
    start = first_created + pd.Timedelta(days=min_history_days)
    end = train_as_of - pd.Timedelta(days=horizon_days)
    if pd.isna(start) or end <= start:
        return []
    grid = pd.date_range(start=start.normalize(), end=end, freq=_FREQUENCIES[frequency])
    return [pd.Timestamp(t) for t in grid if start <= t <= end]


def population_sql(as_of_table: str, columns: Sequence[str] = ()) -> str:
    """SQL of the population: one row per (lead_id, as_of) for each time in *as_of_table*,
    with any further *columns* (expressions over the lead ``l`` and the as-of time ``g.as_of``)."""
    L = Leads
    more = "".join(f", {c}" for c in columns)
    return (
        f"SELECT l.{L.lead_id} AS {Labeled.lead_id}, g.as_of AS {Labeled.as_of}{more} "
        f"FROM leads l JOIN {as_of_table} g ON l.{L.created_at} < g.as_of "
        f"WHERE (l.{L.converted_at} IS NULL OR l.{L.converted_at} >= g.as_of) "
        f"AND (l.{L.disqualified_at} IS NULL OR l.{L.disqualified_at} >= g.as_of)"
    )


def register_as_ofs(con: duckdb.DuckDBPyConnection, as_ofs: Sequence[pd.Timestamp], name: str = "as_of_grid") -> str:
    """Create a one-column table of as-of times in *con* and return its name."""
    frame = pd.DataFrame({"as_of": pd.to_datetime(list(as_ofs)).astype("datetime64[us]")})
    con.register("_as_of_frame", frame)
    con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS SELECT CAST(as_of AS TIMESTAMP) AS as_of FROM _as_of_frame")
    con.unregister("_as_of_frame")
    return name


def build_population(con: duckdb.DuckDBPyConnection, as_ofs: Sequence[pd.Timestamp]) -> pd.DataFrame:
    """The scoring population at each as-of time: columns ``lead_id``, ``as_of``."""
    grid = register_as_ofs(con, as_ofs)
    return con.execute(
        f"{population_sql(grid)} ORDER BY {Labeled.as_of}, {Labeled.lead_id}"
    ).df()


def build_labels(
    con: duckdb.DuckDBPyConnection, as_ofs: Sequence[pd.Timestamp], horizon_days: int
) -> pd.DataFrame:
    """Population and label at each as-of time: columns ``lead_id``, ``as_of``, ``label``."""
    if not as_ofs:
        raise InsufficientDataError(
            "no as-of time has a fully elapsed horizon: use a longer history, a shorter "
            "--horizon-days, or a later --as-of"
        )
    grid = register_as_ofs(con, as_ofs)
    L = Leads
    label = (
        f"CAST(coalesce(l.{L.converted_at} >= g.as_of AND "
        f"l.{L.converted_at} < g.as_of + INTERVAL ({int(horizon_days)}) DAY, false) AS INTEGER) "
        f"AS {Labeled.label}"
    )
    sql = f"{population_sql(grid, [label])} ORDER BY {Labeled.as_of}, {Labeled.lead_id}"
    return con.execute(sql).df()
