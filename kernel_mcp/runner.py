"""The domain's front door: run files, snippets and notebooks, fresh or in sessions.

``Runner`` owns the kernel backend, the warm pool, the session registry and
the notebooks folder, and every background task they start. It knows nothing
of MCP: the server module translates its results and exceptions.
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from collections.abc import AsyncIterator, Coroutine
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kernel_mcp.backend import KernelBackend, LocalBackend
from kernel_mcp.config import Settings
from kernel_mcp.errors import FileNotFound, InvalidArgument
from kernel_mcp.kernel import Execution, Kernel, ProgressCallback
from kernel_mcp.notebook import (
    NotebookRun,
    NotebookStore,
    Recording,
    code_cell,
    execute_notebook,
    inject_parameters,
    notebook_for,
    parse_notebook,
    read_recording,
)
from kernel_mcp.paths import ProjectFile, list_project_files, read_project_file
from kernel_mcp.pool import KernelPool
from kernel_mcp.sessions import Session, SessionRegistry, SharedSessionRegistry
from kernel_mcp.state import SharedState, StateUnavailable

__all__ = ["NotebookOutcome", "RunOutcome", "Runner"]

log = logging.getLogger(__name__)


@dataclass
class RunOutcome:
    """One run of a file or snippet, with what the reply should mention."""

    execution: Execution
    file: str | None = None
    session_id: str | None = None
    notebook_uri: str | None = None
    notebook_path: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class NotebookOutcome:
    run: NotebookRun
    path: Path
    uri: str
    source: str
    session_id: str | None = None
    notes: list[str] = field(default_factory=list)


def make_backend(settings: Settings) -> KernelBackend:
    """The kernel backend the settings ask for: a gateway if one is named, else local."""
    if settings.gateway_url:
        from kernel_mcp.gateway import GatewayBackend

        return GatewayBackend(settings)
    return LocalBackend(settings)


def _file_preamble(project: ProjectFile, projects_dir: Path) -> str:
    """Set-up that makes a cell run like ``python file.py`` from the projects folder."""
    file = str(project.path)
    folder = str(project.path.parent)
    return (
        "import os as _kmcp_os, sys as _kmcp_sys\n"
        # A remote kernel may not have the folder; it then keeps its own cwd.
        f"try: _kmcp_os.chdir({str(projects_dir)!r})\nexcept OSError: pass\n"
        f"_kmcp_sys.argv = [{file!r}]\n"
        f"if {folder!r} not in _kmcp_sys.path: _kmcp_sys.path.insert(0, {folder!r})\n"
        f"__file__ = {file!r}\n"
        "__name__ = '__main__'\n"
        "del _kmcp_os, _kmcp_sys\n"
    )


class Runner:
    """Runs code for callers. Use as ``async with Runner(settings) as runner``."""

    def __init__(self, settings: Settings, backend: KernelBackend | None = None) -> None:
        self.settings = settings
        self.backend = backend or make_backend(settings)
        self.pool = KernelPool(self.backend, size=settings.pool_size, preload=settings.preload)
        self.sessions: SessionRegistry
        if settings.state_url:
            # Replicas share sessions: records in Redis, kernels on the gateway,
            # recordings in the (shared) notebooks folder.
            self.sessions = SharedSessionRegistry(
                self.pool,
                state=SharedState(settings.state_url),
                backend=self.backend,
                lease_ttl=settings.lease_ttl,
                max_sessions=settings.max_sessions,
                idle_timeout=settings.session_idle_timeout,
                on_close=self._session_closed,
                on_create=self._shared_session_created,
            )
        else:
            self.sessions = SessionRegistry(
                self.pool,
                max_sessions=settings.max_sessions,
                idle_timeout=settings.session_idle_timeout,
                on_close=self._session_closed,
            )
        self.notebooks = NotebookStore(settings.notebooks_dir)
        self._recordings: dict[str, Recording] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Each fresh run is a kernel process: bound how many run at once.
        self._fresh = asyncio.Semaphore(settings.max_fresh_runs)

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        # Sessions first: with shared state this checks Redis, before any kernel starts.
        await self.sessions.start()
        await self.pool.start()

    async def close(self) -> None:
        """Shut every kernel down and wait for every background task."""
        await self.sessions.close()
        await self.pool.close()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.backend.close()

    @contextlib.asynccontextmanager
    async def _fresh_kernel(self) -> AsyncIterator[Kernel]:
        """A never-used kernel for one run, within the fresh-run cap; killed afterwards."""
        async with self._fresh:
            # The replacement starts after the run: on 2 cores a kernel start (0.5 s
            # of CPU) next to the run slowed it by ~15 ms (docs/benchmarks.md).
            kernel = await self.pool.acquire(refill_now=False)
            try:
                yield kernel
            finally:
                # Fresh kernels serve one run only. Stopping it need not delay the reply.
                self._spawn(kernel.shutdown(now=True))
                self.pool.refill()

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- files -------------------------------------------------------------------
    def read_file(self, file_name: str, *, suffixes: tuple[str, ...] = (".py",)) -> ProjectFile:
        return read_project_file(
            self.settings.projects_dir,
            file_name,
            suffixes=suffixes,
            max_bytes=self.settings.max_file_bytes,
        )

    def list_files(self, pattern: str) -> list[str]:
        return list_project_files(self.settings.projects_dir, pattern)

    # -- running -----------------------------------------------------------------
    async def run_file(
        self,
        file_name: str,
        *,
        owner: str | None,
        timeout: float | None = None,
        session_id: str | None = None,
        progress: ProgressCallback | None = None,
        save_notebook: bool = False,
    ) -> RunOutcome:
        """Run a .py file from the projects folder, as ``python file.py`` would."""
        project = self.read_file(file_name)
        source = f"# {project.relative}\n{project.source}"
        preamble = _file_preamble(project, self.settings.projects_dir)
        outcome = await self._run(
            project.source,
            record_as=source,
            preamble=preamble,
            tool="run_python",
            owner=owner,
            timeout=timeout,
            session_id=session_id,
            progress=progress,
            save_notebook=save_notebook,
            stem=Path(project.relative).stem,
        )
        outcome.file = project.relative
        return outcome

    async def run_code(
        self,
        code: str,
        *,
        owner: str | None,
        timeout: float | None = None,
        session_id: str | None = None,
        progress: ProgressCallback | None = None,
        save_notebook: bool = False,
    ) -> RunOutcome:
        """Run a snippet, in a fresh kernel or in a session."""
        if len(code.encode("utf-8", "surrogatepass")) > self.settings.max_file_bytes:
            raise InvalidArgument(
                f"code is larger than {self.settings.max_file_bytes} bytes "
                "(KERNEL_MCP_MAX_FILE_BYTES)"
            )
        return await self._run(
            code,
            record_as=code,
            preamble=None,
            tool="run_code",
            owner=owner,
            timeout=timeout,
            session_id=session_id,
            progress=progress,
            save_notebook=save_notebook,
            stem="code",
        )

    async def _run(
        self,
        code: str,
        *,
        record_as: str,
        preamble: str | None,
        tool: str,
        owner: str | None,
        timeout: float | None,
        session_id: str | None,
        progress: ProgressCallback | None,
        save_notebook: bool,
        stem: str,
    ) -> RunOutcome:
        limit = self.settings.clamp_timeout(timeout)
        grace = self.settings.interrupt_grace

        async def execute(kernel: Kernel) -> Execution:
            if preamble:
                await kernel.run_silently(preamble)
            return await kernel.execute(code, timeout=limit, grace=grace, progress=progress)

        if session_id is None:
            async with self._fresh_kernel() as kernel:
                execution = await execute(kernel)
            outcome = RunOutcome(execution)
            if save_notebook:
                nb = notebook_for(kernel.kernel_info)
                nb.cells.append(code_cell(record_as, execution, tool))
                path = await asyncio.to_thread(self.notebooks.save_single, stem, nb)
                outcome.notebook_path, outcome.notebook_uri = path, self.notebooks.uri(path)
                outcome.notes.append(f"Saved as {path} ({outcome.notebook_uri}).")
            return outcome

        async def in_session(session: Session, kernel: Kernel) -> RunOutcome:
            notes = []
            if session.lost_state:
                notes.append(f"New kernel: {session.lost_state}.")
                session.lost_state = None
            execution = await execute(kernel)
            recording = await self._recording(session, kernel)
            await asyncio.to_thread(recording.add, record_as, execution, tool)
            if execution.kernel_replaced:
                notes.append("The session's kernel was lost; the next call starts a new one.")
            return RunOutcome(
                execution,
                session_id=session.id,
                notes=notes,
                notebook_uri=self.notebooks.uri(recording.path),
                notebook_path=recording.path,
            )

        return await self.sessions.use(owner, session_id, in_session)

    # -- sessions ----------------------------------------------------------------
    async def create_session(self, *, owner: str | None, name: str | None = None) -> Session:
        session = await self.sessions.create(owner, name)
        assert session.kernel is not None
        if not self.sessions.shared:
            await self._recording(session, session.kernel)
        return session

    async def _shared_session_created(self, session: Session) -> None:
        """Shared state: the recording is made before the record, which names it."""
        assert session.kernel is not None
        recording = await asyncio.to_thread(
            self.notebooks.new_recording, session.name, session.kernel.kernel_info
        )
        session.notebook = recording.path.relative_to(self.notebooks.root).as_posix()

    def session_notebook_uri(self, session_id: str, notebook: str | None = None) -> str | None:
        if notebook is not None:
            return self.notebooks.uri(self.notebooks.root / notebook)
        recording = self._recordings.get(session_id)
        return self.notebooks.uri(recording.path) if recording else None

    async def _recording(self, session: Session, kernel: Kernel) -> Recording:
        if self.sessions.shared:
            # Another replica may have appended since: start from what is on disk.
            # The caller holds the session's lease, so nobody writes meanwhile.
            assert session.notebook is not None
            path = self.notebooks.root / session.notebook
            return await asyncio.to_thread(read_recording, path, kernel.kernel_info)
        recording = self._recordings.get(session.id)
        if recording is None:
            recording = await asyncio.to_thread(
                self.notebooks.new_recording, session.name, kernel.kernel_info
            )
            self._recordings[session.id] = recording
        return recording

    async def _session_closed(self, session: Session) -> None:
        self._recordings.pop(session.id, None)

    def session_recording(self, owner: str | None, session_id: str) -> Recording:
        session = self.sessions.get(owner, session_id)
        recording = self._recordings.get(session.id)
        if recording is None:  # pragma: no cover - created with the session
            raise InvalidArgument("this session has no recording yet")
        return recording

    async def export_notebook(
        self, *, owner: str | None, session_id: str, name: str | None, overwrite: bool
    ) -> tuple[Path, str, int]:
        """Copy a session's notebook into the notebooks folder. Returns (path, uri, cells)."""
        if self.sessions.shared:
            async with self.sessions.hold(owner, session_id) as held:
                assert held.notebook is not None
                recording = await asyncio.to_thread(
                    read_recording, self.notebooks.root / held.notebook, {}
                )
                path = await asyncio.to_thread(
                    self.notebooks.export, recording, name or held.name, overwrite=overwrite
                )
            return path, self.notebooks.uri(path), recording.cells
        session = self.sessions.get(owner, session_id)
        recording = self.session_recording(owner, session_id)
        target = name or session.name
        async with session.lock:  # not in the middle of a run's write
            path = await asyncio.to_thread(
                self.notebooks.export, recording, target, overwrite=overwrite
            )
        return path, self.notebooks.uri(path), recording.cells

    # -- notebooks ---------------------------------------------------------------
    def _mine(self, owner: str | None) -> dict[str, str]:
        """This process's recordings of ``owner``'s live sessions: id → notebook name."""
        ids = {s.id for s in self.sessions.list(owner)}
        return {
            sid: self.notebooks.uri(rec.path).removeprefix("notebook://")
            for sid, rec in self._recordings.items()
            if sid in ids
        }

    async def owned_notebooks(self, owner: str | None) -> dict[str, str]:
        """Recordings of ``owner``'s live sessions (id → notebook name), any replica's."""
        if not self.sessions.shared:
            return self._mine(owner)
        try:
            sessions = await self.sessions.owned(owner)
        except StateUnavailable as exc:
            # Shared notebooks stay readable; session recordings are hidden meanwhile.
            log.warning("session recordings hidden: %s", exc)
            return {}
        return {s.id: s.notebook.removesuffix(".ipynb") for s in sessions if s.notebook}

    def _private(self, owner: str | None, name: str, mine: dict[str, str] | None = None) -> bool:
        """With auth on, a session recording is visible only to its live session's owner."""
        if not self.settings.tokens or not name.startswith("sessions/"):
            return False
        mine = self._mine(owner) if mine is None else mine
        return name not in set(mine.values())

    def notebook_names(self, owner: str | None, mine: dict[str, str] | None = None) -> list[str]:
        """Notebooks in the notebooks folder that ``owner`` may read."""
        mine = self._mine(owner) if mine is None else mine
        return [n for n in self.notebooks.list() if not self._private(owner, n, mine)]

    def read_notebook(
        self, owner: str | None, name: str, mine: dict[str, str] | None = None
    ) -> str:
        """A notebook's JSON by its listed name (``report``, ``sessions/x``, ``runs/y``).

        ``mine`` is ``owned_notebooks(owner)``, looked up beforehand (shared state).
        """
        mine = self._mine(owner) if mine is None else mine
        if name.startswith("sessions/"):
            session_id = name.removeprefix("sessions/")
            if session_id in mine:
                path = self.notebooks.root / f"{mine[session_id]}.ipynb"
                return path.read_text(encoding="utf-8")
        if self._private(owner, name.removesuffix(".ipynb"), mine):
            raise FileNotFound(f"No notebook {name!r}.")
        return self.notebooks.read(name)

    async def run_notebook(
        self,
        notebook_path: str,
        *,
        owner: str | None,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
    ) -> NotebookOutcome:
        """Execute a notebook from the projects folder; save the executed copy."""
        project = self.read_file(notebook_path, suffixes=(".ipynb",))
        nb = parse_notebook(project.source, project.relative)
        nb = copy.deepcopy(nb)
        if parameters:
            if not isinstance(parameters, dict):
                raise InvalidArgument("parameters must be an object of name: JSON value")
            inject_parameters(nb, parameters)
        cell_timeout = self.settings.clamp_timeout(timeout)
        total = self.settings.notebook_timeout
        grace = self.settings.interrupt_grace
        stem = Path(project.relative).stem

        async def execute(kernel: Kernel) -> NotebookRun:
            run_nb = nb
            if not session_id:
                meta = notebook_for(kernel.kernel_info).metadata
                run_nb.metadata.update(meta)
            return await execute_notebook(
                kernel,
                run_nb,
                cell_timeout=cell_timeout,
                total_timeout=total,
                grace=grace,
                allow_errors=allow_errors,
            )

        notes: list[str] = []
        if session_id is None:
            async with self._fresh_kernel() as kernel:
                run = await execute(kernel)
        else:

            async def in_session(session: Session, kernel: Kernel) -> NotebookRun:
                if session.lost_state:
                    notes.append(f"New kernel: {session.lost_state}.")
                    session.lost_state = None
                run = await execute(kernel)
                # The session's own notebook records what ran in its kernel.
                recording = await self._recording(session, kernel)
                ran = {c.index for c in run.cells if c.status not in ("skipped", "not_run")}
                for index in sorted(ran):
                    recording.nb.cells.append(copy.deepcopy(run.nb.cells[index]))
                await asyncio.to_thread(recording.save)
                return run

            run = await self.sessions.use(owner, session_id, in_session)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        path = await asyncio.to_thread(
            self.notebooks.save_single, f"{stem}.executed-{stamp}", run.nb
        )
        return NotebookOutcome(
            run=run,
            path=path,
            uri=self.notebooks.uri(path),
            source=project.relative,
            session_id=session_id,
            notes=notes,
        )
