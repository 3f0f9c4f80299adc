"""Training: time slices, refusal on too little history, determinism, calibration, evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert import load, train
from convert.config import Config
from convert.exceptions import FeatureMismatchError, InsufficientDataError
from convert.model import LeadScoringModel, grade_from_score, score_from_probability
from convert.train import SLICES, build_training_set, split_by_time


def test_slices_are_ordered_in_time_and_purged_before_the_holdout(trained, fast_config):
    result, _ = trained
    r = result.split.ranges
    for earlier, later in zip(SLICES, SLICES[1:], strict=False):
        assert r[earlier][1] < r[later][0]
    # no label decided inside the hold-out period was used for fitting
    horizon = pd.Timedelta(days=fast_config.labels.horizon_days)
    assert r["calibration"][1] + horizon <= r["holdout"][0]
    masks = result.split.masks
    assert not any((masks[a] & masks[b]).any() for a in SLICES for b in SLICES if a < b)


def test_evaluation_reports_model_and_three_baselines(trained):
    result, _ = trained
    m = result.evaluation.metrics
    assert list(m.columns) == ["model", "source_rate", "logistic_regression", "points_rule"]
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece"} <= set(m.index)
    assert m.loc["roc_auc", "model"] > 0.75
    assert len(result.evaluation.reliability) == 10
    assert result.evaluation.lift["decile"].tolist() == list(range(1, 11))
    # the hold-out predictions are of rows the model never saw
    hold = result.evaluation.predictions
    assert hold["as_of"].min() >= result.split.ranges["holdout"][0]


def test_same_seed_same_data_gives_identical_probabilities(sim_export, fast_config, trained):
    result, data = trained
    again = train(load(sim_export, fast_config), fast_config)
    a = result.evaluation.predictions["probability"].to_numpy()
    b = again.evaluation.predictions["probability"].to_numpy()
    assert np.array_equal(a, b)  # to the last digit
    assert result.model.booster_.model_to_string() == again.model.booster_.model_to_string()


def test_too_little_history_is_refused_with_advice(sim_export):
    cfg = Config.from_dict({"train": {"min_positives": 10_000}})
    with pytest.raises(InsufficientDataError, match="longer history, a shorter --horizon-days"):
        train(load(sim_export, cfg), cfg)


def test_too_short_a_window_is_refused(sim_export):
    data = load(sim_export)
    with pytest.raises(InsufficientDataError, match="as-of times"):
        build_training_set(data, Config(), as_of="2023-05-01")


def test_split_shares_are_shares_of_rows():
    as_of = pd.Series(pd.to_datetime(["2024-01-01"] * 10 + ["2024-02-01"] * 10 + ["2024-06-01"] * 40
                                     + ["2024-07-01"] * 40 + ["2024-08-01"] * 50 + ["2025-01-01"] * 60))
    cfg = Config.from_dict({"labels": {"horizon_days": 30}})
    split = split_by_time(as_of, cfg)
    assert split.ranges["holdout"] == (pd.Timestamp("2025-01-01"), pd.Timestamp("2025-01-01"))
    assert split.ranges["calibration"] == (pd.Timestamp("2024-08-01"), pd.Timestamp("2024-08-01"))
    assert split.ranges["validation"] == (pd.Timestamp("2024-07-01"), pd.Timestamp("2024-07-01"))
    assert split.masks["train"].sum() == 60


def test_bundle_round_trip_and_feature_check(trained, tmp_path):
    result, _ = trained
    model = result.model
    X = result.training_set.frame.loc[result.split.masks["holdout"]].head(200)
    loaded = LeadScoringModel.load(model.save(tmp_path / "bundle"))
    assert np.array_equal(model.predict_proba(X), loaded.predict_proba(X))
    with pytest.raises(FeatureMismatchError, match="'n_page_view_30d'"):
        loaded.predict_proba(X.drop(columns=["n_page_view_30d"]))


def test_unseen_category_becomes_missing_not_an_error(trained):
    result, _ = trained
    X = result.training_set.frame.head(50).copy()
    X["lead_source"] = "never_seen_channel"
    p = result.model.predict_proba(X)[:, 1]
    assert np.isfinite(p).all()


def test_monotone_constraint_is_applied(sim_export, fast_config):
    cfg = fast_config.with_overrides(train__monotone_constraints={"n_demo_request_90d": 1})
    result = train(load(sim_export, cfg), cfg)
    X = result.training_set.frame.head(300).copy()
    lo, hi = X.copy(), X.copy()
    lo["n_demo_request_90d"], hi["n_demo_request_90d"] = 0.0, 5.0
    assert (result.model.predict_raw(hi) >= result.model.predict_raw(lo) - 1e-12).all()


def test_score_rounding_and_grades():
    assert score_from_probability(np.array([0.0, 0.004, 0.005, 0.305, 0.999, 1.0])).tolist() == [0, 0, 1, 31, 100, 100]
    assert grade_from_score(np.array([80, 50, 49, 25, 10, 9]), {"A": 50, "B": 25, "C": 10}).tolist() == [
        "A", "A", "B", "B", "C", "D"]


def test_tuning_searches_with_time_series_folds(trained, fast_config):
    from convert.train import tune

    result, _ = trained
    params, table = tune(result.training_set, result.split, fast_config, trials=3)
    assert len(table) == 3 and table["cv_log_loss"].notna().all()
    assert table.loc[0, "learning_rate"] == fast_config.train.lightgbm["learning_rate"]  # trial 0: defaults
    best = table.loc[table["cv_log_loss"].idxmin()]
    assert params["num_leaves"] == int(best["num_leaves"])
    again, _ = tune(result.training_set, result.split, fast_config, trials=3)
    assert again == params  # seeded
