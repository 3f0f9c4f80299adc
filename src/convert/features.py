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

The catalog (:mod:`convert.catalog`) describes every column produced here; both are
built by the same functions so they cannot drift apart.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import duckdb
import pandas as pd
import pyarrow as pa

from convert.catalog import Catalog, Family, FeatureDef, event_words, window_phrase
from convert.config import STANDARD_EVENT_TYPES, FeaturesConfig
from convert.exceptions import FeatureMismatchError
from convert.io import fetch_row
from convert.schema import Accounts, Events, Leads, Snapshot, Stages
from convert.validation import quote

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

    def quote(self, name: str) -> str:
        """A column name as a quoted identifier."""
        return quote(name)

    def lit(self, value: str) -> str:
        """A string literal."""
        return _lit(value)

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
    rows = con.execute(
        f"SELECT {Events.event_type}, count(*) AS n FROM events WHERE {Events.occurred_at} < ? "
        "GROUP BY 1 ORDER BY n DESC, 1",
        [before.to_pydatetime()],
    ).fetchall()
    kept = [
        t for t, n in rows if t in STANDARD_EVENT_TYPES or n >= config.min_event_type_count
    ][: config.max_event_types]
    order = {t: i for i, t in enumerate(STANDARD_EVENT_TYPES)}
    return sorted(kept, key=lambda t: (order.get(t, len(order)), t))


def _type_slugs(event_types: Sequence[str]) -> dict[str, str]:
    out: dict[str, str] = {}
    used: set[str] = set()
    for t in event_types:
        s = slug(t)
        base, i = s, 2
        while s in used:
            s, i = f"{base}_{i}", i + 1
        used.add(s)
        out[t] = s
    return out


# --- catalog ----------------------------------------------------------------------------------


def feature_catalog(event_types: Sequence[str], config: FeaturesConfig) -> Catalog:
    """Describe every feature :func:`feature_sql` produces, in the same order."""
    cat = Catalog()
    windows = config.windows_days
    eng: Family = "engagement"
    for t, s in _type_slugs(event_types).items():
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
                f"Last '{t.replace('_', ' ')}' {{value}} days ago", None, never + " so far",
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
                       "Company size band {value}", None, "Company size unknown"))
    cat.add(FeatureDef("annual_revenue", fit, "firmographic", "numeric", "currency",
                       "Annual revenue of the lead's company", "Company revenue {value}", None,
                       "Company revenue unknown"))
    cat.add(FeatureDef("revenue_band", fit, "firmographic", "numeric", "band",
                       "Company revenue band (0: smallest)", "Company revenue band {value}", None,
                       "Company revenue unknown"))
    cat.add(FeatureDef("country", fit, "firmographic", "categorical", "category",
                       "Country of the lead (else of the company)", "Based in {value}", None,
                       "Country unknown"))
    # lead
    cat.add(FeatureDef("lead_source", fit, "lead", "categorical", "category",
                       "Channel that produced the lead", "Came from {value}", None, "Source unknown"))
    cat.add(FeatureDef("seniority", fit, "lead", "categorical", "category",
                       "Seniority read from the job title", "Seniority: {value}", None, "No job title"))
    for extra in config.extra_attributes:
        cat.add(FeatureDef(f"x_{slug(extra.column)}", fit, "extra", extra.kind,
                           "category" if extra.kind == "categorical" else "value",
                           extra.description or f"{extra.table}.{extra.column} from the CRM export",
                           f"{extra.column}: {{value}}", None, f"{extra.column} unknown"))
    return cat


# --- SQL --------------------------------------------------------------------------------------


def feature_sql(
    population: str,
    grid: str,
    event_types: Sequence[str],
    config: FeaturesConfig,
    dialect: Dialect = DUCKDB,
) -> str:
    """One query computing every feature for each (lead_id, as_of) in *population*.

    *population* is a table or subquery with ``lead_id`` and ``as_of``; *grid* holds
    its distinct ``as_of`` values. Tables ``leads``, ``accounts``, ``events`` and
    ``stages`` are the typed contract tables; the dialect names the events table the
    query reads (DuckDB reads :func:`index_events`' compact copy).

    The plan scans events once into one row per (lead, as-of time, event type) with
    every window count and first and last times; each family then works from that
    small table (the per-lead pivot, the account sums) or from the last days' events
    only (distinct active days). Nothing joins the population until the end.
    """
    d = dialect
    L, A, E, S = Leads, Accounts, Events, Stages
    key = d.lead_key
    windows = config.windows_days
    tw = config.trend_window_days
    needed = sorted(set(windows) | {30, 90, tw, 2 * tw})
    slugs = _type_slugs(event_types)
    high = ", ".join(d.lit(t) for t in config.high_intent_events)
    ts = "e." + E.occurred_at

    def in_window(w: int, at: str = ts) -> str:
        return f"{at} >= {d.minus_days('g.as_of', w)}"

    def when(cond: str, col: str) -> str:
        return f"CASE WHEN {cond} THEN {col} END"

    # one scan of events: a row per (lead, as-of time, type); CASE sums, not FILTER
    # (DuckDB runs CASE inside an aggregate about twice as fast)
    pe_cols = ["count(*) AS n_all"]
    pe_cols += [f"sum(CASE WHEN {in_window(w)} THEN 1 ELSE 0 END) AS n_w{w}" for w in needed]
    pe_cols += [f"max({ts}) AS last_at", f"min({ts}) AS first_at"]
    pe = (
        f"SELECT e.{key} AS lead_key, g.as_of, CAST(e.{E.event_type} AS {d.text_type}) AS event_type, "
        f"{', '.join(pe_cols)} "
        f"FROM {d.events} e JOIN {grid} g ON {ts} < g.as_of "
        f"GROUP BY e.{key}, g.as_of, e.{E.event_type}"
    )

    # the pivot to one row per lead: a filtered slice of pe per type, joined at the end
    # (cheaper in DuckDB than a hundred CASE aggregates over pe)
    per_type = {
        s: f"SELECT lead_key, as_of, {', '.join(f'n_w{w}' for w in windows)}, n_all, last_at "
        f"FROM pe WHERE event_type = {d.lit(t)}"
        for t, s in slugs.items()
    }
    eng_cols: list[str] = []
    is_high = f"event_type IN ({high})"
    eng_cols += [f"sum(n_w{w}) AS n_events_{w}d" for w in windows]
    eng_cols += [
        "sum(n_all) AS n_events_total",
        "min(first_at) AS first_touch",
        "max(last_at) AS last_touch",
        f"2 * sum(n_w{tw}) - sum(n_w{2 * tw}) AS trend",
        f"sum({when('event_type = ' + d.lit('email_click'), 'n_all')}) AS n_clicks",
        f"sum({when('event_type = ' + d.lit('email_open'), 'n_all')}) AS n_opens",
        f"max({when(is_high, 'last_at')}) AS last_high_intent",
        "sum(n_w30) AS own_30",
        "sum(n_w90) AS own_90",
    ]
    eng_cols += [f"sum({when(is_high, f'n_w{w}')}) AS high_{w}" for w in windows]
    eng = f"SELECT lead_key, as_of, {', '.join(eng_cols)} FROM pe GROUP BY lead_key, as_of"

    # distinct active days from the last days' events only, in a query of their own: a
    # DISTINCT aggregate beside many others sends DuckDB down a much slower path
    wa = max(windows)
    act = (
        f"SELECT e.{key} AS lead_key, g.as_of, count(DISTINCT {d.to_date(ts)}) AS active_days "
        f"FROM {d.events} e JOIN {grid} g ON {ts} < g.as_of AND {in_window(wa)} "
        f"GROUP BY e.{key}, g.as_of"
    )
    stg = (
        f"SELECT p.lead_id, p.as_of, {d.latest_by('s.' + S.stage, 's.' + S.entered_at)} AS stage, "
        f"max(s.{S.entered_at}) AS stage_at "
        f"FROM pop p JOIN stages s ON s.{S.lead_id} = p.lead_id AND s.{S.entered_at} < p.as_of "
        "GROUP BY p.lead_id, p.as_of"
    )
    # the account's leads known at the as-of time, and their engagement from eng
    acct_leads = (
        f"SELECT g.as_of, l.{L.account_id} AS account_id, count(*) AS n_leads "
        f"FROM {grid} g JOIN {d.leads} l ON l.{L.created_at} < g.as_of "
        f"WHERE l.{L.account_id} IS NOT NULL GROUP BY g.as_of, l.{L.account_id}"
    )
    acct_ev = (
        f"SELECT g.as_of, l.{L.account_id} AS account_id, sum(g.own_30) AS n30, "
        f"sum(g.own_90) AS n90, sum(CASE WHEN g.own_90 > 0 THEN 1 ELSE 0 END) AS active90 "
        f"FROM eng g JOIN {d.leads} l ON l.{key} = g.lead_key AND l.{L.created_at} < g.as_of "
        f"WHERE l.{L.account_id} IS NOT NULL GROUP BY g.as_of, l.{L.account_id}"
    )

    def days_since(col: str) -> str:
        return d.days_between("p.as_of", col)

    out: list[str] = ["p.lead_id", "p.as_of"]
    type_alias = {s: f"t{i}" for i, s in enumerate(per_type)}
    for s, ta in type_alias.items():
        out += [f"coalesce({ta}.n_w{w}, 0) AS n_{s}_{w}d" for w in windows]
        out.append(f"coalesce({ta}.n_all, 0) AS n_{s}_total")
        out.append(f"{days_since(ta + '.last_at')} AS days_since_{s}")
    out += [f"coalesce(g.n_events_{w}d, 0) AS n_events_{w}d" for w in windows]
    out += [
        "coalesce(g.n_events_total, 0) AS n_events_total",
        f"{days_since('g.first_touch')} AS days_since_first_touch",
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
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(ae.n30, 0) - coalesce(g.own_30, 0) END "
        "AS account_n_events_30d",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(ae.n90, 0) - coalesce(g.own_90, 0) END "
        "AS account_n_events_90d",
        "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(ae.active90, 0) "
        "- (CASE WHEN coalesce(g.own_90, 0) > 0 THEN 1 ELSE 0 END) END AS account_active_leads_90d",
        f"a.{A.industry} AS industry",
        f"CAST(a.{A.employees} AS DOUBLE) AS employees",
        f"{_band('a.' + A.employees, config.employee_bands)} AS employee_band",
        f"a.{A.annual_revenue} AS annual_revenue",
        f"{_band('a.' + A.annual_revenue, config.revenue_bands)} AS revenue_band",
        f"coalesce(l.{L.country}, a.{A.country}) AS country",
        f"l.{L.lead_source} AS lead_source",
        f"{_seniority('l.' + L.job_title, d)} AS seniority",
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
    return (
        f"WITH pop AS (SELECT lead_id, as_of FROM {population}), "
        f"pe AS ({pe}), "
        + "".join(f"{type_alias[s]} AS ({q}), " for s, q in per_type.items())
        + f"eng AS ({eng}), act AS ({act}), stg AS ({stg}), "
        f"acct_leads AS ({acct_leads}), acct_ev AS ({acct_ev}) "
        f"SELECT {', '.join(out)} FROM pop p "
        f"JOIN {d.leads} l ON l.{L.lead_id} = p.lead_id "
        f"LEFT JOIN accounts a ON a.{A.account_id} = l.{L.account_id} "
        f"LEFT JOIN eng g ON g.lead_key = l.{key} AND g.as_of = p.as_of "
        + "".join(
            f"LEFT JOIN {ta} {ta} ON {ta}.lead_key = l.{key} AND {ta}.as_of = p.as_of "
            for ta in type_alias.values()
        )
        + f"LEFT JOIN act ac ON ac.lead_key = l.{key} AND ac.as_of = p.as_of "
        "LEFT JOIN stg st ON st.lead_id = p.lead_id AND st.as_of = p.as_of "
        f"LEFT JOIN acct_leads al ON al.account_id = l.{L.account_id} AND al.as_of = p.as_of "
        f"LEFT JOIN acct_ev ae ON ae.account_id = l.{L.account_id} AND ae.as_of = p.as_of "
    )


def index_events(con: duckdb.DuckDBPyConnection) -> None:
    """Compact copies of ``leads`` and ``events`` that :func:`feature_sql` reads in DuckDB.

    Each lead gets a small integer key and event types become an ``ENUM``, so the one
    big aggregation over events groups on integers rather than text (about twice as
    fast). Built once per loaded export; :func:`materialize_features` builds it when
    it is missing or older than the tables.
    """
    L, E = Leads, Events
    con.execute("DROP TABLE IF EXISTS _events_indexed")
    con.execute("DROP TYPE IF EXISTS _event_type")
    types = [r[0] for r in con.execute(
        f"SELECT DISTINCT {E.event_type} FROM events WHERE {E.event_type} IS NOT NULL ORDER BY 1"
    ).fetchall()]
    con.execute(f"CREATE TYPE _event_type AS ENUM ({', '.join(_lit(t) for t in types) or _lit('')})")
    con.execute(
        "CREATE OR REPLACE TABLE _leads_indexed AS SELECT *, "
        "CAST(row_number() OVER () AS INTEGER) AS lead_key FROM leads"
    )
    con.execute(
        f"CREATE TABLE _events_indexed AS SELECT l.lead_key, CAST(e.{E.event_type} AS _event_type) "
        f"AS {E.event_type}, e.{E.occurred_at} FROM events e JOIN _leads_indexed l "
        f"ON l.{L.lead_id} = e.{E.lead_id}"
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
    for i, sql in enumerate(_pass_queries(con, config, types, population)):
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


def _pass_queries(
    con: duckdb.DuckDBPyConnection, config: FeaturesConfig, event_types: Sequence[str], population: str
) -> Iterator[str]:
    """Set up each pass's as-of times and population, and yield its feature query to run."""
    times = [r[0] for r in con.execute(f"SELECT DISTINCT as_of FROM {population} ORDER BY 1").fetchall()]
    try:
        for batch in _passes(con, times, config.event_rows_per_pass) or [[]]:
            con.execute("CREATE OR REPLACE TEMP TABLE _grid (as_of TIMESTAMP)")
            con.execute("CREATE OR REPLACE TEMP TABLE _grid_population (lead_id VARCHAR, as_of TIMESTAMP)")
            if batch:
                con.executemany("INSERT INTO _grid VALUES (?)", [[t] for t in batch])
                con.execute(
                    f"INSERT INTO _grid_population SELECT p.lead_id, p.as_of FROM {population} p "
                    "SEMI JOIN _grid g ON g.as_of = p.as_of"
                )
            yield feature_sql("_grid_population", "_grid", event_types, config)
    finally:
        for tmp in ("_grid", "_grid_population"):
            con.execute(f"DROP TABLE IF EXISTS {tmp}")


def _passes(con: duckdb.DuckDBPyConnection, times: list[Any], budget: int) -> list[list[Any]]:
    """Group sorted as-of times into passes of at most *budget* (event, as-of) rows each.

    Every as-of time joins the events before it, so a pass's work is the sum of those
    counts; a single as-of time above the budget still gets a pass of its own.
    """
    if not times:
        return []
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
    try:
        catalog, types = _vocabulary(con, config, event_types, "_population")
        tables = [
            con.sql(f"{sql} ORDER BY as_of, lead_id").to_arrow_table()
            for sql in _pass_queries(con, config, types, "_population")
        ]
    finally:
        con.execute("DROP TABLE IF EXISTS _population")
    frame = finish_frame(pa.concat_tables(tables).to_pandas(), catalog)
    return FeatureSet(frame=frame, catalog=catalog, event_types=types)
