"""Spark scoring: the saved model bundle scored on the executors by the batch scorer's code.

:func:`score_spark` broadcasts the bundle to the executors as bytes and scores each
partition with :func:`convert.scoring.score.score_frame` in ``mapInPandas``, so Spark
scoring applies no rule of its own. The features come from
:func:`convert.features.spark.features_spark`. ``pyspark`` is imported lazily inside
functions (install it with the ``spark`` extra).
"""

from __future__ import annotations

import hashlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from convert.config import ScoringConfig
from convert.features.engine import KEY, finish_frame
from convert.model.bundle import LeadScoringModel
from convert.schema import ScoreOutput
from convert.scoring.score import score_frame

if TYPE_CHECKING:  # pragma: no cover
    from pyspark.sql import DataFrame, SparkSession
    from pyspark.sql.types import StructType

#: Spark type (pyspark.sql.types class name) of each declared contract column type.
_SPARK_TYPES = {"string": "StringType", "timestamp": "TimestampNTZType", "number": "DoubleType",
                "integer": "LongType"}


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
    :func:`convert.features.spark.features_spark` with ``model.features_config(...)`` and
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
