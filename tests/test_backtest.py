"""Backtest: rolling origins train on what was known then and judge on what happened."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert.analysis.backtest import NEVER, backtest, cost_sentences, origin_times, parse_period
from convert.exceptions import ConfigError, InsufficientDataError
from convert.model.train import train


def test_periods_and_origins():
    assert parse_period("1M") == pd.DateOffset(months=1)
    assert parse_period("1q") == pd.DateOffset(months=3)
    assert parse_period("14D") == pd.DateOffset(days=14)
    with pytest.raises(ConfigError, match="like 14D"):
        parse_period("monthly")
    got = origin_times(pd.Timestamp("2025-01-31"), pd.Timestamp("2025-04-30"), parse_period("1M"))
    assert [f"{t:%m-%d}" for t in got] == ["01-31", "02-28", "03-28", "04-28"]


@pytest.mark.slow
def test_backtest_over_six_origins(trained, fast_config):
    result, data = trained
    # LightGBM alone (no logistic half to blend in): what is checked here (origins, schedules,
    # reused fits, each origin's model that of `train --as-of`) holds for any recipe, and each
    # of the seven trainings then costs half as much
    fast_config = fast_config.with_overrides(train__blend=False)
    bt = backtest(data, fast_config, "2024-09-01", "2025-02-01", "1M", "3M")
    table = bt.table
    assert table["origin"].nunique() == 6
    assert list(dict.fromkeys(table["schedule"])) == ["every 1M", "every 3M", NEVER]
    fresh = table[table["schedule"] == "every 1M"]
    assert (fresh["model_age_days"] == 0).all()
    assert (table.loc[table["schedule"] == NEVER, "trained_at"] == pd.Timestamp("2024-09-01")).all()
    every3 = table[table["schedule"] == "every 3M"]
    assert sorted(every3["trained_at"].unique()) == [pd.Timestamp("2024-09-01"), pd.Timestamp("2024-12-01")]
    assert fresh[["roc_auc", "brier", "ece"]].notna().all().all()
    assert (fresh["roc_auc"] > 0.6).all()
    assert len(bt.summary) == 3 and bt.summary.loc[0, "roc_auc_change"] == 0.0
    assert bt.summary["trainings"].tolist() == [6, 2, 1]
    assert len(cost_sentences(bt.summary)) == 2
    assert "every 3M" in bt.text()

    # the model of an origin is the one `train --as-of origin` fits: same rows, same scores
    origin = pd.Timestamp("2024-12-01")
    row = bt.trainings.set_index("trained_at").loc[origin]
    reference = train(data, fast_config, as_of=origin)
    assert row["rows"] == len(reference.training_set.frame)
    assert row["positives"] == int(reference.training_set.frame["label"].sum())
    assert np.isclose(fresh.set_index("origin").loc[origin, "roc_auc"],
                      _auc_at(data, reference.model, origin, fast_config))


def _auc_at(data, model, origin, config):
    from convert.features.engine import build_features
    from convert.features.labels import build_labels
    from convert.model.metrics import roc_auc

    labels = build_labels(data.con, [origin], config.labels.horizon_days)
    fs = build_features(data.con, labels, model.features_config(config.features), model.spec_.event_types)
    frame = labels.merge(fs.frame, on=["lead_id", "as_of"])
    return roc_auc(frame["label"], model.predict_proba(frame)[:, 1])


def test_an_origin_whose_horizon_is_not_over_is_refused(trained, fast_config):
    _, data = trained
    with pytest.raises(InsufficientDataError, match="cannot be judged.*--to 2025-04-02"):
        backtest(data, fast_config, "2025-01-01", "2025-06-01", "1M")
    with pytest.raises(InsufficientDataError, match="Start the backtest later"):
        backtest(data, fast_config, "2023-04-01", "2023-05-01", "1M")
