"""The real public datasets of ../shared/datasets in flat mode: the leakage guard's findings
and the README's results table (skipped where the datasets are absent, failed under CI=true; never copied here)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from tests.conftest import SHARED_DATASETS, require_dataset

from convert.config import Config
from convert.exceptions import LeakageError
from convert.model.leakage import screen
from convert.model.train import train_flat
from convert.sources.flat import load_flat
from convert.sources.mapping import load_mapping

pytestmark = pytest.mark.slow  # loads and trains on the real public datasets (40,000+ rows)

ROOT = Path(__file__).resolve().parents[1]
MAPPINGS = ROOT / "docs" / "mappings"
X_EDUCATION = SHARED_DATASETS / "x_education_leads" / "Leads.csv"
BANK = SHARED_DATASETS / "uci_bank_marketing" / "bank-additional-full.csv"
SHOPPERS = SHARED_DATASETS / "uci_online_shoppers" / "online_shoppers_intention.csv"
#: the columns PROVENANCE.md names as filled by staff after contact (the guard must find them)
STAFF_FILLED = {"Tags", "Lead Quality", "Lead Profile"}


def _need(path: Path) -> None:
    require_dataset(path)  # skips where ../shared/datasets is absent; fails under CI=true


def _config() -> Config:
    return Config.from_yaml(ROOT / "params.yaml")  # what `make realdata` runs with


def test_guard_flags_the_staff_filled_x_education_columns_without_being_told():
    _need(X_EDUCATION)
    mapping = load_mapping(MAPPINGS / "x_education_leads.yaml")
    told = set(mapping.flat.exclude)
    assert STAFF_FILLED <= told  # the committed mapping leaves them out, with their reasons...
    untold = mapping.model_copy(update={"flat": mapping.flat.model_copy(update={"exclude": {
        k: v for k, v in mapping.flat.exclude.items() if k not in STAFF_FILLED | {
            "What is your current occupation", "What matters most to you in choosing a course"}}})})
    table = load_flat(X_EDUCATION, _config(), untold)
    with pytest.raises(LeakageError) as err:  # ...and without them the guard stops training
        train_flat(table, _config(), untold)
    found = {c.column: c for c in err.value.report.blocking}
    assert STAFF_FILLED <= set(found)
    assert "auc" in found["Tags"].reasons and found["Tags"].auc == pytest.approx(0.92, abs=0.01)
    assert "fill_gap" in found["Lead Quality"].reasons and "fill_gap" in found["Lead Profile"].reasons


@pytest.mark.parametrize(
    "path, mapping, column",
    [(BANK, "uci_bank_marketing.yaml", "duration"), (SHOPPERS, "uci_online_shoppers.yaml", "PageValues")],
)
def test_post_outcome_by_meaning_is_left_out_by_the_mapping_not_by_a_statistic(path, mapping, column):
    _need(path)
    m = load_mapping(MAPPINGS / mapping)
    assert "post-outcome" in m.flat.exclude[column]
    table = load_flat(path, _config(), m)
    report = screen(table.frame[[column]], table.label, _config().leakage, kinds=table.kinds)
    (screened,) = report.columns
    assert not screened.suspect and 0.75 < screened.auc < 0.90  # strong, yet below any sane threshold


def _readme_row(name: str) -> list[str]:
    text = (ROOT / "README.md").read_text()
    for line in text.splitlines():
        if line.startswith(f"| {name} "):
            return [c.strip() for c in line.strip("|").split("|")]
    raise AssertionError(f"no README results row for {name}")


def test_readme_x_education_row_matches_a_re_run():
    _need(X_EDUCATION)
    mapping = load_mapping(MAPPINGS / "x_education_leads.yaml")
    table = load_flat(X_EDUCATION, _config(), mapping)
    result = train_flat(table, _config(), mapping)
    cells = _readme_row("x_education_leads (random)")
    assert cells[1] == f"{len(table.label):,} ({table.label.mean():.1%})"
    metrics = result.evaluation.metrics
    for cell, metric in zip(cells[3:7], ("roc_auc", "pr_auc", "brier", "ece"), strict=True):
        model, baseline = (float(x) for x in re.findall(r"\d\.\d{3}", cell))
        assert model == pytest.approx(metrics.loc[metric, "model"], abs=0.0015), metric
        assert baseline == pytest.approx(metrics.loc[metric, "logistic_regression"], abs=0.0015), metric
    for column in STAFF_FILLED:
        assert f"`{column}`" in cells[7]
