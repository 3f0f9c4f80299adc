"""Small result files a run leaves behind: tables, JSON records, figures, result folders.

Owns how the steps write what a person opens afterwards (the rejects file, the features
file, an evaluation or backtest folder with its metrics, tables and figures, a JSON
summary): each file is written to a temporary file beside it and renamed over it, so a
reader (or a crashed run) never sees half a file, and its folder is created when missing.
Scores and assignments are not artifacts: they go through :mod:`convert.io.writers`, which
adds the guards, locks and history of a write-back. Model bundles are written by
:meth:`convert.model.bundle.LeadScoringModel.save`.

Figures are anything with a matplotlib-style ``savefig(path, dpi=...)``; matplotlib is not
imported here.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Protocol

import pandas as pd

__all__ = ["Figure", "save_figure", "write_frame", "write_json", "write_results", "write_text"]


class Figure(Protocol):
    """What :func:`save_figure` needs of a figure (a matplotlib ``Figure`` has it)."""

    def savefig(self, fname: Any, *, dpi: float) -> Any: ...


@contextmanager
def _atomic(path: str | Path) -> Iterator[Path]:
    """A temporary path beside *path*, renamed over it when the block ends without error."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=path.suffix, dir=path.parent)
    os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_frame(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a small table to CSV or Parquet (by suffix) atomically: temp file, then rename."""
    path = Path(path)
    with _atomic(path) as tmp:
        if path.suffix == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False)
    return path


def write_json(record: Any, path: str | Path, *, indent: int = 1) -> Path:
    """Write *record* as JSON (values JSON cannot hold, such as timestamps, as text)."""
    return write_text(json.dumps(record, indent=indent, default=str), path)


def write_text(text: str, path: str | Path) -> Path:
    """Write UTF-8 text (an HTML report, a summary) atomically."""
    path = Path(path)
    with _atomic(path) as tmp:
        tmp.write_text(text, encoding="utf-8")
    return path


def save_figure(figure: Figure, path: str | Path, *, dpi: float = 110) -> Path:
    """Save a figure (PNG, SVG, ... by suffix) atomically."""
    path = Path(path)
    with _atomic(path) as tmp:
        figure.savefig(tmp, dpi=dpi)
    return path


def write_results(folder: str | Path, files: Mapping[str, Any], *, dpi: float = 110) -> Path:
    """Write a result folder: each entry of *files* by its name's suffix.

    ``.json`` -> a JSON record, ``.csv`` / ``.parquet`` -> a table, ``.html`` / ``.txt`` /
    ``.md`` -> text, anything else -> a figure saved at *dpi* (e.g. ``lift.png``).
    """
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for name, content in files.items():
        target = folder / name
        suffix = target.suffix.lower()
        if suffix == ".json":
            write_json(content, target)
        elif suffix in (".csv", ".parquet"):
            write_frame(content, target)
        elif suffix in (".html", ".txt", ".md"):
            write_text(content, target)
        else:
            save_figure(content, target, dpi=dpi)
    return folder
