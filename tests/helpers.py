"""What the test modules share: a test projects folder, a server over it, and MCP clients.

Every integration test talks to ``kernel-mcp serve`` in a subprocess, over the
transport it names: streamable HTTP in the 2026-07-28 era (``mcp``) and in the
handshake era (``mcp-legacy``), legacy SSE (``sse``), and stdio (``stdio``,
where the client launches the server itself). The services themselves are
started by ``tests/launchers.py``; the fixtures are in ``tests/conftest.py``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from fastmcp import Client
from fastmcp.client.transports import StdioTransport

from tests.launchers import ROOT, ServerProcess, server_env

SAMPLES = ROOT / "python_projects"
PROGRAMS = Path(__file__).resolve().parent / "programs"
TRANSPORTS = ("mcp", "mcp-legacy", "sse", "stdio")
SECRET = "s3cr3t-value-that-must-not-leak"
#: What every test server runs with unless a test says otherwise: a short interrupt
#: grace, a pool of two, a secret it must never show and a setting it may show.
TEST_SETTINGS = {
    "KERNEL_MCP_INTERRUPT_GRACE": "1",
    "KERNEL_MCP_POOL_SIZE": "2",
    "FAKE_API_KEY": SECRET,
    "HARMLESS_SETTING": "visible",
}


def make_projects(base: Path) -> Path:
    """A projects folder with the samples, the hostile test programs and an escape link."""
    projects = base / "projects"
    projects.mkdir(parents=True)
    for source in [*SAMPLES.glob("*.py"), *SAMPLES.glob("*.ipynb"), *PROGRAMS.iterdir()]:
        if source.is_file():
            shutil.copy(source, projects / source.name)
    outside = base / "outside"
    outside.mkdir()
    (outside / "secret.py").write_text(f"print({SECRET!r})\n")
    (projects / "escape.py").symlink_to(outside / "secret.py")
    (projects / "sub").mkdir()
    (projects / "sub" / "nested.py").write_text("print('nested ok')\n")
    return projects


@contextlib.contextmanager
def running_server(
    tmp: Path, *extra: str, wrapper: tuple[str, ...] = (), **settings: str
) -> Iterator[ServerProcess]:
    """A server over ``tmp/projects`` (made by :func:`make_projects` if missing), with
    :data:`TEST_SETTINGS` and ``settings``; logs to ``tmp/server.log``."""
    tmp.mkdir(parents=True, exist_ok=True)
    projects = tmp / "projects"
    if not projects.exists():
        make_projects(tmp)
    env = server_env(projects, tmp / "notebooks", **{**TEST_SETTINGS, **settings})
    server = ServerProcess(env, wrapper=wrapper, log=tmp / "server.log")
    server.start(*extra)
    try:
        yield server
    finally:
        server.stop()


def client_for(kind: str, server: ServerProcess, **kwargs: Any) -> Client[Any]:
    """A fastmcp Client over one transport to ``server`` (stdio launches its own)."""
    kwargs.setdefault("timeout", 120)
    if kind == "mcp":
        return Client(f"{server.base}/mcp", **kwargs)
    if kind == "mcp-legacy":
        return Client(f"{server.base}/mcp", mode="legacy", **kwargs)
    if kind == "sse":
        return Client(f"{server.base}/sse", **kwargs)
    if kind == "stdio":
        transport = StdioTransport(
            sys.executable,
            ["-m", "kernel_mcp", "serve", "--stdio", "--log-level", "warning"],
            env=server.env,
            keep_alive=False,
            cwd=str(ROOT),
        )
        return Client(transport, **kwargs)
    raise ValueError(kind)


async def call(client: Client[Any], tool: str, **arguments: Any) -> Any:
    """Call a tool without raising on isError; returns the raw MCP result."""
    return await client.call_tool_mcp(tool, arguments)


def structured(result: Any) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Await a condition until it holds or time runs out. Returns the last outcome."""
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)


def raw_tool_call(
    server: ServerProcess, tool: str, arguments: str, timeout: float = 60, token: str | None = None
) -> str:
    """A tools/call written by hand (2026-07-28 era), for what no client library sends:
    ``arguments`` is the JSON text as it goes on the wire (lone surrogates, NaN). The
    reply's body, whatever its HTTP status; ``token`` is sent as a bearer token."""
    meta = json.dumps(
        {
            "io.modelcontextprotocol/protocolVersion": "2026-07-28",
            "io.modelcontextprotocol/clientCapabilities": {},
        }
    )
    body = (
        '{"jsonrpc":"2.0","id":1,"method":"tools/call","params":{"name":'
        + json.dumps(tool)
        + ',"arguments":'
        + arguments
        + ',"_meta":'
        + meta
        + "}}"
    )
    headers = {
        "Content-Type": "application/json",
        "Accept": "application/json, text/event-stream",
        "MCP-Protocol-Version": "2026-07-28",
        "Mcp-Method": "tools/call",
        "Mcp-Name": tool,
    }
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    request = urllib.request.Request(f"{server.base}/mcp", data=body.encode(), headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            return response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.read().decode()
