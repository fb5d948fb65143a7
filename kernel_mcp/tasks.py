"""Owned background tasks: the one way their owners stop them."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any, TypeVar

__all__ = ["shielded_to_end", "stop_task"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def stop_task(task: asyncio.Task[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished."""
    if task is None:
        return
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task


async def shielded_to_end(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then re-raise that cancel.

    For clean-up that must finish (giving a lease back, writing a session back)
    on the way out of a cancelled call: unlike ``asyncio.shield`` alone, the
    caller does not leave before it is done, and unlike ``suppress`` the
    caller's cancellation is never lost. ``aw`` must be bounded in time.
    """
    task = asyncio.ensure_future(aw)
    cancelled = False
    while not task.done():
        try:
            await asyncio.wait([task])
        except asyncio.CancelledError:
            cancelled = True  # asyncio.wait leaves the task running: keep waiting
    if cancelled:
        if not task.cancelled() and task.exception() is not None:
            log.warning("clean-up of a cancelled call failed: %r", task.exception())
        raise asyncio.CancelledError
    return task.result()
