"""What an allocation is compared with: round-robin and highest-score-first on the same pairs.

Both baselines take the same (lead, rep) pairs and room as the solver, so the comparison
in :class:`~convert.scoring.allocate.assign.Allocation` measures the solver alone.
"""

from __future__ import annotations

import numpy as np


def expected_value(chosen: np.ndarray, p: np.ndarray, eff: np.ndarray, seg_code: np.ndarray) -> float:
    """Expected conversions of *chosen* (a rep index per lead, -1: none) under effects *eff*."""
    ok = chosen >= 0
    return float(np.sum(p[ok] * eff[chosen[ok], seg_code[ok]]))


def round_robin(lead: np.ndarray, rep: np.ndarray, p: np.ndarray, room: np.ndarray, n: int,
                order: np.ndarray) -> np.ndarray:
    """Leads in *order*, each to the next rep in rotation that covers it and has room."""
    return _sequential(lead, rep, room, n, order, rotate=True)


def greedy_by_score(lead: np.ndarray, rep: np.ndarray, p: np.ndarray, room: np.ndarray, n: int) -> np.ndarray:
    """Highest probability first, each to the covering rep with the most room left (ties: rep order)."""
    order = np.lexsort((np.arange(n), -p))
    return _sequential(lead, rep, room, n, order, rotate=False)


def _sequential(lead: np.ndarray, rep: np.ndarray, room: np.ndarray, n: int, order: np.ndarray,
                rotate: bool) -> np.ndarray:
    out = np.full(n, -1, dtype=np.int64)
    if not len(lead):
        return out
    left = room.astype(np.int64).copy()
    n_reps = len(room)
    by_lead = np.argsort(lead, kind="stable")
    starts = np.searchsorted(lead[by_lead], np.arange(n + 1))
    turn = 0
    for i in order:
        options = rep[by_lead[starts[i]:starts[i + 1]]]
        if not len(options):
            continue
        options = options[left[options] > 0]
        if not len(options):
            continue
        if rotate:
            r = options[np.argmin((options - turn) % n_reps)]
            turn = (r + 1) % n_reps
        else:
            r = options[np.lexsort((options, -left[options]))[0]]
        out[i] = r
        left[r] -= 1
    return out
