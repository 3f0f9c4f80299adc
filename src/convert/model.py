"""The model bundle: feature spec, LightGBM booster and calibrator, saved and loaded together.

:class:`FeatureSpec` records, by name, the features a model was trained on, their kind
and the training categories of every categorical feature; at scoring time it refuses
data that lacks a feature and re-applies the training categories (LightGBM encodes a
pandas category by its position in the category list, so a different list would give
silently wrong predictions). :class:`LeadScoringModel` follows scikit-learn's
conventions: ``fit`` returns ``self``, learned attributes end in ``_``.

A saved bundle is a folder of plain files: ``booster.txt`` (LightGBM's text format),
``calibrator.json`` and ``bundle.json`` (spec, catalog, horizon, grades, metrics), so
a model can be read without unpickling code.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from convert.calibrate import Calibrator, calibrator_from_dict
from convert.catalog import Catalog
from convert.config import FeaturesConfig
from convert.exceptions import FeatureMismatchError, ModelNotFoundError
from convert.linear import LinearScorer

BUNDLE_VERSION = 1


@dataclass
class FeatureSpec:
    """The features a model expects, by name, with kinds and training categories."""

    names: list[str]
    kinds: dict[str, str]
    categories: dict[str, list[str]] = field(default_factory=dict)
    event_types: list[str] = field(default_factory=list)

    @classmethod
    def from_frame(
        cls, frame: pd.DataFrame, catalog: Catalog, event_types: Sequence[str] = ()
    ) -> FeatureSpec:
        """Learn the categories of each categorical feature from the training rows."""
        names = [f.name for f in catalog]
        kinds: dict[str, str] = {f.name: f.kind for f in catalog}
        cats = {
            n: sorted({str(v) for v in frame[n].dropna().unique()})
            for n in names
            if kinds[n] == "categorical"
        }
        return cls(names=names, kinds=kinds, categories=cats, event_types=list(event_types))

    @property
    def categorical(self) -> list[str]:
        return [n for n in self.names if self.kinds[n] == "categorical"]

    def transform(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The model matrix: spec columns in order, numeric as float64, categoricals with the
        training categories (unseen values become missing).

        Raises
        ------
        FeatureMismatchError
            Naming the first missing feature, when the data lacks one.
        """
        _check_columns(frame, self.names)
        numeric = [n for n in self.names if self.kinds[n] != "categorical"]
        block = _numeric_block(frame[numeric])
        out = pd.DataFrame(block, columns=numeric, index=frame.index)
        for n in self.categorical:
            col = frame[n]
            text = col.where(col.isna(), col.astype(str))
            out[n] = pd.Categorical(text, categories=self.categories[n])
        return out[self.names]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        return cls(**dict(data))


def _check_columns(frame: pd.DataFrame, names: Sequence[str]) -> None:
    missing = [n for n in names if n not in frame.columns]
    if missing:
        raise FeatureMismatchError(
            f"the data lacks feature column {missing[0]!r} that the model was trained on"
            + (f" (and {len(missing) - 1} more: {', '.join(missing[1:6])})" if len(missing) > 1 else "")
            + ". Score with the same feature configuration (params.yaml features section and "
            "extra attributes) as training, or retrain the model"
        )


def _numeric_block(frame: pd.DataFrame) -> np.ndarray:
    """*frame*'s columns as one float64 array, or a :class:`FeatureMismatchError` naming them."""
    try:
        return frame.to_numpy(dtype="float64")
    except (TypeError, ValueError) as exc:
        names = list(frame.columns)
        raise FeatureMismatchError(
            f"feature columns must be numeric, as in training ({', '.join(names[:5])}, ...): {exc}"
        ) from exc


def _column_runs(positions: Sequence[int]) -> list[tuple[int, int, int]]:
    """Runs of consecutive *positions* as (first source index, first position, length)."""
    runs: list[tuple[int, int, int]] = []
    for i, pos in enumerate(positions):
        if runs and runs[-1][1] + runs[-1][2] == pos:
            src, start, length = runs[-1]
            runs[-1] = (src, start, length + 1)
        else:
            runs.append((i, pos, 1))
    return runs


class FeatureMatrix:
    """Rows of a feature frame encoded once into the float64 matrix LightGBM reads.

    Training fits LightGBM several times on slices of one frame (train, validation, train +
    validation) and scores another (calibration). Through :meth:`FeatureSpec.transform`
    every slice is copied by pandas, re-encoded, and converted once more by LightGBM. Here
    the rows are encoded once, in the order given, into a C-ordered float64 array with the
    catalog's columns: numeric features as float64, each categorical feature as the code of
    its text in a spec's category list, NaN when missing or unseen -- exactly the array
    LightGBM makes of ``spec.transform(frame)``. A range of rows is then a view (no copy),
    the categories a range of rows holds come from integer codes (:meth:`spec`), and
    switching to another spec's categories (:meth:`encode`) rewrites only the categorical
    columns.

    Parameters
    ----------
    frame:
        Feature rows holding every catalog column.
    catalog:
        The features, in model order.
    rows:
        Positions (``iloc``) of the rows to encode, in the order to store them; all rows
        when omitted.

    Attributes
    ----------
    values : ndarray of shape (n_rows, n_features)
        The matrix; categorical columns hold the codes of :attr:`spec_` (all NaN until
        :meth:`encode` is called).
    names : list of str
    spec_ : FeatureSpec or None
        The spec the categorical columns are encoded for.

    Raises
    ------
    FeatureMismatchError
        When the frame lacks a catalog column or a numeric feature is not numeric.
    """

    #: Rows copied per step: a block this size stays in cache while it is transposed.
    _CHUNK_ROWS = 65_536

    def __init__(self, frame: pd.DataFrame, catalog: Catalog, rows: np.ndarray | None = None) -> None:
        self.names = [f.name for f in catalog]
        self.kinds: dict[str, str] = {f.name: f.kind for f in catalog}
        _check_columns(frame, self.names)
        positions = np.arange(len(frame)) if rows is None else np.asarray(rows, dtype="int64")
        n = len(positions)
        # a run of consecutive rows (the usual case: slices of a frame sorted by as-of time)
        # is sliced, which costs no copy before the chunk's own
        first = int(positions[0]) if n else 0
        run = not n or bool(np.all(np.diff(positions) == 1))

        def rows_of(lo: int, hi: int) -> slice | np.ndarray:
            return slice(first + lo, first + hi) if run else positions[lo:hi]

        numeric = [c for c in self.names if self.kinds[c] != "categorical"]
        runs = _column_runs([self.names.index(c) for c in numeric])
        self.values = np.empty((n, len(self.names)), dtype="float64")
        block = frame[numeric]
        for lo in range(0, n, self._CHUNK_ROWS):
            hi = min(n, lo + self._CHUNK_ROWS)
            chunk = _numeric_block(block.iloc[rows_of(lo, hi)])
            for src, dst, width in runs:
                self.values[lo:hi, dst: dst + width] = chunk[:, src: src + width]
        self._codes: dict[str, np.ndarray] = {}
        self._labels: dict[str, list[str]] = {}
        for name in self.names:
            if self.kinds[name] == "categorical":
                codes, uniques = pd.factorize(frame[name].to_numpy()[rows_of(0, n)])
                self._codes[name] = codes
                # the text of each distinct value, as FeatureSpec learns and applies categories
                self._labels[name] = [str(v) for v in uniques]
                self.values[:, self.names.index(name)] = np.nan
        self.spec_: FeatureSpec | None = None

    def spec(self, rows: slice = slice(None), event_types: Sequence[str] = ()) -> FeatureSpec:
        """The spec :meth:`FeatureSpec.from_frame` learns from these rows (a range of the
        stored order): the sorted texts of the categorical values they hold."""
        kinds = dict(self.kinds)
        cats = {}
        for name, codes in self._codes.items():
            part = codes[rows]
            held = np.bincount(part[part >= 0], minlength=len(self._labels[name])) > 0
            cats[name] = sorted({label for label, h in zip(self._labels[name], held, strict=True) if h})
        return FeatureSpec(names=list(self.names), kinds=kinds, categories=cats, event_types=list(event_types))

    def encode(self, spec: FeatureSpec) -> FeatureMatrix:
        """Make the categorical columns the codes of *spec*'s categories (NaN when missing or
        not among them), as LightGBM encodes ``spec.transform(frame)``; returns ``self``."""
        if spec.names != self.names:
            raise FeatureMismatchError(
                f"the spec's features ({len(spec.names)}) are not the matrix's ({len(self.names)}); "
                "encode with the spec learned from the same catalog"
            )
        before = self.spec_.categories if self.spec_ is not None else None
        for name, codes in self._codes.items():
            if before is not None and before[name] == spec.categories[name]:
                continue
            position = {c: i for i, c in enumerate(spec.categories[name])}
            # code of each distinct value in the spec's list; the last entry serves code -1
            lookup = np.array([position.get(label, -1) for label in self._labels[name]] + [-1])
            mapped = lookup[codes].astype("float64")
            mapped[mapped < 0] = np.nan
            self.values[:, self.names.index(name)] = mapped
        self.spec_ = spec
        return self


def _sigmoid(x: np.ndarray) -> np.ndarray:
    return 1.0 / (1.0 + np.exp(-x))


def score_from_probability(p: np.ndarray) -> np.ndarray:
    """score = round(100 x probability), halves rounded up (not to even), as integers."""
    return np.floor(100.0 * np.asarray(p, dtype="float64") + 0.5).astype("int64")


def grade_from_score(score: np.ndarray, cutoffs: Mapping[str, int]) -> np.ndarray:
    """Grades from score cut-offs (best first, e.g. A>=50, B>=25, C>=10); the rest get the next letter."""
    letters = list(cutoffs)
    last = chr(ord(letters[-1]) + 1) if letters else "A"
    out = np.full(len(score), last, dtype=object)
    for letter in reversed(letters):
        out[np.asarray(score) >= cutoffs[letter]] = letter
    return out


class LeadScoringModel:
    """LightGBM on point-in-time features, with a calibrator from raw score to probability.

    Parameters
    ----------
    params:
        LightGBM parameters (objective binary); a seed and deterministic mode are added.
    num_boost_round, early_stopping_rounds:
        Boosting rounds and patience on the validation slice's log loss.
    monotone_constraints:
        ``{feature: -1|0|1}``; features not named are unconstrained.
    seed:
        Seeds LightGBM (bagging, feature fraction) so a re-run gives identical scores.

    Attributes
    ----------
    booster_ : lightgbm.Booster
    spec_ : FeatureSpec
    catalog_ : Catalog
    calibrator_ : Calibrator
    best_iteration_ : int
    base_raw_ : float
        The expected raw score over the training rows (SHAP's base value).
    linear_ : LinearScorer or None
        The logistic model blended in log-odds, when the blend won on the inner folds.
    blend_weight_ : float
        Weight ``w`` of the linear model: ``raw = (1 - w) * tree + w * linear`` (0: LightGBM alone).
    """

    linear_: LinearScorer | None = None
    blend_weight_: float = 0.0
    #: The outer folds' rows with their out-of-fold probabilities (``outer_predictions.csv``).
    outer_predictions_: pd.DataFrame | None = None

    def __init__(
        self,
        params: Mapping[str, Any] | None = None,
        num_boost_round: int = 2000,
        early_stopping_rounds: int = 100,
        monotone_constraints: Mapping[str, int] | None = None,
        seed: int = 42,
        horizon_days: int = 90,
        grade_cutoffs: Mapping[str, int] | None = None,
    ) -> None:
        self.params = dict(params or {"objective": "binary"})
        self.num_boost_round = num_boost_round
        self.early_stopping_rounds = early_stopping_rounds
        self.monotone_constraints = dict(monotone_constraints or {})
        self.seed = seed
        self.horizon_days = horizon_days
        self.grade_cutoffs = dict(grade_cutoffs or {"A": 50, "B": 25, "C": 10})
        self.metadata: dict[str, Any] = {}

    # --- fitting --------------------------------------------------------------------------

    def _lgb_params(self, spec: FeatureSpec) -> dict[str, Any]:
        unknown = [n for n in self.monotone_constraints if n not in spec.names]
        if unknown:
            raise FeatureMismatchError(
                f"monotone constraint on unknown feature {unknown[0]!r}; features are named in "
                "the catalog (convert-leads features --list)"
            )
        params = {
            "objective": "binary",
            "metric": "binary_logloss",
            "verbosity": -1,
            "seed": self.seed,
            "deterministic": True,
            "force_col_wise": True,
            "num_threads": 2,
            # keep features a large min_data_in_leaf cannot split: one binned dataset then
            # serves every parameter candidate (cross-fitting, --tune)
            "feature_pre_filter": False,
            **self.params,
        }
        if self.monotone_constraints:
            params["monotone_constraints"] = [self.monotone_constraints.get(n, 0) for n in spec.names]
            params.setdefault("monotone_constraints_method", "advanced")
        return params

    def fit(
        self,
        X: pd.DataFrame,
        y: np.ndarray | pd.Series,
        X_valid: pd.DataFrame | None = None,
        y_valid: np.ndarray | pd.Series | None = None,
        *,
        catalog: Catalog,
        event_types: Sequence[str] = (),
    ) -> LeadScoringModel:
        """Fit the booster on *X*: with early stopping on (*X_valid*, *y_valid*) when given,
        else for exactly ``num_boost_round`` rounds. The categories are learned from *X*."""
        train = FeatureMatrix(X, catalog)
        spec = train.spec(event_types=event_types)
        valid = None
        if X_valid is not None and y_valid is not None:
            valid = FeatureMatrix(X_valid, catalog).encode(spec).values
        return self.fit_matrix(
            train.encode(spec).values, y, valid, y_valid, spec=spec, catalog=catalog
        )

    def fit_matrix(
        self,
        X: np.ndarray,
        y: np.ndarray | pd.Series,
        X_valid: np.ndarray | None = None,
        y_valid: np.ndarray | pd.Series | None = None,
        *,
        spec: FeatureSpec,
        catalog: Catalog,
        sample_weight: np.ndarray | None = None,
        dataset: lgb.Dataset | None = None,
    ) -> LeadScoringModel:
        """:meth:`fit` on rows already encoded for *spec* (:class:`FeatureMatrix` values).

        Training encodes its frame once and fits on ranges of that one matrix, so no slice
        is copied or converted again; *spec* must be the one the rows were encoded for and
        learned from the rows of *X*. *dataset*, when given, is LightGBM's binned form of
        exactly these rows and labels (a subset of one dataset binned once, as cross-fitting
        uses), and is trained on instead of binning *X* again.
        """
        for name, matrix in (("X", X), ("X_valid", X_valid)):
            if matrix is not None and (matrix.ndim != 2 or matrix.shape[1] != len(spec.names)):
                raise FeatureMismatchError(
                    f"{name} has shape {matrix.shape}; the spec has {len(spec.names)} features. "
                    "Encode the rows with FeatureMatrix(frame, catalog).encode(spec)"
                )
        self.catalog_ = catalog
        self.spec_ = spec
        params = self._lgb_params(spec)
        train_set = dataset if dataset is not None else lgb.Dataset(
            X, label=np.asarray(y, dtype="float64"), weight=sample_weight, feature_name=spec.names,
            categorical_feature=spec.categorical or "auto", free_raw_data=True,
        )
        # what LightGBM records for a pandas frame, so the booster re-applies the training
        # categories to frames it predicts (and saves them in its model text)
        train_set.pandas_categorical = [list(spec.categories[n]) for n in spec.categorical]
        if X_valid is not None and y_valid is not None:
            valid_set = lgb.Dataset(
                X_valid, label=np.asarray(y_valid, dtype="float64"), feature_name=spec.names,
                reference=train_set,
            )
            booster = lgb.train(
                params, train_set, num_boost_round=self.num_boost_round,
                valid_sets=[valid_set], valid_names=["validation"],
                callbacks=[lgb.early_stopping(self.early_stopping_rounds, verbose=False)],
            )
            self.best_iteration_ = int(booster.best_iteration or booster.current_iteration())
            self.booster_ = _trimmed(booster, self.best_iteration_)
        else:
            self.booster_ = lgb.train(params, train_set, num_boost_round=self.num_boost_round)
            self.best_iteration_ = self.num_boost_round
        contrib = np.asarray(self.booster_.predict(X[:1], pred_contrib=True))
        self.tree_base_raw_ = float(contrib[0, -1])
        self.base_raw_ = self.tree_base_raw_
        self.linear_, self.blend_weight_ = None, 0.0
        return self

    def blend(self, linear: LinearScorer | None, weight: float) -> LeadScoringModel:
        """Blend a fitted :class:`LinearScorer` in log-odds with weight *weight* (0 removes it).

        The base value becomes the same blend of both base values, so per-feature
        contributions (the weighted sum of both models') still sum to ``raw - base_raw_``.
        """
        self._check_fitted()
        if linear is None or weight <= 0.0:
            self.linear_, self.blend_weight_ = None, 0.0
            self.base_raw_ = self.tree_base_raw_
        else:
            self.linear_, self.blend_weight_ = linear, float(weight)
            self.base_raw_ = (1.0 - self.blend_weight_) * self.tree_base_raw_ + self.blend_weight_ * linear.base_raw
        return self

    def blend_raw(self, tree_raw: np.ndarray, X: np.ndarray) -> np.ndarray:
        """The model's raw score from LightGBM's raw score and the encoded matrix *X*."""
        if self.linear_ is None:
            return np.asarray(tree_raw, dtype="float64")
        w = self.blend_weight_
        return (1.0 - w) * np.asarray(tree_raw, dtype="float64") + w * self.linear_.raw(X)

    def calibrate(self, calibrator: Calibrator) -> LeadScoringModel:
        """Attach a calibrator fitted on raw scores of rows the booster did not train on."""
        self.calibrator_ = calibrator
        return self

    # --- prediction -----------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "booster_"):
            raise ModelNotFoundError("this model is not fitted yet; call fit() or load a bundle")

    def matrix(self, X: pd.DataFrame) -> pd.DataFrame:
        """The checked model matrix for *X* (see :meth:`FeatureSpec.transform`)."""
        self._check_fitted()
        return self.spec_.transform(X)

    def predict_raw(self, X: pd.DataFrame) -> np.ndarray:
        """Raw log-odds: LightGBM's, blended with the linear model's when there is one."""
        matrix = self.matrix(X)
        tree = np.asarray(self.booster_.predict(matrix, raw_score=True), dtype="float64")
        if self.linear_ is None:
            return tree
        from convert.treeshap import lightgbm_matrix

        return self.blend_raw(tree, lightgbm_matrix(matrix))

    def predict_raw_matrix(self, X: np.ndarray) -> np.ndarray:
        """Raw log-odds of rows already encoded for ``spec_`` (:class:`FeatureMatrix` values)."""
        self._check_fitted()
        return self.blend_raw(np.asarray(self.booster_.predict(X, raw_score=True), dtype="float64"), X)

    def probability_from_raw(self, raw: np.ndarray) -> np.ndarray:
        if hasattr(self, "calibrator_"):
            return np.asarray(self.calibrator_.predict(raw), dtype="float64")
        return _sigmoid(np.asarray(raw, dtype="float64"))

    def predict_proba(self, X: pd.DataFrame) -> np.ndarray:
        """Calibrated probabilities, shape (n, 2), scikit-learn's convention."""
        p = self.probability_from_raw(self.predict_raw(X))
        return np.column_stack([1.0 - p, p])

    def score_from_raw(self, raw: np.ndarray) -> np.ndarray:
        return score_from_probability(self.probability_from_raw(raw))

    def grades(self, score: np.ndarray) -> np.ndarray:
        return grade_from_score(score, self.grade_cutoffs)

    def features_config(self, default: FeaturesConfig) -> FeaturesConfig:
        """The feature settings the model was trained with (windows, bands, extra attributes):
        scoring must build the same features, whatever today's params.yaml says."""
        stored = self.metadata.get("features_config")
        return FeaturesConfig.model_validate(stored) if stored else default

    @property
    def feature_names_in_(self) -> list[str]:
        return list(self.spec_.names)

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (booster text, calibrator and spec JSON)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        self.booster_.save_model(str(path / "booster.txt"))
        if hasattr(self, "calibrator_"):
            (path / "calibrator.json").write_text(json.dumps(self.calibrator_.to_dict(), indent=1))
        bundle = {
            "bundle_version": BUNDLE_VERSION,
            "params": self.params,
            "num_boost_round": self.num_boost_round,
            "early_stopping_rounds": self.early_stopping_rounds,
            "monotone_constraints": self.monotone_constraints,
            "seed": self.seed,
            "horizon_days": self.horizon_days,
            "grade_cutoffs": self.grade_cutoffs,
            "best_iteration": self.best_iteration_,
            "base_raw": self.base_raw_,
            "tree_base_raw": self.tree_base_raw_,
            "blend_weight": self.blend_weight_,
            "linear": self.linear_.to_dict() if self.linear_ is not None else None,
            "spec": self.spec_.to_dict(),
            "catalog": self.catalog_.to_records(),
            "metadata": _jsonable(self.metadata),
        }
        (path / "bundle.json").write_text(json.dumps(bundle, indent=1))
        if self.outer_predictions_ is not None:
            self.outer_predictions_.to_csv(path / "outer_predictions.csv", index=False)
        return path

    @classmethod
    def load(cls, path: str | Path) -> LeadScoringModel:
        path = Path(path)
        if not (path / "bundle.json").exists():
            raise ModelNotFoundError(f"{path} is not a model bundle (no bundle.json)")
        data = json.loads((path / "bundle.json").read_text())
        model = cls(
            params=data["params"],
            num_boost_round=data["num_boost_round"],
            early_stopping_rounds=data["early_stopping_rounds"],
            monotone_constraints=data["monotone_constraints"],
            seed=data["seed"],
            horizon_days=data["horizon_days"],
            grade_cutoffs=data["grade_cutoffs"],
        )
        model.booster_ = lgb.Booster(model_file=str(path / "booster.txt"))
        model.best_iteration_ = int(data["best_iteration"])
        model.tree_base_raw_ = float(data.get("tree_base_raw", data["base_raw"]))
        model.base_raw_ = float(data["base_raw"])
        if data.get("linear"):
            model.linear_ = LinearScorer.from_dict(data["linear"])
            model.blend_weight_ = float(data["blend_weight"])
        model.spec_ = FeatureSpec.from_dict(data["spec"])
        model.catalog_ = Catalog.from_records(data["catalog"])
        model.metadata = data.get("metadata", {})
        if (path / "calibrator.json").exists():
            model.calibrator_ = calibrator_from_dict(json.loads((path / "calibrator.json").read_text()))
        if (path / "outer_predictions.csv").exists():
            model.outer_predictions_ = pd.read_csv(path / "outer_predictions.csv", dtype={"lead_id": str})
        return model


def _trimmed(booster: lgb.Booster, iterations: int) -> lgb.Booster:
    """A booster holding only the first *iterations* trees (what early stopping chose)."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=iterations))


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    return value
