"""Correct in time, proved: future rows never change features; labels and features match a
brute-force pandas reference."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from tests.conftest import write_export

from convert import build_features, build_labels, load
from convert.config import Config
from convert.features.engine import (
    _register_population,
    discover_event_types,
    feature_catalog,
    iter_feature_batches,
    materialize_features,
)
from convert.simulator.crm import generate_crm

AS_OFS = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-06-01"), pd.Timestamp("2024-09-15 12:00")]
CFG = Config()


@pytest.fixture(scope="module")
def crm(tmp_path_factory):
    folder = tmp_path_factory.mktemp("crm")
    generate_crm(folder, n_leads=600, seed=11, start="2023-06-01", end="2024-12-31", bad_rows=False)
    return {t: pd.read_csv(folder / f"{t}.csv", dtype=str, keep_default_na=False) for t in
            ("leads", "accounts", "events", "stages")}


def _future_rows(crm: dict[str, pd.DataFrame], t: pd.Timestamp, seed: int) -> dict[str, pd.DataFrame]:
    """The same export plus rows dated at or after *t*: events (one exactly at t), stages,
    new leads in existing accounts with their own events, and a new frequent event type."""
    rng = np.random.default_rng(seed)
    leads, events, stages = crm["leads"], crm["events"], crm["stages"]
    some = leads["lead_id"].sample(80, random_state=seed).tolist()
    future = [t + pd.Timedelta(minutes=int(m)) for m in rng.integers(0, 60 * 24 * 60, len(some))]
    future[0] = t  # exactly at the as-of time: not before it, so not seen
    kinds = rng.choice(["pricing_page_view", "demo_request", "email_open", "meeting", "brand_new_thing"], len(some))
    new_events = pd.DataFrame({"lead_id": some, "occurred_at": [f.isoformat() for f in future], "event_type": kinds})
    burst = pd.DataFrame({"lead_id": some * 2, "occurred_at": [(t + pd.Timedelta(days=3)).isoformat()] * (2 * len(some)),
                          "event_type": "brand_new_thing"})
    new_stages = pd.DataFrame({"lead_id": some, "stage": "opportunity", "entered_at": [f.isoformat() for f in future]})
    accts = crm["accounts"]["account_id"].head(20).tolist()
    new_ids = [f"FUT{i}" for i in range(len(accts))]
    new_leads = leads.head(len(accts)).copy()
    new_leads["lead_id"] = new_ids
    new_leads["account_id"] = accts
    new_leads["created_at"] = t.isoformat()
    new_leads["converted_at"] = ""
    new_leads["disqualified_at"] = ""
    their_events = pd.DataFrame({"lead_id": new_ids, "occurred_at": (t + pd.Timedelta(hours=1)).isoformat(),
                                 "event_type": "demo_request"})
    return {
        "leads": pd.concat([leads, new_leads], ignore_index=True),
        "accounts": crm["accounts"],
        "events": pd.concat([events, new_events, burst, their_events], ignore_index=True),
        "stages": pd.concat([stages, new_stages], ignore_index=True),
    }


@pytest.fixture(scope="module")
def before_after(crm, tmp_path_factory):
    """Features at each as-of time without and with the future rows injected."""
    out = []
    for i, t in enumerate(AS_OFS):
        base = load(write_export(tmp_path_factory.mktemp("base"), **crm))
        pop = build_labels(base.con, [t], 90)[["lead_id", "as_of"]]
        before = build_features(base.con, pop, CFG.features)
        injected = load(write_export(tmp_path_factory.mktemp("future"), **_future_rows(crm, t, seed=i)))
        after = build_features(injected.con, pop, CFG.features)
        assert len(pop) > 100
        out.append((before, after))
    return out


GROUPS = ["engagement", "lifecycle", "account", "firmographic", "lead"]


@pytest.mark.parametrize("group", GROUPS)
def test_future_rows_change_no_feature_of_the_family(before_after, group):
    for before, after in before_after:
        cols = [f.name for f in before.catalog if f.group == group]
        assert cols, f"no feature in group {group}"
        pd.testing.assert_frame_equal(
            before.frame[["lead_id", "as_of", *cols]], after.frame[["lead_id", "as_of", *cols]]
        )


def test_future_event_types_do_not_enter_the_vocabulary(before_after):
    for before, after in before_after:
        assert before.event_types == after.event_types
        assert "brand_new_thing" not in after.event_types


def test_every_feature_is_in_exactly_one_family():
    cat = feature_catalog(["page_view", "my_own_type"], CFG.features)
    assert {f.family for f in cat} == {"fit", "engagement"}
    assert len(set(cat.names)) == len(cat)


# --- brute-force reference ----------------------------------------------------------------


@pytest.fixture(scope="module")
def loaded(crm, tmp_path_factory):
    data = load(write_export(tmp_path_factory.mktemp("ref"), **crm))
    return data, {t: data.frame(t) for t in ("leads", "accounts", "events", "stages")}


def test_labels_match_the_contract_inequalities(loaded):
    data, f = loaded
    leads = f["leads"]
    got = build_labels(data.con, AS_OFS, 90)
    rows = []
    for t in AS_OFS:
        for lead in leads.itertuples():
            if not lead.created_at < t:
                continue
            if pd.notna(lead.converted_at) and not lead.converted_at >= t:
                continue
            if pd.notna(lead.disqualified_at) and not lead.disqualified_at >= t:
                continue
            label = int(pd.notna(lead.converted_at) and t <= lead.converted_at < t + pd.Timedelta(days=90))
            rows.append((lead.lead_id, t, label))
    want = pd.DataFrame(rows, columns=["lead_id", "as_of", "label"]).sort_values(["as_of", "lead_id"])
    pd.testing.assert_frame_equal(got.reset_index(drop=True), want.reset_index(drop=True), check_dtype=False)
    assert 0 < want["label"].sum() < len(want)


def test_features_match_a_pandas_reference(loaded):
    data, f = loaded
    leads, events, stages, accounts = f["leads"], f["events"], f["stages"], f["accounts"]
    pop = build_labels(data.con, AS_OFS, 90)[["lead_id", "as_of"]].sample(60, random_state=1)
    got = build_features(data.con, pop, CFG.features).frame.set_index(["lead_id", "as_of"])
    ev_by_lead = dict(tuple(events.groupby("lead_id")))
    for lead_id, t in pop.itertuples(index=False):
        row = got.loc[(lead_id, t)]
        ev = ev_by_lead.get(lead_id, events.iloc[:0])
        seen = ev[ev["occurred_at"] < t]
        last30 = seen[seen["occurred_at"] >= t - pd.Timedelta(days=30)]
        assert row["n_events_total"] == len(seen)
        assert row["n_events_30d"] == len(last30)
        assert row["n_email_open_30d"] == (last30["event_type"] == "email_open").sum()
        pricing = seen[seen["event_type"] == "pricing_page_view"]
        want_rec = (t - pricing["occurred_at"].max()).total_seconds() / 86400 if len(pricing) else np.nan
        assert row["days_since_pricing_page_view"] == pytest.approx(want_rec, nan_ok=True)
        days = seen[seen["occurred_at"] >= t - pd.Timedelta(days=90)]["occurred_at"].dt.normalize().nunique()
        assert row["active_days_90d"] == days
        lead = leads.set_index("lead_id").loc[lead_id]
        assert row["lead_age_days"] == pytest.approx((t - lead["created_at"]).total_seconds() / 86400)
        st = stages[(stages["lead_id"] == lead_id) & (stages["entered_at"] < t)].sort_values(["entered_at", "stage"])
        assert (row["stage"] if row["stage"] is not None else None) == (st["stage"].iloc[-1] if len(st) else None)
        if pd.notna(lead["account_id"]) and lead["account_id"] in set(accounts["account_id"]):
            acct = accounts.set_index("account_id").loc[lead["account_id"]]
            assert row["industry"] == acct["industry"] or (pd.isna(row["industry"]) and pd.isna(acct["industry"]))
            others = leads[(leads["account_id"] == lead["account_id"]) & (leads["lead_id"] != lead_id)
                           & (leads["created_at"] < t)]
            oev = events[events["lead_id"].isin(others["lead_id"]) & (events["occurred_at"] < t)
                         & (events["occurred_at"] >= t - pd.Timedelta(days=90))]
            assert row["account_other_leads"] == len(others)
            assert row["account_n_events_90d"] == len(oev)


def test_as_of_times_in_separate_passes_give_the_same_features(loaded):
    """Bounding a pass's (event, as-of) rows changes memory, never a feature."""
    data, _ = loaded
    pop = build_labels(data.con, AS_OFS, 90)[["lead_id", "as_of"]]
    one_pass = build_features(data.con, pop, CFG.features).frame
    split = CFG.with_overrides(features__event_rows_per_pass=1).features
    many_passes = build_features(data.con, pop, split).frame
    assert one_pass["as_of"].nunique() == len(AS_OFS)
    pd.testing.assert_frame_equal(one_pass, many_passes)


def test_in_memory_and_materialized_features_agree_to_the_last_digit(loaded):
    """build_features pivots per-type rows in numpy; materialize_features pivots in SQL."""
    data, _ = loaded
    pop = build_labels(data.con, AS_OFS, 90)[["lead_id", "as_of"]]
    fs = build_features(data.con, pop, CFG.features)
    _register_population(data.con, pop)
    table, catalog, _ = materialize_features(data.con, CFG.features, fs.event_types)
    streamed = pd.concat(list(iter_feature_batches(data.con, table, catalog, 500)), ignore_index=True)
    assert catalog.names == fs.catalog.names
    assert fs.frame["n_email_open_total"].sum() > 0 and fs.frame["days_since_page_view"].notna().any()
    pd.testing.assert_frame_equal(fs.frame, streamed, check_exact=True)


def test_population_rows_without_a_lead_are_left_out_and_shift_nothing(loaded):
    data, _ = loaded
    pop = build_labels(data.con, AS_OFS, 90)[["lead_id", "as_of"]]
    want = build_features(data.con, pop, CFG.features).frame
    ghosts = pd.DataFrame({"lead_id": ["0-no-such-lead", "~no-such-lead"], "as_of": [AS_OFS[0], AS_OFS[-1]]})
    got = build_features(data.con, pd.concat([ghosts, pop], ignore_index=True), CFG.features).frame
    pd.testing.assert_frame_equal(got, want)


def test_an_empty_population_gives_an_empty_frame_with_every_column(loaded):
    data, _ = loaded
    empty = pd.DataFrame({"lead_id": pd.Series([], dtype=str), "as_of": pd.Series([], dtype="datetime64[us]")})
    fs = build_features(data.con, empty, CFG.features)
    assert len(fs.frame) == 0
    assert list(fs.frame.columns) == ["lead_id", "as_of"] + fs.catalog.names
    assert list(fs.event_types) == discover_event_types(data.con, pd.Timestamp.max, CFG.features)
