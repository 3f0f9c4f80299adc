"""The Spark feature engine: the same feature SQL, run by Spark.

This module owns only the Spark plumbing of the features of ``--engine spark``; it
defines no feature of its own (Spark scoring is :mod:`convert.scoring.spark`):

- :func:`spark_session`: a session set up as convert needs it (UTC session time zone,
  Arrow transfers, the driver's Python on the executors);
- :func:`export_typed` writes DuckDB's typed contract tables (``leads``, ``accounts``,
  ``events``, ``stages``) to Parquet; :func:`load_tables` reads them back from any path
  Spark reads (local, ``hdfs://``, ``s3a://``, ...) as temp views. The Parquet tables
  must already be validated and typed by the contract (that is what ``export_typed``
  writes);
- :func:`population_spark`: the contract's population at some as-of times
  (:func:`convert.features.labels.population_sql`, unchanged);
- :func:`features_spark` / :func:`build_features_spark`: :func:`convert.features.query.feature_sql`
  (every family of :data:`convert.features.families.FAMILIES`) with the Spark
  :class:`~convert.features.dialect.SparkDialect` (one definition, two engines).

``pyspark`` is imported lazily inside functions, so the rest of convert never needs it
(install it with the ``spark`` extra).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from convert.config import FeaturesConfig
from convert.exceptions import FeatureMismatchError
from convert.features.dialect import SPARK, slug
from convert.features.engine import finish_frame
from convert.features.families import feature_catalog
from convert.features.labels import population_sql
from convert.features.query import feature_sql

if TYPE_CHECKING:  # pragma: no cover
    from duckdb import DuckDBPyConnection
    from pyspark.sql import DataFrame, SparkSession

TABLES = ("leads", "accounts", "events", "stages")


def spark_session(
    app_name: str = "convert",
    master: str | None = "local[2]",
    conf: Mapping[str, str] | None = None,
) -> SparkSession:
    """A Spark session for convert (``master=None`` keeps what ``spark-submit`` set).

    The session time zone is UTC (convert's timestamps are naive UTC) and Arrow carries
    pandas batches; *conf* adds or overrides settings.
    """
    from pyspark.sql import SparkSession

    os.environ.setdefault("PYSPARK_PYTHON", sys.executable)
    builder = SparkSession.builder.appName(app_name)
    if master is not None:
        builder = builder.master(master)
    settings = {
        "spark.sql.session.timeZone": "UTC",
        "spark.sql.execution.arrow.pyspark.enabled": "true",
        "spark.sql.parquet.inferTimestampNTZ.enabled": "true",
    }
    settings.update(conf or {})
    for key, value in settings.items():
        builder = builder.config(key, value)
    return builder.getOrCreate()


def export_typed(con: DuckDBPyConnection, out_dir: str | Path) -> Path:
    """Write the typed contract tables a loaded export holds in *con* (``CRMData.con``) as
    ``out_dir/<table>.parquet``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        target = str(out / f"{table}.parquet").replace("'", "''")
        con.execute(f"COPY {table} TO '{target}' (FORMAT PARQUET)")
    return out


def load_tables(spark: SparkSession, path: str) -> dict[str, DataFrame]:
    """Read ``<path>/<table>.parquet`` (a file or a folder of parts) for every contract table.

    Each table is registered as a temp view of its own name (``leads``, ...), which is
    what the feature SQL reads.
    """
    base = str(path).rstrip("/")
    frames: dict[str, DataFrame] = {}
    for table in TABLES:
        frame = spark.read.parquet(f"{base}/{table}.parquet")
        frame.createOrReplaceTempView(table)
        frames[table] = frame
    return frames


def population_spark(spark: SparkSession, as_ofs: Sequence[pd.Timestamp | str]) -> DataFrame:
    """The contract's population (``lead_id``, ``as_of``) at each as-of time, in Spark."""
    from pyspark.sql.types import StructField, StructType, TimestampNTZType

    times = [pd.Timestamp(t).to_pydatetime() for t in as_ofs]
    grid = spark.createDataFrame(
        [(t,) for t in times], StructType([StructField("as_of", TimestampNTZType(), False)])
    )
    grid.createOrReplaceTempView("_as_of_grid")
    return spark.sql(population_sql("_as_of_grid"))


def _population_frame(spark: SparkSession, population: pd.DataFrame | DataFrame) -> DataFrame:
    if not isinstance(population, pd.DataFrame):
        return population.selectExpr("CAST(lead_id AS STRING) AS lead_id", "as_of")
    from pyspark.sql.types import StringType, StructField, StructType, TimestampNTZType

    rows = [
        (str(lead), pd.Timestamp(t).to_pydatetime())
        for lead, t in zip(population["lead_id"], population["as_of"], strict=True)
    ]
    schema = StructType(
        [StructField("lead_id", StringType(), False), StructField("as_of", TimestampNTZType(), False)]
    )
    return spark.createDataFrame(rows, schema)


def _check_extra_attributes(spark: SparkSession, config: FeaturesConfig) -> None:
    for extra in config.extra_attributes:
        if extra.column not in spark.table(extra.table).columns:
            raise FeatureMismatchError(
                f"the data lacks column {extra.column!r} in {extra.table}, which feature "
                f"x_{slug(extra.column)} needs (features.extra_attributes)"
            )


def features_spark(
    spark: SparkSession,
    population: pd.DataFrame | DataFrame,
    config: FeaturesConfig,
    event_types: Sequence[str],
) -> DataFrame:
    """Every feature for each (lead_id, as_of) of *population*, as a lazy Spark DataFrame.

    The contract tables must be temp views (:func:`load_tables`). *event_types* is the
    vocabulary (a model's ``spec_.event_types`` when scoring).
    """
    _check_extra_attributes(spark, config)
    _population_frame(spark, population).createOrReplaceTempView("_population")
    spark.sql("SELECT DISTINCT as_of FROM _population").createOrReplaceTempView("_grid")
    return spark.sql(feature_sql("_population", "_grid", event_types, config, SPARK))


def build_features_spark(
    spark: SparkSession,
    population_df: pd.DataFrame | DataFrame,
    config: FeaturesConfig,
    event_types: Sequence[str],
) -> pd.DataFrame:
    """:func:`features_spark` collected to pandas, shaped like :func:`convert.build_features`."""
    catalog = feature_catalog(event_types, config)
    frame = features_spark(spark, population_df, config, event_types).toPandas()
    frame = finish_frame(frame, catalog)
    frame["as_of"] = pd.to_datetime(frame["as_of"])
    return frame.sort_values(["as_of", "lead_id"], kind="stable").reset_index(drop=True)
