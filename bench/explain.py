"""Benchmark: exact SHAP explanations of LightGBM lead-scoring models.

Compares ``convert.model.treeshap.TreeExplainerFast`` with LightGBM's ``pred_contrib=True``,
``shap.TreeExplainer`` and, when it can be run, ``woodelf-explainer``, on synthetic lead-like data
(counts with many zeros, recencies and firmographics with NaNs, five categorical columns) and
models of several depths. For each engine it prints rows/s, the speed ratio to ``pred_contrib``
and the largest absolute difference from ``pred_contrib`` (all columns, expected value included).

Our engine explains all ``--rows`` rows. The reference engines are timed on the first rows only,
as many as fit in about ``--ref-seconds`` (estimated from a short calibration run; rows/s is
per-row work for them), because ``pred_contrib`` on 200k rows of a depth-10 model takes over half
an hour on two cores. Both ours and ``pred_contrib`` use ``--threads`` threads.

woodelf refuses categorical splits, so it runs on a numeric-only variant of each model (the same
data with the category codes as plain numbers, NaN for missing), next to ours and ``pred_contrib``
on that same model. It is imported if installed; otherwise ``--woodelf-python`` names the
interpreter of a separate environment that has it (it is not a dependency of convert), and it
runs there in a subprocess on the same model file and rows.

    python bench/explain.py                      # 200k rows, depths 4, 6, 10
    python bench/explain.py --rows 20000 --depths 6 --ref-seconds 10
    python bench/explain.py --woodelf-python /tmp/woodelf-venv/bin/python
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))

from convert.model.treeshap import TreeExplainerFast, lightgbm_matrix  # noqa: E402

CATEGORICALS = {
    "industry": 25,
    "country": 40,
    "lead_source": 9,
    "seniority": 7,
    "stage": 5,
}


def make_leads(n: int, seed: int) -> tuple[pd.DataFrame, np.ndarray]:
    """Synthetic lead-like rows and a converted / not converted label."""
    rng = np.random.default_rng(seed)

    def counts(lam: float, p_zero: float) -> np.ndarray:
        return np.where(rng.random(n) < p_zero, 0, rng.poisson(lam, n)).astype(np.float64)

    def maybe_nan(x: np.ndarray, p: float) -> np.ndarray:
        return np.where(rng.random(n) < p, np.nan, x)

    engagement = rng.gamma(1.0, 1.0, n)
    df = pd.DataFrame(
        {
            "n_events_7d": counts(1.0 * engagement, 0.5),
            "n_events_30d": counts(4.0 * engagement, 0.3),
            "n_events_90d": counts(10.0 * engagement, 0.2),
            "n_email_open_30d": counts(2.0 * engagement, 0.4),
            "n_web_visit_30d": counts(3.0 * engagement, 0.4),
            "n_high_intent_30d": counts(0.3 * engagement, 0.7),
            "days_since_last_touch": maybe_nan(rng.exponential(20.0, n), 0.2),
            "days_since_high_intent": maybe_nan(rng.exponential(60.0, n), 0.6),
            "days_in_stage": rng.exponential(30.0, n),
            "lead_age_days": rng.exponential(120.0, n),
            "email_ctr": maybe_nan(rng.beta(2.0, 8.0, n), 0.35),
            "employees": maybe_nan(np.round(rng.lognormal(4.0, 1.5, n)), 0.15),
            "annual_revenue": maybe_nan(rng.lognormal(15.0, 2.0, n), 0.3),
            "account_other_leads": counts(1.5, 0.5),
            "trend_30d": rng.normal(0.0, 1.0, n),
        }
    )
    for name, k in CATEGORICALS.items():
        probs = rng.dirichlet(np.ones(k))
        codes = rng.choice(k, size=n, p=probs)
        values = np.array([f"{name}_{c}" for c in codes], dtype=object)
        values[rng.random(n) < 0.05] = None
        df[name] = pd.Categorical(values, categories=[f"{name}_{c}" for c in range(k)])
    code = {name: df[name].cat.codes.to_numpy() for name in CATEGORICALS}
    logit = (
        -2.0
        + 0.4 * np.log1p(df["n_events_30d"].to_numpy())
        + 0.6 * np.minimum(df["n_high_intent_30d"].to_numpy(), 3)
        - 0.01 * np.nan_to_num(df["days_since_last_touch"].to_numpy(), nan=90.0)
        + 1.5 * np.nan_to_num(df["email_ctr"].to_numpy())
        + 0.15 * np.nan_to_num(np.log1p(df["employees"].to_numpy()), nan=3.0)
        + 0.3 * np.sin(code["industry"])
        + 0.4 * (code["country"] % 4 == 0)
        + 0.5 * (code["lead_source"] == 2)
        - 0.3 * (code["seniority"] >= 4)
        + 0.25 * code["stage"]
        + 0.2 * df["trend_30d"].to_numpy()
    )
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-logit))).astype(np.int64)
    return df, y


def numeric_variant(df: pd.DataFrame) -> pd.DataFrame:
    """The same columns with the categories as plain numeric codes (NaN for missing)."""
    out = df.copy()
    for name in CATEGORICALS:
        codes = out[name].cat.codes.to_numpy().astype(np.float64)
        codes[codes < 0] = np.nan
        out[name] = codes
    return out


def train(frame: pd.DataFrame, y: np.ndarray, depth: int, args: argparse.Namespace) -> lgb.Booster:
    params = {
        "objective": "binary",
        "max_depth": depth,
        "num_leaves": min(2**depth, args.max_leaves),
        "learning_rate": 0.05,
        "min_data_in_leaf": 20,
        "max_cat_to_onehot": 4,
        "num_threads": args.threads,
        "seed": args.seed,
        "verbose": -1,
    }
    return lgb.train(params, lgb.Dataset(frame, y), args.trees)


CPU_SECONDS: list[float] = [0.0]  # process CPU time of the last timed() call, all threads


def timed(fn: Callable[[], Any]) -> tuple[Any, float]:
    """Result and wall-clock seconds; the call's CPU seconds are left in CPU_SECONDS[0]."""
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    CPU_SECONDS[0] = time.process_time() - cpu
    return out, time.perf_counter() - start


def calibrated_rows(run: Callable[[int], Any], n_max: int, budget: float, probe: int) -> int:
    """Rows that fit in ``budget`` seconds, from probe runs on ``probe`` and ``2 * probe`` rows
    (their difference gives the per-row cost apart from any fixed cost per call)."""
    small = min(probe, n_max)
    _, t_small = timed(lambda: run(small))
    if 2 * small > n_max:
        return n_max
    _, t_large = timed(lambda: run(2 * small))
    per_row = max((t_large - t_small) / small, t_large / (2 * small) / 4, 1e-9)
    fixed = max(t_large - 2 * small * per_row, 0.0)
    n = (budget - fixed) / per_row
    return int(min(n_max, max(2 * small, round(n, -2))))


WOODELF_WORKER = r"""
import json, sys, time, warnings
import lightgbm as lgb, numpy as np, pandas as pd
warnings.filterwarnings("ignore")
from woodelf.core.trees.parse_models import load_decision_tree_ensemble_model
from woodelf.explainer import WoodelfExplainer
model, data, names, out, n = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
booster = lgb.Booster(model_file=model)
columns = json.load(open(names))
X = pd.DataFrame(np.load(data)[:n], columns=columns)
explainer = WoodelfExplainer(booster)
# parse the model before the clock starts, as ours is built before it is timed
explainer.model = load_decision_tree_ensemble_model(booster, columns)
explainer.model_was_loaded = True
t0, c0 = time.perf_counter(), time.process_time()
values = explainer.shap_values(X, verbose=False)
seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
np.save(out, np.asarray(values, dtype=np.float64))
print(json.dumps({"seconds": seconds, "cpu": cpu}))
"""


# (booster, rows, column names) -> (values, wall seconds, CPU seconds)
WoodelfRunner = Callable[[lgb.Booster, np.ndarray, list[str]], tuple[np.ndarray, float, float]]


def woodelf_runner(python: str | None) -> WoodelfRunner | None:
    """A function running woodelf on (booster, rows), in-process or through another interpreter."""
    try:
        from woodelf.explainer import WoodelfExplainer  # type: ignore[import-not-found]
    except ImportError:
        WoodelfExplainer = None
    if WoodelfExplainer is not None:

        def run_here(
            booster: lgb.Booster, rows: np.ndarray, names: list[str]
        ) -> tuple[np.ndarray, float, float]:
            from woodelf.core.trees.parse_models import load_decision_tree_ensemble_model

            frame = pd.DataFrame(rows, columns=names)
            explainer = WoodelfExplainer(booster)
            explainer.model = load_decision_tree_ensemble_model(booster, names)
            explainer.model_was_loaded = True
            values, seconds = timed(lambda: explainer.shap_values(frame, verbose=False))
            return np.asarray(values, dtype=np.float64), seconds, CPU_SECONDS[0]

        return run_here
    if not python:
        return None
    check = subprocess.run([python, "-c", "import woodelf.explainer"], capture_output=True)
    if check.returncode != 0:
        print(f"woodelf: cannot import it with {python}; skipped", file=sys.stderr)
        return None

    def run_there(
        booster: lgb.Booster, rows: np.ndarray, names: list[str]
    ) -> tuple[np.ndarray, float, float]:
        with tempfile.TemporaryDirectory() as tmp:
            paths = {
                k: os.path.join(tmp, k)
                for k in ("model.txt", "x.npy", "names.json", "out.npy", "w.py")
            }
            booster.save_model(paths["model.txt"])
            np.save(paths["x.npy"], rows)
            Path(paths["names.json"]).write_text(json.dumps(names))
            Path(paths["w.py"]).write_text(WOODELF_WORKER)
            done = subprocess.run(
                [
                    python,
                    paths["w.py"],
                    paths["model.txt"],
                    paths["x.npy"],
                    paths["names.json"],
                    paths["out.npy"],
                    str(len(rows)),
                ],
                capture_output=True,
                text=True,
                check=True,
            )
            stats = json.loads(done.stdout.strip().splitlines()[-1])
            return np.load(paths["out.npy"]), float(stats["seconds"]), float(stats["cpu"])

    return run_there


def bench_variant(
    depth: int,
    variant: str,
    train_frame: pd.DataFrame,
    mat: np.ndarray,
    frames: dict[str, Any],
    args: argparse.Namespace,
    woodelf: WoodelfRunner | None,
) -> list[dict[str, Any]]:
    """Ours, pred_contrib and (categorical model) shap or (numeric model) woodelf on one model."""
    booster, train_s = timed(lambda: train(train_frame, frames["y"], depth, args))
    n = len(mat)
    explainer, init_s = timed(lambda: TreeExplainerFast(booster))
    explainer.contributions(mat[:64], n_threads=args.threads)  # numba compile / cache load
    ours, ours_s = timed(lambda: explainer.contributions(mat, n_threads=args.threads))
    ours_cpu = CPU_SECONDS[0]

    def pred_contrib(k: int) -> np.ndarray:
        return booster.predict(mat[:k], pred_contrib=True, num_threads=args.threads)

    n_ref = calibrated_rows(pred_contrib, n, args.ref_seconds, args.probe_rows)
    ref, ref_s = timed(lambda: pred_contrib(n_ref))
    ref_cpu = CPU_SECONDS[0]
    base = {"depth": depth, "model": variant}
    leaves = f"{explainer.n_table_leaves_} table + {explainer.n_direct_leaves_} direct leaves"
    rows = [
        {
            **base,
            "engine": "convert TreeExplainerFast",
            "rows": n,
            "seconds": ours_s,
            "cpu": ours_cpu,
            "diff": float(np.abs(ours[:n_ref] - ref).max()),
            "note": f"init {init_s:.1f}s; {leaves}; tables {explainer.table_bytes_ / 2**20:.0f} MiB"
            f"; model trained in {train_s:.0f}s",
        },
        {
            **base,
            "engine": "lightgbm pred_contrib",
            "rows": n_ref,
            "seconds": ref_s,
            "cpu": ref_cpu,
            "diff": 0.0,
            "note": "reference",
        },
    ]
    if variant == "categorical" and not args.skip_shap:
        import shap

        shap_explainer = shap.TreeExplainer(booster)

        def shap_run(k: int) -> Any:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                return shap_explainer.shap_values(mat[:k])

        n_shap = calibrated_rows(shap_run, n_ref, args.ref_seconds, args.probe_rows)
        values, shap_s = timed(lambda: shap_run(n_shap))
        shap_cpu = CPU_SECONDS[0]
        values = np.asarray(values[1] if isinstance(values, list) else values)
        ev = float(np.ravel(shap_explainer.expected_value)[-1])
        full = np.column_stack([values, np.full(len(values), ev)])
        rows.append(
            {
                **base,
                "engine": "shap.TreeExplainer",
                "rows": n_shap,
                "seconds": shap_s,
                "cpu": shap_cpu,
                "diff": float(np.abs(full - ref[:n_shap]).max()),
                "note": f"shap {shap.__version__}",
            }
        )
    if variant == "numeric" and woodelf is not None:
        names = list(train_frame.columns)
        probe = max(args.probe_rows, 2000)
        n_w = calibrated_rows(
            lambda k: woodelf(booster, mat[:k], names), n, args.ref_seconds, probe
        )
        values, wood_s, wood_cpu = woodelf(booster, mat[:n_w], names)
        k = min(n_w, n_ref)
        full = np.column_stack([values[:k], np.full(k, explainer.expected_value_)])
        rows.append(
            {
                **base,
                "engine": "woodelf-explainer",
                "rows": n_w,
                "seconds": wood_s,
                "cpu": wood_cpu,
                "diff": float(np.abs(full - ref[:k]).max()),
                "note": "numeric-only model (it refuses categorical splits); "
                "expected value column from ours",
            }
        )
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    """One line per (depth, model, engine); ratios against pred_contrib on the same model."""
    ref_rate = {
        (r["depth"], r["model"]): r["rows"] / r["seconds"]
        for r in rows
        if r["engine"] == "lightgbm pred_contrib"
    }
    header = (
        f"{'depth':>5}  {'model':<11}  {'engine':<26}  {'rows':>7}  {'wall s':>7}  {'CPU s':>7}  "
        f"{'rows/s':>8}  {'vs pred_contrib':>15}  {'max |diff|':>10}  note"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        rate = r["rows"] / r["seconds"]
        ratio = rate / ref_rate[(r["depth"], r["model"])]
        print(
            f"{r['depth']:>5}  {r['model']:<11}  {r['engine']:<26}  {r['rows']:>7}  "
            f"{r['seconds']:>7.2f}  {r['cpu']:>7.2f}  {rate:>8.0f}  {ratio:>14.2f}x  "
            f"{r['diff']:>10.2e}  {r['note']}"
        )
    print(
        "\nrows/s = rows / wall seconds; CPU s = process CPU time of the call over all threads "
        "(the machine is shared, so wall time also holds time waiting for a core). "
        "max |diff| = largest absolute difference from pred_contrib over the rows both explained, "
        "all columns, expected value included."
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--rows", type=int, default=200_000, help="rows to explain")
    parser.add_argument("--train-rows", type=int, default=50_000)
    parser.add_argument("--depths", type=int, nargs="+", default=[4, 6, 10])
    parser.add_argument("--trees", type=int, default=200)
    parser.add_argument(
        "--max-leaves", type=int, default=255, help="num_leaves = min(2^depth, this)"
    )
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument(
        "--ref-seconds",
        type=float,
        default=20.0,
        help="time budget per reference engine run (pred_contrib, shap, woodelf)",
    )
    parser.add_argument("--probe-rows", type=int, default=500)
    parser.add_argument(
        "--woodelf-python",
        default=os.environ.get("WOODELF_PYTHON"),
        help="interpreter of an environment with woodelf-explainer installed",
    )
    parser.add_argument("--skip-shap", action="store_true")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    train_frame, y = make_leads(args.train_rows, args.seed)
    explain_frame, _ = make_leads(args.rows, args.seed + 1)
    pandas_categorical = [list(train_frame[c].cat.categories) for c in CATEGORICALS]
    frames = {
        "train": train_frame,
        "y": y,
        "mat": lightgbm_matrix(explain_frame, pandas_categorical),
        "train_num": numeric_variant(train_frame),
        "mat_num": numeric_variant(explain_frame).to_numpy(dtype=np.float64),
    }
    woodelf = woodelf_runner(args.woodelf_python)
    print(
        f"{args.rows} rows explained, {args.train_rows} training rows, {args.trees} trees, "
        f"learning rate 0.05, {args.threads} threads, {os.cpu_count()} cores; "
        f"woodelf: {'yes' if woodelf else 'not available'}",
        flush=True,
    )
    rows: list[dict[str, Any]] = []
    for depth in args.depths:
        rows.extend(
            bench_variant(
                depth, "categorical", frames["train"], frames["mat"], frames, args, woodelf
            )
        )
        if woodelf is not None:
            rows.extend(
                bench_variant(
                    depth, "numeric", frames["train_num"], frames["mat_num"], frames, args, woodelf
                )
            )
        print(f"depth {depth} done", file=sys.stderr, flush=True)
    print()
    print_table(rows)


if __name__ == "__main__":
    main()
