"""``convert-leads train``: load, screen for leakage, train, judge against the baselines and the
champion, log and register -- the same for a CRM export and a flat table."""

from __future__ import annotations

import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import ConfigError, FeatureMismatchError
from convert.features.engine import KEY
from convert.io.artifacts import write_json
from convert.model.bundle import LeadScoringModel
from convert.model.explain import contributions, importance_table, model_score_fn, to_points
from convert.model.leakage import LeakageReport
from convert.model.train import TrainingSet, TrainResult, screen_source, train_on
from convert.model.training_set import StoredTrainingSet
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

    ts = result.training_set
    newer = data.labelled_after(_newest_learned(champion, result), ts.horizon_days, config) if ts.design == "time" else []
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
                               champion.spec_.event_types, champion.metadata)
        frame = ts.frame[KEY].merge(fs, on=KEY, how="left")
    return recipe_on_outer_folds(frame, champion, label, result, config, echo, as_of=ts.row_times())


def _newest_learned(champion: LeadScoringModel, result: TrainResult) -> pd.Timestamp:
    """The latest as-of time either deployed model learned from (time design): newer labelled
    as-of times judge both where neither learned."""
    ts = result.training_set
    cut_challenger = pd.Timestamp(result.split.deploy_span[1])
    record = champion.metadata
    cut_champion = (pd.Timestamp(record.deployed_fit.to) if record.deployed_fit else
                    pd.Timestamp(record.training_as_of or cut_challenger) - pd.Timedelta(days=ts.horizon_days))
    return max(cut_challenger, cut_champion)


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
        "deployed_fit": f"{fit.from_} to {fit.to} ({fit.rows} rows)" if (fit := result.model.metadata.deployed_fit) else "",
        "metrics_from": result.model.metadata.metrics_from or "",
    }
    with tempfile.TemporaryDirectory() as tmp:
        leakage_file = write_json(leakage.to_dict(), Path(tmp) / "leakage.json")
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
    data_path: str | Path | None,
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
    training_set: Path | None = None,
) -> TrainSummary:
    """Load (a CRM export, or a flat table with the *flat* options), screen for leakage,
    train, evaluate against the baselines and the champion, log and register; optionally
    write the bundle to *save* and the figures as JSON to *summary_path*.

    With *training_set* (the ``features`` stage's file), trains from it instead:
    :func:`train_from_set_step`."""
    if training_set is not None:
        data = None if data_path is None else Input(data_path, mapping, rejects, strict, flat)
        return train_from_set_step(training_set, config, as_of, tune_trials, model_name, data, echo,
                                   save=save, summary_path=summary_path)
    if data_path is None:
        raise ConfigError("train needs --data (an export, a database or a flat file) or --training-set "
                          "(the file `convert-leads features` writes)")
    data = Input(data_path, mapping, rejects, strict, flat)
    source = open_data(data, config, echo, "train")
    name = model_name or source.model_name(config)
    try:
        leakage, config = screen_source(source, config, data.mapping)
        _echo_screen(leakage, config, echo)
        result = _fit(source.training_set(config, as_of), leakage, config, tune_trials, echo)
        champion_metrics, comparison = _versus_champion(source, name, result, config, echo)
    finally:
        source.close()
    return _finish(result, name, leakage, champion_metrics, comparison, config, save, summary_path)


def train_from_set_step(
    path: Path, config: Config, as_of: pd.Timestamp | None = None, tune_trials: int | None = None,
    model_name: str | None = None, data: Input | None = None, echo: Echo = _quiet, *,
    save: Path | None = None, summary_path: Path | None = None,
) -> TrainSummary:
    """:func:`train_step` from a training set written by :func:`convert.steps.features.features_step`
    (a pipeline builds features once): the same model, logged and registered the same way.

    The set carries the leakage guard's report and the settings that built it; a *config*
    that would have built another set is refused (``ConfigError``). The source (*data*) is
    read only to compare with a champion when the set cannot: newer labelled as-of times, or
    a champion with other features."""
    from convert.model.training_set import read_training_set

    if as_of is not None:
        raise ConfigError("--as-of is the training set's (`convert-leads features --as-of`); drop it with --training-set")
    if data is not None and data.flat.given():
        raise ConfigError("--target, --positive, --id and --split are the training set's (`convert-leads features`); "
                          "drop them with --training-set")
    stored = read_training_set(path)
    config = stored.config_for(config)
    leakage = stored.leakage
    _echo_screen(leakage, config, echo)
    result = _fit(stored.training_set, leakage, config, tune_trials, echo)
    name = model_name or stored.model_name(config)
    champion_metrics, comparison = None, None
    if data is not None:
        source = open_data(data, config, echo, "train")
        try:
            source.exclude_attributes(dict(leakage.excluded), config)
            champion_metrics, comparison = _versus_champion(source, name, result, config, echo)
        finally:
            source.close()
    else:
        champion_metrics, comparison = _versus_champion_from_set(stored, name, result, config, echo)
    return _finish(result, name, leakage, champion_metrics, comparison, config, save, summary_path)


def _echo_screen(leakage: LeakageReport, config: Config, echo: Echo) -> None:
    for line in leakage.lines():
        echo(line)
    if config.allocation.owner_column in leakage.excluded:
        echo(f"not a feature: {config.allocation.owner_column!r} "
             f"({leakage.excluded[config.allocation.owner_column]})")


def _fit(ts: TrainingSet, leakage: LeakageReport, config: Config, tune_trials: int | None, echo: Echo) -> TrainResult:
    result = train_on(ts, config, tune_trials)
    result.leakage = leakage
    result.model.metadata.leakage = leakage.to_dict()
    if ts.grid is not None:
        echo(f"training snapshots: {ts.grid.describe()}")
    return result


def _champion(name: str) -> tuple[LeadScoringModel, str] | None:
    from convert.registry import store as registry

    return registry.load_model(f"models:/{name}@{registry.CHAMPION}") if registry.champion_exists(name) else None


def _versus_champion(
    source: LeadSource, name: str, result: TrainResult, config: Config, echo: Echo
) -> tuple[Figures | None, str | None]:
    """The champion's figures beside the challenger's (:func:`champion_comparison`), when
    there is a champion that can read this source."""
    found = _champion(name)
    if found is None or source.accepts(found[0].metadata) is not None:
        return None, None
    try:
        return champion_comparison(source, found[0], found[1], result, config, echo)
    except FeatureMismatchError:  # the champion reads columns this table lacks
        return None, None


def _versus_champion_from_set(
    stored: StoredTrainingSet, name: str, result: TrainResult, config: Config, echo: Echo
) -> tuple[Figures | None, str | None]:
    """:func:`_versus_champion` without the source: the champion's recipe on the challenger's
    outer folds, which the set holds when the champion reads its features and no newer
    labelled as-of time exists (else ``ConfigError``: the comparison needs ``--data``)."""
    found = _champion(name)
    if found is None or (found[0].metadata.mode == "flat") != (stored.kind == "flat"):
        return None, None
    champion, label = found
    ts = result.training_set
    newer = stored.labelled_after(_newest_learned(champion, result), ts.horizon_days, config) \
        if ts.design == "time" else []
    if newer or champion.spec_.names != ts.features or champion.features_config(config.features) != config.features:
        why = "newer labelled as-of times" if newer else "its features differ from the training set's"
        raise ConfigError(f"comparing with champion {label} needs the source ({why}): add --data to "
                          f"`convert-leads train --training-set {stored.path}`")
    return recipe_on_outer_folds(ts.frame, champion, label, result, config, echo, as_of=ts.row_times())


def _finish(
    result: TrainResult, name: str, leakage: LeakageReport, champion_metrics: Figures | None,
    comparison: str | None, config: Config, save: Path | None, summary_path: Path | None,
) -> TrainSummary:
    """Log and register a trained model (:func:`_log_training`); write the bundle and summary when asked."""
    ts = result.training_set
    holdout = ts.frame.loc[result.split.masks["holdout"]].reset_index(drop=True)
    params = {"model_name": name, **ts.params, "lightgbm": result.params, **leakage.params(),
              **({"comparison": comparison} if comparison else {})}
    summary = _log_training(result, name, params, holdout, champion_metrics, leakage, config)
    summary.lines.extend(leakage.lines())
    if save:
        result.model.save(save)
        summary.saved = save
    if summary_path:
        write_json(summary_record(summary), summary_path)
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
        "mode": meta.mode or "event",
        "flat": {k: v for k, v in (meta.flat.to_dict() if meta.flat else {}).items() if k != "mapping"},
        "rows": int(len(y)),
        "positive_rate": float(y.mean()),
        "holdout_rows": int(holdout.sum()),
        "holdout_positive_rate": float(y[holdout].mean()),
        "metrics": {c: {k: float(v) for k, v in r.evaluation.metrics[c].items()} for c in r.evaluation.metrics},
        "calibration": model.calibrator_.method,
        "slices": r.slices.to_dict("records"),
        "leakage": meta.leakage,
        "top_features": summary.importance.head(10)[["feature", "family", "mean_abs_points"]].to_dict("records"),
    }
