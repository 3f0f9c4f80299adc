"""``convert-leads score``: score, explain and write back every lead open at the as-of time (a
CRM export) or every row (a flat table), with the write-back's guards."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convert.config import Config
from convert.exceptions import InsufficientDataError
from convert.io.writers import WriteSummary
from convert.model.bundle import LeadScoringModel
from convert.sources.base import FlatOptions
from convert.sources.mapping import Mapping
from convert.steps.common import (
    Echo,
    Input,
    _quiet,
    check_model,
    load_model,
    model_name_for,
    now,
    open_data,
    resolve_target,
)


@dataclass
class ScoreSummary:
    """What :func:`score_step` did: the write and the scores written."""

    written: WriteSummary
    scores: pd.DataFrame

    def __str__(self) -> str:
        return str(self.written)


def score_step(
    data_path: str | Path,
    config: Config,
    as_of: pd.Timestamp | None,
    out: str | None,
    model_uri: str | None = None,
    table: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    progress: bool = True,
    engine: str = "duckdb",
    mapping: Mapping | None = None,
    *,
    id_column: str | None = None,
    allow_shrink: bool = False,
    allow_older: bool = False,
    replace: bool = False,
) -> ScoreSummary:
    """Score the population at *as_of* with a registered model and write the results.

    A CRM export needs *as_of* (the leads open then); a flat table's rows are all scored,
    written with *as_of* or today (midnight UTC), so a re-run on the same day replaces its own
    history rows. With ``engine="spark"``, *data_path* is a folder (any path Spark reads) of
    typed contract tables in Parquet (``convert-leads export``); features and scores are
    computed by Spark and collected for the same write-back. *allow_shrink*, *allow_older*
    and *replace* lift the write-back guards (:class:`convert.io.writers.WriteGuards`).
    """
    from convert.io.writers import WriteGuards, write_scores
    from convert.scoring.score import iter_scores

    guards = WriteGuards.from_config(
        config.writeback, allow_shrink=allow_shrink, allow_older=allow_older, replace=replace
    )
    target = resolve_target(out)
    data = Input(data_path, mapping, rejects, strict, FlatOptions(id_column=id_column))
    model, label, _ = load_model(model_uri, model_name_for(data, config), echo)
    if engine == "spark":
        if as_of is None:
            from convert.exceptions import ConfigError

            raise ConfigError("--as-of is required to score a CRM export (the leads open at that time)")
        scores = _score_with_spark(str(data_path), model, label, as_of, config)
        if scores.empty:
            raise InsufficientDataError(
                f"no lead is open at {as_of} in {data_path}: choose an --as-of inside the export's "
                "history; nothing was written"
            )
        return ScoreSummary(write_scores(scores, target, table or config.scoring.table, guards=guards), scores)
    source = open_data(data, config, echo, "score", trained=model)
    try:
        check_model(source, model, label, config)
        t = source.scoring_as_of(as_of, "score a CRM export")
        chunks = list(iter_scores(source, model, t, config, label, scored_at=now(), progress=progress))
        if not chunks:
            raise InsufficientDataError(f"{source.empty_population(t)}. Choose an --as-of inside the "
                                        "export's history; nothing was written")
    finally:
        source.close()
    scores = pd.concat(chunks, ignore_index=True)
    return ScoreSummary(write_scores(scores, target, table or config.scoring.table, guards=guards), scores)


def _score_with_spark(path: str, model: LeadScoringModel, label: str, as_of: pd.Timestamp,
                      config: Config) -> pd.DataFrame:
    from convert.features.spark import (
        features_spark,
        load_tables,
        population_spark,
        spark_session,
    )
    from convert.scoring.spark import score_spark

    spark = spark_session(master=None)
    load_tables(spark, path)
    features = features_spark(
        spark, population_spark(spark, [as_of]), model.features_config(config.features), model.spec_.event_types
    )
    return score_spark(spark, features, model, config.scoring, label).toPandas()


def top_leads(scores: pd.DataFrame, n: int = 10) -> pd.DataFrame:
    """The *n* best-scored leads with their reasons (ties: lead_id)."""
    return scores.sort_values(["score", "probability", "lead_id"], ascending=[False, False, True]).head(n)


def top_table(frame: pd.DataFrame) -> str:
    """Leads (from :func:`top_leads`) as printed by ``score --top``: score, grade, action, points, reasons."""
    lines = []
    for r in frame.itertuples():
        lines.append(f"{r.lead_id:>10}  score {r.score:>3}  grade {r.grade}  {r.action:<17}  "
                     f"base {r.base_score} + fit {r.fit_points:+d} + engagement {r.engagement_points:+d}")
        for reason in (r.reason_1, r.reason_2, r.reason_3):
            if reason:
                lines.append(f"{'':>14}{reason}")
    return "\n".join(lines)
