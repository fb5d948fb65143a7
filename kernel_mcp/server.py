"""The MCP surface: thin tools, notebook resources, transports and auth.

The only module that imports fastmcp. Tools translate arguments into
``Runner`` calls and results into MCP content; domain exceptions become tool
errors here and nowhere else. Session ids are minted by the domain and passed
as tool arguments; they never depend on the MCP transport session, which the
2026-07-28 protocol does not have.

Why not fastmcp's ``SessionProvider``: its ``create_session`` takes no name and
stores JSON only, while a session here is a live kernel with a lock, a
notebook and limits. We keep its isolation rule instead: every session is
owned by ``current_principal()`` and a foreign id is refused exactly like an
unknown one.
"""

from __future__ import annotations

import contextlib
import functools
import hmac
import logging
import signal
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, Literal, ParamSpec, TypeVar

import anyio
from fastmcp import Context, FastMCP
from fastmcp.exceptions import ResourceError, ToolError
from fastmcp.resources import FunctionResource
from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.providers.base import Provider
from fastmcp.server.sessions import current_principal
from fastmcp.tools import ToolResult
from mcp_types import ImageContent, TextContent, ToolAnnotations
from pydantic import BaseModel, Field
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Receive, Scope, Send

from kernel_mcp import __version__
from kernel_mcp.config import Settings
from kernel_mcp.errors import KernelError, KernelMCPError, RequestError
from kernel_mcp.paths import MAX_LISTED_FILES
from kernel_mcp.render import Reply, ReplyLimits, RunReport, render
from kernel_mcp.runner import NotebookOutcome, Runner, RunOutcome

__all__ = ["build_http_app", "build_server", "run_stdio"]

log = logging.getLogger(__name__)

P = ParamSpec("P")
R = TypeVar("R")

INSTRUCTIONS = """\
Runs Python in Jupyter kernels. run_python runs a .py file from the projects
folder (list_files shows them); run_code runs a snippet. Both start a fresh
kernel unless you pass a session_id from create_session, in which case
variables and imports persist between calls. Replies carry stdout, stderr,
the last expression's value, tracebacks and images. Session runs are recorded
as notebooks (resources notebook://...)."""


# -- auth ------------------------------------------------------------------------
class BearerTokens(TokenVerifier):
    """Static bearer tokens; each token is its own principal (``token-1``, ``token-2``...)."""

    def __init__(self, tokens: list[str]) -> None:
        super().__init__()
        self._tokens = [(t.encode(), f"token-{i}") for i, t in enumerate(tokens, start=1)]

    async def verify_token(self, token: str) -> AccessToken | None:
        offered = token.encode()
        found = None
        for secret, principal in self._tokens:
            # Compare against every token so timing says nothing about which matched.
            if hmac.compare_digest(offered, secret):
                found = principal
        if found is None:
            return None
        return AccessToken(token=token, client_id=found, scopes=[], subject=found)


def _owner() -> str | None:
    return current_principal()


# -- error translation (the one place) -----------------------------------------
def _translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except RequestError as exc:
            raise ToolError(str(exc)) from None
        except KernelError as exc:
            raise ToolError(f"Kernel failure: {exc}") from None
        except KernelMCPError as exc:  # pragma: no cover - every subclass is above
            raise ToolError(str(exc)) from None

    return wrapper


def _to_result(reply: Reply) -> ToolResult:
    content: list[Any] = [TextContent(type="text", text=reply.text)]
    content += [
        ImageContent(type="image", data=image.data, mime_type=image.mime_type)
        for image in reply.images
    ]
    return ToolResult(
        content=content,
        structured_content=reply.report.model_dump(mode="json"),
        is_error=reply.is_error,
    )


def _progress(ctx: Context) -> Callable[[float, str], Awaitable[None]]:
    async def report(elapsed: float, line: str) -> None:
        with contextlib.suppress(Exception):
            await ctx.report_progress(progress=round(elapsed, 1), message=line or None)

    return report


# -- structured outputs of the session and notebook tools -----------------------
class SessionView(BaseModel):
    session_id: str
    name: str
    state: Literal["idle", "busy", "dead"]
    created_at: datetime
    last_used: datetime
    runs: int
    kernel_memory_mb: float | None = Field(description="Resident memory of the kernel, MiB")
    backend: str
    kernel_id: str | None
    notebook: str | None


class SessionList(BaseModel):
    sessions: list[SessionView]
    max_sessions: int


class SessionAction(BaseModel):
    session_id: str
    action: Literal["interrupted", "restarted", "closed", "idle"]
    message: str


class FileList(BaseModel):
    files: list[str]
    projects_dir: str = Field(description="Always shown as '.' relative root")
    truncated: bool


class ExportResult(BaseModel):
    path: str
    uri: str
    cells: int


class CellReport(BaseModel):
    index: int
    status: str
    duration_s: float


class NotebookReport(BaseModel):
    status: str
    notebook: str = Field(description="The source notebook, relative to the projects folder")
    path: str = Field(description="Executed copy on disk")
    uri: str = Field(description="Executed copy as an MCP resource")
    duration_s: float
    cells: list[CellReport]
    failed_cell: int | None
    error: RunReport | None = Field(description="Outputs of the failing cell")
    session_id: str | None = None
    notes: list[str] = Field(default_factory=list)


class NotebookResources(Provider):
    """Lists every notebook in the notebooks folder as ``notebook://<name>``."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self._runner = runner

    async def _list_resources(self) -> list[FunctionResource]:
        runner, owner = self._runner, _owner()
        mine = await runner.owned_notebooks(owner)
        resources = []
        for name in await anyio.to_thread.run_sync(runner.notebook_names, owner, mine):
            resources.append(
                FunctionResource.from_function(
                    # In process, who owns what is looked up again when read.
                    functools.partial(
                        runner.read_notebook, owner, name, mine if runner.sessions.shared else None
                    ),
                    uri=f"notebook://{name}",
                    name=name,
                    mime_type="application/x-ipynb+json",
                    description="A recorded or exported notebook (nbformat 4 JSON).",
                )
            )
        return resources


# -- the server ------------------------------------------------------------------
def build_server(settings: Settings, runner: Runner) -> FastMCP:
    """The FastMCP app with every tool and resource bound to ``runner``."""
    auth = BearerTokens(settings.tokens) if settings.tokens else None
    mcp = FastMCP(
        "kernel-mcp",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=auth,
        providers=[NotebookResources(runner)],
    )
    limits = ReplyLimits(
        max_stream_chars=settings.max_stream_chars,
        max_images=settings.max_images,
        max_image_bytes=settings.max_image_bytes,
        max_reply_bytes=settings.max_reply_bytes,
    )
    schema = RunReport.model_json_schema()

    def reply(outcome: RunOutcome) -> ToolResult:
        return _to_result(
            render(
                outcome.execution,
                limits,
                file=outcome.file,
                session_id=outcome.session_id,
                notebook=outcome.notebook_uri,
                notes=outcome.notes,
            )
        )

    run_annotations = ToolAnnotations(
        readOnlyHint=False, destructiveHint=False, openWorldHint=False
    )

    @mcp.tool(output_schema=schema, annotations=run_annotations)
    @_translated
    async def run_python(
        file_name: str,
        timeout: float | None = None,
        session_id: str | None = None,
        save_notebook: bool = False,
        ctx: Context | None = None,
    ) -> ToolResult:
        """Run a .py file from the projects folder in a Jupyter kernel, as `python file.py` would.

        Args:
            file_name: path relative to the projects folder (see list_files), e.g. "hello_world.py".
            timeout: seconds; defaults to the server's PYTHON_TIMEOUT, capped at PYTHON_MAX_TIMEOUT.
            session_id: from create_session, to run in that session's kernel; the file's
                top-level names then stay defined for later calls (like %run). Omit for a
                fresh kernel.
            save_notebook: for a fresh run, also save it as a one-cell notebook.

        Returns one text block (stdout, stderr, result, traceback), one image block per
        figure, and structured content: status ("ok" | "error" | "timeout" |
        "kernel_died" | "interrupted"), stdout, stderr, result, error, images,
        truncated, duration_s, execution_count. A status other than "ok" is an error
        result. Fix the file and call again; use a session to keep loaded data.
        """
        outcome = await runner.run_file(
            file_name,
            owner=_owner(),
            timeout=timeout,
            session_id=session_id,
            progress=_progress(ctx) if ctx else None,
            save_notebook=save_notebook,
        )
        return reply(outcome)

    @mcp.tool(output_schema=schema, annotations=run_annotations)
    @_translated
    async def run_code(
        code: str,
        timeout: float | None = None,
        session_id: str | None = None,
        save_notebook: bool = False,
        ctx: Context | None = None,
    ) -> ToolResult:
        """Run a Python snippet in a Jupyter kernel (IPython syntax and magics work).

        Args:
            code: the source to run; the last expression's value comes back as "result".
            timeout: seconds; defaults to PYTHON_TIMEOUT, capped at PYTHON_MAX_TIMEOUT.
            session_id: run in that session's kernel, where earlier variables exist.
                Omit for a fresh, empty kernel.
            save_notebook: for a fresh run, also save it as a one-cell notebook.

        Returns the same reply as run_python.
        """
        outcome = await runner.run_code(
            code,
            owner=_owner(),
            timeout=timeout,
            session_id=session_id,
            progress=_progress(ctx) if ctx else None,
            save_notebook=save_notebook,
        )
        return reply(outcome)

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    @_translated
    async def list_files(pattern: str = "**/*.py") -> FileList:
        """List files under the projects folder that match a glob.

        Args:
            pattern: a glob relative to the projects folder, e.g. "**/*.py" or "*.ipynb".

        Returns relative paths, sorted, at most 1000 (truncated says if more matched).
        Pass one to run_python (or run_notebook for .ipynb).
        """
        files = await anyio.to_thread.run_sync(runner.list_files, pattern)
        return FileList(files=files, projects_dir=".", truncated=len(files) >= MAX_LISTED_FILES)

    # -- sessions --------------------------------------------------------------
    def view(session: Any) -> SessionView:
        kernel = session.kernel
        rss = kernel.process.rss_bytes() if kernel is not None else None
        return SessionView(
            session_id=session.id,
            name=session.name,
            state=session.state,
            created_at=session.created_at,
            last_used=session.last_used,
            runs=session.runs,
            kernel_memory_mb=round(rss / 2**20, 1) if rss else None,
            backend=kernel.process.backend if kernel else runner.backend.name,
            kernel_id=kernel.process.kernel_id if kernel else session.kernel_id,
            notebook=runner.session_notebook_uri(session.id, session.notebook),
        )

    @mcp.tool
    @_translated
    async def create_session(name: str | None = None) -> SessionView:
        """Start a session: a kernel whose variables and imports persist across calls.

        Args:
            name: optional label (letters, digits, -, _, .); names the session's notebook.

        Returns session_id: pass it to run_python / run_code / run_notebook. Close the
        session with close_session when done; idle sessions are culled.
        """
        return view(await runner.create_session(owner=_owner(), name=name))

    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    @_translated
    async def list_sessions() -> SessionList:
        """List your open sessions.

        Each has session_id, name, state (idle | busy | dead), created_at, last_used,
        runs, kernel_memory_mb (resident MiB), backend, kernel_id and notebook (URI of
        its recording). Pass a session_id to run_code / run_python, or close it.
        """
        sessions = await runner.sessions.owned(_owner())
        return SessionList(sessions=[view(s) for s in sessions], max_sessions=settings.max_sessions)

    @mcp.tool
    @_translated
    async def interrupt_session(session_id: str) -> SessionAction:
        """Interrupt the call running in a session, like Ctrl-C in a notebook.

        The running call replies with status "interrupted"; the session's variables are
        kept. action is "interrupted" if a call was running, else "idle".
        """
        running = await runner.sessions.interrupt(_owner(), session_id)
        return SessionAction(
            session_id=session_id,
            action="interrupted" if running else "idle",
            message="Interrupt sent." if running else "Nothing was running; interrupt sent.",
        )

    @mcp.tool
    @_translated
    async def restart_session(session_id: str) -> SessionAction:
        """Restart a session's kernel: every variable and import is cleared; the id stays."""
        await runner.sessions.restart(_owner(), session_id)
        return SessionAction(
            session_id=session_id, action="restarted", message="New kernel; state cleared."
        )

    @mcp.tool
    @_translated
    async def close_session(session_id: str) -> SessionAction:
        """Close a session and shut its kernel down. Its notebook stays on disk."""
        await runner.sessions.close_session(_owner(), session_id)
        return SessionAction(session_id=session_id, action="closed", message="Kernel shut down.")

    # -- notebooks --------------------------------------------------------------
    @mcp.tool
    @_translated
    async def export_notebook(
        session_id: str, name: str | None = None, overwrite: bool = False
    ) -> ExportResult:
        """Save a session's runs as <notebooks folder>/<name>.ipynb (JupyterLab opens it).

        Args:
            session_id: the session to export.
            name: file name without folder (letters, digits, -, _, .); default the session's.
            overwrite: replace an existing file of that name.

        Returns path, uri (readable as an MCP resource) and the number of cells.
        """
        path, uri, cells = await runner.export_notebook(
            owner=_owner(), session_id=session_id, name=name, overwrite=overwrite
        )
        return ExportResult(path=str(path), uri=uri, cells=cells)

    @mcp.tool(annotations=run_annotations)
    @_translated
    async def run_notebook(
        notebook_path: str,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
    ) -> ToolResult:
        """Execute a .ipynb from the projects folder, cell by cell, papermill-style.

        Args:
            notebook_path: relative to the projects folder.
            parameters: JSON values injected after the cell tagged "parameters".
            session_id: run in that session's kernel; omit for a fresh kernel.
            timeout: per cell, seconds (a total cap applies too).
            allow_errors: keep going after a failing cell.

        Returns a per-cell summary (index, status, duration_s), the failing cell's
        outputs, and the executed copy's path and URI (the source is never changed).
        """
        outcome = await runner.run_notebook(
            notebook_path,
            owner=_owner(),
            parameters=parameters,
            session_id=session_id,
            timeout=timeout,
            allow_errors=allow_errors,
        )
        return _notebook_result(outcome, limits)

    # -- resources ---------------------------------------------------------------
    @mcp.resource("notebook://sessions/{session_id}", mime_type="application/x-ipynb+json")
    async def session_notebook(session_id: str) -> str:
        """A session's recorded notebook, by session id (or by its file name)."""
        try:
            owner = _owner()
            mine = await runner.owned_notebooks(owner)
            return await anyio.to_thread.run_sync(
                runner.read_notebook, owner, f"sessions/{session_id}", mine
            )
        except KernelMCPError as exc:
            raise ResourceError(str(exc)) from None

    @mcp.resource("notebook://{name}", mime_type="application/x-ipynb+json")
    async def notebook(name: str) -> str:
        """An exported or saved notebook from the notebooks folder."""
        try:
            owner = _owner()
            mine = await runner.owned_notebooks(owner)
            return await anyio.to_thread.run_sync(runner.read_notebook, owner, name, mine)
        except KernelMCPError as exc:
            raise ResourceError(str(exc)) from None

    return mcp


async def _answer_input_schema_lookups(mcp: FastMCP) -> None:
    """Let the SDK look tool input schemas up instead of listing every tool per call.

    On the 2026-07-28 streamable-HTTP path the MCP SDK validates Mcp-Param-*
    headers on every tools/call by running a whole tools/list unless the server
    sets ``get_tool_input_schema`` (4-7 ms a call here, docs/benchmarks.md).
    The tools are fixed once built, so their schemas are read once.
    """
    schemas = {tool.name: tool.parameters for tool in await mcp.list_tools()}
    mcp._mcp_server.get_tool_input_schema = schemas.get


def _notebook_result(outcome: NotebookOutcome, limits: ReplyLimits) -> ToolResult:
    run = outcome.run
    failed = None
    if run.failed is not None:
        failed = render(run.failed, limits).report
    report = NotebookReport(
        status=run.status,
        notebook=outcome.source,
        path=str(outcome.path),
        uri=outcome.uri,
        duration_s=run.duration_s,
        cells=[
            CellReport(index=c.index, status=c.status, duration_s=c.duration_s) for c in run.cells
        ],
        failed_cell=run.failed_index,
        error=failed,
        session_id=outcome.session_id,
        notes=outcome.notes,
    )
    lines = [
        f"status: {run.status} · {outcome.source} · {run.duration_s:.2f} s",
        f"executed copy: {outcome.uri} ({outcome.path.name})",
    ]
    lines += [f"note: {n}" for n in outcome.notes]
    lines += [f"cell {c.index}: {c.status} ({c.duration_s:.3f} s)" for c in run.cells]
    if run.failed is not None:
        lines += [f"--- cell {run.failed_index} output ---", render(run.failed, limits).text]
    return ToolResult(
        content=[TextContent(type="text", text="\n".join(lines))],
        structured_content=report.model_dump(mode="json"),
        is_error=run.status != "ok",
    )


# -- transports --------------------------------------------------------------------
class _Dispatcher:
    """One ASGI app serving /mcp (streamable HTTP), /sse + /messages/ (SSE) and /healthz.

    Each transport app keeps its own middleware (Host/Origin guard, bearer auth);
    /healthz answers without auth for probes.
    """

    def __init__(self, mcp: FastMCP, http_app: Any, sse_app: Any, runner: Runner) -> None:
        self.mcp = mcp
        self.http_app = http_app
        self.sse_app = sse_app
        self.runner = runner

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await JSONResponse({"status": "ok"})(scope, receive, send)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await self.http_app(scope, receive, send)
        elif path.startswith(("/sse", "/messages")):
            await self.sse_app(scope, receive, send)
        else:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self.runner)
                await stack.enter_async_context(self.http_app.lifespan(self.http_app))
                await stack.enter_async_context(self.sse_app.lifespan(self.sse_app))
                await _answer_input_schema_lookups(self.mcp)
                await send({"type": "lifespan.startup.complete"})
                started = True
                message = await receive()
                assert message["type"] == "lifespan.shutdown"
        except Exception as exc:
            log.exception("server %s failed", "shutdown" if started else "start-up")
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def build_http_app(settings: Settings, runner: Runner | None = None) -> _Dispatcher:
    """The ASGI app for ``kernel-mcp serve``: /mcp, /sse, /healthz, with guards on."""
    runner = runner or Runner(settings)
    mcp = build_server(settings, runner)
    guard: dict[str, Any] = {
        "host_origin_protection": True,
        "allowed_hosts": settings.allowed_hosts or None,
        "allowed_origins": settings.allowed_origins or None,
    }
    http_app = mcp.http_app(path="/mcp", transport="http", **guard)
    sse_app = mcp.http_app(path="/sse", transport="sse", **guard)
    return _Dispatcher(mcp, http_app, sse_app, runner)


async def run_stdio(settings: Settings) -> None:
    """Serve one client over stdin/stdout until it closes its end or we get SIGTERM."""
    async with Runner(settings) as runner:
        mcp = build_server(settings, runner)
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await mcp.run_stdio_async(show_banner=False)
            tg.cancel_scope.cancel()
