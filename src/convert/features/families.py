"""Every feature family, its SQL and its catalog entries, registered in one list.

The point-in-time rule, stated once and obeyed by every family below: for a row
(``lead_id``, ``as_of``) a feature sees only rows whose own time is strictly before
``as_of`` (events by ``occurred_at``, stages by ``entered_at``, leads by
``created_at``); a lead's ``converted_at`` and ``disqualified_at`` are never features.
Every join to a timed table in this module carries that inequality.

A family is one small object (:class:`FeatureFamily`) that describes its features for
the catalog and writes their SQL: common table expressions, joins and output columns of
the one query :func:`convert.features.query.feature_sql` assembles. Both engines (DuckDB,
:mod:`convert.features.engine`; Spark, :mod:`convert.features.spark`) and the catalog
iterate :data:`FAMILIES`, so a new family is one new entry here, and the catalog and the
SQL are written side by side so they cannot drift apart. The families that read events
also say how their features follow from an event scan (:meth:`FeatureFamily.evaluate`,
over :class:`convert.features.scan.EventScan`), which the DuckDB engine's
``build_features`` uses in place of their SQL; the SQL stays the reference, which
``materialize_features`` and Spark run and the parity tests compare with. The families,
in catalog order:

- ``engagement`` per event type (:class:`EngagementByType`): counts over the configured
  windows and in all, recency;
- ``engagement`` overall (:class:`Engagement`): counts, touches, active days, trend,
  email click-through, high-intent events;
- ``lifecycle``: stage at the as-of time, days in it, lead age;
- ``account``: engagement of the account's other leads;
- ``firmographic``: industry, size and revenue with bands, country;
- ``lead``: source, seniority normalised from the free-text job title;
- ``extra``: extra attributes the configuration names.

What every family's SQL may use: ``pop p`` (the population: ``lead_id``, ``as_of`` and
the lead key), ``pe`` (the rollup of events before each as-of time,
:func:`convert.features.query.rollup_sql`), ``l`` (the lead, joined on its key) and
``a`` (its account), and the common table expressions of the families before it.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from convert.config import FeaturesConfig
from convert.features.catalog import (
    Catalog,
    Family,
    FeatureDef,
    band_labels,
    escape,
    event_words,
    window_phrase,
)
from convert.features.dialect import (
    SENIORITY_PATTERNS,
    SENIORITY_WORDS,
    Dialect,
    band_sql,
    seniority_sql,
    slug,
    unique_slugs,
    window_starts,
)
from convert.schema import Accounts, Events, Leads, Stages

if TYPE_CHECKING:  # the scan's numba kernels are the DuckDB engine's, not the SQL's
    from convert.features.scan import EventScan


@dataclass(frozen=True)
class Query:
    """What a family's SQL is written for: the vocabulary, the settings and the engine."""

    event_types: tuple[str, ...]
    config: FeaturesConfig
    dialect: Dialect
    #: The table of the population's distinct as-of times.
    grid: str

    @property
    def slugs(self) -> dict[str, str]:
        """Each event type's feature-name fragment."""
        return unique_slugs(self.event_types)

    def days_since(self, column: str) -> str:
        """Days from *column* to the row's as-of time."""
        return self.dialect.days_between("p.as_of", column)


class FeatureFamily:
    """One family of features: its catalog entries and its part of the feature query.

    Subclasses override :meth:`catalog` and :meth:`columns` (one ``expr AS name`` per
    catalog entry, in the same order) and, when they need tables of their own,
    :meth:`ctes` and :meth:`joins`.
    """

    #: The catalog's ``group`` of the family's features.
    name: str = ""

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        """The family's features, in the order of :meth:`columns`."""
        raise NotImplementedError

    def ctes(self, q: Query) -> list[tuple[str, str]]:
        """``(name, SELECT ...)`` of each common table expression the family reads."""
        return []

    def joins(self, q: Query) -> list[str]:
        """``LEFT JOIN ...`` clauses attaching the family's tables to the population row."""
        return []

    def columns(self, q: Query) -> list[str]:
        """``expr AS feature`` of each feature, in catalog order."""
        raise NotImplementedError

    #: Whether :meth:`evaluate` computes the family from an event scan (the DuckDB
    #: engine's ``build_features`` then leaves it out of the query).
    scanned: bool = False

    def evaluate(self, scan: EventScan, q: Query) -> dict[str, np.ndarray]:
        """The family's numeric features from *scan*, by name (float64, NaN for missing):
        the same values as its SQL, which stays the reference."""
        raise NotImplementedError(f"the {self.name} family is computed in SQL only")


class EngagementByType(FeatureFamily):
    """Per event type of the vocabulary: counts over each window and in all, recency."""

    name = "engagement"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        eng: Family = "engagement"
        for t, s in unique_slugs(event_types).items():
            did, never = event_words(t)
            for w in config.windows_days:
                yield FeatureDef(
                    f"n_{s}_{w}d", eng, "engagement", "numeric", "count",
                    f"Number of '{t}' events in the {w} days before the as-of time",
                    did + window_phrase(w), never + window_phrase(w),
                )
            yield FeatureDef(
                f"n_{s}_total", eng, "engagement", "numeric", "count",
                f"Number of '{t}' events before the as-of time",
                did + " in all", never + " so far",
            )
            yield FeatureDef(
                f"days_since_{s}", eng, "engagement", "numeric", "days",
                f"Days since the latest '{t}' event (missing: never)",
                f"Last '{escape(t.replace('_', ' '))}' {{value}} days ago", None, never + " so far",
            )

    @staticmethod
    def _aliases(q: Query) -> dict[str, str]:
        return {s: f"t{i}" for i, s in enumerate(q.slugs.values())}

    def ctes(self, q: Query) -> list[tuple[str, str]]:
        # the pivot to one row per lead: each type's rows of the rollup, joined at the end
        # (cheaper in DuckDB than a hundred CASE aggregates over the rollup)
        windows = q.config.windows_days
        alias = self._aliases(q)
        return [
            (
                alias[s],
                f"SELECT lead_key, as_of, {', '.join(f'n_w{w}' for w in windows)}, n_all, last_at "
                f"FROM pe WHERE event_type = {q.dialect.event_type(t)}",
            )
            for t, s in q.slugs.items()
        ]

    def joins(self, q: Query) -> list[str]:
        key = q.dialect.lead_key
        return [
            f"LEFT JOIN {ta} {ta} ON {ta}.lead_key = l.{key} AND {ta}.as_of = p.as_of "
            for ta in self._aliases(q).values()
        ]

    def columns(self, q: Query) -> list[str]:
        out: list[str] = []
        for s, ta in self._aliases(q).items():
            out += [f"coalesce({ta}.n_w{w}, 0) AS n_{s}_{w}d" for w in q.config.windows_days]
            out.append(f"coalesce({ta}.n_all, 0) AS n_{s}_total")
            out.append(f"{q.days_since(ta + '.last_at')} AS days_since_{s}")
        return out

    scanned = True

    def evaluate(self, scan: EventScan, q: Query) -> dict[str, np.ndarray]:
        out: dict[str, np.ndarray] = {}
        for i, s in enumerate(q.slugs.values()):
            for w in q.config.windows_days:
                out[f"n_{s}_{w}d"] = scan.count(w, slot=i)
            out[f"n_{s}_total"] = scan.count(slot=i)
            out[f"days_since_{s}"] = scan.days_since(slot=i)
        return out


class Engagement(FeatureFamily):
    """Engagement over all event types: counts, touches, active days, trend, click-through,
    high intent. Its ``eng`` table (a row per lead and as-of time) also carries the lead's
    own 30- and 90-day counts, which :class:`Account` subtracts from its account's."""

    name = "engagement"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        eng: Family = "engagement"
        windows = config.windows_days
        for w in windows:
            yield FeatureDef(
                f"n_events_{w}d", eng, "engagement", "numeric", "count",
                f"Number of interactions of any type in the last {w} days",
                f"Had {{value}} interactions{window_phrase(w)}", f"No interactions{window_phrase(w)}",
            )
        yield FeatureDef("n_events_total", eng, "engagement", "numeric", "count",
                         "Number of interactions of any type before the as-of time",
                         "Had {value} interactions in all", "No interactions so far")
        yield FeatureDef("days_since_first_touch", eng, "engagement", "numeric", "days",
                         "Days since the lead's first interaction (missing: none yet)",
                         "First interaction {value} days ago", None, "No interactions so far")
        yield FeatureDef("days_since_last_touch", eng, "engagement", "numeric", "days",
                         "Days since the lead's latest interaction (missing: none yet)",
                         "Last interaction {value} days ago", "Interacted today", "No interactions so far")
        yield FeatureDef(f"active_days_{max(windows)}d", eng, "engagement", "numeric", "count",
                         f"Distinct days with at least one interaction in the last {max(windows)} days",
                         f"Active on {{value}} days{window_phrase(max(windows))}",
                         f"Not active{window_phrase(max(windows))}")
        tw = config.trend_window_days
        yield FeatureDef(f"trend_{tw}d", eng, "engagement", "numeric", "count",
                         f"Interactions in the last {tw} days minus the {tw} days before",
                         f"Activity changed by {{value}} interactions vs the previous {tw} days",
                         f"Activity level unchanged vs the previous {tw} days")
        yield FeatureDef("email_ctr", eng, "engagement", "numeric", "ratio",
                         "Email clicks divided by email opens (missing: no opens)",
                         "Clicked {value} of opened emails", "Opened emails but clicked none",
                         "Never opened an email")
        for w in windows:
            yield FeatureDef(f"n_high_intent_{w}d", eng, "engagement", "numeric", "count",
                             f"High-intent events ({', '.join(config.high_intent_events)}) in the last {w} days",
                             f"Showed buying intent {{value}} times{window_phrase(w)}",
                             f"No buying-intent signals{window_phrase(w)}")
        yield FeatureDef("days_since_high_intent", eng, "engagement", "numeric", "days",
                         "Days since the latest high-intent event (missing: never)",
                         "Last buying-intent signal {value} days ago", None, "Never showed buying intent")

    def ctes(self, q: Query) -> list[tuple[str, str]]:
        d, config = q.dialect, q.config
        windows = config.windows_days
        tw = config.trend_window_days
        high = ", ".join(d.event_type(t) for t in config.high_intent_events)

        def where(aggregate: str, cond: str) -> str:  # FILTER: a fifth cheaper than CASE here
            return f"{aggregate} FILTER (WHERE {cond})"

        is_high = f"event_type IN ({high})"
        cols = [f"sum(n_w{w}) AS n_events_{w}d" for w in windows]
        cols += [
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
        cols += [f"{where(f'sum(n_w{w})', is_high)} AS high_{w}" for w in windows]
        eng = f"SELECT lead_key, as_of, {', '.join(cols)} FROM pe GROUP BY lead_key, as_of"

        # distinct active days over the longest window: from the per-day table where there is
        # one (a day counts when its first event is before the as-of time and its last within
        # the window: exact for windows of a day or more), else from the window's events in a
        # query of their own (a DISTINCT aggregate beside many others is much slower)
        wa = max(windows)
        if d.active_days:
            act = (
                f"SELECT a.lead_key, g.as_of, count(*) AS active_days FROM {d.active_days} a "
                f"JOIN {window_starts(q.grid, [wa], d)} g ON a.first_at < g.as_of AND a.last_at >= g.from_{wa} "
                "GROUP BY a.lead_key, g.as_of"
            )
        else:
            key = d.lead_key
            ts = "e." + Events.occurred_at
            act = (
                f"SELECT e.{key} AS lead_key, g.as_of, count(DISTINCT {d.to_date(ts)}) AS active_days "
                f"FROM {d.events} e JOIN {window_starts(q.grid, [wa], d)} g ON {ts} < g.as_of AND {ts} >= g.from_{wa} "
                f"GROUP BY e.{key}, g.as_of"
            )
        return [("eng", eng), ("act", act)]

    def joins(self, q: Query) -> list[str]:
        key = q.dialect.lead_key
        return [
            f"LEFT JOIN eng g ON g.lead_key = l.{key} AND g.as_of = p.as_of ",
            f"LEFT JOIN act ac ON ac.lead_key = l.{key} AND ac.as_of = p.as_of ",
        ]

    def columns(self, q: Query) -> list[str]:
        d, windows = q.dialect, q.config.windows_days
        out = [f"coalesce(g.n_events_{w}d, 0) AS n_events_{w}d" for w in windows]
        out += [
            "coalesce(g.n_events_total, 0) AS n_events_total",
            (
                f"CASE WHEN l.{d.first_event} < p.as_of THEN {q.days_since('l.' + d.first_event)} END"
                if d.first_event
                else q.days_since("g.first_touch")
            )
            + " AS days_since_first_touch",
            f"{q.days_since('g.last_touch')} AS days_since_last_touch",
            f"coalesce(ac.active_days, 0) AS active_days_{max(windows)}d",
            f"coalesce(g.trend, 0) AS trend_{q.config.trend_window_days}d",
            # no click among the opens is a rate of 0 (the sum of no click rows is NULL)
            "CAST(coalesce(g.n_clicks, 0) AS DOUBLE) / NULLIF(g.n_opens, 0) AS email_ctr",
        ]
        out += [f"coalesce(g.high_{w}, 0) AS n_high_intent_{w}d" for w in windows]
        out.append(f"{q.days_since('g.last_high_intent')} AS days_since_high_intent")
        return out

    scanned = True

    def evaluate(self, scan: EventScan, q: Query) -> dict[str, np.ndarray]:
        windows, tw = q.config.windows_days, q.config.trend_window_days
        out = {f"n_events_{w}d": scan.count(w) for w in windows}
        opens = scan.opens()
        with np.errstate(invalid="ignore", divide="ignore"):
            ctr = np.where(opens > 0, scan.clicks() / opens, np.nan)
        out.update({
            "n_events_total": scan.count(),
            "days_since_first_touch": scan.days_since("first"),
            "days_since_last_touch": scan.days_since("latest"),
            f"active_days_{max(windows)}d": scan.active.astype(np.float64),
            f"trend_{tw}d": 2 * scan.count(tw) - scan.count(2 * tw),
            "email_ctr": ctr,
        })
        out.update({f"n_high_intent_{w}d": scan.count(w, high=True) for w in windows})
        out["days_since_high_intent"] = scan.days_since("high")
        return out


class Lifecycle(FeatureFamily):
    """Where the lead stands: its stage at the as-of time, days in it, its age."""

    name = "lifecycle"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        eng: Family = "engagement"
        yield FeatureDef("stage", eng, "lifecycle", "categorical", "category",
                         "Lifecycle stage at the as-of time", "Is at stage {value}", None, "No recorded stage")
        yield FeatureDef("days_in_stage", eng, "lifecycle", "numeric", "days",
                         "Days since the lead entered its current stage",
                         "In the current stage for {value} days", "Entered the current stage today",
                         "No recorded stage")
        yield FeatureDef("lead_age_days", eng, "lifecycle", "numeric", "days",
                         "Days since the lead was created", "Lead for {value} days", "Became a lead today")

    def ctes(self, q: Query) -> list[tuple[str, str]]:
        S = Stages
        stg = (
            f"SELECT p.lead_id, p.as_of, {q.dialect.latest_by('s.' + S.stage, 's.' + S.entered_at)} AS stage, "
            f"max(s.{S.entered_at}) AS stage_at "
            f"FROM pop p JOIN stages s ON s.{S.lead_id} = p.lead_id AND s.{S.entered_at} < p.as_of "
            "GROUP BY p.lead_id, p.as_of"
        )
        return [("stg", stg)]

    def joins(self, q: Query) -> list[str]:
        return ["LEFT JOIN stg st ON st.lead_id = p.lead_id AND st.as_of = p.as_of "]

    def columns(self, q: Query) -> list[str]:
        return [
            "st.stage AS stage",
            f"{q.days_since('st.stage_at')} AS days_in_stage",
            f"{q.days_since('l.' + Leads.created_at)} AS lead_age_days",
        ]


class Account(FeatureFamily):
    """Engagement of the other leads of the lead's company known at the as-of time (the
    account's sums from :class:`Engagement`'s ``eng`` minus the lead's own)."""

    name = "account"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        eng: Family = "engagement"
        yield FeatureDef("account_other_leads", eng, "account", "numeric", "count",
                         "Other leads from the same company (missing: no company)",
                         "{value} colleagues are also leads", "No colleagues are leads yet", "No company on record")
        for w in (30, 90):
            yield FeatureDef(f"account_n_events_{w}d", eng, "account", "numeric", "count",
                             f"Interactions of the company's other leads in the last {w} days",
                             f"Colleagues interacted {{value}} times{window_phrase(w)}",
                             f"Colleagues did not interact{window_phrase(w)}", "No company on record")
        yield FeatureDef("account_active_leads_90d", eng, "account", "numeric", "count",
                         "Other leads of the same company active in the last 90 days",
                         "{value} colleagues were active in the last 90 days",
                         "No colleagues active in the last 90 days", "No company on record")

    def ctes(self, q: Query) -> list[tuple[str, str]]:
        d, L = q.dialect, Leads
        # the account's leads known at the as-of time and their engagement (from eng)
        acct = (
            f"SELECT g.as_of, l.{L.account_id} AS account_id, count(*) AS n_leads, sum(e.own_30) AS n30, "
            f"sum(e.own_90) AS n90, count_if(e.own_90 > 0) AS active90 "
            f"FROM {q.grid} g JOIN {d.leads} l ON l.{L.created_at} < g.as_of "
            f"LEFT JOIN eng e ON e.lead_key = l.{d.lead_key} AND e.as_of = g.as_of "
            f"WHERE l.{L.account_id} IS NOT NULL GROUP BY g.as_of, l.{L.account_id}"
        )
        return [("acct", acct)]

    def joins(self, q: Query) -> list[str]:
        return [f"LEFT JOIN acct al ON al.account_id = l.{Leads.account_id} AND al.as_of = p.as_of "]

    def columns(self, q: Query) -> list[str]:
        return [
            "CASE WHEN al.n_leads IS NULL THEN NULL ELSE al.n_leads - 1 END AS account_other_leads",
            "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.n30, 0) - coalesce(g.own_30, 0) END "
            "AS account_n_events_30d",
            "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.n90, 0) - coalesce(g.own_90, 0) END "
            "AS account_n_events_90d",
            "CASE WHEN al.n_leads IS NULL THEN NULL ELSE coalesce(al.active90, 0) "
            "- (CASE WHEN coalesce(g.own_90, 0) > 0 THEN 1 ELSE 0 END) END AS account_active_leads_90d",
        ]

    scanned = True

    def evaluate(self, scan: EventScan, q: Query) -> dict[str, np.ndarray]:
        leads, n30, n90, active90 = scan.account  # NaN where the SQL's al row is missing
        own30, own90 = scan.count(30), scan.count(90)
        return {
            "account_other_leads": leads - 1,
            "account_n_events_30d": n30 - own30,
            "account_n_events_90d": n90 - own90,
            "account_active_leads_90d": active90 - (own90 > 0),
        }


class Firmographic(FeatureFamily):
    """Who the lead's company is: industry, size and revenue with bands, country."""

    name = "firmographic"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        fit: Family = "fit"
        yield FeatureDef("industry", fit, "firmographic", "categorical", "category",
                         "Industry of the lead's company", "Works in {value}", None, "Industry unknown")
        yield FeatureDef("employees", fit, "firmographic", "numeric", "employees",
                         "Employees of the lead's company", "Company has {value} employees", None,
                         "Company size unknown")
        yield FeatureDef("employee_band", fit, "firmographic", "numeric", "band",
                         f"Company size band (0: under {config.employee_bands[0]} employees, "
                         f"{len(config.employee_bands)}: {config.employee_bands[-1]} or more)",
                         "Company has {value} employees", None, "Company size unknown",
                         labels=band_labels(config.employee_bands))
        yield FeatureDef("annual_revenue", fit, "firmographic", "numeric", "currency",
                         "Annual revenue of the lead's company", "Company revenue {value}", None,
                         "Company revenue unknown")
        yield FeatureDef("revenue_band", fit, "firmographic", "numeric", "band",
                         "Company revenue band (0: smallest)", "Company revenue {value}", None,
                         "Company revenue unknown", labels=band_labels(config.revenue_bands, money=True))
        yield FeatureDef("country", fit, "firmographic", "categorical", "category",
                         "Country of the lead (else of the company)", "Based in {value}", None,
                         "Country unknown")

    def columns(self, q: Query) -> list[str]:
        A, config = Accounts, q.config
        return [
            f"a.{A.industry} AS industry",
            f"CAST(a.{A.employees} AS DOUBLE) AS employees",
            f"{band_sql('a.' + A.employees, config.employee_bands)} AS employee_band",
            f"a.{A.annual_revenue} AS annual_revenue",
            f"{band_sql('a.' + A.annual_revenue, config.revenue_bands)} AS revenue_band",
            f"coalesce(l.{Leads.country}, a.{A.country}) AS country",
        ]


class Lead(FeatureFamily):
    """Who the lead is: the channel that produced it, seniority from its job title."""

    name = "lead"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        fit: Family = "fit"
        yield FeatureDef("lead_source", fit, "lead", "categorical", "category",
                         "Channel that produced the lead", "Came from {value}", None, "Source unknown")
        yield FeatureDef("seniority", fit, "lead", "categorical", "category",
                         "Seniority read from the job title", "{value}", None, "No job title",
                         labels=tuple((level, SENIORITY_WORDS.get(level, f"Seniority: {level}"))
                                      for level in (*(lv for lv, _ in SENIORITY_PATTERNS), "other")))

    def columns(self, q: Query) -> list[str]:
        d = q.dialect
        seniority = "l." + d.seniority if d.seniority else seniority_sql("l." + Leads.job_title, d)
        return [f"l.{Leads.lead_source} AS lead_source", f"{seniority} AS seniority"]


class Extra(FeatureFamily):
    """Extra attributes of leads or accounts the configuration names (``x_<column>``)."""

    name = "extra"

    def catalog(self, event_types: Sequence[str], config: FeaturesConfig) -> Iterator[FeatureDef]:
        for extra in config.extra_attributes:
            yield FeatureDef(f"x_{slug(extra.column)}", "fit", "extra", extra.kind,
                             "category" if extra.kind == "categorical" else "value",
                             extra.description or f"{extra.table}.{extra.column} from the CRM export",
                             f"{escape(extra.column)}: {{value}}", None, f"{extra.column} unknown")

    def columns(self, q: Query) -> list[str]:
        d, out = q.dialect, []
        for extra in q.config.extra_attributes:
            col = f"{'l' if extra.table == 'leads' else 'a'}.{d.quote(extra.column)}"
            expr = f"TRY_CAST({col} AS DOUBLE)" if extra.kind == "numeric" else f"CAST({col} AS {d.text_type})"
            out.append(f"{expr} AS x_{slug(extra.column)}")
        return out


#: Every family, in catalog (and output column) order. A family's SQL may read the tables
#: of the families before it.
FAMILIES: tuple[FeatureFamily, ...] = (
    EngagementByType(),
    Engagement(),
    Lifecycle(),
    Account(),
    Firmographic(),
    Lead(),
    Extra(),
)


def feature_catalog(event_types: Sequence[str], config: FeaturesConfig) -> Catalog:
    """Describe every feature :func:`convert.features.query.feature_sql` produces, in the same order."""
    return Catalog(f for family in FAMILIES for f in family.catalog(event_types, config))
