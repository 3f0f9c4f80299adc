"""One scan of the indexed events into what each population row's event features count.

Every feature is stated once as SQL (:mod:`convert.features.families`), and that SQL is
what :func:`~convert.features.engine.materialize_features` (scoring) and the Spark engine
run. :func:`~convert.features.engine.build_features` (training sets, backtests) computes
the families that read events (per-type and overall engagement, the account's
engagement) from this scan instead, because the SQL plan pays for a rollup table of
(lead, as-of time, event type) rows and for re-aggregating it, where one pass over the
events can count everything at once:

- :func:`read_events`, :func:`read_days`, :func:`read_leads`, :func:`read_rows` take the
  indexed copies (:func:`~convert.features.engine.index_events`) and the pass's population
  out of DuckDB as numpy arrays (integers: lead keys, event type codes, microseconds);
- :func:`scan` runs numba kernels over them, in parallel over ranges of lead keys (each
  thread reads every event and counts those of its leads: no two threads write the same
  row, whatever order the events are stored in), into an :class:`EventScan`: per row,
  the counts over every window, the latest times, the distinct active days and the
  account's sums. Events stored scattered (a log in time order) are first grouped by
  ranges of lead keys, so that the rows being counted stay in cache;
- each family's ``evaluate`` turns an :class:`EventScan` into its features, written beside
  its SQL, so that the two cannot drift apart unseen; the parity tests hold them to the
  same values, to the last digit.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numba
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
from numba import njit, prange

from convert.config import FeaturesConfig
from convert.features.dialect import DUCKDB
from convert.schema import Events, Leads

DAY_US = 86_400_000_000
_NEVER = np.iinfo(np.int64).max  # a time after every as-of time: "not yet" / no first event
_NONE = np.iinfo(np.int64).min  # before every time: no latest event

_CLICK, _OPEN, _HIGH = 1, 2, 4  # event type flags
#: scattered events are grouped by ranges of lead keys before counting, each range holding
#: about 2,048 population rows (leads x as-of times): its counts then stay in cache
_RANGE_ROWS_LOG2 = 11


# --- what leaves DuckDB --------------------------------------------------------------------------


@dataclass(frozen=True)
class EventArrays:
    """The indexed events dated before the pass's latest as-of time, as integer arrays."""

    #: lead key, event type code (the ENUM's) and time in microseconds of each event
    key: np.ndarray
    code: np.ndarray
    at: np.ndarray
    #: the event type of each code
    labels: tuple[str, ...]

    def type_counts(self) -> list[tuple[str, int]]:
        """(event type, events) of every type present, most frequent first, ties by type
        (the order of :func:`~convert.features.engine.discover_event_types`)."""
        n = _code_counts(self.code, len(self.labels))  # np.bincount would widen every code first
        present = [(t, int(c)) for t, c in zip(self.labels, n, strict=True) if c]
        return sorted(present, key=lambda tc: (-tc[1], tc[0].encode()))


@dataclass(frozen=True)
class Rows:
    """The pass's population rows (``_grid_population``): each row's lead key (0 when the
    lead is unknown) and as-of time, as the index of its time in ``grid``."""

    key: np.ndarray
    as_of: np.ndarray
    grid: np.ndarray

    def __len__(self) -> int:
        return len(self.key)


def _times(column: pa.ChunkedArray) -> np.ndarray:
    """A TIMESTAMP column (no nulls) as int64 microseconds, in one array."""
    return np.asarray(column.cast(pa.timestamp("us")).cast(pa.int64()).to_numpy())


def read_rows(con: duckdb.DuckDBPyConnection) -> Rows:
    """The rows of ``_grid_population`` in ``row`` order and the pass's as-of times."""
    grid = _times(con.sql("SELECT as_of FROM _grid ORDER BY as_of").to_arrow_table().column(0))
    pop = con.sql(
        "SELECT coalesce(lead_key, 0) AS lead_key, as_of FROM _grid_population ORDER BY row"
    ).to_arrow_table()
    at = _times(pop.column("as_of"))
    return Rows(pop.column("lead_key").to_numpy().astype(np.int64), np.searchsorted(grid, at), grid)


def read_events(con: duckdb.DuckDBPyConnection, grid: np.ndarray) -> EventArrays:
    """The indexed events dated before the latest time of *grid* (none without a time) as
    integer arrays, and the event type of each code."""
    E, enum = Events, DUCKDB.event_type_enum
    labels = tuple(r[0] for r in con.execute(f"SELECT unnest(enum_range(NULL::{enum}))").fetchall())
    if not len(grid):
        return EventArrays(np.zeros(0, np.int32), np.zeros(0, np.uint8), np.zeros(0, np.int64), labels)
    table = con.sql(
        f"SELECT lead_key, enum_code({E.event_type}) AS code, {E.occurred_at} FROM {DUCKDB.events} "
        f"WHERE {E.occurred_at} < make_timestamp({int(grid.max())})"
    ).to_arrow_table()
    # one array per column, not DuckDB's chunks: a kernel call costs more than its loop over a chunk
    return EventArrays(table.column(0).to_numpy(), table.column(1).to_numpy(), _times(table.column(2)), labels)


def read_days(
    con: duckdb.DuckDBPyConnection, grid: np.ndarray, days: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``_active_days`` (lead key, first and last event time of each day with events)
    for the days that can fall in the *days* before a time of *grid*."""
    if not len(grid):
        return np.zeros(0, np.int32), np.zeros(0, np.int64), np.zeros(0, np.int64)
    table = con.sql(
        f"SELECT lead_key, first_at, last_at FROM {DUCKDB.active_days} "
        f"WHERE first_at < make_timestamp({int(grid.max())}) "
        f"AND last_at >= make_timestamp({int(grid.min()) - days * DAY_US})"
    ).to_arrow_table()
    return table.column(0).to_numpy(), _times(table.column(1)), _times(table.column(2))


def read_leads(con: duckdb.DuckDBPyConnection) -> tuple[np.ndarray, np.ndarray]:
    """Per lead key (index 0: no lead): its account as a code (-1: none) and its creation
    time in microseconds (never, where it has none)."""
    L = Leads
    table = con.sql(
        f"SELECT lead_key, {L.created_at}, {L.account_id} FROM {DUCKDB.leads} ORDER BY lead_key"
    ).to_arrow_table()
    keys = table.column("lead_key").to_numpy()
    size = int(keys.max()) + 1 if len(keys) else 1
    account = np.full(size, -1, dtype=np.int64)
    created = np.full(size, _NEVER, dtype=np.int64)
    codes = pc.dictionary_encode(table.column(L.account_id).combine_chunks()).indices  # one dictionary
    account[keys] = codes.fill_null(-1).to_numpy()
    at = table.column(L.created_at).cast(pa.timestamp("us")).cast(pa.int64())
    created[keys] = pc.fill_null(at, _NEVER).to_numpy()
    return account, created


# --- the kernels ---------------------------------------------------------------------------------


@njit(nogil=True, cache=True)
def _code_counts(code: np.ndarray, n_codes: int) -> np.ndarray:  # pragma: no cover - compiled
    n = np.zeros(max(n_codes, 1), dtype=np.int64)
    for c in code:
        n[c] += 1
    return n


@njit(nogil=True, cache=True)
def _runs(key: np.ndarray) -> int:  # pragma: no cover - compiled
    """Runs of equal lead keys in *key*: about the number of leads when each lead's events
    are stored together, about the number of events when they are in time order."""
    runs = 1 if key.shape[0] else 0
    for i in range(1, key.shape[0]):
        if key[i] != key[i - 1]:
            runs += 1
    return runs


@njit(parallel=True, nogil=True, cache=True)
def _group_by_lead(
    key: np.ndarray, code: np.ndarray, at: np.ndarray, n_keys: int, shift: int, parts: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:  # pragma: no cover - compiled
    """The events stably grouped by ranges of ``2**shift`` lead keys (a counting sort by
    ``key >> shift``: few enough ranges that writing them streams, small enough that one
    range's rows stay in cache while it is counted). Each of *parts* threads sorts a slice
    of the events into its own place within every range."""
    n, n_ranges = key.shape[0], (n_keys >> shift) + 1
    counts = np.zeros((parts, n_ranges), dtype=np.int64)
    for part in prange(parts):
        for i in range(n * part // parts, n * (part + 1) // parts):
            counts[part, key[i] >> shift] += 1
    start = np.zeros((parts, n_ranges), dtype=np.int64)  # where each slice's part of a range begins
    at_ = 0
    for b in range(n_ranges):
        for part in range(parts):
            start[part, b] = at_
            at_ += counts[part, b]
    out_key, out_code, out_at = np.empty_like(key), np.empty_like(code), np.empty_like(at)
    for part in prange(parts):
        cursor = start[part]
        for i in range(n * part // parts, n * (part + 1) // parts):
            b = key[i] >> shift
            j = cursor[b]
            cursor[b] = j + 1
            out_key[j] = key[i]
            out_code[j] = code[i]
            out_at[j] = at[i]
    return out_key, out_code, out_at


@njit(cache=True, inline="always")
def _key_range(part: int, parts: int, n_keys: int) -> tuple[int, int]:  # pragma: no cover - compiled
    """The lead keys thread *part* of *parts* counts: every thread reads every event and
    counts those of its own keys, so no two threads ever write the same row."""
    return n_keys * part // parts, n_keys * (part + 1) // parts


@njit(parallel=True, nogil=True, cache=True)
def _count_events(
    key: np.ndarray, code: np.ndarray, at: np.ndarray, grid: np.ndarray, starts: np.ndarray,
    row_of: np.ndarray, slot_of: np.ndarray, flags: np.ndarray, type_windows: np.ndarray,
    own_windows: np.ndarray, widest: int, counts: np.ndarray, times: np.ndarray, own: np.ndarray,
    parts: int,
) -> None:  # pragma: no cover - compiled
    """Add one chunk of events to the counts of the rows (and leads) they precede.

    ``counts`` columns (see :class:`EventScan`): the windows then all time, over every type,
    then over high-intent types; clicks and opens in all; then per vocabulary slot its
    windows (``type_windows``, indexes of ``starts``' columns) and all time. ``times``: first,
    latest, latest high-intent, then each slot's latest. ``own``: per lead and as-of time,
    the counts over ``own_windows`` of every lead (the account sums read them)."""
    n_windows = starts.shape[1]
    all_at, high_at = n_windows, 2 * n_windows + 1
    clicks = 2 * (n_windows + 1)
    per_slot = type_windows.shape[0] + 1
    first_slot = clicks + 2
    n_keys = row_of.shape[0]
    for part in prange(parts):
        lo, hi = _key_range(part, parts, n_keys)
        for i in range(key.shape[0]):
            k = key[i]
            if k < lo or k >= hi:
                continue
            x = at[i]
            c = code[i]
            slot = slot_of[c]
            flag = flags[c]
            for g in range(grid.shape[0] - 1, -1, -1):  # ascending times: once not before, none
                if x >= grid[g]:
                    break
                for j in range(own_windows.shape[0]):
                    if x >= starts[g, own_windows[j]]:
                        own[k, g, j] += 1
                r = row_of[k, g]
                if r < 0:
                    continue
                recent = x >= starts[g, widest]  # most events are older than every window
                if recent:
                    for w in range(n_windows):
                        if x >= starts[g, w]:
                            counts[r, w] += 1
                            if flag & _HIGH:
                                counts[r, all_at + 1 + w] += 1
                counts[r, all_at] += 1
                if x < times[r, 0]:
                    times[r, 0] = x
                if x > times[r, 1]:
                    times[r, 1] = x
                if flag & _HIGH:
                    counts[r, high_at] += 1
                    if x > times[r, 2]:
                        times[r, 2] = x
                if flag & _CLICK:
                    counts[r, clicks] += 1
                if flag & _OPEN:
                    counts[r, clicks + 1] += 1
                if slot >= 0:
                    base = first_slot + slot * per_slot
                    if recent:
                        for w in range(type_windows.shape[0]):
                            if x >= starts[g, type_windows[w]]:
                                counts[r, base + w] += 1
                    counts[r, base + per_slot - 1] += 1
                    if x > times[r, 3 + slot]:
                        times[r, 3 + slot] = x


@njit(parallel=True, nogil=True, cache=True)
def _count_days(
    key: np.ndarray, first: np.ndarray, last: np.ndarray, grid: np.ndarray, start: np.ndarray,
    row_of: np.ndarray, out: np.ndarray, parts: int,
) -> None:  # pragma: no cover - compiled
    """Count each row's days with events in its window: a day counts when its first event
    is before the as-of time and its last within the window (exact for windows of a day
    or more, as the SQL's ``act``)."""
    n_keys = row_of.shape[0]
    for part in prange(parts):
        lo, hi = _key_range(part, parts, n_keys)
        for i in range(key.shape[0]):
            k = key[i]
            if k < lo or k >= hi:
                continue
            for g in range(grid.shape[0] - 1, -1, -1):
                if first[i] >= grid[g]:
                    break
                r = row_of[k, g]
                if r >= 0 and last[i] >= start[g]:
                    out[r] += 1


# --- the scan ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class EventScan:
    """What the event families need of each population row, counted by :func:`scan`.

    Counts are over the events dated before the row's as-of time: ``count()`` over every
    type, ``count(slot=i)`` over the vocabulary's *i*-th type, ``count(high=True)`` over the
    high-intent types; a *window* in days counts those dated on or after the as-of time
    minus that many days, ``None`` all of them. Times are microseconds; ``days_since()``
    turns them into the SQL's days (missing: no such event).
    """

    windows: tuple[int, ...]
    type_windows: tuple[int, ...]
    as_of: np.ndarray
    #: a row per count or time (the kernels' columns, see :func:`_count_events`), a column per row
    counts: np.ndarray
    times: np.ndarray
    active: np.ndarray
    #: per row: the account's leads created before the as-of time, their 30- and 90-day
    #: event counts and how many were active in 90 days (NaN: no account, or no lead yet)
    account: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]

    def _column(self, window: int | None, base: int, windows: tuple[int, ...]) -> np.ndarray:
        at = base + (len(windows) if window is None else windows.index(window))
        return self.counts[at].astype(np.float64)

    def count(self, window: int | None = None, *, slot: int | None = None, high: bool = False) -> np.ndarray:
        """Events per row (float64), see the class."""
        n = len(self.windows) + 1
        if slot is not None:
            return self._column(window, 2 * n + 2 + slot * (len(self.type_windows) + 1), self.type_windows)
        return self._column(window, n if high else 0, self.windows)

    def clicks(self) -> np.ndarray:
        return self.counts[2 * len(self.windows) + 2].astype(np.float64)

    def opens(self) -> np.ndarray:
        return self.counts[2 * len(self.windows) + 3].astype(np.float64)

    def days_since(self, which: str = "latest", *, slot: int | None = None) -> np.ndarray:
        """Days from the ``first`` or ``latest`` event (``high``: high-intent; *slot*: of that
        type) to the as-of time, as the DuckDB dialect's ``days_between``; NaN where none."""
        column = 3 + slot if slot is not None else {"first": 0, "latest": 1, "high": 2}[which]
        t = self.times[column]
        days = (self.as_of / 1e6 - t / 1e6) / 86400.0  # epoch() is seconds as a double
        days[(t == _NONE) | (t == _NEVER)] = np.nan
        return days


def scan(
    events: EventArrays,
    days: tuple[np.ndarray, np.ndarray, np.ndarray],
    leads: tuple[np.ndarray, np.ndarray],
    rows: Rows,
    event_types: tuple[str, ...],
    config: FeaturesConfig,
    windows: tuple[int, ...],
) -> EventScan:
    """Count, for every row of *rows*, what the event families read (:class:`EventScan`).

    *windows*: the window lengths in days the overall counts keep (the rollup's); the
    per-type counts keep ``config.windows_days``. Releases the GIL: DuckDB can run the
    pass's other query meanwhile.
    """
    account, created = leads
    n_keys = len(account)
    grid = rows.grid
    row_of = np.full((n_keys, len(grid)), -1, dtype=np.int32)  # the population row of (lead, as-of), or -1
    known = rows.key > 0
    row_of[rows.key[known], rows.as_of[known]] = np.flatnonzero(known)
    starts = grid[:, None] - np.asarray(windows, dtype=np.int64)[None, :] * DAY_US
    slot_of = np.full(max(len(events.labels), 1), -1, dtype=np.int64)
    flags = np.zeros(max(len(events.labels), 1), dtype=np.int64)
    code_of = {t: c for c, t in enumerate(events.labels)}
    for slot, t in enumerate(event_types):
        if t in code_of:
            slot_of[code_of[t]] = slot
    for names, flag in ((("email_click",), _CLICK), (("email_open",), _OPEN), (config.high_intent_events, _HIGH)):
        for t in names:
            if t in code_of:
                flags[code_of[t]] |= flag
    type_windows = np.array([windows.index(w) for w in config.windows_days], dtype=np.int64)
    own_windows = np.array([windows.index(30), windows.index(90)], dtype=np.int64)  # the account family's
    n = len(windows) + 1
    counts = np.zeros((len(rows), 2 * n + 2 + len(event_types) * (len(config.windows_days) + 1)), np.int32)
    times = np.full((len(rows), 3 + len(event_types)), _NONE, dtype=np.int64)
    times[:, 0] = _NEVER
    own = np.zeros((n_keys, len(grid), 2), dtype=np.int32)
    parts = numba.get_num_threads()  # one range of lead keys per thread
    widest = windows.index(max(windows))  # the column of the earliest start
    key, code, at = events.key, events.code, events.at
    if _runs(key) > 4 * n_keys:  # scattered (a log in time order): each row's counts would miss the cache
        shift = max(0, _RANGE_ROWS_LOG2 - int(np.ceil(np.log2(max(len(grid), 1)))))
        key, code, at = _group_by_lead(key, code, at, n_keys, shift, parts)
    _count_events(key, code, at, grid, starts, row_of, slot_of, flags, type_windows,
                  own_windows, widest, counts, times, own, parts)
    active = np.zeros(len(rows), dtype=np.int32)  # over the longest feature window, as the SQL's
    _count_days(*days, grid, grid - max(config.windows_days) * DAY_US, row_of, active, parts)
    as_of = grid[rows.as_of] if len(grid) else np.zeros(len(rows), dtype=np.int64)
    # the kernels write a lead's counts side by side; the features read a count of every row
    return EventScan(windows, tuple(config.windows_days), as_of,
                     np.ascontiguousarray(counts.T), np.ascontiguousarray(times.T), active,
                     _account_sums(rows, account, created, own))


def _account_sums(
    rows: Rows, account: np.ndarray, created: np.ndarray, own: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Per row, over its account's leads created before its as-of time: how many, their
    30- and 90-day event counts, how many had events in 90 days (NaN: no account or no
    such lead), as the SQL's ``acct``."""
    out = tuple(np.full(len(rows), np.nan) for _ in range(4))
    n_accounts = int(account.max()) + 1 if len(account) else 0
    has = account >= 0
    for g, t in enumerate(rows.grid):
        leads = np.flatnonzero(has & (created < t))
        acc = account[leads]
        sums = (
            np.bincount(acc, minlength=n_accounts).astype(np.float64),
            np.bincount(acc, weights=own[leads, g, 0], minlength=n_accounts),
            np.bincount(acc, weights=own[leads, g, 1], minlength=n_accounts),
            np.bincount(acc, weights=own[leads, g, 1] > 0, minlength=n_accounts),
        )
        here = np.flatnonzero(rows.as_of == g)
        their = account[rows.key[here]]
        found = their >= 0
        here, their = here[found], their[found]
        found = sums[0][their] > 0
        here, their = here[found], their[found]
        for column, total in zip(out, sums, strict=True):
            column[here] = total[their]
    return out  # type: ignore[return-value]
