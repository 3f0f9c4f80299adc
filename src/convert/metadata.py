"""What a model bundle records about its training, as typed models (the model card's data).

Training (:func:`convert.model.train.train_on`, the flat trainer) fills a
:class:`BundleMetadata`; the bundle saves it as the ``metadata`` object of
``bundle.json`` and loads it back, and every reader (promotion, the report, the CLI's
summary, the registry) reads attributes rather than dictionary keys, so a renamed or
missing entry is a type error, not a silent ``None``.

The JSON keys are the ones bundles have always written, in the same order, so bundles
saved before these models existed load unchanged; unknown keys (written by a newer or
older convert) are kept and saved again as they were. Every entry is optional: a bundle
records what its trainer knew.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from convert.exceptions import BundleError


class _Record(BaseModel):
    """A metadata record: unknown keys kept, every key written back as it was read."""

    model_config = ConfigDict(extra="allow", populate_by_name=True, arbitrary_types_allowed=True)

    def to_dict(self) -> dict[str, Any]:
        """The record as saved: the keys that were given, in order, unknown keys last."""
        return self.model_dump(mode="python", by_alias=True, exclude_unset=True)


class DeployedFit(_Record):
    """The rows the deployed booster was refitted on."""

    from_: str = Field(alias="from")
    to: str
    rows: int
    positives: int


class Calibration(_Record):
    """The calibrator chosen and the cross-validated log loss of each method tried."""

    method: str
    cv_log_loss: dict[str, float | None] = Field(default_factory=dict)


class Choices(_Record):
    """What the inner folds chose."""

    rounds: int | None = None
    blend_weight: float | None = None
    calibration: str | None = None
    inner_log_loss: float | None = None
    blend_inner_log_loss: Any = None
    tune_trials: int | None = None


class FlatDesign(_Record):
    """A flat-table model's source table and columns (``mode: flat``)."""

    file: str | None = None
    target: str | None = None
    positive: list[Any] = Field(default_factory=list)
    negative: list[Any] = Field(default_factory=list)
    id: str | None = None
    split: Literal["random", "ordered"] | None = None
    folds: dict[str, Any] = Field(default_factory=dict)
    #: source column -> feature name
    columns: dict[str, str] = Field(default_factory=dict)
    #: source column -> numeric or categorical
    kinds: dict[str, str] = Field(default_factory=dict)
    excluded: dict[str, Any] = Field(default_factory=dict)
    dropped: Any = None
    #: the mapping the table was read with (scoring applies it again)
    mapping: dict[str, Any] | None = None


class BundleMetadata(_Record):
    """The training record a bundle carries (model card, promotion, scoring settings).

    Field order is the JSON order bundles have always had: a flat model's entries first,
    then an event model's training time and snapshots, then what both record.
    """

    #: ``flat`` for a flat-table model; absent for an event model
    mode: str | None = None
    trained_at: str | None = None
    flat: FlatDesign | None = None
    #: ISO time of the training as-of time
    training_as_of: str | None = None
    horizon_days: int | None = None
    frequency: str | None = None
    as_of_grid: dict[str, Any] | None = None
    design: str | None = None
    deployed_fit: DeployedFit | None = None
    folds: list[dict[str, Any]] | None = None
    fold_metrics: list[dict[str, Any]] | None = None
    choices: Choices | None = None
    metrics_from: str | None = None
    purged_rows: int | None = None
    calibration: Calibration | None = None
    holdout_metrics: dict[str, float | None] | None = None
    baseline_metrics: dict[str, dict[str, float | None]] | None = None
    params: dict[str, Any] | None = None
    rounds: int | None = None
    blend_weight: float | None = None
    seed: int | None = None
    #: the feature settings the model was trained with (``FeaturesConfig`` as JSON)
    features_config: dict[str, Any] | None = None
    #: the leakage screen (``LeakageReport.to_dict()``)
    leakage: dict[str, Any] | None = None

    @classmethod
    def of(cls, value: BundleMetadata | Mapping[str, Any] | None) -> BundleMetadata:
        """*value* as metadata: a plain dictionary (a saved bundle's, a trainer's) is validated."""
        if isinstance(value, BundleMetadata):
            return value
        return cls.model_validate(_plain(dict(value or {})))

    @classmethod
    def from_saved(cls, value: Any, where: Path) -> BundleMetadata:
        """A saved bundle's ``metadata`` (from *where*); a malformed one is a damaged bundle."""
        try:
            return cls.of(value if isinstance(value, Mapping) else None)
        except ValidationError as exc:
            first = exc.errors()[0]
            raise BundleError(
                f"{where} has malformed metadata ({exc.error_count()} problem(s), first: "
                f"{'.'.join(str(x) for x in first['loc'])}: {first['msg']}); "
                "re-save the bundle from training (convert-leads train --save)"
            ) from None

    def to_json(self) -> dict[str, Any]:
        """:meth:`to_dict` as JSON data: numpy numbers as Python's, NaN as null, times as ISO text."""
        return _jsonable(self.to_dict())

    @property
    def is_flat(self) -> bool:
        return self.mode == "flat"


def _plain(value: Any) -> Any:
    """numpy scalars as Python numbers (NaN kept), containers walked, anything else as it is."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, np.integer):
        return int(value)
    if isinstance(value, np.floating):
        return float(value)
    if isinstance(value, np.bool_):
        return bool(value)
    return value


def _jsonable(value: Any) -> Any:
    """*value* as JSON data: numpy numbers as Python's, NaN as null, timestamps as ISO text."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating, float)):
        return None if math.isnan(float(value)) else float(value)
    if isinstance(value, (pd.Timestamp,)):
        return value.isoformat()
    return value
