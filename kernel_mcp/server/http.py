"""HTTP: /mcp, /sse + /messages/ (legacy SSE), /healthz and /watch in one ASGI app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from types import FrameType
from typing import Any

import uvicorn
from fastmcp import FastMCP
from fastmcp.server.http import HostOriginGuardMiddleware
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.types import Receive, Scope, Send

from kernel_mcp.config import Settings
from kernel_mcp.runner import Runner
from kernel_mcp.server.app import answer_input_schema_lookups, build_server
from kernel_mcp.server.watch_tools import build_watch_app
from kernel_mcp.watch import WatchApp

__all__ = ["HTTPServer", "build_http_app"]

log = logging.getLogger("kernel_mcp.server")


class Dispatcher:
    """Routes each request to its transport's app; each keeps its own middleware
    (Host/Origin guard, bearer auth). /healthz answers without auth, for probes; /watch
    (a session's live page) has the same Host/Origin guard, and its own tickets."""

    def __init__(
        self,
        mcp: FastMCP,
        http_app: Any,
        sse_app: Any,
        runner: Runner,
        watch: WatchApp | None = None,
        watch_app: Any = None,
    ) -> None:
        self.mcp = mcp
        self.http_app = http_app
        self.sse_app = sse_app
        self.runner = runner
        self.watch = watch
        self.watch_app = watch_app

    def stopping(self) -> None:
        """The server was asked to stop: end the watchers' event streams now (they would
        hold the shutdown for its whole grace; a page that is still open reconnects to
        whatever serves next)."""
        if self.watch is not None:
            self.watch.end_streams()

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
            return
        path = scope.get("path", "")
        if path == "/healthz":
            await JSONResponse(self.health())(scope, receive, send)
        elif path == "/mcp" or path.startswith("/mcp/"):
            await self.http_app(scope, receive, send)
        elif path.startswith(("/sse", "/messages")):
            await self.sse_app(scope, receive, send)
        elif self.watch_app is not None and (path == "/watch" or path.startswith("/watch/")):
            await self.watch_app(scope, receive, send)
        else:
            await PlainTextResponse("Not Found", status_code=404)(scope, receive, send)

    def health(self) -> dict[str, Any]:
        """``ok``, or ``degraded`` with what is failing (the server still serves)."""
        recording = self.runner.recorder.health()
        if recording.ok:
            return {"status": "ok"}
        return {
            "status": "degraded",
            "recording": {
                "failing": recording.failing,
                "waiting_runs": recording.waiting_runs,
            },
        }

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        message = await receive()
        assert message["type"] == "lifespan.startup"
        started = False
        try:
            async with contextlib.AsyncExitStack() as stack:
                await stack.enter_async_context(self.runner)
                await stack.enter_async_context(self.http_app.lifespan(self.http_app))
                await stack.enter_async_context(self.sse_app.lifespan(self.sse_app))
                await answer_input_schema_lookups(self.mcp)
                await send({"type": "lifespan.startup.complete"})
                started = True
                message = await receive()
                assert message["type"] == "lifespan.shutdown"
        except Exception as exc:
            log.exception("server %s failed", "shutdown" if started else "start-up")
            phase = "shutdown" if started else "startup"
            await send({"type": f"lifespan.{phase}.failed", "message": str(exc)})
            return
        await send({"type": "lifespan.shutdown.complete"})


def build_http_app(settings: Settings, runner: Runner) -> Dispatcher:
    """The ASGI app for ``kernel-mcp serve``: /mcp, /sse, /healthz, with guards on.

    ``runner`` (on the deployment the composition root picked) is started and closed
    with the app's lifespan.
    """
    watch = build_watch_app(settings, runner)
    mcp = build_server(settings, runner, tasks=True, watch=watch)
    guard: dict[str, Any] = {
        "host_origin_protection": True,
        "allowed_hosts": settings.allowed_hosts or None,
        "allowed_origins": settings.allowed_origins or None,
    }
    http_app = mcp.http_app(path="/mcp", transport="http", **guard)
    sse_app = mcp.http_app(path="/sse", transport="sse", **guard)
    # The same guard as the MCP transports' (fastmcp's, in strict mode).
    watch_app = HostOriginGuardMiddleware(
        watch,
        allowed_hosts=guard["allowed_hosts"],
        allowed_origins=guard["allowed_origins"],
        mode="strict",
    )
    return Dispatcher(mcp, http_app, sse_app, runner, watch, watch_app)


class HTTPServer(uvicorn.Server):
    """uvicorn's server, telling the app (``Dispatcher.stopping``) as soon as a signal asks
    it to stop: uvicorn waits for open responses before the app's lifespan hears of the
    shutdown, and a watcher's event stream never ends by itself."""

    def __init__(self, config: uvicorn.Config, app: Dispatcher) -> None:
        super().__init__(config)
        self._app = app
        self._loop: asyncio.AbstractEventLoop | None = None

    async def serve(self, sockets: Any = None) -> None:
        self._loop = asyncio.get_running_loop()
        await super().serve(sockets)

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        # A signal handler: hand the work to the loop rather than run it in between.
        if self._loop is not None and not self._loop.is_closed():
            self._loop.call_soon_threadsafe(self._app.stopping)
        super().handle_exit(sig, frame)
