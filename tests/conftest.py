"""Shared fixtures: real server subprocesses on free ports, and real MCP clients.

Every integration test talks to ``kernel-mcp serve`` in a subprocess, over the
transport it names: streamable HTTP in the 2026-07-28 era (``mcp``) and in the
handshake era (``mcp-legacy``), legacy SSE (``sse``), and stdio (``stdio``,
where the client launches the server itself).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psutil
import pytest
from fastmcp import Client
from fastmcp.client.transports import StdioTransport

ROOT = Path(__file__).resolve().parent.parent
SAMPLES = ROOT / "python_projects"
PROGRAMS = Path(__file__).resolve().parent / "programs"
TRANSPORTS = ("mcp", "mcp-legacy", "sse", "stdio")
SECRET = "s3cr3t-value-that-must-not-leak"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def kernel_processes() -> list[psutil.Process]:
    """Every ipykernel process on the machine."""
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        with contextlib.suppress(psutil.Error):
            if "ipykernel_launcher" in " ".join(proc.info["cmdline"] or []):
                found.append(proc)
    return found


def descendants_of(pids: set[int]) -> set[int]:
    """Kernel pids plus every process below them."""
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.add(pid)
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


#: A kernel-side expression naming the kernel's PID namespace, for :func:`host_pids`.
PID_NAMESPACE = "__import__('os').readlink('/proc/self/ns/pid')"


def host_pids(namespace: str, pids: Iterable[int]) -> set[int]:
    """The host pids of the processes numbered ``pids`` inside PID namespace ``namespace``.

    A sandboxed kernel has a PID namespace of its own (it is pid 2 there), so the
    pids it reports mean nothing on the host; unsandboxed, the namespace is the
    host's and the pids map to themselves.
    """
    wanted = {str(pid) for pid in pids}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, StopIteration):
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            status = (entry / "status").read_text()
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if nspid.split()[-1] in wanted:
                found.add(int(entry.name))
    return found


def alive(pids: set[int]) -> set[int]:
    result = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                result.add(pid)
    return result


def wait_until(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll a condition until it holds or time runs out. Returns the last outcome."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


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


@dataclass
class ServerProcess:
    """``kernel-mcp serve`` in a subprocess on a free port."""

    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    wrapper: tuple[str, ...] = ()
    """A command the server runs under (it must exec its arguments), e.g. a namespace."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> ServerProcess:
        assert self.log is not None
        self.proc = subprocess.Popen(
            [
                *self.wrapper,
                sys.executable,
                "-m",
                "kernel_mcp",
                "serve",
                "--port",
                str(self.port),
                *extra,
            ],
            env=self.env,
            stdout=self.log.open("ab"),
            stderr=subprocess.STDOUT,
            cwd=self.env.get("KERNEL_MCP_TEST_CWD", str(ROOT)),
        )

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"server exited: {self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        if not wait_until(ready, timeout=60):
            raise RuntimeError(f"server did not start: {self.log.read_text()[-3000:]}")
        return self

    def kernel_pids(self) -> set[int]:
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            return {
                p.pid
                for p in psutil.Process(self.proc.pid).children(recursive=True)
                if "ipykernel_launcher" in " ".join(p.cmdline())
            }
        return set()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def server_env(projects: Path, notebooks: Path, **settings: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "PYTHON_"))}
    env.update(
        PYTHON_PROJECTS_DIR=str(projects),
        KERNEL_MCP_NOTEBOOKS_DIR=str(notebooks),
        KERNEL_MCP_INTERRUPT_GRACE="1",
        KERNEL_MCP_POOL_SIZE="2",
        FAKE_API_KEY=SECRET,
        HARMLESS_SETTING="visible",
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


@contextlib.contextmanager
def running_server(
    tmp: Path, *extra: str, wrapper: tuple[str, ...] = (), **settings: str
) -> Iterator[ServerProcess]:
    tmp.mkdir(parents=True, exist_ok=True)
    projects = tmp / "projects"
    if not projects.exists():
        make_projects(tmp)
    server = ServerProcess(server_env(projects, tmp / "notebooks", **settings), wrapper=wrapper)
    server.log = tmp / "server.log"
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


# -- fixtures ----------------------------------------------------------------------
@pytest.fixture(scope="session")
def shared_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("shared")


@pytest.fixture(scope="session")
def server(shared_tmp: Path) -> Iterator[ServerProcess]:
    """The default server every transport test shares."""
    with running_server(shared_tmp, PYTHON_TIMEOUT="20") as srv:
        yield srv


@pytest.fixture(scope="session", params=TRANSPORTS)
async def client(request: pytest.FixtureRequest, server: ServerProcess) -> AsyncIterator[Any]:
    """One long-lived client per transport; tests using it run once per transport."""
    async with client_for(request.param, server) as connected:
        connected.kind = request.param
        yield connected


async def call(client: Client[Any], tool: str, **arguments: Any) -> Any:
    """Call a tool without raising on isError; returns the raw MCP result."""
    return await client.call_tool_mcp(tool, arguments)


def structured(result: Any) -> dict[str, Any]:
    assert result.structured_content is not None, result
    return dict(result.structured_content)


def text_of(result: Any) -> str:
    return "\n".join(block.text for block in result.content if block.type == "text")


async def wait_for(predicate: Any, timeout: float = 20.0, interval: float = 0.05) -> bool:
    deadline = time.monotonic() + timeout
    while True:
        if await predicate():
            return True
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(interval)
