"""Table schemas as classes: the data contract's tables and the tables convert writes.

A column is a :class:`Column`, a ``str`` subclass carrying its declared type, so code
writes ``frame[Leads.lead_id]`` instead of scattering string literals, and the loader
types every column from here, never by inference (an all-empty timestamp column is
still a timestamp).
"""

from __future__ import annotations

from typing import ClassVar, Literal

ColumnType = Literal["string", "timestamp", "integer", "number"]

#: DuckDB type of each declared column type.
DUCKDB_TYPES: dict[str, str] = {
    "string": "VARCHAR",
    "timestamp": "TIMESTAMP",
    "integer": "BIGINT",
    "number": "DOUBLE",
}


class Column(str):
    """A column name that knows its contract type, nullability, whether it is required and
    whether it identifies a row (an id: a control character in it quarantines the row,
    where other text only loses the character)."""

    dtype: ColumnType
    nullable: bool
    required: bool
    identifier: bool

    def __new__(
        cls,
        name: str,
        dtype: ColumnType = "string",
        *,
        nullable: bool = True,
        required: bool = True,
        identifier: bool = False,
    ) -> Column:
        obj = super().__new__(cls, name)
        obj.dtype = dtype
        obj.nullable = nullable
        obj.required = required
        obj.identifier = identifier
        return obj

    @property
    def name(self) -> str:
        return str(self)


class TableSchema:
    """Base of every table schema; subclasses declare :class:`Column` attributes."""

    table: ClassVar[str]
    key: ClassVar[tuple[str, ...]] = ()

    @classmethod
    def columns(cls) -> list[Column]:
        return [v for k, v in vars(cls).items() if isinstance(v, Column) and not k.startswith("_")]

    @classmethod
    def required_columns(cls) -> list[Column]:
        return [c for c in cls.columns() if c.required]

    @classmethod
    def names(cls) -> list[str]:
        return [str(c) for c in cls.columns()]


# --- the data contract (v1) ---------------------------------------------------------------


class Leads(TableSchema):
    """``leads`` (required): one row per lead."""

    table = "leads"
    key = ("lead_id",)
    lead_id = Column("lead_id", "string", nullable=False, identifier=True)
    created_at = Column("created_at", "timestamp", nullable=False)
    account_id = Column("account_id", "string", identifier=True)
    lead_source = Column("lead_source", "string")
    country = Column("country", "string")
    job_title = Column("job_title", "string")
    converted_at = Column("converted_at", "timestamp")
    disqualified_at = Column("disqualified_at", "timestamp")


class Accounts(TableSchema):
    """``accounts`` (optional): firmographics, one row per company."""

    table = "accounts"
    key = ("account_id",)
    account_id = Column("account_id", "string", nullable=False, identifier=True)
    industry = Column("industry", "string")
    employees = Column("employees", "integer")
    annual_revenue = Column("annual_revenue", "number")
    country = Column("country", "string")


class Events(TableSchema):
    """``events`` (optional): the interaction log, one row per interaction."""

    table = "events"
    lead_id = Column("lead_id", "string", nullable=False, identifier=True)
    occurred_at = Column("occurred_at", "timestamp", nullable=False)
    event_type = Column("event_type", "string", nullable=False)
    channel = Column("channel", "string", required=False)
    campaign_id = Column("campaign_id", "string", required=False)
    url = Column("url", "string", required=False)
    value = Column("value", "number", required=False)


class Stages(TableSchema):
    """``stages`` (optional): lifecycle history, one row per stage entered."""

    table = "stages"
    lead_id = Column("lead_id", "string", nullable=False, identifier=True)
    stage = Column("stage", "string", nullable=False)
    entered_at = Column("entered_at", "timestamp", nullable=False)


CONTRACT_TABLES: dict[str, type[TableSchema]] = {
    Leads.table: Leads,
    Accounts.table: Accounts,
    Events.table: Events,
    Stages.table: Stages,
}
REQUIRED_TABLES: tuple[str, ...] = (Leads.table,)


# --- tables convert writes ----------------------------------------------------------------


class Rejects(TableSchema):
    """The rejects file: one row per quarantined input row."""

    table = "rejects"
    table_name = Column("table")
    row = Column("row", "integer")
    column = Column("column")
    value = Column("value")
    reason = Column("reason")


class Snapshot(TableSchema):
    """Key of every training or scoring row: a lead at an as-of time."""

    table = "snapshots"
    key = ("lead_id", "as_of")
    lead_id = Column("lead_id", "string", nullable=False)
    as_of = Column("as_of", "timestamp", nullable=False)


class Labeled(Snapshot):
    """A snapshot with its label (1 when the lead converts within the horizon)."""

    table = "labels"
    label = Column("label", "integer", nullable=False)


class ScoreOutput(TableSchema):
    """What ``convert-leads score`` writes, the same in files and database tables."""

    table = "lead_scores"
    key = ("lead_id",)
    lead_id = Column("lead_id", "string", nullable=False)
    as_of = Column("as_of", "timestamp", nullable=False)
    probability = Column("probability", "number", nullable=False)
    score = Column("score", "integer", nullable=False)
    grade = Column("grade", "string", nullable=False)
    base_score = Column("base_score", "integer", nullable=False)
    fit_points = Column("fit_points", "integer", nullable=False)
    engagement_points = Column("engagement_points", "integer", nullable=False)
    reason_1 = Column("reason_1")
    reason_2 = Column("reason_2")
    reason_3 = Column("reason_3")
    risk_1 = Column("risk_1")
    risk_2 = Column("risk_2")
    risk_3 = Column("risk_3")
    action = Column("action", nullable=False)
    model_version = Column("model_version", nullable=False)
    scored_at = Column("scored_at", "timestamp", nullable=False)

    REASONS: ClassVar[tuple[str, ...]] = ("reason_1", "reason_2", "reason_3")
    RISKS: ClassVar[tuple[str, ...]] = ("risk_1", "risk_2", "risk_3")
    HISTORY_KEY: ClassVar[tuple[str, ...]] = ("lead_id", "as_of", "model_version")


class ScoreChanges(TableSchema):
    """What ``convert-leads score`` writes about each lead's previous score (issue 17).

    Written after the :class:`ScoreOutput` columns (:meth:`output_names`), in files and
    database tables alike. Every column is nullable: a table or history written before
    these columns existed gains them empty (``ALTER TABLE ... ADD COLUMN``, no default), and
    a lead without a previous score has them empty but for ``trend`` (``new``) and
    ``events_seen``. ``events_seen`` is the fingerprint the next run checks: the lead's
    events before this row's as-of, as the export held them when it was scored.
    """

    table = "lead_scores"
    previous_score = Column("previous_score", "integer")
    previous_as_of = Column("previous_as_of", "timestamp")
    score_change = Column("score_change", "integer")
    trend = Column("trend")
    change_1 = Column("change_1")
    change_2 = Column("change_2")
    change_3 = Column("change_3")
    events_seen = Column("events_seen", "integer")

    CHANGES: ClassVar[tuple[str, ...]] = ("change_1", "change_2", "change_3")
    TRENDS: ClassVar[tuple[str, ...]] = ("new", "unknown", "improving", "steady", "declining")

    @classmethod
    def output_names(cls) -> list[str]:
        """Every column of a score table with changes: :class:`ScoreOutput`'s, then these."""
        return ScoreOutput.names() + cls.names()
