"""Benchmark: allocate 100,000 scored leads to 200 reps with territories and rep effects.

Issue acceptance: 100,000 leads x 200 reps allocated in <= 30 s on a 2-core machine, beside the
greedy baseline's expected conversions; the last printed line is JSON with ``seconds`` and
``vs_greedy`` (this allocation's expected conversions / greedy-by-score's, same leads, reps and
effects).

The instance is seeded: probabilities Beta(1, 6) (a routed population's shape), 20 countries x
4 lead sources x 6 employee bands; each rep covers one to three countries (some also a single
lead source), capacity 20-80 (total about 10 % of the leads, so capacity binds), 5 % of reps
inactive, a few with ``max_open`` and sticky leads (10 % of the leads already owned). Rep effects
per (rep, segment) are log-normal (sd 0.3), as :func:`convert.scoring.allocate.estimate_effects` would
give them. The clock covers :func:`convert.scoring.allocate.allocate` (eligibility, pairs, the solver,
reasons, ranks, baselines); round-robin and greedy run inside it too.

    python bench/allocate.py                 # 100,000 leads x 200 reps
    python bench/allocate.py --leads 5000 --reps 40
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convert.scoring.allocate import Lead, RepEffects, allocate, employee_band_labels, parse_reps  # noqa: E402

SOURCES = ["web_form", "referral", "paid_search", "webinar"]


def instance(n: int, n_reps: int, seed: int) -> tuple[pd.DataFrame, pd.DataFrame, RepEffects]:
    rng = np.random.default_rng(seed)
    countries = [f"C{i:02d}" for i in range(20)]
    bands = employee_band_labels([10, 50, 200, 1000, 5000])
    reps = [f"R{i:03d}" for i in range(n_reps)]
    covered = ["|".join(rng.choice(countries, int(rng.integers(1, 4)), replace=False)) for _ in reps]
    source = [str(rng.choice(SOURCES)) if rng.random() < 0.2 else "" for _ in reps]
    reps_frame = pd.DataFrame({
        "rep_id": reps,
        "capacity": rng.integers(20, 81, n_reps) * n // 100_000 + 1,
        "max_open": [str(int(rng.integers(40, 200))) if rng.random() < 0.2 else "" for _ in reps],
        "active": np.where(rng.random(n_reps) < 0.05, "false", "true"),
        "country": covered,
        "lead_source": source,
    })
    owned = rng.random(n) < 0.10
    leads = pd.DataFrame({
        Lead.lead_id: [f"L{i:07d}" for i in range(n)],
        Lead.probability: rng.beta(1, 6, n),
        Lead.candidate: True,
        Lead.skip_reason: "",
        Lead.owner: np.where(owned, rng.choice(reps, n), None),
        Lead.owner_source: "owned in the CRM",
        "country": rng.choice(countries, n),
        "lead_source": rng.choice(SOURCES, n),
        "employee_band": rng.choice(bands, n),
    })
    segments = [f"lead_source={s}, employee_band={b}" for s in SOURCES for b in bands]
    grid = pd.MultiIndex.from_product([reps, segments], names=["rep_id", "segment"]).to_frame(index=False)
    effect = np.exp(rng.normal(0, 0.3, len(grid)))
    table = grid.assign(leads=50, observed=effect * 5, expected=5.0, effect=effect,
                        low=effect * 0.6, high=effect * 1.5)
    return leads, reps_frame, RepEffects(table, 11.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--leads", "--rows", type=int, default=100_000)
    parser.add_argument("--reps", type=int, default=200)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--balance", type=float, default=None, help="also spread expected conversions (share of the mean)")
    args = parser.parse_args()
    leads, reps_frame, effects = instance(args.leads, args.reps, args.seed)
    reps = parse_reps(reps_frame)
    started = time.perf_counter()
    result = allocate(leads, reps, effects=effects, balance=args.balance)
    seconds = time.perf_counter() - started
    c = result.comparison
    a = result.assignments
    assigned = int(a["rep_id"].notna().sum())
    print(f"{args.leads:,} leads x {args.reps} reps: {assigned:,} assigned ({int(a['sticky'].sum()):,} sticky) "
          f"in {seconds:.1f} s")
    print(f"expected conversions of the {int(c['leads']):,} leads allocated: this allocation {c['allocation']:.1f}, "
          f"greedy-by-score {c['greedy']:.1f}, round-robin {c['round_robin']:.1f}")
    print(json.dumps({"benchmark": "allocate", "leads": args.leads, "reps": args.reps, "seconds": round(seconds, 2),
                      "vs_greedy": round(c["allocation"] / c["greedy"], 4),
                      "vs_round_robin": round(c["allocation"] / c["round_robin"], 4),
                      "expected_conversions": round(c["allocation"], 2), "greedy": round(c["greedy"], 2)}))


if __name__ == "__main__":
    main()
