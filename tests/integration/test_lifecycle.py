"""Limits and lifecycle over real transports: culling, session cap, memory limit,
and no process left behind after close, SIGTERM, SIGINT or a stdio client leaving."""

from __future__ import annotations

import shutil
import signal
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.helpers import (
    TRANSPORTS,
    call,
    client_for,
    running_server,
    structured,
    text_of,
    wait_for,
)
from tests.launchers import (
    PID_NAMESPACE,
    ServerProcess,
    alive,
    descendants_of,
    host_pids,
    kernel_processes,
    wait_until,
)

pytestmark = pytest.mark.transport

SPAWN_CHILD = (
    "import subprocess, os\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    f"print({PID_NAMESPACE}, os.getpid(), child.pid)"
)


def spawned(stdout: str) -> set[int]:
    """The host pids of the kernel and the child that SPAWN_CHILD printed."""
    namespace, *pids = stdout.split()
    found = host_pids(namespace, map(int, pids))
    assert len(found) == len(pids), (stdout, found)
    return found


@pytest.fixture(scope="module")
def limited(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("limited")
    with running_server(
        tmp,
        # Long enough that a loaded machine's gap between two calls of one test is not
        # taken for idleness; the culling test waits for it.
        KERNEL_MCP_SESSION_IDLE_TIMEOUT="5",
        KERNEL_MCP_MAX_SESSIONS="2",
        KERNEL_MCP_MEMORY_LIMIT_MB="1024",
        KERNEL_MCP_POOL_SIZE="1",
    ) as server:
        yield server


@pytest.mark.parametrize("kind", TRANSPORTS)
async def test_idle_sessions_are_culled_and_say_when(limited, kind):
    async with client_for(kind, limited) as client:
        sid = structured(await call(client, "create_session"))["session_id"]
        code = f"import os; print({PID_NAMESPACE}, os.getpid())"
        (pid,) = spawned(
            structured(await call(client, "run_code", code=code, session_id=sid))["stdout"]
        )

        async def culled() -> bool:
            listed = structured(await call(client, "list_sessions"))["sessions"]
            return sid not in {s["session_id"] for s in listed}

        assert await wait_for(culled, timeout=40, interval=0.25)
        result = await call(client, "run_code", code="1", session_id=sid)
        assert result.is_error
        assert "was culled at" in text_of(result)
        assert "KERNEL_MCP_SESSION_IDLE_TIMEOUT" in text_of(result)
        assert wait_until(lambda: not alive({pid}), timeout=15)  # culling ended the kernel


@pytest.mark.parametrize("kind", ["mcp", "sse"])
async def test_session_limit_is_a_clear_error(limited, kind):
    async with client_for(kind, limited) as client:
        first = structured(await call(client, "create_session"))["session_id"]
        second = structured(await call(client, "create_session"))["session_id"]
        try:
            refused = await call(client, "create_session")
            assert refused.is_error
            assert "KERNEL_MCP_MAX_SESSIONS" in text_of(refused)
        finally:
            for sid in (first, second):
                await call(client, "close_session", session_id=sid)


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy", "sse", "stdio"])
async def test_memory_limit_gives_memory_error_and_server_survives(limited, kind):
    async with client_for(kind, limited) as client:
        fresh = structured(await call(client, "run_code", code="x = bytearray(3 * 1024**3)"))
        assert fresh["status"] in ("error", "kernel_died")
        if fresh["status"] == "error":
            assert fresh["error"]["ename"] == "MemoryError"
        sid = structured(await call(client, "create_session"))["session_id"]
        try:
            await call(client, "run_code", code="small = 1", session_id=sid)
            hog = structured(
                await call(client, "run_code", code="y = bytearray(3 * 1024**3)", session_id=sid)
            )
            assert hog["status"] in ("error", "kernel_died")
            after = structured(await call(client, "run_code", code="2 + 2", session_id=sid))
            assert after["status"] == "ok" and after["result"] == "4"
        finally:
            await call(client, "close_session", session_id=sid)


async def test_close_leaves_no_kernel_or_child_behind(limited):
    async with client_for("mcp", limited) as client:
        sid = structured(await call(client, "create_session"))["session_id"]
        out = structured(await call(client, "run_code", code=SPAWN_CHILD, session_id=sid))
        pids = spawned(out["stdout"])
        assert alive(pids) == pids
        await call(client, "close_session", session_id=sid)
        assert wait_until(lambda: not alive(pids), timeout=15)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
async def test_server_stop_leaves_no_kernel_or_child_behind(tmp_path, sig):
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="2") as server:
        async with client_for("mcp", server) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            out = structured(await call(client, "run_code", code=SPAWN_CHILD, session_id=sid))
            pids = spawned(out["stdout"])
            fresh = structured(await call(client, "run_code", code=SPAWN_CHILD))
        # The fresh run's kernel ended with its reply: its pids may be gone already.
        assert fresh["status"] == "ok"
        pids |= descendants_of(server.kernel_pids())
        assert server.stop(sig) is not None
        assert wait_until(lambda: not alive(pids), timeout=15), alive(pids)


async def test_stdio_client_leaving_ends_every_kernel(tmp_path):
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1") as server:
        before = {p.pid for p in kernel_processes()}
        async with client_for("stdio", server) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            out = structured(await call(client, "run_code", code=SPAWN_CHILD, session_id=sid))
            # Not the HTTP server's own pool kernels (still starting when `before` was
            # taken, if its fork template was warming up): only the stdio server's.
            theirs = descendants_of({server.pid})
            started = {p.pid for p in kernel_processes()} - before - theirs
            pids = started | spawned(out["stdout"])
        assert pids
        assert wait_until(lambda: not alive(pids), timeout=15), alive(pids)


async def test_a_killed_servers_folder_is_removed_by_the_next_server(tmp_path, request):
    # SIGKILL leaves the server no chance to remove its private folder (its kernels die
    # with it); the next server to start with the same temporary directory removes it.
    # Short: kernels' socket paths must fit (a longer TMPDIR is replaced by /tmp).
    scratch = Path(tempfile.mkdtemp(prefix="kmcp-", dir="/tmp"))
    request.addfinalizer(lambda: shutil.rmtree(scratch, ignore_errors=True))
    with running_server(tmp_path / "first", KERNEL_MCP_POOL_SIZE="1", TMPDIR=str(scratch)) as first:
        async with client_for("mcp", first) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            assert not (await call(client, "run_code", code="1", session_id=sid)).is_error
        left = [p for p in scratch.iterdir() if p.name.startswith(f"kernel-mcp-{first.pid}-")]
        assert len(left) == 1 and any(left[0].iterdir()), list(scratch.iterdir())
        assert first.stop(signal.SIGKILL) is not None
    assert left[0].exists()
    with running_server(
        tmp_path / "second", KERNEL_MCP_POOL_SIZE="1", TMPDIR=str(scratch)
    ) as second:
        async with client_for("mcp", second) as client:
            assert not (await call(client, "run_code", code="1")).is_error
        assert not left[0].exists()
        assert [p.name.split("-")[2] for p in scratch.glob("kernel-mcp-*")] == [str(second.pid)]


async def test_a_temporary_directory_too_long_for_sockets_still_runs_kernels(tmp_path):
    deep = tmp_path / ("long-temporary-directory-" * 3)
    deep.mkdir()
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1", TMPDIR=str(deep)) as server:
        async with client_for("mcp", server) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            report = structured(await call(client, "run_code", code="1 + 1", session_id=sid))
            assert report["result"] == "2", report
            fresh = structured(await call(client, "run_code", code="print('fresh')"))
            assert fresh["stdout"] == "fresh\n", fresh
