"""The snapshot grid: ``auto`` spacing on short and long histories, explicit settings, windows."""

from __future__ import annotations

import pandas as pd
import pytest

from convert.config import Config
from convert.exceptions import ConfigError
from convert.features.labels import (
    FREQUENCIES,
    as_of_grid,
    auto_min_history_days,
    choose_grid,
    grid_for,
)

FIRST = pd.Timestamp("2023-01-05 10:00")
AS_OF = pd.Timestamp("2026-01-01")


def _days(a: pd.Timestamp, b: pd.Timestamp) -> float:
    return (b - a) / pd.Timedelta(days=1)


def test_auto_on_a_long_history_keeps_monthly_snapshots() -> None:
    grid = choose_grid(FIRST, AS_OF, 90)
    assert grid.frequency == "monthly" and grid.requested == "auto"
    assert grid.min_history_days == 60 and grid.min_history_auto  # capped at 60 days
    assert grid.counts == {"quarterly": 11, "monthly": 31}  # stops at the first spacing that suffices
    # exactly the grid the explicit monthly setting with 60 days gave before auto existed
    assert grid.times == as_of_grid(FIRST, AS_OF, 90, "monthly", 60)
    assert grid.times[0] == pd.Timestamp("2023-04-01") and grid.times[-1] == pd.Timestamp("2025-10-01")
    text = grid.describe()
    assert text.startswith("31 monthly snapshots from 2023-04-01 to 2025-10-01")
    assert "coarsest spacing with at least 24" in text


def test_auto_on_four_months_with_a_30_day_horizon_goes_daily() -> None:
    first, as_of = pd.Timestamp("2025-09-01 08:00"), pd.Timestamp("2026-01-01")
    grid = choose_grid(first, as_of, 30)
    span = _days(first, as_of - pd.Timedelta(days=30))  # about 91.7 days with known labels
    assert grid.min_history_days == round(0.1 * span) == 9
    assert grid.counts["weekly"] < 24 <= grid.counts["daily"]
    assert grid.frequency == "daily" and len(grid) == grid.counts["daily"] >= 80
    assert all(b - a == pd.Timedelta(days=1) for a, b in zip(grid.times, grid.times[1:], strict=False))
    assert grid.times[-1] + pd.Timedelta(days=30) <= as_of
    assert grid.times[0] >= first + pd.Timedelta(days=9)


def test_auto_on_twelve_months_with_a_60_day_horizon_goes_weekly() -> None:
    first, as_of = pd.Timestamp("2025-01-01 09:00"), pd.Timestamp("2026-01-01")
    grid = choose_grid(first, as_of, 60)
    assert grid.frequency == "weekly" and len(grid) >= 24
    assert grid.counts["biweekly"] < 24 and grid.counts["monthly"] < 24
    assert all(t.dayofweek == 0 for t in grid.times)  # Mondays


@pytest.mark.parametrize("minimum", [1, 5, 12, 24, 60, 200])
def test_auto_picks_the_coarsest_spacing_that_reaches_the_minimum(minimum: int) -> None:
    grid = choose_grid(FIRST, AS_OF, 90, min_as_of_times=minimum)
    counts = {f: len(choose_grid(FIRST, AS_OF, 90, f, 60).times) for f in FREQUENCIES}
    coarser = FREQUENCIES[FREQUENCIES.index(grid.frequency) + 1:]
    assert len(grid) == counts[grid.frequency] >= minimum
    assert all(counts[f] < minimum for f in coarser)


def test_auto_says_when_no_spacing_is_enough() -> None:
    grid = choose_grid(pd.Timestamp("2025-11-20"), AS_OF, 30)  # 12 days of known labels
    assert grid.frequency == "daily" and 0 < len(grid) < 24
    assert "no spacing reaches 24" in grid.describe()
    assert choose_grid(pd.Timestamp("2025-12-20"), AS_OF, 30).times == []


def test_explicit_settings_are_kept() -> None:
    for freq in FREQUENCIES:
        grid = choose_grid(FIRST, AS_OF, 90, freq, 60)
        assert grid.frequency == freq and grid.requested == freq and grid.counts == {}
        assert "as configured" in grid.describe()
    weekly = choose_grid(FIRST, AS_OF, 90, "weekly", 7)
    assert weekly.min_history_days == 7 and not weekly.min_history_auto
    assert weekly.times[0] == pd.Timestamp("2023-01-16")  # the first Monday after 7 days
    assert choose_grid(FIRST, AS_OF, 90, "quarterly", 0).times[0] == pd.Timestamp("2023-04-01")
    with pytest.raises(ValueError, match="unknown frequency"):
        choose_grid(FIRST, AS_OF, 90, "hourly")


def test_min_history_scales_with_the_history() -> None:
    assert auto_min_history_days(FIRST, AS_OF, 90) == 60
    assert auto_min_history_days(pd.Timestamp("2025-07-01"), AS_OF, 30) == 15
    assert auto_min_history_days(pd.Timestamp("2025-12-10"), AS_OF, 30) == 0  # no labelled span


def test_window_bounds_how_far_back_training_looks() -> None:
    full = choose_grid(FIRST, AS_OF, 90, "monthly", 60)
    grid = choose_grid(FIRST, AS_OF, 90, "monthly", 60, window_days=365)
    assert grid.window_start == pd.Timestamp("2024-10-03")
    assert grid.times == [t for t in full.times if t >= pd.Timestamp("2024-10-03")]
    assert len(grid) == 12 and "window from 2024-10-03" in grid.describe()
    # auto counts the snapshots inside the window: a one-year window needs a finer spacing
    auto = choose_grid(FIRST, AS_OF, 90, window_days=365)
    assert auto.frequency == "biweekly" and auto.times[0] >= pd.Timestamp("2024-10-03")
    # a window longer than the history changes nothing
    assert choose_grid(FIRST, AS_OF, 90, window_days=5000).times == choose_grid(FIRST, AS_OF, 90).times


def test_configuration_defaults_and_choices() -> None:
    labels = Config().labels
    assert labels.frequency == "auto" and labels.min_as_of_times == 24
    assert labels.min_history_days is None and labels.window_days is None
    cfg = Config.from_dict({"labels": {"frequency": "daily", "min_history_days": 7, "window_days": 90,
                                       "horizon_days": 30}})
    grid = grid_for(cfg.labels, pd.Timestamp("2025-06-01"), AS_OF)
    assert grid.frequency == "daily" and len(grid) == 91 and grid.min_history_days == 7
    for bad in ({"frequency": "hourly"}, {"min_as_of_times": 0}, {"window_days": 0}, {"min_history_days": -1}):
        with pytest.raises(ConfigError):
            Config.from_dict({"labels": bad})


def test_training_records_the_grid_it_used(trained) -> None:
    result, _ = trained
    grid = result.training_set.grid
    assert grid is not None and grid.requested == "auto"
    assert result.training_set.as_ofs == grid.times
    meta = result.model.metadata
    assert meta.frequency == grid.frequency and meta.as_of_grid is not None
    assert meta.as_of_grid["as_of_times"] == len(grid.times)
    assert meta.as_of_grid["description"] == grid.describe()
