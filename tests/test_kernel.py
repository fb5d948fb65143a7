"""Specification of ``kernel_mcp.kernel.Kernel``, driven against real ipykernel processes.

One execution waits on the shell reply, IOPub until idle, and the kernel's
liveness. Its status is one of ok / error / timeout / kernel_died /
interrupted; a timeout interrupts the kernel and kills it only if it ignores
the interrupt for ``grace`` seconds; a cancelled caller leaves the kernel to be
recovered in the background before the next execution.
"""

from __future__ import annotations

import asyncio
import itertools
import re
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernel_mcp.backend import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import KernelError
from kernel_mcp.kernel import Execution, Kernel
from tests.helpers import wait_for
from tests.launchers import alive, wait_until

LOOP_AFTER_MARKER = (
    "import pathlib, time\npathlib.Path({marker!r}).touch()\nwhile True:\n    time.sleep(0.01)\n"
)


@pytest.fixture(scope="module")
async def backend(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[LocalBackend]:
    projects = tmp_path_factory.mktemp("kernel-projects")
    local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))
    yield local
    await local.close()


@pytest.fixture(scope="module")
async def shared(backend: LocalBackend) -> AsyncIterator[list[Kernel]]:
    holder = [await backend.start()]
    yield holder
    await holder[0].shutdown(now=True)


@pytest.fixture
async def kernel(backend: LocalBackend, shared: list[Kernel]) -> Kernel:
    """A kernel shared by the tests that leave it alive (replaced if one of them failed)."""
    if not await shared[0].is_alive():
        await shared[0].shutdown(now=True)
        shared[0] = await backend.start()
    return shared[0]


@pytest.fixture
async def fresh(backend: LocalBackend) -> AsyncIterator[Kernel]:
    """A kernel of its own, for tests that end it."""
    own = await backend.start()
    yield own
    await own.shutdown(now=True)


async def run(kernel: Kernel, code: str, *, timeout: float = 20, grace: float = 2) -> Execution:
    return await kernel.execute(code, timeout=timeout, grace=grace)


def text(execution: Execution) -> str:
    """All stream text and text/plain data of an execution, in order."""
    parts = []
    for output in execution.outputs:
        if output["output_type"] == "stream":
            parts.append(output["text"])
        elif "data" in output:
            parts.append(output["data"].get("text/plain", ""))
    return "".join(parts)


async def value(kernel: Kernel, expression: str) -> str:
    result = await run(kernel, expression)
    assert result.status == "ok", result
    assert result.outputs[-1]["output_type"] == "execute_result", result.outputs
    return str(result.outputs[-1]["data"]["text/plain"])


def pid_of(kernel: Kernel) -> int:
    pid = getattr(kernel.process, "pid", None)
    assert isinstance(pid, int)
    return pid


# -- completed runs ---------------------------------------------------------------
async def test_ok_run_collects_stdout_and_the_execute_result(kernel: Kernel) -> None:
    result = await run(kernel, "print('hello')\n6 * 7")

    assert result.status == "ok"
    assert [o["output_type"] for o in result.outputs] == ["stream", "execute_result"]
    assert result.outputs[0]["name"] == "stdout"
    assert result.outputs[0]["text"] == "hello\n"
    assert result.outputs[1]["data"]["text/plain"] == "42"
    assert result.outputs[1]["execution_count"] == result.execution_count
    assert isinstance(result.execution_count, int)
    assert result.error is None
    assert result.death is None
    assert not result.kernel_replaced
    assert result.timeout_s == 20
    assert result.ended_at >= result.started_at
    assert 0 <= result.duration_s < 20


async def test_error_keeps_the_traceback_with_its_ansi_colours(kernel: Kernel) -> None:
    result = await run(kernel, "print('before')\n1 / 0")

    assert result.status == "error"
    assert result.error is not None
    assert result.error["ename"] == "ZeroDivisionError"
    assert result.error["evalue"] == "division by zero"
    traceback = "\n".join(result.error["traceback"])
    assert "\x1b[" in traceback, "the notebook keeps the raw, coloured traceback"
    assert "ZeroDivisionError" in traceback
    assert result.outputs[0]["text"] == "before\n"
    assert result.outputs[-1] is result.error
    assert not result.kernel_replaced
    assert await value(kernel, "'still here'") == "'still here'"


async def test_execution_count_advances_with_each_stored_run(kernel: Kernel) -> None:
    first = await run(kernel, "1")
    second = await run(kernel, "2")
    assert first.execution_count is not None
    assert second.execution_count == first.execution_count + 1


# -- display machinery ------------------------------------------------------------
async def test_update_display_data_is_applied_to_the_displayed_output(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import display\n"
        "handle = display('first', display_id=True)\n"
        "handle.update('second')\n",
    )
    assert result.status == "ok"
    assert len(result.outputs) == 1
    assert result.outputs[0]["output_type"] == "display_data"
    assert result.outputs[0]["data"]["text/plain"] == "'second'"


async def test_clear_output_removes_what_came_before(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import clear_output, display\n"
        "print('gone')\n"
        "display('gone too')\n"
        "clear_output()\n"
        "print('after')\n",
    )
    assert result.status == "ok"
    assert text(result) == "after\n"


async def test_clear_output_wait_clears_when_the_next_output_arrives(kernel: Kernel) -> None:
    result = await run(
        kernel,
        "from IPython.display import clear_output\n"
        "print('old')\n"
        "clear_output(wait=True)\n"
        "print('new')\n",
    )
    assert result.status == "ok"
    assert text(result) == "new\n"


# -- progress ---------------------------------------------------------------------
async def test_progress_reports_the_latest_line_at_most_about_once_a_second(
    kernel: Kernel,
) -> None:
    reports: list[tuple[float, float, str]] = []

    async def progress(elapsed: float, line: str) -> None:
        reports.append((time.monotonic(), elapsed, line))

    code = (
        "import time\n"
        "for i in range(28):\n"
        "    print(f'step {i}', flush=True)\n"
        "    time.sleep(0.1)\n"
    )
    result = await kernel.execute(code, timeout=20, grace=2, progress=progress)

    assert result.status == "ok"
    assert 1 <= len(reports) <= result.duration_s, reports
    steps = []
    for _, elapsed, line in reports:
        match = re.fullmatch(r"step (\d+)", line)
        assert match, f"progress carries the last printed line, got {line!r}"
        steps.append(int(match.group(1)))
        assert elapsed >= 1.0
    assert steps == sorted(set(steps)), "each report carries a newer line"
    gaps = [later[0] - earlier[0] for earlier, later in itertools.pairwise(reports)]
    assert all(gap >= 0.95 for gap in gaps), gaps


# -- timeouts -------------------------------------------------------------------
async def test_timeout_interrupts_and_keeps_output_and_kernel(kernel: Kernel) -> None:
    pid = pid_of(kernel)
    await run(kernel, "kept_state = 'survives'")

    result = await run(
        kernel,
        "print('before the loop', flush=True)\nwhile True:\n    pass\n",
        timeout=1,
        grace=5,
    )

    assert result.status == "timeout"
    assert result.timeout_s == 1
    assert 1 <= result.duration_s < 5
    assert "before the loop\n" in text(result)
    assert not result.kernel_replaced
    assert not kernel.dead
    assert pid_of(kernel) == pid
    assert await value(kernel, "kept_state") == "'survives'"


async def test_a_kernel_ignoring_sigint_is_killed_after_the_grace(fresh: Kernel) -> None:
    pid = pid_of(fresh)
    result = await run(
        fresh,
        "import signal\n"
        "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
        "print('ignoring SIGINT', flush=True)\n"
        "while True:\n"
        "    pass\n",
        timeout=0.5,
        grace=0.5,
    )

    assert result.status == "timeout"
    assert result.kernel_replaced
    assert fresh.dead
    assert "ignoring SIGINT\n" in text(result)
    assert any("ignored the interrupt" in note for note in result.notes), result.notes
    assert 1.0 <= result.duration_s < 5
    assert wait_until(lambda: not alive({pid}), timeout=10)
    with pytest.raises(KernelError, match="dead"):
        await run(fresh, "1")


# -- deaths ---------------------------------------------------------------------
async def test_os_exit_is_reported_as_kernel_died_with_its_exit_code_quickly(
    fresh: Kernel,
) -> None:
    # ZMQ may drop a message still queued inside the dying process, so the
    # output is given a moment to leave it before the exit.
    result = await run(
        fresh,
        "import os, time\nprint('about to exit', flush=True)\ntime.sleep(0.2)\nos._exit(3)",
        timeout=30,
    )

    assert result.status == "kernel_died"
    assert result.death == "exit code 3"
    assert result.duration_s < 2, "death is noticed by the liveness check, not the timeout"
    assert result.kernel_replaced
    assert fresh.dead
    assert not await fresh.is_alive()
    assert "about to exit" in text(result)
    with pytest.raises(KernelError, match="dead"):
        await run(fresh, "1")


async def test_a_segfault_is_reported_as_killed_by_sigsegv(fresh: Kernel) -> None:
    result = await run(fresh, "import ctypes\nctypes.string_at(0)", timeout=30)

    assert result.status == "kernel_died"
    assert result.death == "killed by SIGSEGV"
    assert result.duration_s < 5
    assert result.kernel_replaced
    assert fresh.dead


# -- interrupt and cancellation ---------------------------------------------------
async def test_interrupt_during_a_run_ends_it_as_interrupted(
    kernel: Kernel, tmp_path: Path
) -> None:
    marker = tmp_path / "running"

    async def running() -> bool:
        return marker.exists()

    task = asyncio.create_task(
        run(kernel, LOOP_AFTER_MARKER.format(marker=str(marker)), timeout=30, grace=5)
    )
    try:
        assert await wait_for(running, timeout=20)
        await kernel.interrupt()
        result = await asyncio.wait_for(task, timeout=10)
    finally:
        task.cancel()

    assert result.status == "interrupted"
    assert result.error is not None
    assert result.error["ename"] == "KeyboardInterrupt"
    assert result.duration_s < 10
    assert not result.kernel_replaced
    assert not kernel.dead
    # The next run is not mistaken for an interrupted one.
    failing = await run(kernel, "raise KeyboardInterrupt")
    assert failing.status == "error"


async def test_a_cancelled_caller_leaves_the_kernel_recovered_for_the_next_run(
    kernel: Kernel,
) -> None:
    pid = pid_of(kernel)
    await run(kernel, "earlier_state = 123")

    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            kernel.execute("while True:\n    pass\n", timeout=60, grace=3), timeout=1
        )

    started = time.monotonic()
    result = await run(kernel, "earlier_state", timeout=10)
    assert result.status == "ok", result
    assert result.outputs[-1]["data"]["text/plain"] == "123"
    assert time.monotonic() - started < 3, "recovery interrupts; it neither waits nor kills"
    assert not kernel.dead
    assert pid_of(kernel) == pid


# -- set-up code ------------------------------------------------------------------
async def test_run_silently_records_nothing_and_shows_nothing(kernel: Kernel) -> None:
    before = await run(kernel, "'before'")
    reply = await kernel.run_silently("silent_value = 5\nprint('set-up noise')")
    after = await run(kernel, "silent_value")

    assert reply["status"] == "ok"
    assert "outputs" not in reply
    assert after.status == "ok"
    assert after.outputs[-1]["data"]["text/plain"] == "5"
    assert "set-up noise" not in text(after), "set-up output never leaks into a later run"
    assert before.execution_count is not None
    assert after.execution_count == before.execution_count + 1, "set-up is not in history"


async def test_run_silently_raises_kernel_error_when_the_code_fails(kernel: Kernel) -> None:
    with pytest.raises(KernelError, match="ValueError: boom"):
        await kernel.run_silently("raise ValueError('boom')")
    assert await value(kernel, "'usable'") == "'usable'"
