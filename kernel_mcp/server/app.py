"""The FastMCP app: every tool and resource bound to one ``Runner``."""

from __future__ import annotations

from fastmcp import FastMCP

from kernel_mcp import __version__
from kernel_mcp.config import Settings
from kernel_mcp.render import ReplyLimits
from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import BearerTokens
from kernel_mcp.server.file_tools import register_file_tools
from kernel_mcp.server.notebook_tools import register_notebook_tools
from kernel_mcp.server.resources import register_resources
from kernel_mcp.server.run_tools import register_run_tools
from kernel_mcp.server.session_tools import register_session_tools

__all__ = ["INSTRUCTIONS", "build_server"]

INSTRUCTIONS = """\
Runs Python in Jupyter kernels. run_python runs a .py file from the projects
folder (list_files shows them); run_code runs a snippet. Both start a fresh
kernel unless you pass a session_id from create_session, in which case
variables and imports persist between calls. Replies carry stdout, stderr,
the last expression's value, tracebacks and images. Session runs are recorded
as notebooks (resources notebook://...)."""


def reply_limits(settings: Settings) -> ReplyLimits:
    return ReplyLimits(
        max_stream_chars=settings.max_stream_chars,
        max_images=settings.max_images,
        max_image_bytes=settings.max_image_bytes,
        max_reply_bytes=settings.max_reply_bytes,
    )


def build_server(settings: Settings, runner: Runner) -> FastMCP:
    """The FastMCP app with every tool and resource bound to ``runner``."""
    mcp = FastMCP(
        "kernel-mcp",
        instructions=INSTRUCTIONS,
        version=__version__,
        auth=BearerTokens(settings.tokens) if settings.tokens else None,
    )
    limits = reply_limits(settings)
    register_run_tools(mcp, runner, limits)
    register_file_tools(mcp, runner, limits)
    register_session_tools(mcp, runner)
    register_notebook_tools(mcp, runner, limits)
    register_resources(mcp, runner)
    return mcp


async def answer_input_schema_lookups(mcp: FastMCP) -> None:
    """Let the SDK look tool input schemas up instead of listing every tool per call.

    On the 2026-07-28 streamable-HTTP path the MCP SDK validates Mcp-Param-*
    headers on every tools/call by running a whole tools/list unless the server
    sets ``get_tool_input_schema`` (4-7 ms a call here, docs/benchmarks.md).
    The tools are fixed once built, so their schemas are read once.
    """
    schemas = {tool.name: tool.parameters for tool in await mcp.list_tools()}
    mcp._mcp_server.get_tool_input_schema = schemas.get
