"""What every step shares: opening a source (and writing its rejects), loading a model, the
write-back target, and the one engine failure a user fixes by a setting."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from convert.config import Config
from convert.exceptions import ConfigError, ConvertError, ModelNotFoundError
from convert.io.artifacts import write_frame
from convert.model.bundle import LeadScoringModel
from convert.sources.base import NO_FLAT, FlatOptions, LeadSource, Purpose, open_source
from convert.sources.export import CRMData
from convert.sources.mapping import Mapping

Echo = Callable[[str], None]
OUT_ENV = "CONVERT_OUT_URL"


def _quiet(_: str) -> None:
    pass


@dataclass(frozen=True)
class Input:
    """Where a step reads its leads and how (the options every data-reading command takes)."""

    path: str | Path
    mapping: Mapping | None = None
    rejects: str | Path | None = None
    strict: bool | None = None
    flat: FlatOptions = NO_FLAT


def open_data(
    data: Input, config: Config, echo: Echo = _quiet, purpose: Purpose = "train",
    trained: LeadScoringModel | None = None,
) -> LeadSource:
    """Open the source (a CRM export or a flat table), write the rejects file and report the
    counts; with *trained*, check that the model can score this source."""
    source = open_source(data.path, config, data.mapping, purpose=purpose, strict=data.strict, flat=data.flat,
                         trained=trained.metadata if trained is not None else None)
    try:
        rejects = Path(data.rejects or config.data.rejects)
        write_frame(source.report.rejects, rejects)
        for line in source.load_lines(rejects, purpose):
            echo(line)
    except BaseException:
        source.close()
        raise
    return source


def load_data(
    path: str | Path, config: Config, rejects: str | Path | None = None, strict: bool | None = None,
    echo: Echo = _quiet, mapping: Mapping | None = None,
) -> LeadSource:
    """Open a source with its rejects written and its counts echoed (see :func:`open_data`)."""
    return open_data(Input(path, mapping, rejects, strict), config, echo)


def load_model(uri: str | None, default_name: str, echo: Echo) -> tuple[LeadScoringModel, str, str]:
    """A model from the registry or a bundle folder (default: *default_name*'s champion):
    the model, its label and the URI it came from."""
    from convert.registry import store as registry

    uri = uri or f"models:/{default_name}@{registry.CHAMPION}"
    model, label = registry.load_model(uri)
    echo(f"model {label} (from {uri})")
    return model, label, uri


def check_model(source: LeadSource, model: LeadScoringModel, label: str, config: Config) -> None:
    """Stop when *model* cannot score *source* (a flat model on an export, or the reverse)."""
    why = source.accepts(model.metadata)
    if why:
        raise ModelNotFoundError(f"{label} cannot score {source.display}: {why} (by default "
                                 f"models:/{source.model_name(config)}@champion)")


def model_name_for(data: Input, config: Config) -> str:
    """The default model name of the source at *data* (flat tables have their own), without loading it."""
    from convert.sources.base import is_flat_path

    return config.flat.model_name if is_flat_path(data.path) else config.train.model_name


def resolve_target(out: str | None) -> str:
    """The write-back target: ``env:NAME`` reads it from environment variable NAME, and no
    target at all reads ``CONVERT_OUT_URL``, so a database password need not be on the command
    line (or in shell history and process lists)."""
    name = out[4:] if out and out.startswith("env:") else (None if out else OUT_ENV)
    if name is None:
        return str(out)
    value = os.environ.get(name)
    if not value:
        raise ConfigError(
            f"no write-back target: environment variable {name} is not set. Pass --out FILE_OR_URL, "
            f"--out env:VARIABLE, or set {OUT_ENV}"
        )
    return value


def now() -> pd.Timestamp:
    """The current time, naive UTC, to the second (``scored_at``, ``assigned_at``)."""
    return pd.Timestamp.now(tz="UTC").tz_localize(None).floor("s")


def user_error(exc: BaseException) -> ConvertError | None:
    """A failure of an engine underneath that the user fixes by a setting, as a
    :class:`~convert.exceptions.ConvertError` with the fix; ``None`` for anything else (a bug).

    DuckDB running out of memory (``features.duckdb_memory_limit`` too small for the
    export) is the one known today; the CLI prints the message and exits with code 2.
    """
    from convert.sources.readers import out_of_memory

    return out_of_memory(exc)


def open_export(data: Input, config: Config, echo: Echo, what: str) -> CRMData:
    """Open a CRM export for a command that has no flat-table form (report, backtest, export)."""
    from convert.sources.base import is_flat_path

    if is_flat_path(data.path):
        raise ConfigError(f"{what} reads a CRM export (a folder or a database URL); {data.path} is one file, "
                          f"and flat tables are not supported by {what}")
    source = open_data(data, config, echo)
    assert isinstance(source, CRMData)
    return source
