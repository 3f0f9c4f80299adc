"""``convert-leads evaluate``: judge a model where it learned nothing and write the evaluation
folder (metrics.json, tables, plots) -- the same for a CRM export and a flat table."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convert.config import Config
from convert.features.engine import KEY
from convert.io.artifacts import write_results
from convert.model.bundle import LeadScoringModel
from convert.model.crossfit import Folds
from convert.model.train import Evaluation, TrainingSet
from convert.schema import Labeled
from convert.sources.base import LeadSource
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, check_model, model_name_for, open_data

Figures = dict[str, dict[str, float]]


def own_holdout(data: LeadSource, model: LeadScoringModel, cfg: Config) -> tuple[TrainingSet, Folds, Evaluation]:
    """A model's training set rebuilt from *data*, its folds and its outer-fold evaluation.

    The deployed model learned from every labelled row, so it is never judged on them again:
    the outer folds' out-of-fold predictions stored with the model are used when this data
    yields the same outer rows and labels; otherwise the model's recipe (parameters, rounds,
    blend weight, calibration method) is refitted on this data's folds and judged on its outer
    folds, beside the baselines.
    """
    from convert.model.crossfit import Recipe, cross_fit
    from convert.model.train import (
        baseline_fitter,
        evaluation_from_predictions,
        folds_for,
        outer_evaluation,
    )

    ts = data.model_training_set(model.metadata, cfg)
    y = ts.labels
    folds = folds_for(ts, cfg)
    stored = model.outer_predictions_
    if stored is not None and _same_rows(stored, ts.frame.loc[folds.masks["holdout"]]):
        ev = evaluation_from_predictions(stored, model)
        ev.metrics.attrs["baselines_recorded"] = True
        return ts, folds, ev
    fit = cross_fit(ts.frame[model.spec_.names], y, folds, cfg, catalog=model.catalog_,
                    event_types=model.spec_.event_types, baselines=baseline_fitter(ts, cfg),
                    as_of=ts.row_times(), recipe=Recipe.of(model))
    return ts, folds, outer_evaluation(model, ts.frame, y, fit, KEY)


def newer_evaluation(data: LeadSource, model: LeadScoringModel, cfg: Config, echo: Echo) -> Evaluation | None:
    """The deployed model on labelled as-of times newer than its training cut-off, or ``None``
    (none in the data, or a flat table's model: its rows have no time)."""
    from convert.model.bundle import score_from_probability
    from convert.model.metrics import evaluate, grade_table, lift_table, reliability_table
    from convert.model.train import baseline_fitter, deployed_until

    fit_to = deployed_until(model)
    if fit_to is None:
        return None
    horizon = model.horizon_days
    newer = data.labelled_after(fit_to, horizon, cfg)
    if not newer:
        return None
    fcfg = model.features_config(cfg.features)
    rows = data.labelled_rows(newer, horizon, fcfg, model.spec_.event_types)
    y = rows[Labeled.label].to_numpy()
    p = model.predict_proba(rows)[:, 1]
    probs = {"model": p}
    ts = data.model_training_set(model.metadata, cfg)
    train_rows = ts.frame.merge(data.feature_rows(ts.frame[KEY], fcfg, model.spec_.event_types, model.metadata),
                                on=KEY, how="left", suffixes=("_x", "")) if fcfg != cfg.features else ts.frame
    names = model.spec_.names
    for name, b in baseline_fitter(ts, cfg)(train_rows[names], train_rows[Labeled.label].to_numpy()).items():
        probs[name] = np.asarray(b.predict_proba(rows[names]), dtype="float64")
    scores = score_from_probability(p)
    grades = model.grades(scores)
    echo(f"evaluated on {len(newer)} labelled as-of times newer than its training cut-off {fit_to:%Y-%m-%d} "
         f"({newer[0]:%Y-%m-%d} to {newer[-1]:%Y-%m-%d}, {len(y):,} leads)")
    return Evaluation(
        metrics=pd.DataFrame({k: evaluate(y, v) for k, v in probs.items()}),
        reliability=reliability_table(y, p), lift=lift_table(y, p), grades=grade_table(y, grades),
        predictions=rows[KEY].assign(label=y, probability=p, score=scores, grade=grades).reset_index(drop=True),
    )


def _same_rows(stored: pd.DataFrame, rows: pd.DataFrame) -> bool:
    """Whether stored predictions cover exactly *rows* (lead, as-of when stored, and label)."""
    keys = [k for k in (Labeled.lead_id, Labeled.as_of) if k in stored.columns]
    if len(stored) != len(rows) or Labeled.lead_id not in keys or "label" not in stored.columns:
        return False
    a = stored[[*keys, "label"]].astype(str).sort_values(keys)
    b = rows[[*keys, Labeled.label]].rename(columns={Labeled.label: "label"})
    if Labeled.as_of in keys:
        b = b.assign(**{Labeled.as_of: pd.to_datetime(b[Labeled.as_of])})
        a = a.assign(**{Labeled.as_of: pd.to_datetime(a[Labeled.as_of])})
    a = a.astype({"label": "int64"})
    b = b.astype({Labeled.lead_id: str, "label": "int64"}).sort_values(keys)
    return bool((a.to_numpy() == b.to_numpy()).all())


@dataclass
class EvaluationSummary:
    """What :func:`evaluate_step` did: the model judged, its figures beside the baselines'
    (``{"model": {...}, "<baseline>": {...}}``), the evaluation and where it was written."""

    label: str
    metrics: Figures
    evaluation: Evaluation
    out: Path


def write_evaluation(ev: Evaluation, label: str, out: str | Path) -> Path:
    """The evaluation folder: metrics.json, reliability/lift/grades as CSV and two plots."""
    from convert.analysis.plots import plot_lift, plot_reliability

    metrics = {c: {k: float(v) for k, v in ev.metrics[c].items()} for c in ev.metrics.columns}
    return write_results(out, {"metrics.json": {"model": label, **metrics}, "reliability.csv": ev.reliability,
                               "lift.csv": ev.lift, "grades.csv": ev.grades,
                               "reliability.png": plot_reliability(ev.reliability), "lift.png": plot_lift(ev.lift)})


def evaluate_step(
    data_path: str | Path, config: Config, model_uri: str | None, out: str | Path, rejects: str | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> EvaluationSummary:
    """Evaluate a model where it learned nothing and write metrics and plots (DVC ``evaluate``).

    On labelled as-of times newer than its training cut-off when the data holds any (the
    deployed model scored there, the baselines fitted on the rows it learned from); otherwise
    on its outer folds (see :func:`own_holdout`). Says which. The default model is the
    challenger of the source's model name.
    """
    from convert.registry import store as registry

    data = Input(data_path, mapping, rejects)
    model, label = registry.load_model(model_uri or f"models:/{model_name_for(data, config)}@challenger")
    echo(f"model {label}")
    cfg = config.with_overrides(labels__horizon_days=model.horizon_days)
    source = open_data(data, cfg, echo, "evaluate", trained=model)
    try:
        check_model(source, model, label, cfg)
        cfg = source.model_config(model.metadata, cfg)
        ev = newer_evaluation(source, model, cfg, echo)
        if ev is None:
            _, _, ev = own_holdout(source, model, cfg)
            echo("evaluated on the outer folds of its training design (no labelled as-of time is newer "
                 "than its training cut-off)")
    finally:
        source.close()
    folder = write_evaluation(ev, label, out)
    echo(ev.table())
    metrics = {c: {k: float(v) for k, v in ev.metrics[c].items()} for c in ev.metrics.columns}
    return EvaluationSummary(label, metrics, ev, folder)
