"""Flat tables (the contract's "Flat tables" section): loading, typing, outcomes, splits,
training, scoring and write-back, and the flat model's own registry name."""

from __future__ import annotations

import json
import re

import numpy as np
import pandas as pd
import pytest
import yaml
from tests.conftest import FAST, flat_table

from convert.cli import main
from convert.config import Config
from convert.exceptions import ConfigError, ContractError, LeakageError
from convert.io.writers import read_table
from convert.model.crossfit import ordered_folds, random_folds
from convert.model.train import train_flat
from convert.sources.flat import load_flat
from convert.sources.mapping import mapping_from_dict

SELECT = mapping_from_dict({"missing_values": ["Select"], "flat": {"categorical": ["Region"]}})


@pytest.fixture(scope="module")
def report_csv(tmp_path_factory):
    path = tmp_path_factory.mktemp("flat") / "report.csv"
    flat_table().to_csv(path, index=False)
    return path


@pytest.fixture(scope="module")
def fast() -> Config:
    return Config.from_dict(FAST)


def test_columns_are_typed_and_unusable_ones_named(report_csv, fast):
    table = load_flat(report_csv, fast, SELECT, target="Converted", id_column="Lead Id")
    assert table.kinds["Visits"] == "numeric" and table.kinds["Minutes on site"] == "numeric"
    assert table.kinds["Region"] == "categorical"  # integer codes, categorical by configuration
    assert table.kinds["Source"] == "categorical"
    assert table.frame["Visits"].dtype == "float64"
    assert table.frame["Company size"].isna().mean() == pytest.approx(0.1, abs=0.02)  # "Select" is missing
    assert table.dropped == {"Constant flag": "one value in every row"}
    assert table.ids.iloc[0] == "P00000"
    assert table.label.mean() == pytest.approx((flat_table()["Converted"] == "yes").mean())
    assert table.report.quarantined == 0


def test_configuration_overrides_detection(report_csv):
    cfg = Config.from_dict({"flat": {"categorical": ["Visits"]}})
    table = load_flat(report_csv, cfg, target="Converted")
    assert table.kinds["Visits"] == "categorical" and table.kinds["Region"] == "numeric"
    assert table.ids.tolist()[:3] == ["1", "2", "3"]  # no --id: the row number


def test_numeric_column_with_a_stray_text_value_keeps_it_as_missing_and_warns(tmp_path, fast):
    frame = flat_table(400)
    frame.loc[7, "Visits"] = "n/a"
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    table = load_flat(path, fast, target="Converted")
    assert table.kinds["Visits"] == "numeric" and np.isnan(table.frame.loc[7, "Visits"])
    (warning,) = table.report.tables["leads"].warnings
    assert "Visits" in warning and "row 8" in warning and "'n/a'" in warning


def test_identifier_like_and_empty_columns_are_not_features(tmp_path, fast):
    frame = flat_table(400).assign(Email=[f"p{i}@x.com" for i in range(400)], Notes="")
    path = tmp_path / "r.csv"
    frame.to_csv(path, index=False)
    table = load_flat(path, fast, target="Converted")
    assert table.dropped["Email"].startswith("identifier-like")
    assert table.dropped["Notes"] == "empty in every row"
    assert "Lead Id" in table.dropped  # without --id, the id column is a column like any other


@pytest.mark.parametrize(
    "values, positive, expected",
    [
        (["1", "0", "1.0", "TRUE", "false", "Yes", " no "], None, [1, 0, 1, 1, 0, 1, 0]),
        (["Won", "Lost", "won", "Lost", "Won", "Lost", "Lost"], "Won", [1, 0, 1, 0, 1, 0, 0]),
    ],
)
def test_outcome_values(tmp_path, values, positive, expected):
    path = tmp_path / "r.csv"
    pd.DataFrame({"x": range(len(values)), "y": values}).to_csv(path, index=False)
    table = load_flat(path, Config(), target="y", positive=positive)
    assert table.label.tolist() == expected


def test_outcome_values_outside_the_pair_are_quarantined_or_refused(tmp_path):
    path = tmp_path / "r.csv"
    values = ["yes", "no"] * 50 + ["maybe", ""]
    pd.DataFrame({"x": range(len(values)), "y": values}).to_csv(path, index=False)
    table = load_flat(path, Config(), target="y")
    rejects = table.report.rejects.fillna({"value": ""})
    assert rejects[["row", "column", "value", "reason"]].values.tolist() == [
        [101, "y", "maybe", "outcome 'maybe' is neither positive (1, true, yes) nor negative (0, false, no)"],
        [102, "y", "", "the outcome is empty"],
    ]
    assert len(table.label) == 100  # counted in the report, never silently dropped
    # Won / Lost / Open without naming the positive value: a mis-specified outcome, an error
    pd.DataFrame({"x": range(9), "y": ["Won", "Lost", "Open"] * 3}).to_csv(path, index=False)
    with pytest.raises(ContractError) as err:
        load_flat(path, Config(), target="y")
    assert (err.value.file, err.value.row, err.value.column) == ("r.csv", 1, "y")
    assert "'Won' (3)" in str(err.value) and "--positive" in str(err.value)
    # naming Won: Lost and Open are both "other", so still unsettled; flat.negative settles it
    with pytest.raises(ContractError, match="flat.negative"):
        load_flat(path, Config(), target="y", positive="Won")
    settled = mapping_from_dict({"flat": {"negative": ["Lost"]}})
    table = load_flat(path, Config(data={"max_quarantine_share": 0.5}), settled, target="y", positive="Won")
    assert table.label.tolist() == [1, 0] * 3 and table.report.tables["leads"].reasons == {
        "outcome 'Open' is neither positive (won) nor negative (lost)": 3}


def test_ids_must_be_unique_and_filled(tmp_path):
    path = tmp_path / "r.csv"
    pd.DataFrame({"id": ["a", "b", "", "a"], "y": ["1", "0", "1", "0"]}).to_csv(path, index=False)
    with pytest.raises(ContractError) as err:
        load_flat(path, Config(data={"max_quarantine_share": 0.5}), target="y", id_column="id")
    assert (err.value.row, err.value.column) == (4, "id") and "also at row 1" in str(err.value)
    pd.DataFrame({"id": ["a", "b", "", "c"], "y": ["1", "0", "1", "0"]}).to_csv(path, index=False)
    table = load_flat(path, Config(data={"max_quarantine_share": 0.5}), target="y", id_column="id")
    assert table.report.rejects["reason"].tolist() == ["empty id"] and table.ids.tolist() == ["a", "b", "c"]
    with pytest.raises(ContractError, match="--strict|strict"):
        load_flat(path, Config(data={"max_quarantine_share": 0.5}), target="y", id_column="id", strict=True)


def test_missing_target_and_id_columns_name_the_file_and_column(report_csv):
    with pytest.raises(ContractError) as err:
        load_flat(report_csv, Config(), target="Outcome")
    assert (err.value.file, err.value.column) == ("report.csv", "Outcome")
    with pytest.raises(ContractError) as err:
        load_flat(report_csv, Config(), target="Converted", id_column="ID")
    assert err.value.column == "ID"
    with pytest.raises(ConfigError, match="--target"):
        load_flat(report_csv, Config())


def test_random_folds_are_stratified_and_ordered_folds_chain_forward_in_file_order():
    y = (np.arange(1000) % 5 == 0).astype(int)
    cfg = Config.from_dict({"train": {"min_positives": 20}})
    split = random_folds(y, cfg)
    rates = [y[f.test].mean() for f in split.folds]
    assert max(rates) - min(rates) < 0.01
    assert sorted(np.concatenate([f.test for f in split.folds]).tolist()) == list(range(1000))
    outer = np.concatenate([f.test for f in split.outer])
    for f in split.inner:  # inner folds never fit on (or predict) an outer row
        assert not np.isin(f.train, outer).any() and not np.isin(f.train, f.test).any()
    ordered = ordered_folds(y, cfg)
    for f in ordered.folds:  # trained on earlier rows only, judged on the next block
        assert f.train.max() < f.test.min() and f.train.tolist() == list(range(f.test.min()))
    # the outer folds are the latest rows: at least 20% of the conversions, whole rows in file order
    held = np.flatnonzero(ordered.masks["holdout"])
    assert held.tolist() == list(range(held.min(), 1000)) and y[held].sum() >= 0.2 * y.sum()
    again = random_folds(y, cfg)
    assert all((a.test == b.test).all() for a, b in zip(again.folds, split.folds, strict=True))  # seeded


def test_train_flat_calibrates_and_beats_the_baseline_or_matches_it(report_csv, fast):
    table = load_flat(report_csv, fast, SELECT, target="Converted", id_column="Lead Id")
    result = train_flat(table, fast, SELECT)
    m = result.evaluation.metrics
    assert m.loc["roc_auc", "model"] > 0.7
    assert m.loc["roc_auc", "model"] > m.loc["roc_auc", "logistic_regression"] - 0.03
    assert m.loc["ece", "model"] < 0.06
    flat = result.model.metadata.flat
    assert result.model.metadata.is_flat and flat is not None
    assert flat.columns["Minutes on site"] == "minutes_on_site"
    assert "Constant flag" not in flat.columns
    assert result.leakage.suspects == []
    assert set(result.model.catalog_.family_of(result.model.spec_.names)) == {"fit"}


@pytest.mark.slow
def test_planted_leaks_stop_training_and_can_be_excluded(tmp_path, fast):
    path = tmp_path / "leaky.csv"
    flat_table(leaks=True).to_csv(path, index=False)
    table = load_flat(path, fast, SELECT, target="Converted", id_column="Lead Id")
    with pytest.raises(LeakageError) as err:
        train_flat(table, fast, SELECT)
    message = str(err.value)
    assert "Status Note: out-of-fold single-column ROC AUC 0.9" in message
    assert re.search(r"Sales Rating: filled for [78]\d% of converted vs \d% of unconverted", message)
    assert "--exclude 'Status Note'" in message and "--allow" in message
    suspects = {c.column for c in err.value.report.blocking}
    assert suspects == {"Status Note", "Sales Rating"}
    cfg = fast.with_overrides(leakage__exclude=("Status Note",), leakage__allow=("Sales Rating",))
    result = train_flat(table, cfg, SELECT)
    card = result.model.metadata.leakage or {}
    assert card["excluded"] == {"Status Note": "leakage.exclude in the configuration"}
    assert card["allowed"] == ["Sales Rating"]
    assert "status_note" not in result.model.spec_.names and "sales_rating" in result.model.spec_.names


@pytest.mark.slow
def test_flat_mode_end_to_end_on_the_command_line(tmp_path, mlflow_store, capsys, sim_export):
    path = tmp_path / "report.csv"
    flat_table(leaks=True).to_csv(path, index=False)
    mapping = tmp_path / "m.yaml"
    mapping.write_text(yaml.safe_dump({"missing_values": ["Select"], "flat": {
        "target": "Converted", "id": "Lead Id", "categorical": ["Region"], "engagement": ["Visits", "Minutes on site"],
        "exclude": {"Sales Rating": "filled by sales after contact"}}}))
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    base = ["--data", str(path), "--mapping", str(mapping), "--config", str(config)]
    with pytest.raises(SystemExit) as code:  # the leakage guard, through the CLI: exit code 2
        main(["train", *base])
    assert code.value.code == 2
    assert "Status Note" in capsys.readouterr().err
    main(["train", *base, "--exclude", "Status Note", "--summary", str(tmp_path / "s.json")])
    out = capsys.readouterr().out
    assert "logistic_regression" in out and out.strip().splitlines()[-1] == "models:/lead-conversion-flat/1"
    summary = json.loads((tmp_path / "s.json").read_text())
    assert summary["mode"] == "flat" and set(summary["leakage"]["suspects"]) == {"Status Note", "Sales Rating"}
    auc = summary["metrics"]["model"]["roc_auc"]
    from mlflow import MlflowClient  # the screen's figures and choices are in the model card

    client = MlflowClient()
    run = client.get_run(client.get_model_version("lead-conversion-flat", "1").run_id)
    assert set(run.data.params["leakage.excluded"].split(", ")) == {"Sales Rating", "Status Note"}
    assert set(run.data.params["leakage.suspects"].split(", ")) == {"Sales Rating", "Status Note"}
    card = client.download_artifacts(run.info.run_id, "leakage/leakage.json", str(tmp_path))
    screened = {c["column"]: c for c in json.loads(open(card).read())["columns"]}
    assert screened["Status Note"]["auc"] > 0.9 and screened["Sales Rating"]["decision"] == "excluded"
    model_card = json.loads(open(client.download_artifacts(run.info.run_id, "model_card.json", str(tmp_path))).read())
    assert model_card["leakage"]["excluded"]["Status Note"] == "leakage.exclude in the configuration"

    db = f"sqlite:///{tmp_path / 'crm.db'}"
    for _ in range(2):  # a re-run the same day is idempotent
        main(["score", "--data", str(path), "--config", str(config), "--out", db, "--top", "2"])
    out = capsys.readouterr().out
    assert "model lead-conversion-flat/1" in out
    scores = read_table(db, "lead_scores")
    assert len(scores) == 3000 and scores["lead_id"].is_unique and scores["lead_id"].iloc[0].startswith("P")
    assert (scores["base_score"] + scores["fit_points"] + scores["engagement_points"] == scores["score"]).all()
    assert scores["engagement_points"].abs().sum() > 0 and scores["reason_1"].str.contains(":").any()
    assert set(scores["grade"]) <= {"A", "B", "C", "D"}
    assert len(read_table(db, "lead_scores_history")) == 3000

    main(["evaluate", "--data", str(path), "--config", str(config), "--out", str(tmp_path / "eval"),
          "--model", "models:/lead-conversion-flat@champion"])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["model"]["roc_auc"] == pytest.approx(auc)  # the same hold-out as in training

    lead = scores.sort_values("score").iloc[-1]["lead_id"]
    main(["explain", "--data", str(path), "--lead-id", lead, "--config", str(config),
          "--plot", str(tmp_path / "w.png")])
    assert f"lead {lead}: score" in capsys.readouterr().out

    # flat options on an export folder are refused; a file lacking a model column is refused
    with pytest.raises(SystemExit):
        main(["train", "--data", str(sim_export), "--target", "Converted", "--config", str(config)])
    assert "for a flat file" in capsys.readouterr().err
    other = tmp_path / "other.csv"
    flat_table(50).drop(columns=["Visits"]).to_csv(other, index=False)
    with pytest.raises(SystemExit):
        main(["score", "--data", str(other), "--config", str(config), "--out", str(tmp_path / "o.parquet")])
    assert "lacks column 'Visits'" in capsys.readouterr().err
    from convert.registry import store as registry

    assert not registry.champion_exists("lead-conversion")  # the event model's name is untouched


@pytest.mark.slow
def test_a_flat_training_set_from_features_trains_the_model_the_file_gives(tmp_path, mlflow_store, capsys):
    """`features --target` then `train --training-set` (the DVC pipeline) on a flat file gives the
    model `train --data FILE --target` gives: the same design in the set, the same scores."""
    from convert.model.bundle import LeadScoringModel
    from convert.model.training_set import read_training_set

    path = tmp_path / "report.csv"
    flat_table(900, seed=11).to_csv(path, index=False)
    config = tmp_path / "params.yaml"
    config.write_text(yaml.safe_dump(FAST))
    flat = ["--target", "Converted", "--id", "Lead Id", "--split", "ordered"]
    common = ["--config", str(config)]
    main(["features", "--data", str(path), *flat, "--out", str(tmp_path / "ts.parquet"), *common])
    assert "training set: 900 rows" in capsys.readouterr().out
    stored = read_training_set(tmp_path / "ts.parquet")
    assert stored.training_set.design == "ordered"
    main(["train", "--training-set", str(tmp_path / "ts.parquet"), "--save", str(tmp_path / "from_set"), *common])
    main(["train", "--data", str(path), *flat, "--save", str(tmp_path / "from_file"), *common])
    assert capsys.readouterr().out.strip().splitlines()[-1] == "models:/lead-conversion-flat/2"
    a, b = LeadScoringModel.load(tmp_path / "from_set"), LeadScoringModel.load(tmp_path / "from_file")
    assert a.metadata.is_flat and a.metadata.flat is not None and a.metadata.flat.split == "ordered"
    x = stored.training_set.frame
    np.testing.assert_array_equal(a.predict_proba(x)[:, 1], b.predict_proba(x)[:, 1])


def test_validate_a_flat_file_on_the_command_line(report_csv, tmp_path, capsys):
    main(["validate", "--data", str(report_csv), "--target", "Converted", "--id", "Lead Id",
          "--rejects", str(tmp_path / "r.csv")])
    out = capsys.readouterr().out
    assert "report.csv" in out and "3,000" in out
    assert "'Constant flag'" in out and "not a feature: one value in every row" in out
    assert (tmp_path / "r.csv").exists()
