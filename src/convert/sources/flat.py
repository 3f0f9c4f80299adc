"""Flat tables: one row per lead with an outcome column and no timestamps (a CRM report).

The data contract's "Flat tables" section, implemented: ``--data FILE`` with ``--target
COLUMN``, optional ``--positive VALUE`` (default ``1``, ``true``, ``yes``, case-insensitive)
and ``--id COLUMN`` (default: the row number). Without time there is no as-of time: the
rows are cut into train | validation | calibration | hold-out at random, stratified by the
outcome, or in file order with ``--split ordered`` when the rows are in time order.

:func:`load_flat` reads and types the file (mapping applied, every column typed numeric or
categorical by detection unless configured), quarantines rows whose id or outcome is
unusable, and keeps every column for the leakage guard. :class:`FlatSource` is the table as a
:class:`~convert.sources.base.LeadSource`: its training set (one row per lead, features named
after the columns) goes through the same training and evaluation as the event mode
(:mod:`convert.model.train`, folds ``random`` or ``ordered``); the model then scores, grades,
explains and writes back exactly as an event-mode model does.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import pandas as pd

from convert.config import OWNER_EXCLUDED, Config, FeaturesConfig
from convert.exceptions import (
    ConfigError,
    ContractError,
    FeatureMismatchError,
    InsufficientDataError,
)
from convert.features.catalog import Catalog, FeatureDef
from convert.features.engine import unique_slugs
from convert.metadata import BundleMetadata, FlatDesign
from convert.schema import Labeled, Rejects
from convert.sources.base import NO_FLAT, Attributes, FlatOptions, LeadSource, Purpose, TrainingSet
from convert.sources.mapping import CsvFormat, FlatMapping, Mapping, mapped_select
from convert.sources.readers import Source, connect, read_frame
from convert.sources.rules import CONTROL_RE, control_warning, strip_control
from convert.sources.validation import LoadReport, TableReport, _enforce_thresholds

Split = Literal["random", "ordered"]
DEFAULT_POSITIVE = ("1", "true", "yes")
DEFAULT_NEGATIVE = ("0", "false", "no")
TABLE = "leads"
#: Feature names a flat column may not take (the training frame's own columns).
_RESERVED = {Labeled.lead_id, Labeled.as_of, Labeled.label}


@dataclass
class FlatTable:
    """A flat file, loaded and typed.

    ``frame`` holds every attribute column (not the id nor the outcome) under its
    (mapped) name: numeric columns as float64, categorical ones as text with ``None``.
    ``excluded`` are columns the mapping leaves out (still screened), ``dropped`` columns
    that cannot be features (empty, one value, identifier-like).
    """

    path: Path
    ids: pd.Series
    rows: np.ndarray
    frame: pd.DataFrame
    kinds: dict[str, str]
    report: LoadReport
    label: np.ndarray | None = None
    target: str | None = None
    id_column: str | None = None
    positive: tuple[str, ...] = ()
    negative: tuple[str, ...] = ()
    excluded: dict[str, str] = field(default_factory=dict)
    dropped: dict[str, str] = field(default_factory=dict)

    @property
    def candidates(self) -> list[str]:
        """Columns that may become features (before the leakage guard's exclusions)."""
        return [c for c in self.frame.columns if c not in self.excluded and c not in self.dropped]


def _normal(value: Any) -> str:
    """An outcome value as compared: trimmed, lower case, ``1.0`` read as ``1``."""
    text = str(value).strip().lower()
    try:
        number = float(text)
    except ValueError:
        return text
    if number.is_integer() and abs(number) < 2**53:
        return str(int(number))
    return text


def _outcome_sets(values: pd.Series, positive: tuple[str, ...], negative: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """The positive and negative values: given, or the contract's defaults.

    With a positive value named and no negatives, the one other value in the column is
    the negative; several other values are left unsettled (their rows are quarantined).
    """
    pos = tuple(_normal(v) for v in positive) or DEFAULT_POSITIVE
    if negative:
        return pos, tuple(_normal(v) for v in negative)
    if not positive:
        return pos, DEFAULT_NEGATIVE
    others = sorted({_normal(v) for v in values.dropna()} - set(pos))
    if len(others) == 1:
        return pos, (others[0],)
    return pos, tuple(v for v in DEFAULT_NEGATIVE if v in others)


def _resolve(name: str | None, table: FlatMapping, columns: list[str], file: str, what: str) -> str | None:
    """A column named on the command line or in the mapping, by its source or mapped name."""
    if name is None:
        return None
    mapped = table.output_name(name)
    if mapped in columns:
        return mapped
    raise ContractError(
        f"the {what} column is missing (found: {', '.join(columns[:30])}). Column names are "
        "case-sensitive",
        file=file,
        column=name,
    )


def parse_numbers(values: pd.Series, fmt: CsvFormat) -> pd.Series:
    """Numbers written with the source's separators as float64; anything else NaN."""
    if pd.api.types.is_bool_dtype(values.dtype):
        return pd.Series(np.nan, index=values.index)
    if pd.api.types.is_numeric_dtype(values.dtype):
        out = values.astype("float64")
    else:
        text = values.astype(object).where(values.notna(), None).map(
            lambda v: None if v is None else str(v).strip(), na_action="ignore"
        )
        if fmt.thousands:
            text = text.str.replace(fmt.thousands, "", regex=False)
        if fmt.decimal != ".":
            text = text.str.replace(fmt.decimal, ".", regex=False)
        out = pd.to_numeric(text, errors="coerce").astype("float64")
    return out.where(np.isfinite(out.to_numpy(dtype="float64", na_value=np.nan)))


def _as_text(values: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(values.dtype):
        text = values.map(lambda v: None if pd.isna(v) else (str(int(v)) if float(v).is_integer() else repr(float(v))))
    else:
        text = values.astype(object).map(lambda v: None if v is None or v is pd.NA or (isinstance(v, float) and np.isnan(v)) else str(v))
    return text.astype(object).where(text.notna(), None)


def load_flat(
    path: str | Path,
    config: Config,
    mapping: Mapping | None = None,
    *,
    target: str | None = None,
    positive: str | Sequence[str] | None = None,
    negative: Sequence[str] = (),
    id_column: str | None = None,
    kinds: dict[str, str] | None = None,
    strict: bool | None = None,
    training: bool = True,
) -> FlatTable:
    """Read a flat file (CSV or Parquet) and type it for training or scoring.

    Parameters
    ----------
    path:
        The file.
    config:
        ``data`` (quarantine threshold, strict) and ``flat`` (type overrides).
    mapping:
        Renames, missing-value tokens, value maps, exclusions, CSV format; its ``flat``
        section gives defaults for *target*, *positive* and *id_column*.
    target, positive, id_column:
        The outcome column, its positive value(s) and the id column (command-line flags).
    negative:
        The negative values (default: the mapping's, else as the contract says).
    kinds:
        ``numeric``/``categorical`` per column, forced (scoring: the model's kinds).
    training:
        Whether the outcome is required (training) or ignored (scoring).

    Raises
    ------
    ContractError
        For an unreadable file, a missing outcome or id column, a duplicate id, an outcome
        whose values are mostly outside the positive/negative pair, or too many
        quarantined rows.
    """
    mapping = mapping or Mapping()
    path = Path(path)
    flat = mapping.flat
    label = path.name
    if not path.exists():
        raise ContractError(f"the data file {path} does not exist", file=str(path))
    con = connect(config.features)
    try:
        read_frame(path, mapping.csv, con)
        types = dict(con.execute("SELECT column_name, column_type FROM (DESCRIBE raw_flat)").fetchall())
        keep_all = flat.model_copy(update={"exclude": {}})
        mapped = mapped_select(mapping, keep_all, "raw_flat", types, label)
        frame = con.execute(mapped.sql or "SELECT * FROM raw_flat").df()
    finally:
        con.close()
    columns = [str(c) for c in frame.columns]
    if frame.empty:
        raise ContractError("the file holds a header but no data rows", file=label)
    target = _resolve(target or flat.target, flat, columns, label, "outcome") if training else None
    if training and target is None:
        raise ConfigError("a flat table needs its outcome column: --target COLUMN (or flat.target in the mapping)")
    id_column = _resolve(id_column or flat.id, flat, columns, label, "id")
    if id_column is not None and id_column == target:
        raise ConfigError(f"--id and --target both name {id_column!r}; the id cannot be the outcome")
    excluded = {}
    for column, reason in flat.exclude.items():
        name = flat.output_name(column)
        if name in columns and name not in (target, id_column):
            excluded[name] = reason
    owner = config.allocation.owner_column
    if owner in columns and owner not in (target, id_column) and owner not in excluded:
        excluded[owner] = OWNER_EXCLUDED
    rows = np.arange(1, len(frame) + 1)
    reasons = pd.Series(None, index=frame.index, dtype=object)
    bad_column = pd.Series(None, index=frame.index, dtype=object)
    bad_value = pd.Series(None, index=frame.index, dtype=object)

    def quarantine(mask: pd.Series, column: str, values: pd.Series, reason: str | pd.Series) -> None:
        fresh = mask & reasons.isna()
        reasons[fresh] = reason if isinstance(reason, str) else reason[fresh]
        bad_column[fresh] = column
        bad_value[fresh] = values[fresh]

    cleaned = strip_control(frame, skip=(id_column,))  # text but the id (issue 14)
    if id_column is not None:
        ids = _as_text(frame[id_column])
        quarantine(ids.isna(), id_column, ids, "empty id")
        control = ids.map(lambda v: CONTROL_RE.search(v) is not None, na_action="ignore").fillna(False).astype(bool)
        quarantine(control, id_column, ids.map(lambda v: CONTROL_RE.sub("\ufffd", v), na_action="ignore"),
                   f"{id_column} contains a control character (a NUL byte or another non-printing one)")
    else:
        ids = pd.Series(rows.astype(str), index=frame.index, dtype=object)
    y = None
    pos: tuple[str, ...] = ()
    neg: tuple[str, ...] = ()
    if target is not None:
        raw_outcome = _as_text(frame[target])
        quarantine(raw_outcome.isna(), target, raw_outcome, "the outcome is empty")
        normal = raw_outcome.map(_normal, na_action="ignore")
        given = (positive,) if isinstance(positive, str) else tuple(positive or ())
        pos, neg = _outcome_sets(normal, given or flat.positive, tuple(negative) or flat.negative)
        outside = normal.notna() & ~normal.isin(pos) & ~normal.isin(neg)
        settled = f"positive ({', '.join(pos)}) nor negative ({', '.join(neg) or 'none named'})"
        quarantine(outside, target, raw_outcome,
                   raw_outcome.map(lambda v: f"outcome {v!r} is neither {settled}", na_action="ignore"))
        _check_outcome(outside, raw_outcome, rows, target, label, pos, neg, config.data.max_quarantine_share)
        y = normal.isin(pos).to_numpy(dtype="int64")
    quarantined = reasons.notna().to_numpy()
    report = _report(label, rows, reasons, bad_column, bad_value)
    report.tables[TABLE].warnings.update({control_warning(c): n for c, n in cleaned.items()})
    keep = ~quarantined
    if id_column is not None:
        _check_unique(ids[keep], rows[keep], id_column, label)
    attributes = [c for c in columns if c not in (target, id_column)]
    typed, kinds_out, dropped = _type_columns(
        frame.loc[keep, attributes], rows[keep], mapping, config, kinds, report.tables[TABLE]
    )
    _enforce_thresholds(report, Source(root=path.parent, files={TABLE: path}), config.data.max_quarantine_share,
                        config.data.strict if strict is None else strict)
    return FlatTable(
        path=path, ids=ids[keep].reset_index(drop=True), rows=rows[keep], frame=typed.reset_index(drop=True),
        kinds=kinds_out, report=report, label=None if y is None else y[keep], target=target,
        id_column=id_column, positive=pos, negative=neg, excluded=excluded,
        dropped={c: r for c, r in dropped.items() if c not in excluded},
    )


def _check_outcome(
    outside: pd.Series, values: pd.Series, rows: np.ndarray, target: str, file: str,
    pos: tuple[str, ...], neg: tuple[str, ...], max_share: float,
) -> None:
    """An outcome mostly outside the positive/negative pair is mis-specified, not bad rows."""
    n_bad = int(outside.sum())
    if not n_bad or n_bad / len(outside) <= max_share:
        return
    counts = values[outside].value_counts().head(6)
    seen = ", ".join(f"{v!r} ({n:,})" for v, n in counts.items())
    first = int(rows[np.flatnonzero(outside.to_numpy())[0]])
    raise ContractError(
        f"{n_bad:,} of {len(outside):,} rows have an outcome outside the positive/negative pair: "
        f"{seen}. Positive: {', '.join(pos)}; negative: {', '.join(neg) or 'none named'}. Name the "
        "positive value with --positive VALUE (one other value is then the negative), or list "
        "the values in the mapping file (flat.positive, flat.negative)",
        file=file, row=first, column=target,
    )


def _check_unique(ids: pd.Series, rows: np.ndarray, column: str, file: str) -> None:
    dup = ids.duplicated(keep="first").to_numpy()
    if dup.any():
        i = int(np.flatnonzero(dup)[0])
        value = ids.iloc[i]
        first = int(rows[np.flatnonzero((ids == value).to_numpy())[0]])
        raise ContractError(
            f"duplicate id {value!r} (also at row {first}); the id column must be unique. Fix the "
            "export, or leave --id out to number the rows",
            file=file, row=int(rows[i]), column=column,
        )


def _report(file: str, rows: np.ndarray, reasons: pd.Series, columns: pd.Series, values: pd.Series) -> LoadReport:
    bad = reasons.notna().to_numpy()
    rejects = pd.DataFrame(
        {
            Rejects.table_name: TABLE,
            Rejects.row: rows[bad],
            Rejects.column: columns[bad].to_numpy(),
            Rejects.value: values[bad].to_numpy(),
            Rejects.reason: reasons[bad].to_numpy(),
        },
        columns=Rejects.names(),
    )
    table = TableReport(TABLE, file, rows_read=len(rows), rows_loaded=int((~bad).sum()), quarantined=int(bad.sum()))
    table.reasons = {str(k): int(v) for k, v in reasons[bad].value_counts().sort_index().items()}
    return LoadReport({TABLE: table}, rejects)


def _type_columns(
    frame: pd.DataFrame, rows: np.ndarray, mapping: Mapping, config: Config,
    forced: dict[str, str] | None, report: TableReport,
) -> tuple[pd.DataFrame, dict[str, str], dict[str, str]]:
    """Numeric or categorical per column (configured, else detected); what cannot be a feature."""
    flat = mapping.flat
    declared: dict[str, str] = {}
    for kind, names in (
        ("categorical", config.flat.categorical + flat.categorical),
        ("numeric", config.flat.numeric + flat.numeric),
    ):
        for name in names:
            declared[flat.output_name(name)] = kind
    declared.update(forced or {})
    out = pd.DataFrame(index=frame.index)
    kinds: dict[str, str] = {}
    dropped: dict[str, str] = {}
    for column in frame.columns:
        values = frame[column]
        filled = int(values.notna().sum())
        numbers = parse_numbers(values, mapping.csv)
        share = float(numbers.notna().sum()) / filled if filled else 0.0
        kind = declared.get(column) or (
            "numeric" if filled and share >= config.flat.numeric_min_share and not pd.api.types.is_bool_dtype(values.dtype)
            else "categorical"
        )
        if kind == "numeric":
            lost = values.notna() & numbers.isna()
            if lost.any():
                first = int(np.flatnonzero(lost.to_numpy())[0])
                report.warnings[
                    f"{column}: {int(lost.sum()):,} values are not numbers (first at row {rows[first]}: "
                    f"{str(values.iloc[first])[:40]!r}); kept as missing"
                ] = int(lost.sum())
            out[column] = numbers
        else:
            out[column] = _as_text(values)
        kinds[column] = kind
        distinct = int(out[column].nunique(dropna=True))
        if filled == 0:
            dropped[column] = "empty in every row"
        elif distinct <= 1:
            dropped[column] = "one value in every row"
        elif kind == "categorical" and distinct > 50 and distinct > config.flat.max_category_share * filled:
            dropped[column] = f"identifier-like: {distinct:,} distinct values in {filled:,} filled rows"
    for column in (forced or {}):
        if column not in frame.columns:
            raise FeatureMismatchError(
                f"the data lacks column {column!r}, which the model was trained on; score a file "
                "with the training file's columns (and the same mapping)"
            )
    return out, kinds, dropped


# --- features -----------------------------------------------------------------------------------


def feature_names(columns: list[str]) -> dict[str, str]:
    """Feature name per column: its slug, made unique (``Lead Source`` -> ``lead_source``)."""
    return unique_slugs(columns, taken=[str(c) for c in _RESERVED])


def flat_catalog(columns: dict[str, str], kinds: dict[str, str], engagement: set[str]) -> Catalog:
    """Catalog entries of flat features: the column's own name in every reason."""
    catalog = Catalog()
    for column, name in columns.items():
        words = column.replace("{", "{{").replace("}", "}}")
        kind = kinds[column]
        catalog.add(FeatureDef(
            name=name, family="engagement" if column in engagement else "fit", group="flat",
            kind="categorical" if kind == "categorical" else "numeric",
            unit="category" if kind == "categorical" else "value",
            description=f"{column} (flat file column)", template=f"{words}: {{value}}",
            missing_template=f"{column}: unknown",
        ))
    return catalog


def feature_frame(table: FlatTable, columns: dict[str, str], as_of: pd.Timestamp) -> pd.DataFrame:
    """``lead_id``, ``as_of`` and one column per feature (named as in *columns*)."""
    missing = [c for c in columns if c not in table.frame.columns]
    if missing:
        raise FeatureMismatchError(
            f"the data lacks column {missing[0]!r}, which the model was trained on"
            + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else "")
            + "; score a file with the training file's columns (and the same mapping)"
        )
    out = pd.DataFrame({Labeled.lead_id: table.ids.astype(str).to_numpy(),
                        Labeled.as_of: np.full(len(table.ids), as_of.to_datetime64())})
    for column, name in columns.items():
        out[name] = table.frame[column].to_numpy()
    return out


def _design(metadata: BundleMetadata) -> FlatDesign:
    """A flat model's table and columns (empty for a model that records none)."""
    return metadata.flat if metadata.flat is not None else FlatDesign()


def stored_mapping(metadata: BundleMetadata) -> Mapping:
    """The mapping a flat model was trained with (scoring applies it again)."""
    stored = metadata.flat.mapping if metadata.flat is not None else None
    return Mapping.model_validate(stored) if stored else Mapping()


def _today() -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_localize(None).normalize()


class FlatSource(LeadSource):
    """A flat table as a :class:`~convert.sources.base.LeadSource`: one row per lead, one
    as-of time for every row (the training or scoring day), folds ``random`` or ``ordered``."""

    kind: ClassVar[str] = "flat"

    def __init__(self, table: FlatTable, mapping: Mapping, split: Split):
        self.table = table
        self.mapping = mapping
        self.split = split
        self.report = table.report
        self.excluded: dict[str, str] = {}

    @classmethod
    def open(
        cls, path: str | Path, config: Config, mapping: Mapping | None = None, *, purpose: Purpose = "train",
        strict: bool | None = None, options: FlatOptions = NO_FLAT,
        trained: BundleMetadata | None = None,
    ) -> FlatSource:
        """Load the file for *purpose*; a trained model's *trained* metadata gives the columns'
        kinds, the id and (for ``evaluate``) the outcome, and its mapping when none is given."""
        meta = _design(trained) if trained is not None else FlatDesign()
        if trained is not None and mapping is None:
            mapping = stored_mapping(trained)
        mapping = mapping or Mapping()
        split = options.split or meta.split or mapping.flat.split or "random"
        if split not in ("random", "ordered"):
            raise ConfigError(f"--split must be random or ordered, not {split!r}")
        kinds = dict(meta.kinds) or None
        if purpose == "evaluate":
            table = load_flat(path, config, mapping, target=meta.target, positive=meta.positive or None,
                              negative=meta.negative, id_column=meta.id, kinds=kinds,
                              strict=strict)
        elif purpose == "score":
            table = load_flat(path, config, mapping, id_column=options.id_column or meta.id, kinds=kinds,
                              strict=strict, training=False)
        else:
            table = load_flat(path, config, mapping, target=options.target, positive=options.positive,
                              id_column=options.id_column, strict=strict,
                              training=purpose == "train" or bool(options.target or mapping.flat.target))
        return cls(table, mapping, split)  # type: ignore[arg-type]

    @property
    def display(self) -> str:
        return str(self.table.path)

    def load_lines(self, rejects: Path, purpose: Purpose) -> list[str]:
        r = self.report
        converted = f" ({int(self.table.label.sum()):,} converted)" if self.table.label is not None else ""
        lines = [f"loaded {self.display}: {r.tables[TABLE].rows_loaded:,} leads{converted}; {r.quarantined:,} "
                 f"rows quarantined to {rejects}, {r.warnings:,} warnings"]
        lines += [f"warning: {w}" for w in r.tables[TABLE].warnings]
        if purpose == "train":
            lines += [f"not a feature: {c!r} ({why})" for c, why in self.table.dropped.items()]
        return lines

    def model_name(self, config: Config) -> str:
        return config.flat.model_name

    def column_lines(self) -> list[str]:
        """Each column's detected kind and why it is not a feature (excluded, dropped)."""
        t = self.table
        lines = []
        for column in t.frame.columns:
            why = t.excluded.get(column) or t.dropped.get(column)
            note = f"  excluded: {why}" if column in t.excluded else (f"  not a feature: {why}" if why else "")
            lines.append(f"  {column!r:<48} {t.kinds[column]:<12}{note}")
        return lines

    def default_as_of(self) -> pd.Timestamp:
        """Today (midnight UTC): a flat table has no time of its own."""
        return _today()

    def scoring_as_of(self, as_of: pd.Timestamp | None, what: str) -> pd.Timestamp:
        """*as_of*, else today, so a re-run on the same day replaces its own history rows."""
        return as_of if as_of is not None else _today()

    def accepts(self, metadata: BundleMetadata) -> str | None:
        if not metadata.is_flat:
            return "it was trained on a CRM export (event mode); a flat file is scored with a flat model (trained with --target)"
        return None

    # --- the leakage guard ---------------------------------------------------------------

    def leakage_attributes(self, config: Config) -> Attributes:
        t = self.table
        if t.label is None:
            raise ConfigError("training needs the outcome column (--target)")
        screened = t.excluded | {c: "" for c in t.candidates}
        excluded = {c: r if r == OWNER_EXCLUDED else f"mapping: {r}" for c, r in t.excluded.items()}
        return Attributes(t.frame[list(screened)], t.label, dict(t.kinds), excluded)

    def exclude_attributes(self, excluded: MappingOf[str, str], config: Config) -> Config:
        self.excluded.update(excluded)
        return config

    # --- training and evaluation ---------------------------------------------------------

    def training_set(self, config: Config, as_of: pd.Timestamp | None = None) -> TrainingSet:
        """One row per lead, features named after the columns the leakage guard kept."""
        t = self.table
        if t.label is None:
            raise ConfigError("training needs the outcome column (--target)")
        features = [c for c in t.candidates if c not in self.excluded]
        if not features:
            raise InsufficientDataError("no column is left to learn from after the exclusions")
        names = feature_names(features)
        engagement = {self.mapping.flat.output_name(c) for c in config.flat.engagement + self.mapping.flat.engagement}
        trained_at = as_of if as_of is not None else self.default_as_of()
        frame = feature_frame(t, names, trained_at)
        frame.insert(2, Labeled.label, t.label)
        metadata = {
            "mode": "flat",
            "trained_at": trained_at.isoformat(),
            "flat": {
                "file": t.path.name, "target": t.target, "positive": list(t.positive),
                "negative": list(t.negative), "id": t.id_column, "split": self.split,
                "folds": {"inner": config.train.inner_folds, "outer": config.train.outer_folds,
                          "fold_share": config.train.fold_share, "min_positives": config.train.min_positives},
                "columns": names, "kinds": {c: t.kinds[c] for c in names},
                "excluded": {c: r for c, r in self.excluded.items()}, "dropped": t.dropped,
                "mapping": self.mapping.model_dump(mode="json"),
            },
        }
        params = {"mode": "flat", "file": t.path.name, "target": t.target, "positive": ",".join(t.positive),
                  "id": t.id_column, "split": self.split, "mapping": self.mapping.label()}
        return TrainingSet(frame, flat_catalog(names, t.kinds, engagement), (), trained_at,
                           config.labels.horizon_days, design=self.split, baselines=("logistic_regression",),
                           metadata=metadata, params=params)

    def model_training_set(self, metadata: BundleMetadata, config: Config) -> TrainingSet:
        t = self.table
        if t.label is None:
            raise ConfigError("evaluating a flat model needs the outcome column the model was trained on")
        meta = _design(metadata)
        columns = dict(meta.columns)
        trained_at = pd.Timestamp(metadata.trained_at)
        frame = feature_frame(t, columns, trained_at)
        frame.insert(2, Labeled.label, t.label)
        catalog = flat_catalog(columns, t.kinds, set())
        return TrainingSet(frame, catalog, (), trained_at, config.labels.horizon_days,
                           design=meta.split or "random", baselines=("logistic_regression",))

    def model_config(self, metadata: BundleMetadata, config: Config) -> Config:
        """The seed and fold settings the model was trained with (the same folds of the same file)."""
        folds = _design(metadata).folds
        return config.with_overrides(seed=config.seed if metadata.seed is None else metadata.seed, train__inner_folds=folds.get("inner"),
                                     train__outer_folds=folds.get("outer"), train__fold_share=folds.get("fold_share"),
                                     train__min_positives=folds.get("min_positives"))

    def labelled_after(self, cut: pd.Timestamp, horizon_days: int, config: Config) -> list[pd.Timestamp]:
        return []  # the rows have no time: nothing is newer than the training

    def labelled_rows(self, times: list[pd.Timestamp], horizon_days: int, features: FeaturesConfig,
                      event_types: Sequence[str]) -> pd.DataFrame:
        raise ConfigError("a flat table has no as-of times of its own to label")

    def feature_rows(self, keys: pd.DataFrame, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata) -> pd.DataFrame:
        columns = dict(_design(metadata).columns)
        rows = feature_frame(self.table, columns, pd.Timestamp(keys[Labeled.as_of].iloc[0]) if len(keys) else _today())
        return rows.drop(columns=[Labeled.as_of]).merge(keys.astype({Labeled.lead_id: str}), on=Labeled.lead_id)

    # --- scoring -------------------------------------------------------------------------

    def scoring_rows(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata, lead_ids: list[str] | None = None) -> pd.DataFrame:
        columns = dict(_design(metadata).columns)
        rows = feature_frame(self.table, columns, as_of)
        if lead_ids is not None:
            rows = rows[rows[Labeled.lead_id].isin([str(i) for i in lead_ids])].reset_index(drop=True)
        return rows

    def scoring_batches(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                        metadata: BundleMetadata, chunk_size: int) -> tuple[int, Iterator[pd.DataFrame]]:
        rows = self.scoring_rows(as_of, features, event_types, metadata)
        return len(rows), (rows.iloc[i:i + chunk_size] for i in range(0, len(rows), chunk_size))

    def empty_population(self, as_of: pd.Timestamp) -> str:
        return f"{self.display} holds no row to score"

    def close(self) -> None:
        """Nothing to release: the table is in memory."""
