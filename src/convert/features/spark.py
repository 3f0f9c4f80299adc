"""The Spark engine: the same feature SQL and the same scoring code, run by Spark.

This module owns only the Spark plumbing of ``--engine spark``; it defines no feature
and no scoring rule of its own:

- :func:`spark_session`: a session set up as convert needs it (UTC session time zone,
  Arrow transfers, the driver's Python on the executors);
- :func:`export_typed` writes DuckDB's typed contract tables (``leads``, ``accounts``,
  ``events``, ``stages``) to Parquet; :func:`load_tables` reads them back from any path
  Spark reads (local, ``hdfs://``, ``s3a://``, ...) as temp views. The Parquet tables
  must already be validated and typed by the contract (that is what ``export_typed``
  writes);
- :func:`population_spark`: the contract's population at some as-of times
  (:func:`convert.features.labels.population_sql`, unchanged);
- :func:`features_spark` / :func:`build_features_spark`: :func:`convert.features.engine.feature_sql`
  with the Spark :class:`~convert.features.engine.SparkDialect` (one definition, two engines);
- :func:`score_spark`: the saved model bundle broadcast to executors as bytes and each
  partition scored by :func:`convert.scoring.score.score_frame` in ``mapInPandas``.

``pyspark`` is imported lazily inside functions, so the rest of convert never needs it
(install it with the ``spark`` extra).
"""

from __future__ import annotations

import hashlib
import os
import sys
import tempfile
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from convert.config import FeaturesConfig, ScoringConfig
from convert.exceptions import FeatureMismatchError
from convert.features.engine import KEY, SPARK, feature_sql, finish_frame, slug
from convert.features.labels import population_sql
from convert.model.bundle import LeadScoringModel
from convert.schema import ScoreOutput

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

    from convert.sources.export import CRMData

TABLES = ("leads", "accounts", "events", "stages")

#: Spark type (pyspark.sql.types class name) of each declared contract column type.
_SPARK_TYPES = {"string": "StringType", "timestamp": "TimestampNTZType", "number": "DoubleType",
                "integer": "LongType"}


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


def export_typed(data: CRMData, out_dir: str | Path) -> Path:
    """Write the typed contract tables of *data* as ``out_dir/<table>.parquet``."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for table in TABLES:
        target = str(out / f"{table}.parquet").replace("'", "''")
        data.con.execute(f"COPY {table} TO '{target}' (FORMAT PARQUET)")
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
    from convert.features.engine import feature_catalog

    catalog = feature_catalog(event_types, config)
    frame = features_spark(spark, population_df, config, event_types).toPandas()
    frame = finish_frame(frame, catalog)
    frame["as_of"] = pd.to_datetime(frame["as_of"])
    return frame.sort_values(["as_of", "lead_id"], kind="stable").reset_index(drop=True)


# --- scoring ----------------------------------------------------------------------------------


def score_schema() -> StructType:
    """The Spark schema of :class:`~convert.schema.ScoreOutput`."""
    from pyspark.sql import types as T

    return T.StructType(
        [
            T.StructField(str(c), getattr(T, _SPARK_TYPES[c.dtype])(), c.nullable)
            for c in ScoreOutput.columns()
        ]
    )


def bundle_bytes(model: LeadScoringModel | str | Path) -> dict[str, bytes]:
    """A model bundle (a fitted model or a bundle folder) as ``{file name: bytes}``."""
    if isinstance(model, LeadScoringModel):
        with tempfile.TemporaryDirectory(prefix="convert-bundle-") as tmp:
            folder = model.save(Path(tmp) / "bundle")
            return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}
    folder = Path(model)
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


_MODELS: dict[str, LeadScoringModel] = {}


def _model_from_bytes(files: Mapping[str, bytes]) -> LeadScoringModel:
    """Load (once per Python worker) the bundle shipped as bytes."""
    digest = hashlib.sha256()
    for name in sorted(files):
        digest.update(name.encode() + b"\0" + files[name])
    key = digest.hexdigest()
    if key not in _MODELS:
        with tempfile.TemporaryDirectory(prefix="convert-bundle-") as tmp:
            for name, blob in files.items():
                (Path(tmp) / name).write_bytes(blob)
            _MODELS[key] = LeadScoringModel.load(tmp)
    return _MODELS[key]


def _score_batches(
    batches: Iterator[pd.DataFrame],
    files: Mapping[str, bytes],
    config: ScoringConfig,
    model_version: str,
    scored_at: pd.Timestamp,
) -> Iterator[pd.DataFrame]:
    from convert.scoring.score import score_frame

    model = _model_from_bytes(files)
    for batch in batches:
        if len(batch) == 0:
            continue
        features = finish_frame(batch, model.catalog_)
        yield score_frame(model, features, config, model_version, scored_at)


def score_spark(
    spark: SparkSession,
    features_sdf: DataFrame,
    model: LeadScoringModel | str | Path,
    scoring_config: ScoringConfig,
    model_version: str,
    scored_at: pd.Timestamp | None = None,
) -> DataFrame:
    """Score feature rows on the executors: a Spark DataFrame with the ScoreOutput schema.

    *features_sdf* holds ``lead_id``, ``as_of`` and the model's features (from
    :func:`features_spark` with ``model.features_config(...)`` and
    ``model.spec_.event_types``). *model* (fitted, or a bundle folder on the driver) is
    broadcast once as the bundle's bytes; each partition is scored in Arrow batches
    (``spark.sql.execution.arrow.maxRecordsPerBatch``) by
    :func:`convert.scoring.score.score_frame`.
    """
    if scored_at is None:
        scored_at = pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")
    files = spark.sparkContext.broadcast(bundle_bytes(model))
    config = scoring_config
    at = scored_at

    def run(batches: Iterator[pd.DataFrame]) -> Iterator[pd.DataFrame]:
        yield from _score_batches(batches, files.value, config, model_version, at)

    columns: list[Any] = list(KEY) + list(_feature_names(model))
    return features_sdf.select(*columns).mapInPandas(run, schema=score_schema())  # type: ignore[arg-type]  # pyspark stubs differ between versions


def _feature_names(model: LeadScoringModel | str | Path) -> list[str]:
    if isinstance(model, LeadScoringModel):
        return list(model.catalog_.names)
    return list(LeadScoringModel.load(model).catalog_.names)
