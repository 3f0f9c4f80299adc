"""The one feature query, assembled from the registered families, for either engine.

:func:`rollup_sql` is the single scan of events every engagement feature comes from;
:func:`feature_sql` wraps it with the common table expressions, joins and columns of
each family of :data:`convert.features.families.FAMILIES`, in order. The DuckDB engine
(:mod:`convert.features.engine`) and the Spark engine (:mod:`convert.features.spark`)
both run this query, each with its :class:`~convert.features.dialect.Dialect`.
"""

from __future__ import annotations

from collections.abc import Sequence

from convert.config import FeaturesConfig
from convert.features.dialect import DUCKDB, Dialect, window_starts
from convert.features.families import FAMILIES, FeatureFamily, Query, feature_catalog
from convert.schema import Accounts, Events, Leads


def rollup_windows(config: FeaturesConfig) -> list[int]:
    """Window lengths the rollup counts: the feature windows, 30 and 90 days (account
    engagement) and both halves of the trend."""
    tw = config.trend_window_days
    return sorted(set(config.windows_days) | {30, 90, tw, 2 * tw})


def rollup_sql(grid: str, config: FeaturesConfig, dialect: Dialect = DUCKDB) -> str:
    """Events before each as-of time in *grid*, one row per (lead key, as-of time, event type).

    The one scan of events every engagement feature comes from: counts in all and over
    each window of :func:`rollup_windows` (``n_all``, ``n_w<days>``), the last event time
    and, where the dialect keeps no first event per lead, the first. ``event_type`` keeps
    the events' type: compare it with :meth:`Dialect.event_type` literals. Counts are
    32-bit (a lead has fewer than two billion events of a type).
    """
    d, E = dialect, Events
    ts = "e." + E.occurred_at
    windows = rollup_windows(config)
    cols = ["CAST(count(*) AS INTEGER) AS n_all"]  # 32 bits: cheaper to sum and move
    cols += [f"CAST(count_if({ts} >= g.from_{w}) AS INTEGER) AS n_w{w}" for w in windows]
    cols.append(f"max({ts}) AS last_at")
    if not d.first_event:
        cols.append(f"min({ts}) AS first_at")
    return (
        f"SELECT e.{d.lead_key} AS lead_key, g.as_of, "
        f"e.{E.event_type}, {', '.join(cols)} "
        f"FROM {d.events} e JOIN {window_starts(grid, windows, d)} g ON {ts} < g.as_of "
        f"GROUP BY e.{d.lead_key}, g.as_of, e.{E.event_type}"
    )


def feature_sql(
    population: str,
    grid: str,
    event_types: Sequence[str],
    config: FeaturesConfig,
    dialect: Dialect = DUCKDB,
    *,
    families: Sequence[FeatureFamily] = FAMILIES,
    row: bool = False,
) -> str:
    """One query computing every feature for each (lead_id, as_of) in *population*.

    *population* is a table or subquery with ``lead_id``, ``as_of`` and the dialect's
    lead key (DuckDB: ``lead_key``, see :func:`convert.features.engine.materialize_features`);
    *grid* holds its distinct ``as_of`` values. Tables ``leads``, ``accounts``, ``events``
    and ``stages`` are the typed contract tables; the dialect names the events table the
    query reads (DuckDB reads :func:`~convert.features.engine.index_events`' compact copy).

    The plan scans events once (:func:`rollup_sql`); each family then works from that
    small table (the per-lead totals, the per-type pivot, the account sums) or from the
    last days' activity only (distinct active days). Nothing joins the population until
    the end. *families* (all by default) chooses the families whose columns the query
    computes (the DuckDB engine computes those that read events from a scan,
    :mod:`convert.features.scan`); without one that reads the rollup, events are not
    read. ``row=True`` also returns *population*'s ``row`` column.
    """
    d = dialect
    L, A = Leads, Accounts
    key = d.lead_key
    q = Query(tuple(event_types), config, d, grid)
    ctes: list[tuple[str, str]] = []
    joins: list[str] = []
    out: list[str] = ["p.lead_id", "p.as_of"] + (["p.row"] if row else [])
    for family in families:
        ctes += family.ctes(q)
        joins += family.joins(q)
        out += family.columns(q)

    # numeric features leave as DOUBLE: sums of integers are HUGEINT in DuckDB, which
    # reach pandas as Python decimals (slow, and not the float64 models take)
    numeric = {f.name for f in feature_catalog(event_types, config) if f.kind == "numeric"}
    out = [_as_double(column, numeric) for column in out]
    pop = ", ".join(dict.fromkeys(["lead_id", "as_of", key] + (["row"] if row else [])))
    reads_events = any(f.scanned for f in families)  # the families reading the rollup
    ctes = [("pop", f"SELECT {pop} FROM {population}"),
            *([("pe", rollup_sql(grid, config, d))] if reads_events else []), *ctes]
    return (
        "WITH " + ", ".join(f"{name} AS ({sql})" for name, sql in ctes)
        + f" SELECT {', '.join(out)} FROM pop p "
        f"JOIN {d.leads} l ON l.{key} = p.{key} "
        f"LEFT JOIN accounts a ON a.{A.account_id} = l.{L.account_id} "
        + "".join(joins)
    )


def _as_double(column: str, numeric: set[str]) -> str:
    """``expr AS name`` cast to DOUBLE when *name* is a numeric feature."""
    expr, _, name = column.rpartition(" AS ")
    return f"CAST({expr} AS DOUBLE) AS {name}" if name in numeric else column
