"""The contract's rules as data, and the SQL that types a raw column by the contract.

Each rule of the data contract's bad-rows table is one :class:`Rule` (column, SQL condition,
reason): a row is quarantined for the first rule it breaks (:mod:`convert.sources.validation`
applies them). Kept apart from their application so that the contract's table reads as a list,
and so that the flat-file path shares the rules for control characters.

Beyond the contract's table, input that would break what comes later is set aside: an id
holding a control character (a NUL byte fails every PostgreSQL write), a timestamp outside
``data.valid_from`` .. ``data.valid_to`` (``0001-01-01`` placeholders), and firmographics
that are infinite, NaN or negative.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime

import pandas as pd

from convert.schema import Accounts, Column, Events, Leads, Stages
from convert.sql import quote

#: Control characters (RE2 class): C0 but tab and newline, DEL and C1. A NUL byte among
#: them is refused by PostgreSQL in any text; the others garble files and screens.
CONTROL = r"[\x00-\x08\x0B-\x1F\x7F-\x9F]"


CONTROL_RE = re.compile(CONTROL)


def control_warning(column: str) -> str:
    """The summary's warning for a text column whose control characters were removed."""
    return f"control characters removed from {column!r} (NUL and others but tab and newline)"


def strip_control(frame: pd.DataFrame, skip: tuple[str | None, ...] = ()) -> dict[str, int]:
    """Remove control characters from the text columns of *frame* (in place) but *skip*;
    return the number of values changed per column (flat files, read with pandas)."""
    changed: dict[str, int] = {}
    for column in frame.columns:
        if column in skip or not (pd.api.types.is_object_dtype(frame[column]) or pd.api.types.is_string_dtype(frame[column])):
            continue
        text = frame[column]
        hit = text.map(lambda v: isinstance(v, str) and CONTROL_RE.search(v) is not None).astype(bool)
        if hit.any():
            frame.loc[hit, column] = text[hit].map(lambda v: CONTROL_RE.sub("", v))
            changed[str(column)] = int(hit.sum())
    return changed


def has_control(sql: str) -> str:
    """SQL: whether text *sql* holds a control character (NULL stays NULL)."""
    return f"regexp_matches({sql}, '{CONTROL}')"


def without_control(sql: str) -> str:
    """SQL: text *sql* with its control characters removed."""
    return f"regexp_replace({sql}, '{CONTROL}', '', 'g')"


@dataclass(frozen=True)
class Rule:
    """One line of the contract's bad-rows table that quarantines a row."""

    column: str
    condition: str
    reason: str


def text_sql(col: str, raw_type: str) -> str:
    """A raw column as trimmed text, empty meaning NULL."""
    if raw_type == "VARCHAR":
        return f"NULLIF(trim({quote(col)}), '')"
    return f"CAST({quote(col)} AS VARCHAR)"


NUMERIC_TYPE = re.compile(r"(U?(TINY|SMALL|BIG|HUGE)?INT(EGER)?|DOUBLE|FLOAT|REAL|DECIMAL\(\d+,\s*\d+\))")


def typed_sql(col: Column, raw_type: str, dirty: bool = True, trim: bool = True) -> str:
    """SQL casting a raw column to its contract type; NULL where it does not parse.

    Numbers are finite or NULL (``inf``, ``1e400``, ``NaN`` do not parse as a number);
    text that is not an id loses its control characters (an id keeps them: its row is
    quarantined by a rule). *dirty*: whether the column holds any control character at all
    (a clean column skips the regular expression). *trim*: False casts a timestamp's text
    as it is (the cast ignores surrounding white space and gives NULL for empty text, so the
    result is the same without a trimmed copy of every value).
    """
    text = text_sql(col, raw_type)
    if col.dtype == "timestamp":
        source = text if raw_type == "VARCHAR" and trim else quote(col)
        # An offset is honoured; without one the session time zone (UTC) applies. The UTC
        # wall time is rebuilt from the epoch (arithmetic, far cheaper than a time-zone
        # conversion); only an infinite timestamp takes the conversion.
        tz = f"TRY_CAST({source} AS TIMESTAMPTZ)"
        return f"coalesce(make_timestamp(epoch_us({tz})), TRY_CAST({tz} AT TIME ZONE 'UTC' AS TIMESTAMP))"
    if col.dtype in ("integer", "number") and NUMERIC_TYPE.fullmatch(raw_type):
        text = quote(col)  # a stored number: cast directly (its text round-trips exactly)
    if col.dtype == "integer":
        return f"TRY_CAST(TRY_CAST({text} AS DOUBLE) AS BIGINT)"
    if col.dtype == "number":
        number = f"TRY_CAST({text} AS DOUBLE)"
        return f"CASE WHEN isfinite({number}) THEN {number} END"
    if col.identifier or not dirty:
        return text
    return f"NULLIF(trim({without_control(text)}), '')"


def text_of_typed(col: Column, raw_type: str, typed: str, dirty: bool) -> str | None:
    """SQL: a raw column's text (:func:`text_sql`) rebuilt from its typed value *typed*, where
    that value determines it; None where it does not (text that failed to parse, say), so that
    the raw text must be kept. Clean text is its own typed value (both trimmed, empty meaning
    NULL); a stored timestamp's text is its instant's, printed in the session's UTC."""
    if col.dtype == "string" and raw_type == "VARCHAR" and not dirty and not col.identifier:
        return typed
    if col.dtype == "timestamp" and raw_type == "TIMESTAMP":
        return f"CAST({typed} AS VARCHAR)"
    if col.dtype == "timestamp" and raw_type == "TIMESTAMP WITH TIME ZONE":
        return f"CAST(CAST({typed} AS TIMESTAMPTZ) AS VARCHAR)"
    return None


def finite_sql(col: str) -> str:
    """SQL: the raw text of *col* read as a double (``inf`` and ``NaN`` included)."""
    return f"TRY_CAST({quote('raw__' + col)} AS DOUBLE)"


# --- the contract's rules -------------------------------------------------------------------

L, A, E, S = Leads, Accounts, Events, Stages


def _ts(value: datetime) -> str:
    return f"TIMESTAMP '{value:%Y-%m-%d %H:%M:%S.%f}'"


def _control_rule(col: str, dirty: frozenset[str]) -> Rule:
    condition = has_control(quote("raw__" + col)) if col in dirty else "false"
    return Rule(col, condition,
                f"{col} contains a control character (a NUL byte or another non-printing one)")


def _plausible_rule(col: str, valid: tuple[datetime, datetime]) -> Rule:
    lo, hi = valid
    return Rule(
        col,
        f"({quote(col)} < {_ts(lo)} OR {quote(col)} > {_ts(hi)})",
        f"{col} is implausible: outside data.valid_from .. data.valid_to ({lo:%Y-%m-%d} .. {hi:%Y-%m-%d})",
    )


def lead_rules(valid: tuple[datetime, datetime], dirty: frozenset[str] = frozenset()) -> list[Rule]:
    """The contract's rules for ``leads``, with timestamps plausible within *valid* (*dirty*:
    the columns holding a control character somewhere)."""
    return [
        Rule(L.lead_id, f"{L.lead_id} IS NULL", "empty lead_id"),
        _control_rule(L.lead_id, dirty),
        _control_rule(L.account_id, dirty),
        Rule(L.created_at, f"{L.created_at} IS NULL", "created_at is empty or not an ISO 8601 timestamp"),
        _plausible_rule(L.created_at, valid),
        Rule(
            L.converted_at,
            f"raw__{L.converted_at} IS NOT NULL AND {L.converted_at} IS NULL",
            "converted_at is not an ISO 8601 timestamp",
        ),
        _plausible_rule(L.converted_at, valid),
        Rule(L.converted_at, f"{L.converted_at} < {L.created_at}", "converted_at is earlier than created_at"),
        Rule(
            L.disqualified_at,
            f"raw__{L.disqualified_at} IS NOT NULL AND {L.disqualified_at} IS NULL",
            "disqualified_at is not an ISO 8601 timestamp",
        ),
        _plausible_rule(L.disqualified_at, valid),
        Rule(
            L.disqualified_at,
            f"{L.disqualified_at} < {L.created_at}",
            "disqualified_at is earlier than created_at",
        ),
    ]


def _firmographic_rules(col: str) -> list[Rule]:
    return [
        Rule(col, f"NOT isfinite({finite_sql(col)})", f"{col} is not a finite number (inf or NaN)"),
        Rule(col, f"raw__{col} IS NOT NULL AND {quote(col)} IS NULL", f"{col} is not a number"),
        Rule(col, f"{finite_sql(col)} < 0", f"{col} is negative"),
    ]


def account_rules(dirty: frozenset[str] = frozenset()) -> list[Rule]:
    return [
        Rule(A.account_id, f"{A.account_id} IS NULL", "empty account_id"),
        _control_rule(A.account_id, dirty),
        *_firmographic_rules(A.employees),
        *_firmographic_rules(A.annual_revenue),
    ]


def _child_rules(
    time_col: str, kind_col: str, valid: tuple[datetime, datetime], dirty: frozenset[str]
) -> list[Rule]:
    """Rules shared by events and stages: a row belongs to a valid lead and is dated after it."""
    return [
        Rule("lead_id", "lead_id IS NULL", "empty lead_id"),
        _control_rule("lead_id", dirty),
        Rule("lead_id", "lead__exists AND lead__reason IS NOT NULL", "its lead is quarantined"),
        Rule("lead_id", "NOT lead__exists", "lead_id not found in leads"),
        Rule(time_col, f"{quote(time_col)} IS NULL", f"{time_col} is empty or not an ISO 8601 timestamp"),
        _plausible_rule(time_col, valid),
        Rule(kind_col, f"{quote(kind_col)} IS NULL", f"empty {kind_col}"),
        Rule(
            time_col,
            f"{quote(time_col)} < lead__created_at",
            f"{time_col} is earlier than the lead's created_at",
        ),
    ]


def event_rules(valid: tuple[datetime, datetime], dirty: frozenset[str] = frozenset()) -> list[Rule]:
    return _child_rules(E.occurred_at, E.event_type, valid, dirty)


def stage_rules(valid: tuple[datetime, datetime], dirty: frozenset[str] = frozenset()) -> list[Rule]:
    return _child_rules(S.entered_at, S.stage, valid, dirty)
