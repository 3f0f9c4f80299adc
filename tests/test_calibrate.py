"""Tests of convert.model.calibrate: calibrators from raw score to probability, and their selection."""

from __future__ import annotations

import json

import numpy as np
import pytest
from scipy.special import expit
from sklearn.model_selection import StratifiedKFold

from convert.exceptions import ConfigError, ConvertError, InsufficientDataError
from convert.model.calibrate import (
    PROBABILITY_EPSILON,
    Calibrator,
    IsotonicCalibrator,
    SigmoidCalibrator,
    calibrator_from_dict,
    select_calibrator,
)

CALIBRATORS = [IsotonicCalibrator, SigmoidCalibrator]


def miscalibrated(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Raw scores of an over-confident, shifted model: true logit times 3 plus 1."""
    rng = np.random.default_rng(seed)
    true_logit = rng.normal(-1.5, 1.5, n)
    y = (rng.random(n) < expit(true_logit)).astype(int)
    return 3.0 * true_logit + 1.0, y, true_logit


def step_shaped(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Conversion jumps from 2 % to 60 % at raw 0: a shape a sigmoid cannot follow."""
    rng = np.random.default_rng(seed)
    raw = rng.normal(0.0, 2.0, n)
    y = (rng.random(n) < np.where(raw < 0, 0.02, 0.6)).astype(int)
    return raw, y


def brier(y: np.ndarray, p: np.ndarray) -> float:
    return float(np.mean((p - y) ** 2))


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_calibration_improves_brier_on_fresh_rows(cls: type[Calibrator]) -> None:
    raw_fit, y_fit, _ = miscalibrated(4000, seed=1)
    raw_new, y_new, true_logit = miscalibrated(4000, seed=2)
    cal = cls().fit(raw_fit, y_fit)
    uncalibrated = brier(y_new, expit(raw_new))
    calibrated = brier(y_new, cal.predict(raw_new))
    oracle = brier(y_new, expit(true_logit))
    assert calibrated < uncalibrated - 0.01
    # Close to what the true probabilities achieve.
    assert calibrated < oracle + 0.005


def test_sigmoid_recovers_the_true_map() -> None:
    raw, y, _ = miscalibrated(20000, seed=3)
    cal = SigmoidCalibrator().fit(raw, y)
    # raw = 3 * logit + 1  =>  logit = raw / 3 - 1 / 3
    assert cal.slope_ == pytest.approx(1 / 3, abs=0.03)
    assert cal.intercept_ == pytest.approx(-1 / 3, abs=0.06)


def test_sigmoid_stays_increasing_when_the_signal_is_reversed() -> None:
    raw, y, _ = miscalibrated(2000, seed=4)
    cal = SigmoidCalibrator().fit(-raw, y)
    assert cal.slope_ >= cal.min_slope > 0
    p = cal.predict(np.linspace(-10, 10, 51))
    assert np.all(np.diff(p) > 0)


def test_isotonic_is_strictly_increasing_and_keeps_distinct_scores_distinct() -> None:
    raw, y = step_shaped(3000, seed=5)
    cal = IsotonicCalibrator().fit(raw, y)
    # Plain isotonic regression has few steps here; the interpolation must not.
    assert len(cal.x_knots_) < 100
    grid = np.linspace(-40, 40, 20001)  # beyond the data on both sides
    p = cal.predict(grid)
    assert np.all(np.diff(p) > 0)
    fitted = cal.predict(raw)
    assert np.unique(fitted).size == np.unique(raw).size
    extreme = cal.predict(np.array([-1e9, 1e9]))
    assert extreme[0] >= PROBABILITY_EPSILON and extreme[1] <= 1 - PROBABILITY_EPSILON


def test_isotonic_knots_on_a_hand_checked_case() -> None:
    # PAV: [0] [1, 0, 0] -> 1/3 [1, 1]; knots at the mean raw score of each block.
    raw = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    y = np.array([0, 1, 0, 0, 1, 1])
    cal = IsotonicCalibrator().fit(raw, y)
    np.testing.assert_allclose(cal.x_knots_, [-2.0, 0.0, 2.5])
    np.testing.assert_allclose(cal.y_knots_, [2e-6, 1 / 3, 1 - 2e-6])
    # Linear between knots: halfway from 0.0 to 2.5.
    assert cal.predict(np.array([1.25]))[0] == pytest.approx((1 / 3 + 1 - 2e-6) / 2)


def test_isotonic_gives_tied_raw_scores_one_probability() -> None:
    raw = np.array([0.0, 0.0, 0.0, 1.0, 1.0, 2.0, 2.0, 2.0])
    y = np.array([0, 1, 0, 1, 0, 1, 1, 0])
    p = IsotonicCalibrator().fit(raw, y).predict(raw)
    assert p[0] == p[1] == p[2]
    assert p[5] == p[6] == p[7]
    assert p[2] < p[3] < p[5]


@pytest.mark.parametrize("cls", CALIBRATORS)
def test_to_dict_from_dict_round_trip_through_json(cls: type[Calibrator]) -> None:
    raw, y, _ = miscalibrated(3000, seed=6)
    cal = cls().fit(raw, y)
    stored = json.loads(json.dumps(cal.to_dict()))
    for restored in (cls.from_dict(stored), calibrator_from_dict(stored)):
        assert type(restored) is cls
        probe = np.r_[raw, np.linspace(-50, 50, 1001)]
        np.testing.assert_array_equal(restored.predict(probe), cal.predict(probe))


def test_from_dict_rejects_unknown_or_broken_input() -> None:
    with pytest.raises(ConvertError, match="unknown calibrator method"):
        calibrator_from_dict({"method": "beta"})
    raw, y, _ = miscalibrated(500, seed=7)
    stored = IsotonicCalibrator().fit(raw, y).to_dict()
    stored["y"] = stored["y"][::-1]
    with pytest.raises(ConvertError, match="strictly increasing"):
        calibrator_from_dict(stored)
    with pytest.raises(ConvertError, match="not a stored sigmoid"):
        SigmoidCalibrator.from_dict({"method": "isotonic", "version": 1})


def test_selection_never_picks_isotonic_under_min_rows() -> None:
    raw, y = step_shaped(900, seed=8)
    # The shape favours isotonic: with the row limit lowered, isotonic wins ...
    chosen, scores = select_calibrator(raw, y, min_rows_isotonic=100, seed=0)
    assert chosen.method == "isotonic"
    assert scores["isotonic"] < scores["sigmoid"]
    # ... but under the limit it is not even evaluated.
    chosen, scores = select_calibrator(raw, y, min_rows_isotonic=1000, seed=0)
    assert chosen.method == "sigmoid"
    assert set(scores) == {"sigmoid"}
    # Isotonic as the only candidate falls back to the sigmoid.
    chosen, scores = select_calibrator(raw, y, methods=("isotonic",), min_rows_isotonic=1000)
    assert chosen.method == "sigmoid"


def test_selection_scores_each_row_only_by_a_calibrator_not_fitted_on_it() -> None:
    raw, y = step_shaped(1500, seed=9)
    _, scores = select_calibrator(raw, y, cv_folds=4, min_rows_isotonic=100, seed=7)
    for method, cls in (("isotonic", IsotonicCalibrator), ("sigmoid", SigmoidCalibrator)):
        out_of_fold = np.empty(raw.shape[0])
        for fit_idx, held_idx in StratifiedKFold(n_splits=4, shuffle=True, random_state=7).split(
            raw, y
        ):
            out_of_fold[held_idx] = cls().fit(raw[fit_idx], y[fit_idx]).predict(raw[held_idx])
        expected = -np.mean(y * np.log(out_of_fold) + (1 - y) * np.log(1 - out_of_fold))
        assert scores[method] == pytest.approx(expected, rel=1e-12)
        in_sample = cls().fit(raw, y).predict(raw)
        in_sample_loss = -np.mean(y * np.log(in_sample) + (1 - y) * np.log(1 - in_sample))
        assert scores[method] != pytest.approx(in_sample_loss, rel=1e-9)


def test_selection_refits_winner_on_all_rows_and_is_deterministic() -> None:
    raw, y, _ = miscalibrated(3000, seed=10)
    first, scores_1 = select_calibrator(raw, y, seed=123)
    second, scores_2 = select_calibrator(raw, y, seed=123)
    assert scores_1 == scores_2
    assert first.method == second.method
    np.testing.assert_array_equal(first.predict(raw), second.predict(raw))
    refit = type(first)().fit(raw, y)
    np.testing.assert_array_equal(first.predict(raw), refit.predict(raw))
    # Another seed changes the folds, hence the scores.
    _, scores_3 = select_calibrator(raw, y, seed=124)
    assert scores_3 != scores_1


def test_bad_inputs_raise_convert_errors() -> None:
    raw = np.linspace(-1, 1, 50)
    with pytest.raises(InsufficientDataError):
        SigmoidCalibrator().fit(raw, np.zeros(50))
    with pytest.raises(InsufficientDataError):
        IsotonicCalibrator().fit(raw, np.ones(50))
    with pytest.raises(ConvertError, match="finite"):
        SigmoidCalibrator().fit(np.r_[raw[:-1], np.nan], np.arange(50) % 2)
    with pytest.raises(ConvertError, match="0/1"):
        IsotonicCalibrator().fit(raw, np.arange(50))
    with pytest.raises(ConfigError):
        select_calibrator(raw, np.arange(50) % 2, methods=("beta",))
    with pytest.raises(ConfigError):
        select_calibrator(raw, np.arange(50) % 2, cv_folds=1)
    with pytest.raises(ConfigError):
        IsotonicCalibrator(tail_slope=0).fit(raw, np.arange(50) % 2)


def test_sigmoid_on_a_constant_raw_score_predicts_the_base_rate() -> None:
    y = np.array([0, 1, 0, 0, 1, 0, 0, 0])
    cal = SigmoidCalibrator().fit(np.full(8, 2.5), y)
    p = cal.predict(np.array([2.5, 3.5]))
    assert p[0] == pytest.approx((2 + 1) / (8 + 2))  # Platt-smoothed base rate
    assert 0 < p[1] - p[0] < 1e-5
