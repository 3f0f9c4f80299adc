"""The ``convert-leads`` command (also ``python -m convert``): parse, configure, call one step, print.

Every command that reads data takes ``--data``, ``--config``, ``--rejects`` and
``--strict``. Errors of the user's input or configuration print one clear message and
exit with code 2; nothing here holds logic of its own.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path
from typing import Annotated

import pandas as pd
import typer

from convert import steps
from convert.config import Config, load_config
from convert.exceptions import ConvertError, ConvertWarning
from convert.features.labels import parse_as_of
from convert.sources.base import FlatOptions
from convert.sources.mapping import Mapping, load_mapping

app = typer.Typer(
    name="convert-leads",
    help="Predict which sales leads become clients: train, score, explain, write back.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)

DataOpt = Annotated[str, typer.Option("--data", help="CRM export folder (the data contract), a database URL (sqlite:///crm.db, postgresql://user@host/db, env:VARIABLE), or one flat file (with --target).")]
MappingOpt = Annotated[Path | None, typer.Option("--mapping", help="Mapping file (YAML): the source's column names, values, dates, missing tokens and exclusions (docs/mappings/).")]
IdOpt = Annotated[str | None, typer.Option("--id", help="Flat file: the id column (default: the row number).")]
TargetOpt = Annotated[str | None, typer.Option("--target", help="Flat file: the outcome column.")]
PositiveOpt = Annotated[str | None, typer.Option("--positive", help="Flat file: the outcome's positive value (default: 1, true, yes).")]
SplitOpt = Annotated[str | None, typer.Option("--split", help="Flat file: random (stratified, default) or ordered (rows in time order).")]
ConfigOpt = Annotated[Path | None, typer.Option("--config", help="params.yaml (default: ./params.yaml if present).")]
RejectsOpt = Annotated[Path | None, typer.Option("--rejects", help="Rejects file (default: rejects.csv).")]
StrictOpt = Annotated[bool, typer.Option("--strict", help="Turn every quarantine into an error.")]
NoCacheOpt = Annotated[bool, typer.Option("--no-cache", help="Read and validate the export again: neither read nor write the cache of validated tables (data.cache_dir).")]
AsOfOpt = Annotated[str, typer.Option("--as-of", help="As-of time, ISO 8601 (a date means midnight UTC).")]
ModelOpt = Annotated[str | None, typer.Option("--model", help="models:/NAME@ALIAS, models:/NAME/VERSION or a bundle folder (default: the champion).")]


def echo(message: str) -> None:
    typer.echo(message)


def _config(path: Path | None, no_cache: bool = False) -> Config:
    cfg = load_config(path)
    return cfg.with_overrides(data__cache=False) if no_cache else cfg


def _as_of(value: str | None, flag: str = "--as-of") -> pd.Timestamp | None:
    """The as-of flag parsed once, here at the boundary (ISO 8601; a bad value is exit 2)."""
    return parse_as_of(value, flag)


def _required(value: str, flag: str) -> pd.Timestamp:
    t = parse_as_of(value, flag)
    assert t is not None  # typer requires the option
    return t


def _rejects(path: Path | None) -> str | None:
    return str(path) if path else None


def _mapping(path: Path | None) -> Mapping | None:
    return load_mapping(path) if path else None


@app.command()
def generate(
    out: Annotated[Path, typer.Option("--out", help="Folder to write the synthetic CRM into.")],
    leads: Annotated[int, typer.Option("--leads", min=1)] = 20_000,
    seed: Annotated[int, typer.Option("--seed")] = 42,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet")] = "csv",
    start: Annotated[str | None, typer.Option(
        "--start", help="First creation date (default 2023-01-01, or --months before --end).")] = None,
    end: Annotated[str, typer.Option("--end")] = "2025-12-31",
    clean: Annotated[bool, typer.Option("--clean", help="Plant no bad rows.")] = False,
    activity: Annotated[float, typer.Option(
        "--activity", min=0.01, help="Multiplier of self-directed engagement (1: ~30 events a lead; 4.4: ~100)."
    )] = 1.0,
    regime: Annotated[str, typer.Option(
        "--regime", help="Preset: default, short (4 months), open (12 months, never disqualified), "
        "drift (base rate shifts), additive (smooth additive fit among 30 extra attributes).")] = "default",
    months: Annotated[int | None, typer.Option(
        "--months", min=1, help="History length in whole months ending with --end (overrides the preset).")] = None,
    disqualify: Annotated[bool | None, typer.Option(
        "--disqualify/--no-disqualify", help="Whether sales disqualifies leads (overrides the preset).")] = None,
    drift: Annotated[float | None, typer.Option(
        "--drift", help="Base-rate change in log-odds from --start to --end (overrides the preset).")] = None,
    attributes: Annotated[int | None, typer.Option(
        "--attributes", min=0, help="Extra lead attributes attr_NN, six of them relevant (overrides the preset).")] = None,
    reps: Annotated[int, typer.Option(
        "--reps", min=0, help="Sales reps: leads get owner_id (drawn after the outcome: other tables unchanged); writes reps.csv and rep_effects.csv."
    )] = 0,
) -> None:
    """Write a seeded synthetic CRM export (leads, accounts, events, stages)."""
    for line in steps.generate_step(out, leads, seed, fmt, start, end, clean, activity, regime, months, disqualify,
                                    drift, attributes, reps):
        echo(line)


@app.command()
def validate(
    data: DataOpt, config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
    target: TargetOpt = None, positive: PositiveOpt = None,
    id_column: IdOpt = None,
) -> None:
    """Check an export (or a flat file) against the data contract and print a per-table report."""
    summary = steps.validate_step(data, _config(config, no_cache), _rejects(rejects), strict or None, echo,
                                  _mapping(mapping), FlatOptions(target, positive, id_column))
    for line in summary.lines():
        echo(line)


@app.command()
def features(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Parquet file of the training set.")],
    as_of: Annotated[str | None, typer.Option("--as-of")] = None,
    horizon_days: Annotated[int | None, typer.Option("--horizon-days")] = None,
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    catalog: Annotated[Path | None, typer.Option("--catalog", help="Also write the feature catalog (CSV).")] = None,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
    target: TargetOpt = None, positive: PositiveOpt = None, id_column: IdOpt = None, split: SplitOpt = None,
) -> None:
    """Build the labelled multi-snapshot training set and write it (a flat file: its rows, with --target)."""
    t = _as_of(as_of)
    cfg = _config(config, no_cache).with_overrides(labels__horizon_days=horizon_days)
    summary = steps.features_step(data, cfg, out, t, catalog, _rejects(rejects), strict or None, echo, _mapping(mapping),
                                  FlatOptions(target, positive, id_column, split))
    echo(summary.line())


@app.command()
def train(
    data: Annotated[str | None, typer.Option("--data", help="CRM export folder, database URL or flat file; with --training-set read only to compare with a champion.")] = None,
    training_set: Annotated[Path | None, typer.Option("--training-set", help="Train from this Parquet file of `convert-leads features` (same config: same model).")] = None,
    as_of: Annotated[str | None, typer.Option("--as-of", help="Training as-of (default: day after the latest timestamp).")] = None,
    horizon_days: Annotated[int | None, typer.Option("--horizon-days")] = None,
    config: ConfigOpt = None,
    tune: Annotated[int | None, typer.Option("--tune", help="Random-search trials scored on the inner folds (trial 0: the configured parameters).")] = None,
    model_name: Annotated[str | None, typer.Option("--model-name")] = None,
    save: Annotated[Path | None, typer.Option("--save", help="Also write the model bundle to this folder (e.g. models/lead-conversion).")] = None,
    rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
    target: TargetOpt = None, positive: PositiveOpt = None, id_column: IdOpt = None, split: SplitOpt = None,
    exclude: Annotated[list[str] | None, typer.Option("--exclude", help="Leave this input column out of training (repeatable).")] = None,
    allow: Annotated[list[str] | None, typer.Option("--allow", help="Keep this column although the leakage guard suspects it (repeatable).")] = None,
    summary_json: Annotated[Path | None, typer.Option("--summary", help="Also write the outer-fold metrics and the leakage screen as JSON.")] = None,
) -> None:
    """Train, calibrate, evaluate against baselines, log to MLflow and register.

    With --data FILE and --target COLUMN, trains on a flat table (one row per lead) and
    registers the model under flat.model_name (default lead-conversion-flat). With
    --training-set FILE, trains from the file `features` wrote: the model --data would give.
    """
    t = _as_of(as_of)
    cfg = _config(config, no_cache).with_overrides(labels__horizon_days=horizon_days)
    cfg = cfg.with_overrides(leakage__exclude=tuple(dict.fromkeys([*cfg.leakage.exclude, *(exclude or [])])),
                             leakage__allow=tuple(dict.fromkeys([*cfg.leakage.allow, *(allow or [])])))
    summary = steps.train_step(data, cfg, t, tune, model_name, _rejects(rejects), strict or None, echo,
                               _mapping(mapping), flat=FlatOptions(target, positive, id_column, split),
                               save=save, summary_path=summary_json, training_set=training_set)
    if summary.saved:
        echo(f"model bundle written to {summary.saved}")
    r = summary.result
    echo("folds (inner: choices; outer: the figures below; deployed: the refit on every labelled row):\n"
         + r.slices.to_string(index=False))
    choices = r.model.metadata.choices
    rounds, weight, method = (choices.rounds, choices.blend_weight or 0.0, choices.calibration) if choices else (None, 0.0, None)
    echo(f"chosen on the inner folds: {rounds} rounds, blend weight of the logistic model "
         f"{weight:.1f}, calibration {method}")
    echo(f"calibration: {r.model.calibrator_.method} (cross-validated log loss "
         + ", ".join(f"{k} {v:.4f}" for k, v in r.calibration_cv.items()) + ")")
    echo("outer-fold evaluation (model beside the baselines, the same rows):\n" + r.evaluation.table())
    echo("realized conversion per grade:\n" + r.evaluation.grades.to_string(index=False))
    echo("top features (mean |points|):\n" + summary.importance.head(10)[["feature", "family", "mean_abs_points"]].to_string(index=False))
    for line in summary.lines:
        echo(line)
    echo(f"registered {summary.registered.label} as challenger")
    echo(summary.registered.uri)


@app.command()
def evaluate(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for metrics.json, tables and plots.")] = Path("reports/evaluation"),
    model: ModelOpt = None, config: ConfigOpt = None, rejects: RejectsOpt = None,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
) -> None:
    """Evaluate a registered model where it learned nothing (newer labelled as-of times, else its outer folds)."""
    steps.evaluate_step(data, _config(config, no_cache), model, out, _rejects(rejects), echo, _mapping(mapping))


@app.command()
def promote(model_name: Annotated[str | None, typer.Option("--model-name")] = None, config: ConfigOpt = None) -> None:
    """Move the champion alias to the challenger when it beats the champion."""
    echo(steps.promote_step(_config(config), model_name).reason)


@app.command()
def score(
    data: DataOpt,
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of time, ISO 8601 (a date means midnight UTC); required for an export, default today for a flat file.")] = None,
    out: Annotated[str | None, typer.Option("--out", help="A .parquet/.csv file, a database URL (sqlite:///, postgresql://), or env:VARIABLE holding one (default: env CONVERT_OUT_URL).")] = None,
    model: ModelOpt = None,
    table: Annotated[str | None, typer.Option("--table", help="Current-scores table (history: NAME_history).")] = None,
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    top: Annotated[int, typer.Option("--top", help="Print the N best leads.")] = 0,
    engine: Annotated[str, typer.Option("--engine", help="duckdb, or spark (--data: typed Parquet tables from `export`).")] = "duckdb",
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
    id_column: IdOpt = None,
    allow_shrink: Annotated[bool, typer.Option("--allow-shrink", help="Write even if more than writeback.max_removed_share of the current rows would leave the table.")] = False,
    allow_older: Annotated[bool, typer.Option("--allow-older", help="Write even if the as-of is older than the newest as-of in the table.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Write even if the table holds another model's scores (they are replaced; history kept).")] = False,
    alerts: Annotated[str | None, typer.Option("--alerts", help="Write the leads that entered the top two grades or crossed route_to_sales_min_score (either way) since their previous score: a .csv/.parquet file or a database URL; replaced on each run.")] = None,
    alerts_table: Annotated[str | None, typer.Option("--alerts-table", help="Alerts table when --alerts is a database (default lead_score_alerts).")] = None,
) -> None:
    """Score, explain and write back every lead open at the as-of time (or every row of a flat file), with each lead's change since its previous score."""
    allowed = {"allow_shrink": allow_shrink, "allow_older": allow_older, "replace": replace}
    if engine not in ("duckdb", "spark"):
        raise ConvertError(f"--engine must be duckdb or spark, not {engine!r}")
    summary = steps.score_step(data, _config(config, no_cache), _as_of(as_of), out, model, table, _rejects(rejects),
                               strict or None, echo, engine=engine, mapping=_mapping(mapping), id_column=id_column,
                               alerts=alerts, alerts_table=alerts_table, **allowed)
    echo(str(summary))
    if top:
        echo(steps.top_table(steps.top_leads(summary.scores, top)))


@app.command()
def allocate(
    data: DataOpt,
    scores: Annotated[str, typer.Option("--scores", help="The scores `score` wrote: a .parquet/.csv file or a database URL (with --scores-table).")],
    reps: Annotated[str, typer.Option("--reps", help="Reps: a .csv/.parquet file or a database URL (with --reps-table): rep_id, capacity, optional max_open, active and territory columns.")],
    out: Annotated[str | None, typer.Option("--out", help="Where to write the assignments: a .parquet/.csv file, a database URL, or env:VARIABLE (default: env CONVERT_OUT_URL).")] = None,
    table: Annotated[str | None, typer.Option("--table", help="Assignments table (history: NAME_history; default lead_assignments).")] = None,
    scores_table: Annotated[str | None, typer.Option("--scores-table", help="Scores table when --scores is a database (default lead_scores).")] = None,
    reps_table: Annotated[str | None, typer.Option("--reps-table", help="Reps table when --reps is a database (default reps).")] = None,
    min_score: Annotated[int | None, typer.Option("--min-score", min=0, max=100, help="Allocate leads with at least this score (default: the leads routed to sales).")] = None,
    reassign: Annotated[bool, typer.Option("--reassign", help="Free the leads being allocated from their current rep.")] = False,
    balance: Annotated[bool, typer.Option("--balance", help="First spread expected conversions across reps (allocation.balance_tolerance), then maximise.")] = False,
    model: ModelOpt = None,
    compare_effects: Annotated[str | None, typer.Option("--compare-effects", help="Also value the allocation under these rep effects (rep_id, segment, effect: e.g. the simulator's rep_effects.csv).")] = None,
    effects_out: Annotated[Path | None, typer.Option("--effects-out", help="Also write the learned rep effects per segment (CSV/Parquet), with their intervals.")] = None,
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None,
    allow_older: Annotated[bool, typer.Option("--allow-older", help="Write even if the scores' as-of is older than the newest as-of in the assignments table.")] = False,
    replace: Annotated[bool, typer.Option("--replace", help="Write even if the table holds another model's assignments (they are replaced; history kept).")] = False,
) -> None:
    """Allocate scored leads to sales reps (territory, capacity, sticky owners, rep effects) and write who calls each."""
    result = steps.allocate_step(data, _config(config), scores, reps, out, table, scores_table, reps_table, min_score,
                                 reassign, balance, model, compare_effects, _rejects(rejects), strict or None, echo,
                                 _mapping(mapping), allow_older=allow_older, replace=replace, effects_out=effects_out)
    w = result.written
    where = f"table {w.table} at {w.target}" if w.table else w.target
    assigned = int(result.allocation.assignments["rep_id"].notna().sum())
    echo(f"wrote {w.rows_written:,} assignments ({assigned:,} with a rep) to {where} in {w.seconds:.1f} s"
         + (f"; added {w.history_rows_added:,} rows to {w.table}_history" if w.table else ""))
    fx = result.effects
    if not fx.per_rep.empty:
        echo(f"rep effects from {result.history_leads:,} past leads (overall effect, 95% interval): " + ", ".join(
            f"{r.rep_id} {r.effect:.2f} ({r.low:.2f}-{r.high:.2f})" for r in fx.per_rep.itertuples()))
    if result.effects_out:
        echo(f"rep effects per segment written to {result.effects_out}")
    for line in result.allocation.lines():
        echo(line)
    if result.truth:
        t = result.truth
        echo(f"under the effects of {compare_effects}: this allocation {t['allocation']:.2f}, round-robin "
             f"{t['round_robin']:.2f}, highest scores to whoever is free {t['greedy']:.2f}")


@app.command()
def export(
    data: DataOpt,
    out: Annotated[Path, typer.Option("--out", help="Folder for the typed tables (Parquet).")],
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
) -> None:
    """Validate an export and write its typed contract tables as Parquet (input of --engine spark)."""
    path = steps.export_step(data, _config(config, no_cache), out, _rejects(rejects), strict or None, echo,
                             _mapping(mapping))
    echo(f"typed tables written to {path}")


@app.command()
def explain(
    data: DataOpt,
    lead_id: Annotated[str, typer.Option("--lead-id")],
    as_of: Annotated[str | None, typer.Option("--as-of", help="As-of time, ISO 8601 (required for an export).")] = None,
    since: Annotated[str | None, typer.Option("--since", help="Explain how the score moved from this earlier time to --as-of, feature by feature in points that add up to the change. Both scores come from this model and this export (not from a score table), so a model update is no movement here.")] = None,
    model: ModelOpt = None, config: ConfigOpt = None, rejects: RejectsOpt = None,
    plot: Annotated[Path | None, typer.Option("--plot", help="Waterfall PNG of the score (with --since: of its change; default: explain-LEAD.png).")] = None,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
    id_column: IdOpt = None,
) -> None:
    """Print one lead's explanation (or, with --since, its score's movements) and write a waterfall plot."""
    plot = plot or Path(f"explain-{lead_id}.png")
    explanation = steps.explain_step(data, _config(config, no_cache), _as_of(as_of), lead_id, model, plot,
                                     _rejects(rejects), echo, _mapping(mapping), id_column=id_column,
                                     since=_as_of(since, "--since"))
    echo("\n".join(explanation.lines()))
    echo(f"waterfall plot: {plot}")


@app.command()
def report(
    data: DataOpt, as_of: AsOfOpt,
    out: Annotated[Path, typer.Option("--out", help="The HTML file to write.")] = Path("reports/report.html"),
    model: ModelOpt = None,
    backtest: Annotated[Path | None, typer.Option("--backtest", help="Include a backtest: the folder `convert-leads backtest` wrote.")] = None,
    since: Annotated[str | None, typer.Option("--since", help="The previous scoring run's as-of for the movements section (default: --scores' last run before --as-of, else report.movements_days before it); both times are scored by this model.")] = None,
    scores: Annotated[str | None, typer.Option("--scores", help="The scores `score` writes (file, database URL with --scores-table, env:VARIABLE): its last run before --as-of starts the movements.")] = None,
    scores_table: Annotated[str | None, typer.Option("--scores-table", help="Scores table when --scores is a database (default lead_scores).")] = None,
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
) -> None:
    """Write the analyst report (one self-contained HTML file); log it to the model's MLflow run."""
    summary = steps.report_step(data, _config(config, no_cache), _required(as_of, "--as-of"), out, model, backtest,
                                _rejects(rejects), strict or None, echo, mapping=_mapping(mapping),
                                since=_as_of(since, "--since"), scores=scores, scores_table=scores_table)
    for line in summary.lines():
        echo(line)


@app.command()
def backtest(
    data: DataOpt,
    start: Annotated[str, typer.Option("--from", help="First origin (as-of time), ISO 8601.")],
    end: Annotated[str, typer.Option("--to", help="Last origin; its horizon must end inside the data.")],
    every: Annotated[str | None, typer.Option("--every", help="Origin spacing: 14D, 2W, 1M, 1Q, 1Y (default: backtest.every).")] = None,
    retrain_every: Annotated[str | None, typer.Option("--retrain-every", help="Also judge retraining this often, e.g. 3M.")] = None,
    out: Annotated[Path, typer.Option("--out", help="Folder for backtest.csv, summary.csv and backtest.png.")] = Path("reports/backtest"),
    config: ConfigOpt = None, rejects: RejectsOpt = None, strict: StrictOpt = False,
    mapping: MappingOpt = None, no_cache: NoCacheOpt = False,
) -> None:
    """Rolling-origin evaluation: train at each origin on what was known, judge on what happened."""
    t0, t1 = _required(start, "--from"), _required(end, "--to")
    result = steps.backtest_step(data, _config(config, no_cache), t0, t1, every, retrain_every, out,
                                 _rejects(rejects), strict or None, echo, mapping=_mapping(mapping))
    echo(result.text())
    echo(f"backtest written to {out}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: run the app; every failure the user can fix is one message and exit code 2.

    A mistyped command or a bad flag is the usage message (exit 2, from the argument
    parser); a :class:`ConvertError` is ``error: ...`` (exit 2); the few failures of the
    engines underneath that a user fixes by a setting (DuckDB out of memory) are turned
    into a ConvertError by :func:`convert.steps.user_error`. Anything else is a bug and
    keeps its traceback.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always", ConvertWarning)
            warnings.showwarning = _show_warning
            app(args=argv, standalone_mode=True)
    except SystemExit as exc:
        if exc.code in (0, None):
            return
        raise
    except ConvertError as exc:
        _fail(exc)
    except Exception as exc:
        known = steps.user_error(exc)
        if known is None:
            raise
        _fail(known)


_default_showwarning = warnings.showwarning


def _show_warning(message, category, filename, lineno, file=None, line=None):  # type: ignore[no-untyped-def]
    """convert's own warnings as one ``warning: ...`` line; others as Python prints them."""
    if issubclass(category, ConvertWarning):
        typer.echo(f"warning: {message}", err=True)
    else:
        _default_showwarning(message, category, filename, lineno, file, line)


def _fail(exc: ConvertError) -> None:
    typer.echo(f"error: {exc}", err=True)
    sys.exit(exc.exit_code)


if __name__ == "__main__":
    main()
