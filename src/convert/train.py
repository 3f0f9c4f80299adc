"""Training: the multi-snapshot training set, the time split, LightGBM, calibration and
an honest evaluation against three baselines on a hold-out the model never saw.

Slices are cut by as-of time, later slices later in time::

    train | validation (early stopping) | calibration | hold-out

Rows of earlier slices whose horizon reaches into the hold-out are purged, so no label
used for fitting was decided inside the hold-out period. Class imbalance is handled
without reweighting: weights would distort the probabilities that the calibrator must
then undo; an unweighted log-loss objective with early stopping keeps them honest.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from convert.baselines import fit_baselines
from convert.calibrate import select_calibrator
from convert.catalog import Catalog
from convert.config import Config
from convert.dataset import CRMData
from convert.exceptions import InsufficientDataError
from convert.features import KEY, build_features
from convert.labels import AsOfGrid, build_labels, grid_for, parse_as_of
from convert.metrics import evaluate, grade_table, lift_table, reliability_table
from convert.model import FeatureMatrix, LeadScoringModel, score_from_probability
from convert.schema import Labeled

SLICES = ("train", "validation", "calibration", "holdout")


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
    if len(grid) < 4:
        raise InsufficientDataError(
            f"only {len(grid)} as-of times between the first lead and {t:%Y-%m-%d} minus the "
            f"{horizon}-day horizon ({grid.describe()}); training needs at least 4 (one per time "
            "slice). Use a longer history, a shorter --horizon-days, or more frequent snapshots "
            "(labels.frequency: daily or weekly, a smaller labels.min_history_days)"
        )
    labels = build_labels(data.con, grid.times, horizon)
    fs = build_features(data.con, labels, config.features)
    frame = labels.merge(fs.frame, on=KEY, how="left", validate="one_to_one")
    return TrainingSet(frame, fs.catalog, fs.event_types, t, horizon, grid)


@dataclass
class TimeSplit:
    """Row masks of each time slice, and the as-of range each covers."""

    masks: dict[str, np.ndarray]
    ranges: dict[str, tuple[pd.Timestamp, pd.Timestamp]]
    purged: int

    def summary(self, labels: np.ndarray) -> pd.DataFrame:
        rows = []
        for name in SLICES:
            m = self.masks[name]
            lo, hi = self.ranges[name]
            rows.append(
                {"slice": name, "from": lo.date(), "to": hi.date(), "rows": int(m.sum()),
                 "positives": int(labels[m].sum())}
            )
        return pd.DataFrame(rows)


def _take_latest(times: list[pd.Timestamp], counts: dict[pd.Timestamp, int], rows: float) -> int:
    """How many of the latest *times* it takes to hold at least *rows* rows (at least one)."""
    held, k = 0, 0
    for t in reversed(times):
        if k and held >= rows:
            break
        held += counts[t]
        k += 1
    return k


def split_by_time(as_of: pd.Series, config: Config) -> TimeSplit:
    """Cut the as-of times into train | validation | calibration | hold-out.

    The configured shares are shares of rows (the open population grows over time, so
    equal numbers of as-of times would give the latest slices most of the rows); every
    slice holds whole as-of times, at least one each.
    """
    values = pd.to_datetime(as_of)
    counts = values.value_counts().to_dict()
    times = sorted(counts)
    total = len(values)
    s = config.train.split
    n_hold = _take_latest(times, counts, s.holdout * total)
    holdout = times[len(times) - n_hold:]
    before = times[: len(times) - n_hold]
    purged_times: list[pd.Timestamp] = []
    if s.purge_before_holdout:
        cutoff = holdout[0] - pd.Timedelta(days=config.labels.horizon_days)
        purged_times = [t for t in before if t > cutoff]
        before = [t for t in before if t <= cutoff]
    n_cal = _take_latest(before, counts, s.calibration * total) if before else 0
    n_val = _take_latest(before[: len(before) - n_cal], counts, s.validation * total) if len(before) > n_cal else 0
    if len(before) - n_cal - n_val < 1:
        raise InsufficientDataError(
            f"{len(times)} as-of times leave {len(before)} before the hold-out (after purging "
            f"{len(purged_times)} whose horizon overlaps it): too few for train, validation and "
            "calibration slices. Use a longer history, a shorter --horizon-days, or more frequent "
            "snapshots (labels.frequency)"
        )
    cal = before[len(before) - n_cal:]
    val = before[len(before) - n_cal - n_val: len(before) - n_cal]
    trn = before[: len(before) - n_cal - n_val]
    groups = {"train": trn, "validation": val, "calibration": cal, "holdout": holdout}
    arr = values.to_numpy()
    masks = {k: np.isin(arr, np.array(v, dtype="datetime64[ns]")) for k, v in groups.items()}
    ranges = {k: (pd.Timestamp(v[0]), pd.Timestamp(v[-1])) for k, v in groups.items()}
    purged = int(np.isin(arr, np.array(purged_times, dtype="datetime64[ns]")).sum())
    return TimeSplit(masks, ranges, purged)


def check_positives(split: TimeSplit, labels: np.ndarray, minimum: int) -> None:
    """Refuse to train when a slice holds too few conversions to learn or judge honestly."""
    for name in SLICES:
        positives = int(labels[split.masks[name]].sum())
        if positives < minimum:
            raise InsufficientDataError(
                f"the {name} slice ({split.ranges[name][0]:%Y-%m-%d} to "
                f"{split.ranges[name][1]:%Y-%m-%d}) holds {positives} conversions, fewer than "
                f"train.min_positives={minimum}. Use a longer history, a shorter --horizon-days, "
                "or more frequent snapshots (labels.frequency: weekly)"
            )


@dataclass
class Evaluation:
    """Hold-out metrics of the model beside the baselines, and its diagnostic tables."""

    metrics: pd.DataFrame
    reliability: pd.DataFrame
    lift: pd.DataFrame
    grades: pd.DataFrame
    predictions: pd.DataFrame

    def table(self) -> str:
        shown = self.metrics.loc[["roc_auc", "pr_auc", "log_loss", "brier", "ece"]]
        return shown.to_string(float_format=lambda v: f"{v:.4f}")


@dataclass
class TrainResult:
    """What :func:`train` returns: the fitted model, its evaluation and the slice summary."""

    model: LeadScoringModel
    evaluation: Evaluation
    slices: pd.DataFrame
    calibration_cv: dict[str, float]
    training_set: TrainingSet
    split: TimeSplit
    tuning: pd.DataFrame | None = None
    params: dict[str, Any] = field(default_factory=dict)


def _new_model(
    config: Config, params: Mapping[str, Any] | None = None, rounds: int | None = None
) -> LeadScoringModel:
    return LeadScoringModel(
        params=dict(params or config.train.lightgbm),
        num_boost_round=rounds or config.train.num_boost_round,
        early_stopping_rounds=config.train.early_stopping_rounds,
        monotone_constraints=config.train.monotone_constraints,
        seed=config.seed,
        horizon_days=config.labels.horizon_days,
        grade_cutoffs=config.scoring.grade_cutoffs,
    )


def fit_calibrated(
    ts: TrainingSet, split: TimeSplit, config: Config, params: Mapping[str, Any] | None = None
) -> tuple[LeadScoringModel, dict[str, float]]:
    """LightGBM with early stopping (train -> validation), refit on train + validation,
    calibrated on the calibration slice.

    Early stopping picks the number of rounds; the refit on both slices then uses the most
    recent history too (``train.refit_round_factor`` more rounds for the extra rows). The
    calibration slice stays unseen by the booster, so the calibrator learns from honest
    raw scores.

    The three slices are encoded once into one :class:`~convert.model.FeatureMatrix`
    (train rows, then validation, then calibration, each in frame order), so every fit and
    the calibration scores read ranges of that one matrix. The result is the same as fitting
    :meth:`LeadScoringModel.fit` on ``frame.loc[mask]`` of each slice: the same rows in the
    same order, the categories learned from the rows each booster is fitted on.
    """
    y = ts.frame[Labeled.label].to_numpy()
    parts = [np.flatnonzero(split.masks[name]) for name in ("train", "validation", "calibration")]
    order = np.concatenate(parts)
    a, b = len(parts[0]), len(parts[0]) + len(parts[1])
    matrix = FeatureMatrix(ts.frame, ts.catalog, order)
    X, y_ordered = matrix.values, y[order]
    spec = matrix.spec(slice(0, a), ts.event_types)
    matrix.encode(spec)
    model = _new_model(config, params).fit_matrix(
        X[:a], y_ordered[:a], X[a:b], y_ordered[a:b], spec=spec, catalog=ts.catalog
    )
    if config.train.refit_on_validation:
        rounds = max(1, math.ceil(model.best_iteration_ * config.train.refit_round_factor))
        spec = matrix.spec(slice(0, b), ts.event_types)
        matrix.encode(spec)
        X_seen, y_seen = X[:b], y_ordered[:b]
        if np.any(np.diff(order[:b]) < 0):  # slices interleave in the frame: back to frame order
            frame_order = np.argsort(order[:b], kind="stable")
            X_seen, y_seen = X_seen[frame_order], y_seen[frame_order]
        model = _new_model(config, params, rounds).fit_matrix(
            X_seen, y_seen, spec=spec, catalog=ts.catalog
        )
    calibrator, cv = select_calibrator(
        model.predict_raw_matrix(X[b:]), y_ordered[b:],
        methods=config.calibration.methods, cv_folds=config.calibration.cv_folds,
        min_rows_isotonic=config.calibration.min_rows_isotonic, seed=config.seed,
    )
    model.calibrate(calibrator)
    return model, cv


def model_rows(split: TimeSplit) -> np.ndarray:
    """Rows the booster learned from (the baselines get the same rows)."""
    return split.masks["train"] | split.masks["validation"]


def evaluate_holdout(
    model: LeadScoringModel, ts: TrainingSet, split: TimeSplit, config: Config, baselines: bool = True
) -> Evaluation:
    """Model and baselines on the hold-out; baselines fit on the rows the booster learned from
    (``baselines=False``: the model alone)."""
    frame, y = ts.frame, ts.frame[Labeled.label].to_numpy()
    hold = split.masks["holdout"]
    fit_rows = model_rows(split)
    X_hold = frame.loc[hold, ts.features]
    p_model = model.predict_proba(X_hold)[:, 1]
    probs = {"model": p_model}
    for name, baseline in (fit_baselines(
        frame.loc[fit_rows, ts.features], y[fit_rows], config.baselines, config.seed
    ) if baselines else {}).items():
        probs[name] = np.asarray(baseline.predict_proba(X_hold), dtype="float64")
    y_hold = y[hold]
    metrics = pd.DataFrame({name: evaluate(y_hold, p) for name, p in probs.items()})
    scores = score_from_probability(p_model)
    grades = model.grades(scores)
    preds = frame.loc[hold, KEY].assign(
        label=y_hold, probability=p_model, score=scores, grade=grades,
        **{f"p_{k}": v for k, v in probs.items() if k != "model"},
    )
    return Evaluation(
        metrics=metrics,
        reliability=reliability_table(y_hold, p_model),
        lift=lift_table(y_hold, p_model),
        grades=grade_table(y_hold, grades),
        predictions=preds.reset_index(drop=True),
    )


def tune(
    ts: TrainingSet, split: TimeSplit, config: Config, trials: int
) -> tuple[dict[str, Any], pd.DataFrame]:
    """Seeded random search over LightGBM parameters, scored by time-series cross-validation.

    Folds roll forward over the train and validation as-of times (fit on earlier, score the
    next block), so tuning never looks at the calibration or hold-out slices.
    """
    rng = np.random.default_rng(config.seed)
    frame, y = ts.frame, ts.frame[Labeled.label].to_numpy()
    usable = split.masks["train"] | split.masks["validation"]
    times = sorted(pd.to_datetime(frame.loc[usable, Labeled.as_of].unique()))
    k = config.train.tune_folds
    block = max(1, len(times) // (k + 1))
    as_of = pd.to_datetime(frame[Labeled.as_of]).to_numpy()
    results = []
    base = dict(config.train.lightgbm)
    for trial in range(trials):
        params = dict(base)
        if trial > 0:  # trial 0 scores the defaults
            params.update(
                learning_rate=float(10 ** rng.uniform(-2, -0.7)),
                num_leaves=int(rng.integers(8, 128)),
                min_data_in_leaf=int(rng.integers(20, 400)),
                feature_fraction=float(rng.uniform(0.5, 1.0)),
                lambda_l2=float(10 ** rng.uniform(-2, 1.5)),
            )
        losses = []
        for fold in range(k):
            cut = times[block * (fold + 1)]
            end = times[min(len(times) - 1, block * (fold + 2))]
            fit_m = usable & (as_of < np.datetime64(cut))
            val_m = usable & (as_of >= np.datetime64(cut)) & (as_of <= np.datetime64(end))
            if y[fit_m].sum() == 0 or y[val_m].sum() == 0:
                continue
            model = _new_model(config, params).fit(
                frame.loc[fit_m], y[fit_m], frame.loc[val_m], y[val_m],
                catalog=ts.catalog, event_types=ts.event_types,
            )
            p = 1 / (1 + np.exp(-model.predict_raw(frame.loc[val_m])))
            losses.append(float(-np.mean(y[val_m] * np.log(p) + (1 - y[val_m]) * np.log(1 - p))))
        results.append({"trial": trial, **params, "cv_log_loss": float(np.mean(losses)) if losses else np.inf})
    table = pd.DataFrame(results)
    best_row = table.loc[table["cv_log_loss"].idxmin()]
    best_params = {key: best_row[key] for key in base.keys() | {"learning_rate", "num_leaves",
                   "min_data_in_leaf", "feature_fraction", "lambda_l2"} if key in best_row}
    return _native(best_params), table


def _native(params: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in params.items():
        if isinstance(v, np.integer):
            v = int(v)
        elif isinstance(v, np.floating):
            v = float(v)
            if v.is_integer() and k in ("num_leaves", "min_data_in_leaf", "bagging_freq", "max_cat_to_onehot"):
                v = int(v)
        out[k] = v
    return out


def train(
    data: CRMData,
    config: Config,
    as_of: str | pd.Timestamp | None = None,
    tune_trials: int | None = None,
) -> TrainResult:
    """Build the training set, split by time, (tune,) fit, calibrate and evaluate.

    Parameters
    ----------
    data:
        A loaded CRM export (:func:`convert.load`).
    config:
        The configuration; ``labels.horizon_days`` is the horizon.
    as_of:
        Training as-of time ``T`` (ISO 8601); default: the day after the latest timestamp.
    tune_trials:
        Random-search trials (``--tune``); default ``config.train.tune_trials``.

    Raises
    ------
    InsufficientDataError
        When a slice holds fewer than ``train.min_positives`` conversions.
    """
    ts = build_training_set(data, config, as_of)
    y = ts.frame[Labeled.label].to_numpy()
    split = split_by_time(ts.frame[Labeled.as_of], config)
    check_positives(split, y, config.train.min_positives)
    trials = config.train.tune_trials if tune_trials is None else tune_trials
    tuning = None
    params = dict(config.train.lightgbm)
    if trials:
        params, tuning = tune(ts, split, config, trials)
    model, cv = fit_calibrated(ts, split, config, params)
    evaluation = evaluate_holdout(model, ts, split, config)
    slices = split.summary(y)
    model.metadata = {
        "training_as_of": ts.as_of.isoformat(),
        "horizon_days": ts.horizon_days,
        "frequency": ts.grid.frequency if ts.grid else config.labels.frequency,
        "as_of_grid": ts.grid.to_dict() if ts.grid else None,
        "slices": {
            r["slice"]: {"from": str(r["from"]), "to": str(r["to"]), "rows": r["rows"],
                         "positives": r["positives"]}
            for r in slices.to_dict("records")
        },
        "purged_rows": split.purged,
        "calibration": {"method": model.calibrator_.method, "cv_log_loss": cv},
        "holdout_metrics": evaluation.metrics["model"].to_dict(),
        "baseline_metrics": {c: evaluation.metrics[c].to_dict() for c in evaluation.metrics if c != "model"},
        "params": params,
        "seed": config.seed,
        "features_config": config.features.model_dump(mode="json"),
    }
    return TrainResult(model, evaluation, slices, cv, ts, split, tuning, params)
