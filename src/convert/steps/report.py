"""``convert-leads report``: the analyst report (one self-contained HTML file), logged to the
model's MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from convert.analysis.backtest import BacktestResult
from convert.analysis.report import Movements, Report
from convert.config import Config
from convert.exceptions import ConfigError, InsufficientDataError
from convert.io.artifacts import write_text
from convert.model.bundle import LeadScoringModel
from convert.schema import ScoreChanges, ScoreOutput
from convert.scoring.changes import TRENDS, compare, own_previous_scores
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, load_model, open_export, resolve_target
from convert.steps.evaluate import own_holdout


@dataclass
class ReportSummary:
    """What :func:`report_step` wrote: where, how big, how long, the report and the MLflow run."""

    path: Path
    bytes: int
    seconds: float
    report: Report
    logged_to: str | None

    def lines(self) -> list[str]:
        """What ``convert-leads report`` prints."""
        r = self.report
        out = [f"score PSI {r.score_drift.psi:.3f} ({r.score_drift.status}); "
               f"{int((r.drift['status'] == 'shifted').sum())} features shifted"]
        if r.movements is not None:
            out.append(f"movements since {r.movements.since:%Y-%m-%d}: "
                       + ", ".join(f"{int(n):,} {k}" for k, n in r.movements.counts.items()))
        out.append(f"logged to MLflow run {self.logged_to}" if self.logged_to
                   else "not logged to MLflow: the model came from a bundle folder, which has no run")
        out.append(f"report written to {self.path} ({self.bytes / 1e6:.1f} MB, {self.seconds:.0f} s)")
        return out


def report_step(
    data_path: str | Path, config: Config, as_of: pd.Timestamp, out: str | Path, model_uri: str | None = None,
    backtest: str | Path | None = None, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, log_to_mlflow: bool = True, mapping: Mapping | None = None,
    since: pd.Timestamp | None = None, scores: str | None = None, scores_table: str | None = None,
) -> ReportSummary:
    """Write the analyst report (one self-contained HTML file) and log it to the model's MLflow run.

    *backtest* is a folder written by :func:`~convert.steps.backtest.backtest_step` (or its
    ``backtest.csv``) to include as a section. *since* is the previous scoring run's as-of
    for the movements section; without it, *scores* (what ``score`` writes: a file, a
    database URL with *scores_table*, or ``env:VARIABLE``) says it, its latest as-of before
    *as_of*; without either, ``report.movements_days`` before *as_of*. Both times are scored
    with the report's model.
    """
    from convert.analysis.report import ReportInputs, build_report
    from convert.registry import store as registry
    from convert.scoring.score import feature_rows

    clock = time.perf_counter()
    if since is None and scores is not None:
        since = previous_run_as_of(scores, scores_table or ScoreOutput.table, as_of)
        if since is None:
            # the target is not echoed: a database URL may hold a password
            echo(f"--scores holds no scoring run before {as_of:%Y-%m-%d}: movements since "
                 f"report.movements_days ({config.report.movements_days}) days before")
    since = since if since is not None else as_of - pd.Timedelta(days=config.report.movements_days)
    if since >= as_of:
        raise ConfigError(f"--since {since} is not earlier than --as-of {as_of}: the movements section compares "
                          "the as-of with an earlier scoring run; give an earlier --since")
    model, label, uri = load_model(model_uri, config.train.model_name, echo)
    bt = _read_backtest(backtest) if backtest else None
    cfg = config.with_overrides(labels__horizon_days=model.horizon_days)
    data = open_export(Input(data_path, mapping, rejects, strict), cfg, echo, "report")
    try:
        current = feature_rows(data, model, as_of, cfg)
        if current.empty:
            raise InsufficientDataError(
                f"no lead is open at {as_of:%Y-%m-%d} in {data_path} (none created before it, or all converted "
                "or disqualified): choose an --as-of inside the export's history"
            )
        movements = movements_since(model, current, feature_rows(data, model, since, cfg), since, cfg, label)
        ts, split, ev = own_holdout(data, model, cfg)
        leads = data.frame("leads")
    finally:
        data.close()
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(ReportInputs(model, label, as_of, ts, split, ev, current, leads, bt, stamp, movements),
                          cfg)
    path = Path(out)
    write_text(report.html(), path)
    logged = None
    if log_to_mlflow and not Path(uri).is_dir():
        reg = registry.resolve(uri)
        registry.log_report(reg.run_id, path, {"drift": report.drift, "segments": _segments_frame(report.segments)},
                            report.metrics(), as_of)
        logged = reg.run_id
    return ReportSummary(path, path.stat().st_size, time.perf_counter() - clock, report, logged)


def previous_run_as_of(scores: str, table: str, as_of: pd.Timestamp) -> pd.Timestamp | None:
    """The as-of of the last scoring run before *as_of* that *scores* holds (its history
    table, or the run a scores file holds and the previous one its rows carry); ``None``
    when there is none."""
    from convert.io.writers import read_previous

    rows = read_previous(resolve_target(scores) if scores.startswith("env:") else scores, as_of, table)
    return None if rows.empty else pd.Timestamp(rows[ScoreOutput.as_of].max())


def movements_since(
    model: LeadScoringModel, current: pd.DataFrame, then: pd.DataFrame, since: pd.Timestamp, config: Config,
    label: str,
) -> Movements:
    """The movements of the *current* population since *since*, whose feature rows are *then*:
    the previous score of each lead open then is this model's score then, so
    :func:`convert.scoring.changes.compare`'s movements add up to each change exactly."""
    previous = own_previous_scores(model, then, label, config.scoring.num_threads)
    changes = compare(model, current, previous, then, config.scoring, label)
    counts = changes.frame[ScoreChanges.trend].value_counts().reindex(list(TRENDS), fill_value=0).astype("int64")
    by = changes.points_by_movement()
    col = {name: j for j, name in enumerate(changes.names)}
    mv = changes.movements[:, [col[n] for n in by.index]]
    features = pd.DataFrame({"feature": by.index, "total_points": by.to_numpy(dtype="int64"),
                             "points_up": np.where(mv > 0, mv, 0).sum(axis=0),
                             "points_down": np.where(mv < 0, mv, 0).sum(axis=0),
                             "leads_moved": (mv != 0).sum(axis=0)})
    features = features[features["leads_moved"] > 0].reset_index(drop=True)
    left = int((~then[ScoreOutput.lead_id].astype(str).isin(current[ScoreOutput.lead_id].astype(str))).sum())
    change = changes.frame[ScoreChanges.score_change].to_numpy(dtype="float64", na_value=np.nan)
    return Movements(pd.Timestamp(since), counts, change, features, left, config.scoring.trend_min_change)


def _segments_frame(segments: dict[str, pd.DataFrame]) -> pd.DataFrame:
    return pd.concat([t.assign(segment=name) for name, t in segments.items()], ignore_index=True) if segments else pd.DataFrame()


def _read_backtest(path: str | Path) -> BacktestResult:
    from convert.analysis.backtest import summarize

    path = Path(path)
    csv = path / "backtest.csv" if path.is_dir() else path
    if not csv.exists():
        raise ConfigError(f"no backtest results at {csv}: run `convert-leads backtest --out {path}` first")
    table = pd.read_csv(csv, parse_dates=["origin", "trained_at"])
    return BacktestResult(table, summarize(table), pd.DataFrame())
