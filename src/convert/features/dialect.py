"""The SQL spellings of the two feature engines, and names made safe for SQL.

Feature SQL is written once (:mod:`convert.features.families`) against a
:class:`Dialect`: DuckDB's (:data:`DUCKDB`, the default engine) or Spark SQL's
(:data:`SPARK`). A dialect also names the tables the query reads, because the DuckDB
engine reads compact indexed copies (:func:`convert.features.engine.index_events`)
where Spark reads the contract tables as they are.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from convert.schema import Leads
from convert.sql import lit, quote

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

    Everything else the feature SQL (:mod:`convert.features.families`) writes is common to DuckDB and Spark SQL
    (``count(*) FILTER (WHERE ...)``, ``INTERVAL 'n' DAY``, ``TRY_CAST``, ``NULLIF``).
    """

    name: str = "duckdb"
    #: The type name of text in ``CAST(x AS ...)``.
    text_type: str = "VARCHAR"
    #: The tables the query reads leads and events from, and the column keying a lead in
    #: both: DuckDB reads :func:`~convert.features.engine.index_events`' copies keyed by a small integer.
    leads: str = "_leads_indexed"
    events: str = "_events_indexed"
    lead_key: str = "lead_key"
    #: A table with one row per (lead key, day with events) and the day's first and last
    #: event times (:func:`~convert.features.engine.index_events`), or ``None`` to count distinct days from events.
    active_days: str | None = "_active_days"
    #: The column of ``leads`` holding each lead's seniority, read once from the job title
    #: (:func:`~convert.features.engine.index_events`), or ``None`` to read it from the title in every query.
    seniority: str | None = "_seniority"
    #: The column of ``leads`` holding each lead's first event time (:func:`~convert.features.engine.index_events`),
    #: or ``None`` to take the earliest event before each as-of time. The first touch
    #: before an as-of time is the first event ever when that is earlier, else none.
    first_event: str | None = "_first_event_at"
    #: The ENUM type the events table stores event types as (:func:`~convert.features.engine.index_events`), or
    #: ``None`` for text. Comparisons with an ENUM are integer comparisons.
    event_type_enum: str | None = "_event_type"

    def quote(self, name: str) -> str:
        """A column name as a quoted identifier."""
        return quote(name)

    def lit(self, value: str) -> str:
        """A string literal."""
        return lit(value)

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


def band_sql(expr: str, cuts: Sequence[float]) -> str:
    """The band of *expr* between *cuts* (0: below the first cut; missing stays missing)."""
    arms = " ".join(f"WHEN {expr} < {float(c)!r} THEN {i}" for i, c in enumerate(cuts))
    return f"CASE WHEN {expr} IS NULL THEN NULL {arms} ELSE {len(cuts)} END"


def seniority_sql(expr: str, d: Dialect) -> str:
    """Seniority read from a job title by :data:`SENIORITY_PATTERNS` (first match wins)."""
    text = f"lower({expr})"
    arms = " ".join(f"WHEN {d.matches(text, p)} THEN {d.lit(level)}" for level, p in SENIORITY_PATTERNS)
    return f"CASE WHEN {expr} IS NULL THEN NULL {arms} ELSE 'other' END"


def window_starts(grid: str, windows: Sequence[int], dialect: Dialect) -> str:
    """*grid* with each window's first instant as ``from_<days>``, computed once per as-of
    time rather than once per event (date arithmetic is dearer than a comparison)."""
    starts = ", ".join(f"{dialect.minus_days('as_of', w)} AS from_{w}" for w in windows)
    return f"(SELECT as_of, {starts} FROM {grid})"
