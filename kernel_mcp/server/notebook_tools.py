"""Notebooks: export a session's recording, run a notebook with parameters."""

from __future__ import annotations

from typing import Any

import mcp_types
from fastmcp import Context, FastMCP
from fastmcp.tools import ToolResult
from mcp_types import ToolAnnotations

from kernel_mcp.runner import Runner
from kernel_mcp.runner.requests import NotebookOutcome
from kernel_mcp.runner.runs import Run
from kernel_mcp.server.auth import owner
from kernel_mcp.server.render import ReplyLimits
from kernel_mcp.server.replies import rendered, tool_result
from kernel_mcp.server.run_flow import run_call
from kernel_mcp.server.run_tools import run_annotations, task_config
from kernel_mcp.server.views import ExportResult, NotebookReport

__all__ = ["register_notebook_tools"]


def register_notebook_tools(
    mcp: FastMCP, runner: Runner, limits: ReplyLimits, *, open_world: bool, tasks: bool
) -> None:
    def reply(outcome: NotebookOutcome) -> ToolResult:
        return tool_result(rendered(outcome, limits))

    def running(run: Run) -> NotebookReport:
        return NotebookReport(
            status="running",
            notebook=run.label,
            path=None,
            uri=None,
            duration_s=0.0,
            cells=[],
            cells_total=0,
            failed_cell=None,
            error=None,
            session_id=run.session_id,
            run_id=run.id,
            notes=["Started in the background: follow it with get_run(run_id)."],
        )

    @mcp.tool(annotations=ToolAnnotations(destructiveHint=True, openWorldHint=False))
    async def export_notebook(
        session_id: str, name: str | None = None, overwrite: bool = False
    ) -> ExportResult:
        """Save a session's runs as <notebooks folder>/<name>.ipynb (JupyterLab opens it).

        Args:
            session_id: the session to export.
            name: file name without folder (letters, digits, -, _, .); default the session's.
            overwrite: replace an existing file of that name.

        Returns path, uri (readable as an MCP resource) and cells (recorded runs). The
        notebook starts with a set-up cell, so it re-runs elsewhere (nbclient, papermill,
        JupyterLab) as it was recorded.
        """
        path, uri, cells = await runner.export_notebook(
            owner=owner(), session_id=session_id, name=name, overwrite=overwrite
        )
        return ExportResult(path=str(path), uri=uri, cells=cells)

    @mcp.tool(
        output_schema=NotebookReport.model_json_schema(),
        annotations=run_annotations(open_world=open_world),
        task=task_config(tasks),
    )
    async def run_notebook(
        notebook_path: str,
        parameters: dict[str, Any] | None = None,
        session_id: str | None = None,
        timeout: float | None = None,
        allow_errors: bool = False,
        background: bool = False,
        kernel: str | None = None,
        ctx: Context | None = None,
    ) -> ToolResult | mcp_types.InputRequiredResult:
        """Execute a .ipynb from the projects folder, cell by cell, papermill-style.

        Args:
            notebook_path: relative to the projects folder.
            parameters: JSON values (no NaN or Infinity) injected after the cell tagged
                "parameters"; an existing "injected-parameters" cell is replaced.
            session_id: run in that session's kernel; omit for a fresh kernel.
            timeout: per cell, seconds (a total cap applies too).
            allow_errors: keep going after a failing cell.
            background: reply at once with a run_id; follow it with get_run.
            kernel: a kernelspec from list_kernels, for a fresh run.

        Returns status, a per-cell summary (index, status, duration_s in seconds), the
        failing cell's outputs, and the executed copy's path and URI (the source is never
        changed). Read the executed copy as a resource for every cell's outputs.
        """
        request = runner.notebook_request(
            notebook_path,
            owner=owner(),
            parameters=parameters,
            session_id=session_id,
            timeout=timeout,
            allow_errors=allow_errors,
            kernel=kernel,
            background=background,
        )
        return await run_call(ctx, runner, request, reply, started_report=running)
