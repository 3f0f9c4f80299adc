"""Growth curve of the nightly path at 10M, 30M and 100M events: load, features, score +
explain + reasons, write-back to PostgreSQL.

DuckDB engine on generated Parquet exports (``convert.simulator.crm``). A model is trained once on
a small export of the same simulator, then each size is loaded (contract validation, the cache
of validated tables written as a nightly run does), its scoring population's features are
materialized in DuckDB, the features are streamed in ``scoring.chunk_size`` batches through
score-only (for reference, not in the total) and score + explain + reasons, and the scores are
written to PostgreSQL (``--pg-url``, empty tables, dropped afterwards). Each step prints its
wall time, CPU time and peak RSS; the last line's ``total_s`` is the nightly path's time
(issue 16: at most 10 minutes at 100M events, peak RSS at most 16 GiB).

    python bench/scale.py                       # 10M, 30M, 100M events (long)
    python bench/scale.py --events 10000000     # one size
    python bench/scale.py --quick               # 1M events, smoke test
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))

import convert  # noqa: E402
from _common import GIB, Phases, emit, gib  # noqa: E402
from convert.config import Config  # noqa: E402
from convert.features.engine import iter_feature_batches, materialize_features  # noqa: E402
from convert.features.labels import population_sql, register_as_ofs  # noqa: E402
from convert.io.writers import engine_url, write_scores  # noqa: E402
from convert.model.bundle import score_from_probability  # noqa: E402
from convert.scoring.score import score_frame  # noqa: E402
from convert.simulator.crm import generate_crm  # noqa: E402
from convert.sql import quote  # noqa: E402

EVENTS_PER_LEAD = 30.5
AS_OF = pd.Timestamp("2026-01-01")


def run_size(events: int, workdir: Path, model: convert.LeadScoringModel, config: Config,
             pg_url: str | None) -> list[dict]:
    leads = int(events / EVENTS_PER_LEAD)
    folder = workdir / f"crm-{events}"
    phases = Phases()
    print(f"\n{events:,} events target, {leads:,} leads -> {folder}", flush=True)
    if not (folder / "leads.parquet").exists():
        phases.run("generate (Parquet)", lambda: generate_crm(folder, n_leads=leads, seed=7, fmt="parquet"))
    data = phases.run("load + validate", lambda: convert.load(folder, config))
    n_events = data.report.tables["events"].rows_loaded
    con = data.con

    def features() -> int:
        grid = register_as_ofs(con, [AS_OF], name="_scale_grid")
        con.execute(f"CREATE OR REPLACE TEMP TABLE _scale_population AS {population_sql(grid)}")
        materialize_features(con, model.features_config(config.features), model.spec_.event_types,
                             population="_scale_population", name="_scale_features")
        return int(con.execute("SELECT count(*) FROM _scale_features").fetchall()[0][0])

    population = phases.run("features (population at as-of)", features)

    def batches():  # type: ignore[no-untyped-def]
        return iter_feature_batches(con, "_scale_features", model.catalog_, config.scoring.chunk_size)

    def score_only() -> int:
        n = 0
        for batch in batches():
            p = model.predict_proba(batch)[:, 1]
            model.grades(score_from_probability(p))
            n += len(batch)
        return n

    def score_explain() -> pd.DataFrame:
        at = pd.Timestamp("2026-01-01 06:00")
        return pd.concat([score_frame(model, batch, config.scoring, "bench/1", at) for batch in batches()],
                         ignore_index=True)

    phases.run("score only (streamed; not in the total)", score_only)
    scores = phases.run("score + explain + reasons (streamed)", score_explain)
    data.close()
    if pg_url:
        table = f"scale_scores_{events}"
        phases.run("write-back to PostgreSQL (empty tables)",
                   lambda s=scores: write_scores(s, pg_url, table, allow_empty=True))
        _drop(pg_url, table)
    del scores
    rows = []
    for r in phases.rows:
        rows.append({"events": n_events, "population": population, **r})
    return rows


def _drop(url: str, table: str) -> None:
    """The benchmark's score tables removed (they hold millions of rows)."""
    import sqlalchemy as sa

    engine = sa.create_engine(engine_url(url))
    with engine.begin() as conn:
        for name in (table, f"{table}_history"):
            conn.execute(sa.text(f"DROP TABLE IF EXISTS {quote(name)} CASCADE"))
    engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="*", default=[10_000_000, 30_000_000, 100_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--pg-url", default=os.environ.get("CONVERT_TEST_PG_URL", "postgresql://postgres@127.0.0.1:5432/test"),
                        help="PostgreSQL for the write-back step ('' to skip it)")
    args = parser.parse_args()
    sizes = [1_000_000] if args.quick else args.events
    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="convert-scale-"))
    config = Config()
    print(f"DuckDB memory_limit {config.features.duckdb_memory_limit}; chunk {config.scoring.chunk_size:,} rows",
          flush=True)
    small = workdir / "train-20k"
    if not (small / "leads.parquet").exists():
        generate_crm(small, n_leads=20_000, seed=42, fmt="parquet")
    data = convert.load(small, config)
    model = convert.train(data, config).model
    data.close()
    rows = []
    for events in sizes:
        rows += run_size(events, workdir, model, config, args.pg_url or None)
    table = pd.DataFrame(rows)
    table["events/s"] = (table["events"] / table["seconds"]).round(0)
    table["peak RSS GiB"] = table["peak_rss"].map(gib)
    print("\n" + table[["events", "population", "phase", "seconds", "cpu", "events/s", "peak RSS GiB"]]
          .to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    worst = table["peak_rss"].max()
    print(f"\npeak RSS over all steps: {worst / GIB:.2f} GiB (issue 16: at most 16 GiB): "
          f"{'PASS' if worst <= 16 * GIB else 'FAIL'}")
    # the nightly path: load, features, score + explain + reasons, write-back (not generation, not score only)
    steps = table[~table["phase"].isin(["generate (Parquet)", "score only (streamed; not in the total)"])]
    emit({
        "bench": "scale",
        "sizes": [
            {"events": int(events), "total_s": float(part["seconds"].sum()),
             "peak_rss_gib": float(part["peak_rss"].max()) / GIB,
             "steps": {r["phase"]: {"seconds": r["seconds"], "events_per_s": r["events/s"]}
                       for r in part.to_dict("records")}}
            for events, part in steps.groupby("events", sort=True)
        ],
        "total_s": float(steps["seconds"].sum()),
        "peak_rss_gib": float(worst) / GIB,
    })



if __name__ == "__main__":
    main()
