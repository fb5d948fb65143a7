"""Specification of ``kernel_mcp.server.limits`` on an in-process server: requests in
flight and tool calls per minute, counted per principal and refused with a one-line reason
(per principal over real tokens: test_server_limits.py)."""

from __future__ import annotations

import asyncio

from fastmcp import Client, FastMCP

from kernel_mcp.server.limits import ConcurrentRequests, ToolCallsPerMinute


def server(*middleware: object) -> tuple[FastMCP, asyncio.Event, asyncio.Event]:
    mcp = FastMCP("limits")
    started, release = asyncio.Event(), asyncio.Event()
    for item in middleware:
        mcp.add_middleware(item)  # type: ignore[arg-type]

    @mcp.tool
    async def wait() -> str:
        started.set()
        await release.wait()
        return "released"

    @mcp.tool
    def ping() -> str:
        return "pong"

    return mcp, started, release


async def test_requests_past_the_limit_in_flight_are_refused_until_one_ends() -> None:
    limit = ConcurrentRequests(1)
    mcp, started, release = server(limit)
    async with Client(mcp) as client:
        waiting = asyncio.ensure_future(client.call_tool("wait"))
        await started.wait()
        assert limit.in_flight("anonymous") == 1
        refused = await client.call_tool("ping", raise_on_error=False)
        assert refused.is_error
        assert "Too many requests at once" in refused.content[0].text  # type: ignore[union-attr]
        release.set()
        assert (await waiting).data == "released"
        assert (await client.call_tool("ping")).data == "pong"
        assert limit.in_flight("anonymous") == 0


async def test_tool_calls_past_the_minute_s_limit_are_refused_other_requests_are_not() -> None:
    mcp, _, _ = server(ToolCallsPerMinute(2))
    async with Client(mcp) as client:
        assert (await client.call_tool("ping")).data == "pong"
        assert (await client.call_tool("ping")).data == "pong"
        refused = await client.call_tool("ping", raise_on_error=False)
        assert refused.is_error
        text = refused.content[0].text  # type: ignore[union-attr]
        assert text.startswith("Rate limit: at most 2 tool calls per minute for this token")
        assert len(await client.list_tools()) == 2
