"""One scoring run's changes since each lead's previous score: the wiring of :mod:`convert.scoring.changes`.

The score step reads each lead's previous row once before scoring (the history table or the
file being replaced, :func:`convert.io.writers.read_previous`), builds a :class:`RunChanges`
from it, and hands :meth:`RunChanges.chunk` to :func:`convert.scoring.score.iter_scores`:
every chunk of scores then gains the :class:`~convert.schema.ScoreChanges` columns, its
movements computed from the points the chunk was just explained with (no second TreeSHAP
of today's rows). The write-back then reads the previous rows again **under its lock** and
calls :meth:`RunChanges.recheck`: when another run wrote in between, the leads whose previous
row changed get their changes recomputed against it (their features rebuilt for them alone);
otherwise the batch stands as scored.

What each source can say:

* a **CRM export** (:class:`~convert.sources.export.CRMData`): exact movements. The features
  at each lead's previous as-of are recomputed from today's export (point in time), so
  ``previous_score + sum(movements) = score`` for every lead whose trend is neither ``new``
  nor ``unknown``;
* a **flat table** has no timestamps: today's file cannot say what a lead's values were at
  the previous run, so no movement is invented. ``previous_score``, ``previous_as_of``,
  ``score_change`` and ``trend`` (from the change, exact) are written; ``change_1`` says why
  the change is not split by factor, and ``events_seen`` is empty;
* the **Spark engine** scores on the cluster and returns scores only: the same as a flat
  table (``convert-leads score`` with the DuckDB engine, or ``explain --since``, gives the
  movements).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from convert.config import Config
from convert.model.bundle import LeadScoringModel
from convert.model.explain import Points
from convert.schema import ScoreChanges as C
from convert.schema import ScoreOutput as O
from convert.scoring.changes import NEW as TREND_NEW
from convert.scoring.changes import (
    PREVIOUS_AS_OF,
    PREVIOUS_COLUMNS,
    PREVIOUS_MODEL_VERSION,
    PREVIOUS_SCORE,
    compare,
    points_of,
    previous_features,
    previous_scores,
    trend,
)
from convert.scoring.score import feature_rows
from convert.sources.base import LeadSource
from convert.sources.export import CRMData

#: Why a source without movements says none (``change_1`` of its rows with a changed score).
FLAT_WHY = "a flat table keeps no earlier values, so the change is not split by factor"
SPARK_WHY = "the Spark engine computes no movements (score with the DuckDB engine for them)"


@dataclass
class RunChanges:
    """The changes of one run (see the module docs).

    *previous_rows* are the target's previous rows (:func:`~convert.io.writers.read_previous`);
    *source* is kept open by the caller until the write is done (the recheck may rebuild
    features); *why_not* (``FLAT_WHY``, ``SPARK_WHY``) turns the movements off.
    """

    model: LeadScoringModel
    as_of: pd.Timestamp
    config: Config
    model_version: str
    previous_rows: pd.DataFrame
    source: LeadSource | None = None
    why_not: str | None = None
    #: feature rows at each previous as-of (computed from *source* when not given)
    then: pd.DataFrame | None = None
    #: the batch's largest movements so far (lead_id, movement, points), at most ``keep``
    top: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=[O.lead_id, "movement", "points"]))
    keep: int = 10
    #: per lead scored so far, in order: the sum of its integer movements, and whether they are exact
    moved: list[np.ndarray] = field(default_factory=list)
    exact: list[np.ndarray] = field(default_factory=list)
    #: the scores as :meth:`recheck` last returned them (``None``: the batch stood as scored)
    rechecked: pd.DataFrame | None = None

    def __post_init__(self) -> None:
        if self.why_not is None and self.then is None and not isinstance(self.source, CRMData):
            self.why_not = FLAT_WHY
        self.previous = previous_scores(self.previous_rows, self.as_of)
        if self.then is None and self.why_not is None and len(self.previous):
            # feature rows at each previous as-of, computed once for the run (one feature query)
            assert isinstance(self.source, CRMData)
            self.then = previous_features(self.source, self.model, self.previous, self.config)
        self._index()

    def _index(self) -> None:
        """The positions of the previous rows and of their feature rows by lead, for each
        chunk's lookup (indexes of the ids built once, not re-indexed copies of the wide
        frames; the text columns as NumPy objects, so that a chunk's lookups copy no column)."""
        self.previous = self.previous.reset_index(drop=True).astype({PREVIOUS_MODEL_VERSION: object})
        self._prev_ids = pd.Index(self.previous[O.lead_id].astype(str).to_numpy(dtype=object))
        then = self.then
        self._then_ids = pd.Index([] if then is None else then[O.lead_id].astype(str).to_numpy(dtype=object))

    # scoring ------------------------------------------------------------------------------

    def chunk(self, features: pd.DataFrame, scored: pd.DataFrame, points: Points | None) -> pd.DataFrame:
        """*scored* (a chunk of :func:`~convert.scoring.score.score_frame`) with its change columns."""
        if self.why_not is not None or points is None:
            changed = without_movements(scored, self.previous, self.config, self.why_not or SPARK_WHY)
            self._tally(np.zeros(len(scored), dtype="int64"), np.zeros(len(scored), dtype=bool))
        else:
            then = _no_rows(features) if self.then is None else self.then
            changes = compare(self.model, features, self.previous, then, self.config.scoring, self.model_version,
                              now_points=points, indexes=(self._prev_ids, self._then_ids))
            changed = changes.frame.drop(columns=[O.lead_id])
            self._tally(changes.movements.sum(axis=1), changes.exact)
            top = changes.top_movements(self.keep)
            if len(top):
                catalog = self.model.catalog_
                top["movement"] = [catalog[m].description if m in catalog else m for m in top["movement"]]
                both = pd.concat([self.top, top], ignore_index=True) if len(self.top) else top
                order = np.lexsort((both[O.lead_id].astype(str).to_numpy(), -np.abs(both["points"].to_numpy(dtype="int64"))))
                self.top = both.iloc[order[: self.keep]].reset_index(drop=True)
        return pd.concat([scored.reset_index(drop=True), changed.reset_index(drop=True)], axis=1)

    def _tally(self, moved: np.ndarray, exact: np.ndarray) -> None:
        self.moved.append(np.asarray(moved, dtype="int64"))
        self.exact.append(np.asarray(exact, dtype=bool))

    def movement_sums(self) -> tuple[np.ndarray, np.ndarray]:
        """Per lead scored (in order): the sum of its movements and whether they are exact."""
        if not self.moved:
            return np.zeros(0, dtype="int64"), np.zeros(0, dtype=bool)
        return np.concatenate(self.moved), np.concatenate(self.exact)

    # under the write-back's lock ----------------------------------------------------------

    def recheck(self, scores: pd.DataFrame, rows: pd.DataFrame) -> pd.DataFrame | None:
        """*scores* with the changes of the leads whose previous row differs in *rows* (read
        under the lock) from the one they were scored against; ``None`` when none differs."""
        ids = pd.Index(scores[O.lead_id].astype(str))
        new = previous_scores(rows, self.as_of)
        old, fresh = (p[p[O.lead_id].isin(ids)] for p in (self.previous, new))
        both = old.merge(fresh, how="outer", on=list(PREVIOUS_COLUMNS), indicator=True)
        differ = pd.unique(both.loc[both["_merge"] != "both", O.lead_id].astype(str))
        if not len(differ):
            return None
        out = scores.copy()
        at = ids.get_indexer(differ)
        moved, exact = self.movement_sums()
        if self.why_not is not None:
            part = without_movements(scores.iloc[at], new, self.config, self.why_not)
        else:
            assert isinstance(self.source, CRMData)
            now = feature_rows(self.source, self.model, self.as_of, self.config, lead_ids=list(differ))
            prev = new[new[O.lead_id].isin(differ)]
            then = previous_features(self.source, self.model, prev, self.config) if len(prev) else _no_rows(now)
            changes = compare(self.model, now, prev, then, self.config.scoring, self.model_version,
                              now_points=points_of(self.model, now, self.config.scoring.num_threads))
            order = pd.Index(changes.frame[O.lead_id].astype(str)).get_indexer(differ)
            part = changes.frame.iloc[order].reset_index(drop=True)
            if len(moved) == len(scores):
                moved[at], exact[at] = changes.movements.sum(axis=1)[order], changes.exact[order]
        for column in C.names():
            values = np.array(out[column].astype(object).to_numpy(), dtype=object)
            values[at] = part[column].astype(object).to_numpy()
            out[column] = values
        self.previous = pd.concat([self.previous[~self.previous[O.lead_id].isin(differ)],
                                   new[new[O.lead_id].isin(differ)]], ignore_index=True)
        self._index()
        self.moved, self.exact = [moved], [exact]
        self.rechecked = out
        return out


def _no_rows(like: pd.DataFrame) -> pd.DataFrame:
    return like.iloc[:0]


def without_movements(scored: pd.DataFrame, previous: pd.DataFrame, config: Config, why: str) -> pd.DataFrame:
    """The change columns of *scored* where no movement can be computed (a flat table, Spark):
    the previous score, its as-of, the change and its trend, exact; ``change_1`` says why
    it is not split by factor (when the score changed); ``events_seen`` empty."""
    n = len(scored)
    prev = previous.set_index(previous[O.lead_id].astype(str))
    ids = scored[O.lead_id].astype(str).to_numpy()
    at = prev.index.get_indexer(ids)
    has = at >= 0
    pj = np.maximum(at, 0)
    before = np.where(has, prev[PREVIOUS_SCORE].to_numpy(dtype="int64")[pj] if len(prev) else 0, 0)
    score = scored[O.score].to_numpy(dtype="int64")
    change = score - before
    trends = np.full(n, TREND_NEW, dtype=object)
    trends[has] = trend(change[has], config.scoring.trend_min_change)
    nat = np.datetime64("NaT", "us")
    when = pd.to_datetime(prev[PREVIOUS_AS_OF]).to_numpy().astype("datetime64[us]")[pj] if len(prev) else np.full(n, nat)
    said = np.full(n, None, dtype=object)
    moved = has & (change != 0)
    said[moved] = (pd.Series(before[moved]).astype(str) + " \u2192 " + pd.Series(score[moved]).astype(str)
                   + ": " + why).to_numpy(dtype=object)
    frame = pd.DataFrame(
        {
            C.previous_score: pd.array(np.where(has, before, 0), dtype="Int64"),
            C.previous_as_of: pd.DatetimeIndex(np.where(has, when, nat)),
            C.score_change: pd.array(change, dtype="Int64"),
            C.trend: trends,
            C.change_1: said,
            C.change_2: np.full(n, None, dtype=object),
            C.change_3: np.full(n, None, dtype=object),
            C.events_seen: pd.array([pd.NA] * n, dtype="Int64"),
        }
    )
    frame.loc[~has, [C.previous_score, C.score_change]] = pd.NA
    return frame
