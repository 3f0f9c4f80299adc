"""The batch a writer takes: the output schema's columns, in order, with their contract types.

Owns type coercion for every writer (files, SQLite, PostgreSQL): :func:`prepare` checks a
frame against a :class:`Layout` (missing, extra or repeated columns, types, empty values,
repeated keys) before any target is touched, and :func:`to_arrow` gives the typed Arrow
table the Parquet file and the PostgreSQL binary COPY are written from. ``read_table`` uses
:func:`coerce` to type what it reads back the same way.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

from convert.exceptions import WritebackError
from convert.schema import Column, ScoreChanges, ScoreOutput, TableSchema

if TYPE_CHECKING:
    import pyarrow as pa

__all__ = ["SCORES", "Layout", "coerce", "layout_of", "prepare", "to_arrow"]

_INT32 = (-(2**31), 2**31 - 1)
#: pandas.api.types.infer_dtype kinds that are numbers, not timestamps
_NUMBER_KINDS = frozenset(
    {"integer", "floating", "mixed-integer-float", "decimal", "boolean", "complex"}
)


@dataclass(frozen=True)
class Layout:
    """The written table's schema (ScoreOutput by default; ``allocate`` writes AssignmentOutput):
    its columns, the current table's key and the history's key (``HISTORY_KEY``)."""

    columns: tuple[Column, ...]
    names: tuple[str, ...]
    current_key: tuple[str, ...]
    history_key: tuple[str, ...]
    #: whether the shrink guard applies (not to assignments: they churn every day)
    shrink_guard: bool = True
    #: nullable columns added after tables were first written: an existing table lacking them
    #: gains them (``ALTER TABLE ... ADD COLUMN``, empty) on the first run, and a batch
    #: without them writes them empty (a caller that computes no score changes)
    added: tuple[str, ...] = ()

    @classmethod
    def of(cls, schema: type[TableSchema], added: type[TableSchema] | None = None) -> Layout:
        """The layout of *schema*, with the (nullable) columns of *added* after its own."""
        history = tuple(getattr(schema, "HISTORY_KEY", (*schema.key, "as_of", "model_version")))
        extra = tuple(added.columns()) if added is not None else ()
        assert all(c.nullable for c in extra), "added columns must be nullable (existing rows get them empty)"
        columns = (*schema.columns(), *extra)
        return cls(tuple(columns), tuple(c.name for c in columns), tuple(schema.key), history,
                   bool(getattr(schema, "SHRINK_GUARD", True)), tuple(c.name for c in extra))


#: The score tables: :class:`ScoreOutput`'s columns, then :class:`ScoreChanges`' (issue 17).
SCORES = Layout.of(ScoreOutput, ScoreChanges)


def layout_of(schema: type[TableSchema]) -> Layout:
    """The written layout of *schema* (``ScoreOutput``: with the score-change columns)."""
    return SCORES if schema is ScoreOutput else Layout.of(schema)


def prepare(scores: object, *, allow_empty: bool, layout: Layout = SCORES) -> pd.DataFrame:
    """*scores* with the ScoreOutput columns in order and their contract types; else raise."""
    if not isinstance(scores, pd.DataFrame):
        raise WritebackError(f"scores must be a pandas DataFrame, got {type(scores).__name__}")
    given = [str(c) for c in scores.columns]
    rows: pd.DataFrame = scores
    absent = bool(layout.added) and not any(c in given for c in layout.added)
    if absent:
        rows = scores.assign(**dict.fromkeys(layout.added))  # written empty
        given = [str(c) for c in rows.columns]
    missing = [c for c in layout.names if c not in given]
    extra = [c for c in given if c not in layout.names]
    doubled = sorted({c for c in given if given.count(c) > 1})
    if missing or extra or doubled:
        problems = []
        if missing:
            problems.append(f"missing column(s) {', '.join(map(repr, missing))}")
        if extra:
            problems.append(f"unexpected column(s) {', '.join(map(repr, extra))}")
        if doubled:
            problems.append(f"repeated column(s) {', '.join(map(repr, doubled))}")
        raise WritebackError(
            f"scores do not have the ScoreOutput columns: {'; '.join(problems)}. "
            f"Expected exactly: {', '.join(layout.names)}"
        )
    frame = rows.copy(deep=False)
    frame.columns = pd.Index(given)
    data: dict[str, pd.Series] = {}
    for column in layout.columns:
        if absent and column.name in layout.added:  # typed empty, as coerce would make it
            data[column.name] = _empty(column, len(frame))
            continue
        series = coerce(frame[column.name].reset_index(drop=True), column)
        if not column.nullable:
            empty = series.isna().to_numpy()
            if empty.any():
                raise WritebackError(
                    f"column {column.name!r} has {int(empty.sum()):,} empty value(s) "
                    f"(first at row {int(np.argmax(empty))}) but may not be empty"
                )
        data[column.name] = series
    result = pd.DataFrame(data)
    ids = result[ScoreOutput.lead_id]
    if not ids.is_unique:
        doubled_ids = ids.duplicated(keep=False).to_numpy()
        examples = result.loc[doubled_ids, ScoreOutput.lead_id].drop_duplicates().head(5)
        raise WritebackError(
            f"scores repeat lead_id {', '.join(map(repr, examples.tolist()))} "
            f"({int(doubled_ids.sum()):,} rows in all): the scores have one row per lead"
        )
    if result.empty and not allow_empty:
        raise WritebackError(
            "scores are empty: writing them would remove every current score; nothing was "
            "written (pass allow_empty=True if the population really is empty)"
        )
    return result


def _empty(column: Column, rows: int) -> pd.Series:
    """A column of *rows* empty values in the type :func:`coerce` gives an empty column."""
    if column.dtype == "timestamp":
        return pd.Series(pd.NaT, index=pd.RangeIndex(rows), dtype="datetime64[us]")
    dtype = {"string": "string", "number": "float64"}.get(column.dtype, "Int64")
    return pd.Series(np.nan if dtype == "float64" else pd.NA, index=pd.RangeIndex(rows), dtype=dtype)


def coerce(series: pd.Series, column: Column) -> pd.Series:
    """*series* as the contract type of *column* (nulls allowed; checked by the caller)."""
    try:
        if column.dtype == "string":
            return _as_text(series)
        if column.dtype == "timestamp":
            return _as_timestamp(series)
        if column.dtype == "number":
            return _as_float(series)
        return _as_int(series)
    except WritebackError as exc:
        raise WritebackError(f"column {column.name!r}: {exc}") from None
    except (ValueError, TypeError, OverflowError) as exc:
        raise WritebackError(
            f"column {column.name!r} cannot be read as {column.dtype}: {exc}"
        ) from None


def _first_bad(series: pd.Series, bad: np.ndarray) -> str:
    position = int(np.argmax(bad))
    return f"{series.iloc[position]!r} at row {position}"


def _blank_to_na(series: pd.Series) -> pd.Series:
    if pd.api.types.is_object_dtype(series) or pd.api.types.is_string_dtype(series):
        blank = series.astype("string").eq("").fillna(False).to_numpy(dtype=bool)
        if blank.any():
            return series.mask(blank)
    return series


def _as_text(series: pd.Series) -> pd.Series:
    if pd.api.types.is_float_dtype(series):
        values = series.dropna()
        if bool((values == np.floor(values)).all()):
            series = series.astype("Int64")  # 12.0 -> "12", as the id was written
    text = series.astype("string")
    blank = text.eq("").fillna(False).to_numpy(dtype=bool)
    if not blank.any():
        return text
    import pyarrow as pa
    import pyarrow.compute as pc

    # the Arrow kernel is several times faster than Series.mask on Arrow-backed strings
    values = pa.array(text)
    return pd.Series(
        pd.array(pc.if_else(blank, pa.scalar(None, values.type), values), dtype="string")
    )


def _as_timestamp(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, pd.DatetimeTZDtype):
        stamps = series.dt.tz_convert("UTC").dt.tz_localize(None)
    elif pd.api.types.is_datetime64_dtype(series):
        stamps = series
    elif pd.api.types.is_numeric_dtype(series) or pd.api.types.is_bool_dtype(series):
        raise WritebackError(f"timestamps expected, got numbers ({series.dtype})")
    elif pd.api.types.infer_dtype(series, skipna=True) in _NUMBER_KINDS:
        raise WritebackError(
            f"timestamps expected, got numbers such as {series.dropna().iloc[0]!r}"
        )
    else:
        stamps = pd.to_datetime(_blank_to_na(series), utc=True, format="ISO8601")
        stamps = stamps.dt.tz_localize(None)
    return stamps.dt.floor("us").astype("datetime64[us]")


def _as_float(series: pd.Series) -> pd.Series:
    numbers = pd.to_numeric(_blank_to_na(series), errors="raise").astype("float64")
    bad = np.isinf(numbers.to_numpy())
    if bad.any():
        raise WritebackError(f"not a finite number: {_first_bad(series, bad)}")
    return numbers


def _as_int(series: pd.Series) -> pd.Series:
    if isinstance(series.dtype, np.dtype) and series.dtype.kind in "iu":  # no NA, whole already
        if len(series) and (series.min() < _INT32[0] or series.max() > _INT32[1]):
            bad = ((series < _INT32[0]) | (series > _INT32[1])).to_numpy()
            raise WritebackError(f"outside the INTEGER range: {_first_bad(series, bad)}")
        return series.astype("int64")
    numbers = pd.to_numeric(_blank_to_na(series), errors="raise")
    if pd.api.types.is_bool_dtype(numbers):
        raise WritebackError("integers expected, got booleans")
    values = numbers.astype("float64").to_numpy()
    known = ~np.isnan(values)
    bad = known & ((values != np.floor(values)) | np.isinf(values))
    if bad.any():
        raise WritebackError(f"not a whole number: {_first_bad(series, bad)}")
    bad = known & ((values < _INT32[0]) | (values > _INT32[1]))
    if bad.any():
        raise WritebackError(f"outside the INTEGER range: {_first_bad(series, bad)}")
    whole = numbers.astype("Int64")
    return whole if bool(whole.isna().any()) else whole.astype("int64")


def to_arrow(frame: pd.DataFrame, layout: Layout = SCORES) -> pa.Table:
    """The prepared frame as an Arrow table with the contract types."""
    import pyarrow as pa

    types = {
        "string": pa.string(),
        "timestamp": pa.timestamp("us"),
        "number": pa.float64(),
        "integer": pa.int32(),
    }
    schema = pa.schema(
        [pa.field(c.name, types[c.dtype], nullable=c.nullable) for c in layout.columns]
    )
    return pa.Table.from_pandas(frame, schema=schema, preserve_index=False)
