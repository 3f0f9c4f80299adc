"""The assignment solver: expected conversions maximised under capacity and territory.

Each lead ``i`` to allocate has a calibrated probability ``p_i`` and a *segment* ``s(i)``
(the combination of the lead attributes in ``allocation.segment_by``). Each rep ``r`` has a
``capacity`` (new leads this run), an optional ``max_open`` (open leads in total, sticky ones
included), an ``active`` flag and territory columns. Assigning ``i`` to ``r`` earns
``p_i * effect(r, s(i))`` expected conversions; the allocation maximises their sum under
capacity, ``max_open`` and territory. This is a bipartite b-matching (a transportation
problem): its constraint matrix is totally unimodular, so the linear programme has an
integral optimal vertex and HiGHS (through :func:`scipy.optimize.linprog`) solves it exactly.

At 100,000 leads x 200 reps the full programme has millions of (lead, rep) columns.
:func:`solve_assignment` solves it by *column generation*: it starts from every rep's best
candidate leads, solves the restricted programme, prices every other (lead, rep) pair with the
duals (a pair can only improve the optimum when ``w_ir > u_i + lambda_r``) and adds the pairs
that would, until none does. The final restricted optimum is then optimal for the full
problem (LP duality), which the tests check against brute force.

``balance`` first spreads expected conversions across the reps with room, within a
tolerance of their mean (phase 1: least total excess over the band), then maximises
expected conversions keeping that spread (phase 2): two small mixed-integer programmes
(HiGHS through :func:`scipy.optimize.milp`) over the pairs column generation found useful.
"""

from __future__ import annotations

import numpy as np


def solve_assignment(
    lead: np.ndarray,
    rep: np.ndarray,
    weight: np.ndarray,
    capacity: np.ndarray,
    n_leads: int,
    *,
    balance: float | None = None,
    time_limit: float = 60.0,
) -> np.ndarray:
    """The rep of each lead (-1: none) maximising the total weight of the chosen pairs.

    Parameters
    ----------
    lead, rep, weight:
        The allowed (lead, rep) pairs and their weights (expected conversions); a pair
        not listed is not allowed. Weights must be >= 0.
    capacity:
        Most leads each rep may take.
    n_leads:
        Number of leads (``lead`` holds indices below it).
    balance:
        When given, first spread the weight across the reps with capacity within this
        share of their mean, then maximise (see the module docs).
    """
    lead = np.asarray(lead, dtype=np.int64)
    rep = np.asarray(rep, dtype=np.int64)
    weight = np.asarray(weight, dtype="float64")
    capacity = np.asarray(capacity, dtype=np.int64)
    out = np.full(n_leads, -1, dtype=np.int64)
    keep = (weight > 0) & (capacity[rep] > 0) if len(rep) else np.zeros(0, bool)
    lead, rep, weight = lead[keep], rep[keep], weight[keep]
    if not len(lead):
        return out
    # the solver's tolerances are absolute: solve in units of the largest weight
    weight = weight / weight.max()
    chosen, selected = _column_generation(lead, rep, weight, capacity, n_leads)
    if balance is not None:
        chosen = _balanced(lead[selected], rep[selected], weight[selected], capacity, balance, time_limit,
                           start=chosen[selected])
        pairs = np.flatnonzero(selected)[chosen]
    else:
        pairs = np.flatnonzero(chosen)
    out[lead[pairs]] = rep[pairs]
    return out


def _restricted_lp(lead: np.ndarray, rep: np.ndarray, weight: np.ndarray, capacity: np.ndarray,
                   n_reps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Solve the b-matching LP over the given pairs: (x, lead ids of the rows, lead duals, rep duals)."""
    import scipy.sparse as sp
    from scipy.optimize import linprog

    leads, row = np.unique(lead, return_inverse=True)
    m = len(lead)
    cols = np.arange(m)
    a = sp.vstack([
        sp.csr_matrix((np.ones(m), (row, cols)), shape=(len(leads), m)),
        sp.csr_matrix((np.ones(m), (rep, cols)), shape=(n_reps, m)),
    ]).tocsc()
    b = np.concatenate([np.ones(len(leads)), capacity.astype("float64")])
    res = linprog(-weight, A_ub=a, b_ub=b, bounds=(0, 1), method="highs",
                  options={"primal_feasibility_tolerance": 1e-10, "dual_feasibility_tolerance": 1e-10})
    if res.status != 0:  # the problem is always feasible (x = 0) and bounded
        raise RuntimeError(f"HiGHS could not solve the allocation: {res.message}")
    marg = -np.asarray(res.ineqlin.marginals)
    return np.asarray(res.x), leads, marg[: len(leads)], marg[len(leads):]


def _column_generation(lead: np.ndarray, rep: np.ndarray, weight: np.ndarray, capacity: np.ndarray,
                       n_leads: int) -> tuple[np.ndarray, np.ndarray]:
    """Optimal pairs (a boolean mask over the pairs) and the pairs the last LP held."""
    n_reps = len(capacity)
    order = np.lexsort((-weight, rep))
    start = np.searchsorted(rep[order], np.arange(n_reps))
    rank = np.empty(len(rep), dtype=np.int64)
    rank[order] = np.arange(len(rep)) - start[rep[order]]
    selected = rank < 2 * capacity[rep] + 5
    # every lead also brings its best pair, so no lead is priced at u = 0 by default
    best = np.lexsort((-weight, lead))
    first = np.ones(len(best), bool)
    first[1:] = lead[best][1:] != lead[best][:-1]
    selected[best[first]] = True
    tol = 1e-9 * max(float(weight.max()), 1e-12)
    for _ in range(100):
        idx = np.flatnonzero(selected)
        x, rows, u, lam = _restricted_lp(lead[idx], rep[idx], weight[idx], capacity, n_reps)
        u_all = np.zeros(n_leads)
        u_all[rows] = u
        reduced = weight - u_all[lead] - lam[rep]
        add = (reduced > tol) & ~selected
        if not add.any():
            break
        selected |= add
    chosen = np.zeros(len(lead), bool)
    chosen[idx[x > 0.5]] = True
    frac = (x > 1e-6) & (x < 1 - 1e-6)
    if frac.any():  # not expected (the matrix is totally unimodular); settle it exactly
        sub = _milp(lead[idx], rep[idx], weight[idx], capacity, None, 60.0, None)
        chosen[:] = False
        chosen[idx[sub]] = True
    return chosen, selected


def _balanced(lead: np.ndarray, rep: np.ndarray, weight: np.ndarray, capacity: np.ndarray, tolerance: float,
              time_limit: float, start: np.ndarray) -> np.ndarray:
    return _milp(lead, rep, weight, capacity, tolerance, time_limit, start)


def _milp(lead: np.ndarray, rep: np.ndarray, weight: np.ndarray, capacity: np.ndarray, tolerance: float | None,
          time_limit: float, start: np.ndarray | None) -> np.ndarray:
    """Exact MILP over the given pairs; with *tolerance*: lexicographic balance then value."""
    import scipy.sparse as sp
    from scipy.optimize import Bounds, LinearConstraint, milp

    n_reps = len(capacity)
    leads, row = np.unique(lead, return_inverse=True)
    m = len(lead)
    cols = np.arange(m)
    lead_rows = sp.csr_matrix((np.ones(m), (row, cols)), shape=(len(leads), m))
    rep_rows = sp.csr_matrix((np.ones(m), (rep, cols)), shape=(n_reps, m))
    # exact without balance; with it, within 0.01 % of the best (two MILPs, time-limited)
    options = {"time_limit": time_limit, "mip_rel_gap": 1e-7 if tolerance is None else 1e-4, "disp": False}
    if tolerance is None:
        cons = [LinearConstraint(lead_rows, -np.inf, 1), LinearConstraint(rep_rows, -np.inf, capacity)]
        res = milp(-weight, constraints=cons, integrality=np.ones(m), bounds=Bounds(0, 1), options=options)
        return np.asarray(res.x) > 0.5
    # balanced reps: those with capacity and at least one pair
    group = np.flatnonzero((capacity > 0) & (np.bincount(rep, minlength=n_reps) > 0))
    k = len(group)
    if k < 2:
        return _milp(lead, rep, weight, capacity, None, time_limit, start)
    ec = sp.csr_matrix((weight, (rep, cols)), shape=(n_reps, m))[group]  # EC_r = ec @ x
    mean = sp.csr_matrix(np.asarray(ec.sum(axis=0)) / k)  # (1 x m)
    ones = sp.csr_matrix(np.ones((k, 1)))
    eye = sp.identity(k, format="csr")
    upper = sp.hstack([ec - (1 + tolerance) * (ones @ mean), -eye])  # EC_r - (1+t) mean - s_r <= 0
    lower = sp.hstack([-ec + (1 - tolerance) * (ones @ mean), -eye])  # (1-t) mean - EC_r - s_r <= 0
    zeros = sp.csr_matrix((len(leads), k))
    base = [
        LinearConstraint(sp.hstack([lead_rows, zeros]), -np.inf, 1),
        LinearConstraint(sp.hstack([rep_rows, sp.csr_matrix((n_reps, k))]), -np.inf, capacity),
        LinearConstraint(sp.vstack([upper, lower]), -np.inf, 0),
    ]
    integrality = np.concatenate([np.ones(m), np.zeros(k)])
    bounds = Bounds(np.zeros(m + k), np.concatenate([np.ones(m), np.full(k, np.inf)]))
    # phase 1: the least excess over the band
    c1 = np.concatenate([np.zeros(m), np.ones(k)])
    res1 = milp(c1, constraints=base, integrality=integrality, bounds=bounds, options=options)
    if res1.x is None:
        return start if start is not None else np.zeros(m, bool)
    excess = float(res1.fun)
    # phase 2: the most expected conversions at that spread
    keep = LinearConstraint(sp.csr_matrix(c1), -np.inf, excess + 1e-7 * max(1.0, excess) + 1e-9)
    c2 = np.concatenate([-weight, np.zeros(k)])
    res2 = milp(c2, constraints=[*base, keep], integrality=integrality, bounds=bounds, options=options)
    x = res2.x if res2.x is not None else res1.x
    return np.asarray(x[:m]) > 0.5
