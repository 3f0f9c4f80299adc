"""The linear half of a blended model: a regularised logistic regression on the model matrix,
with exact per-feature contributions and a JSON form.

The training design (:mod:`convert.model.crossfit`) blends LightGBM with this model in log-odds when
the blend wins on the inner folds: ``raw = (1 - w) * tree + w * linear``. Explanations must
still add up, so the linear model is kept in a form whose contributions are exact per feature:

    linear(x) = b + sum_c beta_c * z_c(x),    z = the design columns of x

Each design column belongs to one feature (a numeric feature's standardised value and its
missing indicator; a categorical feature's one-hot columns), so with ``zbar`` the training
mean of the design, feature ``f``'s contribution ``sum_{c in f} beta_c (z_c(x) - zbar_c)``
and the base value ``b + beta . zbar`` sum to ``linear(x)`` exactly, as TreeSHAP's do for the
booster. The preprocessing is the logistic baseline's (:class:`convert.model.baselines.LogisticBaseline`):
``log1p`` for features never negative in training, median imputation with a missing
indicator, standardisation, one-hot categories with rare ones pooled. It reads the matrix
LightGBM reads (numeric values, categorical codes of the spec's category lists, NaN when
missing or unseen), so it needs no pandas at scoring time and travels without pickles.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sklearn.linear_model import LogisticRegression
from threadpoolctl import threadpool_limits

from convert.exceptions import FeatureMismatchError

__all__ = ["LinearScorer"]


def _constant(var: float, mean: float, n: int) -> bool:
    """Whether a column whose computed variance is *var* is constant up to rounding (the
    bound scikit-learn's ``StandardScaler`` uses, so the baseline's preprocessing and this
    one agree). A constant column divided by its rounding-error deviation (~1e-16) would turn
    any other value met later into ~1e15 standard deviations: one such column in a fold's
    training rows (a macro-economic rate that did not move in that period) made the linear
    half's log-odds reach -4e15 and every blend look alike."""
    eps = float(np.finfo(np.float64).eps)
    return var <= n * eps * var + (n * mean * eps) ** 2


class LinearScorer:
    """Logistic regression on the model matrix, with exact per-feature contributions.

    Parameters
    ----------
    C : float
        Inverse L2 strength on the standardised design (the baseline's default, 1.0).
    min_frequency : int
        Categories with fewer training rows are pooled into one column.

    Attributes
    ----------
    kinds_ : list of str
        ``numeric`` or ``categorical`` per matrix column.
    columns_ : list of dict
        How each feature becomes design columns (log, median, mean, scale, kept codes).
    coef_, zbar_ : ndarray
        Coefficients and training means of the design columns.
    groups_ : ndarray of int
        Feature index of each design column.
    intercept_ : float
    """

    def __init__(
        self, C: float = 1.0, min_frequency: int = 10, max_iter: int = 500, max_rows: int = 20_000, seed: int = 0
    ) -> None:
        self.C = C
        self.min_frequency = min_frequency
        self.max_iter = max_iter
        self.max_rows = max_rows
        self.seed = seed

    def fit(
        self, X: np.ndarray, y: np.ndarray, kinds: Sequence[str], sample_weight: np.ndarray | None = None
    ) -> LinearScorer:
        """Learn the preprocessing from *X* (the model matrix) and fit the regression."""
        X = np.asarray(X, dtype="float64")
        self.kinds_ = list(kinds)
        self.columns_: list[dict[str, Any]] = []
        for j, kind in enumerate(self.kinds_):
            col = X[:, j]
            present = ~np.isnan(col)
            if kind == "categorical":
                codes, counts = np.unique(col[present].astype("int64"), return_counts=True)
                kept = [int(c) for c, n in zip(codes, counts, strict=True) if n >= self.min_frequency]
                self.columns_.append({"kind": kind, "codes": kept,
                                      "pooled": bool(len(kept) < len(codes)), "missing": bool((~present).any())})
            else:
                log = bool(present.any() and np.nanmin(col) >= 0)
                values = np.log1p(col[present]) if log else col[present]
                median = float(np.median(values)) if values.size else 0.0
                filled = np.where(present, np.log1p(np.clip(col, 0, None)) if log else col, median)
                filled = np.where(np.isnan(filled), median, filled)
                mean, var = float(filled.mean()), float(filled.var())
                self.columns_.append({"kind": kind, "log": log, "median": median, "mean": mean,
                                      "scale": 1.0 if _constant(var, mean, filled.size) else var**0.5,
                                      "missing": bool((~present).any())})
        labels = np.asarray(y, dtype="int64")
        weight = np.ones(len(labels)) if sample_weight is None else np.asarray(sample_weight, dtype="float64")
        rows = self._sample(labels)
        if rows is not None:  # every conversion, a seeded sample of the rest, reweighted
            in_sample = np.zeros(len(labels), dtype=bool)
            in_sample[rows] = True
            up = [float((labels == c).sum() / max(1, (in_sample & (labels == c)).sum())) for c in (0, 1)]
            weight = weight * np.where(labels == 1, up[1], up[0])
            X, labels, weight = X[rows], labels[rows], weight[rows]
        Z, self.groups_ = self._design(X)
        model = LogisticRegression(C=self.C, max_iter=self.max_iter)
        # weights scaled to mean 1 so that C means the same whatever the sampling; one BLAS
        # thread, as for the calibrator: a threaded dot product sums in pieces, so the last
        # digits would depend on the machine's cores (and threads fight LightGBM's for them)
        with threadpool_limits(limits=1, user_api="blas"):
            model.fit(Z, labels, sample_weight=weight / weight.mean() if len(weight) else None)
        self.coef_ = np.asarray(model.coef_[0], dtype="float64")
        self.intercept_ = float(model.intercept_[0])
        self.zbar_ = np.average(Z, axis=0, weights=weight) if len(Z) else np.zeros(Z.shape[1])
        return self

    def _sample(self, labels: np.ndarray) -> np.ndarray | None:
        """Rows fitted when there are more than ``max_rows``: all conversions (up to half of
        ``max_rows``) and a seeded sample of the others; ``None`` to fit every row. The linear
        half of a blend needs far fewer rows than the booster, and its fit costs more per row."""
        n = len(labels)
        if n <= self.max_rows:
            return None
        rng = np.random.default_rng(self.seed)
        pos, neg = np.flatnonzero(labels == 1), np.flatnonzero(labels == 0)
        if len(pos) > self.max_rows // 2:
            pos = np.sort(rng.choice(pos, self.max_rows // 2, replace=False))
        neg = np.sort(rng.choice(neg, min(len(neg), self.max_rows - len(pos)), replace=False))
        return np.sort(np.concatenate([pos, neg]))

    def _check_width(self, X: np.ndarray) -> None:
        if X.ndim != 2 or X.shape[1] != len(self.columns_):
            raise FeatureMismatchError(
                f"the linear model expects {len(self.columns_)} feature columns; got shape {X.shape}"
            )

    @staticmethod
    def _codes(col: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """A categorical column's codes as integers, -1 where missing."""
        return np.where(missing, -1, np.nan_to_num(col, nan=-1.0)).astype("int64")

    @staticmethod
    def _standardised(spec: Mapping[str, Any], col: np.ndarray, missing: np.ndarray) -> np.ndarray:
        """A numeric column's design value: ``log1p`` when so fitted, the median where missing,
        standardised."""
        values = np.log1p(np.clip(col, 0, None)) if spec["log"] else col
        values = np.where(missing, spec["median"], values)
        return np.asarray((values - spec["mean"]) / spec["scale"], dtype="float64")

    def _design(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        self._check_width(X)
        blocks: list[np.ndarray] = []
        groups: list[int] = []
        for j, spec in enumerate(self.columns_):
            col = X[:, j]
            missing = np.isnan(col)
            if spec["kind"] == "categorical":
                codes = self._codes(col, missing)
                for code in spec["codes"]:
                    blocks.append((codes == code).astype("float64"))
                    groups.append(j)
                if spec["pooled"]:
                    blocks.append(((codes >= 0) & ~np.isin(codes, spec["codes"])).astype("float64"))
                    groups.append(j)
                if spec["missing"]:
                    blocks.append(missing.astype("float64"))
                    groups.append(j)
            else:
                blocks.append(self._standardised(spec, col, missing))
                groups.append(j)
                if spec["missing"]:
                    blocks.append(missing.astype("float64"))
                    groups.append(j)
        Z = np.column_stack(blocks) if blocks else np.zeros((len(X), 0))
        return Z, np.asarray(groups, dtype="int64")

    def raw(self, X: np.ndarray) -> np.ndarray:
        """Log-odds of each row of the model matrix *X*."""
        Z, _ = self._design(np.asarray(X, dtype="float64"))
        return np.asarray(self.intercept_ + Z @ self.coef_, dtype="float64")

    @property
    def base_raw(self) -> float:
        """The log-odds at the training mean of the design (the contributions' base value)."""
        return float(self.intercept_ + self.zbar_ @ self.coef_)

    def contributions(self, X: np.ndarray) -> np.ndarray:
        """Per-feature contributions, shape (n, p + 1), the base value last (as ``pred_contrib``);
        each row sums to :meth:`raw` up to floating-point rounding.

        Feature by feature, without building the design: a numeric feature's terms from its
        column, a categorical feature's from a table holding, for each design column that can
        be the row's one (a kept code, the pooled one, the missing one, or none), the sum of
        the feature's terms. Every sum runs in design-column order from 0.0, so the numbers
        are those of summing ``(z - zbar) * coef`` column by column to the last digit."""
        X = np.asarray(X, dtype="float64")
        self._check_width(X)
        out = np.zeros((len(X), len(self.columns_) + 1), dtype="float64")
        c = 0  # the feature's first design column
        for j, spec in enumerate(self.columns_):
            col = X[:, j]
            missing = np.isnan(col)
            if spec["kind"] == "categorical":
                codes = self._codes(col, missing)
                kept = np.asarray(spec["codes"], dtype="int64")
                width = len(kept) + int(bool(spec["pooled"])) + int(bool(spec["missing"]))
                # the design column each row sets (width: none): a kept code, pooled, missing
                which = np.full(len(col), width, dtype=np.intp)
                if len(kept):
                    order = np.argsort(kept, kind="stable")
                    at = np.minimum(np.searchsorted(kept[order], codes), len(kept) - 1)
                    hit = kept[order][at] == codes
                    which[hit] = order[at[hit]]
                if spec["pooled"]:
                    which[(codes >= 0) & (which == width)] = len(kept)
                if spec["missing"]:
                    which[missing] = width - 1
                coef, zbar = self.coef_[c : c + width], self.zbar_[c : c + width]
                table = np.zeros(width + 1, dtype="float64")
                for case in range(width + 1):
                    total = np.float64(0.0)
                    for k in range(width):
                        total = total + (np.float64(1.0 if k == case else 0.0) - zbar[k]) * coef[k]
                    table[case] = total
                out[:, j] = table[which]
                c += width
            else:
                acc = 0.0 + (self._standardised(spec, col, missing) - self.zbar_[c]) * self.coef_[c]
                c += 1
                if spec["missing"]:
                    acc += (missing.astype("float64") - self.zbar_[c]) * self.coef_[c]
                    c += 1
                out[:, j] = acc
        out[:, -1] = self.base_raw
        return out

    def to_dict(self) -> dict[str, Any]:
        return {"C": self.C, "min_frequency": self.min_frequency, "max_rows": self.max_rows, "kinds": self.kinds_,
                "columns": self.columns_, "coef": self.coef_.tolist(), "zbar": self.zbar_.tolist(),
                "intercept": self.intercept_}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> LinearScorer:
        out = cls(C=float(data["C"]), min_frequency=int(data["min_frequency"]), max_rows=int(data.get("max_rows", 20_000)))
        out.kinds_ = list(data["kinds"])
        out.columns_ = [dict(c) for c in data["columns"]]
        out.coef_ = np.asarray(data["coef"], dtype="float64")
        out.zbar_ = np.asarray(data["zbar"], dtype="float64")
        out.intercept_ = float(data["intercept"])
        _, out.groups_ = out._design(np.zeros((0, len(out.columns_))))
        return out
