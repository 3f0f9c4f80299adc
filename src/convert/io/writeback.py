"""The former import path of the write-back: everything now lives in :mod:`convert.io.writers`.

Kept so that code written against ``convert.io.writeback`` (notebooks, the steps while they
move into a package) keeps working; new code imports :mod:`convert.io.writers`.
"""

from convert.io.writers import (
    TableState,
    WriteGuards,
    WriteSummary,
    engine_url,
    file_lock,
    model_name,
    read_table,
    write_scores,
)

__all__ = [
    "TableState",
    "WriteGuards",
    "WriteSummary",
    "engine_url",
    "file_lock",
    "model_name",
    "read_table",
    "write_scores",
]
