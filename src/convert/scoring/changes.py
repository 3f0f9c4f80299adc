"""Why a lead's score changed since its previous score: exact movements, trend and sentences.

This module owns the pure core of issue 17, kept apart from scoring, writing and reporting
so that each of those can call it: given today's model, the lead's previous score (read
by the caller from the history table or the file being replaced) and the lead's features
today and at the previous as-of time, it says

- ``score_change = score - previous_score`` and a ``trend``: ``new`` without a previous
  score, ``unknown`` when the previous as-of cannot be recomputed, else ``improving``,
  ``steady`` (``|score_change| < scoring.trend_min_change``) or ``declining``;
- the **movements**, in integer points that add up exactly:
  ``previous_score + sum(movements) = score``. Per feature, a movement is the feature's
  points now minus its points at the previous as-of, both under today's model (the
  unrounded points of :func:`convert.model.explain.to_points` sum to today's model's
  score, so their differences sum to the change of that score between the two times);
  the largest-remainder rounding of :func:`~convert.model.explain.round_preserving_sum`
  makes them integers that keep their signs and hit that change exactly. One more
  movement, the model update, is today's model's score at the previous as-of minus the
  previous score (zero when the model did not change);
- ``change_1..3``: the largest movements in words, with the value then and now
  (``+14 Requested a demo once in the last 30 days (was 0)``), built per feature over
  every lead it concerns, never sentence by sentence per lead.

Point-in-time features make the previous as-of recomputable from today's export, so no
point vectors are stored: the history keeps one fingerprint per row, ``events_seen`` (the
lead's events before its as-of, :attr:`~convert.schema.ScoreChanges.events_seen`). A
previous row is ``unknown`` when the lead is no longer in the export as it was then, when
its events before that time are no longer as many as the previous run saw (events
deleted, or back-filled late), or when the same model version now gives another score at
that time (the export was rewritten in a way the count misses, e.g. a company's size).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from convert.config import Config, ScoringConfig
from convert.features.catalog import FeatureDef
from convert.features.engine import finish_frame, materialize_features
from convert.model.bundle import LeadScoringModel
from convert.model.explain import (
    Points,
    contributions,
    model_score_fn,
    round_preserving_sum,
    score_slope,
    to_points,
)
from convert.schema import Leads
from convert.schema import ScoreChanges as C
from convert.schema import ScoreOutput as O
from convert.sources.export import CRMData

NEW, UNKNOWN, IMPROVING, STEADY, DECLINING = "new", "unknown", "improving", "steady", "declining"
#: Every trend, in the order reports list them.
TRENDS = (IMPROVING, STEADY, DECLINING, NEW, UNKNOWN)
#: The movement that is not a feature: today's model against the model of the previous score.
MODEL = "model update"
#: The feature whose value at an as-of time is the lead's events before it (the fingerprint).
EVENTS_FEATURE = "n_events_total"

#: Columns of :func:`previous_scores`' result (the caller's input to :func:`compare`).
PREVIOUS_SCORE, PREVIOUS_AS_OF = C.previous_score, C.previous_as_of
PREVIOUS_MODEL_VERSION, PREVIOUS_EVENTS_SEEN = "previous_model_version", "previous_events_seen"
PREVIOUS_COLUMNS = (O.lead_id, PREVIOUS_SCORE, PREVIOUS_AS_OF, PREVIOUS_MODEL_VERSION, PREVIOUS_EVENTS_SEEN)

_MAX_POINTS = 1000
_SIGNED = np.array([f"{v:+d}" for v in range(-_MAX_POINTS, _MAX_POINTS + 1)], dtype=object)


@dataclass
class Changes:
    """The changes of a batch of leads, in the order of the ``now`` rows given to :func:`compare`.

    ``frame`` holds ``lead_id`` and the :class:`~convert.schema.ScoreChanges` columns (what
    the score table gains). ``movements`` holds every movement in integer points, one
    column per feature of ``names`` and the model update last; rows without exact
    movements (``trend`` new or unknown) are all zero. ``exact`` marks the rows that have
    them: for those, ``previous_score + movements.sum(axis=1) == score``.
    """

    frame: pd.DataFrame
    movements: np.ndarray
    names: list[str]
    exact: np.ndarray

    def top_movements(self, k: int = 10) -> pd.DataFrame:
        """The *k* largest movements of the batch (lead, movement, points): for alerts and the report."""
        absval = np.abs(self.movements).ravel()
        # the k largest non-zero |movements|, ties in row-major order (a stable sort's first
        # k): the cells at or above the k-th largest value, found by counting the integer
        # values (partitioning degrades on arrays of a few repeated values)
        counts = np.bincount(absval, minlength=2) if absval.size else np.zeros(2, dtype="int64")
        at_least = np.cumsum(counts[::-1])[::-1]  # cells with |movement| >= v, per v
        floor = max(1, int(np.flatnonzero(at_least >= k)[-1])) if k > 0 and at_least[0] >= k else 1
        candidates = np.flatnonzero(absval >= floor)
        flat = candidates[np.argsort(-absval[candidates], kind="stable")[:max(k, 0)]]
        rows, cols = np.unravel_index(flat, self.movements.shape)
        keep = self.movements[rows, cols] != 0
        return pd.DataFrame(
            {
                O.lead_id: self.frame[O.lead_id].to_numpy()[rows[keep]],
                "movement": np.asarray(self.names, dtype=object)[cols[keep]],
                "points": self.movements[rows[keep], cols[keep]],
            }
        )

    def points_by_movement(self) -> pd.Series:
        """Total points each feature (and the model update) moved across the batch, largest |total| first."""
        total = pd.Series(self.movements.sum(axis=0), index=self.names)
        return total.reindex(total.abs().sort_values(ascending=False, kind="stable").index)


def trend(score_change: np.ndarray, min_change: int) -> np.ndarray:
    """``improving`` / ``steady`` / ``declining`` of each change: steady when ``|change| < min_change``."""
    change = np.asarray(score_change, dtype="float64")
    out = np.full(len(change), STEADY, dtype=object)
    out[change >= min_change] = IMPROVING
    out[change <= -min_change] = DECLINING
    return out


def previous_scores(history: pd.DataFrame, as_of: str | pd.Timestamp) -> pd.DataFrame:
    """Each lead's previous score before *as_of*: its latest row with an as-of strictly earlier.

    *history* holds score rows (``lead_id``, ``as_of``, ``score``, ``model_version``, and
    when written, ``scored_at`` and ``events_seen``) from the history table or the file
    being replaced. Strictly earlier, so a re-run at the same as-of compares with the run
    before it, not with itself; a lead absent from some runs compares with the last run
    that scored it. Among rows at the same as-of, the latest ``scored_at`` wins.

    Returns one row per lead with :data:`PREVIOUS_COLUMNS`.
    """
    t = pd.Timestamp(as_of)
    if not len(history):  # the first run: no table, or an empty one
        history = pd.DataFrame({c: pd.Series(dtype=object) for c in (O.lead_id, O.as_of, O.score, O.model_version)})
        history[O.as_of] = pd.to_datetime(history[O.as_of])
    rows = history[(pd.to_datetime(history[O.as_of]) < t).to_numpy()]
    order = [O.as_of] + ([O.scored_at] if O.scored_at in rows else [])
    rows = rows.sort_values(order, kind="stable").drop_duplicates(O.lead_id, keep="last")
    events = rows[C.events_seen] if C.events_seen in rows else pd.Series(np.nan, index=rows.index)
    return pd.DataFrame(
        {
            O.lead_id: rows[O.lead_id].astype(str).to_numpy(),
            PREVIOUS_SCORE: rows[O.score].astype("int64").to_numpy(),
            PREVIOUS_AS_OF: pd.to_datetime(rows[O.as_of]).to_numpy(),
            PREVIOUS_MODEL_VERSION: rows[O.model_version].astype(str).to_numpy(),
            PREVIOUS_EVENTS_SEEN: pd.to_numeric(events).astype("float64").to_numpy(),
        }
    ).reset_index(drop=True)


def previous_features(data: CRMData, model: LeadScoringModel, previous: pd.DataFrame, config: Config) -> pd.DataFrame:
    """Feature rows of each lead of *previous* at its own previous as-of, from today's export.

    Point in time, as the previous run computed them (the model's feature settings). A
    lead that the export no longer holds as open at that time (deleted, created later,
    converted or disqualified before it) gets no row: :func:`compare` calls it unknown.
    """
    pairs = pd.DataFrame(
        {
            O.lead_id: previous[O.lead_id].astype(str).to_numpy(),
            O.as_of: pd.to_datetime(previous[PREVIOUS_AS_OF]).astype("datetime64[us]").to_numpy(),
        }
    ).drop_duplicates()
    L = Leads
    con = data.con
    con.register("_changes_pairs", pairs)
    try:
        con.execute(
            "CREATE OR REPLACE TEMP TABLE _changes_population AS "
            f"SELECT p.{O.lead_id} AS lead_id, CAST(p.{O.as_of} AS TIMESTAMP) AS as_of "
            f"FROM _changes_pairs p JOIN leads l ON l.{L.lead_id} = p.{O.lead_id} "
            f"AND l.{L.created_at} < p.{O.as_of} "
            f"WHERE (l.{L.converted_at} IS NULL OR l.{L.converted_at} >= p.{O.as_of}) "
            f"AND (l.{L.disqualified_at} IS NULL OR l.{L.disqualified_at} >= p.{O.as_of})"
        )
    finally:
        con.unregister("_changes_pairs")
    try:
        table, catalog, _ = materialize_features(
            con, model.features_config(config.features), model.spec_.event_types,
            population="_changes_population", name="_changes_features",
        )
        return finish_frame(con.execute(f"SELECT * FROM {table} ORDER BY lead_id").df(), catalog)
    finally:
        for tmp in ("_changes_features", "_changes_population"):
            con.execute(f"DROP TABLE IF EXISTS {tmp}")


def points_of(model: LeadScoringModel, features: pd.DataFrame, num_threads: int = 0) -> Points:
    """Today's model's points of feature rows, exactly as :func:`convert.scoring.score.score_frame` computes them."""
    phi = contributions(model, model.matrix(features), num_threads)
    return to_points(phi.sum(axis=1), phi[:, :-1], model.base_raw_, model_score_fn(model))


def _match_then(then: pd.DataFrame, then_ids: pd.Index, ids: np.ndarray, prev_as_of: pd.DatetimeIndex) -> np.ndarray:
    """The row of *then* (lead ids *then_ids*) at each lead's previous as-of, -1 when none:
    by lead when each lead has one row there (a run's previous rows), else by lead and time."""
    if not len(then):
        return np.full(len(ids), -1)
    then_at = pd.to_datetime(then[O.as_of]).to_numpy()
    if then_ids.is_unique:
        ti = then_ids.get_indexer(ids)
        ti[(ti >= 0) & (then_at[np.maximum(ti, 0)] != prev_as_of.to_numpy())] = -1
        return ti
    return pd.MultiIndex.from_arrays([then_ids, then_at]).get_indexer(pd.MultiIndex.from_arrays([ids, prev_as_of]))


def _scores_and_points(model: LeadScoringModel, features: pd.DataFrame, num_threads: int) -> tuple[np.ndarray, np.ndarray]:
    """Integer scores and unrounded points (n, p) of feature rows, as :func:`points_of` gives
    them, without the integer points (the previous as-of needs none: the movements are
    rounded instead): the same ``phi * slope`` product and score as ``to_points``."""
    phi = contributions(model, model.matrix(features), num_threads)
    s_raw, _, slope = score_slope(phi.sum(axis=1), model.base_raw_, model_score_fn(model))
    return np.floor(s_raw + 0.5).astype("int64"), phi[:, :-1] * slope[:, None]


def _round_movements(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Largest-remainder integers of the movements (signs kept, exact row sums), over the
    columns that moved at all: a feature no tree uses moves by exactly zero and stays zero."""
    out = np.zeros(values.shape, dtype="int64")
    moved = np.flatnonzero((values != 0).any(axis=0))
    if len(moved) == values.shape[1]:
        return round_preserving_sum(values, targets)
    if len(moved):
        out[:, moved] = round_preserving_sum(values[:, moved], targets)
    return out


def compare(
    model: LeadScoringModel,
    now: pd.DataFrame,
    previous: pd.DataFrame,
    then: pd.DataFrame,
    config: ScoringConfig,
    model_version: str,
    now_points: Points | None = None,
    indexes: tuple[pd.Index, pd.Index] | None = None,
) -> Changes:
    """The changes of the leads of *now* since their previous scores.

    Parameters
    ----------
    now:
        Today's feature rows (``lead_id``, ``as_of`` and the model's features).
    previous:
        The previous scores (:func:`previous_scores`: one row per lead, any order; leads
        without one are absent).
    then:
        Feature rows at each lead's previous as-of (:func:`previous_features`: ``lead_id``,
        ``as_of`` = the previous as-of); a lead without a row there is unknown.
    now_points:
        The points of *now* when the caller has them (``score_frame(points=...)``);
        computed otherwise.
    indexes:
        The lead ids of *previous* and of *then* as indexes, when the caller keeps them
        (a run looks each chunk up in indexes built once); built here otherwise.
    """
    names = list(model.spec_.names)
    p = len(names)
    n = len(now)
    if now_points is None:
        now_points = points_of(model, now, config.num_threads)
    ids = now[O.lead_id].astype(str).to_numpy()
    prev = previous.reset_index(drop=True)
    prev_ids, then_ids = indexes or (pd.Index(prev[O.lead_id].astype(str)), pd.Index(then[O.lead_id].astype(str)))
    pi = prev_ids.get_indexer(ids)
    has_prev = pi >= 0
    pj = np.maximum(pi, 0)

    def take(values: np.ndarray, fill: Any) -> np.ndarray:
        fill = np.asarray(fill, dtype=values.dtype)
        return np.where(has_prev, values[pj], fill) if len(prev) else np.full(n, fill)

    prev_score = take(prev[PREVIOUS_SCORE].to_numpy(dtype="int64"), 0)
    when = pd.to_datetime(prev[PREVIOUS_AS_OF]).to_numpy()
    prev_as_of = pd.DatetimeIndex(take(when, np.datetime64("NaT").astype(when.dtype)))
    prev_version = take(prev[PREVIOUS_MODEL_VERSION].to_numpy(dtype=object), "")
    prev_events = take(prev[PREVIOUS_EVENTS_SEEN].to_numpy(dtype="float64"), np.nan)

    ti = _match_then(then, then_ids, ids, prev_as_of)
    found = has_prev & (ti >= 0)
    rows = np.flatnonzero(found)
    then_pos = ti[rows]
    then_rows = then if len(then_pos) == len(then) and (then_pos == np.arange(len(then))).all() else then.take(then_pos)
    then_score, then_continuous = (
        _scores_and_points(model, then_rows, config.num_threads) if len(rows) else (None, None)
    )

    # consistency: the fingerprint, and the same model's score at the same time
    reason = np.full(n, None, dtype=object)
    reason[has_prev & ~found] = "absent"
    recomputed = np.zeros(n, dtype="int64")
    if then_score is not None:
        recomputed[rows] = then_score
        if EVENTS_FEATURE in then_rows:
            seen_now = then_rows[EVENTS_FEATURE].to_numpy(dtype="float64")
            stored = prev_events[rows]
            differs = ~np.isnan(stored) & (np.nan_to_num(seen_now, nan=0.0) != stored)
            reason[rows[differs]] = "events"
        same_model = prev_version[rows] == model_version
        rescored = same_model & (then_score != prev_score[rows]) & (reason[rows] == None)  # noqa: E711
        reason[rows[rescored]] = "rescored"
    exact = found & (reason == None)  # noqa: E711

    movements = np.zeros((n, p + 1), dtype="int64")
    continuous = np.zeros((n, p + 1), dtype="float64")
    if then_score is not None and then_continuous is not None:
        ok = exact[rows]
        r = rows[ok]
        m = now_points.continuous[r] - then_continuous[ok]
        movements[r, :p] = _round_movements(m, now_points.score[r] - then_score[ok])
        continuous[r, :p] = m
        movements[r, p] = then_score[ok] - prev_score[r]
        continuous[r, p] = movements[r, p]

    change = np.where(has_prev, now_points.score - prev_score, 0)
    trends = np.full(n, NEW, dtype=object)
    trends[has_prev] = trend(change[has_prev], config.trend_min_change)
    trends[has_prev & ~exact] = UNKNOWN

    texts = _sentences(model, now, then_rows, rows, exact, movements, continuous, prev_version, model_version)
    unknown = np.flatnonzero(has_prev & ~exact)
    if len(unknown):
        texts[unknown, 0] = _why_unknown(reason[unknown], prev_score[unknown], prev_as_of[unknown],
                                         recomputed[unknown], prev_events[unknown], then_rows, rows, unknown)

    frame = pd.DataFrame(
        {
            O.lead_id: ids,
            C.previous_score: pd.array(np.where(has_prev, prev_score, 0), dtype="Int64"),
            C.previous_as_of: prev_as_of,
            C.score_change: pd.array(change, dtype="Int64"),
            C.trend: trends,
        }
    )
    frame.loc[~has_prev, [C.previous_score, C.score_change]] = pd.NA
    for i, col in enumerate(C.CHANGES):
        frame[col] = texts[:, i]
    seen = now[EVENTS_FEATURE].to_numpy(dtype="float64") if EVENTS_FEATURE in now else np.full(n, np.nan)
    frame[C.events_seen] = pd.array(np.where(np.isnan(seen), 0, seen).astype("int64"), dtype="Int64")
    frame.loc[np.isnan(seen), C.events_seen] = pd.NA
    return Changes(frame=frame, movements=movements, names=[*names, MODEL], exact=exact)


def _sentences(
    model: LeadScoringModel,
    now: pd.DataFrame,
    then_rows: pd.DataFrame,
    rows: np.ndarray,
    exact: np.ndarray,
    movements: np.ndarray,
    continuous: np.ndarray,
    prev_version: np.ndarray,
    model_version: str,
) -> np.ndarray:
    """``change_1..3`` of every lead, shape (n, 3): the largest movements in words.

    Ranked by integer points, ties broken by the unrounded points; zero movements are not
    said. Built feature by feature: each feature's sentences for all leads it concerns
    at once, from the distinct values then and now.
    """
    n, width = movements.shape
    k = min(len(C.CHANGES), width)
    out = np.full((n, len(C.CHANGES)), None, dtype=object)
    r_exact = np.flatnonzero(exact)
    if not len(r_exact):
        return out
    # integer points first; the unrounded points (at most 100 here) only break ties
    mag = np.abs(continuous[r_exact])
    np.minimum(mag, 100.0, out=mag)
    mag *= 1e-5
    mag += np.abs(movements[r_exact])
    # the k largest of each row, largest first, ties to the lower column: k passes of argmax
    # (k is 3; partitioning degrades on rows of many equal values, the features that did not move)
    top = np.empty((len(r_exact), k), dtype=np.intp)  # (m, k) column of each slot
    every = np.arange(len(r_exact))
    for i in range(k):
        top[:, i] = mag.argmax(axis=1)
        mag[every, top[:, i]] = -1.0
    pts = movements[r_exact[:, None], top]
    lead_idx = np.repeat(r_exact, k)
    slot = np.tile(np.arange(k), len(r_exact))
    col = top.ravel()
    val = pts.ravel()
    said = val != 0
    lead_idx, slot, col, val = lead_idx[said], slot[said], col[said], val[said]
    # the row of *then_rows* holding each lead's previous values
    then_pos = np.full(n, -1)
    then_pos[rows] = np.arange(len(rows))
    names = model.spec_.names
    p = len(names)
    signed = _SIGNED[np.clip(val, -_MAX_POINTS, _MAX_POINTS) + _MAX_POINTS]
    by_col = np.argsort(col, kind="stable")
    bounds = np.flatnonzero(np.diff(col[by_col])) + 1
    for group in np.split(by_col, bounds):
        if not len(group):
            continue
        j = int(col[group[0]])
        leads = lead_idx[group]
        if j == p:
            words = _model_words(prev_version[leads], model_version)
        else:
            name = names[j]
            words = _value_change_words(
                model.catalog_[name],
                now[name].to_numpy()[leads],
                then_rows[name].to_numpy()[then_pos[leads]],
            )
        out[leads, slot[group]] = signed[group] + " " + words
    return out


def _model_words(prev_version: np.ndarray, model_version: str) -> np.ndarray:
    codes, uniques = pd.factorize(pd.Series(prev_version, dtype=object))
    # an empty version: the previous run's model is not on record (a file re-run at the same as-of)
    text = np.array([f"model updated ({v} \u2192 {model_version})" if v else
                     f"previous score recomputed by {model_version}" for v in uniques], dtype=object)
    return text[codes]


def _value_change_words(feature: FeatureDef, now: np.ndarray, then: np.ndarray) -> np.ndarray:
    """``<the value now in words> (was <value then>)`` for each lead, from the distinct values."""
    now_codes, now_uniques = _factorize(feature.canonical(now))
    then_codes, then_uniques = _factorize(feature.canonical(then))
    # code -1 (missing) is the last entry of each table
    now_said = np.array([feature.describe(v) for v in now_uniques] + [feature.describe(None)], dtype=object)
    now_value = np.array([feature.format_value(v) for v in now_uniques] + [None], dtype=object)
    then_value = np.array([feature.format_value(v) for v in then_uniques] + [None], dtype=object)
    before = np.array([f" (was {v})" for v in then_value[:-1]] + [f" (was {_none(feature)})"], dtype=object)
    same = now_value[now_codes] == then_value[then_codes]
    return now_said[now_codes] + np.where(same, " (value unchanged)", before[then_codes])


def _factorize(values: np.ndarray) -> tuple[np.ndarray, list[Any]]:
    """Codes (-1: missing) and distinct values, numbers factorized as numbers (not as objects)."""
    if isinstance(values, np.ndarray) and values.dtype.kind == "f":
        codes, uniques = pd.factorize(values, use_na_sentinel=True)
    else:
        codes, uniques = pd.factorize(pd.Series(values, dtype=object), use_na_sentinel=True)
    return codes, list(uniques)


def _none(feature: FeatureDef) -> str:
    """A missing value then, in words: ``none`` for counts and times since, else ``unknown``."""
    return "none" if feature.unit in ("count", "days") else "unknown"


def _why_unknown(
    reason: np.ndarray,
    prev_score: np.ndarray,
    prev_as_of: pd.DatetimeIndex,
    recomputed: np.ndarray,
    stored_events: np.ndarray,
    then_rows: pd.DataFrame,
    rows: np.ndarray,
    unknown: np.ndarray,
) -> np.ndarray:
    """``change_1`` of the unknown rows: why the previous score cannot be explained."""
    when = pd.Series(prev_as_of).dt.strftime("%Y-%m-%d %H:%M").str.removesuffix(" 00:00").to_numpy(dtype=object)
    head = "previous score " + pd.Series(prev_score).astype(str).to_numpy(dtype=object) + " (as of " + when + ")"
    then_pos = pd.Index(rows).get_indexer(unknown)
    seen = (
        then_rows[EVENTS_FEATURE].to_numpy(dtype="float64")[np.maximum(then_pos, 0)]
        if EVENTS_FEATURE in then_rows and len(then_rows) else np.full(len(unknown), np.nan)
    )
    events_now = pd.Series(np.nan_to_num(seen)).astype("int64").astype(str).to_numpy(dtype=object)
    events_then = pd.Series(np.nan_to_num(stored_events)).astype("int64").astype(str).to_numpy(dtype=object)
    again = pd.Series(recomputed).astype(str).to_numpy(dtype=object)
    tail = np.where(
        reason == "absent",
        ": the export no longer holds the lead as it was then, so the change cannot be explained",
        np.where(
            reason == "events",
            ": the export now holds " + events_now + " events of the lead before then where the previous run saw "
            + events_then + ", so the change cannot be explained",
            ": the same model now gives " + again + " for then, so the export was rewritten and the change "
            "cannot be explained",
        ),
    )
    return head + tail


# --- one lead between two times (``convert-leads explain --since``) -------------------------------


@dataclass
class LeadChange:
    """One lead's score at two times under one model, and every movement between them.

    ``table`` holds one row per feature whose points moved: ``feature``, ``family``,
    ``points`` (integers, largest first), ``value_then``, ``value_now`` and ``sentence``
    (the words of ``change_1..3``); its points sum to ``score_now - score_then`` exactly. A
    feature can move with its own value unchanged: the trees weigh it by the others.
    """

    lead_id: str
    since: pd.Timestamp
    as_of: pd.Timestamp
    score_then: int
    score_now: int
    table: pd.DataFrame

    @property
    def change(self) -> int:
        return self.score_now - self.score_then

    def lines(self) -> list[str]:
        """The change as printed by ``convert-leads explain --since``."""
        head = (f"lead {self.lead_id}: score {self.score_then} as of {_day(self.since)} -> {self.score_now} as of "
                f"{_day(self.as_of)} ({self.change:+d}), both under today's model")
        if self.table.empty:
            return [head, "no feature moved its points between the two times"]
        shown = self.table[["points", "feature", "value_then", "value_now", "sentence"]]
        return [head, shown.to_string(index=False),
                f"sum of movements {int(self.table['points'].sum()):+d} = {self.score_now} - {self.score_then}"]


def _day(t: pd.Timestamp) -> str:
    return f"{t:%Y-%m-%d %H:%M}".removesuffix(" 00:00")


def own_previous_scores(model: LeadScoringModel, then: pd.DataFrame, model_version: str, num_threads: int = 0) -> pd.DataFrame:
    """Previous scores (:data:`PREVIOUS_COLUMNS`) that are *model*'s own scores of the feature
    rows *then*, at their as-of: compared with them, the model update is zero and the feature
    movements alone add up to each change (``explain --since``, the report's movements)."""
    scores = points_of(model, then, num_threads).score if len(then) else np.array([], dtype="int64")
    return pd.DataFrame({O.lead_id: then[O.lead_id].astype(str).to_numpy(), PREVIOUS_SCORE: scores,
                         PREVIOUS_AS_OF: pd.to_datetime(then[O.as_of]).to_numpy(),
                         PREVIOUS_MODEL_VERSION: model_version, PREVIOUS_EVENTS_SEEN: np.nan})


def lead_change(
    model: LeadScoringModel, now: pd.DataFrame, then: pd.DataFrame, config: ScoringConfig, model_version: str,
) -> LeadChange:
    """The movements of one lead between its feature row *then* and *now* (one row each),
    both scored by *model*: the previous score is the model's own score then, so the model
    update is zero and the feature movements alone add up to the change."""
    lead = str(now[O.lead_id].iloc[0])
    since = pd.Timestamp(then[O.as_of].iloc[0])
    previous = own_previous_scores(model, then, model_version, config.num_threads)
    score_then = int(previous[PREVIOUS_SCORE].iloc[0])
    now_points = points_of(model, now, config.num_threads)
    changes = compare(model, now, previous, then, config, model_version, now_points=now_points)
    names = model.spec_.names
    assert changes.exact[0] and changes.movements[0, len(names)] == 0  # the model's own score then
    moved = np.flatnonzero(changes.movements[0, : len(names)])
    order = moved[np.argsort(-np.abs(changes.movements[0, moved]), kind="stable")]
    rows = []
    for j in order:
        pts, name = int(changes.movements[0, j]), names[j]
        feature = model.catalog_[name]
        now_v, then_v = now[name].to_numpy()[:1], then[name].to_numpy()[:1]
        words = _value_change_words(feature, now_v, then_v)[0]
        rows.append((name, model.catalog_.family_of([name])[0], pts, feature.format_value(then_v[0]),
                     feature.format_value(now_v[0]), f"{pts:+d} {words}"))
    table = pd.DataFrame(rows, columns=["feature", "family", "points", "value_then", "value_now", "sentence"])
    table["points"] = table["points"].astype("int64")
    return LeadChange(lead, since, pd.Timestamp(now[O.as_of].iloc[0]), score_then, int(now_points.score[0]), table)
