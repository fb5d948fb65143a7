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
import time
from collections.abc import AsyncIterator
from dataclasses import replace
from pathlib import Path
from typing import Any, TypeVar

from kernel_mcp.admission import admission_for
from kernel_mcp.backends.base import KernelAttacher, KernelBackend
from kernel_mcp.config import Settings
from kernel_mcp.errors import InvalidArgument, StateUnavailable
from kernel_mcp.files.workspaces import MIB, Workspaces
from kernel_mcp.kernels.execution import Execution, OutputCallback
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.kernelspecs import KernelCatalog
from kernel_mcp.notebooks.execute import NotebookRun, execute_notebook
from kernel_mcp.notebooks.model import (
    code_cell,
    file_cell_source,
    inject_parameters,
    notebook_for,
    parse_notebook,
    setup_cell,
)
from kernel_mcp.notebooks.recording import Recorder, describe_os_error
from kernel_mcp.notebooks.store import RUNS, NotebookStore
from kernel_mcp.pool import KernelPool, KernelPools
from kernel_mcp.runner.cap import WorkspaceCap
from kernel_mcp.runner.files import ProjectFiles
from kernel_mcp.runner.packages import SessionPackages
from kernel_mcp.runner.questions import Asking
from kernel_mcp.runner.recordings import SessionRecordings
from kernel_mcp.runner.requests import (
    NotebookOutcome,
    NotebookRequest,
    RunOptions,
    RunOutcome,
    RunRequest,
    as_program_exit,
    file_preamble,
)
from kernel_mcp.runner.runs import RUNS_MARKERS, Run, RunHooks, RunRegistry
from kernel_mcp.sessions.attached import kernel_id_of
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.registry import SessionRegistry
from kernel_mcp.sessions.store import SessionStore
from kernel_mcp.tasks import TaskOwner
from kernel_mcp.watch.publisher import FeedPublisher

__all__ = ["Runner"]

log = logging.getLogger(__name__)
T = TypeVar("T")


class Runner:
    """Runs code for callers, on the parts of a deployment it is handed.

    Use as ``async with Runner(settings, backend=..., store=...) as runner``;
    ``kernel_mcp.deployment`` (the composition root, used by the CLI and the server)
    picks the parts the settings ask for: ``deployment_for(settings).runner(settings)``.

    Args:
        backend: where kernels come from; ``backend.local`` says whether they see
            this machine's folders.
        store: where session records live (and how this process holds a session's
            kernel).
        replica: this replica's name among those sharing sessions and a notebooks
            folder (its background runs' markers are its own).
        attacher: joins kernels someone else started (``create_session(kernel_id=...)``);
            None: sessions cannot attach.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        backend: KernelBackend,
        store: SessionStore,
        replica: str | None = None,
        attacher: KernelAttacher | None = None,
    ) -> None:
        self.settings = settings
        self.backend = backend
        self.attacher = attacher
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
            admission=admission_for(settings, local=backend.local),
        )
        self.notebooks = NotebookStore(
            settings.notebooks_dir, private_recordings=bool(settings.tokens)
        )
        self.recorder = Recorder(self.notebooks, projects_dir=settings.projects_dir)
        self.kernels = KernelCatalog(settings, local=backend.local, default=backend.kernel_name)
        self.files = ProjectFiles(settings, self.workspaces, mode=self.notebooks.shared_mode)
        self.recordings = SessionRecordings(
            self.notebooks, self.recorder, kernels=self.kernels, workspaces=self.workspaces
        )
        # Packages for sessions (install_packages): see runner/packages.py.
        self.packages = SessionPackages(settings, local=backend.local, kernels=self.kernels)
        self.watch = FeedPublisher()
        """Each session's runs, published for its watchers (``kernel_mcp.watch``)."""
        self.sessions = SessionRegistry(
            self.pools,
            store,
            max_sessions=settings.max_sessions,
            idle_timeout=settings.session_idle_timeout,
            on_create=self.recordings.created,
            on_close=self._session_closed,
            on_forget=self._session_forgotten,
            attacher=attacher,
        )
        markers = settings.notebooks_dir / RUNS_MARKERS
        if replica is not None:
            # Replicas share the notebooks folder; each one's runs are its own.
            markers = markers / replica
        self.runs = RunRegistry(retention=settings.run_retention, markers=markers, replica=replica)
        self.tasks = TaskOwner("runner")
        """What outlives a run's reply: a fresh kernel's shut-down, a stop after the quota,
        a workspace measured for the next run."""
        self.cap = WorkspaceCap(
            self.workspaces, self.tasks, grace=settings.interrupt_grace, local=backend.local
        )
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

    async def _session_closed(self, session: Session) -> None:
        self.watch.session_closed(session.id)
        try:
            await self.recordings.closed(session)
        finally:
            await self.packages.closed(session)

    def _session_forgotten(self, session: Session) -> None:
        self.watch.session_closed(session.id)
        self.recordings.forgotten(session)

    async def close(self) -> None:
        """Stop every run, shut every kernel down, write every recording, wait for every task."""
        self.watch.close()
        await self.runs.close()
        await self.sessions.close()
        await self.packages.close()
        await self.pools.close()
        await self.tasks.close(grace=None)
        await self.recorder.close()
        await self.backend.close()

    @contextlib.asynccontextmanager
    async def _fresh_kernel(
        self, kernel_name: str | None = None, owner: str | None = None
    ) -> AsyncIterator[Kernel]:
        """A never-used kernel for one run, within the fresh-run cap; killed afterwards."""
        async with self._fresh:
            # The replacement starts after the run: on a small machine a kernel start
            # next to the run slows the run down (docs/benchmarks.md).
            kernel = await self.pools.acquire(
                owner=owner, refill_now=False, kernel_name=kernel_name
            )
            try:
                yield kernel
            finally:
                # Fresh kernels serve one run only. Stopping it need not delay the reply
                # (unless the runner is closing: then nothing outlives the call).
                if self.tasks.closed:
                    await kernel.shutdown(now=True)
                else:
                    self.tasks.spawn(kernel.shutdown(now=True), name="fresh kernel shut-down")
                self.pools.refill(owner)

    # -- requests ------------------------------------------------------------------
    def file_request(self, file_name: str, options: RunOptions) -> RunRequest:
        """A run of a .py file from the projects folder, as ``python file.py`` would.

        Raises:
            PathRefused, FileNotFound, InvalidArgument: before anything runs.
        """
        project = self.files.read(file_name, owner=options.owner)
        return self._request(
            options,
            code=project.source,
            tool="run_python",
            record_as=file_cell_source(project.relative, project.source),
            preamble=file_preamble(project, self.workspaces.folder(options.owner)),
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

    async def run(self, request: RunRequest) -> RunOutcome:
        """Run one request: fresh, or in its session (recorded there)."""
        notes: list[str] = []
        limit = self._time_limit(request.timeout, notes, background=request.background)
        grace = self.settings.interrupt_grace

        async def execute(
            kernel: Kernel,
            session_name: str | None = None,
            on_output: OutputCallback | None = request.on_output,
        ) -> Execution:
            if request.preamble:
                await kernel.run_silently(request.preamble)
            asking = Asking.of_run(request.stdin, session_name, request.tool, request.file)
            execution = await kernel.execute(
                request.code,
                timeout=limit,
                grace=grace,
                progress=request.progress,
                on_output=on_output,
                stdin=asking,
                no_stdin=request.no_input,
            )
            if asking is not None:
                notes.extend(asking.notes())
            return execution

        if request.session_id is None:
            async with self._fresh_kernel(request.kernel, request.owner) as kernel:
                execution = await self.cap.watched(request.owner, kernel, execute, notes)
            if request.file is not None:
                execution = as_program_exit(execution)
            outcome = RunOutcome(execution, file=request.file, notes=notes)
            if request.save_notebook:
                await self._save_single(request, kernel, execution, outcome)
            return outcome

        async def in_session(session: Session, kernel: Kernel) -> RunOutcome:
            await self.packages.ready(session, kernel)  # a new kernel: its packages, %pip
            if session.lost_state:
                notes.append(f"New kernel: {session.lost_state}.")
                session.lost_state = None
            with self.watch.cell(
                session, source=request.record_as, tool=request.tool, label=request.label
            ) as cell:
                streams = cell.stream_to(request.on_output)
                execution = await self.cap.watched(
                    request.owner, kernel, lambda k: execute(k, session.name, streams), notes
                )
                if request.file is not None:
                    execution = as_program_exit(execution)
                cell.finished(execution, [*execution.notes, *notes])
            recording = await self.recordings.recording(session, kernel)
            notes.extend(
                await self.recordings.record(
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

    # -- sessions ----------------------------------------------------------------
    async def create_session(
        self,
        *,
        owner: str | None,
        name: str | None = None,
        kernel: str | None = None,
        kernel_id: str | None = None,
    ) -> Session:
        """A new session; ``kernel`` chooses one of the allowed kernelspecs, ``kernel_id``
        attaches it to a kernel already running on the gateway instead.

        Raises:
            InvalidArgument: a bad name, a kernel that is not allowed, or an attach that
                is refused (the message says why).
            TooManySessions: at KERNEL_MCP_MAX_SESSIONS.
        """
        if kernel_id is None:
            return await self.sessions.create(owner, name, kernel_name=self.kernels.choose(kernel))
        refusal = self.settings.attach_refusal(owner)
        if refusal is not None:
            raise InvalidArgument(f"Cannot attach to kernel {str(kernel_id)[:60]!r}: {refusal}")
        if kernel is not None:
            raise InvalidArgument("Pass kernel or kernel_id, not both.")
        return await self.sessions.create(owner, name, kernel_id=kernel_id_of(kernel_id))

    async def export_notebook(
        self, *, owner: str | None, session_id: str, name: str | None, overwrite: bool
    ) -> tuple[Path, str, int]:
        """Copy a session's notebook into the notebooks folder. Returns (path, uri, runs).

        Raises:
            NotebookUnwritable: the folder refused the export (the message says why).
        """
        async with self.sessions.hold(owner, session_id) as held:
            # Holding the session means no run is being recorded meanwhile.
            path, runs = await self.recordings.export(held, name, overwrite=overwrite)
            return path, self.notebooks.uri(path), runs

    # -- notebooks: who may read what ------------------------------------------------
    async def owned_notebooks(self, owner: str | None) -> dict[str, str]:
        """Recordings of ``owner``'s live sessions (id → notebook name), any replica's."""
        try:
            sessions = await self.sessions.owned(owner)
        except StateUnavailable as exc:
            # Shared notebooks stay readable; session recordings are hidden meanwhile.
            log.warning("session recordings hidden: %s", exc)
            return {}
        return self.recordings.names(sessions)

    async def read_notebook(self, owner: str | None, name: str) -> str:
        """A notebook's JSON by its listed name (``report``, ``sessions/x``, ``runs/y``),
        if ``owner`` may read it; a session recording is current to its last run.

        Raises:
            FileNotFound: no such notebook, or not one ``owner`` may read.
        """
        return await self.recordings.read(name, await self.owned_notebooks(owner))

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
        project = self.files.read(notebook_path, owner=owner, suffixes=(".ipynb",))
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

        async def execute(
            kernel: Kernel,
            session_name: str | None = None,
            on_output: OutputCallback | None = request.on_output,
        ) -> NotebookRun:
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
                on_output=on_output,
                stdin=asking,
                no_stdin=request.no_input,
            )
            if asking is not None:
                notes.extend(asking.notes())
            return run

        if request.session_id is None:
            async with self._fresh_kernel(request.kernel, request.owner) as kernel:
                run = await self.cap.watched(request.owner, kernel, execute, notes)
        else:

            async def in_session(session: Session, kernel: Kernel) -> NotebookRun:
                await self.packages.ready(session, kernel)
                if session.lost_state:
                    notes.append(f"New kernel: {session.lost_state}.")
                    session.lost_state = None
                source = f"# run_notebook {request.source}"
                with self.watch.cell(
                    session, source=source, tool="run_notebook", label=request.source
                ) as cell:
                    streams = cell.stream_to(request.on_output)
                    run = await self.cap.watched(
                        request.owner, kernel, lambda k: execute(k, session.name, streams), notes
                    )
                    ran = [c.index for c in run.cells if c.status not in ("skipped", "not_run")]
                    outputs = [o for i in ran for o in nb.cells[i].get("outputs", [])]
                    cell.finish(status=run.status, outputs=outputs, duration_s=run.duration_s)
                # The session's own notebook records what ran in its kernel.
                recording = await self.recordings.recording(session, kernel)
                notes.extend(
                    await self.recordings.record(session, recording, [nb.cells[i] for i in ran])
                )
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
