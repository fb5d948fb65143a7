"""Owned background tasks: the one way their owners stop them.

Stopping an owned task must not hide a cancellation aimed at the owner. The
usual ``task.cancel(); with suppress(CancelledError): await task`` does: while
the owner waits, a cancel of the owner is forwarded to the task, and if the task
finishes anyway (or swallows it) the owner never sees its own cancellation.
``asyncio.wait`` raises ``CancelledError`` only when its caller is cancelled,
so the task's own end stays here and the owner's cancel goes through.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Iterable
from typing import Any, TypeVar

__all__ = ["shielded_to_end", "stop_task", "stop_tasks", "wait_within"]

log = logging.getLogger(__name__)
T = TypeVar("T")


async def stop_task(task: asyncio.Future[Any] | None) -> None:
    """Cancel ``task`` (if any) and wait until it has finished.

    The task's cancellation is not propagated, and its exception, if it ended
    with one, is retrieved and logged rather than raised. If the caller is
    cancelled while waiting, ``CancelledError`` is raised at once; the task has
    been asked to stop and its outcome is still retrieved (and logged) when it
    ends.
    """
    await stop_tasks([task])


async def stop_tasks(tasks: Iterable[asyncio.Future[Any] | None]) -> None:
    """``stop_task`` for several tasks at once (``None`` entries are skipped)."""
    owned = {task for task in tasks if task is not None}
    if not owned:
        return
    for task in owned:
        if task.done():
            _retrieve(task)
        else:
            # Retrieves the outcome whenever the task ends, even after the caller left.
            task.add_done_callback(_retrieve)
            task.cancel()
    await asyncio.wait(owned)


async def wait_within(aw: Awaitable[T], timeout: float | None) -> T:
    """``asyncio.wait_for`` that never loses its caller's cancellation.

    Before Python 3.12, ``wait_for`` returns the result when the awaited thing
    finishes in the same loop turn as the caller is cancelled, and the cancel is
    gone (python/cpython#86296). A background task stopped that way carries on
    and its owner waits for it forever (seen here: the session culler, ending a
    forked kernel whose pidfd turned readable just as the registry closed).
    Built on ``asyncio.wait``, which raises only for its caller's own cancel.

    Raises:
        asyncio.TimeoutError: ``aw`` did not finish within ``timeout`` s (it is
            cancelled, and waited for, first).
    """
    task = asyncio.ensure_future(aw)
    try:
        done, _ = await asyncio.wait({task}, timeout=timeout)
    except asyncio.CancelledError:
        task.cancel()
        await asyncio.wait({task})
        raise
    if not done:
        task.cancel()
        await asyncio.wait({task})
        if task.cancelled():
            raise asyncio.TimeoutError
    return task.result()


def _retrieve(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        log.error("background task %s ended with an error", name, exc_info=exc)


async def shielded_to_end(aw: Awaitable[T]) -> T:
    """Await ``aw`` to its end even if the caller is cancelled meanwhile, then re-raise that cancel.

    For clean-up that must finish (giving a claim back, writing a session back)
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
