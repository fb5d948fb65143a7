"""Running code: run_python and run_code, and the runs that outlive a call
(get_run, cancel_run, list_runs)."""

from __future__ import annotations

import time
from datetime import timedelta
from typing import Any

import mcp_types
from fastmcp import Context, FastMCP
from fastmcp.tools import ToolResult
from fastmcp.utilities.tasks import TaskConfig
from mcp_types import TextContent, ToolAnnotations

from kernel_mcp.errors import RunGone
from kernel_mcp.runner import Runner
from kernel_mcp.runner.requests import RunOptions, RunOutcome
from kernel_mcp.runner.runs import Run
from kernel_mcp.server.auth import owner
from kernel_mcp.server.render import ReplyLimits
from kernel_mcp.server.replies import progress_reporter, rendered, tool_result
from kernel_mcp.server.run_flow import run_call, run_view
from kernel_mcp.server.views import RunList, RunReport, RunSummary, RunView
from kernel_mcp.server.watch_tools import SESSION_VIEW

__all__ = ["register_run_tools", "run_annotations", "task_config"]

#: get_run waits at most this long for something new, seconds.
MAX_WAIT_S = 60.0


def task_config(tasks: bool) -> TaskConfig:
    """Run tools may run as MCP tasks (``io.modelcontextprotocol/tasks``) for clients that
    negotiate the extension; everyone else calls them as usual."""
    if not tasks:
        return TaskConfig(mode="forbidden")
    return TaskConfig(mode="optional", poll_interval=timedelta(milliseconds=250))


def run_annotations(*, open_world: bool) -> ToolAnnotations:
    """Running code changes things (destructive); it reaches beyond this server unless
    the kernels' network is off (open world)."""
    return ToolAnnotations(
        readOnlyHint=False, destructiveHint=True, idempotentHint=False, openWorldHint=open_world
    )


def register_run_tools(
    mcp: FastMCP, runner: Runner, limits: ReplyLimits, *, open_world: bool, tasks: bool
) -> None:
    schema = RunReport.model_json_schema()
    annotations = run_annotations(open_world=open_world)

    def reply(outcome: RunOutcome) -> ToolResult:
        return tool_result(rendered(outcome, limits))

    def options(ctx: Context | None, **asked: Any) -> RunOptions:
        return RunOptions(owner=owner(), progress=progress_reporter(ctx), **asked)

    def running(run: Run) -> RunReport:
        return RunReport(
            status="running",
            stdout="",
            stderr="",
            result=None,
            error=None,
            images=0,
            truncated=False,
            duration_s=0.0,
            execution_count=None,
            mime_types=[],
            timeout_s=runner.settings.clamp_timeout(run.timeout, background=True),
            file=run.label if run.tool == "run_python" else None,
            session_id=run.session_id,
            run_id=run.id,
            notes=["Started in the background: follow it with get_run(run_id)."],
        )

    @mcp.tool(
        output_schema=schema, annotations=annotations, task=task_config(tasks), app=SESSION_VIEW
    )
    async def run_python(
        file_name: str,
        timeout: float | None = None,
        session_id: str | None = None,
        save_notebook: bool = False,
        background: bool = False,
        kernel: str | None = None,
        ctx: Context | None = None,
    ) -> ToolResult | mcp_types.InputRequiredResult:
        """Run a .py file from the projects folder in a Jupyter kernel, as `python file.py` would.

        Args:
            file_name: path relative to the projects folder (see list_files), e.g. "hello_world.py".
            timeout: seconds; defaults to the server's PYTHON_TIMEOUT, capped at PYTHON_MAX_TIMEOUT
                (background runs: up to KERNEL_MCP_BACKGROUND_MAX_TIMEOUT, 24 h by default).
            session_id: from create_session, to run in that session's kernel; the file's
                top-level names then stay defined for later calls (like %run). Omit for a
                fresh kernel.
            save_notebook: for a fresh run, also save it as a one-cell notebook.
            background: start the run and reply at once with a run_id and status "running";
                then call get_run(run_id, wait_s, since) for its output and final reply.
            kernel: a kernelspec from list_kernels, for a fresh run (a session keeps its own).

        Returns one text block (stdout, stderr, result, traceback), one image block per
        figure, and structured content: status ("ok" | "error" | "timeout" |
        "kernel_died" | "interrupted"), stdout, stderr, result, error, images,
        truncated, duration_s (seconds), execution_count. A status other than "ok" is
        an error result. If the code calls input(), the user is asked through the
        client when it supports elicitation (not in background runs; after two declines
        in a run, input() raises EOFError without asking). The loop: write_file →
        run_python → read the traceback → write_file again; use a session to keep
        loaded data.
        """
        asked = options(
            ctx,
            timeout=timeout,
            session_id=session_id,
            save_notebook=save_notebook,
            kernel=kernel,
            background=background,
        )
        request = runner.file_request(file_name, asked)
        return await run_call(ctx, runner, request, reply, started_report=running)

    @mcp.tool(
        output_schema=schema, annotations=annotations, task=task_config(tasks), app=SESSION_VIEW
    )
    async def run_code(
        code: str,
        timeout: float | None = None,
        session_id: str | None = None,
        save_notebook: bool = False,
        background: bool = False,
        kernel: str | None = None,
        ctx: Context | None = None,
    ) -> ToolResult | mcp_types.InputRequiredResult:
        """Run a Python snippet in a Jupyter kernel (IPython syntax and magics work).

        Args:
            code: the source to run; the last expression's value comes back as "result".
            timeout: seconds; defaults to PYTHON_TIMEOUT, capped at PYTHON_MAX_TIMEOUT
                (background runs: up to KERNEL_MCP_BACKGROUND_MAX_TIMEOUT).
            session_id: run in that session's kernel, where earlier variables exist.
                Omit for a fresh, empty kernel.
            save_notebook: for a fresh run, also save it as a one-cell notebook.
            background: reply at once with a run_id; follow it with get_run.
            kernel: a kernelspec from list_kernels, for a fresh run.

        Returns the same reply as run_python.
        """
        asked = options(
            ctx,
            timeout=timeout,
            session_id=session_id,
            save_notebook=save_notebook,
            kernel=kernel,
            background=background,
        )
        request = runner.code_request(code, asked)
        return await run_call(ctx, runner, request, reply, started_report=running)

    # -- runs that outlive a call ----------------------------------------------------
    def finished(run: Run, since: int) -> ToolResult:
        """A done run's full reply, under a line that says which run it was."""
        outcome = run.outcome
        head = f"run {run.id} · {run.label} · done after {run.elapsed_s:.3f} s"
        if outcome is None:
            body = run_view(run, since=since, output_limit=limits.max_stream_chars).model_dump(
                mode="json"
            )
            text = f"{head}\nstatus: {body['status']}\n" + "\n".join(
                f"note: {n}" for n in body["notes"]
            )
            return ToolResult(
                content=[TextContent(type="text", text=text)],
                structured_content=body,
                is_error=True,
            )
        shown = rendered(outcome, limits)
        result = tool_result(shown)
        body = run_view(
            run, since=since, output_limit=limits.max_stream_chars, result=shown.report
        ).model_dump(mode="json")
        content = list(result.content)
        if content and isinstance(content[0], TextContent):
            content[0] = TextContent(type="text", text=f"{head}\n{content[0].text}")
        return ToolResult(content=content, structured_content=body, is_error=result.is_error)

    def progress(run: Run, since: int) -> ToolResult:
        snapshot = run_view(run, since=since, output_limit=limits.max_stream_chars)
        lines = [f"status: {snapshot.status} · {run.label} · run {run.id} · {run.elapsed_s:.1f} s"]
        if snapshot.input_prompt is not None:
            lines.append(f"waiting for input: {snapshot.input_prompt!r}")
        lines += [f"note: {n}" for n in snapshot.notes]
        if snapshot.output:
            lines += [f"--- output since {since} ---", snapshot.output.rstrip("\n")]
        lines.append(f"next: {snapshot.next} (pass as since)")
        return ToolResult(
            content=[TextContent(type="text", text="\n".join(lines))],
            structured_content=snapshot.model_dump(mode="json"),
        )

    read_only = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)

    @mcp.tool(output_schema=RunView.model_json_schema(), annotations=read_only)
    async def get_run(run_id: str, wait_s: float = 0.0, since: int = 0) -> ToolResult:
        """The status and output of a run started with background=true.

        Args:
            run_id: from the run tool's reply (or list_runs).
            wait_s: wait up to this many seconds (0-60) for new output or the end.
            since: an offset from an earlier get_run's `next`: only output after it comes back.

        Returns status ("running", "waiting_input", or the run's final status), `output`
        (stdout and stderr printed after `since`), `next` (pass it as `since` next time),
        elapsed_s (seconds) and, once done, the full reply in `result` (with its text and
        images as content). A run dropped after KERNEL_MCP_RUN_RETENTION or lost to a
        server restart says so (status "dropped" or "lost").
        """
        try:
            run = runner.runs.get(owner(), run_id)
        except RunGone as exc:
            gone = RunView(run_id=run_id, status=exc.kind, done=True, notes=[str(exc)])
            return ToolResult(
                content=[TextContent(type="text", text=f"status: {exc.kind}\nnote: {exc}")],
                structured_content=gone.model_dump(mode="json"),
                is_error=True,
            )
        deadline = time.monotonic() + max(0.0, min(float(wait_s), MAX_WAIT_S))
        while not run.done and run.log.end <= since and run.pending_input is None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            await run.changed(remaining)
        return finished(run, since) if run.done else progress(run, since)

    @mcp.tool(
        output_schema=RunView.model_json_schema(),
        annotations=ToolAnnotations(destructiveHint=True, idempotentHint=True, openWorldHint=False),
    )
    async def cancel_run(run_id: str) -> ToolResult:
        """Stop a background run: its kernel is interrupted, then killed after the grace.

        Returns the run's status afterwards ("cancelled", or its final status if it had
        already ended). A session's variables survive an interrupt that is obeyed.
        """
        run = runner.runs.get(owner(), run_id)
        await runner.runs.cancel(run)
        return finished(run, 0) if run.outcome is not None else started_or_cancelled(run)

    def started_or_cancelled(run: Run) -> ToolResult:
        snapshot = run_view(run, output_limit=0)
        return ToolResult(
            content=[TextContent(type="text", text=f"status: {snapshot.status} · run {run.id}")],
            structured_content=snapshot.model_dump(mode="json"),
        )

    @mcp.tool(annotations=read_only)
    async def list_runs() -> RunList:
        """List your background runs, running and recently finished.

        Finished ones stay until their results are dropped (KERNEL_MCP_RUN_RETENTION).
        Each has run_id, status, tool, label, session_id, started_at and elapsed_s
        (seconds). Follow one with get_run.
        """
        summaries = []
        for run in runner.runs.owned(owner()):
            snapshot = run_view(run, output_limit=0)
            summaries.append(
                RunSummary(
                    run_id=run.id,
                    status=snapshot.status,
                    tool=run.tool,
                    label=run.label,
                    session_id=run.session_id,
                    background=run.background,
                    started_at=run.started_at,
                    elapsed_s=run.elapsed_s,
                )
            )
        return RunList(runs=summaries)
