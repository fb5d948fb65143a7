"""Each session's recording, and which notebooks a principal may read.

A session's runs are recorded in its own notebook (``notebooks.recording``): made
when the session is created (before its record, which names it), appended to
after each run, finished when it ends. With tokens a recording is private to the
owner of the live session (``notebooks.store.NotebookStore.readable``); everything
else in the notebooks folder is shared.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

from kernel_mcp.errors import (
    FileNotFound,
    KernelMCPError,
    NotebookUnwritable,
    RecordingError,
    StateUnavailable,
)
from kernel_mcp.files.workspaces import Workspaces
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.kernelspecs import KernelCatalog
from kernel_mcp.notebooks.model import gap_cell
from kernel_mcp.notebooks.recording import Recorder, Recording, describe_os_error
from kernel_mcp.notebooks.store import NotebookStore
from kernel_mcp.sessions.records import Session

__all__ = ["SessionRecordings", "noting_gaps"]

log = logging.getLogger(__name__)


class SessionRecordings:
    """The recordings of the sessions this process serves, by session id.

    Its ``created``, ``closed`` and ``forgotten`` are the session registry's hooks.
    """

    def __init__(
        self,
        store: NotebookStore,
        recorder: Recorder,
        *,
        kernels: KernelCatalog,
        workspaces: Workspaces,
    ) -> None:
        self.store = store
        self.recorder = recorder
        self.kernels = kernels
        self.workspaces = workspaces
        self._live: dict[str, Recording] = {}

    # -- the registry's hooks -----------------------------------------------------
    async def created(self, session: Session) -> None:
        """The recording is made before the session's record, which names it."""
        assert session.kernel is not None
        recording = await self._create(session, session.kernel)
        self._live[session.id] = recording
        if recording.path is not None:
            session.notebook = recording.path.relative_to(self.store.root).as_posix()

    async def closed(self, session: Session) -> None:
        recording = self._live.pop(session.id, None)
        if recording is not None:
            await self.recorder.finish(recording)

    def forgotten(self, session: Session) -> None:
        """Another replica ended the session: stop tracking its recording here."""
        recording = self._live.pop(session.id, None)
        if recording is not None:
            self.recorder.release(recording)

    # -- recording runs --------------------------------------------------------------
    async def recording(self, session: Session, kernel: Kernel) -> Recording:
        """The session's recording: this process's, or attached by name (another
        replica created it; any replica appends, one call at a time)."""
        recording = self._live.get(session.id)
        if recording is None and session.notebook is not None:
            recording = self.recorder.attach(session.notebook)
        if recording is None:
            # The folder refused it at create time: claim a name now.
            recording = await self._create(session, kernel)
        if recording.path is not None and session.notebook is None:
            session.notebook = recording.path.relative_to(self.store.root).as_posix()
        self._live[session.id] = recording
        return recording

    async def record(
        self, session: Session, recording: Recording, cells: list[dict[str, Any]]
    ) -> list[str]:
        """Append a run's cells to the session's recording; what went wrong, as notes.

        Where a cell's execution count is past the one after the last recorded cell's,
        someone else ran code in the kernel between them: a note cell says so.
        """
        cells = noting_gaps(session, cells)
        try:
            # A call that lost its claim (another replica serves the session) must not write.
            session.check_held()
            for cell in cells:
                await self.recorder.append_async(recording, cell)
        except RecordingError as exc:
            return [str(exc)]
        except StateUnavailable as exc:
            return [f"Not recorded: {exc}"]
        if recording.failure:
            return [
                f"The notebook {recording.name} cannot be rebuilt right now "
                f"({recording.failure.split(': ', 1)[-1]}); the run is kept in its journal."
            ]
        return []

    async def _create(self, session: Session, kernel: Kernel) -> Recording:
        return await asyncio.to_thread(
            self.recorder.create,
            session.name,
            kernel.kernel_info,
            self.kernels.notebook_metadata(session.record.kernel_name),
            projects_dir=self.workspaces.folder(session.owner),
        )

    # -- what a session's view says ------------------------------------------------
    def uri(self, session_id: str, notebook: str | None = None) -> str | None:
        """The notebook:// URI of a session's recording (``notebook``: as its record says)."""
        if notebook is not None:
            return self.store.uri(self.store.root / notebook)
        recording = self._live.get(session_id)
        return recording.uri if recording else None

    def notes(self, session_id: str) -> list[str]:
        """What a session's view should say about its recording (a failing disk)."""
        recording = self._live.get(session_id)
        if recording is None or not recording.failure:
            return []
        return [recording.failure_note()]

    # -- exports and reads -----------------------------------------------------------
    async def export(self, held: Session, name: str | None, *, overwrite: bool) -> tuple[Path, int]:
        """Copy a held session's notebook into the notebooks folder: (path, runs recorded).

        Raises:
            NotebookUnwritable: the folder refused the export (the message says why).
        """
        recording = self._live.get(held.id)
        if recording is None and held.notebook is not None:
            recording = self.recorder.attach(held.notebook)
            self._live[held.id] = recording
        if recording is None or recording.path is None:
            raise NotebookUnwritable(
                "The session has no recording on disk yet: "
                + (recording.failure_note() if recording else "nothing was recorded.")
            )
        try:
            path = await self.recorder.export(recording, name or held.name, overwrite=overwrite)
        except OSError as exc:
            raise NotebookUnwritable(
                f"The export could not be written: {describe_os_error(exc)}."
            ) from None
        return path, recording.recorded

    def names(self, sessions: list[Session]) -> dict[str, str]:
        """The recordings of ``sessions`` (one principal's live ones): id → notebook name."""
        mine = {}
        for session in sessions:
            recording = self._live.get(session.id)
            if session.notebook:
                mine[session.id] = session.notebook.removesuffix(".ipynb")
            elif recording is not None and recording.path is not None:
                # Claimed late (the folder refused it at first): the record says so next run.
                mine[session.id] = recording.name
        return mine

    def readable(self, mine: dict[str, str]) -> list[str]:
        """Notebooks in the notebooks folder that the owner of ``mine`` may read.

        ``mine`` is :meth:`names` of their live sessions.
        """
        allowed = set(mine.values())
        return [n for n in self.store.list() if self.store.readable(n, allowed)]

    async def read(self, name: str, mine: dict[str, str]) -> str:
        """A notebook's JSON by its listed name (``report``, ``sessions/x``, ``runs/y``), for
        the owner of ``mine``. A session recording is rebuilt from its journal first, so it is
        current to its last completed run.

        Raises:
            FileNotFound: no such notebook, or not one this owner may read.
        """
        name = name.removesuffix(".ipynb")
        if name.startswith("sessions/"):
            key = name.removeprefix("sessions/")
            if key in mine:  # by session id
                name = mine[key]
            if name in mine.values():
                return await self._recording_text(name)
        if not self.store.readable(name, set(mine.values())):
            raise FileNotFound(f"No notebook {name!r}.")
        if name.startswith("sessions/"):
            # A closed session's recording (no token: everyone's): rebuilt from its journal.
            with contextlib.suppress(KernelMCPError, OSError):
                return await self._recording_text(name)
        return await asyncio.to_thread(self.store.read, name)

    async def _recording_text(self, name: str) -> str:
        live = next((r for r in self._live.values() if r.name == name), None)
        if live is not None:
            return await self.recorder.text(live)
        path = self.store.path_of(name)
        recording = Recording(self.store, stem=path.stem, path=path)
        if recording.journal is None or not recording.journal.exists():
            return await asyncio.to_thread(self.store.read, name)
        return await asyncio.to_thread(recording.text)


def noting_gaps(session: Session, cells: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """``cells`` with a note before each whose execution count skips some (``gap_cell``);
    the session's record keeps the last count (None when a cell has none)."""
    noted: list[dict[str, Any]] = []
    last = session.record.execution_count
    for cell in cells:
        if cell.get("cell_type") == "code":
            count = cell.get("execution_count")
            if isinstance(count, int) and last is not None and count > last + 1:
                noted.append(gap_cell(last, count))
            last = count if isinstance(count, int) else None
        noted.append(cell)
    session.record.execution_count = last
    return noted
