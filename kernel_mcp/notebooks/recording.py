"""Session recordings: an append-only journal per session, and the .ipynb rebuilt from it.

::

    <notebooks>/sessions/<name>.ipynb       the notebook JupyterLab opens (rebuilt)
    <notebooks>/sessions/.<name>.journal    JSON lines: a header, then one cell per run

Why a journal: rewriting and fsyncing the whole notebook after every run makes a
session's calls slower as it grows (docs/benchmarks.md). A run's cell is one
``write()`` of one line, the same at run 10,000 as at run 1.

Durability. The line is written before the run's reply is sent, so every run whose
reply went out survives a crash of the server process (the page cache has it).
The :class:`Recorder` fsyncs written journals at most ``fsync_interval`` seconds
later (group commit), so a power cut loses at most that window. It rebuilds a
notebook from its journal off the hot path, at most every ``rebuild_interval``
seconds, and at once on export, on a resource read, when the session closes and
when the server stops. At start-up it rebuilds every notebook older than its
journal (after a SIGKILL, say).

Faults. A disk that refuses a write (read-only, full, the notebook replaced by a
folder) never costs a run its reply: :meth:`Recorder.append` keeps the cell in
memory and raises :class:`RecordingError`, the reply says so, the recorder retries
in the background and catches up once the folder can be written, and
:meth:`Recorder.health` reports the failure (``/healthz``). Messages name the
notebook relative to the notebooks folder, never an absolute path.

Replicas. Shared sessions append to the same journal from any replica, one at a
time under the session's claim; any replica rebuilds from the journal on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import os
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kernel_mcp.errors import RecordingError
from kernel_mcp.files.write import fsync_folder, write_atomically
from kernel_mcp.notebooks.model import notebook_for, setup_cell
from kernel_mcp.notebooks.store import SESSIONS, NotebookStore
from kernel_mcp.tasks import TaskOwner

__all__ = ["Recorder", "Recording", "RecordingHealth", "describe_os_error", "journal_path"]

log = logging.getLogger(__name__)

JOURNAL_FORMAT = 1
#: Cells held in memory while the disk refuses them; older ones are dropped past this.
MAX_PENDING_LINES = 1000
MAX_PENDING_BYTES = 256 * 1024 * 1024
#: While a recording is failing, the background retry runs this often, seconds.
RETRY_INTERVAL = 2.0
#: Cells this large are serialised and written off the event loop.
LARGE_CELL_CHARS = 256 * 1024


def journal_path(notebook: Path) -> Path:
    """The journal beside a recording: hidden, so the notebooks listing skips it."""
    return notebook.with_name(f".{notebook.stem}.journal")


def describe_os_error(exc: OSError) -> str:
    """Why a write failed, in words without paths."""
    reasons = {
        errno.EROFS: "the notebooks folder is read-only",
        errno.ENOSPC: "the disk is full",
        errno.EDQUOT: "the disk quota is used up",
        errno.EISDIR: "the notebook's file is a folder",
        errno.ENOTDIR: "a folder on the way is a file",
        errno.EACCES: "permission denied",
        errno.EPERM: "permission denied",
    }
    reason = reasons.get(exc.errno or 0, exc.strerror or type(exc).__name__)
    code = errno.errorcode.get(exc.errno or 0)
    return f"{reason} ({code})" if code else reason


def _line(record: dict[str, Any]) -> bytes:
    text = json.dumps(record, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    # A lone surrogate (from a cell that printed one) cannot be UTF-8 encoded. It can
    # only sit inside a JSON string, where "\udXXX" is the escape that reads it back.
    return text.encode("utf-8", "backslashreplace") + b"\n"


@dataclass(frozen=True, slots=True)
class RecordingHealth:
    """What /healthz says about recording."""

    ok: bool
    failing: dict[str, str]
    """Notebook name (``sessions/x``) → why it cannot be written right now."""
    waiting_runs: int


class Recording:
    """One session's recording: its journal, and what this process still has to write.

    Appends come from the event loop; the recorder's worker thread fsyncs and
    rebuilds. ``_lock`` orders the two around the file descriptor.
    """

    def __init__(self, store: NotebookStore, *, stem: str, path: Path | None = None) -> None:
        self.store = store
        self.stem = stem
        self.path = path
        self.runs = 0
        """Cells this process appended (every cell, for an in-process session)."""
        self.recorded = 0
        """Cells in the journal when the notebook was last built (any replica's)."""
        self.failure: str | None = None
        self.dropped = 0
        self._header: bytes | None = None
        self._pending: list[bytes] = []
        self._fd: int | None = None
        self._lock = threading.Lock()
        self._unsynced = False
        self._grown = False
        self._built_at = 0.0
        self._verified = 0
        """Journal bytes already checked to be whole JSON lines (it only grows)."""
        self._closed = False

    @property
    def name(self) -> str:
        """``sessions/<stem>``: how messages and URIs name it."""
        if self.path is None:
            return f"{SESSIONS}/{self.stem}"
        return self.store.name_of(self.path)

    @property
    def uri(self) -> str | None:
        return self.store.uri(self.path) if self.path is not None else None

    @property
    def journal(self) -> Path | None:
        return journal_path(self.path) if self.path is not None else None

    @property
    def waiting(self) -> int:
        return len(self._pending)

    # -- writing (event loop) -------------------------------------------------------
    def append(self, cell: dict[str, Any]) -> None:
        """Write one run's cell to the journal.

        Raises:
            RecordingError: the disk refused it; the cell is kept and retried.
        """
        self._append_line(_line(cell))

    def _append_line(self, line: bytes) -> None:
        with self._lock:
            self._pending.append(line)
            self._bound_pending()
            self._write_pending()

    def _bound_pending(self) -> None:
        size = sum(len(p) for p in self._pending)
        while len(self._pending) > MAX_PENDING_LINES or size > MAX_PENDING_BYTES:
            size -= len(self._pending.pop(0))
            self.dropped += 1

    def _write_pending(self) -> None:
        """Write what waits, in order; on failure keep the rest (call with the lock)."""
        try:
            fd = self._open()
            while self._pending:
                line = self._pending[0]
                start = os.fstat(fd).st_size
                try:
                    _write_all(fd, line)
                except OSError:
                    # A torn line would spoil every line after it: cut it off again.
                    with contextlib.suppress(OSError):
                        os.ftruncate(fd, start)
                    raise
                self._pending.pop(0)
                self.runs += 1
                self._unsynced = self._grown = True
        except OSError as exc:
            self._fail(describe_os_error(exc))
            raise RecordingError(self.failure_note()) from None
        if self.failure and self.failure.startswith("journal:"):
            self.failure = None

    def failure_note(self) -> str:
        waiting = len(self._pending)
        lost = f"; {self.dropped} older run(s) could not be kept" if self.dropped else ""
        return (
            f"Not recorded yet in {self.name}: {self._reason()}. This reply has the run's "
            f"whole output; {waiting} run(s) wait in memory and are written when the "
            f"notebooks folder can be written again{lost}."
        )

    def _reason(self) -> str:
        return (self.failure or "").removeprefix("journal: ").removeprefix("notebook: ")

    def _fail(self, reason: str) -> None:
        if self.failure is None:
            log.warning("recording %s is failing: %s", self.name, reason)
        self.failure = f"journal: {reason}"

    def _open(self) -> int:
        if self._fd is not None:
            info = os.fstat(self._fd)
            if info.st_nlink > 0:
                return self._fd
            # Someone removed the journal: start a new one rather than write into nothing.
            os.close(self._fd)
            self._fd = None
        if self.path is None:
            self.path = self.store.claim(SESSIONS, self.stem, mode=self.store.recording_mode)
        journal = journal_path(self.path)
        fd = os.open(
            journal,
            # Never through a symlink: the folder is shared with whoever can write it.
            os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW,
            self.store.recording_mode,
        )
        try:
            if os.fstat(fd).st_size == 0 and self._header is not None:
                _write_all(fd, self._header)
            self._terminate_torn_tail(journal, fd)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return fd

    @staticmethod
    def _terminate_torn_tail(journal: Path, fd: int) -> None:
        """A crash mid-line left bytes without a newline: end that line (it is skipped)."""
        size = os.fstat(fd).st_size
        if size == 0:
            return
        reader = os.open(journal, os.O_RDONLY | os.O_CLOEXEC)
        try:
            last = os.pread(reader, 1, size - 1)
        finally:
            os.close(reader)
        if last != b"\n":
            _write_all(fd, b"\n")

    # -- background (worker thread) -----------------------------------------------------
    def sync(self) -> None:
        """Retry what waits, then fsync what was written since the last sync."""
        with self._lock:
            if self._pending:
                with contextlib.suppress(RecordingError):
                    self._write_pending()
            if self._fd is not None and self._unsynced:
                try:
                    os.fsync(self._fd)
                    self._unsynced = False
                except OSError as exc:
                    self._fail(describe_os_error(exc))

    def due(self, now: float, interval: float) -> bool:
        return self._grown and now - self._built_at >= interval

    def text(self, location: Path | None = None) -> str:
        """The notebook as the journal has it now, set up to re-run from ``location``."""
        if self.path is None:
            raise RecordingError(self.failure_note())
        journal = journal_path(self.path)
        try:
            data = journal.read_bytes()
        except FileNotFoundError:
            data = b""
        header, cells = self._split(data)
        self.recorded = len(cells)
        metadata = dict(header.get("metadata") or notebook_for({}).metadata)
        metadata["kernel_mcp"] = {
            "session": header.get("session", self.stem),
            "journal_bytes": len(data),
            "runs": len(cells),
        }
        projects = Path(header.get("projects_dir") or self.store.root)
        setup = setup_cell(projects, location or self.path.parent)
        body = ",\n".join([_line(setup).decode().rstrip("\n"), *cells])
        return (
            '{\n "cells": [\n'
            + body
            + '\n ],\n "metadata": '
            + json.dumps(metadata, sort_keys=True, ensure_ascii=False)
            + ',\n "nbformat": 4,\n "nbformat_minor": 5\n}\n'
        )

    def _split(self, data: bytes) -> tuple[dict[str, Any], list[str]]:
        """The header and the cells' JSON lines; a torn or broken line is left out."""
        lines = data.split(b"\n")
        lines.pop()  # after the last newline: empty, or a line still being written
        header: dict[str, Any] = {}
        cells: list[str] = []
        offset = 0
        for index, raw in enumerate(lines):
            end = offset + len(raw) + 1
            text = raw.decode("utf-8", "replace")
            if index == 0 and b'"kernel_mcp_journal"' in raw:
                with contextlib.suppress(ValueError):
                    header = json.loads(text)
            elif raw:
                if end > self._verified:
                    # New since the last rebuild: check it once. Earlier lines were
                    # checked already and the journal only grows.
                    try:
                        json.loads(text)
                    except ValueError:
                        offset = end
                        continue
                cells.append(text)
            offset = end
        self._verified = max(self._verified, offset)
        return header, cells

    def rebuild(self) -> None:
        """Write the notebook from the journal (atomically). Failures are remembered."""
        if self.path is None:
            return
        self._grown = False
        self._built_at = time.monotonic()
        try:
            # Not fsynced: the journal is the durable copy, and recover() rebuilds a
            # notebook a power cut left stale or empty.
            write_atomically(self.path, self.text(), mode=self.store.recording_mode, durable=False)
        except OSError as exc:
            self._grown = True
            reason = describe_os_error(exc)
            if self.failure is None:
                log.warning("notebook %s cannot be rebuilt: %s", self.name, reason)
            if self.failure is None or self.failure.startswith("notebook:"):
                self.failure = f"notebook: {reason}"
            return
        if self.failure and self.failure.startswith("notebook:"):
            self.failure = None

    def close(self) -> None:
        with self._lock:
            self._closed = True
            if self._fd is not None:
                with contextlib.suppress(OSError):
                    if self._unsynced:
                        os.fsync(self._fd)
                os.close(self._fd)
                self._fd = None


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


class Recorder:
    """Every live recording of this process, and the one task that syncs and rebuilds them.

    Args:
        store: the notebooks folder.
        projects_dir: written into each journal's header for the re-run set-up cell.
        fsync_interval: group commit window, seconds (power-cut exposure).
        rebuild_interval: a notebook is rebuilt at most this often while it grows.
    """

    def __init__(
        self,
        store: NotebookStore,
        *,
        projects_dir: Path,
        fsync_interval: float = 0.2,
        rebuild_interval: float = 2.0,
    ) -> None:
        self.store = store
        self.projects_dir = projects_dir
        self.fsync_interval = fsync_interval
        self.rebuild_interval = rebuild_interval
        self._live: dict[int, Recording] = {}
        self._wake = asyncio.Event()
        self._tasks = TaskOwner("recorder")
        self._flusher: asyncio.Task[None] | None = None

    async def start(self) -> None:
        """Rebuild what a crash left stale, then start the background task."""
        await asyncio.to_thread(self.recover)
        if self._flusher is None:
            self._flusher = self._tasks.spawn(self._flush_forever(), name="flush")

    async def close(self) -> None:
        """Stop the background task; fsync and rebuild every live recording one last time."""
        await self._tasks.close()
        self._flusher = None
        live = list(self._live.values())
        self._live.clear()
        await asyncio.to_thread(self._finish_all, live)

    @staticmethod
    def _finish_all(recordings: list[Recording]) -> None:
        for recording in recordings:
            recording.sync()
            recording.rebuild()
            recording.close()

    # -- recordings ---------------------------------------------------------------
    def _header(
        self,
        stem: str,
        kernel_info: dict[str, Any],
        kernelspec: Mapping[str, str] | None,
        projects_dir: Path | None,
    ) -> bytes:
        return _line(
            {
                "kernel_mcp_journal": JOURNAL_FORMAT,
                "session": stem,
                "projects_dir": str(projects_dir or self.projects_dir),
                "metadata": dict(notebook_for(kernel_info, kernelspec).metadata),
            }
        )

    def create(
        self,
        stem: str,
        kernel_info: dict[str, Any],
        kernelspec: Mapping[str, str] | None = None,
        *,
        projects_dir: Path | None = None,
    ) -> Recording:
        """A new recording for a session; never reuses a file an earlier session left.

        ``kernelspec`` (name, display_name, language) is the session's own, recorded in
        the notebook's metadata so that an export re-runs on it. ``projects_dir`` is the
        session's own projects folder (its owner's workspace), which the re-run set-up
        cell changes to; None: the Recorder's.

        Blocking (it creates files): call it in a thread. A folder that cannot be
        written leaves the recording unclaimed with ``failure`` set; it is claimed
        with the first run that can be written.
        """
        recording = Recording(self.store, stem=stem)
        recording._header = self._header(stem, kernel_info, kernelspec, projects_dir)
        self._live[id(recording)] = recording
        with recording._lock:
            try:
                recording._open()
            except OSError as exc:
                recording._fail(describe_os_error(exc))
                self._wake.set()
                return recording
        recording.rebuild()
        fsync_folder(recording.path.parent if recording.path else self.store.root)
        return recording

    def attach(self, notebook: str) -> Recording:
        """The recording at ``notebook`` (relative to the folder), written by any replica."""
        path = self.store.root / notebook
        recording = Recording(self.store, stem=path.stem, path=path)
        self._live[id(recording)] = recording
        return recording

    def append(self, recording: Recording, cell: dict[str, Any]) -> None:
        """Record one run. Raises RecordingError (the cell is kept and retried)."""
        try:
            recording.append(cell)
        finally:
            self._wake.set()

    async def append_async(self, recording: Recording, cell: dict[str, Any]) -> None:
        """``append``, off the event loop when the cell is large."""
        if _approx_chars(cell) < LARGE_CELL_CHARS:
            self.append(recording, cell)
            return
        line = await asyncio.to_thread(_line, cell)
        try:
            await asyncio.to_thread(recording._append_line, line)
        finally:
            self._wake.set()

    async def text(self, recording: Recording, location: Path | None = None) -> str:
        """The notebook, current to its last completed run, as JSON text."""
        await asyncio.to_thread(recording.sync)
        return await asyncio.to_thread(recording.text, location)

    async def export(self, recording: Recording, name: str, *, overwrite: bool) -> Path:
        """Write the recording to ``<notebooks>/<name>.ipynb`` (set up to re-run there)."""
        text = await self.text(recording, self.store.root)
        return await asyncio.to_thread(self.store.export, text, name, overwrite=overwrite)

    async def finish(self, recording: Recording) -> None:
        """The session ended: write everything, rebuild, close."""
        self._live.pop(id(recording), None)
        await asyncio.to_thread(self._finish_all, [recording])

    def release(self, recording: Recording) -> None:
        """Stop tracking an attached recording (shared sessions); its file stays."""
        self._live.pop(id(recording), None)
        recording.close()

    def health(self) -> RecordingHealth:
        failing = {r.name: r._reason() for r in self._live.values() if r.failure}
        waiting = sum(r.waiting for r in self._live.values())
        return RecordingHealth(ok=not failing, failing=failing, waiting_runs=waiting)

    # -- background -------------------------------------------------------------------
    async def _flush_forever(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            # Group commit: runs that finish within the window share one fsync.
            await asyncio.sleep(self.fsync_interval)
            later = await asyncio.to_thread(self._flush_once)
            if later is not None:
                asyncio.get_running_loop().call_later(later, self._wake.set)

    def _flush_once(self) -> float | None:
        """Sync every recording and rebuild the ones due; when to come back, if ever."""
        now = time.monotonic()
        come_back: float | None = None
        for recording in list(self._live.values()):
            recording.sync()
            if recording.due(now, self.rebuild_interval):
                recording.rebuild()
            if recording._grown:
                wait = max(0.05, self.rebuild_interval - (time.monotonic() - recording._built_at))
                come_back = wait if come_back is None else min(come_back, wait)
            if recording.failure:
                come_back = RETRY_INTERVAL if come_back is None else min(come_back, RETRY_INTERVAL)
        return come_back

    def recover(self) -> list[str]:
        """Rebuild every notebook that is not current with its journal.

        After a SIGKILL a notebook misses the runs since its last rebuild; after a
        power cut it may be empty or torn (rebuilds are not fsynced). Both show:
        the notebook does not parse, or its ``journal_bytes`` is not the journal's size.
        """
        folder = self.store.root / SESSIONS
        rebuilt: list[str] = []
        try:
            journals = sorted(folder.glob(".*.journal"))
        except OSError:
            return rebuilt
        for journal in journals:
            notebook = journal.with_name(journal.name[1:].removesuffix(".journal") + ".ipynb")
            try:
                stale = _built_from(notebook) != journal.stat().st_size
            except OSError:
                continue
            if not stale:
                continue
            recording = Recording(self.store, stem=notebook.stem, path=notebook)
            recording.rebuild()
            if recording.failure is None:
                rebuilt.append(recording.name)
                log.info("rebuilt %s from its journal", recording.name)
        return rebuilt


def _built_from(notebook: Path) -> int | None:
    """The journal size a notebook was built from (None: missing, torn, or not ours)."""
    try:
        data = json.loads(notebook.read_bytes())
        return int(data["metadata"]["kernel_mcp"]["journal_bytes"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _approx_chars(cell: dict[str, Any]) -> int:
    total = len(cell.get("source", ""))
    for output in cell.get("outputs", []):
        text = output.get("text")
        if isinstance(text, str):
            total += len(text)
        for value in (output.get("data") or {}).values():
            total += len(value) if isinstance(value, str) else 64
        total += sum(len(line) for line in output.get("traceback", []))
    return total
