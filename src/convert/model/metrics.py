"""Evaluation of predicted conversion probabilities: pure functions of labels and scores.

Two questions matter to a sales team, and each has its metrics:

* **Ranking** (are the best leads on top?): ROC AUC, PR AUC (average precision) and the
  lift table (conversion rate per score decile, and the share of all conversions found
  by working the top deciles).
* **Honesty of the probability** (does "20 %" convert one time in five?): log loss, Brier
  score, expected calibration error and the reliability table with Wilson intervals.

Every function takes 0/1 labels ``y`` and probabilities ``p`` (array-likes of one
value per lead) and neither reads nor writes anything. A slice with a single class (no
conversions, say) gives ``NaN`` for the ranking metrics instead of raising, so a report
over many slices never stops on one small slice. The figures of these tables are drawn
by :mod:`convert.analysis.plots` (the model layer draws nothing).

Examples
--------
>>> import numpy as np
>>> y = np.array([0, 0, 1, 1])
>>> p = np.array([0.1, 0.4, 0.35, 0.8])
>>> roc_auc(y, p)
0.75
>>> round(brier(y, p), 4)
0.1581
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd
from sklearn.metrics import average_precision_score, roc_auc_score

from convert.exceptions import ConvertError

__all__ = [
    "brier",
    "evaluate",
    "expected_calibration_error",
    "grade_table",
    "lift_table",
    "log_loss",
    "pr_auc",
    "reliability_table",
    "roc_auc",
    "segment_table",
    "wilson_interval",
]

#: Two-sided 95 % normal quantile, for the Wilson interval.
_Z95 = 1.959963984540054

#: Probabilities are clipped this far from 0 and 1 inside log loss so it stays finite.
_LOG_LOSS_EPSILON = 1e-15

FloatArray = npt.NDArray[np.float64]
IntArray = npt.NDArray[np.int64]


# --- input checks -------------------------------------------------------------------------


def _labels(y: npt.ArrayLike) -> IntArray:
    """``y`` as a 1-D array of 0/1 ints, or a :class:`ConvertError` naming what was found."""
    y_arr = np.asarray(y)
    if y_arr.ndim != 1:
        raise ConvertError(f"y must be 1-D with one 0/1 label per lead; got shape {y_arr.shape}")
    try:
        y_float = y_arr.astype(np.float64)
    except (TypeError, ValueError) as exc:
        raise ConvertError("y must hold 0/1 labels; found non-numeric values") from exc
    not_binary = ~((y_float == 0) | (y_float == 1))
    if np.any(not_binary):
        raise ConvertError(
            f"y must hold 0/1 labels; found {np.unique(y_float[not_binary])[:5].tolist()}"
        )
    return y_float.astype(np.int64)


def _check(y: npt.ArrayLike, p: npt.ArrayLike) -> tuple[IntArray, FloatArray]:
    """``y`` as 0/1 ints and ``p`` as floats in [0, 1], both 1-D and equally long."""
    y_int = _labels(y)
    p_arr = np.asarray(p, dtype=np.float64)
    if p_arr.ndim != 1 or y_int.shape != p_arr.shape:
        raise ConvertError(
            f"y and p must be 1-D with one value per lead; got shapes {y_int.shape} and {p_arr.shape}"
        )
    bad_p = ~(np.isfinite(p_arr) & (p_arr >= 0) & (p_arr <= 1))
    if np.any(bad_p):
        raise ConvertError(
            f"p must be probabilities in [0, 1]; found {int(bad_p.sum())} values outside "
            f"(e.g. {p_arr[bad_p][:3].tolist()})"
        )
    return y_int, p_arr


def _both_classes(y: IntArray) -> bool:
    positives = int(y.sum())
    return bool(0 < positives < y.shape[0])


def _check_bins(n_bins: int) -> None:
    if not isinstance(n_bins, int | np.integer) or isinstance(n_bins, bool) or n_bins < 1:
        raise ConvertError(f"n_bins must be a positive integer; got {n_bins!r}")


def _equal_frequency_bins(
    p: FloatArray, n_bins: int, *, descending: bool = False
) -> list[IntArray]:
    """Row indices of *n_bins* bins of (as nearly as possible) equal size, in score order.

    Rows are sorted by *p* (stably, so ties keep their input order) and cut into
    consecutive chunks whose sizes differ by at most one. Cutting at quantiles instead
    would make bins unequal, or empty, when many leads share a probability.
    """
    order = np.argsort(-p if descending else p, kind="stable")
    bins = min(n_bins, p.shape[0])
    return [chunk.astype(np.int64) for chunk in np.array_split(order, bins)] if bins else []


# --- scalar metrics -----------------------------------------------------------------------


def roc_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Area under the ROC curve: the chance a random converter outranks a random non-converter.

    Ties count one half. ``NaN`` when *y* holds a single class (no ranking to judge).
    """
    y_arr, p_arr = _check(y, p)
    if not _both_classes(y_arr):
        return float("nan")
    return float(roc_auc_score(y_arr, p_arr))


def pr_auc(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Average precision (area under the precision-recall curve, step-wise).

    More telling than ROC AUC when conversions are rare: its floor is the base rate, not
    0.5. ``NaN`` when *y* holds a single class.
    """
    y_arr, p_arr = _check(y, p)
    if not _both_classes(y_arr):
        return float("nan")
    return float(average_precision_score(y_arr, p_arr))


def log_loss(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Mean negative log-likelihood ``-mean(y log p + (1 - y) log(1 - p))``; lower is better.

    Rewards confident correct probabilities and punishes confident wrong ones hard, so it
    is the metric calibrators and champion/challenger promotion compare on. *p* is clipped
    to ``[1e-15, 1 - 1e-15]``. Defined for a single class too; ``NaN`` for no rows.
    """
    y_arr, p_arr = _check(y, p)
    if y_arr.shape[0] == 0:
        return float("nan")
    q = np.clip(p_arr, _LOG_LOSS_EPSILON, 1.0 - _LOG_LOSS_EPSILON)
    return float(-np.mean(y_arr * np.log(q) + (1 - y_arr) * np.log1p(-q)))


def brier(y: npt.ArrayLike, p: npt.ArrayLike) -> float:
    """Brier score ``mean((p - y)^2)``; lower is better, bounded, ``NaN`` for no rows."""
    y_arr, p_arr = _check(y, p)
    if y_arr.shape[0] == 0:
        return float("nan")
    return float(np.mean((p_arr - y_arr) ** 2))


def expected_calibration_error(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> float:
    """Expected calibration error over equal-frequency bins.

    ``ECE = sum_b (n_b / n) * |mean(p in b) - mean(y in b)|``: the row-weighted mean gap
    between predicted and observed conversion rate. Bins hold equal numbers of leads
    (not equal widths of probability) because lead-scoring probabilities crowd near zero:
    equal-width bins would leave most bins nearly empty and noisy.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        0/1 outcomes.
    p : array-like of shape (n_samples,)
        Predicted probabilities.
    n_bins : int, default=10
        Number of bins (fewer when there are fewer rows).

    Returns
    -------
    float
        In ``[0, 1]``; ``NaN`` for no rows.
    """
    _check_bins(n_bins)
    y_arr, p_arr = _check(y, p)
    n = y_arr.shape[0]
    if n == 0:
        return float("nan")
    total = 0.0
    for idx in _equal_frequency_bins(p_arr, n_bins):
        total += idx.shape[0] * abs(float(p_arr[idx].mean()) - float(y_arr[idx].mean()))
    return float(total / n)


# --- tables -------------------------------------------------------------------------------


def wilson_interval(positives: FloatArray, n: FloatArray, z: float = _Z95) -> tuple[FloatArray, FloatArray]:
    """Wilson score interval of a binomial proportion (*positives* of *n*, elementwise).

    Unlike the normal interval it stays in [0, 1] and is not degenerate at 0 or n
    positives, which small segments and grades often have. 95 % by default (*z*); ``NaN``
    where *n* is 0.
    """
    with np.errstate(invalid="ignore", divide="ignore"):
        phat = positives / n
        denom = 1.0 + z**2 / n
        center = (phat + z**2 / (2 * n)) / denom
        half = z * np.sqrt(phat * (1 - phat) / n + z**2 / (4 * n**2)) / denom
    return np.clip(center - half, 0.0, 1.0), np.clip(center + half, 0.0, 1.0)


def reliability_table(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Predicted against observed conversion rate in equal-frequency probability bins.

    The table behind the reliability diagram: a calibrated model has
    ``observed_rate`` close to ``mean_predicted`` in every bin, i.e. within the 95 %
    Wilson interval ``[ci_low, ci_high]`` most of the time.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        0/1 outcomes.
    p : array-like of shape (n_samples,)
        Predicted probabilities.
    n_bins : int, default=10
        Number of bins (fewer when there are fewer rows); sizes differ by at most one.

    Returns
    -------
    pandas.DataFrame
        One row per bin, lowest probabilities first: ``bin`` (1-based), ``n``,
        ``mean_predicted``, ``observed_rate``, ``ci_low``, ``ci_high``.
    """
    _check_bins(n_bins)
    y_arr, p_arr = _check(y, p)
    bins = _equal_frequency_bins(p_arr, n_bins)
    n = np.array([idx.shape[0] for idx in bins], dtype=np.float64)
    positives = np.array([y_arr[idx].sum() for idx in bins], dtype=np.float64)
    low, high = wilson_interval(positives, n)
    return pd.DataFrame(
        {
            "bin": np.arange(1, len(bins) + 1, dtype=np.int64),
            "n": n.astype(np.int64),
            "mean_predicted": np.array([p_arr[idx].mean() for idx in bins], dtype=np.float64),
            "observed_rate": positives / n if len(bins) else np.array([], dtype=np.float64),
            "ci_low": low,
            "ci_high": high,
        }
    )


def lift_table(y: npt.ArrayLike, p: npt.ArrayLike, n_bins: int = 10) -> pd.DataFrame:
    """Conversion by score decile, best leads first: how much working the top pays.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        0/1 outcomes.
    p : array-like of shape (n_samples,)
        Predicted probabilities (or any score where higher means likelier).
    n_bins : int, default=10
        Number of equal-frequency groups (fewer when there are fewer rows).

    Returns
    -------
    pandas.DataFrame
        One row per group: ``decile`` (1 = highest scores), ``n``, ``positives``,
        ``conversion_rate``, ``lift`` (rate over the overall rate; 1 = no better than
        random), ``cumulative_capture`` (share of all conversions in this and better
        deciles), ``min_probability`` and ``max_probability`` (the score range of the
        group). Lift and capture are ``NaN`` when there are no conversions.
    """
    _check_bins(n_bins)
    y_arr, p_arr = _check(y, p)
    bins = _equal_frequency_bins(p_arr, n_bins, descending=True)
    n = np.array([idx.shape[0] for idx in bins], dtype=np.int64)
    positives = np.array([y_arr[idx].sum() for idx in bins], dtype=np.int64)
    total_pos = int(y_arr.sum())
    base_rate = total_pos / y_arr.shape[0] if y_arr.shape[0] else float("nan")
    with np.errstate(invalid="ignore", divide="ignore"):
        rate = positives / n.astype(np.float64)
        lift = rate / base_rate if base_rate > 0 else np.full(len(bins), np.nan)
        capture = np.cumsum(positives) / total_pos if total_pos > 0 else np.full(len(bins), np.nan)
    return pd.DataFrame(
        {
            "decile": np.arange(1, len(bins) + 1, dtype=np.int64),
            "n": n,
            "positives": positives,
            "conversion_rate": rate,
            "lift": lift,
            "cumulative_capture": capture,
            "min_probability": np.array([p_arr[idx].min() for idx in bins], dtype=np.float64),
            "max_probability": np.array([p_arr[idx].max() for idx in bins], dtype=np.float64),
        }
    )


def grade_table(y: npt.ArrayLike, grades: npt.ArrayLike | pd.Series) -> pd.DataFrame:
    """Leads, conversions and conversion rate per grade.

    The check a sales manager makes: do A leads really convert more than B leads? Grades
    appear in their categorical order when *grades* is a pandas ``category`` (every
    category, even an empty one, gets a row), otherwise in sorted order ("A" before
    "B"). Leads without a grade are left out.

    Parameters
    ----------
    y : array-like of shape (n_samples,)
        0/1 outcomes.
    grades : array-like or pandas.Series of shape (n_samples,)
        The grade of each lead.

    Returns
    -------
    pandas.DataFrame
        ``grade``, ``n``, ``conversions``, ``rate`` (``NaN`` for an empty grade).
    """
    grade_s = grades.reset_index(drop=True) if isinstance(grades, pd.Series) else pd.Series(grades)
    y_int = _labels(y)
    if grade_s.shape[0] != y_int.shape[0]:
        raise ConvertError(
            f"y and grades must have one value per lead; got {y_int.shape[0]} and {grade_s.shape[0]}"
        )
    frame = pd.DataFrame({"grade": grade_s, "y": y_int})
    grouped = frame.groupby("grade", observed=False, sort=True, dropna=True)["y"]
    out = pd.DataFrame({"n": grouped.size(), "conversions": grouped.sum()}).reset_index()
    out["n"] = out["n"].astype(np.int64)
    out["conversions"] = out["conversions"].astype(np.int64)
    with np.errstate(invalid="ignore", divide="ignore"):
        out["rate"] = out["conversions"] / out["n"].where(out["n"] > 0)
    return out[["grade", "n", "conversions", "rate"]]


def evaluate(y: npt.ArrayLike, p: npt.ArrayLike) -> dict[str, float]:
    """Every scalar metric of a set of predictions, for logging and promotion.

    Returns
    -------
    dict of str to float
        ``roc_auc``, ``pr_auc``, ``log_loss``, ``brier``, ``ece`` (10 equal-frequency
        bins), ``n``, ``positives``, ``base_rate``. Ranking metrics are ``NaN`` when *y*
        holds a single class; all but ``n`` and ``positives`` are ``NaN`` for no rows.
    """
    y_arr, p_arr = _check(y, p)
    n = y_arr.shape[0]
    positives = int(y_arr.sum())
    return {
        "roc_auc": roc_auc(y_arr, p_arr),
        "pr_auc": pr_auc(y_arr, p_arr),
        "log_loss": log_loss(y_arr, p_arr),
        "brier": brier(y_arr, p_arr),
        "ece": expected_calibration_error(y_arr, p_arr),
        "n": float(n),
        "positives": float(positives),
        "base_rate": positives / n if n else float("nan"),
    }


def segment_table(
    y: npt.ArrayLike,
    p: npt.ArrayLike,
    segment: pd.Series | npt.ArrayLike,
    max_values: int = 12,
    min_conversions: int = 20,
    missing: str = "(missing)",
    other: str = "(other)",
) -> pd.DataFrame:
    """The hold-out metrics per value of one segment (lead source, industry, ...), with counts.

    The *max_values* largest values keep a row of their own, the rest are pooled as
    *other*; missing values get a row too. Each row carries ``n`` and ``conversions`` and
    a 95 % Wilson interval of the observed rate, and ``uncertain`` is true when the
    segment has fewer than *min_conversions* conversions (or none of one class): small
    segments are shown, never hidden, but visibly uncertain.

    Returns
    -------
    pandas.DataFrame
        ``value``, ``n``, ``conversions``, ``observed_rate``, ``ci_low``, ``ci_high``,
        ``mean_predicted``, ``roc_auc``, ``brier``, ``ece``, ``uncertain``; largest first.
    """
    y_arr, p_arr = _check(y, p)
    seg = pd.Series(np.asarray(segment, dtype=object)).reset_index(drop=True)
    if seg.shape[0] != y_arr.shape[0]:
        raise ConvertError(
            f"segment must have one value per lead; got {seg.shape[0]} for {y_arr.shape[0]} leads"
        )
    text = seg.where(seg.notna(), missing).astype(str)
    keep = text.value_counts().index[:max_values]
    text = text.where(text.isin(keep) | (text == missing), other)
    rows = []
    for value, idx in text.groupby(text, sort=False).indices.items():
        yy, pp = y_arr[idx], p_arr[idx]
        n, conv = int(idx.shape[0]), int(yy.sum())
        low, high = wilson_interval(np.array([conv], dtype=np.float64), np.array([n], dtype=np.float64))
        rows.append(
            {
                "value": value, "n": n, "conversions": conv, "observed_rate": conv / n,
                "ci_low": float(low[0]), "ci_high": float(high[0]),
                "mean_predicted": float(pp.mean()), "roc_auc": roc_auc(yy, pp),
                "brier": brier(yy, pp), "ece": expected_calibration_error(yy, pp),
                "uncertain": conv < min_conversions or conv == n,
            }
        )
    columns = ["value", "n", "conversions", "observed_rate", "ci_low", "ci_high",
               "mean_predicted", "roc_auc", "brier", "ece", "uncertain"]
    return pd.DataFrame(rows, columns=columns).sort_values(["n", "value"], ascending=[False, True]).reset_index(drop=True)
