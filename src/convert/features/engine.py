"""The DuckDB feature engine: point-in-time features for many as-of times in one pass.

The features themselves (their SQL and catalog entries) are the families of
:mod:`convert.features.families`, assembled into one query by
:mod:`convert.features.query`; this module runs that query in DuckDB at scale:

- :func:`index_events` builds compact copies of leads and events (integer lead keys, an
  ENUM of event types) that the DuckDB dialect reads, :func:`index_active_days` their
  per-day activity (on first use);
- as-of times run in passes bounded by ``event_rows_per_pass`` (:func:`_pass_grids`),
  each scanning the events once;
- :func:`build_features` evaluates the families that read events from one scan of them
  (:mod:`convert.features.scan`) beside the query of the others; :func:`materialize_features`
  runs every family's SQL and keeps the result in DuckDB for :func:`iter_feature_batches`;
- :func:`discover_event_types` chooses the event vocabulary, point-in-time.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import duckdb
import numpy as np
import pandas as pd
import pyarrow as pa

from convert.config import STANDARD_EVENT_TYPES, FeaturesConfig
from convert.exceptions import FeatureMismatchError
from convert.features import scan
from convert.features.catalog import Catalog
from convert.features.dialect import DUCKDB, seniority_sql, slug
from convert.features.dialect import unique_slugs as unique_slugs  # re-exported (sources.flat)
from convert.features.families import FAMILIES, Query
from convert.features.families import feature_catalog as feature_catalog  # re-exported
from convert.features.query import feature_sql, rollup_windows
from convert.schema import Events, Leads, Snapshot
from convert.sql import fetch_row, lit

KEY = [Snapshot.lead_id, Snapshot.as_of]

def discover_event_types(
    con: duckdb.DuckDBPyConnection, before: pd.Timestamp, config: FeaturesConfig
) -> list[str]:
    """The event vocabulary seen before *before*: standard types present, then the CRM's own.

    A type outside the standard vocabulary needs ``min_event_type_count`` occurrences;
    at most ``max_event_types`` types are kept, most frequent first. Only events before
    *before* count, so the vocabulary itself is point-in-time.
    """
    ensure_indexed(con)
    rows = con.execute(
        f"SELECT CAST({Events.event_type} AS VARCHAR), count(*) AS n FROM {DUCKDB.events} "
        f"WHERE {Events.occurred_at} < ? GROUP BY {Events.event_type} ORDER BY n DESC, 1",
        [before.to_pydatetime(warn=False)],  # microseconds, as the column
    ).fetchall()
    return _choose_vocabulary(rows, config)


def _choose_vocabulary(counts: Sequence[tuple[str, int]], config: FeaturesConfig) -> list[str]:
    """:func:`discover_event_types`' rule applied to (type, count) rows, most frequent first."""
    kept = [
        t for t, n in counts if t in STANDARD_EVENT_TYPES or n >= config.min_event_type_count
    ][: config.max_event_types]
    order = {t: i for i, t in enumerate(STANDARD_EVENT_TYPES)}
    return sorted(kept, key=lambda t: (order.get(t, len(order)), t))


def event_type_enum(con: duckdb.DuckDBPyConnection, relation: str, types: Sequence[str] | None = None) -> str:
    """(Re)create the ``ENUM`` of event types that :func:`index_events`' copy stores, from the
    distinct event types of *relation* (a table or subquery with ``event_type``); its name.
    *types*: those types, known already (the loader's, from a Parquet file's dictionaries).

    The indexed copy, which depends on the type, is dropped first. The loader builds it from
    the typed events before the rows breaking a rule are removed: a type met only in those
    rows is then a member no indexed event holds, which changes no feature (a comparison with
    it is false, as with an absent type's NULL)."""
    E, enum = Events, DUCKDB.event_type_enum
    assert enum is not None  # DuckDB's dialect stores event types as an ENUM
    con.execute("DROP TABLE IF EXISTS _events_indexed")
    con.execute(f"DROP TYPE IF EXISTS {enum}")
    if types is None:
        types = [r[0] for r in con.execute(
            f"SELECT DISTINCT {E.event_type} FROM {relation} WHERE {E.event_type} IS NOT NULL ORDER BY 1"
        ).fetchall()]
    types = sorted(set(types), key=lambda t: t.encode())  # DuckDB's order of text: by bytes
    con.execute(f"CREATE TYPE {enum} AS ENUM ({', '.join(lit(t) for t in types) or lit('')})")
    return enum


def index_events(con: duckdb.DuckDBPyConnection, keyed: str | None = None) -> None:
    """Compact copies of ``leads`` and ``events`` that :func:`feature_sql` reads in DuckDB.

    Each lead gets a small integer key (in ``lead_id`` order, so sorting by key sorts by
    lead) and event types become an ``ENUM`` (:func:`event_type_enum`), so the one big
    aggregation over events groups and compares integers rather than text; each lead's
    seniority (read from its job title) is kept beside it. Built once per loaded export: the
    loader passes *keyed*, the table its validation pass wrote (every event's file row, first
    broken rule, lead key, event type as the ``ENUM`` and time; see
    :func:`convert.sources.validation.keyed_table`), whose kept rows become the copy without
    joining events with leads again; without it events are joined with the keyed leads here.
    The feature builders build it when it is missing or older than the tables. The per-day
    activity is built on first use (:func:`index_active_days`).
    """
    L, E = Leads, Events
    con.execute("DROP TABLE IF EXISTS _active_days")
    con.execute(
        "CREATE OR REPLACE TABLE _leads_indexed AS SELECT *, "
        f"CAST(row_number() OVER (ORDER BY {L.lead_id}) AS INTEGER) AS lead_key, "
        f"{seniority_sql(L.job_title, DUCKDB)} AS {DUCKDB.seniority} FROM leads"
    )
    if keyed:  # the validation pass's rows: drop those that broke a rule, and its own columns
        con.execute("DROP TABLE IF EXISTS _events_indexed")
        con.execute(f"DELETE FROM {keyed} WHERE __rule IS NOT NULL")
        for column in ("__row", "__rule"):
            con.execute(f"ALTER TABLE {keyed} DROP COLUMN {column}")
        con.execute(f"ALTER TABLE {keyed} RENAME TO _events_indexed")
    else:
        joined = (f"(SELECT l.lead_key, e.{E.event_type}, e.{E.occurred_at} FROM events e "
                  f"JOIN _leads_indexed l ON l.{L.lead_id} = e.{E.lead_id})")
        enum = event_type_enum(con, joined)
        con.execute(
            f"CREATE TABLE _events_indexed AS SELECT lead_key, CAST({E.event_type} AS {enum}) "
            f"AS {E.event_type}, {E.occurred_at} FROM {joined}"
        )
    con.execute(
        "CREATE OR REPLACE TABLE _indexed_counts AS SELECT (SELECT count(*) FROM leads) AS leads, "
        "(SELECT count(*) FROM events) AS events"
    )


def index_active_days(con: duckdb.DuckDBPyConnection) -> None:
    """The per-day activity of :func:`index_events`' copies, which only engagement features read.

    ``_active_days`` holds a row per (lead key, day with events) with the day's first and
    last event times, from which distinct active days over any window of a day or more are
    counted exactly without a DISTINCT aggregate over events; each lead's first event time
    is added to ``_leads_indexed``. Built by the first feature query of a loaded export, not
    by the load (a load that only validates, reports or exports never pays for it), and
    kept in the load's cache entry.
    """
    E = Events
    con.execute(
        f"CREATE OR REPLACE TABLE _active_days AS SELECT lead_key, min({E.occurred_at}) AS first_at, "
        f"max({E.occurred_at}) AS last_at FROM _events_indexed "
        f"GROUP BY lead_key, date_trunc('day', {E.occurred_at})"  # the day; cheaper than a DATE cast
    )
    con.execute(
        f"CREATE OR REPLACE TABLE _leads_indexed AS SELECT l.*, f.first_at AS {DUCKDB.first_event} "
        "FROM _leads_indexed l LEFT JOIN (SELECT lead_key, min(first_at) AS first_at FROM _active_days "
        "GROUP BY lead_key) f ON f.lead_key = l.lead_key"
    )


def ensure_indexed(con: duckdb.DuckDBPyConnection) -> None:
    """Build :func:`index_events`' tables unless they match the current ``leads`` and
    ``events``, and :func:`index_active_days`' unless they exist."""
    try:
        have = fetch_row(con, "SELECT leads, events FROM _indexed_counts")
        now = fetch_row(con, "SELECT (SELECT count(*) FROM leads), (SELECT count(*) FROM events)")
        if have != now:
            index_events(con)
    except duckdb.CatalogException:
        index_events(con)
    try:
        con.execute("SELECT lead_key FROM _active_days LIMIT 0")
    except duckdb.CatalogException:
        index_active_days(con)


# --- entry point ------------------------------------------------------------------------------


@dataclass(frozen=True)
class FeatureSet:
    """Features keyed by (lead_id, as_of), their catalog and the event vocabulary used."""

    frame: pd.DataFrame
    catalog: Catalog
    event_types: tuple[str, ...]

    @property
    def feature_names(self) -> list[str]:
        return self.catalog.names


def _register_population(con: duckdb.DuckDBPyConnection, population: pd.DataFrame) -> None:
    pop = population[KEY].copy()
    pop[Snapshot.as_of] = pd.to_datetime(pop[Snapshot.as_of]).astype("datetime64[us]")
    con.register("_population_frame", pop)
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _population AS SELECT CAST(lead_id AS VARCHAR) AS lead_id, "
            "CAST(as_of AS TIMESTAMP) AS as_of FROM _population_frame"
        )
    finally:
        con.unregister("_population_frame")


def materialize_features(
    con: duckdb.DuckDBPyConnection,
    config: FeaturesConfig,
    event_types: Sequence[str] | None = None,
    population: str = "_population",
    name: str = "_features",
) -> tuple[str, Catalog, tuple[str, ...]]:
    """Compute features for the rows of the *population* table into DuckDB table *name*.

    As-of times run in passes, each scanning the events once; a pass holds as many
    as-of times as ``event_rows_per_pass`` allows, so that memory stays bounded however
    many as-of times a training set has. The result stays
    in DuckDB (which spills to disk past its memory limit) so callers can stream it in
    batches with :func:`iter_feature_batches`.
    """
    catalog, types = _vocabulary(con, config, event_types, population)
    con.execute(f"DROP TABLE IF EXISTS {name}")
    for i, _ in enumerate(_pass_grids(con, config, population)):
        sql = feature_sql("_grid_population", "_grid", types, config)
        con.execute(f"CREATE OR REPLACE TEMP TABLE {name} AS {sql}" if i == 0 else f"INSERT INTO {name} {sql}")
    return name, catalog, types


def _vocabulary(
    con: duckdb.DuckDBPyConnection, config: FeaturesConfig, event_types: Sequence[str] | None, population: str
) -> tuple[Catalog, tuple[str, ...]]:
    """The catalog and event vocabulary for *population* (discovered when not given)."""
    ensure_indexed(con)
    _check_extra_attributes(con, config)
    if event_types is None:
        latest = fetch_row(con, f"SELECT max(as_of) FROM {population}")[0]
        event_types = discover_event_types(con, pd.Timestamp(latest) if latest else pd.Timestamp.max, config)
    return feature_catalog(event_types, config), tuple(event_types)


def _pass_grids(
    con: duckdb.DuckDBPyConnection, config: FeaturesConfig, population: str, latest_first: bool = False
) -> Iterator[int]:
    """Set up each pass's as-of times (``_grid``) and population (``_grid_population``) in turn.

    The pass's population carries each lead's key and ``row``, its position in the
    pass's result (ordered by as-of time, then lead; rows whose lead is unknown come last
    and find no features). Yields the pass's number once its tables are ready; they are
    dropped at the end. ``latest_first`` runs the passes from the latest as-of times back
    (each pass's rows stay in order).
    """
    times = [r[0] for r in con.execute(f"SELECT DISTINCT as_of FROM {population} ORDER BY 1").fetchall()]
    passes = _passes(con, times, config.event_rows_per_pass) or [[]]
    try:
        for i, batch in enumerate(passes[::-1] if latest_first else passes):
            con.execute("CREATE OR REPLACE TEMP TABLE _grid (as_of TIMESTAMP)")
            con.execute(
                "CREATE OR REPLACE TEMP TABLE _grid_population "
                "(lead_id VARCHAR, as_of TIMESTAMP, lead_key INTEGER, row BIGINT)"
            )
            if batch:
                con.executemany("INSERT INTO _grid VALUES (?)", [[t] for t in batch])
                con.execute(
                    f"INSERT INTO _grid_population SELECT p.lead_id, p.as_of, l.lead_key, "
                    f"row_number() OVER (ORDER BY p.as_of, l.lead_key) - 1 FROM {population} p "
                    f"LEFT JOIN {DUCKDB.leads} l ON l.{Leads.lead_id} = p.lead_id "
                    + ("SEMI JOIN _grid g ON g.as_of = p.as_of" if len(passes) > 1 else "")
                )
            yield i
    finally:
        for tmp in ("_grid", "_grid_population"):
            con.execute(f"DROP TABLE IF EXISTS {tmp}")


def _passes(con: duckdb.DuckDBPyConnection, times: list[Any], budget: int) -> list[list[Any]]:
    """Group sorted as-of times into passes of at most *budget* (event, as-of) rows each.

    Every as-of time joins the events before it, so a pass's work is the sum of those
    counts; a single as-of time above the budget still gets a pass of its own.
    """
    if len(times) < 2:
        return [times] if times else []
    per_day = con.execute(
        f"SELECT CAST({Events.occurred_at} AS DATE) AS day, count(*) FROM {DUCKDB.events} GROUP BY 1 ORDER BY 1"
    ).fetchall()
    days = pd.DatetimeIndex(pd.to_datetime([d for d, _ in per_day]))
    cumulative = [0]
    for _, n in per_day:
        cumulative.append(cumulative[-1] + int(n))
    passes: list[list[Any]] = [[]]
    load = 0
    for t in times:
        # events on days before t's date, plus t's own day (an upper bound)
        rows = cumulative[int(days.searchsorted(pd.Timestamp(t), side="right"))]
        if passes[-1] and load + rows > budget:
            passes.append([])
            load = 0
        passes[-1].append(t)
        load += rows
    return passes


def _check_extra_attributes(con: duckdb.DuckDBPyConnection, config: FeaturesConfig) -> None:
    """Refuse, naming the column, an export that lacks an extra attribute used as a feature."""
    for extra in config.extra_attributes:
        present = [r[0] for r in con.execute(f"DESCRIBE {extra.table}").fetchall()]
        if extra.column not in present:
            raise FeatureMismatchError(
                f"the data lacks column {extra.column!r} in {extra.table}, which feature "
                f"x_{slug(extra.column)} needs (features.extra_attributes). Add the column to the "
                "export, or train a model without it"
            )


def finish_frame(frame: pd.DataFrame, catalog: Catalog) -> pd.DataFrame:
    """Key columns and catalog features in order, numeric as float64, categoricals as text."""
    missing = [c for c in catalog.names if c not in frame.columns]
    if missing:  # a programming error: the catalog and the SQL must agree
        raise RuntimeError(f"feature SQL did not produce {missing}")
    frame = frame[KEY + catalog.names].copy(deep=False)
    for f in catalog:
        col = frame[f.name]
        if f.kind == "numeric":
            if col.dtype != "float64":
                frame[f.name] = col.astype("float64")
        else:
            frame[f.name] = col.astype("object").where(col.notna(), None)
    return frame


def iter_feature_batches(
    con: duckdb.DuckDBPyConnection, table: str, catalog: Catalog, batch_rows: int
) -> Iterator[pd.DataFrame]:
    """Stream a materialized feature table in batches of at most *batch_rows* rows."""
    reader = con.sql(f"SELECT * FROM {table} ORDER BY as_of, lead_id").to_arrow_reader(batch_rows)
    for batch in reader:
        yield finish_frame(batch.to_pandas(), catalog)


def build_features(
    con: duckdb.DuckDBPyConnection,
    population: pd.DataFrame,
    config: FeaturesConfig,
    event_types: Sequence[str] | None = None,
) -> FeatureSet:
    """Compute every feature for each (lead_id, as_of) row of *population*.

    Parameters
    ----------
    con:
        A connection holding the typed contract tables (``CRMData.con``).
    population:
        Rows to compute, with ``lead_id`` and ``as_of`` (a training set or a scoring
        population).
    config:
        Feature settings (windows, high-intent events, bands, extra attributes).
    event_types:
        The event vocabulary. ``None`` discovers it from events before the latest
        as-of time (training); scoring passes the model's stored vocabulary.
    """
    _register_population(con, population)
    types = None if event_types is None else tuple(event_types)
    frames = []
    try:
        ensure_indexed(con)
        _check_extra_attributes(con, config)
        leads = scan.read_leads(con)  # the same for every pass
        # latest as-of times first: the first pass's events then also give the vocabulary
        for _ in _pass_grids(con, config, "_population", latest_first=True):
            rows = scan.read_rows(con)
            with _small_pages():  # scan arrays: see _small_pages
                events = scan.read_events(con, rows.grid)
            if types is None:
                types = tuple(
                    _choose_vocabulary(events.type_counts(), config) if len(rows.grid)
                    else discover_event_types(con, pd.Timestamp.max, config)
                )
            frames.append(_build_pass(con, config, types, feature_catalog(types, config), rows, events, leads))
    finally:
        con.execute("DROP TABLE IF EXISTS _population")
    assert types is not None  # _pass_grids always runs a pass, if an empty one
    frame = frames[0] if len(frames) == 1 else pd.concat(frames[::-1], ignore_index=True)
    return FeatureSet(frame=frame, catalog=feature_catalog(types, config), event_types=types)


def _build_pass(
    con: duckdb.DuckDBPyConnection,
    config: FeaturesConfig,
    event_types: tuple[str, ...],
    catalog: Catalog,
    rows: scan.Rows,
    events: scan.EventArrays,
    leads: tuple[np.ndarray, np.ndarray],
) -> pd.DataFrame:
    """Features of the current pass (``_grid``, ``_grid_population``) as a frame.

    The families that read events are evaluated from one scan of them
    (:mod:`convert.features.scan`), run by numba while DuckDB runs the query of the other
    families (stages, firmographics, the lead's own attributes) in its own threads.
    """
    sql_families = [f for f in FAMILIES if not f.scanned]
    per_lead = feature_sql("_grid_population", "_grid", event_types, config, families=sql_families, row=True)
    # what the scan reads leaves DuckDB first: the connection runs one query at a time
    days = scan.read_days(con, rows.grid, max(config.windows_days))
    numeric = [f.name for f in catalog if f.kind == "numeric"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # this thread leaves the connection alone
        lead_rows = pool.submit(lambda: con.sql(f"{per_lead} ORDER BY row").to_arrow_table())
        with _small_pages():
            counted = scan.scan(events, days, leads, rows, event_types, config, tuple(rollup_windows(config)))
            block, filled = _scanned_block(counted, Query(event_types, config, DUCKDB, "_grid"), numeric)
        lead = lead_rows.result()
    unfilled = set(numeric) - filled - set(lead.column_names)
    if unfilled:  # a programming error: the families' evaluate and SQL must cover the catalog
        raise RuntimeError(f"no family computed {sorted(unfilled)}")
    with _small_pages():
        return _assemble(lead, block, numeric, catalog)


def _scanned_block(counted: scan.EventScan, q: Query, numeric: list[str]) -> tuple[np.ndarray, set[str]]:
    """The numeric features as one float64 block (a row per feature, a column per population
    row) with the scanned families' rows filled, and the names of those rows."""
    block = np.empty((len(numeric), len(counted.as_of)))
    column_of = {name: j for j, name in enumerate(numeric)}
    filled: set[str] = set()
    for family in FAMILIES:
        if family.scanned:
            for name, values in family.evaluate(counted, q).items():
                block[column_of[name]] = values
                filled.add(name)
    return block, filled


@contextmanager
def _small_pages() -> Iterator[None]:
    """Let numpy's large arrays take ordinary 4 KB pages, not transparent huge pages.

    numpy asks the kernel for 2 MB pages for arrays of 4 MB or more. Where guest memory
    is backed lazily (virtual machines such as Firecracker's, which CI and serverless
    platforms run on), each fresh huge page is slow to fault in, while 4 KB pages are
    recycled warm: measured on a 2-core machine like our CI's, assembling 150k x 135 features took
    0.29 s with huge pages and 0.15 s without. The arrays are written once and handed
    over, so huge pages buy little here. A no-op where numpy has no such switch.
    """
    multiarray = getattr(getattr(np, "_core", None), "multiarray", None)
    switch = getattr(multiarray, "_set_madvise_hugepage", None)
    if switch is None:
        yield
        return
    previous = switch(False)
    try:
        yield
    finally:
        switch(previous)


def _assemble(lead: pa.Table, block: np.ndarray, numeric: list[str], catalog: Catalog) -> pd.DataFrame:
    """The frame of :func:`finish_frame` from the per-lead rows (ordered by ``row``) and the
    scanned families' block (a row per numeric feature, a column per population row), which
    becomes the frame's numeric block without a copy."""
    rows = lead.column("row").to_numpy()
    if len(rows) != block.shape[1]:  # population rows without a lead: keep the others
        block = block[:, rows]
    column_of = {name: j for j, name in enumerate(numeric)}
    for name in lead.column_names:
        if name in column_of:
            block[column_of[name]] = lead.column(name).to_numpy()
    frame = pd.DataFrame(block.T, columns=numeric, copy=False)
    for position, name in enumerate(KEY + catalog.names):
        if name in column_of:
            continue
        if name in KEY:
            values = lead.select([name]).to_pandas()[name]
        else:  # categorical: text or None, kept as object (pandas would infer its string dtype)
            values = pd.Series(lead.column(name).to_numpy(zero_copy_only=False), dtype=object)
        frame.insert(position, name, values)
    return frame
