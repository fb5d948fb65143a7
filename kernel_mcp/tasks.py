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
import weakref
from collections.abc import Iterable
from typing import Any

__all__ = ["stop_task", "stop_tasks"]

log = logging.getLogger(__name__)

# Tasks whose outcome is already retrieved by a done callback (stopped twice: logged once).
_watched: weakref.WeakSet[asyncio.Future[Any]] = weakref.WeakSet()


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
        task.cancel()
        if task not in _watched:
            # Retrieves the outcome whenever the task ends, even after the caller left.
            _watched.add(task)
            task.add_done_callback(_retrieve)
    await asyncio.wait(owned)


def _retrieve(task: asyncio.Future[Any]) -> None:
    if task.cancelled():
        return
    exc = task.exception()
    if exc is not None:
        name = task.get_name() if isinstance(task, asyncio.Task) else repr(task)
        log.error("background task %s ended with an error", name, exc_info=exc)
