"""``convert-leads features``: the leakage guard, then the labelled training set, written (the
DVC ``features`` stage, read back by ``convert-leads train --training-set``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convert.config import Config
from convert.io.artifacts import write_frame
from convert.model.leakage import LeakageReport
from convert.model.train import TrainingSet, screen_source
from convert.sources.base import NO_FLAT, FlatOptions
from convert.sources.export import CRMData
from convert.sources.mapping import Mapping
from convert.steps.common import Echo, Input, _quiet, open_data


@dataclass
class FeaturesSummary:
    """The training set written to *out* (and the catalog to *catalog* when asked), with the
    leakage guard's report (what it excluded never became a feature)."""

    training_set: TrainingSet
    out: Path
    catalog: Path | None
    leakage: LeakageReport | None = None

    def line(self) -> str:
        ts, y = self.training_set, self.training_set.frame["label"]
        return (f"training set: {len(ts.frame):,} rows, {len(ts.as_ofs)} as-of times "
                f"({ts.as_ofs[0]:%Y-%m-%d} to {ts.as_ofs[-1]:%Y-%m-%d}), {int(y.sum()):,} conversions "
                f"({y.mean():.1%}), {len(ts.features)} features -> {self.out}")


def features_step(
    data_path: str | Path, config: Config, out: Path, as_of: pd.Timestamp | None = None,
    catalog: Path | None = None, rejects: str | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None, flat: FlatOptions = NO_FLAT,
) -> FeaturesSummary:
    """Run the leakage guard as ``train`` does, then build the labelled multi-snapshot training
    set at *as_of* and write it.

    A ``.parquet`` *out* carries, beside the rows, what ``train --training-set`` needs to give
    the model training from the export gives (:mod:`convert.model.training_set`); any other
    suffix writes the rows alone (e.g. CSV, to read elsewhere). A flat file is read with *flat*
    (outcome, id, folds) as ``train --data FILE --target ...`` reads it.
    """
    from convert.model.training_set import write_training_set

    source = open_data(Input(data_path, mapping, rejects, strict, flat), config, echo)
    try:
        leakage, screened = screen_source(source, config, mapping)
        for line in leakage.lines():
            echo(line)
        ts = source.training_set(screened, as_of)
        if Path(out).suffix.lower() == ".parquet":
            earliest = source.earliest_created() if isinstance(source, CRMData) else None
            write_training_set(ts, out, leakage, config, screened, source.kind, earliest, source.default_as_of())
        else:
            write_frame(ts.frame, out)
    finally:
        source.close()
    if catalog:
        write_frame(ts.catalog.to_frame(), catalog)
    return FeaturesSummary(ts, out, catalog, leakage)
