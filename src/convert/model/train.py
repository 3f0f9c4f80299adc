"""Training: the multi-snapshot training set, time-series cross-fitting, the deployed refit
and an honest evaluation against three baselines on outer folds no choice saw.

The design lives in :mod:`convert.model.crossfit`: forward-chaining folds over as-of times (a fold
fits only on snapshots whose horizon ended before its first as-of time); rounds, parameters,
blend weight and calibrator chosen on the inner folds; figures from the outer folds; the
deployed booster refitted on every labelled snapshot up to ``as_of - horizon``. Class
imbalance is handled without reweighting: weights would distort the probabilities that the
calibrator must then undo.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import InsufficientDataError
from convert.features.catalog import Catalog
from convert.features.engine import KEY, build_features
from convert.features.labels import AsOfGrid, build_labels, grid_for, parse_as_of
from convert.model.baselines import fit_baselines
from convert.model.bundle import LeadScoringModel, score_from_probability
from convert.model.crossfit import CrossFit, Folds, cross_fit, time_folds
from convert.model.metadata import BundleMetadata
from convert.model.metrics import evaluate, grade_table, lift_table, reliability_table
from convert.schema import Labeled
from convert.sources.export import CRMData


@dataclass
class TrainingSet:
    """Labelled feature rows keyed by (lead_id, as_of), with their catalog."""

    frame: pd.DataFrame
    catalog: Catalog
    event_types: tuple[str, ...]
    as_of: pd.Timestamp
    horizon_days: int
    grid: AsOfGrid | None = None  # the snapshot grid and how it was chosen

    @property
    def features(self) -> list[str]:
        return self.catalog.names

    @property
    def as_ofs(self) -> list[pd.Timestamp]:
        return sorted(pd.to_datetime(self.frame[Labeled.as_of].unique()))


def default_as_of(data: CRMData) -> pd.Timestamp:
    """The day after the latest timestamp in the data (midnight UTC)."""
    return data.latest_timestamp().normalize() + pd.Timedelta(days=1)


def build_training_set(
    data: CRMData, config: Config, as_of: str | pd.Timestamp | None = None
) -> TrainingSet:
    """Labels and point-in-time features for every as-of time whose horizon ended by *as_of*."""
    t = parse_as_of(as_of) or default_as_of(data)
    horizon = config.labels.horizon_days
    grid = grid_for(config.labels, data.earliest_created(), t)
    needed = config.train.inner_folds + config.train.outer_folds + 1
    if len(grid) < needed:
        raise InsufficientDataError(
            f"only {len(grid)} as-of times between the first lead and {t:%Y-%m-%d} minus the "
            f"{horizon}-day horizon ({grid.describe()}); training needs at least {needed} "
            f"({config.train.inner_folds} inner folds, {config.train.outer_folds} outer, one to fit the "
            "first). Use more frequent snapshots (labels.frequency: daily or weekly), a shorter "
            "--horizon-days, a smaller labels.min_history_days, or train.inner_folds: 2 and "
            "train.outer_folds: 1"
        )
    labels = build_labels(data.con, grid.times, horizon)
    fs = build_features(data.con, labels, config.features)
    frame = labels.merge(fs.frame, on=KEY, how="left", validate="one_to_one")
    return TrainingSet(frame, fs.catalog, fs.event_types, t, horizon, grid)


@dataclass
class Evaluation:
    """Outer-fold metrics of the model beside the baselines, and its diagnostic tables.

    ``predictions`` holds the outer folds' rows with their out-of-fold probabilities;
    ``folds`` the figures of every fold (outer: reported; inner: where choices were made)."""

    metrics: pd.DataFrame
    reliability: pd.DataFrame
    lift: pd.DataFrame
    grades: pd.DataFrame
    predictions: pd.DataFrame
    folds: pd.DataFrame | None = None

    def table(self) -> str:
        shown = self.metrics.loc[["roc_auc", "pr_auc", "log_loss", "brier", "ece"]]
        return shown.to_string(float_format=lambda v: f"{v:.4f}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the deployed model, its outer-fold evaluation and the folds."""

    model: LeadScoringModel
    evaluation: Evaluation
    slices: pd.DataFrame
    calibration_cv: dict[str, float]
    training_set: TrainingSet
    split: Folds
    tuning: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)
    crossfit: CrossFit | None = None


def outer_evaluation(
    model: LeadScoringModel, frame: pd.DataFrame, y: np.ndarray, fit: CrossFit, keys: Sequence[Any]
) -> Evaluation:
    """The outer folds' out-of-fold probabilities as an :class:`Evaluation` (model and baselines)."""
    rows = fit.outer_rows
    y_out = np.asarray(y)[rows].astype("int64")
    metrics = pd.DataFrame({name: evaluate(y_out, p) for name, p in fit.outer_probs.items()})
    p_model = fit.outer_probs["model"]
    scores = score_from_probability(p_model)
    grades = model.grades(scores)
    preds = frame.iloc[rows][list(keys)].assign(
        label=y_out, probability=p_model, score=scores, grade=grades,
        **{f"p_{k}": v for k, v in fit.outer_probs.items() if k != "model"},
    )
    return Evaluation(
        metrics=metrics,
        reliability=reliability_table(y_out, p_model),
        lift=lift_table(y_out, p_model),
        grades=grade_table(y_out, grades),
        predictions=preds.reset_index(drop=True),
        folds=fit.fold_metrics,
    )


def evaluation_from_predictions(predictions: pd.DataFrame, model: LeadScoringModel) -> Evaluation:
    """An :class:`Evaluation` from stored outer-fold predictions (``probability`` and ``p_<baseline>``)."""
    y = predictions["label"].to_numpy().astype("int64")
    probs = {"model": predictions["probability"].to_numpy(dtype="float64"),
             **{c[2:]: predictions[c].to_numpy(dtype="float64") for c in predictions.columns if c.startswith("p_")}}
    p_model = probs["model"]
    folds = model.metadata.fold_metrics
    return Evaluation(
        metrics=pd.DataFrame({name: evaluate(y, p) for name, p in probs.items()}),
        reliability=reliability_table(y, p_model),
        lift=lift_table(y, p_model),
        grades=grade_table(y, predictions["grade"].to_numpy()),
        predictions=predictions.reset_index(drop=True),
        folds=pd.DataFrame(folds) if folds else None,
    )


def training_metadata(fit: CrossFit, folds: Folds, y: np.ndarray, evaluation: Evaluation) -> dict[str, Any]:
    """What the bundle records about the design: the deployed range, the choices, every fold's figures."""
    summary = folds.summary(y)
    return {
        "design": "time-series cross-fitting" if folds.mode == "time" else f"cross-fitting ({folds.mode})",
        "deployed_fit": {"from": folds.deploy_span[0], "to": folds.deploy_span[1], "rows": len(folds.deploy),
                         "positives": int(np.asarray(y)[folds.deploy].sum())},
        "folds": summary.to_dict("records"),
        "fold_metrics": fit.fold_metrics.to_dict("records"),
        "choices": fit.choices,
        "metrics_from": "outer folds (" + ", ".join(
            f"{f.name}: {f.test_span[0]} to {f.test_span[1]}" if f.test_span[1] else f.name
            for f in folds.outer) + "); choices from inner folds",
        "purged_rows": folds.purged,
        "calibration": {"method": fit.model.calibrator_.method, "cv_log_loss": fit.calibration_cv},
        "holdout_metrics": evaluation.metrics["model"].to_dict(),
        "baseline_metrics": {c: evaluation.metrics[c].to_dict() for c in evaluation.metrics if c != "model"},
        "params": fit.params,
        "rounds": fit.rounds,
        "blend_weight": fit.blend_weight,
    }


def train(
    data: CRMData,
    config: Config,
    as_of: str | pd.Timestamp | None = None,
    tune_trials: int | None = None,
) -> TrainResult:
    """Build the training set, cross-fit (tune, choose, calibrate), evaluate on the outer folds
    and refit the deployed model on every labelled snapshot.

    Parameters
    ----------
    data:
        A loaded CRM export (:func:`convert.load`).
    config:
        The configuration; ``labels.horizon_days`` is the horizon, ``train`` the fold design.
    as_of:
        Training as-of time ``T`` (ISO 8601); default: the day after the latest timestamp.
    tune_trials:
        Random-search trials (``--tune``); default ``config.train.tune_trials``.

    Raises
    ------
    InsufficientDataError
        When the history cannot hold the folds; the message gives the figures and a setting
        that would train.
    """
    ts = build_training_set(data, config, as_of)
    return train_on(ts, config, tune_trials)


def fit_deployed(ts: TrainingSet, config: Config) -> LeadScoringModel:
    """The deployed model of the training design on *ts*, without the baselines (backtests)."""
    y = ts.frame[Labeled.label].to_numpy()
    folds = time_folds(ts.frame[Labeled.as_of], y, ts.horizon_days, config)
    return cross_fit(ts.frame[ts.features], y, folds, config, catalog=ts.catalog, event_types=ts.event_types,
                     as_of=pd.to_datetime(ts.frame[Labeled.as_of]).to_numpy()).model


def train_on(ts: TrainingSet, config: Config, tune_trials: int | None = None) -> TrainResult:
    """:func:`train` on a built training set."""
    y = ts.frame[Labeled.label].to_numpy()
    folds = time_folds(ts.frame[Labeled.as_of], y, ts.horizon_days, config)
    trials = config.train.tune_trials if tune_trials is None else tune_trials
    fit = cross_fit(
        ts.frame[ts.features], y, folds, config, catalog=ts.catalog, event_types=ts.event_types,
        baselines=lambda X, yy: fit_baselines(X, yy, config.baselines, config.seed),
        trials=trials, as_of=pd.to_datetime(ts.frame[Labeled.as_of]).to_numpy(),
    )
    model = fit.model
    evaluation = outer_evaluation(model, ts.frame, y, fit, KEY)
    model.outer_predictions_ = evaluation.predictions
    model.metadata = BundleMetadata.of({
        "training_as_of": ts.as_of.isoformat(),
        "horizon_days": ts.horizon_days,
        "frequency": ts.grid.frequency if ts.grid else config.labels.frequency,
        "as_of_grid": ts.grid.to_dict() if ts.grid else None,
        **training_metadata(fit, folds, y, evaluation),
        "seed": config.seed,
        "features_config": config.features.model_dump(mode="json"),
    })
    return TrainResult(model, evaluation, folds.summary(y), fit.calibration_cv, ts, folds, fit.tuning,
                       fit.params, fit)


