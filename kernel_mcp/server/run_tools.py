"""run_python and run_code: run a file or a snippet, fresh or in a session."""

from __future__ import annotations

from fastmcp import Context, FastMCP
from fastmcp.tools import ToolResult
from mcp_types import ToolAnnotations

from kernel_mcp.render import ReplyLimits, render
from kernel_mcp.runner import Runner, RunOutcome
from kernel_mcp.server.auth import owner
from kernel_mcp.server.edge import progress_reporter, run_result, translated
from kernel_mcp.views import RunReport

__all__ = ["RUN_ANNOTATIONS", "register_run_tools"]

#: Code execution changes things and may reach anything the kernel can reach.
RUN_ANNOTATIONS = ToolAnnotations(readOnlyHint=False, destructiveHint=False, openWorldHint=False)


def register_run_tools(mcp: FastMCP, runner: Runner, limits: ReplyLimits) -> None:
    schema = RunReport.model_json_schema()

    def reply(outcome: RunOutcome) -> ToolResult:
        return run_result(
            render(
                outcome.execution,
                limits,
                file=outcome.file,
                session_id=outcome.session_id,
                notebook=outcome.notebook_uri,
                notes=outcome.notes,
            )
        )

    @mcp.tool(output_schema=schema, annotations=RUN_ANNOTATIONS)
    @translated
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
            owner=owner(),
            timeout=timeout,
            session_id=session_id,
            progress=progress_reporter(ctx),
            save_notebook=save_notebook,
        )
        return reply(outcome)

    @mcp.tool(output_schema=schema, annotations=RUN_ANNOTATIONS)
    @translated
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
            owner=owner(),
            timeout=timeout,
            session_id=session_id,
            progress=progress_reporter(ctx),
            save_notebook=save_notebook,
        )
        return reply(outcome)
