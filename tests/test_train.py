"""Training: folds in time, nested choices, out-of-fold calibration, the deployed refit, refusals,
determinism, evaluation."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert import load, train
from convert.config import Config
from convert.exceptions import FeatureMismatchError, InsufficientDataError
from convert.features.catalog import Catalog, FeatureDef
from convert.model.bundle import (
    FeatureMatrix,
    FeatureSpec,
    LeadScoringModel,
    grade_from_score,
    score_from_probability,
)
from convert.model.calibrate import select_calibrator
from convert.model.crossfit import cross_fit, time_folds
from convert.model.train import build_training_set
from convert.model.treeshap import lightgbm_matrix


def test_folds_never_train_on_a_label_decided_inside_the_fold_they_predict(trained, fast_config):
    result, _ = trained
    frame = result.training_set.frame
    as_of = pd.to_datetime(frame["as_of"]).to_numpy()
    horizon = np.timedelta64(fast_config.labels.horizon_days, "D")
    folds = result.split
    assert [f.kind for f in folds.folds] == ["inner"] * 3 + ["outer"] * 2
    for f in folds.folds:
        assert not np.intersect1d(f.train, f.test).size
        # every label used for fitting was decided before the fold's first as-of time
        assert as_of[f.train].max() + horizon <= as_of[f.test].min()
        assert int(frame["label"].to_numpy()[f.test].sum()) >= fast_config.train.min_positives
    starts = [as_of[f.test].min() for f in folds.folds]
    assert starts == sorted(starts)  # forward chaining: later folds later


@pytest.mark.slow  # a second cross-fit of the whole training set
def test_choices_never_see_the_outer_folds(trained, fast_config):
    """Scrambling the outer folds' labels changes no choice (rounds, blend, calibrator)."""
    result, _ = trained
    ts = result.training_set
    y = ts.frame["label"].to_numpy().copy()
    folds = result.split
    first_outer = min(pd.to_datetime(ts.frame["as_of"]).to_numpy()[f.test].min() for f in folds.outer)
    for f in folds.inner:
        assert (pd.to_datetime(ts.frame["as_of"]).to_numpy()[np.concatenate([f.train, f.test])] < first_outer).all()
    outer = np.concatenate([f.test for f in folds.outer])
    y[outer] = np.random.default_rng(1).permutation(y[outer])
    y[outer[:50]] = 1 - y[outer[:50]]
    fit = cross_fit(ts.frame[ts.features], y, folds, fast_config, catalog=ts.catalog, event_types=ts.event_types)
    assert fit.choices["rounds"] == result.crossfit.choices["rounds"]
    assert fit.choices["blend_weight"] == result.crossfit.choices["blend_weight"]
    assert fit.choices["inner_log_loss"] == result.crossfit.choices["inner_log_loss"]
    assert fit.calibration_cv == result.calibration_cv


def test_deployed_booster_learned_every_labelled_snapshot_up_to_as_of_minus_horizon(trained, fast_config):
    result, _ = trained
    ts = result.training_set
    meta = result.model.metadata.to_dict()["deployed_fit"]
    last = pd.to_datetime(ts.frame["as_of"]).max()
    assert pd.Timestamp(meta["to"]) == last <= ts.as_of - pd.Timedelta(days=fast_config.labels.horizon_days)
    assert last > ts.as_of - pd.Timedelta(days=fast_config.labels.horizon_days + 31)  # the latest monthly one
    assert meta["rows"] == len(ts.frame) and meta["positives"] == int(ts.frame["label"].sum())
    assert result.slices.iloc[-1]["fold"] == "deployed" and result.slices.iloc[-1]["fit_rows"] == len(ts.frame)
    assert (result.model.metadata.metrics_from or "").startswith("outer folds")


def test_calibrator_is_fitted_on_out_of_fold_scores(trained, fast_config):
    result, _ = trained
    fit = result.crossfit
    y = result.training_set.frame["label"].to_numpy()
    rows = fit.oof_rows
    assert len(np.unique(rows)) == len(rows)  # each row scored once, by a fold that did not fit on it
    for f in result.split.folds:
        assert np.isin(f.test, rows).all() and not np.isin(f.test, f.train).any()
    method = result.model.calibrator_.method
    again, _ = select_calibrator(fit.oof_raw, y[rows], methods=(method,), cv_folds=fast_config.calibration.cv_folds,
                                 min_rows_isotonic=0, seed=fast_config.seed)
    assert again.to_dict() == result.model.calibrator_.to_dict()


@pytest.mark.slow  # a second cross-fit of the whole training set
def test_tuning_is_never_worse_than_untuned_on_the_inner_folds(trained, fast_config):
    result, _ = trained
    ts = result.training_set
    y = ts.frame["label"].to_numpy()
    fit = cross_fit(ts.frame[ts.features], y, result.split, fast_config, catalog=ts.catalog,
                    event_types=ts.event_types, trials=4)
    table = fit.tuning
    assert table is not None and len(table) == 4
    assert table.loc[0, "learning_rate"] == fast_config.train.lightgbm["learning_rate"]  # trial 0: untuned
    assert fit.inner_log_loss <= table.loc[0, "inner_log_loss"]
    assert fit.inner_log_loss == table["inner_log_loss"].min()
    assert fit.choices["inner_log_loss"] <= result.crossfit.choices["inner_log_loss"] + 1e-12


def test_evaluation_reports_model_and_three_baselines(trained):
    result, _ = trained
    m = result.evaluation.metrics
    assert list(m.columns) == ["model", "source_rate", "logistic_regression", "points_rule"]
    assert {"roc_auc", "pr_auc", "log_loss", "brier", "ece"} <= set(m.index)
    assert m.loc["roc_auc", "model"] > 0.75
    assert len(result.evaluation.reliability) == 10
    assert result.evaluation.lift["decile"].tolist() == list(range(1, 11))
    # the outer-fold predictions are out-of-fold, of the latest as-of times
    hold = result.evaluation.predictions
    assert hold["as_of"].min() >= result.split.ranges["holdout"][0]
    assert len(hold) == sum(len(f.test) for f in result.split.outer)


@pytest.mark.slow
def test_same_seed_same_data_gives_identical_probabilities(sim_export, fast_config, trained):
    result, data = trained
    again = train(load(sim_export, fast_config), fast_config)
    a = result.evaluation.predictions["probability"].to_numpy()
    b = again.evaluation.predictions["probability"].to_numpy()
    assert np.array_equal(a, b)  # to the last digit
    assert result.model.booster_.model_to_string() == again.model.booster_.model_to_string()


def test_too_little_history_is_refused_with_advice(sim_export):
    cfg = Config.from_dict({"train": {"min_positives": 10_000}})
    with pytest.raises(InsufficientDataError, match="25 labelled as-of times .* hold 444 conversions") as info:
        train(load(sim_export, cfg), cfg)
    assert "min_positives: 10 would train on this history" in str(info.value)


def test_short_history_refusal_gives_figures_and_a_setting_that_trains():
    times = pd.to_datetime([f"2024-{m:02d}-01" for m in range(1, 13)])
    as_of = pd.Series(np.repeat(times, 100))
    y = np.zeros(len(as_of), dtype="int64")
    y[::10] = 1  # 10 conversions per as-of time, 120 in all
    cfg = Config.from_dict({"labels": {"horizon_days": 30}, "train": {"min_positives": 25}})
    with pytest.raises(InsufficientDataError) as info:
        time_folds(as_of, y, 30, cfg)
    text = str(info.value)
    assert "12 labelled as-of times (2024-01-01 to 2024-12-01) hold 120 conversions" in text
    assert "Setting train." in text and "would train on this history" in text
    setting = text.split("Setting ")[1].split(" would")[0]
    overrides = {}
    for part in setting.split(", "):
        key, value = part.split(" (")[0].split(": ")
        overrides["train__" + key.split(".")[1]] = float(value) if "." in value else int(value)
    folds = time_folds(as_of, y, 30, cfg.with_overrides(**overrides))  # the advice works
    assert folds.outer


def test_too_short_a_window_is_refused(sim_export):
    data = load(sim_export)
    monthly = Config.from_dict({"labels": {"frequency": "monthly", "min_history_days": 60}})
    with pytest.raises(InsufficientDataError, match="as-of times"):
        build_training_set(data, monthly, as_of="2023-05-01")
    # auto goes daily on four weeks of known labels, but three days are too few even so
    with pytest.raises(InsufficientDataError, match="no spacing reaches 24"):
        build_training_set(data, Config(), as_of="2023-04-03")


def test_folds_are_sized_by_conversions_for_a_growing_population():
    """Most rows are late: blocks hold whole as-of times, each with enough conversions."""
    times = pd.to_datetime([f"2024-{m:02d}-01" for m in range(1, 13)] + [f"2025-{m:02d}-01" for m in range(1, 13)])
    counts = np.linspace(50, 2000, len(times)).astype(int)
    as_of = pd.Series(np.repeat(times, counts))
    y = (np.arange(len(as_of)) % 25 == 0).astype("int64")
    cfg = Config.from_dict({"labels": {"horizon_days": 30}, "train": {"min_positives": 20}})
    folds = time_folds(as_of, y, 30, cfg)
    total = int(y.sum())
    values = as_of.to_numpy()
    for f in folds.folds:
        assert y[f.test].sum() >= max(20, 0.1 * total)
        assert len(np.unique(values[f.test])) >= 1
        assert not np.isin(np.unique(values[f.test]), np.unique(values[np.setdiff1d(np.arange(len(y)), f.test)])).any()
    assert len(folds.deploy) == len(y)


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


@pytest.mark.slow
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


@pytest.mark.parametrize("seed", [0, 1])
def test_linear_contributions_are_the_design_terms_summed_column_by_column(seed):
    """The linear half's contributions, computed feature by feature without the design, are the
    design's terms ``(z - zbar) * coef`` summed column by column, to the last digit: kept,
    pooled, unseen and missing categories, numbers with and without missing values."""
    from convert.model.linear import LinearScorer

    rng = np.random.default_rng(seed)
    n = 3000
    X = np.column_stack([
        rng.exponential(3.0, n),                            # never negative: log1p
        rng.normal(0.0, 2.0, n),                            # negative values: no log
        rng.choice([0, 1, 2, 3, 4, 5], n, p=[0.4, 0.3, 0.2, 0.07, 0.02, 0.01]).astype(float),  # rare ones pooled
        rng.choice([0, 1, 2], n).astype(float),             # every category kept
    ])
    X[rng.random((n, 4)) < np.array([0.1, 0.0, 0.05, 0.0])] = np.nan
    y = (rng.random(n) < 1 / (1 + np.exp(-(X[:, 1] + (np.nan_to_num(X[:, 3]) == 2))))).astype(int)
    lin = LinearScorer(min_frequency=50).fit(X, y, ["numeric", "numeric", "categorical", "categorical"])
    assert lin.columns_[2]["pooled"] and lin.columns_[2]["missing"] and not lin.columns_[3]["pooled"]
    new = X[:500].copy()
    new[:50, 3] = np.nan  # missing where training had none: no column of the feature is set
    new[50:100, 2] = 9.0  # a code never seen: pooled
    new[100:150, 3] = 7.0  # a code never seen where nothing is pooled: no column set
    new[150:200, 1] = np.nan  # missing where training had none: the median, no indicator
    Z, groups = lin._design(new)
    terms = (Z - lin.zbar_) * lin.coef_
    expected = np.zeros((len(new), 5))
    for c in range(terms.shape[1]):
        expected[:, groups[c]] += terms[:, c]
    expected[:, -1] = lin.base_raw
    got = lin.contributions(new)
    assert np.array_equal(got, expected)
    assert np.allclose(got.sum(axis=1), lin.raw(new), atol=1e-12)


@pytest.mark.parametrize("value", [1.4, 0.1, 4963.6, -2.9])
def test_linear_half_ignores_a_column_constant_in_training(value):
    """A column that never moved in a fold's training rows (a macro-economic rate, on a
    time-ordered split) carries no information: its rounding-error deviation (~1e-16) must not
    be taken for its scale, which turned any other value met later into ~1e15 standard
    deviations (the linear half's log-odds reached -4e15 on the bank data and every blend
    weight scored the same). Fitted with or without the column, the linear half predicts the
    same, whatever value the column takes later."""
    from convert.model.linear import LinearScorer

    rng = np.random.default_rng(7)
    n = 15935
    informative = rng.normal(0.0, 1.0, n)
    y = (rng.random(n) < 1 / (1 + np.exp(-(informative - 2.0)))).astype(int)
    X = np.column_stack([informative, np.full(n, value)])
    with_column = LinearScorer().fit(X, y, ["numeric", "numeric"])
    without = LinearScorer().fit(X[:, :1], y, ["numeric"])
    later = np.column_stack([rng.normal(0.0, 1.0, 200), np.full(200, value * 0.7 - 1.0)])
    raw = with_column.raw(later)
    assert np.all(np.abs(raw) < 20)
    assert np.allclose(raw, without.raw(later[:, :1]), atol=1e-6)


def test_blend_contributions_add_up_and_survive_a_round_trip(trained, tmp_path):
    """A log-odds blend's contributions are the weighted sum of both models': exact, per lead."""
    from convert.model.explain import contributions
    from convert.model.linear import LinearScorer
    from convert.scoring.score import score_frame

    result, _ = trained
    ts = result.training_set
    model = LeadScoringModel.load(result.model.save(tmp_path / "m"))
    fm = FeatureMatrix(ts.frame, ts.catalog).encode(model.spec_)
    kinds = [model.spec_.kinds[n] for n in model.spec_.names]
    model.blend(LinearScorer().fit(fm.values, ts.frame["label"].to_numpy(), kinds), 0.4)
    rows = ts.frame.tail(400)
    phi = contributions(model, model.matrix(rows))
    assert np.allclose(phi.sum(axis=1), model.predict_raw(rows), atol=1e-9)
    assert np.allclose(phi[:, -1], model.base_raw_)
    scored = score_frame(model, rows, Config().scoring, "m/1", pd.Timestamp("2025-07-01"))
    assert (scored["base_score"] + scored["fit_points"] + scored["engagement_points"] == scored["score"]).all()
    loaded = LeadScoringModel.load(model.save(tmp_path / "blend"))
    assert loaded.blend_weight_ == 0.4
    assert np.array_equal(loaded.predict_proba(rows), model.predict_proba(rows))
