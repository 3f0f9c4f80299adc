"""Calibrators: a model's raw score (log-odds, any real number) to a probability.

LightGBM's raw score ranks leads well but its probabilities are rarely honest: early
stopping, class imbalance and regularisation all bend them. A calibrator is a
one-dimensional, *strictly increasing* map fitted on rows the booster never saw (the
calibration slice), so that a lead scored 0.2 converts about one time in five.

Strictly increasing matters twice. It keeps the booster's ranking (no ties created,
none reversed), and the explanation step turns raw-score contributions into score
points through this map: a flat stretch would give every lead on it the same
probability and every reason on it zero points. Hence the isotonic calibrator here is
*interpolated* between its steps instead of being sklearn's step function.

Both calibrators serialise to a small JSON-safe ``dict`` (:meth:`Calibrator.to_dict`),
so a calibrator travels inside the model bundle without pickles, and
:func:`calibrator_from_dict` rebuilds it with identical predictions.

Examples
--------
>>> import numpy as np
>>> rng = np.random.default_rng(0)
>>> raw = rng.normal(size=2000)
>>> y = (rng.random(2000) < 1 / (1 + np.exp(-(raw - 1) / 2))).astype(int)
>>> calibrator, cv_log_loss = select_calibrator(raw, y, seed=0)
>>> sorted(cv_log_loss)
['isotonic', 'sigmoid']
>>> restored = calibrator_from_dict(calibrator.to_dict())
>>> bool(np.array_equal(restored.predict(raw), calibrator.predict(raw)))
True
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import numpy as np
import numpy.typing as npt
from scipy.optimize import minimize
from scipy.special import expit, log_expit
from sklearn.base import BaseEstimator
from sklearn.isotonic import isotonic_regression
from sklearn.model_selection import StratifiedKFold
from sklearn.utils.validation import check_is_fitted
from threadpoolctl import threadpool_limits

from convert.exceptions import ConfigError, ConvertError, InsufficientDataError

__all__ = [
    "PROBABILITY_EPSILON",
    "Calibrator",
    "IsotonicCalibrator",
    "SigmoidCalibrator",
    "calibrator_from_dict",
    "select_calibrator",
]

#: Calibrated probabilities are clipped to ``[PROBABILITY_EPSILON, 1 - PROBABILITY_EPSILON]``:
#: no lead is ever certain, and log loss and log-odds stay finite.
PROBABILITY_EPSILON: float = 1e-6

#: Version of the ``to_dict`` layout; bump it when the layout changes.
_FORMAT_VERSION = 1

FloatArray = npt.NDArray[np.float64]


# --- input checks -------------------------------------------------------------------------


def _as_raw(raw: npt.ArrayLike, *, name: str = "raw") -> FloatArray:
    """*raw* as a finite 1-D float array, or a :class:`ConvertError` saying what was found."""
    arr = np.asarray(raw, dtype=np.float64)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1:
        raise ConvertError(f"{name} must be one score per row (1-D); got shape {arr.shape}")
    if not np.all(np.isfinite(arr)):
        bad = int(np.count_nonzero(~np.isfinite(arr)))
        raise ConvertError(f"{name} must be finite raw scores; found {bad} NaN or infinite values")
    return arr


def _as_labels(y: npt.ArrayLike, n: int) -> npt.NDArray[np.int64]:
    """*y* as a 1-D array of 0/1 labels of length *n*."""
    arr = np.asarray(y)
    if arr.ndim == 2 and arr.shape[1] == 1:
        arr = arr[:, 0]
    if arr.ndim != 1 or arr.shape[0] != n:
        raise ConvertError(f"y must be one 0/1 label per raw score ({n}); got shape {arr.shape}")
    try:
        as_float = arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ConvertError("y must hold 0/1 labels; found non-numeric values") from exc
    if not np.all((as_float == 0) | (as_float == 1)):
        found = np.unique(as_float[~((as_float == 0) | (as_float == 1))])[:5]
        raise ConvertError(f"y must hold 0/1 labels; found {found.tolist()}")
    return as_float.astype(np.int64)


def _check_fit_input(
    raw: npt.ArrayLike, y: npt.ArrayLike
) -> tuple[FloatArray, npt.NDArray[np.int64]]:
    x = _as_raw(raw)
    labels = _as_labels(y, x.shape[0])
    positives = int(labels.sum())
    if positives == 0 or positives == labels.shape[0]:
        raise InsufficientDataError(
            f"calibration needs both converted and unconverted leads; got {labels.shape[0]} rows "
            f"with {positives} positive labels"
        )
    return x, labels


def _is_real(value: object) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _is_integer(value: object) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def _clip_probability(p: FloatArray) -> FloatArray:
    return np.clip(p, PROBABILITY_EPSILON, 1.0 - PROBABILITY_EPSILON)


def _log_loss(y: npt.NDArray[np.int64], p: FloatArray) -> float:
    p = _clip_probability(p)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log1p(-p)))


def _float_list(values: FloatArray) -> list[float]:
    return [float(v) for v in values]


# --- the calibrators ----------------------------------------------------------------------


class Calibrator(BaseEstimator, ABC):  # type: ignore[misc]
    """A fitted, strictly increasing map from raw score (log-odds) to probability.

    Subclasses implement :meth:`fit`, :meth:`predict`, :meth:`to_dict` and
    :meth:`from_dict`, and name themselves in :attr:`method` (the key
    :func:`calibrator_from_dict` dispatches on).
    """

    method: ClassVar[str]

    @abstractmethod
    def fit(self, raw: npt.ArrayLike, y: npt.ArrayLike) -> Calibrator:
        """Learn the map from raw scores *raw* and 0/1 outcomes *y*; return ``self``."""

    @abstractmethod
    def predict(self, raw: npt.ArrayLike) -> FloatArray:
        """Calibrated probabilities for raw scores, in ``[1e-6, 1 - 1e-6]``."""

    @abstractmethod
    def to_dict(self) -> dict[str, Any]:
        """The fitted calibrator as a JSON-serialisable ``dict`` (floats, lists, strings)."""

    @classmethod
    @abstractmethod
    def from_dict(cls, data: dict[str, Any]) -> Calibrator:
        """Rebuild a fitted calibrator from :meth:`to_dict` output."""

    def _header(self) -> dict[str, Any]:
        return {"method": self.method, "version": _FORMAT_VERSION}

    @classmethod
    def _check_header(cls, data: dict[str, Any]) -> None:
        if not isinstance(data, dict) or data.get("method") != cls.method:
            found = data.get("method") if isinstance(data, dict) else type(data).__name__
            raise ConvertError(f"not a stored {cls.method} calibrator (method is {found!r})")
        if data.get("version") != _FORMAT_VERSION:
            raise ConvertError(
                f"stored {cls.method} calibrator has format version {data.get('version')!r}; "
                f"this version of convert reads version {_FORMAT_VERSION}"
            )


class SigmoidCalibrator(Calibrator):
    """Platt scaling: ``p = sigmoid(slope * raw + intercept)`` with ``slope > 0``.

    Two parameters, so it needs few calibration rows and cannot overfit much; it fixes
    the usual miscalibration of a boosted model (over- or under-confident log-odds,
    shifted base rate) but not an irregular shape, which :class:`IsotonicCalibrator`
    can follow given enough rows.

    The parameters maximise the likelihood of Platt's smoothed targets
    ``(n_pos + 1) / (n_pos + 2)`` and ``1 / (n_neg + 2)`` instead of the bare 0/1 labels:
    without them a raw score that separates the classes perfectly sends the slope to
    infinity. The slope is bounded below by ``min_slope`` so the map is strictly
    increasing even for a raw score that carries no (or reversed) signal, because the
    explanation points must follow the raw score.

    Parameters
    ----------
    min_slope : float, default=1e-6
        Smallest slope allowed, in probability log-odds per raw-score unit; must be > 0.

    Attributes
    ----------
    slope_ : float
        Fitted slope (log-odds of the probability per unit of raw score).
    intercept_ : float
        Fitted intercept.
    n_samples_ : int
        Rows the calibrator was fitted on.

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([-3.0, -2.0, -1.0, 0.0, 1.0, 2.0, 3.0, 4.0])
    >>> y = np.array([0, 0, 1, 0, 0, 1, 1, 1])
    >>> cal = SigmoidCalibrator().fit(raw, y)
    >>> bool(cal.slope_ > 0)
    True
    """

    method: ClassVar[str] = "sigmoid"

    def __init__(self, min_slope: float = 1e-6) -> None:
        self.min_slope = min_slope

    def fit(self, raw: npt.ArrayLike, y: npt.ArrayLike) -> SigmoidCalibrator:
        """Fit slope and intercept by maximum likelihood on Platt's targets.

        Parameters
        ----------
        raw : array-like of shape (n_samples,)
            Raw (log-odds) scores of the model on the calibration rows.
        y : array-like of shape (n_samples,)
            0/1 outcomes of the same rows; both classes must occur.

        Returns
        -------
        self : SigmoidCalibrator
        """
        if not (_is_real(self.min_slope) and self.min_slope > 0):
            raise ConfigError(f"min_slope must be a positive number; got {self.min_slope!r}")
        x, labels = _check_fit_input(raw, y)
        n_pos = int(labels.sum())
        n_neg = labels.shape[0] - n_pos
        target = np.where(labels == 1, (n_pos + 1.0) / (n_pos + 2.0), 1.0 / (n_neg + 2.0))

        prior = (n_pos + 1.0) / (labels.shape[0] + 2.0)
        center = float(np.mean(x))
        scale = float(np.std(x))
        if scale == 0.0:
            # One raw score for every row: nothing says how steep the map is, so keep it as
            # flat as allowed, through the smoothed base rate.
            self.slope_ = float(self.min_slope)
            self.intercept_ = math.log(prior / (1.0 - prior)) - self.slope_ * center
            self.n_samples_ = int(labels.shape[0])
            return self

        # Optimise on the standardised score for conditioning, then map back.
        z = (x - center) / scale
        # The optimiser evaluates the objective a few dozen times per fit, and select_calibrator
        # fits once per fold: the arrays are allocated once and every step is done in place.
        not_target = 1.0 - target
        eta, log_p, log_q = np.empty_like(z), np.empty_like(z), np.empty_like(z)

        def objective(params: FloatArray) -> tuple[float, FloatArray]:
            a, b = params
            np.add(np.multiply(z, a, out=eta), b, out=eta)
            # -sum(t*log(p) + (1-t)*log(1-p)) with log p = log_expit(eta), log(1-p) = log_expit(-eta)
            np.multiply(log_expit(eta, out=log_p), target, out=log_p)
            np.multiply(log_expit(np.negative(eta, out=log_q), out=log_q), not_target, out=log_q)
            loss = -float(np.sum(np.add(log_p, log_q, out=log_p)))
            resid = np.subtract(expit(eta, out=log_q), target, out=log_q)
            return loss, np.array([float(np.dot(resid, z)), float(np.sum(resid))])

        start = np.array([1.0, math.log(prior / (1.0 - prior))])
        # One BLAS thread: with two parameters, OpenBLAS's threads cost more to wake than the
        # dot products and the tiny L-BFGS-B solves they would share (about 3x the CPU time of
        # the fit on 2 cores, more on a busy machine). It also makes the fit, to the last digit,
        # independent of the machine's core count: a threaded dot product sums in pieces.
        with threadpool_limits(limits=1, user_api="blas"):
            result = minimize(
                objective,
                start,
                jac=True,
                method="L-BFGS-B",
                bounds=[(self.min_slope * scale, None), (None, None)],
            )
        a, b = (float(v) for v in result.x)
        self.slope_ = a / scale
        self.intercept_ = b - a * center / scale
        self.n_samples_ = int(labels.shape[0])
        return self

    def predict(self, raw: npt.ArrayLike) -> FloatArray:
        """Calibrated probabilities ``sigmoid(slope_ * raw + intercept_)``, clipped.

        Parameters
        ----------
        raw : array-like of shape (n_samples,)
            Raw (log-odds) scores.

        Returns
        -------
        probability : ndarray of shape (n_samples,)
        """
        check_is_fitted(self, ["slope_", "intercept_"])
        x = _as_raw(raw)
        return _clip_probability(expit(self.slope_ * x + self.intercept_))

    def to_dict(self) -> dict[str, Any]:
        """``{"method": "sigmoid", "version", "slope", "intercept", "n_samples", "min_slope"}``."""
        check_is_fitted(self, ["slope_", "intercept_"])
        return {
            **self._header(),
            "slope": float(self.slope_),
            "intercept": float(self.intercept_),
            "n_samples": int(self.n_samples_),
            "min_slope": float(self.min_slope),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SigmoidCalibrator:
        """Rebuild from :meth:`to_dict` output (predictions are identical)."""
        cls._check_header(data)
        try:
            cal = cls(min_slope=float(data["min_slope"]))
            cal.slope_ = float(data["slope"])
            cal.intercept_ = float(data["intercept"])
            cal.n_samples_ = int(data["n_samples"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError(
                f"stored sigmoid calibrator is incomplete or malformed: {exc}"
            ) from exc
        if not (math.isfinite(cal.slope_) and cal.slope_ > 0 and math.isfinite(cal.intercept_)):
            raise ConvertError(
                "stored sigmoid calibrator must have a finite positive slope and a finite intercept"
            )
        return cal


class IsotonicCalibrator(Calibrator):
    """Isotonic regression, linearly interpolated between its steps: strictly increasing.

    sklearn's isotonic regression is a step function: every lead in a step gets the same
    probability, so leads with different raw scores become indistinguishable and the
    explanation points of a lead on a flat step are all zero. Here each isotonic block
    becomes one knot, ``x`` = the mean raw score of the block's rows and ``y`` = the
    block's conversion rate, and the map interpolates linearly between knots. Knot
    values are clipped to ``[2e-6, 1 - 2e-6]`` (blocks that tie after clipping are
    pooled), so knots increase strictly in both coordinates and so does the map.

    Outside the knots the map continues as a logistic curve through the end knot with a
    small slope ``tail_slope`` (log-odds per raw-score unit): distinct raw scores beyond
    the calibration range still get distinct probabilities, approaching but never
    passing the clip bounds ``[1e-6, 1 - 1e-6]``; the data say nothing about that
    region, so the probability barely moves there.

    Isotonic regression needs many calibration rows (about a thousand or more) not to
    overfit; :func:`select_calibrator` only considers it above ``min_rows_isotonic``.

    Parameters
    ----------
    tail_slope : float, default=1e-3
        Slope of the logistic extrapolation beyond the first and last knot, in log-odds
        per raw-score unit; must be > 0. Small, because nothing was observed there.

    Attributes
    ----------
    x_knots_ : ndarray of shape (n_knots,)
        Mean raw score of each isotonic block, strictly increasing.
    y_knots_ : ndarray of shape (n_knots,)
        Conversion rate of each block (clipped), strictly increasing.
    n_samples_ : int
        Rows the calibrator was fitted on.

    Examples
    --------
    >>> import numpy as np
    >>> raw = np.array([-2.0, -1.0, 0.0, 1.0, 2.0, 3.0])
    >>> y = np.array([0, 1, 0, 0, 1, 1])
    >>> cal = IsotonicCalibrator().fit(raw, y)
    >>> cal.x_knots_.tolist(), cal.y_knots_.round(6).tolist()
    ([-2.0, 0.0, 2.5], [2e-06, 0.333333, 0.999998])
    >>> bool(np.all(np.diff(cal.predict(np.linspace(-5, 5, 101))) > 0))
    True
    """

    method: ClassVar[str] = "isotonic"

    #: Knot values stay this far inside (0, 1) so the tails have room to keep increasing.
    _KNOT_EPSILON: ClassVar[float] = 2 * PROBABILITY_EPSILON

    def __init__(self, tail_slope: float = 1e-3) -> None:
        self.tail_slope = tail_slope

    def fit(self, raw: npt.ArrayLike, y: npt.ArrayLike) -> IsotonicCalibrator:
        """Fit isotonic regression and keep one knot per block.

        Parameters
        ----------
        raw : array-like of shape (n_samples,)
            Raw (log-odds) scores on the calibration rows.
        y : array-like of shape (n_samples,)
            0/1 outcomes of the same rows; both classes must occur.

        Returns
        -------
        self : IsotonicCalibrator
        """
        if not (_is_real(self.tail_slope) and self.tail_slope > 0):
            raise ConfigError(f"tail_slope must be a positive number; got {self.tail_slope!r}")
        x, labels = _check_fit_input(raw, y)

        # Tied raw scores must share a probability: pool them first (weight = count).
        unique_x, inverse, counts = np.unique(x, return_inverse=True, return_counts=True)
        rate = np.bincount(inverse, weights=labels.astype(np.float64)) / counts
        weights = counts.astype(np.float64)
        fitted = isotonic_regression(rate, sample_weight=weights, increasing=True)

        x_knots, y_knots, w_knots = self._pool_equal(unique_x, fitted, weights)
        y_knots = np.clip(y_knots, self._KNOT_EPSILON, 1.0 - self._KNOT_EPSILON)
        x_knots, y_knots, _ = self._pool_equal(x_knots, y_knots, w_knots)

        self.x_knots_ = x_knots
        self.y_knots_ = y_knots
        self.n_samples_ = int(labels.shape[0])
        return self

    @staticmethod
    def _pool_equal(
        x: FloatArray, values: FloatArray, weights: FloatArray
    ) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Merge runs of equal consecutive *values* into one knot at their weighted mean *x*."""
        starts = np.flatnonzero(np.r_[True, values[1:] != values[:-1]])
        w = np.add.reduceat(weights, starts)
        x_mean = np.add.reduceat(x * weights, starts) / w
        return x_mean, values[starts].astype(np.float64), w

    def predict(self, raw: npt.ArrayLike) -> FloatArray:
        """Calibrated probabilities: interpolated inside the knots, logistic tails outside.

        Parameters
        ----------
        raw : array-like of shape (n_samples,)
            Raw (log-odds) scores.

        Returns
        -------
        probability : ndarray of shape (n_samples,)
            Strictly increasing in *raw* (up to floating-point resolution far in the
            tails), within ``[1e-6, 1 - 1e-6]``.
        """
        check_is_fitted(self, ["x_knots_", "y_knots_"])
        x = _as_raw(raw)
        xk, yk = self.x_knots_, self.y_knots_
        out = np.interp(x, xk, yk)
        low = x < xk[0]
        high = x > xk[-1]
        if np.any(low):
            out[low] = expit(_logit(yk[0]) + self.tail_slope * (x[low] - xk[0]))
        if np.any(high):
            out[high] = expit(_logit(yk[-1]) + self.tail_slope * (x[high] - xk[-1]))
        return _clip_probability(out)

    def to_dict(self) -> dict[str, Any]:
        """``{"method": "isotonic", "version", "x", "y", "n_samples", "tail_slope"}``."""
        check_is_fitted(self, ["x_knots_", "y_knots_"])
        return {
            **self._header(),
            "x": _float_list(self.x_knots_),
            "y": _float_list(self.y_knots_),
            "n_samples": int(self.n_samples_),
            "tail_slope": float(self.tail_slope),
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> IsotonicCalibrator:
        """Rebuild from :meth:`to_dict` output (predictions are identical)."""
        cls._check_header(data)
        try:
            cal = cls(tail_slope=float(data["tail_slope"]))
            x = np.asarray(data["x"], dtype=np.float64)
            y = np.asarray(data["y"], dtype=np.float64)
            cal.n_samples_ = int(data["n_samples"])
        except (KeyError, TypeError, ValueError) as exc:
            raise ConvertError(
                f"stored isotonic calibrator is incomplete or malformed: {exc}"
            ) from exc
        valid = (
            x.ndim == 1
            and x.shape == y.shape
            and x.size >= 1
            and bool(np.all(np.isfinite(x)) and np.all(np.isfinite(y)))
            and bool(np.all(np.diff(x) > 0) and np.all(np.diff(y) > 0))
            and bool(np.all((y > 0) & (y < 1)))
            and cal.tail_slope > 0
        )
        if not valid:
            raise ConvertError(
                "stored isotonic calibrator needs equally long, strictly increasing knot lists "
                "with probabilities inside (0, 1) and a positive tail_slope"
            )
        cal.x_knots_ = x
        cal.y_knots_ = y
        return cal


def _logit(p: float) -> float:
    return math.log(p / (1.0 - p))


_CALIBRATORS: dict[str, type[Calibrator]] = {
    SigmoidCalibrator.method: SigmoidCalibrator,
    IsotonicCalibrator.method: IsotonicCalibrator,
}


def calibrator_from_dict(data: dict[str, Any]) -> Calibrator:
    """Rebuild any calibrator from its :meth:`Calibrator.to_dict` output.

    Parameters
    ----------
    data : dict
        A stored calibrator; ``data["method"]`` names its class.

    Returns
    -------
    Calibrator
        Fitted, with predictions identical to the calibrator that was stored.
    """
    method = data.get("method") if isinstance(data, dict) else None
    if method not in _CALIBRATORS:
        raise ConvertError(
            f"unknown calibrator method {method!r}; expected one of {sorted(_CALIBRATORS)}"
        )
    return _CALIBRATORS[method].from_dict(data)


def select_calibrator(
    raw: npt.ArrayLike,
    y: npt.ArrayLike,
    methods: Sequence[str] = ("isotonic", "sigmoid"),
    cv_folds: int = 5,
    min_rows_isotonic: int = 1000,
    seed: int = 42,
) -> tuple[Calibrator, dict[str, float]]:
    """Choose the calibrator with the lowest cross-validated log loss, refitted on all rows.

    The comparison stays inside the given (calibration) rows, and no candidate is ever
    scored on rows it was fitted on: stratified K-fold, fit on ``k - 1`` folds, predict
    the held-out fold, and the log loss of the pooled out-of-fold predictions decides.
    Scoring in-sample would always favour isotonic regression, which can memorise.

    Parameters
    ----------
    raw : array-like of shape (n_samples,)
        Raw (log-odds) scores on the calibration rows.
    y : array-like of shape (n_samples,)
        0/1 outcomes of the same rows.
    methods : sequence of {"isotonic", "sigmoid"}, default=("isotonic", "sigmoid")
        Candidates; on equal log loss the earlier one wins.
    cv_folds : int, default=5
        Folds (>= 2). Lowered to the size of the minority class when that is smaller,
        because every fold must hold both classes.
    min_rows_isotonic : int, default=1000
        Isotonic regression is skipped below this many rows (it overfits). When it was
        the only candidate, the sigmoid calibrator is used instead.
    seed : int, default=42
        Seed of the fold assignment; the same inputs and seed give the same choice.

    Returns
    -------
    calibrator : Calibrator
        The winner, fitted on all rows.
    cv_log_loss : dict of str to float
        Out-of-fold log loss of every candidate evaluated (skipped methods are absent).
    """
    unknown = [m for m in methods if m not in _CALIBRATORS]
    if not methods or unknown:
        raise ConfigError(
            f"calibration methods must be a non-empty subset of {sorted(_CALIBRATORS)}; "
            f"got {list(methods)!r}"
        )
    if not _is_integer(cv_folds) or cv_folds < 2:
        raise ConfigError(f"cv_folds must be an integer >= 2; got {cv_folds!r}")
    if not _is_integer(min_rows_isotonic) or min_rows_isotonic < 0:
        raise ConfigError(
            f"min_rows_isotonic must be a non-negative integer; got {min_rows_isotonic!r}"
        )

    x, labels = _check_fit_input(raw, y)
    n = x.shape[0]
    candidates = list(
        dict.fromkeys(m for m in methods if not (m == "isotonic" and n < min_rows_isotonic))
    )
    if not candidates:
        candidates = [SigmoidCalibrator.method]

    minority = int(min(labels.sum(), n - labels.sum()))
    folds = min(cv_folds, minority)
    if folds < 2:
        raise InsufficientDataError(
            f"choosing a calibrator needs at least 2 rows of each class; got {minority} in the "
            "smaller class"
        )
    splits = list(StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed).split(x, labels))

    scores: dict[str, float] = {}
    for method in candidates:
        out_of_fold = np.empty(n, dtype=np.float64)
        for fit_idx, held_idx in splits:
            fold_cal = _CALIBRATORS[method]().fit(x[fit_idx], labels[fit_idx])
            out_of_fold[held_idx] = fold_cal.predict(x[held_idx])
        scores[method] = _log_loss(labels, out_of_fold)

    best = min(candidates, key=lambda m: (scores[m], candidates.index(m)))
    return _CALIBRATORS[best]().fit(x, labels), scores
