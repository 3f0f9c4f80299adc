"""Benchmark of the write-back to PostgreSQL: convert's write_scores against plain loads.

    python bench/writeback.py [--rows 1000000] [--url postgresql://postgres@127.0.0.1:5432/test]

Measures, on the same N seeded rows in ScoreOutput shape (shuffled, realistic text):

1. ``write_scores`` into empty tables (one transaction: binary COPY into the run's table,
   its key built after loading, the table made the current rows and a part of the history:
   see ``convert.io.writers.postgres``), then again as an update run over the existing
   tables (next as_of, 5% of the leads left, 5% new, history kept);
2. a plain psycopg ``executemany`` INSERT into a plain table (no key), on the first
   ``--executemany-rows`` rows only (row by row is slow), extrapolated to rows/s;
3. a raw ``COPY ... FROM STDIN`` (CSV encoded by Arrow) into an empty plain table.

Prints rows/s and the ratio to raw COPY, and the phases of each write_scores run. The
targets (issue 16) are an update run >= 0.5x and a first run >= 0.6x the raw COPY, measured
in the same run. The tables (``wbh_*`` names unless ``--prefix``) are dropped at the end.

Wall-clock rates depend on what else runs on the machine, so the CPU seconds of the
client (this process) and of the server (the PostgreSQL backends, read from /proc when the
server is local) are printed too, with the rows/s they would allow on idle cores: at best
rows / max(server, client) (client encoding overlaps the server's work), at worst
rows / (server + client).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import threading
import time
import uuid
from dataclasses import dataclass
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from _common import emit  # noqa: E402
from convert.io.writers import write_scores  # noqa: E402
from convert.schema import ScoreOutput  # noqa: E402

DEFAULT_URL = os.environ.get("CONVERT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
#: issue 16's targets: ratios to the raw COPY of the same rows, measured in the same run
UPDATE_VS_COPY, FIRST_VS_COPY = 0.5, 0.6

REASONS = np.array(
    [
        "Visited the pricing page 4 times in the last 30 days",
        "Works at a software company with 200-1000 employees",
        "Requested a demo 12 days ago",
        "Opened 9 marketing emails in the last 90 days",
        "Attended the webinar 'Scaling your pipeline'",
        "Director-level job title",
        "",
        None,
    ],
    dtype=object,
)
RISKS = np.array(
    [
        "No activity in the last 45 days",
        "Unsubscribed from emails",
        "Company has fewer than 10 employees",
        "Student email address",
        None,
        None,
    ],
    dtype=object,
)


def make_rows(ids: np.ndarray, as_of: str, seed: int, version: str) -> pd.DataFrame:
    """Seeded ScoreOutput rows for lead numbers *ids*, in random order."""
    rng = np.random.default_rng(seed)
    n = len(ids)
    order = rng.permutation(n)
    ids = ids[order]
    probability = rng.beta(0.6, 6.0, n)
    score = np.clip(np.round(probability * 100), 0, 100).astype("int64")
    fit = rng.integers(-10, 30, n)
    base = np.full(n, 4)
    stamp = pd.Timestamp(as_of)
    frame = pd.DataFrame(
        {
            "lead_id": pd.Series(ids).map("00Q{:012d}".format),
            "as_of": stamp,
            "probability": probability,
            "score": score,
            "grade": np.select([score >= 50, score >= 25, score >= 10], ["A", "B", "C"], "D"),
            "base_score": base,
            "fit_points": fit,
            "engagement_points": score - base - fit,
            **{r: REASONS[rng.integers(0, len(REASONS), n)] for r in ScoreOutput.REASONS},
            **{r: RISKS[rng.integers(0, len(RISKS), n)] for r in ScoreOutput.RISKS},
            "action": np.select(
                [score >= 40, score <= 2], ["route_to_sales", "review_disqualify"], "nurture"
            ),
            "model_version": version,
            "scored_at": stamp + pd.Timedelta(hours=2, minutes=17),
        }
    )
    return frame[ScoreOutput.names()]


class PhaseLog(logging.Handler):
    """Collects the DEBUG phase timings of convert.io.writers."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        message = record.getMessage()
        if message.startswith("writeback: "):
            self.lines.append(message.removeprefix("writeback: "))


def plain_table_sql(name: str) -> str:
    types = {
        "string": "TEXT",
        "timestamp": "TIMESTAMP",
        "number": "DOUBLE PRECISION",
        "integer": "INTEGER",
    }
    columns = ", ".join(f'"{c.name}" {types[c.dtype]}' for c in ScoreOutput.columns())
    return f'CREATE TABLE "{name}" ({columns})'


def _backend_cpu(pid: int) -> float | None:
    """CPU seconds (user + system) of a local process, None when it cannot be read."""
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii") as handle:
            fields = handle.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return None


class ServerCpu:
    """CPU seconds the PostgreSQL backends of a measurement used (local server only).

    Watches the backend *pid* (its growth), and every backend whose application_name is
    *application* (sampled every 50 ms from pg_stat_activity; a backend started for the
    measurement counts whole, up to its last sample).
    """

    def __init__(self, monitor_url: str, *, pid: int | None = None, application: str = "") -> None:
        self.monitor_url, self.pid, self.application = monitor_url, pid, application
        self.last: dict[int, float] = {}
        self.start = 0.0
        self.ok = True
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _watch(self) -> None:
        import psycopg

        with psycopg.connect(self.monitor_url, autocommit=True) as conn:
            while not self._stop.is_set():
                rows = conn.execute(
                    "SELECT pid FROM pg_stat_activity WHERE application_name = %s",
                    (self.application,),
                ).fetchall()
                for (pid,) in rows:
                    cpu = _backend_cpu(pid)
                    if cpu is not None:
                        self.last[pid] = cpu
                self._stop.wait(0.05)

    def __enter__(self) -> ServerCpu:
        if self.pid is not None:
            first = _backend_cpu(self.pid)
            self.ok = first is not None
            self.start = first or 0.0
        if self.application:
            self._thread = threading.Thread(target=self._watch, daemon=True)
            self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        if self.pid is not None:
            end = _backend_cpu(self.pid)
            self.ok = self.ok and end is not None
            self.last[self.pid] = (end or 0.0) - self.start

    @property
    def seconds(self) -> float | None:
        return sum(self.last.values()) if self.ok and self.last else None


@dataclass
class Result:
    label: str
    rows: int
    seconds: float
    client_cpu: float
    server_cpu: float | None
    note: str = ""


def checkpoint(conn: Any, enabled: bool) -> None:
    """Start each measurement without a pending checkpoint (needs pg_checkpoint or superuser)."""
    if not enabled:
        return
    try:
        conn.execute("CHECKPOINT")
    except Exception as exc:  # not allowed: measure without it
        print(f"  (CHECKPOINT not allowed: {type(exc).__name__}; measuring without it)")
        conn.rollback()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--url", default=DEFAULT_URL)
    parser.add_argument("--executemany-rows", type=int, default=100_000)
    parser.add_argument("--chunk-rows", type=int, default=100_000)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument(
        "--no-checkpoint", action="store_true", help="do not CHECKPOINT between runs"
    )
    parser.add_argument("--keep", action="store_true", help="keep the benchmark tables")
    parser.add_argument("--prefix", default="wbh", help="prefix of the benchmark's table names")
    args = parser.parse_args(argv)

    import psycopg
    import pyarrow as pa
    import pyarrow.csv as pa_csv
    from sqlalchemy.engine import make_url

    url = make_url(args.url)
    plain_url = url.set(drivername="postgresql").render_as_string(hide_password=False)
    shown = url.render_as_string(hide_password=True)
    n = args.rows
    suffix = uuid.uuid4().hex[:8]
    ours, em_table, copy_table = (f"{args.prefix}_{kind}_{suffix}" for kind in ("wb", "em", "copy"))

    phases = PhaseLog()
    log = logging.getLogger("convert.io.writers")
    log.addHandler(phases)
    log.setLevel(logging.DEBUG)

    print(f"write-back benchmark: {n:,} rows, PostgreSQL at {shown}")
    load_start = os.getloadavg()[0]
    print(f"machine: {os.cpu_count()} CPUs, load average {load_start:.1f} at start")
    started_all = time.perf_counter()
    t = time.perf_counter()
    first = make_rows(np.arange(n), "2025-01-31", args.seed, "7")
    keep = np.arange(n)[np.random.default_rng(args.seed + 1).random(n) >= 0.05]
    new = np.arange(n, n + (n - len(keep)))
    second = make_rows(np.concatenate([keep, new]), "2025-02-28", args.seed + 2, "7")
    print(f"generated the rows in {time.perf_counter() - t:.1f} s\n")

    results: list[Result] = []
    with psycopg.connect(plain_url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()
        print(f"server: PostgreSQL {server[0] if server else '?'}")
        own_pid = conn.execute("SELECT pg_backend_pid()").fetchone()
        pid = int(own_pid[0]) if own_pid else 0
        local = url.host in (None, "", "localhost", "127.0.0.1", "::1") and (
            _backend_cpu(pid) is not None
        )
        if not local:
            print("(server CPU not measured: the server is not local or /proc is not readable)")
        try:
            # (1) convert's write-back: empty tables, then an update run.
            for label, frame in (
                ("write_scores, empty tables", first),
                ("write_scores, update run", second),
            ):
                checkpoint(conn, not args.no_checkpoint)
                phases.lines.clear()
                cpu = time.process_time()
                with ServerCpu(plain_url, application="convert-writeback") as backend:
                    summary = write_scores(frame, args.url, ours, chunk_rows=args.chunk_rows)
                results.append(
                    Result(
                        label,
                        len(frame),
                        summary.seconds,
                        time.process_time() - cpu,
                        backend.seconds if local else None,
                    )
                )
                print(f"{label}: {summary}")
                for line in phases.lines:
                    print(f"    {line}")

            # (2) executemany INSERT, row by row (psycopg batches it in pipeline mode).
            m = min(args.executemany_rows, n)
            conn.execute(plain_table_sql(em_table))
            columns = ", ".join(f'"{c}"' for c in ScoreOutput.names())
            marks = ", ".join(["%s"] * len(ScoreOutput.names()))
            insert = f'INSERT INTO "{em_table}" ({columns}) VALUES ({marks})'  # noqa: S608
            subset = first.iloc[:m].astype(object).where(first.iloc[:m].notna(), None)
            rows = [
                tuple(v.to_pydatetime() if isinstance(v, pd.Timestamp) else v for v in row)
                for row in subset.itertuples(index=False, name=None)
            ]
            checkpoint(conn, not args.no_checkpoint)
            t, cpu = time.perf_counter(), time.process_time()
            with ServerCpu(plain_url, pid=pid) as backend:
                with conn.transaction(), conn.cursor() as cursor:
                    cursor.executemany(insert, rows)
            seconds = time.perf_counter() - t
            note = f"measured on {m:,} rows, extrapolated" if m < n else ""
            results.append(
                Result(
                    "executemany INSERT (plain table)",
                    m,
                    seconds,
                    time.process_time() - cpu,
                    backend.seconds if local else None,
                    note,
                )
            )
            print(f"executemany INSERT: {m:,} rows in {seconds:.1f} s")

            # (3) raw COPY of the same rows (Arrow CSV) into an empty plain table.
            conn.execute(plain_table_sql(copy_table))
            checkpoint(conn, not args.no_checkpoint)
            t, cpu = time.perf_counter(), time.process_time()
            with ServerCpu(plain_url, pid=pid) as backend:
                arrow = pa.Table.from_pandas(first, preserve_index=False)
                options = pa_csv.WriteOptions(include_header=False)
                with conn.transaction(), conn.cursor() as cursor:
                    statement = f'COPY "{copy_table}" ({columns}) FROM STDIN WITH (FORMAT csv)'
                    with cursor.copy(statement) as copy:
                        for start in range(0, n, args.chunk_rows):
                            buffer = io.BytesIO()
                            pa_csv.write_csv(arrow.slice(start, args.chunk_rows), buffer, options)
                            copy.write(buffer.getvalue())
            seconds = time.perf_counter() - t
            results.append(
                Result(
                    "raw COPY (plain table, no key)",
                    n,
                    seconds,
                    time.process_time() - cpu,
                    backend.seconds if local else None,
                )
            )
            print(f"raw COPY: {n:,} rows in {seconds:.1f} s")
        finally:
            if not args.keep:
                for table in (ours, f"{ours}_history", em_table, copy_table):
                    conn.execute(f'DROP TABLE IF EXISTS "{table}" CASCADE')

    copy_rate = results[-1].rows / results[-1].seconds
    print(
        f"\n{'method':<34} {'rows':>9} {'wall s':>7} {'rows/s':>8} {'vs COPY':>7} "
        f"{'srv cpu':>7} {'cli cpu':>7}  rows/s on idle cores (CPU-bound)"
    )
    for r in results:
        rate = r.rows / r.seconds
        server_cpu = f"{r.server_cpu:7.1f}" if r.server_cpu is not None else "    n/a"
        idle = ""
        if r.server_cpu:
            best = r.rows / max(r.server_cpu, r.client_cpu)
            worst = r.rows / (r.server_cpu + r.client_cpu)
            idle = f"  {worst:,.0f}-{best:,.0f}"
        print(
            f"{r.label:<34} {r.rows:>9,} {r.seconds:>7.1f} {rate:>8,.0f} {rate / copy_rate:>6.2f}x "
            f"{server_cpu} {r.client_cpu:7.1f}{idle}" + (f"  ({r.note})" if r.note else "")
        )
    first_rate, update_rate = (r.rows / r.seconds for r in results[:2])
    for label, rate, target in (
        ("first run", first_rate, FIRST_VS_COPY),
        ("update run", update_rate, UPDATE_VS_COPY),
    ):
        verdict = "meets" if rate / copy_rate >= target else "misses"
        print(
            f"write_scores {label}: {rate / copy_rate:.2f}x raw COPY: {verdict} the target of "
            f"{target}x at {n:,} rows"
        )
    load_end = os.getloadavg()[0]
    print(
        f"load average {load_end:.1f} at the end (on {os.cpu_count()} CPUs); "
        f"total {time.perf_counter() - started_all:.0f} s"
    )
    emit({
        "bench": "writeback", "rows": n, "first_rows_per_s": first_rate,
        "update_rows_per_s": update_rate, "copy_rows_per_s": copy_rate,
        "first_vs_copy": first_rate / copy_rate, "update_vs_copy": update_rate / copy_rate,
        "load_start": load_start, "load_end": load_end,
    })
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
