"""The training set as a file: what ``convert-leads features`` writes and ``train --training-set`` reads.

A pipeline (``dvc.yaml``) builds features once and trains from them, so the file must carry
everything training would otherwise take from the export: the labelled feature rows, the
catalog, the event vocabulary, the as-of time and snapshot grid, the leakage guard's report
(the guard runs before the features are built, and what it excludes never becomes a
feature), and the settings that shaped all of these. Training from the file then gives the
same model as training from the export with the same configuration; a configuration that
would have built a different set is refused rather than silently mixed.

Rows are Parquet; the rest is one JSON document in the Parquet schema's metadata, so the
set stays one file (one DVC output).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from convert.config import Config, FeaturesConfig, LeakageConfig
from convert.exceptions import ConfigError, ConvertError
from convert.features.catalog import Catalog
from convert.features.labels import AsOfGrid, grid_for
from convert.model.leakage import ColumnScreen, LeakageReport
from convert.sources.base import DESIGNS, TrainingSet

#: key of the JSON document in the Parquet schema metadata
METADATA_KEY = b"convert.training_set"
FORMAT = 2  # 2: the fold design, baselines, bundle metadata and run parameters of the source
#: data settings that change which rows load (the others: paths, caching, chunking)
_DATA_SHAPING = ("max_quarantine_share", "strict", "valid_from", "valid_to")


def shaping_settings(config: Config) -> dict[str, Any]:
    """The settings a training set depends on: the seed (the leakage guard's folds), loading
    (which rows pass the contract), labels, features and the leakage guard, as given (before
    the guard's exclusions). ``data.valid_to: null`` is compared as written, not as the date it
    stands for, so a set built yesterday still trains today."""
    return {
        "seed": config.seed,
        "data": config.data.model_dump(mode="json", include=set(_DATA_SHAPING)),
        "labels": config.labels.model_dump(mode="json"),
        "features": config.features.model_dump(mode="json"),
        "leakage": config.leakage.model_dump(mode="json"),
    }


@dataclass
class StoredTrainingSet:
    """A training set read back, with what training needs beside its rows."""

    training_set: TrainingSet
    leakage: LeakageReport
    features: FeaturesConfig  # after the leakage guard's exclusions: the model's features config
    settings: dict[str, Any]  # :func:`shaping_settings` of the run that built it
    kind: str  # the source's kind (``event``, ``flat``): its default model name
    earliest_created: pd.Timestamp | None  # a CRM export's first lead and...
    data_as_of: pd.Timestamp  # ...the day after its latest timestamp (newer as-of times for the champion)
    path: Path

    def model_name(self, config: Config) -> str:
        """The registered model name the source of this set trains by default."""
        return config.flat.model_name if self.kind == "flat" else config.train.model_name

    def labelled_after(self, cut: pd.Timestamp, horizon_days: int, config: Config) -> list[pd.Timestamp]:
        """Labelled as-of times of the export newer than *cut*, as the export itself gives them
        (:meth:`convert.sources.export.CRMData.labelled_after`); none for a set without time."""
        if self.training_set.design != "time" or self.earliest_created is None:
            return []
        labels = config.labels.model_copy(update={"horizon_days": horizon_days})
        return [t for t in grid_for(labels, self.earliest_created, self.data_as_of).times if t > cut]

    def config_for(self, config: Config) -> Config:
        """*config* with the set's post-guard features settings, after checking that *config*
        would have built this set (else :class:`ConfigError` naming the sections that differ)."""
        now = shaping_settings(config)
        differ = [k for k in self.settings if now.get(k) != self.settings[k]]
        if differ:
            raise ConfigError(
                f"the training set {self.path} was built with other {', '.join(differ)} settings than "
                "this configuration; training from it would not give the model the export gives. "
                "Rebuild it with `convert-leads features` and this params.yaml (and the same "
                "--horizon-days, --exclude, --allow), or train from the export with --data"
            )
        return config.with_overrides(features=self.features.model_dump(mode="json"))


def write_training_set(
    ts: TrainingSet, path: str | Path, leakage: LeakageReport, config: Config, built_with: Config,
    kind: str, earliest_created: pd.Timestamp | None, data_as_of: pd.Timestamp,
) -> Path:
    """Write *ts* to one Parquet file. *config* is the configuration as given, *built_with*
    the one after the leakage guard (whose features settings built the rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    meta = {
        "format": FORMAT,
        "catalog": ts.catalog.to_records(),
        "event_types": list(ts.event_types),
        "as_of": ts.as_of.isoformat(),
        "horizon_days": ts.horizon_days,
        "grid": _grid_record(ts.grid),
        "design": ts.design,
        "baselines": list(ts.baselines),
        "metadata": ts.metadata,
        "params": ts.params,
        "kind": kind,
        "leakage": _leakage_record(leakage),
        "features": built_with.features.model_dump(mode="json"),
        "settings": shaping_settings(config),
        "earliest_created": _stamp(earliest_created),
        "data_as_of": pd.Timestamp(data_as_of).isoformat(),
    }
    table = pa.Table.from_pandas(ts.frame, preserve_index=False)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}),
                                           METADATA_KEY: json.dumps(meta, default=_plain).encode()})
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    pq.write_table(table, tmp)
    tmp.replace(out)
    return out


def read_training_set(path: str | Path) -> StoredTrainingSet:
    """The training set written by :func:`write_training_set` (``convert-leads features``)."""
    import pyarrow.parquet as pq

    p = Path(path)
    if not p.is_file():
        raise ConvertError(f"training set {p} not found; write it with `convert-leads features --out {p}`")
    try:
        table = pq.read_table(p)
    except Exception as exc:  # pyarrow raises several types for a file that is not Parquet
        raise ConvertError(f"training set {p} is not a Parquet file ({exc}); rebuild it with "
                        "`convert-leads features`") from exc
    raw = (table.schema.metadata or {}).get(METADATA_KEY)
    if raw is None:
        raise ConvertError(f"{p} holds no training-set metadata: it was not written by `convert-leads "
                        "features` (or by a version before it recorded the catalog); rebuild it")
    meta = json.loads(raw)
    if meta.get("format") != FORMAT:
        raise ConvertError(f"training set {p} has format {meta.get('format')!r}, this version reads "
                        f"{FORMAT}; rebuild it with `convert-leads features`")
    ts = TrainingSet(
        frame=table.to_pandas(), catalog=Catalog.from_records(meta["catalog"]),
        event_types=tuple(meta["event_types"]), as_of=pd.Timestamp(meta["as_of"]),
        horizon_days=int(meta["horizon_days"]), grid=_grid_from(meta["grid"]), design=meta["design"],
        baselines=tuple(meta["baselines"]), metadata=dict(meta["metadata"]), params=dict(meta["params"]),
    )
    if ts.design not in DESIGNS:
        raise ConvertError(f"training set {p} has fold design {ts.design!r}, not one of {', '.join(DESIGNS)}; "
                           "rebuild it with `convert-leads features`")
    return StoredTrainingSet(
        ts, _leakage_from(meta["leakage"]), FeaturesConfig.model_validate(meta["features"]),
        meta["settings"], str(meta["kind"]), _time(meta["earliest_created"]), pd.Timestamp(meta["data_as_of"]), p,
    )


def _plain(value: Any) -> Any:
    """JSON for the numpy scalars and timestamps a source's metadata may hold (read back as
    the plain numbers and ISO text a bundle's JSON holds too)."""
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, (pd.Timestamp, np.datetime64)):
        return pd.Timestamp(value).isoformat()
    if isinstance(value, (set, tuple)):
        return list(value)
    raise TypeError(f"{type(value).__name__} in a training set's metadata cannot be written as JSON")


def _stamp(value: pd.Timestamp | None) -> str | None:
    return None if value is None else pd.Timestamp(value).isoformat()


def _time(value: str | None) -> pd.Timestamp | None:
    return None if value is None else pd.Timestamp(value)


def _grid_record(grid: AsOfGrid | None) -> dict[str, Any] | None:
    if grid is None:
        return None
    return {
        "times": [pd.Timestamp(t).isoformat() for t in grid.times], "frequency": grid.frequency,
        "requested": grid.requested, "min_history_days": grid.min_history_days,
        "min_history_auto": grid.min_history_auto, "start": _stamp(grid.start), "end": _stamp(grid.end),
        "window_start": _stamp(grid.window_start), "min_as_of_times": grid.min_as_of_times,
        "counts": dict(grid.counts),
    }


def _grid_from(record: dict[str, Any] | None) -> AsOfGrid | None:
    if record is None:
        return None
    end = _time(record["end"])
    assert end is not None
    return AsOfGrid(
        times=[pd.Timestamp(t) for t in record["times"]], frequency=record["frequency"],
        requested=record["requested"], min_history_days=record["min_history_days"],
        min_history_auto=record["min_history_auto"], start=_time(record["start"]), end=end,
        window_start=_time(record["window_start"]), min_as_of_times=record["min_as_of_times"],
        counts=dict(record["counts"]),
    )


def _leakage_record(report: LeakageReport) -> dict[str, Any]:
    columns = []
    for c in report.columns:
        entry = asdict(c)
        entry["reasons"] = list(c.reasons)
        entry.update({k: None for k in ("auc", "fill_converted", "fill_unconverted")
                      if isinstance(entry[k], float) and np.isnan(entry[k])})
        columns.append(entry)
    return {"columns": columns, "rows": report.rows, "positives": report.positives,
            "config": report.config.model_dump(mode="json"), "enabled": report.enabled,
            "notes": dict(report.notes)}


def _leakage_from(record: dict[str, Any]) -> LeakageReport:
    columns = [
        ColumnScreen(**{**c, "reasons": tuple(c["reasons"]),
                        **{k: float("nan") for k in ("auc", "fill_converted", "fill_unconverted")
                           if c[k] is None}})
        for c in record["columns"]
    ]
    return LeakageReport(columns, int(record["rows"]), int(record["positives"]),
                         LeakageConfig.model_validate(record["config"]), bool(record["enabled"]),
                         dict(record["notes"]))
