"""The leakage guard: the screen's figures, its decisions, and the stop in both modes."""

from __future__ import annotations

import shutil

import numpy as np
import pandas as pd
import pytest
from tests.conftest import FAST

from convert import load
from convert.cli import main
from convert.config import Config, LeakageConfig
from convert.exceptions import InsufficientDataError, LeakageError
from convert.model.leakage import detect_kind, screen, single_column_auc
from convert.steps import screen_attributes


def _planted(n: int = 4000, seed: int = 0) -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(seed)
    y = (rng.random(n) < 0.3).astype(int)
    frame = pd.DataFrame(
        {
            "honest_number": rng.normal(0, 1, n) + 0.5 * y,
            "honest_category": np.where(rng.random(n) < 0.5 + 0.1 * y, "a", "b"),
            "copied_outcome": np.where(y ^ (rng.random(n) < 0.04), "won", "open"),
            "filled_after": np.where(np.where(y == 1, rng.random(n) < 0.7, rng.random(n) < 0.1), "rated", None),
            "u_shaped": np.abs(rng.normal(0, 1, n)) * np.where(y == 1, 3.0, 0.2) * rng.choice([-1, 1], n),
        }
    )
    return frame, y


def test_screen_flags_planted_leaks_and_only_them():
    frame, y = _planted()
    report = screen(frame, y, LeakageConfig())
    by = {c.column: c for c in report.columns}
    assert by["copied_outcome"].reasons == ("auc",) and by["copied_outcome"].auc > 0.93
    assert by["filled_after"].reasons == ("fill_gap",)
    assert by["filled_after"].fill_converted == pytest.approx(0.7, abs=0.04)
    assert by["filled_after"].fill_unconverted == pytest.approx(0.1, abs=0.03)
    assert by["u_shaped"].reasons == ("auc",)  # binned: a non-monotone relation is caught too
    assert by["honest_number"].reasons == () and 0.55 < by["honest_number"].auc < 0.75
    assert by["honest_category"].reasons == ()
    assert [c.column for c in report.blocking] == ["copied_outcome", "filled_after", "u_shaped"]
    with pytest.raises(LeakageError) as err:
        report.check()
    assert err.value.report is report and "--exclude copied_outcome" in str(err.value)


def test_thresholds_are_configurable_and_decisions_recorded():
    frame, y = _planted()
    lax = screen(frame, y, LeakageConfig(max_auc=0.999, max_fill_gap=0.9))
    assert lax.suspects == []
    lax.check()  # nothing to stop for
    settled = screen(
        frame, y, LeakageConfig(exclude=("copied_outcome",)),
        excluded={"u_shaped": "mapping: measured after the call"}, allowed=["filled_after"],
    )
    settled.check()
    assert settled.excluded == {"copied_outcome": "leakage.exclude in the configuration",
                                "u_shaped": "mapping: measured after the call"}
    assert settled.allowed == ["filled_after"]
    card = settled.to_dict()
    assert card["thresholds"] == {"max_auc": 0.9, "max_fill_gap": 0.25}
    assert {c["column"]: c["decision"] for c in card["columns"]}["honest_number"] == "kept"
    assert settled.params()["leakage.allowed"] == "filled_after"
    disabled = screen(frame, y, LeakageConfig(enabled=False))
    assert disabled.columns == [] and disabled.lines() == ["leakage guard: disabled (leakage.enabled: false)"]


def test_out_of_fold_auc_does_not_reward_memorising_identifiers():
    rng = np.random.default_rng(1)
    y = (rng.random(2000) < 0.4).astype(int)
    ids = pd.Series([f"id{i}" for i in range(2000)])
    assert single_column_auc(ids, y, "categorical", LeakageConfig(), 42) == pytest.approx(0.5, abs=0.02)
    assert detect_kind(pd.Series(["1", "2.5", None])) == "numeric"
    assert detect_kind(pd.Series(["1", "x"])) == "categorical"
    with pytest.raises(InsufficientDataError):
        screen(pd.DataFrame({"a": ["x"] * 10}), np.array([1, 1, 0, 0, 0, 0, 0, 0, 0, 0]), LeakageConfig())


def _with_extras(sim_export, tmp_path) -> tuple:
    folder = tmp_path / "crm"
    shutil.copytree(sim_export, folder)
    leads = pd.read_csv(folder / "leads.csv", dtype=str, keep_default_na=False)
    rng = np.random.default_rng(2)
    won = leads["converted_at"] != ""
    leads["deal_note"] = np.where(won ^ (rng.random(len(leads)) < 0.03), "closed won", "in progress")
    leads["sales_rating"] = np.where(np.where(won, rng.random(len(leads)) < 0.8, rng.random(len(leads)) < 0.05),
                                     "A", "")
    leads.to_csv(folder / "leads.csv", index=False)
    return folder


@pytest.mark.slow
def test_event_mode_screens_extra_attributes_and_stops(sim_export, tmp_path, capsys):
    folder = _with_extras(sim_export, tmp_path)
    cfg = Config.from_dict(FAST)
    data = load(folder, cfg)
    with pytest.raises(LeakageError) as err:
        screen_attributes(data, cfg)
    assert {c.column for c in err.value.report.blocking} == {"deal_note", "sales_rating"}
    assert "utm_medium" not in str(err.value)  # the simulator's honest extra attribute
    # excluded columns leave the data and the configured features
    extra = [{"table": "leads", "column": "sales_rating", "kind": "categorical"},
             {"table": "leads", "column": "utm_medium", "kind": "categorical"}]
    cfg2 = cfg.with_overrides(leakage__exclude=("deal_note", "sales_rating"), features__extra_attributes=extra)
    report, cfg3 = screen_attributes(data, cfg2)
    assert set(report.excluded) == {"deal_note", "sales_rating"}
    assert [e.column for e in cfg3.features.extra_attributes] == ["utm_medium"]
    assert "sales_rating" not in data.frame("leads").columns
    data.close()
    # through the command line: exit code 2 before anything is trained or registered
    with pytest.raises(SystemExit) as code:
        main(["train", "--data", str(folder), "--rejects", str(tmp_path / "r.csv")])
    assert code.value.code == 2
    err_text = capsys.readouterr().err
    assert "deal_note: out-of-fold single-column ROC AUC" in err_text and "sales_rating: filled for" in err_text


def test_the_simulated_crm_is_not_stopped(sim_export):
    data = load(sim_export, Config.from_dict(FAST))
    report, _ = screen_attributes(data, Config.from_dict(FAST))
    assert [c.column for c in report.columns] == ["utm_medium"]
    assert report.suspects == [] and report.rows == len(data.frame("leads"))
    data.close()
