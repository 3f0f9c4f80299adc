"""The synthetic CRM behind ``convert-leads generate``: a documented generative story.

This module owns the simulator: it writes the data contract's four tables (``leads``,
``accounts``, ``events``, ``stages``) as CSV or Parquet, streamed chunk by chunk, with a
story realistic enough that a point-in-time pipeline can learn from it and traps that
punish one that is not point-in-time. Every number below is a constant in this file.

Generative story
----------------
1. **Accounts** (about ``n_leads / 3``, generated first and at once). Industry (13 values;
   software and financial services fit best, nonprofit and education worst), employees
   (log-normal, median about 80, up to 250,000), annual revenue = employees x the industry's
   revenue per employee x log-normal noise (so revenue correlates with employees, and a
   richer-than-expected company fits a little better), country. Fit is a hump in company size
   (mid-market best). Each account has an unobserved *need* shared by its leads and a
   popularity (bigger companies produce more leads). Some firmographics are missing.
2. **Leads**. Creation times are seasonal (month factors with a summer and a December dip,
   fewer leads at weekends, 15 % growth a year, business hours). 15 % are B2C (no account);
   B2B leads pick an account by popularity, so several leads share an account. Lead source
   (referral and partner convert best, list imports worst), job title (free text, a few in
   lower or upper case; seniority: VPs and directors best, students worst; founders common in
   small companies), country, and the extra attribute ``utm_medium`` (derived from the
   source, with a small effect of its own).
3. **Propensity**: log-odds = intercept + firmographic fit + source + seniority + medium +
   month of creation (leads created in summer and December convert less) + the account's
   and the lead's unobserved need. About 14-16 % of leads convert: 72 % after a log-normal
   delay (median about a month, hotter leads faster; 5-95 % range about 6-155 days), 28 %
   re-engaged 4-30 months later. Conversions in late December slip into January; some
   early-quarter deals are pulled back into the last days of the quarter.
4. **Disqualification**: sales disqualifies about 10 % of leads, mostly poor fit, a few
   weeks after creation. Disqualified leads never convert.
5. **Engagement**: each lead has an activity level (higher for better fit and need, heavy
   tailed). Events are the sum of (a) the creation touch (form_submit for web forms,
   webinar_registered/attended for webinar leads, a paid click carrying its campaign ...);
   (b) interest decaying after creation, plus a trickle of visits over the whole open life;
   (c) *research sessions*, short bursts at random times that lead nowhere (noise a model
   must see through); (d) a **warm-up** before conversion for 70 % of converters: 7-60 days
   of rising intensity, rich in high-intent events (pricing_page_view, demo_request,
   quote_request, meeting, call, trial_signup); (e) **false starts**: a quarter of the
   non-converters, more often good fits, show a similar burst (the lost deal), half soon
   after creation, half at any time; (f) **nurturing campaigns** every 5-15 days, each sent
   to a share of the open leads younger than three years: email_open and email_click waves
   sharing a ``campaign_id``, opens more likely during a warm-up and fading with the lead's
   age; a fifth are webinar invitations (clicks register, some attend a week later); a few
   addresses bounce once and leave the list, a few leads unsubscribe and get no more email;
   (g) **post-sale events** after ``converted_at``: onboarding_call, monthly invoice_paid
   (``value`` = amount), support_ticket, and product page_views - a trap for leaky
   pipelines. Custom event types outside the standard vocabulary: chat_started (frequent),
   case_study_view, trial_signup, onboarding_call, invoice_paid, support_ticket, sms_click
   (rare). About 30 events per lead on average (median 25, heavy tailed).
6. **Stages**: ``lead`` at creation; ``mql``, ``sql`` and ``opportunity`` recorded for half
   the converters (the opportunity opening a few weeks before the conversion) and for false
   starts (lost opportunities, about four for each won one), ``mql`` for engaged leads;
   ``customer`` at conversion and ``disqualified`` at disqualification (post-outcome rows,
   a second leakage trap).
7. **Censoring**: nothing is dated after ``end``; a conversion or disqualification after
   ``end`` is left empty (the lead is still open), events after ``end`` are dropped.

Regimes (:class:`Regime`, presets in :data:`REGIMES`) bend the story the ways real CRMs differ
from the demo: a 4-month history (``short``), nobody ever disqualified (``open``), a base rate
drifting with time (``drift``), and fit acting smoothly and additively through a few of many
extra attributes (``additive``). The default regime draws exactly what the story always drew.

On a 90-day horizon, ``convert.model.train`` (default configuration, 20,000 leads) reaches a
hold-out ROC AUC of about 0.89 (logistic regression 0.86); fit and lead age alone give
about 0.73. See ``docs/simulator.md``.

Formats
-------
CSV timestamps are ISO 8601 text in a mix of the forms the contract allows: mostly
``2025-03-01T10:20:30`` (UTC), some ``2025-03-01T08:20:30Z``, some local time with an offset
``2025-03-01 10:20:30+02:00``, and plain dates for 5 % of ``created_at`` (whose instant is
then midnight UTC, so no event precedes it). In Parquet, with ``bad_rows=False``, timestamp
columns are ``timestamp[us, tz=UTC]`` and numbers are typed; with ``bad_rows=True`` the columns
that may hold a planted bad value (timestamps, ``employees``, ``annual_revenue``) are strings
carrying exactly the CSV text, because an unparseable value cannot live in a typed column.

Bad rows (``bad_rows=True``): a small share of each quarantine kind of the contract's
bad-rows table (see :data:`BAD_ROW_KINDS`), well under the 5 % threshold, so loading succeeds.

Determinism and memory: output depends only on the arguments (byte-identical files for the
same arguments), via :class:`numpy.random.SeedSequence` children per part and per chunk.
Results do depend on ``chunk_leads`` (each chunk has its own random stream). Leads are
processed ``chunk_leads`` at a time, vectorised with numpy; each chunk is appended to the
files (CSV) or written as a row group (Parquet) and dropped, so memory is bounded by the
chunk, not by the number of events.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from convert.exceptions import ConfigError
from convert.schema import Accounts, Events, Leads, Stages

__all__ = ["BAD_ROW_KINDS", "EVENT_TYPES", "REGIMES", "GenerateSummary", "Regime", "generate_crm"]

Format = Literal["csv", "parquet"]
I64 = np.ndarray  # int64 arrays (seconds since the epoch, indices)
F64 = np.ndarray

DAY = 86_400
HOUR = 3_600
UTM_MEDIUM = "utm_medium"
"""The extra attribute of ``leads`` (not in the contract, carried through)."""

# --- firmographics ---------------------------------------------------------------------------

#: industry, share, fit effect (log-odds), annual revenue per employee
INDUSTRIES: tuple[tuple[str, float, float, float], ...] = (
    ("software", 0.16, 0.60, 250_000),
    ("financial_services", 0.10, 0.45, 400_000),
    ("healthcare", 0.10, 0.25, 150_000),
    ("manufacturing", 0.14, 0.10, 200_000),
    ("retail", 0.09, -0.20, 180_000),
    ("professional_services", 0.10, 0.15, 120_000),
    ("education", 0.06, -0.50, 60_000),
    ("government", 0.04, -0.35, 100_000),
    ("media", 0.05, -0.10, 150_000),
    ("logistics", 0.06, 0.00, 170_000),
    ("energy", 0.04, 0.20, 500_000),
    ("nonprofit", 0.03, -0.70, 50_000),
    ("hospitality", 0.02, -0.40, 60_000),
)
#: country, share, fit effect
COUNTRIES: tuple[tuple[str, float, float], ...] = (
    ("US", 0.38, 0.10),
    ("GB", 0.12, 0.10),
    ("DE", 0.10, 0.05),
    ("FR", 0.07, 0.00),
    ("CA", 0.06, 0.10),
    ("NL", 0.04, 0.05),
    ("AU", 0.04, 0.05),
    ("ES", 0.03, -0.10),
    ("IT", 0.03, -0.10),
    ("SE", 0.02, 0.05),
    ("IN", 0.05, -0.35),
    ("BR", 0.04, -0.30),
    ("JP", 0.02, -0.05),
    ("MX", 0.01, -0.25),
)

# --- leads -----------------------------------------------------------------------------------

#: source, share among B2B leads, share among B2C leads, fit effect, activity factor
LEAD_SOURCES: tuple[tuple[str, float, float, float, float], ...] = (
    ("web_form", 0.20, 0.22, 0.20, 1.10),
    ("organic", 0.13, 0.20, 0.00, 1.15),
    ("paid_search", 0.14, 0.24, -0.20, 1.00),
    ("webinar", 0.10, 0.04, 0.25, 1.30),
    ("trade_show", 0.07, 0.01, 0.30, 0.80),
    ("referral", 0.06, 0.07, 1.00, 0.90),
    ("list_import", 0.12, 0.02, -0.90, 0.45),
    ("partner", 0.06, 0.01, 0.60, 0.90),
    ("social", 0.05, 0.14, -0.40, 0.95),
    ("content_syndication", 0.05, 0.02, -0.50, 0.80),
)
SOURCE_MISSING = 0.02

#: utm_medium values; row i of MEDIUM_BY_SOURCE is the distribution for LEAD_SOURCES[i]
#: (the last row for a missing source); "" is an empty cell
MEDIUMS: tuple[tuple[str, float], ...] = (
    ("", 0.0),
    ("cpc", -0.15),
    ("organic", 0.0),
    ("email", 0.10),
    ("social", -0.10),
    ("paid_social", -0.30),
    ("referral", 0.20),
    ("partner", 0.10),
    ("event", 0.10),
    ("display", -0.20),
)
MEDIUM_BY_SOURCE: tuple[tuple[float, ...], ...] = (
    # ""   cpc   org   email soc   psoc  ref   part  event disp
    (0.20, 0.25, 0.40, 0.15, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # web_form
    (0.15, 0.00, 0.85, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # organic
    (0.05, 0.95, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # paid_search
    (0.20, 0.00, 0.00, 0.60, 0.20, 0.00, 0.00, 0.00, 0.00, 0.00),  # webinar
    (0.70, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.30, 0.00),  # trade_show
    (0.20, 0.00, 0.00, 0.00, 0.00, 0.00, 0.80, 0.00, 0.00, 0.00),  # referral
    (0.95, 0.00, 0.00, 0.05, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # list_import
    (0.20, 0.00, 0.00, 0.00, 0.00, 0.00, 0.10, 0.70, 0.00, 0.00),  # partner
    (0.00, 0.00, 0.00, 0.00, 0.60, 0.40, 0.00, 0.00, 0.00, 0.00),  # social
    (0.30, 0.20, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.50),  # content_syndication
    (0.80, 0.00, 0.20, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00, 0.00),  # missing source
)

#: seniority, share (B2B, companies under 20 employees, B2C), fit effect, job titles
SENIORITY: tuple[tuple[str, tuple[float, float, float], float, tuple[str, ...]], ...] = (
    (
        "c_level",
        (0.06, 0.25, 0.02),
        0.45,
        ("CEO", "Chief Technology Officer", "CFO", "Founder & CEO", "COO", "Co-founder", "Owner"),
    ),
    (
        "vp",
        (0.07, 0.04, 0.00),
        0.60,
        ("VP Sales", "Vice President of Marketing", "VP Engineering", "SVP Operations", "VP, IT"),
    ),
    (
        "director",
        (0.12, 0.06, 0.02),
        0.55,
        (
            "Director of IT",
            "Marketing Director",
            "Head of Procurement",
            "Sr. Director, Finance",
            "Head of Sales Operations",
        ),
    ),
    (
        "manager",
        (0.22, 0.18, 0.10),
        0.30,
        (
            "IT Manager",
            "Marketing Manager",
            "Project Manager",
            "Operations Manager",
            "Procurement Manager",
            "Sales Manager",
        ),
    ),
    (
        "individual",
        (0.38, 0.36, 0.38),
        -0.10,
        (
            "Software Engineer",
            "Analyst",
            "Marketing Specialist",
            "Sales Representative",
            "Accountant",
            "Consultant",
            "Data Scientist",
            "Designer",
        ),
    ),
    (
        "student",
        (0.03, 0.02, 0.20),
        -1.50,
        ("Student", "Intern", "PhD Candidate", "Graduate Student"),
    ),
    ("other", (0.04, 0.03, 0.18), -0.50, ("Retired", "Freelancer", "n/a", "-", "Self-employed")),
)
TITLE_MISSING = 0.08
TITLE_MISSING_EFFECT = -0.20
TITLE_CASE_NOISE = 0.05  # share of titles typed in lower or upper case
B2C_SHARE = 0.15
B2C_EFFECT = -0.30
LEAD_COUNTRY_FROM_ACCOUNT = 0.90
LEAD_COUNTRY_MISSING = 0.03

# --- seasonality -----------------------------------------------------------------------------

#: relative lead creation rate by month (Jan..Dec): summer and December dips
CREATION_BY_MONTH = (1.10, 1.05, 1.10, 1.00, 1.00, 0.95, 0.80, 0.75, 1.10, 1.15, 1.00, 0.65)
CREATION_BY_WEEKDAY = (1.0, 1.05, 1.05, 1.0, 0.9, 0.35, 0.30)  # Monday first
CREATION_GROWTH_PER_YEAR = 0.15
#: conversion log-odds effect of the month a lead was created in
CONVERSION_BY_MONTH = (0.10, 0.05, 0.05, 0.0, 0.0, -0.10, -0.20, -0.20, 0.15, 0.15, -0.10, -0.35)

# --- outcomes --------------------------------------------------------------------------------

INTERCEPT = -2.3
ACCOUNT_NEED_SD = 0.55
LEAD_NEED_SD = 0.85
CONVERSION_DELAY_MEDIAN_DAYS = 30.0
CONVERSION_DELAY_SIGMA = 1.0
LATE_CONVERSION_SHARE = 0.28  # re-engaged: converted 120-900 days after creation
DECEMBER_SLIP = 0.5  # share of conversions after 15 December pushed into January
QUARTER_PULL = 0.3  # share of first-week-of-quarter conversions pulled into the last days before
DQ_INTERCEPT = -2.35
DQ_FIT_SLOPE = 1.4
DQ_DELAY_MEDIAN_DAYS = 18.0

# --- engagement ------------------------------------------------------------------------------

BACKGROUND_MEAN = 5.0  # events of the interest decaying after creation, at activity 1
BACKGROUND_TAU_DAYS = 30.0
TRICKLE_PER_YEAR = 2.5  # events spread uniformly over the open life, at activity 1
SESSIONS_PER_YEAR = 2.0  # research sessions (mini-bursts that lead nowhere), at activity 1
SESSION_EVENTS = 4.0
WARMUP_SHARE = 0.7
WARMUP_MEAN = 11.0
FALSE_START_MAX = 0.9
FALSE_START_STRENGTH = 0.9
NURTURE_MAX_AGE_DAYS = 1095
NURTURE_FATIGUE_DAYS = 730.0  # open rates decay with the lead's age
NURTURE_OPEN = 0.32
NURTURE_CLICK = 0.14
BOUNCING_ADDRESS = 0.03
UNSUBSCRIBE = 0.004

# --- event kinds -----------------------------------------------------------------------------

_WEB = "https://www.example.com"
_APP = "https://app.example.com"


@dataclass(frozen=True)
class _Kind:
    """An internal event kind: the event_type it is written as, its channel, urls and value."""

    name: str
    channel: str | None
    urls: tuple[str, ...] = ()
    seconds: tuple[float, float] | None = None  # log-normal (median, sigma) of ``value``


_KINDS: tuple[_Kind, ...] = (
    _Kind(
        "page_view",
        "web",
        tuple(
            _WEB + p
            for p in (
                "/",
                "/product",
                "/product/features",
                "/product/integrations",
                "/blog/lead-scoring-101",
                "/blog/crm-hygiene",
                "/blog/pipeline-metrics",
                "/docs/getting-started",
                "/about",
                "/careers",
                "/security",
            )
        ),
        (35.0, 0.9),
    ),
    _Kind(
        "pricing_page_view", "web", (_WEB + "/pricing", _WEB + "/pricing/enterprise"), (60.0, 0.8)
    ),
    _Kind("email_open", "email"),
    _Kind("email_click", "email"),
    _Kind("form_submit", "web", (_WEB + "/contact", _WEB + "/newsletter", _WEB + "/demo")),
    _Kind(
        "content_download",
        "web",
        tuple(
            _WEB + "/resources/" + f
            for f in (
                "whitepaper-roi.pdf",
                "ebook-lead-scoring.pdf",
                "report-state-of-sales.pdf",
                "checklist-crm.pdf",
            )
        ),
    ),
    _Kind("webinar_registered", "webinar"),
    _Kind("webinar_attended", "webinar", (), (1500.0, 0.5)),
    _Kind("demo_request", "web", (_WEB + "/demo",)),
    _Kind("quote_request", "web", (_WEB + "/pricing/quote",)),
    _Kind("meeting", "sales"),
    _Kind("call", "sales", (), (420.0, 0.8)),
    _Kind("unsubscribe", "email"),
    _Kind("email_bounce", "email"),
    _Kind("chat_started", "chat", (_WEB + "/pricing", _WEB + "/product", _WEB + "/")),
    _Kind(
        "case_study_view",
        "web",
        tuple(
            _WEB + "/customers/" + c
            for c in ("acme-corp", "globex", "initech", "umbrella-health", "stark-logistics")
        ),
        (90.0, 0.7),
    ),
    _Kind("trial_signup", "web", (_WEB + "/signup",)),
    _Kind("sms_click", "sms"),
    # post-sale
    _Kind(
        "page_view",
        "web",
        tuple(
            _APP + p for p in ("/dashboard", "/settings", "/reports", "/integrations", "/billing")
        )
        + ("https://docs.example.com/setup",),
        (120.0, 0.9),
    ),
    _Kind("onboarding_call", "customer_success", (), (2700.0, 0.3)),
    _Kind("invoice_paid", "billing"),
    _Kind("support_ticket", "support"),
)
_K = {k.name: i for i, k in reversed(list(enumerate(_KINDS)))}  # first kind of each name
_K_APP_PAGE_VIEW = len(_KINDS) - 4

#: every event_type the simulator writes: the standard vocabulary plus custom types
EVENT_TYPES: tuple[str, ...] = tuple(dict.fromkeys(k.name for k in _KINDS))

#: event-kind mixes (weights) of each engagement component
BACKGROUND_MIX = {
    "page_view": 0.60,
    "pricing_page_view": 0.035,
    "form_submit": 0.035,
    "content_download": 0.08,
    "webinar_registered": 0.02,
    "chat_started": 0.07,
    "case_study_view": 0.03,
    "call": 0.03,
    "demo_request": 0.008,
    "meeting": 0.005,
    "quote_request": 0.003,
    "trial_signup": 0.004,
    "email_click": 0.02,
    "sms_click": 0.001,
}
WARMUP_MIX = {
    "page_view": 0.24,
    "pricing_page_view": 0.18,
    "demo_request": 0.06,
    "quote_request": 0.05,
    "meeting": 0.10,
    "call": 0.10,
    "email_click": 0.05,
    "content_download": 0.04,
    "case_study_view": 0.07,
    "chat_started": 0.06,
    "trial_signup": 0.04,
    "webinar_attended": 0.01,
}
SESSION_MIX = {
    "page_view": 0.50,
    "pricing_page_view": 0.12,
    "case_study_view": 0.08,
    "content_download": 0.08,
    "chat_started": 0.06,
    "form_submit": 0.04,
    "call": 0.04,
    "email_click": 0.03,
    "demo_request": 0.015,
    "quote_request": 0.005,
    "meeting": 0.01,
    "trial_signup": 0.01,
    "webinar_registered": 0.01,
}
FALSE_START_MIX = {
    "page_view": 0.32,
    "pricing_page_view": 0.17,
    "demo_request": 0.05,
    "quote_request": 0.02,
    "meeting": 0.08,
    "call": 0.10,
    "email_click": 0.05,
    "content_download": 0.05,
    "case_study_view": 0.06,
    "chat_started": 0.07,
    "trial_signup": 0.03,
}
#: the event a lead's creation leaves, by source (None: no event)
CREATION_EVENT = {
    "web_form": "form_submit",
    "organic": "page_view",
    "paid_search": "page_view",
    "webinar": "webinar_registered",
    "content_syndication": "content_download",
    "social": "page_view",
}
PPC_CAMPAIGNS = ("PPC-brand", "PPC-generic", "PPC-competitor")
WEBINAR_SOURCE_CAMPAIGNS = ("WBN-product-tour", "WBN-roi-masterclass", "WBN-industry-panel")

# --- stages ----------------------------------------------------------------------------------

STAGE_RECORDED = 0.5  # share of converters whose mql/sql/opportunity stages are recorded
STAGE_NAMES = ("lead", "mql", "sql", "opportunity", "customer", "disqualified")
_S = {s: i for i, s in enumerate(STAGE_NAMES)}

# --- bad rows --------------------------------------------------------------------------------

#: planted bad-row kinds: (table, kind, share of the table's rows, what the contract says)
BAD_ROW_KINDS: tuple[tuple[str, str, float, str], ...] = (
    ("leads", "empty_lead_id", 0.0005, "quarantine the lead"),
    ("leads", "created_at_unparseable", 0.0005, "quarantine the lead, its events and stages"),
    ("leads", "converted_at_unparseable", 0.0003, "quarantine the lead"),
    ("leads", "disqualified_at_unparseable", 0.0002, "quarantine the lead"),
    ("leads", "converted_before_created", 0.0004, "quarantine the lead"),
    ("leads", "disqualified_before_created", 0.0003, "quarantine the lead"),
    ("leads", "account_not_found", 0.0010, "warning: lead kept without firmographics"),
    ("accounts", "employees_not_numeric", 0.0020, "quarantine the account"),
    ("accounts", "annual_revenue_not_numeric", 0.0020, "quarantine the account"),
    ("events", "unknown_lead", 0.0005, "quarantine the event"),
    ("events", "occurred_at_unparseable", 0.0005, "quarantine the event"),
    ("events", "before_created", 0.0010, "quarantine the event"),
    ("stages", "unknown_lead", 0.0010, "quarantine the stage row"),
    ("stages", "entered_at_unparseable", 0.0010, "quarantine the stage row"),
    ("stages", "before_created", 0.0010, "quarantine the stage row"),
)
MAX_BAD_SHARE = 0.02  # per table; kinds are thinned below this on tiny tables
BAD_TIMESTAMPS = (
    "N/A",
    "2024-13-45",
    "31/02/2024",
    "yesterday",
    "2024-02-30T10:00:00",
    "#VALUE!",
    "0000-00-00 00:00:00",
    "TBD",
    "12/31/2024 25:00",
)
BAD_EMPLOYEES = ("50-200", "unknown", "1k-5k", "500+", "n/a", "ten")
BAD_REVENUE = ("$1.2M", "10M-50M", "unknown", "TBD", "1,5 Mio", "n/a")

# --- timestamp styles ------------------------------------------------------------------------

_NAIVE, _ZULU, _OFFSET, _DATE = 0, 1, 2, 3
_STYLE_LEN = np.array([19, 20, 25, 10], dtype=np.int64)
_OFFSETS_MIN = np.array([120, 60, -300, 330, -480, 540, -180], dtype=np.int64)
#: style shares (naive, Z, offset, plain date) per timestamp column
STYLE_CREATED = (0.77, 0.10, 0.08, 0.05)
STYLE_OTHER = (0.82, 0.10, 0.08, 0.0)


# =============================================================================================
# summary
# =============================================================================================


@dataclass(frozen=True)
class GenerateSummary:
    """What :func:`generate_crm` wrote: where, rows per table, planted bad rows, time range."""

    out_dir: Path
    format: str
    rows: dict[str, int]
    bad_rows: dict[str, int]
    start: str
    end: str
    seed: int
    converted: int
    disqualified: int
    seconds: float = field(default=0.0, compare=False)
    regime: Regime = field(default_factory=lambda: Regime())

    def lines(self) -> list[str]:
        """Human-readable lines for the CLI."""
        leads = max(self.rows.get("leads", 0), 1)
        out = [
            f"synthetic CRM written to {self.out_dir} ({self.format}, seed {self.seed}, "
            f"{self.start} .. {self.end}, {self.seconds:.1f} s)",
        ]
        for table, n in self.rows.items():
            out.append(f"  {table:<10} {n:>12,} rows")
        out.append(
            f"  converted  {self.converted:>12,} ({self.converted / leads:.1%} of leads), "
            f"disqualified {self.disqualified:,} ({self.disqualified / leads:.1%})"
        )
        out.extend(self._regime_lines())
        planted = {k: v for k, v in self.bad_rows.items() if v}
        if planted:
            out.append(f"  planted bad rows ({sum(planted.values()):,}):")
            for key, n in planted.items():
                out.append(f"    {key:<40} {n:>8,}")
        else:
            out.append("  no bad rows planted")
        return out

    def __str__(self) -> str:
        return "\n".join(self.lines())

    def extra_attributes(self) -> list[dict[str, str]]:
        """``features.extra_attributes`` entries that make training use the regime's
        extra lead columns (empty when it has none)."""
        return [
            {"table": "leads", "column": name,
             "kind": "categorical" if _attribute_is_categorical(j) else "numeric"}
            for j, name in enumerate(self.regime.attribute_effects())
        ]

    def _regime_lines(self) -> list[str]:
        r = self.regime
        if r == Regime():
            return []
        out = [f"  regime {r.name}: " + ", ".join(
            part for part in (
                f"{r.months} months" if r.months else "",
                "never disqualified" if not r.disqualify else "",
                f"base-rate drift {r.drift:+g} log-odds from start to end" if r.drift else "",
                "smooth size effect" if r.smooth_fit else "",
                f"engagement x{r.engagement:g}" if r.engagement != 1.0 else "",
                f"{r.attributes} extra attributes" if r.attributes else "",
            ) if part
        )]
        effects = r.attribute_effects()
        if effects:
            relevant = {k: v for k, v in effects.items() if v}
            out.append("    relevant (log-odds per SD): "
                       + ", ".join(f"{k} {v:+.2f}" for k, v in relevant.items())
                       + f"; the other {len(effects) - len(relevant)} have no effect")
        return out


# =============================================================================================
# small vectorised helpers
# =============================================================================================


def _sigmoid(x: F64) -> F64:
    return 1.0 / (1.0 + np.exp(-x))


def _pick(rng: np.random.Generator, weights: np.ndarray | Sequence[float], size: int) -> I64:
    """Indices drawn from a categorical distribution (weights need not sum to one)."""
    cdf = np.cumsum(np.asarray(weights, dtype=np.float64))
    idx = np.searchsorted(cdf / cdf[-1], rng.random(size), side="right")
    return np.minimum(idx, len(cdf) - 1).astype(np.int64)


def _pick_rows(rng: np.random.Generator, probs: np.ndarray, rows: I64) -> I64:
    """One categorical draw per row, row ``i`` using the distribution ``probs[rows[i]]``."""
    cdf = np.cumsum(probs, axis=1)
    cdf = cdf / cdf[:, -1:]
    u = rng.random(len(rows))
    idx = (u[:, None] >= cdf[rows]).sum(axis=1)
    return np.minimum(idx, probs.shape[1] - 1).astype(np.int64)


def _mix(weights: dict[str, float]) -> tuple[I64, F64]:
    kinds = np.array([_K[name] for name in weights], dtype=np.int64)
    return kinds, np.array(list(weights.values()), dtype=np.float64)


def _civil_direct(days: I64) -> tuple[I64, I64, I64]:
    """Year, month, day of days since 1970-01-01 (Howard Hinnant's algorithm, vectorised)."""
    z = days + 719_468
    era = z // 146_097
    doe = z - era * 146_097
    yoe = (doe - doe // 1460 + doe // 36_524 - doe // 146_096) // 365
    doy = doe - (365 * yoe + yoe // 4 - yoe // 100)
    mp = (5 * doy + 2) // 153
    d = doy - (153 * mp + 2) // 5 + 1
    m = np.where(mp < 10, mp + 3, mp - 9)
    y = yoe + era * 400 + (m <= 2)
    return y, m, d


def _civil(days: I64) -> tuple[I64, I64, I64]:
    """Year, month, day of days since 1970-01-01; many dates over a short span use a lookup."""
    if len(days) == 0:
        return days, days, days
    first, last = int(days.min()), int(days.max())
    if last - first >= len(days):
        return _civil_direct(days)
    y, m, d = _civil_direct(np.arange(first, last + 1, dtype=np.int64))
    i = days - first
    return y[i], m[i], d[i]


def _month(secs: I64) -> I64:
    return _civil(secs // DAY)[1]


def _digits(buf: np.ndarray, col: int, values: I64, width: int) -> None:
    """Write ``values`` as ``width`` zero-padded ASCII digits into ``buf[:, col:col + width]``."""
    pos = col + width
    while width >= 4:  # four digits at a time through a lookup table
        buf[:, pos - 4 : pos] = _FOUR_DIGITS[values % 10_000]
        values = values // 10_000
        width -= 4
        pos -= 4
    for i in range(width):
        buf[:, pos - 1 - i] = 48 + values % 10
        values = values // 10


def _four_digits() -> np.ndarray:
    v = np.arange(10_000)
    return np.stack(
        [48 + v // 1000, 48 + v // 100 % 10, 48 + v // 10 % 10, 48 + v % 10], axis=1
    ).astype(np.uint8)


def _clock() -> np.ndarray:
    """``HH:MM:SS`` of every second of a day, as bytes (86,400 x 8)."""
    s = np.arange(DAY)
    out = np.empty((DAY, 8), dtype=np.uint8)
    for col, v in ((0, s // HOUR), (3, s // 60 % 60), (6, s % 60)):
        out[:, col] = 48 + v // 10
        out[:, col + 1] = 48 + v % 10
    out[:, 2] = out[:, 5] = ord(":")
    return out


_FOUR_DIGITS = _four_digits()
_CLOCK = _clock()


def _strings(buf: np.ndarray, lengths: I64, valid: np.ndarray | None = None) -> pa.Array:
    """An Arrow string array from a byte matrix whose row ``i`` holds ``lengths[i]`` bytes."""
    n = len(lengths)
    if valid is not None:
        lengths = np.where(valid, lengths, 0)
    if n and valid is None and (lengths == lengths[0]).all():
        data = np.ascontiguousarray(buf[:, : int(lengths[0])]).reshape(-1)
    else:
        data = buf[np.arange(buf.shape[1]) < lengths[:, None]]
    offsets = np.zeros(n + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    bitmap = None if valid is None else pa.py_buffer(np.packbits(valid, bitorder="little"))
    arr = pa.LargeStringArray.from_buffers(n, pa.py_buffer(offsets), pa.py_buffer(data), bitmap)
    return arr.cast(pa.string())


def _ids(prefix: str, numbers: I64, width: int) -> pa.Array:
    """``prefix`` + zero-padded numbers (``L00000042``); negative numbers become empty cells."""
    p = prefix.encode()
    buf = np.empty((len(numbers), len(p) + width), dtype=np.uint8)
    buf[:, : len(p)] = np.frombuffer(p, dtype=np.uint8)
    _digits(buf, len(p), np.maximum(numbers, 0), width)
    valid = numbers >= 0
    return _strings(
        buf, np.full(len(numbers), buf.shape[1], dtype=np.int64), None if valid.all() else valid
    )


def _timestamps(
    secs: I64, style: I64, offset_min: I64, valid: np.ndarray | None = None
) -> pa.Array:
    """ISO 8601 text in the given styles (naive UTC, Z, local time with offset, plain date)."""
    n = len(secs)
    off = style == _OFFSET
    local = secs + np.where(off, offset_min * 60, 0)
    days, sod = np.divmod(local, DAY)
    buf = np.empty((n, 25), dtype=np.uint8)
    if n:  # the date through a per-call table of the days spanned, the time of day through _CLOCK
        first = int(days.min())
        span = np.arange(first, int(days.max()) + 1, dtype=np.int64)
        y, m, d = _civil_direct(span)
        table = np.empty((len(span), 10), dtype=np.uint8)
        _digits(table, 0, y, 4)
        _digits(table, 5, m, 2)
        _digits(table, 8, d, 2)
        table[:, 4] = table[:, 7] = ord("-")
        buf[:, :10] = table[days - first]
    buf[:, 10] = ord("T")
    buf[:, 11:19] = _CLOCK[sod]
    buf[:, 19] = ord("Z")
    if off.any():
        o = offset_min[off]
        sub = buf[off]
        sub[:, 10] = ord(" ")
        sub[:, 19] = np.where(o < 0, ord("-"), ord("+"))
        a = np.abs(o)
        _digits(sub[:, 20:22], 0, a // 60, 2)
        sub[:, 22] = ord(":")
        _digits(sub[:, 23:25], 0, a % 60, 2)
        buf[off] = sub
    return _strings(buf, _STYLE_LEN[style], valid)


def _take(values: tuple[str, ...] | list[str], idx: I64) -> pa.Array:
    """Strings by index; a negative index is an empty cell."""
    mask = idx < 0
    return pa.array(list(values), type=pa.string()).take(pa.array(np.maximum(idx, 0), mask=mask))


def _replace(arr: pa.Array, rows: I64, values: list[str]) -> pa.Array:
    if len(rows) == 0:
        return arr
    order = np.argsort(rows, kind="stable")
    mask = np.zeros(len(arr), dtype=bool)
    mask[rows] = True
    return pc.replace_with_mask(
        arr, pa.array(mask), pa.array([values[i] for i in order], pa.string())
    )


def _parse_bound(text: str, *, is_end: bool) -> int:
    """Seconds since the epoch of an ISO 8601 bound; a plain date ``end`` means its last second."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError as exc:
        raise ConfigError(
            f"{'end' if is_end else 'start'} {text!r} is not an ISO 8601 date"
        ) from exc
    if value.tzinfo is not None:
        value = value.astimezone(UTC).replace(tzinfo=None)
    secs = int((value - datetime(1970, 1, 1)).total_seconds())
    if is_end and len(text.strip()) == 10:
        secs += DAY - 1
    return secs


def _quota(n_rows: int, rates: list[float], *, at_least_one: bool) -> list[int]:
    """Bad rows per kind for a table of ``n_rows``, thinned to stay under ``MAX_BAD_SHARE``."""
    counts = [int(round(r * n_rows)) for r in rates]
    if at_least_one:
        counts = [max(1, c) for c in counts]
    cap = MAX_BAD_SHARE * n_rows
    if sum(counts) > cap:
        counts = [int(c * cap / sum(counts)) for c in counts]
    return counts


def _garbage(rng: np.random.Generator, choices: tuple[str, ...], size: int) -> list[str]:
    return [choices[i] for i in rng.integers(0, len(choices), size)]


# =============================================================================================
# the world: accounts, lead creation times, campaigns
# =============================================================================================


@dataclass
class _Firms:
    """Accounts: the observed firmographics and the latent parts of the story."""

    industry: I64  # -1: missing
    employees: F64  # true size (also when the cell is left empty)
    revenue: F64
    country: I64  # -1: missing
    employees_missing: np.ndarray
    revenue_missing: np.ndarray
    fit: F64
    need: F64
    cdf: F64  # cumulative popularity, to assign leads

    @property
    def n(self) -> int:
        return len(self.fit)


def _draw_accounts(rng: np.random.Generator, n_acc: int, smooth: bool = False) -> _Firms:
    """Industry, size, revenue correlated with size, country; fit is a hump in size.

    With ``smooth`` (the ``additive`` regime) the size effect is linear in log employees
    instead: the same draws, a smooth monotone effect a linear model can represent."""
    ind = _pick(rng, [r[1] for r in INDUSTRIES], n_acc)
    log_emp = np.clip(rng.normal(1.9, 0.8, n_acc), 0.0, np.log10(250_000))
    emp = np.maximum(np.round(10**log_emp), 1.0)
    noise = rng.normal(0.0, 0.45, n_acc)
    revenue = np.maximum(
        np.round(emp * np.array([r[3] for r in INDUSTRIES])[ind] * np.exp(noise), -3), 10_000.0
    )
    country = _pick(rng, [c[1] for c in COUNTRIES], n_acc)
    size_eff = np.maximum(0.45 - 0.35 * (np.log10(emp) - 2.6) ** 2, -0.9)
    if smooth:
        size_eff = SMOOTH_SIZE_SLOPE * (np.log10(emp) - 1.9)
    fit = (
        np.array([r[2] for r in INDUSTRIES])[ind]
        + size_eff
        + 0.3 * noise
        + np.array([c[2] for c in COUNTRIES])[country]
    )
    need = rng.normal(0.0, ACCOUNT_NEED_SD, n_acc)
    popularity = np.exp(rng.normal(0.0, 1.0, n_acc)) * emp**0.25
    cdf = np.cumsum(popularity)
    return _Firms(
        industry=np.where(rng.random(n_acc) < 0.04, -1, ind),
        employees=emp,
        revenue=revenue,
        country=np.where(rng.random(n_acc) < 0.02, -1, country),
        employees_missing=rng.random(n_acc) < 0.05,
        revenue_missing=rng.random(n_acc) < 0.10,
        fit=fit,
        need=need,
        cdf=cdf / cdf[-1],
    )


@dataclass
class _Campaigns:
    """The nurturing calendar."""

    send: I64
    audience: F64
    appeal: F64
    webinar: np.ndarray
    ids: list[str]


def _draw_campaigns(rng: np.random.Generator, start: int, end: int) -> _Campaigns:
    """A send every 5-15 days at 08:00-11:00 UTC; a fifth are webinar invitations."""
    span_days = max((end - start) / DAY, 1.0)
    gaps = rng.uniform(5.0, 15.0, int(span_days / 5.0) + 2)
    day = np.floor(np.cumsum(gaps) - gaps[0] + rng.uniform(0.0, 5.0)).astype(np.int64)
    send = start - start % DAY + day * DAY + rng.integers(8 * HOUR, 11 * HOUR, len(day))
    send = send[(send > start) & (send <= end)]
    n = len(send)
    webinar = rng.random(n) < 0.2
    y, m, d = _civil(send // DAY)
    ids = [
        f"{'WBN' if w else 'NUR'}-{yy:04d}{mm:02d}{dd:02d}"
        for w, yy, mm, dd in zip(webinar.tolist(), y.tolist(), m.tolist(), d.tolist(), strict=True)
    ]
    return _Campaigns(send, rng.uniform(0.3, 0.9, n), rng.uniform(0.7, 1.3, n), webinar, ids)


def _creation_times(rng: np.random.Generator, n: int, start: int, end: int) -> I64:
    """Sorted lead creation times: seasonal by month and weekday, growing, in business hours."""
    days = np.arange(start // DAY, end // DAY + 1, dtype=np.int64)
    month = _civil(days)[1]
    weekday = (days + 3) % 7  # 1970-01-01 was a Thursday
    years = (days - days[0]) / 365.25
    w = (
        np.array(CREATION_BY_MONTH)[month - 1]
        * np.array(CREATION_BY_WEEKDAY)[weekday]
        * (1.0 + CREATION_GROWTH_PER_YEAR) ** years
    )
    day = days[_pick(rng, w, n)]
    business = rng.random(n) < 0.75
    tod = np.where(business, rng.normal(14.5 * HOUR, 3 * HOUR, n), rng.uniform(0, DAY, n))
    secs = day * DAY + np.clip(tod, 0, DAY - 1).astype(np.int64)
    return np.sort(np.clip(secs, start, end))


@dataclass
class _World:
    """What all chunks share: bounds, accounts, campaigns, creation times, id widths."""

    start: int
    end: int
    n_leads: int
    lead_width: int
    account_width: int
    created: I64
    firms: _Firms
    campaigns: _Campaigns
    activity: float = 1.0  # multiplies the rate of self-directed pre-sale events
    team: _Team | None = None  # sales reps and lead owners (``reps`` > 0), else none
    regime: Regime = field(default_factory=lambda: Regime())


# =============================================================================================
# sales reps and lead owners (``reps`` > 0): who works each lead, and how well
# =============================================================================================

OWNER_ID = "owner_id"
#: employee bands of the rep effects (``features.employee_bands``' default cuts)
REP_EMPLOYEE_BANDS = (10, 50, 200, 1000, 5000)
#: log-normal spread of the true rep effects: per rep, per rep and source, per rep and size band
REP_EFFECT_SD = (0.25, 0.20, 0.10)
#: open leads created this many days before ``end`` have no owner yet (awaiting routing)
UNROUTED_DAYS = 21
#: a rep's effect never lifts a conversion probability above this
P_CAP = 0.999
REPS_FILE = "reps.csv"
REP_EFFECTS_FILE = "rep_effects.csv"


@dataclass
class _Team:
    """Sales reps: country territories, true effects per (rep, source, size band), capacity."""

    ids: list[str]
    countries: list[list[int]]  # indices into COUNTRIES each rep covers
    effect: F64  # (reps, sources + missing, bands + missing), lead-weighted mean 1 per segment
    capacity: I64
    max_open: list[int | None]
    active: np.ndarray
    seed: np.random.SeedSequence
    #: per segment, the leads' summed conversion probability without a rep, and with each rep
    #: (after the cap): the effects as realised on expected conversions (``rep_effects.csv``)
    base: F64 = field(default_factory=lambda: np.zeros(0))
    realised: F64 = field(default_factory=lambda: np.zeros(0))

    @property
    def n(self) -> int:
        return len(self.ids)

    def realised_effects(self) -> F64:
        """Each (rep, segment)'s effect on the segment's expected conversions, relative to the
        segment's average rep (the parameter where the segment has no lead)."""
        with np.errstate(invalid="ignore", divide="ignore"):
            ratio = self.realised / self.base[None, :, :]
            ratio = ratio / ratio.mean(axis=0, keepdims=True)
        return np.where(self.base[None, :, :] > 0, ratio, self.effect)


def _band_index(employees: F64) -> I64:
    return np.searchsorted(np.asarray(REP_EMPLOYEE_BANDS, dtype="float64"), employees, side="right")


def _draw_team(seed: np.random.SeedSequence, n_reps: int, n_leads: int) -> _Team:
    """Reps with overlapping country territories (every country has at least two reps when
    there are two or more), true win-rate effects by segment, capacity and max_open."""
    rng = np.random.default_rng(seed.spawn(1)[0])
    n_c = len(COUNTRIES)
    covers: list[list[int]] = [[] for _ in range(n_reps)]
    for c in range(n_c):  # each country to two reps (one when alone), spread round the team
        for k in range(min(2, n_reps)):
            covers[(2 * c + k) % n_reps].append(c)
    for r in range(n_reps):  # and a few more at random
        extra = rng.choice(n_c, int(rng.integers(0, 3)), replace=False)
        covers[r] = sorted(set(covers[r]) | {int(x) for x in extra})
    n_src, n_band = len(LEAD_SOURCES) + 1, len(REP_EMPLOYEE_BANDS) + 2
    sd_rep, sd_src, sd_band = REP_EFFECT_SD
    log_e = (
        rng.normal(0.0, sd_rep, (n_reps, 1, 1))
        + rng.normal(0.0, sd_src, (n_reps, n_src, 1))
        + rng.normal(0.0, sd_band, (n_reps, 1, n_band))
    )
    effect = np.exp(log_e)
    effect /= effect.mean(axis=0, keepdims=True)  # past owners are uniform: a segment's average rep is 1
    capacity = np.full(n_reps, max(2, n_leads // 4000), dtype=np.int64)
    max_open: list[int | None] = [None] * n_reps
    active = np.ones(n_reps, bool)
    if n_reps >= 4:
        max_open[1] = max(5, n_leads // 200)  # a rep close to full
        active[-1] = False  # a rep who left: their open leads are released
    ids = [f"R{r + 1:02d}" for r in range(n_reps)]
    return _Team(ids, covers, effect, capacity, max_open, active, seed,
                 base=np.zeros((n_src, n_band)), realised=np.zeros((n_reps, n_src, n_band)))


def _rep_probabilities(team: _Team, src: I64, band_i: I64, p: F64) -> F64:
    """Each lead's conversion probability with each rep, ``(leads, reps)``: ``p x effect``
    with the effects normalised so that the prior-weighted mean over reps is ``p`` itself, and
    capped below 1 (what a capped rep loses goes to the others in proportion, so the mean stays
    ``p``). Assigning an owner from the prior and converting with these probabilities gives the
    same joint of (owner, outcome) as :func:`_owners`' draw after the outcome."""
    prior = _owner_prior(team, len(src))
    e = team.effect[:, src, band_i].T  # (leads, reps)
    e = e / (prior * e).sum(axis=1, keepdims=True)
    q = p[:, None] * e
    for _ in range(team.n):  # water-filling: at most one more rep reaches the cap per round
        over = q > P_CAP
        if not over.any():
            break
        excess = (prior * np.where(over, q - P_CAP, 0.0)).sum(axis=1, keepdims=True)
        q = np.minimum(q, P_CAP)
        room = np.where(q < P_CAP, q, 0.0)
        mass = (prior * room).sum(axis=1, keepdims=True)
        with np.errstate(invalid="ignore", divide="ignore"):
            q = np.where(q < P_CAP, q * (1.0 + np.where(mass > 0, excess / mass, 0.0)), q)
    return q


def _owner_prior(team: _Team, n: int) -> F64:
    """``(leads, reps)``: who would have been given each lead before its outcome. Past leads
    were routed round-robin over the whole team (most CRMs' default), so the prior is uniform
    and independent of every lead attribute; ``reps.csv``'s territories are the rules from now
    on. (Had owners followed country territories, a model using the country would absorb part
    of a lone rep's effect, and no learner could tell the two apart.)"""
    return np.full((n, team.n), 1.0 / team.n)


def _owners(team: _Team, lo: int, src: I64, band: I64, p: F64, converts: np.ndarray) -> I64:
    """Each lead's owner, drawn AFTER its outcome, by Bayes.

    With ``pi_r`` the prior over reps and ``q_r = p x e_r`` the lead's conversion probability
    with rep ``r`` (:func:`_rep_probabilities`: ``sum_r pi_r q_r = p``), a converted lead's
    owner is ``r`` with probability ``pi_r q_r / p`` and a lost one's ``pi_r (1 - q_r) / (1 - p)``.
    The joint of (owner, outcome) is then exactly "owner from the prior, conversion with
    ``q_r``", so the rep effects hold in the data and can be learned, while the outcomes, and
    so every other table, are those of the story without reps, draw for draw (the owner comes
    from a stream of its own). The model never sees the owner: its figures do not move.
    """
    n = len(src)
    rng = np.random.default_rng(np.random.SeedSequence(team.seed.entropy, spawn_key=(7, lo)))
    band_i = np.where(band < 0, team.effect.shape[2] - 1, band)
    q = _rep_probabilities(team, src, band_i, p)
    np.add.at(team.base, (src, band_i), p)
    for r in range(team.n):  # what each rep would have made of these leads
        np.add.at(team.realised[r], (src, band_i), q[:, r])
    w = _owner_prior(team, n) * np.where(converts[:, None], q, 1.0 - q)
    cdf = np.cumsum(w, axis=1)
    u = rng.random(n) * cdf[:, -1]
    owner = (cdf < u[:, None]).sum(axis=1)
    return np.minimum(owner, team.n - 1).astype(np.int64)


def _owner_column(world: _World, c: _Cohort) -> pa.Array:
    """``owner_id``: the owner's id, empty for open leads created in the last UNROUTED_DAYS."""
    assert world.team is not None
    still_open = ~c.conv_obs & ~c.dq_obs
    waiting = still_open & (c.created > world.end - UNROUTED_DAYS * DAY)
    return _take(world.team.ids, np.where(waiting, -1, c.owner))


def _write_team(out: Path, team: _Team, fmt: Format) -> dict[str, int]:
    """``reps.csv`` (the allocation's input) and ``rep_effects.csv`` (the truth, for tests)."""
    import csv

    del fmt  # both files are small CSV whatever the tables' format
    with open(out / REPS_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["rep_id", "capacity", "max_open", "active", "country"])
        for r, rep_id in enumerate(team.ids):
            mo = team.max_open[r]
            w.writerow([rep_id, int(team.capacity[r]), "" if mo is None else mo,
                        "true" if team.active[r] else "false",
                        "|".join(COUNTRIES[c][0] for c in team.countries[r])])
    sources = [*_SOURCE_NAMES, None]
    cuts = REP_EMPLOYEE_BANDS
    bands = [f"<{cuts[0]}"] + [f"{a}-{b - 1}" for a, b in zip(cuts, cuts[1:], strict=False)] + [f"{cuts[-1]}+", None]
    rows = 0
    realised = team.realised_effects()
    with open(out / REP_EFFECTS_FILE, "w", newline="", encoding="utf-8") as fh:
        w = csv.writer(fh, lineterminator="\n")
        w.writerow(["rep_id", "lead_source", "employee_band", "segment", "effect", "multiplier"])
        for r, rep_id in enumerate(team.ids):
            for i, source in enumerate(sources):
                for j, band in enumerate(bands):
                    label = f"lead_source={source or '(none)'}, employee_band={band or '(none)'}"
                    w.writerow([rep_id, source or "", band or "", label, f"{realised[r, i, j]:.6f}",
                                f"{team.effect[r, i, j]:.6f}"])
                    rows += 1
    return {"reps": team.n, "rep_effects": rows}


# =============================================================================================
# one chunk of leads: who they are, what happens to them, what they do
# =============================================================================================

_SOURCE_NAMES = [s[0] for s in LEAD_SOURCES]
_NO_SOURCE = len(LEAD_SOURCES)
_PAID_SEARCH = _SOURCE_NAMES.index("paid_search")
_WEBINAR = _SOURCE_NAMES.index("webinar")
_LIST_IMPORT = _SOURCE_NAMES.index("list_import")
_NEVER = np.iinfo(np.int64).max // 4


@dataclass
class _Cohort:
    """The leads of one chunk: attributes, latent propensity, outcomes, engagement plans."""

    lo: int
    created: I64
    created_style: I64
    has_acc: np.ndarray
    acc: I64  # 0-based account index, -1 for B2C
    src: I64
    title: I64
    country: I64
    medium: I64
    fit: F64
    z: F64
    act: F64
    converts: np.ndarray
    conv_t: I64
    dq: np.ndarray
    dq_t: I64
    conv_obs: np.ndarray
    dq_obs: np.ndarray
    life_end: I64
    warm: np.ndarray
    width: F64  # days of a warm-up or false start
    strength: F64
    fs: np.ndarray
    fs_end: I64
    open_end: I64  # end of the open (pre-outcome) life, at most ``end``
    b2c: np.ndarray = field(repr=False, default_factory=lambda: np.zeros(0, bool))
    owner: I64 = field(repr=False, default_factory=lambda: np.zeros(0, np.int64))  # -1: none

    @property
    def n(self) -> int:
        return len(self.created)


def _draw_cohort(
    world: _World, rng: np.random.Generator, lo: int, hi: int, extra_logit: F64 | None = None
) -> _Cohort:
    """Attributes, propensity and outcomes of leads ``lo:hi`` (story steps 2-4).

    ``extra_logit`` adds the regime's attribute effects to the log-odds (see :class:`Regime`)."""
    n = hi - lo
    firms = world.firms
    created = world.created[lo:hi].copy()
    b2c = rng.random(n) < B2C_SHARE
    acc = np.where(b2c, -1, np.minimum(np.searchsorted(firms.cdf, rng.random(n)), firms.n - 1))
    has_acc = acc >= 0
    a0 = np.maximum(acc, 0)
    src = np.where(
        b2c,
        _pick(rng, [s[2] for s in LEAD_SOURCES], n),
        _pick(rng, [s[1] for s in LEAD_SOURCES], n),
    )
    src = np.where(rng.random(n) < SOURCE_MISSING, _NO_SOURCE, src)
    small = has_acc & (firms.employees[a0] < 20)
    shares = np.array([s[1] for s in SENIORITY])
    sen = np.where(
        b2c,
        _pick(rng, shares[:, 2], n),
        np.where(small, _pick(rng, shares[:, 1], n), _pick(rng, shares[:, 0], n)),
    )
    title_missing = rng.random(n) < TITLE_MISSING
    per_level = np.array([len(s[3]) for s in SENIORITY])
    title = np.concatenate([[0], np.cumsum(per_level)[:-1]])[sen] + (
        rng.random(n) * per_level[sen]
    ).astype(np.int64)
    case = _pick(rng, (1 - TITLE_CASE_NOISE, TITLE_CASE_NOISE / 2, TITLE_CASE_NOISE / 2), n)
    title = np.where(title_missing, -1, title + case * int(per_level.sum()))
    country = _pick(rng, [c[1] for c in COUNTRIES], n)
    from_acc = has_acc & (rng.random(n) < LEAD_COUNTRY_FROM_ACCOUNT) & (firms.country[a0] >= 0)
    country = np.where(from_acc, firms.country[a0], country)
    medium = _pick_rows(rng, np.array(MEDIUM_BY_SOURCE), src)

    # propensity: observed fit + unobserved need + month of creation
    fit = (
        np.where(has_acc, firms.fit[a0], B2C_EFFECT + np.array([c[2] for c in COUNTRIES])[country])
        + np.append([s[3] for s in LEAD_SOURCES], 0.0)[src]
        + np.where(title_missing, TITLE_MISSING_EFFECT, np.array([s[2] for s in SENIORITY])[sen])
        + np.array([m[1] for m in MEDIUMS])[medium]
    )
    country = np.where(rng.random(n) < LEAD_COUNTRY_MISSING, -1, country)
    acc_need = np.where(has_acc, firms.need[a0], 0.0)
    lead_need = rng.normal(0.0, LEAD_NEED_SD, n)
    z = INTERCEPT + fit + acc_need + lead_need + np.array(CONVERSION_BY_MONTH)[_month(created) - 1]
    z = z + _regime_logit(world, created, extra_logit)
    p_convert = _sigmoid(z)
    converts = rng.random(n) < p_convert
    owner = np.full(n, -1, dtype=np.int64)
    if world.team is not None:  # after the outcome, from a stream of its own: nothing else moves
        band = np.where(has_acc & ~firms.employees_missing[a0], _band_index(firms.employees[a0]), -1)
        owner = _owners(world.team, lo, src, band, p_convert, converts)

    # conversion time: log-normal delay (faster for hot leads), late tail, December slip,
    # quarter-end pull
    delay = CONVERSION_DELAY_MEDIAN_DAYS * np.exp(rng.normal(0.0, CONVERSION_DELAY_SIGMA, n))
    delay *= np.clip(np.exp(-0.2 * (z + 1.5)), 0.5, 2.0)
    delay = np.where(
        rng.random(n) < LATE_CONVERSION_SHARE, rng.uniform(120, 900, n), np.maximum(delay, 1.5)
    )
    conv_t = created + (delay * DAY).astype(np.int64)
    _, cm, cd = _civil(conv_t // DAY)
    slip = (cm == 12) & (cd >= 15) & (rng.random(n) < DECEMBER_SLIP)
    conv_t = np.where(slip, conv_t + (rng.uniform(10, 25, n) * DAY).astype(np.int64), conv_t)
    pulled = conv_t - (cd + rng.integers(0, 3, n)) * DAY
    pull = (
        np.isin(cm, (1, 4, 7, 10))
        & (cd <= 7)
        & ~slip
        & (rng.random(n) < QUARTER_PULL)
        & (pulled > created + 2 * DAY)
    )
    conv_t = np.where(pull, pulled, conv_t)

    # disqualification: mostly poor fit, a few weeks in
    dq = ~converts & (rng.random(n) < _sigmoid(DQ_INTERCEPT - DQ_FIT_SLOPE * fit))
    dq &= world.regime.disqualify  # never disqualified: those leads simply stay open
    dq_delay = np.maximum(DQ_DELAY_MEDIAN_DAYS * np.exp(rng.normal(0.0, 0.9, n)), 0.25)
    dq_t = created + (dq_delay * DAY).astype(np.int64)

    # a plain-date created_at means midnight: move the instant there before events depend on it
    created_style = _pick(rng, STYLE_CREATED, n)
    created = np.where(created_style == _DATE, created - created % DAY, created)

    act = np.append([s[4] for s in LEAD_SOURCES], 1.0)[src] * np.exp(
        0.35 * fit + 0.45 * lead_need + 0.25 * acc_need + rng.normal(0.0, 0.55, n) - 0.25
    )
    warm = converts & (rng.random(n) < WARMUP_SHARE * world.regime.engagement)
    width = 7.0 + rng.gamma(2.0, 12.0, n)
    strength = WARMUP_MEAN * np.sqrt(act) * np.exp(rng.normal(0.0, 0.4, n))
    fs = ~converts & (rng.random(n) < FALSE_START_MAX * _sigmoid(z + 2.0))
    open_end = np.minimum(np.where(converts, conv_t, np.where(dq, dq_t, _NEVER)), world.end)
    early = rng.random(n) < 0.5  # half the evaluations come soon after creation, half any time
    fs_lag = np.where(
        early,
        rng.exponential(45.0, n),
        rng.random(n) * np.maximum((open_end - created) / DAY - width, 0),
    )
    fs_end = created + ((fs_lag + width) * DAY).astype(np.int64)
    return _Cohort(
        lo=lo,
        created=created,
        created_style=created_style,
        has_acc=has_acc,
        acc=acc,
        src=src,
        title=title,
        country=country,
        medium=medium,
        fit=fit,
        z=z,
        act=act,
        converts=converts,
        conv_t=conv_t,
        dq=dq,
        dq_t=dq_t,
        conv_obs=converts & (conv_t <= world.end),
        dq_obs=dq & (dq_t <= world.end),
        life_end=np.where(converts, conv_t, np.where(dq, dq_t, _NEVER)),
        warm=warm,
        width=width,
        strength=strength,
        fs=fs,
        fs_end=fs_end,
        open_end=open_end,
        b2c=b2c,
        owner=owner,
    )


@dataclass
class _Parts:
    """Event components accumulated as parallel arrays."""

    lead: list[I64] = field(default_factory=list)
    t: list[I64] = field(default_factory=list)
    kind: list[I64] = field(default_factory=list)
    camp: list[I64] = field(default_factory=list)
    value: list[F64] = field(default_factory=list)

    def add(
        self, lead: I64, t: I64, kind: I64 | int, camp: I64 | None = None, value: F64 | None = None
    ) -> None:
        n = len(lead)
        self.lead.append(np.asarray(lead, dtype=np.int64))
        self.t.append(np.asarray(t, dtype=np.int64))
        self.kind.append(np.broadcast_to(np.asarray(kind, dtype=np.int64), (n,)))
        self.camp.append(
            np.full(n, -1, np.int64) if camp is None else np.asarray(camp, dtype=np.int64)
        )
        self.value.append(
            np.full(n, np.nan) if value is None else np.asarray(value, dtype=np.float64)
        )

    def arrays(self) -> list[np.ndarray]:
        return [np.concatenate(x) for x in (self.lead, self.t, self.kind, self.camp, self.value)]


def _burst(
    rng: np.random.Generator,
    lead: I64,
    anchor: I64,
    width_days: F64,
    mean: F64,
    mix: dict[str, float],
) -> tuple[I64, I64, I64]:
    """Events of a burst ending at ``anchor`` whose intensity rises towards it (Beta(1, 2.2) lags)."""
    idx = np.repeat(np.arange(len(lead)), rng.poisson(mean))
    lag = rng.beta(1.0, 2.2, len(idx)) * width_days[idx] * DAY
    kinds, w = _mix(mix)
    return lead[idx], anchor[idx] - lag.astype(np.int64), kinds[_pick(rng, w, len(idx))]


def _draw_events(world: _World, c: _Cohort, rng: np.random.Generator) -> list[np.ndarray]:
    """Events of a cohort (story step 5): lead index, time, kind, campaign index, value."""
    n = c.n
    ar = np.arange(n)
    parts = _Parts()
    camps = world.campaigns
    n_nurture = len(camps.ids)

    # (a) the creation touch
    first_kind = np.array([_K.get(CREATION_EVENT.get(s, ""), -1) for s in [*_SOURCE_NAMES, ""]])[
        c.src
    ]
    camp = np.full(n, -1)
    camp = np.where(c.src == _PAID_SEARCH, n_nurture + rng.integers(0, len(PPC_CAMPAIGNS), n), camp)
    camp = np.where(
        c.src == _WEBINAR,
        n_nurture + len(PPC_CAMPAIGNS) + rng.integers(0, len(WEBINAR_SOURCE_CAMPAIGNS), n),
        camp,
    )
    sel = first_kind >= 0
    parts.add(ar[sel], c.created[sel] + rng.integers(0, 120, n)[sel], first_kind[sel], camp[sel])
    sel = (c.src == _WEBINAR) & (rng.random(n) < 0.55)
    parts.add(
        ar[sel],
        c.created[sel] + (rng.uniform(1, 10, n)[sel] * DAY).astype(np.int64),
        _K["webinar_attended"],
        camp[sel],
    )

    # (b) background: interest decaying after creation, a trickle of visits over the whole
    # open life, and research sessions (short bursts that lead nowhere); pre-sale activity
    # stops at conversion (post-sale is separate) and mostly at disqualification
    life_years = np.maximum(c.open_end - c.created, 0) / (365.25 * DAY)
    act = c.act * world.activity
    idx = np.repeat(ar, rng.poisson(act * BACKGROUND_MEAN))
    tau = BACKGROUND_TAU_DAYS * np.exp(rng.normal(0.0, 0.5, n))
    t = c.created[idx] + (rng.exponential(tau[idx]) * DAY).astype(np.int64)
    trickle = np.repeat(ar, rng.poisson(act * TRICKLE_PER_YEAR * life_years))
    idx = np.concatenate([idx, trickle])
    t = np.concatenate(
        [
            t,
            c.created[trickle]
            + (rng.random(len(trickle)) * (c.open_end - c.created)[trickle]).astype(np.int64),
        ]
    )
    kinds, w = _mix(BACKGROUND_MIX)
    kind = kinds[_pick(rng, w, len(idx))]
    keep = (t < np.where(c.converts, c.conv_t, _NEVER)[idx]) & (
        (t <= c.dq_t[idx]) | ~c.dq[idx] | (rng.random(len(idx)) < 0.25)
    )
    parts.add(idx[keep], t[keep], kind[keep])
    sess = np.repeat(
        ar, rng.poisson(np.sqrt(c.act) * world.activity * SESSIONS_PER_YEAR * life_years)
    )
    anchor = c.created[sess] + (rng.random(len(sess)) * (c.open_end - c.created)[sess]).astype(
        np.int64
    )
    bl, bt, bk = _burst(
        rng,
        sess,
        anchor,
        rng.uniform(1.0, 6.0, len(sess)),
        np.full(len(sess), SESSION_EVENTS),
        SESSION_MIX,
    )
    ok = bt >= c.created[bl]
    parts.add(bl[ok], bt[ok], bk[ok])

    # (c) warm-up before conversion
    strength = c.strength * world.activity
    bl, bt, bk = _burst(
        rng, ar[c.warm], c.conv_t[c.warm], c.width[c.warm], strength[c.warm], WARMUP_MIX
    )
    ok = bt >= c.created[bl]
    parts.add(bl[ok], bt[ok], bk[ok])

    # (d) false starts: a weaker burst that ends in nothing
    bl, bt, bk = _burst(
        rng,
        ar[c.fs],
        c.fs_end[c.fs],
        c.width[c.fs],
        FALSE_START_STRENGTH * strength[c.fs],
        FALSE_START_MIX,
    )
    ok = (bt >= c.created[bl]) & (bt < c.life_end[bl])
    parts.add(bl[ok], bt[ok], bk[ok])

    # (e) nurturing: every send between creation and the end of the lead's open life
    send = camps.send
    lo_send = np.searchsorted(send, c.created, side="right")
    stop = np.minimum(np.minimum(c.life_end, c.created + NURTURE_MAX_AGE_DAYS * DAY), world.end)
    n_cand = np.maximum(np.searchsorted(send, stop, side="left") - lo_send, 0)
    cl = np.repeat(ar, n_cand)
    rank = np.arange(len(cl)) - np.repeat(np.cumsum(n_cand) - n_cand, n_cand)
    cc = lo_send[cl] + rank
    got = rng.random(len(cl)) < camps.audience[cc] * np.where(c.src[cl] == _LIST_IMPORT, 0.7, 1.0)
    cl, cc = cl[got], cc[got]
    new_lead = np.ones(len(cl), dtype=bool)
    new_lead[1:] = cl[1:] != cl[:-1]  # rows are grouped by lead, sends in time order
    bouncing = rng.random(n) < BOUNCING_ADDRESS
    sel = bouncing[cl] & new_lead  # a bad address bounces once and leaves the list
    parts.add(
        cl[sel], send[cc[sel]] + rng.integers(10, 600, int(sel.sum())), _K["email_bounce"], cc[sel]
    )
    alive = ~bouncing[cl]
    cl, cc, new_lead = cl[alive], cc[alive], new_lead[alive]
    unsub = rng.random(len(cl)) < UNSUBSCRIBE / np.sqrt(c.act[cl])
    before = np.cumsum(unsub) - unsub  # unsubscribes strictly before this row ...
    group_start = np.maximum.accumulate(np.where(new_lead, np.arange(len(cl)), 0))
    alive = (before - before[group_start]) == 0  # ... within the same lead: none
    cl, cc, unsub = cl[alive], cc[alive], unsub[alive]
    hot = c.warm[cl] & (send[cc] > c.conv_t[cl] - 45 * DAY)
    fatigue = np.exp(-(send[cc] - c.created[cl]) / (NURTURE_FATIGUE_DAYS * DAY))
    p_open = np.clip(
        NURTURE_OPEN * camps.appeal[cc] * c.act[cl] ** 0.4 * fatigue * np.where(hot, 1.7, 1.0),
        0,
        0.9,
    )
    opened = rng.random(len(cl)) < p_open
    ol, oc, ohot = cl[opened], cc[opened], hot[opened]
    reps = 1 + rng.poisson(0.3, len(ol))
    rl, rc = np.repeat(ol, reps), np.repeat(oc, reps)
    parts.add(
        rl, send[rc] + rng.exponential(8 * HOUR, len(rl)).astype(np.int64), _K["email_open"], rc
    )
    p_click = np.clip(NURTURE_CLICK * c.act[ol] ** 0.3 * np.where(ohot, 1.5, 1.0), 0, 0.8)
    clicked = rng.random(len(ol)) < p_click
    kl, kc = ol[clicked], oc[clicked]
    click_t = send[kc] + (rng.exponential(10 * HOUR, len(kl)) + 60).astype(np.int64)
    parts.add(kl, click_t, _K["email_click"], kc)
    reg = camps.webinar[kc]
    parts.add(
        kl[reg],
        click_t[reg] + rng.integers(30, 600, int(reg.sum())),
        _K["webinar_registered"],
        kc[reg],
    )
    att = reg & (rng.random(len(kl)) < 0.4)
    parts.add(kl[att], send[kc[att]] + 7 * DAY + 6 * HOUR, _K["webinar_attended"], kc[att])
    parts.add(
        cl[unsub],
        send[cc[unsub]] + (rng.exponential(12 * HOUR, int(unsub.sum())) + 60).astype(np.int64),
        _K["unsubscribe"],
        cc[unsub],
    )

    # (f) post-sale: onboarding, monthly invoices, support, product use
    cv, ct = ar[c.converts], c.conv_t[c.converts]
    k = 1 + (rng.random(len(cv)) < 0.5)
    parts.add(
        np.repeat(cv, k),
        np.repeat(ct, k) + (rng.uniform(2, 21, int(k.sum())) * DAY).astype(np.int64),
        _K["onboarding_call"],
    )
    k = 1 + np.minimum(rng.poisson(3.0, len(cv)), 11)
    nth = np.arange(int(k.sum())) - np.repeat(np.cumsum(k) - k, k)
    size = np.where(c.has_acc[cv], world.firms.employees[np.maximum(c.acc[cv], 0)], 1.0)
    amount = np.round(
        np.maximum(200.0, 40.0 * np.sqrt(size) * np.exp(rng.normal(0.0, 0.5, len(cv))))
    )
    first_invoice = ct + (rng.uniform(5, 35, len(cv)) * DAY).astype(np.int64)
    parts.add(
        np.repeat(cv, k),
        np.repeat(first_invoice, k) + (nth * 30.4 * DAY).astype(np.int64),
        _K["invoice_paid"],
        None,
        np.repeat(amount, k),
    )
    k = rng.poisson(0.8, len(cv))
    parts.add(
        np.repeat(cv, k),
        np.repeat(ct, k) + (rng.exponential(60.0, int(k.sum())) * DAY + HOUR).astype(np.int64),
        _K["support_ticket"],
    )
    k = rng.poisson(12.0 * np.sqrt(c.act[cv]))
    parts.add(
        np.repeat(cv, k),
        np.repeat(ct, k) + (rng.exponential(30.0, int(k.sum())) * DAY + 600).astype(np.int64),
        _K_APP_PAGE_VIEW,
    )

    arrays = parts.arrays()
    keep = arrays[1] <= world.end
    return [a[keep] for a in arrays]


def _draw_stages(world: _World, c: _Cohort, rng: np.random.Generator) -> list[I64]:
    """Lifecycle rows of a cohort (story step 6): lead index, time, stage index."""
    n = c.n
    ar = np.arange(n)
    rows: list[tuple[np.ndarray, I64, int]] = [(np.ones(n, dtype=bool), c.created, _S["lead"])]
    # converters: mql -> sql -> opportunity, the opportunity opening near the warm-up
    span = (c.conv_t - c.created).astype(np.float64)
    # the sales cycle: somewhat longer than the warm-up
    cycle = (c.width * rng.uniform(0.5, 1.0, n) + rng.exponential(15.0, n)) * DAY
    opp = c.conv_t - np.minimum(cycle, 0.9 * span).astype(np.int64)
    sql = c.created + ((opp - c.created) * rng.uniform(0.5, 0.95, n)).astype(np.int64)
    mql = c.created + ((sql - c.created) * rng.uniform(0.05, 0.8, n)).astype(np.int64)
    # sales records the funnel of half the deals (and half the B2C buyers skip it anyway)
    path = (
        c.converts
        & (rng.random(n) < STAGE_RECORDED * world.regime.engagement)
        & ~(c.b2c & (rng.random(n) < 0.5))
    )
    for stage, when, p in (("mql", mql, 0.9), ("sql", sql, 0.9), ("opportunity", opp, 0.85)):
        rows.append((path & (rng.random(n) < p), when, _S[stage]))
    # others: marketing-qualified by engagement; false starts reach sql and a lost opportunity
    fs_start = c.fs_end - (c.width * DAY).astype(np.int64)
    mql2 = ~c.converts & (
        c.fs | (rng.random(n) < _sigmoid(-1.3 + 0.8 * np.log(c.act) + 0.5 * c.fit))
    )
    mql2_t = c.created + (rng.exponential(15.0, n) * DAY).astype(np.int64)
    mql2_t = np.where(c.fs, np.minimum(mql2_t, c.created + (fs_start - c.created) // 2), mql2_t)
    sql2 = mql2 & (rng.random(n) < np.where(c.fs, 0.9, 0.15))
    sql2_t = np.where(
        c.fs,
        np.maximum(fs_start, mql2_t + HOUR),
        mql2_t + (rng.exponential(20.0, n) * DAY).astype(np.int64),
    )
    opp2 = sql2 & c.fs & (rng.random(n) < 0.85)
    opp2_t = sql2_t + (c.width * DAY * rng.uniform(0.2, 0.6, n)).astype(np.int64)
    for stage, sel, when in (
        ("mql", mql2, mql2_t),
        ("sql", sql2, sql2_t),
        ("opportunity", opp2, opp2_t),
    ):
        rows.append((sel & (when < c.life_end), when, _S[stage]))
    rows.append((c.conv_obs, c.conv_t, _S["customer"]))
    rows.append((c.dq_obs, c.dq_t, _S["disqualified"]))
    lead = np.concatenate([ar[sel] for sel, _, _ in rows])
    t = np.concatenate([when[sel] for sel, when, _ in rows])
    code = np.concatenate([np.full(int(sel.sum()), s, dtype=np.int64) for sel, _, s in rows])
    keep = t <= world.end
    return [lead[keep], t[keep], code[keep]]


# =============================================================================================
# columns
# =============================================================================================


@dataclass
class _Chunk:
    leads: dict[str, pa.Array]
    events: dict[str, pa.Array]
    stages: dict[str, pa.Array]
    bad: dict[str, int]
    converted: int
    disqualified: int


_TITLES = [t for s in SENIORITY for t in s[3]]
_ALL_TITLES = _TITLES + [t.lower() for t in _TITLES] + [t.upper() for t in _TITLES]
_CHANNELS = sorted({k.channel for k in _KINDS if k.channel})
_KIND_TYPE = np.array([EVENT_TYPES.index(k.name) for k in _KINDS])
_KIND_CHANNEL = np.array([_CHANNELS.index(k.channel) if k.channel else -1 for k in _KINDS])
_URLS = [u for k in _KINDS for u in k.urls]
_KIND_N_URLS = np.array([len(k.urls) for k in _KINDS])
_KIND_FIRST_URL = np.concatenate([[0], np.cumsum(_KIND_N_URLS)[:-1]])
_KIND_SECONDS = np.array([k.seconds if k.seconds else (np.nan, 0.0) for k in _KINDS])


class _Stamper:
    """Renders timestamp columns: ISO 8601 text in mixed styles, or typed UTC timestamps."""

    def __init__(self, rng: np.random.Generator, text: bool) -> None:
        self.rng = rng
        self.text = text

    def __call__(
        self,
        secs: I64,
        shares: tuple[float, ...],
        *,
        valid: np.ndarray | None = None,
        style: I64 | None = None,
        garbage: tuple[I64, list[str]] | None = None,
    ) -> pa.Array:
        # draw styles and offsets in both modes so CSV and Parquet carry the same rows
        n = len(secs)
        style = _pick(self.rng, shares, n) if style is None else style
        offset = _OFFSETS_MIN[self.rng.integers(0, len(_OFFSETS_MIN), n)]
        if not self.text:
            return pa.array(
                secs * 1_000_000,
                type=pa.timestamp("us", tz="UTC"),
                mask=None if valid is None else ~valid,
            )
        arr = _timestamps(secs, style, offset, valid)
        return arr if garbage is None else _replace(arr, garbage[0], garbage[1])


def _chunk(
    world: _World,
    rng: np.random.Generator,
    lo: int,
    hi: int,
    lead_quota: dict[str, int],
    bad_rows: bool,
    fmt: Format,
    first: bool,
    regime_rng: np.random.Generator | None = None,
) -> _Chunk:
    """Leads ``lo:hi`` with their events and stages, bad rows planted, as Arrow columns.

    ``regime_rng`` draws the regime's extra attributes (a stream apart from the story's)."""
    extra_columns: dict[str, pa.Array] = {}
    extra_logit = None
    if regime_rng is not None:
        extra_columns, extra_logit = _draw_attributes(world.regime, regime_rng, hi - lo)
    c = _draw_cohort(world, rng, lo, hi, extra_logit)
    ev_lead, ev_t, ev_kind, ev_camp, ev_value = _draw_events(world, c, rng)
    sg_lead, sg_t, sg_stage = _draw_stages(world, c, rng)
    n = c.n
    bad = {f"{tb}.{kd}": 0 for tb, kd, _, _ in BAD_ROW_KINDS if tb in ("leads", "events", "stages")}
    lead_num = np.arange(lo, hi, dtype=np.int64) + 1
    acc_num = np.where(c.has_acc, c.acc + 1, -1)
    conv_out, dq_out = c.conv_t.copy(), c.dq_t.copy()
    quarantined = np.zeros(n, dtype=bool)
    garbage: dict[str, tuple[I64, list[str]]] = {}

    if bad_rows:  # leads: pick disjoint rows per kind, each among the rows it makes sense for
        order = rng.permutation(n)
        needs = {
            "converted_at_unparseable": c.conv_obs,
            "converted_before_created": c.conv_obs,
            "disqualified_at_unparseable": c.dq_obs,
            "disqualified_before_created": c.dq_obs,
            "account_not_found": c.has_acc,
        }
        for _, kind, _, _ in (b for b in BAD_ROW_KINDS if b[0] == "leads"):
            ok = needs.get(kind, np.ones(n, dtype=bool))[order] & ~quarantined[order]
            rows = np.sort(order[ok][: lead_quota.get(kind, 0)])
            bad[f"leads.{kind}"] = len(rows)
            if kind == "account_not_found":  # a warning, not a quarantine
                acc_num[rows] = world.firms.n + 1 + lo + rows
                continue
            quarantined[rows] = True
            if kind == "empty_lead_id":
                lead_num[rows] = -1
            elif kind.endswith("_unparseable"):
                garbage[kind.split("_")[0]] = (rows, _garbage(rng, BAD_TIMESTAMPS, len(rows)))
            elif kind == "converted_before_created":
                conv_out[rows] = c.created[rows] - rng.integers(DAY, 60 * DAY, len(rows))
            elif kind == "disqualified_before_created":
                dq_out[rows] = c.created[rows] - rng.integers(DAY, 60 * DAY, len(rows))
        # an empty lead_id orphans the lead's events and stages: drop them
        keep = lead_num[ev_lead] >= 0
        ev_lead, ev_t, ev_kind, ev_camp, ev_value = (
            a[keep] for a in (ev_lead, ev_t, ev_kind, ev_camp, ev_value)
        )
        keep = lead_num[sg_lead] >= 0
        sg_lead, sg_t, sg_stage = sg_lead[keep], sg_t[keep], sg_stage[keep]

    # by lead, then time (one int64 key sorts faster than lexsort)
    o = np.argsort((ev_lead << 34) + (ev_t - world.start + 2**33), kind="stable")
    ev_lead, ev_t, ev_kind, ev_camp, ev_value = (
        a[o] for a in (ev_lead, ev_t, ev_kind, ev_camp, ev_value)
    )
    o = np.lexsort((sg_stage, sg_t, sg_lead))
    sg_lead, sg_t, sg_stage = sg_lead[o], sg_t[o], sg_stage[o]
    ev_num, sg_num = lead_num[ev_lead], lead_num[sg_lead]

    if bad_rows:  # events and stages: rows of clean leads only, so each kind is unambiguous
        for table, lead_idx, times, nums in (
            ("events", ev_lead, ev_t, ev_num),
            ("stages", sg_lead, sg_t, sg_num),
        ):
            kinds = [b for b in BAD_ROW_KINDS if b[0] == table]
            quota = _quota(len(lead_idx), [b[2] for b in kinds], at_least_one=first)
            pick = rng.permutation(np.flatnonzero(~quarantined[lead_idx]))
            pos = 0
            for (_, kind, _, _), want in zip(kinds, quota, strict=True):
                rows = np.sort(pick[pos : pos + want])
                pos += len(rows)
                bad[f"{table}.{kind}"] = len(rows)
                if kind == "unknown_lead":  # a deleted lead's id
                    nums[rows] = world.n_leads + 1 + lo + lead_idx[rows]
                elif kind == "before_created":  # e.g. anonymous visits stitched to the lead
                    times[rows] = c.created[lead_idx[rows]] - rng.integers(
                        HOUR, 20 * DAY, len(rows)
                    )
                else:
                    garbage[table] = (rows, _garbage(rng, BAD_TIMESTAMPS, len(rows)))

    text = fmt == "csv" or bad_rows
    stamp = _Stamper(rng, text)
    leads: dict[str, pa.Array] = {
        Leads.lead_id: _ids("L", lead_num, world.lead_width),
        Leads.created_at: stamp(
            c.created, STYLE_CREATED, style=c.created_style, garbage=garbage.get("created")
        ),
        Leads.account_id: _ids("A", acc_num, world.account_width),
        Leads.lead_source: _take(_SOURCE_NAMES, np.where(c.src == _NO_SOURCE, -1, c.src)),
        Leads.country: _take([x[0] for x in COUNTRIES], c.country),
        Leads.job_title: _take(_ALL_TITLES, c.title),
        Leads.converted_at: stamp(
            conv_out, STYLE_OTHER, valid=c.conv_obs, garbage=garbage.get("converted")
        ),
        Leads.disqualified_at: stamp(
            dq_out, STYLE_OTHER, valid=c.dq_obs, garbage=garbage.get("disqualified")
        ),
        UTM_MEDIUM: _take([m[0] for m in MEDIUMS], np.where(c.medium == 0, -1, c.medium)),
        **extra_columns,
    }
    if world.team is not None:
        leads[OWNER_ID] = _owner_column(world, c)

    m = len(ev_kind)
    chan = np.where(rng.random(m) < 0.03, -1, _KIND_CHANNEL[ev_kind])
    n_urls = _KIND_N_URLS[ev_kind]
    url = np.where(
        n_urls > 0, _KIND_FIRST_URL[ev_kind] + (rng.random(m) * n_urls).astype(np.int64), -1
    )
    seconds = np.maximum(
        np.round(
            _KIND_SECONDS[ev_kind, 0] * np.exp(rng.normal(0.0, 1.0, m) * _KIND_SECONDS[ev_kind, 1])
        ),
        1.0,
    )
    value = np.where(np.isnan(ev_value), seconds, ev_value)
    missing = np.isnan(value)
    camp_names = world.campaigns.ids + list(PPC_CAMPAIGNS) + list(WEBINAR_SOURCE_CAMPAIGNS)
    events: dict[str, pa.Array] = {
        Events.lead_id: _ids("L", ev_num, world.lead_width),
        Events.occurred_at: stamp(ev_t, STYLE_OTHER, garbage=garbage.get("events")),
        Events.event_type: _take(EVENT_TYPES, _KIND_TYPE[ev_kind]),
        Events.channel: _take(_CHANNELS, chan),
        Events.campaign_id: _take(camp_names, ev_camp),
        Events.url: _take(_URLS, url),
        # whole numbers: integers in CSV (no trailing ".0"), doubles in Parquet
        Events.value: (
            pa.array(np.where(missing, 0, value).astype(np.int64), mask=missing)
            if fmt == "csv"
            else pa.array(value, mask=missing)
        ),
    }
    stages: dict[str, pa.Array] = {
        Stages.lead_id: _ids("L", sg_num, world.lead_width),
        Stages.stage: _take(STAGE_NAMES, sg_stage),
        Stages.entered_at: stamp(sg_t, STYLE_OTHER, garbage=garbage.get("stages")),
    }
    return _Chunk(leads, events, stages, bad, int(c.conv_obs.sum()), int(c.dq_obs.sum()))


def _accounts_table(
    world: _World, rng: np.random.Generator, bad_rows: bool, fmt: Format
) -> tuple[dict[str, pa.Array], dict[str, int]]:
    """The accounts table, with non-numeric employees / annual_revenue planted when asked."""
    f = world.firms
    n = f.n
    employees = pa.array(f.employees.astype(np.int64), mask=f.employees_missing)
    revenue: pa.Array = (
        pa.array(f.revenue.astype(np.int64), mask=f.revenue_missing)
        if fmt == "csv"
        else pa.array(f.revenue, mask=f.revenue_missing)
    )
    bad = {"accounts.employees_not_numeric": 0, "accounts.annual_revenue_not_numeric": 0}
    if bad_rows:
        kinds = [b for b in BAD_ROW_KINDS if b[0] == "accounts"]
        quota = _quota(n, [b[2] for b in kinds], at_least_one=True)
        pick = rng.permutation(n)
        emp_rows = np.sort(pick[: quota[0]])
        rev_rows = np.sort(pick[quota[0] : quota[0] + quota[1]])
        employees = _replace(
            employees.cast(pa.string()), emp_rows, _garbage(rng, BAD_EMPLOYEES, len(emp_rows))
        )
        revenue = _replace(
            revenue.cast(pa.int64()).cast(pa.string()),
            rev_rows,
            _garbage(rng, BAD_REVENUE, len(rev_rows)),
        )
        bad = {
            "accounts.employees_not_numeric": len(emp_rows),
            "accounts.annual_revenue_not_numeric": len(rev_rows),
        }
    table: dict[str, pa.Array] = {
        Accounts.account_id: _ids("A", np.arange(1, n + 1, dtype=np.int64), world.account_width),
        Accounts.industry: _take([r[0] for r in INDUSTRIES], f.industry),
        Accounts.employees: employees,
        Accounts.annual_revenue: revenue,
        Accounts.country: _take([x[0] for x in COUNTRIES], f.country),
    }
    return table, bad


# =============================================================================================
# regimes: variations of the story that stress training (short, open, drifting, additive)
# =============================================================================================

#: ``additive`` regime: the company-size effect on the log-odds per decade of employees
SMOOTH_SIZE_SLOPE = 0.35
#: log-odds effects per standard deviation of the *relevant* extra attributes, in order
#: (``attr_01``, ``attr_02``, ...); every further attribute has no effect at all
ATTRIBUTE_EFFECTS = (0.60, -0.50, 0.45, 0.35, -0.30, 0.20)
ATTRIBUTE_PREFIX = "attr_"
ATTRIBUTE_CATEGORICAL_EVERY = 5  # every fifth extra attribute is a category (never relevant)
ATTRIBUTE_LEVELS = ("a", "b", "c", "d", "e", "f", "g", "h")
ATTRIBUTE_MISSING = 0.03
_REGIME_STREAM = 1013  # spawn key of the regime's own random stream (the story's stays as is)


@dataclass(frozen=True)
class Regime:
    """A variation of the generative story (``convert-leads generate --regime``).

    Each knob changes one property of the CRM and nothing else is drawn differently, so the
    default regime writes exactly the files it always wrote for a given seed.

    Parameters
    ----------
    name:
        What the summary calls it.
    months:
        History length: when set, lead creation starts this many whole months before ``end``
        (``start`` is ignored). ``short`` uses 4.
    disqualify:
        False: sales never disqualifies anyone, so the open population only grows (the leads
        that would have been disqualified stay open and do not convert).
    drift:
        Change of the base rate's log-odds from ``start`` to ``end``, linear in the lead's
        creation time and centred on the middle of the history (0: none). 1.5 takes the
        conversion rate of new leads from about 9 % to about 27 %.
    attributes:
        Extra numeric and categorical lead columns ``attr_01`` ... ``attr_NN``. The first
        ``len(ATTRIBUTE_EFFECTS)`` numeric ones move the log-odds linearly (smooth and
        additive, where a logistic regression is strong); the others are drawn from a
        stream of their own and have no effect at all.
    smooth_fit:
        Company size acts linearly in log employees instead of through a hump.
    engagement:
        Multiplies the share of converters with a warm-up burst and with a recorded funnel
        (mql/sql/opportunity), i.e. how much engagement and stages reveal (1: the story).
    """

    name: str = "default"
    months: int | None = None
    disqualify: bool = True
    drift: float = 0.0
    attributes: int = 0
    smooth_fit: bool = False
    engagement: float = 1.0

    def __post_init__(self) -> None:
        if self.months is not None and self.months < 1:
            raise ConfigError(f"regime months must be at least 1 (got {self.months})")
        if self.attributes < 0:
            raise ConfigError(f"regime attributes must be >= 0 (got {self.attributes})")
        if not 0.0 <= self.engagement <= 1.0 / WARMUP_SHARE:
            raise ConfigError(
                f"regime engagement must be between 0 and {1.0 / WARMUP_SHARE:.2f} "
                f"(got {self.engagement})"
            )

    def attribute_effects(self) -> dict[str, float]:
        """Each extra attribute's log-odds effect per standard deviation (0.0: irrelevant)."""
        out: dict[str, float] = {}
        relevant = iter(ATTRIBUTE_EFFECTS)
        for j in range(self.attributes):
            name = f"{ATTRIBUTE_PREFIX}{j + 1:02d}"
            out[name] = 0.0 if _attribute_is_categorical(j) else next(relevant, 0.0)
        return out


#: presets of ``convert-leads generate --regime``
REGIMES: dict[str, Regime] = {
    "default": Regime(),
    "short": Regime(name="short", months=4),
    "open": Regime(name="open", months=12, disqualify=False),
    "drift": Regime(name="drift", drift=1.5),
    "additive": Regime(
        name="additive", attributes=30, smooth_fit=True, engagement=0.4
    ),
}


def _attribute_is_categorical(j: int) -> bool:
    return (j + 1) % ATTRIBUTE_CATEGORICAL_EVERY == 0


def _regime_logit(world: _World, created: I64, extra_logit: F64 | None) -> F64 | float:
    """The regime's additions to the conversion log-odds: drift and attribute effects."""
    out: F64 | float = 0.0
    r = world.regime
    if r.drift:
        share = (created - world.start) / max(world.end - world.start, 1)
        out = r.drift * (share - 0.5)
    if extra_logit is not None:
        out = out + extra_logit
    return out


def _draw_attributes(
    regime: Regime, rng: np.random.Generator, n: int
) -> tuple[dict[str, pa.Array], F64 | None]:
    """The extra lead columns of a chunk and their log-odds effect (None: no attributes).

    Numeric attributes cycle through a normal, a log-normal (skewed, written as is), a
    uniform and a count; relevant ones act linearly on their standardised value. Categorical
    attributes draw one of eight levels with uneven shares. A few cells are empty; an empty
    relevant cell contributes nothing (its mean)."""
    if not regime.attributes:
        return {}, None
    columns: dict[str, pa.Array] = {}
    logit = np.zeros(n)
    for j, (name, effect) in enumerate(regime.attribute_effects().items()):
        missing = rng.random(n) < ATTRIBUTE_MISSING
        if _attribute_is_categorical(j):
            weights = rng.dirichlet(np.full(len(ATTRIBUTE_LEVELS), 2.0))
            idx = np.where(missing, -1, _pick(rng, weights, n))
            columns[name] = _take(ATTRIBUTE_LEVELS, idx)
            continue
        shape = j % 4
        if shape == 0:
            x, mean, sd = rng.normal(50.0, 10.0, n), 50.0, 10.0
        elif shape == 1:
            x = np.exp(rng.normal(3.0, 0.6, n))
            mean = float(np.exp(3.0 + 0.18))
            sd = float(np.sqrt((np.exp(0.36) - 1) * np.exp(6.0 + 0.36)))
        elif shape == 2:
            x, mean, sd = rng.uniform(0.0, 1.0, n), 0.5, float(np.sqrt(1 / 12))
        else:
            x = rng.poisson(4.0, n).astype(np.float64)
            mean, sd = 4.0, 2.0
        x = np.round(x, 3)
        if effect:
            logit += np.where(missing, 0.0, effect * (x - mean) / sd)
        columns[name] = pa.array(x, mask=missing)
    return columns, logit


def _resolve_regime(regime: Regime | str | None) -> Regime:
    if regime is None:
        return REGIMES["default"]
    if isinstance(regime, Regime):
        return regime
    if regime not in REGIMES:
        raise ConfigError(f"unknown regime {regime!r}: choose one of {', '.join(REGIMES)}")
    return REGIMES[regime]


def _months_before(end: int, months: int) -> int:
    """Midnight UTC of the first day of the month ``months - 1`` months before ``end``'s month:
    ``months`` whole calendar months ending with ``end``'s."""
    y, m, _ = _civil_direct(np.array([end // DAY], dtype=np.int64))
    total = int(y[0]) * 12 + int(m[0]) - 1 - (months - 1)
    first = datetime(total // 12, total % 12 + 1, 1)
    return int((first - datetime(1970, 1, 1)).total_seconds())


# =============================================================================================
# writing
# =============================================================================================


_CATEGORICAL = frozenset(
    {
        Leads.lead_source,
        Leads.country,
        Leads.job_title,
        UTM_MEDIUM,
        Accounts.industry,
        Events.event_type,
        Events.channel,
        Events.campaign_id,
        Events.url,
        Stages.stage,
    }
)


class _Writer:
    """Appends Arrow columns to ``NAME.csv`` or ``NAME.parquet`` (one row group per chunk).

    Writes to a hidden partial file that :meth:`commit` renames, so an interrupted run never
    leaves a table that looks complete.
    """

    def __init__(self, out_dir: Path, table: str, fmt: Format) -> None:
        self.path = out_dir / f"{table}.{fmt}"
        self.partial = out_dir / f".{table}.{fmt}.partial"
        self.fmt = fmt
        self.rows = 0
        self._writer: pacsv.CSVWriter | pq.ParquetWriter | None = None

    def write(self, columns: dict[str, pa.Array]) -> None:
        table = pa.table({str(k): v for k, v in columns.items()})
        if self._writer is None:
            if self.fmt == "csv":
                self._writer = pacsv.CSVWriter(
                    self.partial,
                    table.schema,
                    write_options=pacsv.WriteOptions(quoting_style="needed"),
                )
            else:
                # dictionary pages for the categorical columns only: ids and timestamps are
                # near-unique and would only cost time
                categorical = [f.name for f in table.schema if f.name in _CATEGORICAL]
                self._writer = pq.ParquetWriter(
                    self.partial, table.schema, compression="zstd", use_dictionary=categorical
                )
        self._writer.write_table(table)
        self.rows += table.num_rows

    def close(self) -> None:
        if self._writer is not None:
            self._writer.close()
            self._writer = None

    def commit(self) -> None:
        self.close()
        os.replace(self.partial, self.path)

    def discard(self) -> None:
        self.close()
        self.partial.unlink(missing_ok=True)


def generate_crm(
    out_dir: str | Path,
    n_leads: int = 20_000,
    seed: int = 42,
    fmt: Format = "csv",
    start: str | None = None,
    end: str = "2025-12-31",
    bad_rows: bool = True,
    chunk_leads: int = 50_000,
    activity: float = 1.0,
    regime: Regime | str | None = None,
    reps: int = 0,
) -> GenerateSummary:
    """Write a synthetic CRM export (``leads``, ``accounts``, ``events``, ``stages``) to ``out_dir``.

    Parameters
    ----------
    out_dir:
        Folder to write ``NAME.csv`` or ``NAME.parquet`` into (created if needed). Existing
        files of the same format are replaced; files of the other format are an error, since
        the loader would find two files for one table.
    n_leads, seed:
        Size and random seed; the same arguments give byte-identical files.
    fmt:
        ``"csv"`` or ``"parquet"``.
    start, end:
        ISO 8601 bounds of lead creation; nothing is dated after ``end`` (a plain date means
        the end of that day). ``start`` defaults to 2023-01-01, or to ``regime.months`` whole
        months before ``end`` when the regime sets a history length.
    bad_rows:
        Plant a small share of each quarantine kind of the contract's bad-rows table.
    chunk_leads:
        Leads generated and written at a time; bounds memory. Results depend on it.
    activity:
        Multiplies the rate of every self-directed pre-sale event (background interest, the
        trickle of visits, research sessions, warm-ups and false starts); nurturing sends,
        creation touches and post-sale events keep their rates. 1.0 gives about 30 events per
        lead; 4.0 about 100 (a busier marketing operation, as in ``bench/features.py``).
    regime:
        A :class:`Regime` or the name of a preset in :data:`REGIMES` (``default``, ``short``,
        ``open``, ``drift``, ``additive``); ``None`` is the default story.
    reps:
        Sales reps (0: none, and the tables are exactly as without this option). With reps,
        ``leads`` gains ``owner_id`` (empty for open leads created in the last
        ``UNROUTED_DAYS`` days, awaiting routing), drawn after the outcome so that the owner's
        true effect for the lead's segment (lead source x employee band) holds in the data
        while every other column and table stays as without reps; ``reps.csv`` (territories by country, capacity, max_open, active) and
        ``rep_effects.csv`` (the true effects) are written beside the tables.

    Returns
    -------
    GenerateSummary
        Rows per table and the bad rows planted per kind.
    """
    began = time.perf_counter()
    if fmt not in ("csv", "parquet"):
        raise ConfigError(f"format must be 'csv' or 'parquet', not {fmt!r}")
    if reps < 0:
        raise ConfigError(f"reps must be 0 or more (got {reps})")
    if not activity > 0:
        raise ConfigError(f"activity must be positive (got {activity})")
    if n_leads < 1 or chunk_leads < 1:
        raise ConfigError(
            f"n_leads and chunk_leads must be positive (got {n_leads}, {chunk_leads})"
        )
    reg = _resolve_regime(regime)
    hi_s = _parse_bound(end, is_end=True)
    if reg.months is not None:
        if start is not None:
            raise ConfigError(
                f"regime {reg.name!r} sets the history length ({reg.months} months before end); "
                "give end only, not start"
            )
        lo_s = _months_before(hi_s, reg.months)
        start = datetime.fromtimestamp(lo_s, UTC).strftime("%Y-%m-%d")
    else:
        start = "2023-01-01" if start is None else start
        lo_s = _parse_bound(start, is_end=False)
    if lo_s >= hi_s:
        raise ConfigError(f"start {start!r} must be before end {end!r}")
    out = Path(out_dir)
    other = "parquet" if fmt == "csv" else "csv"
    tables = (Leads.table, Accounts.table, Events.table, Stages.table)
    clash = [str(out / f"{t}.{other}") for t in tables if (out / f"{t}.{other}").exists()]
    if clash:
        raise ConfigError(
            f"{', '.join(clash)} already exist; the loader would find two files for one "
            f"table. Remove them or write {fmt} to another folder"
        )
    out.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(seed)
    s_accounts, s_created, s_campaigns, s_chunks = root.spawn(4)
    n_acc = max(1, round(n_leads / 3))
    acc_rng = np.random.default_rng(s_accounts)
    world = _World(
        start=lo_s,
        end=hi_s,
        n_leads=n_leads,
        lead_width=max(8, len(str(2 * n_leads + 1))),
        account_width=max(7, len(str(n_acc + n_leads + 1))),
        created=_creation_times(np.random.default_rng(s_created), n_leads, lo_s, hi_s),
        firms=_draw_accounts(acc_rng, n_acc, smooth=reg.smooth_fit),
        campaigns=_draw_campaigns(np.random.default_rng(s_campaigns), lo_s, hi_s),
        activity=float(activity),
        regime=reg,
        team=_draw_team(root.spawn(1)[0], reps, n_leads) if reps else None,
    )
    lead_kinds = [b for b in BAD_ROW_KINDS if b[0] == "leads"]
    lead_total = (
        _quota(n_leads, [b[2] for b in lead_kinds], at_least_one=True)
        if bad_rows
        else [0] * len(lead_kinds)
    )

    writers = {t: _Writer(out, t, fmt) for t in tables}
    bad: dict[str, int] = {f"{tb}.{kd}": 0 for tb, kd, _, _ in BAD_ROW_KINDS}
    converted = disqualified = 0
    bounds = list(range(0, n_leads, chunk_leads))
    chunk_seeds = s_chunks.spawn(len(bounds))
    regime_seeds = (
        np.random.SeedSequence(seed, spawn_key=(_REGIME_STREAM,)).spawn(len(bounds))
        if reg.attributes
        else None
    )
    try:
        accounts, acc_bad = _accounts_table(world, acc_rng, bad_rows, fmt)
        writers[Accounts.table].write(accounts)
        bad.update(acc_bad)
        for k, lo in enumerate(bounds):
            hi = min(lo + chunk_leads, n_leads)
            quota = {
                kd: total * hi // n_leads - total * lo // n_leads
                for (_, kd, _, _), total in zip(lead_kinds, lead_total, strict=True)
            }
            part = _chunk(
                world, np.random.default_rng(chunk_seeds[k]), lo, hi, quota, bad_rows, fmt, k == 0,
                None if regime_seeds is None else np.random.default_rng(regime_seeds[k]),
            )
            writers[Leads.table].write(part.leads)
            writers[Events.table].write(part.events)
            writers[Stages.table].write(part.stages)
            for key, count in part.bad.items():
                bad[key] += count
            converted += part.converted
            disqualified += part.disqualified
        for w in writers.values():
            w.commit()
        if world.team is not None:
            _write_team(out, world.team, fmt)
        else:  # no reps: a previous run's reps files would describe owners that are not there
            for name in (REPS_FILE, REP_EFFECTS_FILE):
                (out / name).unlink(missing_ok=True)
    except BaseException:
        for w in writers.values():
            w.discard()
        raise
    return GenerateSummary(
        out_dir=out,
        format=fmt,
        rows={t: writers[t].rows for t in tables},
        bad_rows=bad,
        start=start,
        end=end,
        seed=seed,
        converted=converted,
        disqualified=disqualified,
        seconds=time.perf_counter() - began,
        regime=reg,
    )
