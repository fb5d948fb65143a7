"""Specification of ``kernel_mcp.tasks``: stopping owned tasks, and waits with a timeout.

Stopping cancels the task and waits for it. The task's own cancellation ends
there; its exception is retrieved and logged, never left for the garbage
collector to report. A cancel aimed at the caller while it waits is never
swallowed, however the task reacts to being cancelled. ``wait_within`` is ``wait_for``
without its pre-3.12 way of losing the caller's cancel.
"""

from __future__ import annotations

import asyncio
import gc
import logging
from typing import Any

import pytest

from kernel_mcp.errors import KernelError
from kernel_mcp.tasks import TaskOwner, stop_task, stop_tasks, wait_within

#: A guard against a hang if stop_task regressed; the checks never depend on it.
HANG_GUARD = 10.0


def unretrieved(loop: asyncio.AbstractEventLoop) -> list[dict[str, Any]]:
    """Collects what the loop would report as 'exception was never retrieved'."""
    seen: list[dict[str, Any]] = []
    loop.set_exception_handler(lambda _loop, context: seen.append(context))
    return seen


async def stubborn(release: asyncio.Event, started: asyncio.Event, *, fail: bool = False) -> str:
    """A task that refuses to be cancelled until ``release`` is set."""
    started.set()
    while True:
        try:
            await release.wait()
        except asyncio.CancelledError:
            continue
        if fail:
            raise RuntimeError("stubborn task failed late")
        return "released"


async def test_a_task_is_cancelled_and_its_cancellation_stays_inside() -> None:
    started = asyncio.Event()

    async def sleeper() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = asyncio.create_task(sleeper())
    await started.wait()

    await stop_task(task)  # returns normally: the task's cancel is not the caller's

    assert task.cancelled()
    await asyncio.sleep(0)  # and the caller itself was not cancelled


async def test_none_and_finished_tasks_are_fine() -> None:
    await stop_task(None)
    done = asyncio.create_task(asyncio.sleep(0, result=5))
    await done
    await stop_task(done)
    assert done.result() == 5


async def test_a_caller_cancelled_while_stopping_a_stubborn_task_sees_cancelled_error() -> None:
    release, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(stubborn(release, started))
    await started.wait()
    stopper = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0)  # stopper is now waiting for the stubborn task

    stopper.cancel()
    await asyncio.wait({stopper}, timeout=HANG_GUARD)
    try:
        assert stopper.done(), "the caller's cancel was held up by the task it stops"
        assert stopper.cancelled(), "the caller's cancel was swallowed"
    finally:
        release.set()
        await asyncio.wait({task}, timeout=HANG_GUARD)
    assert task.result() == "released"


async def test_a_caller_cancelled_by_wait_for_times_out() -> None:
    """asyncio.wait_for (and task groups) rely on the cancel reaching the caller."""
    release, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(stubborn(release, started))
    await started.wait()
    runner = asyncio.create_task(asyncio.wait_for(stop_task(task), timeout=0.05))
    await asyncio.wait({runner}, timeout=HANG_GUARD)
    try:
        assert runner.done(), "wait_for could not cancel its stop_task"
        with pytest.raises(asyncio.TimeoutError):
            runner.result()
    finally:
        release.set()
        await asyncio.wait({task, runner}, timeout=HANG_GUARD)


async def test_an_exception_is_retrieved_and_logged(caplog: pytest.LogCaptureFixture) -> None:
    seen = unretrieved(asyncio.get_running_loop())
    started = asyncio.Event()

    async def fails_on_cancel() -> None:
        started.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            raise ValueError("cleanup went wrong") from None

    task = asyncio.create_task(fails_on_cancel(), name="doomed-cleanup")
    await started.wait()
    with caplog.at_level(logging.ERROR, logger="kernel_mcp.tasks"):
        await stop_task(task)  # not raised at the caller
        await asyncio.sleep(0)  # the done callback runs on the next loop pass
    del task
    gc.collect()

    assert "doomed-cleanup" in caplog.text
    assert "cleanup went wrong" in caplog.text
    assert seen == []


async def test_a_late_exception_is_retrieved_after_the_caller_left(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = unretrieved(asyncio.get_running_loop())
    release, started = asyncio.Event(), asyncio.Event()
    task = asyncio.create_task(stubborn(release, started, fail=True), name="late-failure")
    await started.wait()
    stopper = asyncio.create_task(stop_task(task))
    await asyncio.sleep(0)
    stopper.cancel()
    await asyncio.wait({stopper}, timeout=HANG_GUARD)

    with caplog.at_level(logging.ERROR, logger="kernel_mcp.tasks"):
        release.set()
        await asyncio.wait({task}, timeout=HANG_GUARD)
        await asyncio.sleep(0)
    del task
    gc.collect()

    assert "stubborn task failed late" in caplog.text
    assert seen == []


async def test_stop_tasks_stops_them_all() -> None:
    tasks = [asyncio.create_task(asyncio.sleep(3600)) for _ in range(3)]
    await stop_tasks([*tasks, None])
    assert all(task.cancelled() for task in tasks)


# -- wait_within ---------------------------------------------------------------------
async def test_wait_within_keeps_a_cancel_that_meets_the_result() -> None:
    # The awaited future completes in the very loop turn its caller is cancelled:
    # asyncio.wait_for before 3.12 returns "done" here, and the cancel is lost.
    done = asyncio.get_running_loop().create_future()
    caller = asyncio.ensure_future(wait_within(done, HANG_GUARD))
    for _ in range(2):
        await asyncio.sleep(0)  # the caller is now waiting
    done.set_result("done")
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller


async def test_wait_within_returns_the_result_or_times_out_cancelling_the_awaited() -> None:
    assert await wait_within(asyncio.sleep(0, "value"), HANG_GUARD) == "value"
    slow = asyncio.ensure_future(asyncio.sleep(HANG_GUARD))
    with pytest.raises(asyncio.TimeoutError):
        await wait_within(slow, 0.01)
    assert slow.cancelled()


async def test_wait_within_cancels_the_awaited_when_its_caller_is_cancelled() -> None:
    slow = asyncio.ensure_future(asyncio.sleep(HANG_GUARD))
    caller = asyncio.ensure_future(wait_within(slow, HANG_GUARD))
    await asyncio.sleep(0)
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    assert slow.cancelled()


# -- TaskOwner -------------------------------------------------------------------------
async def test_an_owner_lets_its_tasks_finish_when_asked_to_wait_for_them() -> None:
    owner = TaskOwner("test owner")
    gate = asyncio.Event()

    async def later() -> str:
        await gate.wait()
        return "finished"

    task = owner.spawn(later(), name="waits for the gate")
    assert len(owner) == 1
    closing = asyncio.ensure_future(owner.close(grace=None))
    await asyncio.sleep(0)
    assert not closing.done()  # it waits for the task instead of cancelling it
    gate.set()
    await asyncio.wait_for(closing, HANG_GUARD)
    assert task.result() == "finished"
    assert len(owner) == 0


async def test_an_owner_cancels_what_outlives_its_grace_and_waits_for_it() -> None:
    owner = TaskOwner("test owner")
    started = asyncio.Event()

    async def forever() -> None:
        started.set()
        await asyncio.sleep(3600)

    task = owner.spawn(forever())
    await started.wait()
    await asyncio.wait_for(owner.close(grace=0.01), HANG_GUARD)
    assert task.cancelled()
    assert owner.closed and len(owner) == 0


async def test_a_closed_owner_starts_nothing_and_says_the_server_is_shutting_down() -> None:
    owner = TaskOwner("test owner")
    await owner.close()
    coro = asyncio.sleep(0)
    with pytest.raises(KernelError, match="shutting down"):
        owner.spawn(coro)
    assert coro.cr_frame is None  # closed, never left to warn that it was not awaited


async def test_an_owned_task_s_failure_is_logged_once_unless_its_caller_reports_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    seen = unretrieved(asyncio.get_running_loop())
    owner = TaskOwner("test owner")

    async def fails(what: str) -> None:
        raise ValueError(what)

    with caplog.at_level(logging.ERROR, logger="kernel_mcp.tasks"):
        reported = owner.spawn(fails("reported failure"), name="reported")
        quiet = owner.spawn(fails("quiet failure"), name="quiet", report=False)
        await asyncio.wait({reported, quiet}, timeout=HANG_GUARD)
        await asyncio.sleep(0)  # the done callbacks run on the next loop pass
    await owner.close()
    del reported, quiet
    gc.collect()

    assert caplog.text.count("reported failure") == 1
    assert "quiet failure" not in caplog.text
    assert seen == []


async def test_closing_an_owner_never_swallows_the_closer_s_cancellation() -> None:
    owner = TaskOwner("test owner")
    release, started = asyncio.Event(), asyncio.Event()
    owner.spawn(stubborn(release, started))
    await started.wait()
    closer = asyncio.ensure_future(owner.close())
    await asyncio.sleep(0)  # the closer is waiting for the stubborn task
    closer.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(closer, HANG_GUARD)
    release.set()
