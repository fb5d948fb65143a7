"""Watching a session: view_session (a link to its live page), read_session (the MCP
App's data), and the session view as an MCP App (a ``ui://`` resource the run tools name).

The page itself, its tickets and its feed live in ``kernel_mcp.watch``; this module
translates between them and MCP. stdio mode has no page: a stdio server is started by a
desktop client for itself, and opening a network listener it was not asked for would
give every local user and process one more port to knock on. There, hosts with the MCP
Apps extension show the same view inline (the ``ui://`` resource, fed by read_session),
and view_session says so.
"""

from __future__ import annotations

import urllib.parse

from fastmcp import FastMCP
from fastmcp.apps import AppConfig
from fastmcp.server.dependencies import get_http_request
from mcp_types import ToolAnnotations

from kernel_mcp.config import Settings
from kernel_mcp.errors import ViewUnavailable
from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import owner
from kernel_mcp.server.views import FeedPage, ViewLink
from kernel_mcp.watch import APP_URI, MIME_TYPE, Grants, Tickets, WatchApp, app_html

__all__ = ["SESSION_VIEW", "build_watch_app", "register_watch_tools"]

#: ``_meta.ui`` of the tools whose results the session view shows (MCP Apps extension).
SESSION_VIEW = AppConfig(resource_uri=APP_URI)
#: read_session waits at most this long for something new, seconds.
MAX_WAIT_S = 30.0


def build_watch_app(settings: Settings, runner: Runner) -> WatchApp:
    """The /watch routes over the runner's feeds, with their own tickets and grants."""
    return WatchApp(runner.watch.feeds, Tickets(ttl=settings.watch_ticket_ttl), Grants())


def _origin(settings: Settings) -> str:
    """The origin a person's browser reaches this server at: the public URL if one is
    set, else the one the calling client reached (its Host passed the Host check)."""
    if settings.public_url:
        return settings.public_url
    request = get_http_request()
    host = request.headers.get("host") or f"{settings.host}:{settings.port}"
    return f"{request.url.scheme}://{host}"


def register_watch_tools(
    mcp: FastMCP, runner: Runner, settings: Settings, web: WatchApp | None
) -> None:
    """``web``: the /watch routes this server serves (None: stdio, no page)."""

    @mcp.resource(APP_URI, mime_type=MIME_TYPE, app=AppConfig(prefers_border=True))
    def session_view() -> str:
        """The live session view (MCP Apps): a run's cells and output as they arrive."""
        return app_html()

    @mcp.tool(
        annotations=ToolAnnotations(readOnlyHint=True, openWorldHint=False),
        app=SESSION_VIEW,
    )
    async def view_session(session_id: str) -> ViewLink:
        """A link for the person you work for to watch a session live in their browser.

        Returns url: a page on this server showing the session's cells as they finish and
        a running cell's output as it streams. Give the url to the person as it is: it
        works once (their browser then keeps access to this session alone) and expires
        after expires_in_s. Call again for a new link. Not available over stdio.
        """
        session = await runner.sessions.find(owner(), session_id)
        if web is None:
            raise ViewUnavailable(
                "view_session needs the HTTP server (kernel-mcp serve): this one serves "
                "stdio and opens no web page. Hosts with MCP Apps show the session view "
                "beside run_code and run_python results."
            )
        runner.watch.feed_of(session)
        ticket = web.tickets.issue(session.owner, session.id)
        query = urllib.parse.urlencode({"ticket": ticket})
        url = f"{_origin(settings)}{web.path_of(session.id)}?{query}"
        return ViewLink(
            session_id=session.id,
            url=url,
            expires_in_s=web.tickets.ttl,
            message="Open it in a browser (once); it shows the session's runs live.",
        )

    @mcp.tool(
        annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False),
        app=AppConfig(visibility=["app"]),
    )
    async def read_session(session_id: str, since: str = "", wait_s: float = 0.0) -> FeedPage:
        """What the session view (MCP App) reads: a session's cells and live events.

        Args:
            session_id: one of your sessions.
            since: the cursor of the last read ("" for a snapshot of the cells so far).
            wait_s: wait up to this many seconds (at most 30) for something new.

        Returns cursor (pass it as since next time), state (idle | busy | dead | closed),
        and events after since, or snapshot when since cannot be resumed from.
        """
        session = await runner.sessions.find(owner(), session_id)
        feed = runner.watch.feed_of(session)
        page = await feed.read(since or None, wait_s=min(max(wait_s, 0.0), MAX_WAIT_S))
        return FeedPage(**page)
