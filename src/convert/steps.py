"""One function per command: compose loading, the core, the registry and write-back.

Steps do the input and output (files, MLflow, databases) around the pure core, and
return small result objects the CLI prints. A notebook or a DVC pipeline can call them
just as the CLI does.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import ConvertError
from convert.model.bundle import LeadScoringModel
from convert.model.crossfit import Folds
from convert.model.explain import (
    LeadExplanation,
    contributions,
    explain_lead,
    importance_table,
    model_score_fn,
    plot_waterfall,
    to_points,
)
from convert.model.train import (
    Evaluation,
    TrainingSet,
    TrainResult,
    build_training_set,
    train,
)
from convert.schema import Labeled
from convert.sources.export import CRMData, load
from convert.sources.mapping import Mapping
from convert.sources.readers import write_frame

Echo = Callable[[str], None]


def _quiet(_: str) -> None:
    pass


def load_data(
    path: str | Path, config: Config, rejects: str | Path | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> CRMData:
    """Load an export (folder or database URL), write the rejects file and report the counts."""
    data = load(path, config, strict=strict, mapping=mapping)
    rejects_path = Path(rejects or config.data.rejects)
    write_frame(data.report.rejects, rejects_path)
    r = data.report
    echo(
        f"loaded {data.source.display}: {r.tables['leads'].rows_loaded:,} leads, "
        f"{r.tables['events'].rows_loaded:,} events; {r.quarantined:,} rows quarantined to "
        f"{rejects_path}, {r.warnings:,} warnings"
        + (" (validated tables from the cache; --no-cache reads the files again)" if data.from_cache else "")
    )
    _echo_mapping(data.mapped, echo)
    return data


def _echo_mapping(mapped: dict[str, Any], echo: Echo) -> None:
    for table, m in mapped.items():
        if m.renamed:
            echo(f"mapping: {table}: renamed " + ", ".join(f"{a!r} -> {b}" for a, b in m.renamed.items()))
        for column, reason in m.excluded.items():
            echo(f"mapping: {table}: excluded {column!r} ({reason})")
        if m.absent:
            echo(f"mapping: {table}: not in the data, so not renamed: " + ", ".join(map(repr, m.absent)))


def screen_attributes(data: CRMData, config: Config, mapping: Mapping | None = None) -> tuple[Any, Config]:
    """The leakage guard in event mode: the leads' and accounts' extra attributes against
    whether each lead converted. Stops (``LeakageError``) on an unsettled suspect; excluded
    columns leave the data and the configured features. Returns the report and the config."""
    from convert.model.leakage import screen

    frame, label = data.attributes()
    kinds = {e.column: e.kind for e in config.features.extra_attributes}
    from convert.config import OWNER_EXCLUDED

    owner = {config.allocation.owner_column: OWNER_EXCLUDED} if config.allocation.owner_column in frame else {}
    report = screen(frame, label, config.leakage, kinds=kinds, excluded=owner,
                    allowed=(mapping or Mapping()).allow, seed=config.seed)
    report.check()
    gone = set(report.excluded)
    data.drop_attributes(sorted(gone))
    extras = [e.model_dump() for e in config.features.extra_attributes
              if e.column not in gone and f"{e.table}.{e.column}" not in gone]
    return report, config.with_overrides(features__extra_attributes=extras)


def _leakage_artifact(report: Any, folder: str | Path) -> Path:
    path = Path(folder) / "leakage.json"
    path.write_text(json.dumps(report.to_dict(), indent=1))
    return path


# --- training ----------------------------------------------------------------------------------


def global_importance(model: LeadScoringModel, frame: pd.DataFrame, max_rows: int = 20_000, seed: int = 42) -> pd.DataFrame:
    """Mean |score points| per feature over (a sample of) *frame*, with family and description."""
    sample = frame.sample(n=min(max_rows, len(frame)), random_state=seed) if len(frame) > max_rows else frame
    phi = contributions(model, model.matrix(sample))
    pts = to_points(phi.sum(axis=1), phi[:, :-1], model.base_raw_, model_score_fn(model))
    return importance_table(model, pts.continuous, phi[:, :-1])


def plot_importance(table: pd.DataFrame, top: int = 20):  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t = table.head(top).iloc[::-1]
    fig, ax = plt.subplots(figsize=(8, 0.32 * len(t) + 1.2))
    colors = ["#1f77b4" if f == "fit" else "#ff7f0e" for f in t["family"]]
    ax.barh(t["feature"], t["mean_abs_points"], color=colors)
    ax.set_xlabel("mean |score points| (blue: fit, orange: engagement)")
    ax.set_title("Global importance")
    fig.tight_layout()
    return fig


@dataclass
class TrainSummary:
    result: TrainResult
    registered: Any
    importance: pd.DataFrame
    champion_metrics: dict[str, dict[str, float]] | None
    lines: list[str] = field(default_factory=list)


def champion_comparison(
    data: CRMData, champion: LeadScoringModel, label: str, result: TrainResult, config: Config, echo: Echo
) -> tuple[dict[str, dict[str, float]], str]:
    """The champion's figures beside a just-trained challenger's, and which comparison gave them.

    Labelled as-of times newer than both training cut-offs, scored by both deployed models,
    when the data holds any (the challenger's own figures are then recomputed there too, and
    returned as ``{"champion": ..., "challenger": ...}``); otherwise both recipes on the
    challenger's outer folds, the champion's recipe (parameters, rounds, blend weight,
    calibration method) refitted there.
    """
    from convert.features.engine import build_features
    from convert.features.labels import build_labels, grid_for
    from convert.model.metrics import evaluate
    from convert.model.train import default_as_of

    ts, folds = result.training_set, result.split
    horizon = ts.horizon_days
    cut_challenger = pd.Timestamp(folds.deploy_span[1])
    champ_fit = (champion.metadata.get("deployed_fit") or {}).get("to")
    cut_champion = (pd.Timestamp(champ_fit) if champ_fit else
                    pd.Timestamp(champion.metadata.get("training_as_of", cut_challenger)) - pd.Timedelta(days=horizon))
    newest = max(cut_challenger, cut_champion)
    grid = grid_for(config.labels.model_copy(update={"horizon_days": horizon}), data.earliest_created(),
                    default_as_of(data)).times
    newer = [t for t in grid if t > newest]
    if newer:
        labels = build_labels(data.con, newer, horizon)
        y = labels[Labeled.label].to_numpy()
        figures = {}
        for who, model in (("champion", champion), ("challenger", result.model)):
            fs = build_features(data.con, labels[[Labeled.lead_id, Labeled.as_of]],
                                model.features_config(config.features), model.spec_.event_types)
            rows = labels.merge(fs.frame, on=[Labeled.lead_id, Labeled.as_of], how="left")
            figures[who] = evaluate(y, model.predict_proba(rows)[:, 1])
        how = (f"newer as-of times ({len(newer)} from {newer[0]:%Y-%m-%d} to {newer[-1]:%Y-%m-%d}, "
               f"{len(y):,} leads) scored by both deployed models")
        echo(f"champion {label} vs challenger on {how}: log loss {figures['champion']['log_loss']:.4f} vs "
             f"{figures['challenger']['log_loss']:.4f}")
        return figures, how
    frame = ts.frame
    if champion.spec_.names != ts.features or champion.features_config(config.features) != config.features:
        fs = build_features(data.con, ts.frame[[Labeled.lead_id, Labeled.as_of]],
                            champion.features_config(config.features), champion.spec_.event_types)
        frame = ts.frame[[Labeled.lead_id, Labeled.as_of]].merge(fs.frame, on=[Labeled.lead_id, Labeled.as_of],
                                                                 how="left")
    return recipe_on_outer_folds(frame, champion, label, result, config, echo,
                                 as_of=pd.to_datetime(ts.frame[Labeled.as_of]).to_numpy())


def recipe_on_outer_folds(
    frame: pd.DataFrame, champion: LeadScoringModel, label: str, result: TrainResult, config: Config, echo: Echo,
    as_of: Any = None,
) -> tuple[dict[str, dict[str, float]], str]:
    """The champion's recipe refitted on the challenger's folds, both judged on its outer folds."""
    from convert.model.crossfit import Recipe, cross_fit
    from convert.model.metrics import evaluate

    y = result.training_set.frame[Labeled.label].to_numpy()
    fit = cross_fit(frame[champion.spec_.names], y, result.split, config, catalog=champion.catalog_,
                    event_types=champion.spec_.event_types, as_of=as_of, recipe=Recipe.of(champion))
    metrics = evaluate(y[fit.outer_rows], fit.outer_probs["model"])
    how = "the challenger's outer folds, the champion's recipe refitted there (no newer labelled as-of times)"
    echo(f"champion {label}'s recipe on {how}: log loss {metrics['log_loss']:.4f}, ROC AUC {metrics['roc_auc']:.4f}")
    return {"champion": metrics, "challenger": result.evaluation.metrics["model"].to_dict()}, how


def _log_training(
    result: TrainResult,
    name: str,
    params: dict[str, Any],
    holdout: pd.DataFrame,
    champion_metrics: dict[str, dict[str, float]] | None,
    leakage: Any,
    config: Config,
    tables: dict[str, pd.DataFrame] | None = None,
) -> TrainSummary:
    """Log a trained model to MLflow and register it: hold-out and baseline metrics (and the
    champion's on the same hold-out), the mode's *params* with the fit's own, evaluation tables
    and figures, global importance and the leakage screen."""
    import tempfile

    from convert.model.metrics import plot_lift, plot_reliability
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
        "deployed_fit": "{from} to {to} ({rows} rows)".format(**result.model.metadata.get("deployed_fit", {})),
        "metrics_from": result.model.metadata.get("metrics_from", ""),
    }
    with tempfile.TemporaryDirectory() as tmp:
        registered = registry.log_training(
            result.model, name, params, metrics,
            tables={"metrics": ev.metrics.reset_index(names="metric"), "reliability": ev.reliability,
                    "lift": ev.lift, "grades": ev.grades, "folds": result.slices,
                    **({"fold_metrics": ev.folds} if ev.folds is not None else {}),
                    "importance": importance, "calibration_cv": pd.DataFrame([result.calibration_cv]),
                    **(tables or {})},
            figures={"reliability": plot_reliability(ev.reliability), "lift": plot_lift(ev.lift),
                     "importance": plot_importance(importance)},
            input_example=holdout,
            extra_artifacts={"leakage": _leakage_artifact(leakage, tmp)},
        )
    return TrainSummary(result, registered, importance, champion_metrics)


def train_step(
    data_path: str | Path,
    config: Config,
    as_of: str | pd.Timestamp | None = None,
    tune_trials: int | None = None,
    model_name: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    mapping: Mapping | None = None,
) -> TrainSummary:
    """Load, screen for leakage, train, evaluate against the baselines and the champion, log
    and register."""
    from convert.registry import store as registry

    name = model_name or config.train.model_name
    data = load_data(data_path, config, rejects, strict, echo, mapping)
    try:
        leakage, config = screen_attributes(data, config, mapping)
        for line in leakage.lines():
            echo(line)
        if config.allocation.owner_column in leakage.excluded:
            echo(f"not a feature: {config.allocation.owner_column!r} "
                 f"({leakage.excluded[config.allocation.owner_column]})")
        result = train(data, config, as_of=as_of, tune_trials=tune_trials)
        result.model.metadata["leakage"] = leakage.to_dict()
        grid = result.training_set.grid
        if grid is not None:
            echo(f"training snapshots: {grid.describe()}")
        champion_metrics, comparison = None, None
        if registry.champion_exists(name):
            champion, label = registry.load_model(f"models:/{name}@{registry.CHAMPION}")
            champion_metrics, comparison = champion_comparison(data, champion, label, result, config, echo)
    finally:
        data.close()
    return _register(result, name, leakage, champion_metrics, comparison, config)


def _register(result: TrainResult, name: str, leakage: Any, champion_metrics: dict[str, dict[str, float]] | None,
              comparison: str | None, config: Config) -> TrainSummary:
    """Log an event-mode training run to MLflow and register it as the challenger."""
    grid = result.training_set.grid
    holdout = result.training_set.frame.loc[result.split.masks["holdout"]].reset_index(drop=True)
    params = {
        "model_name": name, "training_as_of": result.training_set.as_of.isoformat(),
        "horizon_days": config.labels.horizon_days,
        "frequency": grid.frequency if grid is not None else config.labels.frequency,
        "lightgbm": result.params, **leakage.params(),
        **({"comparison": comparison} if comparison else {}),
    }
    summary = _log_training(result, name, params, holdout, champion_metrics, leakage, config)
    summary.lines.extend(leakage.lines())
    return summary


def features_step(
    data_path: str | Path, config: Config, out: str | Path, as_of: pd.Timestamp | None = None,
    rejects: str | None = None, strict: bool | None = None, echo: Echo = _quiet, mapping: Mapping | None = None,
) -> TrainingSet:
    """Load, run the leakage guard and build the training set, written to *out* with what
    ``train --training-set`` needs to give the model training from the export gives."""
    from convert.model.train import default_as_of
    from convert.model.training_set import write_training_set

    data = load_data(data_path, config, rejects, strict, echo, mapping)
    try:
        leakage, screened = screen_attributes(data, config, mapping)
        for line in leakage.lines():
            echo(line)
        ts = build_training_set(data, screened, as_of)
        write_training_set(ts, out, leakage, config, screened, data.earliest_created(), default_as_of(data))
    finally:
        data.close()
    return ts


def train_from_set_step(
    path: str | Path, config: Config, tune_trials: int | None = None, model_name: str | None = None,
    echo: Echo = _quiet, data_path: str | Path | None = None, rejects: str | None = None,
    strict: bool | None = None, mapping: Mapping | None = None,
) -> TrainSummary:
    """:func:`train_step` from a training set written by :func:`features_step` (a pipeline
    builds features once): the same model. The export (*data_path*) is read only to compare
    with a champion whose features the set lacks or that newer labelled as-of times can judge."""
    from convert.features.labels import grid_for
    from convert.model.train import train_on
    from convert.model.training_set import read_training_set
    from convert.registry import store as registry

    name = model_name or config.train.model_name
    stored = read_training_set(path)
    config = stored.config_for(config)
    leakage = stored.leakage
    for line in leakage.lines():
        echo(line)
    if config.allocation.owner_column in leakage.excluded:
        echo(f"not a feature: {config.allocation.owner_column!r} "
             f"({leakage.excluded[config.allocation.owner_column]})")
    result = train_on(stored.training_set, config, tune_trials)
    result.model.metadata["leakage"] = leakage.to_dict()
    if result.training_set.grid is not None:
        echo(f"training snapshots: {result.training_set.grid.describe()}")
    champion_metrics, comparison = None, None
    if registry.champion_exists(name):
        champion, label = registry.load_model(f"models:/{name}@{registry.CHAMPION}")
        if data_path is not None:
            data = load_data(data_path, config, rejects, strict, echo, mapping)
            try:
                data.drop_attributes(sorted(leakage.excluded))
                champion_metrics, comparison = champion_comparison(data, champion, label, result, config, echo)
            finally:
                data.close()
        else:
            ts = result.training_set
            champ_fit = (champion.metadata.get("deployed_fit") or {}).get("to")
            newest = max(pd.Timestamp(result.split.deploy_span[1]), pd.Timestamp(champ_fit) if champ_fit else
                         pd.Timestamp(champion.metadata.get("training_as_of", ts.as_of))
                         - pd.Timedelta(days=ts.horizon_days))
            labels = config.labels.model_copy(update={"horizon_days": ts.horizon_days})
            newer = [t for t in grid_for(labels, stored.earliest_created, stored.data_as_of).times if t > newest]
            if newer or champion.spec_.names != ts.features \
                    or champion.features_config(config.features) != config.features:
                raise ConvertError(
                    f"comparing with champion {label} needs the export ("
                    + ("newer labelled as-of times" if newer else "its features differ from the training set's")
                    + f"): add --data to `convert-leads train --training-set {path}`")
            champion_metrics, comparison = recipe_on_outer_folds(
                ts.frame, champion, label, result, config, echo, as_of=pd.to_datetime(ts.frame[Labeled.as_of]).to_numpy())
    return _register(result, name, leakage, champion_metrics, comparison, config)


# --- flat tables ---------------------------------------------------------------------------


def validate_flat_step(
    data_path: str | Path, config: Config, mapping: Mapping | None = None, target: str | None = None,
    positive: str | None = None, id_column: str | None = None, rejects: str | None = None,
    strict: bool | None = None,
) -> Any:
    """Load a flat file (its outcome checked when named), write the rejects file, return the table."""
    from convert.sources import flat

    mapping = mapping or Mapping()
    table = flat.load_flat(data_path, config, mapping, target=target, positive=positive, id_column=id_column,
                           strict=strict, training=bool(target or mapping.flat.target))
    write_frame(table.report.rejects, Path(rejects or config.data.rejects))
    return table


def train_flat_step(
    data_path: str | Path,
    config: Config,
    mapping: Mapping | None = None,
    target: str | None = None,
    positive: str | None = None,
    id_column: str | None = None,
    split: str | None = None,
    model_name: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    tune_trials: int | None = None,
) -> TrainSummary:
    """Train on a flat table (``--data FILE --target COLUMN``): load, screen for leakage, fit,
    evaluate beside a logistic regression (and the champion), log and register under the flat
    model name."""
    from convert.registry import store as registry
    from convert.sources import flat

    name = model_name or config.flat.model_name
    mapping = mapping or Mapping()
    table = flat.load_flat(data_path, config, mapping, target=target, positive=positive,
                           id_column=id_column, strict=strict)
    rejects_path = Path(rejects or config.data.rejects)
    write_frame(table.report.rejects, rejects_path)
    r = table.report
    echo(f"loaded {data_path}: {r.tables['leads'].rows_loaded:,} leads ({int(table.label.sum()):,} "  # type: ignore[union-attr]
         f"converted); {r.quarantined:,} rows quarantined to {rejects_path}, {r.warnings:,} warnings")
    for warning in r.tables["leads"].warnings:
        echo(f"warning: {warning}")
    for column, why in table.dropped.items():
        echo(f"not a feature: {column!r} ({why})")
    result = flat.train_flat(table, config, mapping, split, tune_trials)  # type: ignore[arg-type]
    for line in result.leakage.lines():
        echo(line)
    holdout = result.training_set.frame.loc[result.split.masks["holdout"]].reset_index(drop=True)
    champion_metrics, comparison = None, None
    if registry.champion_exists(name):
        champion, label = registry.load_model(f"models:/{name}@{registry.CHAMPION}")
        columns = (champion.metadata.get("flat") or {}).get("columns", {})
        if flat.is_flat_model(champion) and all(c in table.frame.columns for c in columns):
            rows = flat.feature_frame(table, columns, result.training_set.as_of)
            champion_metrics, comparison = recipe_on_outer_folds(rows, champion, label, result, config, echo)
    meta = result.model.metadata["flat"]
    params = {
        "model_name": name, "mode": "flat", "file": meta["file"], "target": meta["target"],
        "positive": ",".join(meta["positive"]), "id": meta["id"], "split": meta["split"],
        "mapping": mapping.label(), "lightgbm": result.params, **result.leakage.params(),
        **({"comparison": comparison} if comparison else {}),
    }
    return _log_training(result, name, params, holdout, champion_metrics, result.leakage, config,
                         tables={"leakage": result.leakage.to_frame()})


def score_flat_step(
    data_path: str | Path,
    config: Config,
    out: str | None,
    model_uri: str | None = None,
    table: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    mapping: Mapping | None = None,
    id_column: str | None = None,
    as_of: str | pd.Timestamp | None = None,
    *,
    allow_shrink: bool = False,
    allow_older: bool = False,
    replace: bool = False,
) -> tuple[Any, pd.DataFrame]:
    """Score every row of a flat file with a flat model and write the results.

    The as-of time written with each score is *as_of*, else today (midnight UTC), so a
    re-run on the same day replaces its own history rows. *allow_shrink*, *allow_older*
    and *replace* lift the write-back guards (:class:`convert.io.writeback.WriteGuards`).
    """
    from convert.exceptions import ModelNotFoundError
    from convert.features.labels import parse_as_of
    from convert.io.writeback import WriteGuards, write_scores
    from convert.registry import store as registry
    from convert.scoring.score import score_frame
    from convert.sources import flat

    target = resolve_target(out)
    uri = model_uri or f"models:/{config.flat.model_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    if not flat.is_flat_model(model):
        raise ModelNotFoundError(
            f"{label} was trained on a CRM export (event mode); a flat file is scored with a flat "
            f"model (trained with --target), by default models:/{config.flat.model_name}@champion"
        )
    t = parse_as_of(as_of) or pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    rows, loaded = flat.scoring_frame(data_path, model, config, t, mapping, id_column, strict)
    rejects_path = Path(rejects or config.data.rejects)
    write_frame(loaded.report.rejects, rejects_path)
    r = loaded.report
    echo(f"loaded {data_path}: {len(rows):,} leads; {r.quarantined:,} rows quarantined to "
         f"{rejects_path}, {r.warnings:,} warnings")
    for warning in r.tables["leads"].warnings:
        echo(f"warning: {warning}")
    scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    size = config.scoring.chunk_size
    chunks = [score_frame(model, rows.iloc[i:i + size], config.scoring, label, scored_at)
              for i in range(0, len(rows), size)]
    scores = pd.concat(chunks, ignore_index=True) if chunks else rows.iloc[:0]
    guards = WriteGuards.from_config(
        config.writeback, allow_shrink=allow_shrink, allow_older=allow_older, replace=replace
    )
    summary = write_scores(scores, target, table or config.scoring.table, guards=guards)
    return summary, scores


def evaluate_flat_step(
    data_path: str | Path, config: Config, model_uri: str, out: str | Path,
    rejects: str | None = None, echo: Echo = _quiet, mapping: Mapping | None = None,
) -> dict[str, Any]:
    """Re-evaluate a flat model on its own hold-out (the same seeded split of the same file)."""
    from convert.model.metrics import plot_lift, plot_reliability
    from convert.registry import store as registry
    from convert.sources import flat

    model, label = registry.load_model(model_uri)
    echo(f"model {label}")
    meta = model.metadata.get("flat") or {}
    fold_settings = meta.get("folds") or {}
    cfg = config.with_overrides(seed=model.metadata.get("seed", config.seed),
                                train__inner_folds=fold_settings.get("inner"),
                                train__outer_folds=fold_settings.get("outer"),
                                train__fold_share=fold_settings.get("fold_share"),
                                train__min_positives=fold_settings.get("min_positives"))
    mapping = mapping or flat.model_mapping(model)
    table = flat.load_flat(data_path, cfg, mapping, target=meta.get("target"),
                           positive=meta.get("positive"), negative=meta.get("negative", ()),
                           id_column=meta.get("id"), kinds=dict(meta.get("kinds", {})))
    write_frame(table.report.rejects, Path(rejects or config.data.rejects))
    assert table.label is not None
    frame = flat.feature_frame(table, dict(meta.get("columns", {})), pd.Timestamp(model.metadata["trained_at"]))
    frame.insert(2, Labeled.label, table.label)
    split = flat.split_rows(table.label, meta.get("split", "random"), cfg)
    stored = model.outer_predictions_
    held = frame.loc[split.masks["holdout"], [Labeled.lead_id, Labeled.label]].astype({Labeled.lead_id: str})
    if stored is not None and len(stored) == len(held) and sorted(zip(stored[Labeled.lead_id].astype(str), stored["label"], strict=True)) == sorted(zip(held[Labeled.lead_id], held[Labeled.label], strict=True)):
        from convert.model.train import evaluation_from_predictions

        ev = evaluation_from_predictions(stored, model)
        echo("outer folds of training: the stored out-of-fold predictions")
    else:
        from convert.model.baselines import LogisticBaseline
        from convert.model.crossfit import Recipe, cross_fit
        from convert.model.train import outer_evaluation

        fit = cross_fit(frame[model.spec_.names], table.label, split, cfg, catalog=model.catalog_,
                        baselines=lambda X, yy: {LogisticBaseline.name: LogisticBaseline(seed=cfg.seed).fit(X, yy)},
                        recipe=Recipe.of(model))
        ev = outer_evaluation(model, frame, table.label, fit, [Labeled.lead_id])
        echo("this file's outer folds, the model's recipe refitted on its folds")
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {c: {k: float(v) for k, v in ev.metrics[c].items()} for c in ev.metrics.columns}
    (out / "metrics.json").write_text(json.dumps({"model": label, **metrics}, indent=1))
    ev.reliability.to_csv(out / "reliability.csv", index=False)
    ev.lift.to_csv(out / "lift.csv", index=False)
    ev.grades.to_csv(out / "grades.csv", index=False)
    plot_reliability(ev.reliability).savefig(out / "reliability.png", dpi=110)
    plot_lift(ev.lift).savefig(out / "lift.png", dpi=110)
    echo(ev.table())
    return metrics


def _own_holdout(
    data: CRMData, model: LeadScoringModel, cfg: Config, reuse_baselines: bool = False
) -> tuple[TrainingSet, Folds, Evaluation]:
    """A model's training set rebuilt at its training as-of, its folds and its outer-fold evaluation.

    The deployed model learned from every labelled row, so it is never judged on them again:
    the outer folds' out-of-fold predictions stored with the model are used when this data
    yields the same outer rows and labels; otherwise the model's recipe (parameters, rounds,
    blend weight, calibration method) is refitted on this data's folds and judged on its outer
    folds, beside the baselines. (*reuse_baselines* is kept for callers; stored predictions
    carry the baselines' figures.)
    """
    from convert.model.crossfit import Recipe, cross_fit, time_folds
    from convert.model.train import evaluation_from_predictions, outer_evaluation

    del reuse_baselines
    ts = build_training_set(data, cfg, model.metadata.get("training_as_of"))
    y = ts.frame[Labeled.label].to_numpy()
    folds = time_folds(ts.frame[Labeled.as_of], y, ts.horizon_days, cfg)
    stored = model.outer_predictions_
    if stored is not None and _same_rows(stored, ts.frame.loc[folds.masks["holdout"]]):
        ev = evaluation_from_predictions(stored, model)
        ev.metrics.attrs["baselines_recorded"] = True
        return ts, folds, ev
    from convert.model.baselines import fit_baselines

    frame = ts.frame
    fit = cross_fit(frame[model.spec_.names], y, folds, cfg, catalog=model.catalog_,
                    event_types=model.spec_.event_types,
                    baselines=lambda X, yy: fit_baselines(X, yy, cfg.baselines, cfg.seed),
                    as_of=pd.to_datetime(frame[Labeled.as_of]).to_numpy(), recipe=Recipe.of(model))
    return ts, folds, outer_evaluation(model, frame, y, fit, [Labeled.lead_id, Labeled.as_of])


def _newer_evaluation(data: CRMData, model: LeadScoringModel, cfg: Config, echo: Echo) -> Evaluation | None:
    """The deployed model on labelled as-of times newer than its training cut-off, or ``None``."""
    from convert.features.engine import KEY, build_features
    from convert.features.labels import build_labels, grid_for
    from convert.model.baselines import fit_baselines
    from convert.model.bundle import score_from_probability
    from convert.model.metrics import evaluate, grade_table, lift_table, reliability_table
    from convert.model.train import default_as_of

    fit_to = (model.metadata.get("deployed_fit") or {}).get("to")
    if not fit_to:
        return None
    horizon = model.horizon_days
    grid = grid_for(cfg.labels.model_copy(update={"horizon_days": horizon}), data.earliest_created(),
                    default_as_of(data)).times
    newer = [t for t in grid if t > pd.Timestamp(fit_to)]
    if not newer:
        return None
    fcfg = model.features_config(cfg.features)
    labels = build_labels(data.con, newer, horizon)
    rows = labels.merge(build_features(data.con, labels[KEY], fcfg, model.spec_.event_types).frame, on=KEY, how="left")
    y = rows[Labeled.label].to_numpy()
    p = model.predict_proba(rows)[:, 1]
    probs = {"model": p}
    ts = build_training_set(data, cfg, model.metadata.get("training_as_of"))
    train_rows = ts.frame.merge(build_features(data.con, ts.frame[KEY], fcfg, model.spec_.event_types).frame,
                                on=KEY, how="left", suffixes=("_x", "")) if fcfg != cfg.features else ts.frame
    names = model.spec_.names
    for name, b in fit_baselines(train_rows[names], train_rows[Labeled.label].to_numpy(), cfg.baselines, cfg.seed).items():
        probs[name] = np.asarray(b.predict_proba(rows[names]), dtype="float64")
    scores = score_from_probability(p)
    grades = model.grades(scores)
    echo(f"evaluated on {len(newer)} labelled as-of times newer than its training cut-off {fit_to} "
         f"({newer[0]:%Y-%m-%d} to {newer[-1]:%Y-%m-%d}, {len(y):,} leads)")
    return Evaluation(
        metrics=pd.DataFrame({k: evaluate(y, v) for k, v in probs.items()}),
        reliability=reliability_table(y, p), lift=lift_table(y, p), grades=grade_table(y, grades),
        predictions=rows[KEY].assign(label=y, probability=p, score=scores, grade=grades).reset_index(drop=True),
    )


def _same_rows(stored: pd.DataFrame, rows: pd.DataFrame) -> bool:
    """Whether stored predictions cover exactly *rows* (lead, as-of and label)."""
    if len(stored) != len(rows) or not {Labeled.lead_id, Labeled.as_of, "label"} <= set(stored.columns):
        return False
    a = stored[[Labeled.lead_id, Labeled.as_of, "label"]].astype(str).sort_values([Labeled.lead_id, Labeled.as_of])
    b = rows[[Labeled.lead_id, Labeled.as_of, Labeled.label]].rename(columns={Labeled.label: "label"})
    b = b.assign(**{Labeled.as_of: pd.to_datetime(b[Labeled.as_of])})
    a = a.assign(**{Labeled.as_of: pd.to_datetime(a[Labeled.as_of])}).astype({"label": "int64"})
    b = b.astype({Labeled.lead_id: str, "label": "int64"}).sort_values([Labeled.lead_id, Labeled.as_of])
    return bool((a.to_numpy() == b.to_numpy()).all())


def _same_figures(now: dict[str, float], recorded: dict[str, Any]) -> bool:
    import math

    if not recorded or set(now) - set(recorded):
        return False
    for key, value in now.items():
        old = recorded[key]
        if old is None or (isinstance(old, float) and math.isnan(old)):
            if not math.isnan(value):
                return False
        elif not math.isclose(value, float(old), rel_tol=1e-9, abs_tol=1e-12):
            return False
    return True


def evaluate_step(
    data_path: str | Path, config: Config, model_uri: str, out: str | Path, rejects: str | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> dict[str, Any]:
    """Evaluate a model where it learned nothing and write metrics and plots (DVC ``evaluate``).

    On labelled as-of times newer than its training cut-off when the data holds any (the
    deployed model scored there, the baselines fitted on the rows it learned from); otherwise
    on its outer folds (see :func:`_own_holdout`). Says which.
    """
    from convert.model.metrics import plot_lift, plot_reliability
    from convert.registry import store as registry

    model, label = registry.load_model(model_uri)
    echo(f"model {label}")
    cfg = config.with_overrides(labels__horizon_days=model.horizon_days)
    data = load_data(data_path, cfg, rejects, echo=echo, mapping=mapping)
    try:
        ev = _newer_evaluation(data, model, cfg, echo)
        if ev is None:
            _, _, ev = _own_holdout(data, model, cfg)
            echo("evaluated on the outer folds of its training design (no labelled as-of time is newer "
                 "than its training cut-off)")
    finally:
        data.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    metrics = {c: {k: float(v) for k, v in ev.metrics[c].items()} for c in ev.metrics.columns}
    (out / "metrics.json").write_text(json.dumps({"model": label, **metrics}, indent=1))
    ev.reliability.to_csv(out / "reliability.csv", index=False)
    ev.lift.to_csv(out / "lift.csv", index=False)
    ev.grades.to_csv(out / "grades.csv", index=False)
    plot_reliability(ev.reliability).savefig(out / "reliability.png", dpi=110)
    plot_lift(ev.lift).savefig(out / "lift.png", dpi=110)
    echo(ev.table())
    return metrics


# --- scoring -----------------------------------------------------------------------------------


OUT_ENV = "CONVERT_OUT_URL"


def resolve_target(out: str | None) -> str:
    """The write-back target: ``env:NAME`` reads it from environment variable NAME, and no
    target at all reads ``CONVERT_OUT_URL``, so a database password need not be on the command
    line (or in shell history and process lists)."""
    import os

    from convert.exceptions import ConfigError

    name = out[4:] if out and out.startswith("env:") else (None if out else OUT_ENV)
    if name is None:
        return str(out)
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"no write-back target: environment variable {name} is not set. Pass --out FILE_OR_URL, "
            f"--out env:VARIABLE, or set {OUT_ENV}"
        )
    return value


def score_step(
    data_path: str | Path,
    config: Config,
    as_of: str | pd.Timestamp,
    out: str | None,
    model_uri: str | None = None,
    table: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    progress: bool = True,
    engine: str = "duckdb",
    mapping: Mapping | None = None,
    *,
    allow_shrink: bool = False,
    allow_older: bool = False,
    replace: bool = False,
) -> tuple[Any, pd.DataFrame]:
    """Score the population at *as_of* with a registered model and write the results.

    With ``engine="spark"``, *data_path* is a folder (any path Spark reads) of typed contract
    tables in Parquet (``convert-leads export``); features and scores are computed by Spark
    and collected for the same write-back. *allow_shrink*, *allow_older* and *replace* lift
    the write-back guards (:class:`convert.io.writeback.WriteGuards`).
    """
    from convert.io.writeback import WriteGuards, write_scores
    from convert.registry import store as registry
    from convert.scoring.score import iter_scores

    guards = WriteGuards.from_config(
        config.writeback, allow_shrink=allow_shrink, allow_older=allow_older, replace=replace
    )
    target = resolve_target(out)
    uri = model_uri or f"models:/{config.train.model_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    if engine == "spark":
        scores = _score_with_spark(str(data_path), model, label, as_of, config)
        if scores.empty:
            from convert.exceptions import InsufficientDataError

            raise InsufficientDataError(
                f"no lead is open at {as_of} in {data_path}: choose an --as-of inside the export's "
                "history; nothing was written"
            )
        summary = write_scores(scores, target, table or config.scoring.table, guards=guards)
        return summary, scores
    data = load_data(data_path, config, rejects, strict, echo, mapping)
    try:
        chunks = list(iter_scores(data, model, as_of, config, label, progress=progress))
        if not chunks:
            raise _empty_population(data, as_of, data_path)
    finally:
        data.close()
    scores = pd.concat(chunks, ignore_index=True)
    summary = write_scores(scores, target, table or config.scoring.table, guards=guards)
    return summary, scores


def _empty_population(data: CRMData, as_of: str | pd.Timestamp, data_path: str | Path) -> Exception:
    """The error for an as-of time at which no lead is open (before the data, or all closed)."""
    from convert.exceptions import InsufficientDataError
    from convert.features.labels import parse_as_of

    t = parse_as_of(as_of)
    first = data.earliest_created()
    span = (f"; its first lead was created on {first:%Y-%m-%d}, its latest timestamp is "
            f"{data.latest_timestamp():%Y-%m-%d}" if not pd.isna(first) else "; it holds no valid lead")
    return InsufficientDataError(
        f"no lead is open at {t} in {data.source.display if data.source.url else data_path} (none created "
        f"before it, or all converted or disqualified by then){span}. Choose an --as-of inside the "
        "export's history; nothing was written"
    )


def _score_with_spark(path: str, model: LeadScoringModel, label: str, as_of: str | pd.Timestamp,
                      config: Config) -> pd.DataFrame:
    from convert.features.labels import parse_as_of
    from convert.features.spark import (
        features_spark,
        load_tables,
        population_spark,
        score_spark,
        spark_session,
    )

    t = parse_as_of(as_of)
    spark = spark_session(master=None)
    load_tables(spark, path)
    features = features_spark(
        spark, population_spark(spark, [t]), model.features_config(config.features), model.spec_.event_types
    )
    return score_spark(spark, features, model, config.scoring, label).toPandas()


def export_step(data_path: str | Path, config: Config, out: str | Path, rejects: str | None = None,
                strict: bool | None = None, echo: Echo = _quiet, mapping: Mapping | None = None) -> Path:
    """Validate an export and write its typed contract tables as Parquet (for Spark)."""
    from convert.features.spark import export_typed

    data = load_data(data_path, config, rejects, strict, echo, mapping)
    try:
        return export_typed(data, out)
    finally:
        data.close()


def explain_step(
    data_path: str | Path, config: Config, as_of: str | pd.Timestamp, lead_id: str, model_uri: str | None = None,
    plot: str | Path | None = None, rejects: str | None = None, echo: Echo = _quiet,
    mapping: Mapping | None = None,
) -> LeadExplanation:
    """Explain one lead's score at *as_of* and write a waterfall plot."""
    from convert.exceptions import ContractError
    from convert.registry import store as registry
    from convert.scoring.score import feature_rows

    uri = model_uri or f"models:/{config.train.model_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    data = load_data(data_path, config, rejects, echo=echo, mapping=mapping)
    try:
        rows = feature_rows(data, model, as_of, config, [lead_id])
    finally:
        data.close()
    if rows.empty:
        raise ContractError(
            f"lead {lead_id!r} is not in the population at {as_of} (unknown, not yet created, "
            "converted or disqualified before then)",
            column="lead_id",
        )
    explanation = explain_lead(model, rows)
    if plot:
        fig = plot_waterfall(explanation)
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
    return explanation


def explain_flat_step(
    data_path: str | Path, config: Config, lead_id: str, model_uri: str | None = None,
    plot: str | Path | None = None, echo: Echo = _quiet, mapping: Mapping | None = None,
    id_column: str | None = None,
) -> LeadExplanation:
    """Explain one row of a flat file (by its id) and write a waterfall plot."""
    from convert.exceptions import ContractError
    from convert.registry import store as registry
    from convert.sources import flat

    uri = model_uri or f"models:/{config.flat.model_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    today = pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()
    rows, _ = flat.scoring_frame(data_path, model, config, today, mapping, id_column)
    row = rows[rows[Labeled.lead_id] == str(lead_id)]
    if row.empty:
        raise ContractError(f"no row has the id {lead_id!r}", file=Path(data_path).name,
                            column=(model.metadata.get("flat") or {}).get("id") or "(row number)")
    explanation = explain_lead(model, row.reset_index(drop=True))
    if plot:
        fig = plot_waterfall(explanation)
        Path(plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(plot, dpi=110)
    return explanation


def summary_record(summary: TrainSummary) -> dict[str, Any]:
    """A training run as JSON-ready figures: hold-out metrics beside the baselines, slices,
    the leakage screen and the registered version (``train --summary``)."""
    r = summary.result
    model = r.model
    meta = model.metadata
    holdout = r.split.masks["holdout"]
    y = r.training_set.frame[Labeled.label].to_numpy()
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


def top_leads(scores: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The *n* best-scored leads with their reasons (ties: lead_id)."""
    return scores.sort_values(["score", "probability", "lead_id"], ascending=[False, False, True]).head(n)


# --- report and backtest -----------------------------------------------------------------------


@dataclass
class ReportSummary:
    path: Path
    bytes: int
    seconds: float
    report: Any
    logged_to: str | None


def report_step(
    data_path: str | Path, config: Config, as_of: str | pd.Timestamp, out: str | Path, model_uri: str | None = None,
    backtest: str | Path | None = None, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, log_to_mlflow: bool = True, mapping: Mapping | None = None,
) -> ReportSummary:
    """Write the analyst report (one self-contained HTML file) and log it to the model's MLflow run.

    *backtest* is a folder written by :func:`backtest_step` (or its ``backtest.csv``) to
    include as a section.
    """
    import time

    from convert.analysis.report import ReportInputs, build_report
    from convert.features.labels import parse_as_of
    from convert.registry import store as registry
    from convert.scoring.score import feature_rows

    clock = time.perf_counter()
    uri = model_uri or f"models:/{config.train.model_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    t = parse_as_of(as_of)
    assert t is not None
    bt = _read_backtest(backtest) if backtest else None
    cfg = config.with_overrides(labels__horizon_days=model.horizon_days)
    data = load_data(data_path, cfg, rejects, strict, echo, mapping)
    try:
        current = feature_rows(data, model, t, cfg)
        if current.empty:
            from convert.exceptions import InsufficientDataError

            raise InsufficientDataError(
                f"no lead is open at {t:%Y-%m-%d} in {data_path} (none created before it, or all converted "
                "or disqualified): choose an --as-of inside the export's history"
            )
        ts, split, ev = _own_holdout(data, model, cfg, reuse_baselines=True)
        leads = data.frame("leads")
    finally:
        data.close()
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(ReportInputs(model, label, t, ts, split, ev, current, leads, bt, stamp), cfg)
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(report.html(), encoding="utf-8")
    logged = None
    if log_to_mlflow and not Path(uri).is_dir():
        reg = registry.resolve(uri)
        registry.log_report(reg.run_id, path, {"drift": report.drift, "segments": _segments_frame(report.segments)},
                            report.metrics(), t)
        logged = reg.run_id
    return ReportSummary(path, path.stat().st_size, time.perf_counter() - clock, report, logged)


def _segments_frame(segments: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(segment=name) for name, t in segments.items()], ignore_index=True) if segments else pd.DataFrame()


def _read_backtest(path: str | Path) -> Any:
    from convert.analysis.backtest import BacktestResult, summarize
    from convert.exceptions import ConfigError

    path = Path(path)
    csv = path / "backtest.csv" if path.is_dir() else path
    if not csv.exists():
        raise ConfigError(f"no backtest results at {csv}: run `convert-leads backtest --out {path}` first")
    table = pd.read_csv(csv, parse_dates=["origin", "trained_at"])
    return BacktestResult(table, summarize(table), pd.DataFrame())


def backtest_step(
    data_path: str | Path, config: Config, start: str | pd.Timestamp, end: str | pd.Timestamp, every: str | None, retrain_every: str | None,
    out: str | Path, rejects: str | None = None, strict: bool | None = None, echo: Echo = _quiet,
    mapping: Mapping | None = None,
) -> Any:
    """Rolling-origin backtest; writes backtest.csv, summary.csv, trainings.csv and backtest.png to *out*."""
    from convert.analysis.backtest import backtest, plot_backtest

    data = load_data(data_path, config, rejects, strict, echo, mapping)
    try:
        result = backtest(data, config, start, end, every, retrain_every, echo)
    finally:
        data.close()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    result.table.to_csv(out / "backtest.csv", index=False)
    result.summary.to_csv(out / "summary.csv", index=False)
    result.trainings.to_csv(out / "trainings.csv", index=False)
    plot_backtest(result.table).savefig(out / "backtest.png", dpi=100)
    return result


# --- allocation --------------------------------------------------------------------------------


@dataclass
class AllocateSummary:
    """What :func:`allocate_step` did: the allocation, the rep effects, the write and figures."""

    allocation: Any
    effects: Any
    written: Any
    history_leads: int
    as_of: pd.Timestamp
    model_version: str
    truth: dict[str, float] | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)


def _read_any(source: str, table: str, what: str) -> pd.DataFrame:
    """A .csv/.parquet file (every column as text for CSV) or a database table, for *what*."""
    from convert.exceptions import ConfigError
    from convert.io.writeback import read_table

    location = resolve_target(source) if source.startswith("env:") else source
    path = Path(location)
    if "://" not in location:
        if not path.exists():
            raise ConfigError(f"{what} file {path} does not exist")
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        raise ConfigError(f"{what} must be a .csv or .parquet file or a database URL, not {path}")
    return read_table(location, table)


_SCORE_COLUMNS = ("lead_id", "as_of", "probability", "score", "action", "model_version")


def _lead_attributes(data: CRMData, owner: str, extra: list[str], cuts: Any) -> pd.DataFrame:
    """Per lead: attributes territories and segments use, the owner, the outcome's dates."""
    from convert.scoring.allocate import employee_band
    from convert.sources.validation import quote

    present = [r[0] for r in data.con.execute("DESCRIBE leads").fetchall()]
    account_cols = [r[0] for r in data.con.execute("DESCRIBE accounts").fetchall()]
    cols = ["l.lead_id", "l.lead_source", "coalesce(l.country, a.country) AS country", "a.industry",
            "a.employees", "l.created_at", "l.converted_at", "l.disqualified_at"]
    if owner in present:
        cols.append(f"l.{quote(owner)} AS __owner")
    for name in extra:
        if name in present and name not in ("lead_source", "country"):
            cols.append(f"l.{quote(name)} AS {quote(name)}")
        elif name in account_cols and name not in ("industry", "country", "employees"):
            cols.append(f"a.{quote(name)} AS {quote(name)}")
    frame = data.con.execute(
        f"SELECT {', '.join(cols)} FROM leads l LEFT JOIN accounts a ON l.account_id = a.account_id"
    ).df()
    frame["employee_band"] = employee_band(frame["employees"], cuts)
    if "__owner" in frame:
        frame["__owner"] = frame["__owner"].astype("object").where(frame["__owner"].notna(), None)
    return frame


def _effect_history(data: CRMData, attrs: pd.DataFrame, model: Any, t: pd.Timestamp, config: Config,
                    segment_by: tuple[str, ...]) -> pd.DataFrame:
    """Owned leads whose outcome is known at *t*: each at its first snapshot after creation
    (``allocation.history_frequency``), the model's prediction there and whether it converted
    within the horizon."""
    from convert.features.engine import build_features
    from convert.features.labels import _FREQUENCIES
    from convert.scoring.allocate import segment_labels

    horizon = pd.Timedelta(days=int(model.horizon_days))
    owned = attrs[attrs["__owner"].notna()].copy()
    if owned.empty:
        return pd.DataFrame()
    freq = _FREQUENCIES[config.allocation.history_frequency]
    created = pd.to_datetime(owned["created_at"])
    # the first snapshot time at least a day after creation (the day a lead is routed)
    step = pd.tseries.frequencies.to_offset(freq)
    snap = (created.dt.floor("D") + pd.Timedelta(days=1)).map(step.rollforward)
    owned["as_of"] = snap
    conv = pd.to_datetime(owned["converted_at"])
    dq = pd.to_datetime(owned["disqualified_at"])
    known = (snap + horizon <= t)
    open_then = (conv.isna() | (conv >= snap)) & (dq.isna() | (dq >= snap))
    owned = owned[known & open_then]
    if owned.empty:
        return pd.DataFrame()
    fs = build_features(data.con, owned[["lead_id", "as_of"]], model.features_config(config.features),
                        model.spec_.event_types)
    frame = fs.frame.merge(owned[["lead_id", "as_of"]], on=["lead_id", "as_of"])
    predicted = model.predict_proba(frame)[:, 1]
    out = owned.set_index(["lead_id", "as_of"]).loc[list(zip(frame["lead_id"], frame["as_of"], strict=True))]
    conv_at = pd.to_datetime(out["converted_at"])
    snap_at = out.index.get_level_values("as_of")
    converted = (conv_at.notna() & (conv_at >= snap_at) & (conv_at < snap_at + horizon)).to_numpy()
    return pd.DataFrame({
        "rep_id": out["__owner"].astype(str).to_numpy(),
        "segment": segment_labels(out.reset_index(drop=True), segment_by).to_numpy(),
        "predicted": predicted,
        "converted": converted.astype("int64"),
        **{c: out[c].to_numpy() for c in segment_by},
    })


def allocate_step(
    data_path: str | Path,
    config: Config,
    scores: str,
    reps: str,
    out: str | None,
    table: str | None = None,
    scores_table: str | None = None,
    reps_table: str | None = None,
    min_score: int | None = None,
    reassign: bool = False,
    balance: bool = False,
    model_uri: str | None = None,
    compare_effects: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    mapping: Mapping | None = None,
    allow_older: bool = False,
    replace: bool = False,
) -> AllocateSummary:
    """Allocate the scored leads to reps and write the assignments (``convert-leads allocate``).

    Reads the scores ``score`` wrote, the reps and the export (lead attributes and owners);
    learns rep effects from owned leads with known outcomes (the model that wrote the scores
    predicts them at their first snapshot); allocates; writes one row per scored lead with
    the write-back of scores (atomic switch, lock, ``{table}_history``) and its guards: an
    as-of older than the table's newest is refused unless *allow_older*, another model's
    assignments are replaced only with *replace*; the shrink guard does not apply
    (assignments churn every day).
    """
    from convert.exceptions import ConfigError, ContractError, WritebackError
    from convert.io.writeback import WriteGuards, read_table, write_scores
    from convert.registry import store as registry
    from convert.scoring.allocate import (
        AssignmentOutput,
        Lead,
        RepEffects,
        allocate,
        estimate_effects,
        expected_under,
        parse_reps,
    )
    from convert.scoring.score import ROUTE

    cfg = config.allocation
    guards = WriteGuards.from_config(config.writeback, allow_older=allow_older, replace=replace)
    table = table or cfg.table
    if not str(data_path).startswith("env:") and "://" not in str(data_path) and Path(data_path).is_file():
        raise ConfigError(
            f"allocate reads the leads' attributes and owners from a CRM export (a folder) or a "
            f"database URL; {data_path} is one file, and flat tables are not supported by allocate yet"
        )
    target = resolve_target(out)
    s = _read_any(scores, scores_table or cfg.scores_table, "scores")
    missing = [c for c in _SCORE_COLUMNS if c not in s.columns]
    if missing:
        raise ContractError(f"the scores lack column(s) {', '.join(missing)}: pass what `convert-leads score` wrote",
                            file=scores)
    if s["lead_id"].duplicated().any():
        raise ContractError("the scores repeat lead_id: pass the current scores table, not its history",
                            file=scores, column="lead_id")
    s["probability"] = pd.to_numeric(s["probability"])
    s["score"] = pd.to_numeric(s["score"]).astype("int64")
    as_of = pd.Timestamp(pd.to_datetime(s["as_of"]).max())
    model_version = str(s["model_version"].iloc[0]) if len(s) else ""
    rep_frame = _read_any(reps, reps_table or cfg.reps_table, "reps")

    data = load_data(data_path, config, rejects, strict, echo, mapping)
    history = pd.DataFrame()
    try:
        lead_cols = [r[0] for r in data.con.execute("DESCRIBE leads").fetchall()]
        account_cols = [r[0] for r in data.con.execute("DESCRIBE accounts").fetchall()]
        attributes = sorted({"country", "industry", "lead_source", "employee_band", *lead_cols, *account_cols}
                            - {"lead_id", "account_id", "created_at", "converted_at", "disqualified_at",
                               "job_title", cfg.owner_column, "employees", "annual_revenue"})
        rep_table = parse_reps(rep_frame, label=reps, attributes=attributes)
        unknown = [c for c in cfg.segment_by if c not in attributes]
        if unknown:
            raise ConfigError(f"allocation.segment_by names {unknown[0]!r}, which is not a lead attribute "
                              f"(choose among {', '.join(attributes)})")
        extra = sorted(set(rep_table.territory) | set(cfg.segment_by))
        attrs = _lead_attributes(data, cfg.owner_column, extra, config.features.employee_bands)
        has_owner = "__owner" in attrs
        if has_owner and attrs["__owner"].notna().any():
            uri = model_uri or f"models:/{model_version}"
            model, label = registry.load_model(uri)
            echo(f"rep effects: owners from column {cfg.owner_column!r}; predictions of model {label}")
            history = _effect_history(data, attrs, model, as_of, config, cfg.segment_by)
    finally:
        data.close()
    effects = (estimate_effects(history, level=cfg.interval, by=cfg.segment_by) if not history.empty
               else RepEffects.none())
    if history.empty:
        echo("rep effects: no owner history (no owner column, or no owned lead with a known outcome): every effect is 1")
    else:
        echo(f"rep effects: {len(history):,} past leads of {history['rep_id'].nunique()} reps, "
             f"{len(effects.table):,} (rep, segment) cells, {int(history['converted'].sum()):,} conversions")

    leads = s[["lead_id", "probability", "score", "action"]].merge(attrs.drop(columns=["created_at"]), on="lead_id",
                                                                  how="left", indicator=True)
    absent = int((leads.pop("_merge") == "left_only").sum())
    if absent:
        echo(f"warning: {absent:,} scored leads are not in {data_path}: no territory or segment (only reps "
             "covering any territory can take them)")
    if min_score is None:
        candidate = leads["action"] == ROUTE
        skip = "not routed to sales (action " + leads["action"].astype(str) + ", score " + leads["score"].astype(str) + ")"
    else:
        candidate = leads["score"] >= min_score
        skip = "score " + leads["score"].astype(str) + f" below --min-score {min_score}"
    owner = leads["__owner"] if "__owner" in leads else pd.Series(None, index=leads.index, dtype=object)
    source = pd.Series(np.where(owner.notna(), "owned in the CRM", ""), index=leads.index, dtype=object)
    try:
        previous = read_table(target, table, schema=AssignmentOutput)
    except WritebackError:
        previous = pd.DataFrame()
    if not previous.empty and "rep_id" in previous:
        before = previous.dropna(subset=["rep_id"]).set_index("lead_id")["rep_id"]
        from_target = leads["lead_id"].map(before)
        # the CRM's owner wins while that rep is active; else the previous run's assignment
        active_reps = set(rep_table.frame.loc[rep_table.frame["active"], "rep_id"])
        use = from_target.notna() & ~owner.isin(active_reps)
        owner = owner.where(~use, from_target)
        source = source.where(~use, "assigned by a previous run")
    frame = leads.assign(**{Lead.candidate: candidate.to_numpy(bool), Lead.skip_reason: skip.where(~candidate, ""),
                            Lead.owner: owner, Lead.owner_source: source})
    allocation = allocate(frame, rep_table, effects=effects, segment_by=cfg.segment_by, reassign=reassign,
                          balance=cfg.balance_tolerance if balance else None, time_limit=cfg.time_limit_seconds)
    assigned_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    a = allocation.assignments
    output = pd.DataFrame({
        AssignmentOutput.lead_id: a["lead_id"], AssignmentOutput.rep_id: a["rep_id"],
        AssignmentOutput.probability: a["probability"],
        AssignmentOutput.expected_conversions: a["expected_conversions"],
        AssignmentOutput.rank_for_rep: a["rank_for_rep"], AssignmentOutput.reason: a["reason"],
        AssignmentOutput.as_of: pd.to_datetime(s["as_of"]).to_numpy(),
        AssignmentOutput.model_version: s["model_version"].astype(str).to_numpy(),
        AssignmentOutput.assigned_at: assigned_at,
    })[AssignmentOutput.names()]
    written = write_scores(output, target, table, schema=AssignmentOutput, allow_empty=True, guards=guards)
    truth = None
    if compare_effects:
        t = _read_any(compare_effects, "rep_effects", "--compare-effects")
        if not {"rep_id", "segment", "effect"} <= set(t.columns):
            raise ContractError("needs columns rep_id, segment and effect (the simulator's rep_effects.csv)",
                                file=compare_effects)
        t = t.assign(effect=pd.to_numeric(t["effect"]))
        truth = expected_under(allocation, frame, RepEffects(t), rep_table.ids)
    return AllocateSummary(allocation, effects, written, len(history), as_of, model_version, truth, history)


# --- failures a user fixes -------------------------------------------------------------------


def user_error(exc: BaseException) -> ConvertError | None:
    """A failure of an engine underneath that the user fixes by a setting, as a
    :class:`~convert.exceptions.ConvertError` with the fix; ``None`` for anything else (a bug).

    DuckDB running out of memory (``features.duckdb_memory_limit`` too small for the
    export) is the one known today; the CLI prints the message and exits with code 2.
    """
    from convert.sources.readers import out_of_memory

    return out_of_memory(exc)
