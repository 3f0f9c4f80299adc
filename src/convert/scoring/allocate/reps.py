"""The reps file and the lead attributes allocation reads: schemas, territories, segments.

:func:`parse_reps` validates a reps table (errors name the file, row and column) into a
:class:`RepTable`; :func:`segment_labels` and :func:`employee_band` give each lead the
segment its rep effects are estimated and applied by. The output schemas
(:class:`AssignmentOutput`, :class:`RepEffectTable`) live here beside the input's.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import ClassVar

import numpy as np
import pandas as pd

from convert.exceptions import ContractError
from convert.schema import Column, TableSchema

#: The lead attributes a reps file may use as territory columns besides extra attributes.
TERRITORY_ATTRIBUTES: tuple[str, ...] = ("country", "industry", "lead_source", "employee_band")
#: Separator of accepted values in a territory cell.
ACCEPT_SEPARATOR = "|"
#: Text of a missing attribute in segment labels.
NONE_LABEL = "(none)"
_TRUE = frozenset({"1", "true", "yes", "y", "t", "active"})
_FALSE = frozenset({"0", "false", "no", "n", "f", "inactive"})



# --- schemas ------------------------------------------------------------------------------


class Reps(TableSchema):
    """The reps file (``--reps``): one row per sales rep.

    Every other column is a territory column named after a lead attribute (``country``,
    ``industry``, ``lead_source``, ``employee_band`` or an extra attribute of ``leads``);
    its value is a ``|``-separated list of accepted values, empty for any.
    """

    table = "reps"
    key = ("rep_id",)
    rep_id = Column("rep_id", "string", nullable=False)
    capacity = Column("capacity", "integer", nullable=False)
    max_open = Column("max_open", "integer", required=False)
    active = Column("active", "string", required=False)


class AssignmentOutput(TableSchema):
    """What ``convert-leads allocate`` writes: one row per open lead, assigned or not."""

    table = "lead_assignments"
    key = ("lead_id",)
    lead_id = Column("lead_id", "string", nullable=False)
    rep_id = Column("rep_id", "string")
    probability = Column("probability", "number", nullable=False)
    expected_conversions = Column("expected_conversions", "number")
    rank_for_rep = Column("rank_for_rep", "integer")
    reason = Column("reason", "string", nullable=False)
    as_of = Column("as_of", "timestamp", nullable=False)
    model_version = Column("model_version", "string", nullable=False)
    assigned_at = Column("assigned_at", "timestamp", nullable=False)

    HISTORY_KEY: ClassVar[tuple[str, ...]] = ("lead_id", "as_of", "model_version")
    #: the write-back's shrink guard does not apply: assignments churn every day (the lock,
    #: older-as-of and one-model-per-table guards do)
    SHRINK_GUARD: ClassVar[bool] = False


class RepEffectTable(TableSchema):
    """Learned rep effects: one row per (rep, segment) with past leads."""

    table = "rep_effects"
    rep_id = Column("rep_id", nullable=False)
    segment = Column("segment", nullable=False)
    leads = Column("leads", "integer", nullable=False)
    observed = Column("observed", "number", nullable=False)
    expected = Column("expected", "number", nullable=False)
    effect = Column("effect", "number", nullable=False)
    #: the cell's prior mean: the rep's effect times its factors for the segment's attributes
    prior = Column("prior", "number", nullable=False)
    low = Column("low", "number", nullable=False)
    high = Column("high", "number", nullable=False)


# --- lead attributes ----------------------------------------------------------------------


def employee_band_labels(cuts: Sequence[float]) -> list[str]:
    """Labels of the employee bands cut at *cuts*: ``<10``, ``10-49``, ..., ``5000+``."""
    c = [int(x) for x in cuts]
    labels = [f"<{c[0]}"] + [f"{a}-{b - 1}" for a, b in zip(c, c[1:], strict=False)] + [f"{c[-1]}+"]
    return labels


def employee_band(employees: pd.Series, cuts: Sequence[float]) -> pd.Series:
    """The employee band label of each company size (missing size: missing band)."""
    values = pd.to_numeric(employees, errors="coerce").to_numpy(dtype="float64")
    labels = np.array(employee_band_labels(cuts), dtype=object)
    codes = np.searchsorted(np.asarray(cuts, dtype="float64"), values, side="right")
    out = np.where(np.isnan(values), None, labels[np.minimum(codes, len(labels) - 1)])
    return pd.Series(out, index=employees.index, dtype="object")


def segment_labels(frame: pd.DataFrame, segment_by: Sequence[str]) -> pd.Series:
    """``lead_source=referral, employee_band=50-199`` per row (missing: ``(none)``)."""
    if not segment_by:
        return pd.Series("all", index=frame.index, dtype="object")
    parts = [
        f"{c}=" + frame[c].astype("object").where(frame[c].notna(), NONE_LABEL).astype(str)
        for c in segment_by
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out + ", " + p
    return out.astype("object")


# --- reps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepTable:
    """Validated reps: ``frame`` (rep_id, capacity, max_open (NaN: none), active) and the
    accepted values of each territory column (``None``: any) per rep, in ``frame`` order."""

    frame: pd.DataFrame
    territory: dict[str, list[frozenset[str] | None]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return self.frame[Reps.rep_id].tolist()

    def __len__(self) -> int:
        return len(self.frame)


def cell_text(value: object) -> str:
    """A cell as stripped text; missing (None, NaN, NA) as empty."""
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def parse_reps(frame: pd.DataFrame, label: str = "reps", attributes: Sequence[str] | None = None) -> RepTable:
    """Validate a reps table; errors name the file (*label*), the 1-based row and the column.

    *attributes* are the lead attributes territory columns may name (``None``: any).
    """
    columns = [str(c) for c in frame.columns]
    for required in (Reps.rep_id, Reps.capacity):
        if required not in columns:
            raise ContractError(
                f"the reps table lacks column {required!r} (found: {', '.join(columns)}); it needs "
                "rep_id and capacity, optionally max_open, active and territory columns",
                file=label, column=required,
            )
    territory_columns = [c for c in columns if c not in Reps.names()]
    if attributes is not None:
        unknown = [c for c in territory_columns if c not in attributes]
        if unknown:
            raise ContractError(
                f"territory column {unknown[0]!r} is not a lead attribute; use one of "
                f"{', '.join(attributes)} (or add the attribute to the leads table)",
                file=label, column=unknown[0],
            )
    ids: list[str] = []
    caps: list[int] = []
    max_open: list[float] = []
    active: list[bool] = []
    seen: dict[str, int] = {}
    for row, record in enumerate(frame.to_dict("records"), start=1):
        rep = cell_text(record.get(Reps.rep_id))
        if not rep:
            raise ContractError("empty rep_id", file=label, row=row, column=Reps.rep_id)
        if rep in seen:
            raise ContractError(f"rep_id {rep!r} repeats row {seen[rep]}", file=label, row=row, column=Reps.rep_id)
        seen[rep] = row
        ids.append(rep)
        caps.append(_whole(record.get(Reps.capacity), label, row, Reps.capacity, required=True))
        mo = record.get(Reps.max_open) if Reps.max_open in columns else None
        max_open.append(float(_whole(mo, label, row, Reps.max_open, required=False)) if cell_text(mo) else np.nan)
        text = cell_text(record.get(Reps.active)).lower() if Reps.active in columns else ""
        if text and text not in _TRUE | _FALSE:
            raise ContractError(
                f"active must be true or false (also 1/0, yes/no), not {text!r}", file=label, row=row, column=Reps.active
            )
        active.append(text not in _FALSE)
    territory: dict[str, list[frozenset[str] | None]] = {}
    for column in territory_columns:
        accepted: list[frozenset[str] | None] = []
        for value in frame[column].tolist():
            values = frozenset(v.strip() for v in cell_text(value).split(ACCEPT_SEPARATOR) if v.strip())
            accepted.append(values or None)
        territory[column] = accepted
    out = pd.DataFrame({Reps.rep_id: ids, Reps.capacity: np.asarray(caps, dtype="int64"),
                        Reps.max_open: np.asarray(max_open, dtype="float64"), Reps.active: np.asarray(active, bool)})
    return RepTable(out, territory)


def _whole(value: object, label: str, row: int, column: str, *, required: bool) -> int:
    text = cell_text(value)
    if not text:
        if required:
            raise ContractError("empty value; give a whole number of leads", file=label, row=row, column=column)
        return 0
    try:
        number = float(text)
    except ValueError:
        raise ContractError(f"{text!r} is not a whole number", file=label, row=row, column=column) from None
    if number != np.floor(number) or number < 0:
        raise ContractError(f"{text!r} is not a whole number >= 0", file=label, row=row, column=column)
    return int(number)
