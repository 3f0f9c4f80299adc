"""--engine spark: the same feature SQL and the same scoring code give the same numbers.

Skipped when pyspark or Java is missing, except under CI=true, where that is a failure.
"""

from __future__ import annotations

import importlib.util
import os
import shutil

import pandas as pd
import pytest
from tests.conftest import FAST, missing

from convert import build_features, load, score, train
from convert.config import Config
from convert.features.dialect import SPARK
from convert.features.engine import discover_event_types
from convert.features.labels import build_population
from convert.features.query import feature_sql

# one worker: one Spark session and one training of the module fixtures
pytestmark = pytest.mark.xdist_group("spark")

AS_OFS = [pd.Timestamp("2024-03-01"), pd.Timestamp("2024-09-15 12:00"), pd.Timestamp("2025-03-01")]
SCORE_AS_OF = pd.Timestamp("2025-06-01")
SCORED_AT = pd.Timestamp("2025-06-01 08:00:00")


def _require_spark() -> None:
    problems = []
    if importlib.util.find_spec("pyspark") is None:
        problems.append("pyspark is not installed (pip install -e '.[spark]')")
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        problems.append("no Java runtime (java on PATH or JAVA_HOME)")
    if problems:
        missing("Spark tests cannot run: " + "; ".join(problems))


@pytest.fixture(scope="module")
def spark():
    _require_spark()
    from convert.features.spark import spark_session

    session = spark_session(
        "convert-tests", "local[2]",
        {"spark.sql.shuffle.partitions": "4", "spark.ui.enabled": "false",
         "spark.sql.execution.arrow.maxRecordsPerBatch": "256"},
    )
    session.sparkContext.setLogLevel("ERROR")
    yield session
    session.stop()


@pytest.fixture(scope="module")
def world(tmp_path_factory, spark):
    """(config, CRMData, TrainResult, parquet folder) for a small simulated CRM."""
    from convert.features.spark import export_typed, load_tables
    from convert.simulator.crm import generate_crm

    folder = tmp_path_factory.mktemp("spark_crm")
    generate_crm(folder, n_leads=800, seed=3, start="2023-01-01", end="2025-06-30", bad_rows=False)
    # 800 leads hold about 145 conversions: two inner folds, as the refusal advises
    cfg = Config.from_dict(FAST).with_overrides(train__inner_folds=2)
    data = load(folder, cfg)
    result = train(data, cfg)
    parquet = export_typed(data.con, tmp_path_factory.mktemp("spark_parquet"))
    load_tables(spark, str(parquet))
    return cfg, data, result, parquet


def test_spark_dialect_spellings():
    sql = feature_sql("_population", "_grid", ["page_view", "it's \\odd"], Config().features, SPARK)
    assert "regexp_matches" not in sql and "epoch(" not in sql and "struct_pack" not in sql
    assert "RLIKE '\\\\b(director)\\\\b'" in sql  # backslashes escaped for Spark literals
    assert "'it\\'s \\\\odd'" in sql
    assert SPARK.quote("we`ird") == "`we``ird`"


@pytest.mark.slow
def test_seniority_regex_in_spark(spark):
    import duckdb

    from convert.features.dialect import DUCKDB, seniority_sql

    titles = ["Vice President of Sales", "CEO", "Sr. Director", "Engineering Manager", "Intern",
              "Data Analyst", "Janitor", "President", "vpn admin", "Co-Founder", "lead\\b dev", None]
    rows = spark.createDataFrame([(i, t) for i, t in enumerate(titles)], "i int, job_title string")
    rows.createOrReplaceTempView("_titles")
    got = [r[0] for r in spark.sql(
        f"SELECT {seniority_sql('job_title', SPARK)} FROM _titles ORDER BY i").collect()]
    con = duckdb.connect()
    con.execute("CREATE TABLE _titles (i INTEGER, job_title VARCHAR)")
    con.executemany("INSERT INTO _titles VALUES (?, ?)", list(enumerate(titles)))
    want = [r[0] for r in con.execute(
        f"SELECT {seniority_sql('job_title', DUCKDB)} FROM _titles ORDER BY i").fetchall()]
    assert got == want
    assert want[:5] == ["vp", "c_level", "director", "manager", "student"] and want[-1] is None


@pytest.mark.slow
def test_population_matches_duckdb(spark, world):
    from convert.features.spark import population_spark

    _, data, _, _ = world
    want = build_population(data.con, AS_OFS)
    got = population_spark(spark, AS_OFS).toPandas().sort_values(["as_of", "lead_id"])
    assert len(got) == len(want) > 0
    assert got["lead_id"].tolist() == want["lead_id"].astype(str).tolist()
    assert (pd.to_datetime(got["as_of"]).to_numpy() == pd.to_datetime(want["as_of"]).to_numpy()).all()


@pytest.mark.slow
def test_features_match_duckdb(spark, world):
    """The discovered vocabulary (scoring, below, covers the model's)."""
    from convert.features.spark import build_features_spark

    cfg, data, _, _ = world
    features_config = cfg.features
    event_types = discover_event_types(data.con, max(AS_OFS), features_config)
    population = build_population(data.con, AS_OFS)
    want = build_features(data.con, population, features_config, event_types).frame
    got = build_features_spark(spark, population, features_config, event_types)
    want = want.sort_values(["lead_id", "as_of"]).reset_index(drop=True)
    got = got.sort_values(["lead_id", "as_of"]).reset_index(drop=True)
    assert list(got.columns) == list(want.columns)
    assert len(got) == len(want) > 0
    got["as_of"] = got["as_of"].astype(want["as_of"].dtype)
    pd.testing.assert_frame_equal(got, want, check_exact=False, rtol=1e-12, atol=1e-9)


@pytest.mark.slow
def test_scores_match_duckdb(spark, world, tmp_path):
    """mapInPandas over Spark features == convert.scoring.score over DuckDB, from a model or a bundle folder."""
    from convert.features.spark import features_spark, population_spark
    from convert.scoring.spark import score_spark

    cfg, data, result, _ = world
    model = result.model
    want = score(data, model, SCORE_AS_OF, cfg, model_version="spark-test/1", scored_at=SCORED_AT)
    feats = features_spark(spark, population_spark(spark, [SCORE_AS_OF]),
                           model.features_config(cfg.features), model.spec_.event_types).cache()
    scored = score_spark(spark, feats, model, cfg.scoring, "spark-test/1", SCORED_AT)
    assert scored.schema.fieldNames() == list(want.columns)
    got = scored.toPandas().sort_values("lead_id").reset_index(drop=True)
    want = want.sort_values("lead_id").reset_index(drop=True)
    assert len(got) == len(want) > 0
    pd.testing.assert_series_equal(got["probability"], want["probability"], rtol=1e-12, atol=1e-12)
    for col in want.columns:
        if col == "probability":
            continue
        g, w = got[col], want[col]
        if col in ("as_of", "scored_at"):
            assert (pd.to_datetime(g).to_numpy() == pd.to_datetime(w).to_numpy()).all(), col
        else:
            g = g.astype(object).where(g.notna(), None).tolist()
            w = w.astype(object).where(w.notna(), None).tolist()
            if col in ("score", "base_score", "fit_points", "engagement_points"):
                g, w = [int(x) for x in g], [int(x) for x in w]
            assert g == w, col

    folder = model.save(tmp_path / "bundle")
    by_path = score_spark(spark, feats, folder, cfg.scoring, "spark-test/1", SCORED_AT).toPandas()
    pd.testing.assert_frame_equal(by_path.sort_values("lead_id").reset_index(drop=True), got)
    feats.unpersist()


@pytest.mark.slow
def test_score_command_with_the_spark_engine(spark, world, tmp_path):
    from convert.cli import main
    from convert.scoring.score import score

    cfg, data, result, _ = world
    bundle = result.model.save(tmp_path / "bundle")
    main(["export", "--data", str(data.source.root), "--out", str(tmp_path / "typed"),
          "--rejects", str(tmp_path / "r.csv")])
    out = tmp_path / "spark-scores.parquet"
    main(["score", "--engine", "spark", "--data", str(tmp_path / "typed"), "--as-of", "2025-01-01",
          "--model", str(bundle), "--out", str(out)])
    got = pd.read_parquet(out).sort_values("lead_id").reset_index(drop=True)
    want = score(data, result.model, "2025-01-01", cfg).sort_values("lead_id").reset_index(drop=True)
    assert got["lead_id"].tolist() == want["lead_id"].tolist()
    assert (got["score"].to_numpy() == want["score"].to_numpy()).all()
    assert got["reason_1"].fillna("").tolist() == want["reason_1"].fillna("").tolist()
