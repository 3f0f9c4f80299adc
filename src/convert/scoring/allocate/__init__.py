"""Allocate scored leads to sales reps: territories, capacity, sticky owners, rep effects.

This package owns the allocation core; it is pure (frames in, frames out) and knows nothing
of files, databases, MLflow or the command line (``convert.steps.allocate_step`` does the
input and output).

The problem and how it is solved (a transportation problem, exact by column generation with
HiGHS; ``balance`` as two small mixed-integer programmes) are described in
:mod:`convert.scoring.allocate.solver`.

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
segment's average rep (calibration factors common to all reps absorb where the model runs
high or low for a segment), and shrinks the ratio by the amount of evidence: a gamma-Poisson
(empirical Bayes) model whose prior strengths are integrated over their marginal likelihood,
each rep's overall effect shrunk toward 1 and each (rep, segment) toward its rep's. Each
effect comes with its 95 % posterior interval.
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
