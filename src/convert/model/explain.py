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

import numpy as np
import pandas as pd

from convert.features.catalog import Catalog, FeatureDef
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
    largest remainders (ties to the lower column), or, when there is one too many, take it
    from an entry that stays on its side of zero. Vectorised: the k-th largest remainder
    of each row is found by one sort of the remainders' values, so no per-row argsort.
    """
    values = np.asarray(values, dtype="float64")
    floors = np.floor(values)
    rem = values - floors
    k = np.asarray(targets, dtype="int64") - floors.sum(axis=1).astype("int64")
    n, p = values.shape
    out = floors.astype("int64")
    k_pos = np.clip(k, 0, p)
    out += _largest(rem, k_pos)  # one unit to the k largest remainders of each row
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
        order = np.argsort(-rem[i], kind="stable")
        for j in range(extra):
            out[i, order[j % p]] += 1
    return out


def _largest(rem: np.ndarray, k: np.ndarray) -> np.ndarray:
    """Per row, True for the *k[i]* largest entries of *rem* (ties to the lower column).

    The first *k* of a stable sort by descending value: every entry above the row's k-th
    largest value, then the entries equal to it from the left until *k* are taken.
    """
    n, p = rem.shape
    some = np.flatnonzero(k > 0)
    if some.size == 0 or p == 0:
        return np.zeros((n, p), dtype=bool)
    every = some.size == n
    part = rem if every else rem[some]
    kk = k if every else k[some]
    kth = np.sort(part, axis=1)[np.arange(some.size), p - kk][:, None]
    take = part > kth
    tied = part == kth
    need = kk - take.sum(axis=1)
    # the leftmost *need* of the tied entries; a row whose ties are all needed (the usual
    # case: distinct remainders) takes them all without counting
    split = np.flatnonzero(tied.sum(axis=1) > need)
    take |= tied
    if split.size:
        ties = tied[split]
        take[split] &= ~ties | (np.cumsum(ties, axis=1) <= need[split, None])
    if every:
        return take
    out = np.zeros((n, p), dtype=bool)
    out[some] = take
    return out


@dataclass
class Points:
    """Score points of a batch of leads."""

    score: np.ndarray  # (n,) integer score
    base_score: int
    points: np.ndarray  # (n, p) integer points per feature
    continuous: np.ndarray  # (n, p) points before rounding


def score_slope(raw: np.ndarray, base_raw: float, score_fn: ScoreFn) -> tuple[np.ndarray, float, np.ndarray]:
    """``S(raw)``, ``S(base_raw)`` and each row's points per unit of raw score,
    ``(S(raw) - S(base_raw)) / (raw - base_raw)`` (the derivative where they meet): the
    factor :func:`to_points` multiplies contributions by. Apart so that a caller needing
    only unrounded points (the score movements) skips the rounding."""
    raw = np.asarray(raw, dtype="float64")
    s_raw = score_fn(raw)
    s_base = float(score_fn(np.array([base_raw]))[0])
    delta = raw - base_raw
    safe = np.abs(delta) > 1e-9
    slope = (s_raw - s_base) / np.where(safe, delta, 1.0)
    if not safe.all():  # the derivative where the raw score is the base's (score_fn is elementwise)
        h = 1e-4
        flat = raw[~safe]
        slope[~safe] = (score_fn(flat + h) - score_fn(flat - h)) / (2 * h)
    return s_raw, s_base, slope


def to_points(raw: np.ndarray, phi: np.ndarray, base_raw: float, score_fn: ScoreFn) -> Points:
    """Map raw-score contributions *phi* (n, p) to integer score points (see module doc)."""
    s_raw, s_base, slope = score_slope(raw, base_raw, score_fn)
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
    integer points is not a reason. Fewer than *top* leave ``None``. One list per lead;
    :func:`reason_columns` gives the same sentences as arrays, one column per slot.
    """
    pos, neg = reason_columns(points, values, catalog, names, top)
    return pos.tolist(), neg.tolist()


#: Units whose values are shown as a whole number (``FeatureDef.format_value``, ``FeatureDef.canonical``).
_WHOLE_UNITS = frozenset({"count", "days", "employees", "band"})
#: Keys no value takes (NaN bit patterns; NaN cells are keyed as missing).
_MISSING_KEY, _ZERO_KEY = np.int64(0x7FF8000000000001), np.int64(0x7FF8000000000002)


def reason_columns(
    points: Points,
    values: pd.DataFrame,
    catalog: Catalog,
    names: list[str],
    top: int = 3,
) -> tuple[np.ndarray, np.ndarray]:
    """:func:`reasons` as two object arrays of shape (n, *top*): positive and negative sentences.

    Built per feature, never per lead: the cells chosen for a reason are grouped by
    feature, the feature's sentence is rendered once per distinct shown value (values that
    print alike, such as counts that round to the same number, share one rendering) and
    once per distinct (sentence, points) pair, and the results are scattered back.
    """
    # integer points first, the unrounded points break ties: sum-preserving rounding keeps
    # each integer within one of its unrounded value, so the scaled difference cannot
    # reorder different integers
    ints = points.points
    key = points.continuous - ints  # in place: ints + clip(continuous - ints) * 1e-3, one array
    np.clip(key, -0.999, 0.999, out=key)
    key *= 1e-3
    key += ints
    n_rows, n_features = key.shape
    width = max(top, 0)
    k = min(width, n_features)
    cells = np.full(2 * n_rows * width, None, dtype=object)  # positive slots, then negative
    if n_rows == 0 or k == 0:
        return cells[: n_rows * width].reshape(n_rows, width), cells[n_rows * width :].reshape(n_rows, width)
    feats, rows, pts, dest = [], [], [], []
    for order, positive, offset in ((_top_columns(key, k, largest=True), True, 0),
                                   (_top_columns(key, k), False, n_rows * width)):
        chosen_pts = np.take_along_axis(ints, order, axis=1)
        row, slot = np.nonzero(chosen_pts > 0 if positive else chosen_pts < 0)
        feats.append(order[row, slot])
        rows.append(row)
        pts.append(chosen_pts[row, slot])
        dest.append(offset + row * width + slot)
    feat = np.concatenate(feats)
    row = np.concatenate(rows)
    pt = np.concatenate(pts).astype("int64")
    target = np.concatenate(dest)
    by_feature = np.argsort(feat, kind="stable")
    counts = np.bincount(feat, minlength=n_features)
    ends = np.cumsum(counts)
    for j in np.flatnonzero(counts):
        idx = by_feature[ends[j] - counts[j] : ends[j]]
        cells[target[idx]] = _sentences(catalog[names[j]], values[names[j]], row[idx], pt[idx])
    return cells[: n_rows * width].reshape(n_rows, width), cells[n_rows * width :].reshape(n_rows, width)


def _sentences(feature: FeatureDef, column: pd.Series, rows: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """``FeatureDef.sentence(value, points)`` of the cells (*rows*, *pts*) of one feature,
    each distinct (text, points) pair rendered once."""
    codes, texts = _cell_texts(feature, column, rows)
    texts_codes, distinct = pd.factorize(np.asarray(texts, dtype=object))
    low = int(pts.min())
    span = int(pts.max()) - low + 1
    pairs, firsts = pd.factorize(texts_codes[codes].astype("int64") * span + (pts - low))
    rendered = np.array([f"{int(c % span) + low:+d} {distinct[c // span]}" for c in firsts.tolist()], dtype=object)
    return rendered[pairs]


def _cell_texts(feature: FeatureDef, column: pd.Series, rows: np.ndarray) -> tuple[np.ndarray, list[str]]:
    """``feature.describe(value)`` of the column's cells at *rows*: a code per cell and the texts.

    A numeric feature in a NumPy column is keyed by what its sentence shows (missing, zero,
    the whole number for whole units (:meth:`FeatureDef.canonical`), the rounded percentage for ratios, else the exact
    value), so each key's texts are equal and one cell renders it. Zero is one key whose
    text is the lowest row's (0.0 and -0.0 are equal values but print ``0%`` and ``-0%``):
    the text a cache keyed by value, filled lead by lead, keeps. Other columns are keyed by
    value, with the lowest row's value described, for the same reason; unhashable values
    are described cell by cell.
    """
    if feature.kind == "numeric" and isinstance(column.dtype, np.dtype) and column.dtype.kind in "fiub":
        raw = column.to_numpy()[rows]
        x = raw.astype("float64", copy=False)
        if feature.unit in _WHOLE_UNITS:
            # the whole number the sentence shows (days: a started day counts, 0.4 -> 1,
            # 1.4 -> 2; counts: rounded), so that values keyed alike describe alike
            shown = feature.canonical(x) + 0.0  # -0.0 prints as 0
        elif feature.unit == "ratio":
            shown = np.rint(x * 100.0)  # '{:.0%}' is '{:.0f}' of x * 100: its integer and sign
        else:
            shown = x.copy()
        zero = x == 0
        keys = np.where(np.isnan(x), _MISSING_KEY, np.where(zero, _ZERO_KEY, shown.view("int64")))
        codes, uniques = pd.factorize(keys)
        member = np.empty(len(uniques), dtype=np.intp)
        member[codes] = np.arange(len(codes))  # any cell of a key: they all print alike...
        if zero.any():  # ...but 0.0 and -0.0 (equal values, '0%' and '-0%'): the lowest row's
            zeros = np.flatnonzero(zero)
            first_zero = zeros[np.argmin(rows[zeros])]
            member[codes[first_zero]] = first_zero
        return codes, [feature.describe(v) for v in raw[member].tolist()]
    first = np.argsort(rows, kind="stable")
    cells = column.iloc[rows[first]].to_numpy(dtype=object)
    try:
        sorted_codes, uniques = pd.factorize(cells)
    except TypeError:  # unhashable values
        codes = np.empty(len(rows), dtype=np.intp)
        codes[first] = np.arange(len(rows))
        return codes, [feature.describe(v) for v in cells]
    _, lowest = np.unique(sorted_codes, return_index=True)  # ascending codes; -1 (missing) first
    described = [feature.describe(v) for v in cells[lowest[lowest.size - len(uniques):]]]
    described.append(feature.describe(None))  # code -1: missing (NaN, None, NA)
    codes = np.empty(len(rows), dtype=np.intp)
    codes[first] = sorted_codes
    return np.where(codes < 0, len(uniques), codes), described


def _top_columns(key: np.ndarray, k: int, largest: bool = False) -> np.ndarray:
    """Per row, the column indices of the *k* smallest keys (*largest*: the *k* largest) in
    order, ties to the lower index.

    The same as a stable full sort's first *k* (of ``key``, or of ``-key`` for *largest*),
    found by partitioning: only rows with a tie across the k-th place fall back to the full sort.
    """
    n, p = key.shape
    if k <= 0:
        return np.empty((n, 0), dtype=np.intp)
    if k >= p:
        return np.argsort(-key if largest else key, axis=1, kind="stable")
    if largest:
        kth = np.partition(key, p - k, axis=1)[:, p - k : p - k + 1]
        chosen = key >= kth
    else:
        kth = np.partition(key, k - 1, axis=1)[:, k - 1 : k]
        chosen = key <= kth
    exact = chosen.sum(axis=1) == k
    out = np.empty((n, k), dtype=np.intp)
    if exact.all():
        rows, cols = np.arange(n), np.nonzero(chosen)[1].reshape(n, k)  # ascending columns per row
    else:
        rows = np.flatnonzero(exact)
        cols = np.nonzero(chosen[rows])[1].reshape(-1, k)
    if rows.size:
        values = key[rows[:, None], cols]
        order = np.lexsort((cols, -values if largest else values), axis=1)
        out[rows] = np.take_along_axis(cols, order, axis=1)
    if rows.size < n:
        rest = ~exact
        out[rest] = np.argsort(-key[rest] if largest else key[rest], axis=1, kind="stable")[:, :k]
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
