"""Benchmark: the analyst report and the rolling-origin backtest on the demo CRM.

Issue acceptance: the report for the demo in under 60 s and under 10 MB; a backtest with at
least six origins on the demo data in under 5 minutes on 2 cores; on the demo data the drift
check flags a deliberately shifted feature and nothing in a resample of the same period.

Baselines measured in the same run:

* the report against ``convert-leads evaluate`` on the same model (``steps.evaluate_step``:
  load, rebuild the training set, hold-out evaluation beside the baselines), which the
  report does first, so the ratio is the report's own cost on top;
* the backtest against one ``convert.model.train`` on all the data (the backtest trains once
  per origin on less data, and builds the features of every snapshot once).

    make demo                        # generates data/demo (the bench trains its own model)
    python bench/report.py           # report + drift check + backtest (6 origins, retrain every 3M)
    python bench/report.py --skip-backtest
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import pandas as pd

import convert
from _common import OUT, ROOT
from convert import steps
from convert.analysis.backtest import backtest
from convert.analysis.drift import SHIFTED, drift_table
from convert.model.train import train


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(ROOT / "data" / "demo"))
    ap.add_argument("--config", default=str(ROOT / "params.yaml"))
    ap.add_argument("--as-of", default="2026-01-01")
    ap.add_argument("--from", dest="start", default="2025-01-01")
    ap.add_argument("--to", dest="end", default="2025-06-01")
    ap.add_argument("--every", default="1M")
    ap.add_argument("--retrain-every", default="3M")
    ap.add_argument("--skip-backtest", action="store_true")
    args = ap.parse_args()
    config = convert.load_config(args.config)
    results: dict[str, object] = {"omp_wait_policy": os.environ.get("OMP_WAIT_POLICY", "(default)"),
                                  "load_average_start": os.getloadavg()[0]}

    with tempfile.TemporaryDirectory() as tmp:
        data = convert.load(args.data, config)
        clock = time.perf_counter()
        trained = train(data, config)
        t_train = time.perf_counter() - clock
        bundle = trained.model.save(Path(tmp) / "bundle")
        print(f"train (baseline of the backtest): {t_train:.1f} s")

        # drift acceptance on the demo: a resample of the training window flags nothing,
        # the same resample with one feature shifted flags exactly that feature
        ref = trained.training_set.frame.loc[trained.split.masks["train"]].reset_index(drop=True)
        resample = ref.sample(n=len(ref), replace=True, random_state=1)
        shifted = resample.assign(days_since_last_touch=resample["days_since_last_touch"] + 45)
        cat, dc, names = trained.model.catalog_, config.report.drift, trained.model.spec_.names
        calm = drift_table(ref, resample, cat, dc, names)
        moved = drift_table(ref, shifted, cat, dc, names)
        flagged_calm = calm.loc[calm["status"] == SHIFTED, "feature"].tolist()
        flagged_moved = moved.loc[moved["status"] == SHIFTED, "feature"].tolist()
        print(f"drift: resample flags {flagged_calm or 'nothing'} (max PSI {calm['psi'].max():.4f}); "
              f"shifted days_since_last_touch flags {flagged_moved} (PSI {moved['psi'].max():.3f})")
        results.update(drift_resample_flagged=flagged_calm, drift_shifted_flagged=flagged_moved)
        data.close()

        clock = time.perf_counter()
        steps.evaluate_step(args.data, config, str(bundle), Path(tmp) / "evaluation")
        t_eval = time.perf_counter() - clock
        summary = steps.report_step(args.data, config, pd.Timestamp(args.as_of), Path(tmp) / "report.html", str(bundle),
                                    log_to_mlflow=False)
        print(f"evaluate (baseline): {t_eval:.1f} s")
        print(f"report: {summary.seconds:.1f} s, {summary.bytes / 1e6:.2f} MB, {summary.report.figures} images "
              f"({summary.seconds / t_eval:.2f}x evaluate; targets < 60 s and < 10 MB)")
        results.update(train_s=t_train, evaluate_s=t_eval, report_s=summary.seconds, report_mb=summary.bytes / 1e6,
                       report_vs_evaluate=summary.seconds / t_eval)

        if not args.skip_backtest:
            data = convert.load(args.data, config)
            clock = time.perf_counter()
            bt = backtest(data, config, args.start, args.end, args.every, args.retrain_every, echo=print)
            t_bt = time.perf_counter() - clock
            data.close()
            origins = bt.table["origin"].nunique()
            print(bt.text())
            print(f"backtest: {origins} origins, {int((bt.trainings['seconds'] > 0).sum())} fits, {t_bt:.1f} s "
                  f"({t_bt / t_train:.2f}x one full train; target < 300 s)")
            results.update(backtest_s=t_bt, backtest_origins=origins, backtest_vs_train=t_bt / t_train)
    results["load_average_end"] = os.getloadavg()[0]
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "report.json").write_text(json.dumps(results, indent=1, default=str))
    print(f"written {OUT / 'report.json'}")


if __name__ == "__main__":
    main()
