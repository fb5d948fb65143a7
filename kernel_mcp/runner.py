"""The domain's front door: run files, snippets and notebooks, fresh or in sessions.

``Runner`` owns the kernel backend, the warm pool, the session registry, the
notebooks folder and its recorder, and every background task they start. It
knows nothing of MCP: the server layer translates its results and exceptions.

A run that executed always gets its reply. What happens around it (recording,
saving a copy) may fail on a broken disk; that becomes a note in the reply,
never an error that throws the run's output away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from nbformat import NotebookNode

from kernel_mcp.admission import admission_for
from kernel_mcp.config import Settings
from kernel_mcp.deployment import Deployment, deployment_for
from kernel_mcp.errors import (
    FileNotFound,
    InvalidArgument,
    KernelMCPError,
    NotebookUnwritable,
    RecordingError,
    StateUnavailable,
)
from kernel_mcp.kernel import (
    NO_STDIN_MESSAGE,
    Execution,
    Kernel,
    OutputCallback,
    ProgressCallback,
)
from kernel_mcp.kernelspecs import KernelCatalog
from kernel_mcp.notebook import (
    NotebookRun,
    code_cell,
    execute_notebook,
    file_cell_source,
    inject_parameters,
    notebook_for,
    parse_notebook,
    setup_cell,
)
from kernel_mcp.notebook_store import RUNS, NotebookStore
from kernel_mcp.paths import (
    FileListing,
    ProjectFile,
    WrittenFile,
    list_project_files,
    read_project_file,
    write_project_file,
)
from kernel_mcp.pool import KernelPool, KernelPools
from kernel_mcp.questions import Asking, QuestionHandler
from kernel_mcp.recording import Recorder, Recording, describe_os_error
from kernel_mcp.runs import RUNS_MARKERS, Run, RunHooks, RunRegistry
from kernel_mcp.sessions import Session, SessionRegistry
from kernel_mcp.tasks import wait_within
from kernel_mcp.workspaces import MIB, QuotaWatch, Workspaces

__all__ = [
    "NotebookOutcome",
    "NotebookRequest",
    "RunOptions",
    "RunOutcome",
    "RunRequest",
    "Runner",
]

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a caller asks of a run of a file or snippet, whatever the code is."""

    owner: str | None = None
    """The principal the run (and its session) belongs to."""
    timeout: float | None = None
    session_id: str | None = None
    progress: ProgressCallback | None = None
    save_notebook: bool = False
    kernel: str | None = None
    """A kernelspec other than the default (a fresh run's; a session keeps its own)."""
    background: bool = False
    """Its time limit is KERNEL_MCP_BACKGROUND_MAX_TIMEOUT's (and so is its default)."""


@dataclass(frozen=True, kw_only=True)
class RunRequest(RunOptions):
    """One run of a file or snippet: the caller's options, what runs, how it is recorded."""

    code: str
    tool: str
    record_as: str
    """The cell source a notebook records (a file's set-up line, then its source)."""
    preamble: str | None = None
    """Set-up run silently first (``python file.py``'s __file__, argv, sys.path)."""
    file: str | None = None
    stem: str = "code"
    on_output: OutputCallback | None = None
    stdin: QuestionHandler | None = None
    """Who answers the code's input(); None: input() raises at once, saying ``no_input``."""
    no_input: str = NO_STDIN_MESSAGE
    """Why input() cannot be answered when ``stdin`` is None (the client, or background)."""

    @property
    def label(self) -> str:
        return self.file or "code"


@dataclass(frozen=True)
class NotebookRequest:
    """One run of a notebook from the projects folder, parameters already injected."""

    nb: NotebookNode
    source: str
    """The notebook, relative to the projects folder."""
    owner: str | None
    session_id: str | None = None
    timeout: float | None = None
    allow_errors: bool = False
    kernel: str | None = None
    background: bool = False
    on_output: OutputCallback | None = None
    stdin: QuestionHandler | None = None
    no_input: str = NO_STDIN_MESSAGE

    @property
    def label(self) -> str:
        return self.source


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
    path: Path | None
    uri: str | None
    source: str
    session_id: str | None = None
    notes: list[str] = field(default_factory=list)


def as_program_exit(execution: Execution) -> Execution:
    """A file that called ``sys.exit()`` ended as ``python file.py`` would: code 0 is ok.

    IPython reports every SystemExit as an error; a script's ``sys.exit(0)`` (or
    ``sys.exit()``) is its normal end, any other code a failure.
    """
    error = execution.error
    if execution.status != "error" or error is None or error.get("ename") != "SystemExit":
        return execution
    code = str(error.get("evalue", "")).strip()
    if code in ("", "0", "None", "False"):
        outputs = [o for o in execution.outputs if o is not error]
        note = "The program ended with sys.exit(0)."
        return replace(
            execution, status="ok", error=None, outputs=outputs, notes=[*execution.notes, note]
        )
    note = f"The program ended with sys.exit({code}): a failure, as for `python file.py`."
    return replace(execution, notes=[*execution.notes, note])


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

    def __init__(self, settings: Settings, deployment: Deployment | None = None) -> None:
        self.settings = settings
        self.deployment = deployment or deployment_for(settings)
        self.backend = self.deployment.backend
        self.workspaces = Workspaces(
            settings.projects_dir,
            per_principal=settings.per_principal_projects,
            quota_bytes=settings.projects_quota_mb * MIB,
        )
        self.pools = KernelPools(
            self.backend,
            size=settings.pool_size,
            preload=settings.preload,
            workspace_of=self._kernel_workspace,
            default=None if self.workspaces.per_principal else settings.projects_dir,
            admission=admission_for(settings),
        )
        self.sessions = SessionRegistry(
            self.pools,
            self.deployment.store,
            kernels=self.deployment.kernels,
            max_sessions=settings.max_sessions,
            idle_timeout=settings.session_idle_timeout,
            on_create=self._session_created,
            on_close=self._session_closed,
            on_forget=self._session_forgotten,
        )
        self.notebooks = NotebookStore(
            settings.notebooks_dir, private_recordings=bool(settings.tokens)
        )
        self.recorder = Recorder(self.notebooks, projects_dir=settings.projects_dir)
        self.kernels = KernelCatalog(settings, local=not settings.gateway_url)
        markers = settings.notebooks_dir / RUNS_MARKERS
        if self.deployment.replica is not None:
            # Replicas share the notebooks folder; each one's runs are its own.
            markers = markers / self.deployment.replica
        self.runs = RunRegistry(
            retention=settings.run_retention, markers=markers, replica=self.deployment.replica
        )
        self._recordings: dict[str, Recording] = {}
        self._background: set[asyncio.Task[Any]] = set()
        # Each fresh run is a kernel process: bound how many run at once.
        self._fresh = asyncio.Semaphore(settings.max_fresh_runs)

    @property
    def open_world(self) -> bool:
        """Whether code the kernels run can reach beyond this server: yes, unless they are
        sandboxed with the network off (a gateway's kernels: assume they can)."""
        return not (self.backend.sandboxed and not self.settings.sandbox_network)

    async def __aenter__(self) -> Runner:
        await self.start()
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def start(self) -> None:
        # Sessions first: a shared store checks Redis before any kernel starts.
        await self.sessions.start()
        await self.recorder.start()
        await self.runs.start()
        await self.pools.start()

    @property
    def pool(self) -> KernelPool:
        """The warm pool of the principal-less workspace (benchmarks and tests)."""
        return self.pools.pool(None)

    def _kernel_workspace(self, owner: str | None) -> Path | None:
        """The folder a kernel for ``owner`` is started for. A remote kernel sees no
        local folder, so one pool serves every principal there."""
        if not self.backend.local:
            return None
        return self.workspaces.folder(owner)

    async def close(self) -> None:
        """Stop every run, shut every kernel down, write every recording, wait for every task."""
        await self.runs.close()
        await self.sessions.close()
        await self.pools.close()
        while self._background:
            await asyncio.gather(*list(self._background), return_exceptions=True)
        await self.recorder.close()
        await self.backend.close()

    @contextlib.asynccontextmanager
    async def _fresh_kernel(
        self, kernel_name: str | None = None, owner: str | None = None
    ) -> AsyncIterator[Kernel]:
        """A never-used kernel for one run, within the fresh-run cap; killed afterwards."""
        async with self._fresh:
            # The replacement starts after the run: on 2 cores a kernel start (0.5 s
            # of CPU) next to the run slowed it by ~15 ms (docs/benchmarks.md).
            kernel = await self.pools.acquire(
                owner=owner, refill_now=False, kernel_name=kernel_name
            )
            try:
                yield kernel
            finally:
                # Fresh kernels serve one run only. Stopping it need not delay the reply.
                self._spawn(kernel.shutdown(now=True))
                self.pools.refill(owner)

    def _spawn(self, coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.ensure_future(coro)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    # -- files -------------------------------------------------------------------
    def read_file(
        self, file_name: str, *, owner: str | None, suffixes: tuple[str, ...] = (".py",)
    ) -> ProjectFile:
        return read_project_file(
            self.workspaces.folder(owner),
            file_name,
            suffixes=suffixes,
            max_bytes=self.settings.max_file_bytes,
            allow_hardlinks=self.settings.allow_hardlinks,
        )

    def read_text(self, name: str, *, owner: str | None) -> ProjectFile:
        """A text file the agent may read back (the write_file endings), through the guard."""
        return read_project_file(
            self.workspaces.folder(owner),
            name,
            suffixes=tuple(self.settings.write_suffixes),
            max_bytes=self.settings.max_file_bytes,
            allow_hardlinks=self.settings.allow_hardlinks,
            action="read",
        )

    def write_file(
        self, name: str, content: str, *, owner: str | None, overwrite: bool
    ) -> WrittenFile:
        """Write a text file beneath the owner's projects folder (atomic, through no symlink).

        Blocking: call it in a thread.

        Raises:
            QuotaExceeded: the folder would go over KERNEL_MCP_PROJECTS_QUOTA_MB.
        """
        self.workspaces.check_room(owner, len(content.encode("utf-8", "surrogatepass")))
        return write_project_file(
            self.workspaces.folder(owner),
            name,
            content,
            suffixes=tuple(self.settings.write_suffixes),
            max_bytes=self.settings.max_file_bytes,
            overwrite=overwrite,
            mode=self.notebooks.shared_mode,
        )

    async def list_files(self, pattern: str, *, owner: str | None) -> FileListing:
        """Files matching ``pattern``; the walk is bounded and stops if the caller goes away."""
        cancel = threading.Event()
        folder = self.workspaces.folder(owner)
        walk = asyncio.ensure_future(
            asyncio.to_thread(list_project_files, folder, pattern, cancel=cancel)
        )
        try:
            return await asyncio.shield(walk)
        except asyncio.CancelledError:
            # The thread cannot be cancelled: tell the walk to stop, and let it end.
            cancel.set()
            raise

    # -- requests ------------------------------------------------------------------
    def file_request(self, file_name: str, options: RunOptions) -> RunRequest:
        """A run of a .py file from the projects folder, as ``python file.py`` would.

        Raises:
            PathRefused, FileNotFound, InvalidArgument: before anything runs.
        """
        project = self.read_file(file_name, owner=options.owner)
        return self._request(
            options,
            code=project.source,
            tool="run_python",
            record_as=file_cell_source(project.relative, project.source),
            preamble=_file_preamble(project, self.workspaces.folder(options.owner)),
            file=project.relative,
            stem=Path(project.relative).stem,
        )

    def code_request(self, code: str, options: RunOptions) -> RunRequest:
        """A run of a snippet, in a fresh kernel or in a session.

        Raises:
            InvalidArgument: the snippet is too large, or an argument is bad.
        """
        if len(code.encode("utf-8", "surrogatepass")) > self.settings.max_file_bytes:
            raise InvalidArgument(
                f"code is larger than {self.settings.max_file_bytes} bytes "
                "(KERNEL_MCP_MAX_FILE_BYTES)"
            )
        return self._request(options, code=code, tool="run_code", record_as=code)

    def _request(self, options: RunOptions, **what: Any) -> RunRequest:
        self.settings.clamp_timeout(options.timeout, background=options.background)
        asked = {**vars(options), "kernel": self.kernels.choose(options.kernel)}
        return RunRequest(**asked, **what)

    async def run_file(self, file_name: str, **options: Any) -> RunOutcome:
        """Run a .py file now (``options`` are ``RunOptions``'s fields)."""
        return await self.run(self.file_request(file_name, RunOptions(**options)))

    async def run_code(self, code: str, **options: Any) -> RunOutcome:
        """Run a snippet now (``options`` are ``RunOptions``'s fields)."""
        return await self.run(self.code_request(code, RunOptions(**options)))

    # -- runs that outlive a call ------------------------------------------------------
    def start_run(self, request: RunRequest | NotebookRequest, *, parked: bool = False) -> Run:
        """Start a run the run registry owns: a background one (``request.background``),
        or a foreground one parked while a retried call answers its input() (``parked``).
        """

        async def work(hooks: RunHooks) -> RunOutcome | NotebookOutcome:
            hooked = replace(request, on_output=hooks.output, stdin=hooks.ask if parked else None)
            if isinstance(hooked, NotebookRequest):
                return await self.run_notebook_request(hooked)
            return await self.run(hooked)

        return self.runs.start_run(
            owner=request.owner,
            tool=request.tool if isinstance(request, RunRequest) else "run_notebook",
            label=request.label,
            session_id=request.session_id,
            background=request.background,
            work=work,
            timeout=request.timeout,
        )

    # -- running -----------------------------------------------------------------
    def _time_limit(
        self, requested: float | None, notes: list[str], *, background: bool = False
    ) -> float:
        limit = self.settings.clamp_timeout(requested, background=background)
        if requested is not None and limit < requested:
            name = "KERNEL_MCP_BACKGROUND_MAX_TIMEOUT" if background else "PYTHON_MAX_TIMEOUT"
            notes.append(f"timeout {requested:g} s is above {name}; {limit:g} s applies.")
        return limit

    async def _watched(
        self,
        owner: str | None,
        kernel: Kernel,
        execute: Callable[[Kernel], Awaitable[T]],
        notes: list[str],
    ) -> T:
        """``execute(kernel)``, stopped if it grows the owner's projects folder past its cap.

        Only local kernels write to the folder; a remote kernel's is its own.
        """
        if not self.workspaces.quota_bytes or not self.backend.local:
            return await execute(kernel)
        grace = self.settings.interrupt_grace
        finished = asyncio.Event()

        async def kill_if_still_running() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(finished.wait(), grace)
            if not finished.is_set():
                await kernel.kill()

        async def stop() -> None:
            # As for a timeout: interrupt, and kill what ignores it for the grace.
            await kernel.interrupt()
            self._spawn(kill_if_still_running())

        watch = QuotaWatch(
            self.workspaces.folder(owner), quota_bytes=self.workspaces.quota_bytes, stop=stop
        )
        try:
            async with watch:
                result = await execute(kernel)
        finally:
            finished.set()
        notes.extend(watch.notes())
        return result

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one request: fresh, or in its session (recorded there)."""
        notes: list[str] = []
        limit = self._time_limit(request.timeout, notes, background=request.background)
        grace = self.settings.interrupt_grace

        async def execute(kernel: Kernel, session_name: str | None = None) -> Execution:
            if request.preamble:
                await kernel.run_silently(request.preamble)
            asking = Asking.of_run(request.stdin, session_name, request.tool, request.file)
            execution = await kernel.execute(
                request.code,
                timeout=limit,
                grace=grace,
                progress=request.progress,
                on_output=request.on_output,
                stdin=asking,
                no_stdin=request.no_input,
            )
            if asking is not None:
                notes.extend(asking.notes())
            return execution

        if request.session_id is None:
            async with self._fresh_kernel(request.kernel, request.owner) as kernel:
                execution = await self._watched(request.owner, kernel, execute, notes)
            if request.file is not None:
                execution = as_program_exit(execution)
            outcome = RunOutcome(execution, file=request.file, notes=notes)
            if request.save_notebook:
                await self._save_single(request, kernel, execution, outcome)
            return outcome

        async def in_session(session: Session, kernel: Kernel) -> RunOutcome:
            if session.lost_state:
                notes.append(f"New kernel: {session.lost_state}.")
                session.lost_state = None
            execution = await self._watched(
                request.owner, kernel, lambda k: execute(k, session.name), notes
            )
            if request.file is not None:
                execution = as_program_exit(execution)
            recording = await self._recording(session, kernel)
            notes.extend(
                await self._record(
                    session, recording, [code_cell(request.record_as, execution, request.tool)]
                )
            )
            if execution.kernel_replaced:
                notes.append("The session's kernel was lost; the next call starts a new one.")
            return RunOutcome(
                execution,
                file=request.file,
                session_id=session.id,
                notes=notes,
                notebook_uri=recording.uri,
                notebook_path=recording.path,
            )

        return await self.sessions.use(request.owner, request.session_id, in_session)

    async def _save_single(
        self, request: RunRequest, kernel: Kernel, execution: Execution, outcome: RunOutcome
    ) -> None:
        nb = notebook_for(kernel.kernel_info, self.kernels.notebook_metadata(request.kernel))
        workspace = self.workspaces.folder(request.owner)
        nb.cells.append(setup_cell(workspace, self.notebooks.root / RUNS))
        nb.cells.append(code_cell(request.record_as, execution, request.tool))
        try:
            path = await asyncio.to_thread(self.notebooks.save_single, request.stem, nb)
        except OSError as exc:
            outcome.notes.append(f"Not saved as a notebook: {describe_os_error(exc)}.")
            return
        outcome.notebook_path, outcome.notebook_uri = path, self.notebooks.uri(path)
        outcome.notes.append(f"Saved as {self.notebooks.name_of(path)} ({outcome.notebook_uri}).")

    async def _record(
        self, session: Session, recording: Recording, cells: list[dict[str, Any]]
    ) -> list[str]:
        """Append a run's cells to the session's recording; what went wrong, as notes."""
        try:
            # Shared sessions: a replica that lost the session's lease must not write.
            session.fence()
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

    # -- sessions ----------------------------------------------------------------
    async def create_session(
        self, *, owner: str | None, name: str | None = None, kernel: str | None = None
    ) -> Session:
        """A new session; ``kernel`` chooses one of the allowed kernelspecs.

        Raises:
            InvalidArgument: a bad name, or a kernel that is not allowed.
            TooManySessions: at KERNEL_MCP_MAX_SESSIONS.
        """
        return await self.sessions.create(owner, name, kernel_name=self.kernels.choose(kernel))

    async def _session_created(self, session: Session) -> None:
        """The recording is made before the session's record, which names it."""
        assert session.kernel is not None
        recording = await asyncio.to_thread(
            self.recorder.create,
            session.name,
            session.kernel.kernel_info,
            self.kernels.notebook_metadata(session.record.kernel_name),
            projects_dir=self.workspaces.folder(session.owner),
        )
        self._recordings[session.id] = recording
        if recording.path is not None:
            session.notebook = recording.path.relative_to(self.notebooks.root).as_posix()

    def session_notebook_uri(self, session_id: str, notebook: str | None = None) -> str | None:
        if notebook is not None:
            return self.notebooks.uri(self.notebooks.root / notebook)
        recording = self._recordings.get(session_id)
        return recording.uri if recording else None

    def recording_notes(self, session_id: str) -> list[str]:
        """What a session's view should say about its recording (a failing disk)."""
        recording = self._recordings.get(session_id)
        if recording is None or not recording.failure:
            return []
        return [recording.failure_note()]

    async def _recording(self, session: Session, kernel: Kernel) -> Recording:
        """The session's recording: this process's, or attached by name (another
        replica created it; any replica appends, one call at a time)."""
        recording = self._recordings.get(session.id)
        if recording is None and session.notebook is not None:
            recording = self.recorder.attach(session.notebook)
        if recording is None:
            # The folder refused it at create time: claim a name now.
            recording = await asyncio.to_thread(
                self.recorder.create,
                session.name,
                kernel.kernel_info,
                self.kernels.notebook_metadata(session.record.kernel_name),
                projects_dir=self.workspaces.folder(session.owner),
            )
        if recording.path is not None and session.notebook is None:
            session.notebook = recording.path.relative_to(self.notebooks.root).as_posix()
        self._recordings[session.id] = recording
        return recording

    async def _session_closed(self, session: Session) -> None:
        recording = self._recordings.pop(session.id, None)
        if recording is not None:
            await self.recorder.finish(recording)

    def _session_forgotten(self, session: Session) -> None:
        """Another replica ended the session: stop tracking its recording here."""
        recording = self._recordings.pop(session.id, None)
        if recording is not None:
            self.recorder.release(recording)

    async def export_notebook(
        self, *, owner: str | None, session_id: str, name: str | None, overwrite: bool
    ) -> tuple[Path, str, int]:
        """Copy a session's notebook into the notebooks folder. Returns (path, uri, runs).

        Raises:
            NotebookUnwritable: the folder refused the export (the message says why).
        """
        async with self.sessions.hold(owner, session_id) as held:
            # Holding the session means no run is being recorded meanwhile.
            recording = self._recordings.get(held.id)
            if recording is None and held.notebook is not None:
                recording = self.recorder.attach(held.notebook)
                self._recordings[held.id] = recording
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
            return path, self.notebooks.uri(path), recording.recorded

    # -- notebooks: who may read what ------------------------------------------------
    async def owned_notebooks(self, owner: str | None) -> dict[str, str]:
        """Recordings of ``owner``'s live sessions (id → notebook name), any replica's."""
        try:
            sessions = await self.sessions.owned(owner)
        except StateUnavailable as exc:
            # Shared notebooks stay readable; session recordings are hidden meanwhile.
            log.warning("session recordings hidden: %s", exc)
            return {}
        mine = {}
        for session in sessions:
            recording = self._recordings.get(session.id)
            if session.notebook:
                mine[session.id] = session.notebook.removesuffix(".ipynb")
            elif recording is not None and recording.path is not None:
                # Claimed late (the folder refused it at first): the record says so next run.
                mine[session.id] = recording.name
        return mine

    def notebook_names(self, mine: dict[str, str]) -> list[str]:
        """Notebooks in the notebooks folder that the owner of ``mine`` may read.

        ``mine`` is ``owned_notebooks(owner)``: the recordings of their live sessions.
        """
        allowed = set(mine.values())
        return [n for n in self.notebooks.list() if self.notebooks.readable(n, allowed)]

    async def read_notebook(self, owner: str | None, name: str) -> str:
        """A notebook's JSON by its listed name (``report``, ``sessions/x``, ``runs/y``).

        A session recording is rebuilt from its journal first, so it is current to
        its last completed run.
        """
        mine = await self.owned_notebooks(owner)
        name = name.removesuffix(".ipynb")
        if name.startswith("sessions/"):
            key = name.removeprefix("sessions/")
            if key in mine:  # by session id
                name = mine[key]
            if name in mine.values():
                return await self._recording_text(name)
        if not self.notebooks.readable(name, set(mine.values())):
            raise FileNotFound(f"No notebook {name!r}.")
        if name.startswith("sessions/"):
            # A closed session's recording (no token: everyone's): rebuilt from its journal.
            with contextlib.suppress(KernelMCPError, OSError):
                return await self._recording_text(name)
        return await asyncio.to_thread(self.notebooks.read, name)

    async def _recording_text(self, name: str) -> str:
        live = next((r for r in self._recordings.values() if r.name == name), None)
        if live is not None:
            return await self.recorder.text(live)
        path = self.notebooks.path_of(name)
        recording = Recording(self.notebooks, stem=path.stem, path=path)
        if recording.journal is None or not recording.journal.exists():
            return await asyncio.to_thread(self.notebooks.read, name)
        return await asyncio.to_thread(recording.text)

    # -- running notebooks -------------------------------------------------------------
    def notebook_request(
        self,
        notebook_path: str,
        *,
        owner: str | None,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
        kernel: str | None = None,
        background: bool = False,
    ) -> NotebookRequest:
        """A run of a notebook from the projects folder, papermill-style.

        Raises:
            PathRefused, FileNotFound, InvalidNotebook, InvalidArgument: before anything runs.
        """
        project = self.read_file(notebook_path, owner=owner, suffixes=(".ipynb",))
        nb = parse_notebook(project.source, project.relative)
        if parameters is not None:
            if not isinstance(parameters, dict):
                raise InvalidArgument("parameters must be an object of name: JSON value")
            if parameters:
                inject_parameters(nb, parameters)
        self.settings.clamp_timeout(timeout, background=background)
        return NotebookRequest(
            nb=nb,
            source=project.relative,
            owner=owner,
            session_id=session_id,
            timeout=timeout,
            allow_errors=allow_errors,
            kernel=self.kernels.choose(kernel),
            background=background,
        )

    async def run_notebook(self, notebook_path: str, **kwargs: Any) -> NotebookOutcome:
        """Run a notebook now (see ``notebook_request`` for the arguments)."""
        return await self.run_notebook_request(self.notebook_request(notebook_path, **kwargs))

    async def run_notebook_request(self, request: NotebookRequest) -> NotebookOutcome:
        """Execute the notebook's code cells; save the executed copy."""
        nb = request.nb
        notes: list[str] = []
        cell_timeout = self._time_limit(request.timeout, notes, background=request.background)
        total = self.settings.notebook_timeout
        if request.background:
            total = max(total, self.settings.background_max_timeout)
        grace = self.settings.interrupt_grace
        stem = Path(request.source).stem

        async def execute(kernel: Kernel, session_name: str | None = None) -> NotebookRun:
            if not request.session_id:
                spec = self.kernels.notebook_metadata(request.kernel)
                nb.metadata.update(notebook_for(kernel.kernel_info, spec).metadata)
            asking = Asking.of_run(request.stdin, session_name, "run_notebook", request.source)
            run = await execute_notebook(
                kernel,
                nb,
                cell_timeout=cell_timeout,
                total_timeout=total,
                grace=grace,
                allow_errors=request.allow_errors,
                on_output=request.on_output,
                stdin=asking,
                no_stdin=request.no_input,
            )
            if asking is not None:
                notes.extend(asking.notes())
            return run

        if request.session_id is None:
            async with self._fresh_kernel(request.kernel, request.owner) as kernel:
                run = await self._watched(request.owner, kernel, execute, notes)
        else:

            async def in_session(session: Session, kernel: Kernel) -> NotebookRun:
                if session.lost_state:
                    notes.append(f"New kernel: {session.lost_state}.")
                    session.lost_state = None
                run = await self._watched(
                    request.owner, kernel, lambda k: execute(k, session.name), notes
                )
                # The session's own notebook records what ran in its kernel.
                recording = await self._recording(session, kernel)
                ran = [c.index for c in run.cells if c.status not in ("skipped", "not_run")]
                notes.extend(await self._record(session, recording, [nb.cells[i] for i in ran]))
                return run

            run = await self.sessions.use(request.owner, request.session_id, in_session)
        stamp = time.strftime("%Y%m%d-%H%M%S")
        try:
            path = await asyncio.to_thread(
                self.notebooks.save_single, f"{stem}.executed-{stamp}", run.nb
            )
        except OSError as exc:
            notes.append(f"The executed copy was not saved: {describe_os_error(exc)}.")
            path = None
        return NotebookOutcome(
            run=run,
            path=path,
            uri=self.notebooks.uri(path) if path is not None else None,
            source=request.source,
            session_id=request.session_id,
            notes=notes,
        )
