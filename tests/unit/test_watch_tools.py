"""Specification of ``kernel_mcp.server.watch_tools`` in memory, on fake kernels.

view_session's link starts with KERNEL_MCP_PUBLIC_URL when one is set (a tunnel or a
proxy) and carries a ticket the /watch routes redeem once; a server without a page
(stdio, in memory) says why it has none; read_session pages through a session's feed;
KERNEL_MCP_PUBLIC_URL takes an origin only. The same over real transports and a real
browser: ``tests/integration/test_watch_server.py``.
"""

from __future__ import annotations

import urllib.parse
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from fastmcp import Client

from kernel_mcp.config import load_settings
from kernel_mcp.errors import ConfigError
from kernel_mcp.runner import Runner
from kernel_mcp.server.app import build_server
from kernel_mcp.server.watch_tools import build_watch_app
from kernel_mcp.sessions.store import InProcessStore
from tests.unit.fakes import FakeBackend

PUBLIC = "https://kernels.example.org"


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    projects = tmp_path / "projects"
    projects.mkdir()
    settings = load_settings(
        projects_dir=projects,
        notebooks_dir=tmp_path / "nb",
        pool_size=0,
        sandbox="off",
        public_url=PUBLIC + "/",
    )
    async with Runner(settings, backend=FakeBackend(), store=InProcessStore()) as built:
        yield built


async def structured(client: Client[Any], tool: str, **arguments: Any) -> dict[str, Any]:
    result = await client.call_tool_mcp(tool, arguments)
    assert not result.is_error, result
    return dict(result.structured_content or {})


async def test_a_link_starts_with_the_public_url_and_its_ticket_works_once(
    runner: Runner,
) -> None:
    watch = build_watch_app(runner.settings, runner)
    async with Client(build_server(runner.settings, runner, watch=watch)) as client:
        sid = (await structured(client, "create_session"))["session_id"]
        link = await structured(client, "view_session", session_id=sid)
    url = urllib.parse.urlsplit(link["url"])
    assert f"{url.scheme}://{url.netloc}{url.path}" == f"{PUBLIC}/watch/{sid}"
    assert link["expires_in_s"] == runner.settings.watch_ticket_ttl == 60.0
    [ticket] = urllib.parse.parse_qs(url.query)["ticket"]
    grant = watch.tickets.redeem(ticket, sid)
    assert grant is not None and grant.principal is None and grant.session_id == sid
    assert watch.tickets.redeem(ticket, sid) is None


async def test_a_server_without_a_page_says_why_and_still_feeds_the_app(
    runner: Runner,
) -> None:
    async with Client(build_server(runner.settings, runner)) as client:
        sid = (await structured(client, "create_session"))["session_id"]
        refused = await client.call_tool_mcp("view_session", {"session_id": sid})
        assert refused.is_error
        assert "stdio" in refused.content[0].text and "MCP Apps" in refused.content[0].text
        await client.call_tool_mcp("run_code", {"code": "print('hi')", "session_id": sid})
        first = await structured(client, "read_session", session_id=sid)
        assert first["events"] is None and first["state"] == "idle"
        assert first["snapshot"]["cells"][0]["outputs"][0]["text"] == "hi\n"
        again = await structured(client, "read_session", session_id=sid, since=first["cursor"])
        assert again["events"] == [] and again["cursor"] == first["cursor"]


@pytest.mark.parametrize(
    "value",
    ["ftp://kernels.example.org", "https://kernels.example.org/mcp", "https://x.org/?a=1", "x"],
)
def test_the_public_url_is_an_origin_only(value: str, tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="KERNEL_MCP_PUBLIC_URL"):
        load_settings(projects_dir=tmp_path, public_url=value)
