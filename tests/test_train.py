"""Training: time slices, refusal on too little history, determinism, calibration, evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert import load, train
from convert.calibrate import select_calibrator
from convert.catalog import Catalog, FeatureDef
from convert.config import Config
from convert.exceptions import FeatureMismatchError, InsufficientDataError
from convert.model import (
    FeatureMatrix,
    FeatureSpec,
    LeadScoringModel,
    grade_from_score,
    score_from_probability,
)
from convert.train import (
    SLICES,
    TrainingSet,
    _new_model,
    build_training_set,
    fit_calibrated,
    split_by_time,
)
from convert.treeshap import lightgbm_matrix


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
    monthly = Config.from_dict({"labels": {"frequency": "monthly", "min_history_days": 60}})
    with pytest.raises(InsufficientDataError, match="as-of times"):
        build_training_set(data, monthly, as_of="2023-05-01")
    # auto goes daily on four weeks of known labels, but three days are too few even so
    with pytest.raises(InsufficientDataError, match="no spacing reaches 24"):
        build_training_set(data, Config(), as_of="2023-04-03")


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


def test_feature_matrix_encodes_as_lightgbm_reads_the_transformed_frame():
    def feature(name: str, kind: str) -> FeatureDef:
        return FeatureDef(name, "fit", "test", kind, "count", name, "{value}")

    catalog = Catalog([feature("a", "numeric"), feature("src", "categorical"), feature("b", "numeric"),
                       feature("c", "numeric"), feature("band", "categorical")])
    frame = pd.DataFrame({
        "extra": list("pqrstuvw"),
        "c": [1, 2, 3, 4, 5, 6, 7, 8],
        "b": [0.5, np.nan, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0],
        "src": ["web", None, "ads", np.nan, "web", "fair", "zoo", "ads"],
        "a": [1.0, 2.0, np.nan, 4.0, 5.0, 6.0, 7.0, 8.0],
        "band": [1.0, 2.0, np.nan, 2.0, 3.0, 1.0, 4.0, 2.0],
    }, index=[10, 3, 7, 1, 0, 5, 2, 4])
    rows = np.array([6, 2, 0, 5, 1])  # any order of positions
    fm = FeatureMatrix(frame, catalog, rows)
    head = fm.spec(slice(0, 3), event_types=["x"])
    assert head == FeatureSpec.from_frame(frame.iloc[rows[:3]], catalog, ["x"])
    assert head.categories == {"src": ["ads", "web", "zoo"], "band": ["1.0", "4.0"]}
    for spec in (head, fm.spec()):  # unseen values ("fair", 2.0) become missing under the first
        expected = lightgbm_matrix(spec.transform(frame.iloc[rows]))
        assert np.array_equal(fm.encode(spec).values, expected, equal_nan=True)
    whole = FeatureMatrix(frame, catalog)
    assert np.array_equal(whole.encode(fm.spec()).values,
                          lightgbm_matrix(fm.spec().transform(frame)), equal_nan=True)
    with pytest.raises(FeatureMismatchError, match="'band'"):
        FeatureMatrix(frame.drop(columns=["band"]), catalog)


@pytest.mark.parametrize("shuffle", [False, True])
def test_fit_calibrated_equals_fitting_each_slice_frame(trained, fast_config, shuffle):
    """The one-matrix path gives the model of fitting LeadScoringModel on frame.loc[slice]."""
    result, _ = trained
    ts = result.training_set
    frame = ts.frame
    if shuffle:  # slices interleaved in the frame: the refit must still see rows in frame order
        frame = frame.iloc[np.random.default_rng(0).permutation(len(frame))].reset_index(drop=True)
        ts = TrainingSet(frame, ts.catalog, ts.event_types, ts.as_of, ts.horizon_days)
    split = split_by_time(frame["as_of"], fast_config)
    model, cv = fit_calibrated(ts, split, fast_config)

    m, y, cols = split.masks, frame["label"].to_numpy(), ts.features
    first = _new_model(fast_config).fit(frame.loc[m["train"], cols], y[m["train"]],
                                        frame.loc[m["validation"], cols], y[m["validation"]],
                                        catalog=ts.catalog, event_types=ts.event_types)
    rounds = int(np.ceil(first.best_iteration_ * fast_config.train.refit_round_factor))
    seen = m["train"] | m["validation"]
    plain = _new_model(fast_config, rounds=rounds).fit(frame.loc[seen, cols], y[seen], catalog=ts.catalog,
                                                      event_types=ts.event_types)
    calibrator, plain_cv = select_calibrator(
        plain.predict_raw(frame.loc[m["calibration"], cols]), y[m["calibration"]],
        methods=fast_config.calibration.methods, cv_folds=fast_config.calibration.cv_folds,
        min_rows_isotonic=fast_config.calibration.min_rows_isotonic, seed=fast_config.seed)
    assert model.booster_.model_to_string() == plain.booster_.model_to_string()
    assert model.spec_ == plain.spec_ and model.base_raw_ == plain.base_raw_
    assert cv == plain_cv and model.calibrator_.to_dict() == calibrator.to_dict()
