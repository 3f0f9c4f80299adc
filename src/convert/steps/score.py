"""``convert-leads score``: score, explain and write back every lead open at the as-of time (a
CRM export) or every row (a flat table), with the write-back's guards, each lead's change since
its previous score (:mod:`convert.scoring.movements`) and the grade/routing alerts
(:mod:`convert.scoring.alerts`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from convert.config import Config
from convert.exceptions import InsufficientDataError
from convert.io.writers import WriteGuards, WriteSummary
from convert.model.bundle import LeadScoringModel
from convert.scoring.alerts import AlertOutput, Alerts, alerts_of, top_grades
from convert.scoring.movements import SPARK_WHY, RunChanges
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
    """What :func:`score_step` did: the write, the scores written (with their changes), the
    run's changes (movement sums, largest movements) and its alerts (and their write)."""

    written: WriteSummary
    scores: pd.DataFrame
    changes: RunChanges | None = None
    alerts: Alerts | None = None
    alerts_written: WriteSummary | None = None
    notes: list[str] = field(default_factory=list)

    def __str__(self) -> str:
        return "\n".join([str(self.written), *self.notes])


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
    alerts: str | None = None,
    alerts_table: str | None = None,
) -> ScoreSummary:
    """Score the population at *as_of* with a registered model and write the results.

    A CRM export needs *as_of* (the leads open then); a flat table's rows are all scored,
    written with *as_of* or today (midnight UTC), so a re-run on the same day replaces its own
    history rows. With ``engine="spark"``, *data_path* is a folder (any path Spark reads) of
    typed contract tables in Parquet (``convert-leads export``); features and scores are
    computed by Spark and collected for the same write-back. *allow_shrink*, *allow_older*
    and *replace* lift the write-back guards (:class:`convert.io.writers.WriteGuards`).

    Each lead is compared with its previous score (read from the target before scoring, and
    again under the write-back's lock); the alerts are counted, and written to *alerts* (a
    file or a database URL, table *alerts_table*) when given, replaced on each run.
    """
    from convert.io.writers import read_previous, write_scores
    from convert.scoring.score import iter_scores

    guards = WriteGuards.from_config(
        config.writeback, allow_shrink=allow_shrink, allow_older=allow_older, replace=replace
    )
    target = resolve_target(out)
    table = table or config.scoring.table
    alerts_target = resolve_target(alerts) if alerts else None
    data = Input(data_path, mapping, rejects, strict, FlatOptions(id_column=id_column))
    model, label, _ = load_model(model_uri, model_name_for(data, config), echo)
    if engine == "spark":
        if as_of is None:
            from convert.exceptions import ConfigError

            raise ConfigError("--as-of is required to score a CRM export (the leads open at that time)")
        scored = _score_with_spark(str(data_path), model, label, as_of, config)
        if scored.empty:
            raise InsufficientDataError(
                f"no lead is open at {as_of} in {data_path}: choose an --as-of inside the export's "
                "history; nothing was written"
            )
        run = RunChanges(model, as_of, config, label, read_previous(target, as_of, table, config.writeback.lock_timeout_s), why_not=SPARK_WHY)
        scores = run.chunk(scored, scored, None)
        written = write_scores(scores, target, table, guards=guards, recheck=lambda rows: run.recheck(scores, rows))
        return _with_alerts(ScoreSummary(written, _final(run, scores), run), config, guards, alerts_target,
                            alerts_table)
    source = open_data(data, config, echo, "score", trained=model)
    try:
        check_model(source, model, label, config)
        t = source.scoring_as_of(as_of, "score a CRM export")
        run = RunChanges(model, t, config, label, read_previous(target, t, table, config.writeback.lock_timeout_s), source=source)
        chunks = list(iter_scores(source, model, t, config, label, scored_at=now(), progress=progress,
                                  on_chunk=run.chunk))
        if not chunks:
            raise InsufficientDataError(f"{source.empty_population(t)}. Choose an --as-of inside the "
                                        "export's history; nothing was written")
        scores = pd.concat(chunks, ignore_index=True)
        # the previous rows are read again under the lock: the source stays open for the recheck
        written = write_scores(scores, target, table, guards=guards, recheck=lambda rows: run.recheck(scores, rows))
    finally:
        source.close()
    return _with_alerts(ScoreSummary(written, _final(run, scores), run), config, guards, alerts_target, alerts_table)


def _final(run: RunChanges, scores: pd.DataFrame) -> pd.DataFrame:
    """The scores as written: with the changes the recheck under the lock recomputed, if any."""
    return run.rechecked if run.rechecked is not None else scores


def _with_alerts(summary: ScoreSummary, config: Config, guards: WriteGuards, target: str | None,
                 table: str | None) -> ScoreSummary:
    """Count the run's alerts (and write them to *target*, replacing the last run's)."""
    from convert.io.writers import write_scores

    assert summary.changes is not None
    found = alerts_of(summary.scores, config.scoring, summary.changes.top)
    summary.alerts = found
    summary.notes += found.lines(config.scoring.route_to_sales_min_score, top_grades(config.scoring))
    if target is not None:
        summary.alerts_written = write_scores(found.frame, target, table or AlertOutput.table, guards=guards,
                                              schema=AlertOutput, allow_empty=True)
        summary.notes.append(f"alerts: {summary.alerts_written}")
    return summary


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
