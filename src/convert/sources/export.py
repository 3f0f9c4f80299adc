"""A loaded CRM export: typed contract tables in a DuckDB connection, with its load report.

:func:`load` is the public entry (``convert.load``): find the tables (a folder of files, or
a database), read them raw, apply the mapping (when the source needs one), apply the
contract, and return a :class:`CRMData` the feature and label steps query.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from collections.abc import Mapping as MappingOf
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import duckdb
import numpy as np
import pandas as pd

from convert.config import OWNER_EXCLUDED, Config, FeaturesConfig
from convert.exceptions import ConfigError, InsufficientDataError
from convert.features.engine import (
    KEY,
    build_features,
    finish_frame,
    index_active_days,
    index_events,
    iter_feature_batches,
    materialize_features,
)
from convert.features.labels import build_labels, grid_for, population_sql, register_as_ofs
from convert.metadata import BundleMetadata
from convert.schema import CONTRACT_TABLES, Accounts, Events, Leads, Stages
from convert.sources.base import Attributes, LeadSource, Purpose, TrainingSet
from convert.sources.cache import cache_dir, cache_key, entry, restore, store
from convert.sources.mapping import MappedTable, Mapping, mapped_select
from convert.sources.readers import (
    Source,
    connect,
    drop_relation,
    find_database_source,
    find_source,
    has_table,
    is_database_url,
    is_view,
    load_database,
    load_raw,
    resolve_data,
)
from convert.sources.validation import LoadReport, enforce_thresholds, keyed_table, validate
from convert.sql import fetch_row, quote


@dataclass
class CRMData(LeadSource):
    """Typed contract tables (``leads``, ``accounts``, ``events``, ``stages``) in *con*: the
    event-mode :class:`~convert.sources.base.LeadSource` (every lead seen at many as-of times)."""

    kind: ClassVar[str] = "event"

    con: duckdb.DuckDBPyConnection
    source: Source
    report: LoadReport
    mapped: dict[str, MappedTable] = field(default_factory=dict)
    #: Whether the tables were copied from the cache of validated tables (:mod:`convert.sources.cache`).
    from_cache: bool = False

    def frame(self, table: str) -> pd.DataFrame:
        """A whole contract table as pandas (meant for small tables and tests)."""
        if table not in ("leads", "accounts", "events", "stages"):
            raise ValueError(f"unknown table {table!r}")
        return self.con.execute(f"SELECT * FROM {table}").df()

    def latest_timestamp(self) -> pd.Timestamp:
        """The latest timestamp anywhere in the export (the default training as-of is the day after)."""
        row = fetch_row(
            self.con,
            f"SELECT greatest("
            f"(SELECT max({Leads.created_at}) FROM leads), "
            f"(SELECT max({Leads.converted_at}) FROM leads), "
            f"(SELECT max({Leads.disqualified_at}) FROM leads), "
            f"(SELECT max({Events.occurred_at}) FROM events), "
            f"(SELECT max({Stages.entered_at}) FROM stages))",
        )
        if row[0] is None:
            raise ValueError("the export holds no timestamps")
        return pd.Timestamp(row[0])

    def earliest_created(self) -> pd.Timestamp:
        row = fetch_row(self.con, f"SELECT min({Leads.created_at}) FROM leads")
        return pd.Timestamp(row[0]) if row[0] is not None else pd.NaT

    def close(self) -> None:
        self.con.close()

    # --- the LeadSource interface ----------------------------------------------------------

    @property
    def display(self) -> str:
        return self.source.display

    def load_lines(self, rejects: Path, purpose: Purpose) -> list[str]:
        r = self.report
        lines = [
            f"loaded {self.source.display}: {r.tables['leads'].rows_loaded:,} leads, "
            f"{r.tables['events'].rows_loaded:,} events; {r.quarantined:,} rows quarantined to "
            f"{rejects}, {r.warnings:,} warnings"
            + (" (validated tables from the cache; --no-cache reads the files again)" if self.from_cache else "")
        ]
        for table, m in self.mapped.items():
            if m.renamed:
                lines.append(f"mapping: {table}: renamed " + ", ".join(f"{a!r} -> {b}" for a, b in m.renamed.items()))
            for column, reason in m.excluded.items():
                lines.append(f"mapping: {table}: excluded {column!r} ({reason})")
            if m.absent:
                lines.append(f"mapping: {table}: not in the data, so not renamed: " + ", ".join(map(repr, m.absent)))
        return lines

    def model_name(self, config: Config) -> str:
        return config.train.model_name

    def default_as_of(self) -> pd.Timestamp:
        """The day after the latest timestamp in the data (midnight UTC)."""
        return self.latest_timestamp().normalize() + pd.Timedelta(days=1)

    def scoring_as_of(self, as_of: pd.Timestamp | None, what: str) -> pd.Timestamp:
        if as_of is None:
            raise ConfigError(f"--as-of is required to {what} (the leads open at that time)")
        return as_of

    def accepts(self, metadata: BundleMetadata) -> str | None:
        if metadata.is_flat:
            return "it was trained on a flat table; a CRM export is scored with an event-mode model"
        return None

    def leakage_attributes(self, config: Config) -> Attributes:
        """The leads' and accounts' extra attributes against whether each lead converted; the
        owner column is excluded (it records who worked the lead, not the lead)."""
        frame, label = self.attributes()
        kinds: dict[str, str] = {e.column: e.kind for e in config.features.extra_attributes}
        owner = config.allocation.owner_column
        return Attributes(frame, label, kinds, {owner: OWNER_EXCLUDED} if owner in frame else {})

    def exclude_attributes(self, excluded: MappingOf[str, str], config: Config) -> Config:
        gone = set(excluded)
        self.drop_attributes(sorted(gone))
        extras = [e.model_dump() for e in config.features.extra_attributes
                  if e.column not in gone and f"{e.table}.{e.column}" not in gone]
        return config.with_overrides(features__extra_attributes=extras)

    def training_set(self, config: Config, as_of: pd.Timestamp | None = None) -> TrainingSet:
        """Labels and point-in-time features for every as-of time whose horizon ended by *as_of*."""
        t = as_of if as_of is not None else self.default_as_of()
        horizon = config.labels.horizon_days
        grid = grid_for(config.labels, self.earliest_created(), t)
        needed = config.train.inner_folds + config.train.outer_folds + 1
        if len(grid) < needed:
            raise InsufficientDataError(
                f"only {len(grid)} as-of times between the first lead and {t:%Y-%m-%d} minus the "
                f"{horizon}-day horizon ({grid.describe()}); training needs at least {needed} "
                f"({config.train.inner_folds} inner folds, {config.train.outer_folds} outer, one to fit the "
                "first). Use more frequent snapshots (labels.frequency: daily or weekly), a shorter "
                "--horizon-days, a smaller labels.min_history_days, or train.inner_folds: 2 and "
                "train.outer_folds: 1"
            )
        labels = build_labels(self.con, grid.times, horizon)
        fs = build_features(self.con, labels, config.features)
        frame = labels.merge(fs.frame, on=KEY, how="left", validate="one_to_one")
        metadata = {
            "training_as_of": t.isoformat(),
            "horizon_days": horizon,
            "frequency": grid.frequency,
            "as_of_grid": grid.to_dict(),
        }
        params = {"training_as_of": t.isoformat(), "horizon_days": horizon, "frequency": grid.frequency}
        return TrainingSet(frame, fs.catalog, fs.event_types, t, horizon, grid, metadata=metadata, params=params)

    def model_training_set(self, metadata: BundleMetadata, config: Config) -> TrainingSet:
        stored = metadata.training_as_of
        return self.training_set(config, pd.Timestamp(stored) if stored else None)

    def model_config(self, metadata: BundleMetadata, config: Config) -> Config:
        return config

    def labelled_after(self, cut: pd.Timestamp, horizon_days: int, config: Config) -> list[pd.Timestamp]:
        grid = grid_for(config.labels.model_copy(update={"horizon_days": horizon_days}), self.earliest_created(),
                        self.default_as_of()).times
        return [t for t in grid if t > cut]

    def labelled_rows(self, times: list[pd.Timestamp], horizon_days: int, features: FeaturesConfig,
                      event_types: Sequence[str]) -> pd.DataFrame:
        labels = build_labels(self.con, times, horizon_days)
        return labels.merge(build_features(self.con, labels[KEY], features, event_types).frame, on=KEY, how="left")

    def feature_rows(self, keys: pd.DataFrame, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata) -> pd.DataFrame:
        return build_features(self.con, keys, features, event_types).frame

    def _population(self, as_of: pd.Timestamp, lead_ids: list[str] | None = None) -> None:
        grid = register_as_ofs(self.con, [as_of], name="_score_grid")
        where = ""
        params: list[object] = []
        if lead_ids is not None:
            where = f" WHERE lead_id IN ({', '.join('?' for _ in lead_ids)})"
            params = list(lead_ids)
        self.con.execute(
            f"CREATE OR REPLACE TEMP TABLE _score_population AS SELECT * FROM ({population_sql(grid)}){where}",
            params,
        )

    def _drop_scoring_tables(self) -> None:
        for tmp in ("_score_features", "_score_population", "_score_grid", "_grid"):
            self.con.execute(f"DROP TABLE IF EXISTS {tmp}")

    def scoring_rows(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                     metadata: BundleMetadata, lead_ids: list[str] | None = None) -> pd.DataFrame:
        """The contract's population at *as_of* (optionally only *lead_ids*) with its features."""
        self._population(as_of, lead_ids)
        table, catalog, _ = materialize_features(
            self.con, features, event_types, population="_score_population", name="_score_features",
        )
        frame = finish_frame(self.con.execute(f"SELECT * FROM {table} ORDER BY lead_id").df(), catalog)
        self._drop_scoring_tables()
        return frame

    def scoring_batches(self, as_of: pd.Timestamp, features: FeaturesConfig, event_types: Sequence[str],
                        metadata: BundleMetadata, chunk_size: int) -> tuple[int, Iterator[pd.DataFrame]]:
        """Features computed once into DuckDB, streamed *chunk_size* rows at a time."""
        self._population(as_of)
        total = int(fetch_row(self.con, "SELECT count(*) FROM _score_population")[0])
        table, catalog, _ = materialize_features(
            self.con, features, event_types, population="_score_population", name="_score_features",
        )

        def batches() -> Iterator[pd.DataFrame]:
            try:
                yield from iter_feature_batches(self.con, table, catalog, chunk_size)
            finally:
                self._drop_scoring_tables()

        return total, batches()

    def empty_population(self, as_of: pd.Timestamp) -> str:
        first = self.earliest_created()
        span = (f"; its first lead was created on {first:%Y-%m-%d}, its latest timestamp is "
                f"{self.latest_timestamp():%Y-%m-%d}" if not pd.isna(first) else "; it holds no valid lead")
        return (f"no lead is open at {as_of} in {self.source.display} (none created before it, or all "
                f"converted or disqualified by then){span}")

    # --- raw attributes (what the leakage guard screens) ----------------------------------

    def extra_columns(self) -> dict[str, list[str]]:
        """The non-contract columns of ``leads`` and ``accounts`` (the extra attributes)."""
        out: dict[str, list[str]] = {}
        for schema in (Leads, Accounts):
            present = [r[0] for r in self.con.execute(f"DESCRIBE {schema.table}").fetchall()]
            out[schema.table] = [c for c in present if c not in schema.names()]
        return out

    def attributes(self) -> tuple[pd.DataFrame, np.ndarray]:
        """One row per lead: its extra attributes and its account's (an account column that
        shares a lead column's name is called ``accounts.NAME``), and whether the lead
        converted. The raw material of the leakage guard in event mode."""
        extras = self.extra_columns()
        parts = [f"l.{quote(c)} AS {quote(c)}" for c in extras["leads"]]
        parts += [
            f"a.{quote(c)} AS {quote(c if c not in extras['leads'] else 'accounts.' + c)}"
            for c in extras["accounts"]
        ]
        parts.append(f"l.{Leads.converted_at} IS NOT NULL AS __converted")
        frame = self.con.execute(
            f"SELECT {', '.join(parts)} FROM leads l LEFT JOIN accounts a "
            f"ON l.{Leads.account_id} = a.{Accounts.account_id} ORDER BY l.{Leads.lead_id}"
        ).df()
        label = frame.pop("__converted").to_numpy(dtype="int64")
        return frame, label

    def drop_attributes(self, columns: list[str]) -> list[str]:
        """Remove extra attributes from ``leads``/``accounts`` (``accounts.NAME`` names an
        account column); return the ones removed."""
        extras = self.extra_columns()
        dropped = []
        for column in columns:
            table, name = ("accounts", column[9:]) if column.startswith("accounts.") else ("leads", column)
            for t in ((table,) if column.startswith("accounts.") else ("leads", "accounts")):
                if name in extras[t]:
                    self.con.execute(f"ALTER TABLE {t} DROP COLUMN {quote(name)}")
                    dropped.append(column if t == table else f"accounts.{name}")
        return dropped


def load(
    path: str | Path,
    config: Config | None = None,
    *,
    strict: bool | None = None,
    mapping: Mapping | None = None,
    cache: bool | None = None,
) -> CRMData:
    """Load a CRM export by the data contract.

    Parameters
    ----------
    path:
        A folder holding ``leads`` and optionally ``accounts``, ``events``, ``stages``
        as ``.csv`` or ``.parquet``; or a SQLAlchemy database URL (``sqlite:///crm.db``,
        ``postgresql://user@host/db``) whose database holds those tables; or ``env:NAME``,
        the environment variable holding either.
    config:
        The configuration (quarantine threshold, DuckDB memory limit).
    strict:
        Turn every quarantine into an error (overrides ``config.data.strict``).
    mapping:
        How the source differs from the contract (:func:`convert.sources.mapping.load_mapping`).
    cache:
        Use the cache of validated tables for a folder or file export (default
        ``config.data.cache``; :mod:`convert.sources.cache`). A cached load gives the same tables,
        report and rejects as an uncached one.

    Returns
    -------
    CRMData
        The typed tables and the load report; ``report.rejects`` holds the quarantined rows.

    Raises
    ------
    ContractError
        When the export breaks the contract in a way that stops the command.
    """
    config = config or Config()
    mapping = mapping or Mapping()
    location = resolve_data(path)
    database = is_database_url(location)
    source = find_database_source(location, mapping) if database else find_source(location, mapping)
    con = connect(config.features)
    use_cache = (config.data.cache if cache is None else cache) and not database and bool(source.files)
    folder = key = None
    try:
        if use_cache:
            folder = cache_dir(source, config)
            if folder is not None:
                key = cache_key(source, config, mapping)
                hit = entry(folder, key)
                restored = restore(con, hit) if hit.exists() else None
                if restored is not None:
                    report, mapped = restored
                    enforce_thresholds(report, source, config.data, strict)
                    return CRMData(con=con, source=source, report=report, mapped=mapped, from_cache=True)
        if database:
            raw_columns = load_database(con, source, config.data.db_chunk_rows)
        else:
            raw_columns = load_raw(con, source, mapping.csv, lazy=(Events.table, Stages.table))
        mapped = apply_mapping(con, source, raw_columns, mapping)
        report = validate(con, source, raw_columns, config.data, strict=strict, csv_format=mapping.csv)
        for table in raw_columns:
            drop_relation(con, f"raw_{table}")
            drop_relation(con, f"raw_{table}__src")
        keyed = keyed_table(Events.table)  # renamed to the indexed events when the pass wrote it
        index_events(con, keyed if has_table(con, keyed) else None)
        if folder is not None and key is not None:
            index_active_days(con)  # a cached load then never builds them again
            store(con, folder, key, report, mapped, config.data.cache_keep)
    except BaseException:
        con.close()
        raise
    return CRMData(con=con, source=source, report=report, mapped=mapped)


def apply_mapping(
    con: duckdb.DuckDBPyConnection, source: Source, raw_columns: dict[str, list[str]], mapping: Mapping
) -> dict[str, MappedTable]:
    """Rewrite each ``raw_<table>`` by the mapping, in place; *raw_columns* is updated."""
    done: dict[str, MappedTable] = {}
    for table in list(raw_columns):
        raw = f"raw_{table}"
        types = dict(con.execute(f"SELECT column_name, column_type FROM (DESCRIBE {raw})").fetchall())
        mapped = mapped_select(
            mapping, mapping.table(table), f"{raw}__src", types, source.label(table), CONTRACT_TABLES[table]
        )
        if mapped.changes:
            if is_view(con, raw):  # a lazy file: the mapping is one more view (its source dropped after validation)
                con.execute(f"ALTER VIEW {raw} RENAME TO {raw}__src")
                con.execute(f"CREATE VIEW {raw} AS {mapped.sql}")
            else:
                con.execute(f"ALTER TABLE {raw} RENAME TO {raw}__src")
                con.execute(f"CREATE TABLE {raw} AS {mapped.sql}")
                con.execute(f"DROP TABLE {raw}__src")
            raw_columns[table] = mapped.columns
        done[table] = mapped
    return done
