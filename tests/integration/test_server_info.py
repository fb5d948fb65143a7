"""server_info: the folders and why, the limits in force, the sandbox and the version, as
the model reads them (over every transport), assembled by ``kernel_mcp.server.info``."""

from __future__ import annotations

import pytest

from kernel_mcp import __version__
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
