"""Exploring a CRM export before modelling: funnel, conversion by segment, time to conversion.

Descriptive tables for ``notebooks/01-explore-crm.ipynb`` and anyone looking at a new
export: how leads move through the stages, which sources and firms convert, and how long
conversion takes -- which is what decides a sensible horizon. Their figures are
``plot_funnel``, ``plot_conversion_by`` and ``plot_time_to_conversion`` in
:mod:`convert.analysis.plots`.

Conversion by segment counts a lead as converted when it converted within the horizon of
its creation, and only leads created at least one horizon before the end of the data
are counted, so recent leads (whose outcome is not known yet) do not dilute the rates.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from convert.config import Config
from convert.exceptions import ConfigError
from convert.model.metrics import wilson_interval
from convert.schema import Accounts, Leads, Stages
from convert.sources.export import CRMData

SEGMENTS = ("lead_source", "country", "industry", "employee_band")
_MISSING = "(missing)"


def band_labels(cuts: Sequence[float]) -> list[str]:
    """``<10``, ``10-49``, ..., ``5000+`` for cut points 10, 50, ..., 5000."""
    c = [int(x) for x in cuts]
    return [f"<{c[0]}"] + [f"{a}-{b - 1}" for a, b in zip(c[:-1], c[1:], strict=True)] + [f"{c[-1]}+"]


def lead_table(data: CRMData, config: Config) -> pd.DataFrame:
    """One row per lead with its firmographics, employee band and outcome dates."""
    leads = data.frame(Leads.table)
    accounts = data.frame(Accounts.table)[[Accounts.account_id, Accounts.industry, Accounts.employees]]
    frame = leads.merge(accounts, on=Leads.account_id, how="left")
    cuts = config.features.employee_bands
    idx = np.searchsorted(np.asarray(cuts, dtype="float64"), frame[Accounts.employees].to_numpy(dtype="float64"),
                          side="right")
    labels = np.array(band_labels(cuts), dtype=object)
    frame["employee_band"] = np.where(frame[Accounts.employees].isna(), None, labels[np.clip(idx, 0, len(cuts))])
    return frame


def funnel(data: CRMData) -> pd.DataFrame:
    """Leads reaching each stage (stages ordered by how long after creation they are typically
    entered), and of those, the share that converted."""
    stages = data.frame(Stages.table)
    leads = data.frame(Leads.table)[[Leads.lead_id, Leads.created_at, Leads.converted_at]]
    total = len(leads)
    merged = stages.merge(leads, on=Leads.lead_id, how="inner")
    merged["days"] = (merged[Stages.entered_at] - merged[Leads.created_at]).dt.total_seconds() / 86_400
    merged = merged.sort_values([Leads.lead_id, Stages.entered_at], kind="stable")
    merged["rank"] = merged.groupby(Leads.lead_id).cumcount()
    merged["last"] = ~merged[Leads.lead_id].duplicated(keep="last")
    # the usual path first (by the typical position of the stage in a lead's history); stages
    # that (almost) always end a history -- won, lost -- come last
    g = merged.groupby(Stages.stage)
    keys = pd.DataFrame({"terminal": g["last"].mean() > 0.95, "rank": g["rank"].median(), "days": g["days"].median()})
    order = keys.sort_values(["terminal", "rank", "days"], kind="stable")["days"]
    rows = []
    for stage in order.index:
        ids = merged.loc[merged[Stages.stage] == stage, Leads.lead_id].unique()
        reached = leads[leads[Leads.lead_id].isin(ids)]
        conv = int(reached[Leads.converted_at].notna().sum())
        rows.append({"stage": stage, "leads": len(ids), "share_of_leads": len(ids) / total if total else np.nan,
                     "median_days_after_creation": float(order[stage]), "converted": conv,
                     "conversion_rate": conv / len(ids) if len(ids) else np.nan})
    conv_all = int(leads[Leads.converted_at].notna().sum())
    rows.append({"stage": "converted", "leads": conv_all, "share_of_leads": conv_all / total if total else np.nan,
                 "median_days_after_creation": float(time_to_conversion(data).median()),
                 "converted": conv_all, "conversion_rate": 1.0 if conv_all else np.nan})
    return pd.DataFrame(rows)


def time_to_conversion(data: CRMData) -> pd.Series:
    """Days from creation to conversion of every converted lead."""
    leads = data.frame(Leads.table)
    done = leads[leads[Leads.converted_at].notna()]
    return ((done[Leads.converted_at] - done[Leads.created_at]).dt.total_seconds() / 86_400).rename("days")


def time_to_conversion_summary(days: pd.Series, horizon_days: int) -> pd.DataFrame:
    """Quantiles of the days to conversion, and the share converting within the horizon."""
    qs = [0.25, 0.5, 0.75, 0.9, 0.95]
    rows = [{"measure": f"{int(q * 100)}th percentile (days)", "value": float(days.quantile(q))} for q in qs]
    rows.append({"measure": f"share within {horizon_days} days", "value": float((days < horizon_days).mean())})
    rows.append({"measure": "converted leads", "value": float(len(days))})
    return pd.DataFrame(rows)


def conversion_by(data: CRMData, column: str, config: Config, max_values: int = 15) -> pd.DataFrame:
    """Conversion within the horizon of creation per value of *column* (a leads or accounts
    column, or ``employee_band``), with counts and 95 % Wilson intervals; largest first."""
    frame = lead_table(data, config)
    if column not in frame.columns:
        raise ConfigError(f"cannot group by {column!r}: not a column of leads or accounts (try {', '.join(SEGMENTS)})")
    horizon = pd.Timedelta(days=config.labels.horizon_days)
    end = data.latest_timestamp()
    judged = frame[frame[Leads.created_at] <= end - horizon]
    converted = judged[Leads.converted_at].notna() & (judged[Leads.converted_at] < judged[Leads.created_at] + horizon)
    values = judged[column].astype("object").where(judged[column].notna(), _MISSING).astype(str)
    keep = values.value_counts().index[:max_values]
    values = values.where(values.isin(keep), "(other)")
    grouped = pd.DataFrame({"value": values, "converted": converted.astype(int)}).groupby("value")["converted"]
    out = pd.DataFrame({"leads": grouped.size(), "converted": grouped.sum()}).reset_index()
    low, high = wilson_interval(out["converted"].to_numpy(dtype="float64"), out["leads"].to_numpy(dtype="float64"))
    out["rate"] = out["converted"] / out["leads"]
    out["ci_low"], out["ci_high"] = low, high
    return out.sort_values(["leads", "value"], ascending=[False, True]).reset_index(drop=True)
