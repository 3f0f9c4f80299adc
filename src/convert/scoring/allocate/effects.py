"""Rep effects: how each rep converts each segment, by empirical Bayes.

:func:`estimate_effects` compares, per rep and segment, the conversions of the rep's past
leads with what the model predicted for them (observed / expected), relative to the
segment's average rep (calibration factors common to all reps absorb where the model runs
high or low for a segment), and shrinks the ratio by the amount of evidence: a gamma-Poisson
(empirical Bayes) model whose prior strengths are integrated over their marginal likelihood,
each rep's overall effect shrunk toward 1 and each (rep, segment) toward its rep's. Each
effect comes with its 95 % posterior interval.
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


def _gamma_mixture_moments(w: np.ndarray, observed: np.ndarray, expected: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and variance of each row's posterior ``Gamma(shape + O, shape + E)`` mixed over
    the prior shapes on the grid with weights *w* (a prior of mean 1)."""
    a = _SHAPES[None, :] + np.maximum(observed, 0.0)[:, None]
    b = _SHAPES[None, :] + np.maximum(expected, 0.0)[:, None]
    mean = (w[None, :] * a / b).sum(axis=1)
    var = (w[None, :] * (a / b**2 + (a / b) ** 2)).sum(axis=1) - mean**2
    return mean, np.maximum(var, 0.0)


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
    expectation is first recalibrated to the history as a whole (``E * O_all / E_all``) and
    then, for all reps together, by a calibration factor per segment and per value of each
    *by* attribute (each shrunk toward 1 by its evidence, all reps' leads pooled), so an
    effect of 1 means "as good as the segment's average rep" even where the model's
    predictions at the history's snapshots run high or low for that segment. (Without them a
    segment the model under-predicts lifts every rep's cell there; measured on the simulator
    this was the main cause of intervals that missed the true effects.) Levels of gamma-Poisson
    shrinkage follow:

    1. each rep's overall effect ``m_r`` (all its leads) is shrunk toward 1: prior
       ``Gamma(a, a)``, posterior mean ``(a + O_r) / (a + E_r)``;
    2. with *by*, each rep's factor per attribute value (e.g. rep x lead source, rep x
       employee band: many more leads each than a cell) is shrunk toward 1 the same way, the
       expectation carrying the rep's effect and the other attributes' factors (three rounds
       of backfitting with the calibration); the cell's prior mean ``mu`` is the product
       ``m_r x factors`` (without *by*: ``m_r``), re-estimated with the cell's own leads left
       out so that they do not count twice (in the prior and in the likelihood);
    3. each cell's effect is shrunk toward ``mu``: prior ``Gamma(b, b / mu)`` widened by the
       uncertainty of ``mu`` and of the calibration, posterior ``Gamma(b + O, b / mu + E)``.

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
    o = cells["o"].to_numpy()
    # Calibration factors, common to all reps: the segment's and each attribute value's
    # conversions against the model's predictions (shrunk toward 1 like the rest). A rep's
    # effect is relative to the average rep IN THE SEGMENT, so where the model's predictions
    # run high or low for a segment (at the history's snapshots) every rep's cell there
    # would otherwise carry that miscalibration as if it were the rep's doing.
    calib_keys = {"segment": cells["segment"].to_numpy(), **{k: cells[k].to_numpy() for k in parts}}
    calib = {k: np.ones(len(cells)) for k in calib_keys}
    calib_var = {k: np.zeros(len(cells)) for k in calib_keys}
    rep_code, rep_ids = pd.factorize(cells["rep"])
    m = np.ones(len(cells))
    factor = {k: np.ones(len(cells)) for k in parts}
    groups: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]] = {}
    for _ in range(3):
        for k, values in calib_keys.items():  # calibration, all reps together
            others = m * np.prod([calib[j] for j in calib if j != k] + list(factor.values()), axis=0)
            codes, _ = pd.factorize(values)
            go, ge = np.bincount(codes, weights=o), np.bincount(codes, weights=others * cells["e"].to_numpy())
            cm, cv = _gamma_mixture_moments(_shape_weights(go, ge), go, ge)
            calib[k], calib_var[k] = cm[codes], cv[codes]
        e = cells["e"].to_numpy() * np.prod(list(calib.values()), axis=0)
        # level 1, each rep toward 1, integrated over the prior shape like the cells' (below)
        ro = np.bincount(rep_code, weights=o)
        re_ = np.bincount(rep_code, weights=e * np.prod(list(factor.values()), axis=0) if parts else e)
        w1 = _shape_weights(ro, re_)
        rep_mean, rep_var = _gamma_mixture_moments(w1, ro, re_)
        m = rep_mean[rep_code]
        # level 2: rep x attribute-value factors (main effects), backfitted
        for k in parts:
            others = m * np.prod([factor[j] for j in parts if j != k], axis=0)
            codes, _ = pd.factorize(cells["rep"] + "\x1f" + cells[k])
            go = np.bincount(codes, weights=o)
            ge = np.bincount(codes, weights=others * e)
            wf = _shape_weights(go, ge)
            factor[k] = _gamma_mixture_moments(wf, go, ge)[0][codes]
            groups[k] = (codes, go, ge, wf)
    mu = m * np.prod(list(factor.values()), axis=0) if parts else m
    # the calibration's own uncertainty widens each cell's expectation (relative variance)
    calib_rel_var = sum((calib_var[k] / calib[k] ** 2 for k in calib), np.zeros(len(cells)))
    cells["e_raw"] = cells["e_raw"] * np.prod(list(calib.values()), axis=0)
    # The cell's prior mean and its uncertainty WITHOUT the cell's own leads: the rep's effect
    # and its factors re-estimated with the cell left out (same prior shapes). With the cell
    # in, its conversions would count twice, once in the prior and once in the likelihood,
    # and the interval would be too narrow for the cells that weigh most in their rep's figures.
    lm, lv = _gamma_mixture_moments(w1, ro[rep_code] - o, re_[rep_code] - mu / m * e)
    mu_loo, rel_var = lm, lv / lm**2 + calib_rel_var
    for k, (codes, go, ge, wf) in groups.items():
        others = m * np.prod([factor[j] for j in parts if j != k], axis=0)
        fm, fv = _gamma_mixture_moments(wf, go[codes] - o, ge[codes] - others * e)
        mu_loo, rel_var = mu_loo * fm, rel_var + fv / fm**2
    mu_var = mu_loo**2 * rel_var
    # the cells' spread around their rep: a posterior over the prior shape, not only its best
    # value, so that evidence too thin to tell a spread from none still widens the intervals
    # instead of collapsing them onto the rep's effect. The hyperprior is uniform on the
    # spread's standard deviation 1/sqrt(b) (on the log-spaced grid: weight b^-1/2), the
    # usual weakly informative choice; uniform on log b would pile up at "no spread".
    weight = _shape_weights(o, mu * e)
    keep = weight > 1e-6
    shape = float(_SHAPES[int(np.argmax(weight))])
    # the cell's prior: mean mu (cell left out), variance mu^2 / b plus the uncertainty of mu
    b_cell = mu_loo[:, None] ** 2 / (mu_loo[:, None] ** 2 / _SHAPES[keep][None, :] + mu_var[:, None])
    post_a, post_b = b_cell + o[:, None], b_cell / mu_loo[:, None] + e[:, None]
    w = weight[keep][None, :]
    tail = (1 - level) / 2
    table = pd.DataFrame({
        RepEffectTable.rep_id: cells["rep"].to_numpy(dtype=object),
        RepEffectTable.segment: cells["segment"].to_numpy(dtype=object),
        RepEffectTable.leads: cells["n"].to_numpy(dtype="int64"),
        RepEffectTable.observed: cells["o_raw"].to_numpy(),
        RepEffectTable.expected: cells["e_raw"].to_numpy(),
        RepEffectTable.effect: (w * post_a / post_b).sum(axis=1),
        RepEffectTable.prior: mu_loo,
        RepEffectTable.low: _mixture_quantile(tail, w, post_a, post_b),
        RepEffectTable.high: _mixture_quantile(1 - tail, w, post_a, post_b),
    })
    raw = cells.groupby("rep").agg(o=("o_raw", "sum"), e=("e_raw", "sum")).reindex(rep_ids)
    wk = w1[None, :].repeat(len(rep_ids), axis=0)
    ra, rb = _SHAPES[None, :] + ro[:, None], _SHAPES[None, :] + re_[:, None]
    per_rep = pd.DataFrame({"rep_id": np.asarray(rep_ids, dtype=object), "observed": raw["o"].to_numpy(),
                            "expected": raw["e"].to_numpy(), "effect": rep_mean,
                            "low": _mixture_quantile(tail, wk, ra, rb), "high": _mixture_quantile(1 - tail, wk, ra, rb)})
    return RepEffects(table, shape, per_rep)
