"""The contract every kernel backend keeps, as one suite run on each: local ipykernel
processes and kernels on a real Jupyter Kernel Gateway.

A run completes with its outputs; an error keeps its traceback; a timeout
interrupts and keeps the kernel, or ends one that ignores the interrupt; a
death is seen quickly; an interrupt ends a run as interrupted; a cancelled
caller leaves the kernel recovered for the next run; input() is answered by
the caller's handler; set-up code runs silently. What only one backend does is
specified in test_kernel.py / test_backend.py and test_gateway.py.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import KernelError
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.scale.gateway.backend import GatewayBackend
from tests.helpers import wait_for
from tests.kernels import LOOP_AFTER_MARKER, STUBBORN, run, text, value
from tests.launchers import Gateway, alive, wait_until


@dataclass
class Backend:
    name: str
    start: Callable[[], Awaitable[Kernel]]
    gone: Callable[[Kernel], bool]
    """Whether the kernel's resources are gone (its process, or the gateway's kernel)."""
    death_says: str
    """What the description of an os._exit(3) death says on this backend."""
    projects: Path
    """A folder the test and the kernel both see (a sandboxed kernel's /tmp is its own)."""


@pytest.fixture(scope="module", params=["local", "gateway"])
async def backend(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> AsyncIterator[Backend]:
    projects = tmp_path_factory.mktemp(f"contract-{request.param}")
    if request.param == "local":
        local = LocalBackend(load_settings(projects_dir=projects, pool_size=0))

        def process_gone(kernel: Kernel) -> bool:
            pid = getattr(kernel.process, "pid", None)
            return pid is None or not alive({pid})

        yield Backend("local", local.start, process_gone, "exit code 3", projects)
        await local.close()
        return
    gateway = Gateway(tmp_path_factory.mktemp("contract-gateway"))
    gateway.start()
    remote = GatewayBackend(
        load_settings(
            projects_dir=projects, gateway_url=gateway.url, gateway_token=gateway.token, pool_size=0
        )
    )
    try:
        yield Backend(
            "gateway",
            remote.start,
            lambda kernel: not gateway.has_kernel(kernel.process.kernel_id),
            "gateway",
            projects,
        )
    finally:
        await remote.close()
        gateway.close()


@pytest.fixture(scope="module")
async def shared(backend: Backend) -> AsyncIterator[list[Kernel]]:
    holder = [await backend.start()]
    yield holder
    await holder[0].shutdown(now=True)


@pytest.fixture
async def kernel(backend: Backend, shared: list[Kernel]) -> Kernel:
    """A kernel shared by the tests that leave it alive (replaced if one of them failed)."""
    if not await shared[0].is_alive():
        await shared[0].shutdown(now=True)
        shared[0] = await backend.start()
    return shared[0]


@pytest.fixture
async def fresh(backend: Backend) -> AsyncIterator[Kernel]:
    """A kernel of its own, for tests that end it."""
    own = await backend.start()
    yield own
    await own.shutdown(now=True)


# -- completed runs ------------------------------------------------------------------------
async def test_a_run_collects_stdout_and_the_execute_result(kernel: Kernel) -> None:
    result = await run(kernel, "print('hello')\n6 * 7")
    assert result.status == "ok", result
    assert [o["output_type"] for o in result.outputs] == ["stream", "execute_result"]
    assert result.outputs[0]["name"] == "stdout" and result.outputs[0]["text"] == "hello\n"
    assert result.outputs[1]["data"]["text/plain"] == "42"
    assert result.outputs[1]["execution_count"] == result.execution_count
    assert isinstance(result.execution_count, int)
    assert result.error is None and result.death is None and not result.kernel_replaced
    assert result.timeout_s == 20 and result.ended_at >= result.started_at
    assert 0 <= result.duration_s < 20
    assert kernel.language_info["name"] == "python"


async def test_an_error_keeps_its_traceback_with_its_ansi_colours(kernel: Kernel) -> None:
    result = await run(kernel, "print('before')\ndef risky():\n    return 1 / 0\nrisky()")
    assert result.status == "error"
    assert result.error is not None
    assert (result.error["ename"], result.error["evalue"]) == (
        "ZeroDivisionError",
        "division by zero",
    )
    traceback = "\n".join(result.error["traceback"])
    assert "\x1b[" in traceback, "the notebook keeps the raw, coloured traceback"
    assert "risky" in traceback
    assert result.outputs[0]["text"] == "before\n" and result.outputs[-1] is result.error
    assert not result.kernel_replaced
    assert await value(kernel, "'still here'") == "'still here'"


async def test_a_figure_comes_back_as_png(kernel: Kernel) -> None:
    result = await run(
        kernel, "import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.title('t')\nplt.show()"
    )
    assert result.status == "ok", result
    assert any("image/png" in output.get("data", {}) for output in result.outputs), result.outputs


async def test_set_up_code_records_nothing_and_shows_nothing(kernel: Kernel) -> None:
    before = await run(kernel, "'before'")
    reply = await kernel.run_silently("silent_value = 5\nprint('set-up noise')")
    after = await run(kernel, "silent_value")
    assert reply["status"] == "ok" and "outputs" not in reply
    assert after.status == "ok" and after.outputs[-1]["data"]["text/plain"] == "5"
    assert "set-up noise" not in text(after), "set-up output never leaks into a later run"
    assert before.execution_count is not None
    assert after.execution_count == before.execution_count + 1, "set-up is not in history"


async def test_set_up_code_that_fails_raises_kernel_error(kernel: Kernel) -> None:
    with pytest.raises(KernelError, match="ValueError: boom"):
        await kernel.run_silently("raise ValueError('boom')")
    assert await value(kernel, "'usable'") == "'usable'"


# -- input() ---------------------------------------------------------------------------------
async def test_input_is_answered_by_the_callers_handler(kernel: Kernel) -> None:
    asked: list[tuple[str, bool]] = []

    async def answer(prompt: str, password: bool) -> str | None:
        asked.append((prompt, password))
        return "Ada" if not password else None

    code = (
        "name = input('Name? ')\nimport getpass\n"
        "try:\n    getpass.getpass('Password: ')\nexcept EOFError:\n    print('no password')\n"
        "name"
    )
    result = await kernel.execute(code, timeout=20, grace=3, stdin=answer)
    assert result.status == "ok", result
    assert asked == [("Name? ", False), ("Password: ", True)]
    assert "no password" in text(result) and result.outputs[-1]["data"]["text/plain"] == "'Ada'"


async def test_without_a_handler_input_fails_at_once(kernel: Kernel) -> None:
    result = await run(kernel, "input('Name? ')", timeout=10)
    assert result.status == "error"
    assert result.error is not None and result.error["ename"] == "StdinNotImplementedError"


# -- timeouts and deaths ---------------------------------------------------------------------
async def test_a_timeout_interrupts_and_keeps_the_output_and_the_kernel(kernel: Kernel) -> None:
    kernel_id = kernel.process.kernel_id
    await run(kernel, "kept_state = 'survives'")
    result = await run(
        kernel, "print('before the loop', flush=True)\nwhile True:\n    pass\n", timeout=1, grace=5
    )
    assert result.status == "timeout" and result.timeout_s == 1
    assert 1 <= result.duration_s < 6
    assert "before the loop\n" in text(result)
    assert not result.kernel_replaced and not kernel.dead
    assert kernel.process.kernel_id == kernel_id
    assert await value(kernel, "kept_state") == "'survives'"


async def test_a_kernel_ignoring_the_interrupt_is_ended_after_the_grace(
    backend: Backend, fresh: Kernel
) -> None:
    result = await run(fresh, STUBBORN, timeout=1, grace=1)
    assert result.status == "timeout" and result.kernel_replaced
    assert "ignoring SIGINT\n" in text(result)
    assert any("ignored the interrupt" in note for note in result.notes), result.notes
    assert fresh.dead and not await fresh.is_alive()
    assert wait_until(lambda: backend.gone(fresh), timeout=20)
    with pytest.raises(KernelError, match="dead"):
        await run(fresh, "1")


async def test_a_death_is_seen_quickly(backend: Backend, fresh: Kernel) -> None:
    # ZMQ may drop a message still queued inside the dying process, so the output is
    # given a moment to leave it before the exit.
    result = await run(
        fresh,
        "import os, time\nprint('about to exit', flush=True)\ntime.sleep(0.2)\nos._exit(3)",
        timeout=30,
    )
    assert result.status == "kernel_died", result
    assert result.death is not None and backend.death_says in result.death
    assert result.duration_s < 3, "death is noticed by the liveness check, not the timeout"
    assert result.kernel_replaced and fresh.dead and not await fresh.is_alive()
    assert "about to exit" in text(result)
    with pytest.raises(KernelError, match="dead"):
        await run(fresh, "1")
    # Nothing of it is left: its process, or what the gateway's restarter brought back.
    assert wait_until(lambda: backend.gone(fresh), timeout=20)


# -- interrupt and cancellation --------------------------------------------------------------
async def test_an_interrupt_ends_a_run_as_interrupted(
    backend: Backend, kernel: Kernel, tmp_path: Path
) -> None:
    marker = backend.projects / f"running-{tmp_path.name}"

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
    assert result.error is not None and result.error["ename"] == "KeyboardInterrupt"
    assert result.duration_s < 10 and not result.kernel_replaced and not kernel.dead
    # The next run is not mistaken for an interrupted one.
    assert (await run(kernel, "raise KeyboardInterrupt")).status == "error"


async def test_an_interrupt_of_an_idle_kernel_does_not_reach_the_next_run(kernel: Kernel) -> None:
    # An idle kernel ignores SIGINT; an interrupt sent as a message can instead be
    # handled late, once the next execution runs, and end that one.
    for _ in range(3):
        await kernel.interrupt()
        result = await run(kernel, "import time\ntime.sleep(0.3)\nprint('slept')", timeout=30)
        assert result.status == "ok", result


async def test_a_cancelled_caller_leaves_the_kernel_recovered_for_the_next_run(
    kernel: Kernel,
) -> None:
    kernel_id = kernel.process.kernel_id
    await run(kernel, "earlier_state = 123")
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(
            kernel.execute("while True:\n    pass\n", timeout=60, grace=3), timeout=1
        )
    started = time.monotonic()
    result = await run(kernel, "earlier_state", timeout=10)
    assert result.status == "ok", result
    assert result.outputs[-1]["data"]["text/plain"] == "123"
    assert time.monotonic() - started < 5, "recovery interrupts; it neither waits nor kills"
    assert not kernel.dead and kernel.process.kernel_id == kernel_id
