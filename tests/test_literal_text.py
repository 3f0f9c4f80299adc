"""Issue 14, finding 1: text from the data is never a format string.

An event type such as ``Meeting {owner.name}`` (an un-rendered CRM template) used to train
fine and then crash every ``score`` in ``str.format``. Braces, ``%``, quotes and newlines
in event types and values must score, explain and print literally.
"""

from __future__ import annotations

import html

import pandas as pd
import pytest

from convert.cli import main
from convert.features.catalog import FeatureDef, escape, event_words, render

ODD_TYPES = {
    "chat_started": "Meeting {owner.name}",
    "case_study_view": "50% off",
    "trial_signup": 'Said "yes"\n{0} %s {value',
}
ODD_SOURCE = {"social": "50% {off} 'x'"}


def test_render_replaces_only_the_value_placeholder():
    assert render("Had {value} 'Meeting {owner.name}' events", "3") == "Had 3 'Meeting {owner.name}' events"
    assert render("Had {value} '" + escape("{value} %s {0}") + "' events", "2") == "Had 2 '{value} %s {0}' events"
    did, never = event_words("Meeting {owner.name}")
    f = FeatureDef("n", "engagement", "engagement", "numeric", "count", "d", did, never)
    assert f.describe(4) == "Had 4 'Meeting {owner.name}' events"
    assert f.describe(0) == "Had no 'Meeting {owner.name}' events"
    # a bundle written before the fix stored the type unescaped: it renders literally too
    old = FeatureDef("n", "engagement", "engagement", "numeric", "count", "d", "Had {value} '50% {off}' events")
    assert old.describe(1) == "Had 1 '50% {off}' event"  # one event: singular (issue 17)


@pytest.fixture(scope="module")
def odd_export(sim_export, tmp_path_factory):
    folder = tmp_path_factory.mktemp("odd")
    for name in ("leads", "accounts", "events", "stages"):
        frame = pd.read_csv(sim_export / f"{name}.csv", dtype=str, keep_default_na=False)
        if name == "events":
            frame["event_type"] = frame["event_type"].replace(ODD_TYPES)
        if name == "leads":
            frame["lead_source"] = frame["lead_source"].replace(ODD_SOURCE)
        frame.to_csv(folder / f"{name}.csv", index=False)
    return folder


@pytest.mark.slow
def test_braces_percent_quotes_and_newlines_score_explain_and_report_literally(
    odd_export, mlflow_store, tmp_path, capsys
):
    import yaml
    from tests.conftest import FAST

    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    bundle = tmp_path / "bundle"
    main(["train", "--data", str(odd_export), "--config", str(config), "--save", str(bundle)])
    capsys.readouterr()

    out = tmp_path / "scores.parquet"
    main(["score", "--data", str(odd_export), "--as-of", "2025-07-01", "--out", str(out), "--model", str(bundle),
          "--config", str(config), "--top", "20"])
    printed = capsys.readouterr().out
    scores = pd.read_parquet(out)
    texts = pd.concat([scores[c] for c in ("reason_1", "reason_2", "reason_3", "risk_1", "risk_2", "risk_3")])
    texts = texts.dropna()
    for odd in ODD_TYPES.values():
        assert texts.str.contains(odd, regex=False).any(), odd  # printed as written, braces and all
    assert "{value}" not in " ".join(texts.str.replace(ODD_TYPES["trial_signup"], "", regex=False))
    assert "Meeting {owner.name}" in printed or "50% off" in printed

    cols = ["reason_1", "reason_2", "reason_3", "risk_1", "risk_2", "risk_3"]
    hit = scores[cols].apply(lambda c: c.fillna("").str.contains("Meeting {owner.name}", regex=False)).any(axis=1)
    lead = scores.loc[hit, "lead_id"].iloc[0]
    main(["explain", "--data", str(odd_export), "--as-of", "2025-07-01", "--lead-id", lead, "--model", str(bundle),
          "--config", str(config), "--plot", str(tmp_path / "w.png")])
    assert "Meeting {owner.name}" in capsys.readouterr().out
    assert (tmp_path / "w.png").stat().st_size > 0

    report = tmp_path / "report.html"
    main(["report", "--data", str(odd_export), "--as-of", "2025-07-01", "--out", str(report), "--model", str(bundle),
          "--config", str(config)])
    page = report.read_text(encoding="utf-8")
    assert html.escape("Meeting {owner.name}") in page
    assert html.escape("50% off") in page
    assert html.escape(ODD_SOURCE["social"]) in page  # a segment value of lead_source


def test_plots_draw_data_text_without_reading_it_as_mathtext(tmp_path):
    """A ``$`` pair in an event type or a segment value is not a matplotlib formula."""
    from convert.analysis.plots import plot_rates, plot_waterfall
    from convert.model.explain import LeadExplanation

    odd = "Paid $5 \\frac{ $x"
    table = pd.DataFrame({"feature": ["a", "b"], "family": ["fit", "engagement"], "value": [1, 2],
                          "raw_contribution": [0.2, -0.1], "points": [3, -2],
                          "sentence": [f"+3 Had 2 '{odd}' events", "-2 Came from 50% {off}"]})
    plot_waterfall(LeadExplanation("L$1", 0.2, 20, 19, table)).savefig(tmp_path / "w.png")
    plot_rates([odd, "50% {off}"], [0.1, 0.2], [0.05, 0.1], [0.2, 0.3], "by $source", "rate").savefig(tmp_path / "r.png")
    assert (tmp_path / "w.png").stat().st_size and (tmp_path / "r.png").stat().st_size


def test_every_plot_draws_data_text_literally_on_its_own_canvas():
    """One matplotlib setup: each figure of ``convert.analysis.plots`` runs under ``literal_text``,
    and its figures never pass through pyplot (no global figure left behind)."""
    import sys

    from convert.analysis import plots

    drawn = [name for name in plots.__all__ if name.startswith("plot_")]
    assert len(drawn) >= 18
    assert all(getattr(getattr(plots, name), "__wrapped__", None) for name in drawn)
    assert "matplotlib.pyplot" not in sys.modules or not sys.modules["matplotlib.pyplot"].get_fignums()
