"""The projects folder's cap while a run lasts: a run that grows it past is stopped."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

from kernel_mcp.files.workspaces import QuotaWatch, UsageLedger, Workspaces
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.tasks import TaskOwner, wait_within

__all__ = ["WorkspaceCap"]

T = TypeVar("T")


class WorkspaceCap:
    """Runs code under its workspace's disk cap (``KERNEL_MCP_PROJECTS_QUOTA_MB``).

    Args:
        workspaces: the principals' folders and the cap.
        tasks: owns what outlives a run (a kill after the grace, the next measurement).
        grace: seconds a stopped run has to end after its interrupt before it is killed.
        local: the kernels are local (a remote kernel's folder is its own, not watched).
    """

    def __init__(
        self, workspaces: Workspaces, tasks: TaskOwner, *, grace: float, local: bool
    ) -> None:
        self.workspaces = workspaces
        self._tasks = tasks
        self._grace = grace
        self._local = local
        self.usage = UsageLedger(tasks)

    async def watched(
        self,
        owner: str | None,
        kernel: Kernel,
        execute: Callable[[Kernel], Awaitable[T]],
        notes: list[str],
    ) -> T:
        """``execute(kernel)``, stopped if it grows the owner's projects folder past its cap.

        Only local kernels write to the folder; a remote kernel's is its own.
        """
        if not self.workspaces.quota_bytes or not self._local:
            return await execute(kernel)
        grace = self._grace
        finished = asyncio.Event()

        async def kill_if_still_running() -> None:
            with contextlib.suppress(asyncio.TimeoutError):
                await wait_within(finished.wait(), grace)
            if not finished.is_set():
                await kernel.kill()

        async def stop() -> None:
            # As for a timeout: interrupt, and kill what ignores it for the grace.
            await kernel.interrupt()
            self._tasks.spawn(kill_if_still_running(), name="kill after the quota")

        watch = QuotaWatch(
            self.workspaces.folder(owner),
            quota_bytes=self.workspaces.quota_bytes,
            stop=stop,
            ledger=self.usage,
        )
        try:
            async with watch:
                result = await execute(kernel)
        finally:
            finished.set()
        notes.extend(watch.notes())
        return result
