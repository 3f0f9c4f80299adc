"""The file writer: a ``.parquet`` or ``.csv`` file replaced whole, atomically, under a lock file.

Owns the file target's side of the contract (:class:`~convert.io.writers.base.Writer`):

* stage: the batch is written to a temporary file in the target's directory (``O_EXCL``,
  fsynced), never over the target;
* lock: an exclusive ``flock`` on ``.NAME.lock`` beside the file (:func:`file_lock`),
  removed after; waiting past ``lock_timeout_s`` raises
  :class:`~convert.exceptions.WriteLockedError`;
* guards: checked against the scores in the file the run would replace (a file that is not
  a scores file is overwritten only with ``replace``);
* switch: :func:`os.replace` of the temporary file over the target, then an fsync of the
  directory: readers see the old file or the new one, never half of one.

A file holds exactly the batch: there is no history, and nothing to remove row by row.
"""

from __future__ import annotations

import io
import os
import stat
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Literal

import pandas as pd

from convert.exceptions import WritebackError, WriteRefusedError
from convert.io.writers.base import (
    PREVIOUS_READ,
    TableState,
    WriteGuards,
    Writer,
    lock_error,
    reason,
)
from convert.io.writers.frames import Layout, coerce, to_arrow
from convert.schema import ScoreChanges, ScoreOutput

__all__ = ["FileWriter", "file_lock"]


@contextmanager
def file_lock(path: Path, timeout_s: float) -> Iterator[None]:
    """Hold an exclusive lock on *path* (through ``.NAME.lock`` beside it) while inside.

    The lock file is removed on the way out; a waiter that wakes on a removed lock file
    opens the new one, so two holders never overlap. Raises :class:`WriteLockedError`
    after *timeout_s* seconds.
    """
    import fcntl

    lock = path.with_name(f".{path.name}.lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    deadline = time.monotonic() + timeout_s
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise lock_error(str(path), f"lock file {lock}", timeout_s) from None
                    time.sleep(0.05)
            try:
                same = os.path.samestat(os.fstat(fd), os.stat(lock))
            except FileNotFoundError:
                same = False
        except BaseException:
            os.close(fd)
            raise
        if same:
            break
        os.close(fd)  # the holder before us removed this lock file: take the new one
    try:
        yield
    finally:
        try:
            lock.unlink(missing_ok=True)
        finally:
            os.close(fd)


class FileWriter(Writer):
    """A ``.parquet`` / ``.csv`` target (see the module docs)."""

    SUFFIXES: dict[str, Literal["parquet", "csv"]] = {".parquet": "parquet", ".csv": "csv"}

    def __init__(self, path: Path, layout: Layout) -> None:
        super().__init__(layout)
        self.path = path
        self.fmt = self.SUFFIXES[path.suffix.lower()]
        self.display = str(path)
        self.table = None
        self._old: pd.DataFrame | None = None
        self._batch_ids = pd.Series(dtype="string")

    @classmethod
    def accepts(cls, path: Path) -> bool:
        return path.suffix.lower() in cls.SUFFIXES

    # the contract's steps -----------------------------------------------------------------

    @contextmanager
    def session(self, guards: WriteGuards) -> Iterator[None]:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise WritebackError(f"could not write {self.path}: {exc}. Nothing was written.") from exc
        yield

    def stage(self, frame: pd.DataFrame, chunk_rows: int) -> Path:
        """The batch in a temporary file beside the target (fsynced; the target untouched)."""
        self._batch_ids = frame[ScoreOutput.lead_id]
        path = self.path
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:12]}.tmp")
        try:
            # O_EXCL: never follow or reuse an existing file; mode 0o666 lets the umask decide.
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            try:
                with os.fdopen(fd, "wb") as handle:
                    if self.fmt == "parquet":
                        import pyarrow.parquet as pq

                        pq.write_table(to_arrow(frame, self.layout), handle)
                    else:
                        text = io.TextIOWrapper(handle, encoding="utf-8", newline="")
                        frame.to_csv(text, index=False, lineterminator="\n")
                        text.flush()
                        text.detach()
                    handle.flush()
                    os.fsync(handle.fileno())
            except BaseException:
                tmp.unlink(missing_ok=True)
                raise
        except Exception as exc:  # OSError, pyarrow errors: the old file was not touched
            raise WritebackError(
                f"could not write {path}: {exc}. Nothing was replaced: the previous file is intact."
            ) from exc
        return tmp

    @contextmanager
    def switch(self, guards: WriteGuards) -> Iterator[None]:
        with file_lock(self.path, guards.lock_timeout_s):
            self._old = None
            if os.path.lexists(self.path):
                self._old = self._read_keys(guards)
            yield

    def current_state(self) -> TableState:
        return TableState.of_frame(self._old) if self._old is not None else TableState(0, None, None, ())

    def append_history(self, stage: Path, frame: pd.DataFrame) -> tuple[int, int]:
        return 0, 0  # a file keeps no history

    def remove_leavers(self, stage: Path) -> int:
        if self._old is None or self._old.empty:
            return 0
        staying = self._old[ScoreOutput.lead_id].astype(str).isin(self._batch_ids)
        return int((~staying).sum())

    def replace_current(self, stage: Path, current: TableState) -> None:
        """Move the staged file over the target, then make the rename durable."""
        path = self.path
        try:
            if path.exists():
                os.chmod(stage, stat.S_IMODE(path.stat().st_mode))
            os.replace(stage, path)
            _fsync_directory(path.parent)
        except OSError as exc:
            raise WritebackError(
                f"could not write {path}: {exc}. Nothing was replaced: the previous file is intact."
            ) from exc

    def discard(self, stage: Path) -> None:
        stage.unlink(missing_ok=True)

    # reading ------------------------------------------------------------------------------

    def previous(self, as_of: pd.Timestamp, lock_timeout_s: float = 600.0) -> pd.DataFrame:
        """From the file being replaced (it holds the last run's rows, one per lead): the rows
        older than *as_of*. A file that is not there or not a scores file gives none (the
        guards decide what happens to it)."""
        columns = {c.name: c for c in self.layout.columns}
        wanted = [n for n in PREVIOUS_READ if n in columns]
        old = pd.DataFrame({n: pd.Series([], dtype=object) for n in wanted})
        if os.path.lexists(self.path):
            try:
                if self.fmt == "parquet":
                    import pyarrow.parquet as pq

                    present = set(pq.read_schema(self.path).names)
                    old = pq.read_table(self.path, columns=[n for n in wanted if n in present]).to_pandas()
                else:
                    old = pd.read_csv(self.path, usecols=lambda c: c in wanted, dtype=str,
                                      keep_default_na=False, na_values=[""])
                if ScoreOutput.score not in old or ScoreOutput.as_of not in old:
                    raise ValueError("no score or as_of column")
            except Exception:  # not a scores file: no previous rows
                old = pd.DataFrame({n: pd.Series([], dtype=object) for n in wanted})
        typed = pd.DataFrame(
            {n: coerce(old[n].reset_index(drop=True), columns[n]) for n in wanted if n in old}
        )
        t = pd.Timestamp(as_of)
        earlier = typed[(typed[ScoreOutput.as_of] < t).to_numpy()]
        carried = self._carried(old, typed, t)
        return pd.concat([earlier, carried], ignore_index=True) if len(carried) else earlier.reset_index(drop=True)

    def _carried(self, old: pd.DataFrame, typed: pd.DataFrame, t: pd.Timestamp) -> pd.DataFrame:
        """A file keeps one run: for its rows at *t* or later (a re-run at the same as-of), the
        previous score they carry, so the re-run compares with the earlier as-of too. Its
        model and fingerprint are not on record (``model_version`` empty, ``events_seen`` empty)."""
        prev_score, prev_as_of = ScoreChanges.previous_score, ScoreChanges.previous_as_of
        if prev_score not in self.layout.names or not len(typed):
            return typed.iloc[:0]
        try:
            extra = self.read()[[ScoreOutput.lead_id, ScoreOutput.as_of, prev_score, prev_as_of]]
        except Exception:  # an older scores file without these columns: nothing carried
            return typed.iloc[:0]
        columns = {c.name: c for c in self.layout.columns}
        when = coerce(extra[prev_as_of].reset_index(drop=True), columns[prev_as_of])
        score = coerce(extra[prev_score].reset_index(drop=True), columns[prev_score])
        stamp = coerce(extra[ScoreOutput.as_of].reset_index(drop=True), columns[ScoreOutput.as_of])
        keep = ((stamp >= t) & when.notna() & score.notna() & (when < t)).to_numpy()
        rows = {
            ScoreOutput.lead_id: extra[ScoreOutput.lead_id].astype("string").to_numpy()[keep],
            ScoreOutput.as_of: when.to_numpy()[keep],
            ScoreOutput.score: score.to_numpy()[keep].astype("int64"),
            ScoreOutput.model_version: "",
        }
        empty = pd.Series([None] * int(keep.sum()), dtype=object)
        return pd.DataFrame({n: rows[n] if n in rows else coerce(empty, columns[n]) for n in typed.columns})

    def _read_keys(self, guards: WriteGuards) -> pd.DataFrame | None:
        """The keys of the scores in the file the run would replace (for the guards);
        ``None`` when it is no scores file and ``replace`` allows overwriting it."""
        keys = [ScoreOutput.lead_id, ScoreOutput.as_of, ScoreOutput.model_version]
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                old = pq.read_table(self.path, columns=keys).to_pandas()
            else:
                old = pd.read_csv(
                    self.path, usecols=keys, dtype=str, keep_default_na=False, na_values=[""]
                )
            old[ScoreOutput.as_of] = pd.to_datetime(old[ScoreOutput.as_of], format="ISO8601")
        except Exception as exc:  # not a scores file this module wrote (or unreadable)
            if guards.replace:
                return None
            raise WriteRefusedError(
                f"refused: {self.path} exists but is not a scores file convert can read "
                f"({reason(exc)}). Nothing was changed: the previous file is intact. Pass "
                "--replace to overwrite it, or write to another file."
            ) from None
        return old

    def read(self) -> pd.DataFrame:
        try:
            if self.fmt == "parquet":
                import pyarrow.parquet as pq

                return pq.read_table(self.path).to_pandas()
            return pd.read_csv(self.path, dtype=str, keep_default_na=False, na_values=[""])
        except FileNotFoundError:
            raise WritebackError(f"{self.path} does not exist") from None
        except Exception as exc:
            raise WritebackError(f"could not read {self.path}: {exc}") from exc


def _fsync_directory(directory: Path) -> None:
    """Make the rename durable (best effort: not every platform can open a directory)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
