"""TreeExplainerFast gives LightGBM's pred_contrib numbers (exact path-dependent TreeSHAP)."""

from __future__ import annotations

from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import pytest

from convert.exceptions import ConvertError
from convert.model import treeshap
from convert.model.treeshap import TreeExplainerFast, UnsupportedModelError, lightgbm_matrix

TOL = 1e-6
N_TRAIN = 2500
N_EXPLAIN = 300


def _frame(rng: np.random.Generator, n: int, *, predict: bool = False) -> pd.DataFrame:
    """Lead-like columns: NaNs, many zeros, a never-missing column, two wide categoricals."""
    df = pd.DataFrame(
        {
            "nan_a": np.where(rng.random(n) < 0.25, np.nan, rng.normal(size=n)),
            "nan_b": np.where(rng.random(n) < 0.10, np.nan, rng.exponential(30.0, n)),
            "zeros_a": np.where(rng.random(n) < 0.5, 0.0, rng.poisson(3.0, n)).astype(float),
            "zeros_b": np.where(rng.random(n) < 0.3, 0.0, rng.normal(size=n)),
            "dense": rng.normal(size=n),
            "negative": -rng.exponential(1.0, n),
        }
    )
    cat_a = rng.integers(0, 40, n)
    cat_b = rng.integers(0, 90, n)
    if predict:
        # unseen categories (beyond the training list) and missing categories
        cat_a = np.where(rng.random(n) < 0.1, rng.integers(40, 60, n), cat_a)
        # NaN where training never saw one
        df["dense"] = np.where(rng.random(n) < 0.1, np.nan, df["dense"])
    df["cat_a"] = pd.Categorical(
        np.where(rng.random(n) < 0.1, None, np.array([f"a{c}" for c in cat_a], dtype=object)),
        categories=[f"a{c}" for c in range(40)] if not predict else None,
    )
    df["cat_b"] = pd.Categorical(np.array([f"b{c}" for c in cat_b], dtype=object))
    for i in range(6):  # weaker numeric signals, so that deep paths hold many distinct features
        df[f"x{i}"] = rng.normal(size=n)
    return df


def _label(rng: np.random.Generator, df: pd.DataFrame) -> np.ndarray:
    codes_a = df["cat_a"].cat.codes.to_numpy()
    codes_b = df["cat_b"].cat.codes.to_numpy()
    logit = (
        np.nan_to_num(df["nan_a"].to_numpy())
        + 0.02 * np.nan_to_num(df["nan_b"].to_numpy(), nan=-20.0)
        + 0.3 * (df["zeros_a"].to_numpy() == 0)
        + df["zeros_b"].to_numpy()
        + 0.5 * df["dense"].to_numpy()
        + (codes_a % 3 == 0)
        - 0.8 * (codes_b % 5 == 1)
        + 0.5 * (codes_a < 0)
        + 0.3 * np.sin(3 * df[[f"x{i}" for i in range(6)]].to_numpy()).sum(axis=1)
    )
    return (rng.random(len(df)) < 1.0 / (1.0 + np.exp(-logit))).astype(int)


@pytest.fixture(scope="module")
def data() -> dict[str, Any]:
    rng = np.random.default_rng(7)
    train = _frame(rng, N_TRAIN)
    y = _label(rng, train)
    test = _frame(rng, N_EXPLAIN, predict=True)
    # as LightGBM sees it at prediction time, plus raw codes LightGBM would also accept
    mat = lightgbm_matrix(
        test, [list(train["cat_a"].cat.categories), list(train["cat_b"].cat.categories)]
    )
    odd = mat.copy()
    odd[:20, 6] = [-1, -0.5, 2.7, 1e12, -3, 39.0, 40.0, 1000.0, np.inf, -np.inf] * 2
    odd[20:30, 0] = [0.0, -0.0, 1e-40, -1e-40, np.inf, -np.inf, np.nan, 0.0, 1e300, -1e300]
    odd[30:40, 2] = [0.0, -0.0, 1e-36, -1e-36, 1e-34, np.nan, np.inf, 0.0, 0.0, np.nan]
    mat = np.vstack([mat, odd])
    return {"train": train, "y": y, "test": test, "mat": mat}


def _train(data: dict[str, Any], params: dict[str, Any], rounds: int = 30) -> lgb.Booster:
    base = {
        "objective": "binary",
        "learning_rate": 0.1,
        "verbose": -1,
        "num_threads": 1,
        "min_data_in_leaf": 5,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
        "max_cat_to_onehot": 2,
        "deterministic": True,
        "seed": 1,
    }
    base.update(params)
    return lgb.train(base, lgb.Dataset(data["train"], data["y"]), rounds)


def _check(booster: lgb.Booster, mat: np.ndarray, **kwargs: Any) -> TreeExplainerFast:
    ref = booster.predict(mat, pred_contrib=True, num_threads=1)
    explainer = TreeExplainerFast(booster, **kwargs)
    ours = explainer.contributions(mat)
    assert ours.shape == ref.shape
    assert np.all(np.isfinite(ours))
    diff = np.abs(ours - ref).max()
    assert diff <= TOL, f"max abs diff {diff:.3g}"
    assert explainer.expected_value_ == pytest.approx(ref[0, -1], abs=1e-12)
    return explainer


def _kinds(explainer: TreeExplainerFast) -> set[int]:
    return set(np.unique(explainer._node_kind).tolist())


@pytest.mark.parametrize("depth", [2, 3, 4, 5, 6, 8, 10, 12])
def test_matches_pred_contrib_by_depth(data: dict[str, Any], depth: int) -> None:
    booster = _train(data, {"max_depth": depth, "num_leaves": min(2**depth, 96)}, rounds=25)
    explainer = _check(booster, data["mat"])
    # numerical splits with NaN-missing and categorical many-vs-many splits both occur
    assert {treeshap._NUM_NAN, treeshap._CAT} <= _kinds(explainer)
    if depth >= 10:
        assert explainer._leaf_d.max() > 8  # deep paths go through the quadrature path
        assert explainer.n_direct_leaves_ > 0


def test_missing_zero_and_none(data: dict[str, Any]) -> None:
    zero = _train(data, {"max_depth": 6, "num_leaves": 40, "zero_as_missing": True})
    assert treeshap._NUM_ZERO in _kinds(_check(zero, data["mat"]))
    none = _train(data, {"max_depth": 6, "num_leaves": 40, "use_missing": False})
    assert treeshap._NUM_NONE in _kinds(_check(none, data["mat"]))


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_table_mb": 0},  # every leaf integrated per row
        {"max_table_bits": 12, "max_table_mb": 512},  # every leaf from a table
        {"max_table_bits": 3, "block_rows": 7},
    ],
)
def test_tables_and_quadrature_agree(data: dict[str, Any], kwargs: dict[str, Any]) -> None:
    booster = _train(data, {"max_depth": 9, "num_leaves": 64}, rounds=20)
    _check(booster, data["mat"], **kwargs)


def test_long_paths_evaluated_node_by_node(
    data: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    # paths with more distinct features than pattern bits take the row-by-row branch
    monkeypatch.setattr(treeshap, "_MASK_BITS", 3)
    booster = _train(data, {"max_depth": 8, "num_leaves": 48}, rounds=15)
    explainer = _check(booster, data["mat"])
    assert explainer.n_path_leaves_ > 0


def test_dataframe_input_like_lightgbm(data: dict[str, Any]) -> None:
    booster = _train(data, {"max_depth": 6, "num_leaves": 40})
    test = data["test"].copy()
    # categories listed in another order than in training: LightGBM re-codes by label
    test["cat_b"] = test["cat_b"].cat.reorder_categories(test["cat_b"].cat.categories[::-1])
    ref = booster.predict(test, pred_contrib=True)
    explainer = TreeExplainerFast(booster)
    ours = explainer.contributions(test, chunk_rows=64)
    assert np.abs(ours - ref).max() <= TOL
    # the helper is value-for-value what LightGBM builds from the frame
    lgb_mat = lgb.basic._data_from_pandas(test, "auto", "auto", booster.pandas_categorical)[0]
    np.testing.assert_array_equal(lightgbm_matrix(test, booster.pandas_categorical), lgb_mat)
    # rows add up to the raw score
    raw = booster.predict(test, raw_score=True)
    np.testing.assert_allclose(ours.sum(axis=1), raw, atol=1e-9)
    with pytest.raises(ValueError, match="categorical features do not match"):
        lightgbm_matrix(test.drop(columns=["cat_a"]), booster.pandas_categorical)


def test_numpy_model_regression_and_single_leaf_trees() -> None:
    rng = np.random.default_rng(3)
    X = rng.normal(size=(400, 5))
    X[:, 4] = rng.integers(0, 12, 400)
    X[rng.random(400) < 0.1, 0] = np.nan
    y = X[:, 1] + (X[:, 4] % 2)
    params = {
        "objective": "regression",
        "verbose": -1,
        "num_threads": 1,
        "num_leaves": 15,
        "min_data_in_leaf": 5,
        "max_cat_to_onehot": 2,
        "min_data_per_group": 5,
        "cat_smooth": 1.0,
    }
    booster = lgb.train(params, lgb.Dataset(X, y, categorical_feature=[4]), 20)
    _check(booster, X[:100])
    # a label with nothing to learn: trees are single leaves, only the expected value moves
    flat = lgb.train(
        {**params, "min_gain_to_split": 1e9},
        lgb.Dataset(X, rng.normal(size=400), categorical_feature=[4]),
        5,
    )
    explainer = _check(flat, X[:50])
    assert explainer.contributions(X[:50])[:, :-1].max() == 0.0


def test_best_iteration_and_num_iteration(data: dict[str, Any]) -> None:
    train, y = data["train"], data["y"]
    params = {
        "objective": "binary",
        "verbose": -1,
        "num_leaves": 15,
        "learning_rate": 0.3,
        "num_threads": 1,
    }
    booster = lgb.train(
        params,
        lgb.Dataset(train.iloc[:2000], y[:2000]),
        200,
        valid_sets=[lgb.Dataset(train.iloc[2000:], y[2000:])],
        callbacks=[lgb.early_stopping(3, verbose=False)],
        keep_training_booster=True,  # keeps the trees past the best iteration
    )
    assert 0 < booster.best_iteration < booster.current_iteration()
    _check(booster, data["mat"])  # predict() and the explainer both default to best_iteration
    ref = booster.predict(data["mat"], pred_contrib=True, num_iteration=2, num_threads=1)
    ours = TreeExplainerFast(booster, num_iteration=2).contributions(data["mat"])
    assert np.abs(ours - ref).max() <= TOL


def test_unsupported_models_and_bad_input(data: dict[str, Any]) -> None:
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 3))
    y = X[:, 0] + rng.normal(size=300)
    linear = lgb.train(
        {"objective": "regression", "linear_tree": True, "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, y),
        3,
    )
    with pytest.raises(UnsupportedModelError, match="linear_tree"):
        TreeExplainerFast(linear)
    multi = lgb.train(
        {"objective": "multiclass", "num_class": 3, "verbose": -1, "num_threads": 1},
        lgb.Dataset(X, (y > 0).astype(int) + (y > 1)),
        3,
    )
    with pytest.raises(ConvertError, match="single-output"):
        TreeExplainerFast(multi)
    explainer = TreeExplainerFast(
        lgb.train(
            {"objective": "regression", "verbose": -1, "num_threads": 1}, lgb.Dataset(X, y), 3
        )
    )
    with pytest.raises(ValueError, match="3 columns"):
        explainer.contributions(X[:, :2])
    assert explainer.contributions(X[:0]).shape == (0, 4)
