"""Reasons: the strongest contributions per lead, as sentences, chosen exactly."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert.features.catalog import Catalog, FeatureDef
from convert.model.explain import Points, reasons


def _reference(points: Points, values: pd.DataFrame, catalog: Catalog, names: list[str], top: int):
    """By integer points, then unrounded points, then catalog order: a plain sort per row."""
    pos, neg = [], []
    for i in range(points.points.shape[0]):
        row, cont = points.points[i], points.continuous[i]
        cols = range(len(names))
        p_order = sorted(cols, key=lambda j: (-row[j], -cont[j], j))[:top]
        n_order = sorted(cols, key=lambda j: (row[j], cont[j], j))[:top]
        pos.append([catalog[names[j]].sentence(values[names[j]].iloc[i], int(row[j])) if row[j] > 0 else None
                    for j in p_order] + [None] * (top - len(p_order)))
        neg.append([catalog[names[j]].sentence(values[names[j]].iloc[i], int(row[j])) if row[j] < 0 else None
                    for j in n_order] + [None] * (top - len(n_order)))
    return pos, neg


@pytest.mark.parametrize("n_features,top", [(12, 3), (3, 3), (2, 4)])
def test_reasons_match_a_full_sort_with_ties_and_missing_values(n_features: int, top: int) -> None:
    rng = np.random.default_rng(7)
    n = 400
    names = [f"f{j}" for j in range(n_features)]
    catalog = Catalog(
        FeatureDef(name, "engagement", "engagement", "numeric", "count", name, f"{name} was {{value}}",
                   f"{name} was zero", f"{name} unknown")
        for name in names
    )
    # coarse continuous points so that many tie exactly; integers rounded down or up at
    # random, as sum-preserving rounding does
    continuous = rng.integers(-12, 13, size=(n, n_features)) / 4.0
    integer = np.where(rng.random((n, n_features)) < 0.5, np.floor(continuous), np.ceil(continuous)).astype(int)
    pts = Points(score=np.zeros(n, dtype=int), base_score=0, points=integer, continuous=continuous)
    raw = rng.integers(0, 4, size=(n, n_features)).astype(float)
    raw[rng.random((n, n_features)) < 0.2] = np.nan
    values = pd.DataFrame(raw, columns=names)
    got = reasons(pts, values, catalog, names, top=top)
    assert got == _reference(pts, values, catalog, names, top)
    assert any(s is not None and "unknown" in s for row in got[0] for s in row)


# --- the vectorised reasons, points and rounding against the per-lead implementation they replaced ---


def _per_lead_reasons(points: Points, values: pd.DataFrame, catalog: Catalog, names: list[str], top: int):
    """The per-lead implementation ``reasons`` had before it was vectorised (kept here only as the
    reference): top columns by the same key, one sentence per chosen cell, cached per (feature, value)."""
    key = points.points + np.clip(points.continuous - points.points, -0.999, 0.999) * 1e-3
    n_rows, n_features = key.shape
    k = min(top, n_features)
    pos_order = np.argsort(-key, axis=1, kind="stable")[:, :k]
    neg_order = np.argsort(key, axis=1, kind="stable")[:, :k]
    defs = [catalog[n] for n in names]
    columns = [values[n].to_numpy(dtype=object) for n in names]
    described: dict[tuple[int, object], str] = {}

    def sentence(i: int, j: int, pts: int) -> str:
        value = columns[j][i]
        if isinstance(value, float) and value != value:
            value = None
        try:
            text = described.get((j, value))
        except TypeError:
            return f"{pts:+d} {defs[j].describe(value)}"
        if text is None:
            text = described[(j, value)] = defs[j].describe(value)
        return f"{pts:+d} {text}"

    ints = points.points
    pos_out, neg_out = [], []
    for i in range(n_rows):
        row_pts = ints[i]
        pos_out.append([sentence(i, j, int(row_pts[j])) if row_pts[j] > 0 else None for j in pos_order[i]]
                       + [None] * (top - k))
        neg_out.append([sentence(i, j, int(row_pts[j])) if row_pts[j] < 0 else None for j in neg_order[i]]
                       + [None] * (top - k))
    return pos_out, neg_out


def _per_row_rounding(values: np.ndarray, targets: np.ndarray) -> np.ndarray:
    """The largest-remainder rounding before it was vectorised: a full stable argsort per row."""
    values = np.asarray(values, dtype="float64")
    floors = np.floor(values)
    rem = values - floors
    k = np.asarray(targets, dtype="int64") - floors.sum(axis=1).astype("int64")
    n, p = values.shape
    out = floors.astype("int64")
    order = np.argsort(-rem, axis=1, kind="stable")
    ranks = np.empty_like(order)
    ranks[np.arange(n)[:, None], order] = np.arange(p)[None, :]
    out += (ranks < np.clip(k, 0, p)[:, None]).astype("int64")
    for i in np.flatnonzero(k < 0):
        need = -int(k[i])
        eligible = np.flatnonzero((values[i] < 0) | (out[i] >= 1))
        if eligible.size == 0:
            eligible = np.arange(p)
        pick = eligible[np.argsort(rem[i, eligible], kind="stable")]
        for j in range(need):
            out[i, pick[j % pick.size]] -= 1
    for i in np.flatnonzero(k > p):
        for j in range(int(k[i]) - p):
            out[i, order[i, j % p]] += 1
    return out


def _per_row_points(raw, phi, base_raw, score_fn) -> Points:
    """``to_points`` before: the central difference evaluated for every row, the rounding per row."""
    s_raw = score_fn(raw)
    s_base = float(score_fn(np.array([base_raw]))[0])
    delta = raw - base_raw
    safe = np.abs(delta) > 1e-9
    h = 1e-4
    slope = np.where(safe, (s_raw - s_base) / np.where(safe, delta, 1.0),
                     (score_fn(raw + h) - score_fn(raw - h)) / (2 * h))
    continuous = phi * slope[:, None]
    score = np.floor(s_raw + 0.5).astype("int64")
    base_score = int(np.floor(s_base + 0.5))
    return Points(score, base_score, _per_row_rounding(continuous, score - base_score), continuous)


def _mixed_features(rng: np.random.Generator, n: int) -> tuple[Catalog, pd.DataFrame]:
    """Every kind of feature a catalog holds, with missing values, zeros, halves, negatives,
    huge and tiny numbers, text from the data (braces, ``$``, ``%``, underscores)."""
    def pick(options, size=n):
        return np.asarray(options, dtype=object)[rng.integers(0, len(options), size)]

    counts = rng.poisson(1.5, n).astype(float)
    counts[rng.random(n) < 0.1] = np.nan
    days = np.round(rng.exponential(40, n), 2)
    days[rng.random(n) < 0.3] = np.nan
    days[rng.random(n) < 0.05] = 0.5  # half-way: rounds to even
    days[rng.random(n) < 0.05] = 2.5
    ratio = rng.choice([0.0, -0.0, 0.005, 0.015, 0.125, 1 / 3, 0.999, 1.0, -0.004, np.nan], n)
    money = rng.choice([0.0, -0.0, -0.3, 999.49, 999.5, 1234.5, 15e6, 2.5e9, -7e3, np.nan], n) * rng.choice([1, 1, 1.0001], n)
    other = rng.choice([0.0, 3.0, -2.0, 1.005, 2.675, 1e7 + 0.125, np.nan], n)
    trend = rng.normal(0, 2, n)
    frame = pd.DataFrame({
        "n_web_visit_30d": counts,                                  # count, zero template
        "days_since_email_open": days,                              # days, missing template
        "email_ctr": ratio,                                         # ratio
        "annual_revenue": money,                                    # currency
        "score_x": other,                                           # another unit
        "trend_30d": trend,                                         # no zero template, continuous
        "employees": rng.integers(0, 20_000, n),                    # int64 column
        "is_partner": rng.random(n) < 0.3,                          # bool column
        "industry": pick(["software", "real_estate", None, "Paid $5 {x}", "50% off"]),  # categorical
        "stage": pd.Categorical(pick(["new", "mql", "sql"])),       # categorical dtype
        "x_mixed": pick([1, 1.0, "1", None, float("nan"), "a_b"]),  # object column, equal keys of two types
        "x_code": rng.choice([1.0, 2.0, -0.0, 0.0, np.nan], n),     # categorical kind in a float column
    })
    F = FeatureDef
    catalog = Catalog([
        F("n_web_visit_30d", "engagement", "events", "numeric", "count", "Web visits",
          "Visited the website {value} times in the last 30 days", "No web visit in 30 days"),
        F("days_since_email_open", "engagement", "recency", "numeric", "days", "Days since open",
          "Opened an email {value} days ago", None, "Never opened an email"),
        F("email_ctr", "engagement", "ratios", "numeric", "ratio", "Click rate", "Clicks {value} of emails {{sic}}"),
        F("annual_revenue", "fit", "firm", "numeric", "currency", "Revenue", "Revenue of {value} {owner.name}"),
        F("score_x", "fit", "firm", "numeric", "points", "X", "X is {value}", "X is nil"),
        F("trend_30d", "engagement", "trend", "numeric", "events/day", "Trend", "Trend {value} per day"),
        F("employees", "fit", "firm", "numeric", "employees", "Employees", "Has {value} employees", "No staff"),
        F("is_partner", "fit", "firm", "numeric", "flag", "Partner", "Partner flag {value}", "Not a partner"),
        F("industry", "fit", "firm", "categorical", "category", "Industry", "Works in {value}"),
        F("stage", "engagement", "lifecycle", "categorical", "category", "Stage", "In stage {value}", None, "No stage"),
        F("x_mixed", "fit", "extra", "categorical", "category", "Mixed", "Mixed is {value}"),
        F("x_code", "fit", "extra", "categorical", "category", "Code", "Code {value}"),
    ])
    return catalog, frame


@pytest.mark.parametrize("seed,top", [(0, 3), (1, 3), (2, 5), (3, 1), (4, 14), (5, 0)])
def test_vectorised_reasons_and_points_equal_the_per_lead_implementation(seed: int, top: int) -> None:
    from convert.model.explain import reason_columns, round_preserving_sum, to_points

    rng = np.random.default_rng(seed)
    n = 3000
    catalog, values = _mixed_features(rng, n)
    names = list(catalog.names)
    p = len(names)
    # raw-score contributions: exact zeros, ties, both signs, a few leads at the base score
    phi = rng.choice([0.0, 0.0, 0.25, -0.25, 0.5], (n, p)) * rng.choice([1.0, 1.0, 3.0], (n, p)) + \
        np.where(rng.random((n, p)) < 0.5, rng.normal(0, 0.4, (n, p)), 0.0)
    phi[:20] = 0.0
    base_raw = -2.0
    raw = base_raw + phi.sum(axis=1)

    def score_fn(r: np.ndarray) -> np.ndarray:
        return 100.0 / (1.0 + np.exp(-np.asarray(r, dtype="float64")))

    got, want = to_points(raw, phi, base_raw, score_fn), _per_row_points(raw, phi, base_raw, score_fn)
    np.testing.assert_array_equal(got.continuous, want.continuous)
    np.testing.assert_array_equal(got.score, want.score)
    assert got.base_score == want.base_score
    np.testing.assert_array_equal(got.points, want.points)
    assert (got.points != 0).any(axis=1).sum() > n // 2

    pos, neg = reason_columns(got, values, catalog, names, top)
    assert pos.shape == neg.shape == (n, top)
    assert (pos.tolist(), neg.tolist()) == _per_lead_reasons(want, values, catalog, names, top)
    assert reasons(got, values, catalog, names, top) == _per_lead_reasons(want, values, catalog, names, top)
    if top:
        shown = {s for s in pos.ravel().tolist() + neg.ravel().tolist() if s}
        assert any("Never opened an email" in s for s in shown) and any("{owner.name}" in s for s in shown)

    # the rounding alone, with rows short of and over their target, ties in the remainders
    values_r = rng.choice([0.0, 0.5, -0.5, 1.25, -1.75, 0.999, 2.0], (500, 7)) + rng.choice([0.0, 0.25], (500, 7))
    targets = np.round(values_r.sum(axis=1)).astype("int64") + rng.integers(-3, 4, 500)
    targets[:5] += 20  # more units than entries
    np.testing.assert_array_equal(round_preserving_sum(values_r, targets), _per_row_rounding(values_r, targets))
