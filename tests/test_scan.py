"""The event scan (``convert.features.scan``) that ``build_features`` evaluates the event
families from gives the SQL families' values to the last digit: at the edges of every window,
whatever order the events are stored in, on any number of threads."""

from __future__ import annotations

import numba
import numpy as np
import pandas as pd
import pytest
from tests.conftest import write_export

from convert import build_features, load
from convert.config import Config
from convert.features.engine import _register_population, iter_feature_batches, materialize_features
from convert.simulator.crm import generate_crm

CFG = Config()
T = pd.Timestamp("2025-03-01")
DAY = pd.Timedelta(days=1)


def _sql_features(con, population: pd.DataFrame, event_types) -> pd.DataFrame:
    """The same rows from the SQL families (the reference), as build_features shapes them."""
    _register_population(con, population)
    table, catalog, _ = materialize_features(con, CFG.features, event_types)
    return pd.concat(list(iter_feature_batches(con, table, catalog, 10_000)), ignore_index=True)


def _edges_export(folder) -> None:
    """Leads whose events sit on the edges the scan must respect."""
    leads = pd.DataFrame({
        "lead_id": ["a", "b", "c", "d", "late", "solo"],
        "created_at": ["2024-01-01", "2024-01-01", "2024-01-01", "2024-01-01", "2025-03-05", "2024-01-01"],
        "account_id": ["ACC", "ACC", "ACC", "OTHER", "ACC", ""],
        "lead_source": "web", "country": "US", "job_title": "Engineer",
        "converted_at": "", "disqualified_at": "",
    })
    accounts = pd.DataFrame({"account_id": ["ACC", "OTHER"], "industry": "software", "employees": "50",
                             "annual_revenue": "1e6", "country": "US"})
    rows = [
        ("a", T, "demo_request"),  # at the as-of time: not before it, never counted
        ("a", T - pd.Timedelta(microseconds=1), "demo_request"),  # the last instant before it
        ("a", T - 7 * DAY, "pricing_page_view"),  # exactly the start of the 7-day window: inside
        ("a", T - 7 * DAY - pd.Timedelta(microseconds=1), "pricing_page_view"),  # just outside
        ("a", T - 30 * DAY, "email_open"),
        ("a", T - 90 * DAY, "email_click"),
        ("a", T - 400 * DAY, "custom_thing"),  # outside the vocabulary: in the totals only
        ("b", T - 2 * DAY, "email_open"),  # opened, never clicked: a rate of 0, not missing
        ("b", T - 3 * DAY, "email_open"),
        ("b", T - 60 * DAY, "meeting"),
        ("c", T + 5 * DAY, "meeting"),  # only after the as-of time: no touch yet
        ("d", T - 45 * DAY, "webinar"),
        ("late", T + 6 * DAY, "demo_request"),  # created after the as-of time
        ("solo", T - 1 * DAY, "page_view"),  # no account
    ]
    events = pd.DataFrame(
        [(lead, at.isoformat(timespec="microseconds"), kind) for lead, at, kind in rows],
        columns=["lead_id", "occurred_at", "event_type"],
    )
    stages = pd.DataFrame({"lead_id": ["a"], "stage": ["mql"], "entered_at": ["2024-06-01"]})
    write_export(folder, leads=leads, accounts=accounts, events=events, stages=stages)


def test_the_scan_respects_every_window_edge_as_the_sql_does(tmp_path):
    _edges_export(tmp_path)
    data = load(tmp_path, CFG)
    types = ("pricing_page_view", "demo_request", "email_open", "email_click", "meeting", "webinar", "page_view")
    ids = ["a", "b", "c", "d", "late", "solo", "ghost"]
    later = T + 10 * DAY  # a second as-of time: the events at T count for it
    pop = pd.DataFrame({"lead_id": ids * 2, "as_of": [T] * len(ids) + [later] * len(ids)})
    try:
        got = build_features(data.con, pop, CFG.features, types).frame
        want = _sql_features(data.con, pop[pop["lead_id"] != "ghost"], types)
    finally:
        data.close()
    pd.testing.assert_frame_equal(got, want, check_exact=True)
    assert got.set_index(["lead_id", "as_of"]).loc[("a", later), "n_demo_request_total"] == 2
    row = got[got["as_of"] == T].set_index("lead_id")
    a, b = row.loc["a"], row.loc["b"]
    assert a["n_demo_request_total"] == 1 and a["days_since_demo_request"] == pytest.approx(1 / 86_400e6)
    assert a["n_pricing_page_view_7d"] == 1 and a["n_pricing_page_view_30d"] == 2
    assert a["n_events_total"] == 6 and a["email_ctr"] == 1.0
    assert b["email_ctr"] == 0.0 and b["n_events_7d"] == 2 and b["n_events_90d"] == 3
    assert np.isnan(row.loc["c", "days_since_last_touch"]) and row.loc["c", "n_events_total"] == 0
    # the account's leads known at T are a, b, c: "late" is not yet one of them
    assert a["account_other_leads"] == 2 and a["account_n_events_90d"] == 3
    assert a["account_active_leads_90d"] == 1  # b (c had no event before T)
    assert np.isnan(row.loc["solo", "account_other_leads"]) and row.loc["d", "account_other_leads"] == 0
    assert "ghost" not in row.index


@pytest.fixture(scope="module")
def simulated(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crm")
    generate_crm(folder, n_leads=500, seed=23, start="2023-06-01", end="2024-12-31", bad_rows=False)
    data = load(folder, CFG)
    times = [pd.Timestamp("2024-02-01"), pd.Timestamp("2024-07-01 06:00"), pd.Timestamp("2024-12-01")]
    leads = data.con.sql("SELECT lead_id FROM leads").df()["lead_id"]
    pop = pd.DataFrame([(lead, t) for t in times for lead in leads], columns=["lead_id", "as_of"])
    yield data, pop
    data.close()


@pytest.mark.parametrize("order", ["occurred_at", "hash(occurred_at, lead_key)"])
def test_the_scan_gives_the_same_features_whatever_order_events_are_stored_in(simulated, order):
    """The simulator writes each lead's events together; real logs are often in time order."""
    data, pop = simulated
    want = build_features(data.con, pop, CFG.features)
    data.con.execute(f"CREATE OR REPLACE TABLE _events_indexed AS SELECT * FROM _events_indexed ORDER BY {order}")
    got = build_features(data.con, pop, CFG.features, want.event_types)
    pd.testing.assert_frame_equal(got.frame, want.frame, check_exact=True)
    pd.testing.assert_frame_equal(got.frame, _sql_features(data.con, pop, want.event_types), check_exact=True)


def test_the_scan_gives_the_same_features_on_one_thread_as_on_many(simulated):
    data, pop = simulated
    many = build_features(data.con, pop, CFG.features).frame
    threads = numba.get_num_threads()
    numba.set_num_threads(1)
    try:
        one = build_features(data.con, pop, CFG.features).frame
    finally:
        numba.set_num_threads(threads)
    pd.testing.assert_frame_equal(one, many, check_exact=True)
