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
from kernel_mcp.render import NotebookReply, Reply

__all__ = ["notebook_result", "progress_reporter", "run_result", "translated"]

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


def run_result(reply: Reply) -> ToolResult:
    """A run's reply: one text block, one image block per figure, structured content."""
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


def notebook_result(reply: NotebookReply) -> ToolResult:
    return ToolResult(
        content=[TextContent(type="text", text=reply.text)],
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
