"""``convert-leads allocate``: route the scored leads to sales reps (territory, capacity, sticky
owners, learned rep effects) and write who calls each."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from convert.config import Config
from convert.io.writers import WriteSummary
from convert.model.bundle import LeadScoringModel
from convert.scoring.allocate import Allocation, RepEffects
from convert.sources.export import CRMData
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, now, open_export, resolve_target


@dataclass
class AllocateSummary:
    """What :func:`allocate_step` did: the allocation, the rep effects, the write and figures."""

    allocation: Allocation
    effects: RepEffects
    written: WriteSummary
    history_leads: int
    as_of: pd.Timestamp
    model_version: str
    truth: dict[str, float] | None = None
    history: pd.DataFrame = field(default_factory=pd.DataFrame)
    effects_out: Path | None = None


def _read_any(source: str, table: str, what: str) -> pd.DataFrame:
    """A .csv/.parquet file (every column as text for CSV) or a database table, for *what*."""
    from convert.exceptions import ConfigError
    from convert.io.writers import read_table

    location = resolve_target(source) if source.startswith("env:") else source
    path = Path(location)
    if "://" not in location:
        if not path.exists():
            raise ConfigError(f"{what} file {path} does not exist")
        if path.suffix.lower() == ".csv":
            return pd.read_csv(path, dtype=str, keep_default_na=False, na_values=[""])
        if path.suffix.lower() == ".parquet":
            return pd.read_parquet(path)
        raise ConfigError(f"{what} must be a .csv or .parquet file or a database URL, not {path}")
    return read_table(location, table)


_SCORE_COLUMNS = ("lead_id", "as_of", "probability", "score", "action", "model_version")


def _lead_attributes(data: CRMData, owner: str, extra: list[str], cuts: tuple[float, ...]) -> pd.DataFrame:
    """Per lead: attributes territories and segments use, the owner, the outcome's dates."""
    from convert.scoring.allocate import employee_band
    from convert.sql import quote

    present = [r[0] for r in data.con.execute("DESCRIBE leads").fetchall()]
    account_cols = [r[0] for r in data.con.execute("DESCRIBE accounts").fetchall()]
    cols = ["l.lead_id", "l.lead_source", "coalesce(l.country, a.country) AS country", "a.industry",
            "a.employees", "l.created_at", "l.converted_at", "l.disqualified_at"]
    if owner in present:
        cols.append(f"l.{quote(owner)} AS __owner")
    for name in extra:
        if name in present and name not in ("lead_source", "country"):
            cols.append(f"l.{quote(name)} AS {quote(name)}")
        elif name in account_cols and name not in ("industry", "country", "employees"):
            cols.append(f"a.{quote(name)} AS {quote(name)}")
    frame = data.con.execute(
        f"SELECT {', '.join(cols)} FROM leads l LEFT JOIN accounts a ON l.account_id = a.account_id"
    ).df()
    frame["employee_band"] = employee_band(frame["employees"], cuts)
    if "__owner" in frame:
        frame["__owner"] = frame["__owner"].astype("object").where(frame["__owner"].notna(), None)
    return frame


def _effect_history(data: CRMData, attrs: pd.DataFrame, model: LeadScoringModel, t: pd.Timestamp, config: Config,
                    segment_by: tuple[str, ...]) -> pd.DataFrame:
    """Owned leads whose outcome is known at *t*: each at its first snapshot after creation
    (``allocation.history_frequency``), the model's prediction there and whether it converted
    within the horizon."""
    from convert.features.engine import build_features
    from convert.features.labels import _FREQUENCIES
    from convert.scoring.allocate import segment_labels

    horizon = pd.Timedelta(days=int(model.horizon_days))
    owned = attrs[attrs["__owner"].notna()].copy()
    if owned.empty:
        return pd.DataFrame()
    freq = _FREQUENCIES[config.allocation.history_frequency]
    created = pd.to_datetime(owned["created_at"])
    # the first snapshot time at least a day after creation (the day a lead is routed)
    step = pd.tseries.frequencies.to_offset(freq)
    snap = (created.dt.floor("D") + pd.Timedelta(days=1)).map(step.rollforward)
    owned["as_of"] = snap
    conv = pd.to_datetime(owned["converted_at"])
    dq = pd.to_datetime(owned["disqualified_at"])
    known = (snap + horizon <= t)
    open_then = (conv.isna() | (conv >= snap)) & (dq.isna() | (dq >= snap))
    owned = owned[known & open_then]
    if owned.empty:
        return pd.DataFrame()
    fs = build_features(data.con, owned[["lead_id", "as_of"]], model.features_config(config.features),
                        model.spec_.event_types)
    frame = fs.frame.merge(owned[["lead_id", "as_of"]], on=["lead_id", "as_of"])
    predicted = model.predict_proba(frame)[:, 1]
    out = owned.set_index(["lead_id", "as_of"]).loc[list(zip(frame["lead_id"], frame["as_of"], strict=True))]
    conv_at = pd.to_datetime(out["converted_at"])
    snap_at = out.index.get_level_values("as_of")
    converted = (conv_at.notna() & (conv_at >= snap_at) & (conv_at < snap_at + horizon)).to_numpy()
    return pd.DataFrame({
        "rep_id": out["__owner"].astype(str).to_numpy(),
        "segment": segment_labels(out.reset_index(drop=True), segment_by).to_numpy(),
        "predicted": predicted,
        "converted": converted.astype("int64"),
        **{c: out[c].to_numpy() for c in segment_by},
    })


def allocate_step(
    data_path: str | Path,
    config: Config,
    scores: str,
    reps: str,
    out: str | None,
    table: str | None = None,
    scores_table: str | None = None,
    reps_table: str | None = None,
    min_score: int | None = None,
    reassign: bool = False,
    balance: bool = False,
    model_uri: str | None = None,
    compare_effects: str | None = None,
    rejects: str | None = None,
    strict: bool | None = None,
    echo: Echo = _quiet,
    mapping: Mapping | None = None,
    allow_older: bool = False,
    replace: bool = False,
    effects_out: Path | None = None,
) -> AllocateSummary:
    """Allocate the scored leads to reps and write the assignments (``convert-leads allocate``).

    Reads the scores ``score`` wrote, the reps and the export (lead attributes and owners);
    learns rep effects from owned leads with known outcomes (the model that wrote the scores
    predicts them at their first snapshot); allocates; writes one row per scored lead with
    the write-back of scores (atomic switch, lock, ``{table}_history``) and its guards: an
    as-of older than the table's newest is refused unless *allow_older*, another model's
    assignments are replaced only with *replace*; the shrink guard does not apply
    (assignments churn every day).
    """
    from convert.exceptions import ConfigError, ContractError, WritebackError
    from convert.io.writers import WriteGuards, read_table, write_scores
    from convert.registry import store as registry
    from convert.scoring.allocate import (
        AssignmentOutput,
        Lead,
        RepEffects,
        allocate,
        estimate_effects,
        expected_under,
        parse_reps,
    )
    from convert.scoring.score import ROUTE

    cfg = config.allocation
    guards = WriteGuards.from_config(config.writeback, allow_older=allow_older, replace=replace)
    table = table or cfg.table
    if not str(data_path).startswith("env:") and "://" not in str(data_path) and Path(data_path).is_file():
        raise ConfigError(
            f"allocate reads the leads' attributes and owners from a CRM export (a folder) or a "
            f"database URL; {data_path} is one file, and flat tables are not supported by allocate yet"
        )
    target = resolve_target(out)
    s = _read_any(scores, scores_table or cfg.scores_table, "scores")
    missing = [c for c in _SCORE_COLUMNS if c not in s.columns]
    if missing:
        raise ContractError(f"the scores lack column(s) {', '.join(missing)}: pass what `convert-leads score` wrote",
                            file=scores)
    if s["lead_id"].duplicated().any():
        raise ContractError("the scores repeat lead_id: pass the current scores table, not its history",
                            file=scores, column="lead_id")
    s["probability"] = pd.to_numeric(s["probability"])
    s["score"] = pd.to_numeric(s["score"]).astype("int64")
    as_of = pd.Timestamp(pd.to_datetime(s["as_of"]).max())
    model_version = str(s["model_version"].iloc[0]) if len(s) else ""
    rep_frame = _read_any(reps, reps_table or cfg.reps_table, "reps")

    data = open_export(Input(data_path, mapping, rejects, strict), config, echo, "allocate")
    history = pd.DataFrame()
    try:
        lead_cols = [r[0] for r in data.con.execute("DESCRIBE leads").fetchall()]
        account_cols = [r[0] for r in data.con.execute("DESCRIBE accounts").fetchall()]
        attributes = sorted({"country", "industry", "lead_source", "employee_band", *lead_cols, *account_cols}
                            - {"lead_id", "account_id", "created_at", "converted_at", "disqualified_at",
                               "job_title", cfg.owner_column, "employees", "annual_revenue"})
        rep_table = parse_reps(rep_frame, label=reps, attributes=attributes)
        unknown = [c for c in cfg.segment_by if c not in attributes]
        if unknown:
            raise ConfigError(f"allocation.segment_by names {unknown[0]!r}, which is not a lead attribute "
                              f"(choose among {', '.join(attributes)})")
        extra = sorted(set(rep_table.territory) | set(cfg.segment_by))
        attrs = _lead_attributes(data, cfg.owner_column, extra, config.features.employee_bands)
        has_owner = "__owner" in attrs
        if has_owner and attrs["__owner"].notna().any():
            uri = model_uri or f"models:/{model_version}"
            model, label = registry.load_model(uri)
            echo(f"rep effects: owners from column {cfg.owner_column!r}; predictions of model {label}")
            history = _effect_history(data, attrs, model, as_of, config, cfg.segment_by)
    finally:
        data.close()
    effects = (estimate_effects(history, level=cfg.interval, by=cfg.segment_by) if not history.empty
               else RepEffects.none())
    if history.empty:
        echo("rep effects: no owner history (no owner column, or no owned lead with a known outcome): every effect is 1")
    else:
        echo(f"rep effects: {len(history):,} past leads of {history['rep_id'].nunique()} reps, "
             f"{len(effects.table):,} (rep, segment) cells, {int(history['converted'].sum()):,} conversions")

    leads = s[["lead_id", "probability", "score", "action"]].merge(attrs.drop(columns=["created_at"]), on="lead_id",
                                                                  how="left", indicator=True)
    absent = int((leads.pop("_merge") == "left_only").sum())
    if absent:
        echo(f"warning: {absent:,} scored leads are not in {data_path}: no territory or segment (only reps "
             "covering any territory can take them)")
    if min_score is None:
        candidate = leads["action"] == ROUTE
        skip = "not routed to sales (action " + leads["action"].astype(str) + ", score " + leads["score"].astype(str) + ")"
    else:
        candidate = leads["score"] >= min_score
        skip = "score " + leads["score"].astype(str) + f" below --min-score {min_score}"
    owner = leads["__owner"] if "__owner" in leads else pd.Series(None, index=leads.index, dtype=object)
    source = pd.Series(np.where(owner.notna(), "owned in the CRM", ""), index=leads.index, dtype=object)
    try:
        previous = read_table(target, table, schema=AssignmentOutput)
    except WritebackError:
        previous = pd.DataFrame()
    if not previous.empty and "rep_id" in previous:
        before = previous.dropna(subset=["rep_id"]).set_index("lead_id")["rep_id"]
        from_target = leads["lead_id"].map(before)
        # the CRM's owner wins while that rep is active; else the previous run's assignment
        active_reps = set(rep_table.frame.loc[rep_table.frame["active"], "rep_id"])
        use = from_target.notna() & ~owner.isin(active_reps)
        owner = owner.where(~use, from_target)
        source = source.where(~use, "assigned by a previous run")
    frame = leads.assign(**{Lead.candidate: candidate.to_numpy(bool), Lead.skip_reason: skip.where(~candidate, ""),
                            Lead.owner: owner, Lead.owner_source: source})
    allocation = allocate(frame, rep_table, effects=effects, segment_by=cfg.segment_by, reassign=reassign,
                          balance=cfg.balance_tolerance if balance else None, time_limit=cfg.time_limit_seconds)
    assigned_at = now()
    a = allocation.assignments
    output = pd.DataFrame({
        AssignmentOutput.lead_id: a["lead_id"], AssignmentOutput.rep_id: a["rep_id"],
        AssignmentOutput.probability: a["probability"],
        AssignmentOutput.expected_conversions: a["expected_conversions"],
        AssignmentOutput.rank_for_rep: a["rank_for_rep"], AssignmentOutput.reason: a["reason"],
        AssignmentOutput.as_of: pd.to_datetime(s["as_of"]).to_numpy(),
        AssignmentOutput.model_version: s["model_version"].astype(str).to_numpy(),
        AssignmentOutput.assigned_at: assigned_at,
    })[AssignmentOutput.names()]
    written = write_scores(output, target, table, schema=AssignmentOutput, allow_empty=True, guards=guards)
    truth = None
    if compare_effects:
        t = _read_any(compare_effects, "rep_effects", "--compare-effects")
        if not {"rep_id", "segment", "effect"} <= set(t.columns):
            raise ContractError("needs columns rep_id, segment and effect (the simulator's rep_effects.csv)",
                                file=compare_effects)
        t = t.assign(effect=pd.to_numeric(t["effect"]))
        truth = expected_under(allocation, frame, RepEffects(t), rep_table.ids)
    if effects_out:
        from convert.io.artifacts import write_frame

        write_frame(effects.table, effects_out)
    return AllocateSummary(allocation, effects, written, len(history), as_of, model_version, truth, history,
                           effects_out)


