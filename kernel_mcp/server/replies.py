"""Replies: a finished run as MCP content (text, images, structured content), and progress."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from fastmcp import Context
from fastmcp.tools import ToolResult
from mcp_types import ImageContent, TextContent

from kernel_mcp.runner.requests import NotebookOutcome, RunOutcome
from kernel_mcp.server.render import NotebookReply, Reply, ReplyLimits, render, render_notebook

__all__ = ["progress_reporter", "rendered", "tool_result"]

log = logging.getLogger("kernel_mcp.server")

P = ParamSpec("P")
R = TypeVar("R")


def rendered(outcome: RunOutcome | NotebookOutcome, limits: ReplyLimits) -> Reply | NotebookReply:
    """A finished run's outcome as the model reads it, within the reply limits."""
    if isinstance(outcome, NotebookOutcome):
        return render_notebook(
            outcome.run,
            limits,
            source=outcome.source,
            path=str(outcome.path) if outcome.path is not None else None,
            uri=outcome.uri,
            session_id=outcome.session_id,
            notes=outcome.notes,
        )
    return render(
        outcome.execution,
        limits,
        file=outcome.file,
        session_id=outcome.session_id,
        notebook=outcome.notebook_uri,
        notes=outcome.notes,
    )


def tool_result(reply: Reply | NotebookReply) -> ToolResult:
    """A reply as MCP content: one text block, one image block per figure, structured
    content; a status other than "ok" is an error result."""
    content: list[Any] = [TextContent(type="text", text=reply.text)]
    if isinstance(reply, Reply):
        content += [
            ImageContent(type="image", data=image.data, mime_type=image.mime_type)
            for image in reply.images
        ]
    return ToolResult(
        content=content,
        structured_content=reply.report.model_dump(mode="json"),
        is_error=reply.is_error,
    )


def progress_reporter(ctx: Context | None) -> Callable[[float, str], Awaitable[None]] | None:
    """Progress notifications (sent only if the client gave a progress token)."""
    if ctx is None:
        return None

    async def report(elapsed: float, line: str) -> None:
        with contextlib.suppress(Exception):
            await ctx.report_progress(progress=round(elapsed, 1), message=line or None)

    return report
