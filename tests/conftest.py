"""Shared fixtures: small seeded CRM exports written by the tests themselves."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import NoReturn

import numpy as np
import pandas as pd
import pytest

# On a busy machine, OpenMP threads that spin while waiting (LightGBM's default) slow small
# fits by 10x or more; sleeping waiters cost little when the machine is idle. Set before
# convert imports LightGBM, whose OpenMP runtime reads it once.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# One BLAS thread per test process (and the commands it starts, which inherit the variable).
# The suite runs on two pytest-xdist workers, one per core; OpenBLAS's own threads on top
# (scikit-learn's logistic regressions: the blend's linear half and the baseline) then fight
# the other worker for the cores and made a small training 2x slower. The tests compare runs
# within one process, never against figures computed with another thread count.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

from threadpoolctl import threadpool_limits  # noqa: E402

threadpool_limits(limits=1, user_api="blas")  # in case a plugin loaded numpy before this file

from convert.config import Config  # noqa: E402

SHARED_DATASETS = Path(__file__).resolve().parents[1].parent / "shared" / "datasets"


def write_export(folder: Path, fmt: str = "csv", **tables: pd.DataFrame) -> Path:
    """Write contract tables (``leads=...``, ``events=...``) as NAME.csv or NAME.parquet."""
    folder.mkdir(parents=True, exist_ok=True)
    for name, frame in tables.items():
        if frame is None:
            continue
        if fmt == "csv":
            frame.to_csv(folder / f"{name}.csv", index=False)
        else:
            frame.to_parquet(folder / f"{name}.parquet", index=False)
    return folder


def small_tables(n_leads: int = 40, seed: int = 7) -> dict[str, pd.DataFrame]:
    """A valid little export: every row passes the contract (timestamps as ISO strings)."""
    rng = np.random.default_rng(seed)
    start = pd.Timestamp("2025-01-01")
    created = start + pd.to_timedelta(rng.integers(0, 60 * 24, n_leads), unit="h")
    lead_ids = [f"L{i:03d}" for i in range(n_leads)]
    accounts = pd.DataFrame(
        {
            "account_id": ["A1", "A2", "A3"],
            "industry": ["software", "retail", "healthcare"],
            "employees": ["120", "15", "4000"],
            "annual_revenue": ["2.5e7", "1e6", "9e8"],
            "country": ["US", "FR", "DE"],
        }
    )
    converted = [
        (c + pd.Timedelta(days=int(rng.integers(5, 80)))).isoformat() if i % 4 == 0 else ""
        for i, c in enumerate(created)
    ]
    leads = pd.DataFrame(
        {
            "lead_id": lead_ids,
            "created_at": [c.isoformat() for c in created],
            "account_id": [["A1", "A2", "A3", ""][i % 4] for i in range(n_leads)],
            "lead_source": [["web_form", "webinar", "referral"][i % 3] for i in range(n_leads)],
            "country": ["US"] * n_leads,
            "job_title": [["VP Sales", "Engineer", "Student", ""][i % 4] for i in range(n_leads)],
            "converted_at": converted,
            "disqualified_at": [""] * n_leads,
        }
    )
    ev_rows = []
    for i, c in enumerate(created):
        for k in range(int(rng.integers(1, 6))):
            t = c + pd.Timedelta(hours=int(rng.integers(1, 24 * 50)))
            ev_rows.append((lead_ids[i], t.isoformat(), ["page_view", "email_open", "demo_request"][k % 3]))
    events = pd.DataFrame(ev_rows, columns=["lead_id", "occurred_at", "event_type"])
    stages = pd.DataFrame(
        {"lead_id": lead_ids, "stage": ["lead"] * n_leads, "entered_at": [c.isoformat() for c in created]}
    )
    return {"leads": leads, "accounts": accounts, "events": events, "stages": stages}


@pytest.fixture
def tables() -> dict[str, pd.DataFrame]:
    return small_tables()


@pytest.fixture
def lenient() -> Config:
    """A configuration that tolerates many quarantined rows (small hand-made exports)."""
    return Config.from_dict({"data": {"max_quarantine_share": 0.5}})


def postgres_url() -> str:
    return os.environ.get("CONVERT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")


# --- what a test needs from the machine: skip where it is absent, fail under CI=true --------------


def missing(reason: str) -> NoReturn:
    """Skip the calling test for an absent service, tool or dataset; under ``CI=true`` fail it.

    Why: on a developer's machine a missing PostgreSQL, Java, chromium or ../shared/datasets is
    ordinary, but CI is set up to have them all, so a skip there would hide a broken set-up as
    a green run. Every such check goes through here, so the rule is the same everywhere.
    """
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI=true: this test must run there, not skip)")
    pytest.skip(reason)


def require_dataset(path: Path) -> Path:
    """``path`` under ../shared/datasets, which the real-data tests read; skip or fail if absent."""
    if not path.exists():
        where = "the folder itself is absent" if not SHARED_DATASETS.is_dir() else "that file is absent"
        missing(f"{path} is missing ({where}): the shared real datasets of {SHARED_DATASETS} "
                "are not on this machine")
    return path


def require_postgres() -> str:
    """The test PostgreSQL URL; skip when no server answers, but fail under CI=true."""
    url = postgres_url()
    import sqlalchemy as sa

    from convert.io.writers import engine_url

    try:
        engine = sa.create_engine(engine_url(url))
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
        engine.dispose()
    except Exception as exc:  # noqa: BLE001 - any failure to connect means "no server"
        missing(f"no PostgreSQL server answers at {url}: {exc}")
    return url


# --- property tests: count the examples that reach the assertions -----------------------------


class Examples:
    """How many of a property test's examples ran, and how many reached its assertions.

    Why: a property test that returns early on an expected error (or ``assume``) passes just
    as well when *every* example returns early, and then it asserts nothing. The body calls
    :meth:`ran` first and :meth:`reached` where its assertions start; the ``examples`` fixture
    fails the test when fewer than the floor reached them.
    """

    def __init__(self, name: str, floor: float, why: str) -> None:
        self.name, self.floor, self.why = name, floor, why
        self.run = self.hit = 0

    def ran(self) -> None:
        self.run += 1

    def reached(self) -> None:
        self.hit += 1

    def check(self) -> None:
        if self.run == 0:
            pytest.fail(f"{self.name}: no example ran (does the body call examples.ran()?)")
        if self.hit > self.run:
            pytest.fail(f"{self.name}: {self.hit} examples reached the assertions but {self.run} "
                        "ran: call examples.ran() first in the body, once")
        if self.hit < self.floor * self.run:
            pytest.fail(
                f"{self.name}: only {self.hit} of {self.run} examples reached the assertions, "
                f"fewer than {self.floor:.0%} ({self.why}); the others returned early, so the "
                "strategy mostly makes inputs the test does not check: fix the strategy")


#: the share of examples that must reach the assertions unless a test says otherwise
MIN_REACHED = 0.5


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers",
        "min_reached(share, why): floor on the share of a property test's examples that reach "
        f"its assertions (default {MIN_REACHED:.0%}), with the reason for a lower one",
    )


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Keep each ``xdist_group`` on one worker, as ``--dist loadgroup`` promises.

    pytest-xdist marks a group's tests by suffixing their node ids with ``@<group>``, which
    its scheduler reads; it sets the suffix on ``item._nodeid``, which pytest 9 no longer
    reads (the id lives in ``item._id``). The groups were then split across both workers,
    and each worker rebuilt the module fixtures they share (a trained model, a report, a
    Spark session): measured, the report module's fixture ran twice, 30 s each. Sets the
    suffix where pytest keeps the id; a no-op where xdist's own suffix took effect.
    """
    if not config.getoption("loadgroup", default=False):  # no xdist, or another --dist
        return
    for item in items:
        names = sorted({str(m.args[0] if m.args else m.kwargs.get("name", "default"))
                        for m in item.iter_markers("xdist_group")})
        if names and "@" not in item.nodeid and hasattr(item, "_id"):
            from _pytest.nodeid import coerce_node_id  # pytest 9

            item._id = coerce_node_id(f"{item.nodeid}@{'_'.join(names)}")


_CALL_FAILED = pytest.StashKey[bool]()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.when == "call":
        item.stash[_CALL_FAILED] = not report.passed


@pytest.fixture
def examples(request: pytest.FixtureRequest) -> Iterator[Examples]:
    """One counter for all the examples of a Hypothesis test (function scope spans them all).

    Checked after a passing run only: a failing example is already the news.
    """
    marker = request.node.get_closest_marker("min_reached")
    floor, why = (marker.args[0], marker.args[1]) if marker else (MIN_REACHED, "the default floor")
    counter = Examples(request.node.nodeid, floor, why)
    yield counter
    request.node.user_properties.append(("examples_reached", f"{counter.hit}/{counter.run}"))
    if not request.node.stash.get(_CALL_FAILED, True):
        counter.check()


# --- a small simulated CRM and a model trained on it, shared by the whole session ---------------

#: quick training for small CRMs; one LightGBM thread, as the suite runs one pytest-xdist worker
#: per core (tests/test_threads.py checks the default of 2 and that this override reaches LightGBM)
FAST = {
    "train": {
        "num_boost_round": 300,
        "early_stopping_rounds": 30,
        "min_positives": 20,
        "lightgbm": {"objective": "binary", "learning_rate": 0.1, "num_leaves": 15, "min_data_in_leaf": 30,
                     "num_threads": 1},
    },
    "calibration": {"min_rows_isotonic": 500},
}


@pytest.fixture(scope="session")
def fast_config() -> Config:
    return Config.from_dict(FAST)


@pytest.fixture(scope="session")
def sim_export(tmp_path_factory) -> Path:
    from convert.simulator.crm import generate_crm

    folder = tmp_path_factory.mktemp("sim")
    generate_crm(folder, n_leads=2500, seed=5, start="2023-01-01", end="2025-06-30")
    return folder


@pytest.fixture(scope="session")
def trained(sim_export, fast_config):
    """(TrainResult, CRMData) for the small simulated CRM."""
    from convert import load, train

    data = load(sim_export, fast_config)
    return train(data, fast_config), data


@pytest.fixture
def mlflow_store(tmp_path, monkeypatch) -> str:
    """A fresh, real MLflow tracking and registry store (SQLite) for one test."""
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", uri)
    monkeypatch.chdir(tmp_path)
    import mlflow

    mlflow.set_tracking_uri(uri)
    mlflow.set_registry_uri(uri)
    return uri


# --- a flat table (one row per lead, an outcome column, no timestamps) ---------------------------


def flat_table(n: int = 3000, seed: int = 3, leaks: bool = False) -> pd.DataFrame:
    """A CRM report as text cells: honest attributes drive the outcome ``Converted`` (yes/no).

    With ``leaks``, two post-outcome columns are planted: ``Status Note`` copies the outcome
    with 5 % noise, and ``Sales Rating`` is filled for 80 % of converted leads and 5 % of the
    others (a field sales fills in after contact).
    """
    rng = np.random.default_rng(seed)
    source = rng.choice(["web", "referral", "event", "list"], n, p=[0.4, 0.2, 0.2, 0.2])
    visits = rng.poisson(3, n)
    minutes = np.round(rng.gamma(2.0, 6.0, n), 1)
    region = rng.integers(1, 6, n)  # integer codes: categorical by configuration
    size = rng.choice(["1-10", "11-50", "51-200", "200+"], n)
    logit = -1.6 + 0.35 * visits + 0.05 * minutes + np.select(
        [source == "referral", source == "list"], [1.0, -1.0], 0.0
    ) + 0.3 * (region == 2)
    converted = rng.random(n) < 1 / (1 + np.exp(-logit))
    frame = pd.DataFrame(
        {
            "Lead Id": [f"P{i:05d}" for i in range(n)],
            "Source": source,
            "Visits": visits.astype(str),
            "Minutes on site": [f"{m}" for m in minutes],
            "Region": region.astype(str),
            "Company size": size,
            "Constant flag": "No",
            "Converted": np.where(converted, "yes", "no"),
        }
    )
    frame.loc[rng.random(n) < 0.1, "Company size"] = "Select"  # an unfilled dropdown
    if leaks:
        flip = rng.random(n) < 0.05
        frame["Status Note"] = np.where(converted ^ flip, "will enrol", "not interested")
        filled = np.where(converted, rng.random(n) < 0.8, rng.random(n) < 0.05)
        frame["Sales Rating"] = np.where(filled, rng.choice(["hot", "warm", "cold"], n), "")
    return frame
