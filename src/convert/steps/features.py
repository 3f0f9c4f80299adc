"""``convert-leads features``: the labelled training set, written (the DVC ``features`` stage)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convert.config import Config
from convert.io.artifacts import write_frame
from convert.model.train import TrainingSet
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_data


@dataclass
class FeaturesSummary:
    """The training set written to *out* (and the catalog to *catalog* when asked)."""

    training_set: TrainingSet
    out: Path
    catalog: Path | None

    def line(self) -> str:
        ts, y = self.training_set, self.training_set.frame["label"]
        return (f"training set: {len(ts.frame):,} rows, {len(ts.as_ofs)} as-of times "
                f"({ts.as_ofs[0]:%Y-%m-%d} to {ts.as_ofs[-1]:%Y-%m-%d}), {int(y.sum()):,} conversions "
                f"({y.mean():.1%}), {len(ts.features)} features -> {self.out}")


def features_step(
    data_path: str | Path, config: Config, out: Path, as_of: pd.Timestamp | None = None,
    catalog: Path | None = None, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> FeaturesSummary:
    """Build the labelled multi-snapshot training set at *as_of* and write it (Parquet/CSV)."""
    source = open_data(Input(data_path, mapping, rejects, strict), config, echo)
    try:
        ts = source.training_set(config, as_of)
    finally:
        source.close()
    write_frame(ts.frame, out)
    if catalog:
        write_frame(ts.catalog.to_frame(), catalog)
    return FeaturesSummary(ts, out, catalog)
