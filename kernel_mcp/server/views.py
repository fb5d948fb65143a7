"""What the tools return, as pydantic models: their output schemas and structured content.

Plain data, no fastmcp and no behaviour: ``render`` fills them from the
domain's results (and is the only place that cuts anything to fit), the server
layer hands them to fastmcp, and clients read their JSON schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from kernel_mcp.kernels.execution import Status

__all__ = [
    "CellReport",
    "ErrorInfo",
    "ExportResult",
    "FileList",
    "FileText",
    "FileWritten",
    "FolderInfo",
    "KernelList",
    "KernelView",
    "LimitsInfo",
    "NotebookReport",
    "ProjectsInfo",
    "RunList",
    "RunReport",
    "RunStatus",
    "RunSummary",
    "RunView",
    "SandboxInfo",
    "ServerInfo",
    "SessionAction",
    "SessionList",
    "SessionView",
]


class ErrorInfo(BaseModel):
    """The exception a run raised."""

    ename: str
    evalue: str
    traceback: str = Field(description="Plain text, ANSI codes removed.")


#: A run started with background=true: its call replies at once with this status.
Running = Literal["running"]


class RunReport(BaseModel):
    """Structured result of run_python / run_code (the tools' output schema)."""

    status: Status | Running = Field(
        description="ok | error (exception) | timeout | kernel_died | interrupted; "
        "running: started with background=true (follow run_id with get_run)"
    )
    stdout: str
    stderr: str
    result: str | None = Field(description="text/plain of the last expression's value, if any")
    error: ErrorInfo | None
    images: int = Field(description="ImageContent blocks included in this reply")
    truncated: bool = Field(description="Some output was cut or left out; see notes")
    duration_s: float = Field(description="Wall time of the run, seconds")
    execution_count: int | None
    mime_types: list[str] = Field(description="MIME types the outputs carried")
    timeout_s: float = Field(description="The time limit that applied, seconds")
    file: str | None = Field(None, description="The file run, relative to the projects folder")
    session_id: str | None = None
    notebook: str | None = Field(None, description="Recorded notebook URI, when there is one")
    run_id: str | None = Field(None, description="A background run's id (pass it to get_run)")
    notes: list[str] = Field(default_factory=list)


class SessionView(BaseModel):
    """One session as list_sessions and create_session show it."""

    session_id: str
    name: str
    state: Literal["idle", "busy", "dead"]
    created_at: datetime
    last_used: datetime
    runs: int
    kernel_memory_mb: float | None = Field(description="Resident memory of the kernel, MiB")
    backend: str
    kernel_id: str | None
    notebook: str | None = Field(description="URI of the session's recording")
    kernel: str | None = Field(None, description="Its kernelspec (None: the default)")
    sandboxed: bool = Field(
        False,
        description="Its kernel runs in kernel-mcp's sandbox (a gateway's kernels: False, "
        "the gateway decides their isolation)",
    )
    run_id: str | None = Field(None, description="The background run it is busy with")
    attached: bool = Field(
        False,
        description="Its kernel is one someone else started on the Jupyter server "
        "(create_session(kernel_id=...)): closing the session only detaches",
    )
    notes: list[str] = Field(default_factory=list)


class SessionList(BaseModel):
    sessions: list[SessionView]
    max_sessions: int


class SessionAction(BaseModel):
    session_id: str
    action: Literal["interrupted", "restarted", "closed", "detached", "idle"]
    message: str


class FileList(BaseModel):
    files: list[str]
    projects_dir: str = Field(description="Always shown as '.' relative root")
    truncated: bool
    not_utf8: int = Field(
        0, description="Matching names left out because they are not UTF-8 (see notes)"
    )
    notes: list[str] = Field(default_factory=list)


class ExportResult(BaseModel):
    path: str
    uri: str
    cells: int = Field(description="Recorded runs in the exported notebook")


class CellReport(BaseModel):
    index: int = Field(description="Position of the cell in the executed copy")
    status: str
    duration_s: float


class NotebookReport(BaseModel):
    """Structured result of run_notebook (its output schema)."""

    status: Status | Running
    notebook: str = Field(description="The source notebook, relative to the projects folder")
    path: str | None = Field(description="Executed copy on disk (null if it could not be saved)")
    uri: str | None = Field(description="Executed copy as an MCP resource")
    duration_s: float
    cells: list[CellReport] = Field(
        description="Per code cell; long lists keep the first and last cells (see truncated)"
    )
    cells_total: int = Field(description="Code cells in the notebook")
    failed_cell: int | None
    error: RunReport | None = Field(description="Outputs of the failing cell")
    truncated: bool = False
    session_id: str | None = None
    run_id: str | None = Field(None, description="A background run's id (pass it to get_run)")
    notes: list[str] = Field(default_factory=list)


RunStatus = Literal[
    "running",
    "waiting_input",
    "ok",
    "error",
    "timeout",
    "kernel_died",
    "interrupted",
    "failed",
    "cancelled",
    "lost",
    "dropped",
]


class RunView(BaseModel):
    """A run that may outlive its call (get_run, cancel_run, and a background start)."""

    run_id: str
    status: RunStatus = Field(
        description="running | waiting_input (its code waits in input()) | the run's own "
        "status once done (ok, error, timeout, kernel_died, interrupted) | failed (it could "
        "not run; see notes) | cancelled | lost (the server restarted under it) | dropped "
        "(finished longer ago than KERNEL_MCP_RUN_RETENTION)"
    )
    done: bool
    tool: str | None = None
    label: str | None = Field(None, description="The file or notebook that runs, or 'code'")
    session_id: str | None = None
    background: bool = False
    started_at: datetime | None = None
    ended_at: datetime | None = None
    elapsed_s: float | None = Field(
        None, description="Seconds since it started (or until it ended)"
    )
    output: str = Field(
        "", description="stdout and stderr printed after offset `since`, in arrival order"
    )
    next: int = Field(0, description="Pass as `since` to the next get_run for what follows")
    missed: int = Field(0, description="Characters before `next` no longer kept (trimmed)")
    input_prompt: str | None = Field(None, description="What input() asked, when waiting")
    result: RunReport | NotebookReport | None = Field(
        None, description="The full reply, once done (as run_python/run_code/run_notebook give)"
    )
    notes: list[str] = Field(default_factory=list)


class RunSummary(BaseModel):
    run_id: str
    status: RunStatus
    tool: str
    label: str
    session_id: str | None
    background: bool
    started_at: datetime
    elapsed_s: float


class RunList(BaseModel):
    runs: list[RunSummary]


class KernelView(BaseModel):
    name: str = Field(description="Pass as `kernel` to create_session or a fresh run")
    display_name: str
    language: str
    interpreter: str | None = Field(description="The executable the kernel runs")
    default: bool
    available: bool = Field(description="Installed where kernels start")


class KernelList(BaseModel):
    kernels: list[KernelView]


class FileWritten(BaseModel):
    path: str = Field(description="Relative to the projects folder")
    bytes: int
    created: bool = Field(description="False when an existing file was replaced")


class FileText(BaseModel):
    path: str
    text: str = Field(description="Lines as `<number>\\t<line>`, numbered from 1")
    first_line: int
    last_line: int
    total_lines: int
    truncated: bool = Field(description="More lines follow: read again with offset=last_line+1")


class FolderInfo(BaseModel):
    path: str = Field(description="Absolute path on the server's machine")
    origin: Literal["setting", "working directory", "per-user folder"] = Field(
        description="Why this folder: a setting names it | the server's working directory "
        "has python_projects/ | no setting and no such working directory: ~/kernel-mcp"
    )


class ProjectsInfo(FolderInfo):
    own: bool = Field(
        description="This is your own folder below the configured one: with several "
        "principals each has its own, and nobody else's code sees it",
    )


class SandboxInfo(BaseModel):
    on: bool = Field(description="Local kernels run in kernel-mcp's sandbox")
    description: str = Field(description="What the sandbox is, or why it is off")
    network: bool = Field(description="Kernels may reach the network")
    projects_writable: bool = Field(description="Kernels may write to the projects folder")


class LimitsInfo(BaseModel):
    timeout_s: float = Field(description="Default time limit of a call (per cell for notebooks)")
    max_timeout_s: float = Field(description="Largest `timeout` a call may ask for")
    background_max_timeout_s: float = Field(description="Time limit of a background run")
    notebook_timeout_s: float = Field(description="Total time cap of one run_notebook")
    interrupt_grace_s: float = Field(description="After an interrupt, seconds before a kill")
    memory_limit_mb: int | None = Field(
        description="Memory limit per kernel, MiB; null: none is enforced here (turned off, "
        "not Linux, or remote kernels limited where they run)"
    )
    max_sessions: int = Field(description="Open sessions, over all principals")
    session_idle_timeout_s: float = Field(
        description="Idle seconds before a session closes; 0: never"
    )
    max_fresh_runs: int = Field(description="Session-less runs at once; more wait their turn")
    run_retention_s: float = Field(description="Seconds a finished background run is kept")
    max_file_bytes: int = Field(description="Largest file or snippet that may run")
    projects_quota_mb: int | None = Field(
        description="Disk your projects folder may use, MiB; null: no cap"
    )
    write_suffixes: list[str] = Field(description="File endings write_file and read_file take")
    max_stream_chars: int = Field(description="Characters a reply keeps of each stream")
    max_images: int = Field(description="Images inlined in one reply")
    max_image_bytes: int = Field(description="Largest image inlined, decoded bytes")
    max_reply_bytes: int = Field(description="Budget of a whole reply, bytes")


class ServerInfo(BaseModel):
    """What server_info returns: where files go, what limits apply, what isolates code."""

    version: str
    projects: ProjectsInfo = Field(description="run_python runs files from here; the kernels' cwd")
    notebooks: FolderInfo = Field(description="Session recordings, exports, executed notebooks")
    backend: str = Field(description="local | gateway (kernels on a Jupyter gateway)")
    sandbox: SandboxInfo
    limits: LimitsInfo
    kernels: list[str] = Field(description="Kernelspecs you may choose, the default first")
    platform: str = Field(description="The server's operating system (sys.platform)")


# -- watching a session (watch_tools.py) -------------------------------------------------
class ViewLink(BaseModel):
    """What view_session returns: a link a person opens to watch the session live."""

    session_id: str
    url: str = Field(
        description="The session's live page on this server; works once, within expires_in_s"
    )
    expires_in_s: float = Field(description="Seconds the link may still be opened")
    message: str


class FeedPage(BaseModel):
    """What read_session returns: the events after `since`, or a snapshot of the cells."""

    cursor: str = Field(description="Pass it as `since` to the next read_session")
    state: str = Field(description="idle | busy | dead | closed")
    events: list[dict[str, Any]] | None = Field(
        None, description="The events after `since`, oldest first"
    )
    snapshot: dict[str, Any] | None = Field(
        None, description="The cells so far, when `since` cannot be resumed from"
    )
