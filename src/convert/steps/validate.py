"""``convert-leads validate``: load a source by the data contract and report what was found."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from convert.config import Config
from convert.sources.base import NO_FLAT, FlatOptions
from convert.sources.mapping import Mapping
from convert.sources.validation import LoadReport
from convert.steps.common import Echo, Input, _quiet, open_data


@dataclass
class ValidationSummary:
    """The load report, and for a flat table one line per column (its kind, whether it is a feature)."""

    report: LoadReport
    columns: list[str] = field(default_factory=list)

    def lines(self) -> list[str]:
        return [str(self.report), *self.columns]


def validate_step(
    data_path: str | Path, config: Config, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None, flat: FlatOptions = NO_FLAT,
) -> ValidationSummary:
    """Load and check a source (a flat table's outcome when one is named), write the rejects file."""
    source = open_data(Input(data_path, mapping, rejects, strict, flat), config, echo, "validate")
    try:
        return ValidationSummary(source.report, source.column_lines())
    finally:
        source.close()
