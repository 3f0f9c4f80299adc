"""Point-in-time features for many as-of times in one pass, in SQL.

The point-in-time rule, stated once and obeyed by every family below: for a row
(``lead_id``, ``as_of``) a feature sees only rows whose own time is strictly before
``as_of`` (events by ``occurred_at``, stages by ``entered_at``, leads by
``created_at``); a lead's ``converted_at`` and ``disqualified_at`` are never features.
Every join to a timed table in this module carries that inequality.

Families (each a CTE of one query, see :func:`feature_sql`):

- ``engagement``: per event type counts over the configured windows and in all,
  recency, touches, active days, trend, email click-through, high-intent events;
- ``lifecycle``: stage at the as-of time, days in it, lead age;
- ``account``: engagement of the account's other leads;
- ``firmographic``: industry, size and revenue with bands, country;
- ``lead``: source, seniority normalised from the free-text job title;
- ``extra``: extra attributes the configuration names.

The catalog (:mod:`convert.features.catalog`) describes every column produced here; both are
built by the same functions so they cannot drift apart.
"""

from __future__ import annotations

import re
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
from convert.features.catalog import (
    Catalog,
    Family,
    FeatureDef,
    band_labels,
    escape,
    event_words,
    window_phrase,
)
from convert.schema import Accounts, Events, Leads, Snapshot, Stages
from convert.sources.readers import fetch_row
from convert.sources.validation import quote

KEY = [Snapshot.lead_id, Snapshot.as_of]

#: Seniority from a free-text job title: first matching pattern wins (vp before c_level,
#: so that "Vice President" is not read as "President").
SENIORITY_PATTERNS: tuple[tuple[str, str], ...] = (
    ("vp", r"\b(vp|svp|evp|vice president|head of)\b"),
    ("c_level", r"\b(ceo|cfo|cto|coo|cmo|cio|ciso|cro|chief|founder|co-founder|owner|president|partner)\b"),
    ("director", r"\b(director)\b"),
    ("manager", r"\b(manager|lead|supervisor|principal)\b"),
    ("student", r"\b(student|intern|trainee)\b"),
    (
        "individual",
        r"\b(engineer|analyst|specialist|developer|consultant|associate|coordinator|"
        r"representative|designer|scientist|administrator|accountant|assistant|officer)\b",
    ),
)

#: How a reason says each seniority level. ``other`` (a title no pattern matches) is said as
#: the fact it is and kept as a reason: its points are real (the model learned how leads
#: with such titles convert), and hiding them would leave fit points and score movements
#: that no sentence accounts for.
SENIORITY_WORDS: dict[str, str] = {
    "vp": "VP-level job title",
    "c_level": "C-level job title",
    "director": "Director-level job title",
    "manager": "Manager-level job title",
    "student": "Student or intern",
    "individual": "Individual-contributor job title",
    "other": "Job title not matched to a seniority level",
}


@dataclass(frozen=True)
class Dialect:
    """The few SQL spellings that differ between engines (DuckDB here; Spark SQL at scale).

    Everything else :func:`feature_sql` writes is common to DuckDB and Spark SQL
    (``count(*) FILTER (WHERE ...)``, ``INTERVAL 'n' DAY``, ``TRY_CAST``, ``NULLIF``).
    """

    name: str = "duckdb"
    #: The type name of text in ``CAST(x AS ...)``.
    text_type: str = "VARCHAR"
    #: The tables the query reads leads and events from, and the column keying a lead in
    #: both: DuckDB reads :func:`index_events`' copies keyed by a small integer.
    leads: str = "_leads_indexed"
    events: str = "_events_indexed"
    lead_key: str = "lead_key"
    #: A table with one row per (lead key, day with events) and the day's first and last
    #: event times (:func:`index_events`), or ``None`` to count distinct days from events.
    active_days: str | None = "_active_days"
    #: The column of ``leads`` holding each lead's seniority, read once from the job title
    #: (:func:`index_events`), or ``None`` to read it from the title in every query.
    seniority: str | None = "_seniority"
    #: The column of ``leads`` holding each lead's first event time (:func:`index_events`),
    #: or ``None`` to take the earliest event before each as-of time. The first touch
    #: before an as-of time is the first event ever when that is earlier, else none.
    first_event: str | None = "_first_event_at"
    #: The ENUM type the events table stores event types as (:func:`index_events`), or
    #: ``None`` for text. Comparisons with an ENUM are integer comparisons.
    event_type_enum: str | None = "_event_type"

    def quote(self, name: str) -> str:
        """A column name as a quoted identifier."""
        return quote(name)

    def lit(self, value: str) -> str:
        """A string literal."""
        return _lit(value)

    def event_type(self, value: str) -> str:
        """An event type literal to compare with the events' (or the rollup's) ``event_type``;
        with an ENUM, a type absent from the data becomes NULL, which matches nothing."""
        if self.event_type_enum:
            return f"TRY_CAST({self.lit(value)} AS {self.event_type_enum})"
        return self.lit(value)

    def minus_days(self, ts: str, days: int) -> str:
        return f"({ts} - INTERVAL '{int(days)}' DAY)"

    def days_between(self, later: str, earlier: str) -> str:
        return f"((epoch({later}) - epoch({earlier})) / 86400.0)"

    def matches(self, text: str, pattern: str) -> str:
        return f"regexp_matches({text}, '{pattern}')"

    def latest_by(self, value: str, order: str) -> str:
        """The value of the row with the greatest *order* (ties: the greatest value)."""
        return f"max(struct_pack(o := {order}, v := {value})).v"

    def to_date(self, ts: str) -> str:
        return f"CAST({ts} AS DATE)"


@dataclass(frozen=True)
class SparkDialect(Dialect):
    """Spark SQL (3.4+; tested with 4.0) with the session time zone set to UTC.

    Backslashes in Spark string literals are escapes (the default
    ``spark.sql.parser.escapedStringLiterals=false``), so literals escape ``\\`` and
    ``'`` with a backslash; identifiers are quoted with backticks.
    """

    name: str = "spark"
    text_type: str = "STRING"
    leads: str = "leads"
    events: str = "events"
    lead_key: str = Leads.lead_id
    active_days: str | None = None
    seniority: str | None = None
    first_event: str | None = None
    event_type_enum: str | None = None

    def quote(self, name: str) -> str:
        return "`" + name.replace("`", "``") + "`"

    def lit(self, value: str) -> str:
        return "'" + value.replace("\\", "\\\\").replace("'", "\\'") + "'"

    def days_between(self, later: str, earlier: str) -> str:
        # exact microseconds (timestamp or timestamp_ntz), then days as a double
        return f"(CAST(timestampdiff(MICROSECOND, {earlier}, {later}) AS DOUBLE) / 8.64E10)"

    def matches(self, text: str, pattern: str) -> str:
        return f"({text} RLIKE {self.lit(pattern)})"

    def latest_by(self, value: str, order: str) -> str:
        return f"max(named_struct('o', {order}, 'v', {value})).v"


DUCKDB = Dialect()
SPARK = SparkDialect()


def slug(name: str) -> str:
    """An event type as a safe feature-name fragment: ``Chat Started!`` -> ``chat_started``."""
    s = re.sub(r"[^a-z0-9]+", "_", name.strip().lower()).strip("_")
    if not s:
        s = "type"
    if s[0].isdigit():
        s = "t_" + s
    return s


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def discover_event_types(
    con: duckdb.DuckDBPyConnection, before: pd.Timestamp, config: FeaturesConfig
) -> list[str]:
    """The event vocabulary seen before *before*: standard types present, then the CRM's own.

    A type outside the standard vocabulary needs ``min_event_type_count`` occurrences;
    at most ``max_event_types`` types are kept, most frequent first. Only events before
    *before* count, so the vocabulary itself is point-in-time.
    """
    _ensure_indexed(con)
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


def unique_slugs(names: Sequence[str], taken: Sequence[str] = ()) -> dict[str, str]:
    """:func:`slug` of each name, made unique with ``_2``, ``_3``... and kept clear of *taken*."""
    out: dict[str, str] = {}
    used = {str(t) for t in taken}
    for name in names:
        base = slug(name)
        s, i = base, 2
        while s in used:
            s, i = f"{base}_{i}", i + 1
        used.add(s)
        out[name] = s
    return out


# --- catalog ----------------------------------------------------------------------------------


def feature_catalog(event_types: Sequence[str], config: FeaturesConfig) -> Catalog:
    """Describe every feature :func:`feature_sql` produces, in the same order."""
    cat = Catalog()
    windows = config.windows_days
    eng: Family = "engagement"
    for t, s in unique_slugs(event_types).items():
        did, never = event_words(t)
        for w in windows:
            cat.add(
                FeatureDef(
                    f"n_{s}_{w}d", eng, "engagement", "numeric", "count",
                    f"Number of '{t}' events in the {w} days before the as-of time",
                    did + window_phrase(w), never + window_phrase(w),
                )
            )
        cat.add(
            FeatureDef(
                f"n_{s}_total", eng, "engagement", "numeric", "count",
                f"Number of '{t}' events before the as-of time",
                did + " in all", never + " so far",
            )
        )
        cat.add(
            FeatureDef(
                f"days_since_{s}", eng, "engagement", "numeric", "days",
                f"Days since the latest '{t}' event (missing: never)",
                f"Last '{escape(t.replace('_', ' '))}' {{value}} days ago", None, never + " so far",
            )
        )
    for w in windows:
        cat.add(
            FeatureDef(
                f"n_events_{w}d", eng, "engagement", "numeric", "count",
                f"Number of interactions of any type in the last {w} days",
                f"Had {{value}} interactions{window_phrase(w)}", f"No interactions{window_phrase(w)}",
            )
        )
    cat.add(FeatureDef("n_events_total", eng, "engagement", "numeric", "count",
                       "Number of interactions of any type before the as-of time",
                       "Had {value} interactions in all", "No interactions so far"))
    cat.add(FeatureDef("days_since_first_touch", eng, "engagement", "numeric", "days",
                       "Days since the lead's first interaction (missing: none yet)",
                       "First interaction {value} days ago", None, "No interactions so far"))
    cat.add(FeatureDef("days_since_last_touch", eng, "engagement", "numeric", "days",
                       "Days since the lead's latest interaction (missing: none yet)",
                       "Last interaction {value} days ago", "Interacted today", "No interactions so far"))
    cat.add(FeatureDef(f"active_days_{max(windows)}d", eng, "engagement", "numeric", "count",
                       f"Distinct days with at least one interaction in the last {max(windows)} days",
                       f"Active on {{value}} days{window_phrase(max(windows))}",
                       f"Not active{window_phrase(max(windows))}"))
    tw = config.trend_window_days
    cat.add(FeatureDef(f"trend_{tw}d", eng, "engagement", "numeric", "count",
                       f"Interactions in the last {tw} days minus the {tw} days before",
                       f"Activity changed by {{value}} interactions vs the previous {tw} days",
                       f"Activity level unchanged vs the previous {tw} days"))
    cat.add(FeatureDef("email_ctr", eng, "engagement", "numeric", "ratio",
                       "Email clicks divided by email opens (missing: no opens)",
                       "Clicked {value} of opened emails", "Opened emails but clicked none",
                       "Never opened an email"))
    for w in windows:
        cat.add(FeatureDef(f"n_high_intent_{w}d", eng, "engagement", "numeric", "count",
                           f"High-intent events ({', '.join(config.high_intent_events)}) in the last {w} days",
                           f"Showed buying intent {{value}} times{window_phrase(w)}",
                           f"No buying-intent signals{window_phrase(w)}"))
    cat.add(FeatureDef("days_since_high_intent", eng, "engagement", "numeric", "days",
                       "Days since the latest high-intent event (missing: never)",
                       "Last buying-intent signal {value} days ago", None, "Never showed buying intent"))
    # lifecycle
    cat.add(FeatureDef("stage", eng, "lifecycle", "categorical", "category",
                       "Lifecycle stage at the as-of time", "Is at stage {value}", None, "No recorded stage"))
    cat.add(FeatureDef("days_in_stage", eng, "lifecycle", "numeric", "days",
                       "Days since the lead entered its current stage",
                       "In the current stage for {value} days", "Entered the current stage today",
                       "No recorded stage"))
    cat.add(FeatureDef("lead_age_days", eng, "lifecycle", "numeric", "days",
                       "Days since the lead was created", "Lead for {value} days", "Became a lead today"))
    # account engagement
    cat.add(FeatureDef("account_other_leads", eng, "account", "numeric", "count",
                       "Other leads from the same company (missing: no company)",
                       "{value} colleagues are also leads", "No colleagues are leads yet", "No company on record"))
    for w in (30, 90):
        cat.add(FeatureDef(f"account_n_events_{w}d", eng, "account", "numeric", "count",
                           f"Interactions of the company's other leads in the last {w} days",
                           f"Colleagues interacted {{value}} times{window_phrase(w)}",
                           f"Colleagues did not interact{window_phrase(w)}", "No company on record"))
    cat.add(FeatureDef("account_active_leads_90d", eng, "account", "numeric", "count",
                       "Other leads of the same company active in the last 90 days",
                       "{value} colleagues were active in the last 90 days",
                       "No colleagues active in the last 90 days", "No company on record"))
    # firmographic
    fit: Family = "fit"
    cat.add(FeatureDef("industry", fit, "firmographic", "categorical", "category",
                       "Industry of the lead's company", "Works in {value}", None, "Industry unknown"))
    cat.add(FeatureDef("employees", fit, "firmographic", "numeric", "employees",
                       "Employees of the lead's company", "Company has {value} employees", None,
                       "Company size unknown"))
    cat.add(FeatureDef("employee_band", fit, "firmographic", "numeric", "band",
                       f"Company size band (0: under {config.employee_bands[0]} employees, "
                       f"{len(config.employee_bands)}: {config.employee_bands[-1]} or more)",
                       "Company has {value} employees", None, "Company size unknown",
                       labels=band_labels(config.employee_bands)))
    cat.add(FeatureDef("annual_revenue", fit, "firmographic", "numeric", "currency",
                       "Annual revenue of the lead's company", "Company revenue {value}", None,
                       "Company revenue unknown"))
    cat.add(FeatureDef("revenue_band", fit, "firmographic", "numeric", "band",
                       "Company revenue band (0: smallest)", "Company revenue {value}", None,
                       "Company revenue unknown", labels=band_labels(config.revenue_bands, money=True)))
    cat.add(FeatureDef("country", fit, "firmographic", "categorical", "category",
                       "Country of the lead (else of the company)", "Based in {value}", None,
                       "Country unknown"))
    # lead
    cat.add(FeatureDef("lead_source", fit, "lead", "categorical", "category",
                       "Channel that produced the lead", "Came from {value}", None, "Source unknown"))
    cat.add(FeatureDef("seniority", fit, "lead", "categorical", "category",
                       "Seniority read from the job title", "{value}", None, "No job title",
                       labels=tuple((level, SENIORITY_WORDS.get(level, f"Seniority: {level}"))
                                    for level in (*(lv for lv, _ in SENIORITY_PATTERNS), "other"))))
    for extra in config.extra_attributes:
        cat.add(FeatureDef(f"x_{slug(extra.column)}", fit, "extra", extra.kind,
                           "category" if extra.kind == "categorical" else "value",
                           extra.description or f"{extra.table}.{extra.column} from the CRM export",
                           f"{escape(extra.column)}: {{value}}", None, f"{extra.column} unknown"))
    return cat


# --- SQL --------------------------------------------------------------------------------------


def _rollup_windows(config: FeaturesConfig) -> list[int]:
    """Window lengths the rollup counts: the feature windows, 30 and 90 days (account
    engagement) and both halves of the trend."""
    tw = config.trend_window_days
    return sorted(set(config.windows_days) | {30, 90, tw, 2 * tw})


def rollup_sql(grid: str, config: FeaturesConfig, dialect: Dialect = DUCKDB) -> str:
    """Events before each as-of time in *grid*, one row per (lead key, as-of time, event type).

    The one scan of events every engagement feature comes from: counts in all and over
    each window of :func:`_rollup_windows` (``n_all``, ``n_w<days>``), the last event time
    and, where the dialect keeps no first event per lead, the first. ``event_type`` keeps
    the events' type: compare it with :meth:`Dialect.event_type` literals. Counts are
    32-bit (a lead has fewer than two billion events of a type).
    """
    d, E = dialect, Events
    ts = "e." + E.occurred_at
    windows = _rollup_windows(config)
    cols = ["CAST(count(*) AS INTEGER) AS n_all"]  # 32 bits: cheaper to sum and move
    cols += [f"CAST(count_if({ts} >= g.from_{w}) AS INTEGER) AS n_w{w}" for w in windows]
    cols.append(f"max({ts}) AS last_at")
    if not d.first_event:
        cols.append(f"min({ts}) AS first_at")
    return (
        f"SELECT e.{d.lead_key} AS lead_key, g.as_of, "
        f"e.{E.event_type}, {', '.join(cols)} "
        f"FROM {d.events} e JOIN {_window_starts(grid, windows, d)} g ON {ts} < g.as_of "
        f"GROUP BY e.{d.lead_key}, g.as_of, e.{E.event_type}"
    )


def _window_starts(grid: str, windows: Sequence[int], dialect: Dialect) -> str:
    """*grid* with each window's first instant as ``from_<days>``, computed once per as-of
    time rather than once per event (date arithmetic is dearer than a comparison)."""
    starts = ", ".join(f"{dialect.minus_days('as_of', w)} AS from_{w}" for w in windows)
    return f"(SELECT as_of, {starts} FROM {grid})"


def _per_type_metrics(config: FeaturesConfig) -> list[tuple[str, str]]:
    """(feature name pattern, rollup expression) of each per-type feature, in catalog order."""
    return [(f"n_{{}}_{w}d", f"n_w{w}") for w in config.windows_days] + [
        ("n_{}_total", "n_all"),
        ("days_since_{}", "last_at"),
    ]


def by_type_sql(
    rollup: str, population: str, event_types: Sequence[str], config: FeaturesConfig, dialect: Dialect = DUCKDB
) -> str:
    """The per-type features in long form: a row per (population row, type of the vocabulary).

    *population* holds ``lead_key``, ``as_of`` and ``row`` (the row's position in the
    result); ``slot`` is the type's position in *event_types*, and the metric columns
    follow :func:`_per_type_metrics`. Types outside the vocabulary and leads outside the
    population are left out. Pivoting these rows into columns (:func:`build_features`
    does it in numpy, :func:`feature_sql` in SQL) gives every per-type feature.
    """
    d = dialect
    if not event_types:
        raise ValueError("by_type_sql needs at least one event type")
    vocab = ", ".join(f"({d.event_type(t)}, {i})" for i, t in enumerate(event_types))
    cols = [  # counts stay 32-bit: half the bytes to move
        f"{d.days_between('r.as_of', 'r.' + col)} AS {col}" if col == "last_at" else f"r.{col}"
        for _, col in _per_type_metrics(config)
    ]
    return (
        f"SELECT p.row, v.slot, {', '.join(cols)} FROM {rollup} r "
        f"JOIN {population} p ON p.lead_key = r.lead_key AND p.as_of = r.as_of "
        f"JOIN (VALUES {vocab}) AS v(event_type, slot) ON v.event_type = r.event_type"
    )


def feature_sql(
    population: str,
    grid: str,
    event_types: Sequence[str],
    config: FeaturesConfig,
    dialect: Dialect = DUCKDB,
    *,
    rollup: str | None = None,
    by_type: bool = True,
) -> str:
    """One query computing every feature for each (lead_id, as_of) in *population*.

    *population* is a table or subquery with ``lead_id``, ``as_of`` and the dialect's
    lead key (DuckDB: ``lead_key``, see :func:`_pass_grids`); *grid* holds its distinct
    ``as_of`` values. Tables ``leads``, ``accounts``, ``events`` and
    ``stages`` are the typed contract tables; the dialect names the events table the
    query reads (DuckDB reads :func:`index_events`' compact copy).

    The plan scans events once (:func:`rollup_sql`; *rollup* names a table already
    holding it, else it is a CTE); each family then works from that small table (the
    per-lead totals, the per-type pivot, the account sums) or from the last days'
    activity only (distinct active days). Nothing joins the population until the end.
    With ``by_type=False`` the per-type features are left out and *population*'s
    ``row`` column is returned as ``row``, for a caller that pivots :func:`by_type_sql`.
    """
    d = dialect
    L, A, S = Leads, Accounts, Stages
    key = d.lead_key
    windows = config.windows_days
    tw = config.trend_window_days
    slugs = unique_slugs(event_types) if by_type else {}
    high = ", ".join(d.event_type(t) for t in config.high_intent_events)

    def where(aggregate: str, cond: str) -> str:  # FILTER: a fifth cheaper than CASE here
        return f"{aggregate} FILTER (WHERE {cond})"

    # the pivot to one row per lead: each type's rows of the rollup, joined at the end
    # (cheaper in DuckDB than a hundred CASE aggregates over the rollup)
    per_type = {
        s: f"SELECT lead_key, as_of, {', '.join(f'n_w{w}' for w in windows)}, n_all, last_at "
        f"FROM pe WHERE event_type = {d.event_type(t)}"
        for t, s in slugs.items()
    }
    eng_cols: list[str] = []
    is_high = f"event_type IN ({high})"
    eng_cols += [f"sum(n_w{w}) AS n_events_{w}d" for w in windows]
    eng_cols += [
        "sum(n_all) AS n_events_total",
        *([] if d.first_event else ["min(first_at) AS first_touch"]),
        "max(last_at) AS last_touch",
        f"2 * sum(n_w{tw}) - sum(n_w{2 * tw}) AS trend",
        f"{where('sum(n_all)', 'event_type = ' + d.event_type('email_click'))} AS n_clicks",
        f"{where('sum(n_all)', 'event_type = ' + d.event_type('email_open'))} AS n_opens",
        f"{where('max(last_at)', is_high)} AS last_high_intent",
        "sum(n_w30) AS own_30",
        "sum(n_w90) AS own_90",
    ]
    eng_cols += [f"{where(f'sum(n_w{w})', is_high)} AS high_{w}" for w in windows]
    eng = f"SELECT lead_key, as_of, {', '.join(eng_cols)} FROM pe GROUP BY lead_key, as_of"

    # distinct active days over the longest window: from the per-day table where there is
    # one (a day counts when its first event is before the as-of time and its last within
    # the window: exact for windows of a day or more), else from the window's events in a
    # query of their own (a DISTINCT aggregate beside many others is much slower)
    wa = max(windows)
    if d.active_days:
        act = (
            f"SELECT a.lead_key, g.as_of, count(*) AS active_days FROM {d.active_days} a "
            f"JOIN {_window_starts(grid, [wa], d)} g ON a.first_at < g.as_of AND a.last_at >= g.from_{wa} "
            "GROUP BY a.lead_key, g.as_of"
        )
    else:
        ts = "e." + Events.occurred_at
        act = (
            f"SELECT e.{key} AS lead_key, g.as_of, count(DISTINCT {d.to_date(ts)}) AS active_days "
            f"FROM {d.events} e JOIN {_window_starts(grid, [wa], d)} g ON {ts} < g.as_of AND {ts} >= g.from_{wa} "
            f"GROUP BY e.{key}, g.as_of"
        )
    stg = (
        f"SELECT p.lead_id, p.as_of, {d.latest_by('s.' + S.stage, 's.' + S.entered_at)} AS stage, "
        f"max(s.{S.entered_at}) AS stage_at "
        f"FROM pop p JOIN stages s ON s.{S.lead_id} = p.lead_id AND s.{S.entered_at} < p.as_of "
        "GROUP BY p.lead_id, p.as_of"
    )
    # the account's leads known at the as-of time and their engagement (from eng)
    acct = (
        f"SELECT g.as_of, l.{L.account_id} AS account_id, count(*) AS n_leads, sum(e.own_30) AS n30, "
        f"sum(e.own_90) AS n90, count_if(e.own_90 > 0) AS active90 "
        f"FROM {grid} g JOIN {d.leads} l ON l.{L.created_at} < g.as_of "
        f"LEFT JOIN eng e ON e.lead_key = l.{key} AND e.as_of = g.as_of "
        f"WHERE l.{L.account_id} IS NOT NULL GROUP BY g.as_of, l.{L.account_id}"
    )

    def days_since(col: str) -> str:
        return d.days_between("p.as_of", col)

    out: list[str] = ["p.lead_id", "p.as_of"] + ([] if by_type else ["p.row"])
    type_alias = {s: f"t{i}" for i, s in enumerate(per_type)}
    for s, ta in type_alias.items():
        out += [f"coalesce({ta}.n_w{w}, 0) AS n_{s}_{w}d" for w in windows]
        out.append(f"coalesce({ta}.n_all, 0) AS n_{s}_total")
        out.append(f"{days_since(ta + '.last_at')} AS days_since_{s}")
    out += [f"coalesce(g.n_events_{w}d, 0) AS n_events_{w}d" for w in windows]
    out += [
        "coalesce(g.n_events_total, 0) AS n_events_total",
        (
            f"CASE WHEN l.{d.first_event} < p.as_of THEN {days_since('l.' + d.first_event)} END"
            if d.first_event
            else days_since("g.first_touch")
        )
        + " AS days_since_first_touch",
        f"{days_since('g.last_touch')} AS days_since_last_touch",
        f"coalesce(ac.active_days, 0) AS active_days_{wa}d",
        f"coalesce(g.trend, 0) AS trend_{tw}d",
        "CAST(g.n_clicks AS DOUBLE) / NULLIF(g.n_opens, 0) AS email_ctr",
    ]
    out += [f"coalesce(g.high_{w}, 0) AS n_high_intent_{w}d" for w in windows]
    out += [
        f"{days_since('g.last_high_intent')} AS days_since_high_intent",
        "st.stage AS stage",
        f"{days_since('st.stage_at')} AS days_in_stage",
        f"{days_since('l.' + L.created_at)} AS lead_age_days",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE al.n_leads - 1 END AS account_other_leads",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.n30, 0) - coalesce(g.own_30, 0) END "
        "AS account_n_events_30d",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.n90, 0) - coalesce(g.own_90, 0) END "
        "AS account_n_events_90d",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.active90, 0) "
        "- (CASE WHEN coalesce(g.own_90, 0) > 0 THEN 1 ELSE 0 END) END AS account_active_leads_90d",
        f"a.{A.industry} AS industry",
        f"CAST(a.{A.employees} AS DOUBLE) AS employees",
        f"{_band('a.' + A.employees, config.employee_bands)} AS employee_band",
        f"a.{A.annual_revenue} AS annual_revenue",
        f"{_band('a.' + A.annual_revenue, config.revenue_bands)} AS revenue_band",
        f"coalesce(l.{L.country}, a.{A.country}) AS country",
        f"l.{L.lead_source} AS lead_source",
        f"{'l.' + d.seniority if d.seniority else _seniority('l.' + L.job_title, d)} AS seniority",
    ]
    for extra in config.extra_attributes:
        src = "l" if extra.table == "leads" else "a"
        col = f"{src}.{d.quote(extra.column)}"
        expr = (
            f"TRY_CAST({col} AS DOUBLE)" if extra.kind == "numeric" else f"CAST({col} AS {d.text_type})"
        )
        out.append(f"{expr} AS x_{slug(extra.column)}")

    # numeric features leave as DOUBLE: sums of integers are HUGEINT in DuckDB, which
    # reach pandas as Python decimals (slow, and not the float64 models take)
    numeric = {f.name for f in feature_catalog(event_types, config) if f.kind == "numeric"}
    out = [_as_double(column, numeric) for column in out]
    pe = f"SELECT * FROM {rollup}" if rollup else rollup_sql(grid, config, d)
    return (
        f"WITH pop AS (SELECT {', '.join(dict.fromkeys(['lead_id', 'as_of', key] + ([] if by_type else ['row'])))} "
        f"FROM {population}), "
        f"pe AS ({pe}), "
        + "".join(f"{type_alias[s]} AS ({q}), " for s, q in per_type.items())
        + f"eng AS ({eng}), act AS ({act}), stg AS ({stg}), "
        f"acct AS ({acct}) "
        f"SELECT {', '.join(out)} FROM pop p "
        f"JOIN {d.leads} l ON l.{key} = p.{key} "
        f"LEFT JOIN accounts a ON a.{A.account_id} = l.{L.account_id} "
        f"LEFT JOIN eng g ON g.lead_key = l.{key} AND g.as_of = p.as_of "
        + "".join(
            f"LEFT JOIN {ta} {ta} ON {ta}.lead_key = l.{key} AND {ta}.as_of = p.as_of "
            for ta in type_alias.values()
        )
        + f"LEFT JOIN act ac ON ac.lead_key = l.{key} AND ac.as_of = p.as_of "
        "LEFT JOIN stg st ON st.lead_id = p.lead_id AND st.as_of = p.as_of "
        f"LEFT JOIN acct al ON al.account_id = l.{L.account_id} AND al.as_of = p.as_of "
    )


def index_events(con: duckdb.DuckDBPyConnection) -> None:
    """Compact copies of ``leads`` and ``events`` that :func:`feature_sql` reads in DuckDB.

    Each lead gets a small integer key (in ``lead_id`` order, so sorting by key sorts by
    lead) and event types become an ``ENUM``, so the one big aggregation over events
    groups and compares integers rather than text; each lead's seniority (read from its
    job title) and first event time are kept beside it. ``_active_days`` holds a row per
    (lead key, day with events) with the day's first and last event times, from which
    distinct active days over any window of a day or more are counted exactly without a
    DISTINCT aggregate over events. Built once per loaded export; the feature builders
    build it when it is missing or older than the tables.
    """
    L, E = Leads, Events
    con.execute("DROP TABLE IF EXISTS _events_indexed")
    con.execute(f"DROP TYPE IF EXISTS {DUCKDB.event_type_enum}")
    types = [r[0] for r in con.execute(
        f"SELECT DISTINCT {E.event_type} FROM events WHERE {E.event_type} IS NOT NULL ORDER BY 1"
    ).fetchall()]
    con.execute(f"CREATE TYPE {DUCKDB.event_type_enum} AS ENUM ({', '.join(_lit(t) for t in types) or _lit('')})")
    con.execute(
        "CREATE OR REPLACE TABLE _leads_indexed AS SELECT *, "
        f"CAST(row_number() OVER (ORDER BY {L.lead_id}) AS INTEGER) AS lead_key, "
        f"{_seniority(L.job_title, DUCKDB)} AS {DUCKDB.seniority} FROM leads"
    )
    con.execute(
        f"CREATE TABLE _events_indexed AS SELECT l.lead_key, CAST(e.{E.event_type} AS {DUCKDB.event_type_enum}) "
        f"AS {E.event_type}, e.{E.occurred_at} FROM events e JOIN _leads_indexed l "
        f"ON l.{L.lead_id} = e.{E.lead_id}"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE _active_days AS SELECT lead_key, min({E.occurred_at}) AS first_at, "
        f"max({E.occurred_at}) AS last_at FROM _events_indexed "
        f"GROUP BY lead_key, CAST({E.occurred_at} AS DATE)"
    )
    con.execute(
        f"CREATE OR REPLACE TABLE _leads_indexed AS SELECT l.*, f.first_at AS {DUCKDB.first_event} "
        "FROM _leads_indexed l LEFT JOIN (SELECT lead_key, min(first_at) AS first_at FROM _active_days "
        "GROUP BY lead_key) f ON f.lead_key = l.lead_key"
    )
    con.execute(
        "CREATE OR REPLACE TABLE _indexed_counts AS SELECT (SELECT count(*) FROM leads) AS leads, "
        "(SELECT count(*) FROM events) AS events"
    )


def _ensure_indexed(con: duckdb.DuckDBPyConnection) -> None:
    """Build :func:`index_events`' tables unless they match the current ``leads`` and ``events``."""
    try:
        have = fetch_row(con, "SELECT leads, events FROM _indexed_counts")
        now = fetch_row(con, "SELECT (SELECT count(*) FROM leads), (SELECT count(*) FROM events)")
        if have == now:
            return
    except duckdb.CatalogException:
        pass
    index_events(con)


def _as_double(column: str, numeric: set[str]) -> str:
    """``expr AS name`` cast to DOUBLE when *name* is a numeric feature."""
    expr, _, name = column.rpartition(" AS ")
    return f"CAST({expr} AS DOUBLE) AS {name}" if name in numeric else column


def _band(expr: str, cuts: Sequence[float]) -> str:
    arms = " ".join(f"WHEN {expr} < {float(c)!r} THEN {i}" for i, c in enumerate(cuts))
    return f"CASE WHEN {expr} IS NULL THEN NULL {arms} ELSE {len(cuts)} END"


def _seniority(expr: str, d: Dialect) -> str:
    text = f"lower({expr})"
    arms = " ".join(f"WHEN {d.matches(text, p)} THEN {d.lit(level)}" for level, p in SENIORITY_PATTERNS)
    return f"CASE WHEN {expr} IS NULL THEN NULL {arms} ELSE 'other' END"


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
    _ensure_indexed(con)
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
        _ensure_indexed(con)
        _check_extra_attributes(con, config)
        # latest as-of times first: the first pass's rollup then also gives the vocabulary
        for _ in _pass_grids(con, config, "_population", latest_first=True):
            con.execute(f"CREATE OR REPLACE TEMP TABLE _rollup AS {rollup_sql('_grid', config)}")
            try:
                if types is None:
                    types = tuple(_rollup_vocabulary(con, config))
                frames.append(_build_pass(con, config, types, feature_catalog(types, config)))
            finally:
                con.execute("DROP TABLE IF EXISTS _rollup")
    finally:
        con.execute("DROP TABLE IF EXISTS _population")
    assert types is not None  # _pass_grids always runs a pass, if an empty one
    frame = frames[0] if len(frames) == 1 else pd.concat(frames[::-1], ignore_index=True)
    return FeatureSet(frame=frame, catalog=feature_catalog(types, config), event_types=types)


def _rollup_vocabulary(con: duckdb.DuckDBPyConnection, config: FeaturesConfig) -> list[str]:
    """:func:`discover_event_types` before the latest as-of time of ``_grid``, read from ``_rollup``
    (which counts every lead's events before each as-of time) instead of from events.
    Without an as-of time, the vocabulary of every event, as :func:`materialize_features`."""
    if fetch_row(con, "SELECT max(as_of) FROM _grid")[0] is None:
        return discover_event_types(con, pd.Timestamp.max, config)
    rows = con.execute(
        "SELECT CAST(event_type AS VARCHAR), CAST(sum(n_all) AS BIGINT) AS n FROM _rollup "
        "WHERE as_of = (SELECT max(as_of) FROM _grid) GROUP BY event_type ORDER BY n DESC, 1"
    ).fetchall()
    return _choose_vocabulary(rows, config)


def _build_pass(
    con: duckdb.DuckDBPyConnection, config: FeaturesConfig, event_types: Sequence[str], catalog: Catalog
) -> pd.DataFrame:
    """Features of the current pass (``_grid``, ``_grid_population``, ``_rollup``) as a frame.

    The rollup is read twice: by :func:`by_type_sql`, whose long rows are scattered into
    the per-type columns in numpy (a reshape that costs DuckDB a join per event type),
    and by the per-lead query (every other feature), which runs in DuckDB's threads
    meanwhile.
    """
    per_lead = feature_sql("_grid_population", "_grid", event_types, config, rollup="_rollup", by_type=False)
    n_rows = int(fetch_row(con, "SELECT count(*) FROM _grid_population")[0])
    long = (
        con.sql(by_type_sql("_rollup", "_grid_population", event_types, config)).to_arrow_table()
        if event_types
        else None
    )
    numeric = [f.name for f in catalog if f.kind == "numeric"]
    with ThreadPoolExecutor(max_workers=1) as pool:  # this thread leaves the connection alone
        lead_rows = pool.submit(lambda: con.sql(f"{per_lead} ORDER BY row").to_arrow_table())
        with _small_pages():
            block = _by_type_block(long, n_rows, numeric, event_types, config)
        lead = lead_rows.result()
    with _small_pages():
        return _assemble(lead, block, numeric, catalog)


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


def _by_type_block(
    long: pa.Table | None, n_rows: int, numeric: list[str], event_types: Sequence[str], config: FeaturesConfig
) -> np.ndarray:
    """The numeric features as one float64 block (a row per feature, a column per population
    row), the per-type features filled from :func:`by_type_sql`'s long rows.

    Per-type counts start at 0 and recencies as missing; each long row is written to its
    population row's column and its type's feature rows.
    """
    column_of = {name: j for j, name in enumerate(numeric)}
    metrics = _per_type_metrics(config)
    slots = np.array(
        [[column_of[pattern.format(s)] for pattern, _ in metrics] for s in unique_slugs(event_types).values()],
        dtype=np.int64,
    ).reshape(len(event_types), len(metrics))
    block = np.zeros((len(numeric), n_rows))  # zeroed lazily by the kernel: counts start at 0
    block[slots[:, -1]] = np.nan
    if long is not None and long.num_rows:
        row = long.column("row").to_numpy()
        slot = long.column("slot").to_numpy()
        flat = slots[:, 0][slot] * n_rows + row  # where each row's first metric goes
        offsets = (slots - slots[:, :1]) * n_rows  # the other metrics' rows, relative to it
        consecutive = bool((offsets == offsets[0]).all())  # true of the catalog's order
        for m, (_, col) in enumerate(metrics):
            where = flat + int(offsets[0, m]) if consecutive else slots[:, m][slot] * n_rows + row
            np.put(block, where, long.column(col).to_numpy())
    return block


def _assemble(lead: pa.Table, block: np.ndarray, numeric: list[str], catalog: Catalog) -> pd.DataFrame:
    """The frame of :func:`finish_frame` from the per-lead rows (ordered by ``row``) and
    :func:`_by_type_block`'s block, which becomes the frame's numeric block without a copy."""
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
