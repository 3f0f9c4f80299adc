"""Issue 14, findings 6 and 8: every user-facing failure is one message and exit code 2.

The command runs as a user runs it (a subprocess of ``python -m convert``), so a Python
traceback anywhere on its output fails the test. A command that only reads the registry
(``score`` without a trained model, ``promote``) never creates an MLflow store.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import yaml
from tests.conftest import FAST, small_tables, write_export


def run(args: list[str], cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    full = {k: v for k, v in os.environ.items() if not k.startswith("MLFLOW_")}
    full.update({"OMP_WAIT_POLICY": "PASSIVE", **(env or {})})
    return subprocess.run([sys.executable, "-m", "convert", *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=300)


def assert_clean_exit_2(result: subprocess.CompletedProcess[str], *needles: str) -> None:
    text = result.stdout + result.stderr
    assert result.returncode == 2, text
    assert "Traceback" not in text, text
    for needle in needles:
        assert needle in text, text


@pytest.fixture(scope="module")
def bundle(trained, tmp_path_factory) -> Path:
    result, _ = trained
    return result.model.save(tmp_path_factory.mktemp("bundle") / "lead-conversion")


@pytest.fixture
def config_file(tmp_path) -> Path:
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump(FAST))
    return path


@pytest.mark.slow
def test_a_mistyped_command_prints_the_usage_message(tmp_path):
    result = run(["scor", "--data", "x"], tmp_path)
    assert_clean_exit_2(result, "No such command", "score")
    assert_clean_exit_2(run(["generate", "--out", str(tmp_path / "g"), "--leads", "0"], tmp_path), "--leads")
    assert_clean_exit_2(run(["score", "--data"], tmp_path), "--data")


@pytest.mark.parametrize(
    ("as_of", "needle"),
    [("yesterday", "'yesterday' is not a valid date"),  # one subprocess in the fast lane, the others slow
     pytest.param("2025-06-31", "day is out of range for month", marks=pytest.mark.slow),
     pytest.param("", "--as-of is empty", marks=pytest.mark.slow)],
)
def test_an_unusable_as_of_is_a_clear_error(sim_export, bundle, tmp_path, as_of, needle):
    result = run(["score", "--data", str(sim_export), "--as-of", as_of, "--out", str(tmp_path / "s.parquet"),
                  "--model", str(bundle)], tmp_path)
    assert_clean_exit_2(result, needle, "ISO 8601")
    assert not (tmp_path / "s.parquet").exists()


def test_parse_as_of_is_the_one_parser():
    from convert.exceptions import ConfigError
    from convert.features.labels import parse_as_of

    assert parse_as_of("2025-07-01T08:00:00+02:00") == pd.Timestamp("2025-07-01 06:00")
    assert parse_as_of("2025-07-01T08:00Z") == pd.Timestamp("2025-07-01 08:00")
    assert parse_as_of(pd.Timestamp("2025-07-01", tz="Europe/Paris")) == pd.Timestamp("2025-06-30 22:00")
    for bad in ("yesterday", "2025-06-31", " ", "2025-13-01"):
        with pytest.raises(ConfigError, match="--from"):
            parse_as_of(bad, "--from")


@pytest.mark.slow
def test_an_as_of_before_the_data_or_an_empty_population_is_a_clear_error(sim_export, bundle, config_file, tmp_path):
    out = tmp_path / "s.parquet"
    before = run(["score", "--data", str(sim_export), "--as-of", "1990-01-01", "--out", str(out),
                  "--model", str(bundle), "--config", str(config_file)], tmp_path)
    assert_clean_exit_2(before, "no lead is open at 1990-01-01", "first lead was created on 2023-01-")
    # every lead of this export has converted before the as-of: nobody is left to score
    tables = small_tables()
    tables["leads"]["converted_at"] = "2025-03-15"
    closed = write_export(tmp_path / "closed", **tables)
    empty = run(["score", "--data", str(closed), "--as-of", "2025-06-01", "--out", str(out), "--model", str(bundle),
                 "--config", str(config_file)], tmp_path)
    assert_clean_exit_2(empty, "no lead is open at 2025-06-01")
    assert not out.exists()
    train = run(["train", "--data", str(closed), "--as-of", "1990-01-01", "--config", str(config_file)], tmp_path,
                env={"MLFLOW_TRACKING_URI": f"sqlite:///{tmp_path / 'ml.db'}"})
    assert_clean_exit_2(train, "as-of times")
    report = run(["report", "--data", str(sim_export), "--as-of", "1990-01-01", "--model", str(bundle),
                  "--out", str(tmp_path / "r.html"), "--config", str(config_file)], tmp_path)
    assert_clean_exit_2(report, "no lead is open")


@pytest.mark.slow
def test_duckdb_out_of_memory_names_the_setting(sim_export, bundle, tmp_path):
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump({**FAST, "features": {"duckdb_memory_limit": "2MB"}}))
    for command in (["validate"], ["score", "--as-of", "2025-07-01", "--out", str(tmp_path / "s.parquet"),
                                   "--model", str(bundle)]):
        # --no-cache: a cached load would attach the tables another test validated, in no memory
        result = run([*command, "--data", str(sim_export), "--config", str(config), "--no-cache"], tmp_path)
        assert_clean_exit_2(result, "DuckDB ran out of memory", "features.duckdb_memory_limit")


@pytest.mark.slow
def test_reading_commands_never_create_a_registry(sim_export, tmp_path):
    """`score` without a model and `promote` say so; no mlflow.db, no MLflow INFO lines."""
    for args in (["score", "--data", str(sim_export), "--as-of", "2025-07-01", "--out", str(tmp_path / "s.parquet")],
                 ["promote"]):
        result = run(args, tmp_path)
        assert_clean_exit_2(result, "there is no model registry at", "convert-leads train")
        assert "INFO" not in result.stdout + result.stderr
        assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "mlruns").exists()
    elsewhere = tmp_path / "registry" / "mlflow.db"
    result = run(["promote"], tmp_path, env={"MLFLOW_TRACKING_URI": f"sqlite:///{elsewhere}"})
    assert_clean_exit_2(result, str(elsewhere))
    assert not elsewhere.exists()
