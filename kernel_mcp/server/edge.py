"""The edge: domain exceptions become tool errors here, and replies become MCP content."""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from fastmcp import Context
from fastmcp.exceptions import ToolError
from fastmcp.tools import ToolResult
from mcp_types import ImageContent, TextContent

from kernel_mcp.errors import KernelError, KernelMCPError, RequestError
from kernel_mcp.runner.requests import NotebookOutcome, RunOutcome
from kernel_mcp.server.render import NotebookReply, Reply, ReplyLimits, render, render_notebook

__all__ = ["progress_reporter", "rendered", "tool_result", "translated"]

log = logging.getLogger("kernel_mcp.server")

P = ParamSpec("P")
R = TypeVar("R")


def translated(fn: Callable[P, Awaitable[R]]) -> Callable[P, Awaitable[R]]:
    """Turn the domain's exceptions into one-line tool errors, and log why.

    fastmcp logs every ToolError as "Error calling tool 'x'" with no reason; the
    reason is logged here instead, and fastmcp's own line is lowered to debug.
    """

    @functools.wraps(fn)
    async def wrapper(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except RequestError as exc:
            log.info("%s refused: %s", fn.__name__, exc)
            raise ToolError(str(exc), log_level=logging.DEBUG) from None
        except KernelError as exc:
            log.warning("%s failed: %s", fn.__name__, exc)
            raise ToolError(f"Kernel failure: {exc}", log_level=logging.DEBUG) from None
        except KernelMCPError as exc:  # pragma: no cover - every subclass is above
            log.warning("%s failed: %s", fn.__name__, exc)
            raise ToolError(str(exc), log_level=logging.DEBUG) from None

    return wrapper


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
