"""The /watch routes: a session's live view in a browser, with its tickets and cookies.

====================================  ==================================================
``GET /watch/<session>?ticket=T``     exchanges the ticket for a grant cookie (HttpOnly,
                                      SameSite=Strict, Path=/watch/<session>) and
                                      redirects to ``/watch/<session>``: the ticket leaves
                                      the address bar. A bad ticket: a plain 403 page.
``GET /watch/<session>``              the page (the same static document for everyone;
                                      it shows nothing without a grant)
``GET /watch/<session>/snapshot``     the cells so far (JSON), with the grant
``GET /watch/<session>/events``       the events after a cursor (``Last-Event-ID``, else
                                      ``?after=``), as Server-Sent Events, with the grant
``GET /watch/static/<asset>``         the page's script and style sheets
====================================  ==================================================

The page document is public and static because the grant is SameSite=Strict: a link
followed from another site (a chat client in a browser) would not carry the cookie on
the first navigation, but the page's own requests do. Every response carries a strict
Content-Security-Policy (scripts and styles from this origin only, images only as
``data:`` URLs, no frames but the sandboxed ``srcdoc`` ones the page makes, no embedding
elsewhere) and Trusted Types, so that the page's script can hand markup to nothing but
those frames. No asset comes from elsewhere: no CDN, no web font.

The Host/Origin guard is the server's own, around this app (``kernel_mcp.server``).
"""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator
from importlib import resources
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import Receive, Scope, Send

from kernel_mcp.watch.access import Grant, Grants, Tickets
from kernel_mcp.watch.feed import Feeds, SessionFeed

__all__ = ["COOKIE", "CSP", "PREFIX", "WatchApp", "asset"]

#: Where the routes live (the page's own links name it too: static/viewer.html).
PREFIX = "/watch"
#: The grant cookie's name (one per watched session: each is scoped to its path).
COOKIE = "kmcp_watch"
#: The name of the one Trusted Types policy the page's script may create (frames only).
TRUSTED_TYPES_POLICY = "kmcp-frame"
CSP = "; ".join(
    [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src data:",
        "connect-src 'self'",
        # srcdoc frames are not fetched, so frame-src does not stop them; it stops a
        # frame's content from navigating it anywhere else.
        "frame-src 'none'",
        "base-uri 'none'",
        "form-action 'none'",
        "frame-ancestors 'none'",
        "require-trusted-types-for 'script'",
        f"trusted-types {TRUSTED_TYPES_POLICY}",
    ]
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cross-Origin-Opener-Policy": "same-origin",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}
ASSETS = {
    "viewer.js": "text/javascript; charset=utf-8",
    "viewer.css": "text/css; charset=utf-8",
    "output.css": "text/css; charset=utf-8",
}
#: Session ids are ``secrets.token_urlsafe`` strings; anything else is no session.
SESSION_ID = re.compile(r"[A-Za-z0-9_-]{1,64}")
REFUSED_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>kernel-mcp</title></head>
<body><p>This link cannot be used: it was used already, or it expired.
Ask the agent for a new one (<code>view_session</code>).</p></body></html>
"""


def asset(name: str) -> str:
    """One of the viewer's files (package data)."""
    return resources.files("kernel_mcp.watch").joinpath("static", name).read_text("utf-8")


def _json(status: int, body: dict[str, Any]) -> Response:
    return Response(
        json.dumps(body, ensure_ascii=True, separators=(",", ":")),
        status_code=status,
        media_type="application/json",
        headers=SECURITY_HEADERS,
    )


class WatchApp:
    """The /watch routes over a set of feeds, tickets and grants (an ASGI app).

    ``keepalive`` is how long an event stream may stay silent before a comment line is
    sent (so that a dead connection is noticed and proxies keep it open).
    """

    def __init__(
        self,
        feeds: Feeds,
        tickets: Tickets,
        grants: Grants,
        *,
        keepalive: float = 15.0,
    ) -> None:
        self.feeds = feeds
        self.tickets = tickets
        self.grants = grants
        self.keepalive = keepalive
        self._generation = 0
        """Streams of an earlier generation end (see :meth:`end_streams`)."""
        self._page = asset("viewer.html")
        self._assets = {name: asset(name) for name in ASSETS}
        self._app = Starlette(
            routes=[
                Route(f"{PREFIX}/static/{{name}}", self.static),
                Route(f"{PREFIX}/{{session_id}}", self.page),
                Route(f"{PREFIX}/{{session_id}}/snapshot", self.snapshot),
                Route(f"{PREFIX}/{{session_id}}/events", self.events),
                Route(f"{PREFIX}{{rest:path}}", self.not_found),
            ]
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self._app(scope, receive, send)

    def path_of(self, session_id: str) -> str:
        """The page of a session (and the path its grant cookie is scoped to)."""
        return f"{PREFIX}/{session_id}"

    def end_streams(self) -> None:
        """End every open event stream now (the server stops: an open stream would keep
        it waiting). A page that is still there reconnects and resumes from its last
        event, if the server is."""
        self._generation += 1
        for feed in self.feeds:
            feed.wake()

    def close_session(self, session_id: str) -> None:
        """The session ended: its watchers are told, and its grants are revoked."""
        self.feeds.close(session_id)
        self.grants.revoke(session_id)

    # -- routes -------------------------------------------------------------------
    async def not_found(self, request: Request) -> Response:
        return Response("Not Found", 404, headers=SECURITY_HEADERS)

    async def static(self, request: Request) -> Response:
        name = request.path_params["name"]
        if name not in ASSETS:
            return Response("Not Found", 404, headers=SECURITY_HEADERS)
        headers = {**SECURITY_HEADERS, "Cache-Control": "no-cache"}
        if name == "output.css":
            # Asked for by the sandboxed frames, whose origin is opaque (another origin).
            headers["Cross-Origin-Resource-Policy"] = "cross-origin"
        return Response(self._assets[name], media_type=ASSETS[name], headers=headers)

    async def page(self, request: Request) -> Response:
        session_id = request.path_params["session_id"]
        if not SESSION_ID.fullmatch(session_id):
            return Response("Not Found", 404, headers=SECURITY_HEADERS)
        ticket = request.query_params.get("ticket")
        if ticket is None:
            return HTMLResponse(self._page, headers=SECURITY_HEADERS)
        grant = self.tickets.redeem(ticket, session_id)
        if grant is None or self.feeds.watchable(session_id, grant.principal) is None:
            return HTMLResponse(REFUSED_PAGE, status_code=403, headers=SECURITY_HEADERS)
        path = self.path_of(session_id)
        cookie = self.grants.admit(grant)
        # A relative Location: the redirect never names a host taken from the request.
        response = Response(status_code=303, headers={**SECURITY_HEADERS, "Location": path})
        response.set_cookie(
            COOKIE,
            cookie,
            max_age=int(self.grants.ttl),
            path=path,
            secure=request.url.scheme == "https",
            httponly=True,
            samesite="strict",
        )
        return response

    def _granted(self, request: Request) -> tuple[Grant | None, SessionFeed | None]:
        """The request's grant and the feed it opens; (None, None) when it has none."""
        session_id = request.path_params["session_id"]
        cookie = request.cookies.get(COOKIE)
        if not cookie or not SESSION_ID.fullmatch(session_id):
            return None, None
        grant = self.grants.lookup(cookie, session_id)
        if grant is None:
            return None, None
        return grant, self.feeds.watchable(session_id, grant.principal)

    async def snapshot(self, request: Request) -> Response:
        grant, feed = self._granted(request)
        if grant is None:
            return _json(403, {"error": "forbidden"})
        if feed is None:
            return _json(410, {"error": "closed"})
        return _json(200, feed.snapshot())

    async def events(self, request: Request) -> Response:
        grant, feed = self._granted(request)
        if grant is None:
            return _json(403, {"error": "forbidden"})
        if feed is None:
            return _json(410, {"error": "closed"})
        cursor = request.headers.get("last-event-id") or request.query_params.get("after")
        return StreamingResponse(
            self._stream(feed, cursor),
            media_type="text/event-stream",
            headers={**SECURITY_HEADERS, "X-Accel-Buffering": "no"},
        )

    async def _stream(self, feed: SessionFeed, cursor: str | None) -> AsyncIterator[bytes]:
        """The events after ``cursor``, as they are published, until the session ends.

        Each wake-up sends every event published since, in one write. A cursor that
        cannot be resumed from gets a ``reset`` carrying a new snapshot.
        """
        generation = self._generation
        yield b"retry: 2000\n\n"
        while generation == self._generation:
            events = feed.events_after(cursor)
            if events is None:
                snapshot = feed.snapshot()
                cursor = snapshot["cursor"]
                reset = json.dumps({"kind": "reset", "snapshot": snapshot}, ensure_ascii=True)
                yield f"id: {cursor}\ndata: {reset}\n\n".encode()
            elif events:
                cursor = f"{feed.epoch}.{events[-1].id}"
                yield "".join(
                    f"id: {feed.epoch}.{event.id}\ndata: {event.json}\n\n" for event in events
                ).encode()
            if feed.state == "closed" and cursor == feed.cursor:
                return
            if not await feed.wait(cursor, self.keepalive):
                yield b": keep-alive\n\n"
