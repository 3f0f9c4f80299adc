"""Write-back of scores and assignments: to a file, SQLite or PostgreSQL, staged and switched atomically.

This package is the only place that writes scores. :func:`write_scores` takes a frame
with exactly the :class:`~convert.schema.ScoreOutput` columns (or, with ``schema=``, another
output schema's, e.g. the lead assignments of ``convert.scoring.allocate``) and a target:

* a file path ending ``.parquet`` or ``.csv``: written to a temporary file in the same
  directory, then moved over the old file with :func:`os.replace` (readers see the old
  file or the new one, never half of one);
* a database URL, ``sqlite:///path.db`` or ``postgresql://user@host:port/db`` (a plain
  ``postgresql://`` or ``postgres://`` URL is driven by psycopg 3). Two tables are kept:
  the current table (``table``, one row per open lead, primary key ``lead_id``) and the
  history table (``{table}_history``, primary key ``(lead_id, as_of, model_version)``).

One database run:

1. the batch is validated and typed (missing/extra columns, types, empty values, repeated
   ``lead_id``), before anything is touched;
2. the rows are staged in chunks, in ``lead_id`` order, into a temporary table of the
   session (PostgreSQL: ``COPY ... FROM STDIN`` in the binary format; SQLite:
   ``executemany``); nothing visible changes;
3. then ONE transaction takes the table's lock, creates the tables when absent, checks the
   guards (below), deletes from the current table the leads missing from this run's batch
   (they left the population: converted or disqualified), upserts the batch into the
   current table and into the history table.
   The upserts only rewrite rows whose values changed, so a re-run is idempotent. SQLite
   runs ``INSERT ... ON CONFLICT (lead_id) DO UPDATE``; PostgreSQL gets the same result
   faster in bulk with one ``MERGE`` (before version 15: ``UPDATE ... FROM`` the staging
   table, then ``INSERT`` of the new leads). The history takes a plain ``INSERT`` when it
   holds no row of the batch's (as_of, model_version) pairs (the normal run), else
   ``INSERT ... ON CONFLICT (lead_id, as_of, model_version) DO UPDATE``.

Killed at any moment, the previous tables stay as they were (the staging table dies with
the session; the switch commits in full or not at all), and a re-run gives the same final
tables as an uninterrupted run.

Guards (:class:`WriteGuards`, the ``writeback:`` section of ``params.yaml``) are checked
inside the switch's transaction, under the lock, before anything changes; a refusal
(:class:`~convert.exceptions.WriteRefusedError`, exit code 2) rolls the transaction back:

* **shrink**: a run that would remove more than ``max_removed_share`` of the current rows
  (a partial export) is refused unless ``allow_shrink`` (``--allow-shrink``);
* **older as-of**: a run whose (oldest) as-of is strictly older than the newest as-of in
  the current table is refused unless ``allow_older`` (``--allow-older``); a re-run at the
  same as-of is fine, and an allowed older run appends its history like any run;
* **one model per table**: the current table holds one model name's scores (the part of
  ``model_version`` before ``/``); a run of another model is refused unless ``replace``
  (``--replace``), which replaces them all (the shrink and as-of guards compare runs of
  one model, so they do not apply then).

Locks: concurrent runs on one table are serialized, whichever spelling names it (``t``,
``public.t``: the lock is taken on the schema-qualified name). PostgreSQL takes a
transaction-level advisory lock keyed on that name, under ``SET LOCAL lock_timeout``;
SQLite takes ``BEGIN IMMEDIATE`` under a busy timeout, and its database is switched to WAL
mode (existing files too) so an open reader never blocks the commit. A file target is
guarded the same way under an exclusive lock file (``.NAME.lock`` beside it, removed
after). Waiting longer than ``lock_timeout_s`` stops the run with
:class:`~convert.exceptions.WriteLockedError` ("another run holds TABLE"), changing nothing.

The guards are not tied to the scores' columns: :class:`TableState` reads any table with
an as-of and a model-version column, and :func:`file_lock` takes the
same locks. ``allocate``'s assignments (``schema=AssignmentOutput``) go through the same
lock, older-as-of and one-model-per-table guards and history table; the shrink guard does
not apply to them (``SHRINK_GUARD = False``: assignments churn every day).

Score tables also hold each lead's change since its previous score (the
:class:`~convert.schema.ScoreChanges` columns, issue 17). Tables written before those
columns existed gain them on the first run (``ALTER TABLE ... ADD COLUMN``, under the lock,
in the switch's transaction). :func:`read_previous` reads each lead's previous row (the
history's latest row with an as-of strictly earlier than the run's; files: the file being
replaced), and ``write_scores(recheck=...)`` hands the same rows, read again under the lock,
to the caller, which may return the batch with its changes recomputed (another run wrote in
between); the batch is then staged again under the lock.

Tables: ``lead_id`` TEXT, ``as_of``/``scored_at`` TIMESTAMP (naive UTC), ``probability``
DOUBLE PRECISION (SQLite REAL), the points INTEGER, the rest TEXT (empty text is NULL).
On PostgreSQL each run's rows are written once, into a run table ``{table}_r{N}`` that table
inheritance makes a child of both tables (see :mod:`~convert.io.writers.postgres`).

Modules: :mod:`~convert.io.writers.base` (the contract, the guards, the names),
:mod:`~convert.io.writers.frames` (columns and types), :mod:`~convert.io.writers.files`,
:mod:`~convert.io.writers.database` (portable SQL), :mod:`~convert.io.writers.sqlite`,
:mod:`~convert.io.writers.postgres` and :mod:`~convert.io.writers.pgcopy` (binary COPY), and
:mod:`~convert.io.writers.factory` (which writer a target gets). A new database is one new
``DatabaseWriter`` subclass in ``factory.DATABASE_WRITERS``.

SQLAlchemy, psycopg and pyarrow are imported lazily, inside the functions that need them:
``import convert.io.writers`` stays light and does not import a database driver.
"""

from convert.io.writers.base import (
    Recheck,
    TableState,
    WriteGuards,
    Writer,
    WriteSummary,
    model_name,
)
from convert.io.writers.factory import (
    DATABASE_WRITERS,
    engine_url,
    read_previous,
    read_table,
    write_scores,
    writer_for,
)
from convert.io.writers.files import file_lock

__all__ = [
    "DATABASE_WRITERS",
    "Recheck",
    "TableState",
    "WriteGuards",
    "WriteSummary",
    "Writer",
    "engine_url",
    "file_lock",
    "model_name",
    "read_previous",
    "read_table",
    "write_scores",
    "writer_for",
]
