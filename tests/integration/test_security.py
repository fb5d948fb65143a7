"""HTTP security: bearer tokens, principal isolation, Host/Origin checks, open health probe."""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastmcp import Client

from tests.helpers import call, running_server, structured, text_of
from tests.launchers import ServerProcess

pytestmark = pytest.mark.transport

TOKEN_A = "token-for-alice-0123456789"
TOKEN_B = "token-for-bob-9876543210"
INIT = json.dumps(
    {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {
            "protocolVersion": "2025-06-18",
            "capabilities": {},
            "clientInfo": {"name": "probe", "version": "0"},
        },
    }
).encode()


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("secured")
    with running_server(
        tmp, KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}", KERNEL_MCP_POOL_SIZE="1"
    ) as server:
        yield server


def status_of(
    url: str,
    *,
    token: str | None = None,
    origin: str | None = None,
    host: str | None = None,
    method: str = "POST",
) -> int:
    headers = {"Content-Type": "application/json", "Accept": "application/json, text/event-stream"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    if origin:
        headers["Origin"] = origin
    if host:
        headers["Host"] = host
    data = INIT if method == "POST" else None
    request = urllib.request.Request(url, data=data, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=10) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def test_health_probe_needs_no_token(secured):
    assert status_of(f"{secured.base}/healthz", method="GET") == 200


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_missing_or_wrong_token_is_401(secured, path):
    method = "POST" if path == "/mcp" else "GET"
    assert status_of(f"{secured.base}{path}", method=method) == 401
    assert status_of(f"{secured.base}{path}", token="wrong", method=method) == 401


def test_right_token_is_accepted(secured):
    assert status_of(f"{secured.base}/mcp", token=TOKEN_A) == 200


@pytest.mark.parametrize("path", ["/mcp", "/sse"])
def test_foreign_origin_is_403_even_with_a_token(secured, path):
    method = "POST" if path == "/mcp" else "GET"
    code = status_of(
        f"{secured.base}{path}", token=TOKEN_A, origin="http://evil.example", method=method
    )
    assert code == 403


def test_loopback_origin_is_accepted(secured):
    assert (
        status_of(f"{secured.base}/mcp", token=TOKEN_A, origin=f"http://localhost:{secured.port}")
        == 200
    )


def test_foreign_host_header_is_refused(secured):
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1.
    assert status_of(f"{secured.base}/mcp", token=TOKEN_A, host="evil.example") == 421


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy", "sse"])
async def test_sessions_belong_to_the_principal_that_made_them(secured, kind):
    path = "/sse" if kind == "sse" else "/mcp"
    mode = {"mode": "legacy"} if kind == "mcp-legacy" else {}
    async with (
        Client(f"{secured.base}{path}", auth=TOKEN_A, **mode) as alice,
        Client(f"{secured.base}{path}", auth=TOKEN_B, **mode) as bob,
    ):
        sid = structured(await call(alice, "create_session"))["session_id"]
        try:
            await call(alice, "run_code", code="mine = 'alice'", session_id=sid)
            stolen = await call(bob, "run_code", code="mine", session_id=sid)
            unknown = await call(bob, "run_code", code="mine", session_id="x" * len(sid))
            assert stolen.is_error and unknown.is_error
            # Refused exactly like an unknown id: nothing tells Bob the id exists.
            assert text_of(stolen).replace(sid, "ID") == text_of(unknown).replace(
                "x" * len(sid), "ID"
            )
            for tool in (
                "interrupt_session",
                "restart_session",
                "close_session",
                "export_notebook",
            ):
                assert (await call(bob, tool, session_id=sid)).is_error
            bobs = structured(await call(bob, "list_sessions"))["sessions"]
            assert sid not in {s["session_id"] for s in bobs}
            still = structured(await call(alice, "run_code", code="mine", session_id=sid))
            assert still["result"] == "'alice'"
        finally:
            await call(alice, "close_session", session_id=sid)


async def test_session_notebooks_and_names_are_private_to_their_principal(secured):
    async with (
        Client(f"{secured.base}/mcp", auth=TOKEN_A) as alice,
        Client(f"{secured.base}/mcp", auth=TOKEN_B) as bob,
    ):
        sid = structured(await call(alice, "create_session", name="private-notes"))["session_id"]
        try:
            await call(alice, "run_code", code="print('alice only')", session_id=sid)
            # Bob may use the same name: names are per principal, and say nothing of others.
            bobs = structured(await call(bob, "create_session", name="private-notes"))
            await call(bob, "close_session", session_id=bobs["session_id"])
            alice_uris = {str(r.uri) for r in await alice.list_resources()}
            bob_uris = {str(r.uri) for r in await bob.list_resources()}
            assert "notebook://sessions/private-notes" in alice_uris
            assert not any("private-notes" in uri for uri in bob_uris)
            mine = await alice.read_resource(f"notebook://sessions/{sid}")
            assert "alice only" in mine[0].text
            for uri in (f"notebook://sessions/{sid}", "notebook://sessions/private-notes"):
                with pytest.raises(Exception, match="No notebook"):
                    await bob.read_resource(uri)
        finally:
            await call(alice, "close_session", session_id=sid)
