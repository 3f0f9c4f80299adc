"""Benchmark: our training (``convert.model.crossfit.cross_fit``) against plain ``lightgbm`` doing the same fits.

Issue acceptance: 1M lead-snapshots x 100 features, our training (without tuning, feature
building excluded) within 1.3x of plain LightGBM doing the same fits on the same in-memory
matrix with the same parameters.

The training set is synthetic but has the shape of convert's training frame: ``lead_id``,
``as_of`` (24 monthly as-of times, the open population growing), ``label`` (about 2 % positive,
with signal) and convert's own feature catalog (14 standard event types: 98 features, padded to
``--features`` with numeric extras; 5 categorical text columns), wrapped as a
``convert.model.train.TrainingSet`` and cut into the default folds (``convert.model.crossfit.time_folds``:
3 inner, 2 outer, purged by the horizon).

Timed, in one process, ``--repeat`` rounds, each running both sides back to back:

* **ours**: ``cross_fit(frame, y, folds, config)`` from the training frame as features leave it
  (float64 numbers, categoricals as text). Inside the clock: encoding every row once
  (``FeatureMatrix``), the inner folds boosted in lockstep until the mean inner-fold log loss
  stops improving, the logistic model on each inner fold and the blend-weight choice, the
  calibrator choice on the inner out-of-fold scores, the outer folds refitted with the chosen
  rounds (and the linear model when blended), the deployed refit on every row, and its
  calibrator on all out-of-fold scores.
* **plain (array)** -- the verdict's baseline: what a data scientist writes with LightGBM alone
  for the same design, on float64 arrays built **before** the clock starts: ``lightgbm.cv``
  with the same inner folds (``folds=``) and ``early_stopping`` on the mean log loss, then
  ``lightgbm.train`` on each outer fold's rows and on every row for the chosen rounds. Same
  parameters (``LeadScoringModel._lgb_params``). No logistic model, no calibration.

The verdict is the median over rounds of the paired wall ratio ours / plain; CPU-time ratios
are printed too (other processes share the cores).

    python bench/train.py                 # 1M rows x 100 features
    python bench/train.py --quick         # 50k rows
    python bench/train.py --max-load 1.5  # start each round when the machine is quiet
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import os
import pstats
import time
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from _common import OUT, Phases, gib, lead_catalog, make_frame
from convert.config import Config
from convert.model.bundle import FeatureSpec, LeadScoringModel
from convert.model.crossfit import cross_fit, time_folds
from convert.model.treeshap import lightgbm_matrix
from convert.schema import Labeled

TARGET = 1.3


def plain_fits(
    params: dict[str, Any], X: np.ndarray, y: np.ndarray, folds: Any, names: list[str],
    categorical: list[str], config: Config,
) -> tuple[lgb.Booster, int]:
    """``lightgbm.cv`` over the inner folds (early stopping on the mean), then ``lightgbm.train``
    on each outer fold and on every row for the chosen rounds."""
    cat = categorical or "auto"
    full = lgb.Dataset(X, label=y, feature_name=names, categorical_feature=cat, free_raw_data=False)
    cv = lgb.cv(params, full, num_boost_round=config.train.num_boost_round,
                folds=[(f.train, f.test) for f in folds.inner], stratified=False, shuffle=False,
                callbacks=[lgb.early_stopping(config.train.early_stopping_rounds, verbose=False)])
    rounds = max(config.train.min_boost_round, len(next(iter(cv.values()))))
    for f in folds.outer:
        lgb.train(params, lgb.Dataset(X[f.train], label=y[f.train], feature_name=names, categorical_feature=cat),
                  num_boost_round=rounds)
    booster = lgb.train(params, lgb.Dataset(X, label=y, feature_name=names, categorical_feature=cat),
                        num_boost_round=rounds)
    return booster, rounds


def as_array(matrix: pd.DataFrame) -> np.ndarray:
    """The float64 array LightGBM makes of a model matrix: category codes, NaN for missing."""
    return np.ascontiguousarray(lightgbm_matrix(matrix))


def wait_for_load(max_load: float | None, max_wait: float) -> tuple[float, float, float]:
    """Wait (at most *max_wait* s) until the 1-minute load average is at most *max_load*: on a
    shared machine, a round that starts while others compute measures them, not us."""
    deadline = time.monotonic() + max_wait
    while max_load is not None and os.getloadavg()[0] > max_load and time.monotonic() < deadline:
        time.sleep(15)
    return os.getloadavg()


SIDES = ("plain (array)", "ours: cross_fit")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=1_000_000, help="lead-snapshots")
    parser.add_argument("--features", type=int, default=100)
    parser.add_argument("--as-ofs", type=int, default=24, help="monthly as-of times")
    parser.add_argument("--positive-rate", type=float, default=0.02)
    parser.add_argument("--repeat", type=int, default=3,
                        help="rounds of (plain, ours); verdict: median of the paired ratios")
    parser.add_argument("--max-load", type=float, default=None,
                        help="before each round, wait until the 1-minute load average is at most this")
    parser.add_argument("--max-wait", type=float, default=1800, help="seconds to wait for --max-load")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--profile", action="store_true", help="cProfile one more run of ours")
    parser.add_argument("--quick", action="store_true", help="smoke size (50k rows)")
    args = parser.parse_args()
    if args.quick:
        args.rows = min(args.rows, 50_000)

    config = Config()
    catalog, event_types = lead_catalog(args.features)
    t0 = time.perf_counter()
    frame = make_frame(args.rows, catalog, args.as_ofs, args.seed, args.positive_rate)
    print(
        f"bench/train.py: {len(frame):,} lead-snapshots x {len(catalog)} features "
        f"({sum(f.kind == 'categorical' for f in catalog)} categorical), {args.as_ofs} as-of times, "
        f"{frame['label'].mean():.2%} positive; built in {time.perf_counter() - t0:.0f} s; "
        f"lightgbm {lgb.__version__}, {os.cpu_count()} cores",
        flush=True,
    )
    y = frame[Labeled.label].to_numpy()
    folds = time_folds(frame[Labeled.as_of], y, config.labels.horizon_days, config)
    print(folds.summary(y).to_string(index=False))
    features = frame[[f.name for f in catalog]]
    spec = FeatureSpec.from_frame(frame, catalog, event_types)
    X = as_array(spec.transform(frame))
    yf = np.asarray(y, dtype="float64")
    params = LeadScoringModel(params=config.train.lightgbm, seed=config.seed)._lgb_params(spec)
    print(f"params: {json.dumps(params)}", flush=True)

    ph = Phases(width=40)
    results: dict[str, Any] = {}
    for k in range(args.repeat):
        load = wait_for_load(args.max_load, args.max_wait)
        print(f"round {k + 1}: load average {' '.join(f'{x:.1f}' for x in load)}", flush=True)
        _, rounds = ph.run(SIDES[0], lambda: plain_fits(params, X, yf, folds, spec.names, spec.categorical, config))
        results[SIDES[0]] = rounds
        fit = ph.run(SIDES[1], lambda: cross_fit(features, y, folds, config, catalog=catalog,
                                                 event_types=event_types))
        results[SIDES[1]] = fit.rounds
        print(f"  (load average after round {k + 1}: {os.getloadavg()[0]:.1f}); ours chose {fit.rounds} rounds, "
              f"blend weight {fit.blend_weight}, {fit.model.calibrator_.method}; plain chose {rounds} rounds",
              flush=True)

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        cross_fit(features, y, folds, config, catalog=catalog, event_types=event_types)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        print(buf.getvalue())

    def seconds(side: str, key: str = "seconds") -> list[float]:
        return [r[key] for r in ph.rows if r["phase"] == side]

    paired = [o / p for p, o in zip(seconds(SIDES[0]), seconds(SIDES[1]), strict=True)]
    paired_cpu = [o / p for p, o in zip(seconds(SIDES[0], "cpu"), seconds(SIDES[1], "cpu"), strict=True)]
    ratio = float(np.median(paired))
    print()
    for side in SIDES:
        print(f"{side:<24} best {ph.best(side):8.2f} s, cpu {ph.best_cpu(side):8.1f} s, rounds {results[side]}, "
              f"peak RSS {gib(ph.peak(side))} GiB")
    print(f"paired ratios per round, ours / plain: wall {', '.join(f'{r:.2f}x' for r in paired)}; "
          f"cpu {', '.join(f'{r:.2f}x' for r in paired_cpu)}")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"ours / plain lightgbm (array) = {ratio:.2f}x (median of paired wall ratios; target <= "
          f"{TARGET}x): {verdict}; load average now {' '.join(f'{x:.1f}' for x in os.getloadavg())} "
          f"on {os.cpu_count()} cores")

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "train.jsonl", "a") as fh:
        fh.write(json.dumps({
            "time": time.time(), "args": vars(args), "rows": len(frame), "features": len(catalog),
            "phases": ph.rows, "ratio": ratio, "paired": paired, "paired_cpu": paired_cpu,
            "pass": ratio <= TARGET, "rounds": results,
        }, default=str) + "\n")


if __name__ == "__main__":
    main()
