"""The README's results on real public datasets, as a table built from ``train --summary`` files.

``make realdata`` trains each dataset of ``../shared/datasets`` in flat mode through the
command line (with its committed mapping in ``docs/mappings/``), writing one summary JSON
per run; ``python -m convert.analysis.realdata FOLDER`` turns those files into the markdown table
pasted in the README: rows, positive rate, the hold-out's ROC AUC, PR AUC, Brier score and
ECE of the model beside the logistic-regression baseline, and what the leakage guard found.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

HEADER = (
    "| dataset (split) | rows (positive rate) | outer-fold rows (positive rate) | ROC AUC | PR AUC | "
    "Brier | ECE | leakage guard |\n"
    "| --- | --- | --- | --- | --- | --- | --- | --- |"
)


def _pair(summary: dict[str, Any], metric: str) -> str:
    m = summary["metrics"]
    return f"**{m['model'][metric]:.3f}** / {m['logistic_regression'][metric]:.3f}"


def _finding(column: dict[str, Any]) -> str:
    figures = []
    if "auc" in column["reasons"]:
        figures.append(f"AUC {column['auc']:.2f}")
    if "fill_gap" in column["reasons"]:
        figures.append(f"filled {column['fill_converted']:.0%} vs {column['fill_unconverted']:.0%}")
    return f"`{column['column']}` ({', '.join(figures)})"


def guard_findings(leakage: dict[str, Any]) -> str:
    """The guard's suspects with their figures, then the columns left out by their meaning."""
    columns = leakage.get("columns", [])
    flagged = [_finding(c) for c in columns if c["suspect"]]
    by_meaning = [f"`{c['column']}`" for c in columns if c["decision"] == "excluded" and not c["suspect"]]
    parts = [("flagged: " + ", ".join(flagged)) if flagged else "flags nothing"]
    if by_meaning:
        parts.append("the mapping also leaves out " + ", ".join(by_meaning))
    return "; ".join(parts)


def row(name: str, summary: dict[str, Any]) -> str:
    """One markdown row: the model's figure in bold, the logistic regression's after the slash."""
    split = summary["flat"].get("split", "")
    return (
        f"| {name} ({split}) | {summary['rows']:,} ({summary['positive_rate']:.1%}) | "
        f"{summary['holdout_rows']:,} ({summary['holdout_positive_rate']:.1%}) | "
        f"{_pair(summary, 'roc_auc')} | {_pair(summary, 'pr_auc')} | {_pair(summary, 'brier')} | "
        f"{_pair(summary, 'ece')} | {guard_findings(summary.get('leakage') or {})} |"
    )


def table(folder: str | Path) -> str:
    """The results table of every ``*.json`` summary in *folder*, in name order."""
    files = sorted(Path(folder).glob("*.json"))
    if not files:
        raise SystemExit(f"no summary files (*.json) in {folder}: run `make realdata` first")
    lines = [HEADER]
    for path in files:
        lines.append(row(path.stem, json.loads(path.read_text())))
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        raise SystemExit("usage: python -m convert.analysis.realdata FOLDER_OF_SUMMARIES")
    print(table(args[0]))


if __name__ == "__main__":
    main()
