"""server_info: the folders and why, the limits in force, the sandbox and the version, as
the model reads them (over every transport), assembled by ``kernel_mcp.server.info``."""

from __future__ import annotations

from pathlib import Path

import pytest

from kernel_mcp import __version__
from kernel_mcp.config import Settings, load_settings
from kernel_mcp.deployment import deployment_for
from kernel_mcp.server.info import server_info
from kernel_mcp.server.views import ServerInfo
from tests.helpers import call, structured


@pytest.mark.transport
async def test_server_info_tells_the_folders_limits_sandbox_and_version(client, server):
    tools = {tool.name: tool for tool in await client.list_tools()}
    hints = tools["server_info"].annotations
    assert hints.read_only_hint is True and hints.idempotent_hint is True
    assert hints.open_world_hint is False
    assert tools["server_info"].output_schema is not None

    result = await call(client, "server_info")
    assert not result.is_error
    info = structured(result)
    assert info["version"] == __version__
    assert info["projects"] == {
        "path": server.env["PYTHON_PROJECTS_DIR"],
        "origin": "setting",
        "own": False,
    }
    assert info["notebooks"] == {
        "path": server.env["KERNEL_MCP_NOTEBOOKS_DIR"],
        "origin": "setting",
    }
    session = structured(await call(client, "create_session"))
    await call(client, "close_session", session_id=session["session_id"])
    assert info["sandbox"]["on"] is session["sandboxed"]
    if info["sandbox"]["on"]:
        assert info["sandbox"]["description"].startswith("on (")
        assert info["sandbox"]["network"] is False
    limits = info["limits"]
    assert limits["timeout_s"] == 20  # the shared server's PYTHON_TIMEOUT
    assert limits["interrupt_grace_s"] == 1
    assert limits["max_timeout_s"] == 600
    assert limits["memory_limit_mb"] == 4096
    assert limits["max_sessions"] == 32
    assert ".py" in limits["write_suffixes"]
    assert info["kernels"] == ["python3"]
    assert info["backend"] == "local"


async def test_server_info_comes_from_the_settings(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(tmp_path))
    monkeypatch.setenv("KERNEL_MCP_MEMORY_LIMIT_MB", "0")
    monkeypatch.setenv("KERNEL_MCP_MAX_SESSIONS", "3")
    monkeypatch.setenv("KERNEL_MCP_SANDBOX", "off")
    info = await _info(load_settings())
    assert info.limits.memory_limit_mb is None  # 0: off, none enforced
    assert info.limits.max_sessions == 3
    assert info.sandbox.on is False and info.sandbox.network is True
    assert info.sandbox.description == "off (KERNEL_MCP_SANDBOX=off)"
    monkeypatch.setenv("KERNEL_MCP_GATEWAY_URL", "http://127.0.0.1:9")
    monkeypatch.setenv("KERNEL_MCP_MEMORY_LIMIT_MB", "2048")
    remote = await _info(load_settings())
    assert remote.backend == "gateway"
    assert remote.limits.memory_limit_mb is None  # limited where the gateway runs them


async def _info(settings: Settings) -> ServerInfo:
    """server_info as the server says it, on the backend the settings select."""
    backend = deployment_for(settings).backend
    try:
        return server_info(settings, backend)
    finally:
        await backend.close()
