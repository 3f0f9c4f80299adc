"""Benchmark: our training (``convert.train.fit_calibrated``) against plain ``lightgbm.train``.

Issue acceptance: 1M lead-snapshots x 100 features, our training (without tuning, feature
building excluded) within 1.3x of a plain ``lightgbm.train`` on the same in-memory matrix with
the same parameters.

The training set is synthetic but has the shape of convert's training frame: ``lead_id``,
``as_of`` (24 monthly as-of times, the open population growing), ``label`` (about 2 % positive,
with signal) and convert's own feature catalog (14 standard event types: 98 features, padded to
``--features`` with numeric extras; 5 categorical text columns: stage, industry, country,
lead_source, seniority; the rest numeric counts, recencies, ratios, firmographics), wrapped as a
``convert.train.TrainingSet`` and split with ``split_by_time`` (default ``Config``).

Timed, in one process, alternating (``--repeat`` rounds; the verdict is the median of the
per-round ratios, each round running plain then ours back to back):

* **ours**: ``fit_calibrated(ts, split, config)``: LightGBM with early stopping on the
  validation slice, refit on train + validation for ``ceil(best_iteration x refit_round_factor)``
  rounds, calibrator selection (isotonic vs sigmoid, cross-validated) on the calibration slice.
* **plain**: the same two fits with ``lightgbm.train`` on matrices built before the clock starts
  (the model matrix ``FeatureSpec.transform`` would give: float64 numbers, pandas categoricals
  with the training categories), the same parameters (``LeadScoringModel._lgb_params``), the same
  round counts. Dataset construction (binning) is inside the clock, as in ``lightgbm.train``.

Then the parts of our overhead are timed one by one (spec + transform, row selection, trimming,
base value, calibration), and ``--profile`` runs ours once more under cProfile.

    python bench/train.py                 # 1M rows x 100 features
    python bench/train.py --quick         # 50k rows
    python bench/train.py --profile
"""

from __future__ import annotations

import argparse
import cProfile
import io
import json
import math
import os
import pstats
import time
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from _common import OUT, Phases, gib, lead_catalog, make_frame
from convert.calibrate import select_calibrator
from convert.config import Config
from convert.model import FeatureSpec, _trimmed
from convert.schema import Labeled
from convert.train import TrainingSet, _new_model, fit_calibrated, split_by_time

TARGET = 1.3


def plain_fits(
    params: dict[str, Any],
    mats: dict[str, pd.DataFrame],
    ys: dict[str, np.ndarray],
    categorical: list[str],
    config: Config,
) -> tuple[lgb.Booster, int, int]:
    """Early-stopped fit on train (validation for stopping), then a fixed-round refit on both."""
    cat = categorical or "auto"
    train_set = lgb.Dataset(mats["train"], label=ys["train"], categorical_feature=cat,
                            free_raw_data=True)
    valid_set = lgb.Dataset(mats["validation"], label=ys["validation"], reference=train_set)
    booster = lgb.train(
        params, train_set, num_boost_round=config.train.num_boost_round,
        valid_sets=[valid_set], valid_names=["validation"],
        callbacks=[lgb.early_stopping(config.train.early_stopping_rounds, verbose=False)],
    )
    best = int(booster.best_iteration or booster.current_iteration())
    rounds = max(1, math.ceil(best * config.train.refit_round_factor))
    refit_set = lgb.Dataset(mats["seen"], label=ys["seen"], categorical_feature=cat,
                            free_raw_data=True)
    refit = lgb.train(params, refit_set, num_boost_round=rounds)
    return refit, best, rounds


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
    ts = TrainingSet(frame, catalog, event_types, frame["as_of"].max() + pd.Timedelta(days=120),
                     config.labels.horizon_days)
    split = split_by_time(frame[Labeled.as_of], config)
    y = frame[Labeled.label].to_numpy()
    print(split.summary(y).to_string(index=False))

    # pre-built matrices for the plain baseline: exactly what our model feeds LightGBM
    m = split.masks
    seen = m["train"] | m["validation"]
    spec_train = FeatureSpec.from_frame(frame.loc[m["train"]], catalog, event_types)
    spec_seen = FeatureSpec.from_frame(frame.loc[seen], catalog, event_types)
    mats = {
        "train": spec_train.transform(frame.loc[m["train"]]),
        "validation": spec_train.transform(frame.loc[m["validation"]]),
        "seen": spec_seen.transform(frame.loc[seen]),
    }
    ys = {k: np.asarray(y[mask], dtype="float64") for k, mask in
          (("train", m["train"]), ("validation", m["validation"]), ("seen", seen))}
    params = _new_model(config)._lgb_params(spec_train)
    print(f"params: {json.dumps(params)}", flush=True)

    ph = Phases(width=40)
    results: dict[str, Any] = {}
    for _ in range(args.repeat):
        booster, best, rounds = ph.run(
            "plain lightgbm.train (2 fits)",
            lambda: plain_fits(params, mats, ys, spec_train.categorical, config),
        )
        results["plain"] = (best, rounds)
        model, cv = ph.run("ours: fit_calibrated", lambda: fit_calibrated(ts, split, config))
        # the refit model keeps no trace of the early-stopped fit's best iteration
        results["ours"] = (None, model.booster_.current_iteration())
    mats.clear()

    # same work? rounds and raw scores on the calibration slice
    cal = frame.loc[m["calibration"]]
    raw_ours = model.predict_raw(cal)
    raw_plain = booster.predict(model.matrix(cal), raw_score=True)
    same = float(np.abs(raw_ours - raw_plain).max())

    # parts of our overhead, timed one by one on the same data
    parts = Phases(width=40)
    print("overhead parts of ours (each timed alone):", flush=True)
    sub = {k: frame.loc[v] for k, v in (("train", m["train"]), ("validation", m["validation"]))}
    parts.run("frame.loc[mask] row copies (3x)", lambda: (frame.loc[m["train"]],
              frame.loc[m["validation"]], frame.loc[seen]))
    spec = parts.run("FeatureSpec.from_frame (train + seen)", lambda: (
        FeatureSpec.from_frame(sub["train"], catalog), FeatureSpec.from_frame(frame.loc[seen], catalog)
    )[0])
    parts.run("FeatureSpec.transform (train, valid, seen)", lambda: (
        spec.transform(sub["train"]), spec.transform(sub["validation"]), spec.transform(frame.loc[seen])
    ))
    parts.run("_trimmed (model_to_string + parse)", lambda: _trimmed(model.booster_,
              model.booster_.current_iteration()))
    parts.run("base value (pred_contrib on 1 row)", lambda: model.booster_.predict(
        model.matrix(cal.iloc[:1]), pred_contrib=True))
    parts.run("predict_raw on calibration slice", lambda: model.predict_raw(cal))
    parts.run("select_calibrator (isotonic vs sigmoid CV)", lambda: select_calibrator(
        raw_ours, y[m["calibration"]], methods=config.calibration.methods,
        cv_folds=config.calibration.cv_folds, min_rows_isotonic=config.calibration.min_rows_isotonic,
        seed=config.seed))

    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        fit_calibrated(ts, split, config)
        prof.disable()
        buf = io.StringIO()
        pstats.Stats(prof, stream=buf).sort_stats("cumulative").print_stats(30)
        print(buf.getvalue())

    t_plain = ph.best("plain lightgbm.train (2 fits)")
    # the verdict: median over rounds of the paired ratio (ours right after plain), which is
    # more robust than best-of-each-side on a machine whose load changes between rounds
    plain_s = [r["seconds"] for r in ph.rows if r["phase"].startswith("plain")]
    ours_s = [r["seconds"] for r in ph.rows if r["phase"].startswith("ours")]
    paired = [o / p for p, o in zip(plain_s, ours_s, strict=True)]
    ratio = float(np.median(paired))
    print()
    header = (f"{'run':<34} {'seconds':>9} {'ratio':>7} {'cpu s':>9} {'cpu ratio':>9} {'best iter':>10} "
              f"{'refit rounds':>13} {'peak RSS GiB':>13}")
    print(header)
    print("-" * len(header))
    for label, name, key in (("plain lightgbm.train (2 fits)", "plain lightgbm.train (2 fits)", "plain"),
                             ("ours: fit_calibrated", "ours: fit_calibrated", "ours")):
        sec = ph.best(name)
        best_i, rounds = results[key]
        cpu = ph.best_cpu(name)
        print(f"{label:<34} {sec:>9.2f} {sec / t_plain:>6.2f}x {cpu:>9.1f} "
              f"{cpu / ph.best_cpu('plain lightgbm.train (2 fits)'):>8.2f}x {best_i or '-':>10} {rounds:>13} "
              f"{gib(ph.peak(name)):>13}")
    print()
    for r in parts.rows:
        print(f"  part: {r['phase']:<44} {r['seconds']:>8.2f} s  ({r['seconds'] / t_plain:.1%} of plain)")
    print(f"max |raw score difference| ours vs plain on the calibration slice: {same:.2e}; "
          f"calibrator CV log loss {json.dumps({k: round(v, 5) for k, v in cv.items()})}")
    verdict = "PASS" if ratio <= TARGET else "FAIL"
    print(f"\npaired ratios per round (ours / plain): {', '.join(f'{r:.2f}x' for r in paired)}")
    print(f"ours / plain lightgbm.train = {ratio:.2f}x (median of paired ratios; target <= {TARGET}x): {verdict}; "
          f"whole-run peak RSS {gib(ph.run_peak())} GiB; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores")

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "train.jsonl", "a") as fh:
        fh.write(json.dumps({
            "time": time.time(), "args": vars(args), "rows": len(frame), "features": len(catalog),
            "phases": ph.rows, "parts": parts.rows, "ratio": ratio, "paired": paired,
            "pass": ratio <= TARGET,
            "rounds": results, "max_raw_diff": same,
        }, default=str) + "\n")


if __name__ == "__main__":
    main()
