"""Temporary files of a run: one folder per process, removed at exit, stale ones swept at start.

DuckDB spills to disk beyond its memory limit, and a CSV file in another encoding is
transcoded to a UTF-8 copy first; both can take hundreds of megabytes. They live in one
folder per run, ``<temp>/convert-runs/run-<pid>-<start>`` (``<temp>``: ``TMPDIR`` or the
system's), removed when the process exits. A run killed with SIGKILL cannot clean up, so
the next run removes every folder whose process is gone: the folder's name records the
process id *and* its start time, so a live run's folder is never touched, even when its
process id was reused by another program.
"""

from __future__ import annotations

import atexit
import os
import re
import shutil
import tempfile
from pathlib import Path

_ROOT_NAME = "convert-runs"
_NAME = re.compile(r"run-(\d+)-(\d+)")
_run_dir: Path | None = None


def _start_time(pid: int) -> int | None:
    """The process's start time (clock ticks since boot on Linux), ``None`` when it is gone.

    ``0`` means alive with an unknown start time (no ``/proc`` and no psutil).
    """
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
        return int(text[text.rindex(")") + 2:].split()[19])
    except FileNotFoundError:
        if Path("/proc/self/stat").exists():
            return None
    except (OSError, ValueError, IndexError):
        pass
    try:
        import psutil

        return int(psutil.Process(pid).create_time() * 100)
    except ImportError:
        pass
    except Exception:  # noqa: BLE001 - psutil.NoSuchProcess, AccessDenied
        return None
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return None
    except PermissionError:
        pass
    return 0


def root() -> Path:
    """The folder holding every run's temporary folder."""
    return Path(tempfile.gettempdir()) / _ROOT_NAME


def sweep(parent: Path | None = None) -> list[Path]:
    """Remove the folders of runs whose process is gone; return them. A folder whose process
    is alive with the recorded start time (or an unknown one) is kept."""
    parent = parent or root()
    removed: list[Path] = []
    try:
        entries = list(parent.iterdir())
    except OSError:
        return removed
    for folder in entries:
        m = _NAME.fullmatch(folder.name)
        if not m or not folder.is_dir():
            continue
        pid, start = int(m.group(1)), int(m.group(2))
        now = _start_time(pid)
        if now is not None and (now == start or now == 0 or start == 0):
            continue
        shutil.rmtree(folder, ignore_errors=True)
        removed.append(folder)
    return removed


def run_dir() -> Path:
    """This run's temporary folder, created (after a sweep of dead runs' folders) on first
    use and removed when the process exits."""
    global _run_dir
    if _run_dir is not None and _run_dir.is_dir():
        return _run_dir
    parent = root()
    parent.mkdir(parents=True, exist_ok=True)
    sweep(parent)
    pid = os.getpid()
    folder = parent / f"run-{pid}-{_start_time(pid) or 0}"
    folder.mkdir(exist_ok=True)
    if _run_dir is None:
        atexit.register(_remove, folder)
    _run_dir = folder
    return folder


def _remove(folder: Path) -> None:
    shutil.rmtree(folder, ignore_errors=True)
