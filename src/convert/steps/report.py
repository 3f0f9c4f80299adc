"""``convert-leads report``: the analyst report (one self-contained HTML file), logged to the
model's MLflow run."""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convert.analysis.backtest import BacktestResult
from convert.analysis.report import Report
from convert.config import Config
from convert.exceptions import ConfigError, InsufficientDataError
from convert.io.artifacts import write_text
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, load_model, open_export
from convert.steps.evaluate import own_holdout


@dataclass
class ReportSummary:
    """What :func:`report_step` wrote: where, how big, how long, the report and the MLflow run."""

    path: Path
    bytes: int
    seconds: float
    report: Report
    logged_to: str | None


def report_step(
    data_path: str | Path, config: Config, as_of: pd.Timestamp, out: str | Path, model_uri: str | None = None,
    backtest: str | Path | None = None, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, log_to_mlflow: bool = True, mapping: Mapping | None = None,
) -> ReportSummary:
    """Write the analyst report (one self-contained HTML file) and log it to the model's MLflow run.

    *backtest* is a folder written by :func:`~convert.steps.backtest.backtest_step` (or its
    ``backtest.csv``) to include as a section.
    """
    from convert.analysis.report import ReportInputs, build_report
    from convert.registry import store as registry
    from convert.scoring.score import feature_rows

    clock = time.perf_counter()
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
        ts, split, ev = own_holdout(data, model, cfg)
        leads = data.frame("leads")
    finally:
        data.close()
    stamp = pd.Timestamp.now(tz="UTC").strftime("%Y-%m-%d %H:%M UTC")
    report = build_report(ReportInputs(model, label, as_of, ts, split, ev, current, leads, bt, stamp), cfg)
    path = Path(out)
    write_text(report.html(), path)
    logged = None
    if log_to_mlflow and not Path(uri).is_dir():
        reg = registry.resolve(uri)
        registry.log_report(reg.run_id, path, {"drift": report.drift, "segments": _segments_frame(report.segments)},
                            report.metrics(), as_of)
        logged = reg.run_id
    return ReportSummary(path, path.stat().st_size, time.perf_counter() - clock, report, logged)


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
