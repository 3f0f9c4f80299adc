"""The one interface every lead source implements, and the function that opens the right one.

Why an interface: convert reads leads from two kinds of input -- a CRM export (leads with
their events, so every lead can be seen at many as-of times: event mode) and a flat table (one
row per lead, an outcome column and no timestamps). Everything after loading -- the leakage
guard, training and its evaluation, scoring, explanations, write-back -- is the same for both.
:class:`LeadSource` names what those steps need from a source, so each step is written once
and a third kind of source is one new class, not a sixth copy of every step:

* the load report (rejects, counts) and a display name;
* the raw attributes the leakage guard screens, and a way to drop the ones it excludes;
* the labelled training set (:class:`TrainingSet`) at an as-of time, or rebuilt for a trained
  model (its evaluation);
* the feature rows a model scores at an as-of time, whole or in chunks.

:func:`open_source` replaces the command line's old "is this a flat file?" branches: a single
file is a flat table, a folder or a database URL is a CRM export.

Sources only load and shape data; training lives in :mod:`convert.model.train`, which takes a
:class:`TrainingSet` from either source (the ``design`` field says which fold design fits it).
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from convert.config import Config, FeaturesConfig
from convert.exceptions import ConfigError
from convert.features.catalog import Catalog
from convert.features.labels import AsOfGrid
from convert.metadata import BundleMetadata
from convert.schema import Labeled
from convert.sources.validation import LoadReport

#: How a training set's rows are cut into folds (:mod:`convert.model.crossfit`): ``time``
#: forward-chaining over as-of times (event mode), ``random`` stratified blocks or ``ordered``
#: forward-chaining in file order (flat tables).
Design = Literal["time", "random", "ordered"]
DESIGNS: tuple[str, ...] = ("time", "random", "ordered")
#: Why a source is opened: what it must hold (an outcome for ``train`` and ``evaluate``).
Purpose = Literal["validate", "train", "evaluate", "score"]


@dataclass
class TrainingSet:
    """Labelled feature rows keyed by (lead_id, as_of), with their catalog.

    ``design`` is the fold design the rows allow (``time``: many as-of times per lead;
    ``random``/``ordered``: one row per lead of a flat table). ``baselines`` names the
    baselines whose inputs the features hold. ``metadata`` is what the source records in
    the trained model's bundle (first, before the training design's own entries), ``params``
    what it adds to the training run's tracked parameters.
    """

    frame: pd.DataFrame
    catalog: Catalog
    event_types: tuple[str, ...]
    as_of: pd.Timestamp
    horizon_days: int
    grid: AsOfGrid | None = None  # the snapshot grid and how it was chosen
    design: Design = "time"
    baselines: tuple[str, ...] = ("source_rate", "logistic_regression", "points_rule")
    metadata: dict[str, Any] = field(default_factory=dict)
    #: what the source adds to the training run's tracked parameters (MLflow)
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def features(self) -> list[str]:
        return self.catalog.names

    @property
    def as_ofs(self) -> list[pd.Timestamp]:
        return sorted(pd.to_datetime(self.frame[Labeled.as_of].unique()))

    @property
    def labels(self) -> np.ndarray:
        return self.frame[Labeled.label].to_numpy()

    def row_times(self) -> np.ndarray | None:
        """Each row's as-of time when the rows carry their own (recency weights), else ``None``."""
        return pd.to_datetime(self.frame[Labeled.as_of]).to_numpy() if self.design == "time" else None


@dataclass
class Attributes:
    """What the leakage guard screens: one row per lead of raw attributes and its outcome.

    ``kinds`` gives ``numeric``/``categorical`` where known; ``excluded`` the columns already
    left out (the mapping's exclusions, the owner column), with the reason.
    """

    frame: pd.DataFrame
    label: np.ndarray
    kinds: dict[str, str] = field(default_factory=dict)
    excluded: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class FlatOptions:
    """The command line's flat-table options (``--target``, ``--positive``, ``--id``, ``--split``)."""

    target: str | None = None
    positive: str | None = None
    id_column: str | None = None
    split: str | None = None

    def given(self) -> bool:
        return any(v is not None for v in (self.target, self.positive, self.id_column, self.split))


#: No flat-table option given (the default of every function taking them).
NO_FLAT = FlatOptions()


class LeadSource(ABC):
    """Leads from one input, as the steps need them (see the module doc for why).

    Implementations: :class:`convert.sources.export.CRMData` (a CRM export, event mode) and
    :class:`convert.sources.flat.FlatSource` (a flat table).
    """

    #: ``event`` or ``flat``: recorded with the model, shown in messages.
    kind: ClassVar[str]
    report: LoadReport

    @property
    @abstractmethod
    def display(self) -> str:
        """The source as shown to the user (a path, or a URL with its password hidden)."""

    @abstractmethod
    def load_lines(self, rejects: Path, purpose: Purpose) -> list[str]:
        """What loading found, as lines to print (counts, where the rejects went, mapping notes)."""

    @abstractmethod
    def model_name(self, config: Config) -> str:
        """The registered model name this source trains and scores by default."""

    @abstractmethod
    def default_as_of(self) -> pd.Timestamp:
        """The training as-of time when none is given."""

    @abstractmethod
    def scoring_as_of(self, as_of: pd.Timestamp | None, what: str) -> pd.Timestamp:
        """The as-of time to score or explain at (*what* names the command for the error).

        Raises
        ------
        ConfigError
            When this source needs an as-of time and none was given.
        """

    @abstractmethod
    def accepts(self, metadata: BundleMetadata) -> str | None:
        """Why a model with *metadata* cannot score this source, or ``None`` when it can."""

    # --- the leakage guard ---------------------------------------------------------------

    @abstractmethod
    def leakage_attributes(self, config: Config) -> Attributes:
        """The raw attributes the leakage guard screens, one row per lead."""

    @abstractmethod
    def exclude_attributes(self, excluded: Mapping[str, str], config: Config) -> Config:
        """Leave the *excluded* columns (the guard's exclusions, with the reason) out of every
        feature; return the config the training uses (event mode also removes them from the
        configured attributes)."""

    # --- training and evaluation ---------------------------------------------------------

    @abstractmethod
    def training_set(self, config: Config, as_of: pd.Timestamp | None = None) -> TrainingSet:
        """The labelled training set at *as_of* (default: :meth:`default_as_of`)."""

    @abstractmethod
    def model_training_set(self, metadata: BundleMetadata, config: Config) -> TrainingSet:
        """The training set of a trained model, rebuilt from this data (its evaluation)."""

    @abstractmethod
    def model_config(self, metadata: BundleMetadata, config: Config) -> Config:
        """*config* with the settings a trained model was trained with (to judge it the same way)."""

    @abstractmethod
    def labelled_after(self, cut: pd.Timestamp, horizon_days: int, config: Config) -> list[pd.Timestamp]:
        """Labelled as-of times newer than *cut* (none for a source without time)."""

    @abstractmethod
    def labelled_rows(self, times: list[pd.Timestamp], horizon_days: int, features: FeaturesConfig,
                      event_types: Sequence[str]) -> pd.DataFrame:
        """Labels and features at *times* (from :meth:`labelled_after`)."""

    @abstractmethod
    def feature_rows(self, keys: pd.DataFrame, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata) -> pd.DataFrame:
        """Features of the (lead_id, as_of) *keys* as a model with *metadata* sees them."""

    # --- scoring -------------------------------------------------------------------------

    @abstractmethod
    def scoring_rows(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata, lead_ids: list[str] | None = None) -> pd.DataFrame:
        """The feature rows to score at *as_of* (optionally only *lead_ids*), ordered by lead."""

    @abstractmethod
    def scoring_batches(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                        metadata: BundleMetadata, chunk_size: int) -> tuple[int, Iterator[pd.DataFrame]]:
        """How many rows there are to score at *as_of*, and the rows in chunks."""

    def column_lines(self) -> list[str]:
        """How the source's own columns were read, one line each (a flat table: kind, feature or not)."""
        return []

    def empty_population(self, as_of: pd.Timestamp) -> str:
        """Why nothing can be scored at *as_of* (the error message's explanation)."""
        return f"no lead to score at {as_of} in {self.display}"

    @abstractmethod
    def close(self) -> None:
        """Release the source's connection (if any)."""


def is_flat_path(path: str | Path) -> bool:
    """Whether *path* names a flat table: one file, not a folder, a database URL or ``env:``."""
    from convert.sources.readers import is_database_url

    text = str(path)
    return not is_database_url(text) and not text.startswith("env:") and Path(text).is_file()


def open_source(
    path: str | Path,
    config: Config,
    mapping: Any = None,
    *,
    purpose: Purpose = "train",
    strict: bool | None = None,
    flat: FlatOptions = NO_FLAT,
    trained: BundleMetadata | None = None,
) -> LeadSource:
    """Open the source at *path*: a flat table for one file, else a CRM export.

    Parameters
    ----------
    path:
        A folder or file export, a database URL, ``env:NAME``, or one flat file.
    mapping:
        The source's :class:`~convert.sources.mapping.Mapping` (a flat model's own when
        *trained* is given and this is ``None``).
    purpose:
        ``train`` and ``evaluate`` need the outcome of a flat table; ``score`` ignores it;
        ``validate`` checks it when one is named.
    flat:
        The flat-table options; an error for a CRM export.
    trained:
        The metadata of the model that will score or be evaluated on a flat table (its
        columns, kinds, id and outcome).

    Raises
    ------
    ConfigError
        When flat-table options are given for a CRM export.
    """
    if is_flat_path(path):
        from convert.sources.flat import FlatSource

        return FlatSource.open(path, config, mapping, purpose=purpose, strict=strict, options=flat,
                               trained=trained)
    if flat.given():
        raise ConfigError("--target, --positive, --id and --split are for a flat file (--data FILE); "
                          f"{path} is an export folder or a database")
    from convert.sources.export import load

    return load(path, config, strict=strict, mapping=mapping)
