"""The leakage guard: screen raw input attributes for values filled after the outcome.

The most common way a lead-scoring project fails is a field that sales fills in after
talking to the lead (a status note, a quality rating, a lost reason): it looks wonderfully
predictive in training and is useless, or empty, when a new lead is scored. Before
training, every raw attribute (a flat table's columns; in event mode the leads' and
accounts' extra attributes) is screened against the outcome. A column is *suspect* when

* its **out-of-fold single-column ROC AUC** reaches ``leakage.max_auc`` (0.90): a model of
  that column alone (the smoothed conversion rate of its value, or of its quantile bin,
  learned on the other folds) separates converted from unconverted leads almost
  perfectly; or
* its **fill rate** differs by ``leakage.max_fill_gap`` (0.25) or more between converted
  and unconverted leads: a field that is filled mostly after contact.

Suspects stop training (:class:`~convert.exceptions.LeakageError`, exit code 2) until each
is excluded (``--exclude``) or allowed after review (``--allow``). The screen is pure: it
takes a table and a label and returns a :class:`LeakageReport`, whose figures and
decisions go into the model card.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold

from convert.config import LeakageConfig
from convert.exceptions import InsufficientDataError, LeakageError

KEPT, SUSPECT, EXCLUDED, ALLOWED = "kept", "suspect", "excluded", "allowed"


@dataclass(frozen=True)
class ColumnScreen:
    """The screen's figures for one column, and what was decided about it."""

    column: str
    kind: str
    auc: float
    fill_converted: float
    fill_unconverted: float
    reasons: tuple[str, ...]
    decision: str
    note: str = ""

    @property
    def fill_gap(self) -> float:
        return abs(self.fill_converted - self.fill_unconverted)

    @property
    def suspect(self) -> bool:
        """Flagged by a statistic, whatever was decided."""
        return bool(self.reasons)

    def describe(self, config: LeakageConfig) -> str:
        """``Tags: out-of-fold single-column ROC AUC 0.919 >= 0.90; filled for ...``."""
        auc_hit, fill_hit = "auc" in self.reasons, "fill_gap" in self.reasons
        auc = f"out-of-fold single-column ROC AUC {self.auc:.3f}" + (
            f" >= {config.max_auc:.2f}" if auc_hit else ""
        )
        fill = (
            f"filled for {self.fill_converted:.0%} of converted vs {self.fill_unconverted:.0%} of "
            f"unconverted leads (gap {self.fill_gap:.2f}"
            + (f" >= {config.max_fill_gap:.2f})" if fill_hit else ")")
        )
        parts = [auc, fill] if auc_hit or not fill_hit else [fill, auc]
        return f"{self.column}: " + "; ".join(parts)

    def to_dict(self) -> dict[str, Any]:
        out = asdict(self)
        out["reasons"] = list(self.reasons)
        out["fill_gap"] = self.fill_gap
        out["suspect"] = self.suspect
        return {k: (None if isinstance(v, float) and np.isnan(v) else v) for k, v in out.items()}


@dataclass
class LeakageReport:
    """Every screened column's figures and decision, with the thresholds used."""

    columns: list[ColumnScreen]
    rows: int
    positives: int
    config: LeakageConfig
    enabled: bool = True
    notes: dict[str, str] = field(default_factory=dict)

    @property
    def suspects(self) -> list[ColumnScreen]:
        """Columns a statistic flagged (excluded, allowed or still blocking)."""
        return [c for c in self.columns if c.suspect]

    @property
    def blocking(self) -> list[ColumnScreen]:
        """Suspects neither excluded nor allowed: training must not go on."""
        return [c for c in self.columns if c.decision == SUSPECT]

    @property
    def excluded(self) -> dict[str, str]:
        return {c.column: c.note for c in self.columns if c.decision == EXCLUDED}

    @property
    def allowed(self) -> list[str]:
        return [c.column for c in self.columns if c.decision == ALLOWED]

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame([c.to_dict() for c in self.columns])

    def to_dict(self) -> dict[str, Any]:
        """The model card's record of the screen (JSON-ready)."""
        return {
            "enabled": self.enabled,
            "thresholds": {"max_auc": self.config.max_auc, "max_fill_gap": self.config.max_fill_gap},
            "folds": self.config.folds,
            "rows": self.rows,
            "positives": self.positives,
            "suspects": [c.column for c in self.suspects],
            "excluded": self.excluded,
            "allowed": self.allowed,
            "columns": [c.to_dict() for c in self.columns],
        }

    def params(self) -> dict[str, str]:
        """Short run parameters for the tracking server (full figures go in the JSON)."""
        return {
            "leakage.enabled": str(self.enabled),
            "leakage.max_auc": str(self.config.max_auc),
            "leakage.max_fill_gap": str(self.config.max_fill_gap),
            "leakage.screened": str(len(self.columns)),
            "leakage.suspects": ", ".join(c.column for c in self.suspects) or "-",
            "leakage.excluded": ", ".join(self.excluded) or "-",
            "leakage.allowed": ", ".join(self.allowed) or "-",
        }

    def lines(self) -> list[str]:
        """A short summary for the command's output."""
        if not self.enabled:
            return ["leakage guard: disabled (leakage.enabled: false)"]
        out = [
            f"leakage guard: {len(self.columns)} column{'s' if len(self.columns) != 1 else ''} "
            f"screened on {self.rows:,} leads, {len(self.suspects)} suspect"
        ]
        for c in self.suspects:
            verdict = {EXCLUDED: "excluded", ALLOWED: "allowed", SUSPECT: "STOPS TRAINING"}[c.decision]
            out.append(f"  {verdict}: {c.describe(self.config)}" + (f" ({c.note})" if c.note else ""))
        return out

    def check(self) -> None:
        """Raise :class:`LeakageError` naming every blocking suspect and how to go on."""
        blocking = self.blocking
        if not blocking:
            return
        items = "\n".join(f"  - {c.describe(self.config)}" for c in blocking)
        names = " ".join(f"--exclude {_shell(c.column)}" for c in blocking)
        raise LeakageError(
            f"the leakage guard stopped training: {len(blocking)} input "
            f"column{'s look' if len(blocking) > 1 else ' looks'} filled after the outcome\n{items}\n"
            "A field known only after a lead converts makes a model that looks excellent and fails "
            "on new leads. For each column: leave it out with --exclude COLUMN (e.g. "
            f"{names}), or keep it with --allow COLUMN if its value is known when a lead is scored. "
            "Both flags repeat; leakage.exclude / leakage.allow in params.yaml and exclude / allow "
            "in the mapping file do the same",
            report=self,
        )


def _shell(name: str) -> str:
    return f"'{name}'" if any(ch in name for ch in " '\"$&;|<>()") else name


def detect_kind(series: pd.Series) -> str:
    """``numeric`` when every filled value is a number, else ``categorical``."""
    if pd.api.types.is_bool_dtype(series.dtype):
        return "categorical"
    if pd.api.types.is_numeric_dtype(series.dtype):
        return "numeric"
    filled = series.dropna()
    if filled.empty:
        return "categorical"
    parsed = pd.to_numeric(filled.astype(str), errors="coerce")
    return "numeric" if parsed.notna().all() else "categorical"


def _codes(values: pd.Series, kind: str, train: np.ndarray, bins: int) -> np.ndarray:
    """Integer group of each row for the single-column model; 0 is missing.

    A numeric column with more than *bins* distinct training values is cut at the training
    rows' quantiles; otherwise every value is a group of its own.
    """
    if kind == "numeric":
        x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
        finite = np.isfinite(x)
        if np.unique(x[finite & train]).size > bins:
            edges = np.unique(np.quantile(x[finite & train], np.linspace(0, 1, bins + 1)[1:-1]))
            codes = np.searchsorted(edges, x, side="right")
            return np.where(finite, codes + 1, 0).astype("int64")
        values = pd.Series(np.where(finite, x, np.nan))
    codes, _ = pd.factorize(values.astype(object), use_na_sentinel=True)
    return np.asarray(codes, dtype="int64") + 1


def single_column_auc(
    values: pd.Series, label: np.ndarray, kind: str, config: LeakageConfig, seed: int
) -> float:
    """Out-of-fold ROC AUC of a model that knows only this column.

    The model is the smoothed conversion rate of the row's value (categorical) or quantile
    bin (numeric), missing being a value of its own, learned on the other folds; a value
    unseen there gets the overall rate.
    """
    y = np.asarray(label, dtype="int64")
    oof = np.empty(len(y), dtype="float64")
    folds = StratifiedKFold(n_splits=config.folds, shuffle=True, random_state=seed)
    fixed = _codes(values, kind, np.ones(len(y), bool), config.bins) if kind == "categorical" else None
    for train_idx, test_idx in folds.split(np.zeros(len(y)), y):
        train = np.zeros(len(y), bool)
        train[train_idx] = True
        codes = fixed if fixed is not None else _codes(values, kind, train, config.bins)
        size = int(codes.max()) + 1
        prior = float(y[train_idx].mean())
        n = np.bincount(codes[train_idx], minlength=size).astype("float64")
        pos = np.bincount(codes[train_idx], weights=y[train_idx], minlength=size)
        s = config.smoothing
        with np.errstate(invalid="ignore", divide="ignore"):
            rate = np.where(n + s > 0, (pos + s * prior) / (n + s), prior)
        oof[test_idx] = rate[codes[test_idx]]
    return float(roc_auc_score(y, oof))


def screen(
    frame: pd.DataFrame,
    label: np.ndarray | pd.Series,
    config: LeakageConfig,
    *,
    kinds: Mapping[str, str] | None = None,
    excluded: Mapping[str, str] | None = None,
    allowed: Iterable[str] = (),
    seed: int = 42,
) -> LeakageReport:
    """Screen every column of *frame* against the 0/1 outcome *label*.

    Parameters
    ----------
    frame:
        The raw attributes, one row per lead (missing values as NA).
    label:
        1 for a converted lead, else 0.
    config:
        Thresholds, folds, bins and smoothing (``leakage`` in ``params.yaml``); its
        ``exclude`` and ``allow`` lists settle suspects too.
    kinds:
        ``numeric`` or ``categorical`` per column; detected when absent.
    excluded:
        Columns left out already, with the reason (a mapping's exclusions, ``--exclude``).
    allowed:
        Columns kept even when suspect (``--allow``, the mapping's ``allow``).
    seed:
        Seeds the folds.

    Raises
    ------
    InsufficientDataError
        When the label holds fewer converted or unconverted leads than folds.
    """
    y = np.asarray(label, dtype="int64")
    positives = int(y.sum())
    excluded = {**{c: "leakage.exclude in the configuration" for c in config.exclude}, **dict(excluded or {})}
    allowed = set(allowed) | set(config.allow)
    if not config.enabled:
        return LeakageReport([], len(y), positives, config, enabled=False)
    if frame.shape[1] == 0:
        return LeakageReport([], len(y), positives, config)
    if min(positives, len(y) - positives) < config.folds:
        raise InsufficientDataError(
            f"the leakage guard needs at least {config.folds} converted and {config.folds} "
            f"unconverted leads; the data holds {positives} converted of {len(y)}"
        )
    kinds = dict(kinds or {})
    pos, neg = y == 1, y == 0
    out = []
    for column in frame.columns:
        values = frame[column]
        kind = kinds.get(column) or detect_kind(values)
        filled = values.notna().to_numpy()
        fill_pos, fill_neg = float(filled[pos].mean()), float(filled[neg].mean())
        auc = single_column_auc(values, y, kind, config, seed) if filled.any() else 0.5
        reasons = tuple(
            r for r, hit in (("auc", auc >= config.max_auc), ("fill_gap", abs(fill_pos - fill_neg) >= config.max_fill_gap)) if hit
        )
        if column in excluded:
            decision, note = EXCLUDED, excluded[column]
        elif reasons and column in allowed:
            decision, note = ALLOWED, "allowed after review"
        elif reasons:
            decision, note = SUSPECT, ""
        else:
            decision, note = KEPT, ""
        out.append(ColumnScreen(str(column), kind, auc, fill_pos, fill_neg, reasons, decision, note))
    return LeakageReport(out, len(y), positives, config)
