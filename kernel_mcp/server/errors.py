"""Domain errors become MCP errors here, once, for every tool and every resource.

:class:`DomainErrors` is a fastmcp middleware: whatever a tool or a resource read
raises of the domain's tree (``kernel_mcp.errors``) leaves the server as a tool
error (or a resource error) whose message is the domain's own:

* a ``RequestError`` (the caller asked for something refused): its message;
  the reason is logged at INFO;
* a ``KernelError`` (the machinery failed): ``Kernel failure: <message>``;
  logged as a WARNING;
* any other domain error (a run that could not run, a recording, a setting):
  its message; logged as a WARNING.

fastmcp logs every exception a tool or a resource raises as "Error calling tool
'x'", with a traceback, before a middleware sees it. For a domain error that line
says nothing the reason logged here does not: :class:`QuietDomainErrors` lowers
it to DEBUG, so each refusal is logged once, with its reason.

MCP tasks run a tool's body in fastmcp_tasks' Docket worker, outside the
middleware chain: :func:`raising_tool_errors` gives the worker the body with the
same translation (``server.app.KernelMCP.get_tasks``).
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any, ParamSpec, TypeVar

from fastmcp.exceptions import FastMCPError, ResourceError, ToolError
from fastmcp.server.middleware import CallNext, Middleware, MiddlewareContext

from kernel_mcp.errors import InstallFailed, KernelError, KernelMCPError, RequestError

__all__ = ["DomainErrors", "QuietDomainErrors", "quiet_fastmcp", "raising_tool_errors"]

log = logging.getLogger("kernel_mcp.server")

P = ParamSpec("P")
R = TypeVar("R")
#: The fastmcp logger that reports a tool's or a resource's exception.
FASTMCP_LOGGER = "fastmcp.server.server"


def message(exc: KernelMCPError, what: str) -> str:
    """What the caller reads of ``exc``; its reason is logged here, once."""
    if isinstance(exc, RequestError):
        log.info("%s refused: %s", what, exc)
        if isinstance(exc, InstallFailed):  # its status, and uv's own words below
            return exc.described()
        return str(exc)
    log.warning("%s failed: %s", what, exc)
    if isinstance(exc, KernelError):
        return f"Kernel failure: {exc}"
    return str(exc)


def _domain_cause(exc: BaseException) -> KernelMCPError | None:
    """The domain error ``exc`` is, or the one fastmcp wrapped it around."""
    if isinstance(exc, KernelMCPError):
        return exc
    if isinstance(exc, FastMCPError) and isinstance(exc.__cause__, KernelMCPError):
        return exc.__cause__
    return None


class DomainErrors(Middleware):
    """The one translation of the domain's exceptions, for every tool and resource."""

    async def on_call_tool(self, context: MiddlewareContext[Any], call_next: CallNext) -> Any:
        try:
            return await call_next(context)
        except (KernelMCPError, ToolError) as exc:
            cause = _domain_cause(exc)
            if cause is None:
                raise
            name = getattr(context.message, "name", "a tool")
            raise ToolError(message(cause, name), log_level=logging.DEBUG) from None

    async def on_read_resource(self, context: MiddlewareContext[Any], call_next: CallNext) -> Any:
        try:
            return await call_next(context)
        except (KernelMCPError, ResourceError) as exc:
            cause = _domain_cause(exc)
            if cause is None:
                raise
            uri = str(getattr(context.message, "uri", "a resource"))
            raise ResourceError(message(cause, f"reading {uri}"), log_level=logging.DEBUG) from None


class QuietDomainErrors(logging.Filter):
    """Lowers fastmcp's own line about a domain error (logged here with its reason) to
    DEBUG: that line and its traceback would say nothing more."""

    def filter(self, record: logging.LogRecord) -> bool:
        about_domain = record.exc_info and isinstance(record.exc_info[1], KernelMCPError)
        if about_domain and record.levelno > logging.DEBUG:
            record.levelno, record.levelname = logging.DEBUG, "DEBUG"
            return logging.getLogger(record.name).isEnabledFor(logging.DEBUG)
        return True


def quiet_fastmcp() -> None:
    """Install :class:`QuietDomainErrors` on fastmcp's logger (once per process)."""
    logger = logging.getLogger(FASTMCP_LOGGER)
    if not any(isinstance(f, QuietDomainErrors) for f in logger.filters):
        logger.addFilter(QuietDomainErrors())


def raising_tool_errors(fn: Callable[P, Awaitable[R]], name: str) -> Callable[P, Awaitable[R]]:
    """``fn`` with :class:`DomainErrors`' translation, for a body the middleware does not
    wrap (an MCP task's, run by the Docket worker). The signature is ``fn``'s own."""

    @functools.wraps(fn)
    async def body(*args: P.args, **kwargs: P.kwargs) -> R:
        try:
            return await fn(*args, **kwargs)
        except KernelMCPError as exc:
            raise ToolError(message(exc, name), log_level=logging.DEBUG) from None

    return body
