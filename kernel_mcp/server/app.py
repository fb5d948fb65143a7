"""The FastMCP app: every tool and resource bound to one ``Runner``."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from fastmcp import FastMCP
from fastmcp.tools.function_tool import FunctionTool
from fastmcp.utilities.components import FastMCPComponent
from mcp.server.request_state import RequestStateSecurity

from kernel_mcp import __version__
from kernel_mcp.config import Settings
from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import BearerTokens
from kernel_mcp.server.errors import DomainErrors, quiet_fastmcp, raising_tool_errors
from kernel_mcp.server.file_tools import register_file_tools
from kernel_mcp.server.info_tools import register_info_tools
from kernel_mcp.server.limits import ConcurrentRequests, ToolCallsPerMinute
from kernel_mcp.server.notebook_tools import register_notebook_tools
from kernel_mcp.server.package_tools import register_package_tools
from kernel_mcp.server.render import ReplyLimits
from kernel_mcp.server.resources import register_resources
from kernel_mcp.server.run_tools import register_run_tools
from kernel_mcp.server.session_tools import register_session_tools
from kernel_mcp.server.watch_tools import register_watch_tools
from kernel_mcp.watch import WatchApp

__all__ = ["INSTRUCTIONS", "KernelMCP", "build_server"]

INSTRUCTIONS = """\
Runs Python in Jupyter kernels. run_python runs a .py file from the projects
folder (list_files shows them; write_file writes one, read_file reads one back);
run_code runs a snippet. Both start a fresh kernel unless you pass a session_id
from create_session, in which case variables and imports persist between calls.
Replies carry stdout, stderr, the last expression's value, tracebacks and images.
Long runs: pass background=true and follow them with get_run. Session runs are
recorded as notebooks (resources notebook://...). server_info tells where the
folders are, the limits in force and whether the kernels are sandboxed.
view_session gives a link for the person you work for to watch a session live."""


def reply_limits(settings: Settings) -> ReplyLimits:
    return ReplyLimits(
        max_stream_chars=settings.max_stream_chars,
        max_images=settings.max_images,
        max_image_bytes=settings.max_image_bytes,
        max_reply_bytes=settings.max_reply_bytes,
    )


def request_state_security(settings: Settings) -> RequestStateSecurity:
    """How the state of an input() request waiting for the user is sealed.

    It must outlive the wait (a run may wait for its whole time limit), and
    replicas must share its keys (KERNEL_MCP_REQUEST_STATE_KEYS) so that a retry
    may land on any of them.
    """
    ttl = max(settings.max_timeout, settings.timeout) + 60.0
    if settings.state_keys:
        return RequestStateSecurity(keys=settings.state_keys, ttl=ttl, audience="kernel-mcp")
    return RequestStateSecurity.ephemeral(ttl=ttl, audience="kernel-mcp")


class KernelMCP(FastMCP):
    """FastMCP, with tool look-ups by name resolved once, and MCP tasks' bodies translating
    domain errors as the ``DomainErrors`` middleware does for every other call.

    Why: fastmcp resolves the tool of every call by asking each provider
    concurrently (an anyio task per provider), and the tasks extension resolves it
    again: a share of the server's CPU on every warm call (docs/benchmarks.md).
    kernel-mcp's tools are fixed once the server is built, and none has a version,
    a transform or an ``auth`` check of its own (bearer tokens are checked by the
    transport, per request), so the first answer stays right. ``_get_tool`` is
    fastmcp 4.1's provider look-up; the enablement checks above it still run on
    every call.
    """

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._resolved_tools: dict[str, Any] = {}

    async def get_tasks(self) -> Sequence[FastMCPComponent]:
        """The task-capable components, as fastmcp_tasks' Docket worker runs them: it calls a
        tool's body outside the middleware chain, so the body it is given translates domain
        errors itself (``server.errors.raising_tool_errors``)."""
        translated: list[FastMCPComponent] = []
        for component in await super().get_tasks():
            if isinstance(component, FunctionTool):
                body = raising_tool_errors(component.fn, component.name)
                component = component.model_copy(update={"fn": body})
            translated.append(component)
        return translated

    async def _get_tool(self, name: str, version: Any = None) -> Any:
        if version is not None:
            return await super()._get_tool(name, version)
        tool = self._resolved_tools.get(name)
        if tool is None:
            tool = await super()._get_tool(name, version)
            if tool is not None:
                self._resolved_tools[name] = tool
        return tool


def build_server(
    settings: Settings, runner: Runner, *, tasks: bool = False, watch: WatchApp | None = None
) -> FastMCP:
    """The FastMCP app with every tool and resource bound to ``runner``.

    ``watch``: the /watch routes the HTTP app serves beside it (view_session links to
    them); None where there is no page (stdio, in-process clients).

    ``tasks`` serves the MCP tasks extension (``io.modelcontextprotocol/tasks``) to
    clients that negotiate it (when KERNEL_MCP_TASKS allows). Only a serving process
    asks for it: importing fastmcp_tasks also makes every fastmcp ``Client`` in the
    process run its calls as tasks.
    """
    mcp = KernelMCP(
        "kernel-mcp",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=BearerTokens(settings.principals) if settings.principals else None,
        request_state_security=request_state_security(settings),
    )
    # Outermost first: a call refused for being one too many at once is not counted
    # against the minute's calls.
    if settings.max_concurrent_requests:
        mcp.add_middleware(ConcurrentRequests(settings.max_concurrent_requests))
    if settings.max_calls_per_minute:
        mcp.add_middleware(ToolCallsPerMinute(settings.max_calls_per_minute))
    # Innermost: the one translation of the domain's errors, for every tool and resource.
    mcp.add_middleware(DomainErrors())
    quiet_fastmcp()
    limits = reply_limits(settings)
    # Code the kernels run may reach the network (and whatever else the server's
    # user can) unless the sandbox has cut it off.
    open_world = runner.open_world
    serve_tasks = tasks and settings.tasks
    register_run_tools(mcp, runner, limits, open_world=open_world, tasks=serve_tasks)
    register_file_tools(mcp, runner, limits)
    register_session_tools(mcp, runner)
    register_notebook_tools(mcp, runner, limits, open_world=open_world, tasks=serve_tasks)
    register_info_tools(mcp, runner)
    register_package_tools(mcp, runner)
    register_resources(mcp, runner)
    register_watch_tools(mcp, runner, settings, watch)
    if serve_tasks:
        from fastmcp_tasks import TasksExtension

        # Task-mode calls run on an in-process Docket worker: a task's run is this
        # process's, with its kernels (with replicas, tasks/get goes where it started).
        mcp.add_extension(
            TasksExtension(
                url="memory://",
                name=f"kernel-mcp-{id(mcp):x}",
                minimum_check_interval=timedelta(seconds=1),
            )
        )
    return mcp


async def answer_input_schema_lookups(mcp: FastMCP) -> None:
    """Let the SDK look tool input schemas up instead of listing every tool per call.

    On the 2026-07-28 streamable-HTTP path the MCP SDK validates Mcp-Param-*
    headers on every tools/call by running a whole tools/list unless the server
    sets ``get_tool_input_schema`` (its cost per call: docs/benchmarks.md).
    The tools are fixed once built, so their schemas are read once.
    """
    schemas = {tool.name: tool.parameters for tool in await mcp.list_tools()}
    mcp._mcp_server.get_tool_input_schema = schemas.get
