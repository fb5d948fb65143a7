"""Watching a session on the real server: view_session's link in a real Chromium,
read_session and the MCP App resource over MCP, and who may watch what.

One ``kernel-mcp serve`` subprocess with two principals (alice and bob), real kernels,
real MCP clients; the page is opened from the url view_session returns, in Debian's
chromium (``make test`` installs it). The page itself is specified in
``test_watch_browser.py`` on a feed the tests publish into; here the runner publishes.
"""

from __future__ import annotations

import asyncio
import signal
import urllib.parse
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
from fastmcp import Client

from kernel_mcp.watch import APP_URI, MIME_TYPE
from tests.helpers import call, client_for, running_server, structured, text_of
from tests.launchers import ServerProcess
from tests.watch_site import chromium

pytestmark = pytest.mark.transport

TOKEN_A = "alice:token-for-alice-0123456789"
TOKEN_B = "bob:token-for-bob-9876543210"
SECRET_A = TOKEN_A.split(":", 1)[1]
SECRET_B = TOKEN_B.split(":", 1)[1]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    tmp: Path = tmp_path_factory.mktemp("watched")
    with running_server(
        tmp, KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}", KERNEL_MCP_POOL_SIZE="1"
    ) as server:
        yield server


@pytest.fixture
async def alice(served: ServerProcess) -> AsyncIterator[Client[Any]]:
    async with Client(f"{served.base}/mcp", auth=SECRET_A, timeout=120) as client:
        yield client


@pytest.fixture
async def bob(served: ServerProcess) -> AsyncIterator[Client[Any]]:
    async with Client(f"{served.base}/mcp", auth=SECRET_B, timeout=120) as client:
        yield client


@pytest.fixture
async def session(alice: Client[Any]) -> AsyncIterator[str]:
    sid = structured(await call(alice, "create_session", name="watched"))["session_id"]
    try:
        yield sid
    finally:
        await call(alice, "close_session", session_id=sid)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    async with chromium() as launched:
        yield launched


async def view_url(client: Client[Any], sid: str) -> str:
    result = await call(client, "view_session", session_id=sid)
    assert not result.is_error, text_of(result)
    return str(structured(result)["url"])


async def page_for(browser: Any, served: ServerProcess, url: str) -> tuple[Any, list[str]]:
    """A fresh browser profile on ``url``; requests for any other origin are refused and
    kept (the second value)."""
    context = await browser.new_context()
    foreign: list[str] = []

    async def refuse(route: Any) -> None:
        foreign.append(route.request.url)
        await route.abort()

    await context.route(lambda u: not u.startswith(served.base + "/"), refuse)
    page = await context.new_page()
    await page.goto(url)
    await page.wait_for_selector("#link[data-link='on']")
    return page, foreign


# -- the page, opened from view_session's url ----------------------------------------
@pytest.mark.browser
async def test_a_session_run_appears_on_the_page_view_session_links_to(
    served: ServerProcess, alice: Client[Any], session: str, browser: Any
) -> None:
    url = await view_url(alice, session)
    assert url.startswith(f"{served.base}/watch/{session}?ticket=")
    assert SECRET_A not in url and "alice" not in url
    page, foreign = await page_for(browser, served, url)
    try:
        # The ticket left the address bar.
        assert page.url == f"{served.base}/watch/{session}"
        assert await page.inner_text("#title") == "watched"
        code = "x = 6 * 7\nprint('hello')\nx"
        reply = await call(alice, "run_code", code=code, session_id=session)
        assert structured(reply)["status"] == "ok"
        shown = await page.wait_for_selector('[data-cell="1"][data-status="ok"]')
        text = await shown.inner_text()
        assert "hello" in text and "42" in text and "In [" in text
        assert "print('hello')" in text
        assert foreign == []
    finally:
        await page.context.close()


@pytest.mark.browser
async def test_output_streams_onto_the_page_while_the_call_runs(
    served: ServerProcess, alice: Client[Any], session: str, browser: Any
) -> None:
    page, foreign = await page_for(browser, served, await view_url(alice, session))
    code = (
        "import os, time\n"
        "print('tick', flush=True)\n"
        "while not os.path.exists('go.txt'):\n"
        "    time.sleep(0.02)\n"
        "print('tock')\n"
    )
    try:
        running = asyncio.ensure_future(call(alice, "run_code", code=code, session_id=session))
        cell = await page.wait_for_selector('[data-cell="1"][data-status="running"]')
        outputs = await cell.query_selector(".outputs")
        await page.wait_for_function("el => el.textContent.includes('tick')", arg=outputs)
        assert await page.get_attribute("#state", "data-state") == "busy"
        assert not running.done()
        # The kernel waits for this file: the call is still running while 'tick' shows.
        await call(alice, "write_file", path="go.txt", content="go")
        reply = await running
        assert structured(reply)["stdout"] == "tick\ntock\n"
        done = await page.wait_for_selector('[data-cell="1"][data-status="ok"]')
        assert "tock" in await done.inner_text()
        assert foreign == []
    finally:
        await call(alice, "write_file", path="go.txt", content="go")
        await page.context.close()


# -- who may watch ---------------------------------------------------------------------
async def test_another_principal_is_refused_as_for_an_unknown_session(
    alice: Client[Any], bob: Client[Any], session: str
) -> None:
    unknown = "x" * len(session)
    for tool in ("view_session", "read_session"):
        stolen = await call(bob, tool, session_id=session)
        missing = await call(bob, tool, session_id=unknown)
        assert stolen.is_error and missing.is_error
        assert text_of(stolen).replace(session, "ID") == text_of(missing).replace(unknown, "ID")
    assert not (await call(alice, "read_session", session_id=session)).is_error


async def test_a_link_works_once_and_a_bearer_token_is_no_grant(
    served: ServerProcess, alice: Client[Any], session: str
) -> None:
    url = await view_url(alice, session)
    path = f"/watch/{session}"
    async with httpx2.AsyncClient(base_url=served.base) as web:
        first = await web.get(url)
        assert first.status_code == 303 and first.headers["location"] == path
        cookie = first.headers["set-cookie"]
        assert "httponly" in cookie.lower() and "samesite=strict" in cookie.lower()
        # The cookie (kept by this client's jar) is the grant: it opens this session.
        snapshot = await web.get(f"{path}/snapshot")
        assert snapshot.status_code == 200 and snapshot.json()["session"]["id"] == session
        again = await web.get(url)
        assert again.status_code == 403
        assert session not in again.text and "alice" not in again.text
    async with httpx2.AsyncClient(base_url=served.base) as stranger:
        for token in (SECRET_A, SECRET_B):
            snapshot = await stranger.get(
                f"{path}/snapshot", headers={"Authorization": f"Bearer {token}"}
            )
            assert snapshot.status_code == 403


async def test_without_tokens_the_same_ticket_rules_hold(server: ServerProcess) -> None:
    """One principal (no KERNEL_MCP_TOKEN, loopback): a link still works once, and only
    for the session it names."""
    async with Client(f"{server.base}/mcp", timeout=120) as client:
        sid = structured(await call(client, "create_session"))["session_id"]
        other = structured(await call(client, "create_session"))["session_id"]
        try:
            url = await view_url(client, sid)
            assert url.startswith(f"{server.base}/watch/{sid}?ticket=")
            query = urllib.parse.urlsplit(url).query
            async with httpx2.AsyncClient(base_url=server.base) as web:
                # A ticket names its session: it opens no other one (and is used up).
                assert (await web.get(f"/watch/{other}?{query}")).status_code == 403
                assert (await web.get(url)).status_code == 403
                fresh = await view_url(client, sid)
                assert (await web.get(fresh)).status_code == 303
                snapshot = await web.get(f"/watch/{sid}/snapshot")
                assert snapshot.status_code == 200
                assert (await web.get(f"/watch/{other}/snapshot")).status_code == 403
        finally:
            for session_id in (sid, other):
                await call(client, "close_session", session_id=session_id)


async def test_the_watch_routes_keep_the_servers_host_and_origin_guard(
    served: ServerProcess, alice: Client[Any], session: str
) -> None:
    url = urllib.parse.urlsplit(await view_url(alice, session))
    target = f"{served.base}{url.path}?{url.query}"
    async with httpx2.AsyncClient() as web:
        rebound = await web.get(target, headers={"Host": "evil.example"})
        assert rebound.status_code == 421
        cross = await web.get(target, headers={"Origin": "https://evil.example"})
        assert cross.status_code == 403
        # Neither used the ticket up.
        assert (await web.get(target)).status_code == 303


# -- the MCP App -------------------------------------------------------------------------
async def test_the_session_view_is_listed_and_the_run_tools_point_to_it(
    alice: Client[Any],
) -> None:
    resources = {str(r.uri): r for r in await alice.list_resources()}
    assert APP_URI in resources
    assert resources[APP_URI].mime_type == MIME_TYPE
    document = (await alice.read_resource(APP_URI))[0]
    assert document.mime_type == MIME_TYPE
    assert 'data-mode="app"' in document.text and "read_session" in document.text
    tools = {tool.name: tool for tool in await alice.list_tools()}
    for name in ("run_python", "run_code", "view_session"):
        meta = tools[name].meta or {}
        assert meta["ui"]["resourceUri"] == APP_URI, name
    assert tools["read_session"].meta["ui"]["visibility"] == ["app"]
    assert tools["read_session"].annotations.read_only_hint is True


async def test_read_session_gives_the_cells_then_what_follows_a_cursor(
    alice: Client[Any], session: str
) -> None:
    await call(alice, "run_code", code="print('first')", session_id=session)
    page = structured(await call(alice, "read_session", session_id=session))
    assert page["state"] == "idle" and page["events"] is None
    [first] = page["snapshot"]["cells"]
    assert first["status"] == "ok" and first["outputs"][0]["text"] == "first\n"

    async def read(since: str) -> dict[str, Any]:
        reply = await call(alice, "read_session", session_id=session, since=since, wait_s=30)
        return structured(reply)

    # A read that waits is answered when the next run publishes.
    waiting = asyncio.ensure_future(read(page["cursor"]))
    await call(alice, "run_code", code="1 + 1", session_id=session)
    page = await waiting
    events = list(page["events"])
    assert events[0]["kind"] == "status" and events[0]["state"] == "busy"
    while not any(event["kind"] == "cell_finished" for event in events):
        page = await read(page["cursor"])
        events += page["events"]
    cells = [e["cell"] for e in events if e["kind"] == "cell_finished"]
    assert cells and cells[-1]["outputs"][0]["data"]["text/plain"] == "2"
    assert cells[-1]["execution_count"] == 2


async def test_view_session_over_stdio_says_why_there_is_no_page(
    served: ServerProcess,
) -> None:
    async with client_for("stdio", served) as client:
        sid = structured(await call(client, "create_session"))["session_id"]
        try:
            refused = await call(client, "view_session", session_id=sid)
            assert refused.is_error and "stdio" in text_of(refused)
            await call(client, "run_code", code="print('seen')", session_id=sid)
            page = structured(await call(client, "read_session", session_id=sid))
            assert page["snapshot"]["cells"][0]["outputs"][0]["text"] == "seen\n"
        finally:
            await call(client, "close_session", session_id=sid)


async def test_an_open_page_does_not_hold_the_servers_stop(tmp_path: Path) -> None:
    """On SIGTERM a watcher's event stream ends cleanly at once: uvicorn would otherwise
    wait for it for its whole grace, then cut it."""
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="0") as server:
        async with Client(f"{server.base}/mcp", timeout=120) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            url = await view_url(client, sid)
        async with httpx2.AsyncClient(timeout=60) as web:
            assert (await web.get(url)).status_code == 303
            async with web.stream("GET", f"{server.base}/watch/{sid}/events") as events:
                chunks = events.aiter_bytes()
                assert (await anext(chunks)).startswith(b"retry:")
                assert server.proc is not None
                server.proc.send_signal(signal.SIGTERM)
                # A cut stream raises here (an incomplete chunked body).
                b"".join([chunk async for chunk in chunks])
        await asyncio.to_thread(server.proc.wait, 60)
