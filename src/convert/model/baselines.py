"""Baselines: what a marketing or data team would use without convert, as models to beat.

A lead-scoring model is only worth running if it beats the simple things people
already do. Three are fitted on the same training rows as the model and evaluated on
the same hold-out:

* :class:`SourceRateBaseline` -- "leads from referrals convert at 8 %": the historical
  conversion rate of the lead's source, nothing else.
* :class:`LogisticBaseline` -- what a careful analyst builds in an afternoon: a
  regularised logistic regression on every feature, one-hot categories, log counts.
* :class:`PointsRuleBaseline` -- the hand-built points rule of a marketing-automation
  tool ("demo request +30, C-level +15"), from :class:`convert.config.BaselinesConfig`.

Each works on the features frame built by ``convert.features.engine`` (column names as in
``docs/architecture.md``; categorical columns as pandas ``category`` or strings), fits
with ``fit(X, y)`` and returns the probability of conversion, one value per row, from
``predict_proba(X)``. The frame should hold features only: no keys, no label.
"""

from __future__ import annotations

import numbers
import re
from abc import ABC, abstractmethod
from collections.abc import Callable
from functools import partial
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
import pandas as pd
from pandas.api.types import (
    is_bool_dtype,
    is_numeric_dtype,
    is_object_dtype,
    is_string_dtype,
)
from scipy.special import expit
from sklearn.base import BaseEstimator
from sklearn.compose import ColumnTransformer
from sklearn.impute import SimpleImputer
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from convert.config import BaselinesConfig
from convert.exceptions import (
    ConfigError,
    ConvertError,
    FeatureMismatchError,
    InsufficientDataError,
)

__all__ = [
    "Baseline",
    "LogisticBaseline",
    "PointsRuleBaseline",
    "SourceRateBaseline",
    "fit_baselines",
]

FloatArray = npt.NDArray[np.float64]

#: Placeholder a missing categorical value becomes before one-hot encoding, so "unknown
#: source" is a category of its own rather than an error or a silent drop.
_MISSING = "<missing>"

#: Window of the event counts the points rule reads (``n_{type}_90d``).
_POINTS_WINDOW_DAYS = 90


# --- shared checks ------------------------------------------------------------------------


def _check_frame(X: Any, what: str) -> pd.DataFrame:
    if not isinstance(X, pd.DataFrame):
        raise ConvertError(f"{what} expects a pandas DataFrame of features; got {type(X).__name__}")
    return X


def _check_labels(y: Any, n: int) -> npt.NDArray[np.int64]:
    arr = np.asarray(y)
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConvertError(f"y must be one 0/1 label per row ({n}); got shape {arr.shape}")
    try:
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ConvertError("y must hold 0/1 labels; found non-numeric values") from exc
    if not np.all((as_float == 0) | (as_float == 1)):
        raise ConvertError("y must hold 0/1 labels only")
    labels = as_float.astype(np.int64)
    positives = int(labels.sum())
    if positives == 0 or positives == n:
        raise InsufficientDataError(
            f"a baseline needs both converted and unconverted leads; got {n} rows with "
            f"{positives} positive labels"
        )
    return labels


def _require_columns(X: pd.DataFrame, columns: list[str], who: str) -> None:
    missing = [c for c in columns if c not in X.columns]
    if missing:
        raise FeatureMismatchError(
            f"{who} was fitted with columns the frame lacks: {missing[:10]}"
            + (f" and {len(missing) - 10} more" if len(missing) > 10 else "")
        )


def _is_categorical(series: pd.Series) -> bool:
    dtype = series.dtype
    return (
        isinstance(dtype, pd.CategoricalDtype) or is_object_dtype(dtype) or is_string_dtype(dtype)
    )


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _map_present(
    series: pd.Series, lookup: Callable[[Any], float | None], default: float, missing: float
) -> FloatArray:
    """``lookup(value)`` for each row, computed once per distinct value; *missing* for NA.

    ``lookup`` returns ``None`` for an unknown value, which then gets *default*.
    """
    codes, uniques = pd.factorize(series.astype(object), use_na_sentinel=True)
    per_value = np.array(
        [default if (v := lookup(u)) is None else float(v) for u in uniques], dtype=np.float64
    )
    out = np.full(codes.shape[0], missing, dtype=np.float64)
    present = codes >= 0
    out[present] = per_value[codes[present]]
    return out


def _slug(value: Any) -> str:
    """``"Financial Services"`` -> ``"financial_services"``: how the points rule matches values."""
    return re.sub(r"[^a-z0-9]+", "_", str(value).strip().lower()).strip("_")


def _slug_lookup(table: dict[str, float], value: Any) -> float | None:
    return table.get(_slug(value))


class Baseline(BaseEstimator, ABC):  # type: ignore[misc]
    """A model to beat: ``fit(X, y)`` on a features frame, ``predict_proba(X)`` -> P(convert)."""

    name: ClassVar[str]

    @abstractmethod
    def fit(self, X: pd.DataFrame, y: npt.ArrayLike) -> Baseline:
        """Learn from the features frame *X* and 0/1 outcomes *y*; return ``self``."""

    @abstractmethod
    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """Probability of conversion of each row of *X*, shape ``(n_rows,)``."""


# --- source rate --------------------------------------------------------------------------


class SourceRateBaseline(Baseline):
    """The historical conversion rate of the lead's source, and nothing else.

    The rate of source ``s`` is additively smoothed toward the overall rate ``r``:
    ``(positives_s + smoothing * r) / (n_s + smoothing)``, i.e. ``smoothing`` imaginary
    leads converting at the overall rate are added to every source, so a source seen
    three times does not get a rate of 0 % or 100 %. Leads without a source form a group
    of their own (missing often *means* something, e.g. an import); a source unseen in
    training gets the overall rate.

    Parameters
    ----------
    smoothing : float, default=10.0
        Pseudo-leads added to each source at the overall rate; >= 0.
    column : str, default="lead_source"
        The column holding the source.

    Attributes
    ----------
    rates_ : dict of str to float
        Smoothed conversion rate of every source seen in training.
    missing_rate_ : float
        Smoothed rate of leads without a source (the overall rate if none were seen).
    base_rate_ : float
        Overall training conversion rate.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"lead_source": ["web", "web", "referral", None]})
    >>> model = SourceRateBaseline(smoothing=0).fit(X, [0, 1, 1, 0])
    >>> model.predict_proba(pd.DataFrame({"lead_source": ["referral", "event", None]})).tolist()
    [1.0, 0.5, 0.0]
    """

    name: ClassVar[str] = "source_rate"

    def __init__(self, smoothing: float = 10.0, column: str = "lead_source") -> None:
        self.smoothing = smoothing
        self.column = column

    def fit(self, X: pd.DataFrame, y: npt.ArrayLike) -> SourceRateBaseline:
        """Count leads and conversions per source.

        Parameters
        ----------
        X : pandas.DataFrame
            Features; only ``column`` is read.
        y : array-like of shape (n_rows,)
            0/1 outcomes.

        Returns
        -------
        self : SourceRateBaseline
        """
        if not (_is_real(self.smoothing) and self.smoothing >= 0):
            raise ConfigError(f"smoothing must be a number >= 0; got {self.smoothing!r}")
        X = _check_frame(X, "SourceRateBaseline.fit")
        _require_columns(X, [self.column], "SourceRateBaseline")
        labels = _check_labels(y, X.shape[0])
        self.base_rate_ = float(labels.mean())

        source = X[self.column].astype(object)
        missing = source.isna().to_numpy()
        frame = pd.DataFrame(
            {"source": source[~missing].map(str).to_numpy(), "y": labels[~missing]}
        )
        grouped = frame.groupby("source", sort=True)["y"].agg(["sum", "count"])
        self.rates_ = {
            str(key): self._smoothed(float(row["sum"]), float(row["count"]))
            for key, row in grouped.iterrows()
        }
        self.missing_rate_ = self._smoothed(float(labels[missing].sum()), float(missing.sum()))
        return self

    def _smoothed(self, positives: float, n: float) -> float:
        if n + self.smoothing == 0:
            return self.base_rate_
        return (positives + self.smoothing * self.base_rate_) / (n + self.smoothing)

    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """The smoothed rate of each row's source (overall rate for an unseen source)."""
        check_is_fitted(self, ["rates_", "missing_rate_"])
        X = _check_frame(X, "SourceRateBaseline.predict_proba")
        _require_columns(X, [self.column], "SourceRateBaseline")
        return _map_present(
            X[self.column],
            lambda value: self.rates_.get(str(value)),
            default=self.base_rate_,
            missing=self.missing_rate_,
        )


# --- logistic regression ------------------------------------------------------------------


def _to_float(X: Any) -> FloatArray:
    """Numeric (incl. nullable and boolean) columns as a float array; missing -> NaN."""
    return np.asarray(pd.DataFrame(X).astype("float64").to_numpy(), dtype=np.float64)


def _log1p_counts(X: Any) -> FloatArray:
    """``log1p`` of non-negative columns, clipped at 0 so an unexpected negative stays finite."""
    arr = _to_float(X)
    return np.log1p(np.clip(arr, 0.0, None))


def _to_labels(X: Any) -> npt.NDArray[np.object_]:
    """Categorical columns as strings, missing as its own category ``"<missing>"``."""
    frame = pd.DataFrame(X).astype(object)
    return np.asarray(frame.where(frame.notna(), _MISSING).map(str).to_numpy(), dtype=object)


class LogisticBaseline(Baseline):
    """Regularised logistic regression on every feature: the analyst's baseline.

    Column kinds come from the dtype at fit time: ``category``, ``object`` and string
    columns are categorical, numeric and boolean columns are numeric. Numeric columns
    that are never negative in training (counts, days, amounts) get ``log1p``, since a
    lead's 50th page view says less than its first; all numeric columns are imputed with
    the training median plus a missing-indicator (missing is often informative, e.g. no
    firmographics) and standardised, so ``C`` penalises all coefficients alike.
    Categories rarer than ``min_frequency`` are pooled and categories unseen in training
    are encoded as all zeros (the reference level), never an error.

    Parameters
    ----------
    C : float, default=1.0
        Inverse L2 regularisation strength; > 0.
    min_frequency : int, default=10
        Categories with fewer training rows are pooled into one "infrequent" column.
    max_iter : int, default=2000
        Iterations of the L-BFGS solver; generous, the problem is convex and scaled.
    seed : int, default=42
        Random state of the solver (kept for reproducibility of the contract; L-BFGS
        is deterministic).

    Attributes
    ----------
    pipeline_ : sklearn.pipeline.Pipeline
        Preprocessing and the fitted logistic regression.
    feature_names_in_ : list of str
        Columns seen at fit, required at predict.
    categorical_columns_, count_columns_, signed_columns_ : list of str
        How each column was treated.
    """

    name: ClassVar[str] = "logistic_regression"

    def __init__(
        self, C: float = 1.0, min_frequency: int = 10, max_iter: int = 2000, seed: int = 42
    ) -> None:
        self.C = C
        self.min_frequency = min_frequency
        self.max_iter = max_iter
        self.seed = seed

    def _validate_params(self) -> None:
        if not (_is_real(self.C) and self.C > 0):
            raise ConfigError(f"C must be a positive number; got {self.C!r}")
        if not (_is_integer(self.min_frequency) and self.min_frequency >= 1):
            raise ConfigError(f"min_frequency must be an integer >= 1; got {self.min_frequency!r}")
        if not (_is_integer(self.max_iter) and self.max_iter >= 1):
            raise ConfigError(f"max_iter must be an integer >= 1; got {self.max_iter!r}")

    def fit(self, X: pd.DataFrame, y: npt.ArrayLike) -> LogisticBaseline:
        """Choose column treatments from the dtypes and fit the pipeline.

        Parameters
        ----------
        X : pandas.DataFrame
            Features (numeric, boolean, category or string columns).
        y : array-like of shape (n_rows,)
            0/1 outcomes.

        Returns
        -------
        self : LogisticBaseline
        """
        self._validate_params()
        X = _check_frame(X, "LogisticBaseline.fit")
        labels = _check_labels(y, X.shape[0])
        if X.shape[1] == 0:
            raise FeatureMismatchError("LogisticBaseline needs at least one feature column")

        categorical: list[str] = []
        counts: list[str] = []
        signed: list[str] = []
        for column in X.columns:
            series = X[column]
            if _is_categorical(series):
                categorical.append(str(column))
            elif is_bool_dtype(series.dtype) or is_numeric_dtype(series.dtype):
                values = _to_float(series.to_frame())
                # All-missing columns count as non-negative; the imputer keeps them (as 0).
                (counts if not np.any(values < 0) else signed).append(str(column))
            else:
                raise FeatureMismatchError(
                    f"LogisticBaseline cannot use column {column!r} of dtype {series.dtype}; "
                    "pass numeric, boolean, category or string features only"
                )

        def numeric_steps(log: bool) -> list[tuple[str, Any]]:
            first = FunctionTransformer(
                _log1p_counts if log else _to_float, feature_names_out="one-to-one"
            )
            return [
                ("cast", first),
                (
                    "impute",
                    SimpleImputer(strategy="median", add_indicator=True, keep_empty_features=True),
                ),
                ("scale", StandardScaler()),
            ]

        branches: list[tuple[str, Any, list[str]]] = []
        if counts:
            branches.append(("counts", Pipeline(numeric_steps(log=True)), counts))
        if signed:
            branches.append(("signed", Pipeline(numeric_steps(log=False)), signed))
        if categorical:
            encoder = OneHotEncoder(
                handle_unknown="ignore", min_frequency=self.min_frequency, sparse_output=False
            )
            branches.append(
                (
                    "categorical",
                    Pipeline(
                        [
                            (
                                "labels",
                                FunctionTransformer(_to_labels, feature_names_out="one-to-one"),
                            ),
                            ("onehot", encoder),
                        ]
                    ),
                    categorical,
                )
            )

        self.pipeline_ = Pipeline(
            [
                ("prepare", ColumnTransformer(branches, remainder="drop", sparse_threshold=0.0)),
                (
                    "model",
                    LogisticRegression(C=self.C, max_iter=self.max_iter, random_state=self.seed),
                ),
            ]
        )
        self.feature_names_in_ = [str(c) for c in X.columns]
        self.categorical_columns_ = categorical
        self.count_columns_ = counts
        self.signed_columns_ = signed
        with threadpool_limits(limits=1, user_api="blas"):  # the same digits on any machine (model.linear)
            self.pipeline_.fit(X[self.feature_names_in_], labels)
        return self

    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """Probability of conversion of each row (the positive class only, 1-D)."""
        check_is_fitted(self, ["pipeline_"])
        X = _check_frame(X, "LogisticBaseline.predict_proba")
        _require_columns(X, self.feature_names_in_, "LogisticBaseline")
        proba = self.pipeline_.predict_proba(X[self.feature_names_in_])
        return np.asarray(proba[:, 1], dtype=np.float64)


# --- points rule --------------------------------------------------------------------------


class PointsRuleBaseline(Baseline):
    """The marketing team's hand-built points rule, turned into a fair probability.

    Points, from :class:`convert.config.BaselinesConfig`:

    * ``event_points[T]`` for every ``T`` event in the last 90 days (column
      ``n_{T}_90d``, where present; a missing count is 0);
    * ``industry_points`` for the lead's ``industry``;
    * ``employees_points`` when ``employees >= min_employees``;
    * ``seniority_points`` for the lead's ``seniority``.

    Categorical values are matched case-insensitively after slugging
    (``"Financial Services"`` matches ``financial_services``); unlisted or missing
    values earn 0. Points are not a probability, so a one-dimensional Platt fit on the
    training rows maps them to one: the rule is then judged on its ranking and on
    calibration it could have had, not punished for its arbitrary scale.

    Parameters
    ----------
    config : BaselinesConfig or None, default=None
        The rule; ``None`` means the defaults.

    Attributes
    ----------
    columns_used_ : list of str
        Rule columns found in the training frame (required again at predict).
    slope_, intercept_ : float
        Platt map ``sigmoid(slope_ * points + intercept_)``.

    Examples
    --------
    >>> import pandas as pd
    >>> X = pd.DataFrame({"n_demo_request_90d": [1, 0], "seniority": ["VP", None]})
    >>> PointsRuleBaseline().points(X).tolist()
    [42.0, 0.0]
    """

    name: ClassVar[str] = "points_rule"

    def __init__(self, config: BaselinesConfig | None = None) -> None:
        self.config = config

    def _rule(self) -> BaselinesConfig:
        config = BaselinesConfig() if self.config is None else self.config
        if not isinstance(config, BaselinesConfig):
            raise ConfigError(f"config must be a BaselinesConfig; got {type(config).__name__}")
        return config

    def _rule_columns(self, X: pd.DataFrame) -> list[str]:
        rule = self._rule()
        wanted = [f"n_{t}_{_POINTS_WINDOW_DAYS}d" for t in rule.event_points]
        if rule.industry_points:
            wanted.append("industry")
        if rule.employees_points:
            wanted.append("employees")
        if rule.seniority_points:
            wanted.append("seniority")
        return [c for c in wanted if c in X.columns]

    def points(self, X: pd.DataFrame) -> FloatArray:
        """Raw points of each row under the rule (needs no fitting).

        Parameters
        ----------
        X : pandas.DataFrame
            Features; rule columns absent from *X* contribute nothing.

        Returns
        -------
        ndarray of shape (n_rows,)
        """
        X = _check_frame(X, "PointsRuleBaseline.points")
        rule = self._rule()
        total = np.zeros(X.shape[0], dtype=np.float64)
        for event_type, pts in rule.event_points.items():
            column = f"n_{event_type}_{_POINTS_WINDOW_DAYS}d"
            if column in X.columns:
                count = pd.to_numeric(X[column], errors="coerce").astype("float64").fillna(0.0)
                total += float(pts) * count.to_numpy(dtype=np.float64)
        for column, table in (
            ("industry", rule.industry_points),
            ("seniority", rule.seniority_points),
        ):
            if column in X.columns and table:
                lookup = {_slug(k): float(v) for k, v in table.items()}
                total += _map_present(
                    X[column],
                    partial(_slug_lookup, lookup),
                    default=0.0,
                    missing=0.0,
                )
        if "employees" in X.columns and rule.employees_points:
            employees = pd.to_numeric(X["employees"], errors="coerce").astype("float64")
            large = (employees >= rule.min_employees).fillna(False).to_numpy(dtype=bool)
            total += np.where(large, float(rule.employees_points), 0.0)
        return total

    def fit(self, X: pd.DataFrame, y: npt.ArrayLike) -> PointsRuleBaseline:
        """Score the training rows with the rule and fit the Platt map on the points.

        Parameters
        ----------
        X : pandas.DataFrame
            Features holding at least one column the rule reads.
        y : array-like of shape (n_rows,)
            0/1 outcomes.

        Returns
        -------
        self : PointsRuleBaseline
        """
        X = _check_frame(X, "PointsRuleBaseline.fit")
        labels = _check_labels(y, X.shape[0])
        used = self._rule_columns(X)
        if not used:
            raise FeatureMismatchError(
                "the points rule reads none of the frame's columns: expected some of "
                f"n_<event>_{_POINTS_WINDOW_DAYS}d, industry, employees, seniority"
            )
        pts = self.points(X)
        center = float(pts.mean())
        scale = float(pts.std()) or 1.0
        # Nearly unregularised: two parameters, many rows; C only guards against separation.
        platt = LogisticRegression(C=1e4, max_iter=1000)
        with threadpool_limits(limits=1, user_api="blas"):
            platt.fit(((pts - center) / scale).reshape(-1, 1), labels)
        slope = float(platt.coef_[0, 0])
        self.slope_ = slope / scale
        self.intercept_ = float(platt.intercept_[0]) - slope * center / scale
        self.columns_used_ = used
        return self

    def predict_proba(self, X: pd.DataFrame) -> FloatArray:
        """Platt-mapped probability of the rule's points."""
        check_is_fitted(self, ["slope_", "intercept_"])
        X = _check_frame(X, "PointsRuleBaseline.predict_proba")
        _require_columns(X, self.columns_used_, "PointsRuleBaseline")
        eta = self.slope_ * self.points(X) + self.intercept_
        return np.asarray(expit(eta), dtype=np.float64)


# --- all of them --------------------------------------------------------------------------


def fit_baselines(
    X_train: pd.DataFrame, y_train: npt.ArrayLike, config: BaselinesConfig, seed: int
) -> dict[str, Baseline]:
    """Fit the three baselines on the training rows.

    Parameters
    ----------
    X_train : pandas.DataFrame
        Training features (the model's training slice).
    y_train : array-like of shape (n_rows,)
        0/1 outcomes.
    config : BaselinesConfig
        The points rule.
    seed : int
        Seed of the logistic regression.

    Returns
    -------
    dict of str to Baseline
        ``source_rate``, ``logistic_regression`` and ``points_rule``, fitted.
    """
    baselines: list[Baseline] = [
        SourceRateBaseline(),
        LogisticBaseline(seed=seed),
        PointsRuleBaseline(config=config),
    ]
    return {b.name: b.fit(X_train, y_train) for b in baselines}
