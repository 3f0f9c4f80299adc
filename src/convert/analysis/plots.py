"""Every figure convert draws: evaluation, importance, explanations, drift, backtest, exploration.

One module owns plotting so that one matplotlib setup holds for every figure:

* **No pyplot, no global state.** :func:`new_figure` puts each ``Figure`` on its own Agg
  canvas, so plotting needs no display, never changes the process's backend and leaves no
  figure registered in pyplot to leak memory in a long scoring or report run.
* **Data text drawn literally.** Labels, titles and reasons come from the data (event
  types, segment values, feature descriptions, reason sentences) and may hold ``$``,
  ``\\frac{`` or braces. Every public plot here runs under :func:`literal_text`, so such
  text is drawn as written instead of being read as matplotlib mathtext (where a ``$``
  pair is a formula and a stray ``\\frac{`` an error).
* **matplotlib is imported lazily**, inside the functions: importing convert (or scoring
  without a report) never pays for it.

The functions take plain data -- tables from :mod:`convert.model.metrics`,
:mod:`convert.model.explain`, :mod:`convert.analysis.drift` and the others, arrays of
points, a :class:`~convert.model.explain.LeadExplanation` -- and return a
``matplotlib.figure.Figure`` that the caller saves or inlines. The model layer never
imports this module (the import layers in ``docs/architecture.md``); the steps and the
analysis modules call it.
"""

from __future__ import annotations

import functools
import textwrap
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np
import numpy.typing as npt
import pandas as pd

from convert.exceptions import ConvertError
from convert.model.metrics import wilson_interval

if TYPE_CHECKING:
    from matplotlib.figure import Figure

    from convert.features.catalog import Catalog
    from convert.model.explain import LeadExplanation

__all__ = [
    "ENGAGEMENT_COLOR",
    "FIT_COLOR",
    "literal_text",
    "new_figure",
    "plot_backtest",
    "plot_beeswarm",
    "plot_change_waterfall",
    "plot_score_changes",
    "plot_conversion_by",
    "plot_dependence",
    "plot_family_importance",
    "plot_funnel",
    "plot_gain",
    "plot_grades",
    "plot_importance",
    "plot_importance_bars",
    "plot_lift",
    "plot_psi",
    "plot_rates",
    "plot_reliability",
    "plot_score_distributions",
    "plot_segment",
    "plot_time_to_conversion",
    "plot_waterfall",
]

#: The colours of the two feature families, the same in every figure.
FIT_COLOR, ENGAGEMENT_COLOR = "#1f77b4", "#ff7f0e"

_F = TypeVar("_F", bound=Callable[..., Any])


# --- the one setup ------------------------------------------------------------------------


def literal_text(plot: _F) -> _F:
    """Draw *plot*'s text as written: labels that come from the data (event types, segment
    values, reasons) are not read as matplotlib mathtext, where a ``$`` pair is a formula
    and a stray ``\\frac{`` an error."""

    @functools.wraps(plot)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        import matplotlib

        with matplotlib.rc_context({"text.parse_math": False}):
            return plot(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def new_figure(
    width: float = 6.0, height: float = 4.5, layout: Literal["constrained", "tight"] | None = "constrained",
) -> Figure:
    """A Figure on its own Agg canvas: no pyplot, no global state, no display needed.

    *layout* ``None`` leaves the layout to the caller (``fig.tight_layout()``).
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), layout=layout)
    FigureCanvasAgg(fig)
    return fig


# --- evaluation (hold-out, baselines, segments) --------------------------------------------


@literal_text
def plot_reliability(table: pd.DataFrame, title: str = "Reliability") -> Figure:
    """Reliability diagram from :func:`~convert.model.metrics.reliability_table`: observed
    against predicted rate.

    Points on the diagonal are calibrated; the shaded band is each bin's 95 % Wilson
    interval, so a point whose band misses the diagonal is a real miscalibration rather
    than noise.
    """
    missing = {"mean_predicted", "observed_rate", "ci_low", "ci_high"} - set(table.columns)
    if missing:
        raise ConvertError(
            f"reliability table lacks columns {sorted(missing)}; use reliability_table()"
        )
    fig = new_figure()
    ax = fig.add_subplot()
    pred = table["mean_predicted"].to_numpy(dtype=np.float64)
    order = np.argsort(pred, kind="stable")
    pred = pred[order]
    obs = table["observed_rate"].to_numpy(dtype=np.float64)[order]
    low = table["ci_low"].to_numpy(dtype=np.float64)[order]
    high = table["ci_high"].to_numpy(dtype=np.float64)[order]
    top = float(np.nanmax(np.r_[pred, high, 0.01])) * 1.05
    ax.plot(
        [0, top], [0, top], linestyle="--", color="grey", linewidth=1, label="perfect calibration"
    )
    ax.fill_between(pred, low, high, color="tab:blue", alpha=0.2, label="95% interval (Wilson)")
    ax.plot(pred, obs, marker="o", color="tab:blue", label="observed")
    ax.set_xlim(0, top)
    ax.set_ylim(0, top)
    ax.set_xlabel("mean predicted probability")
    ax.set_ylabel("observed conversion rate")
    ax.set_title(title)
    ax.legend(loc="upper left")
    return fig


@literal_text
def plot_lift(table: pd.DataFrame, title: str = "Lift by decile") -> Figure:
    """Lift per decile (bars) and cumulative capture of conversions (line), from
    :func:`~convert.model.metrics.lift_table`.

    Bars above the dashed line at 1 are deciles that convert better than average; the line
    reads "working the top k deciles reaches this share of all conversions".
    """
    missing = {"decile", "lift", "cumulative_capture"} - set(table.columns)
    if missing:
        raise ConvertError(f"lift table lacks columns {sorted(missing)}; use lift_table()")
    fig = new_figure()
    ax = fig.add_subplot()
    decile = table["decile"].to_numpy()
    ax.bar(decile, table["lift"].to_numpy(dtype=np.float64), color="tab:blue", label="lift")
    ax.axhline(1.0, linestyle="--", color="grey", linewidth=1)
    ax.set_xlabel("decile (1 = highest scores)")
    ax.set_ylabel("lift (conversion rate / overall rate)")
    ax.set_xticks(decile)
    ax.set_title(title)
    capture_ax = ax.twinx()
    capture_ax.plot(
        decile,
        table["cumulative_capture"].to_numpy(dtype=np.float64),
        marker="o",
        color="tab:orange",
        label="cumulative capture",
    )
    capture_ax.set_ylim(0, 1.05)
    capture_ax.set_ylabel("share of all conversions captured")
    handles = ax.get_legend_handles_labels()
    more = capture_ax.get_legend_handles_labels()
    ax.legend(handles[0] + more[0], handles[1] + more[1], loc="center right")
    return fig


@literal_text
def plot_gain(lift: pd.DataFrame, title: str = "Cumulative gain") -> Figure:
    """Share of all conversions found by working the top-scored share of leads (from the lift table)."""
    fig = new_figure(6.0, 4.5)
    ax = fig.add_subplot()
    n = lift["n"].to_numpy(dtype="float64")
    x = np.r_[0, np.cumsum(n) / n.sum()]
    y = np.r_[0, lift["cumulative_capture"].to_numpy(dtype="float64")]
    total = lift["positives"].sum()
    rate = total / n.sum() if n.sum() else 0
    ax.plot(x, y, marker="o", color="tab:blue", label="model")
    ax.plot([0, 1], [0, 1], ls="--", color="grey", lw=1, label="random order")
    if rate > 0:
        ax.plot([0, rate, 1], [0, 1, 1], ls=":", color="tab:green", lw=1, label="perfect order")
    ax.set_xlabel("share of leads worked, best scores first")
    ax.set_ylabel("share of all conversions found")
    ax.set_xlim(0, 1)
    ax.set_ylim(0, 1.02)
    ax.set_title(title)
    ax.legend(loc="lower right")
    return fig


@literal_text
def plot_grades(grades: pd.DataFrame, title: str = "Realized conversion per grade") -> Figure:
    """Conversion rate per grade with 95 % Wilson intervals and the leads per grade
    (from :func:`~convert.model.metrics.grade_table`)."""
    fig = new_figure(6.0, 4.0)
    ax = fig.add_subplot()
    n = grades["n"].to_numpy(dtype="float64")
    conv = grades["conversions"].to_numpy(dtype="float64")
    low, high = wilson_interval(conv, n)
    rate = np.divide(conv, n, out=np.zeros_like(conv), where=n > 0)
    x = np.arange(len(grades))
    ax.bar(x, rate, color="tab:blue", alpha=0.8)
    err = np.clip([rate - np.nan_to_num(low), np.nan_to_num(high) - rate], 0, None)
    ax.errorbar(x, rate, yerr=err, fmt="none",
                ecolor="black", capsize=4)
    for i, (k, c) in enumerate(zip(n, conv, strict=True)):
        ax.text(i, float(np.nan_to_num(high[i])), f"{int(c):,} of {int(k):,}", ha="center", va="bottom", fontsize=8)
    ax.set_xticks(x, [str(g) for g in grades["grade"]])
    ax.set_ylabel("conversion rate within the horizon")
    ax.set_title(title)
    return fig


@literal_text
def plot_rates(
    labels: list[str],
    rate: npt.ArrayLike,
    low: npt.ArrayLike,
    high: npt.ArrayLike,
    title: str,
    xlabel: str,
    predicted: npt.ArrayLike | None = None,
    muted: npt.ArrayLike | None = None,
) -> Figure:
    """Conversion rates with their 95 % intervals, one row per group (first group on top).

    With *predicted*, the mean predicted probability of each group is drawn beside its
    observed rate (calibration by segment); *muted* greys the labels of uncertain groups.
    """
    fig = new_figure(7.0, 0.32 * len(labels) + 1.4)
    ax = fig.add_subplot()
    y = np.arange(len(labels))[::-1]
    r = np.asarray(rate, dtype=np.float64)
    err = np.clip([r - np.asarray(low, dtype=np.float64), np.asarray(high, dtype=np.float64) - r], 0, None)
    ax.errorbar(r, y, xerr=err, fmt="o", color="tab:blue", ecolor="tab:blue", capsize=3,
                label="observed (95% interval)")
    if predicted is not None:
        ax.scatter(np.asarray(predicted, dtype=np.float64), y, marker="x", color="tab:orange", zorder=3,
                   label="mean predicted")
        ax.legend(loc="lower right", fontsize=7)
    ax.set_yticks(y, labels, fontsize=7)
    if muted is not None:
        grey = dict(zip(y.tolist(), np.asarray(muted, dtype=bool).tolist(), strict=True))
        for pos, tick in zip(ax.get_yticks(), ax.get_yticklabels(), strict=True):
            if grey.get(int(pos)):
                tick.set_color("#8a8f98")
    ax.set_xlabel(xlabel)
    ax.set_title(title)
    return fig


@literal_text
def plot_segment(table: pd.DataFrame, name: str) -> Figure:
    """Observed rate (95 % interval) and mean predicted probability per segment value
    (from :func:`~convert.model.metrics.segment_table`)."""
    labels = [f"{v} (n={n:,}, {c:,} conv.)" for v, n, c in zip(table["value"], table["n"], table["conversions"], strict=True)]
    return plot_rates(labels, table["observed_rate"], table["ci_low"], table["ci_high"], f"Calibration by {name}",
                      "conversion rate within the horizon", table["mean_predicted"], table["uncertain"])


# --- what drives the score -----------------------------------------------------------------


@literal_text
def plot_importance(table: pd.DataFrame, top: int = 20) -> Figure:
    """Mean |score points| of the *top* features (from :func:`~convert.model.explain.importance_table`),
    coloured by family: the figure logged with a trained model."""
    t = table.head(top).iloc[::-1]
    fig = new_figure(8, 0.32 * len(t) + 1.2, layout=None)
    ax = fig.add_subplot()
    colors = [FIT_COLOR if f == "fit" else ENGAGEMENT_COLOR for f in t["family"]]
    ax.barh(t["feature"], t["mean_abs_points"], color=colors)
    ax.set_xlabel("mean |score points| (blue: fit, orange: engagement)")
    ax.set_title("Global importance")
    fig.tight_layout()
    return fig


@literal_text
def plot_importance_bars(table: pd.DataFrame, top: int = 20) -> Figure:
    """The report's global importance: as :func:`plot_importance`, with smaller feature names."""
    t = table.head(top).iloc[::-1]
    fig = new_figure(8.0, 0.3 * len(t) + 1.4)
    ax = fig.add_subplot()
    colors = [FIT_COLOR if f == "fit" else ENGAGEMENT_COLOR for f in t["family"]]
    ax.barh(t["feature"], t["mean_abs_points"], color=colors)
    ax.set_xlabel("mean |score points| (blue: fit, orange: engagement)")
    ax.set_title("Global importance")
    ax.tick_params(axis="y", labelsize=8)
    return fig


@literal_text
def plot_family_importance(families: pd.DataFrame) -> Figure:
    """Mean |family points| per lead, fit against engagement, with each family's share of
    importance (from :func:`~convert.model.explain.family_importance`)."""
    fig = new_figure(5.0, 2.4)
    ax = fig.add_subplot()
    colors = [FIT_COLOR if f == "fit" else ENGAGEMENT_COLOR for f in families["family"]]
    ax.barh(families["family"], families["mean_abs_points"], color=colors)
    for i, (v, s) in enumerate(zip(families["mean_abs_points"], families["share"], strict=True)):
        ax.text(v, i, f" {v:.1f} pts ({s:.0%} of importance)", va="center", fontsize=8)
    ax.set_xlabel("mean |family points| per lead")
    ax.set_xlim(0, max(1.0, float(families["mean_abs_points"].max()) * 1.6))
    ax.set_title("Fit vs engagement")
    return fig


def _color_values(values: pd.Series, kind: str) -> np.ndarray:
    """Each value's percentile rank within the sample (NaN for missing and categoricals)."""
    if kind == "categorical":
        return np.full(len(values), np.nan)
    x = pd.to_numeric(values, errors="coerce")
    return x.rank(pct=True).to_numpy(dtype="float64")


@literal_text
def plot_beeswarm(
    points: np.ndarray, frame: pd.DataFrame, names: Sequence[str], kinds: dict[str, str],
    features: Sequence[str], seed: int = 42,
) -> Figure:
    """One row per feature: each lead a dot at its points, colored by its value (low blue, high red).

    *points* has one column per name in *names* (the model's features, in order); *features*
    are the rows to draw, top first.
    """
    from matplotlib import colormaps

    rng = np.random.default_rng(seed)
    k = len(features)
    fig = new_figure(9.0, 0.45 * k + 1.6)
    ax = fig.add_subplot()
    cmap = colormaps["coolwarm"]
    index = {n: i for i, n in enumerate(names)}
    for row, name in enumerate(features):
        x = points[:, index[name]]
        hist, edges = np.histogram(x, bins=60)
        dens = hist[np.clip(np.searchsorted(edges, x, side="right") - 1, 0, len(hist) - 1)]
        amp = 0.42 * dens / max(1, hist.max())
        y = (k - 1 - row) + rng.uniform(-1, 1, len(x)) * amp
        c = _color_values(frame[name], kinds[name])
        colors = np.where(np.isnan(c)[:, None], np.array([[0.6, 0.6, 0.6, 0.7]]), cmap(np.nan_to_num(c)))
        ax.scatter(x, y, s=3, c=colors, linewidths=0, rasterized=True)
    ax.axvline(0, color="black", lw=0.6)
    ax.set_yticks(range(k), list(features)[::-1], fontsize=8)
    ax.set_xlabel("score points (per lead)")
    ax.set_title("Points per lead (blue: low value, red: high, grey: category or missing)", fontsize=10)
    return fig


@literal_text
def plot_dependence(
    points: np.ndarray, frame: pd.DataFrame, names: Sequence[str], catalog: Catalog, features: Sequence[str],
) -> Figure:
    """Points against the feature's value, one panel per feature, titled with its description.

    *points* has one column per name in *names*; *catalog* gives each feature's kind, unit
    and description.
    """
    cols = 2
    rows = max(1, int(np.ceil(len(features) / cols)))
    fig = new_figure(10.0, 3.3 * rows)
    axes = np.atleast_1d(fig.subplots(rows, cols)).ravel()
    index = {n: i for i, n in enumerate(names)}
    for ax, name in zip(axes, features, strict=False):
        y = points[:, index[name]]
        f = catalog[name]
        values = frame[name]
        if f.kind == "categorical":
            text = values.where(values.notna(), "(missing)").astype(str)
            order = text.value_counts().index[:12].tolist()
            for i, cat in enumerate(order):
                sel = (text == cat).to_numpy()
                ax.scatter(np.full(sel.sum(), i) + np.random.default_rng(i).uniform(-0.25, 0.25, sel.sum()),
                           y[sel], s=4, alpha=0.5, color="tab:blue", rasterized=True)
            ax.set_xticks(range(len(order)), [str(o)[:14] for o in order], rotation=35, ha="right", fontsize=7)
        else:
            x = pd.to_numeric(values, errors="coerce").to_numpy(dtype="float64")
            ok = ~np.isnan(x)
            ax.scatter(x[ok], y[ok], s=4, alpha=0.5, color="tab:blue", rasterized=True)
            if ok.any():
                hi = np.nanpercentile(x[ok], 99.5)
                lo = np.nanmin(x[ok])
                if lo > 0 and hi / np.median(x[ok]) > 50:  # heavy-tailed and positive (revenue, size)
                    ax.set_xscale("log")
                elif hi > lo:
                    ax.set_xlim(lo - 0.02 * (hi - lo), hi + 0.02 * (hi - lo))
            ax.set_xlabel(f"{f.unit} ({(~ok).sum():,} missing not shown)" if (~ok).any() else f.unit, fontsize=8)
        ax.axhline(0, color="black", lw=0.5)
        ax.set_ylabel("points", fontsize=8)
        ax.set_title(name + "\n" + textwrap.shorten(f.description, 70), fontsize=8)
    for ax in axes[len(features):]:
        ax.set_visible(False)
    return fig


@literal_text
def plot_waterfall(explanation: LeadExplanation, max_features: int = 12) -> Figure:
    """A waterfall of score points from the base score to the lead's score
    (from :func:`~convert.model.explain.explain_lead`)."""
    t = explanation.table
    top = t.head(max_features)
    rest = int(t["points"].sum() - top["points"].sum())
    labels = ["base score"] + [str(s)[:70] for s in top["sentence"].str.replace(r"^[+-]\d+ ", "", regex=True)]
    steps = [explanation.base_score] + top["points"].astype(int).tolist()
    if rest:
        labels.append(f"{len(t) - len(top)} other features")
        steps.append(rest)
    fig = new_figure(9, 0.45 * len(steps) + 1.5, layout=None)
    ax = fig.add_subplot()
    _waterfall_bars(ax, steps)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(explanation.score, color="black", lw=0.8, ls="--")
    ax.set_xlabel("score points (0-100)")
    ax.set_title(f"Lead {explanation.lead_id}: score {explanation.score}")
    fig.tight_layout()
    return fig


def _waterfall_bars(ax: Any, steps: list[int]) -> None:
    """A waterfall's bars on *ax*: the first step from zero (grey), each next one from where the
    last ended (green up, red down), each labelled with its points."""
    level = 0
    for i, step in enumerate(steps):
        start = 0 if i == 0 else level
        color = "#777777" if i == 0 else ("#2a9d55" if step >= 0 else "#c0392b")
        ax.barh(i, step, left=start, color=color)
        ax.text(start + step, i, f" {step:+d}" if i else f" {step}", va="center", fontsize=8)
        level = start + step


@literal_text
def plot_change_waterfall(
    lead_id: str, score_then: int, score_now: int, movements: pd.DataFrame, since: str, as_of: str,
    max_features: int = 12,
) -> Figure:
    """A waterfall of one lead's score change: from its score *since* to its score at *as_of*,
    one bar per movement (``points`` and ``sentence`` columns, from
    :func:`~convert.scoring.changes.lead_change`), in the style of :func:`plot_waterfall`."""
    top = movements.head(max_features)
    rest = int(movements["points"].sum() - top["points"].sum())
    labels = [f"score as of {since}"] + [str(s)[:70] for s in top["sentence"].str.replace(r"^[+-]\d+ ", "", regex=True)]
    steps = [int(score_then)] + top["points"].astype(int).tolist()
    if rest:
        labels.append(f"{len(movements) - len(top)} other features")
        steps.append(rest)
    fig = new_figure(9, 0.45 * (len(steps) + 1) + 1.5, layout=None)
    ax = fig.add_subplot()
    _waterfall_bars(ax, steps)
    end = len(steps)
    labels.append(f"score as of {as_of}")
    ax.barh(end, score_now, color="#777777")
    ax.text(score_now, end, f" {score_now}", va="center", fontsize=8)
    ax.set_yticks(range(len(labels)), labels, fontsize=8)
    ax.invert_yaxis()
    ax.axvline(score_then, color="black", lw=0.8, ls=":")
    ax.axvline(score_now, color="black", lw=0.8, ls="--")
    ax.set_xlabel("score points (0-100)")
    ax.set_title(f"Lead {lead_id}: score {score_then} -> {score_now} ({score_now - score_then:+d}), "
                 f"{since} to {as_of}")
    fig.tight_layout()
    return fig


@literal_text
def plot_score_changes(changes: np.ndarray, min_change: int) -> Figure:
    """Histogram of score changes (one per lead with a previous score), the steady band
    (``|change| < min_change``) shaded; the counts on a log scale, since most leads do not
    move at all between two close runs and the few that do would vanish beside them."""
    values = np.asarray(changes, dtype="float64")
    values = values[~np.isnan(values)]
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    low, high = (int(values.min()), int(values.max())) if len(values) else (-1, 1)
    edges = np.arange(min(low, -min_change) - 0.5, max(high, min_change) + 1.5, 1.0)
    if len(edges) > 81:  # wide ranges: about 80 bins of whole points
        width = int(np.ceil((len(edges) - 1) / 80))
        edges = np.arange(edges[0], edges[-1] + width, width)
    ax.axvspan(-min_change + 0.5, min_change - 0.5, color="#dddddd", label=f"steady (|change| < {min_change})")
    ax.hist(values, bins=edges.tolist(), color="tab:blue", log=bool(len(values)))
    ax.axvline(0, color="black", lw=0.8)
    ax.set_xlabel("score change (points)")
    ax.set_ylabel("leads (log scale)")
    ax.set_title(f"Score changes of {len(values):,} leads with a previous score")
    ax.legend(fontsize=8)
    return fig


# --- drift ----------------------------------------------------------------------------------


@literal_text
def plot_psi(table: pd.DataFrame, watch: float, flag: float, top: int = 20) -> Figure:
    """The *top* features by PSI (from :func:`~convert.analysis.drift.drift_table`), coloured
    by status, with the watch and shifted thresholds."""
    t = table.head(top).iloc[::-1]
    fig = new_figure(8.0, 0.3 * len(t) + 1.4)
    ax = fig.add_subplot()
    colors = ["#c0392b" if s == "shifted" else "#e0a800" if s == "watch" else "#2a9d55" for s in t["status"]]
    ax.barh(t["feature"], t["psi"], color=colors)
    ax.axvline(watch, color="#e0a800", ls="--", lw=1, label=f"watch ({watch})")
    ax.axvline(flag, color="#c0392b", ls="--", lw=1, label=f"shifted ({flag})")
    ax.set_xlabel("population stability index")
    ax.tick_params(axis="y", labelsize=8)
    ax.set_title("Largest PSI: training window vs as-of population")
    ax.legend(loc="lower right", fontsize=8)
    return fig


@literal_text
def plot_score_distributions(reference: np.ndarray, current: np.ndarray, psi: float) -> Figure:
    """Shares of leads per score band, training window beside the as-of population."""
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    edges = np.array([0, 1, 2, 3, 5, 8, 12, 20, 30, 50, 75, 101])
    labels = [f"{a}-{b - 1}" if b - 1 > a else f"{a}" for a, b in zip(edges[:-1], edges[1:], strict=True)]
    r = np.histogram(reference, edges)[0] / max(1, len(reference))
    c = np.histogram(current, edges)[0] / max(1, len(current))
    x = np.arange(len(labels))
    ax.bar(x - 0.2, r, width=0.4, label=f"training window (n={len(reference):,})", color="tab:blue")
    ax.bar(x + 0.2, c, width=0.4, label=f"as-of population (n={len(current):,})", color="tab:orange")
    ax.set_xticks(x, labels, fontsize=8)
    ax.set_xlabel("score")
    ax.set_ylabel("share of leads")
    ax.set_title(f"Score distribution (PSI {psi:.3f})")
    ax.legend(fontsize=8)
    return fig


# --- backtest -------------------------------------------------------------------------------


@literal_text
def plot_backtest(table: pd.DataFrame, title: str = "Rolling-origin backtest") -> Figure:
    """ROC AUC, Brier and ECE per origin, one line per retraining schedule
    (from :func:`~convert.analysis.backtest.backtest`'s table)."""
    fig = new_figure(8.0, 8.0)
    axes = fig.subplots(3, 1, sharex=True)
    labels = {"roc_auc": "ROC AUC (higher is better)", "brier": "Brier (lower is better)",
              "ece": "ECE (lower is better)"}
    for ax, metric in zip(axes, labels, strict=True):
        for name, group in table.groupby("schedule", sort=False):
            ax.plot(pd.to_datetime(group["origin"]), group[metric], marker="o", label=str(name))
        ax.set_ylabel(labels[metric])
        ax.grid(alpha=0.3)
    axes[0].legend(title="retrain", loc="best")
    axes[0].set_title(title)
    axes[-1].set_xlabel("origin (as-of time of the scored population)")
    return fig


# --- exploring an export ------------------------------------------------------------------------


@literal_text
def plot_funnel(table: pd.DataFrame) -> Figure:
    """Leads that reached each stage, and their share (from :func:`~convert.analysis.explore.funnel`)."""
    fig = new_figure(7.0, 0.45 * len(table) + 1.4)
    ax = fig.add_subplot()
    t = table.iloc[::-1]
    ax.barh(t["stage"].astype(str), t["leads"], color="tab:blue")
    for i, (n, s) in enumerate(zip(t["leads"], t["share_of_leads"], strict=True)):
        ax.text(n, i, f" {n:,} ({s:.0%})", va="center", fontsize=8)
    ax.set_xlabel("leads that ever reached the stage")
    ax.set_xlim(0, float(table["leads"].max()) * 1.25 if len(table) else 1)
    ax.set_title("Funnel")
    return fig


@literal_text
def plot_conversion_by(table: pd.DataFrame, column: str) -> Figure:
    """Conversion per value of *column* with 95 % intervals (from
    :func:`~convert.analysis.explore.conversion_by`)."""
    labels = [f"{v} (n={n:,})" for v, n in zip(table["value"], table["leads"], strict=True)]
    return plot_rates(labels, table["rate"], table["ci_low"], table["ci_high"], f"Conversion by {column}",
                      "conversion within the horizon of creation (95% interval)")


@literal_text
def plot_time_to_conversion(days: pd.Series, horizon_days: int) -> Figure:
    """Histogram of the days from creation to conversion, with the label horizon."""
    fig = new_figure(7.0, 3.6)
    ax = fig.add_subplot()
    upper = float(days.quantile(0.99)) if len(days) else 1.0
    ax.hist(days.clip(upper=upper), bins=50, color="tab:blue")
    ax.axvline(horizon_days, color="tab:red", ls="--", label=f"horizon ({horizon_days} days)")
    ax.set_xlabel("days from creation to conversion")
    ax.set_ylabel("converted leads")
    ax.set_title("Time to conversion")
    ax.legend()
    return fig
