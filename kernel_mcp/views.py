"""What the tools return, as pydantic models: their output schemas and structured content.

Plain data, no fastmcp and no behaviour: ``render`` fills them from the
domain's results (and is the only place that cuts anything to fit), the server
layer hands them to fastmcp, and clients read their JSON schemas.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, Field

from kernel_mcp.kernel import Status

__all__ = [
    "CellReport",
    "ErrorInfo",
    "ExportResult",
    "FileList",
    "NotebookReport",
    "RunReport",
    "SessionAction",
    "SessionList",
    "SessionView",
]


class ErrorInfo(BaseModel):
    """The exception a run raised."""

    ename: str
    evalue: str
    traceback: str = Field(description="Plain text, ANSI codes removed.")


class RunReport(BaseModel):
    """Structured result of run_python / run_code (the tools' output schema)."""

    status: Status = Field(
        description="ok | error (exception) | timeout | kernel_died | interrupted"
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
    notes: list[str] = Field(default_factory=list)


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

    status: Status
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
    notes: list[str] = Field(default_factory=list)
