"""kernel_mcp.watch.web over real HTTP: tickets, cookies, headers, the snapshot and the stream.

A real uvicorn server on a free loopback port (``tests/watch_site.py``), a real HTTP
client. What a browser does with these responses is in ``test_watch_browser.py``.
"""

from __future__ import annotations

import asyncio
import json
import re
from collections.abc import AsyncIterator
from html.parser import HTMLParser
from http.cookies import SimpleCookie
from typing import Any

import httpx2
import pytest

from kernel_mcp.watch import app_html
from kernel_mcp.watch.web import ASSETS, COOKIE, CSP, REFUSED_PAGE, asset
from tests.watch_site import Site, cell, serving, stream

SID = "s3ss10n_Id-1"


@pytest.fixture
async def site() -> AsyncIterator[Site]:
    async with serving(Site()) as served:
        yield served


@pytest.fixture
async def http(site: Site) -> AsyncIterator[httpx2.AsyncClient]:
    async with httpx2.AsyncClient(base_url=site.origin, timeout=30) as client:
        yield client


async def exchange(http: httpx2.AsyncClient, site: Site, principal: str | None = None) -> str:
    """Follow a view URL's ticket; the grant cookie's value."""
    response = await http.get(site.view_url(SID, principal), follow_redirects=False)
    assert response.status_code == 303, response.text
    return response.cookies[COOKIE]


async def sse(response: httpx2.Response, count: int) -> list[tuple[str, dict[str, Any]]]:
    """The next ``count`` events of a stream, as (id, data)."""
    found: list[tuple[str, dict[str, Any]]] = []
    event_id = ""
    async for line in response.aiter_lines():
        if line.startswith("id: "):
            event_id = line[4:]
        elif line.startswith("data: "):
            found.append((event_id, json.loads(line[6:])))
            if len(found) == count:
                return found
    return found


async def test_a_ticket_becomes_a_strict_http_only_cookie_scoped_to_the_session(
    site: Site, http: httpx2.AsyncClient
) -> None:
    site.session(SID)
    response = await http.get(site.view_url(SID), follow_redirects=False)
    assert response.status_code == 303
    # Relative, without the ticket: the address bar loses it.
    assert response.headers["location"] == f"/watch/{SID}"
    (header,) = response.headers.get_list("set-cookie")
    morsel = SimpleCookie(header)[COOKIE]
    assert morsel["path"] == f"/watch/{SID}"
    assert morsel["httponly"] is True
    assert morsel["samesite"] == "strict"
    assert not morsel["secure"]  # plain http on loopback; https gets Secure
    assert int(morsel["max-age"]) == 3600
    assert response.headers["content-security-policy"] == CSP


async def test_a_used_unknown_or_expired_ticket_gets_the_same_plain_refusal(
    site: Site, http: httpx2.AsyncClient
) -> None:
    site.session(SID)
    used = site.view_url(SID)
    assert (await http.get(used, follow_redirects=True)).status_code == 200
    expired = site.view_url(SID)
    site.clock.advance(61)
    for url in (used, expired, f"{site.origin}/watch/{SID}?ticket=nonsense"):
        response = await http.get(url, follow_redirects=False)
        assert response.status_code == 403
        assert response.text == REFUSED_PAGE
        assert "set-cookie" not in response.headers
        assert response.headers["content-security-policy"] == CSP


async def test_another_principals_session_is_refused(site: Site, http: httpx2.AsyncClient) -> None:
    site.session(SID, owner="ada")
    # A ticket names a principal and a session; the session must be that principal's.
    response = await http.get(site.view_url(SID, "bob"), follow_redirects=False)
    assert response.status_code == 403 and response.text == REFUSED_PAGE
    cookie = await exchange(http, site, "ada")
    assert (
        await http.get(f"/watch/{SID}/snapshot", headers={"cookie": f"{COOKIE}={cookie}"})
    ).status_code == 200


async def test_the_cells_so_far_need_the_grant_of_that_session(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    site.session("other")
    cell(feed, "1 + 1", [stream("stdout", "two\n")], count=1)
    assert (await http.get(f"/watch/{SID}/snapshot")).status_code == 403
    bad = await http.get(f"/watch/{SID}/snapshot", headers={"cookie": f"{COOKIE}=forged"})
    assert bad.status_code == 403 and bad.json() == {"error": "forbidden"}
    cookie = await exchange(http, site)
    other = await http.get("/watch/other/snapshot", headers={"cookie": f"{COOKIE}={cookie}"})
    assert other.status_code == 403
    snapshot = (
        await http.get(f"/watch/{SID}/snapshot", headers={"cookie": f"{COOKIE}={cookie}"})
    ).json()
    assert snapshot["session"] == {"id": SID, "name": "demo"}
    assert [c["source"] for c in snapshot["cells"]] == ["1 + 1"]
    assert snapshot["cursor"] == feed.cursor
    site.clock.advance(3600)
    assert (
        await http.get(f"/watch/{SID}/snapshot", headers={"cookie": f"{COOKIE}={cookie}"})
    ).status_code == 403


async def test_the_events_stream_as_they_are_published_and_resume_after_an_id(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    cookie = await exchange(http, site)
    start = feed.cursor
    headers = {"cookie": f"{COOKIE}={cookie}"}
    async with http.stream("GET", f"/watch/{SID}/events?after={start}", headers=headers) as live:
        assert live.headers["content-type"].startswith("text/event-stream")
        assert live.headers["cache-control"] == "no-store"
        feed.cell_started("work()", tool="run_code")
        feed.stream("stdout", "line\n")
        got = await asyncio.wait_for(sse(live, 3), 20)
    assert [data["kind"] for _, data in got] == ["status", "cell_started", "stream"]
    assert [event_id for event_id, _ in got] == [f"{feed.epoch}.{n}" for n in (1, 2, 3)]
    # A browser resumes with Last-Event-ID, which wins over ?after=.
    headers["last-event-id"] = got[1][0]
    async with http.stream("GET", f"/watch/{SID}/events?after={start}", headers=headers) as again:
        (resumed,) = await asyncio.wait_for(sse(again, 1), 20)
    assert resumed == got[2]


async def test_a_stream_that_cannot_resume_starts_with_a_snapshot(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    cell(feed, "x = 1", [])
    cookie = await exchange(http, site)
    headers = {"cookie": f"{COOKIE}={cookie}", "last-event-id": "feed-of-a-server-gone.12"}
    async with http.stream("GET", f"/watch/{SID}/events", headers=headers) as response:
        ((event_id, reset),) = await asyncio.wait_for(sse(response, 1), 20)
    assert reset["kind"] == "reset" and event_id == feed.cursor
    assert [c["source"] for c in reset["snapshot"]["cells"]] == ["x = 1"]


async def test_a_closed_session_ends_its_streams_and_revokes_its_grants(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    cookie = await exchange(http, site)
    headers = {"cookie": f"{COOKIE}={cookie}"}
    async with http.stream("GET", f"/watch/{SID}/events?after={feed.cursor}", headers=headers) as r:
        site.watch.close_session(SID)
        rest = await asyncio.wait_for(sse(r, 10), 20)  # the stream ends by itself
    assert [data["kind"] for _, data in rest] == ["status", "closed"]
    response = await http.get(f"/watch/{SID}/snapshot", headers=headers)
    assert response.status_code == 403  # the grant went with the session


async def test_ending_the_streams_ends_every_open_stream_and_no_feed(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    cookie = await exchange(http, site)
    headers = {"cookie": f"{COOKIE}={cookie}"}
    async with http.stream("GET", f"/watch/{SID}/events?after={feed.cursor}", headers=headers) as r:
        lines = r.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 20) == "retry: 2000"
        site.watch.end_streams()
        rest = [line async for line in lines]  # the stream ends by itself
    assert [line for line in rest if line] == []
    assert feed.state == "idle" and site.feeds.get(SID) is feed


async def test_a_grant_for_a_session_that_ended_says_it_is_gone(
    site: Site, http: httpx2.AsyncClient
) -> None:
    site.session(SID)
    cookie = await exchange(http, site)
    site.feeds.close(SID)  # the grant is still held: the session just ended
    response = await http.get(f"/watch/{SID}/snapshot", headers={"cookie": f"{COOKIE}={cookie}"})
    assert response.status_code == 410 and response.json() == {"error": "closed"}
    events = await http.get(f"/watch/{SID}/events", headers={"cookie": f"{COOKIE}={cookie}"})
    assert events.status_code == 410


async def test_a_silent_stream_sends_keep_alive_comments(
    site: Site, http: httpx2.AsyncClient
) -> None:
    feed = site.session(SID)
    site.watch.keepalive = 0.05
    cookie = await exchange(http, site)
    headers = {"cookie": f"{COOKIE}={cookie}"}
    async with http.stream("GET", f"/watch/{SID}/events?after={feed.cursor}", headers=headers) as r:
        lines = r.aiter_lines()
        assert await asyncio.wait_for(anext(lines), 20) == "retry: 2000"
        seen = [await asyncio.wait_for(anext(lines), 20) for _ in range(3)]
    assert ": keep-alive" in seen


async def test_every_response_carries_the_strict_headers(
    site: Site, http: httpx2.AsyncClient
) -> None:
    site.session(SID)
    paths = [
        f"/watch/{SID}",
        f"/watch/{SID}/snapshot",
        f"/watch/{SID}/events",
        "/watch/static/viewer.js",
        "/watch/static/nope.js",
        "/watch/a/b/c",
        "/watch/<script>",
    ]
    for path in paths:
        response = await http.get(path)
        assert response.headers["content-security-policy"] == CSP, path
        assert response.headers["x-content-type-options"] == "nosniff", path
        assert response.headers["referrer-policy"] == "no-referrer", path
        assert response.headers["x-frame-options"] == "DENY", path
    policy = dict(part.split(" ", 1) for part in CSP.split("; "))
    assert policy["default-src"] == "'none'" and policy["script-src"] == "'self'"
    assert policy["img-src"] == "data:" and policy["frame-ancestors"] == "'none'"
    assert policy["require-trusted-types-for"] == "'script'"


async def test_the_page_and_its_assets_are_served_and_nothing_else(
    site: Site, http: httpx2.AsyncClient
) -> None:
    page = await http.get(f"/watch/{SID}")  # the same static page whoever asks
    assert page.status_code == 200 and page.text == asset("viewer.html")
    for name, kind in ASSETS.items():
        response = await http.get(f"/watch/static/{name}")
        assert response.status_code == 200 and response.headers["content-type"] == kind
    for path in ("/watch/static/../web.py", "/watch/static/viewer.html", "/watch/static/x"):
        assert (await http.get(path)).status_code == 404
    assert (await http.post(f"/watch/{SID}")).status_code == 405


def test_no_asset_names_another_origin() -> None:
    """No CDN, no web font, no link out: every URL the page could load is its own."""
    for name in ("viewer.html", *ASSETS):
        text = asset(name)
        assert not re.search(r"(https?:)?//[a-z0-9]", text.replace("http-equiv", ""), re.I), name
        assert "@import" not in text and "@font-face" not in text and "url(" not in text
    document = app_html()
    loads = Loads()
    loads.feed(document)
    assert loads.urls == [], "the app document loads nothing: everything is inline"
    assert loads.scripts == 1 and 'data-mode="app"' in document


class Loads(HTMLParser):
    """The URLs a document's elements load, and its number of scripts."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []
        self.scripts = 0

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.scripts += tag == "script"
        self.urls += [value or "" for name, value in attrs if name in ("src", "href")]
