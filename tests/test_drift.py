"""Drift: PSI flags a deliberately shifted feature and nothing in a resample of the same period."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from convert.analysis.drift import (
    SHIFTED,
    STABLE,
    drift_table,
    label_delay,
    psi_categorical,
    psi_numeric,
    score_drift,
)
from convert.config import Config, DriftConfig
from convert.exceptions import ConfigError

SHIFTED_FEATURE = "days_since_last_touch"


def test_psi_is_zero_for_the_same_sample_and_large_for_a_shift():
    rng = np.random.default_rng(0)
    x = rng.normal(size=20_000)
    assert psi_numeric(x, x) == pytest.approx(0.0, abs=1e-12)
    assert psi_numeric(x, rng.normal(size=20_000)) < 0.01
    assert psi_numeric(x, rng.normal(loc=1.0, size=20_000)) > 0.25
    # a feature that stops being filled in drifts too: missing values have a bin of their own
    y = x.copy()
    y[: len(y) // 2] = np.nan
    assert psi_numeric(x, y) > 0.25


def test_psi_handles_ties_and_new_categories():
    zeros = np.r_[np.zeros(9_000), np.arange(1_000.0)]
    assert psi_numeric(zeros, zeros[::-1]) == pytest.approx(0.0, abs=1e-12)
    ref = pd.Series(["a"] * 500 + ["b"] * 500)
    assert psi_categorical(ref, ref.sample(frac=1.0, random_state=1)) == pytest.approx(0.0, abs=1e-9)
    assert psi_categorical(ref, pd.Series(["a"] * 500 + ["c"] * 500)) > 1.0  # "c" never seen in training


def test_drift_thresholds_are_validated():
    with pytest.raises(ConfigError, match="watch_threshold"):
        Config.from_dict({"report": {"drift": {"watch_threshold": 0.5, "feature_threshold": 0.2}}})
    assert Config.from_dict({}).report.drift == DriftConfig()


@pytest.fixture(scope="module")
def window(trained):
    """The training window of the small simulated CRM's model, and a resample of it."""
    result, _ = trained
    reference = result.training_set.frame.loc[result.split.masks["train"]].reset_index(drop=True)
    resample = reference.sample(n=len(reference), replace=True, random_state=11).reset_index(drop=True)
    return result, reference, resample


def test_a_resample_of_the_training_window_flags_nothing(window, fast_config):
    result, reference, resample = window
    model = result.model
    table = drift_table(reference, resample, model.catalog_, fast_config.report.drift, model.spec_.names)
    assert len(table) == len(model.spec_.names)
    assert (table["status"] == STABLE).all(), table.head()
    sd = score_drift(model.predict_proba(reference)[:, 1] * 100, model.predict_proba(resample)[:, 1] * 100,
                     fast_config.report.drift)
    assert sd.status == STABLE


def test_a_shifted_feature_is_flagged_and_only_it(window, fast_config):
    result, reference, resample = window
    shifted = resample.copy()
    shifted[SHIFTED_FEATURE] = shifted[SHIFTED_FEATURE] + 45.0  # everyone idle for 45 more days
    table = drift_table(reference, shifted, result.model.catalog_, fast_config.report.drift)
    flagged = table.loc[table["status"] == SHIFTED, "feature"].tolist()
    assert flagged == [SHIFTED_FEATURE]
    assert table.loc[0, "description"].startswith("Days since")


@pytest.mark.slow  # builds the whole report twice
def test_the_report_drift_section_flags_the_shifted_feature(trained, window, fast_config):
    from convert.analysis.report import ReportInputs, build_report

    result, data = trained
    _, _, resample = window
    current = resample.head(3_000).copy()
    current[SHIFTED_FEATURE] = current[SHIFTED_FEATURE] + 45.0
    inputs = ReportInputs(result.model, "sim/1", pd.Timestamp("2025-07-01"), result.training_set, result.split,
                          result.evaluation, current, data.frame("leads"))
    config = fast_config.with_overrides(report__explain_rows=300, report__beeswarm_features=5,
                                        report__dependence_features=2)
    report = build_report(inputs, config)
    assert report.drift.loc[report.drift["status"] == SHIFTED, "feature"].tolist() == [SHIFTED_FEATURE]
    section = next(s for s in report.sections if s.id == "drift").body
    assert f'<tr class="shifted"><td class="text">{SHIFTED_FEATURE}</td>' in section
    assert "1 shifted" in section
    assert report.metrics()["drift_features_shifted"] == 1.0

    inputs.current = resample.head(3_000)  # the same period: nothing flagged
    calm = build_report(inputs, config)
    assert (calm.drift["status"] == STABLE).all()


def test_label_delay_counts_what_cannot_be_judged_yet():
    t = pd.Timestamp("2025-07-01")
    leads = pd.DataFrame(
        {
            "created_at": pd.to_datetime(["2025-01-01", "2025-05-01", "2025-06-15", "2025-06-20", "2025-06-25",
                                          "2025-08-01"]),
            "converted_at": pd.to_datetime(["2025-02-01", None, "2025-06-20", "2025-07-10", None, None]),
            "disqualified_at": pd.to_datetime([None, None, None, None, "2025-06-30", None]),
        }
    )
    d = label_delay(leads, t, 90)
    assert d.latest_judged_as_of == pd.Timestamp("2025-04-02")
    assert d.open_leads == 2  # L2 and L4 (converts only after t); L6 is not created yet
    assert d.open_unjudged == 2
    assert (d.recent_leads, d.recent_converted, d.recent_disqualified) == (4, 1, 1)
    assert d.median_days_to_conversion == pytest.approx((31 + 5) / 2)
    assert set(d.table()["measure"]) >= {"horizon (days)", "open leads at the as-of time"}
