"""``convert-leads train``: load, screen for leakage, train, judge against the baselines and the
champion, log and register -- the same for a CRM export and a flat table."""

from __future__ import annotations

import json
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import FeatureMismatchError
from convert.features.engine import KEY
from convert.model.bundle import LeadScoringModel
from convert.model.explain import contributions, importance_table, model_score_fn, to_points
from convert.model.leakage import LeakageReport
from convert.model.train import TrainResult, screen_source, train_on
from convert.registry.store import RegisteredModel
from convert.schema import Labeled
from convert.sources.base import NO_FLAT, FlatOptions, LeadSource
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_data

Figures = dict[str, dict[str, float]]


def screen_attributes(data: LeadSource, config: Config, mapping: Mapping | None = None) -> tuple[LeakageReport, Config]:
    """The leakage guard the way ``convert-leads train`` runs it (:func:`convert.model.train.screen_source`):
    stops (``LeakageError``) on an unsettled suspect; returns the report and the config."""
    return screen_source(data, config, mapping)


def global_importance(model: LeadScoringModel, frame: pd.DataFrame, max_rows: int = 20_000, seed: int = 42) -> pd.DataFrame:
    """Mean |score points| per feature over (a sample of) *frame*, with family and description."""
    sample = frame.sample(n=min(max_rows, len(frame)), random_state=seed) if len(frame) > max_rows else frame
    phi = contributions(model, model.matrix(sample))
    pts = to_points(phi.sum(axis=1), phi[:, :-1], model.base_raw_, model_score_fn(model))
    return importance_table(model, pts.continuous, phi[:, :-1])


@dataclass
class TrainSummary:
    """What :func:`train_step` did: the training result, the registered version, the global
    importance, the champion's figures beside the challenger's (when there was a champion)."""

    result: TrainResult
    registered: RegisteredModel
    importance: pd.DataFrame
    champion_metrics: Figures | None
    lines: list[str] = field(default_factory=list)
    saved: Path | None = None


def champion_comparison(
    data: LeadSource, champion: LeadScoringModel, label: str, result: TrainResult, config: Config, echo: Echo
) -> tuple[Figures, str]:
    """The champion's figures beside a just-trained challenger's, and which comparison gave them.

    Labelled as-of times newer than both training cut-offs, scored by both deployed models,
    when the data holds any (the challenger's own figures are then recomputed there too, and
    returned as ``{"champion": ..., "challenger": ...}``); otherwise both recipes on the
    challenger's outer folds, the champion's recipe (parameters, rounds, blend weight,
    calibration method) refitted there.
    """
    from convert.model.metrics import evaluate

    ts, folds = result.training_set, result.split
    newer: list[pd.Timestamp] = []
    if ts.design == "time":
        cut_challenger = pd.Timestamp(folds.deploy_span[1])
        record = champion.metadata
        cut_champion = (pd.Timestamp(record.deployed_fit.to) if record.deployed_fit else
                        pd.Timestamp(record.training_as_of or cut_challenger) - pd.Timedelta(days=ts.horizon_days))
        newer = data.labelled_after(max(cut_challenger, cut_champion), ts.horizon_days, config)
    if newer:
        figures = {}
        y = np.array([])
        for who, model in (("champion", champion), ("challenger", result.model)):
            rows = data.labelled_rows(newer, ts.horizon_days, model.features_config(config.features),
                                      model.spec_.event_types)
            y = rows[Labeled.label].to_numpy()
            figures[who] = evaluate(y, model.predict_proba(rows)[:, 1])
        how = (f"newer as-of times ({len(newer)} from {newer[0]:%Y-%m-%d} to {newer[-1]:%Y-%m-%d}, "
               f"{len(y):,} leads) scored by both deployed models")
        echo(f"champion {label} vs challenger on {how}: log loss {figures['champion']['log_loss']:.4f} vs "
             f"{figures['challenger']['log_loss']:.4f}")
        return figures, how
    frame = ts.frame
    if champion.spec_.names != ts.features or champion.features_config(config.features) != config.features:
        fs = data.feature_rows(ts.frame[KEY], champion.features_config(config.features),
                               champion.spec_.event_types, champion.metadata.to_dict())
        frame = ts.frame[KEY].merge(fs, on=KEY, how="left")
    return recipe_on_outer_folds(frame, champion, label, result, config, echo, as_of=ts.row_times())


def recipe_on_outer_folds(
    frame: pd.DataFrame, champion: LeadScoringModel, label: str, result: TrainResult, config: Config, echo: Echo,
    as_of: np.ndarray | None = None,
) -> tuple[Figures, str]:
    """The champion's recipe refitted on the challenger's folds, both judged on its outer folds."""
    from convert.model.crossfit import Recipe, cross_fit
    from convert.model.metrics import evaluate

    y = result.training_set.labels
    fit = cross_fit(frame[champion.spec_.names], y, result.split, config, catalog=champion.catalog_,
                    event_types=champion.spec_.event_types, as_of=as_of, recipe=Recipe.of(champion))
    metrics = evaluate(y[fit.outer_rows], fit.outer_probs["model"])
    how = "the challenger's outer folds, the champion's recipe refitted there (no newer labelled as-of times)"
    echo(f"champion {label}'s recipe on {how}: log loss {metrics['log_loss']:.4f}, ROC AUC {metrics['roc_auc']:.4f}")
    return {"champion": metrics, "challenger": result.evaluation.metrics["model"].to_dict()}, how


def _log_training(
    result: TrainResult, name: str, params: dict[str, object], holdout: pd.DataFrame,
    champion_metrics: Figures | None, leakage: LeakageReport, config: Config,
) -> TrainSummary:
    """Log a trained model to MLflow and register it: hold-out and baseline metrics (and the
    champion's on the same hold-out), the source's *params* with the fit's own, evaluation
    tables and figures, global importance and the leakage screen."""
    from convert.analysis.plots import plot_importance, plot_lift, plot_reliability
    from convert.registry import store as registry

    ev = result.evaluation
    importance = global_importance(result.model, holdout, seed=config.seed)
    metrics: dict[str, float] = {}
    for col in ev.metrics.columns:
        prefix = "holdout_" if col == "model" else f"baseline_{col}_"
        metrics.update({f"{prefix}{k}": float(v) for k, v in ev.metrics[col].items()})
    if champion_metrics:  # {"champion": figures, "challenger": figures} on the same rows
        for who, figures in champion_metrics.items():
            metrics.update({f"comparison_{who}_{k}": float(v) for k, v in figures.items()})
    params = {
        **params, "seed": config.seed, "calibration": result.model.calibrator_.method,
        "best_iteration": result.model.best_iteration_, "n_features": len(result.model.spec_.names),
        "blend_weight": result.model.blend_weight_,
        "deployed_fit": "{from} to {to} ({rows} rows)".format(**(result.model.metadata.get("deployed_fit") or {})),
        "metrics_from": result.model.metadata.metrics_from or "",
    }
    with tempfile.TemporaryDirectory() as tmp:
        leakage_file = Path(tmp) / "leakage.json"
        leakage_file.write_text(json.dumps(leakage.to_dict(), indent=1))
        registered = registry.log_training(
            result.model, name, params, metrics,
            tables={"metrics": ev.metrics.reset_index(names="metric"), "reliability": ev.reliability,
                    "lift": ev.lift, "grades": ev.grades, "folds": result.slices,
                    **({"fold_metrics": ev.folds} if ev.folds is not None else {}),
                    "importance": importance, "calibration_cv": pd.DataFrame([result.calibration_cv]),
                    "leakage": leakage.to_frame()},
            figures={"reliability": plot_reliability(ev.reliability), "lift": plot_lift(ev.lift),
                     "importance": plot_importance(importance)},
            input_example=holdout,
            extra_artifacts={"leakage": leakage_file},
        )
    return TrainSummary(result, registered, importance, champion_metrics)


def train_step(
    data_path: str | Path,
    config: Config,
    as_of: pd.Timestamp | None = None,
    tune_trials: int | None = None,
    model_name: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    mapping: Mapping | None = None,
    *,
    flat: FlatOptions = NO_FLAT,
    save: Path | None = None,
    summary_path: Path | None = None,
) -> TrainSummary:
    """Load (a CRM export, or a flat table with the *flat* options), screen for leakage,
    train, evaluate against the baselines and the champion, log and register; optionally
    write the bundle to *save* and the figures as JSON to *summary_path*.

    (A training set already built, e.g. the ``features`` stage's output, would enter at
    :func:`convert.model.train.train_on` in place of ``source.training_set``.)"""
    from convert.registry import store as registry

    data = Input(data_path, mapping, rejects, strict, flat)
    source = open_data(data, config, echo, "train")
    name = model_name or source.model_name(config)
    try:
        leakage, config = screen_source(source, config, data.mapping)
        for line in leakage.lines():
            echo(line)
        if config.allocation.owner_column in leakage.excluded:
            echo(f"not a feature: {config.allocation.owner_column!r} "
                 f"({leakage.excluded[config.allocation.owner_column]})")
        ts = source.training_set(config, as_of)
        result = train_on(ts, config, tune_trials)
        result.leakage = leakage
        result.model.metadata["leakage"] = leakage.to_dict()
        if ts.grid is not None:
            echo(f"training snapshots: {ts.grid.describe()}")
        holdout = ts.frame.loc[result.split.masks["holdout"]].reset_index(drop=True)
        champion_metrics, comparison = None, None
        if registry.champion_exists(name):
            champion, label = registry.load_model(f"models:/{name}@{registry.CHAMPION}")
            if source.accepts(champion.metadata.to_dict()) is None:
                try:
                    champion_metrics, comparison = champion_comparison(source, champion, label, result, config, echo)
                except FeatureMismatchError:  # the champion reads columns this table lacks
                    champion_metrics, comparison = None, None
    finally:
        source.close()
    params = {"model_name": name, **ts.params, "lightgbm": result.params, **leakage.params(),
              **({"comparison": comparison} if comparison else {})}
    summary = _log_training(result, name, params, holdout, champion_metrics, leakage, config)
    summary.lines.extend(leakage.lines())
    if save:
        result.model.save(save)
        summary.saved = save
    if summary_path:
        summary_path.parent.mkdir(parents=True, exist_ok=True)
        summary_path.write_text(json.dumps(summary_record(summary), indent=1, default=str))
    return summary


def summary_record(summary: TrainSummary) -> dict[str, object]:
    """A training run as JSON-ready figures: hold-out metrics beside the baselines, slices,
    the leakage screen and the registered version (``train --summary``)."""
    r = summary.result
    model = r.model
    meta = model.metadata
    holdout = r.split.masks["holdout"]
    y = r.training_set.labels
    return {
        "model": summary.registered.label,
        "mode": meta.get("mode", "event"),
        "flat": {k: v for k, v in (meta.get("flat") or {}).items() if k != "mapping"},
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "holdout_rows": int(holdout.sum()),
        "holdout_positive_rate": float(y[holdout].mean()),
        "metrics": {c: {k: float(v) for k, v in r.evaluation.metrics[c].items()} for c in r.evaluation.metrics},
        "calibration": model.calibrator_.method,
        "slices": r.slices.to_dict("records"),
        "leakage": meta.get("leakage"),
        "top_features": summary.importance.head(10)[["feature", "family", "mean_abs_points"]].to_dict("records"),
    }
