"""Allocate scored leads to sales reps: territories, capacity, sticky owners, reasons.

:func:`allocate` builds the (lead, rep) pairs each lead's territory allows, weighs them by
probability times rep effect (:mod:`convert.scoring.allocate.effects`), has
:func:`~convert.scoring.allocate.solver.solve_assignment` choose, writes a reason per lead
and compares the result with the baselines (:mod:`convert.scoring.allocate.baselines`).

Sticky leads
------------
A lead already owned (an owner column in the CRM) or already assigned (the previous run's
output) keeps its rep while the rep is active and the lead is open (it is in the scores),
unless ``reassign`` frees the leads being allocated. Sticky leads count toward ``max_open``,
not toward ``capacity``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from convert.scoring.allocate.baselines import expected_value, greedy_by_score, round_robin
from convert.scoring.allocate.effects import RepEffects
from convert.scoring.allocate.reps import (
    AssignmentOutput,
    Reps,
    RepTable,
    cell_text,
    segment_labels,
)
from convert.scoring.allocate.solver import solve_assignment


class Lead:
    """Columns of the leads frame :func:`allocate` takes (besides the attributes)."""

    lead_id = "lead_id"
    probability = "probability"
    #: True for the leads to allocate this run (routed to sales, or above --min-score)
    candidate = "candidate"
    #: why a lead is not a candidate (plain words), empty for candidates
    skip_reason = "skip_reason"
    #: the rep the lead already has (CRM owner or previous assignment), empty if none
    owner = "owner"
    #: where the owner comes from: "owned in the CRM" or "assigned by a previous run"
    owner_source = "owner_source"


@dataclass
class Allocation:
    """The result of :func:`allocate`.

    ``assignments``: one row per lead (``lead_id``, ``rep_id``, ``probability``,
    ``expected_conversions``, ``rank_for_rep``, ``reason``, ``segment``, ``sticky``).
    ``per_rep``: per rep, the capacity, new leads, sticky leads, open leads after the run
    and expected conversions of the new leads. ``comparison``: expected conversions of the
    new assignments beside round-robin and greedy-by-score on the same leads and reps.
    """

    assignments: pd.DataFrame
    per_rep: pd.DataFrame
    comparison: dict[str, float]
    baselines: dict[str, pd.Series]
    segment_by: tuple[str, ...]

    def lines(self) -> list[str]:
        t = self.per_rep.copy()
        out = ["per rep:", t.to_string(index=False)]
        c = self.comparison
        out.append(
            f"expected conversions of the {int(c.get('leads', 0)):,} leads allocated: "
            f"this allocation {c['allocation']:.2f}, round-robin {c['round_robin']:.2f}, "
            f"highest scores to whoever is free {c['greedy']:.2f}"
        )
        return out


def _territory_text(lead: pd.Series | dict[str, object], columns: Sequence[str]) -> str:
    parts = []
    for c in columns:
        v = lead[c]
        parts.append(f"{c} {cell_text(v) or 'unknown'}")
    return ", ".join(parts)


def eligibility(leads: pd.DataFrame, reps: RepTable) -> tuple[np.ndarray, np.ndarray]:
    """Territory match of every lead with every rep: (combo code per lead, bool matrix combos x reps).

    A rep covers a lead when, for every territory column, the rep accepts any value or the
    lead's value is among the accepted ones (a lead without a value is covered only by reps
    that accept any).
    """
    columns = list(reps.territory)
    if not columns:
        return np.zeros(len(leads), dtype=np.int64), np.ones((1, len(reps)), bool)
    keys = leads[columns].astype("object").where(leads[columns].notna(), None)
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys.map(cell_text)) if len(columns) > 1
                                  else keys[columns[0]].map(cell_text))
    combos = list(uniques) if len(columns) > 1 else [(u,) for u in uniques]
    match = np.ones((len(combos), len(reps)), bool)
    for j, c in enumerate(columns):
        accepted = reps.territory[c]
        for i, combo in enumerate(combos):
            value = combo[j]
            match[i] &= np.array([a is None or (value != "" and value in a) for a in accepted])
    return np.asarray(codes, dtype=np.int64), match


def allocate(
    leads: pd.DataFrame,
    reps: RepTable,
    *,
    effects: RepEffects | None = None,
    segment_by: Sequence[str] = ("lead_source", "employee_band"),
    reassign: bool = False,
    balance: float | None = None,
    time_limit: float = 60.0,
) -> Allocation:
    """Allocate the candidate leads to reps (see the module docs).

    Parameters
    ----------
    leads:
        One row per open lead with the :class:`Lead` columns and the attributes the
        territories and segments use.
    reps:
        :func:`parse_reps`' result.
    effects:
        Rep effects per segment (:func:`estimate_effects`); ``None``: every effect is 1.
    reassign:
        Free the candidate leads from their current rep (non-candidates keep theirs).
    balance:
        Spread expected conversions within this share of the mean first (``--balance``).
    """
    effects = effects or RepEffects.none()
    segment_by = tuple(segment_by)
    n = len(leads)
    ids = reps.ids
    rep_pos = {r: i for i, r in enumerate(ids)}
    rf = reps.frame
    active = rf[Reps.active].to_numpy(bool)
    seg = segment_labels(leads, segment_by)
    segments = sorted(seg.unique().tolist())
    seg_code = pd.Index(segments).get_indexer(seg)
    eff = effects.matrix(ids, segments)
    p = leads[Lead.probability].to_numpy(dtype="float64")
    candidate = leads[Lead.candidate].to_numpy(bool)
    owner = leads[Lead.owner].map(cell_text).to_numpy(dtype=object) if Lead.owner in leads else np.full(n, "", object)
    source = (leads[Lead.owner_source].map(cell_text).to_numpy(dtype=object) if Lead.owner_source in leads
              else np.full(n, "", object))
    owner_pos = np.array([rep_pos.get(o, -1) if o else -1 for o in owner], dtype=np.int64)
    owner_active = (owner_pos >= 0) & active[np.maximum(owner_pos, 0)]
    sticky = owner_active & ~(candidate & reassign)
    open_count = np.bincount(owner_pos[sticky], minlength=len(ids)) if len(ids) else np.zeros(0, np.int64)
    cap = rf[Reps.capacity].to_numpy(np.int64)
    mo = rf[Reps.max_open].to_numpy("float64")
    room_open = np.where(np.isnan(mo), np.iinfo(np.int64).max // 4, np.nan_to_num(mo) - open_count).astype(np.int64)
    room = np.where(active, np.maximum(0, np.minimum(cap, room_open)), 0)

    combo, match = eligibility(leads, reps)
    todo = np.flatnonzero(candidate & ~sticky)
    # the pairs: every lead to allocate x every active rep covering it with room
    pair_lead, pair_rep = [], []
    cover = match & active[None, :]
    usable = cover & (room > 0)[None, :]
    for k in np.unique(combo[todo]) if len(todo) else []:
        members = todo[combo[todo] == k]
        reps_k = np.flatnonzero(usable[k])
        if len(reps_k):
            pair_lead.append(np.repeat(members, len(reps_k)))
            pair_rep.append(np.tile(reps_k, len(members)))
    pl = np.concatenate(pair_lead) if pair_lead else np.zeros(0, np.int64)
    pr = np.concatenate(pair_rep) if pair_rep else np.zeros(0, np.int64)
    w = p[pl] * eff[pr, seg_code[pl]]
    chosen = solve_assignment(pl, pr, w, room, n, balance=balance, time_limit=time_limit)

    rep_out = np.full(n, None, dtype=object)
    rep_idx = np.full(n, -1, dtype=np.int64)
    rep_idx[sticky] = owner_pos[sticky]
    new = chosen >= 0
    rep_idx[new] = chosen[new]
    rep_out[rep_idx >= 0] = np.asarray(ids, dtype=object)[rep_idx[rep_idx >= 0]]
    expected = np.full(n, np.nan)
    has = rep_idx >= 0
    expected[has] = p[has] * eff[rep_idx[has], seg_code[has]]

    # reasons
    terr_cols = list(reps.territory)
    reasons = np.empty(n, dtype=object)
    used = np.bincount(chosen[new], minlength=len(ids)) if len(ids) else np.zeros(0, np.int64)
    left = room - used
    skip = leads[Lead.skip_reason].map(cell_text).to_numpy(dtype=object) if Lead.skip_reason in leads else np.full(n, "", object)
    records = leads[terr_cols].to_dict("records") if terr_cols else [{}] * n
    for i in range(n):
        if sticky[i]:
            reasons[i] = f"kept with {owner[i]}: {source[i] or 'already owned'}, rep active, lead open"
            continue
        released = f" (its owner {owner[i]} is inactive or not in the reps file)" if owner[i] and not owner_active[i] else ""
        if not candidate[i]:
            reasons[i] = (skip[i] or "not a lead to allocate this run") + released
            continue
        terr = _territory_text(records[i], terr_cols) if terr_cols else "any territory"
        if new[i]:
            r = chosen[i]
            e = eff[r, seg_code[i]]
            text = f"{ids[r]} covers its territory ({terr}) and had room"
            if e != 1.0:
                ci = effects.interval(ids[r], segments[seg_code[i]])
                band = f", 95% interval {ci[0]:.2f}-{ci[1]:.2f}" if ci else ""
                text += f"; converts {segments[seg_code[i]]} at {e:.2f}x the average{band}"
            reasons[i] = text + f"; {expected[i]:.3f} expected conversions, the best use of capacity" + released
            continue
        k = combo[i]
        if not cover[k].any():
            reasons[i] = f"unassigned: no active rep covers its territory ({terr})" + released
        elif not (cover[k] & (room > 0)).any():
            reasons[i] = (f"unassigned: capacity exhausted: the {int(cover[k].sum())} active rep(s) covering its "
                          f"territory ({terr}) have no capacity or are at max_open") + released
        elif balance is not None and (cover[k] & (left > 0)).any():
            reasons[i] = ("unassigned: left out to keep expected conversions balanced across reps "
                          f"(--balance); {p[i]:.3f} probability") + released
        else:
            reasons[i] = (f"unassigned: capacity exhausted: the reps covering its territory ({terr}) are full with "
                          f"leads of higher expected conversions ({p[i]:.3f} probability)") + released
    assignments = pd.DataFrame({
        AssignmentOutput.lead_id: leads[Lead.lead_id].astype(str).to_numpy(),
        AssignmentOutput.rep_id: rep_out,
        AssignmentOutput.probability: p,
        AssignmentOutput.expected_conversions: expected,
        "segment": seg.to_numpy(),
        "sticky": sticky,
        AssignmentOutput.reason: reasons,
    })
    ranked = assignments[has].sort_values([AssignmentOutput.rep_id, AssignmentOutput.expected_conversions,
                                           AssignmentOutput.lead_id], ascending=[True, False, True])
    rank = ranked.groupby(AssignmentOutput.rep_id).cumcount() + 1
    assignments[AssignmentOutput.rank_for_rep] = pd.array([pd.NA] * n, dtype="Int64")
    assignments.loc[rank.index, AssignmentOutput.rank_for_rep] = rank.to_numpy()

    # baselines on the same leads, pairs and room
    pool = np.zeros(n, bool)
    pool[todo] = True
    rr = round_robin(pl, pr, p, room, n, order=np.arange(n))
    gr = greedy_by_score(pl, pr, p, room, n)
    value = expected_value(chosen, p, eff, seg_code)
    comparison = {"leads": float(len(todo)), "allocation": value, "round_robin": expected_value(rr, p, eff, seg_code),
                  "greedy": expected_value(gr, p, eff, seg_code)}
    ec_new = np.bincount(chosen[new], weights=expected[new], minlength=len(ids)) if len(ids) else np.zeros(0)
    per_rep = pd.DataFrame({
        "rep_id": ids,
        "active": active,
        "capacity": cap,
        "new_leads": used,
        "capacity_used": [f"{u}/{c}" for u, c in zip(used, cap, strict=True)],
        "sticky_leads": open_count,
        "open_after": open_count + used,
        "max_open": [("" if np.isnan(x) else str(int(x))) for x in mo],
        "expected_conversions": np.round(ec_new, 3),
    })
    baselines = {"allocation": pd.Series(chosen), "round_robin": pd.Series(rr), "greedy": pd.Series(gr)}
    return Allocation(assignments, per_rep, comparison, baselines, segment_by)


def expected_under(allocation: Allocation, leads: pd.DataFrame, effects: RepEffects | np.ndarray,
                   rep_ids: Sequence[str]) -> dict[str, float]:
    """Expected conversions of the new assignments of each method under other *effects*
    (e.g. a simulator's true ones: a :class:`RepEffects` whose ``effect`` column holds them)."""
    seg = allocation.assignments["segment"]
    segments = sorted(seg.unique().tolist())
    code = pd.Index(segments).get_indexer(seg)
    eff = effects.matrix(rep_ids, segments) if isinstance(effects, RepEffects) else effects
    p = leads[Lead.probability].to_numpy(dtype="float64")
    return {k: expected_value(v.to_numpy(), p, eff, code) for k, v in allocation.baselines.items()}
