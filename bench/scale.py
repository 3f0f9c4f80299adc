"""Growth curve: load, features, score and score+explain at 10M, 30M and 100M events.

DuckDB engine on generated Parquet exports (``convert.simulator.crm``). A model is trained once on
a small export of the same simulator, then each size is loaded (contract validation), its
scoring population's features are materialized in DuckDB, and the features are streamed in
``scoring.chunk_size`` batches through score-only and score+explain. Each step prints its
wall time, CPU time and peak RSS, so that growth and the memory bound are visible.

    python bench/scale.py                       # 10M, 30M, 100M events (long)
    python bench/scale.py --events 10000000     # one size
    python bench/scale.py --quick               # 1M events, smoke test
"""

from __future__ import annotations

import argparse
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
from convert.model.bundle import score_from_probability  # noqa: E402
from convert.scoring.score import score_frame  # noqa: E402
from convert.simulator.crm import generate_crm  # noqa: E402

EVENTS_PER_LEAD = 30.5
AS_OF = pd.Timestamp("2026-01-01")


def run_size(events: int, workdir: Path, model: convert.LeadScoringModel, config: Config) -> list[dict]:
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

    def score_explain() -> int:
        n = 0
        at = pd.Timestamp("2026-01-01 06:00")
        for batch in batches():
            n += len(score_frame(model, batch, config.scoring, "bench/1", at))
        return n

    phases.run("score only (streamed)", score_only)
    phases.run("score + explain (streamed)", score_explain)
    data.close()
    rows = []
    for r in phases.rows:
        rows.append({"events": n_events, "population": population, **r})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--events", type=int, nargs="*", default=[10_000_000, 30_000_000, 100_000_000])
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument("--quick", action="store_true")
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
        rows += run_size(events, workdir, model, config)
    table = pd.DataFrame(rows)
    table["events/s"] = (table["events"] / table["seconds"]).round(0)
    table["peak RSS GiB"] = table["peak_rss"].map(gib)
    print("\n" + table[["events", "population", "phase", "seconds", "cpu", "events/s", "peak RSS GiB"]]
          .to_string(index=False, float_format=lambda v: f"{v:,.1f}"))
    worst = table["peak_rss"].max()
    print(f"\npeak RSS over all steps: {worst / GIB:.2f} GiB (bound: 24 GiB): "
          f"{'PASS' if worst < 24 * GIB else 'FAIL'}")
    steps = table[table["phase"] != "generate (Parquet)"]
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
