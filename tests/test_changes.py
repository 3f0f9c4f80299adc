"""Score movements between runs (issue 17): exact sums, trends, previous rows, unknowns, sentences."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest

from convert import load
from convert.config import Config
from convert.features.catalog import FeatureDef, band_labels, whole_days
from convert.model.train import train
from convert.schema import ScoreChanges, ScoreOutput
from convert.scoring.changes import (
    DECLINING,
    IMPROVING,
    MODEL,
    NEW,
    PREVIOUS_AS_OF,
    PREVIOUS_EVENTS_SEEN,
    PREVIOUS_MODEL_VERSION,
    PREVIOUS_SCORE,
    STEADY,
    UNKNOWN,
    Changes,
    compare,
    points_of,
    previous_features,
    previous_scores,
    trend,
)
from convert.scoring.score import feature_rows, score_frame

pytestmark = pytest.mark.xdist_group("changes")  # one worker scores the module fixture's runs once

T1, T2, T3 = pd.Timestamp("2025-04-01"), pd.Timestamp("2025-05-01"), pd.Timestamp("2025-06-01")
AT = pd.Timestamp("2025-06-01 06:00")


def run(data, model, as_of, config: Config, history: pd.DataFrame, version: str) -> tuple[pd.DataFrame, Changes]:
    """One scoring run with changes, as the score step will do it: score rows + change columns."""
    now = feature_rows(data, model, as_of, config)
    pts: list = []
    scored = score_frame(model, now, config.scoring, version, AT, points=pts)
    previous = previous_scores(history, as_of)
    then = previous_features(data, model, previous, config)
    changes = compare(model, now, previous, then, config.scoring, version, now_points=pts[0])
    assert (changes.frame["lead_id"].to_numpy() == scored["lead_id"].to_numpy()).all()
    out = pd.concat([scored, changes.frame.drop(columns=["lead_id"])], axis=1)
    assert list(out.columns) == ScoreChanges.output_names()
    return out, changes


def assert_exact(out: pd.DataFrame, changes: Changes) -> None:
    with_prev = out[ScoreChanges.previous_score].notna().to_numpy()
    exact = changes.exact
    assert not (exact & ~with_prev).any()
    prev = out[ScoreChanges.previous_score].to_numpy(dtype="float64")
    total = prev[exact] + changes.movements[exact].sum(axis=1)
    assert (total == out[ScoreOutput.score].to_numpy()[exact]).all()
    assert (changes.movements[~exact] == 0).all()
    change = out[ScoreChanges.score_change].to_numpy(dtype="float64")
    assert (change[with_prev] == out[ScoreOutput.score].to_numpy()[with_prev] - prev[with_prev]).all()


@pytest.fixture(scope="module")
def runs(trained, fast_config):
    """Runs at T1 (first), T2 and a re-run at T2 with the same model."""
    result, data = trained
    model = result.model
    first, c1 = run(data, model, T1, fast_config, pd.DataFrame(), "m/1")
    second, c2 = run(data, model, T2, fast_config, first, "m/1")
    rerun, c3 = run(data, model, T2, fast_config, pd.concat([first, second]), "m/1")
    return (first, c1), (second, c2), (rerun, c3)


def test_first_run_is_new_everywhere(runs):
    (first, changes), _, _ = runs
    assert (first[ScoreChanges.trend] == NEW).all()
    for col in (ScoreChanges.previous_score, ScoreChanges.previous_as_of, ScoreChanges.score_change,
                *ScoreChanges.CHANGES):
        assert first[col].isna().all(), col
    assert not changes.exact.any() and (changes.movements == 0).all()
    assert first[ScoreChanges.events_seen].notna().all()  # the fingerprint the next run checks


def test_movements_add_up_exactly_with_the_same_model(runs):
    (first, _), (second, changes), _ = runs
    assert_exact(second, changes)
    returning = second[ScoreOutput.lead_id].isin(first[ScoreOutput.lead_id]).to_numpy()
    assert returning.sum() > 100
    # same export, same model: every returning lead is explained, the model moved nothing
    assert changes.exact[returning].all()
    assert (changes.movements[:, -1] == 0).all() and changes.names[-1] == MODEL
    assert set(second.loc[returning, ScoreChanges.trend]) <= {IMPROVING, STEADY, DECLINING}
    assert (second.loc[~returning, ScoreChanges.trend] == NEW).all()
    assert (pd.to_datetime(second.loc[returning, ScoreChanges.previous_as_of]) == T1).all()
    changed = returning & (second[ScoreChanges.score_change].fillna(0) != 0).to_numpy()
    assert changed.sum() > 50
    assert second.loc[changed, ScoreChanges.change_1].notna().all()  # every change is said
    moved = second[ScoreChanges.change_1].dropna()
    assert moved.str.match(r"^[+-]\d+ \S").all()
    assert moved.str.contains(r" \((?:was .+|value unchanged)\)$").all()
    assert not moved.str.contains("model updated").any()


def test_changes_come_largest_first_and_agree_with_the_movements(runs):
    _, (second, changes), _ = runs
    pts = second[list(ScoreChanges.CHANGES)].apply(lambda s: s.str.extract(r"^([+-]\d+)")[0].astype(float))
    a, b, c = (pts[col].abs().to_numpy() for col in ScoreChanges.CHANGES)
    assert (np.nan_to_num(a) >= np.nan_to_num(b)).all() and (np.nan_to_num(b) >= np.nan_to_num(c)).all()
    top = np.sort(np.abs(changes.movements), axis=1)[:, -1]
    shown = np.nan_to_num(a)
    assert (shown[changes.exact] == top[changes.exact]).all()


def test_a_rerun_at_the_same_as_of_compares_with_the_earlier_as_of(runs):
    (first, _), (second, _), (rerun, changes) = runs
    returning = rerun[ScoreOutput.lead_id].isin(first[ScoreOutput.lead_id]).to_numpy()
    assert (pd.to_datetime(rerun.loc[returning, ScoreChanges.previous_as_of]) == T1).all()
    assert (rerun[ScoreChanges.previous_score].to_numpy(dtype="float64")[returning]
            == second[ScoreChanges.previous_score].to_numpy(dtype="float64")[returning]).all()
    assert (rerun[ScoreChanges.trend].to_numpy() == second[ScoreChanges.trend].to_numpy()).all()
    assert_exact(rerun, changes)


def test_previous_scores_take_the_latest_strictly_earlier_row():
    history = pd.DataFrame(
        {
            "lead_id": ["a", "a", "a", "b", "b", "c"],
            "as_of": pd.to_datetime(["2025-01-01", "2025-02-01", "2025-03-01", "2025-01-01", "2025-01-01",
                                     "2025-03-01"]),
            "score": [10, 20, 30, 5, 6, 50],
            "model_version": ["v1", "v1", "v2", "v1", "v2", "v1"],
            "scored_at": pd.to_datetime(["2025-01-01 06:00", "2025-02-01 06:00", "2025-03-01 06:00",
                                         "2025-01-01 06:00", "2025-01-01 07:00", "2025-03-01 06:00"]),
        }
    )
    prev = previous_scores(history, "2025-03-01").set_index("lead_id")
    assert prev.loc["a", PREVIOUS_SCORE] == 20 and prev.loc["a", PREVIOUS_AS_OF] == pd.Timestamp("2025-02-01")
    assert prev.loc["b", PREVIOUS_SCORE] == 6 and prev.loc["b", PREVIOUS_MODEL_VERSION] == "v2"  # latest run wins
    assert "c" not in prev.index  # its only row is at this as-of: it is new, not compared with itself
    assert np.isnan(prev[PREVIOUS_EVENTS_SEEN]).all()  # a history written before the fingerprint
    assert previous_scores(history.iloc[:0], "2025-03-01").empty
    assert previous_scores(pd.DataFrame(), "2025-03-01").empty


def test_a_lead_that_left_and_came_back_compares_with_its_last_score(trained, fast_config, runs):
    result, data = trained
    (first, _), (second, _), _ = runs
    both = second[ScoreOutput.lead_id][second[ScoreOutput.lead_id].isin(first[ScoreOutput.lead_id])]
    gone = set(both.iloc[:25])
    history = pd.concat([first, second[~second[ScoreOutput.lead_id].isin(gone)]])  # not scored at T2
    third, changes = run(data, result.model, T3, fast_config, history, "m/1")
    back = third[ScoreOutput.lead_id].isin(gone).to_numpy()
    assert back.sum() > 0
    assert (pd.to_datetime(third.loc[back, ScoreChanges.previous_as_of]) == T1).all()
    assert changes.exact[back].all()
    stayed = third[ScoreOutput.lead_id].isin(second[ScoreOutput.lead_id]).to_numpy() & ~back
    assert (pd.to_datetime(third.loc[stayed, ScoreChanges.previous_as_of]) == T2).all()
    assert_exact(third, changes)


@pytest.mark.slow  # trains twice (through the CLI / a second model)
def test_movements_add_up_across_a_retrained_model(trained, fast_config, runs):
    result, data = trained
    (first, _), _, _ = runs
    # another model: smaller trees and LightGBM alone (the first is a blend), which also
    # halves the cost of the second training
    config = fast_config.with_overrides(train__lightgbm__num_leaves=7, train__num_boost_round=120,
                                        train__blend=False)
    retrained = train(data, config).model
    second, changes = run(data, retrained, T2, fast_config, first, "m/2")
    assert_exact(second, changes)
    returning = second[ScoreOutput.lead_id].isin(first[ScoreOutput.lead_id]).to_numpy()
    assert changes.exact[returning].all()
    model_moves = changes.movements[:, -1]
    assert (model_moves[returning] != 0).any()
    # the model movement is today's model's score then minus the previous score
    then = previous_features(data, retrained, previous_scores(first, T2), fast_config).set_index("lead_id")
    lead = second[ScoreOutput.lead_id].to_numpy()[returning][0]
    again = points_of(retrained, then.loc[[lead]].reset_index()).score[0]
    before = first.set_index(ScoreOutput.lead_id).loc[lead, ScoreOutput.score]
    assert model_moves[np.flatnonzero(returning)[0]] == again - before
    said = second[list(ScoreChanges.CHANGES)].stack()
    assert said.str.contains(r"model updated \(m/1 \u2192 m/2\)").any()


def test_unknown_when_the_export_was_rewritten(trained, fast_config, runs, sim_export, tmp_path):
    result, _ = trained
    (first, _), _, _ = runs
    tables = {name: pd.read_csv(sim_export / f"{name}.csv") for name in ("leads", "accounts", "events", "stages")
              if (sim_export / f"{name}.csv").exists()}
    assert "events" in tables
    events = tables["events"]
    before = pd.to_datetime(events["occurred_at"], format="ISO8601", utc=True, errors="coerce").dt.tz_convert(None) < T1
    with_events = events.loc[before, "lead_id"].astype(str)
    returning = first[ScoreOutput.lead_id][first[ScoreOutput.lead_id].isin(with_events)]
    edited, deleted = list(returning.iloc[:5]), list(returning.iloc[5:8])
    drop = before & events["lead_id"].astype(str).isin(edited)
    tables["events"] = events[~drop]  # the lead's history before T1 was rewritten
    tables["leads"] = tables["leads"][~tables["leads"]["lead_id"].astype(str).isin(deleted)]
    folder = tmp_path / "rewritten"
    folder.mkdir()
    for name, frame in tables.items():
        frame.to_csv(folder / f"{name}.csv", index=False)
    data = load(folder, fast_config)
    # the same model scored a lead differently then, though its events agree: rewritten too
    history = first.copy()
    rescored = history[ScoreOutput.lead_id].isin(returning.iloc[8:10])
    history.loc[rescored, ScoreOutput.score] = (history.loc[rescored, ScoreOutput.score] + 7) % 101
    out, changes = run(data, result.model, T2, fast_config, history, "m/1")
    by_id = out.set_index(ScoreOutput.lead_id)
    assert (by_id.loc[edited, ScoreChanges.trend] == UNKNOWN).all()
    assert by_id.loc[edited, ScoreChanges.change_1].str.contains(r"export now holds \d+ events").all()
    assert by_id.loc[edited, ScoreChanges.score_change].notna().all()
    still_open = [i for i in returning.iloc[8:10] if i in by_id.index]
    assert (by_id.loc[still_open, ScoreChanges.trend] == UNKNOWN).all()
    assert by_id.loc[still_open, ScoreChanges.change_1].str.contains("same model now gives").all()
    assert not set(deleted) & set(by_id.index)  # deleted leads are not scored today
    # colleagues of edited or deleted leads saw other account features then: the same-model
    # check finds them (their recomputed score differs) where the score moved; the rest is exact
    others = ~out[ScoreOutput.lead_id].isin(edited + still_open) & out[ScoreChanges.previous_score].notna()
    flagged = others & (out[ScoreChanges.trend] == UNKNOWN)
    assert out.loc[flagged, ScoreChanges.change_1].str.contains("same model now gives").all()
    assert flagged.sum() < 0.1 * others.sum()
    assert_exact(out, changes)


def test_absent_then_is_unknown(trained, fast_config, runs):
    """A previous row whose lead the export no longer holds as open then (here: an as-of
    before the lead was created, as after a rewrite of created_at)."""
    result, data = trained
    (first, _), _, _ = runs
    history = first.copy()
    history[ScoreOutput.as_of] = pd.Timestamp("2020-01-01")
    out, changes = run(data, result.model, T2, fast_config, history, "m/1")
    returning = out[ScoreChanges.previous_score].notna()
    assert (out.loc[returning, ScoreChanges.trend] == UNKNOWN).all()
    assert out.loc[returning, ScoreChanges.change_1].str.contains("no longer holds the lead").all()
    assert not changes.exact.any()


def test_trend_thresholds():
    change = np.array([-20, -5, -4, 0, 4, 5, 30])
    assert list(trend(change, 5)) == [DECLINING, DECLINING, STEADY, STEADY, STEADY, IMPROVING, IMPROVING]
    assert list(trend(change, 1)) == [DECLINING, DECLINING, DECLINING, STEADY, IMPROVING, IMPROVING, IMPROVING]
    assert Config().scoring.trend_min_change == 5


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_top_movements_are_a_stable_sorts_first_k(seed):
    """The batch's largest movements (found by counting values, not by sorting every cell) are
    a stable sort's first k: largest |points| first, ties in lead then column order, zeros never."""
    rng = np.random.default_rng(seed)
    moves = rng.integers(-4, 5, (300, 7)) * (rng.random((300, 7)) < 0.3)
    changes = Changes(frame=pd.DataFrame({ScoreOutput.lead_id: [f"L{i}" for i in range(300)]}),
                      movements=moves, names=[f"f{j}" for j in range(6)] + [MODEL], exact=np.ones(300, bool))
    for k in (0, 1, 10, 50, 10_000):
        order = np.argsort(-np.abs(moves), axis=None, kind="stable")[:k]
        order = order[moves.ravel()[order] != 0]
        top = changes.top_movements(k)
        assert top["points"].tolist() == moves.ravel()[order].tolist()
        assert top[ScoreOutput.lead_id].tolist() == [f"L{i}" for i in order // 7]
        assert top["movement"].tolist() == [changes.names[j] for j in order % 7]


@pytest.mark.parametrize("seed", [0, 1, 2, 3])
def test_exact_on_random_pairs_of_feature_rows(trained, fast_config, seed):
    """Seeded property test: any rows then, any previous scores and model versions."""
    result, data = trained
    model = result.model
    rows = feature_rows(data, model, T2, fast_config)
    rng = np.random.default_rng(seed)
    n = len(rows)
    then = rows.iloc[rng.permutation(n)].copy()
    then["lead_id"] = rows["lead_id"].to_numpy()
    then["as_of"] = T1
    has = rng.random(n) < 0.8
    previous = pd.DataFrame(
        {
            "lead_id": rows["lead_id"][has].to_numpy(),
            PREVIOUS_SCORE: rng.integers(0, 101, has.sum()),
            PREVIOUS_AS_OF: T1,
            PREVIOUS_MODEL_VERSION: rng.choice(["m/0", "m/2"], has.sum()),
            PREVIOUS_EVENTS_SEEN: np.nan,
        }
    )
    config = fast_config.with_overrides(scoring__trend_min_change=int(rng.integers(1, 10)))
    changes = compare(model, rows, previous, then, config.scoring, "m/1")
    now = points_of(model, rows)
    assert changes.exact.sum() == has.sum()
    prev = previous.set_index("lead_id")[PREVIOUS_SCORE].reindex(rows["lead_id"]).to_numpy(dtype="float64")
    assert (prev[has] + changes.movements[has].sum(axis=1) == now.score[has]).all()
    # signs kept: no feature movement is rounded across zero
    then_pts = points_of(model, then)
    cont = now.continuous - then_pts.continuous
    ints = changes.movements[:, :-1]
    assert not ((ints > 0) & (cont < 0)).any() and not ((ints < 0) & (cont > 0)).any()
    assert (np.abs(ints[has] - cont[has]) < 1 + 1e-9).all()


# --- sentences a rep believes -------------------------------------------------------------------

BAD = [
    (re.compile(r"\bband \d"), "a bare band number"),
    (re.compile(r"\b0 days\b"), "0 days"),
    (re.compile(r"(?i)seniority: other|\bother\b"), "a seniority of other"),
    (re.compile(r"\b(nan|None)\b"), "a missing value"),
]


def test_every_template_reads_right_over_the_scored_demo(trained, fast_config, runs):
    result, data = trained
    model = result.model
    (first, _), (second, _), _ = runs
    rows = feature_rows(data, model, T2, fast_config)
    sentences: list[str] = []
    for feature in model.catalog_:
        if feature.name not in rows:
            continue
        for value in pd.unique(rows[feature.name].to_numpy(dtype=object)):
            sentences.append(feature.describe(value))
    for col in (*ScoreOutput.REASONS, *ScoreOutput.RISKS, *ScoreChanges.CHANGES):
        sentences += second[col].dropna().tolist() + first[col].dropna().tolist()
    assert len(sentences) > 500
    for pattern, what in BAD:
        hits = [s for s in sentences if pattern.search(s)]
        assert not hits, f"{what}: {hits[:5]}"
    said = set(sentences)
    assert any("employees" in s and "\u2013" in s for s in said)  # bands said by their range
    assert any("in the last day" in s for s in said)


def test_band_and_day_wording():
    assert band_labels((10, 50, 200, 1000, 5000)) == (
        ("0", "fewer than 10"), ("1", "10\u201349"), ("2", "50\u2013199"), ("3", "200\u2013999"),
        ("4", "1,000\u20134,999"), ("5", "5,000 or more"),
    )
    assert band_labels((1e6, 1e7, 2.5e8), money=True) == (
        ("0", "under 1M"), ("1", "1M\u201310M"), ("2", "10M\u2013250M"), ("3", "250M or more"),
    )
    assert [whole_days(x) for x in (0.0, 0.4, 1.0, 1.0000000001, 1.4, 45.0)] == [0, 1, 1, 1, 2, 45]
    last = FeatureDef("days_since_x", "engagement", "engagement", "numeric", "days", "d",
                      "Last 'x' {value} days ago", None, "Never")
    assert last.describe(0.3) == "Last 'x' in the last day"
    assert last.describe(1.2) == "Last 'x' 2 days ago"
    size = FeatureDef("employee_band", "fit", "firmographic", "numeric", "band", "d",
                      "Company has {value} employees", None, "unknown", labels=band_labels((10, 50)))
    assert size.describe(1.0) == "Company has 10\u201349 employees"
    # one representative per sentence: building sentences from it changes none
    rng = np.random.default_rng(0)
    days = np.concatenate([rng.exponential(5.0, 300), [0.0, 1e-9, 1.0, 2.0, np.nan]])
    for feature, values in ((last, days), (size, rng.integers(0, 3, 50).astype(float))):
        canon = feature.canonical(values)
        assert [feature.describe(v) for v in canon] == [feature.describe(v) for v in values]
    # a catalog read back from a bundle's JSON keeps its labels
    again = FeatureDef(**{**size.__dict__, "labels": [list(p) for p in size.labels]})
    assert again == size
