"""``SessionRegistry`` with real kernels: what only real processes show.

The registry's logic (owners, names, the cap, order of calls, tombstones, the
idle cull) is specified on the fake backend in ``tests/unit/test_sessions.py``;
here: a session's state lives in its kernel process, an interrupt reaches a
busy kernel, a kernel that exits or is killed is replaced, and closing a
session or the registry leaves no process behind.
"""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import SessionGone
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.pool import KernelPool
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.registry import SessionRegistry
from kernel_mcp.sessions.store import InProcessStore
from tests.helpers import wait_for
from tests.launchers import alive, wait_until

MakeRegistry = Callable[..., Awaitable[SessionRegistry]]


@pytest.fixture(scope="module")
async def pool(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[KernelPool]:
    projects = tmp_path_factory.mktemp("session-projects")
    backend = LocalBackend(load_settings(projects_dir=projects, pool_size=2))
    shared = KernelPool(backend, size=2, preload=[])
    await shared.start()
    yield shared
    await shared.close()
    await backend.close()


@pytest.fixture
async def make_registry(pool: KernelPool) -> AsyncIterator[MakeRegistry]:
    registries: list[SessionRegistry] = []

    async def make(
        *, max_sessions: int = 8, idle_timeout: float = 0, **kwargs: Any
    ) -> SessionRegistry:
        registry = SessionRegistry(
            pool, InProcessStore(), max_sessions=max_sessions, idle_timeout=idle_timeout, **kwargs
        )
        registries.append(registry)
        await registry.start()
        return registry

    yield make
    for registry in registries:
        await registry.close()


@pytest.fixture
async def registry(make_registry: MakeRegistry) -> SessionRegistry:
    return await make_registry()


def pid_of(kernel: Kernel | None) -> int:
    assert kernel is not None
    pid = getattr(kernel.process, "pid", None)
    assert isinstance(pid, int)
    return pid


async def execute(
    registry: SessionRegistry, owner: str | None, session_id: str, code: str, *, timeout: float = 20
) -> Execution:
    async def work(session: Session, kernel: Kernel) -> Execution:
        return await kernel.execute(code, timeout=timeout, grace=2)

    return await registry.use(owner, session_id, work)


async def answer(
    registry: SessionRegistry, owner: str | None, session_id: str, expression: str
) -> str:
    result = await execute(registry, owner, session_id, expression)
    assert result.status == "ok", result
    return str(result.outputs[-1]["data"]["text/plain"])


def message_of(excinfo: pytest.ExceptionInfo[BaseException], session_id: str) -> str:
    return str(excinfo.value).replace(session_id, "<id>")


async def busy_call(
    registry: SessionRegistry, session_id: str, marker: Path
) -> asyncio.Task[Execution]:
    """Alice's call that loops until stopped, returned once it is running."""
    call = asyncio.create_task(
        execute(
            registry,
            "alice",
            session_id,
            f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
            "while True:\n    time.sleep(0.01)\n",
            timeout=30,
        )
    )

    async def running() -> bool:
        return marker.exists()

    if not await wait_for(running, timeout=20):
        call.cancel()
        raise AssertionError("the call never started running")
    return call


async def test_state_persists_between_uses(registry: SessionRegistry) -> None:
    session = await registry.create("alice")
    await execute(registry, "alice", session.id, "counter = 41")
    assert await answer(registry, "alice", session.id, "counter + 1") == "42"
    assert session.lost_state is None


def marker_for(registry: SessionRegistry, tmp_path: Path) -> Path:
    """A file the test and a (sandboxed) kernel both see: in the projects folder."""
    return registry.pool.backend.settings.projects_dir / f"running-{tmp_path.name}"  # type: ignore[attr-defined]


async def test_interrupt_ends_the_running_call(registry: SessionRegistry, tmp_path: Path) -> None:
    session = await registry.create("alice")
    assert await registry.interrupt("alice", session.id) is False, "nothing was running"

    call = await busy_call(registry, session.id, marker_for(registry, tmp_path))
    try:
        assert await registry.interrupt("alice", session.id) is True
        result = await asyncio.wait_for(call, timeout=10)
    finally:
        call.cancel()
    assert result.status == "interrupted"
    assert await answer(registry, "alice", session.id, "'still alive'") == "'still alive'"


# -- kernels that die, restart ------------------------------------------------------
async def test_a_kernel_that_died_during_a_run_is_replaced_on_the_next_use(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice")
    await execute(registry, "alice", session.id, "lost = 'yes'")
    old_pid = pid_of(session.kernel)

    died = await execute(registry, "alice", session.id, "import os\nos._exit(1)")
    assert died.status == "kernel_died"
    assert session.lost_state == "the kernel was killed or died during the previous run"
    assert session.state == "dead"

    assert await answer(registry, "alice", session.id, "'lost' in globals()") == "False"
    assert pid_of(session.kernel) != old_pid
    assert session.lost_state is not None
    assert "the kernel was killed or died during the previous run" in session.lost_state
    assert "state was lost" in session.lost_state
    assert session.state == "idle"


async def test_a_kernel_that_died_while_idle_is_replaced_on_the_next_use(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice")
    kernel = session.kernel
    assert kernel is not None
    old_pid = pid_of(kernel)
    os.kill(old_pid, signal.SIGKILL)

    async def exited() -> bool:
        return not await kernel.process.is_alive()

    assert await wait_for(exited, timeout=10)

    assert await answer(registry, "alice", session.id, "'fresh'") == "'fresh'"
    assert pid_of(session.kernel) != old_pid
    assert session.lost_state == "the kernel died; the session's state was lost"


async def test_restart_gives_a_new_kernel_with_an_empty_namespace(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice", "restartable")
    await execute(registry, "alice", session.id, "before_restart = 1")
    old_pid = pid_of(session.kernel)

    restarted = await registry.restart("alice", session.id)

    assert restarted is session
    assert restarted.id == session.id and restarted.name == "restartable"
    assert pid_of(session.kernel) != old_pid
    assert wait_until(lambda: not alive({old_pid}), timeout=10)
    assert await answer(registry, "alice", session.id, "'before_restart' in globals()") == "False"
    assert session.lost_state is None, "a restart asked for is not a loss to report"


# -- closing, culling ---------------------------------------------------------------
async def test_close_session_shuts_the_kernel_and_leaves_a_tombstone(
    make_registry: MakeRegistry,
) -> None:
    closed: list[Session] = []

    async def on_close(session: Session) -> None:
        closed.append(session)

    registry = await make_registry(on_close=on_close)
    session = await registry.create("alice")
    pid = pid_of(session.kernel)

    assert await registry.close_session("alice", session.id) is session

    assert closed == [session]
    assert session.kernel is None
    assert wait_until(lambda: not alive({pid}), timeout=10)
    assert (await registry.owned("alice")) == []
    with pytest.raises(SessionGone, match=r"was closed at .*Create a new one"):
        await registry.find("alice", session.id)

    async def work(current: Session, kernel: Kernel) -> None:
        raise AssertionError("a closed session runs nothing")

    with pytest.raises(SessionGone, match="was closed"):
        await registry.use("alice", session.id, work)


async def test_closing_a_busy_session_interrupts_its_call_first(
    registry: SessionRegistry, tmp_path: Path
) -> None:
    session = await registry.create("alice")
    pid = pid_of(session.kernel)
    call = await busy_call(registry, session.id, marker_for(registry, tmp_path))
    try:
        await asyncio.wait_for(registry.close_session("alice", session.id), timeout=10)
        result = await asyncio.wait_for(call, timeout=10)
    finally:
        call.cancel()
    assert result.status == "interrupted"
    assert wait_until(lambda: not alive({pid}), timeout=10)


async def test_closing_the_registry_shuts_every_kernel(make_registry: MakeRegistry) -> None:
    registry = await make_registry(idle_timeout=60)
    sessions = [await registry.create("alice"), await registry.create("bob")]
    pids = {pid_of(s.kernel) for s in sessions}
    assert alive(pids) == pids

    await registry.close()

    assert (await registry.count()) == 0
    assert wait_until(lambda: not alive(pids), timeout=10)
    assert all(s.kernel is None for s in sessions)
