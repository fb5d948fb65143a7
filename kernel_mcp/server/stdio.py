"""stdio: serve one client on stdin/stdout (Claude Desktop and other launchers)."""

from __future__ import annotations

import signal

import anyio

from kernel_mcp.config import Settings
from kernel_mcp.runner import Runner
from kernel_mcp.server.app import build_server

__all__ = ["run_stdio"]


async def run_stdio(settings: Settings, runner: Runner) -> None:
    """Serve one client over stdin/stdout until it closes its end or we get SIGTERM.

    ``runner`` is started here and closed when the client goes.
    """
    async with runner:
        mcp = build_server(settings, runner, tasks=True)
        async with anyio.create_task_group() as tg:

            async def stop_on_signal() -> None:
                with anyio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                    async for _ in signals:
                        tg.cancel_scope.cancel()
                        return

            tg.start_soon(stop_on_signal)
            await mcp.run_stdio_async(show_banner=False)
            tg.cancel_scope.cancel()
