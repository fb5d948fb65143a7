"""Watch a session live: its feed, who may watch it, the page, and the MCP App.

=================  ===============================================================
``feed``           :class:`SessionFeed`: a session's cells and numbered events
``viewable``       what of an output a watcher is shown (caps, checked images)
``access``         :class:`Tickets` (single-use, in the URL) and :class:`Grants`
                   (the cookie a ticket is exchanged for)
``web``            :class:`WatchApp`: the /watch routes (page, snapshot, events)
``app``            the same viewer as one HTML document for a ``ui://`` resource
``static/``        the page, its script and style sheets (package data)
=================  ===============================================================

Nothing here imports fastmcp: the MCP server registers the tools and the resource.
"""

from kernel_mcp.watch.access import Grant, Grants, Tickets
from kernel_mcp.watch.app import APP_URI, MIME_TYPE, app_html
from kernel_mcp.watch.feed import FeedEvent, FeedLimits, Feeds, SessionFeed
from kernel_mcp.watch.viewable import ViewLimits, viewable
from kernel_mcp.watch.web import WatchApp

__all__ = [
    "APP_URI",
    "MIME_TYPE",
    "FeedEvent",
    "FeedLimits",
    "Feeds",
    "Grant",
    "Grants",
    "SessionFeed",
    "Tickets",
    "ViewLimits",
    "WatchApp",
    "app_html",
    "viewable",
]
