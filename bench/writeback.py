"""Benchmark of the write-back to PostgreSQL: convert's write_scores against plain loads.

    python bench/writeback.py [--rows 1000000] [--url postgresql://postgres@127.0.0.1:5432/test]

Measures, on the same N seeded rows in ScoreOutput shape (shuffled, realistic text):

1. ``write_scores`` into empty tables (stage with COPY, then one transaction: upsert into
   the current table + history), then again as an update run over the existing tables
   (next as_of, 5% of the leads left, 5% new);
2. a plain psycopg ``executemany`` INSERT into a plain table (no key), on the first
   ``--executemany-rows`` rows only (row by row is slow), extrapolated to rows/s;
3. a raw ``COPY ... FROM STDIN`` (CSV encoded by Arrow) into an empty plain table.

Prints rows/s and the ratio to raw COPY, and the phases of each write_scores run. The
target is >= 50k rows/s for write_scores at 1M rows. The tables are dropped at the end.
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import sys
import time
import uuid
from typing import Any

import numpy as np
import pandas as pd

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "src"))

from convert.schema import ScoreOutput  # noqa: E402
from convert.writeback import write_scores  # noqa: E402

DEFAULT_URL = os.environ.get("CONVERT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test")
TARGET_ROWS_PER_S = 50_000

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
    """Collects the DEBUG phase timings of convert.writeback."""

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
    ours, em_table, copy_table = f"bench_wb_{suffix}", f"bench_em_{suffix}", f"bench_copy_{suffix}"

    phases = PhaseLog()
    log = logging.getLogger("convert.writeback")
    log.addHandler(phases)
    log.setLevel(logging.DEBUG)

    print(f"write-back benchmark: {n:,} rows, PostgreSQL at {shown}")
    print(f"machine: {os.cpu_count()} CPUs, load average {os.getloadavg()[0]:.1f} at start")
    started_all = time.perf_counter()
    t = time.perf_counter()
    first = make_rows(np.arange(n), "2025-01-31", args.seed, "7")
    keep = np.arange(n)[np.random.default_rng(args.seed + 1).random(n) >= 0.05]
    new = np.arange(n, n + (n - len(keep)))
    second = make_rows(np.concatenate([keep, new]), "2025-02-28", args.seed + 2, "7")
    print(f"generated the rows in {time.perf_counter() - t:.1f} s\n")

    results: list[tuple[str, int, float, str]] = []
    with psycopg.connect(plain_url, autocommit=True) as conn:
        server = conn.execute("SHOW server_version").fetchone()
        print(f"server: PostgreSQL {server[0] if server else '?'}")
        try:
            # (1) convert's write-back: empty tables, then an update run.
            for label, frame in (
                ("write_scores, empty tables", first),
                ("write_scores, update run", second),
            ):
                checkpoint(conn, not args.no_checkpoint)
                phases.lines.clear()
                summary = write_scores(frame, args.url, ours, chunk_rows=args.chunk_rows)
                results.append((label, len(frame), summary.seconds, ""))
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
            t = time.perf_counter()
            with conn.transaction(), conn.cursor() as cursor:
                cursor.executemany(insert, rows)
            seconds = time.perf_counter() - t
            note = f"measured on {m:,} rows, extrapolated" if m < n else ""
            results.append(("executemany INSERT (plain table)", m, seconds, note))
            print(f"executemany INSERT: {m:,} rows in {seconds:.1f} s")

            # (3) raw COPY of the same rows (Arrow CSV) into an empty plain table.
            conn.execute(plain_table_sql(copy_table))
            checkpoint(conn, not args.no_checkpoint)
            t = time.perf_counter()
            arrow = pa.Table.from_pandas(first, preserve_index=False)
            options = pa_csv.WriteOptions(include_header=False)
            with conn.transaction(), conn.cursor() as cursor:
                with cursor.copy(
                    f'COPY "{copy_table}" ({columns}) FROM STDIN WITH (FORMAT csv)'
                ) as copy:
                    for start in range(0, n, args.chunk_rows):
                        buffer = io.BytesIO()
                        pa_csv.write_csv(arrow.slice(start, args.chunk_rows), buffer, options)
                        copy.write(buffer.getvalue())
            seconds = time.perf_counter() - t
            results.append(("raw COPY (plain table, no key)", n, seconds, ""))
            print(f"raw COPY: {n:,} rows in {seconds:.1f} s")
        finally:
            if not args.keep:
                for table in (ours, f"{ours}_history", em_table, copy_table):
                    conn.execute(f'DROP TABLE IF EXISTS "{table}"')

    copy_rate = results[-1][1] / results[-1][2]
    print(f"\n{'method':<36} {'rows':>10} {'seconds':>8} {'rows/s':>10} {'vs COPY':>8}")
    for label, rows_done, seconds, note in results:
        rate = rows_done / seconds
        line = (
            f"{label:<36} {rows_done:>10,} {seconds:>8.1f} {rate:>10,.0f} {rate / copy_rate:>7.2f}x"
        )
        print(line + (f"  ({note})" if note else ""))
    ours_rates = [r[1] / r[2] for r in results[:2]]
    verdict = "meets" if min(ours_rates) >= TARGET_ROWS_PER_S else "misses"
    print(
        f"\nwrite_scores: {min(ours_rates):,.0f}-{max(ours_rates):,.0f} rows/s: {verdict} the "
        f"target of {TARGET_ROWS_PER_S:,} rows/s at {n:,} rows"
    )
    print(
        f"load average {os.getloadavg()[0]:.1f} at the end; "
        f"total {time.perf_counter() - started_all:.0f} s"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
