"""The analyst report: one self-contained HTML file of evidence about a model.

Sections: a model card; hold-out performance beside the three baselines (reliability
with confidence bands, lift and cumulative gain, conversion per grade); what drives the
score (mean |points| per feature and per family, beeswarm, dependence plots, each feature
named with the catalog's description); the metrics per segment, with counts; drift
between the training window and the as-of population, and the label delay; and, when
asked, a rolling-origin backtest.

Everything is computed by the core (``metrics``, ``explain``, ``drift``, ``backtest``)
from what :class:`ReportInputs` holds, and the figures are drawn by :mod:`convert.analysis.plots`;
this module only assembles tables and figures. Figures are inlined as base64 PNG and the
style sheet is inline, so the file opens offline and makes no network request.
"""

from __future__ import annotations

import base64
import html
import io
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from convert.analysis.backtest import BacktestResult, cost_sentences
from convert.analysis.drift import LabelDelay, ScoreDrift, drift_table, label_delay, score_drift
from convert.analysis.plots import (
    plot_backtest,
    plot_beeswarm,
    plot_dependence,
    plot_family_importance,
    plot_gain,
    plot_grades,
    plot_importance_bars,
    plot_lift,
    plot_psi,
    plot_reliability,
    plot_score_changes,
    plot_score_distributions,
    plot_segment,
)
from convert.config import Config
from convert.model.bundle import LeadScoringModel, score_from_probability
from convert.model.crossfit import Folds
from convert.model.explain import family_importance, importance_table, point_contributions
from convert.model.metrics import segment_table, wilson_interval
from convert.model.train import Evaluation, TrainingSet
from convert.schema import Labeled

if TYPE_CHECKING:
    from matplotlib.figure import Figure

SECTION_IDS = ("model-card", "performance", "importance", "segments", "drift", "movements")


@dataclass
class Movements:
    """How the as-of population's scores moved since an earlier as-of, both scored by the
    report's model (``steps.report_step`` computes it with :mod:`convert.scoring.changes`;
    analysis does not import scoring, so this is plain data).

    ``counts`` is the number of leads per trend (improving, steady, declining, new,
    unknown, in that order); ``score_change`` one change per lead open at the as-of (NaN
    for a new lead); ``features`` one row per feature that moved: ``feature``,
    ``total_points`` (net, largest |net| first, as ``Changes.points_by_movement``),
    ``points_up``, ``points_down`` and ``leads_moved``; ``left`` the leads open at
    ``since`` that are no longer open at the as-of (converted or disqualified).
    """

    since: pd.Timestamp
    counts: pd.Series
    score_change: np.ndarray
    features: pd.DataFrame
    left: int
    min_change: int


@dataclass
class ReportInputs:
    """What the report is computed from (``steps.report_step`` gathers it)."""

    model: LeadScoringModel
    model_label: str
    as_of: pd.Timestamp
    training: TrainingSet
    split: Folds
    evaluation: Evaluation
    current: pd.DataFrame  # feature rows of the population open at as_of
    leads: pd.DataFrame  # the leads table (created_at, converted_at, disqualified_at)
    backtest: BacktestResult | None = None
    generated_at: str = ""
    movements: Movements | None = None


@dataclass
class Section:
    id: str
    title: str
    body: str


@dataclass
class Report:
    """The report's sections and the tables behind them."""

    title: str
    subtitle: str
    sections: list[Section]
    importance: pd.DataFrame
    families: pd.DataFrame
    segments: dict[str, pd.DataFrame]
    drift: pd.DataFrame
    score_drift: ScoreDrift
    label_delay: LabelDelay
    figures: int = 0
    tables: dict[str, pd.DataFrame] = field(default_factory=dict)
    movements: Movements | None = None

    def html(self) -> str:
        """The whole document: inline CSS, inline images, no script, no external resource."""
        nav = "".join(f'<li><a href="#{s.id}">{html.escape(s.title)}</a></li>' for s in self.sections)
        body = "\n".join(
            f'<section id="{s.id}">\n<h2>{html.escape(s.title)}</h2>\n{s.body}\n</section>' for s in self.sections
        )
        return (
            "<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n"
            f"<title>{html.escape(self.title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
            f"<header><h1>{html.escape(self.title)}</h1><p>{html.escape(self.subtitle)}</p>"
            f"<nav><ol>{nav}</ol></nav></header>\n<main>\n{body}\n</main>\n</body>\n</html>\n"
        )

    def metrics(self) -> dict[str, float]:
        """Headline drift figures (and the movement counts), for the model's MLflow run."""
        moved = ({f"movements_{k}": float(v) for k, v in self.movements.counts.items()}
                 if self.movements is not None else {})
        return moved | {
            "drift_score_psi": self.score_drift.psi,
            "drift_max_feature_psi": float(self.drift["psi"].max()) if len(self.drift) else 0.0,
            "drift_features_shifted": float((self.drift["status"] == "shifted").sum()),
            "drift_features_watch": float((self.drift["status"] == "watch").sum()),
            "label_delay_open_unjudged": float(self.label_delay.open_unjudged),
            "population_open_leads": float(self.label_delay.open_leads),
        }


_CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:0;color:#1d2430;background:#f6f7f9}
header{background:#1d2f4a;color:#fff;padding:1.2em 2em}header h1{margin:0 0 .2em}header p{margin:0 0 .6em;opacity:.85}
nav ol{margin:0;padding-left:1.2em;columns:3}nav a{color:#cfe2ff}
main{max-width:1200px;margin:0 auto;padding:1em 2em}
section{background:#fff;border-radius:6px;padding:1em 1.5em;margin:1.2em 0;box-shadow:0 1px 3px rgba(0,0,0,.12)}
h2{border-bottom:2px solid #1d2f4a;padding-bottom:.2em}h3{margin-top:1.4em}
table{border-collapse:collapse;margin:.6em 0;font-size:.88em}th,td{border:1px solid #d5d9e0;padding:.25em .55em;text-align:right;vertical-align:top}
th{background:#eef1f5}td.text,th.text{text-align:left}tr.uncertain td{color:#8a8f98;font-style:italic}
tr.shifted td{background:#fde2e1}tr.watch td{background:#fff4d6}td.best{font-weight:bold}
.figures{display:flex;flex-wrap:wrap;gap:1em}figure{margin:.4em 0;max-width:100%}figure img{max-width:100%;height:auto;border:1px solid #e3e6ea}
figcaption{font-size:.85em;color:#555;max-width:640px}.note{color:#555;font-size:.9em}
.flag{display:inline-block;padding:.1em .5em;border-radius:3px;font-weight:bold}.flag.shifted{background:#c0392b;color:#fff}
.flag.stable{background:#2a9d55;color:#fff}.flag.watch{background:#e0a800;color:#000}
dl.card{display:grid;grid-template-columns:max-content auto;gap:.25em 1em}dl.card dt{font-weight:bold}dl.card dd{margin:0}
"""


# --- small HTML helpers ---------------------------------------------------------------------


def _esc(value: object) -> str:
    return html.escape(str(value))


def _fmt(value: object, spec: str | Callable[[Any], str] | None) -> str:
    if value is None or (isinstance(value, float) and np.isnan(value)):
        return "-"
    if callable(spec):
        return spec(value)
    if spec and isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(value, bool):
        return format(value, spec)
    if isinstance(value, pd.Timestamp):
        return f"{value:%Y-%m-%d}"
    return str(value)


def table_html(
    frame: pd.DataFrame,
    formats: dict[str, str | Callable[[Any], str]] | None = None,
    row_classes: Sequence[str] | None = None,
    text_columns: Sequence[str] = (),
    headers: dict[str, str] | None = None,
    bold: dict[str, Sequence[bool]] | None = None,
) -> str:
    """An escaped HTML table; *formats* maps a column to a format spec or a function."""
    formats = formats or {}
    headers = headers or {}
    text = set(text_columns) | {
        c for c in frame.columns if not pd.api.types.is_numeric_dtype(frame[c]) and c not in formats
    }
    head = "".join(
        f'<th class="text">{_esc(headers.get(c, c))}</th>' if c in text else f"<th>{_esc(headers.get(c, c))}</th>"
        for c in frame.columns
    )
    rows = []
    for i, rec in enumerate(frame.itertuples(index=False)):
        cells = []
        for j, c in enumerate(frame.columns):
            classes = ["text"] if c in text else []
            if bold and c in bold and bold[c][i]:
                classes.append("best")
            attr = f' class="{" ".join(classes)}"' if classes else ""
            cells.append(f"<td{attr}>{_esc(_fmt(rec[j], formats.get(c)))}</td>")
        cls = f' class="{row_classes[i]}"' if row_classes is not None and row_classes[i] else ""
        rows.append(f"<tr{cls}>{''.join(cells)}</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(rows)}</tbody></table>"


def image_html(fig: Figure, alt: str, caption: str = "", dpi: int = 90) -> str:
    """A matplotlib figure as an inline base64 PNG ``<figure>``."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    data = base64.b64encode(buf.getvalue()).decode("ascii")
    cap = f"<figcaption>{_esc(caption)}</figcaption>" if caption else ""
    return f'<figure><img src="data:image/png;base64,{data}" alt="{_esc(alt)}">{cap}</figure>'


def _p(text: str, cls: str = "") -> str:
    return f'<p class="{cls}">{_esc(text)}</p>' if cls else f"<p>{_esc(text)}</p>"


def _pct(v: float) -> str:
    return f"{v:.1%}"


# --- sections ---------------------------------------------------------------------------------


def _model_card(inp: ReportInputs, config: Config) -> str:
    m = inp.model
    meta = m.metadata
    y = inp.training.frame[Labeled.label].to_numpy()
    slices = inp.split.summary(y)
    horizon = m.horizon_days
    cal = meta.calibration
    cv = (cal.cv_log_loss if cal else None) or {}
    fams = pd.Series(m.catalog_.family_of(m.spec_.names)).value_counts()
    items = [
        ("model", inp.model_label),
        ("trained as of", str(meta.training_as_of or inp.training.as_of)[:10]),
        ("training window", f"{slices['fits_from'].iloc[-1]} to {slices['fits_to'].iloc[-1]} "
                            f"({meta.frequency or config.labels.frequency} snapshots): the deployed booster "
                            "was refitted on every labelled snapshot of it, with the settings chosen on the inner folds"),
        ("horizon", f"{horizon} days"),
        ("population", "every lead created before the as-of time t that had neither converted nor been "
                       "disqualified before t"),
        ("label", f"1 when the lead converts within {horizon} days of t (t <= converted_at < t + {horizon} days), else 0"),
        ("rows and conversions", f"{len(y):,} lead-snapshots, {int(y.sum()):,} conversions "
                                 f"({y.mean():.2%})"),
        ("figures", str(meta.metrics_from or "outer folds")
                    + "; each fold fits only on snapshots whose horizon ended before its first as-of time"),
        ("features", f"{len(m.spec_.names)}: {int(fams.get('fit', 0))} fit (who the lead is), "
                     f"{int(fams.get('engagement', 0))} engagement (what the lead did, where it stands)"),
        ("model", f"LightGBM, {m.best_iteration_} trees (the round minimising the mean inner-fold log loss)"
                  + (f", blended in log-odds with a logistic regression (weight {m.blend_weight_:.1f}, chosen on "
                     "the inner folds)" if m.linear_ is not None else "")
                  + f"; unweighted log loss; seed {m.seed}"),
        ("calibration", f"{cal.method if cal else getattr(getattr(m, 'calibrator_', None), 'method', '-')}, chosen by "
                        "cross-validated log loss on the inner folds' out-of-fold scores, fitted on every "
                        "fold's out-of-fold scores"
                        + (" (" + ", ".join(f"{k} {v:.4f}" for k, v in cv.items()) + ")" if cv else "")),
        ("score", "round(100 x calibrated probability); grades " + ", ".join(
            f"{g} >= {c}" for g, c in m.grade_cutoffs.items())),
        ("intended use", "rank and route open leads; the score is a probability measured on leads the "
                         "model never saw"),
        ("limits", "judged only on the past: check the drift section before trusting it on today's leads"),
    ]
    card = "<dl class=\"card\">" + "".join(f"<dt>{_esc(k)}</dt><dd>{_esc(v)}</dd>" for k, v in items) + "</dl>"
    params = meta.params or m.params
    params_tbl = pd.DataFrame({"parameter": list(params), "value": [str(v) for v in params.values()]})
    features = pd.DataFrame(
        {"feature": m.spec_.names, "family": m.catalog_.family_of(m.spec_.names),
         "kind": [m.spec_.kinds[n] for n in m.spec_.names],
         "description": [m.catalog_[n].description for n in m.spec_.names]}
    )
    return (
        card
        + "<h3>Folds (inner: choices; outer: the figures reported; deployed: the refit)</h3>"
        + table_html(slices, {"rows": ",d", "positives": ",d", "fit_rows": ",d", "fit_positives": ",d"})
        + (("<h3>Figures per fold</h3>" + table_html(inp.evaluation.folds.round(4)))
           if inp.evaluation.folds is not None else "")
        + "<h3>Parameters</h3>"
        + table_html(params_tbl)
        + f"<details><summary>All {len(features)} features, by family</summary>"
        + table_html(features.sort_values(["family", "feature"], kind="stable"))
        + "</details>"
    )


def _performance(inp: ReportInputs) -> str:
    ev = inp.evaluation
    shown = ev.metrics.loc[["roc_auc", "pr_auc", "log_loss", "brier", "ece"]]
    frame = shown.reset_index(names="metric")
    higher = {"roc_auc", "pr_auc"}
    bold = {}
    for col in shown.columns:
        flags = []
        for metric in shown.index:
            row = shown.loc[metric]
            best = row.max() if metric in higher else row.min()
            flags.append(bool(row[col] == best))
        bold[col] = flags
    n = int(ev.metrics.loc["n", "model"])
    pos = int(ev.metrics.loc["positives", "model"])
    hold = inp.split.ranges["holdout"]
    grades = ev.grades.copy()
    low, high = wilson_interval(grades["conversions"].to_numpy(dtype="float64"), grades["n"].to_numpy(dtype="float64"))
    grades["ci_low"], grades["ci_high"] = low, high
    return (
        _p(f"Outer folds: as-of times {hold[0]:%Y-%m-%d} to {hold[1]:%Y-%m-%d}, {n:,} lead-snapshots, "
           f"{pos:,} conversions, each predicted by the recipe fitted only on snapshots whose horizon ended "
           "before its fold; no choice saw them. The baselines were fitted on the same rows as the model"
           + (" (out-of-fold predictions as recorded at training)" if ev.metrics.attrs.get("baselines_recorded") else "")
           + "; best figure per metric in bold (higher is better for the AUCs, lower for the rest).")
        + table_html(frame, dict.fromkeys(shown.columns, ".4f"), bold={c: bold[c] for c in shown.columns})
        + '<div class="figures">'
        + image_html(plot_reliability(ev.reliability, "Reliability (hold-out)"), "reliability diagram",
                     "Observed conversion against predicted probability in 10 equal-frequency bins; the band "
                     "is each bin's 95% Wilson interval.")
        + image_html(plot_lift(ev.lift), "lift by decile",
                     "Lift per score decile (bars) and share of conversions captured (line).")
        + image_html(plot_gain(ev.lift), "cumulative gain",
                     "Cumulative gain: working the best-scored leads first against random and perfect order.")
        + image_html(plot_grades(ev.grades), "conversion per grade",
                     "Realized conversion per grade on the hold-out, with 95% intervals.")
        + "</div><h3>Reliability table</h3>"
        + table_html(ev.reliability, {"n": ",d", "mean_predicted": ".4f", "observed_rate": ".4f",
                                      "ci_low": ".4f", "ci_high": ".4f"})
        + "<h3>Lift and gain by decile</h3>"
        + table_html(ev.lift, {"n": ",d", "positives": ",d", "conversion_rate": ".4f", "lift": ".2f",
                               "cumulative_capture": _pct, "min_probability": ".4f", "max_probability": ".4f"})
        + "<h3>Conversion per grade</h3>"
        + table_html(grades, {"n": ",d", "conversions": ",d", "rate": ".4f", "ci_low": ".4f", "ci_high": ".4f"})
    )


def _importance(inp: ReportInputs, config: Config) -> tuple[str, pd.DataFrame, pd.DataFrame]:
    m = inp.model
    hold = inp.training.frame.loc[inp.split.masks["holdout"]]
    rows = config.report.explain_rows
    sample = hold.sample(n=rows, random_state=config.seed) if len(hold) > rows else hold
    sample = sample.reset_index(drop=True)
    points = point_contributions(m, sample)
    table = importance_table(m, points)
    families = family_importance(m, points)
    top_bees = table["feature"].head(config.report.beeswarm_features).tolist()
    top_dep = table["feature"].head(config.report.dependence_features).tolist()
    shown = table.head(25)
    body = (
        _p(f"Score points of {len(sample):,} hold-out leads (exact TreeSHAP on the raw score, mapped to the "
           "0-100 score so that base + fit + engagement points = score). Importance is the mean absolute "
           "points a feature moves a lead's score.")
        + '<div class="figures">'
        + image_html(plot_family_importance(families), "fit vs engagement",
                     "Per family: mean |fit points| and |engagement points| per lead, and the family's share "
                     "of the per-feature importance.")
        + image_html(plot_importance_bars(table), "global importance", "Mean |points| per feature, top 20.")
        + "</div>"
        + table_html(families, {"features": "d", "mean_abs_points": ".2f", "share": _pct})
        + "<h3>Features by importance</h3>"
        + table_html(shown, {"mean_abs_points": ".2f"}, text_columns=["feature", "family", "description"])
        + "<h3>Beeswarm</h3>"
        + image_html(plot_beeswarm(points, sample, m.spec_.names, m.spec_.kinds, top_bees, config.seed), "beeswarm",
                     "Each dot is a lead: how many points the feature gives it; red dots have high values.")
    )
    if top_dep:
        body += (
            "<h3>Dependence plots</h3>"
            + "<ul>" + "".join(f"<li><b>{_esc(n)}</b>: {_esc(m.catalog_[n].description)}</li>" for n in top_dep) + "</ul>"
            + image_html(plot_dependence(points, sample, m.spec_.names, m.catalog_, top_dep), "dependence plots",
                         "Points against the feature's value for the most important features.")
        )
    return body, table, families


def _segments(inp: ReportInputs, config: Config) -> tuple[str, dict[str, pd.DataFrame]]:
    hold = inp.training.frame.loc[inp.split.masks["holdout"]].reset_index(drop=True)
    preds = inp.evaluation.predictions
    y = preds[Labeled.label].to_numpy()
    p = preds["probability"].to_numpy()
    out: dict[str, pd.DataFrame] = {}
    body = _p(
        f"The hold-out metrics per segment. Segments with fewer than {config.report.segment_min_conversions} "
        "conversions are greyed: their figures are uncertain (see the counts and the 95% intervals). "
        f"Values beyond the {config.report.segment_max_values} largest are pooled as (other)."
    )
    for name in config.report.segments:
        if name not in hold.columns:
            body += _p(f"{name}: not a column of this model's features; skipped.", "note")
            continue
        values = hold[name]
        is_band = name in inp.model.catalog_ and inp.model.catalog_[name].unit == "band"
        if is_band:  # band numbers read better as integers, in their natural order
            values = values.map(lambda v: None if pd.isna(v) else f"{int(v)}")
        t = segment_table(y, p, values, config.report.segment_max_values, config.report.segment_min_conversions)
        if is_band:
            t = t.sort_values("value", key=lambda v: pd.to_numeric(v, errors="coerce").fillna(1e9), kind="stable")
            t = t.reset_index(drop=True)
        out[name] = t
        desc = inp.model.catalog_[name].description if name in inp.model.catalog_ else ""
        body += (
            f"<h3>{_esc(name)}</h3>" + (_p(desc, "note") if desc else "")
            + '<div class="figures">' + image_html(plot_segment(t, name), f"calibration by {name}") + "</div>"
            + table_html(
                t.drop(columns=["uncertain"]),
                {"n": ",d", "conversions": ",d", "observed_rate": ".4f", "ci_low": ".4f", "ci_high": ".4f",
                 "mean_predicted": ".4f", "roc_auc": ".3f", "brier": ".4f", "ece": ".4f"},
                row_classes=["uncertain" if u else "" for u in t["uncertain"]], text_columns=["value"],
            )
        )
    return body, out


def _drift(inp: ReportInputs, config: Config) -> tuple[str, pd.DataFrame, ScoreDrift, LabelDelay]:
    m = inp.model
    dc = config.report.drift
    reference = inp.training.frame.loc[inp.split.masks["train"]]
    table = drift_table(reference, inp.current, m.catalog_, dc, m.spec_.names, config.seed)
    ref = reference.sample(n=dc.max_rows, random_state=config.seed) if len(reference) > dc.max_rows else reference
    cur = inp.current
    ref_scores = score_from_probability(m.predict_proba(ref)[:, 1]) if len(ref) else np.array([])
    cur_scores = score_from_probability(m.predict_proba(cur)[:, 1]) if len(cur) else np.array([])
    sd = score_drift(ref_scores, cur_scores, dc)
    delay = label_delay(inp.leads, inp.as_of, m.horizon_days)
    window = inp.split.ranges["train"]
    shifted = table[table["status"] == "shifted"]
    summary = (
        f'<p>Score: <span class="flag {sd.status}">{sd.status}</span> PSI {sd.psi:.3f} '
        f"(flagged above {dc.score_threshold}); mean score {sd.reference_mean:.1f} in the training window, "
        f"{sd.current_mean:.1f} at {inp.as_of:%Y-%m-%d}. Features: "
        f'<span class="flag {"shifted" if len(shifted) else "stable"}">{len(shifted)} shifted</span> '
        f"(PSI above {dc.feature_threshold}), {int((table['status'] == 'watch').sum())} to watch "
        f"(above {dc.watch_threshold}).</p>"
    )
    if len(shifted):
        summary += _p("Shifted: " + ", ".join(shifted["feature"].head(20)) + ".")
    body = (
        _p(f"Reference: the training window the booster learned from ({window[0]:%Y-%m-%d} to "
           f"{window[1]:%Y-%m-%d}, {len(reference):,} lead-snapshots). Current: the {len(cur):,} leads open at "
           f"{inp.as_of:%Y-%m-%d}. PSI over {dc.bins} equal-frequency bins of the reference (one bin per "
           "category; missing values in a bin of their own).")
        + summary
        + '<div class="figures">'
        + image_html(plot_score_distributions(ref_scores, cur_scores, sd.psi), "score distribution")
        + image_html(plot_psi(table, dc.watch_threshold, dc.feature_threshold), "PSI per feature")
        + "</div>"
        + "<h3>Label delay</h3>"
        + _p(f"A label is known only {m.horizon_days} days after its as-of time: the newest leads cannot "
             "be judged yet, and the model learned nothing from them.")
        + table_html(delay.table(), text_columns=["measure", "value"])
        + "<h3>PSI per feature</h3>"
        + _p("Features that grow with the age of the CRM (lead age, days since the first touch, totals "
             "so far) drift as an export accumulates old open leads; the score's PSI and the performance "
             "section say whether that matters.", "note")
    )
    fmt: dict[str, str | Callable[[Any], str]] = {"psi": ".4f", "missing_reference": _pct, "missing_current": _pct}
    text_cols = ["feature", "family", "kind", "status", "reference", "current", "description"]
    head = max(25, int((table["status"] != "stable").sum()))
    for part, rows in (("", table.head(head)), ("rest", table.iloc[head:])):
        if rows.empty:
            continue
        html_rows = table_html(rows, fmt, row_classes=[s if s != "stable" else "" for s in rows["status"]],
                               text_columns=text_cols)
        body += (f"<details><summary>The other {len(rows)} features (stable)</summary>{html_rows}</details>"
                 if part else html_rows)
    return body, table, sd, delay


def change_bins(change: np.ndarray, min_change: int) -> pd.DataFrame:
    """Leads per band of score change: whole points, the steady band (``|change| < min_change``)
    kept apart from the improving and declining ones, wide changes pooled beyond +-20."""
    values = np.asarray(change, dtype="float64")
    values = values[~np.isnan(values)]
    m = int(min_change)
    lows = sorted({-19, -9, -(m - 1), 0, 1, m, 10, 20})
    lows = [lo for lo in lows if -19 <= lo <= 20]
    rows = []
    for i, lo in enumerate([-np.inf, *lows]):
        hi = lows[i] - 1 if i < len(lows) else np.inf
        n = int(((values >= lo) & (values <= hi)).sum())
        label = (f"<= {_signed(hi)}" if lo == -np.inf else f">= {_signed(lo)}" if hi == np.inf
                 else _signed(lo) if lo == hi else f"{_signed(lo)} to {_signed(hi)}")
        trend = "declining" if hi <= -m else "improving" if lo >= m else "steady"
        rows.append((label, trend, n))
    table = pd.DataFrame(rows, columns=["score change", "trend", "leads"])
    table["share"] = table["leads"] / max(1, len(values))
    return table


def _signed(v: float) -> str:
    return f"{v:+.0f}" if v else "0"


def _movements(inp: ReportInputs, mv: Movements) -> str:
    m = inp.model
    counts = mv.counts
    total = int(counts.sum())
    with_prev = int(total - counts.get("new", 0))
    count_table = pd.DataFrame({"trend": counts.index, "leads": counts.to_numpy(dtype="int64")})
    count_table["share"] = count_table["leads"] / max(1, total)
    feats = mv.features.head(20).copy()
    feats.insert(1, "family", [m.catalog_.family_of([f])[0] if f in m.catalog_ else "-" for f in feats["feature"]])
    feats["description"] = [m.catalog_[f].description if f in m.catalog_ else "" for f in feats["feature"]]
    return (
        _p(f"The {total:,} leads open at {inp.as_of:%Y-%m-%d}, compared with their scores at "
           f"{mv.since:%Y-%m-%d} (the previous scoring run; report --since sets it). Both times are scored "
           "by this report's model from this export, so each lead's movements, feature by feature in whole "
           "points, add up exactly to its score change, and no movement comes from a model update (the "
           "previous scores of the score table, and a model update among the movements, are in what "
           "convert-leads score writes). A lead is "
           f"steady when its score moved by less than {mv.min_change} points (scoring.trend_min_change); "
           "new when it was not open at the earlier time (unknown, when a previous score cannot be recomputed "
           "from the export, does not occur here: both times are recomputed from it).")
        + table_html(count_table, {"leads": ",d", "share": _pct})
        + _p(f"{mv.left:,} leads open at {mv.since:%Y-%m-%d} are no longer open (converted or disqualified "
             "since): they have no score now.", "note")
        + "<h3>Distribution of score changes</h3>"
        + '<div class="figures">'
        + image_html(plot_score_changes(mv.score_change, mv.min_change), "score changes",
                     f"Score change of each of the {with_prev:,} leads with a score at both times; the grey band "
                     "is steady.")
        + "</div>"
        + table_html(change_bins(mv.score_change, mv.min_change), {"leads": ",d", "share": _pct})
        + "<h3>Features that moved the most points</h3>"
        + _p("Net points each feature moved, summed over every lead (largest first), with the points it "
             "added and took away and how many leads it moved.")
        + table_html(feats, {"total_points": "+,d", "points_up": "+,d", "points_down": "+,d", "leads_moved": ",d"},
                     text_columns=["feature", "family", "description"],
                     headers={"total_points": "net points", "points_up": "points added",
                              "points_down": "points taken", "leads_moved": "leads moved"})
    )


def _backtest(result: BacktestResult) -> str:
    table = result.table.copy()
    table["origin"] = pd.to_datetime(table["origin"]).dt.strftime("%Y-%m-%d")
    table["trained_at"] = pd.to_datetime(table["trained_at"]).dt.strftime("%Y-%m-%d")
    fmt = {k: ".4f" for k in ("base_rate", "roc_auc", "pr_auc", "log_loss", "brier", "ece")}
    summary_fmt: dict[str, str | Callable[[Any], str]] = {
        k: ".4f" for k in ("roc_auc", "pr_auc", "log_loss", "brier", "ece")}
    summary_fmt.update({k: "+.4f" for k in ("roc_auc_change", "brier_change", "ece_change")})
    summary_fmt["mean_model_age_days"] = ".0f"
    return (
        _p("Rolling origin: at each origin the model is trained on what was known then, scores the leads "
           "open then, and is compared with what happened within the horizon.")
        + "".join(_p(s) for s in cost_sentences(result.summary))
        + image_html(plot_backtest(result.table), "backtest over time")
        + "<h3>Per schedule</h3>" + table_html(result.summary, summary_fmt)
        + "<h3>Per origin</h3>" + table_html(table, {**fmt, "n": ",d", "positives": ",d"})
    )


def build_report(inputs: ReportInputs, config: Config) -> Report:
    """Compute every section of the report (see the module doc)."""
    perf = _performance(inputs)
    imp_body, importance, families = _importance(inputs, config)
    seg_body, segments = _segments(inputs, config)
    drift_body, drift, sd, delay = _drift(inputs, config)
    sections = [
        Section("model-card", "Model card", _model_card(inputs, config)),
        Section("performance", "Performance on the hold-out", perf),
        Section("importance", "What drives the score", imp_body),
        Section("segments", "For whom it works: segments", seg_body),
        Section("drift", "Drift and label delay", drift_body),
    ]
    if inputs.movements is not None:
        sections.append(Section("movements", "Movements since the previous scoring run",
                                _movements(inputs, inputs.movements)))
    if inputs.backtest is not None:
        sections.append(Section("backtest", "Backtest: rolling origin", _backtest(inputs.backtest)))
    title = f"Lead scoring report: {inputs.model_label}"
    subtitle = (f"Population as of {inputs.as_of:%Y-%m-%d}; horizon {inputs.model.horizon_days} days"
                + (f"; generated {inputs.generated_at}" if inputs.generated_at else ""))
    figures = sum(s.body.count("<img ") for s in sections)
    return Report(title, subtitle, sections, importance, families, segments, drift, sd, delay, figures,
                  movements=inputs.movements)
