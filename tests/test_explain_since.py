"""Issue 17, parts 4 and 5: `explain --since` (one lead's exact movements between two as-of
times) and the report's movements section, checked against the score path of
:mod:`convert.scoring.changes` (history rows -> previous scores -> compare)."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import FAST, flat_table

from convert.analysis.report import SECTION_IDS, change_bins
from convert.cli import main
from convert.schema import ScoreChanges, ScoreOutput
from convert.scoring.changes import (
    DECLINING,
    IMPROVING,
    NEW,
    STEADY,
    UNKNOWN,
    Changes,
    compare,
    previous_features,
    previous_scores,
)
from convert.scoring.score import feature_rows, score_frame
from convert.steps.explain import explain_step
from convert.steps.report import movements_since, report_step

AS_OF, SINCE = pd.Timestamp("2025-06-01"), pd.Timestamp("2025-05-01")
TRENDS = [IMPROVING, STEADY, DECLINING, NEW, UNKNOWN]


def score_path(data, model, since, as_of, config) -> tuple[pd.DataFrame, Changes]:
    """The changes as `score` computes them: a history run at *since*, then a run at *as_of*."""
    history = score_frame(model, feature_rows(data, model, since, config), config.scoring, "m/1",
                          pd.Timestamp("2025-07-01"))
    now = feature_rows(data, model, as_of, config)
    previous = previous_scores(history, as_of)
    changes = compare(model, now, previous, previous_features(data, model, previous, config), config.scoring, "m/1")
    return now, changes


@pytest.fixture(scope="module")
def setup(trained, fast_config, tmp_path_factory):
    result, data = trained
    tmp = tmp_path_factory.mktemp("since")
    bundle = result.model.save(tmp / "bundle")
    config = tmp / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    now, changes = score_path(data, result.model, SINCE, AS_OF, fast_config)
    return bundle, config, now, changes, tmp


def _cli(sim_export, setup, *args: str) -> list[str]:
    bundle, config, *_, tmp = setup
    return ["--data", str(sim_export), "--config", str(config), "--rejects", str(tmp / "rejects.csv"), *args]


def test_explain_since_prints_the_exact_movements_of_the_score_path(trained, fast_config, sim_export, setup, capsys):
    bundle, _, now, changes, tmp = setup
    frame = changes.frame
    assert changes.exact.sum() > 100
    i = int(np.argmax(np.where(changes.exact, np.abs(frame[ScoreChanges.score_change].fillna(0)), -1)))
    lead = frame[ScoreOutput.lead_id].iloc[i]
    before, change = int(frame[ScoreChanges.previous_score].iloc[i]), int(frame[ScoreChanges.score_change].iloc[i])
    assert abs(change) >= 10
    png = tmp / "change.png"
    main(["explain", *_cli(sim_export, setup, "--as-of", "2025-06-01", "--since", "2025-05-01", "--lead-id", lead,
                           "--model", str(bundle), "--plot", str(png))])
    out = capsys.readouterr().out
    assert (f"lead {lead}: score {before} as of 2025-05-01 -> {before + change} as of 2025-06-01 ({change:+d}), "
            "both under today's model") in out
    assert f"sum of movements {change:+d} = {before + change} - {before}" in out
    assert png.exists() and png.stat().st_size > 10_000

    result = explain_step(sim_export, fast_config, AS_OF, lead, str(bundle), None, str(tmp / "rejects.csv"),
                          since=SINCE)
    table = result.table
    assert (result.score_then, result.score_now) == (before, before + change)
    assert int(table["points"].sum()) == change  # exact, in integer points
    names = changes.names
    expected = {names[j]: int(changes.movements[i, j]) for j in np.flatnonzero(changes.movements[i])}
    assert dict(zip(table["feature"], table["points"].astype(int), strict=True)) == expected
    assert table["points"].abs().is_monotonic_decreasing
    # the same words as the score table's change_1..3, with the value then and now
    said = set(frame.loc[i, list(ScoreChanges.CHANGES)].dropna())
    assert said and said <= set(table["sentence"])
    assert table["sentence"].str.match(r"^[+-]\d+ \S").all()
    for row in table.itertuples():
        assert row.sentence.startswith(f"{row.points:+d} ")
        assert row.value_now in out and re.search(rf"\b{re.escape(row.feature)}\b", out)


def test_explain_since_errors_say_what_and_how_to_fix(sim_export, setup, tmp_path, capsys):
    bundle, _, now, changes, _ = setup
    lead = changes.frame[ScoreOutput.lead_id].iloc[int(np.flatnonzero(changes.exact)[0])]
    new = changes.frame.loc[changes.frame[ScoreChanges.trend] == NEW, ScoreOutput.lead_id].iloc[0]
    cases = [
        (["--as-of", "2025-06-01", "--since", "2025-06-01", "--lead-id", lead],
         "--since 2025-06-01 00:00:00 is not earlier than --as-of 2025-06-01 00:00:00: give a --since before"),
        (["--as-of", "2025-06-01", "--since", "2025-05-01", "--lead-id", new],
         f"lead {new!r} was not in the population at --since 2025-05-01"),
        (["--as-of", "2025-06-01", "--since", "2025-05-01", "--lead-id", new], "choose a --since after the lead"),
        (["--as-of", "2025-06-01", "--since", "not a time", "--lead-id", lead], "--since"),
    ]
    for args, message in cases:
        with pytest.raises(SystemExit) as code:
            main(["explain", *_cli(sim_export, setup, *args, "--model", str(bundle), "--plot", str(tmp_path / "x.png"))])
        assert code.value.code == 2
        err = capsys.readouterr().err
        assert message in err, err
    flat = tmp_path / "flat.csv"
    flat_table(60).to_csv(flat, index=False)
    with pytest.raises(SystemExit) as code:  # refused before any model is looked for
        main(["explain", "--data", str(flat), "--since", "2025-05-01", "--lead-id", "P00001"])
    assert code.value.code == 2
    err = capsys.readouterr().err
    assert "is a flat table" in err and "drop --since" in err
    assert not (tmp_path / "x.png").exists()
    with pytest.raises(SystemExit) as code:  # the report's movements need an earlier time too
        main(["report", "--data", str(sim_export), "--as-of", "2025-06-01", "--since", "2025-07-01",
              "--out", str(tmp_path / "r.html")])
    assert code.value.code == 2
    assert "--since 2025-07-01 00:00:00 is not earlier than --as-of 2025-06-01" in capsys.readouterr().err
    assert not (tmp_path / "r.html").exists()


def test_report_movements_match_the_trend_counts_of_compare(trained, fast_config, setup):
    result, data = trained
    _, _, now, changes, _ = setup
    then = feature_rows(data, result.model, SINCE, fast_config)
    mv = movements_since(result.model, now, then, SINCE, fast_config, "m/1")
    expected = changes.frame[ScoreChanges.trend].value_counts().reindex(TRENDS, fill_value=0)
    assert list(mv.counts.index) == TRENDS
    assert mv.counts.tolist() == expected.tolist()
    assert mv.counts[NEW] > 0 and mv.counts[UNKNOWN] == 0 and mv.counts.sum() == len(now)
    np.testing.assert_array_equal(mv.score_change,
                                  changes.frame[ScoreChanges.score_change].to_numpy("float64", na_value=np.nan))
    by = changes.points_by_movement()
    by = by[(changes.movements != 0).any(axis=0)[[changes.names.index(n) for n in by.index]]]
    assert mv.features["feature"].tolist() == by.index.tolist()
    assert mv.features["total_points"].tolist() == by.tolist()
    assert (mv.features["points_up"] + mv.features["points_down"] == mv.features["total_points"]).all()
    assert mv.left == int((~then[ScoreOutput.lead_id].isin(now[ScoreOutput.lead_id])).sum()) > 0
    bins = change_bins(mv.score_change, fast_config.scoring.trend_min_change)
    assert bins["leads"].sum() == mv.counts[[IMPROVING, STEADY, DECLINING]].sum()
    per_trend = bins.groupby("trend")["leads"].sum()
    assert per_trend.to_dict() == {t: int(mv.counts[t]) for t in (DECLINING, IMPROVING, STEADY)}
    # an earlier time before any lead was open: everyone is new, nothing moved
    none = movements_since(result.model, now, then.iloc[:0], SINCE, fast_config, "m/1")
    assert none.counts[NEW] == len(now) and none.counts.drop(NEW).sum() == 0
    assert none.features.empty and none.left == 0 and np.isnan(none.score_change).all()


def test_change_bins_keep_the_steady_band_apart():
    change = np.array([-30, -20, -19, -5, -4, -1, 0, 0, 1, 4, 5, 9, 10, 19, 20, 44, np.nan])
    bins = change_bins(change, 5)
    assert bins["score change"].tolist() == ["<= -20", "-19 to -10", "-9 to -5", "-4 to -1", "0", "+1 to +4",
                                             "+5 to +9", "+10 to +19", ">= +20"]
    assert bins["leads"].tolist() == [2, 1, 1, 2, 2, 2, 2, 2, 2]
    assert bins["share"].sum() == pytest.approx(1.0)
    one = change_bins(change, 1)
    assert one["score change"].tolist() == ["<= -20", "-19 to -10", "-9 to -1", "0", "+1 to +9", "+10 to +19",
                                            ">= +20"]
    assert one.set_index("score change").loc["0", "trend"] == STEADY


@pytest.mark.slow  # the whole report (hold-out evaluation, importance, drift) from a bundle
def test_report_has_the_movements_section(trained, fast_config, sim_export, setup):
    result, data = trained
    bundle, *_, tmp = setup
    config = fast_config.with_overrides(report__explain_rows=300, report__beeswarm_features=5,
                                        report__dependence_features=2)
    summary = report_step(sim_export, config, AS_OF, tmp / "report.html", str(bundle),
                          rejects=str(tmp / "rejects.csv"), log_to_mlflow=False)
    since = AS_OF - pd.Timedelta(days=config.report.movements_days)  # the default: a week earlier
    _, changes = score_path(data, result.model, since, AS_OF, config)
    expected = changes.frame[ScoreChanges.trend].value_counts().reindex(TRENDS, fill_value=0)
    r = summary.report
    assert r.movements is not None and r.movements.since == since
    assert r.movements.counts.tolist() == expected.tolist()
    assert [s.id for s in r.sections] == list(SECTION_IDS)
    body = next(s for s in r.sections if s.id == "movements").body
    for trend, n in expected.items():
        assert f'<td class="text">{trend}</td><td>{n:,}</td>' in body
    assert "compared with their scores at 2025-05-25" in body
    assert body.count("<img ") == 1 and "Features that moved the most points" in body
    top = changes.points_by_movement().index[0]
    assert f'<td class="text">{top}</td>' in body
    assert r.metrics()["movements_improving"] == expected[IMPROVING]
    assert any(line.startswith("movements since 2025-05-25: ") for line in summary.lines())
    html = (tmp / "report.html").read_text(encoding="utf-8")
    assert '<section id="movements">' in html and "Movements since the previous scoring run" in html


def test_change_plots_draw_data_text_literally_and_any_range(tmp_path):
    from convert.analysis.plots import plot_change_waterfall, plot_score_changes

    odd = "Paid $5 \\frac{ $x"
    table = pd.DataFrame({"points": [5, -3, *([1] * 14)],
                          "sentence": [f"+5 Had 2 '{odd}' events (was 0)", "-3 Came from 50% {off} (was web)",
                                       *(["+1 Viewed 3 pages (was 1)"] * 14)]})
    plot_change_waterfall("L$1", 40, 56, table, "2025-05-01", "2025-06-01").savefig(tmp_path / "w.png")
    plot_score_changes(np.array([-90.0, 0, 0, 3, 95, np.nan]), 5).savefig(tmp_path / "h.png")
    plot_score_changes(np.array([np.nan]), 5).savefig(tmp_path / "empty.png")  # nobody had a score then
    assert all((tmp_path / f).stat().st_size > 5_000 for f in ("w.png", "h.png", "empty.png"))
