"""Benchmark: scoring throughput, score-only and score + explain, on 1M leads, with peak memory.

Issue acceptance: print leads/s for score-only and for score+explain on 1M leads, and peak memory.

A model is trained with ``convert.model.train.fit_deployed`` on a synthetic training set shaped like
convert's (``--train-rows`` lead-snapshots over 24 monthly as-of times, about 2 % positive, the
feature catalog convert builds for the 14 standard event types: 98 features, 5 categorical; see
``bench/_common.py``). Then ``--leads`` feature rows for one as-of time are generated (as
``features.finish_frame`` yields them: float64 numbers, text categoricals) and scored in chunks
of ``ScoringConfig.chunk_size`` rows (``--chunk-size`` overrides):

* **score-only**: ``model.predict_proba`` (feature-spec check + booster + calibrator), then
  ``score_from_probability`` and ``model.grades``;
* **score+explain**: ``convert.scoring.score.score_frame`` per chunk (TreeSHAP contributions, points that
  add up, family points, reason sentences, actions) and the ``pd.concat`` that ``convert.scoring.score``
  does at the end.

* **score+explain+movements** (issue 17): what ``convert-leads score`` runs per chunk
  (``iter_scores(on_chunk=RunChanges.chunk)``): the same ``score_frame``, handing its points to
  ``convert.scoring.movements.RunChanges.chunk``, which looks up the chunk's previous rows and
  calls ``convert.scoring.changes.compare``: every lead's feature row at its previous as-of is
  scored under the same model (TreeSHAP again), the movements rounded so that they add up to the
  change exactly, ranked and the top three said, the batch's ten largest kept for the alerts;
  then the concat of the chunks. The previous
  rows are a second synthetic frame for the same leads (every value differs, the worst case
  for the sentences), previous scores are the model's scores of that frame (so every lead is
  exact, none ``unknown``: the full cost), 10 % of leads have none (``new``). Building the
  features at the previous as-of is not timed, as building today's is not (both come from
  the one feature engine; see ``bench/features.py``). ``changes_vs_explain`` in the last line
  is its time over score+explain's, measured in the same run, the best of ``--rounds`` paired
  rounds of each (issue 17: at most 2.2 at 1M).

A warm-up call on a small chunk (explainer tables, numba compilation or cache load) runs before
the clock and is reported apart. Then the steps of ``score_frame`` are timed one by one (a replica
of its sequence on the same chunks), so the share of the reasons/sentences part is visible.

    python bench/score.py              # 1M leads
    python bench/score.py --quick      # 50k leads
"""

from __future__ import annotations

import argparse
import json
import os
import time
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from _common import OUT, Phases, emit, gib, lead_catalog, make_frame
from convert.config import Config
from convert.model.bundle import score_from_probability
from convert.model.explain import (
    contributions,
    family_points,
    model_score_fn,
    reason_columns,
    to_points,
)
from convert.model.train import TrainingSet, fit_deployed
from convert.schema import Labeled, ScoreChanges, ScoreOutput
from convert.scoring.changes import points_of
from convert.scoring.movements import RunChanges
from convert.scoring.score import actions, score_frame


def chunks(frame: pd.DataFrame, size: int) -> list[pd.DataFrame]:
    return [frame.iloc[s: s + size] for s in range(0, len(frame), size)]


def score_only(model: Any, parts: list[pd.DataFrame]) -> list[tuple[np.ndarray, ...]]:
    out = []
    for b in parts:
        p = model.predict_proba(b)[:, 1]
        s = score_from_probability(p)
        out.append((p, s, model.grades(s)))
    return out


def score_explain(model: Any, parts: list[pd.DataFrame], config: Config, at: pd.Timestamp) -> pd.DataFrame:
    return pd.concat(
        [score_frame(model, b, config.scoring, "bench/1", at) for b in parts], ignore_index=True
    )


def previous_rows(model: Any, leads: pd.DataFrame, catalog: Any, seed: int, chunk: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The same leads a month earlier (another synthetic frame) and their previous rows (as the
    writers' ``previous()`` returns them) under the same model, 10 % of leads without one
    (untimed set-up of the movements mode)."""
    then = make_frame(len(leads), catalog, 1, seed, first_as_of="2025-12-01").drop(columns=[Labeled.label])
    then["lead_id"] = leads["lead_id"].to_numpy()
    scores = np.concatenate([points_of(model, b).score for b in chunks(then, chunk)])
    has = np.random.default_rng(seed).random(len(leads)) >= 0.1
    events = then["n_events_total"].to_numpy() if "n_events_total" in then else np.full(len(then), np.nan)
    previous = pd.DataFrame({
        ScoreOutput.lead_id: leads["lead_id"].to_numpy()[has], ScoreOutput.score: scores[has],
        ScoreOutput.as_of: then["as_of"].to_numpy()[has], ScoreOutput.model_version: "bench/1",
        ScoreChanges.events_seen: events[has],
    })
    return then, previous


def score_explain_changes(model: Any, parts: list[pd.DataFrame], then: pd.DataFrame,
                          previous: pd.DataFrame, config: Config, at: pd.Timestamp) -> tuple[pd.DataFrame, int]:
    """score+explain with the movements of every lead since its previous score, as the score
    step runs it (issue 17): ``RunChanges.chunk`` on each chunk's scores and points."""
    run = RunChanges(model, parts[0]["as_of"].iloc[0], config, "bench/1", previous, then=then)
    out = []
    for b in parts:
        pts: list[Any] = []
        scored = score_frame(model, b, config.scoring, "bench/1", at, points=pts)
        out.append(run.chunk(b, scored, pts[0]))
    return pd.concat(out, ignore_index=True), int(run.movement_sums()[1].sum())


def treeshap_only(model: Any, matrices: list[Any]) -> int:
    """TreeSHAP alone on already-built model matrices: with score-only, the floor of score+explain."""
    n = 0
    for m in matrices:
        n += len(contributions(model, m))
    return n


def breakdown(model: Any, parts: list[pd.DataFrame], config: Config) -> dict[str, float]:
    """The steps of ``score_frame``, timed one by one over the chunks."""
    t: dict[str, float] = {}

    def clock(name: str, fn: Any) -> Any:
        t0 = time.perf_counter()
        out = fn()
        t[name] = t.get(name, 0.0) + time.perf_counter() - t0
        return out

    names = model.spec_.names
    for b in parts:
        matrix = clock("FeatureSpec.transform (model.matrix)", lambda b=b: model.matrix(b))
        phi = clock("contributions (TreeSHAP)", lambda m=matrix: contributions(model, m))
        raw = phi.sum(axis=1)
        pts = clock("to_points (calibrated points, rounding)", lambda r=raw, p=phi: to_points(
            r, p[:, :-1], model.base_raw_, model_score_fn(model)))
        clock("probability_from_raw", lambda r=raw: model.probability_from_raw(r))
        clock("family_points", lambda p=pts: family_points(p.points, model.catalog_, names))
        pos, neg = clock("reasons (top-3 sentences x2)", lambda p=pts, b=b: reason_columns(
            p, b, model.catalog_, names, top=config.scoring.reasons))

        def assemble(b: pd.DataFrame = b, pts: Any = pts, pos: Any = pos, neg: Any = neg) -> None:
            idle = b["days_since_last_touch"].fillna(b["lead_age_days"]).to_numpy()
            out = pd.DataFrame({"lead_id": b["lead_id"].astype(str).to_numpy(),
                                "grade": model.grades(pts.score)})
            for i in range(3):
                out[f"r{i}"] = pos[:, i] if i < pos.shape[1] else None
                out[f"k{i}"] = neg[:, i] if i < neg.shape[1] else None
            out["action"] = actions(pts.score, idle, config.scoring)

        clock("output frame (columns, grades, actions)", assemble)
    return t


def train_model(args: argparse.Namespace, config: Config, catalog: Any, event_types: Any) -> Any:
    frame = make_frame(args.train_rows, catalog, 24, args.seed)
    ts = TrainingSet(frame, catalog, event_types, frame["as_of"].max() + pd.Timedelta(days=120), 90)
    model = fit_deployed(ts, config)
    return model


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--leads", type=int, default=1_000_000, help="leads to score")
    parser.add_argument("--train-rows", type=int, default=200_000)
    parser.add_argument("--chunk-size", type=int, default=None, help="default ScoringConfig.chunk_size")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no-breakdown", action="store_true")
    parser.add_argument("--no-changes", action="store_true", help="skip the movements mode (issue 17)")
    parser.add_argument("--rounds", type=int, default=2,
                        help="paired rounds of score+explain and of the movements mode (the best of each)")
    parser.add_argument("--quick", action="store_true", help="smoke size (50k leads, 50k train)")
    args = parser.parse_args()
    if args.quick:
        args.leads = min(args.leads, 50_000)
        args.train_rows = min(args.train_rows, 50_000)

    config = Config()
    if args.chunk_size:
        config = config.with_overrides(scoring__chunk_size=args.chunk_size)
    chunk = config.scoring.chunk_size
    catalog, event_types = lead_catalog(None)
    ph = Phases(width=46)

    model = ph.run("train the model (fit_deployed, not a target)",
                   lambda: train_model(args, config, catalog, event_types), quiet=True)
    trees = model.booster_.current_iteration()
    leads = make_frame(args.leads, catalog, 1, args.seed + 1, first_as_of="2026-01-01")
    leads = leads.drop(columns=[Labeled.label])
    parts = chunks(leads, chunk)
    at = pd.Timestamp("2026-01-01 06:00:00")
    print(
        f"bench/score.py: {len(leads):,} leads x {len(catalog)} features, chunks of {chunk:,}; "
        f"model: {trees} trees, num_leaves {model.params.get('num_leaves')}, calibrator "
        f"{type(model.calibrator_).__name__}; lightgbm {lgb.__version__}, {os.cpu_count()} cores",
        flush=True,
    )
    ph.run("warm-up: score_frame on 1,000 rows (untimed)",
           lambda: score_frame(model, leads.iloc[:1000], config.scoring, "bench/1", at))
    ph.run("score-only: predict_proba + score + grade", lambda: score_only(model, parts))
    changes_note = ""
    if not args.no_changes:
        then, previous = ph.run("set up previous rows and scores (untimed)",
                                lambda: previous_rows(model, leads, catalog, args.seed + 2, chunk), quiet=True)
    for _ in range(max(1, args.rounds)):  # paired rounds: the best of each, as the machine allows
        out = ph.run("score+explain: score_frame per chunk + concat",
                     lambda: score_explain(model, parts, config, at))
        if not args.no_changes:
            moved, exact = ph.run("score+explain+movements: + compare per chunk",
                                  lambda: score_explain_changes(model, parts, then, previous, config, at))
            row = moved.iloc[int(np.argmax(moved["score_change"].abs().fillna(0).to_numpy()))]
            changes_note = (f"; movements exact for {exact:,} leads; largest change {row['score_change']}: "
                            f"{row['change_1']!r}")
            del moved
    if not args.no_changes:
        del then, previous
    matrices = [model.matrix(b) for b in parts]
    ph.run("TreeSHAP only: contributions on the model matrix", lambda: treeshap_only(model, matrices))
    matrices.clear()
    filled = out["reason_1"].notna().mean() if "reason_1" in out else float("nan")
    example = out.iloc[int(np.argmax(out["score"].to_numpy()))].to_dict()
    del out
    steps = {} if args.no_breakdown else breakdown(model, parts, config)

    n = len(leads)
    t_score = ph.best("score-only: predict_proba + score + grade")
    t_expl = ph.best("score+explain: score_frame per chunk + concat")
    t_shap = ph.best("TreeSHAP only: contributions on the model matrix")
    print()
    header = f"{'run':<48} {'seconds':>9} {'leads/s':>11} {'peak RSS GiB':>13}"
    print(header)
    print("-" * len(header))
    t_changes = float("nan") if args.no_changes else ph.best("score+explain+movements: + compare per chunk")
    for name in ("score-only: predict_proba + score + grade",
                 "score+explain: score_frame per chunk + concat",
                 *(() if args.no_changes else ("score+explain+movements: + compare per chunk",)),
                 "TreeSHAP only: contributions on the model matrix"):
        sec = ph.best(name)
        print(f"{name:<48} {sec:>9.2f} {n / sec:>11,.0f} {gib(ph.peak(name)):>13}")
    print(f"(warm-up {ph.best('warm-up: score_frame on 1,000 rows (untimed)'):.2f} s; leads "
          f"frame alone {gib(leads.memory_usage(deep=True).sum())} GiB; whole-run peak RSS "
          f"{gib(ph.run_peak())} GiB, model training included; load average now "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())} on {os.cpu_count()} cores)")
    if steps:
        total = sum(steps.values())
        print(f"\nscore_frame steps (replica, {total:.1f} s in all vs {t_expl:.1f} s measured):")
        for name, sec in sorted(steps.items(), key=lambda kv: -kv[1]):
            print(f"  {name:<44} {sec:>8.2f} s {sec / total:>7.1%}  {n / sec:>12,.0f} leads/s")
    print(f"\nexplain costs {t_expl / t_score:.1f}x score-only; reason_1 filled for {filled:.1%} "
          f"of leads; top lead: score {example.get('score')}, {example.get('reason_1')!r}")
    if not args.no_changes:
        print(f"movements cost {t_changes / t_expl:.2f}x score+explain (issue 17: at most 2.2x){changes_note}")

    OUT.mkdir(parents=True, exist_ok=True)
    with open(OUT / "score.jsonl", "a") as fh:
        fh.write(json.dumps({
            "time": time.time(), "args": vars(args), "leads": n, "features": len(catalog),
            "trees": trees, "phases": ph.rows, "steps": steps,
            "leads_per_s": {"score_only": n / t_score, "score_explain": n / t_expl,
                            "score_explain_changes": n / t_changes},
            "peak_rss_run": ph.run_peak(),
        }, default=str) + "\n")
    emit({
        "bench": "score", "leads": n, "features": len(catalog), "trees": trees,
        "score_leads_per_s": n / t_score, "explain_leads_per_s": n / t_expl,
        "treeshap_leads_per_s": n / t_shap, "explain_vs_floor": t_expl / (t_score + t_shap),
        "changes_leads_per_s": n / t_changes, "changes_vs_explain": t_changes / t_expl,
        "peak_rss_gib": ph.run_peak() / 2**30,
    })


if __name__ == "__main__":
    main()
