"""``convert-leads generate``: a seeded synthetic CRM export (the demo data)."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from convert.exceptions import ConvertError


def generate_step(
    out: Path, leads: int = 20_000, seed: int = 42, fmt: str = "csv", start: str | None = None,
    end: str = "2025-12-31", clean: bool = False, activity: float = 1.0, regime: str = "default",
    months: int | None = None, disqualify: bool | None = None, drift: float | None = None,
    attributes: int | None = None, reps: int = 0,
) -> list[str]:
    """Write the export to *out* (a regime preset, each given setting overriding it); the lines
    to print: the summary, the reps files and how to train on the extra attributes."""
    from convert.simulator.crm import REGIMES, REP_EFFECTS_FILE, REPS_FILE, generate_crm

    if fmt not in ("csv", "parquet"):
        raise ConvertError(f"--format must be csv or parquet, not {fmt!r}")
    if regime not in REGIMES:
        raise ConvertError(f"--regime must be one of {', '.join(REGIMES)}, not {regime!r}")
    overrides: dict[str, int | bool | float | None] = {
        k: v for k, v in (("months", months), ("disqualify", disqualify), ("drift", drift),
                          ("attributes", attributes)) if v is not None}
    if start is not None and months is None:
        overrides["months"] = None  # an explicit --start wins over the preset's history length
    chosen = dataclasses.replace(REGIMES[regime], **overrides)  # type: ignore[arg-type]
    if overrides:
        chosen = dataclasses.replace(chosen, name="custom" if regime == "default" else f"{regime} (modified)")
    summary = generate_crm(out, n_leads=leads, seed=seed, fmt=fmt, start=start, end=end,  # type: ignore[arg-type]
                           bad_rows=not clean, activity=activity, regime=chosen, reps=reps)
    lines = [str(summary)]
    if reps:
        lines.append(f"  {reps} sales reps: {out / REPS_FILE} (territories, capacity), {out / REP_EFFECTS_FILE} (true effects)")
    if summary.extra_attributes():
        lines.append("  to train on the extra attributes, add to params.yaml under features:")
        lines.append("    extra_attributes:")
        for entry in summary.extra_attributes():
            lines.append(f"      - {{table: {entry['table']}, column: {entry['column']}, kind: {entry['kind']}}}")
    return lines
