"""The feature catalog: what each model feature means, in words a salesperson reads.

Every feature has a name, a family (``fit``: who the lead is; ``engagement``: what the
lead did and where it stands), a group (the SQL family that computes it), a kind
(numeric or categorical), a unit, a description and sentence templates that turn the
lead's value and its score points into a reason such as
``+12 Viewed the pricing page 4 times in the last 30 days``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import pandas as pd

Family = Literal["fit", "engagement"]
Kind = Literal["numeric", "categorical"]
FAMILIES: tuple[Family, Family] = ("fit", "engagement")


@dataclass(frozen=True)
class FeatureDef:
    """One model feature and how to say it.

    ``template`` receives ``{value}`` (formatted by ``unit``); ``zero_template`` is used
    when the value is 0 and ``missing_template`` when it is missing (never happened,
    unknown), so that a reason never reads "0 times" or "nan days ago".

    Templates hold text from the data (event types, column names), so they are never
    format strings: :func:`render` replaces ``{value}`` (and ``{{``/``}}``, which
    :func:`escape` writes for a literal brace) and leaves every other brace, ``%`` or
    quote as written. ``zero_template`` and ``missing_template`` are plain text.

    ``labels`` turns a code into words before it fills ``{value}``: a band's number into
    its range (``3`` -> ``200–999``), a seniority code into what it means (``other`` ->
    ``Job title not matched to a seniority level``), so that no sentence shows a code a
    rep cannot read. Days are said as a rep counts them on the as-of day: a fraction of a
    day rounds up (an as-of at midnight and an event yesterday afternoon: 0.4 days, "in
    the last day"; the day before: 1.4 days, "2 days ago"), never "0 days".
    """

    name: str
    family: Family
    group: str
    kind: Kind
    unit: str
    description: str
    template: str
    zero_template: str | None = None
    missing_template: str | None = None
    labels: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        # bundles store the catalog as JSON, where the pairs come back as lists
        object.__setattr__(self, "labels", tuple((str(k), str(v)) for k, v in self.labels))

    def format_value(self, value: Any) -> str:
        if _is_missing(value):
            return "unknown"
        if self.kind == "categorical":
            text = str(value)
            return self._label(text) or text.replace("_", " ")
        number = float(value)
        if self.unit == "ratio":
            return f"{number:.0%}"
        if self.unit == "currency":
            return _human_money(number)
        if self.unit == "days":
            return f"{whole_days(number):,}"
        if self.unit == "band" and number.is_integer():
            label = self._label(str(int(number)))
            if label is not None:
                return label
        if self.unit in ("count", "employees", "band") or number.is_integer():
            return f"{round(number):,}"
        return f"{number:,.2f}"

    def canonical(self, values: np.ndarray) -> np.ndarray:
        """*values* mapped to one representative per sentence, vectorised: ``describe`` of the
        result equals ``describe`` of the value, so sentences are built once per distinct
        result (days rounded up to whole days, counts to whole numbers; missing stays NaN)."""
        if self.kind != "numeric" or self.unit not in ("days", "count", "employees", "band"):
            return values
        x = np.asarray(values, dtype="float64")
        if self.unit == "days":
            return np.where(x > 0, np.maximum(1.0, np.ceil(x - 1e-6)), x)
        return np.where(np.isnan(x) | (x == 0), x, np.round(x))

    def _label(self, code: str) -> str | None:
        for key, words in self.labels:
            if key == code:
                return words
        return None

    def describe(self, value: Any) -> str:
        """The lead's value in a plain sentence (without points)."""
        if _is_missing(value):
            return self.missing_template or f"{self.description}: unknown"
        if self.kind == "numeric" and self.zero_template is not None and float(value) == 0:
            return self.zero_template
        if self.unit == "days" and whole_days(float(value)) <= 1 and "{value} days ago" in self.template:
            return render(self.template.replace("{value} days ago", "in the last day"), "")
        said = self.format_value(value)
        text = render(singular(self.template) if said == "1" else self.template, said)
        return text.replace(" 1 days", " 1 day").replace(" 1 times", " once")

    def sentence(self, value: Any, points: int) -> str:
        """A reason: signed points and the sentence, e.g. ``+12 Viewed the pricing page 4 times``."""
        return f"{points:+d} {self.describe(value)}"


_PLACEHOLDER = re.compile(r"\{\{|\}\}|\{value\}")
#: ``{value}`` then a plural noun (after an optional quoted event type or participle) and its verb
_PLURAL = re.compile(r"\{value\} ((?:'[^']*' |[a-z]+ed )?)(?!times\b|days\b)([A-Za-z]+?)(e?s)\b( are| were)?")


def singular(template: str) -> str:
    """*template* said of one: the noun after ``{value}`` in the singular, with its verb
    ("Had {value} interactions" -> "Had {value} interaction", "{value} colleagues were
    active" -> "{value} colleague was active"). "1 times" and "1 days" are said by
    :meth:`FeatureDef.describe` ("once", "1 day")."""

    def one(m: re.Match[str]) -> str:
        stem, ending = m.group(2), m.group(3)
        noun = stem + ("e" if ending == "es" and not stem.endswith(("ss", "sh", "ch", "x")) else "")
        verb = {" are": " is", " were": " was"}.get(m.group(4) or "", "")
        return "{value} " + m.group(1) + noun + verb

    return _PLURAL.sub(one, template).replace(" is also leads", " is also a lead")



def escape(text: str) -> str:
    """*text* (from the data) as literal text inside a template: braces doubled."""
    return text.replace("{", "{{").replace("}", "}}")


def render(template: str, value: str) -> str:
    """*template* with ``{value}`` replaced by *value* and ``{{``/``}}`` by one brace.

    Not :meth:`str.format`: a template embeds event types and column names from the CRM
    (``Meeting {owner.name}``, ``50% off``), and any brace that is not ``{value}`` (or a
    doubled brace) is kept as written instead of being read as a field.
    """
    return _PLACEHOLDER.sub(lambda m: value if m.group() == "{value}" else m.group()[0], template)


def whole_days(days: float) -> int:
    """Days as a rep counts them back from the as-of day: a started day counts (0.4 -> 1,
    1.4 -> 2), with a micro-day of slack for float noise at whole days."""
    return 0 if days <= 0 else max(1, math.ceil(days - 1e-6))


def band_labels(cuts: Iterable[float], money: bool = False) -> tuple[tuple[str, str], ...]:
    """Each band code of :func:`convert.features.dialect.band_sql` (``i``: below ``cuts[i]``, at or above
    ``cuts[i-1]``) as the range it stands for: ``fewer than 10``, ``10–49``, ``5,000 or more``
    (employees, whole numbers), ``under 1M``, ``1M–10M``, ``1B or more`` (money)."""
    cuts = [float(c) for c in cuts]

    def say(x: float) -> str:
        return _short_money(x) if money else f"{round(x):,}"

    out = [("0", f"under {say(cuts[0])}" if money else f"fewer than {say(cuts[0])}")]
    for i in range(1, len(cuts)):
        hi = say(cuts[i]) if money else f"{round(cuts[i]) - 1:,}"
        out.append((str(i), f"{say(cuts[i - 1])}\u2013{hi}"))
    out.append((str(len(cuts)), f"{say(cuts[-1])} or more"))
    return tuple(out)


def _short_money(value: float) -> str:
    for cut, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= cut:
            return f"{value / cut:,.1f}".removesuffix(".0") + suffix
    return f"{value:,.0f}"


def _is_missing(value: Any) -> bool:
    if value is None or value is pd.NA or value is pd.NaT:
        return True
    return isinstance(value, float) and math.isnan(value)


def _human_money(value: float) -> str:
    for cut, suffix in ((1e9, "B"), (1e6, "M"), (1e3, "k")):
        if abs(value) >= cut:
            return f"{value / cut:,.1f}{suffix}"
    return f"{value:,.0f}"


class Catalog:
    """An ordered collection of :class:`FeatureDef`, looked up by name."""

    def __init__(self, features: Iterable[FeatureDef] = ()) -> None:
        self._features: dict[str, FeatureDef] = {}
        for f in features:
            self.add(f)

    def add(self, feature: FeatureDef) -> None:
        if feature.name in self._features:
            raise ValueError(f"feature {feature.name!r} is defined twice in the catalog")
        if feature.family not in FAMILIES:
            raise ValueError(f"feature {feature.name!r} has family {feature.family!r}; use fit or engagement")
        self._features[feature.name] = feature

    def __getitem__(self, name: str) -> FeatureDef:
        return self._features[name]

    def __contains__(self, name: object) -> bool:
        return name in self._features

    def __iter__(self) -> Iterator[FeatureDef]:
        return iter(self._features.values())

    def __len__(self) -> int:
        return len(self._features)

    @property
    def names(self) -> list[str]:
        return list(self._features)

    def family_of(self, names: Iterable[str]) -> list[Family]:
        return [self._features[n].family for n in names]

    def to_records(self) -> list[dict[str, Any]]:
        return [asdict(f) for f in self]

    @classmethod
    def from_records(cls, records: Iterable[dict[str, Any]]) -> Catalog:
        return cls(FeatureDef(**r) for r in records)

    def to_frame(self) -> pd.DataFrame:
        return pd.DataFrame(self.to_records())

    def subset(self, names: Iterable[str]) -> Catalog:
        return Catalog(self._features[n] for n in names)


# --- words for the event vocabulary -----------------------------------------------------------

#: event type -> (did it {n} times, never did it, noun for a count of it)
EVENT_WORDS: dict[str, tuple[str, str]] = {
    "page_view": ("Viewed {value} pages", "Viewed no pages"),
    "pricing_page_view": ("Viewed the pricing page {value} times", "Did not view the pricing page"),
    "email_open": ("Opened {value} emails", "Opened no emails"),
    "email_click": ("Clicked {value} emails", "Clicked no emails"),
    "form_submit": ("Submitted {value} forms", "Submitted no forms"),
    "content_download": ("Downloaded {value} pieces of content", "Downloaded no content"),
    "webinar_registered": ("Registered for {value} webinars", "Registered for no webinars"),
    "webinar_attended": ("Attended {value} webinars", "Attended no webinars"),
    "demo_request": ("Requested a demo {value} times", "Did not request a demo"),
    "quote_request": ("Requested a quote {value} times", "Did not request a quote"),
    "meeting": ("Had {value} meetings", "Had no meetings"),
    "call": ("Had {value} calls", "Had no calls"),
    "unsubscribe": ("Unsubscribed {value} times", "Never unsubscribed"),
    "email_bounce": ("Had {value} bounced emails", "Had no bounced emails"),
}


def event_words(event_type: str) -> tuple[str, str]:
    """Count and zero phrases for an event type; the CRM's own types get a generic phrase."""
    if event_type in EVENT_WORDS:
        return EVENT_WORDS[event_type]
    label = event_type.replace("_", " ")
    return (f"Had {{value}} '{escape(label)}' events", f"Had no '{label}' events")


def window_phrase(days: int | None) -> str:
    return " in all" if days is None else (" in the last day" if days == 1 else f" in the last {days} days")
