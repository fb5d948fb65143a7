"""A server shared by two principals (tokens "a" and "b") stays usable under floods and load:
HTTP read timeouts, a cap on connections without a valid token, per-principal limits on
requests in flight and on tool calls per minute, and memory admission for new kernels.

Every refusal is a clear, one-line error (HTTP 408 or 503, or a tool error), and the
other principal is served meanwhile. Raw sockets play the flood; fastmcp clients play
the valid users.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import call, client_for, running_server, structured, text_of, wait_for
from tests.launchers import ServerProcess

pytestmark = pytest.mark.transport

HALF_REQUEST = b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"


def read_until_closed(sock: socket.socket, timeout: float = 60.0) -> bytes:
    """What the server sends before it closes the connection (``timeout`` s at most)."""
    sock.settimeout(timeout)
    chunks = []
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(65536):
            chunks.append(chunk)
    return b"".join(chunks)


def half_open(server: ServerProcess) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", server.port), timeout=30)
    sock.sendall(HALF_REQUEST)
    return sock


# -- a flood of connections without a token; memory admission --------------------------------
@pytest.fixture(scope="module")
def flooded_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    # A soft limit of 256 open files (a hard one of 1,024), as on a machine with a low
    # default; a cap of 40 connections without a token; and a memory need no machine
    # has, so that every new kernel is refused.
    with running_server(
        tmp_path_factory.mktemp("flood"),
        wrapper=("prlimit", "--nofile=256:1024", "--"),
        KERNEL_MCP_TOKEN="a,b",
        KERNEL_MCP_MAX_UNAUTHENTICATED="40",
        KERNEL_MCP_ADMISSION_MB="100000000",
    ) as server:
        yield server


def test_the_open_files_limit_is_raised_to_the_hard_limit(flooded_server):
    assert flooded_server.proc is not None
    limits = Path(f"/proc/{flooded_server.proc.pid}/limits").read_text()
    line = next(row for row in limits.splitlines() if row.startswith("Max open files"))
    assert line.split()[3:5] == ["1024", "1024"], line


async def test_a_flood_of_half_sent_requests_does_not_lock_out_a_valid_client(flooded_server):
    # More half-sent, token-less requests than the server's soft limit on open files.
    flood = [half_open(flooded_server) for _ in range(400)]
    try:
        async with client_for("mcp", flooded_server, auth="b", timeout=30) as client:
            listed = await asyncio.wait_for(call(client, "list_kernels"), 60)
        assert not listed.is_error, text_of(listed)
        # Not the header timeout (20 s by default) but the cap made room: the oldest
        # flood connections were answered 503 with the reason, and closed.
        for sock in flood[:300]:
            answer = read_until_closed(sock, timeout=10)
            assert answer.startswith(b"HTTP/1.1 503 "), answer[:200]
            assert b"KERNEL_MCP_MAX_UNAUTHENTICATED" in answer
    finally:
        for sock in flood:
            sock.close()


async def test_without_memory_for_a_kernel_runs_are_refused_clearly_and_the_rest_serves(
    flooded_server,
):
    async with (
        client_for("mcp", flooded_server, auth="a") as a,
        client_for("mcp-legacy", flooded_server, auth="b") as b,
    ):
        # Two principals: b's own projects folder gets the file first (no kernel needed).
        await call(b, "write_file", path="hello_world.py", content="print('hello')\n")
        for client, tool, arguments in (
            (a, "run_code", {"code": "1 + 1"}),
            (b, "run_python", {"file_name": "hello_world.py"}),
            (a, "create_session", {}),
        ):
            refused = await call(client, tool, **arguments)
            text = text_of(refused)
            assert refused.is_error and refused.structured_content is None, text
            assert text.startswith("No memory for a new kernel: the machine has"), text
            assert "KERNEL_MCP_ADMISSION_MB" in text and "\n" not in text
        # Everything that needs no new kernel still works, for both principals.
        assert "hello_world.py" in structured(await call(b, "list_files"))["files"]
        assert structured(await call(a, "list_sessions"))["sessions"] == []
        assert not (await call(a, "list_kernels")).is_error
    # The warm pool waits for memory without retrying in a loop: one line in the log.
    log = (Path(flooded_server.env["KERNEL_MCP_NOTEBOOKS_DIR"]).parent / "server.log").read_text()
    assert 1 <= log.count("the warm pool waits for memory") <= 2, log[-3000:]


# -- read timeouts; requests in flight --------------------------------------------------------
@pytest.fixture(scope="module")
def limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("limits"),
        KERNEL_MCP_TOKEN="a,b",
        KERNEL_MCP_HEADER_TIMEOUT="3",
        KERNEL_MCP_BODY_TIMEOUT="3",
        KERNEL_MCP_MAX_CONCURRENT_REQUESTS="2",
    ) as server:
        yield server


def test_headers_that_never_finish_get_408_and_the_connection_closes(limited_server):
    with half_open(limited_server) as sock:
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
    assert answer.rstrip().endswith(
        b"The request's headers did not arrive within 3 s (KERNEL_MCP_HEADER_TIMEOUT)."
    )


def test_a_body_that_stops_arriving_gets_408_and_the_connection_closes(limited_server):
    with socket.create_connection(("127.0.0.1", limited_server.port), timeout=30) as sock:
        sock.sendall(
            b"POST /mcp HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer a\r\n"
            b"Content-Type: application/json\r\nAccept: application/json, text/event-stream\r\n"
            b'Content-Length: 1000\r\n\r\n{"jsonrpc":'
        )
        answer = read_until_closed(sock)
    assert answer.startswith(b"HTTP/1.1 408 Request Timeout\r\n"), answer[:200]
    assert b"(KERNEL_MCP_BODY_TIMEOUT)" in answer


async def test_a_principal_over_its_requests_in_flight_is_refused_while_another_is_served(
    limited_server,
):
    release = asyncio.Event()
    asked: list[str] = []

    async def answer_later(message: str, response_type: Any, params: Any, context: Any) -> Any:
        asked.append(message)
        await release.wait()
        return "done"

    ask = "print(input('go? '))"
    async with (
        client_for("mcp-legacy", limited_server, auth="a", elicitation_handler=answer_later) as a,
        client_for("mcp", limited_server, auth="b") as b,
    ):
        # Two calls of "a" wait in input() (handshake era: inside the call), so both are
        # in flight: "a" is at its limit of 2.
        waiting = [asyncio.ensure_future(call(a, "run_code", code=ask)) for _ in range(2)]
        try:
            assert await wait_for(lambda: asyncio.sleep(0, len(asked) == 2), timeout=60)
            third = await asyncio.wait_for(call(a, "list_kernels"), 30)
            assert third.is_error, text_of(third)
            assert text_of(third).startswith("Too many requests at once: this token already")
            assert "KERNEL_MCP_MAX_CONCURRENT_REQUESTS" in text_of(third)
            served = structured(await asyncio.wait_for(call(b, "run_code", code="6 * 7"), 60))
            assert served["result"] == "42"
        finally:
            release.set()
        for done in await asyncio.gather(*waiting):
            assert structured(done)["stdout"] == "done\n"
        # The slots are free again.
        assert not (await call(a, "list_kernels")).is_error


# -- tool calls per minute ------------------------------------------------------------------
@pytest.fixture(scope="module")
def rate_limited_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("rate"),
        KERNEL_MCP_TOKEN="a,b",
        KERNEL_MCP_POOL_SIZE="0",
        KERNEL_MCP_MAX_CALLS_PER_MINUTE="5",
    ) as server:
        yield server


async def test_a_principal_over_its_calls_per_minute_is_refused_while_another_is_served(
    rate_limited_server,
):
    async with (
        client_for("mcp", rate_limited_server, auth="a") as caller,
        client_for("sse", rate_limited_server, auth="b") as bystander,
    ):
        results = [await call(caller, "list_kernels") for _ in range(6)]
        assert [r.is_error for r in results] == [False] * 5 + [True]
        refusal = text_of(results[-1])
        assert refusal.startswith("Rate limit: at most 5 tool calls per minute for this token")
        assert "KERNEL_MCP_MAX_CALLS_PER_MINUTE" in refusal and "try again in" in refusal
        # Only tool calls count; and the other principal is served.
        assert len(await caller.list_tools()) > 5
        assert not (await call(bystander, "list_kernels")).is_error
