"""`convert-leads allocate` end to end on a simulated CRM with reps: write-back, sticky leads,
rep effects against the simulator's truth, and the owner column kept out of the model."""

from __future__ import annotations

import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import FAST, require_postgres

from convert.cli import main
from convert.config import Config
from convert.exceptions import ConfigError
from convert.io.writers import read_table, write_scores
from convert.scoring.allocate import AssignmentOutput, expected_under
from convert.simulator.crm import generate_crm


@pytest.fixture(scope="module")
def crm_with_reps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reps")
    generate_crm(folder, n_leads=3000, seed=11, start="2023-01-01", end="2025-06-30", reps=5)
    return folder


def test_generate_with_reps_writes_owners_reps_and_true_effects(crm_with_reps: Path) -> None:
    leads = pd.read_csv(crm_with_reps / "leads.csv", dtype=str)
    reps = pd.read_csv(crm_with_reps / "reps.csv", dtype=str, keep_default_na=False)
    truth = pd.read_csv(crm_with_reps / "rep_effects.csv")
    assert list(reps.columns) == ["rep_id", "capacity", "max_open", "active", "country"]
    assert set(leads["owner_id"].dropna()) <= set(reps["rep_id"])
    waiting = leads[leads["owner_id"].isna()]
    assert len(waiting) > 0 and waiting["converted_at"].isna().all()  # awaiting routing: still open
    assert (pd.to_datetime(waiting["created_at"].str[:10]) >= pd.Timestamp("2025-06-01")).all()
    assert reps["active"].tolist().count("false") == 1
    assert len(truth) == 5 * 11 * 7 and (truth["effect"] > 0).all()


@pytest.mark.slow
def test_allocate_writes_back_keeps_sticky_leads_and_learns_effects(crm_with_reps, mlflow_store, tmp_path, capsys):
    config = tmp_path / "params.yaml"
    # LightGBM alone: the allocation reads the model's probabilities whatever the recipe, and
    # the training costs half as much without the logistic half of a blend
    config.write_text(yaml.safe_dump({**FAST, "train": {**FAST["train"], "blend": False}}))
    main(["train", "--data", str(crm_with_reps), "--config", str(config)])
    out = capsys.readouterr().out
    assert "owner_id" in out and "allocate" in out  # the leakage guard names the exclusion and why
    db = f"sqlite:///{tmp_path / 'crm.db'}"
    main(["score", "--data", str(crm_with_reps), "--as-of", "2025-07-01", "--out", db, "--config", str(config)])
    args = ["allocate", "--data", str(crm_with_reps), "--scores", db, "--reps", str(crm_with_reps / "reps.csv"),
            "--out", db, "--config", str(config), "--compare-effects", str(crm_with_reps / "rep_effects.csv"),
            "--effects-out", str(tmp_path / "effects.csv")]
    main([*args, "--min-score", "8"])  # a small CRM routes few leads: take more
    out = capsys.readouterr().out
    assert "per rep:" in out and "round-robin" in out and "whoever is free" in out
    assert "under the effects of" in out and "rep effects from" in out
    scores = read_table(db, "lead_scores")
    first = read_table(db, "lead_assignments", schema=AssignmentOutput)
    assert list(first.columns) == AssignmentOutput.names()
    assert set(first["lead_id"]) == set(scores["lead_id"])  # one row per open lead, never dropped
    assert first["reason"].notna().all()
    leads = pd.read_csv(crm_with_reps / "leads.csv", dtype=str).dropna(subset=["lead_id"]).set_index("lead_id")
    reps = pd.read_csv(crm_with_reps / "reps.csv", dtype=str, keep_default_na=False).set_index("rep_id")
    owner = first["lead_id"].map(leads["owner_id"])
    active_owner = owner.isin(reps.index[reps["active"] == "true"])
    assert (first.loc[active_owner, "rep_id"] == owner[active_owner]).all()  # owned leads stay
    new = first[first["rep_id"].notna() & ~active_owner]
    assert len(new) > 0
    assert (new.groupby("rep_id").size() <= new["rep_id"].map(reps["capacity"].astype(int)).groupby(new["rep_id"]).first()).all()
    for _, row in new.iterrows():  # territory
        country = leads.loc[row["lead_id"], "country"]
        assert isinstance(country, str) and country in reps.loc[row["rep_id"], "country"].split("|")
    effects = pd.read_csv(tmp_path / "effects.csv")
    assert {"rep_id", "segment", "effect", "low", "high"} <= set(effects.columns)
    assert ((effects["low"] <= effects["effect"]) & (effects["effect"] <= effects["high"])).all()

    # a second run on the same scores: the new assignments are now sticky (from the target)
    main([*args, "--min-score", "8"])
    second = read_table(db, "lead_assignments", schema=AssignmentOutput).set_index("lead_id")
    kept = new.set_index("lead_id")["rep_id"]
    assert (second.loc[kept.index, "rep_id"] == kept).all()
    assert second.loc[kept.index, "reason"].str.contains("assigned by a previous run").all()
    history = read_table(db, "lead_assignments_history", schema=AssignmentOutput)
    assert len(history) == len(first)  # same (lead, as_of, model_version): upserted, not doubled

    # --reassign frees them again; --min-score chooses other leads; --balance runs
    main([*args, "--reassign", "--balance", "--min-score", "20"])
    third = read_table(db, "lead_assignments", schema=AssignmentOutput)
    below = third["lead_id"].map(scores.set_index("lead_id")["score"]) < 20
    assert third.loc[below, "reason"].str.contains("below --min-score 20").any()

    # the write-back guards: older scores are refused unless --allow-older; the shrink guard
    # does not apply (assignments churn); another model's assignments only with --replace
    def run(extra: list[str], scores_file: Path) -> tuple[int, str]:
        try:
            given = list(args)
            given[args.index("--scores") + 1] = str(scores_file)
            main([*given, "--min-score", "20", *extra])
            code = 0
        except SystemExit as exc:
            code = int(exc.code or 0)
        return code, capsys.readouterr().err

    older = tmp_path / "older.parquet"
    write_scores(scores.assign(as_of=pd.Timestamp("2025-06-01")), older)
    code, err = run([], older)
    assert code == 2 and "older than the newest as-of 2025-07-01" in err and "--allow-older" in err
    pd.testing.assert_frame_equal(read_table(db, "lead_assignments", schema=AssignmentOutput), third)
    code, err = run(["--allow-older"], older)
    assert code == 0, err
    assert set(read_table(db, "lead_assignments", schema=AssignmentOutput)["as_of"]) == {pd.Timestamp("2025-06-01")}
    few = tmp_path / "few.parquet"  # a tenth of the leads: the scores' shrink guard would refuse
    write_scores(scores.head(max(1, len(scores) // 10)), few)
    code, err = run([], few)
    assert code == 0, err
    assert len(read_table(db, "lead_assignments", schema=AssignmentOutput)) == max(1, len(scores) // 10)
    assert len(read_table(db, "lead_assignments_history", schema=AssignmentOutput)) > len(scores)
    other = tmp_path / "other.parquet"
    write_scores(scores.assign(model_version="other-model/1"), other)
    model = ["--model", f"models:/{scores['model_version'].iloc[0]}"]
    code, err = run(model, other)
    assert code == 2 and "holds scores of model 'lead-conversion'" in err and "--replace" in err
    code, err = run([*model, "--replace"], other)
    assert code == 0, err
    assert set(read_table(db, "lead_assignments", schema=AssignmentOutput)["model_version"]) == {"other-model/1"}


@pytest.mark.postgres
def test_assignments_write_to_files_and_postgres(tmp_path):
    pg = require_postgres()
    frame = pd.DataFrame({
        "lead_id": ["a", "b", "c"], "rep_id": ["R1", None, "R1"], "probability": [0.5, 0.2, 0.3],
        "expected_conversions": [0.6, None, 0.3], "rank_for_rep": pd.array([1, None, 2], dtype="Int64"),
        "reason": ["x", "unassigned: capacity exhausted", "y"], "as_of": pd.Timestamp("2026-01-01"),
        "model_version": "m/1", "assigned_at": pd.Timestamp("2026-01-01 06:00"),
    })
    table = f"test_assign_{uuid.uuid4().hex[:10]}"  # its own table: tests may run in parallel
    try:
        for target in (str(tmp_path / "a.parquet"), str(tmp_path / "a.csv"), pg):
            write_scores(frame, target, table, schema=AssignmentOutput)
            back = read_table(target, table, schema=AssignmentOutput)
            assert back["rep_id"].isna().tolist() == [False, True, False]
            assert back["rank_for_rep"].tolist()[0] == 1 and pd.isna(back["rank_for_rep"].iloc[1])
    finally:
        import sqlalchemy as sa

        from convert.io.writers import engine_url

        engine = sa.create_engine(engine_url(pg))
        with engine.begin() as conn:
            conn.execute(sa.text(f'DROP TABLE IF EXISTS "{table}", "{table}_history" CASCADE'))
        engine.dispose()
    with pytest.raises(Exception, match="missing column"):
        write_scores(frame.drop(columns=["reason"]), tmp_path / "b.parquet", schema=AssignmentOutput)


def test_owner_column_may_not_be_a_feature() -> None:
    with pytest.raises(ConfigError, match="owner column"):
        Config.from_dict({"features": {"extra_attributes": [{"table": "leads", "column": "owner_id", "kind": "categorical"}]}})


@pytest.mark.slow
def test_demo_allocation_beats_baselines_under_the_true_effects(tmp_path, mlflow_store) -> None:
    """The demo's acceptance: 20,000 leads, 8 reps, the default configuration. Under the
    simulator's true effects our allocation's expected conversions beat round-robin and
    greedy-by-score, and at least 90 % of the true effects lie in the learned 95 % intervals."""
    from convert import steps

    data = tmp_path / "demo"
    generate_crm(data, n_leads=20_000, seed=42, reps=8)
    config = Config()
    steps.train_step(data, config)
    db = f"sqlite:///{tmp_path / 'crm.db'}"
    steps.score_step(data, config, pd.Timestamp("2026-01-01"), db, progress=False)
    result = steps.allocate_step(data, config, db, str(data / "reps.csv"), db,
                                 compare_effects=str(data / "rep_effects.csv"))
    truth = result.truth
    assert truth["allocation"] > truth["round_robin"] and truth["allocation"] > truth["greedy"]
    t = result.effects.table.merge(pd.read_csv(data / "rep_effects.csv")[["rep_id", "segment", "effect"]]
                                   .rename(columns={"effect": "true"}), on=["rep_id", "segment"])
    inside = ((t["low"] <= t["true"]) & (t["true"] <= t["high"])).mean()
    assert len(t) > 300 and inside >= 0.90  # measured 97.0 % (88.2 % before the segment calibration)
    # under the learned effects too (what the objective maximises), on the same leads
    c = result.allocation.comparison
    assert c["allocation"] >= c["greedy"] and c["allocation"] >= c["round_robin"]
    reps = list(result.allocation.per_rep["rep_id"])
    learned = expected_under(result.allocation, result.allocation.assignments, result.effects, reps)
    assert learned["allocation"] == pytest.approx(c["allocation"])
    assert np.isfinite(result.effects.per_rep["effect"]).all()
