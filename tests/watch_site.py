"""A real HTTP server around the /watch routes, a fake MCP Apps host, and a real Chromium.

The viewer's tests publish into feeds themselves (the runner does it in the product) and
look at what a real browser shows. :class:`Site` serves, with uvicorn on a free loopback
port in the test's own event loop:

* ``/watch/...``: :class:`kernel_mcp.watch.WatchApp` over the site's feeds, tickets and
  grants (tickets expire on an injected clock);
* ``/pwned/...``: where the XSS payloads try to report that they ran; every hit is kept;
* ``/host``: a fake MCP Apps host page (``tests/data/watch_host.html``) that loads the
  MCP App's document into a sandboxed frame, answers its JSON-RPC, and serves its
  ``read_session`` calls from the site's feeds (``/test/tools/call``);
* ``/linker``: a page with a link to a view URL, for following it from another site
  (open it as ``http://localhost:<port>``: another site than ``127.0.0.1``).

:func:`chromium` starts Debian's chromium through playwright (``make test`` installs it);
playwright's own browser download is never used.
"""

from __future__ import annotations

import asyncio
import contextlib
import html
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Mount, Route

from kernel_mcp.watch import Feeds, Grants, SessionFeed, Tickets, WatchApp, app_html
from tests.launchers import free_port

CHROMIUM = Path("/usr/bin/chromium")
#: Headless, as root (no sandbox of Chromium's own), and no traffic of its own.
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--headless",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
    "--disable-quic",
]
HOST_PAGE = Path(__file__).parent / "data" / "watch_host.html"
#: The CSP the MCP Apps extension tells hosts to use when a resource declares none
#: (plus connect-src 'self' for the fake host's own calls).
HOST_CSP = (
    "default-src 'none'; script-src 'self' 'unsafe-inline'; style-src 'self' 'unsafe-inline'; "
    "img-src 'self' data:; media-src 'self' data:; connect-src 'self'; frame-src 'none'"
)


class Clock:
    """A clock the test moves: tickets and grants expire on it."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@dataclass
class Site:
    """The server: its feeds, tickets and grants, and what the payloads reported."""

    feeds: Feeds = field(default_factory=Feeds)
    clock: Clock = field(default_factory=Clock)
    pwned: list[str] = field(default_factory=list)
    host_config: dict[str, Any] = field(default_factory=dict)
    reading: int = 0
    """read_session calls of the fake host's view being answered now."""
    link: str = ""
    resumes: list[str | None] = field(default_factory=list)
    """The Last-Event-ID of every event stream asked for (None: a first one)."""
    port: int = 0

    def __post_init__(self) -> None:
        self.tickets = Tickets(ttl=60.0, clock=self.clock)
        self.grants = Grants(ttl=3600.0, clock=self.clock)
        self.watch = WatchApp(self.feeds, self.tickets, self.grants, keepalive=5.0)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def session(self, session_id: str, owner: str | None = None, name: str = "demo") -> SessionFeed:
        return self.feeds.open(session_id, owner=owner, name=name)

    def view_url(self, session_id: str, principal: str | None = None) -> str:
        """What view_session gives: the page with a fresh ticket."""
        ticket = self.tickets.issue(principal, session_id)
        return f"{self.origin}/watch/{session_id}?ticket={ticket}"

    # -- the site's own routes ------------------------------------------------------
    async def _pwned(self, request: Request) -> Response:
        self.pwned.append(request.url.path + ("?" + request.url.query if request.url.query else ""))
        return Response(status_code=204)

    async def _host(self, request: Request) -> Response:
        return HTMLResponse(HOST_PAGE.read_text(), headers={"Content-Security-Policy": HOST_CSP})

    async def _host_config(self, request: Request) -> Response:
        return JSONResponse(self.host_config)

    async def _app_document(self, request: Request) -> Response:
        return Response(app_html(), media_type="text/html")

    async def _tools_call(self, request: Request) -> Response:
        """The MCP server's side of the fake host's proxied tools/call (read_session)."""
        params = await request.json()
        arguments = params.get("arguments") or {}
        feed = self.feeds.get(str(arguments.get("session_id")))
        if params.get("name") != "read_session" or feed is None:
            text = f"Unknown session {arguments.get('session_id')!r}."
            return JSONResponse({"content": [{"type": "text", "text": text}], "isError": True})
        self.reading += 1
        try:
            page = await feed.read(
                arguments.get("since") or None, wait_s=min(arguments.get("wait_s", 0), 5)
            )
        finally:
            self.reading -= 1
        return JSONResponse(
            {
                "content": [{"type": "text", "text": f"{len(page.get('events', []))} events"}],
                "structuredContent": page,
                "isError": False,
            }
        )

    async def _linker(self, request: Request) -> Response:
        link = html.escape(self.link, quote=True)
        return HTMLResponse(f'<!doctype html><a id="go" href="{link}">watch</a>')

    def app(self) -> Any:
        routes = self._routes()

        async def app(scope: Any, receive: Any, send: Any) -> None:
            if scope["type"] == "http" and scope["path"].endswith("/events"):
                headers = dict(scope["headers"])
                self.resumes.append((headers.get(b"last-event-id") or b"").decode() or None)
            await routes(scope, receive, send)

        return app

    def _routes(self) -> Starlette:
        return Starlette(
            routes=[
                Route("/pwned/{rest:path}", self._pwned),
                Route("/host", self._host),
                Route("/test/host", self._host_config),
                Route("/test/app.html", self._app_document),
                Route("/test/tools/call", self._tools_call, methods=["POST"]),
                Route("/linker", self._linker),
                Mount("/", app=self.watch),
            ]
        )


@contextlib.asynccontextmanager
async def serving(site: Site) -> AsyncIterator[Site]:
    """Serve ``site`` on a free loopback port until the block ends."""
    site.port = free_port()
    server = uvicorn.Server(
        uvicorn.Config(
            site.app(),
            host="127.0.0.1",
            port=site.port,
            log_level="warning",
            lifespan="off",
            timeout_graceful_shutdown=2,
        )
    )
    task = asyncio.create_task(server.serve())
    try:
        while not server.started:
            if task.done():
                task.result()
            await asyncio.sleep(0.01)
        yield site
    finally:
        # Streams end with their feeds; then uvicorn has nothing left to wait for.
        site.feeds.close_all()
        server.should_exit = True
        await task


def cell(
    feed: SessionFeed,
    source: str,
    outputs: list[dict[str, Any]],
    *,
    status: str = "ok",
    count: int | None = None,
) -> int:
    """Publish one whole cell, as the runner does for a run that ended."""
    number = feed.cell_started(source, tool="run_code")
    feed.cell_finished(status=status, outputs=outputs, execution_count=count, duration_s=0.01)
    return number


def stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def display(data: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {"output_type": "display_data", "data": data, "metadata": {}, **extra}


def error(ename: str, evalue: str, traceback: list[str]) -> dict[str, Any]:
    return {"output_type": "error", "ename": ename, "evalue": evalue, "traceback": traceback}


def host_result(structured: dict[str, Any], content: list[dict[str, Any]] | None = None) -> dict:
    """A CallToolResult as a host passes it to the app."""
    text = json.dumps(structured)[:200]
    return {
        "content": content or [{"type": "text", "text": text}],
        "structuredContent": structured,
        "isError": False,
    }


@contextlib.asynccontextmanager
async def chromium() -> AsyncIterator[Any]:
    """Debian's headless chromium, driven by playwright; closed when the block ends."""
    from playwright.async_api import async_playwright

    if not CHROMIUM.exists():
        raise RuntimeError(f"{CHROMIUM} is missing: `make chromium` installs it (as root)")
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            yield browser
        finally:
            await browser.close()
