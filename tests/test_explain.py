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
