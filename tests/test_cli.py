"""The convert-leads command end to end: generate, validate, train, promote, score, explain."""

from __future__ import annotations

import json
import subprocess
import sys

import pandas as pd
import pytest
from tests.conftest import FAST

from convert.cli import main
from convert.io.writers import read_table


@pytest.fixture
def config_file(tmp_path):
    import yaml

    path = tmp_path / "params.yaml"
    # two inner folds: the small CRM below holds about 145 conversions (as tests/test_spark.py)
    path.write_text(yaml.safe_dump({**FAST, "train": {**FAST["train"], "inner_folds": 2}}))
    return path


@pytest.fixture(scope="module")
def small_export(tmp_path_factory):
    """800 leads: what these tests check (the commands' wiring, one model equal to another,
    write-back) holds at any size, and every training here costs a quarter of the session's
    2,500-lead CRM's."""
    from convert.simulator.crm import generate_crm

    folder = tmp_path_factory.mktemp("small_crm")
    generate_crm(folder, n_leads=800, seed=3, start="2023-01-01", end="2025-06-30")
    return folder


@pytest.mark.slow  # a subprocess; test_cli_errors runs `python -m convert` in the fast lane
def test_python_m_convert_is_the_same_command():
    out = subprocess.run([sys.executable, "-m", "convert", "--help"], capture_output=True, text=True, check=True)
    for command in ("generate", "validate", "train", "promote", "score", "explain"):
        assert command in out.stdout


@pytest.mark.slow
def test_train_score_explain_end_to_end(small_export, config_file, mlflow_store, tmp_path, capsys):
    main(["train", "--data", str(small_export), "--config", str(config_file)])
    out = capsys.readouterr().out
    assert "source_rate" in out and "logistic_regression" in out and "points_rule" in out
    assert out.strip().splitlines()[-1] == "models:/lead-conversion/1"

    db = f"sqlite:///{tmp_path / 'crm.db'}"
    for _ in range(2):  # a re-run leaves one current row per open lead
        main(["score", "--data", str(small_export), "--as-of", "2025-07-01", "--out", db,
              "--config", str(config_file), "--top", "3"])
    out = capsys.readouterr().out
    assert "model lead-conversion/1" in out
    current = read_table(db, "lead_scores")
    history = read_table(db, "lead_scores_history")
    assert current["lead_id"].is_unique
    assert len(history) == len(current)  # same (lead, as_of, version): no duplicate history
    assert (current["base_score"] + current["fit_points"] + current["engagement_points"] == current["score"]).all()

    # a later as-of: converted leads leave the current table, history keeps both runs
    main(["score", "--data", str(small_export), "--as-of", "2025-07-15", "--out", db, "--config", str(config_file)])
    later = read_table(db, "lead_scores")
    assert set(pd.to_datetime(later["as_of"])) == {pd.Timestamp("2025-07-15")}
    assert len(read_table(db, "lead_scores_history")) == len(current) + len(later)

    lead = current.sort_values("score").iloc[-1]["lead_id"]
    png = tmp_path / "w.png"
    main(["explain", "--data", str(small_export), "--as-of", "2025-07-01", "--lead-id", lead,
          "--plot", str(png), "--config", str(config_file)])
    out = capsys.readouterr().out
    assert f"lead {lead}: score" in out and png.exists()

    main(["promote", "--config", str(config_file)])
    assert "already the champion" in capsys.readouterr().out


@pytest.mark.slow
def test_bundle_evaluate_and_score_to_a_parquet_file(small_export, config_file, mlflow_store, tmp_path, capsys):
    bundle = tmp_path / "models" / "lead-conversion"
    main(["train", "--data", str(small_export), "--config", str(config_file), "--save", str(bundle)])
    train_out = capsys.readouterr().out
    main(["evaluate", "--data", str(small_export), "--model", str(bundle), "--out", str(tmp_path / "eval"),
          "--config", str(config_file)])
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert set(metrics) >= {"model", "source_rate", "logistic_regression", "points_rule"}
    # the same hold-out as in training gives the same figure
    auc = f"{metrics['model']['roc_auc']:.4f}"
    assert any(line.startswith("roc_auc") and auc in line for line in train_out.splitlines())
    assert (tmp_path / "eval" / "reliability.png").exists()

    out = tmp_path / "scores.parquet"
    main(["score", "--data", str(small_export), "--as-of", "2025-07-01", "--out", str(out),
          "--model", "models:/lead-conversion@champion", "--config", str(config_file)])
    frame = pd.read_parquet(out)
    assert frame["model_version"].unique().tolist() == ["lead-conversion/1"]


def test_features_command_writes_the_training_set(sim_export, tmp_path, capsys):
    out = tmp_path / "ts.parquet"
    main(["features", "--data", str(sim_export), "--out", str(out), "--catalog", str(tmp_path / "c.csv"),
          "--rejects", str(tmp_path / "r.csv")])
    frame = pd.read_parquet(out)
    catalog = pd.read_csv(tmp_path / "c.csv")
    assert list(frame.columns[:3]) == ["lead_id", "as_of", "label"]
    assert list(frame.columns[3:]) == catalog["name"].tolist()
    assert set(catalog["family"]) == {"fit", "engagement"}


def _figures(out: str) -> list[str]:
    """The training output's lines that carry results (not paths, run ids or versions)."""
    return [line for line in out.splitlines()
            if not line.startswith(("registered", "models:/", "model bundle", "loaded "))]


def _same(a: str, b: str) -> None:
    import difflib

    assert _figures(a) == _figures(b), "\n".join(difflib.unified_diff(_figures(a), _figures(b), lineterm=""))


@pytest.mark.slow  # trains twice (through the CLI / a second model)
def test_training_from_the_features_file_gives_the_model_of_the_export(
    small_export, config_file, mlflow_store, tmp_path, capsys
):
    """`features` then `train --training-set` (the DVC pipeline) gives the model `train --data`
    gives with the same configuration: same figures, same scores, points and reasons."""
    ts = tmp_path / "ts.parquet"
    common = ["--config", str(config_file), "--rejects", str(tmp_path / "r.csv")]
    main(["features", "--data", str(small_export), "--out", str(ts), *common])
    assert "leakage guard" in capsys.readouterr().out
    # two model names: each run registers the first version of its own (no champion to compare)
    main(["train", "--training-set", str(ts), "--save", str(tmp_path / "from_set"), "--model-name", "set", *common])
    from_set = capsys.readouterr().out
    main(["train", "--data", str(small_export), "--save", str(tmp_path / "from_export"), "--model-name", "export",
          *common])
    from_export = capsys.readouterr().out
    _same(from_set, from_export)

    scores = {}
    for name in ("from_set", "from_export"):
        out = tmp_path / f"{name}.parquet"
        main(["score", "--data", str(small_export), "--as-of", "2025-07-01", "--out", str(out),
              "--model", str(tmp_path / name), *common])
        scores[name] = pd.read_parquet(out).drop(columns=["model_version", "scored_at"], errors="ignore")
    assert len(scores["from_set"]) > 100
    pd.testing.assert_frame_equal(scores["from_set"], scores["from_export"])

    # with a champion (export/1): compared on the outer folds from the set as from the export
    capsys.readouterr()
    main(["train", "--data", str(small_export), "--model-name", "export", *common])
    again_export = capsys.readouterr().out
    main(["train", "--training-set", str(ts), "--model-name", "export", *common])
    again_set = capsys.readouterr().out
    assert "champion export/1's recipe" in again_set
    _same(again_set, again_export)

    # a configuration that would have built another set is refused
    with pytest.raises(SystemExit) as code:
        main(["train", "--training-set", str(ts), "--horizon-days", "30", *common])
    assert code.value.code == 2
    assert "other labels settings" in capsys.readouterr().err


def test_errors_exit_with_code_2_and_a_message(tmp_path, capsys):
    with pytest.raises(SystemExit) as code:
        main(["validate", "--data", str(tmp_path / "missing")])
    assert code.value.code == 2
    assert "does not exist" in capsys.readouterr().err
