"""The analyst report end to end: CLI, MLflow, and a real headless Chromium rendering it offline."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import yaml
from tests.cdp import Browser, find_chromium
from tests.conftest import FAST, missing

from convert.analysis.report import SECTION_IDS
from convert.cli import main

pytestmark = [pytest.mark.slow,  # one train, backtest and report through the CLI, then chromium
              pytest.mark.xdist_group("report")]  # one worker: the module fixture runs once

ARTIFACTS = Path(__file__).resolve().parents[1] / "artifacts"
AS_OF = "2025-07-01"

PAGE_STATE = """(async () => {
  const images = [...document.images];
  await Promise.all(images.map(i => i.decode().catch(() => null)));
  return {
    title: document.title,
    images: images.map(i => ({alt: i.alt, ok: i.complete && i.naturalWidth > 0,
                              height: i.getBoundingClientRect().height})),
    sections: [...document.querySelectorAll('section')].map(s => ({
      id: s.id, height: s.getBoundingClientRect().height,
      title: (s.querySelector('h2') || {}).textContent, tables: s.querySelectorAll('table').length})),
  };
})()"""


@pytest.fixture(scope="module")
def demo_report(sim_export, tmp_path_factory):
    """train -> backtest -> report through the command line, as `make demo` does, on the small CRM."""
    tmp = tmp_path_factory.mktemp("report")
    uri = f"sqlite:///{tmp / 'mlflow.db'}"
    config = tmp / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MLFLOW_TRACKING_URI", uri)
        mp.setenv("MLFLOW_REGISTRY_URI", uri)
        mp.chdir(tmp)
        import mlflow

        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        common = ["--data", str(sim_export), "--config", str(config), "--rejects", str(tmp / "rejects.csv")]
        main(["train", *common, "--save", str(tmp / "bundle")])
        # three origins are enough for the report's backtest section (tests/test_backtest.py
        # checks the backtest itself over six)
        main(["backtest", *common, "--from", "2024-12-01", "--to", "2025-02-01", "--every", "1M",
              "--retrain-every", "3M", "--out", str(tmp / "backtest")])
        main(["report", *common, "--as-of", AS_OF, "--out", str(tmp / "report.html"),
              "--backtest", str(tmp / "backtest")])
        from mlflow import MlflowClient

        client = MlflowClient()
        run_id = client.get_model_version("lead-conversion", "1").run_id
        artifacts = [a.path for a in client.list_artifacts(run_id, f"reports/{AS_OF}")]
        metrics = client.get_run(run_id).data.metrics
    return tmp / "report.html", artifacts, metrics, tmp


def test_report_is_one_self_contained_file_logged_to_the_model_run(demo_report, capsys):
    path, artifacts, metrics, tmp = demo_report
    text = path.read_text(encoding="utf-8")
    assert path.stat().st_size < 10_000_000
    for section in (*SECTION_IDS, "backtest"):
        assert f'<section id="{section}">' in text
    # nothing to fetch: no external URL in any src, href or CSS url(), no script at all
    assert not re.search(r"""(src|href)\s*=\s*["'](?!data:|#)""", text)
    assert "url(" not in text and "<script" not in text and "@import" not in text
    assert text.count('<img src="data:image/png;base64,') >= 15
    assert (tmp / "backtest" / "backtest.csv").exists() and (tmp / "backtest" / "backtest.png").exists()
    assert {f"reports/{AS_OF}/report.html", f"reports/{AS_OF}/drift.csv", f"reports/{AS_OF}/segments.csv"} <= set(artifacts)
    assert {"drift_score_psi", "drift_features_shifted", "label_delay_open_unjudged"} <= set(metrics)
    # the baselines' figures are those of training, on the very same hold-out
    assert "as recorded at training" in text
    for name in ("source_rate", "logistic_regression", "points_rule"):
        assert f"{metrics[f'baseline_{name}_roc_auc']:.4f}</td>" in text
    assert f"<b>{metrics['holdout_roc_auc']:.4f}" in text or f">{metrics['holdout_roc_auc']:.4f}</td>" in text


def test_report_renders_offline_in_headless_chromium(demo_report, capsys):
    path, *_ = demo_report
    binary = find_chromium()
    if binary is None:
        missing("no chromium on PATH: `apt-get install chromium` (tests/setup-services.sh does it as root)")
    url = path.resolve().as_uri()
    with Browser(binary) as browser:
        browser.open(url)
        state = browser.evaluate(PAGE_STATE)
        shot = browser.screenshot(ARTIFACTS / "report-screenshot.png")
        requested = browser.requested_urls()
    with capsys.disabled():
        print(f"\nreport screenshot: {shot}")

    assert state["title"].startswith("Lead scoring report")
    sections = {s["id"]: s for s in state["sections"]}
    assert list(sections) == [*SECTION_IDS, "backtest"]
    for s in sections.values():
        assert s["height"] > 200 and s["title"] and s["tables"] >= 1, s
    html_images = path.read_text(encoding="utf-8").count("<img ")
    assert len(state["images"]) == html_images >= 15
    broken = [i["alt"] for i in state["images"] if not (i["ok"] and i["height"] > 50)]
    assert not broken, f"images that did not render: {broken}"
    # the page asked for nothing but itself and its inline data: URLs
    assert requested, "the Network domain reported no request at all"
    assert all(u.startswith("data:") or u == url for u in requested), [u[:80] for u in requested
                                                                       if not u.startswith("data:")]
    assert shot.stat().st_size > 100_000


def test_report_of_an_empty_population_is_a_clear_error(demo_report, sim_export, capsys):
    *_, tmp = demo_report
    with pytest.raises(SystemExit) as code:
        main(["report", "--data", str(sim_export), "--as-of", "2020-01-01", "--model", str(tmp / "bundle"),
              "--out", str(tmp / "empty.html"), "--rejects", str(tmp / "rejects.csv")])
    assert code.value.code == 2
    assert "no lead is open at 2020-01-01" in capsys.readouterr().err
    assert not (tmp / "empty.html").exists()
