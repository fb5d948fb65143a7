"""The CLI's client side: an MCP client on a running server, or on one in this process."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

from fastmcp import Client

from kernel_mcp.config import Settings
from kernel_mcp.deployment import runner_for
from kernel_mcp.server.app import build_server

__all__ = ["connected"]


@contextlib.asynccontextmanager
async def connected(
    url: str | None, *, token: str | None, settings: Settings | None
) -> AsyncIterator[Client[Any]]:
    """A client on the server at ``url`` (with ``token``), or, without one, on a server
    built here on ``settings`` (its kernels end with the context)."""
    if url:
        async with Client(url, auth=token, timeout=None) as client:
            yield client
        return
    assert settings is not None, "a server in this process needs its settings"
    async with runner_for(settings) as runner, Client(build_server(settings, runner)) as client:
        yield client
