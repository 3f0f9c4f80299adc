"""Tests of convert.model.baselines: source rate, logistic regression and the points rule."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit
from sklearn.metrics import roc_auc_score

from convert.config import BaselinesConfig
from convert.exceptions import FeatureMismatchError, InsufficientDataError
from convert.model.baselines import (
    Baseline,
    LogisticBaseline,
    PointsRuleBaseline,
    SourceRateBaseline,
    fit_baselines,
)

SOURCES = ["web", "referral", "event", "paid_search"]
INDUSTRIES = ["software", "retail", "healthcare", "education"]
SENIORITY = ["c_level", "vp", "director", "manager", "individual", "student", "other"]


def leads(n: int, seed: int) -> pd.DataFrame:
    """A features frame shaped like the features step's output, with some missing values."""
    rng = np.random.default_rng(seed)
    source = rng.choice(SOURCES, n).astype(object)
    source[rng.random(n) < 0.1] = None
    employees = rng.lognormal(4, 1.5, n).round()
    employees[rng.random(n) < 0.2] = np.nan
    return pd.DataFrame(
        {
            "lead_source": pd.Categorical(source, categories=SOURCES),
            "industry": pd.Categorical(rng.choice(INDUSTRIES, n)),
            "seniority": rng.choice(SENIORITY, n).astype(object),
            "employees": pd.array(employees, dtype="Float64").astype("Int64"),
            "n_page_view_90d": rng.poisson(3, n),
            "n_demo_request_90d": rng.poisson(0.15, n),
            "trend_30d": rng.normal(0, 1, n),
        }
    )


def outcome(X: pd.DataFrame, seed: int, signal: str) -> np.ndarray:
    """Labels whose signal is in the named inputs only."""
    rng = np.random.default_rng(seed)
    logit = np.full(len(X), -2.0)
    if signal in ("source", "all"):
        logit += np.where(X["lead_source"].astype(object) == "referral", 1.8, 0.0)
        logit += np.where(X["lead_source"].isna(), -1.0, 0.0)
    if signal in ("points", "all"):
        logit += 1.5 * X["n_demo_request_90d"].to_numpy()
        logit += np.where(X["seniority"].isin(["c_level", "vp"]), 1.0, 0.0)
    if signal == "all":
        logit += 0.8 * X["trend_30d"].to_numpy()
        logit += np.where(X["industry"].astype(object) == "software", 0.7, 0.0)
    return (rng.random(len(X)) < expit(logit)).astype(int)


@pytest.mark.parametrize(
    ("make", "signal"),
    [
        (lambda: SourceRateBaseline(), "source"),
        (lambda: LogisticBaseline(seed=0), "all"),
        (lambda: PointsRuleBaseline(), "points"),
    ],
    ids=["source_rate", "logistic_regression", "points_rule"],
)
def test_each_baseline_beats_random_on_fresh_rows(
    make: Callable[[], Baseline], signal: str
) -> None:
    X_train, X_test = leads(4000, seed=1), leads(3000, seed=2)
    y_train, y_test = outcome(X_train, 11, signal), outcome(X_test, 12, signal)
    p = make().fit(X_train, y_train).predict_proba(X_test)
    assert p.shape == (3000,)
    assert np.all((p > 0) & (p < 1))
    assert roc_auc_score(y_test, p) > 0.62


def test_baselines_score_noise_as_random() -> None:
    # The same data with labels unrelated to the features: no baseline may find a signal.
    X_train, X_test = leads(3000, seed=3), leads(3000, seed=4)
    rng = np.random.default_rng(5)
    y_train, y_test = (rng.random(3000) < 0.2).astype(int), (rng.random(3000) < 0.2).astype(int)
    for model in fit_baselines(X_train, y_train, BaselinesConfig(), seed=0).values():
        assert abs(roc_auc_score(y_test, model.predict_proba(X_test)) - 0.5) < 0.05


def test_fit_baselines_names_and_determinism() -> None:
    X, X_new = leads(2000, seed=6), leads(500, seed=7)
    y = outcome(X, 13, "all")
    first = fit_baselines(X, y, BaselinesConfig(), seed=3)
    second = fit_baselines(X, y, BaselinesConfig(), seed=3)
    assert list(first) == ["source_rate", "logistic_regression", "points_rule"]
    for name in first:
        np.testing.assert_array_equal(
            first[name].predict_proba(X_new), second[name].predict_proba(X_new)
        )


def test_unseen_and_missing_categories_do_not_crash() -> None:
    X = leads(2000, seed=8)
    y = outcome(X, 14, "all")
    models = fit_baselines(X, y, BaselinesConfig(), seed=0)
    new = leads(4, seed=9)
    new["lead_source"] = pd.Categorical(["tradeshow", None, "web", "partner"])
    new["industry"] = pd.Categorical(["mining", None, "software", "Software "])
    new["seniority"] = ["intern", None, "VP", "vp"]
    new["employees"] = pd.array([None, 10, 100, None], dtype="Int64")
    for model in models.values():
        p = model.predict_proba(new)
        assert p.shape == (4,)
        assert np.all(np.isfinite(p)) and np.all((p > 0) & (p < 1))
    source = models["source_rate"]
    assert isinstance(source, SourceRateBaseline)
    assert source.predict_proba(new)[0] == pytest.approx(source.base_rate_)
    assert source.predict_proba(new)[1] == pytest.approx(source.missing_rate_)


def test_source_rate_smoothing_hand_checked() -> None:
    X = pd.DataFrame({"lead_source": ["a", "a", "a", "b", None]})
    y = [1, 1, 1, 0, 0]
    model = SourceRateBaseline(smoothing=1.0).fit(X, y)
    base = 3 / 5
    assert model.rates_["a"] == pytest.approx((3 + base) / 4)
    assert model.rates_["b"] == pytest.approx((0 + base) / 2)
    assert model.missing_rate_ == pytest.approx((0 + base) / 2)
    raw = SourceRateBaseline(smoothing=0).fit(X, y)
    assert raw.rates_ == {"a": 1.0, "b": 0.0}


def test_points_hand_checked() -> None:
    config = BaselinesConfig(
        event_points={"demo_request": 30, "email_open": 1, "unsubscribe": -20},
        industry_points={"financial_services": 8},
        min_employees=50,
        employees_points=10,
        seniority_points={"vp": 12},
    )
    X = pd.DataFrame(
        {
            "n_demo_request_90d": [2, 0, None],
            "n_email_open_90d": [3, 1, 0],
            "n_unsubscribe_90d": [0, 1, 0],
            "n_meeting_90d": [5, 5, 5],  # not in this rule
            "n_demo_request_30d": [9, 9, 9],  # wrong window
            "industry": ["Financial Services", "retail", None],
            "employees": pd.array([50, 49, None], dtype="Int64"),
            "seniority": pd.Categorical(["VP", "manager", None]),
        }
    )
    points = PointsRuleBaseline(config).points(X)
    assert points.tolist() == [60 + 3 + 8 + 10 + 12, 1 - 20, 0]


def test_points_rule_probability_follows_points() -> None:
    X = leads(3000, seed=10)
    y = outcome(X, 15, "points")
    model = PointsRuleBaseline().fit(X, y)
    assert model.slope_ > 0
    assert model.columns_used_ == [
        "n_page_view_90d",
        "n_demo_request_90d",
        "industry",
        "employees",
        "seniority",
    ]
    points, p = model.points(X), model.predict_proba(X)
    order = np.argsort(points)
    assert np.all(np.diff(p[order]) >= 0)
    # Platt-fitted on the training rows: the mean probability matches the base rate.
    assert p.mean() == pytest.approx(y.mean(), abs=0.01)


def test_logistic_baseline_column_treatment() -> None:
    X = leads(1000, seed=11)
    X["signed"] = np.linspace(-1, 1, 1000)
    model = LogisticBaseline().fit(X, outcome(X, 16, "all"))
    assert model.categorical_columns_ == ["lead_source", "industry", "seniority"]
    assert "signed" in model.signed_columns_ and "trend_30d" in model.signed_columns_
    assert {"employees", "n_page_view_90d", "n_demo_request_90d"} <= set(model.count_columns_)


def test_missing_columns_and_bad_labels_raise() -> None:
    X = leads(500, seed=12)
    y = outcome(X, 17, "all")
    with pytest.raises(FeatureMismatchError):
        SourceRateBaseline().fit(X.drop(columns="lead_source"), y)
    fitted = LogisticBaseline().fit(X, y)
    with pytest.raises(FeatureMismatchError, match="trend_30d"):
        fitted.predict_proba(X.drop(columns="trend_30d"))
    with pytest.raises(FeatureMismatchError):
        PointsRuleBaseline().fit(X[["trend_30d"]], y)
    with pytest.raises(FeatureMismatchError, match="as_of"):
        LogisticBaseline().fit(X.assign(as_of=pd.Timestamp("2024-01-01")), y)
    with pytest.raises(InsufficientDataError):
        SourceRateBaseline().fit(X, np.zeros(500))
