"""Rep effects: how each rep converts each segment, by empirical Bayes.

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

import numpy as np
import pandas as pd

from convert.scoring.allocate.reps import NONE_LABEL, RepEffectTable


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
