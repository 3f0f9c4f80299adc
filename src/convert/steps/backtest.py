"""``convert-leads backtest``: rolling-origin evaluation, written as tables and a plot."""

from __future__ import annotations

from pathlib import Path

import pandas as pd

from convert.analysis.backtest import BacktestResult
from convert.config import Config
from convert.io.artifacts import write_results
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_export


def backtest_step(
    data_path: str | Path, config: Config, start: pd.Timestamp, end: pd.Timestamp, every: str | None,
    retrain_every: str | None, out: str | Path, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> BacktestResult:
    """Rolling-origin backtest; writes backtest.csv, summary.csv, trainings.csv and backtest.png to *out*."""
    from convert.analysis.backtest import backtest
    from convert.analysis.plots import plot_backtest

    data = open_export(Input(data_path, mapping, rejects, strict), config, echo, "backtest")
    try:
        result = backtest(data, config, start, end, every, retrain_every, echo)
    finally:
        data.close()
    write_results(out, {"backtest.csv": result.table, "summary.csv": result.summary, "trainings.csv": result.trainings})
    write_results(out, {"backtest.png": plot_backtest(result.table)}, dpi=100)
    return result
