"""Benchmark of loading an export: ``convert.load`` against a plain DuckDB import of the same files.

    python bench/load.py                         # ~20M events (200,000 leads, --activity 4.4)
    python bench/load.py --events 2000000        # smaller
    python bench/load.py --workdir /tmp/crm20m   # generate once, reuse on later runs

For each format (CSV and Parquet, the same rows; the CSV files are written from the Parquet
ones by DuckDB) the same run measures:

* **plain import**: a fresh DuckDB connection (same memory limit and threads as convert's)
  runs ``CREATE TABLE t AS SELECT * FROM read_csv(file)`` / ``read_parquet(file)`` for every
  file of the export: what reading the files costs with no contract at all;
* **ours**: ``convert.load(folder)`` (read, map, validate by the contract, write the typed and
  indexed tables), with the cache of validated tables bypassed when convert has one;
* **cached** (when convert has the cache): a first load that fills the cache, then a second
  load of the unchanged export.

Plain and ours alternate for ``--repeat`` rounds and the best time of each counts, so that a
busy spell of the shared machine hits both. Targets (issue 16): ours <= 2x plain, for CSV and
Parquet; second load <= 0.1x the first. The last line is one JSON object with ``ratio_csv``,
``ratio_parquet`` and ``ratio_cached`` (bench/_common.py's ``emit``).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convert  # noqa: E402
from _common import Phases, emit, gib  # noqa: E402
from convert.config import Config  # noqa: E402
from convert.simulator.crm import generate_crm  # noqa: E402
from convert.sources.readers import connect  # noqa: E402

EVENTS_PER_LEAD = 30.5  # generate_crm at activity 1.0
TARGET_RATIO = 2.0
TARGET_CACHED = 0.1


def _lit(value: str) -> str:
    return "'" + value.replace("'", "''") + "'"


def ensure_data(workdir: Path, n_leads: int, seed: int, activity: float) -> dict[str, Any]:
    """Parquet export in ``workdir/parquet`` and the same rows as CSV in ``workdir/csv``
    (reused when a marker says they were made with these arguments)."""
    marker = workdir / "bench-load.json"
    want = {"n_leads": n_leads, "seed": seed, "activity": activity}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k) for k in want} == want:
            print(f"reusing {workdir} ({have['rows'].get('events', 0):,} events)", flush=True)
            return have
    pq_dir, csv_dir = workdir / "parquet", workdir / "csv"
    for d in (pq_dir, csv_dir):
        shutil.rmtree(d, ignore_errors=True)
    print(f"generating {n_leads:,} leads into {pq_dir} ...", flush=True)
    summary = generate_crm(pq_dir, n_leads, seed, fmt="parquet", bad_rows=False, activity=activity)
    csv_dir.mkdir(parents=True)
    con = connect()
    for f in sorted(pq_dir.glob("*.parquet")):
        out = csv_dir / (f.stem + ".csv")
        con.execute(f"COPY (SELECT * FROM read_parquet({_lit(str(f))})) TO {_lit(str(out))} (HEADER, DELIMITER ',')")
    con.close()
    info = {**want, "rows": summary.rows}
    marker.write_text(json.dumps(info))
    return info


def plain_import(folder: Path, config: Config) -> int:
    """Every file of *folder* read into a DuckDB table with no contract: the baseline."""
    con = connect(config.features)
    rows = 0
    try:
        for f in sorted(folder.iterdir()):
            reader = {".csv": "read_csv", ".parquet": "read_parquet"}.get(f.suffix)
            if reader is None:
                continue
            con.execute(f"CREATE TABLE {f.stem} AS SELECT * FROM {reader}({_lit(str(f))})")
            rows += int(con.execute(f"SELECT count(*) FROM {f.stem}").fetchall()[0][0])
    finally:
        con.close()
    return rows


def has_cache(config: Config) -> bool:
    return hasattr(config.data, "cache_dir")


def ours(folder: Path, config: Config, cache: bool) -> int:
    kwargs: dict[str, Any] = {"cache": cache} if has_cache(config) else {}
    data = convert.load(folder, config, **kwargs)
    try:
        return sum(t.rows_read for t in data.report.tables.values())
    finally:
        data.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, default=20_000_000, help="events to simulate (about)")
    parser.add_argument("--leads", type=int, default=None, help="leads (default: --events / (30.5 x activity))")
    parser.add_argument("--activity", type=float, default=4.4, help="simulator engagement multiplier")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--repeat", type=int, default=2, help="rounds of (plain, ours) per format")
    parser.add_argument("--formats", nargs="+", default=["csv", "parquet"], choices=["csv", "parquet"])
    parser.add_argument("--workdir", type=Path, default=None, help="data folder (kept and reused)")
    args = parser.parse_args()
    n_leads = args.leads or max(1000, round(args.events / (EVENTS_PER_LEAD * args.activity)))

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="convert-bench-load-"))
        workdir = tmp
    config = Config()
    figures: dict[str, Any] = {"bench": "load"}
    try:
        info = ensure_data(workdir, n_leads, args.seed, args.activity)
        figures |= {"events": info["rows"].get("events"), "leads": info["rows"].get("leads")}
        print(f"bench/load.py: {info['rows']}; {os.cpu_count()} cores; DuckDB memory_limit "
              f"{config.features.duckdb_memory_limit}", flush=True)
        ph = Phases()
        for fmt in args.formats:
            folder = workdir / ("csv" if fmt == "csv" else "parquet")
            runs: dict[str, Callable[[], Any]] = {
                f"plain DuckDB import [{fmt}]": lambda folder=folder: plain_import(folder, config),
                f"convert.load, no cache [{fmt}]": lambda folder=folder: ours(folder, config, False),
            }
            for _ in range(args.repeat):
                for name, fn in runs.items():
                    ph.run(name, fn)
            ratio = ph.best(f"convert.load, no cache [{fmt}]") / ph.best(f"plain DuckDB import [{fmt}]")
            figures[f"ratio_{fmt}"] = ratio
            figures[f"plain_{fmt}_s"] = ph.best(f"plain DuckDB import [{fmt}]")
            figures[f"ours_{fmt}_s"] = ph.best(f"convert.load, no cache [{fmt}]")
            print(f"  -> {fmt}: convert.load / plain import = {ratio:.2f}x (target <= {TARGET_RATIO}x): "
                  f"{'PASS' if ratio <= TARGET_RATIO else 'FAIL'}", flush=True)
            if has_cache(config):
                cache_dir = workdir / f"cache-{fmt}"
                shutil.rmtree(cache_dir, ignore_errors=True)
                cached_cfg = config.with_overrides(data__cache_dir=str(cache_dir))
                first = ph.run(f"convert.load, cache filled [{fmt}]", lambda f=folder, c=cached_cfg: ours(f, c, True))
                second = ph.run(f"convert.load, from the cache [{fmt}]", lambda f=folder, c=cached_cfg: ours(f, c, True))
                assert first == second, (first, second)
                r = ph.best(f"convert.load, from the cache [{fmt}]") / ph.best(f"convert.load, cache filled [{fmt}]")
                figures[f"ratio_cached_{fmt}"] = r
                print(f"  -> {fmt}: second load / first = {r:.3f}x (target <= {TARGET_CACHED}x)", flush=True)
        cached = [figures[k] for k in figures if k.startswith("ratio_cached_")]
        figures["ratio_cached"] = max(cached) if cached else None
        figures["peak_rss_gib"] = ph.run_peak() / 2**30
        print(f"whole-run peak RSS {gib(ph.run_peak())} GiB; load average now "
              f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}", flush=True)
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    figures["time"] = time.time()
    emit(figures)


if __name__ == "__main__":
    main()
