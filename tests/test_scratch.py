"""Issue 14, finding 7 (temporary files): one folder per run, removed at exit; a killed run's
folder is removed by the next run, a live run's never.

Before, a killed run left DuckDB spill files and transcoded ``.events.*.utf8.csv`` copies
(hundreds of MB) in the system's temporary folder for good.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
from tests.conftest import small_tables, write_export

# A run that holds both kinds of temporary file: DuckDB's spill folder (its temp_directory)
# and the UTF-8 copy of a cp1252 file, then waits to be killed.
HOLDER = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from convert.io import scratch
    from convert.config import FeaturesConfig
    from convert.sources.readers import _as_utf8, connect
    from convert.sources.mapping import CsvFormat

    con = connect(FeaturesConfig(duckdb_memory_limit="100MB", duckdb_threads=1))
    spill = con.execute("SELECT current_setting('temp_directory')").fetchone()[0]
    assert Path(spill).parent == scratch.run_dir(), spill
    with _as_utf8(Path(sys.argv[1]), CsvFormat(encoding="cp1252")) as copy:
        print(scratch.run_dir(), flush=True)
        time.sleep(600)
""")


def _env(tmp: Path) -> dict[str, str]:
    return {**os.environ, "TMPDIR": str(tmp), "OMP_WAIT_POLICY": "PASSIVE"}


def _start_holder(tmp: Path, csv: Path) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen([sys.executable, "-c", HOLDER, str(csv)], env=_env(tmp), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, proc.stderr.read() if proc.stderr else ""
    return proc, Path(line)


@pytest.mark.slow
def test_a_killed_runs_folder_is_removed_by_the_next_run_and_a_live_ones_is_kept(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    csv = tmp_path / "events.csv"
    pd.DataFrame({"lead_id": ["L1"] * 2000, "note": ["caf\u00e9 cr\u00e8me"] * 2000}).to_csv(csv, index=False,
                                                                                           encoding="cp1252")
    killed, killed_dir = _start_holder(tmp, csv)
    live, live_dir = _start_holder(tmp, csv)
    try:
        assert killed_dir.parent == live_dir.parent == tmp / "convert-runs" and killed_dir != live_dir
        files = [p.name for p in killed_dir.rglob("*") if p.is_file()]
        assert any(n.startswith(".events.") and n.endswith(".utf8.csv") for n in files), files
        assert (killed_dir / "duckdb-spill").is_dir()  # DuckDB's temp_directory
        killed.send_signal(signal.SIGKILL)
        killed.wait(timeout=30)
        assert killed_dir.exists()  # a killed run cannot clean up

        # the next run (a real command) sweeps the dead run's folder, keeps the live one, and
        # leaves nothing of its own behind
        export = write_export(tmp_path / "export", **small_tables())
        out = subprocess.run([sys.executable, "-m", "convert", "validate", "--data", str(export),
                              "--rejects", str(tmp_path / "r.csv")], env=_env(tmp), capture_output=True, text=True,
                             timeout=300)
        assert out.returncode == 0, out.stderr
        assert not killed_dir.exists()
        assert live_dir.exists() and any(live_dir.rglob("*.utf8.csv"))
        assert sorted(p.name for p in (tmp / "convert-runs").iterdir()) == [live_dir.name]
    finally:
        for proc in (killed, live):
            if proc.poll() is None:
                proc.send_signal(signal.SIGKILL)
                proc.wait(timeout=30)


def test_a_folder_is_kept_while_its_process_lives_even_if_the_pid_is_reused(tmp_path):
    from convert.io import scratch

    parent = tmp_path / "convert-runs"
    me = os.getpid()
    start = scratch._start_time(me)
    assert start  # Linux: from /proc
    mine = parent / f"run-{me}-{start}"
    reused = parent / f"run-{me}-{start - 1}"  # same pid, another (earlier) process: gone
    gone = parent / "run-999999999-12"
    other = parent / "notes"  # not a run folder: never touched
    for folder in (mine, reused, gone, other):
        folder.mkdir(parents=True)
        (folder / "spill.tmp").write_bytes(b"x" * 1000)
    assert set(scratch.sweep(parent)) == {reused, gone}
    assert mine.exists() and other.exists()


@pytest.mark.slow
def test_a_run_removes_its_folder_at_exit(tmp_path):
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    code = "from convert.sources.readers import connect; c = connect(); c.execute('SELECT 1'); print('ok')"
    started = time.time()
    out = subprocess.run([sys.executable, "-c", code], env=_env(tmp), capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr
    assert list((tmp / "convert-runs").iterdir()) == []
    assert time.time() - started < 120
