"""Batch scoring: the population at an as-of time, scored, graded, explained and actioned.

Features are computed once into DuckDB and streamed in chunks (``scoring.chunk_size``
rows), so memory stays bounded however many leads are open. Each chunk goes through the
model's feature-spec check (names, kinds, training categories), the booster, the
calibrator and the explanation engine, and comes out as rows of
:class:`~convert.schema.ScoreOutput`.
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator

import numpy as np
import pandas as pd

from convert.config import Config, ScoringConfig
from convert.features.labels import parse_as_of
from convert.model.bundle import LeadScoringModel
from convert.model.explain import (
    Points,
    contributions,
    family_points,
    model_score_fn,
    reason_columns,
    to_points,
)
from convert.schema import ScoreOutput as O
from convert.sources.base import LeadSource

ROUTE, NURTURE, REVIEW = "route_to_sales", "nurture", "review_disqualify"

#: What :func:`iter_scores` may do to each scored chunk before yielding it: given the chunk's
#: feature rows, its scores and its points, the frame to yield (the score step adds the
#: changes since each lead's previous score: :meth:`convert.scoring.movements.RunChanges.chunk`).
ChunkHook = Callable[[pd.DataFrame, pd.DataFrame, Points], pd.DataFrame]


def actions(score: np.ndarray, idle_days: np.ndarray, config: ScoringConfig) -> np.ndarray:
    """What sales should do: route hot leads, review cold idle ones, nurture the rest.

    *idle_days* is the days since the last interaction, or the lead's age when it never
    interacted.
    """
    out = np.full(len(score), NURTURE, dtype=object)
    out[score >= config.route_to_sales_min_score] = ROUTE
    review = (score <= config.review_disqualify_max_score) & (idle_days >= config.review_disqualify_min_idle_days)
    out[review & (score < config.route_to_sales_min_score)] = REVIEW
    return out


def score_frame(
    model: LeadScoringModel,
    features: pd.DataFrame,
    config: ScoringConfig,
    model_version: str,
    scored_at: pd.Timestamp,
    points: list[Points] | None = None,
) -> pd.DataFrame:
    """Score and explain one batch of feature rows (``lead_id``, ``as_of`` + features).

    *points*, when given, receives the batch's :class:`~convert.model.explain.Points`, so
    that score movements (:mod:`convert.scoring.changes`) reuse them instead of recomputing.
    """
    names = model.spec_.names
    matrix = model.matrix(features)
    phi = contributions(model, matrix, config.num_threads)
    raw = phi.sum(axis=1)
    pts = to_points(raw, phi[:, :-1], model.base_raw_, model_score_fn(model))
    if points is not None:
        points.append(pts)
    prob = model.probability_from_raw(raw)
    fams = family_points(pts.points, model.catalog_, names)
    pos, neg = reason_columns(pts, features, model.catalog_, names, top=config.reasons)
    idle = _idle_days(features)
    out = pd.DataFrame(
        {
            O.lead_id: features[O.lead_id].astype(str).to_numpy(),
            O.as_of: pd.to_datetime(features[O.as_of]).to_numpy(),
            O.probability: prob,
            O.score: pts.score,
            O.grade: model.grades(pts.score),
            O.base_score: np.full(len(features), pts.base_score, dtype="int64"),
            O.fit_points: fams["fit"],
            O.engagement_points: fams["engagement"],
        }
    )
    for cols, sentences in ((O.REASONS, pos), (O.RISKS, neg)):
        for i, col in enumerate(cols):
            out[col] = sentences[:, i] if i < sentences.shape[1] else np.full(len(out), None, dtype=object)
    out[O.action] = actions(pts.score, idle, config)
    out[O.model_version] = model_version
    out[O.scored_at] = scored_at
    return out[O.names()]


def _idle_days(features: pd.DataFrame) -> np.ndarray:
    """Days since the last interaction, else the lead's age; unknown (NaN: never reviewed for
    disqualification) for rows without timestamps (flat tables)."""
    if "days_since_last_touch" in features and "lead_age_days" in features:
        return features["days_since_last_touch"].fillna(features["lead_age_days"]).to_numpy(dtype="float64")
    return np.full(len(features), np.nan)


def iter_scores(
    data: LeadSource,
    model: LeadScoringModel,
    as_of: pd.Timestamp,
    config: Config,
    model_version: str,
    scored_at: pd.Timestamp | None = None,
    progress: bool = False,
    on_chunk: ChunkHook | None = None,
) -> Iterator[pd.DataFrame]:
    """Score the source's population at *as_of* chunk by chunk (a CRM export: the leads open
    then; a flat table: every row); *on_chunk* turns each scored chunk into what is yielded."""
    scored_at = scored_at if scored_at is not None else pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    total, batches = data.scoring_batches(as_of, model.features_config(config.features), model.spec_.event_types,
                                          model.metadata, config.scoring.chunk_size)
    bar = _progress(total, enabled=progress)
    try:
        for batch in batches:
            points: list[Points] = []
            scored = score_frame(model, batch, config.scoring, model_version, scored_at, points=points)
            yield scored if on_chunk is None else on_chunk(batch, scored, points[0])
            bar.update(len(batch))
    finally:
        bar.close()
        close = getattr(batches, "close", None)
        if close is not None:
            close()


def score(
    data: LeadSource,
    model: LeadScoringModel,
    as_of: str | pd.Timestamp,
    config: Config,
    model_version: str = "local/0",
    scored_at: pd.Timestamp | None = None,
    progress: bool = False,
) -> pd.DataFrame:
    """Score, grade, explain and action every lead open at *as_of* (``convert.scoring.score``).

    Public API: *as_of* may be ISO 8601 text, parsed here. Returns one row per lead with the
    :class:`~convert.schema.ScoreOutput` columns.
    """
    t = parse_as_of(as_of)
    assert t is not None
    chunks = list(iter_scores(data, model, t, config, model_version, scored_at, progress))
    if not chunks:
        return pd.DataFrame({c: pd.Series(dtype="object") for c in O.names()})
    return pd.concat(chunks, ignore_index=True)


def feature_rows(data: LeadSource, model: LeadScoringModel, as_of: pd.Timestamp, config: Config,
                 lead_ids: list[str] | None = None) -> pd.DataFrame:
    """Feature rows of the population at *as_of* (optionally only *lead_ids*), as the model sees them."""
    return data.scoring_rows(as_of, model.features_config(config.features), model.spec_.event_types,
                             model.metadata, lead_ids)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def close(self) -> None:
        pass


def _progress(total: int, enabled: bool):  # type: ignore[no-untyped-def]
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, unit="leads", file=sys.stderr, desc="scoring", mininterval=1.0)
