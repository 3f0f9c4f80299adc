"""Opening sources: a CRM export (folder, flat file or database) becomes raw tables in DuckDB.

This is an edge module: it is the only place (with ``writeback`` and ``registry``)
that opens files and databases. It finds each contract table as ``NAME.csv`` or
``NAME.parquet`` (or the file or database table a mapping names), loads it as raw text
columns in file order, and hands the connection to :mod:`convert.sources.validation`, which types
and checks it by the contract; a row's 1-based data row number is its ``rowid + 1``.

CSV files are read with the header taken from the file itself (DuckDB does no sniffing):
a BOM is dropped; another encoding declared in the mapping is transcoded to UTF-8 first;
an undecodable byte, a row with too many or too few fields, an unterminated quote, a
repeated or ``;``-looking header are errors naming the file, the row and the column.
A database (``--data`` a SQLAlchemy URL) is read table by table in chunks of
``data.db_chunk_rows`` rows; its values become text, so the contract's rules apply to it
exactly as to a CSV file. SQLAlchemy and the database drivers are imported lazily.
"""

from __future__ import annotations

import codecs
import csv
import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import duckdb
import numpy as np

from convert.config import FeaturesConfig
from convert.exceptions import ConfigError, ContractError, ResourceError
from convert.io import scratch
from convert.io.urls import engine_url, redact_url, resolve_env, scrub, secrets_of
from convert.io.urls import is_database_url as is_database_url  # re-exported (cli, dataset)
from convert.schema import CONTRACT_TABLES, REQUIRED_TABLES, Events
from convert.sources.mapping import CsvFormat, Mapping, split_table_name
from convert.sql import fetch_row, lit

if TYPE_CHECKING:
    import pyarrow as pa

ROW = "__row"
"""Name given to a raw row's 1-based data row number (``rowid + 1``) in validation queries."""

_FORMATS = ("csv", "parquet")


@dataclass(frozen=True)
class Source:
    """Where each contract table of an export lives: files in a folder, or database tables."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    tables: dict[str, str] = field(default_factory=dict)
    url: str | None = field(default=None, repr=False)

    def file(self, table: str) -> Path | None:
        return self.files.get(table)

    def label(self, table: str) -> str:
        """The name used in messages (``leads.csv``, or the database table ``crm.contacts``)."""
        path = self.files.get(table)
        if path:
            return path.name
        if table in self.tables:
            return self.tables[table]
        return f"{table}.csv"

    @property
    def display(self) -> str:
        """Where the data came from, printable (a database URL without its password)."""
        return redact_url(self.url) if self.url else str(self.root)

    @property
    def found(self) -> list[str]:
        return list(self.files) if self.files else list(self.tables)


def resolve_data(data: str | os.PathLike[str]) -> str:
    """``env:NAME`` reads the data location (e.g. a database URL with a password) from the
    environment variable NAME, so it need not appear on the command line."""
    try:
        return resolve_env(data, "--data")
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def find_source(path: str | Path, mapping: Mapping | None = None) -> Source:
    """Locate the contract's tables in a folder; a missing required table is an error.

    A mapping may name each table's file (``tables.leads.source: contacts.csv``); an
    optional table whose file is absent is absent, as without a mapping.
    """
    mapping = mapping or Mapping()
    root = Path(path)
    if not root.exists():
        raise ContractError(f"the data folder {root} does not exist", file=str(root))
    if not root.is_dir():
        raise ContractError(
            f"{root} is a file; the CRM export is a folder holding leads.csv (or .parquet) "
            "and optionally accounts, events and stages (single flat files come with --target)",
            file=str(root),
        )
    files: dict[str, Path] = {}
    for table in CONTRACT_TABLES:
        named = mapping.source_name(table)
        if named:
            stem = Path(named)
            candidates = [root / named] if stem.suffix in (".csv", ".parquet") else [
                root / f"{named}.{fmt}" for fmt in _FORMATS
            ]
        else:
            candidates = [root / f"{table}.{fmt}" for fmt in _FORMATS]
        found = [c for c in candidates if c.exists()]
        if len(found) > 1:
            raise ContractError(
                f"both {found[0].name} and {found[1].name} exist; keep one file per table",
                file=str(found[0]),
            )
        if found:
            files[table] = found[0]
    for table in REQUIRED_TABLES:
        if table not in files:
            named = mapping.source_name(table)
            expected = f"{named}" if named else f"{table}.csv or {table}.parquet"
            raise ContractError(
                f"the required table '{table}' is missing: expected {expected} in {root}"
                + ("" if named else f" (or name its file in a mapping: tables.{table}.source)"),
                file=str(root / (named or f"{table}.csv")),
            )
    return Source(root=root, files=files)


def connect(config: FeaturesConfig | None = None, database: str = ":memory:") -> duckdb.DuckDBPyConnection:
    """A DuckDB connection in UTC with the configured memory limit and threads.

    Spilling goes to this run's temporary folder (:func:`convert.io.scratch.run_dir`, removed
    at exit) so that large exports stay within the limit.
    """
    config = config or FeaturesConfig()
    con = duckdb.connect(database)
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET memory_limit = '{_checked_memory_limit(config.duckdb_memory_limit)}'")
    con.execute("SET preserve_insertion_order = true")
    spill = scratch.run_dir() / "duckdb-spill"
    spill.mkdir(parents=True, exist_ok=True)
    con.execute(f"SET temp_directory = {lit(spill.as_posix())}")
    if config.duckdb_threads:
        con.execute(f"SET threads = {int(config.duckdb_threads)}")
    return con


def out_of_memory(exc: BaseException, where: str | None = None) -> ResourceError | None:
    """DuckDB's out-of-memory error as a :class:`ResourceError` saying which setting to raise;
    ``None`` for any other exception."""
    text = str(exc)
    if not (isinstance(exc, duckdb.OutOfMemoryException) or "Out of Memory Error" in text):
        return None
    first = text.splitlines()[0] if text else type(exc).__name__
    return ResourceError(
        f"DuckDB ran out of memory{' while reading ' + where if where else ''} ({first}). Raise "
        "features.duckdb_memory_limit in params.yaml (e.g. '8GB'; it was too small for this export), "
        "or give DuckDB fewer threads (features.duckdb_threads)"
    )


def _checked_memory_limit(value: str) -> str:
    import re

    if not re.fullmatch(r"\d+(\.\d+)?\s*(KB|MB|GB|TB|KiB|MiB|GiB|TiB)", value.strip()):
        raise ContractError(f"duckdb_memory_limit {value!r} is not a size such as '8GB'")
    return value.strip()


def load_raw(
    con: duckdb.DuckDBPyConnection,
    source: Source,
    csv_format: CsvFormat | None = None,
    lazy: tuple[str, ...] = (),
) -> dict[str, list[str]]:
    """Create ``raw_<table>`` for each table found and return its columns.

    CSV columns are read as text (typing is the contract's job, never inference);
    Parquet columns keep their stored types. Tables keep file order, so a row's
    1-based data row number is ``rowid + 1`` (see :data:`ROW`). The tables named in *lazy*
    (the big child tables) become views over their UTF-8 CSV or Parquet file instead, so
    that validation reads each file once, straight into the typed table (a scan through
    the view keeps file order); errors in such a file surface while it is scanned, and
    :func:`scan_error` names them as for a table read here.
    """
    csv_format = csv_format or CsvFormat()
    columns: dict[str, list[str]] = {}
    for table, path in source.files.items():
        raw = f"raw_{table}"
        if table in lazy and (path.suffix != ".csv" or csv_format.is_utf8):
            if path.suffix == ".csv":
                header = read_header(path, csv_format, label=path.name)
                con.execute(f"CREATE OR REPLACE VIEW {raw} AS SELECT * FROM {_csv_scan(path, csv_format, header)}")
            else:
                read_parquet(con, raw, path, view=True)
        elif path.suffix == ".csv":
            read_csv(con, raw, path, csv_format)
        else:
            read_parquet(con, raw, path)
        columns[table] = [row[0] for row in con.execute(f"DESCRIBE {raw}").fetchall()]
    return columns


def is_view(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether *name* is a view (a lazy raw table) rather than a table."""
    return bool(fetch_row(con, "SELECT count(*) FROM duckdb_views() WHERE view_name = ? AND NOT internal", [name])[0])


def has_table(con: duckdb.DuckDBPyConnection, name: str) -> bool:
    """Whether table *name* exists (in any attached database)."""
    return bool(fetch_row(con, "SELECT count(*) FROM duckdb_tables() WHERE table_name = ?", [name])[0])


def drop_relation(con: duckdb.DuckDBPyConnection, name: str) -> None:
    """Drop table or view *name* if it exists."""
    con.execute(f"DROP {'VIEW' if is_view(con, name) else 'TABLE'} IF EXISTS {name}")


#: The C1 control characters in UTF-8: ``\xc2`` then ``\x80``-``\x9f``.
_C1_RE = re.compile(rb"\xc2[\x80-\x9f]")


def _bytes_hold_control(data: bytes | bytearray, n: int | None = None, scratch: np.ndarray | None = None) -> bool:
    """Whether the first *n* bytes of *data* (all by default) hold a control character
    (:data:`convert.sources.rules.CONTROL`) in UTF-8: C0 but tab and newline (0-8, 11-31), DEL
    (127), or a C1 character (two bytes).

    Three vectorised minimums instead of a byte-by-byte loop (2x faster on a 1.3 GB CSV
    file): bytes 0-8 are those at most 8; 11-31 those below 21 once 11 is subtracted (modulo
    256, tab and newline then become 254 and 255); DEL the one that XOR 127 makes 0.
    *scratch*: a uint8 buffer of at least *n* bytes to reuse."""
    n = len(data) if n is None else n
    if not n:
        return False
    raw = np.frombuffer(data, np.uint8, count=n)
    if raw.min() <= 0x08:
        return True
    work = np.empty(n, np.uint8) if scratch is None else scratch[:n]
    np.subtract(raw, 11, out=work)
    if work.min() < 21:
        return True
    np.bitwise_xor(raw, 0x7F, out=work)
    if work.min() == 0:
        return True
    return data.find(b"\xc2", 0, n) >= 0 and _C1_RE.search(data, 0, n) is not None


@dataclass(frozen=True)
class TextFacts:
    """What the bytes of a file's text values surely hold not (False: surely none; True: maybe)."""

    control: bool = True  #: a control character
    untrimmed: bool = True  #: an empty value, or one with a leading or trailing space
    #: the distinct event types of an events file, when read from its dictionaries (Parquet)
    event_types: tuple[str, ...] | None = None
    #: text columns whose values were not looked at (the facts say nothing of them)
    unread: tuple[str, ...] = ()


def text_facts(source: Source, table: str, skip: tuple[str, ...] = ()) -> TextFacts:
    """What *table*'s file may hold in its text values, found cheaply, so that validation may
    skip work on every row that would change nothing (a regular expression looking for control
    characters costs as much as reading the file; trimming copies every value).

    A UTF-8 CSV file is scanned as bytes for control characters: a value's bytes are the
    file's (quoting only removes quote characters), so a file with no control byte (a
    carriage return counts: CRLF line ends take the row-by-row check) has no value with one;
    whether values need trimming is not told from the bytes (maybe). A Parquet file's text
    columns are read as dictionaries (cheap when dictionary-encoded) and their values checked
    for both, except the columns in *skip* (a child file's lead key: validation checks it
    otherwise; reading a column that is not dictionary-encoded costs a hash of every value).
    Anything else (a database, another encoding) may hold either.
    """
    path = source.file(table)
    if path is None:
        return TextFacts()
    try:
        if path.suffix == ".csv":
            chunk, scratch = bytearray(16 * 2**20), np.empty(16 * 2**20, np.uint8)
            with open(path, "rb", buffering=0) as fh:
                last = 0  # the previous chunk's last byte: a C1 character may straddle chunks
                while n := fh.readinto(chunk):
                    if _bytes_hold_control(chunk, n, scratch) or (last == 0xC2 and 0x80 <= chunk[0] <= 0x9F):
                        return TextFacts()
                    last = chunk[n - 1]
            return TextFacts(control=False)
        return _parquet_text_facts(path, Events.event_type if table == Events.table else None, skip)
    except (OSError, ValueError, ImportError):
        return TextFacts()


def _parquet_text_facts(path: Path, distinct: str | None = None, skip: tuple[str, ...] = ()) -> TextFacts:
    """The facts from the values of the text columns' dictionaries; *distinct*: a text column
    whose distinct values are kept too (the event types, for the feature engine's ENUM);
    *skip*: text columns left unread."""
    import pyarrow as pa
    import pyarrow.compute as pc
    import pyarrow.parquet as pq

    schema = pq.read_schema(path)
    every = [f.name for f in schema if pa.types.is_string(f.type) or pa.types.is_large_string(f.type)]
    text = [name for name in every if name not in skip]
    unread = tuple(name for name in every if name in skip)
    if not text:
        return TextFacts(control=False, untrimmed=False, unread=unread)
    control = untrimmed = False
    found: set[str] | None = set() if distinct in text else None
    file = pq.ParquetFile(path, read_dictionary=text)
    for group in range(file.num_row_groups):  # one row group at a time: bounded memory
        read = file.read_row_group(group, columns=text)
        for name in text:
            for chunk in read.column(name).chunks:
                values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
                if found is not None and name == distinct:
                    found.update(v for v in pc.unique(values).to_pylist() if v is not None)
                data = values.buffers()[-1]
                control = control or (data is not None and _bytes_hold_control(data.to_pybytes()))
                untrimmed = untrimmed or len(values) > 0 and bool(pc.any(pc.or_(
                    pc.or_(pc.starts_with(values, " "), pc.ends_with(values, " ")), pc.equal(values, "")
                )).as_py())
                if control and untrimmed:
                    return TextFacts()
    return TextFacts(control=control, untrimmed=untrimmed, event_types=None if found is None else tuple(found),
                     unread=unread)


def scan_error(
    exc: duckdb.Error, source: Source, table: str, csv_format: CsvFormat | None = None
) -> BaseException:
    """The error of scanning ``raw_<table>`` (a lazy view over its file, :func:`load_raw`),
    named by file, row and column as when the file is read into a table; *exc* itself when
    the table is not a file's."""
    path = source.file(table)
    if path is None or isinstance(exc, (duckdb.BinderException, duckdb.CatalogException, duckdb.ParserException)):
        return exc  # not the file's fault
    if path.suffix == ".csv":
        fmt = csv_format or CsvFormat()
        return _csv_error(exc, path, path, fmt, read_header(path, fmt, label=path.name))
    return out_of_memory(exc, path.name) or ContractError(
        f"the file cannot be parsed: {str(exc).splitlines()[0]}. Check that it is valid Parquet",
        file=str(path),
    )


def read_parquet(con: duckdb.DuckDBPyConnection, raw: str, path: Path, view: bool = False) -> None:
    """Read a Parquet file into table *raw* (or make *raw* a view over it)."""
    try:
        con.execute(f"CREATE OR REPLACE {'VIEW' if view else 'TABLE'} {raw} AS SELECT * FROM read_parquet({lit(str(path))})")
    except duckdb.Error as exc:
        raise out_of_memory(exc, path.name) or ContractError(
            f"the file cannot be parsed: {str(exc).splitlines()[0]}. Check that it is valid Parquet",
            file=str(path),
        ) from exc


# --- CSV -------------------------------------------------------------------------------------


def read_csv(con: duckdb.DuckDBPyConnection, raw: str, path: Path, fmt: CsvFormat) -> list[str]:
    """Read a CSV file into table *raw*, every column as text, in file order.

    Raises
    ------
    ContractError
        Naming the file, the row and the column, when the file cannot be read as declared.
    """
    with _as_utf8(path, fmt) as utf8:
        header = read_header(utf8, fmt, label=path.name)
        try:
            con.execute(f"CREATE OR REPLACE TABLE {raw} AS SELECT * FROM {_csv_scan(utf8, fmt, header)}")
        except duckdb.Error as exc:
            raise _csv_error(exc, path, utf8, fmt, header) from exc
    return header


def _csv_scan(path: Path, fmt: CsvFormat, header: list[str]) -> str:
    """SQL: DuckDB's strict reader of a UTF-8 CSV file, every column as text."""
    columns = "{" + ", ".join(f"{lit(name)}: 'VARCHAR'" for name in header) + "}"
    return (
        f"read_csv({lit(str(path))}, header = true, auto_detect = false, columns = {columns}, "
        f"delim = {lit(fmt.delimiter)}, quote = {lit(fmt.quote)}, escape = {lit(fmt.quote)}, "
        "encoding = 'utf-8', null_padding = false, strict_mode = true)"
    )


@contextmanager
def _as_utf8(path: Path, fmt: CsvFormat) -> Iterator[Path]:
    """The file itself when UTF-8, else a temporary UTF-8 copy (decoded as declared) in this
    run's temporary folder."""
    if fmt.is_utf8:
        yield path
        return
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=".utf8.csv", dir=scratch.run_dir())
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="") as out, open(
            path, encoding=fmt.encoding, newline="", errors="strict"
        ) as src:
            try:
                while chunk := src.read(1 << 20):
                    out.write(chunk)
            except UnicodeDecodeError:
                raise _encoding_error(path, fmt) from None
        yield Path(tmp)
    finally:
        os.unlink(tmp)


def read_header(path: Path, fmt: CsvFormat, label: str) -> list[str]:
    """The header row's column names (white space trimmed; an empty name becomes ``column_N``).

    Raises
    ------
    ContractError
        For an empty file, a header naming a column twice, or a one-column header that
        looks separated by another character than the declared one.
    """
    try:
        with open(path, encoding="utf-8-sig", newline="") as f:
            first_line = f.readline()
            f.seek(0)  # the decoder restarts, dropping the BOM again
            reader = csv.reader(f, delimiter=fmt.delimiter, quotechar=fmt.quote, strict=True)
            header = next(reader)
    except StopIteration:
        raise ContractError("the file is empty: a header row is expected", file=label) from None
    except UnicodeDecodeError:
        raise _encoding_error(path, fmt, label) from None
    except csv.Error as exc:
        _check_separator(first_line, fmt, label)
        raise ContractError(
            f"the header row cannot be parsed ({exc}); check the quoting and the separator",
            file=label,
        ) from None
    names = [h.strip() or f"column_{i + 1}" for i, h in enumerate(header)]
    if len(names) == 1:
        _check_separator(first_line, fmt, label)
    seen: dict[str, int] = {}
    for i, name in enumerate(names):
        if name in seen:
            raise ContractError(
                f"the header row names this column twice (columns {seen[name] + 1} and {i + 1}); "
                "each column needs its own name: rename or remove one in the export",
                file=label,
                column=name,
            )
        seen[name] = i
    return names


def _check_separator(first_line: str, fmt: CsvFormat, label: str) -> None:
    """Refuse a header that is plainly separated by another character than the declared one."""
    counts = {d: first_line.count(d) for d in ",;\t|"}
    guess = max(counts, key=lambda d: counts[d])
    if guess != fmt.delimiter and counts[guess] > counts.get(fmt.delimiter, first_line.count(fmt.delimiter)):
        shown = "\\t" if guess == "\t" else guess
        raise ContractError(
            f"the header row {first_line.strip()[:60]!r} looks separated by {shown!r}, not "
            f"{fmt.delimiter!r}. Set csv: {{delimiter: '{shown}'}} in a mapping file (--mapping)",
            file=label,
            column=first_line.strip()[:60],
        )


_LINE_RE = re.compile(r"Line:\s*(\d+)")
_COUNT_RE = re.compile(r"Expected Number of Columns:\s*(\d+)\s*Found:\s*(\d+)")


def _csv_error(
    exc: Exception, path: Path, utf8: Path, fmt: CsvFormat, header: list[str]
) -> ContractError | ResourceError:
    """A DuckDB CSV error as a ContractError naming file, row and column."""
    memory = out_of_memory(exc, path.name)
    if memory is not None:
        return memory
    text = str(exc)
    if "unicode" in text.lower() or "utf-8" in text.lower() or "utf8" in text.lower():
        return _encoding_error(utf8, fmt, path.name)
    line = _LINE_RE.search(text)
    row = int(line.group(1)) - 1 if line else None
    where = f" (line {line.group(1)} of the file)" if line else ""
    count = _COUNT_RE.search(text)
    if count:
        expected, found = int(count.group(1)), int(count.group(2))
        column = header[found] if found < expected else f"(field {found} after {header[-1]!r})"
        return ContractError(
            f"this row has {found} fields, the header {expected}{where}. Quote values that contain "
            f"the separator {fmt.delimiter!r}, or check the separator (csv.delimiter in a mapping file)",
            file=path.name, row=row, column=column,
        )
    if "unterminated quote" in text:
        return ContractError(
            f"a value opens a quote {fmt.quote!r} that is never closed{where}. Close or escape it "
            f"(a quote inside a value is written twice: {fmt.quote * 2})",
            file=path.name, row=row, column=_unterminated_field(text, fmt, header),
        )
    first = text.splitlines()[0] if text else type(exc).__name__
    return ContractError(
        f"the file cannot be parsed{where}: {first}. Check that it is a CSV file with a header row, "
        f"separated by {fmt.delimiter!r} (csv section of a mapping file)",
        file=path.name, row=row,
    )


def _unterminated_field(message: str, fmt: CsvFormat, header: list[str]) -> str | None:
    """The column whose value opens the quote that never closes, from DuckDB's 'Original Line'."""
    m = re.search(r"Original Line:\s*(.*)", message)
    if not m:
        return None
    line, field_index, quoted, start = m.group(1), 0, False, True
    opened = None
    i = 0
    while i < len(line):
        ch = line[i]
        if quoted:
            if ch == fmt.quote:
                if i + 1 < len(line) and line[i + 1] == fmt.quote:
                    i += 1
                else:
                    quoted = False
        elif ch == fmt.quote and start:
            quoted, opened = True, field_index
        elif ch == fmt.delimiter:
            field_index += 1
            start = True
            i += 1
            continue
        start = False
        i += 1
    index = opened if opened is not None else field_index
    return header[index] if index < len(header) else None


def _encoding_error(path: Path, fmt: CsvFormat, label: str | None = None) -> ContractError:
    """Where the first byte that does not decode is: file, row and column."""
    label = label or path.name
    with open(path, "rb") as f:
        start = f.read(4)
    if fmt.is_utf8 and start[:2] in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        return ContractError(
            "the file is UTF-16 (it starts with a UTF-16 byte order mark), not UTF-8: save it as "
            "UTF-8, or set csv: {encoding: utf-16} in a mapping file (--mapping)",
            file=label,
        )
    offset, bad = _first_undecodable(path, fmt.encoding)
    with open(path, "rb") as f:
        data = f.read(offset + 1) if offset is not None else b""
    line_start = data.rfind(b"\n", 0, offset) + 1 if offset is not None else 0
    line_no = data.count(b"\n", 0, offset) + 1 if offset is not None else None
    column = None
    if offset is not None:
        prefix = data[line_start:offset].decode(fmt.encoding, errors="replace")
        try:
            fields = next(csv.reader([prefix], delimiter=fmt.delimiter, quotechar=fmt.quote))
            index = max(0, len(fields) - 1)
        except (csv.Error, StopIteration):
            index = prefix.count(fmt.delimiter)
        try:
            with open(path, encoding=fmt.encoding, errors="replace", newline="") as f:
                names = next(csv.reader(f, delimiter=fmt.delimiter, quotechar=fmt.quote))
            column = names[index].strip().lstrip("\ufeff") if index < len(names) else None
        except (csv.Error, StopIteration, OSError):
            column = None
    byte = f"byte 0x{bad:02X}" if bad is not None else "a byte"
    hint = (
        "the file looks cp1252/latin-1 encoded (Excel on Windows): save it as UTF-8, or set "
        "csv: {encoding: cp1252} in a mapping file (--mapping)"
        if fmt.is_utf8
        else f"check csv.encoding ({fmt.encoding}) in the mapping file"
    )
    return ContractError(
        f"{byte} is not valid {fmt.encoding}" + (f" (line {line_no} of the file)" if line_no else "")
        + f"; {hint}",
        file=label,
        row=(line_no - 1) if line_no and line_no > 1 else None,
        column=column,
    )


def _first_undecodable(path: Path, encoding: str) -> tuple[int | None, int | None]:
    """Byte offset and value of the first byte *encoding* cannot decode."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            try:
                decoder.decode(chunk)
            except UnicodeDecodeError as exc:
                pending = len(exc.object) - len(chunk)  # bytes carried over from the last chunk
                at = offset - pending + exc.start
                return at, exc.object[exc.start]
            offset += len(chunk)
    try:
        decoder.decode(b"", final=True)
    except UnicodeDecodeError:
        return max(0, offset - 1), None
    return None, None


def read_frame(path: Path, fmt: CsvFormat, con: duckdb.DuckDBPyConnection) -> list[str]:
    """Read a flat file (CSV or Parquet) into table ``raw_flat``; return its columns."""
    if path.suffix.lower() == ".parquet":
        read_parquet(con, "raw_flat", path)
    elif path.suffix.lower() in (".csv", ".txt", ".tsv"):
        read_csv(con, "raw_flat", path, fmt)
    else:
        raise ContractError(
            f"{path.name} is neither .csv nor .parquet; a flat table is one CSV or Parquet file",
            file=str(path),
        )
    return [row[0] for row in con.execute("DESCRIBE raw_flat").fetchall()]


# --- databases -------------------------------------------------------------------------------


def database_url(url: str) -> str:
    """The SQLAlchemy URL to connect with: ``postgresql://`` and ``postgres://`` are driven by
    psycopg 3 (SQLAlchemy would pick psycopg2, which convert does not install)."""
    try:
        return engine_url(url).render_as_string(hide_password=False)
    except ValueError as exc:
        raise ConfigError(f"--data {exc}") from None


def find_database_source(url: str, mapping: Mapping | None = None) -> Source:
    """The contract's tables (or the ones the mapping names) in a database; the required
    ``leads`` must exist."""
    import sqlalchemy as sa

    mapping = mapping or Mapping()
    engine = _engine(url)
    tables: dict[str, str] = {}
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            for table in CONTRACT_TABLES:
                name = mapping.source_name(table) or table
                schema, bare = split_table_name(name)
                if inspector.has_table(bare, schema=schema):
                    tables[table] = name
                elif mapping.source_name(table) or table in REQUIRED_TABLES:
                    raise ContractError(
                        f"the database has no table {name!r} for the {table} table"
                        + ("" if mapping.source_name(table) else
                           f" (name it in a mapping file: tables.{table}.source)"),
                        file=redact_url(url),
                    )
    except sa.exc.SQLAlchemyError as exc:
        raise _database_error(exc, url) from None
    finally:
        engine.dispose()
    return Source(root=Path("."), tables=tables, url=url)


def _engine(url: str):  # type: ignore[no-untyped-def]
    import sqlalchemy as sa

    try:
        return sa.create_engine(database_url(url))
    except (sa.exc.ArgumentError, sa.exc.NoSuchModuleError, ImportError) as exc:
        raise ConfigError(
            f"--data {redact_url(url)!r}: no SQLAlchemy driver for this URL ({exc}); convert "
            "reads sqlite:/// and postgresql:// URLs"
        ) from None


def _database_error(exc: Exception, url: str) -> ContractError:
    reason = scrub(str(getattr(exc, "orig", None) or exc).splitlines()[0], secrets_of(url))
    return ContractError(f"cannot read the database: {reason}", file=redact_url(url))


def load_database(
    con: duckdb.DuckDBPyConnection, source: Source, chunk_rows: int = 100_000
) -> dict[str, list[str]]:
    """Copy each table of a database source into ``raw_<table>`` as text, chunk by chunk.

    Rows are read in primary-key order when the table has a primary key, else in the order
    the database returns them (for a table that was never updated, usually the order of
    insertion); a row's data row number counts from 1 in that order, as for a file.
    """
    import sqlalchemy as sa

    assert source.url is not None
    engine = _engine(source.url)
    columns: dict[str, list[str]] = {}
    try:
        with engine.connect() as conn:
            inspector = sa.inspect(conn)
            quote = engine.dialect.identifier_preparer.quote
            for table, name in source.tables.items():
                schema, bare = split_table_name(name)
                names = [c["name"] for c in inspector.get_columns(bare, schema=schema)]
                relation = (f"{quote(schema)}." if schema else "") + quote(bare)
                sql = f"SELECT {', '.join(quote(n) for n in names)} FROM {relation}"
                key = (inspector.get_pk_constraint(bare, schema=schema) or {}).get("constrained_columns") or []
                if key:  # a reproducible order (and so reproducible row numbers in the rejects)
                    sql += " ORDER BY " + ", ".join(quote(k) for k in key)
                raw = f"raw_{table}"
                con.execute(
                    f"CREATE OR REPLACE TABLE {raw} ("
                    + ", ".join(f'"{n.replace(chr(34), chr(34) * 2)}" VARCHAR' for n in names)
                    + ")"
                )
                result = conn.execution_options(stream_results=True, max_row_buffer=chunk_rows).exec_driver_sql(sql)
                for rows in result.partitions(chunk_rows):
                    chunk = _text_table(names, rows)
                    con.register("_db_chunk", chunk)
                    try:
                        con.execute(f"INSERT INTO {raw} SELECT * FROM _db_chunk")
                    finally:
                        con.unregister("_db_chunk")
                columns[table] = names
    except sa.exc.SQLAlchemyError as exc:
        raise _database_error(exc, source.url) from None
    finally:
        engine.dispose()
    return columns


def _text_table(names: list[str], rows: list[Any]) -> pa.Table:
    """Rows from a database as an Arrow table of text columns (NULL stays NULL)."""
    import pyarrow as pa

    arrays = [_text_array([r[i] for r in rows]) for i in range(len(names))]
    return pa.Table.from_arrays(arrays, names=[f"c{i}" for i in range(len(names))])


def _text_array(values: list[Any]) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    try:
        arr = pa.array(values)
        if pa.types.is_string(arr.type) or pa.types.is_large_string(arr.type):
            return arr.cast(pa.string())
        if pa.types.is_null(arr.type):
            return pa.nulls(len(values), pa.string())
        if not (pa.types.is_binary(arr.type) or pa.types.is_duration(arr.type)):
            return pc.cast(arr, pa.string())
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError):
        pass
    return pa.array([None if v is None else _as_text(v) for v in values], type=pa.string())


def _as_text(value: Any) -> str:
    if isinstance(value, (bytes, bytearray, memoryview)):
        return bytes(value).decode("utf-8", errors="replace")
    if hasattr(value, "isoformat"):
        return str(value.isoformat())
    return str(value)


