"""Simulator regimes: each one has the property it claims, and the default story is untouched."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from convert import load
from convert.cli import main
from convert.config import Config
from convert.exceptions import ConfigError
from convert.features.engine import build_features
from convert.features.labels import build_labels
from convert.schema import Leads, Stages
from convert.simulator.crm import ATTRIBUTE_EFFECTS, REGIMES, Regime, generate_crm

TABLES = ("leads", "accounts", "events", "stages")


def _leads(folder: Path) -> pd.DataFrame:
    frame = pd.read_csv(folder / "leads.csv", dtype=str, keep_default_na=False)
    for col in (Leads.created_at, Leads.converted_at, Leads.disqualified_at):
        frame[col] = pd.to_datetime(frame[col].replace("", None), utc=True, format="ISO8601")
    return frame


def test_default_regime_writes_the_same_bytes_as_no_regime(tmp_path: Path) -> None:
    generate_crm(tmp_path / "a", n_leads=600, seed=11, chunk_leads=250)
    generate_crm(tmp_path / "b", n_leads=600, seed=11, chunk_leads=250, regime="default")
    generate_crm(tmp_path / "c", n_leads=600, seed=11, chunk_leads=250, regime=Regime(name="x"))
    for table in TABLES:
        a = (tmp_path / "a" / f"{table}.csv").read_bytes()
        assert a == (tmp_path / "b" / f"{table}.csv").read_bytes()
        assert a == (tmp_path / "c" / f"{table}.csv").read_bytes()


def test_short_history_spans_four_months(tmp_path: Path) -> None:
    summary = generate_crm(tmp_path, n_leads=1500, seed=3, regime="short", bad_rows=False)
    assert summary.start == "2025-09-01" and summary.regime.months == 4
    leads = _leads(tmp_path)
    created = leads[Leads.created_at]
    assert created.min() >= pd.Timestamp("2025-09-01", tz="UTC")
    assert created.max() <= pd.Timestamp("2025-12-31 23:59:59", tz="UTC")
    # leads all the way through: each of the four months has a fair share
    per_month = created.dt.month.value_counts()
    assert sorted(per_month.index) == [9, 10, 11, 12] and per_month.min() > 0.15 * len(leads)
    events = pd.read_csv(tmp_path / "events.csv", dtype=str)
    occurred = pd.to_datetime(events["occurred_at"], utc=True, format="ISO8601")
    assert occurred.max() <= pd.Timestamp("2025-12-31 23:59:59", tz="UTC")
    with pytest.raises(ConfigError, match="give end only"):
        generate_crm(tmp_path / "x", n_leads=100, regime="short", start="2025-01-01")


@pytest.mark.slow
def test_open_population_is_never_disqualified_and_only_grows(tmp_path: Path) -> None:
    generate_crm(tmp_path / "open", n_leads=3000, seed=5, regime="open", bad_rows=False)
    generate_crm(tmp_path / "base", n_leads=3000, seed=5, start="2025-01-01", bad_rows=False)
    leads, base = _leads(tmp_path / "open"), _leads(tmp_path / "base")
    assert leads[Leads.created_at].min() >= pd.Timestamp("2025-01-01", tz="UTC")
    assert leads[Leads.disqualified_at].isna().all()
    assert base[Leads.disqualified_at].notna().mean() > 0.05  # the same story does disqualify
    stages = pd.read_csv(tmp_path / "open" / "stages.csv", dtype=str)
    assert "disqualified" not in set(stages[Stages.stage])
    # nothing else changes: the same leads convert at the same times
    pd.testing.assert_series_equal(leads[Leads.converted_at], base[Leads.converted_at])
    # the open population at the start of each month only grows
    open_counts = []
    for month in pd.date_range("2025-02-01", "2025-12-01", freq="MS", tz="UTC"):
        alive = (leads[Leads.created_at] < month) & ~(leads[Leads.converted_at] < month)
        open_counts.append(int(alive.sum()))
    assert all(b > a for a, b in zip(open_counts, open_counts[1:], strict=False))


@pytest.mark.slow
def test_drift_shifts_the_base_rate_over_time(tmp_path: Path) -> None:
    rates = {}
    for name, regime in (("drift", "drift"), ("default", None)):
        generate_crm(tmp_path / name, n_leads=6000, seed=9, regime=regime, bad_rows=False)
        leads = _leads(tmp_path / name)
        created = leads[Leads.created_at]
        # conversions within 180 days, on leads created in the same months two years apart
        # (fully observed, seasonality alike)
        quick = (leads[Leads.converted_at] - created) < pd.Timedelta(days=180)
        early = (created >= pd.Timestamp("2023-01-01", tz="UTC")) & (created < pd.Timestamp("2023-07-01", tz="UTC"))
        late = (created >= pd.Timestamp("2025-01-01", tz="UTC")) & (created < pd.Timestamp("2025-07-01", tz="UTC"))
        rates[name] = (quick[early].mean(), quick[late].mean())
    early_rate, late_rate = rates["drift"]
    assert late_rate > 1.8 * early_rate  # +1.0 log-odds between the two half-years
    base_early, base_late = rates["default"]
    assert abs(np.log(base_late / base_early)) < 0.25  # the default story has no such shift
    assert REGIMES["drift"].drift == 1.5


@pytest.mark.slow
def test_additive_regime_writes_relevant_and_irrelevant_attributes(tmp_path: Path) -> None:
    summary = generate_crm(tmp_path, n_leads=8000, seed=13, regime="additive", bad_rows=False)
    effects = summary.regime.attribute_effects()
    assert len(effects) == 30
    relevant = {k: v for k, v in effects.items() if v}
    assert list(relevant.values()) == list(ATTRIBUTE_EFFECTS)
    leads = pd.read_csv(tmp_path / "leads.csv", dtype=str, keep_default_na=False)
    assert set(effects) <= set(leads.columns)
    converted = (leads[Leads.converted_at] != "").to_numpy()
    kinds = {e["column"]: e["kind"] for e in summary.extra_attributes()}
    n = len(leads)
    for name, effect in effects.items():
        raw = leads[name].replace("", None)
        assert 0.01 < raw.isna().mean() < 0.06, name  # a few empty cells
        if kinds[name] == "categorical":
            assert effect == 0.0
            table = pd.crosstab(raw.fillna("?"), converted)
            expected = np.outer(table.sum(axis=1), table.sum(axis=0)) / table.to_numpy().sum()
            chi2 = float(((table.to_numpy() - expected) ** 2 / expected).sum())
            dof = (table.shape[0] - 1) * (table.shape[1] - 1)
            assert chi2 < dof + 5 * np.sqrt(2 * dof), name  # irrelevant: independent of the outcome
            continue
        x = raw.astype(float)
        ok = x.notna().to_numpy()
        r = np.corrcoef(x[ok], converted[ok])[0, 1]
        z = r * np.sqrt(ok.sum())
        if effect == 0.0:
            assert abs(z) < 4.0, (name, r)
        else:
            assert np.sign(r) == np.sign(effect), (name, r)
            if abs(effect) >= 0.35:
                assert abs(z) > 5.0, (name, r)
    assert n == 8000


def test_regime_exports_load_and_feed_the_extra_attributes(tmp_path: Path) -> None:
    regime = dataclasses.replace(REGIMES["open"], attributes=5)
    summary = generate_crm(tmp_path, n_leads=800, seed=2, regime=regime)
    config = Config().with_overrides(features__extra_attributes=summary.extra_attributes())
    data = load(tmp_path, config)
    try:
        frame, _ = data.attributes()
        assert {"attr_01", "attr_05"} <= {c.split(".")[-1] for c in frame.columns}
        dq = data.con.execute(f"SELECT count({Leads.disqualified_at}) FROM leads").fetchall()[0]
        assert dq == (0,)  # an all-empty column loads (typed by the contract), not a crash
        labels = build_labels(data.con, [pd.Timestamp("2025-10-01")], 60)
        features = build_features(data.con, labels, config.features).frame
        assert features["x_attr_01"].notna().mean() > 0.9
        assert features["x_attr_05"].dtype.name in ("category", "object", "string", "str")
    finally:
        data.close()


def test_regime_arguments_are_checked(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="unknown regime"):
        generate_crm(tmp_path, n_leads=10, regime="nope")
    with pytest.raises(ConfigError, match="months"):
        Regime(months=0)
    with pytest.raises(ConfigError, match="engagement"):
        Regime(engagement=-1.0)


def test_generate_command_takes_a_preset_and_overrides(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    main(["generate", "--out", str(tmp_path / "a"), "--leads", "300", "--regime", "open",
          "--months", "6", "--attributes", "5", "--clean"])
    out = capsys.readouterr().out
    assert "regime open (modified): 6 months, never disqualified, 5 extra attributes" in out
    assert "- {table: leads, column: attr_05, kind: categorical}" in out
    leads = _leads(tmp_path / "a")
    assert leads[Leads.created_at].min() >= pd.Timestamp("2025-07-01", tz="UTC")
    assert leads[Leads.disqualified_at].isna().all() and "attr_05" in leads.columns
    # an explicit --start wins over a preset's history length
    main(["generate", "--out", str(tmp_path / "b"), "--leads", "300", "--regime", "short",
          "--start", "2025-03-01", "--clean"])
    assert _leads(tmp_path / "b")[Leads.created_at].min() < pd.Timestamp("2025-05-01", tz="UTC")
    with pytest.raises(SystemExit) as exc:
        main(["generate", "--out", str(tmp_path / "c"), "--regime", "bogus"])
    assert exc.value.code == 2 and "--regime must be one of" in capsys.readouterr().err
