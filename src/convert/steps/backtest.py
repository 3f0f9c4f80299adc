"""``convert-leads backtest``: rolling-origin evaluation, written as tables and a plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convert.analysis.backtest import BacktestResult
from convert.config import Config
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_export


def backtest_step(
    data_path: str | Path, config: Config, start: pd.Timestamp, end: pd.Timestamp, every: str | None,
    retrain_every: str | None, out: str | Path, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> BacktestResult:
    """Rolling-origin backtest; writes backtest.csv, summary.csv, trainings.csv and backtest.png to *out*."""
    from convert.analysis.backtest import backtest, plot_backtest

    data = open_export(Input(data_path, mapping, rejects, strict), config, echo, "backtest")
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
