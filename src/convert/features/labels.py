"""Population and label per (lead_id, as_of), exactly as the data contract defines them.

For an as-of time ``t`` and a horizon of ``H`` days:

- population: ``created_at < t`` and (``converted_at`` empty or ``converted_at >= t``)
  and (``disqualified_at`` empty or ``disqualified_at >= t``);
- label: 1 when ``t <= converted_at < t + H``, else 0.

Training uses many as-of times (a grid of snapshots), keeping only those whose horizon has
fully elapsed before the training as-of ``T`` (``t + H <= T``), so every label is known.
:func:`choose_grid` lays the grid out: at a configured spacing, or (``auto``) at the coarsest
spacing that still yields enough labelled snapshots for the history at hand, and it says which
spacing it chose and why (:class:`AsOfGrid`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import duckdb
import pandas as pd

from convert.config import LabelsConfig
from convert.exceptions import ConfigError, InsufficientDataError
from convert.schema import Labeled, Leads

#: snapshot spacings, finest first, as pandas offsets anchored on the calendar (midnight,
#: Mondays, month and quarter starts)
_FREQUENCIES = {"daily": "D", "weekly": "W-MON", "biweekly": "2W-MON", "monthly": "MS", "quarterly": "QS"}
FREQUENCIES: tuple[str, ...] = tuple(_FREQUENCIES)
AUTO = "auto"
#: ``min_history_days: null``: this share of the labelled span, at most the cap
AUTO_HISTORY_SHARE = 0.1
AUTO_HISTORY_MAX_DAYS = 60


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
    min_history_days: int | None = 0,
) -> list[pd.Timestamp]:
    """Snapshot times from ``first_created + min_history_days`` whose horizon ends by ``train_as_of``
    (the times of :func:`choose_grid` with these settings)."""
    return choose_grid(first_created, train_as_of, horizon_days, frequency, min_history_days).times


def auto_min_history_days(first_created: pd.Timestamp, train_as_of: pd.Timestamp, horizon_days: int) -> int:
    """The first snapshot's distance from the first lead when ``labels.min_history_days`` is
    null: a tenth of the span whose labels are known (first lead to ``as_of - horizon``), at
    most 60 days. The first snapshots hold only the few leads created just before them; on a
    three-year export this skips two months, on a four-month one about nine days."""
    span = (train_as_of - pd.Timedelta(days=horizon_days) - first_created) / pd.Timedelta(days=1)
    if pd.isna(span) or span <= 0:
        return 0
    return int(min(AUTO_HISTORY_MAX_DAYS, round(AUTO_HISTORY_SHARE * span)))


@dataclass(frozen=True)
class AsOfGrid:
    """The labelled snapshot times of a training run, and how they were chosen.

    ``frequency`` is the spacing used (never ``auto``); ``requested`` what the configuration
    asked for; ``counts`` how many snapshots each spacing would give (``auto`` only);
    ``min_history_days`` and ``window_start`` the bounds applied. :meth:`describe` is the
    sentence training prints and the model card stores.
    """

    times: list[pd.Timestamp]
    frequency: str
    requested: str
    min_history_days: int
    min_history_auto: bool
    start: pd.Timestamp | None
    end: pd.Timestamp
    window_start: pd.Timestamp | None = None
    min_as_of_times: int = 0
    counts: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.times)

    def describe(self) -> str:
        """One sentence: the spacing, how many snapshots, their range, and why."""
        n = len(self.times)
        span = f" from {self.times[0]:%Y-%m-%d} to {self.times[-1]:%Y-%m-%d}" if n else ""
        history = (f"first snapshot at least {self.min_history_days} days after the first lead"
                   + (" (automatic: a tenth of the labelled span, at most 60)" if self.min_history_auto else ""))
        window = f"; window from {self.window_start:%Y-%m-%d}" if self.window_start is not None else ""
        if self.requested != AUTO:
            why = "as configured"
        else:
            tried = ", ".join(f"{f} {c}" for f, c in self.counts.items())
            if n >= self.min_as_of_times:
                why = (f"auto: the coarsest spacing with at least {self.min_as_of_times} labelled "
                       f"snapshots ({tried})")
            else:
                why = (f"auto: no spacing reaches {self.min_as_of_times} labelled snapshots "
                       f"({tried}), so the finest")
        return f"{n} {self.frequency} snapshots{span} ({why}; {history}{window})"

    def to_dict(self) -> dict[str, Any]:
        """The record kept in the model's metadata (model card)."""
        return {
            "frequency": self.frequency,
            "requested": self.requested,
            "as_of_times": len(self.times),
            "first": self.times[0].isoformat() if self.times else None,
            "last": self.times[-1].isoformat() if self.times else None,
            "min_as_of_times": self.min_as_of_times,
            "min_history_days": self.min_history_days,
            "min_history_auto": self.min_history_auto,
            "window_start": None if self.window_start is None else self.window_start.isoformat(),
            "counts": dict(self.counts),
            "description": self.describe(),
        }


def choose_grid(
    first_created: pd.Timestamp,
    train_as_of: pd.Timestamp,
    horizon_days: int,
    frequency: str = AUTO,
    min_history_days: int | None = None,
    min_as_of_times: int = 24,
    window_days: int | None = None,
) -> AsOfGrid:
    """The labelled snapshot grid for a training as-of, and how it was chosen.

    Parameters
    ----------
    first_created, train_as_of, horizon_days:
        The first lead's creation, the training as-of and the label horizon: snapshots run
        from ``first_created + min_history_days`` to ``train_as_of - horizon``.
    frequency:
        ``daily``, ``weekly``, ``biweekly``, ``monthly``, ``quarterly``, or ``auto``: the
        coarsest of these giving at least *min_as_of_times* snapshots (coarser snapshots
        repeat fewer near-identical rows of the same leads), the finest when none does.
    min_history_days:
        Days between the first lead and the first snapshot; ``None`` scales it with the
        history (:func:`auto_min_history_days`).
    window_days:
        When set, no snapshot earlier than ``train_as_of - horizon - window_days``: training
        looks back this far from its latest labelled snapshot.
    """
    if frequency != AUTO and frequency not in _FREQUENCIES:
        raise ValueError(f"unknown frequency {frequency!r}: choose auto or one of {', '.join(FREQUENCIES)}")
    auto_history = min_history_days is None
    history = auto_min_history_days(first_created, train_as_of, horizon_days) if min_history_days is None \
        else int(min_history_days)
    end = train_as_of - pd.Timedelta(days=horizon_days)
    window_start = None if window_days is None else end - pd.Timedelta(days=window_days)
    start = None if pd.isna(first_created) else first_created + pd.Timedelta(days=history)
    bound = start if window_start is None or start is None else max(start, window_start)

    def grid(freq: str) -> list[pd.Timestamp]:
        if bound is None or end <= bound:
            return []
        times = pd.date_range(start=bound.normalize(), end=end, freq=_FREQUENCIES[freq])
        return [pd.Timestamp(t) for t in times if bound <= t <= end]

    counts: dict[str, int] = {}
    if frequency == AUTO:
        chosen = FREQUENCIES[0]
        grids = {}
        for freq in reversed(FREQUENCIES):  # coarsest first
            grids[freq] = grid(freq)
            counts[freq] = len(grids[freq])
            if counts[freq] >= min_as_of_times:
                chosen = freq
                break
        times = grids.get(chosen) or grid(chosen)
    else:
        chosen, times = frequency, grid(frequency)
    return AsOfGrid(times=times, frequency=chosen, requested=frequency, min_history_days=history,
                    min_history_auto=auto_history, start=start, end=end, window_start=window_start,
                    min_as_of_times=min_as_of_times, counts=counts)


def grid_for(config: LabelsConfig, first_created: pd.Timestamp, train_as_of: pd.Timestamp) -> AsOfGrid:
    """:func:`choose_grid` with the ``labels`` section's settings."""
    return choose_grid(first_created, train_as_of, config.horizon_days, config.frequency,
                       config.min_history_days, config.min_as_of_times, config.window_days)


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
