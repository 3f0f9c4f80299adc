"""Benchmark: events -> point-in-time feature table, against a minimal DuckDB query and pandas.

Default mode (issue acceptance: 20M events / 200k leads, one as-of time; ours within 1.2x (issue 16) of
the minimal DuckDB query). Generates a synthetic CRM as Parquet
(``convert.simulator.crm.generate_crm``) into ``--workdir`` (a temporary folder by default, removed
at the end unless ``--keep``), then, in one process:

1. **minimal DuckDB**: its own connection, no validation, no catalog, straight from the Parquet
   file, long format (no pivot): ``count(*)`` per (lead_id, event_type) of the events before
   the as-of time, and the same per-type counts our features hold (over the 7, 30 and 90 days
   before the as-of time and in all, as ``FILTER`` counts).
2. **ours**: ``convert.load`` (read + contract validation + the compact indexed copies that
   feature queries read; timed once), then ``build_labels(con, [t], 90)`` and
   ``build_features`` (population at *t*, every feature of the catalog, into pandas).
3. After the load and one untimed run of each side, ``--repeat`` rounds (5) each run both
   minimal queries and then ours, so both sides of a round's ratio see the same machine; the verdict is the **median of the paired
   ratios** (ours / the minimal query with the same per-type counts), as ``bench/train.py``
   does. The ratio to the plain count is printed beside it, and a table of best times.
   ``--time-ordered`` stores the loaded events in time order first (the simulator writes each
   lead's events together; many real logs are in time order).
4. For information: the plain count on the loaded ``events`` table, and **pandas**:
   ``events.parquet`` read with pyarrow (not timed), then ``occurred_at < t`` and
   ``groupby([lead_id, event_type]).size()``.

events/s is always (events dated before t) / seconds, the same numerator for every row, so a
ratio of rates is a ratio of times. The acceptance shape is 20M events over 200k leads (about 100
events a lead): the default generates 200,000 leads with ``--activity 4.4`` (the simulator's
engagement multiplier; at 1.0 it writes about 30 events a lead). The actual counts are printed.

Scale mode (``--scale``): 12 monthly as-of times over ``--events`` (100M) events, Parquet,
generated. Times ``convert.load``, ``build_labels`` for the 12 as-of times, and
``materialize_features`` (results stay in DuckDB) and reports wall time and peak RSS per phase
(target: under 24 GiB). DuckDB's ``memory_limit`` comes from ``FeaturesConfig.duckdb_memory_limit``
(8GB by default; ``--memory-limit`` overrides it).

    python bench/features.py                  # ~20M events, one as-of
    python bench/features.py --quick          # ~600k events smoke run
    python bench/features.py --scale --workdir /tmp/convert-100m --keep
    python bench/features.py --scale --quick  # 12 as-ofs over ~1M events

Peak RSS: ``VmHWM`` of ``/proc/self/status`` (reset per phase through ``/proc/self/clear_refs``
where the kernel allows it) and ``getrusage`` max RSS for the whole run. Results are appended as
JSON lines to ``bench/out/features.jsonl``.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pandas as pd
import pyarrow.parquet as pq

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import convert  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))

from _common import emit  # noqa: E402
from convert.config import Config  # noqa: E402
from convert.features.engine import _register_population, build_features, materialize_features  # noqa: E402
from convert.features.labels import as_of_grid, build_labels  # noqa: E402
from convert.simulator.crm import generate_crm  # noqa: E402

OUT = ROOT / "bench" / "out"
EVENTS_PER_LEAD = 30.5  # measured: generate_crm(n_leads=20_000, seed=42) writes 611,002 events
TARGET_RATIO = 1.2  # issue 16: labels + features <= 1.2x the minimal query with the same windows
TARGET_RSS_GIB = 24.0
GIB = 2**30


# --- memory: the helpers shared by the benchmarks ------------------------------------------------

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import peak_rss, reset_peak, rss, rusage_peak  # noqa: E402


class Phases:
    """Time and peak RSS of each named phase."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.resettable = reset_peak()

    def run(self, name: str, fn: Callable[[], Any]) -> Any:
        gc.collect()
        self.resettable = reset_peak() and self.resettable
        start_rss = rss()
        t0 = time.perf_counter()
        out = fn()
        seconds = time.perf_counter() - t0
        self.rows.append(
            {"phase": name, "seconds": seconds, "peak_rss": peak_rss(), "start_rss": start_rss}
        )
        print(f"  {name:<54} {seconds:>9.2f} s   peak RSS {peak_rss() / GIB:6.2f} GiB", flush=True)
        return out

    def timed(self, name: str, fn: Callable[[], Any]) -> float:
        """:meth:`run`, returning the seconds."""
        self.run(name, fn)
        return float(self.rows[-1]["seconds"])

    def run_peak(self) -> int:
        """Peak RSS of the whole run (clear_refs also resets getrusage's max RSS)."""
        return max([rusage_peak(), peak_rss()] + [r["peak_rss"] for r in self.rows])


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


# --- data --------------------------------------------------------------------------------------


def ensure_data(workdir: Path, n_leads: int, seed: int, activity: float = 1.0) -> dict[str, Any]:
    """Generate the Parquet CRM unless ``workdir`` already holds one made with these arguments."""
    marker = workdir / "bench-generate.json"
    want = {"n_leads": n_leads, "seed": seed, "fmt": "parquet", "bad_rows": False, "activity": activity}
    if marker.exists():
        have = json.loads(marker.read_text())
        if {k: have.get(k, 1.0 if k == "activity" else None) for k in want} == want:
            print(f"reusing {workdir} ({have['rows']['events']:,} events)", flush=True)
            return have
    workdir.mkdir(parents=True, exist_ok=True)
    print(f"generating {n_leads:,} leads into {workdir} ...", flush=True)
    summary = generate_crm(workdir, n_leads, seed, fmt="parquet", bad_rows=False, activity=activity)
    info = {**want, "rows": summary.rows, "seconds": summary.seconds}
    marker.write_text(json.dumps(info))
    print(f"  generated {summary.rows['events']:,} events in {summary.seconds:.0f} s", flush=True)
    return info


def config_for(args: argparse.Namespace) -> Config:
    cfg = Config()
    if args.memory_limit:
        cfg = cfg.with_overrides(features__duckdb_memory_limit=args.memory_limit)
    if args.threads:
        cfg = cfg.with_overrides(features__duckdb_threads=args.threads)
    return cfg


def quiet(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("SET enable_progress_bar = false")


# --- default mode ------------------------------------------------------------------------------


def minimal_query(events: str, t: pd.Timestamp, windows: tuple[int, ...] = ()) -> str:
    ts = f"TIMESTAMPTZ '{t.isoformat()}+00:00'"
    cols = ["count(*) AS n_total"] + [
        f"count(*) FILTER (WHERE occurred_at >= {ts} - INTERVAL {w} DAY) AS n_{w}d" for w in windows
    ]
    return (
        f"SELECT lead_id, event_type, {', '.join(cols)} FROM {events} "
        f"WHERE occurred_at < {ts} GROUP BY lead_id, event_type"
    )


def run_default(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    info = ensure_data(workdir, args.leads, args.seed, args.activity)
    events_file = workdir / "events.parquet"
    t = pd.Timestamp(args.as_of)
    cfg = config_for(args)
    ph = Phases()
    src = "read_parquet('" + str(events_file).replace("'", "''") + "')"

    # 1. the minimal queries read the Parquet file through a connection of their own
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    quiet(con)
    if args.threads:
        con.execute(f"SET threads = {int(args.threads)}")
    n_before = con.execute(
        f"SELECT count(*) FROM {src} WHERE occurred_at < TIMESTAMPTZ '{t.isoformat()}+00:00'"
    ).fetchone()[0]
    n_total = info["rows"]["events"]
    print(
        f"{n_total:,} events, {info['rows']['leads']:,} leads; {n_before:,} events before "
        f"{t:%Y-%m-%d} (as-of); DuckDB {duckdb.__version__}, threads "
        f"{con.execute('SELECT current_setting(' + repr('threads') + ')').fetchone()[0]}",
        flush=True,
    )
    con.execute(f"CREATE OR REPLACE TEMP TABLE m AS {minimal_query(src, t)}")  # warm-up, untimed
    n_groups = con.execute("SELECT count(*) FROM m").fetchone()[0]

    # 2-3. ours: load once, then rounds alternating with the minimal queries, so that
    # both sides of each ratio see the same machine (a busy or idle spell hits both)
    data = ph.run("ours: convert.load (read + validate)", lambda: convert.load(workdir, cfg))
    quiet(data.con)
    if args.time_ordered:  # what the feature build reads: the indexed copy, now in time order
        data.con.execute("CREATE OR REPLACE TABLE _events_indexed AS SELECT * FROM _events_indexed ORDER BY occurred_at")
    # warm-up, outside the ratio, printed: the first feature query of a load that did not fill
    # the cache also builds the per-day activity (engine.index_active_days)
    ph.run(
        "ours: first build_features (warm-up)",
        lambda: build_features(data.con, build_labels(data.con, [t], 90), cfg.features),
    )
    rounds: list[dict[str, float]] = []
    for _ in range(args.repeat):
        r = {
            "count": ph.timed(
                "minimal DuckDB: count per (lead, type) [parquet]",
                lambda: con.execute(f"CREATE OR REPLACE TEMP TABLE m AS {minimal_query(src, t)}"),
            ),
            "windows": ph.timed(
                "minimal DuckDB + 7/30/90d windows [parquet]",
                lambda: con.execute(
                    f"CREATE OR REPLACE TEMP TABLE mw AS {minimal_query(src, t, (7, 30, 90))}"
                ),
            ),
        }
        pop = ph.run("ours: build_labels(con, [t], 90)", lambda: build_labels(data.con, [t], 90))
        r["labels"] = ph.rows[-1]["seconds"]
        fs = ph.run(
            "ours: build_features (population, all features)",
            lambda pop=pop: build_features(data.con, pop, cfg.features),
        )
        r["ours"] = r["labels"] + ph.rows[-1]["seconds"]
        rounds.append(r)
    con.close()
    shape = fs.frame.shape
    ph.run(
        "minimal DuckDB: count per (lead, type) [loaded table]",
        lambda: data.con.execute(
            f"CREATE OR REPLACE TEMP TABLE m AS {minimal_query('events', t).replace('TIMESTAMPTZ', 'TIMESTAMP').replace('+00:00', '')}"
        ),
    )
    data.close()
    fs = data = None  # noqa: F841  (free before the pandas part)
    gc.collect()

    # 4. pandas
    read_t0 = time.perf_counter()
    frame = pq.read_table(events_file, columns=["lead_id", "event_type", "occurred_at"]).to_pandas()
    read_s = time.perf_counter() - read_t0
    t_utc = t.tz_localize("UTC")
    for _ in range(args.repeat):
        sizes = ph.run(
            "pandas: filter + groupby([lead, type]).size()",
            lambda: frame[frame["occurred_at"] < t_utc]
            .groupby(["lead_id", "event_type"], sort=False, observed=True)
            .size(),
        )
    dtypes = {c: str(frame[c].dtype) for c in frame.columns}
    pandas_groups = len(sizes)
    frame = sizes = None  # noqa: F841
    gc.collect()

    # table
    s = {r["phase"]: r for r in ph.rows}  # last repeat wins; use the best of the repeats below
    best = {}
    for r in ph.rows:
        best[r["phase"]] = min(best.get(r["phase"], float("inf")), r["seconds"])
    t_min = best["minimal DuckDB: count per (lead, type) [parquet]"]
    t_load = best["ours: convert.load (read + validate)"]
    t_lab = best["ours: build_labels(con, [t], 90)"]
    t_feat = best["ours: build_features (population, all features)"]
    ours = t_lab + t_feat
    print()
    print(
        f"events before as-of: {n_before:,} of {n_total:,}; population at {t:%Y-%m-%d}: {len(pop):,} "
        f"leads; feature table {shape[0]:,} x {shape[1]}; minimal groups {n_groups:,}, pandas groups "
        f"{pandas_groups:,}"
    )
    print(f"pandas read (not timed): {read_s:.1f} s; dtypes {dtypes}")
    header = f"{'step':<52} {'seconds':>9} {'events/s':>13} {'vs minimal':>11} {'peak RSS GiB':>13}"
    print(header)
    print("-" * len(header))
    lines = [(name, best[name], s[name]["peak_rss"]) for name in best]
    lines.insert(
        lines.index(next(x for x in lines if x[0].startswith("ours: build_features"))) + 1,
        ("ours: labels + features (without load)", ours, None),
    )
    lines.insert(
        lines.index(next(x for x in lines if x[0].startswith("ours: labels +"))) + 1,
        ("ours: load + labels + features", t_load + ours, None),
    )
    for name, sec, peak in lines:
        rate = n_before / sec
        peak_s = gib(peak) if peak is not None else ""
        print(f"{name:<52} {sec:>9.2f} {rate:>13,.0f} {sec / t_min:>10.2f}x {peak_s:>13}")
    paired_count = statistics.median(r["ours"] / r["count"] for r in rounds)
    paired_windows = statistics.median(r["ours"] / r["windows"] for r in rounds)
    ratio_load = (t_load + ours) / t_min
    verdict = "PASS" if paired_windows <= TARGET_RATIO else "FAIL"
    if args.quick:
        verdict += " (smoke size: the target is for 20M events)"
    print()
    print("rounds (labels + features vs the minimal queries run just before):")
    for k, r in enumerate(rounds, 1):
        print(
            f"  {k}: ours {r['ours']:.2f} s, count {r['count']:.2f} s ({r['ours'] / r['count']:.2f}x), "
            f"windows {r['windows']:.2f} s ({r['ours'] / r['windows']:.2f}x)"
        )
    print(
        f"ours / minimal DuckDB, median of {len(rounds)} paired rounds: {paired_windows:.2f}x against "
        f"the query computing the same per-type counts (7/30/90 days and all time; target <= "
        f"{TARGET_RATIO}x): {verdict}; {paired_count:.2f}x against the plain per-type count; "
        f"{ratio_load:.2f}x with load (best times)"
    )
    print(
        f"pandas / minimal DuckDB: {best['pandas: filter + groupby([lead, type]).size()'] / t_min:.2f}x; "
        f"whole-run peak RSS {gib(ph.run_peak())} GiB"
        + ("" if ph.resettable else " (per-phase peaks are cumulative: clear_refs not allowed)")
        + f"; load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores"
    )
    return {
        "mode": "default", "time_ordered": args.time_ordered, "events": n_total, "events_before": n_before, "leads": info["rows"]["leads"],
        "population": len(pop), "as_of": str(t), "phases": ph.rows, "best": best, "rounds": rounds,
        "ratio_vs_windows": paired_windows, "ratio_vs_count": paired_count, "ratio_with_load": ratio_load,
        "pass": paired_windows <= TARGET_RATIO, "peak_rss_run": ph.run_peak(),
    }


# --- scale mode --------------------------------------------------------------------------------


def run_scale(args: argparse.Namespace, workdir: Path) -> dict[str, Any]:
    n_leads = args.leads or max(1000, round(args.events / (EVENTS_PER_LEAD * args.activity)))
    info = ensure_data(workdir, n_leads, args.seed, args.activity)
    cfg = config_for(args)
    ph = Phases()
    print(
        f"{info['rows']['events']:,} events, {info['rows']['leads']:,} leads; DuckDB memory_limit "
        f"{cfg.features.duckdb_memory_limit}, threads {cfg.features.duckdb_threads or 'default'}",
        flush=True,
    )
    data = ph.run("convert.load (read + validate)", lambda: convert.load(workdir, cfg))
    quiet(data.con)
    end = data.latest_timestamp().normalize() + pd.Timedelta(days=1)
    grid = as_of_grid(data.earliest_created(), end, cfg.labels.horizon_days, "monthly")[-args.as_ofs:]
    print(f"  as-of times: {grid[0]:%Y-%m-%d} .. {grid[-1]:%Y-%m-%d} ({len(grid)})", flush=True)
    labels = ph.run(
        f"build_labels ({len(grid)} as-of times)",
        lambda: build_labels(data.con, grid, cfg.labels.horizon_days),
    )
    n_rows = len(labels)

    def register() -> None:
        _register_population(data.con, labels)

    ph.run("population -> DuckDB (_population)", register)
    labels = None  # noqa: F841
    gc.collect()
    table, catalog, _ = ph.run(
        "materialize_features (stays in DuckDB)", lambda: materialize_features(data.con, cfg.features)
    )
    n_feat = data.con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]
    spill = data.con.execute(
        "SELECT coalesce(sum(size), 0) FROM duckdb_temporary_files()"
    ).fetchone()[0]
    data.close()
    total = sum(r["seconds"] for r in ph.rows)
    peak = ph.run_peak()
    print()
    print(
        f"{info['rows']['events']:,} events, {info['rows']['leads']:,} leads, {len(grid)} as-of times, "
        f"{n_rows:,} snapshot rows, {n_feat:,} x {len(catalog)} features; DuckDB spill at end "
        f"{gib(spill)} GiB"
    )
    header = f"{'phase':<44} {'seconds':>9} {'peak RSS GiB':>13}"
    print(header)
    print("-" * len(header))
    for r in ph.rows:
        print(f"{r['phase']:<44} {r['seconds']:>9.1f} {gib(r['peak_rss']):>13}")
    print(f"{'total (load + labels + features)':<44} {total:>9.1f} {gib(peak):>13}")
    verdict = "PASS" if peak < TARGET_RSS_GIB * GIB else "FAIL"
    print(f"\npeak RSS {gib(peak)} GiB (target < {TARGET_RSS_GIB:.0f} GiB): {verdict}; load average "
          f"now {' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")
    return {
        "mode": "scale", "events": info["rows"]["events"], "leads": info["rows"]["leads"],
        "as_ofs": [str(g) for g in grid], "rows": n_rows, "features": len(catalog),
        "phases": ph.rows, "total_seconds": total, "peak_rss": peak, "pass": verdict == "PASS",
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--leads", type=int, default=None,
        help="leads to simulate (default 200000, with --activity 4.4 ~20M events; scale mode: "
        "--events / (30.5 x activity))",
    )
    parser.add_argument(
        "--activity", type=float, default=None,
        help="simulator engagement multiplier (default 4.4: ~100 events a lead; scale mode 1.0)",
    )
    parser.add_argument("--as-of", default="2026-01-01", help="the one as-of time (default mode)")
    parser.add_argument("--scale", action="store_true", help="12 monthly as-ofs over --events")
    parser.add_argument(
        "--time-ordered", action="store_true",
        help="default mode: store the loaded events in time order, as many real logs are, "
        "instead of the simulator's order (each lead's events together)",
    )
    parser.add_argument("--events", type=int, default=100_000_000, help="scale mode: events")
    parser.add_argument("--as-ofs", type=int, default=12, help="scale mode: monthly as-of times")
    parser.add_argument("--quick", action="store_true", help="smoke size (~600k events)")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument(
        "--repeat", type=int, default=5,
        help="rounds of (minimal queries, ours) after the load (default 5)",
    )
    parser.add_argument("--memory-limit", default=None, help="DuckDB memory_limit, e.g. 8GB")
    parser.add_argument("--threads", type=int, default=None, help="DuckDB threads (default: all)")
    parser.add_argument("--workdir", type=Path, default=None, help="data folder (kept)")
    parser.add_argument("--keep", action="store_true", help="keep the temporary data folder")
    args = parser.parse_args()
    if args.activity is None:
        args.activity = 1.0 if args.scale else 4.4
    if args.quick:
        args.leads = args.leads or (20_000 if args.scale else 6_000)
        args.events = min(args.events, 1_000_000)
    if not args.scale and args.leads is None:
        args.leads = 200_000

    tmp = None
    workdir = args.workdir
    if workdir is None:
        tmp = Path(tempfile.mkdtemp(prefix="convert-bench-features-"))
        workdir = tmp
    print(f"bench/features.py {'scale' if args.scale else 'default'} mode; {os.cpu_count()} cores; "
          f"data in {workdir}", flush=True)
    try:
        result = run_scale(args, workdir) if args.scale else run_default(args, workdir)
    finally:
        if tmp is not None and not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "features.jsonl", "a") as fh:
        fh.write(json.dumps({"time": time.time(), "args": vars(args) | {"workdir": str(workdir)},
                             **result}, default=str) + "\n")
    figures = {"bench": "features", "mode": result.get("mode"), "events": result.get("events"),
               "time_ordered": bool(result.get("time_ordered"))}
    if result.get("mode") == "default":
        figures |= {"ratio_same_windows": result["ratio_vs_windows"], "ratio_count": result["ratio_vs_count"],
                    "ratio_with_load": result["ratio_with_load"]}
    else:
        figures["total_s"] = result["total_seconds"]
    figures["peak_rss_gib"] = result.get("peak_rss_run", result.get("peak_rss", 0)) / 2**30
    emit(figures)


if __name__ == "__main__":
    main()
