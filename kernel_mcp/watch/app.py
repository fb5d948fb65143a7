"""The session viewer as an MCP App: one self-contained HTML document for a ``ui://`` resource.

The MCP Apps extension (``io.modelcontextprotocol/ui``) has a host render a server's
``ui://`` resource (mime ``text/html;profile=mcp-app``) in a sandboxed frame when a tool
that names it in ``_meta.ui.resourceUri`` is called. That frame has no origin of this
server's to load from, so the document carries the page's script and style sheets
inline; it is otherwise the same viewer (``static/``), started in its ``app`` mode:
it shows the tool result it was opened for, and follows a session through the
``read_session`` tool (see ``static/viewer.js``). Hosts without the extension never
read it: the tools' replies are unchanged.
"""

from __future__ import annotations

import functools

from kernel_mcp.watch.web import asset

__all__ = ["APP_URI", "MIME_TYPE", "app_html"]

APP_URI = "ui://kernel-mcp/session-view.html"
#: The extension's mime type (fastmcp's ``UI_MIME_TYPE``; no fastmcp import here).
MIME_TYPE = "text/html;profile=mcp-app"

_STYLE_LINK = '<link rel="stylesheet" href="/watch/static/viewer.css">'
_SCRIPT_TAG = '<script src="/watch/static/viewer.js" defer></script>'


def _inline(text: str, closing: str) -> str:
    """``text`` to inline between tags, refusing what would end its element early."""
    if closing in text.lower():
        raise ValueError(f"an inlined asset contains {closing!r}")
    return text


@functools.cache
def app_html() -> str:
    """The MCP App's HTML document (built once from the viewer's files)."""
    page = asset("viewer.html")
    if _STYLE_LINK not in page or _SCRIPT_TAG not in page:
        raise ValueError("viewer.html no longer links viewer.css and viewer.js as expected")
    style = _inline(asset("viewer.css"), "</style")
    script = _inline(asset("viewer.js"), "</script")
    frames_css = _inline(asset("output.css"), "</template")
    page = page.replace('data-mode="web"', 'data-mode="app"', 1)
    page = page.replace(_STYLE_LINK, f"<style>\n{style}</style>", 1)
    page = page.replace(_SCRIPT_TAG, "", 1)
    # An inline script does not wait for the document as a deferred one does: it goes
    # last. A template's content is inert: the frames' style sheet, not this document's.
    tail = (
        f'<template id="kmcp-output-css">{frames_css}</template>\n'
        f"<script>\n{script}</script>\n</body>"
    )
    if page.count("</body>") != 1:
        raise ValueError("viewer.html must have one </body>")
    return page.replace("</body>", tail, 1)
