"""Shared helpers of the benchmarks: peak-RSS phases and a synthetic training/scoring frame.

Not a benchmark itself. ``bench/train.py`` and ``bench/score.py`` import it (the script's own
folder is on ``sys.path`` when run as ``python bench/NAME.py``).
"""

from __future__ import annotations

import gc
import resource
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "bench" / "out"
if str(ROOT / "src") not in sys.path:
    sys.path.insert(0, str(ROOT / "src"))

from convert.config import STANDARD_EVENT_TYPES, FeaturesConfig  # noqa: E402
from convert.features.catalog import Catalog, FeatureDef  # noqa: E402
from convert.features.families import feature_catalog  # noqa: E402

GIB = 2**30


# --- memory ------------------------------------------------------------------------------------


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    return 0


def peak_rss() -> int:
    """Peak resident set size in bytes since the last reset (``VmHWM``)."""
    return _status_kib("VmHWM") * 1024


def rss() -> int:
    return _status_kib("VmRSS") * 1024


def reset_peak() -> bool:
    """Reset ``VmHWM`` (and getrusage's max RSS) to the current RSS; False when not allowed."""
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False


def rusage_peak() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def gib(n: float) -> str:
    return f"{n / GIB:.2f}"


class Phases:
    """Wall time and peak RSS of each named phase (peak reset at the start of each)."""

    def __init__(self, width: int = 54) -> None:
        self.rows: list[dict[str, Any]] = []
        self.width = width
        self.resettable = reset_peak()
        self._peak_before = 0

    def run(self, name: str, fn: Callable[[], Any], quiet: bool = False) -> Any:
        gc.collect()
        self._peak_before = max(self._peak_before, peak_rss(), rusage_peak())
        self.resettable = reset_peak() and self.resettable
        t0, c0 = time.perf_counter(), time.process_time()
        out = fn()
        seconds, cpu = time.perf_counter() - t0, time.process_time() - c0
        self.rows.append({"phase": name, "seconds": seconds, "cpu": cpu, "peak_rss": peak_rss()})
        if not quiet:
            print(f"  {name:<{self.width}} {seconds:>9.2f} s  (cpu {cpu:>8.2f} s)   peak RSS "
                  f"{gib(peak_rss()):>6} GiB", flush=True)
        return out

    def best_cpu(self, name: str) -> float:
        return min(r["cpu"] for r in self.rows if r["phase"] == name)

    def best(self, name: str) -> float:
        return min(r["seconds"] for r in self.rows if r["phase"] == name)

    def peak(self, name: str) -> int:
        return max(r["peak_rss"] for r in self.rows if r["phase"] == name)

    def run_peak(self) -> int:
        """Peak RSS of the whole run so far."""
        return max([self._peak_before, rusage_peak(), peak_rss()] + [r["peak_rss"] for r in self.rows])


# --- synthetic lead snapshots ------------------------------------------------------------------

CATEGORIES: dict[str, list[str]] = {
    "stage": ["lead", "mql", "sql", "opportunity"],
    "industry": ["software", "financial_services", "healthcare", "manufacturing", "retail",
                 "professional_services", "education", "government", "media", "logistics",
                 "energy", "nonprofit", "hospitality"],
    "country": ["US", "GB", "DE", "FR", "CA", "NL", "AU", "ES", "IT", "SE", "IN", "BR", "JP", "MX"],
    "lead_source": ["web_form", "webinar", "trade_show", "paid_search", "organic", "referral",
                    "list_import", "partner", "content"],
    "seniority": ["c_level", "vp", "director", "manager", "individual", "student", "other"],
}


def lead_catalog(n_features: int | None = 100) -> tuple[Catalog, tuple[str, ...]]:
    """convert's own feature catalog (``features.feature_catalog``), cut or padded to *n_features*.

    With the 14 standard event types the catalog has 98 features (5 categorical: stage, industry,
    country, lead_source, seniority); extra numeric ``x_extra_k`` features pad it, and a smaller
    target drops per-event-type features from the end of the vocabulary.
    """
    config = FeaturesConfig()
    types = list(STANDARD_EVENT_TYPES)
    catalog = feature_catalog(types, config)
    if n_features is None:
        return catalog, tuple(types)
    while len(catalog) > n_features and len(types) > 4:
        types.pop()
        catalog = feature_catalog(types, config)
    defs = list(catalog)
    k = 0
    while len(defs) < n_features:
        k += 1
        defs.append(FeatureDef(f"x_extra_{k}", "fit", "extra", "numeric", "count",
                               f"Extra attribute {k}", "Extra attribute {value}"))
    return Catalog(defs[:n_features]), tuple(types)


def _ids(prefix: str, numbers: np.ndarray) -> np.ndarray:
    return np.char.add(prefix, np.char.zfill(numbers.astype(str), 9)).astype(object)


def make_frame(
    n_rows: int,
    catalog: Catalog,
    n_as_of: int = 24,
    seed: int = 0,
    positive_rate: float = 0.02,
    first_as_of: str = "2024-01-01",
) -> pd.DataFrame:
    """Lead snapshots shaped like convert's training frame: ``lead_id``, ``as_of``, ``label`` and
    the catalog's features (numeric float64, categorical text with missing as ``None``, as
    ``features.finish_frame`` returns them). The open population grows over the monthly as-of
    times; the label (about *positive_rate* positive) depends on latent engagement, fit and
    categories that the features reveal with noise.
    """
    rng = np.random.default_rng(seed)
    as_ofs = pd.date_range(first_as_of, periods=n_as_of, freq="MS")
    weights = np.linspace(0.6, 1.4, n_as_of)
    per = np.floor(weights / weights.sum() * n_rows).astype(int)
    per[-1] += n_rows - per.sum()
    as_of = np.repeat(as_ofs.to_numpy(), per)
    lead_no = np.concatenate([np.arange(k) + 7 * i for i, k in enumerate(per)])
    n = n_rows
    eng = rng.gamma(0.8, 1.0, n)  # latent engagement
    fit = rng.normal(0.0, 1.0, n)  # latent fit
    cols: dict[str, Any] = {
        "lead_id": _ids("L", lead_no),
        "as_of": as_of.astype("datetime64[ns]"),
    }
    cat_effect = np.zeros(n)
    for f in catalog:
        if f.kind == "categorical":
            vocab = CATEGORIES.get(f.name, [f"{f.name}_{i}" for i in range(8)])
            k = len(vocab)
            probs = rng.dirichlet(np.ones(k) * 2)
            codes = rng.choice(k, size=n, p=probs)
            cat_effect += np.linspace(-0.4, 0.4, k)[codes] * (1 if f.name != "country" else 0.5)
            values = np.array(vocab, dtype=object)[codes]
            values[rng.random(n) < 0.05] = None
            cols[f.name] = values
            continue
        name, unit = f.name, f.unit
        if unit == "count":
            scale = 0.3 if name.endswith("_7d") else 1.0 if name.endswith("_30d") else 2.5
            if "high_intent" in name or "demo" in name or "quote" in name or "meeting" in name:
                scale *= 0.2
            lam = scale * eng * rng.uniform(0.5, 1.5)
            x = rng.poisson(lam).astype("float64")
            if name.startswith("trend"):
                x = x - rng.poisson(lam)
        elif unit == "days":
            x = rng.exponential(30.0 / (0.3 + eng))
            x[rng.random(n) < 0.3] = np.nan
        elif unit == "ratio":
            x = rng.beta(2.0, 8.0, n)
            x[rng.random(n) < 0.35] = np.nan
        elif unit == "currency":
            x = rng.lognormal(15.0 + 0.3 * fit, 2.0)
            x[rng.random(n) < 0.3] = np.nan
        elif unit == "employees":
            x = np.round(rng.lognormal(4.0 + 0.3 * fit, 1.5))
            x[rng.random(n) < 0.15] = np.nan
        elif unit == "band":
            x = rng.integers(0, 6, n).astype("float64")
            x[rng.random(n) < 0.15] = np.nan
        else:
            x = rng.normal(fit, 1.0)
        cols[name] = x
    logit_wo = 1.1 * np.log(eng + 0.05) + 0.7 * fit + cat_effect
    lo, hi = -15.0, 5.0
    for _ in range(50):  # intercept for the wanted base rate
        mid = (lo + hi) / 2
        if np.mean(1 / (1 + np.exp(-(mid + logit_wo)))) > positive_rate:
            hi = mid
        else:
            lo = mid
    p = 1 / (1 + np.exp(-(lo + logit_wo)))
    cols["label"] = (rng.random(n) < p).astype("int64")
    frame = pd.DataFrame(cols)
    for f in catalog:  # text as features.finish_frame leaves it: object dtype, None for missing
        if f.kind == "categorical":
            frame[f.name] = frame[f.name].astype("object").where(frame[f.name].notna(), None)
    frame["lead_id"] = frame["lead_id"].astype("object")
    return frame[["lead_id", "as_of", "label", *catalog.names]]


# --- the one output format of every bench ----------------------------------------------------


def emit(figures: dict[str, Any]) -> None:
    """Print the bench's figures as its LAST line: one JSON object (the shared output format).

    Every bench ends with this line, so that a caller reads ``stdout.splitlines()[-1]`` and
    gets the figures the issue asks for (ratios measured in the same run) without parsing the
    human-readable table above it. Non-finite numbers become ``null`` (strict JSON).
    """
    import json
    import math

    def clean(value: Any) -> Any:
        if isinstance(value, dict):
            return {str(k): clean(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [clean(v) for v in value]
        if isinstance(value, (np.integer,)):
            return int(value)
        if isinstance(value, (float, np.floating)):
            return float(value) if math.isfinite(float(value)) else None
        if isinstance(value, (str, int, bool)) or value is None:
            return value
        return str(value)

    sys.stdout.flush()
    print(json.dumps(clean(figures), sort_keys=False), flush=True)
