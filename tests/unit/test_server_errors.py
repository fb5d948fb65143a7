"""Specification of ``kernel_mcp.server.errors``: the one translation of the domain's errors.

Every tool and every resource of a server with the ``DomainErrors`` middleware turns
the domain's exceptions into MCP errors with the domain's own message, logs the
reason once, and keeps fastmcp's own line about them (with its traceback) out of
the log. An MCP task's body, which fastmcp runs outside the middleware, is given
the same translation. In memory: no kernel, no transport.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

import pytest
from fastmcp import Client, FastMCP
from fastmcp.exceptions import ToolError
from fastmcp.tools.function_tool import FunctionTool
from fastmcp.utilities.tasks import TaskConfig
from mcp.shared.exceptions import MCPError

from kernel_mcp.errors import (
    InvalidArgument,
    KernelStartFailed,
    RecordingError,
    RunFailed,
    SessionNotFound,
)
from kernel_mcp.server.app import KernelMCP
from kernel_mcp.server.errors import DomainErrors, quiet_fastmcp

RAISED = {
    "refused": InvalidArgument("timeout must be a positive number of seconds"),
    "unknown": SessionNotFound("s-1"),
    "kernel": KernelStartFailed("could not start kernel 'python3'"),
    "run": RunFailed("Run run-1 was cancelled."),
    "recording": RecordingError("Not recorded yet in sessions/x: the disk is full."),
}


def server() -> FastMCP:
    mcp = KernelMCP("errors")
    mcp.add_middleware(DomainErrors())
    quiet_fastmcp()

    @mcp.tool
    async def fails(kind: str) -> str:
        raise RAISED[kind]

    @mcp.tool
    async def breaks() -> str:
        raise ValueError("a bug, not a domain error")

    @mcp.resource("notebook://{name}")
    async def notebook(name: str) -> str:
        raise RAISED[name]

    return mcp


@pytest.fixture
async def client() -> AsyncIterator[Client]:
    async with Client(server()) as connected:
        yield connected


@pytest.mark.parametrize(
    ("kind", "said"),
    [
        ("refused", "timeout must be a positive number of seconds"),
        ("unknown", "Unknown session 's-1'. Call create_session for a new one."),
        ("kernel", "Kernel failure: could not start kernel 'python3'"),
        ("run", "Run run-1 was cancelled."),
        ("recording", "Not recorded yet in sessions/x: the disk is full."),
    ],
)
async def test_a_tool_s_domain_error_is_a_tool_error_with_the_domain_s_message(
    client: Client, kind: str, said: str
) -> None:
    result = await client.call_tool_mcp("fails", {"kind": kind})
    assert result.is_error
    assert [block.text for block in result.content] == [said]


async def test_the_reason_is_logged_once_and_fastmcp_s_own_line_is_quiet(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        await client.call_tool_mcp("fails", {"kind": "refused"})
        await client.call_tool_mcp("fails", {"kind": "kernel"})
    ours = [r for r in caplog.records if r.name == "kernel_mcp.server"]
    assert [(r.levelname, r.getMessage()) for r in ours] == [
        ("INFO", "fails refused: timeout must be a positive number of seconds"),
        ("WARNING", "fails failed: could not start kernel 'python3'"),
    ]
    assert not [r for r in caplog.records if r.name.startswith("fastmcp") and r.levelno > 10]


async def test_an_error_outside_the_tree_is_left_to_fastmcp(
    client: Client, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.INFO):
        result = await client.call_tool_mcp("breaks", {})
    assert result.is_error
    assert "a bug, not a domain error" in result.content[0].text
    assert any(r.name.startswith("fastmcp") and r.levelno == logging.ERROR for r in caplog.records)


@pytest.mark.parametrize(
    ("name", "said"),
    [
        ("unknown", "Unknown session 's-1'. Call create_session for a new one."),
        ("kernel", "Kernel failure: could not start kernel 'python3'"),
    ],
)
async def test_a_resource_s_domain_error_is_an_error_with_the_domain_s_message(
    client: Client, name: str, said: str
) -> None:
    with pytest.raises(MCPError) as caught:
        await client.read_resource(f"notebook://{name}")
    assert str(caught.value) == said


async def test_a_task_s_body_translates_domain_errors_as_the_middleware_does() -> None:
    """fastmcp_tasks runs a task's body in its worker, outside the middleware chain."""
    mcp = KernelMCP("tasks")

    @mcp.tool(task=TaskConfig(mode="optional"))
    async def tasked(kind: str) -> str:
        raise RAISED[kind]

    (component,) = await mcp.get_tasks()
    assert isinstance(component, FunctionTool)
    with pytest.raises(ToolError) as caught:
        await component.fn(kind="kernel")
    assert str(caught.value) == "Kernel failure: could not start kernel 'python3'"
    # The tool itself, for calls through the middleware, is left as it is.
    listed = await mcp.get_tool("tasked")
    assert listed is not None and listed.fn is not component.fn
