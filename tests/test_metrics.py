"""Tests of convert.model.metrics: scalar metrics and tables (and the plots of those tables)."""

from __future__ import annotations

import math
import warnings

import numpy as np
import pandas as pd
import pytest

from convert.exceptions import ConvertError
from convert.model.metrics import (
    brier,
    evaluate,
    expected_calibration_error,
    grade_table,
    lift_table,
    log_loss,
    pr_auc,
    reliability_table,
    roc_auc,
)

# A case small enough to check by hand.
Y_SMALL = np.array([0, 0, 1, 1])
P_SMALL = np.array([0.1, 0.4, 0.35, 0.8])


def calibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    p = rng.uniform(0.01, 0.99, n)
    return (rng.random(n) < p).astype(int), p


def test_scalar_metrics_on_a_hand_checked_case() -> None:
    # Pairs (pos, neg): (0.35, 0.1) right, (0.35, 0.4) wrong, (0.8, *) right -> 3/4.
    assert roc_auc(Y_SMALL, P_SMALL) == pytest.approx(0.75)
    # Ranking 0.8(+), 0.4(-), 0.35(+), 0.1(-): AP = (1/1 + 2/3) / 2.
    assert pr_auc(Y_SMALL, P_SMALL) == pytest.approx((1 + 2 / 3) / 2)
    assert brier(Y_SMALL, P_SMALL) == pytest.approx((0.01 + 0.16 + 0.4225 + 0.04) / 4)
    expected_ll = -(math.log(0.9) + math.log(0.6) + math.log(0.35) + math.log(0.8)) / 4
    assert log_loss(Y_SMALL, P_SMALL) == pytest.approx(expected_ll)
    # Two equal-frequency bins: {0.1 (0), 0.35 (1)} and {0.4 (0), 0.8 (1)}.
    # |0.225 - 0.5| and |0.6 - 0.5|, each weighted 1/2.
    assert expected_calibration_error(Y_SMALL, P_SMALL, n_bins=2) == pytest.approx(
        (0.275 + 0.1) / 2
    )


def test_log_loss_stays_finite_on_certain_wrong_predictions() -> None:
    assert math.isfinite(log_loss([1, 0], [0.0, 1.0]))
    assert log_loss([1, 0], [0.0, 1.0]) > 30


def test_ece_small_when_calibrated_and_large_when_shifted() -> None:
    y, p = calibrated(20000, seed=1)
    assert expected_calibration_error(y, p) < 0.02
    shifted = np.clip(p + 0.2, 0, 1)
    assert expected_calibration_error(y, shifted) > 0.15


def test_reliability_table_has_equal_frequency_bins_and_wilson_intervals() -> None:
    y, p = calibrated(1003, seed=2)
    table = reliability_table(y, p, n_bins=10)
    assert list(table.columns) == [
        "bin",
        "n",
        "mean_predicted",
        "observed_rate",
        "ci_low",
        "ci_high",
    ]
    assert table["n"].sum() == 1003
    assert set(table["n"]) == {100, 101}
    assert table["mean_predicted"].is_monotonic_increasing
    assert (table["ci_low"] <= table["observed_rate"]).all()
    assert (table["observed_rate"] <= table["ci_high"]).all()


def test_reliability_bins_stay_equal_when_probabilities_tie() -> None:
    y = np.array([0, 1] * 50)
    p = np.full(100, 0.3)
    table = reliability_table(y, p, n_bins=4)
    assert table["n"].tolist() == [25, 25, 25, 25]


def test_wilson_interval_hand_checked() -> None:
    # 5 of 10: the Wilson 95% interval is (0.2366, 0.7634).
    table = reliability_table(np.array([0, 1] * 5), np.linspace(0.4, 0.6, 10), n_bins=1)
    assert table.loc[0, "ci_low"] == pytest.approx(0.2366, abs=1e-4)
    assert table.loc[0, "ci_high"] == pytest.approx(0.7634, abs=1e-4)


def test_lift_table_hand_checked() -> None:
    table = lift_table([1, 1, 0, 0], [0.9, 0.8, 0.2, 0.1], n_bins=2)
    assert table["decile"].tolist() == [1, 2]
    assert table["positives"].tolist() == [2, 0]
    assert table["conversion_rate"].tolist() == [1.0, 0.0]
    assert table["lift"].tolist() == [2.0, 0.0]
    assert table["cumulative_capture"].tolist() == [1.0, 1.0]
    assert table["min_probability"].tolist() == [0.8, 0.1]


def test_lift_table_puts_the_best_leads_in_decile_one() -> None:
    y, p = calibrated(5000, seed=3)
    table = lift_table(y, p)
    assert len(table) == 10
    assert table["n"].sum() == 5000
    assert table["conversion_rate"].idxmax() == 0
    rate = table["conversion_rate"].to_numpy()
    assert rate[0] > rate[9] + 0.5
    assert table["lift"].to_numpy()[0] > 1.5
    assert table["cumulative_capture"].is_monotonic_increasing
    assert table["cumulative_capture"].iloc[-1] == pytest.approx(1.0)


def test_grade_table_counts_and_orders_grades() -> None:
    y = [1, 0, 1, 0, 0, 0]
    grades = ["B", "A", "A", "C", "B", "B"]
    table = grade_table(y, grades)
    assert table["grade"].tolist() == ["A", "B", "C"]
    assert table["n"].tolist() == [2, 3, 1]
    assert table["conversions"].tolist() == [1, 1, 0]
    assert table["rate"].tolist() == pytest.approx([0.5, 1 / 3, 0.0])

    ordered = pd.Series(pd.Categorical(grades, categories=["A", "B", "C", "D"]))
    table = grade_table(y, ordered)
    assert table["grade"].tolist() == ["A", "B", "C", "D"]
    assert table["n"].tolist()[3] == 0
    assert math.isnan(table["rate"].tolist()[3])


def test_evaluate_returns_every_metric() -> None:
    y, p = calibrated(2000, seed=4)
    result = evaluate(y, p)
    assert set(result) == {
        "roc_auc",
        "pr_auc",
        "log_loss",
        "brier",
        "ece",
        "n",
        "positives",
        "base_rate",
    }
    assert result["n"] == 2000
    assert result["positives"] == y.sum()
    assert result["base_rate"] == pytest.approx(y.mean())
    assert result["roc_auc"] == pytest.approx(roc_auc(y, p))
    assert 0.7 < result["roc_auc"] < 0.95


def test_single_class_gives_nan_without_exception_or_warning() -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for label in (0, 1):
            result = evaluate(np.full(20, label), np.linspace(0.1, 0.9, 20))
            assert math.isnan(result["roc_auc"])
            assert math.isnan(result["pr_auc"])
            assert math.isfinite(result["log_loss"])
            assert math.isfinite(result["brier"])
            lift = lift_table(np.full(20, label), np.linspace(0.1, 0.9, 20))
            assert len(lift) == 10
        assert math.isnan(lift_table(np.zeros(20), np.linspace(0.1, 0.9, 20))["lift"].iloc[0])


def test_invalid_inputs_raise_convert_error() -> None:
    with pytest.raises(ConvertError, match="probabilities"):
        evaluate([0, 1], [0.5, 1.5])
    with pytest.raises(ConvertError, match="0/1"):
        roc_auc([0, 2], [0.5, 0.6])
    with pytest.raises(ConvertError, match="one value per lead"):
        brier([0, 1, 1], [0.5, 0.6])
    with pytest.raises(ConvertError, match="n_bins"):
        expected_calibration_error([0, 1], [0.1, 0.9], n_bins=0)


def test_plots_return_figures() -> None:
    from matplotlib.collections import PolyCollection
    from matplotlib.figure import Figure

    from convert.analysis.plots import plot_lift, plot_reliability

    y, p = calibrated(1000, seed=5)
    fig = plot_reliability(reliability_table(y, p))
    assert isinstance(fig, Figure)
    ax = fig.axes[0]
    assert any(isinstance(c, PolyCollection) for c in ax.collections)  # the CI band
    fig.canvas.draw()

    fig = plot_lift(lift_table(y, p))
    assert isinstance(fig, Figure)
    assert len(fig.axes[0].patches) == 10  # one bar per decile
    fig.canvas.draw()
