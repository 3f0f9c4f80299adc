"""Allocate scored leads to sales reps: territories, capacity, sticky owners, rep effects.

This package owns the allocation core; it is pure (frames in, frames out) and knows nothing
of files, databases, MLflow or the command line (``convert.steps.allocate_step`` does the
input and output).

The problem
-----------
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

Sticky leads
------------
A lead already owned (an owner column in the CRM) or already assigned (the previous run's
output) keeps its rep while the rep is active and the lead is open (it is in the scores),
unless ``reassign`` frees the leads being allocated. Sticky leads count toward ``max_open``,
not toward ``capacity``.

Rep effects
-----------
:func:`estimate_effects` compares, per rep and segment, the conversions of the rep's past
leads with what the model predicted for them (observed / expected), relative to the
segment as a whole, and shrinks the ratio by the amount of evidence: a gamma-Poisson
(empirical Bayes) model whose prior strengths are fitted by maximum marginal likelihood, each
rep's overall effect shrunk toward 1 and each (rep, segment) toward its rep's. Each effect
comes with its 95 % posterior interval.
"""
from convert.scoring.allocate.assign import Allocation, Lead, allocate, eligibility, expected_under
from convert.scoring.allocate.baselines import greedy_by_score, round_robin
from convert.scoring.allocate.effects import RepEffects, estimate_effects
from convert.scoring.allocate.reps import (
    ACCEPT_SEPARATOR,
    NONE_LABEL,
    TERRITORY_ATTRIBUTES,
    AssignmentOutput,
    RepEffectTable,
    Reps,
    RepTable,
    employee_band,
    employee_band_labels,
    parse_reps,
    segment_labels,
)
from convert.scoring.allocate.solver import solve_assignment

__all__ = [
    "ACCEPT_SEPARATOR",
    "NONE_LABEL",
    "TERRITORY_ATTRIBUTES",
    "Allocation",
    "AssignmentOutput",
    "Lead",
    "RepEffectTable",
    "RepEffects",
    "RepTable",
    "Reps",
    "allocate",
    "eligibility",
    "employee_band",
    "employee_band_labels",
    "estimate_effects",
    "expected_under",
    "greedy_by_score",
    "parse_reps",
    "round_robin",
    "segment_labels",
    "solve_assignment",
]
