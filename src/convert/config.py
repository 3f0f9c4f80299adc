"""Typed configuration: one object, validated from ``params.yaml``, passed down explicitly.

Each section matches one step (and one DVC stage's ``params``). Command-line flags
override values through :func:`Config.with_overrides`; nothing else reads the file.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, time
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from convert.exceptions import ConfigError
from convert.sql import is_identifier

STANDARD_EVENT_TYPES: tuple[str, ...] = (
    "page_view",
    "pricing_page_view",
    "email_open",
    "email_click",
    "form_submit",
    "content_download",
    "webinar_registered",
    "webinar_attended",
    "demo_request",
    "quote_request",
    "meeting",
    "call",
    "unsubscribe",
    "email_bounce",
)


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class DataConfig(_Section):
    """Loading and validation of the CRM export (the data contract)."""

    max_quarantine_share: float = Field(0.05, ge=0.0, le=1.0)
    rejects: str = "rejects.csv"
    strict: bool = False
    #: Rows fetched per round trip when ``--data`` is a database URL.
    db_chunk_rows: int = Field(100_000, ge=100)
    #: Plausible timestamps: a row dated before ``valid_from`` or after ``valid_to`` is
    #: quarantined as implausible (``0001-01-01``, ``2999-12-31``: placeholders, typos).
    #: ``valid_to`` unset means the current date plus one year.
    valid_from: str = "1970-01-01"
    valid_to: str | None = None
    #: The cache of validated tables (folder and file exports; ``--no-cache`` turns it off):
    #: a later load of an unchanged export copies the validated tables back instead of
    #: reading and validating the files again (:mod:`convert.sources.cache`).
    cache: bool = True
    #: Where the cache lives; unset: ``.convert-cache`` beside the export, or the user's cache
    #: directory (``~/.cache/convert``) when the export's folder is read-only.
    cache_dir: str | None = None
    #: Exports kept in the cache; the least recently used beyond this are removed.
    cache_keep: int = Field(3, ge=1)

    @field_validator("valid_from", "valid_to")
    @classmethod
    def _iso_date(cls, value: str | None) -> str | None:
        if value is None:
            return None
        try:
            datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ValueError(f"{value!r} is not an ISO 8601 date or timestamp such as 1970-01-01") from None
        return str(value).strip()

    def valid_range(self) -> tuple[datetime, datetime]:
        """(``valid_from``, ``valid_to``) as naive UTC datetimes; ``valid_to`` defaults to a year from now."""
        def naive(text: str) -> datetime:
            t = datetime.fromisoformat(text)
            return t.astimezone(UTC).replace(tzinfo=None) if t.tzinfo else t

        lo = naive(self.valid_from)
        if self.valid_to is not None:
            hi = naive(self.valid_to)
        else:
            today = datetime.now(UTC).date()
            try:
                hi = datetime.combine(today.replace(year=today.year + 1), time())
            except ValueError:  # 29 February
                hi = datetime.combine(today.replace(year=today.year + 1, day=28), time())
        if hi <= lo:
            raise ConfigError(f"data.valid_to ({hi:%Y-%m-%d}) must be later than data.valid_from ({lo:%Y-%m-%d})")
        return lo, hi


class LabelsConfig(_Section):
    """Population and label: horizon and the grid of training snapshots."""

    horizon_days: int = Field(90, gt=0)
    #: Snapshot spacing; ``auto``: the coarsest giving at least ``min_as_of_times`` labelled
    #: snapshots (see :func:`convert.features.labels.choose_grid`).
    frequency: Literal["auto", "daily", "weekly", "biweekly", "monthly", "quarterly"] = "auto"
    min_as_of_times: int = Field(24, ge=1)
    #: Days from the first lead to the first snapshot; ``None``: a tenth of the labelled span,
    #: at most 60 days.
    min_history_days: int | None = Field(None, ge=0)
    #: When set, training looks back at most this many days before its latest labelled snapshot.
    window_days: int | None = Field(None, gt=0)


class ExtraAttribute(_Section):
    """A non-contract column of ``leads`` or ``accounts`` that becomes a model feature."""

    table: Literal["leads", "accounts"]
    column: str
    kind: Literal["categorical", "numeric"]
    description: str = ""


class FeaturesConfig(_Section):
    """Feature definitions: windows, vocabulary and engine limits."""

    windows_days: tuple[int, ...] = (7, 30, 90)
    trend_window_days: int = Field(30, gt=0)
    min_event_type_count: int = Field(50, ge=1)
    max_event_types: int = Field(40, ge=1)
    high_intent_events: tuple[str, ...] = (
        "pricing_page_view",
        "demo_request",
        "quote_request",
        "meeting",
    )
    employee_bands: tuple[int, ...] = (10, 50, 200, 1000, 5000)
    revenue_bands: tuple[float, ...] = (1e6, 1e7, 1e8, 1e9)
    extra_attributes: tuple[ExtraAttribute, ...] = ()
    duckdb_memory_limit: str = "8GB"
    duckdb_threads: int | None = None
    #: As-of times share one pass over events while their (event, as-of) pairs stay
    #: under this many rows; beyond it they run in separate passes (bounded memory).
    event_rows_per_pass: int = Field(default=50_000_000, ge=1)

    @field_validator("windows_days")
    @classmethod
    def _windows_sorted(cls, value: tuple[int, ...]) -> tuple[int, ...]:
        if not value or any(w <= 0 for w in value):
            raise ValueError("windows_days needs at least one positive number of days")
        return tuple(sorted(set(value)))


class TrainConfig(_Section):
    """LightGBM training by time-series cross-fitting (see :mod:`convert.model.crossfit`)."""

    model_name: str = "lead-conversion"
    #: Every fold's test block and every fold's fit hold at least this many conversions.
    min_positives: int = Field(50, ge=1)
    #: Folds whose figures are reported (the latest); no choice sees them.
    outer_folds: int = Field(2, ge=1, le=10)
    #: Folds before them on which every choice is made (rounds, parameters, blend, calibrator).
    inner_folds: int = Field(3, ge=1, le=10)
    #: Each fold's test block holds at least this share of all conversions.
    fold_share: float = Field(0.1, gt=0.0, le=0.3)
    #: Most boosting rounds; the rounds used minimise the mean inner-fold log loss.
    num_boost_round: int = Field(2000, ge=1)
    #: Stop adding rounds once the mean inner-fold log loss has not improved for this many.
    early_stopping_rounds: int = Field(50, ge=1)
    #: Fewest rounds used, whatever the inner folds say.
    min_boost_round: int = Field(10, ge=1)
    #: Blend LightGBM with the logistic model in log-odds when the blend wins on the inner folds
    #: (never with monotone_constraints: the linear half could bend a constrained feature).
    blend: bool = True
    #: Weight snapshots by recency: halve a row's weight every this many days (None: equal weights).
    recency_half_life_days: float | None = Field(None, gt=0)
    lightgbm: dict[str, Any] = Field(
        default_factory=lambda: {
            "objective": "binary",
            "learning_rate": 0.05,
            "num_leaves": 15,
            "min_data_in_leaf": 50,
            "feature_fraction": 0.8,
            "bagging_fraction": 0.8,
            "bagging_freq": 1,
            "lambda_l2": 5.0,
            "cat_smooth": 10,
            "max_cat_to_onehot": 4,
            "max_bin": 63,
        }
    )
    monotone_constraints: dict[str, Literal[-1, 0, 1]] = Field(default_factory=dict)
    tune_trials: int = Field(0, ge=0)


class CalibrationConfig(_Section):
    """Calibrator choice: candidates compared by cross-validated log loss."""

    methods: tuple[Literal["isotonic", "sigmoid"], ...] = ("isotonic", "sigmoid")
    cv_folds: int = Field(5, ge=2)
    min_rows_isotonic: int = Field(1000, ge=10)


class ScoringConfig(_Section):
    """Score, grade and action rules, and the batch settings of scoring."""

    grade_cutoffs: dict[str, int] = Field(default_factory=lambda: {"A": 50, "B": 25, "C": 10})
    route_to_sales_min_score: int = Field(40, ge=0, le=100)
    review_disqualify_max_score: int = Field(2, ge=0, le=100)
    review_disqualify_min_idle_days: int = Field(90, ge=0)
    chunk_size: int = Field(50_000, ge=100)
    reasons: int = Field(3, ge=1, le=3)
    table: str = "lead_scores"
    #: Threads of scoring (explanations and LightGBM predictions); 0: every core this process
    #: may use. Scores are the same whatever the count (each lead is computed on its own).
    num_threads: int = Field(0, ge=0)
    #: A lead whose score moved by less than this many points since its previous score is
    #: ``steady``; by this much or more, ``improving`` or ``declining`` (issue 17).
    trend_min_change: int = Field(5, ge=1, le=100)

    @field_validator("grade_cutoffs")
    @classmethod
    def _grades_descend(cls, value: dict[str, int]) -> dict[str, int]:
        cuts = list(value.values())
        if cuts != sorted(cuts, reverse=True) or any(not 0 <= c <= 100 for c in cuts):
            raise ValueError("grade_cutoffs must be scores 0-100, best grade first, descending")
        return value


class WritebackConfig(_Section):
    """Guards and locking of every command that writes a table back (``score`` today)."""

    #: A run that would remove more than this share of the current rows is refused
    #: (unless ``--allow-shrink``): a partial export must not wipe the table.
    max_removed_share: float = Field(0.2, ge=0.0, le=1.0)
    #: Seconds a run waits for another run's (or session's) lock on the table; then it
    #: stops with exit code 2, changing nothing.
    lock_timeout_s: float = Field(600.0, gt=0.0, le=86_400.0)


class BaselinesConfig(_Section):
    """The hand-made points rule marketing teams use, as a baseline to beat."""

    event_points: dict[str, float] = Field(
        default_factory=lambda: {
            "page_view": 1.0,
            "pricing_page_view": 10.0,
            "email_open": 1.0,
            "email_click": 3.0,
            "form_submit": 5.0,
            "content_download": 5.0,
            "webinar_attended": 8.0,
            "demo_request": 30.0,
            "quote_request": 30.0,
            "meeting": 20.0,
            "unsubscribe": -20.0,
            "email_bounce": -10.0,
        }
    )
    industry_points: dict[str, float] = Field(
        default_factory=lambda: {"software": 10.0, "financial_services": 8.0, "healthcare": 5.0}
    )
    min_employees: int = 50
    employees_points: float = 10
    seniority_points: dict[str, float] = Field(
        default_factory=lambda: {"c_level": 15.0, "vp": 12.0, "director": 10.0, "manager": 5.0}
    )


class LeakageConfig(_Section):
    """The leakage guard: raw attributes screened before training (see :mod:`convert.model.leakage`).

    A column is suspect when its out-of-fold single-column ROC AUC reaches ``max_auc``, or
    when its fill rate differs by ``max_fill_gap`` or more between converted and unconverted
    leads (a field filled after contact). ``exclude`` and ``allow`` settle suspects
    (``--exclude`` / ``--allow`` add to them).
    """

    enabled: bool = True
    max_auc: float = Field(0.90, gt=0.5, le=1.0)
    max_fill_gap: float = Field(0.25, gt=0.0, le=1.0)
    folds: int = Field(5, ge=2)
    bins: int = Field(20, ge=2)
    smoothing: float = Field(10.0, ge=0.0)
    exclude: tuple[str, ...] = ()
    allow: tuple[str, ...] = ()


class FlatConfig(_Section):
    """Flat tables: one row per lead, an outcome column and no timestamps.

    Columns are typed by detection (numeric when at least ``numeric_min_share`` of the
    filled cells are numbers, else categorical) unless named in ``categorical`` or
    ``numeric``; ``engagement`` names the columns that describe what the lead did (the
    rest are ``fit``).
    """

    model_name: str = "lead-conversion-flat"
    categorical: tuple[str, ...] = ()
    numeric: tuple[str, ...] = ()
    engagement: tuple[str, ...] = ()
    numeric_min_share: float = Field(0.98, gt=0.5, le=1.0)
    max_category_share: float = Field(0.5, gt=0.0, le=1.0)


#: Why the owner column never becomes a model feature (the leakage guard's exclusion reason).
OWNER_EXCLUDED = (
    "the lead's owner (sales rep): used by allocate to learn rep effects, never a model feature "
    "(who works a lead is decided after scoring, and its fill rate follows the outcome)"
)


class AllocationConfig(_Section):
    """``convert-leads allocate``: who should call each lead (see :mod:`convert.scoring.allocate`).

    ``segment_by`` names the lead attributes whose combination is a segment of the rep
    effects; ``owner_column`` the leads' column holding each lead's current rep (the mapping
    can rename a CRM's own column to it); rep effects are learned from owned leads whose
    outcome is known, each predicted at its first ``history_frequency`` snapshot at least a
    day after creation (default daily: the day the lead is routed, before the rep's work shows
    in its engagement; a later snapshot's engagement already carries the outcome the rep
    caused, and the effect learned against it shrinks toward 1).
    """

    table: str = "lead_assignments"
    scores_table: str = "lead_scores"
    reps_table: str = "reps"
    segment_by: tuple[str, ...] = ("lead_source", "employee_band")
    balance_tolerance: float = Field(0.10, gt=0.0, le=1.0)
    owner_column: str = "owner_id"
    history_frequency: Literal["daily", "weekly", "biweekly", "monthly"] = "daily"
    interval: float = Field(0.95, gt=0.5, lt=1.0)
    time_limit_seconds: float = Field(60.0, gt=0.0)

    @field_validator("owner_column")
    @classmethod
    def _owner_name(cls, value: str) -> str:
        if not is_identifier(value):
            raise ValueError(f"owner_column {value!r} must be a plain column name (letters, digits, _)")
        return value


class PromotionConfig(_Section):
    """When the challenger replaces the champion."""

    metric: Literal["log_loss", "brier", "roc_auc", "pr_auc"] = "log_loss"
    min_improvement: float = Field(0.0, ge=0.0)


class DriftConfig(_Section):
    """Population stability between the training window and the as-of population.

    PSI = sum over bins of (current share - reference share) x ln(current / reference);
    the usual reading: below 0.1 stable, 0.1-0.25 worth watching, above 0.25 shifted.
    """

    bins: int = Field(10, ge=2, le=100)
    watch_threshold: float = Field(0.1, ge=0.0)
    feature_threshold: float = Field(0.25, gt=0.0)
    score_threshold: float = Field(0.1, gt=0.0)
    max_rows: int = Field(20_000, ge=100)

    @model_validator(mode="after")
    def _watch_below_flag(self) -> DriftConfig:
        if self.watch_threshold > self.feature_threshold:
            raise ValueError("watch_threshold must not exceed feature_threshold")
        return self


class ReportConfig(_Section):
    """The analyst report (``convert-leads report``)."""

    explain_rows: int = Field(4000, ge=100)
    beeswarm_features: int = Field(15, ge=1)
    dependence_features: int = Field(6, ge=0)
    segments: tuple[str, ...] = ("lead_source", "industry", "country", "employee_band")
    segment_max_values: int = Field(12, ge=2)
    segment_min_conversions: int = Field(20, ge=1)
    #: The movements section compares the as-of with this many days earlier (the previous
    #: scoring run of a weekly schedule) unless ``report --since`` names the time.
    movements_days: int = Field(7, ge=1)
    drift: DriftConfig = DriftConfig()


class BacktestConfig(_Section):
    """Rolling-origin evaluation (``convert-leads backtest``); periods like 1M, 2W, 14D, 1Q, 1Y."""

    every: str = "1M"
    retrain_every: str | None = None

    @field_validator("every", "retrain_every")
    @classmethod
    def _period(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[1-9][0-9]*[DWMQY]", value.strip().upper()):
            raise ValueError(f"{value!r} is not a period like 1M, 2W, 14D, 1Q or 1Y")
        return value.strip().upper() if value is not None else None



def validation_problems(exc: ValidationError) -> str:
    """A pydantic error as ``field.path: message; ...``, for a :class:`ConfigError`."""
    return "; ".join(
        f"{'.'.join(str(p) for p in err['loc']) or '(top)'}: {err['msg']}" for err in exc.errors()
    )


class Config(_Section):
    """The whole configuration of convert."""

    seed: int = 42
    data: DataConfig = DataConfig()
    labels: LabelsConfig = LabelsConfig()
    features: FeaturesConfig = FeaturesConfig()
    train: TrainConfig = TrainConfig()
    calibration: CalibrationConfig = CalibrationConfig()
    scoring: ScoringConfig = ScoringConfig()
    writeback: WritebackConfig = WritebackConfig()
    baselines: BaselinesConfig = BaselinesConfig()
    promotion: PromotionConfig = PromotionConfig()
    leakage: LeakageConfig = LeakageConfig()
    flat: FlatConfig = FlatConfig()
    report: ReportConfig = ReportConfig()
    backtest: BacktestConfig = BacktestConfig()
    allocation: AllocationConfig = AllocationConfig()

    @model_validator(mode="after")
    def _owner_is_no_feature(self) -> Config:
        owner = self.allocation.owner_column
        if any(e.column == owner for e in self.features.extra_attributes):
            raise ValueError(
                f"features.extra_attributes names {owner!r}, the owner column "
                f"(allocation.owner_column): {OWNER_EXCLUDED}. Remove it from extra_attributes"
            )
        return self

    @classmethod
    def from_yaml(cls, path: str | Path) -> Config:
        """Read and validate ``params.yaml``; errors name the file and the key."""
        path = Path(path)
        try:
            raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except FileNotFoundError as exc:
            raise ConfigError(f"configuration file {path} not found") from exc
        except yaml.YAMLError as exc:
            raise ConfigError(f"{path} is not valid YAML: {exc}") from exc
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "configuration") -> Config:
        try:
            return cls.model_validate(raw)
        except ValidationError as exc:
            raise ConfigError(f"{source} is invalid: {validation_problems(exc)}") from exc

    def with_overrides(self, **dotted: Any) -> Config:
        """Return a copy with ``section__key=value`` overrides applied (``None`` is ignored)."""
        raw = self.model_dump()
        for key, value in dotted.items():
            if value is None:
                continue
            node = raw
            *parents, leaf = key.split("__")
            for part in parents:
                node = node[part]
            node[leaf] = value
        return Config.from_dict(raw, source="command-line overrides")


def load_config(path: str | Path | None = None) -> Config:
    """The configuration at *path*, else ``params.yaml`` in the working directory, else defaults."""
    if path is not None:
        return Config.from_yaml(path)
    default = Path("params.yaml")
    return Config.from_yaml(default) if default.exists() else Config()
