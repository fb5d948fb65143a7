"""What ``server_info`` says, read from the settings and the backend (no kernel: the local
backend with the sandbox off starts none until asked, the gateway backend none at all).
The same over a real server, every transport: ``tests/integration/test_server_info.py``."""

from __future__ import annotations

from pathlib import Path

from kernel_mcp.config import Settings, load_settings
from kernel_mcp.deployment import deployment_for
from kernel_mcp.server.info import server_info
from kernel_mcp.server.views import ServerInfo


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
