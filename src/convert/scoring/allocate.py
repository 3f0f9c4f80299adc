"""Allocate scored leads to sales reps: territories, capacity, sticky owners, rep effects.

This module owns the allocation core; it is pure (frames in, frames out) and knows nothing
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

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import ClassVar

import numpy as np
import pandas as pd

from convert.exceptions import ContractError
from convert.schema import Column, TableSchema

__all__ = [
    "Allocation",
    "AssignmentOutput",
    "RepEffects",
    "RepTable",
    "Reps",
    "allocate",
    "employee_band",
    "estimate_effects",
    "expected_under",
    "parse_reps",
    "segment_labels",
    "solve_assignment",
]

#: The lead attributes a reps file may use as territory columns besides extra attributes.
TERRITORY_ATTRIBUTES: tuple[str, ...] = ("country", "industry", "lead_source", "employee_band")
#: Separator of accepted values in a territory cell.
ACCEPT_SEPARATOR = "|"
#: Text of a missing attribute in segment labels.
NONE_LABEL = "(none)"
_TRUE = frozenset({"1", "true", "yes", "y", "t", "active"})
_FALSE = frozenset({"0", "false", "no", "n", "f", "inactive"})


# --- schemas ------------------------------------------------------------------------------


class Reps(TableSchema):
    """The reps file (``--reps``): one row per sales rep.

    Every other column is a territory column named after a lead attribute (``country``,
    ``industry``, ``lead_source``, ``employee_band`` or an extra attribute of ``leads``);
    its value is a ``|``-separated list of accepted values, empty for any.
    """

    table = "reps"
    key = ("rep_id",)
    rep_id = Column("rep_id", "string", nullable=False)
    capacity = Column("capacity", "integer", nullable=False)
    max_open = Column("max_open", "integer", required=False)
    active = Column("active", "string", required=False)


class AssignmentOutput(TableSchema):
    """What ``convert-leads allocate`` writes: one row per open lead, assigned or not."""

    table = "lead_assignments"
    key = ("lead_id",)
    lead_id = Column("lead_id", "string", nullable=False)
    rep_id = Column("rep_id", "string")
    probability = Column("probability", "number", nullable=False)
    expected_conversions = Column("expected_conversions", "number")
    rank_for_rep = Column("rank_for_rep", "integer")
    reason = Column("reason", "string", nullable=False)
    as_of = Column("as_of", "timestamp", nullable=False)
    model_version = Column("model_version", "string", nullable=False)
    assigned_at = Column("assigned_at", "timestamp", nullable=False)

    HISTORY_KEY: ClassVar[tuple[str, ...]] = ("lead_id", "as_of", "model_version")
    #: the write-back's shrink guard does not apply: assignments churn every day (the lock,
    #: older-as-of and one-model-per-table guards do)
    SHRINK_GUARD: ClassVar[bool] = False


class RepEffectTable(TableSchema):
    """Learned rep effects: one row per (rep, segment) with past leads."""

    table = "rep_effects"
    rep_id = Column("rep_id", nullable=False)
    segment = Column("segment", nullable=False)
    leads = Column("leads", "integer", nullable=False)
    observed = Column("observed", "number", nullable=False)
    expected = Column("expected", "number", nullable=False)
    effect = Column("effect", "number", nullable=False)
    #: the cell's prior mean: the rep's effect times its factors for the segment's attributes
    prior = Column("prior", "number", nullable=False)
    low = Column("low", "number", nullable=False)
    high = Column("high", "number", nullable=False)


# --- lead attributes ----------------------------------------------------------------------


def employee_band_labels(cuts: Sequence[float]) -> list[str]:
    """Labels of the employee bands cut at *cuts*: ``<10``, ``10-49``, ..., ``5000+``."""
    c = [int(x) for x in cuts]
    labels = [f"<{c[0]}"] + [f"{a}-{b - 1}" for a, b in zip(c, c[1:], strict=False)] + [f"{c[-1]}+"]
    return labels


def employee_band(employees: pd.Series, cuts: Sequence[float]) -> pd.Series:
    """The employee band label of each company size (missing size: missing band)."""
    values = pd.to_numeric(employees, errors="coerce").to_numpy(dtype="float64")
    labels = np.array(employee_band_labels(cuts), dtype=object)
    codes = np.searchsorted(np.asarray(cuts, dtype="float64"), values, side="right")
    out = np.where(np.isnan(values), None, labels[np.minimum(codes, len(labels) - 1)])
    return pd.Series(out, index=employees.index, dtype="object")


def segment_labels(frame: pd.DataFrame, segment_by: Sequence[str]) -> pd.Series:
    """``lead_source=referral, employee_band=50-199`` per row (missing: ``(none)``)."""
    if not segment_by:
        return pd.Series("all", index=frame.index, dtype="object")
    parts = [
        f"{c}=" + frame[c].astype("object").where(frame[c].notna(), NONE_LABEL).astype(str)
        for c in segment_by
    ]
    out = parts[0]
    for p in parts[1:]:
        out = out + ", " + p
    return out.astype("object")


# --- reps -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepTable:
    """Validated reps: ``frame`` (rep_id, capacity, max_open (NaN: none), active) and the
    accepted values of each territory column (``None``: any) per rep, in ``frame`` order."""

    frame: pd.DataFrame
    territory: dict[str, list[frozenset[str] | None]] = field(default_factory=dict)

    @property
    def ids(self) -> list[str]:
        return self.frame[Reps.rep_id].tolist()

    def __len__(self) -> int:
        return len(self.frame)


def _text(value: object) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)) or value is pd.NA:
        return ""
    return str(value).strip()


def parse_reps(frame: pd.DataFrame, label: str = "reps", attributes: Sequence[str] | None = None) -> RepTable:
    """Validate a reps table; errors name the file (*label*), the 1-based row and the column.

    *attributes* are the lead attributes territory columns may name (``None``: any).
    """
    columns = [str(c) for c in frame.columns]
    for required in (Reps.rep_id, Reps.capacity):
        if required not in columns:
            raise ContractError(
                f"the reps table lacks column {required!r} (found: {', '.join(columns)}); it needs "
                "rep_id and capacity, optionally max_open, active and territory columns",
                file=label, column=required,
            )
    territory_columns = [c for c in columns if c not in Reps.names()]
    if attributes is not None:
        unknown = [c for c in territory_columns if c not in attributes]
        if unknown:
            raise ContractError(
                f"territory column {unknown[0]!r} is not a lead attribute; use one of "
                f"{', '.join(attributes)} (or add the attribute to the leads table)",
                file=label, column=unknown[0],
            )
    ids: list[str] = []
    caps: list[int] = []
    max_open: list[float] = []
    active: list[bool] = []
    seen: dict[str, int] = {}
    for row, record in enumerate(frame.to_dict("records"), start=1):
        rep = _text(record.get(Reps.rep_id))
        if not rep:
            raise ContractError("empty rep_id", file=label, row=row, column=Reps.rep_id)
        if rep in seen:
            raise ContractError(f"rep_id {rep!r} repeats row {seen[rep]}", file=label, row=row, column=Reps.rep_id)
        seen[rep] = row
        ids.append(rep)
        caps.append(_whole(record.get(Reps.capacity), label, row, Reps.capacity, required=True))
        mo = record.get(Reps.max_open) if Reps.max_open in columns else None
        max_open.append(float(_whole(mo, label, row, Reps.max_open, required=False)) if _text(mo) else np.nan)
        text = _text(record.get(Reps.active)).lower() if Reps.active in columns else ""
        if text and text not in _TRUE | _FALSE:
            raise ContractError(
                f"active must be true or false (also 1/0, yes/no), not {text!r}", file=label, row=row, column=Reps.active
            )
        active.append(text not in _FALSE)
    territory: dict[str, list[frozenset[str] | None]] = {}
    for column in territory_columns:
        accepted: list[frozenset[str] | None] = []
        for value in frame[column].tolist():
            values = frozenset(v.strip() for v in _text(value).split(ACCEPT_SEPARATOR) if v.strip())
            accepted.append(values or None)
        territory[column] = accepted
    out = pd.DataFrame({Reps.rep_id: ids, Reps.capacity: np.asarray(caps, dtype="int64"),
                        Reps.max_open: np.asarray(max_open, dtype="float64"), Reps.active: np.asarray(active, bool)})
    return RepTable(out, territory)


def _whole(value: object, label: str, row: int, column: str, *, required: bool) -> int:
    text = _text(value)
    if not text:
        if required:
            raise ContractError("empty value; give a whole number of leads", file=label, row=row, column=column)
        return 0
    try:
        number = float(text)
    except ValueError:
        raise ContractError(f"{text!r} is not a whole number", file=label, row=row, column=column) from None
    if number != np.floor(number) or number < 0:
        raise ContractError(f"{text!r} is not a whole number >= 0", file=label, row=row, column=column)
    return int(number)


# --- rep effects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class RepEffects:
    """Effect of each (rep, segment): posterior mean and 95 % interval; 1 where unknown.

    ``table`` has the :class:`RepEffectTable` columns; ``prior_shape`` is the fitted gamma
    prior's shape of the cells around their rep (``inf``: no difference); ``per_rep`` the
    reps' overall effects.
    """

    table: pd.DataFrame
    prior_shape: float = float("inf")
    #: each rep's overall effect (level 1): rep_id, observed, expected, effect
    per_rep: pd.DataFrame = field(default_factory=pd.DataFrame)

    @classmethod
    def none(cls) -> RepEffects:
        return cls(pd.DataFrame({c: pd.Series(dtype="object" if c.dtype == "string" else "float64")
                                 for c in RepEffectTable.columns()}))

    def matrix(self, rep_ids: Sequence[str], segments: Sequence[str]) -> np.ndarray:
        """Effects as a (rep, segment) array in the given orders; 1 where not estimated."""
        out = np.ones((len(rep_ids), len(segments)))
        if self.table.empty:
            return out
        r = pd.Index(rep_ids).get_indexer(self.table[RepEffectTable.rep_id])
        s = pd.Index(segments).get_indexer(self.table[RepEffectTable.segment])
        ok = (r >= 0) & (s >= 0)
        out[r[ok], s[ok]] = self.table[RepEffectTable.effect].to_numpy(dtype="float64")[ok]
        return out

    @cached_property
    def _intervals(self) -> dict[tuple[str, str], tuple[float, float]]:
        t = self.table
        if t.empty:
            return {}
        keys = zip(t[RepEffectTable.rep_id].astype(str), t[RepEffectTable.segment].astype(str), strict=True)
        values = zip(t[RepEffectTable.low].astype(float), t[RepEffectTable.high].astype(float), strict=True)
        return dict(zip(keys, values, strict=True))

    def interval(self, rep: str, segment: str) -> tuple[float, float] | None:
        """The 95 % interval of (rep, segment), ``None`` when not estimated."""
        return self._intervals.get((rep, segment))


def _nb_loglik(shape: float, observed: np.ndarray, mean: np.ndarray) -> float:
    """Log marginal likelihood of Poisson counts whose rate is *mean* times a Gamma effect of
    mean 1 and shape *shape* (a negative binomial)."""
    from scipy.special import gammaln

    a = shape
    return float(np.sum(
        gammaln(a + observed) - gammaln(a) - gammaln(observed + 1)
        + a * np.log(a / (a + mean)) + observed * np.log(np.where(mean > 0, mean / (a + mean), 1.0))
    ))


_SHAPES = np.exp(np.linspace(np.log(0.05), np.log(1e4), 240))


def _shape_weights(observed: np.ndarray, mean: np.ndarray) -> np.ndarray:
    """Posterior weights of the prior shapes on the grid: the marginal likelihood times a
    hyperprior uniform on the spread's standard deviation ``1/sqrt(shape)`` (on the
    log-spaced grid: ``shape^-1/2``), the usual weakly informative choice; uniform on log shape
    would pile up at "no spread" whenever the evidence is thin."""
    ll = np.array([_nb_loglik(b, observed, mean) for b in _SHAPES]) - 0.5 * np.log(_SHAPES)
    w = np.exp(ll - ll.max())
    return w / w.sum()


def _fit_shape(observed: np.ndarray, mean: np.ndarray) -> float:
    """The prior shape maximising the marginal likelihood (``inf``: no spread at all)."""
    ll = [_nb_loglik(a, observed, mean) for a in _SHAPES]
    best = float(_SHAPES[int(np.argmax(ll))])
    return float("inf") if best >= _SHAPES[-1] else best


def _mixture_quantile(q: float, w: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The *q* quantile of each row's mixture of Gamma(a, rate b) with weights *w* (bisection)."""
    from scipy.stats import gamma

    lo = np.min(gamma.ppf(q, a, scale=1 / b), axis=1)
    hi = np.max(gamma.ppf(q, a, scale=1 / b), axis=1)
    for _ in range(40):
        mid = (lo + hi) / 2
        below = (w * gamma.cdf(mid[:, None], a, scale=1 / b)).sum(axis=1) < q
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def estimate_effects(
    history: pd.DataFrame,
    *,
    rep: str = "rep_id",
    segment: str = "segment",
    predicted: str = "predicted",
    converted: str = "converted",
    level: float = 0.95,
    by: Sequence[str] = (),
) -> RepEffects:
    """Rep effects per segment from past leads (empirical Bayes, gamma-Poisson).

    Parameters
    ----------
    history:
        One row per past lead: its owner (*rep*), *segment*, the model's *predicted*
        probability at the time, and whether it *converted* within the horizon (0/1).
    level:
        Probability of the posterior interval.
    by:
        Columns of *history* holding the attributes a segment combines (``segment_by``);
        with them each rep also gets a factor per attribute value (see 2 below).

    For a cell (rep, segment) with ``O`` conversions and ``E`` predicted conversions, the
    expectation is first recalibrated to the history as a whole (``E * O_all / E_all``), so
    an effect of 1 means "as good as the average rep" even when the model's predictions at
    the history's snapshots run high or low overall. (Recalibrating each segment on its own
    would pull every small segment's cells toward 1 and hide real differences.) Two levels of
    gamma-Poisson shrinkage follow:

    1. each rep's overall effect ``m_r`` (all its leads) is shrunk toward 1: prior
       ``Gamma(a, a)``, posterior mean ``(a + O_r) / (a + E_r)``;
    2. with *by*, each rep's factor per attribute value (e.g. rep x lead source, rep x
       employee band: many more leads each than a cell) is shrunk toward 1 the same way, the
       expectation carrying the rep's effect and the other attributes' factors (two rounds
       of backfitting); the cell's prior mean ``mu`` is the product ``m_r x factors``
       (without *by*: ``m_r``);
    3. each cell's effect is shrunk toward ``mu``: prior ``Gamma(b, b / mu)`` widened by the
       uncertainty of ``mu``, posterior ``Gamma(b + O, b / mu + E)``.

    Every prior shape (``a``, the factors', ``b``) is integrated over its posterior on a
    grid, the hyperprior uniform on the spread's standard deviation: a few thousand leads
    rarely tell a modest spread from none, and a single best shape at "none" would give
    intervals far too narrow. Each effect is the mixture's mean, its interval the mixture's
    quantiles. Few leads: an effect near ``mu`` (and ``mu`` near 1) with a wide interval;
    many: near ``O / E``. Without any difference between reps every effect is near 1.
    """

    if history.empty:
        return RepEffects.none()
    by = list(by)
    h = pd.DataFrame({
        "rep": history[rep].astype(str).to_numpy(),
        "segment": history[segment].astype(str).to_numpy(),
        "p": pd.to_numeric(history[predicted]).to_numpy(dtype="float64"),
        "y": pd.to_numeric(history[converted]).to_numpy(dtype="float64"),
        **{f"by_{i}": history[c].astype("object").where(history[c].notna(), NONE_LABEL).astype(str).to_numpy()
           for i, c in enumerate(by)},
    })
    h["v"] = h["p"] * (1 - h["p"])
    parts = {f"by_{i}": (f"by_{i}", "first") for i in range(len(by))}
    cells = h.groupby(["rep", "segment"], sort=True).agg(
        n=("y", "size"), o=("y", "sum"), e=("p", "sum"), v=("v", "sum"), **parts).reset_index()
    total = float(h["p"].sum())
    # Bernoulli outcomes vary less than Poisson counts (p(1-p) < p): counted at face value,
    # hot leads would hide real differences between reps. Both counts are scaled by the
    # cell's p(1-p)/p (its "effective" Poisson evidence); the ratio O/E is unchanged.
    phi = np.clip((cells["v"] / cells["e"]).to_numpy(), 1e-3, 1.0)
    scale = float(h["y"].sum()) / total if total > 0 else 1.0
    cells["o_raw"], cells["e_raw"] = cells["o"], cells["e"] * scale
    cells["o"], cells["e"] = cells["o"] / phi, cells["e"] * scale / phi
    reps = cells.groupby("rep").agg(o=("o", "sum"), e=("e", "sum"))
    # level 1, each rep toward 1, integrated over the prior shape like the cells' (below)
    ro, re_ = reps["o"].to_numpy(), reps["e"].to_numpy()
    w1 = _shape_weights(ro, re_)
    ra, rb = _SHAPES[None, :] + ro[:, None], _SHAPES[None, :] + re_[:, None]
    rep_mean = (w1[None, :] * ra / rb).sum(axis=1)
    rep_var = (w1[None, :] * (ra / rb**2 + (ra / rb) ** 2)).sum(axis=1) - rep_mean**2
    m = pd.Series(rep_mean, index=reps.index).reindex(cells["rep"]).to_numpy()
    o, e = cells["o"].to_numpy(), cells["e"].to_numpy()
    m_var = pd.Series(np.maximum(rep_var, 0.0), index=reps.index).reindex(cells["rep"]).to_numpy()
    # level 2: rep x attribute-value factors (main effects), backfitted
    factor = {k: np.ones(len(cells)) for k in parts}
    factor_var = {k: np.zeros(len(cells)) for k in parts}
    for _ in range(2 if parts else 0):
        for k in parts:
            others = m * np.prod([factor[j] for j in parts if j != k], axis=0)
            keys = cells["rep"] + "\x1f" + cells[k]
            codes, _ = pd.factorize(keys)
            go = np.bincount(codes, weights=o)
            ge = np.bincount(codes, weights=others * e)
            wf = _shape_weights(go, ge)
            fa, fb = _SHAPES[None, :] + go[:, None], _SHAPES[None, :] + ge[:, None]
            f_mean = (wf[None, :] * fa / fb).sum(axis=1)
            f_var = (wf[None, :] * (fa / fb**2 + (fa / fb) ** 2)).sum(axis=1) - f_mean**2
            factor[k], factor_var[k] = f_mean[codes], np.maximum(f_var[codes], 0.0)
    mu = m * np.prod(list(factor.values()), axis=0) if parts else m
    mu_var = mu**2 * (m_var / m**2 + sum((factor_var[k] / factor[k] ** 2 for k in parts), np.zeros(len(cells))))
    # the cells' spread around their rep: a posterior over the prior shape, not only its best
    # value, so that evidence too thin to tell a spread from none still widens the intervals
    # instead of collapsing them onto the rep's effect. The hyperprior is uniform on the
    # spread's standard deviation 1/sqrt(b) (on the log-spaced grid: weight b^-1/2), the
    # usual weakly informative choice; uniform on log b would pile up at "no spread".
    weight = _shape_weights(o, mu * e)
    keep = weight > 1e-6
    shape = float(_SHAPES[int(np.argmax(weight))])
    # the cell's prior: mean mu, variance mu^2 / b plus the uncertainty of mu itself
    b_cell = mu[:, None] ** 2 / (mu[:, None] ** 2 / _SHAPES[keep][None, :] + mu_var[:, None])
    post_a, post_b = b_cell + o[:, None], b_cell / mu[:, None] + e[:, None]
    w = weight[keep][None, :]
    tail = (1 - level) / 2
    table = pd.DataFrame({
        RepEffectTable.rep_id: cells["rep"].to_numpy(dtype=object),
        RepEffectTable.segment: cells["segment"].to_numpy(dtype=object),
        RepEffectTable.leads: cells["n"].to_numpy(dtype="int64"),
        RepEffectTable.observed: cells["o_raw"].to_numpy(),
        RepEffectTable.expected: cells["e_raw"].to_numpy(),
        RepEffectTable.effect: (w * post_a / post_b).sum(axis=1),
        RepEffectTable.prior: mu,
        RepEffectTable.low: _mixture_quantile(tail, w, post_a, post_b),
        RepEffectTable.high: _mixture_quantile(1 - tail, w, post_a, post_b),
    })
    raw = cells.groupby("rep").agg(o=("o_raw", "sum"), e=("e_raw", "sum"))
    wk = w1[None, :].repeat(len(reps), axis=0)
    per_rep = pd.DataFrame({"rep_id": reps.index.to_numpy(dtype=object), "observed": raw["o"].to_numpy(),
                            "expected": raw["e"].to_numpy(), "effect": rep_mean,
                            "low": _mixture_quantile(tail, wk, ra, rb), "high": _mixture_quantile(1 - tail, wk, ra, rb)})
    return RepEffects(table, shape, per_rep)


# --- the solver -------------------------------------------------------------------------------


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


# --- allocation -------------------------------------------------------------------------------


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
        parts.append(f"{c} {_text(v) or 'unknown'}")
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
    codes, uniques = pd.factorize(pd.MultiIndex.from_frame(keys.map(_text)) if len(columns) > 1
                                  else keys[columns[0]].map(_text))
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
    owner = leads[Lead.owner].map(_text).to_numpy(dtype=object) if Lead.owner in leads else np.full(n, "", object)
    source = (leads[Lead.owner_source].map(_text).to_numpy(dtype=object) if Lead.owner_source in leads
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
    skip = leads[Lead.skip_reason].map(_text).to_numpy(dtype=object) if Lead.skip_reason in leads else np.full(n, "", object)
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
    value = _value(chosen, p, eff, seg_code)
    comparison = {"leads": float(len(todo)), "allocation": value, "round_robin": _value(rr, p, eff, seg_code),
                  "greedy": _value(gr, p, eff, seg_code)}
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


def _value(chosen: np.ndarray, p: np.ndarray, eff: np.ndarray, seg_code: np.ndarray) -> float:
    ok = chosen >= 0
    return float(np.sum(p[ok] * eff[chosen[ok], seg_code[ok]]))


def expected_under(allocation: Allocation, leads: pd.DataFrame, effects: RepEffects | np.ndarray,
                   rep_ids: Sequence[str]) -> dict[str, float]:
    """Expected conversions of the new assignments of each method under other *effects*
    (e.g. a simulator's true ones: a :class:`RepEffects` whose ``effect`` column holds them)."""
    seg = allocation.assignments["segment"]
    segments = sorted(seg.unique().tolist())
    code = pd.Index(segments).get_indexer(seg)
    eff = effects.matrix(rep_ids, segments) if isinstance(effects, RepEffects) else effects
    p = leads[Lead.probability].to_numpy(dtype="float64")
    return {k: _value(v.to_numpy(), p, eff, code) for k, v in allocation.baselines.items()}


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
