"""``convert-leads export``: the typed contract tables as Parquet (the Spark engine's input)."""

from __future__ import annotations

from pathlib import Path

from convert.config import Config
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_export


def export_step(data_path: str | Path, config: Config, out: str | Path, rejects: str | None = None,
                strict: bool | None = None, echo: Echo = _quiet, mapping: Mapping | None = None) -> Path:
    """Validate an export and write its typed contract tables as Parquet (for Spark)."""
    from convert.features.spark import export_typed

    data = open_export(Input(data_path, mapping, rejects, strict), config, echo, "export")
    try:
        return export_typed(data.con, out)
    finally:
        data.close()
