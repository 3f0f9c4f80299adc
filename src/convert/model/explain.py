"""Explanations: per-feature contributions, score points that add up, and reasons in words.

Contributions ``phi_i`` are path-dependent TreeSHAP values on the model's raw (log-odds)
score, so ``sum(phi) = raw - base_raw`` exactly. A salesperson sees a 0-100 score, so
they are mapped to score points with ``S(r) = 100 * calibrate(r)``:

    points_i = phi_i * (S(raw) - S(base_raw)) / (raw - base_raw)

This is faithful: every feature keeps its sign and its share of the raw-score change,
and the points sum to ``S(raw) - S(base_raw)``, the distance between the lead's score and
the base score. ``S`` is strictly increasing (the calibrators interpolate), so a change
in raw score is never mapped to zero points. When ``raw == base_raw`` the ratio is
replaced by the slope ``S'(raw)``. Integer points come from a largest-remainder rounding
that hits ``score - base_score`` exactly and never turns a feature's sign around, so
``base_score + fit_points + engagement_points = score`` holds for every lead.

The waterfall figure of one lead's explanation is :func:`convert.analysis.plots.plot_waterfall`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from convert.features.catalog import Catalog
from convert.model.bundle import LeadScoringModel, predict_threads, score_from_probability

ScoreFn = Callable[[np.ndarray], np.ndarray]


def contributions(model: LeadScoringModel, matrix: pd.DataFrame, num_threads: int = 0) -> np.ndarray:
    """TreeSHAP contributions on the raw score, shape (n, p + 1), base value last.

    Uses the fast exact engine (:mod:`convert.model.treeshap`) when available and LightGBM's
    ``pred_contrib`` otherwise; both give the same numbers, whatever *num_threads*
    (0: every core, see :func:`convert.model.bundle.predict_threads`).
    """
    threads = predict_threads(num_threads)
    engine = _engine(model)
    if engine is not None:
        phi = np.asarray(engine.contributions(matrix, n_threads=threads), dtype="float64")
    else:
        phi = np.asarray(
            model.booster_.predict(matrix, pred_contrib=True, num_threads=threads), dtype="float64"
        )
    if model.linear_ is None:
        return phi
    # a log-odds blend: the weighted sum of both models' exact contributions (and base values)
    from convert.model.treeshap import lightgbm_matrix

    w = model.blend_weight_
    linear = model.linear_.contributions(lightgbm_matrix(matrix))
    return (1.0 - w) * phi + w * linear


def _engine(model: LeadScoringModel):  # type: ignore[no-untyped-def]
    cached = getattr(model, "_explainer", None)
    if cached is not None:
        return cached
    try:
        from convert.model.treeshap import TreeExplainerFast
    except ImportError:
        return None
    explainer = TreeExplainerFast(model.booster_)
    model._explainer = explainer  # type: ignore[attr-defined]
    return explainer


def round_preserving_sum(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """Integers per row that sum to *targets*, each within 1 of its value, signs kept.

    Largest-remainder method: floor everything, then give the missing units to the
    largest remainders (or, when there is one too many, take it from an entry that stays
    on its side of zero).
    """
    values = np.asarray(values, dtype="float64")
    floors = np.floor(values)
    rem = values - floors
    k = np.asarray(targets, dtype="int64") - floors.sum(axis=1).astype("int64")
    n, p = values.shape
    out = floors.astype("int64")
    # add one unit to the k largest remainders of each row
    order = np.argsort(-rem, axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(n)[:, None], order] = np.arange(p)[None, :]
    k_pos = np.clip(k, 0, p)
    out += (ranks < k_pos[:, None]).astype("int64")
    for i in np.flatnonzero(k < 0):  # rare: take units where the sign survives
        need = -int(k[i])
        eligible = np.flatnonzero((values[i] < 0) | (out[i] >= 1))
        if eligible.size == 0:
            eligible = np.arange(p)
        pick = eligible[np.argsort(rem[i, eligible], kind="stable")]
        for j in range(need):
            out[i, pick[j % pick.size]] -= 1
    for i in np.flatnonzero(k > p):  # degenerate: spread the rest evenly
        extra = int(k[i]) - p
        for j in range(extra):
            out[i, order[i, j % p]] += 1
    return out


@dataclass
class Points:
    """Score points of a batch of leads."""

    score: np.ndarray  # (n,) integer score
    base_score: int
    points: np.ndarray  # (n, p) integer points per feature
    continuous: np.ndarray  # (n, p) points before rounding


def to_points(raw: np.ndarray, phi: np.ndarray, base_raw: float, score_fn: ScoreFn) -> Points:
    """Map raw-score contributions *phi* (n, p) to integer score points (see module doc)."""
    raw = np.asarray(raw, dtype="float64")
    s_raw = score_fn(raw)
    s_base = float(score_fn(np.array([base_raw]))[0])
    delta = raw - base_raw
    safe = np.abs(delta) > 1e-9
    h = 1e-4
    slope = np.where(
        safe,
        (s_raw - s_base) / np.where(safe, delta, 1.0),
        (score_fn(raw + h) - score_fn(raw - h)) / (2 * h),
    )
    continuous = phi * slope[:, None]
    score = np.floor(s_raw + 0.5).astype("int64")
    base_score = int(np.floor(s_base + 0.5))
    points = round_preserving_sum(continuous, score - base_score)
    return Points(score=score, base_score=base_score, points=points, continuous=continuous)


def model_score_fn(model: LeadScoringModel) -> ScoreFn:
    """``S(raw) = 100 * calibrated probability`` of a model, unrounded."""
    return lambda raw: 100.0 * model.probability_from_raw(raw)


def point_contributions(model: LeadScoringModel, frame: pd.DataFrame) -> np.ndarray:
    """Unrounded score points of every feature for every row of *frame*, shape (n, p).

    The per-lead decomposition behind global importance, beeswarm and dependence plots:
    row sums are ``S(raw) - S(base_raw)`` (see the module doc).
    """
    phi = contributions(model, model.matrix(frame))
    return to_points(phi.sum(axis=1), phi[:, :-1], model.base_raw_, model_score_fn(model)).continuous


def importance_table(model: LeadScoringModel, points: np.ndarray, raw: np.ndarray | None = None) -> pd.DataFrame:
    """Mean |score points| per feature (most important first), with family and description."""
    names = model.spec_.names
    table = pd.DataFrame(
        {
            "feature": names,
            "family": model.catalog_.family_of(names),
            "mean_abs_points": np.abs(points).mean(axis=0),
            "description": [model.catalog_[n].description for n in names],
        }
    )
    if raw is not None:
        table.insert(3, "mean_abs_raw", np.abs(raw).mean(axis=0))
    return table.sort_values("mean_abs_points", ascending=False, kind="stable").reset_index(drop=True)


def family_importance(model: LeadScoringModel, points: np.ndarray) -> pd.DataFrame:
    """Per family (fit, engagement): mean |family points| per lead and the share of feature importance.

    ``mean_abs_points`` is the mean of |fit_points| (or |engagement_points|) as a lead's
    score shows them; ``share`` is the family's part of the summed per-feature mean |points|.
    """
    names = model.spec_.names
    fam = np.array(model.catalog_.family_of(names))
    per_feature = np.abs(points).mean(axis=0)
    total = per_feature.sum() or 1.0
    return pd.DataFrame(
        [
            {
                "family": f,
                "features": int((fam == f).sum()),
                "mean_abs_points": float(np.abs(points[:, fam == f].sum(axis=1)).mean()) if len(points) else 0.0,
                "share": float(per_feature[fam == f].sum() / total),
            }
            for f in ("fit", "engagement")
        ]
    )


def family_points(points: np.ndarray, catalog: Catalog, names: list[str]) -> dict[str, np.ndarray]:
    """Sum points per catalog family (``fit``, ``engagement``)."""
    fam = np.array(catalog.family_of(names))
    return {f: points[:, fam == f].sum(axis=1) for f in ("fit", "engagement")}


def reasons(
    points: Points,
    values: pd.DataFrame,
    catalog: Catalog,
    names: list[str],
    top: int = 3,
) -> tuple[list[list[str | None]], list[list[str | None]]]:
    """The strongest positive and negative contributions of each lead as sentences.

    Ties in integer points are broken by the unrounded points; a feature with zero
    integer points is not a reason. Fewer than *top* leave ``None``.
    """
    # integer points first, the unrounded points break ties: sum-preserving rounding keeps
    # each integer within one of its unrounded value, so the scaled difference cannot
    # reorder different integers
    key = points.points + np.clip(points.continuous - points.points, -0.999, 0.999) * 1e-3
    n_rows, n_features = key.shape
    k = min(top, n_features)
    pos_order = _top_columns(-key, k)
    neg_order = _top_columns(key, k)
    defs = [catalog[n] for n in names]
    columns = [values[n].to_numpy(dtype=object) for n in names]  # only the chosen cells are read
    described: dict[tuple[int, Any], str] = {}  # counts and categories repeat across leads

    def sentence(i: int, j: int, pts: int) -> str:
        value = columns[j][i]
        if isinstance(value, float) and value != value:
            value = None  # NaN: one cache entry, described as missing
        try:
            text = described.get((j, value))
        except TypeError:  # unhashable
            return f"{pts:+d} {defs[j].describe(value)}"
        if text is None:
            text = described[(j, value)] = defs[j].describe(value)
        return f"{pts:+d} {text}"

    ints = points.points
    pos_out: list[list[str | None]] = []
    neg_out: list[list[str | None]] = []
    for i in range(n_rows):
        row_pts = ints[i]
        pos_out.append([sentence(i, j, int(row_pts[j])) if row_pts[j] > 0 else None for j in pos_order[i]]
                       + [None] * (top - k))
        neg_out.append([sentence(i, j, int(row_pts[j])) if row_pts[j] < 0 else None for j in neg_order[i]]
                       + [None] * (top - k))
    return pos_out, neg_out


def _top_columns(key: np.ndarray, k: int) -> np.ndarray:
    """Per row, the column indices of the *k* smallest keys in order, ties to the lower index.

    The same as a stable full sort's first *k*, found by partitioning: only rows with a
    tie across the k-th place fall back to the full sort.
    """
    n, p = key.shape
    if k <= 0:
        return np.empty((n, 0), dtype=np.intp)
    if k >= p:
        return np.argsort(key, axis=1, kind="stable")
    kth = np.partition(key, k - 1, axis=1)[:, k - 1 : k]
    chosen = key <= kth
    exact = chosen.sum(axis=1) == k
    out = np.empty((n, k), dtype=np.intp)
    if exact.any():
        cols = np.nonzero(chosen[exact])[1].reshape(-1, k)  # ascending column order per row
        order = np.lexsort((cols, np.take_along_axis(key[exact], cols, axis=1)), axis=1)
        out[exact] = np.take_along_axis(cols, order, axis=1)
    if not exact.all():
        out[~exact] = np.argsort(key[~exact], axis=1, kind="stable")[:, :k]
    return out


@dataclass
class LeadExplanation:
    """One lead's explanation, feature by feature (for ``convert-leads explain``)."""

    lead_id: str
    probability: float
    score: int
    base_score: int
    table: pd.DataFrame  # feature, family, value, raw_contribution, points, sentence

    def lines(self) -> list[str]:
        fam = self.table.groupby("family")["points"].sum()
        out = [
            f"lead {self.lead_id}: score {self.score} (probability {self.probability:.3f}) = base "
            f"{self.base_score} + fit {int(fam.get('fit', 0)):+d} + engagement "
            f"{int(fam.get('engagement', 0)):+d}",
        ]
        shown = self.table[self.table["points"] != 0]
        out.append(shown[["points", "family", "feature", "sentence"]].to_string(index=False))
        return out


def explain_lead(model: LeadScoringModel, row: pd.DataFrame) -> LeadExplanation:
    """Every feature's contribution to one lead's score, sorted by absolute points."""
    matrix = model.matrix(row)
    phi = contributions(model, matrix)
    raw = phi.sum(axis=1)
    pts = to_points(raw, phi[:, :-1], float(phi[0, -1]), model_score_fn(model))
    names = model.spec_.names
    values = row[names].iloc[0]
    table = pd.DataFrame(
        {
            "feature": names,
            "family": model.catalog_.family_of(names),
            "value": [values[n] for n in names],
            "raw_contribution": phi[0, :-1],
            "points": pts.points[0],
            "sentence": [model.catalog_[n].sentence(values[n], int(p)) for n, p in zip(names, pts.points[0], strict=True)],
        }
    )
    table = table.reindex(table["points"].abs().add(table["raw_contribution"].abs() * 1e-6).sort_values(ascending=False).index)
    p = float(model.probability_from_raw(raw)[0])
    return LeadExplanation(
        lead_id=str(row.iloc[0].get("lead_id", "")),
        probability=p,
        score=int(score_from_probability(np.array([p]))[0]),
        base_score=pts.base_score,
        table=table.reset_index(drop=True),
    )
