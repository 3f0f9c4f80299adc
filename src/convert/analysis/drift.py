"""Drift: does today's population still look like the one the model learned from?

The population stability index compares the distribution of a feature (or of the score)
in a reference sample (the training window) with a current one (the as-of population)::

    PSI = sum over bins b of (c_b - r_b) * ln(c_b / r_b)

where ``r_b`` and ``c_b`` are the shares of reference and current rows in bin ``b``.
Numeric features are cut at the reference's quantiles (``bins`` equal-frequency bins;
fewer when values tie), categorical features get one bin per category, and missing
values always have a bin of their own, so a feature that stops being filled in drifts
too. Empty bins are smoothed by half a row, so a category never seen in training counts
as drift rather than dividing by zero. The usual reading: below 0.1 stable, 0.1-0.25
worth watching, above 0.25 shifted (``report.drift`` in ``params.yaml``).

The label delay says how much of the recent past cannot be judged yet: a lead's label is
known only once its horizon has elapsed, so the newest leads are invisible to training
and evaluation until then.

Everything here is pure: frames and arrays in, tables out.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from convert.config import DriftConfig
from convert.features.catalog import Catalog
from convert.schema import Leads

STABLE, WATCH, SHIFTED = "stable", "watch", "shifted"
_MISSING = "(missing)"


def _shares(counts: np.ndarray) -> np.ndarray:
    """Bin shares with half a row added to every bin (no zero shares, no log of zero)."""
    counts = np.asarray(counts, dtype="float64") + 0.5
    return counts / counts.sum()


def _psi_from_counts(ref_counts: np.ndarray, cur_counts: np.ndarray) -> float:
    r, c = _shares(ref_counts), _shares(cur_counts)
    return float(np.sum((c - r) * np.log(c / r)))


def numeric_bins(reference: np.ndarray, bins: int = 10) -> np.ndarray:
    """Inner cut points: the reference's quantiles, ties collapsed (fewer bins when values tie)."""
    ref = np.asarray(reference, dtype="float64")
    ref = ref[~np.isnan(ref)]
    if ref.size == 0:
        return np.array([], dtype="float64")
    return np.unique(np.quantile(ref, np.linspace(0, 1, bins + 1)[1:-1]))


def _numeric_counts(values: np.ndarray, edges: np.ndarray) -> np.ndarray:
    x = np.asarray(values, dtype="float64")
    missing = np.isnan(x)
    idx = np.searchsorted(edges, x[~missing], side="right")
    counts = np.bincount(idx, minlength=edges.size + 1)
    return np.append(counts, missing.sum())


def psi_numeric(reference: np.ndarray, current: np.ndarray, bins: int = 10) -> float:
    """PSI of a numeric variable over the reference's equal-frequency bins (plus missing)."""
    edges = numeric_bins(reference, bins)
    return _psi_from_counts(_numeric_counts(reference, edges), _numeric_counts(current, edges))


def _as_text(values: pd.Series | np.ndarray | Sequence[object]) -> pd.Series:
    s = pd.Series(values, dtype="object")
    return s.where(s.notna(), _MISSING).astype(str)


def psi_categorical(reference: pd.Series | np.ndarray, current: pd.Series | np.ndarray) -> float:
    """PSI of a categorical variable, one bin per category seen on either side (plus missing)."""
    ref, cur = _as_text(reference), _as_text(current)
    cats = sorted(set(ref.unique()) | set(cur.unique()))
    ref_counts = ref.value_counts().reindex(cats, fill_value=0).to_numpy()
    cur_counts = cur.value_counts().reindex(cats, fill_value=0).to_numpy()
    return _psi_from_counts(ref_counts, cur_counts)


def status(psi: float, flag: float, watch: float | None = None) -> str:
    """``shifted`` above *flag*, ``watch`` above *watch*, else ``stable``."""
    if psi > flag:
        return SHIFTED
    if watch is not None and psi > watch:
        return WATCH
    return STABLE


def _sample(frame: pd.DataFrame, rows: int, seed: int) -> pd.DataFrame:
    return frame.sample(n=rows, random_state=seed) if len(frame) > rows else frame


def _summary(values: pd.Series, kind: str) -> str:
    if kind == "categorical":
        text = _as_text(values)
        if text.empty:
            return ""
        top = text.value_counts(normalize=True)
        return f"{top.index[0]} {top.iloc[0]:.0%}"
    x = pd.to_numeric(values, errors="coerce")
    return "" if x.notna().sum() == 0 else f"median {x.median():,.4g}"


def drift_table(
    reference: pd.DataFrame,
    current: pd.DataFrame,
    catalog: Catalog,
    config: DriftConfig,
    names: Sequence[str] | None = None,
    seed: int = 42,
) -> pd.DataFrame:
    """PSI of every feature between *reference* and *current*, most shifted first.

    Parameters
    ----------
    reference, current:
        Feature rows (e.g. the training window and the as-of population); at most
        ``config.max_rows`` of each are sampled (seeded).
    catalog:
        Kinds, families and descriptions of the features.
    names:
        Features to compare (default: every catalog feature present on both sides).

    Returns
    -------
    pandas.DataFrame
        ``feature``, ``family``, ``kind``, ``psi``, ``status`` (stable / watch / shifted),
        ``reference`` and ``current`` (median or top category), ``missing_reference`` and
        ``missing_current`` (shares), ``description``.
    """
    names = [n for n in (names or catalog.names) if n in reference.columns and n in current.columns]
    ref = _sample(reference, config.max_rows, seed)
    cur = _sample(current, config.max_rows, seed)
    rows = []
    for name in names:
        f = catalog[name]
        if f.kind == "categorical":
            value = psi_categorical(ref[name], cur[name])
        else:
            value = psi_numeric(
                pd.to_numeric(ref[name], errors="coerce").to_numpy(dtype="float64"),
                pd.to_numeric(cur[name], errors="coerce").to_numpy(dtype="float64"),
                config.bins,
            )
        rows.append(
            {
                "feature": name,
                "family": f.family,
                "kind": f.kind,
                "psi": value,
                "status": status(value, config.feature_threshold, config.watch_threshold),
                "reference": _summary(ref[name], f.kind),
                "current": _summary(cur[name], f.kind),
                "missing_reference": float(ref[name].isna().mean()) if len(ref) else float("nan"),
                "missing_current": float(cur[name].isna().mean()) if len(cur) else float("nan"),
                "description": f.description,
            }
        )
    columns = ["feature", "family", "kind", "psi", "status", "reference", "current",
               "missing_reference", "missing_current", "description"]
    table = pd.DataFrame(rows, columns=columns)
    return table.sort_values(["psi", "feature"], ascending=[False, True]).reset_index(drop=True)


@dataclass(frozen=True)
class ScoreDrift:
    """PSI of the score between the training window and the as-of population."""

    psi: float
    status: str
    reference_mean: float
    current_mean: float
    reference_rows: int
    current_rows: int


def score_drift(reference: np.ndarray, current: np.ndarray, config: DriftConfig) -> ScoreDrift:
    """PSI of the 0-100 score (or the probability), flagged above ``score_threshold``."""
    ref = np.asarray(reference, dtype="float64")
    cur = np.asarray(current, dtype="float64")
    value = psi_numeric(ref, cur, config.bins)
    return ScoreDrift(
        psi=value,
        status=status(value, config.score_threshold),
        reference_mean=float(ref.mean()) if ref.size else float("nan"),
        current_mean=float(cur.mean()) if cur.size else float("nan"),
        reference_rows=int(ref.size),
        current_rows=int(cur.size),
    )


@dataclass(frozen=True)
class LabelDelay:
    """How much of the recent past cannot be judged yet at an as-of time."""

    as_of: pd.Timestamp
    horizon_days: int
    latest_judged_as_of: pd.Timestamp
    open_leads: int
    open_unjudged: int
    recent_leads: int
    recent_converted: int
    recent_disqualified: int
    median_days_to_conversion: float
    p90_days_to_conversion: float
    converted_after_horizon: float

    def table(self) -> pd.DataFrame:
        """The figures as (measure, value) rows, for printing and the report."""
        h = self.horizon_days
        rows = [
            ("horizon (days)", f"{h}"),
            ("latest as-of time with a known label", f"{self.latest_judged_as_of:%Y-%m-%d}"),
            ("open leads at the as-of time", f"{self.open_leads:,}"),
            (f"of which created in the last {h} days (cannot be judged yet)",
             f"{self.open_unjudged:,} ({_share(self.open_unjudged, self.open_leads)})"),
            (f"leads created in the last {h} days", f"{self.recent_leads:,}"),
            ("of which already converted", f"{self.recent_converted:,}"),
            ("of which already disqualified", f"{self.recent_disqualified:,}"),
            ("median days from creation to conversion", f"{self.median_days_to_conversion:.0f}"),
            ("90th percentile of days to conversion", f"{self.p90_days_to_conversion:.0f}"),
            (f"conversions later than {h} days after creation", f"{self.converted_after_horizon:.1%}"),
        ]
        return pd.DataFrame(rows, columns=["measure", "value"])


def _share(part: int, whole: int) -> str:
    return f"{part / whole:.0%}" if whole else "-"


def label_delay(leads: pd.DataFrame, as_of: pd.Timestamp, horizon_days: int) -> LabelDelay:
    """Label delay at *as_of* from the leads table (``created_at``, ``converted_at``, ``disqualified_at``).

    Only what is known at *as_of* is used: conversions and disqualifications dated at or
    after it count as not (yet) happened.
    """
    t = pd.Timestamp(as_of)
    h = pd.Timedelta(days=horizon_days)
    created = pd.to_datetime(leads[Leads.created_at])
    converted = pd.to_datetime(leads[Leads.converted_at])
    disqualified = pd.to_datetime(leads[Leads.disqualified_at])
    seen = created < t
    conv_known = converted.notna() & (converted < t)
    disq_known = disqualified.notna() & (disqualified < t)
    open_ = seen & ~conv_known & ~disq_known
    recent = seen & (created >= t - h)
    days = ((converted - created).dt.total_seconds() / 86_400.0)[conv_known & seen]
    return LabelDelay(
        as_of=t,
        horizon_days=horizon_days,
        latest_judged_as_of=t - h,
        open_leads=int(open_.sum()),
        open_unjudged=int((open_ & recent).sum()),
        recent_leads=int(recent.sum()),
        recent_converted=int((recent & conv_known).sum()),
        recent_disqualified=int((recent & disq_known).sum()),
        median_days_to_conversion=float(days.median()) if len(days) else float("nan"),
        p90_days_to_conversion=float(days.quantile(0.9)) if len(days) else float("nan"),
        converted_after_horizon=float((days > horizon_days).mean()) if len(days) else float("nan"),
    )
