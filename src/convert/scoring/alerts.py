"""Grade and routing alerts: the leads whose score crossed a line sales acts on since their previous score.

Issue 17's alerts, computed from a scored batch that carries the
:class:`~convert.schema.ScoreChanges` columns (the score step's output). A lead alerts when,
between its previous score and today's:

* it **moved into the top two grades** of ``scoring.grade_cutoffs`` (``A``/``B`` by
  default), from a lower grade;
* its score **crossed** ``scoring.route_to_sales_min_score`` **upward** (sales should call);
* its score **dropped below** that line (it leaves sales' list).

A lead without a previous score (``trend = new``) never alerts. A lead whose change cannot
be explained (``trend = unknown``) still alerts on the line it crossed: its previous score
is known, only its movements are not. The alert rows (:class:`AlertOutput`) are what
``score --alerts`` writes, replaced on each run (no shrink guard: alerts churn by nature).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd

from convert.config import ScoringConfig
from convert.model.bundle import grade_from_score
from convert.schema import Column, TableSchema
from convert.schema import ScoreChanges as C
from convert.schema import ScoreOutput as O

#: Alert kinds, in the order they are said (a lead may raise several).
TOP_GRADES, ROUTED, DROPPED = "entered_top_grades", "crossed_route_to_sales", "dropped_below_route_to_sales"
KINDS = (TOP_GRADES, ROUTED, DROPPED)


class AlertOutput(TableSchema):
    """What ``convert-leads score --alerts`` writes: one row per alerting lead."""

    table = "lead_score_alerts"
    key = ("lead_id",)
    lead_id = Column("lead_id", "string", nullable=False)
    as_of = Column("as_of", "timestamp", nullable=False)
    alert = Column("alert", nullable=False)
    score = Column("score", "integer", nullable=False)
    previous_score = Column("previous_score", "integer", nullable=False)
    score_change = Column("score_change", "integer", nullable=False)
    grade = Column("grade", nullable=False)
    previous_grade = Column("previous_grade", nullable=False)
    previous_as_of = Column("previous_as_of", "timestamp", nullable=False)
    trend = Column("trend", nullable=False)
    change_1 = Column("change_1")
    change_2 = Column("change_2")
    change_3 = Column("change_3")
    action = Column("action", nullable=False)
    model_version = Column("model_version", nullable=False)
    scored_at = Column("scored_at", "timestamp", nullable=False)

    HISTORY_KEY: ClassVar[tuple[str, ...]] = ("lead_id", "as_of", "model_version")
    #: replaced on each run: the shrink guard does not apply (the lock and the other guards do)
    SHRINK_GUARD: ClassVar[bool] = False


@dataclass
class Alerts:
    """The alerting leads (:class:`AlertOutput` rows, largest |score_change| first), how many
    leads raised each kind, and the batch's largest movements (lead, movement, points)."""

    frame: pd.DataFrame
    counts: dict[str, int]
    top_movements: pd.DataFrame

    def lines(self, route_min: int, top_grades: tuple[str, ...]) -> list[str]:
        """What ``score`` prints: the counts, then the ten largest movements."""
        c = self.counts
        out = [
            f"since their previous score: {c[TOP_GRADES]:,} leads moved into grade {' or '.join(top_grades)}, "
            f"{c[ROUTED]:,} crossed route_to_sales_min_score ({route_min}) upward, "
            f"{c[DROPPED]:,} dropped below it"
        ]
        if len(self.top_movements):
            out.append(f"the {len(self.top_movements)} largest movements:")
            for r in self.top_movements.itertuples(index=False):
                out.append(f"  {r.lead_id:>12}  {int(r.points):+4d}  {r.movement}")
        return out


def top_grades(config: ScoringConfig) -> tuple[str, ...]:
    """The two best grades of ``scoring.grade_cutoffs`` (best first)."""
    return tuple(list(config.grade_cutoffs)[:2])


def alerts_of(scores: pd.DataFrame, config: ScoringConfig, top_movements: pd.DataFrame | None = None) -> Alerts:
    """The alerts of a scored batch with its change columns (see the module docs)."""
    prev = pd.to_numeric(scores[C.previous_score]).astype("Float64")
    has = prev.notna().to_numpy()
    score = scores[O.score].to_numpy(dtype="int64")
    before = np.where(has, prev.fillna(0).to_numpy(dtype="float64"), 0).astype("int64")
    cutoffs = config.grade_cutoffs
    best = top_grades(config)
    grade_now = grade_from_score(score, cutoffs)
    grade_then = grade_from_score(before, cutoffs)
    line = config.route_to_sales_min_score
    kinds = {
        TOP_GRADES: has & np.isin(grade_now, best) & ~np.isin(grade_then, best),
        ROUTED: has & (before < line) & (score >= line),
        DROPPED: has & (before >= line) & (score < line),
    }
    any_alert = np.zeros(len(scores), dtype=bool)
    said = np.full(len(scores), "", dtype=object)
    for kind, hit in kinds.items():
        said[hit] = np.where(said[hit] == "", kind, said[hit] + ", " + kind)
        any_alert |= hit
    rows = scores.loc[any_alert]
    frame = pd.DataFrame(
        {
            AlertOutput.lead_id: rows[O.lead_id].to_numpy(),
            AlertOutput.as_of: rows[O.as_of].to_numpy(),
            AlertOutput.alert: said[any_alert],
            AlertOutput.score: score[any_alert],
            AlertOutput.previous_score: before[any_alert],
            AlertOutput.score_change: score[any_alert] - before[any_alert],
            AlertOutput.grade: grade_now[any_alert],
            AlertOutput.previous_grade: grade_then[any_alert],
            AlertOutput.previous_as_of: rows[C.previous_as_of].to_numpy(),
            AlertOutput.trend: rows[C.trend].to_numpy(),
            **{c: rows[c].to_numpy() for c in C.CHANGES},
            AlertOutput.action: rows[O.action].to_numpy(),
            AlertOutput.model_version: rows[O.model_version].to_numpy(),
            AlertOutput.scored_at: rows[O.scored_at].to_numpy(),
        }
    )
    order = np.lexsort((frame[AlertOutput.lead_id].to_numpy(), -np.abs(frame[AlertOutput.score_change].to_numpy())))
    frame = frame.iloc[order].reset_index(drop=True)[AlertOutput.names()]
    counts = {kind: int(hit.sum()) for kind, hit in kinds.items()}
    movements = top_movements if top_movements is not None else pd.DataFrame(columns=["lead_id", "movement", "points"])
    return Alerts(frame, counts, movements.reset_index(drop=True))
