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

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import ConfigError
from convert.features.engine import KEY
from convert.features.labels import parse_as_of
from convert.metadata import BundleMetadata
from convert.model.baselines import (
    Baseline,
    LogisticBaseline,
    PointsRuleBaseline,
    SourceRateBaseline,
    fit_baselines,
)
from convert.model.bundle import LeadScoringModel, score_from_probability
from convert.model.crossfit import (
    CrossFit,
    Folds,
    cross_fit,
    ordered_folds,
    random_folds,
    time_folds,
)
from convert.model.leakage import LeakageReport, screen
from convert.model.metrics import evaluate, grade_table, lift_table, reliability_table
from convert.schema import Labeled
from convert.sources.base import LeadSource, TrainingSet
from convert.sources.mapping import Mapping

__all__ = ["Evaluation", "TrainResult", "TrainingSet", "build_training_set", "folds_for", "screen_source",
           "train", "train_flat", "train_on"]


def default_as_of(data: LeadSource) -> pd.Timestamp:
    """The source's default training as-of (a CRM export: the day after its latest timestamp)."""
    return data.default_as_of()


def build_training_set(
    data: LeadSource, config: Config, as_of: str | pd.Timestamp | None = None
) -> TrainingSet:
    """Labels and point-in-time features for every as-of time whose horizon ended by *as_of*
    (a flat table: its rows). Public API: *as_of* may be ISO 8601 text, parsed here."""
    return data.training_set(config, parse_as_of(as_of))


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
    leakage: LeakageReport | None = None


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


def screen_source(
    data: LeadSource, config: Config, mapping: Mapping | None = None
) -> tuple[LeakageReport, Config]:
    """The leakage guard on a source's raw attributes against whether each lead converted.

    Stops (``LeakageError``) on an unsettled suspect; excluded columns leave the data and the
    configured features. Returns the report and the config training uses.
    """
    attrs = data.leakage_attributes(config)
    report = screen(attrs.frame, attrs.label, config.leakage, kinds=attrs.kinds, excluded=attrs.excluded,
                    allowed=(mapping or Mapping()).allow, seed=config.seed)
    report.check()
    return report, data.exclude_attributes(dict(report.excluded), config)


def folds_for(ts: TrainingSet, config: Config) -> Folds:
    """The folds of a training set's design (:mod:`convert.model.crossfit`): forward-chaining
    over as-of times purged by the horizon (``time``), stratified blocks (``random``) or
    forward-chaining in row order (``ordered``)."""
    y = ts.labels
    if ts.design == "time":
        return time_folds(ts.frame[Labeled.as_of], y, ts.horizon_days, config)
    if ts.design == "ordered":
        return ordered_folds(y, config)
    if ts.design == "random":
        return random_folds(y, config)
    raise ConfigError(f"--split must be random or ordered, not {ts.design!r}")


def baseline_fitter(ts: TrainingSet, config: Config) -> Callable[[pd.DataFrame, np.ndarray], dict[str, Baseline]]:
    """Fits the baselines whose inputs the training set's features hold (``ts.baselines``):
    all three for a CRM export's features, the logistic regression alone for a flat table's."""
    every = (SourceRateBaseline.name, LogisticBaseline.name, PointsRuleBaseline.name)
    if tuple(ts.baselines) == every:
        return lambda X, y: fit_baselines(X, y, config.baselines, config.seed)
    makers: dict[str, Callable[[], Baseline]] = {
        SourceRateBaseline.name: SourceRateBaseline,
        LogisticBaseline.name: lambda: LogisticBaseline(seed=config.seed),
        PointsRuleBaseline.name: lambda: PointsRuleBaseline(config=config.baselines),
    }
    return lambda X, y: {name: makers[name]().fit(X, y) for name in ts.baselines}


def train(
    data: LeadSource,
    config: Config,
    as_of: str | pd.Timestamp | None = None,
    tune_trials: int | None = None,
) -> TrainResult:
    """Build the training set, cross-fit (tune, choose, calibrate), evaluate on the outer folds
    and refit the deployed model on every labelled snapshot.

    Parameters
    ----------
    data:
        A loaded source: a CRM export (:func:`convert.load`) or a flat table
        (:class:`convert.sources.flat.FlatSource`).
    config:
        The configuration; ``labels.horizon_days`` is the horizon, ``train`` the fold design.
    as_of:
        Training as-of time ``T`` (ISO 8601 text or a timestamp); default: the source's
        (a CRM export: the day after its latest timestamp).
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


def train_flat(
    table: Any,
    config: Config,
    mapping: Mapping | None = None,
    split: str | None = None,
    tune_trials: int | None = None,
) -> TrainResult:
    """Screen a flat table (:func:`convert.load_flat`) for leakage, then train on it as
    :func:`train` does; the result's ``leakage`` holds the screen.

    Raises
    ------
    LeakageError
        When the leakage guard finds a suspect column neither excluded nor allowed.
    InsufficientDataError
        When a fold holds fewer than ``train.min_positives`` converted leads.
    """
    from convert.sources.flat import FlatSource

    mapping = mapping or Mapping()
    mode = split or mapping.flat.split or "random"
    if mode not in ("random", "ordered"):
        raise ConfigError(f"--split must be random or ordered, not {mode!r}")
    source = FlatSource(table, mapping, mode)  # type: ignore[arg-type]
    leakage, config = screen_source(source, config, mapping)
    result = train_on(source.training_set(config), config, tune_trials)
    result.leakage = leakage
    result.model.metadata.leakage = leakage.to_dict()
    return result


def fit_deployed(ts: TrainingSet, config: Config) -> LeadScoringModel:
    """The deployed model of the training design on *ts*, without the baselines (backtests)."""
    y = ts.labels
    return cross_fit(ts.frame[ts.features], y, folds_for(ts, config), config, catalog=ts.catalog,
                     event_types=ts.event_types, as_of=ts.row_times()).model


def train_on(ts: TrainingSet, config: Config, tune_trials: int | None = None) -> TrainResult:
    """:func:`train` on a built training set (from either source)."""
    y = ts.labels
    folds = folds_for(ts, config)
    trials = config.train.tune_trials if tune_trials is None else tune_trials
    fit = cross_fit(
        ts.frame[ts.features], y, folds, config, catalog=ts.catalog, event_types=ts.event_types,
        baselines=baseline_fitter(ts, config), trials=trials, as_of=ts.row_times(),
    )
    model = fit.model
    evaluation = outer_evaluation(model, ts.frame, y, fit, KEY)
    model.outer_predictions_ = evaluation.predictions
    model.metadata = BundleMetadata.of({
        **ts.metadata,
        **training_metadata(fit, folds, y, evaluation),
        "seed": config.seed,
        "features_config": config.features.model_dump(mode="json"),
    })
    return TrainResult(model, evaluation, folds.summary(y), fit.calibration_cv, ts, folds, fit.tuning,
                       fit.params, fit)


def deployed_until(model: LeadScoringModel) -> pd.Timestamp | None:
    """The latest as-of time the deployed model learned from, for a model of the time design
    (a CRM export); ``None`` for a flat table's (its rows have no time) or an old bundle."""
    record = model.metadata
    if record.deployed_fit is None or not str(record.design or "").startswith("time"):
        return None
    return pd.Timestamp(record.deployed_fit.to)
