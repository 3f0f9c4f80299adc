"""Behaviour snapshot of the ``convert`` command line, to show a refactoring changed nothing.

Issue 15 restructures the package; its acceptance point is that every command's output on
the demo (scores, points, reasons, report tables) is identical in event mode, and that flat
mode changes only where training's own design changed it. This script is the evidence: run
it at the commit before the work and at the commit after, then compare the two folders::

    python scripts/behaviour_snapshot.py run /tmp/before        # at the old commit
    python scripts/behaviour_snapshot.py run /tmp/after         # at the new commit
    python scripts/behaviour_snapshot.py compare /tmp/before /tmp/after

It drives ONLY the command line (``python -m convert ...`` of the interpreter running it)
and never imports ``convert``, so the same script works on both sides of a restructure.

``run OUT`` generates the demo CRM in a temporary folder (``generate --leads N --seed S
--reps 8``, as ``make demo``), then runs every command on it with a private MLflow store and
the demo's as-of time (2026-01-01): validate, features (+ catalog), train (+ bundle),
promote, evaluate, score (Parquet and SQLite), explain (a few leads), backtest, report
(its HTML tables), allocate, export. In flat mode it trains, evaluates, scores and explains
on the real X Education table (``../shared/datasets``, with ``docs/mappings``) when present.

What OUT holds (see ``README.txt`` written there):

* ``event/`` and ``flat/``: one canonical CSV per output table (columns in name order,
  rows sorted, floats written with ``repr`` so they compare to the last digit). A table
  of more than ``MAX_CELLS`` cells is stored as ``NAME.digest.csv``: its row count and the
  SHA-256 of each canonical column, so a difference still names the column.
* ``event/stdout/`` and ``flat/stdout/``: each command's stdout and stderr, normalised by
  the regular expressions in ``NORMALISE`` (run timestamps, durations, temporary paths,
  MLflow run ids, hash versions); ``commands.csv`` lists each command and its exit code.
  A failing command is recorded there, never aborts the run.

Volatile values in tables are normalised the same way: a timestamp that falls within the
run itself (``scored_at``, ``written_at``...) becomes ``<RUN_TIME>``; nothing else is touched.

``compare BEFORE AFTER`` exits 0 when the folders are identical, else prints which files,
columns and rows differ (the first few differences) under "event mode" and "flat mode"
headings and exits 1.
"""

from __future__ import annotations

import argparse
import csv
import datetime as dt
import hashlib
import html.parser
import json
import math
import os
import re
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import pandas as pd

REPO = Path(__file__).resolve().parents[1]
AS_OF = "2026-01-01"
REPS = 8
MAX_CELLS = 3_000_000  # bigger tables are stored as per-column digests
FLAT_DATA = REPO.parent / "shared" / "datasets" / "x_education_leads" / "Leads.csv"
FLAT_MAPPING = REPO / "docs" / "mappings" / "x_education_leads.yaml"
# Columns that identify a row: written first, so sorted rows line up by them in `compare`.
KEY_COLUMNS = ("lead_id", "Prospect ID", "id", "rep_id", "schedule", "origin", "as_of", "table", "section",
               "feature", "segment", "key")

# Table columns that hold a duration of the run (backtest's trainings.csv): "<DURATION>".
VOLATILE_COLUMNS = ("seconds",)

# Stdout/stderr normalisation, applied in this order. Each pattern names what it hides.
# {work} is the temporary work folder; {run_days} the dates of the run (today, +-1 day).
NORMALISE: list[tuple[str, str, str]] = [
    ("temporary work folder", r"{work}", "<WORK>"),
    ("other temporary paths", r"/tmp/[^\s'\",)]+", "<TMP>"),
    ("timestamps of the run itself (date of the run, with a time)",
     r"(?:{run_days})[ T]\d\d:\d\d(?::\d\d(?:\.\d+)?)?(?:[+-]\d\d:?\d\d|Z| ?UTC)?", "<RUN_TIME>"),
    ("library log timestamps of the run ('2026/12/06 06:13:40 INFO ...')",
     r"(?:{run_days_slash}) \d\d:\d\d:\d\d(?:,\d+)?", "<RUN_TIME>"),
    ("source locations of warnings ('/x/y.py:123: UserWarning'): move with a restructure",
     r"(?m)^\S+\.py:\d+: ", "<SOURCE>: "),
    ("MLflow run ids (32 hex digits)", r"\b[0-9a-f]{32}\b", "<RUN_ID>"),
    ("hash versions (12+ hex digits with a digit and a letter)",
     r"\b(?=[0-9a-f]*[a-f])(?=[0-9a-f]*\d)[0-9a-f]{12,}\b", "<HASH>"),
    ("durations: '12.3 s', '4 seconds', '250 ms', '1.5 min'",
     r"\b\d+(?:\.\d+)?\s?(?:s|sec|seconds|ms|min|minutes)\b", "<DURATION>"),
    ("throughputs: '12,345 rows/s', 'leads/s'", r"[\d,.]+\s?(?:k|M)?\s?[a-z]+/s\b", "<RATE>"),
]


# Progress bars (DuckDB's on stdout, tqdm's on stderr) depend on timing: their lines, and the
# blank lines they bring, are dropped before the patterns above are applied.
PROGRESS_BAR = re.compile(r"^\s*\d+%\s*(?:\u2595|\|)")


def drop_progress(text: str) -> str:
    """*text* without progress-bar lines and the blank lines next to them."""
    lines = text.splitlines()
    bar = [bool(PROGRESS_BAR.match(line)) for line in lines]
    keep = []
    for i, line in enumerate(lines):
        if bar[i]:
            continue
        if not line.strip():
            j = i + 1
            while j < len(lines) and not lines[j].strip() and not bar[j]:
                j += 1
            if (j < len(lines) and bar[j]) or (i > 0 and bar[i - 1]):
                continue
        keep.append(line)
    return "\n".join(keep) + ("\n" if keep else "")


# ---------------------------------------------------------------------------------------------
# canonical tables

def _cell(value: Any) -> str:
    """One value as text: floats by repr (every digit), timestamps ISO, missing as ''."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float) or type(value).__name__.startswith("float"):
        f = float(value)
        return "nan" if math.isnan(f) else repr(f)
    if isinstance(value, int) or type(value).__name__.startswith(("int", "uint")):
        return str(int(value))
    if isinstance(value, pd.Timestamp | dt.datetime):
        return "" if pd.isna(value) else pd.Timestamp(value).isoformat()
    if isinstance(value, bytes):
        return value.hex()
    try:
        if pd.isna(value):
            return ""
    except (TypeError, ValueError):
        pass
    return str(value)


class Normaliser:
    """The documented regexes of ``NORMALISE``, bound to this run's folder and dates."""

    def __init__(self, work: Path, started: dt.datetime) -> None:
        days = {started.date() + dt.timedelta(days=d) for d in (-1, 0, 1, 2)}
        self.run_days = {d.isoformat() for d in days}
        subs = {"{work}": re.escape(str(work)), "{run_days}": "|".join(sorted(self.run_days)),
                "{run_days_slash}": "|".join(sorted(d.replace("-", "/") for d in self.run_days))}
        self.patterns = []
        for _, pattern, repl in NORMALISE:
            for name, value in subs.items():
                pattern = pattern.replace(name, value)
            self.patterns.append((re.compile(pattern), repl))

    def text(self, text: str) -> str:
        for pattern, repl in self.patterns:
            text = pattern.sub(repl, text)
        return text

    def cell(self, value: str) -> str:
        """A table cell: only a run timestamp or the work path is volatile."""
        if value[:10] in self.run_days and len(value) > 10:
            return "<RUN_TIME>"
        return self.patterns[0][0].sub("<WORK>", value) if "/" in value else value


def _ordered_columns(columns: Iterable[str]) -> list[str]:
    cols = [str(c) for c in columns]
    keys = [k for k in KEY_COLUMNS if k in cols]
    return keys + sorted(c for c in cols if c not in keys)


def write_table(frame: pd.DataFrame, path: Path, norm: Normaliser) -> int:
    """Write *frame* canonically (or its digests when large); return its row count."""
    frame = frame.reset_index(drop=True)
    frame.columns = [str(c) for c in frame.columns]
    if frame.columns.duplicated().any():
        frame.columns = [f"{c}#{i}" if frame.columns.duplicated()[i] else c for i, c in enumerate(frame.columns)]
    cols = _ordered_columns(frame.columns)
    text = {c: ["<DURATION>" if c in VOLATILE_COLUMNS else norm.cell(_cell(v)) for v in frame[c].tolist()]
            for c in cols}
    rows = sorted(zip(*(text[c] for c in cols), strict=True)) if cols else []
    path.parent.mkdir(parents=True, exist_ok=True)
    if len(frame) * max(len(cols), 1) > MAX_CELLS:
        with (path.with_suffix(".digest.csv")).open("w", newline="") as f:
            w = csv.writer(f, lineterminator="\n")
            w.writerow(["column", "rows", "sha256"])
            for i, c in enumerate(cols):
                h = hashlib.sha256("\n".join(r[i] for r in rows).encode()).hexdigest()
                w.writerow([c, len(rows), h])
        return len(frame)
    with path.open("w", newline="") as f:
        w = csv.writer(f, lineterminator="\n")
        w.writerow(cols)
        w.writerows(rows)
    return len(frame)


def read_any(path: Path) -> pd.DataFrame:
    if path.suffix == ".parquet":
        return pd.read_parquet(path)
    if path.suffix == ".json":
        return json_frame(json.loads(path.read_text()))
    return pd.read_csv(path, dtype=str, keep_default_na=False)


def json_frame(obj: Any) -> pd.DataFrame:
    """A JSON document as (key, value) rows: nested keys joined by '/', floats by repr."""
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for k, v in value.items():
                walk(f"{prefix}/{k}" if prefix else str(k), v)
        elif isinstance(value, list):
            for i, v in enumerate(value):
                walk(f"{prefix}/{i}", v)
        else:
            rows.append((prefix, _cell(value)))

    walk("", obj)
    return pd.DataFrame(rows, columns=["key", "value"])


def sqlite_tables(url: str) -> dict[str, pd.DataFrame]:
    path = url.removeprefix("sqlite:///")
    con = sqlite3.connect(path)
    try:
        names = [r[0] for r in con.execute("select name from sqlite_master where type='table' order by name")]
        return {n: pd.read_sql_query(f'select * from "{n}"', con) for n in names}
    finally:
        con.close()


class _HtmlTables(html.parser.HTMLParser):
    """The report's <table>s with the section id and the heading above each, cells as text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.tables: list[tuple[str, str, list[list[str]]]] = []
        self.texts: list[tuple[str, str]] = []
        self.section = ""
        self.heading = ""
        self._tag_text: list[str] | None = None
        self._table: list[list[str]] | None = None
        self._row: list[str] | None = None
        self._cell: list[str] | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "section":
            self.section = dict(attrs).get("id") or ""
            self.heading = ""
        elif tag in ("h1", "h2", "h3", "p", "figcaption", "li") and self._table is None:
            self._tag_text = []
        elif tag == "table":
            self._table = []
        elif tag == "tr" and self._table is not None:
            self._row = []
        elif tag in ("td", "th") and self._row is not None:
            self._cell = []

    def handle_endtag(self, tag: str) -> None:
        if tag in ("h1", "h2", "h3", "p", "figcaption", "li") and self._tag_text is not None:
            text = " ".join("".join(self._tag_text).split())
            if tag in ("h2", "h3"):
                self.heading = text
            self.texts.append((self.section or "header", f"{tag}: {text}"))
            self._tag_text = None
        elif tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._row.append(" ".join("".join(self._cell).split()))
            self._cell = None
        elif tag == "tr" and self._row is not None and self._table is not None:
            self._table.append(self._row)
            self._row = None
        elif tag == "table" and self._table is not None:
            self.tables.append((self.section, self.heading, self._table))
            self._table = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell.append(data)
        elif self._tag_text is not None:
            self._tag_text.append(data)


def report_tables(html_text: str) -> tuple[dict[str, pd.DataFrame], list[str]]:
    """Each table of the report as a frame (named section__heading__n), and its text lines."""
    parser = _HtmlTables()
    parser.feed(html_text)
    out: dict[str, pd.DataFrame] = {}
    for section, heading, rows in parser.tables:
        if not rows:
            continue
        head, body = rows[0], rows[1:]
        # Keep the rows' order as a column: in a report the order is part of what is shown.
        frame = pd.DataFrame([r + [""] * (len(head) - len(r)) for r in body], columns=head or None)
        frame.insert(0, "row", [f"{i:04d}" for i in range(len(frame))])
        slug = re.sub(r"[^a-z0-9]+", "-", f"{section}__{heading}".lower()).strip("-") or "table"
        name, n = slug, 2
        while name in out:
            name, n = f"{slug}-{n}", n + 1
        out[name] = frame
    return out, [f"[{s}] {t}" for s, t in parser.texts]


# ---------------------------------------------------------------------------------------------
# running the commands

class Runner:
    """Runs ``python -m convert`` commands in the work folder and records what they print."""

    def __init__(self, out: Path, work: Path, norm: Normaliser, env: dict[str, str]) -> None:
        self.out, self.work, self.norm, self.env = out, work, norm, env
        self.records: list[dict[str, str]] = []
        self.timings: list[tuple[str, float]] = []

    def __call__(self, mode: str, name: str, *args: str, timeout: float = 3600) -> bool:
        argv = [sys.executable, "-m", "convert", *args]
        clock = time.perf_counter()
        try:
            proc = subprocess.run(argv, cwd=self.work, env=self.env, capture_output=True, text=True,
                                  timeout=timeout, check=False)
            code, stdout, stderr = proc.returncode, proc.stdout, proc.stderr
        except subprocess.TimeoutExpired as exc:
            code = -9
            stdout = exc.stdout.decode() if isinstance(exc.stdout, bytes) else (exc.stdout or "")
            stderr = f"timed out after {timeout} s"
        seconds = time.perf_counter() - clock
        self.timings.append((f"{mode}/{name}", seconds))
        n = sum(1 for r in self.records if r["mode"] == mode) + 1
        folder = self.out / mode / "stdout"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{n:02d}_{name}.txt").write_text(self.norm.text(drop_progress(stdout)))
        (folder / f"{n:02d}_{name}.stderr.txt").write_text(self._stderr(stderr))
        self.records.append({"mode": mode, "step": f"{n:02d}_{name}", "exit_code": str(code),
                             "command": self.norm.text(" ".join(["python -m convert", *args]))})
        print(f"  {mode}/{name}: exit {code} in {seconds:.0f} s", flush=True)
        if code != 0:
            print("    " + "\n    ".join(stderr.strip().splitlines()[-5:]), flush=True)
        return code == 0

    def _stderr(self, text: str) -> str:
        """stderr without the noise of libraries (progress bars, their deprecation warnings)."""
        return self.norm.text(drop_progress(text))


def _save(out: Path, mode: str, name: str, frame: pd.DataFrame, norm: Normaliser, counts: dict[str, int]) -> None:
    rel = f"{mode}/{name}.csv"
    try:
        counts[rel] = write_table(frame, out / rel, norm)
    except Exception as exc:  # a table we cannot read is a finding, not a reason to stop
        (out / f"{mode}/{name}.error.txt").write_text(f"{type(exc).__name__}: {exc}\n")


def _save_file(out: Path, mode: str, name: str, path: Path, norm: Normaliser, counts: dict[str, int]) -> None:
    if not path.exists():
        return
    try:
        frame = read_any(path)
    except Exception as exc:
        (out / mode).mkdir(parents=True, exist_ok=True)
        (out / f"{mode}/{name}.error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
        return
    _save(out, mode, name, frame, norm, counts)


def _save_folder(out: Path, mode: str, prefix: str, folder: Path, norm: Normaliser, counts: dict[str, int]) -> None:
    """Every table file (csv, parquet, json) of *folder*, recursively; plots are left out."""
    if not folder.exists():
        return
    for path in sorted(folder.rglob("*")):
        if path.is_file() and path.suffix in (".csv", ".parquet", ".json"):
            rel = path.relative_to(folder).with_suffix("")
            _save_file(out, mode, f"{prefix}{'__'.join(rel.parts)}", path, norm, counts)


def _save_db(out: Path, mode: str, prefix: str, url: str, norm: Normaliser, counts: dict[str, int]) -> None:
    if not Path(url.removeprefix("sqlite:///")).exists():
        return
    for table, frame in sqlite_tables(url).items():
        _save(out, mode, f"{prefix}{table}", frame, norm, counts)


def _pick_leads(scores: Path, column: str, n: int = 3) -> list[str]:
    """A few ids to explain, chosen by the scores themselves: the best and the worst."""
    if not scores.exists():
        return []
    frame = pd.read_parquet(scores)
    if column not in frame.columns:
        return []
    by = [c for c in ("probability", "score") if c in frame.columns][:1]
    ranked = frame.sort_values([*by, column], ascending=[False] * len(by) + [True], kind="mergesort") if by else frame
    ids = ranked[column].astype(str).tolist()
    return list(dict.fromkeys(ids[:n] + ids[-1:]))  # n best and the worst


def run_snapshot(out: Path, leads: int, seed: int, config: Path | None, flat_data: Path | None,
                 keep_work: bool) -> int:
    started = dt.datetime.now(dt.UTC)
    clock = time.perf_counter()
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        print(f"error: {out} is not empty: choose a new folder for the snapshot", file=sys.stderr)
        return 2
    work = Path(tempfile.mkdtemp(prefix="convert-snapshot-"))
    norm = Normaliser(work, started)
    env = {**os.environ, "MLFLOW_TRACKING_URI": f"sqlite:///{work / 'mlflow.db'}",
           "OMP_WAIT_POLICY": os.environ.get("OMP_WAIT_POLICY", "PASSIVE"),
           "MPLBACKEND": "Agg"}
    env.pop("CONVERT_OUT_URL", None)  # the scores go where --out says, never to a URL of the caller's
    run = Runner(out, work, norm, env)
    counts: dict[str, int] = {}
    cfg = ["--config", str(config)] if config and config.exists() else []
    data = work / "demo"
    rejects = ["--rejects", str(work / "rejects.csv")]
    print(f"work folder {work}", flush=True)

    # --- event mode ---------------------------------------------------------------------------
    E = "event"
    run(E, "generate", "generate", "--out", str(data), "--leads", str(leads), "--seed", str(seed),
        "--reps", str(REPS))
    d = ["--data", str(data), *cfg, *rejects]
    run(E, "validate", "validate", *d)
    _save_file(out, E, "validate__rejects", work / "rejects.csv", norm, counts)
    run(E, "features", "features", *d, "--as-of", AS_OF, "--out", str(work / "training.parquet"),
        "--catalog", str(work / "catalog.csv"))
    _save_file(out, E, "features__training_set", work / "training.parquet", norm, counts)
    _save_file(out, E, "features__catalog", work / "catalog.csv", norm, counts)
    run(E, "train", "train", *d, "--as-of", AS_OF, "--save", str(work / "bundle"),
        "--summary", str(work / "train-summary.json"))
    _save_file(out, E, "train__summary", work / "train-summary.json", norm, counts)
    _save_folder(out, E, "train__bundle__", work / "bundle", norm, counts)
    run(E, "promote", "promote", *cfg)
    run(E, "evaluate", "evaluate", *d, "--out", str(work / "evaluation"))
    _save_folder(out, E, "evaluate__", work / "evaluation", norm, counts)
    scores = work / "scores.parquet"
    run(E, "score_parquet", "score", *d, "--as-of", AS_OF, "--out", str(scores), "--top", "10")
    _save_file(out, E, "score__parquet", scores, norm, counts)
    crm = f"sqlite:///{work / 'crm.db'}"
    run(E, "score_sqlite", "score", *d, "--as-of", AS_OF, "--out", crm, "--top", "10")
    run(E, "score_bundle", "score", *d, "--as-of", AS_OF, "--model", str(work / "bundle"),
        "--out", str(work / "scores-bundle.parquet"))
    _save_file(out, E, "score__bundle_parquet", work / "scores-bundle.parquet", norm, counts)
    for lead in _pick_leads(scores, "lead_id", 1):
        run(E, f"explain_{re.sub(r'[^A-Za-z0-9_-]', '_', lead)}", "explain", *d, "--as-of", AS_OF,
            "--lead-id", lead, "--plot", str(work / f"explain-{lead}.png"))
    bt = work / "backtest"
    # One origin (the last whose 90-day horizon ends inside the data): a backtest trains at each.
    run(E, "backtest", "backtest", *d, "--from", "2025-10-01", "--to", "2025-10-01", "--every", "3M",
        "--out", str(bt))
    _save_folder(out, E, "backtest__", bt, norm, counts)
    report = work / "report.html"
    with_bt = ["--backtest", str(bt)] if (bt / "backtest.csv").exists() else []
    run(E, "report", "report", *d, "--as-of", AS_OF, "--out", str(report), *with_bt)
    if report.exists():
        try:
            tables, texts = report_tables(report.read_text(encoding="utf-8"))
        except Exception as exc:  # recorded, like a failing command
            (out / E / "report__tables.error.txt").write_text(f"{type(exc).__name__}: {exc}\n")
            tables, texts = {}, []
        for name, frame in tables.items():
            _save(out, E, f"report__{name}", frame, norm, counts)
        (out / E / "report__text.txt").write_text(norm.text("\n".join(texts) + "\n"))
    run(E, "allocate", "allocate", *d, "--scores", crm, "--reps", str(data / "reps.csv"), "--out", crm,
        "--compare-effects", str(data / "rep_effects.csv"), "--effects-out", str(work / "rep-effects.csv"))
    _save_file(out, E, "allocate__rep_effects", work / "rep-effects.csv", norm, counts)
    _save_db(out, E, "crm__", crm, norm, counts)
    run(E, "export", "export", *d, "--out", str(work / "typed"))
    _save_folder(out, E, "export__", work / "typed", norm, counts)

    # --- flat mode ----------------------------------------------------------------------------
    F = "flat"
    if flat_data and flat_data.exists() and FLAT_MAPPING.exists():
        f = ["--data", str(flat_data), "--mapping", str(FLAT_MAPPING), *cfg,
             "--rejects", str(work / "flat-rejects.csv")]
        run(F, "validate", "validate", *f)
        run(F, "train", "train", *f, "--save", str(work / "flat-bundle"),
            "--summary", str(work / "flat-summary.json"))
        _save_file(out, F, "train__summary", work / "flat-summary.json", norm, counts)
        _save_folder(out, F, "train__bundle__", work / "flat-bundle", norm, counts)
        model = ["--model", "models:/lead-conversion-flat@challenger"]
        run(F, "evaluate", "evaluate", *f, *model, "--out", str(work / "flat-evaluation"))
        _save_folder(out, F, "evaluate__", work / "flat-evaluation", norm, counts)
        flat_scores = work / "flat-scores.parquet"
        run(F, "score", "score", *f, *model, "--as-of", AS_OF, "--out", str(flat_scores), "--top", "5")
        _save_file(out, F, "score__parquet", flat_scores, norm, counts)
        id_col = next((c for c in ("lead_id", "Prospect ID", "id") if flat_scores.exists()
                       and c in pd.read_parquet(flat_scores).columns), "lead_id")
        for i, lead in enumerate(_pick_leads(flat_scores, id_col, 1)):
            run(F, f"explain_{i}", "explain", *f, *model, "--lead-id", lead,
                "--plot", str(work / f"flat-explain-{i}.png"))
    else:
        (out / F).mkdir(parents=True, exist_ok=True)
        (out / F / "SKIPPED.txt").write_text(f"flat mode skipped: {flat_data} or {FLAT_MAPPING} is absent\n")

    # --- what ran -----------------------------------------------------------------------------
    _save(out, "event", "commands", pd.DataFrame([r for r in run.records if r["mode"] == E]), norm, counts)
    _save(out, "flat", "commands", pd.DataFrame([r for r in run.records if r["mode"] == F]), norm, counts)
    seconds = time.perf_counter() - clock
    (out / "README.txt").write_text(
        "Behaviour snapshot written by scripts/behaviour_snapshot.py (compare two with its `compare`).\n"
        "Normalised in stdout/stderr (regex -> replacement):\n"
        + "".join(f"  {what}: {pattern!r} -> {repl}\n" for what, pattern, repl in NORMALISE)
        + "Progress-bar lines (and blank lines beside them) are dropped from stdout and stderr.\n"
        + "In tables: a timestamp on a date of the run -> <RUN_TIME>; the work folder -> <WORK>;\n"
        + f"  the columns {', '.join(VOLATILE_COLUMNS)} (durations) -> <DURATION>.\n")
    # Timings and the environment vary from run to run: kept outside the compared files.
    meta = {"leads": leads, "seed": seed, "as_of": AS_OF, "python": sys.version.split()[0],
            "started": started.isoformat(timespec="seconds"), "seconds": round(seconds, 1),
            "commit": _git_commit(), "rows": counts,
            "timings": {k: round(v, 1) for k, v in run.timings}}
    (out / "_meta.json").write_text(json.dumps(meta, indent=1) + "\n")
    failed = [r for r in run.records if r["exit_code"] != "0"]
    print(f"snapshot written to {out} in {seconds:.0f} s: {len(counts)} tables, {len(run.records)} commands"
          + (f", {len(failed)} failed: " + ", ".join(f"{r['mode']}/{r['step']}" for r in failed) if failed else ""))
    if keep_work:
        print(f"work folder kept: {work}")
    else:
        import shutil

        shutil.rmtree(work, ignore_errors=True)
    return 0


def _git_commit() -> str:
    try:
        return subprocess.run(["git", "-C", str(REPO), "rev-parse", "HEAD"], capture_output=True, text=True,
                              check=False).stdout.strip()
    except OSError:
        return ""


# ---------------------------------------------------------------------------------------------
# comparing two snapshots

def _files(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")
            if p.is_file() and not p.name.startswith("_")}


def _read_csv(path: Path) -> tuple[list[str], list[list[str]]]:
    with path.open(newline="") as f:
        rows = list(csv.reader(f))
    return (rows[0], rows[1:]) if rows else ([], [])


def diff_csv(a: Path, b: Path, limit: int) -> list[str]:
    """Which columns and rows of two canonical CSVs differ (aligned by key columns if any)."""
    ha, ra = _read_csv(a)
    hb, rb = _read_csv(b)
    out: list[str] = []
    if set(ha) != set(hb):
        if gone := [c for c in ha if c not in hb]:
            out.append(f"columns only before: {gone}")
        if new := [c for c in hb if c not in ha]:
            out.append(f"columns only after: {new}")
    if len(ra) != len(rb):
        out.append(f"rows: {len(ra)} before, {len(rb)} after")
    keys = [c for c in KEY_COLUMNS if c in ha and c in hb]
    common = [c for c in ha if c in hb]

    def keyed(header: list[str], rows: list[list[str]]) -> dict[tuple[str, ...], list[str]]:
        idx = [header.index(k) for k in keys]
        seen: dict[tuple[str, ...], int] = {}
        result = {}
        for r in rows:
            k = tuple(r[i] for i in idx)
            seen[k] = seen.get(k, 0) + 1
            result[(*k, str(seen[k]))] = r
        return result

    if keys:
        ka, kb = keyed(ha, ra), keyed(hb, rb)
        pairs = [(k, ka[k], kb[k]) for k in ka if k in kb]
        if only := [k for k in ka if k not in kb]:
            out.append(f"{len(only)} rows only before, e.g. {dict(zip(keys, only[0], strict=False))}")
        if only := [k for k in kb if k not in ka]:
            out.append(f"{len(only)} rows only after, e.g. {dict(zip(keys, only[0], strict=False))}")
    else:
        pairs = [((str(i),), x, y) for i, (x, y) in enumerate(zip(ra, rb, strict=False))]
    per_col: dict[str, int] = {}
    examples: list[str] = []
    for k, x, y in pairs:
        for c in common:
            vx, vy = x[ha.index(c)], y[hb.index(c)]
            if vx != vy:
                per_col[c] = per_col.get(c, 0) + 1
                if len(examples) < limit:
                    where = dict(zip(keys, k, strict=False)) if keys else f"row {k[0]}"
                    examples.append(f"  {where} {c}: {vx!r} -> {vy!r}")
    if per_col:
        out.append("differing columns (rows): " + ", ".join(f"{c} ({n})" for c, n in per_col.items()))
        out.extend(examples)
    return out


def diff_text(a: Path, b: Path, limit: int) -> list[str]:
    la, lb = a.read_text().splitlines(), b.read_text().splitlines()
    out = []
    for i in range(max(len(la), len(lb))):
        x = la[i] if i < len(la) else "<no line>"
        y = lb[i] if i < len(lb) else "<no line>"
        if x != y:
            out.append(f"  line {i + 1}: {x!r}\n       -> {y!r}")
            if len(out) >= limit:
                break
    return out


def compare(before: Path, after: Path, limit: int = 5) -> int:
    fa, fb = _files(before), _files(after)
    findings: dict[str, list[tuple[str, list[str]]]] = {"event": [], "flat": [], "other": []}
    for rel in sorted(fa | fb):
        mode = rel.split("/", 1)[0] if rel.split("/", 1)[0] in ("event", "flat") else "other"
        if rel not in fb:
            findings[mode].append((rel, ["only in BEFORE"]))
            continue
        if rel not in fa:
            findings[mode].append((rel, ["only in AFTER"]))
            continue
        a, b = before / rel, after / rel
        if a.read_bytes() == b.read_bytes():
            continue
        lines = diff_csv(a, b, limit) if rel.endswith(".csv") else diff_text(a, b, limit)
        findings[mode].append((rel, lines or ["bytes differ"]))
    if not any(findings.values()):
        print(f"identical: {len(fa)} files")
        return 0
    headings = {"event": "event mode: differs", "flat": "flat mode: differs", "other": "other files: differ"}
    for mode, items in findings.items():
        if not items:
            if mode != "other":
                print(f"{mode} mode: identical")
            continue
        print(f"{headings[mode]} ({len(items)} files)")
        for rel, lines in items:
            print(f"- {rel}")
            for line in lines:
                print(f"    {line}")
    return 1


# ---------------------------------------------------------------------------------------------

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    sub = parser.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="Run every command on the demo and write the snapshot to OUT.")
    r.add_argument("out", type=Path)
    r.add_argument("--leads", type=int, default=20_000, help="Demo size (make demo: 20000).")
    r.add_argument("--seed", type=int, default=42)
    r.add_argument("--config", type=Path, default=REPO / "params.yaml", help="params.yaml passed to every command.")
    r.add_argument("--flat-data", type=Path, default=FLAT_DATA, help="Flat table for flat mode (X Education Leads.csv).")
    r.add_argument("--keep-work", action="store_true", help="Keep the temporary work folder.")
    c = sub.add_parser("compare", help="Compare two snapshot folders; exit 1 when they differ.")
    c.add_argument("before", type=Path)
    c.add_argument("after", type=Path)
    c.add_argument("--limit", type=int, default=5, help="Differences shown per file.")
    args = parser.parse_args(argv)
    command: Callable[[], int]
    if args.command == "run":
        def command() -> int:
            return run_snapshot(args.out, args.leads, args.seed, args.config, args.flat_data, args.keep_work)
    else:
        def command() -> int:
            return compare(args.before, args.after, args.limit)
    return command()


if __name__ == "__main__":
    sys.exit(main())
