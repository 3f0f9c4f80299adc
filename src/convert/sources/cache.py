"""The cache of validated tables: a loaded export kept as a DuckDB file, keyed by what shaped it.

Every data-reading command (``train``, ``score``, ``report``, ``explain``, ``backtest`` ...)
loads and validates the same export again; at tens of millions of events that costs far more
than the features. For folder and file sources, :func:`convert.load` therefore keeps the
validated and indexed tables (and the load report with its rejects) of the last
``data.cache_keep`` exports in ``data.cache_dir``, and a later load of an unchanged export
attaches them instead of reading and validating the files.

The key is a hash of each file's name, size, modification time, status-change time and
inode, a content hash of its bytes, the configuration that shapes the tables (the ``data``
section but the thresholds, which are checked again on every load), the mapping, and this
module's format version with convert's. Any change gives a new key, so a stale entry is never
read; entries beyond ``data.cache_keep`` are removed, least recently used first.

The content hash reads a sample of the file (its first and last MiB and evenly spaced
blocks; all of a file up to 8 MiB), not every byte: hashing gigabytes would cost a cached
load most of its time. A changed file is still detected: any write changes the file's
status-change time (``st_ctime``), which ordinary tools cannot set back (``touch`` and
``os.utime`` restore only the modification time) and which is in the key, as are the size
and the modification time; a file replaced by a copy (a new inode, a new ctime) is
detected the same way; the sampled bytes only add to that. (A metadata change such as
``chmod`` also moves the ctime: a needless miss, never a stale hit.)

A cached load does not copy the tables back: the entry's DuckDB file is attached read-only
and the connection's search path reads ``events`` and the indexed tables from it (only
``leads`` and ``accounts``, which the leakage guard may alter, are copied; they are small).
Database sources are never cached (no cheap, reliable change check). ``--no-cache`` (``data.cache: false``)
bypasses the cache entirely: nothing read, nothing written.

An entry is written to a temporary name and renamed into place, so a crash or a concurrent
load never leaves a half-written entry where a reader would take it.
"""

from __future__ import annotations

import hashlib
import json
import os
import pickle
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import duckdb

from convert.config import Config
from convert.sources.mapping import MappedTable, Mapping
from convert.sources.readers import Source
from convert.sources.validation import LoadReport
from convert.sql import lit

#: Bumped when what an entry holds changes, so that old entries are never read.
FORMAT = 2
SUFFIX = ".duckdb"
META = ".meta.pkl"


@dataclass
class Entry:
    """A cache entry's paths: the DuckDB file of the tables and the pickled report."""

    tables: Path
    meta: Path

    def exists(self) -> bool:
        return self.tables.is_file() and self.meta.is_file()


_BLOCK = 64 * 2**10
_BLOCKS = 64
_WHOLE = 8 * 2**20


def _file_digest(path: Path, size: int) -> str:
    """Content hash of a file: SHA-256 of all of a small file; of a large one, its first and
    last MiB and :data:`_BLOCKS` evenly spaced blocks of 64 KiB (the module docstring says why
    that, with the file's times, size and inode, still detects a changed file)."""
    h = hashlib.sha256()
    with open(path, "rb", buffering=0) as fh:
        if size <= _WHOLE:
            while chunk := fh.read(_WHOLE):
                h.update(chunk)
            return h.hexdigest()
        edge = min(2**20, size // 4)
        block = max(1, min(_BLOCK, (size - 2 * edge) // _BLOCKS))
        spans = [(0, edge), (size - edge, edge)]
        spans += [(edge + (size - 2 * edge - block) * i // (_BLOCKS - 1), block) for i in range(_BLOCKS)]
        for start, length in spans:
            fh.seek(start)
            h.update(fh.read(length))
    return h.hexdigest()


def cache_key(source: Source, config: Config, mapping: Mapping) -> str:
    """The key of a folder or file export: files (size, mtime, content), config and mapping."""
    from importlib.metadata import PackageNotFoundError, version

    try:  # the installed distribution's version (not ``convert.__version__``: sources sit below the API)
        convert_version = version("convert-leads")
    except PackageNotFoundError:
        convert_version = "unknown"
    files = []
    for table, path in sorted(source.files.items()):
        st = path.stat()
        files.append([table, path.name, st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino,
                      _file_digest(path, st.st_size)])
    data = config.data.model_dump(mode="json", exclude={"rejects", "strict", "max_quarantine_share",
                                                        "cache", "cache_dir", "cache_keep"})
    lo, hi = config.data.valid_range()  # valid_to unset: a year from today, as validation uses it
    shaping = {
        "format": FORMAT,
        "convert": convert_version,
        "duckdb": duckdb.__version__,
        "files": files,
        "data": data,
        "valid": [lo.isoformat(), hi.isoformat()],
        "mapping": mapping.model_dump(mode="json"),
    }
    return hashlib.blake2b(json.dumps(shaping, sort_keys=True, default=str).encode(), digest_size=16).hexdigest()


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(dir=folder, prefix=".probe-", delete=True)
        probe.close()
        return True
    except OSError:
        return False


def user_cache_dir() -> Path:
    """The user's cache directory for convert (``$XDG_CACHE_HOME/convert`` or ``~/.cache/convert``)."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "convert"


def cache_dir(source: Source, config: Config) -> Path | None:
    """Where the entries live: ``data.cache_dir``, else ``.convert-cache`` beside the export,
    else (read-only export) the user's cache directory; None when nothing is writable."""
    if config.data.cache_dir:
        folder = Path(config.data.cache_dir).expanduser()
        return folder if _writable(folder) else None
    files = list(source.files.values())
    beside = files[0].parent / ".convert-cache"
    if _writable(beside):
        return beside
    fallback = user_cache_dir()
    return fallback if _writable(fallback) else None


def entry(folder: Path, key: str) -> Entry:
    return Entry(folder / f"{key}{SUFFIX}", folder / f"{key}{META}")


#: Tables of an entry copied into the connection (the leakage guard may drop their columns);
#: every other table is read from the attached entry.
_COPIED = ("leads", "accounts")
ATTACHED = "convert_cache"


def restore(
    con: duckdb.DuckDBPyConnection, hit: Entry
) -> tuple[LoadReport, dict[str, MappedTable]] | None:
    """Attach a cached entry's tables to *con* (read-only; only ``leads`` and ``accounts``
    are copied) and put them on its search path; its report and mapping summary, or None
    when the entry cannot be read (then the caller loads the export as usual)."""
    attached = False
    try:
        with open(hit.meta, "rb") as fh:
            meta: dict[str, Any] = pickle.load(fh)  # noqa: S301  (our own file, in our cache folder)
        if meta.get("format") != FORMAT:
            return None
        home = str(con.execute("SELECT current_database()").fetchall()[0][0])
        con.execute(f"ATTACH {lit(str(hit.tables))} AS {ATTACHED} (READ_ONLY)")
        attached = True
        for table in _COPIED:
            con.execute(f"CREATE TABLE {table} AS SELECT * FROM {ATTACHED}.{table}")
        # unqualified names: this connection's tables first (new ones are created there), then the entry's
        con.execute(f"SET search_path = {lit(f'{home}.main,{ATTACHED}.main')}")
    except (OSError, EOFError, pickle.UnpicklingError, duckdb.Error, AttributeError, KeyError):
        if attached:
            for table in _COPIED:
                con.execute(f"DROP TABLE IF EXISTS {table}")
            con.execute(f"DETACH {ATTACHED}")
        return None
    now = time.time()
    for path in (hit.tables, hit.meta):
        try:
            os.utime(path, (now, now))  # least recently used goes first
        except OSError:
            pass
    return meta["report"], meta["mapped"]


def store(
    con: duckdb.DuckDBPyConnection, folder: Path, key: str, report: LoadReport,
    mapped: dict[str, MappedTable], keep: int,
) -> None:
    """Write the tables of *con* and the report as the entry *key*; keep the newest *keep*."""
    target = entry(folder, key)
    tmp = folder / f".{key}.{os.getpid()}.tmp"
    tmp_db, tmp_meta = tmp.with_suffix(SUFFIX), tmp.with_suffix(".pkl")
    try:
        con.execute(f"ATTACH {lit(str(tmp_db))} AS convert_cache_out")
        try:
            con.execute("COPY FROM DATABASE memory TO convert_cache_out")
        finally:
            con.execute("DETACH convert_cache_out")
        with open(tmp_meta, "wb") as fh:
            pickle.dump({"format": FORMAT, "report": report, "mapped": mapped}, fh)
        os.replace(tmp_meta, target.meta)
        os.replace(tmp_db, target.tables)
    except (OSError, duckdb.Error):
        pass  # a cache that cannot be written is no error: the load itself succeeded
    finally:
        for path in (tmp_db, tmp_meta, Path(str(tmp_db) + ".wal")):
            path.unlink(missing_ok=True)
    prune(folder, keep)


def prune(folder: Path, keep: int) -> None:
    """Remove all but the *keep* most recently used entries of *folder*."""
    entries = sorted(folder.glob(f"*{SUFFIX}"), key=lambda p: p.stat().st_mtime, reverse=True)
    for old in entries[keep:]:
        key = old.name[: -len(SUFFIX)]
        for path in (old, folder / f"{key}{META}", folder / f"{key}{SUFFIX}.wal"):
            path.unlink(missing_ok=True)
