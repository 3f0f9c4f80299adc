"""The test suite's own rules, from tests/conftest.py: a test missing a service, tool or dataset
skips on a developer's machine but fails under CI=true, and a property test fails when too few
of its examples reach its assertions."""

from __future__ import annotations

from pathlib import Path

import pytest
import tests.conftest as rules
from hypothesis import given, settings
from hypothesis import strategies as st
from tests.conftest import Examples, missing, require_dataset


def test_real_data_tests_fail_under_ci_when_the_datasets_folder_is_missing(tmp_path, monkeypatch):
    # only this test sees an absent folder: the real ../shared/datasets stays where it is
    absent = tmp_path / "shared" / "datasets"
    monkeypatch.setattr(rules, "SHARED_DATASETS", absent)
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match=r"the folder itself is absent.*CI=true"):
        require_dataset(absent / "x_education_leads" / "Leads.csv")


def test_real_data_tests_skip_elsewhere_with_the_reason(tmp_path, monkeypatch):
    absent = tmp_path / "shared" / "datasets"
    monkeypatch.setattr(rules, "SHARED_DATASETS", absent)
    monkeypatch.delenv("CI", raising=False)
    with pytest.raises(pytest.skip.Exception, match="not on this machine"):
        require_dataset(absent / "x_education_leads" / "Leads.csv")
    absent.mkdir(parents=True)  # the folder is there but not the file: named as such
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="that file is absent"):
        require_dataset(absent / "x_education_leads" / "Leads.csv")


def test_a_present_dataset_is_returned_under_ci(tmp_path: Path, monkeypatch):
    monkeypatch.setenv("CI", "true")
    (tmp_path / "d.csv").write_text("a\n1\n")
    assert require_dataset(tmp_path / "d.csv") == tmp_path / "d.csv"


def test_missing_is_a_skip_only_outside_ci(monkeypatch):
    monkeypatch.setenv("CI", "false")
    with pytest.raises(pytest.skip.Exception):
        missing("no widget")
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="no widget"):
        missing("no widget")


def test_examples_counter_fails_below_its_floor():
    counter = Examples("demo", 0.5, "the default floor")
    for i in range(10):
        counter.ran()
        if i < 4:
            counter.reached()
    with pytest.raises(pytest.fail.Exception, match="only 4 of 10 examples reached"):
        counter.check()
    counter.reached()
    counter.check()  # 5 of 10: at the floor
    with pytest.raises(pytest.fail.Exception, match="no example ran"):
        Examples("empty", 0.5, "").check()


def test_a_property_that_mostly_returns_early_is_caught():
    """The real thing: a Hypothesis test whose early return swallows nearly every example."""
    counter = Examples("early", 0.5, "the default floor")

    @settings(max_examples=40, database=None, derandomize=True)
    @given(st.integers(0, 1000))
    def prop(x: int) -> None:
        counter.ran()
        if x != 1000:  # "an expected error" for all but one input
            return
        counter.reached()

    prop()
    assert counter.run >= 40
    with pytest.raises(pytest.fail.Exception, match="examples reached the assertions"):
        counter.check()
