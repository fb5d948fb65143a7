"""Owned background tasks: the one way they are started, and the one way they are stopped.

Every task that outlives the call that started it belongs to a :class:`TaskOwner`:
the object whose ``close`` stops it (a registry's culler, a runner's kernel shut
down after a fresh run, a gateway's deletion still under way). ``TaskOwner.spawn``
starts it; the owner's ``close`` lets its tasks finish (for a while, or for as
long as they take) and cancels the rest, and waits for every one. A task's failure
is retrieved and logged, never left for the garbage collector to report. Tasks a
call starts and ends itself (the readers of one execution, a walk in a thread) are
that call's, and are not owned here.

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
from collections.abc import Awaitable, Coroutine, Iterable
from typing import Any, TypeVar

from kernel_mcp.errors import KernelError

__all__ = ["TaskOwner", "shielded_to_end", "stop_task", "stop_tasks", "wait_within"]

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


class TaskOwner:
    """The background tasks of one object, stopped when it closes.

    Args:
        name: the owner's name, prefixed to its tasks' names (logs say whose they are).
    """

    def __init__(self, name: str) -> None:
        self.name = name
        self._tasks: set[asyncio.Task[Any]] = set()
        self._closed = False

    def spawn(
        self, coro: Coroutine[Any, Any, T], *, name: str | None = None, report: bool = True
    ) -> asyncio.Task[T]:
        """Run ``coro`` as a task of this owner; it is kept until it ends.

        ``report``: log the task's failure (False when a caller awaits it and reports
        the failure itself; it is retrieved either way).

        Raises:
            KernelError: the owner is closed (the server is shutting down).
        """
        if self._closed:
            coro.close()
            raise KernelError(f"the server is shutting down ({self.name} starts no task)")
        task = asyncio.get_running_loop().create_task(coro, name=f"{self.name}: {name or 'task'}")
        self._tasks.add(task)
        task.add_done_callback(self._ended if report else self._ended_quietly)
        return task

    @property
    def closed(self) -> bool:
        """``close`` has begun: the owner spawns nothing more."""
        return self._closed

    def __len__(self) -> int:
        """How many of its tasks are still running."""
        return len(self._tasks)

    async def close(self, *, grace: float | None = 0.0) -> None:
        """Stop owning: let the tasks finish for ``grace`` seconds (None: as long as they
        take, tasks they spawn meanwhile included), cancel what is left, and wait for
        every task to end. Raises only the caller's own cancellation."""
        self._closed = True
        if grace is None:
            while self._tasks:
                await asyncio.wait(set(self._tasks))
        elif grace > 0 and self._tasks:
            await asyncio.wait(set(self._tasks), timeout=grace)
        left = list(self._tasks)
        for task in left:
            task.cancel()
        if left:
            # Raises only if the caller is cancelled; the tasks' ends are retrieved.
            await asyncio.wait(left)

    def _ended(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        _retrieve(task)

    def _ended_quietly(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled():
            task.exception()
