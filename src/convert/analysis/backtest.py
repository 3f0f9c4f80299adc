"""Backtesting: rolling-origin evaluation, and what retraining less often costs.

At each origin ``t`` (``--from`` to ``--to`` every ``--every``) the model is trained on
what was known at ``t`` -- snapshots whose horizon had elapsed by ``t``, exactly as
``convert-leads train --as-of t`` would -- then scores the population open at ``t`` and
is compared with what happened within the horizon. Every origin therefore needs
``t + horizon`` inside the data.

Three retraining schedules are judged on the same origins: retraining at every origin,
retraining every ``--retrain-every`` (when given), and never retraining after the first
origin. A schedule uses, at each origin, the latest model it has trained by then, so
the gap between the schedules is the price of a stale model.

Features and labels are computed once for every snapshot any origin needs (they are
point-in-time, so a snapshot's row is the same whichever origin uses it); each origin
keeps the event vocabulary it would have discovered itself.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

from convert.config import STANDARD_EVENT_TYPES, Config
from convert.exceptions import ConfigError, ConvertError, InsufficientDataError
from convert.features.engine import KEY, build_features, discover_event_types, feature_catalog
from convert.features.labels import build_labels, grid_for, parse_as_of
from convert.model.bundle import LeadScoringModel
from convert.model.metrics import evaluate
from convert.model.train import TrainingSet, default_as_of, fit_deployed
from convert.schema import Labeled
from convert.sources.export import CRMData

_UNITS = {"D": "days", "W": "weeks", "M": "months", "Q": "months", "Y": "years"}
METRICS = ("roc_auc", "pr_auc", "log_loss", "brier", "ece")
NEVER = "never"


def parse_period(text: str) -> pd.DateOffset:
    """``14D``, ``2W``, ``1M``, ``1Q`` or ``1Y`` as a calendar offset (months stay months)."""
    m = re.fullmatch(r"([1-9][0-9]*)([DWMQY])", str(text).strip().upper())
    if not m:
        raise ConfigError(f"period {text!r} is not a number and a unit, like 14D, 2W, 1M, 1Q or 1Y")
    n, unit = int(m.group(1)), m.group(2)
    return pd.DateOffset(**{_UNITS[unit]: n * 3 if unit == "Q" else n})


def origin_times(start: pd.Timestamp, end: pd.Timestamp, every: pd.DateOffset) -> list[pd.Timestamp]:
    """``start``, ``start + every``, ... up to and including ``end``."""
    out, t = [], start
    while t <= end:
        out.append(t)
        t = t + every
    return out


@dataclass
class BacktestResult:
    """Per origin and schedule: the metrics; per schedule: their means and the cost of staleness."""

    table: pd.DataFrame
    summary: pd.DataFrame
    trainings: pd.DataFrame

    def text(self) -> str:
        shown = self.table[["origin", "schedule", "model_age_days", "n", "positives", *METRICS]].copy()
        shown["origin"] = pd.to_datetime(shown["origin"]).dt.strftime("%Y-%m-%d")
        summary = self.summary.copy()
        for col in summary.columns:
            if col.endswith("_change"):
                summary[col] = summary[col].map(lambda v: f"{v:+.4f}")
        summary["mean_model_age_days"] = summary["mean_model_age_days"].map(lambda v: f"{v:.0f}")
        return (
            shown.to_string(index=False, float_format=lambda v: f"{v:.4f}")
            + "\n\n"
            + summary.to_string(index=False, float_format=lambda v: f"{v:.4f}")
            + "\n\n"
            + "\n".join(cost_sentences(self.summary))
        )


def _vocabulary_order(types: set[str]) -> list[str]:
    order = {t: i for i, t in enumerate(STANDARD_EVENT_TYPES)}
    return sorted(types, key=lambda t: (order.get(t, len(order)), t))


def _schedule_points(origins: list[pd.Timestamp], every: pd.DateOffset | None) -> list[pd.Timestamp]:
    if every is None:
        return origins[:1]
    return origin_times(origins[0], origins[-1], every)


def backtest(
    data: CRMData,
    config: Config,
    start: str | pd.Timestamp,
    end: str | pd.Timestamp,
    every: str | None = None,
    retrain_every: str | None = None,
    echo: Callable[[str], None] | None = None,
) -> BacktestResult:
    """Rolling-origin evaluation from *start* to *end* (see the module doc).

    Raises
    ------
    InsufficientDataError
        When an origin's horizon reaches past the data, or an origin has too little
        history to train (the message names the origin).
    """
    say = echo or (lambda _: None)
    every = every or config.backtest.every
    retrain_every = retrain_every if retrain_every is not None else config.backtest.retrain_every
    t0, t1 = parse_as_of(start), parse_as_of(end)
    if t0 is None or t1 is None or t1 < t0:
        raise ConfigError(f"backtest needs --from before --to; got {start} and {end}")
    step = parse_period(every)
    origins = origin_times(t0, t1, step)
    horizon = config.labels.horizon_days
    data_end = default_as_of(data)
    last_judged = data_end - pd.Timedelta(days=horizon)
    if origins[-1] > last_judged:
        raise InsufficientDataError(
            f"origin {origins[-1]:%Y-%m-%d} cannot be judged: its {horizon}-day horizon ends after "
            f"the data does ({data_end:%Y-%m-%d}). Use --to {last_judged:%Y-%m-%d} or earlier"
        )
    schedules: dict[str, list[pd.Timestamp]] = {f"every {every}": origins}
    if retrain_every and parse_period(retrain_every) != step:
        schedules[f"every {retrain_every}"] = _schedule_points(origins, parse_period(retrain_every))
    schedules[NEVER] = origins[:1]
    train_points = sorted({t for pts in schedules.values() for t in pts})

    # one labelled feature frame for every snapshot any training point or origin needs
    first = data.earliest_created()
    chosen = {r: grid_for(config.labels, first, r) for r in train_points}
    grids = {r: g.times for r, g in chosen.items()}
    for r, g in chosen.items():
        say(f"snapshots for training at {r:%Y-%m-%d}: {g.describe()}")
    for r, grid in grids.items():
        needed = config.train.inner_folds + config.train.outer_folds + 1
        if len(grid) < needed:
            raise InsufficientDataError(
                f"backtest origin {r:%Y-%m-%d}: only {len(grid)} snapshots have a known label by "
                f"then; training needs at least {needed}. Start the backtest later (--from)"
            )
    vocab = {r: discover_event_types(data.con, max(g), config.features) for r, g in grids.items()}
    all_types = _vocabulary_order({t for v in vocab.values() for t in v})
    snapshots = sorted({t for g in grids.values() for t in g} | set(origins))
    clock = time.perf_counter()
    labels = build_labels(data.con, snapshots, horizon)
    fs = build_features(data.con, labels, config.features, all_types)
    frame = labels.merge(fs.frame, on=KEY, how="left", validate="one_to_one")
    as_of = pd.to_datetime(frame[Labeled.as_of]).to_numpy()
    say(f"features for {len(snapshots)} snapshots ({len(frame):,} rows) in {time.perf_counter() - clock:.1f} s")

    models: dict[pd.Timestamp, LeadScoringModel] = {}
    fitted: dict[tuple[tuple[pd.Timestamp, ...], tuple[str, ...]], LeadScoringModel] = {}
    trainings: list[dict[str, Any]] = []
    for r in train_points:
        key = (tuple(grids[r]), tuple(vocab[r]))
        if key in fitted:  # no new snapshot got its label since the last origin: the same fit
            models[r] = fitted[key]
            trainings.append({"trained_at": r, "rows": trainings[-1]["rows"], "positives": trainings[-1]["positives"],
                              "rounds": fitted[key].best_iteration_, "seconds": 0.0})
            say(f"trained at {r:%Y-%m-%d}: no newly labelled snapshot since the last origin, same model")
            continue
        catalog = feature_catalog(vocab[r], config.features)
        missing = [n for n in catalog.names if n not in frame.columns]
        if missing:  # the union vocabulary always holds each origin's own
            raise RuntimeError(f"backtest feature frame lacks {missing[:5]}")
        rows = np.isin(as_of, np.array(grids[r], dtype="datetime64[ns]"))
        ts = TrainingSet(
            frame.loc[rows, [*KEY, Labeled.label, *catalog.names]].reset_index(drop=True),
            catalog, tuple(vocab[r]), r, horizon,
        )
        y = ts.frame[Labeled.label].to_numpy()
        clock = time.perf_counter()
        try:
            model = fit_deployed(ts, config)
        except ConvertError as exc:
            raise InsufficientDataError(f"backtest origin {r:%Y-%m-%d}: {exc}") from exc
        seconds = time.perf_counter() - clock
        models[r] = fitted[key] = model
        trainings.append({"trained_at": r, "rows": len(ts.frame), "positives": int(y.sum()),
                          "rounds": model.best_iteration_, "seconds": seconds})
        say(f"trained at {r:%Y-%m-%d}: {len(ts.frame):,} rows, {int(y.sum()):,} conversions, {seconds:.1f} s")

    results = []
    for t in origins:
        at = frame.loc[as_of == np.datetime64(t)]
        y = at[Labeled.label].to_numpy()
        cache: dict[pd.Timestamp, dict[str, float]] = {}
        for name, points in schedules.items():
            r = max(p for p in points if p <= t)
            if r not in cache:
                model = models[r]
                cache[r] = evaluate(y, model.predict_proba(at[model.spec_.names])[:, 1])
            m = cache[r]
            results.append({"origin": t, "schedule": name, "trained_at": r,
                            "model_age_days": int((t - r).days), "n": int(m["n"]),
                            "positives": int(m["positives"]), "base_rate": m["base_rate"],
                            **{k: m[k] for k in METRICS}})
        fresh = results[-len(schedules)]
        say(f"origin {t:%Y-%m-%d}: {fresh['n']:,} open leads, {fresh['positives']:,} converted; "
            f"ROC AUC {fresh['roc_auc']:.4f}, Brier {fresh['brier']:.4f}, ECE {fresh['ece']:.4f}")
    table = pd.DataFrame(results)
    return BacktestResult(table, summarize(table, schedules), pd.DataFrame(trainings))


def summarize(table: pd.DataFrame, schedules: dict[str, list[pd.Timestamp]] | None = None) -> pd.DataFrame:
    """Mean metrics per schedule over the origins, and the change against retraining at every origin."""
    names = list(dict.fromkeys(table["schedule"]))
    means = table.groupby("schedule", sort=False)[list(METRICS)].mean().reindex(names)
    base = means.iloc[0]
    rows = []
    for name in names:
        row: dict[str, object] = {"schedule": name}
        if schedules is not None:
            row["trainings"] = len(schedules[name])
        else:
            row["trainings"] = int(table.loc[table["schedule"] == name, "trained_at"].nunique())
        row["mean_model_age_days"] = float(table.loc[table["schedule"] == name, "model_age_days"].mean())
        for k in METRICS:
            row[k] = float(means.loc[name, k])
        for k in ("roc_auc", "brier", "ece"):
            row[f"{k}_change"] = float(means.loc[name, k] - base[k])
        rows.append(row)
    return pd.DataFrame(rows)


def cost_sentences(summary: pd.DataFrame) -> list[str]:
    """What retraining less often costs, one plain sentence per slower schedule."""
    if summary.empty:
        return []
    first = summary.iloc[0]
    out = []
    for row in summary.iloc[1:].itertuples():
        label = "never retraining" if row.schedule == NEVER else f"retraining {row.schedule}"
        out.append(
            f"{label[0].upper() + label[1:]} ({row.trainings} training{'s' if row.trainings != 1 else ''} instead of "
            f"{first['trainings']}, models {row.mean_model_age_days:.0f} days old on average) changes the mean "
            f"ROC AUC by {row.roc_auc_change:+.4f}, Brier by {row.brier_change:+.5f} and ECE by "
            f"{row.ece_change:+.4f} against {first['schedule']}."
        )
    return out
