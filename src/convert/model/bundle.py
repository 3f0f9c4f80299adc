"""The model bundle: feature spec, LightGBM booster and calibrator, saved and loaded together.

:class:`FeatureSpec` records, by name, the features a model was trained on, their kind
and the training categories of every categorical feature; at scoring time it refuses
data that lacks a feature and re-applies the training categories (LightGBM encodes a
pandas category by its position in the category list, so a different list would give
silently wrong predictions). :class:`LeadScoringModel` follows scikit-learn's
conventions: ``fit`` returns ``self``, learned attributes end in ``_``.

A saved bundle is a folder of plain files: ``booster.txt`` (LightGBM's text format),
``calibrator.json`` and ``bundle.json`` (spec, catalog, horizon, grades, metrics), so
a model can be read without unpickling code. ``manifest.json`` lists the SHA-256 of
every other file; loading checks it before anything reaches LightGBM (whose parser
aborts the process on a truncated model), so a missing, extra or damaged file is a
:class:`~convert.exceptions.BundleError` naming it. The bundle's *version* is a prefix of
the manifest's own hash: a bundle retrained in place gets a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from convert.config import FeaturesConfig
from convert.exceptions import BundleError, ConvertWarning, FeatureMismatchError, ModelNotFoundError
from convert.features.catalog import Catalog
from convert.metadata import BundleMetadata
from convert.model.calibrate import Calibrator, calibrator_from_dict
from convert.model.linear import LinearScorer

BUNDLE_VERSION = 1
MANIFEST = "manifest.json"
BOOSTER, CALIBRATOR, BUNDLE = "booster.txt", "calibrator.json", "bundle.json"
#: the outer folds' out-of-fold predictions, kept for promotion and the report
OUTER_PREDICTIONS = "outer_predictions.csv"
#: Keys bundle.json must hold (``metadata`` is optional).
_BUNDLE_KEYS = ("params", "num_boost_round", "early_stopping_rounds", "monotone_constraints", "seed",
                "horizon_days", "grade_cutoffs", "best_iteration", "base_raw", "spec", "catalog")


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


def predict_threads(requested: int = 0) -> int:
    """Threads for predictions: *requested*, or (0) every core this process may use.

    Passed explicitly to LightGBM, whose booster would otherwise keep the thread count it
    was trained with. Each row is predicted on its own: the count never changes a result.
    """
    if requested > 0:
        return requested
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


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
        self.metadata = BundleMetadata()

    @property
    def metadata(self) -> BundleMetadata:
        """The training record (:class:`~convert.metadata.BundleMetadata`), saved in the bundle."""
        return self._metadata

    @metadata.setter
    def metadata(self, value: BundleMetadata | Mapping[str, Any] | None) -> None:
        # a trainer may hand over a plain dictionary: it is validated into the typed record
        self._metadata = BundleMetadata.of(value)

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
            # Fixed, not "all cores": LightGBM's histograms sum in per-thread order, so the
            # same data trains the same model on any machine. train.lightgbm.num_threads
            # overrides it; predictions use every core (predict_threads).
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
        tree = np.asarray(
            self.booster_.predict(matrix, raw_score=True, num_threads=predict_threads()), dtype="float64"
        )
        if self.linear_ is None:
            return tree
        from convert.model.treeshap import lightgbm_matrix

        return self.blend_raw(tree, lightgbm_matrix(matrix))

    def predict_raw_matrix(self, X: np.ndarray) -> np.ndarray:
        """Raw log-odds of rows already encoded for ``spec_`` (:class:`FeatureMatrix` values)."""
        self._check_fitted()
        return self.blend_raw(
            np.asarray(self.booster_.predict(X, raw_score=True, num_threads=predict_threads()), dtype="float64"), X
        )

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
        stored = self.metadata.features_config
        return FeaturesConfig.model_validate(stored) if stored else default

    @property
    def feature_names_in_(self) -> list[str]:
        return list(self.spec_.names)

    # --- persistence ----------------------------------------------------------------------

    def save(self, path: str | Path) -> Path:
        """Write the bundle folder (booster text, calibrator and spec JSON, manifest last)."""
        self._check_fitted()
        path = Path(path)
        path.mkdir(parents=True, exist_ok=True)
        (path / MANIFEST).unlink(missing_ok=True)  # a half-written bundle fails its check
        self.booster_.save_model(str(path / BOOSTER))
        calibrated = hasattr(self, "calibrator_")
        if calibrated:
            (path / CALIBRATOR).write_text(json.dumps(self.calibrator_.to_dict(), indent=1))
        else:
            (path / CALIBRATOR).unlink(missing_ok=True)
        bundle = {
            "bundle_version": BUNDLE_VERSION,
            "calibrated": calibrated,
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
            "metadata": self.metadata.to_json(),
        }
        (path / BUNDLE).write_text(json.dumps(bundle, indent=1))
        files = [BOOSTER, BUNDLE] + ([CALIBRATOR] if calibrated else [])
        if self.outer_predictions_ is not None:
            self.outer_predictions_.to_csv(path / OUTER_PREDICTIONS, index=False)
            files.append(OUTER_PREDICTIONS)
        elif (path / OUTER_PREDICTIONS).exists():
            (path / OUTER_PREDICTIONS).unlink()
        manifest = _manifest_bytes({name: _sha256(path / name) for name in files})
        (path / MANIFEST).write_bytes(manifest)
        self.bundle_hash_ = hashlib.sha256(manifest).hexdigest()
        return path

    @classmethod
    def load(cls, path: str | Path) -> LeadScoringModel:
        """Read a bundle folder, checking every file against its manifest first.

        Raises
        ------
        ModelNotFoundError
            When *path* is not a bundle (no ``bundle.json``).
        BundleError
            Naming the file: missing, extra, altered (its SHA-256 differs from the manifest),
            unreadable (``bundle.json`` invalid or lacking a key, the booster truncated) or
            the calibrator trained with the booster absent.
        """
        path = Path(path)
        if not path.is_dir() or not (path / BUNDLE).exists() and not (path / MANIFEST).exists():
            raise ModelNotFoundError(f"{path} is not a model bundle (no {BUNDLE})")
        digest = _verify(path)
        data = _read_bundle_json(path)
        try:
            model = cls(
                params=data["params"],
                num_boost_round=data["num_boost_round"],
                early_stopping_rounds=data["early_stopping_rounds"],
                monotone_constraints=data["monotone_constraints"],
                seed=data["seed"],
                horizon_days=data["horizon_days"],
                grade_cutoffs=data["grade_cutoffs"],
            )
            best_iteration = int(data["best_iteration"])
            base_raw = float(data["base_raw"])
            tree_base_raw = float(data.get("tree_base_raw", data["base_raw"]))
            linear = LinearScorer.from_dict(data["linear"]) if data.get("linear") else None
            blend_weight = float(data["blend_weight"]) if linear is not None else 0.0
            spec = FeatureSpec.from_dict(data["spec"])
            catalog = Catalog.from_records(data["catalog"])
        except (TypeError, ValueError, AttributeError) as exc:
            raise BundleError(
                f"{path / BUNDLE} holds a value of the wrong type ({exc}); the bundle is damaged: "
                "re-save it from training (convert-leads train --save) or use a registered model"
            ) from None
        calibrated = data.get("calibrated", True)  # bundles before the flag were always calibrated
        if calibrated and not (path / CALIBRATOR).exists():
            raise BundleError(
                f"{path / CALIBRATOR} is missing: the bundle's scores need the calibrator trained with "
                "its booster, and convert never scores without it. Restore the file, or re-save the "
                "bundle from training (convert-leads train --save)"
            )
        booster = _read_booster(path / BOOSTER)
        model.booster_ = booster
        model.best_iteration_ = best_iteration
        model.base_raw_ = base_raw
        model.tree_base_raw_ = tree_base_raw
        if linear is not None:
            model.linear_ = linear
            model.blend_weight_ = blend_weight
        model.spec_ = spec
        model.catalog_ = catalog
        model.metadata = BundleMetadata.from_saved(data.get("metadata"), path / BUNDLE)
        model.bundle_hash_ = digest
        if calibrated:
            try:
                model.calibrator_ = calibrator_from_dict(json.loads((path / CALIBRATOR).read_text()))
            except (ValueError, KeyError, TypeError) as exc:
                raise BundleError(f"{path / CALIBRATOR} cannot be read ({exc}); the bundle is damaged") from None
        if (path / OUTER_PREDICTIONS).exists():
            model.outer_predictions_ = pd.read_csv(path / OUTER_PREDICTIONS, dtype={"lead_id": str})
        return model


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def _manifest_bytes(files: Mapping[str, str]) -> bytes:
    """The manifest as written (sorted, so the same files give the same bytes and hash)."""
    body = {"manifest_version": 1, "algorithm": "sha256", "files": dict(sorted(files.items()))}
    return (json.dumps(body, indent=1, sort_keys=True) + "\n").encode()


def bundle_version(model: LeadScoringModel) -> str:
    """The short version of a loaded or saved bundle: the first 12 hex digits of its manifest hash."""
    digest = getattr(model, "bundle_hash_", None)
    return digest[:12] if digest else "unsaved"


def _verify(path: Path) -> str:
    """Check the folder's files against ``manifest.json``; return the manifest's SHA-256.

    A bundle written before manifests existed is accepted with a :class:`ConvertWarning`
    saying how to re-save it; its hash is that of the manifest it would get.
    """
    present = sorted(p.name for p in path.iterdir())
    if MANIFEST not in present:
        warnings.warn(
            f"the model bundle {path} has no {MANIFEST} (it was written before convert checked "
            "bundles), so its files cannot be verified. Re-save it once to add one: python -c "
            f"\"from convert.model.bundle import LeadScoringModel as M; M.load('{path}').save('{path}')\"",
            ConvertWarning,
            stacklevel=3,
        )
        files = [n for n in (BOOSTER, BUNDLE, CALIBRATOR, OUTER_PREDICTIONS) if n in present]
        return hashlib.sha256(_manifest_bytes({n: _sha256(path / n) for n in files})).hexdigest()
    raw = (path / MANIFEST).read_bytes()
    try:
        manifest = json.loads(raw)
        listed = manifest["files"]
        if not isinstance(listed, dict) or not all(isinstance(v, str) for v in listed.values()):
            raise TypeError("'files' must map each file name to its SHA-256")
    except (ValueError, KeyError, TypeError) as exc:
        raise BundleError(
            f"{path / MANIFEST} cannot be read ({exc}); the bundle is damaged: re-save it from training"
        ) from None
    for name in present:
        if name != MANIFEST and name not in listed:
            raise BundleError(
                f"{path / name} is not part of the bundle (its manifest does not list it): remove it, "
                "or re-save the bundle if it belongs there"
            )
    for name, expected in listed.items():
        if name not in present:
            raise BundleError(f"{path / name} is missing from the bundle (its manifest lists it)")
        if _sha256(path / name) != expected:
            raise BundleError(
                f"{path / name} is damaged: its SHA-256 differs from the one in {MANIFEST}. Restore the "
                "bundle from where it was trained (convert-leads train --save) or use a registered model"
            )
    return hashlib.sha256(raw).hexdigest()


def _read_bundle_json(path: Path) -> dict[str, Any]:
    file = path / BUNDLE
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise BundleError(f"{file} is missing from the bundle") from None
    except (ValueError, UnicodeDecodeError) as exc:
        raise BundleError(f"{file} is not valid JSON ({exc}); the bundle is damaged: re-save it") from None
    if not isinstance(data, dict):
        raise BundleError(f"{file} is not a JSON object; the bundle is damaged: re-save it")
    missing = [k for k in _BUNDLE_KEYS if k not in data]
    if missing:
        raise BundleError(
            f"{file} lacks the key {missing[0]!r}" + (f" (and {', '.join(map(repr, missing[1:]))})" if missing[1:] else "")
            + "; the bundle is damaged or not a convert bundle: re-save it from training"
        )
    return data


_TREE_SIZES = re.compile(rb"^tree_sizes=([0-9 ]*)$", re.M)


def _read_booster(file: Path) -> lgb.Booster:
    """The booster, after checking its text is whole: LightGBM's own parser aborts (or crashes)
    the process on a truncated model instead of raising."""
    if not file.exists():
        raise BundleError(f"{file} is missing from the bundle")
    text = file.read_bytes()
    if not _booster_is_whole(text):
        raise BundleError(
            f"{file} is truncated or not a LightGBM model (its trees do not match their declared "
            "sizes, or 'end of trees' is missing); the bundle is damaged: re-save it from training"
        )
    try:
        return lgb.Booster(model_str=text.decode("utf-8"))
    except (lgb.basic.LightGBMError, UnicodeDecodeError, ValueError) as exc:
        raise BundleError(f"{file} cannot be read by LightGBM ({exc}); the bundle is damaged") from None


def _booster_is_whole(text: bytes) -> bool:
    """Each ``Tree=i`` block has the byte size the header's ``tree_sizes`` declares, the
    trees end with ``end of trees``, and a parameters section after them is closed."""
    if not text.startswith(b"tree\n"):
        return False
    sizes = _TREE_SIZES.search(text)
    if sizes is None:
        return False
    pos = text.find(b"\nTree=0\n")
    declared = [int(s) for s in sizes.group(1).split()]
    if pos < 0:
        return not declared and b"end of trees" in text
    pos += 1
    for i, size in enumerate(declared):
        if not text.startswith(b"Tree=%d\n" % i, pos):
            return False
        pos += size
    if not (text.startswith(b"end of trees", pos) and pos + 12 <= len(text)):
        return False
    # the parameters section after the trees: LightGBM's parser also crashes on a cut one
    tail = text[pos:]
    return b"\nparameters:\n" not in tail or b"\nend of parameters\n" in tail


def _trimmed(booster: lgb.Booster, iterations: int) -> lgb.Booster:
    """A booster holding only the first *iterations* trees (what early stopping chose)."""
    return lgb.Booster(model_str=booster.model_to_string(num_iteration=iterations))
