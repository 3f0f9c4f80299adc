"""The report's tables: segments with counts, importance per family, escaped HTML."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert.analysis.report import table_html
from convert.model.explain import family_importance, importance_table, point_contributions
from convert.model.metrics import segment_table


def test_segment_table_pools_small_values_and_marks_uncertain_ones():
    rng = np.random.default_rng(3)
    n = 4_000
    seg = pd.Series(rng.choice(["a", "b", "c", "d", "e"], size=n, p=[0.5, 0.3, 0.1, 0.07, 0.03]), dtype=object)
    seg[:40] = None
    p = rng.uniform(0, 0.3, size=n)
    y = (rng.uniform(size=n) < p).astype(int)
    t = segment_table(y, p, seg, max_values=3, min_conversions=50)
    assert t["n"].sum() == n and t["conversions"].sum() == y.sum()
    assert set(t["value"]) == {"a", "b", "c", "(other)", "(missing)"}
    assert t["n"].is_monotonic_decreasing
    small = t.set_index("value").loc["(missing)"]
    assert bool(small["uncertain"]) and small["ci_low"] <= small["observed_rate"] <= small["ci_high"]
    assert not bool(t.set_index("value").loc["a", "uncertain"])


def test_importance_per_feature_and_family(trained):
    result, _ = trained
    model = result.model
    frame = result.training_set.frame.head(300)
    points = point_contributions(model, frame)
    assert points.shape == (300, len(model.spec_.names))
    # the points of a lead add up to its score minus the base score (unrounded)
    raw = model.predict_raw(frame)
    s = 100 * model.probability_from_raw(raw)
    base = 100 * model.probability_from_raw(np.array([model.base_raw_]))[0]
    np.testing.assert_allclose(points.sum(axis=1), s - base, atol=1e-6)
    table = importance_table(model, points)
    assert table["mean_abs_points"].is_monotonic_decreasing
    assert table["description"].str.len().min() > 0
    fams = family_importance(model, points)
    assert list(fams["family"]) == ["fit", "engagement"]
    assert fams["share"].sum() == pytest.approx(1.0)
    assert fams["features"].sum() == len(model.spec_.names)


def test_table_html_escapes_text():
    html = table_html(pd.DataFrame({"feature": ["<b>x</b>"], "psi": [0.123456]}), {"psi": ".3f"})
    assert "&lt;b&gt;x&lt;/b&gt;" in html and "<td>0.123</td>" in html
