"""Specification of ``SessionRegistry`` on fake kernels: named, owned, persistent kernels.

Every lookup names its owner, and another owner's session is reported exactly like an
unknown one. Calls on one session run alone, in arrival order; different sessions run
in parallel. A closed or culled session leaves a tombstone that says so; a dead kernel
is replaced on the next use, which is told the state was lost. The same on real
kernels: ``tests/integration/test_sessions.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest

from kernel_mcp.errors import InvalidArgument, SessionGone, SessionNotFound, TooManySessions
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.pool import KernelPool
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.registry import SessionRegistry
from kernel_mcp.sessions.store import InProcessStore
from tests.unit import fakes
from tests.unit.fakes import FakeBackend, fake_of

MakeRegistry = Callable[..., Awaitable[SessionRegistry]]
#: What a call that loops until stopped runs (``scripted`` below answers it).
LOOP = "loop()"


class Clock:
    """The registry's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def started() -> asyncio.Event:
    return asyncio.Event()


@pytest.fixture
def backend(started: asyncio.Event) -> FakeBackend:
    loop = fakes.waits_for(asyncio.Event(), started=started)
    return FakeBackend(fakes.scripted({LOOP: loop, "die()": fakes.dies}))


@pytest.fixture
async def pool(backend: FakeBackend) -> AsyncIterator[KernelPool]:
    shared = KernelPool(backend, size=2, preload=[])
    await shared.start()
    yield shared
    await shared.close()


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def make_registry(pool: KernelPool, clock: Clock) -> AsyncIterator[MakeRegistry]:
    registries: list[SessionRegistry] = []

    async def make(
        *, max_sessions: int = 8, idle_timeout: float = 0, **kwargs: Any
    ) -> SessionRegistry:
        registry = SessionRegistry(
            pool,
            InProcessStore(),
            max_sessions=max_sessions,
            idle_timeout=idle_timeout,
            clock=clock,
            **kwargs,
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


async def execute(registry: SessionRegistry, owner: str | None, sid: str, code: str) -> Execution:
    async def work(session: Session, kernel: Kernel) -> Execution:
        return await kernel.execute(code, timeout=10, grace=1)

    return await registry.use(owner, sid, work)


async def answer(registry: SessionRegistry, owner: str | None, sid: str, expression: str) -> str:
    result = await execute(registry, owner, sid, expression)
    assert result.status == "ok", result
    return str(result.outputs[-1]["data"]["text/plain"])


def message_of(excinfo: pytest.ExceptionInfo[BaseException], session_id: str) -> str:
    return str(excinfo.value).replace(session_id, "<id>")


async def busy_call(
    registry: SessionRegistry, sid: str, started: asyncio.Event
) -> asyncio.Task[Execution]:
    """Alice's call that loops until stopped, returned once it is running."""
    call = asyncio.create_task(execute(registry, "alice", sid, LOOP))
    await asyncio.wait_for(started.wait(), timeout=10)
    return call


# -- creating and finding ----------------------------------------------------------------
async def test_sessions_are_created_listed_and_found_per_owner(registry: SessionRegistry) -> None:
    named = await registry.create("alice", "analysis")
    unnamed = await registry.create("alice")
    bobs = await registry.create("bob")

    assert named.name == "analysis"
    assert unnamed.name == unnamed.id, "an unnamed session is called by its id"
    assert len({named.id, unnamed.id, bobs.id}) == 3
    assert all(len(s.id) >= 16 for s in (named, unnamed, bobs))
    assert named.owner == "alice" and named.state == "idle"
    assert await registry.find("alice", named.id) is named
    assert await registry.find("bob", bobs.id) is bobs
    assert {s.id for s in await registry.owned("alice")} == {named.id, unnamed.id}
    assert [s.id for s in await registry.owned("bob")] == [bobs.id]
    assert await registry.owned("carol") == [] and await registry.owned(None) == []
    assert await registry.count() == 3
    assert len({id(fake_of(s.kernel)) for s in (named, unnamed, bobs)}) == 3


async def test_another_owners_session_is_reported_like_an_unknown_one(
    registry: SessionRegistry,
) -> None:
    mine = await registry.create("alice")
    unknown = "no-such-session-id-000000"

    with pytest.raises(SessionNotFound) as foreign:
        await registry.find("bob", mine.id)
    with pytest.raises(SessionNotFound) as missing:
        await registry.find("bob", unknown)
    assert message_of(foreign, mine.id) == message_of(missing, unknown)

    async def work(session: Session, kernel: Kernel) -> None:
        raise AssertionError("another owner's work must never run")

    with pytest.raises(SessionNotFound):
        await registry.use("bob", mine.id, work)
    with pytest.raises(SessionNotFound):
        await registry.interrupt("bob", mine.id)
    with pytest.raises(SessionNotFound):
        await registry.restart("bob", mine.id)
    with pytest.raises(SessionNotFound):
        await registry.close_session("bob", mine.id)
    with pytest.raises(SessionNotFound):
        await registry.find(None, mine.id)
    assert await registry.find("alice", mine.id) is mine

    # Even its tombstone is not shown to another owner.
    await registry.close_session("alice", mine.id)
    with pytest.raises(SessionGone):
        await registry.find("alice", mine.id)
    with pytest.raises(SessionNotFound) as buried:
        await registry.find("bob", mine.id)
    assert message_of(buried, mine.id) == message_of(missing, unknown)


async def test_max_sessions_is_enforced_even_for_concurrent_creates(
    make_registry: MakeRegistry,
) -> None:
    registry = await make_registry(max_sessions=2)

    outcomes = await asyncio.gather(
        *(registry.create("alice") for _ in range(3)), return_exceptions=True
    )

    sessions = [o for o in outcomes if isinstance(o, Session)]
    refused = [o for o in outcomes if not isinstance(o, Session)]
    assert len(sessions) == 2
    assert len(refused) == 1 and isinstance(refused[0], TooManySessions), refused
    assert "KERNEL_MCP_MAX_SESSIONS" in str(refused[0])
    with pytest.raises(TooManySessions):
        await registry.create("bob")
    await registry.close_session("alice", sessions[0].id)
    replacement = await registry.create("bob")
    assert await registry.count() == 2
    assert replacement.id in {s.id for s in await registry.owned("bob")}


@pytest.mark.parametrize("name", ["", "a b", "../escape", "sub/dir", ".hidden", "x" * 65])
async def test_an_invalid_name_is_refused(registry: SessionRegistry, name: str) -> None:
    with pytest.raises(InvalidArgument, match="Invalid name"):
        await registry.create("alice", name)
    assert await registry.count() == 0


async def test_a_duplicate_name_is_refused_until_the_first_is_closed(
    registry: SessionRegistry,
) -> None:
    first = await registry.create("alice", "work")
    with pytest.raises(InvalidArgument, match="'work' already"):
        await registry.create("alice", "work")
    assert await registry.count() == 1
    await registry.close_session("alice", first.id)
    second = await registry.create("alice", "work")
    assert second.name == "work" and second.id != first.id


async def test_concurrent_creates_with_one_name_give_one_session(backend: FakeBackend) -> None:
    # An empty pool whose starts wait: both creates are in flight at once, as under load.
    backend.gate = asyncio.Event()
    empty = KernelPool(backend, size=0, preload=[])
    registry = SessionRegistry(empty, InProcessStore(), max_sessions=8, idle_timeout=0)
    try:
        creates = asyncio.gather(
            registry.create("alice", "twin"),
            registry.create("alice", "twin"),
            return_exceptions=True,
        )
        await asyncio.sleep(0)
        backend.gate.set()
        outcomes = await creates
        names = [s.name for s in await registry.owned("alice")]
    finally:
        await registry.close()
        await empty.close()
    assert names == ["twin"]
    assert sum(isinstance(o, InvalidArgument) for o in outcomes) == 1
    assert backend.asked == 1, "the refused create never took a kernel"


async def test_names_are_per_owner(registry: SessionRegistry) -> None:
    alices = await registry.create("alice", "shared-name")
    bobs = await registry.create("bob", "shared-name")
    assert alices.id != bobs.id
    assert [s.name for s in await registry.owned("bob")] == ["shared-name"]


# -- using ---------------------------------------------------------------------------------
async def test_use_runs_work_alone_and_in_arrival_order(registry: SessionRegistry) -> None:
    session = await registry.create("alice")
    entered: list[int] = []
    inside = [0]
    most_inside = [0]
    seen: list[tuple[Kernel, str]] = []

    def work_for(index: int) -> Callable[[Session, Kernel], Awaitable[int]]:
        async def work(current: Session, kernel: Kernel) -> int:
            entered.append(index)
            inside[0] += 1
            most_inside[0] = max(most_inside[0], inside[0])
            seen.append((kernel, current.state))
            for _ in range(5):
                await asyncio.sleep(0)  # others get their turn: they must still wait
            inside[0] -= 1
            return index

        return work

    results = await asyncio.gather(
        *(registry.use("alice", session.id, work_for(i)) for i in range(4))
    )

    assert results == [0, 1, 2, 3]
    assert entered == [0, 1, 2, 3], "arrival order"
    assert most_inside == [1], "no two works overlap"
    assert all(kernel is session.kernel for kernel, _ in seen)
    assert all(state == "busy" for _, state in seen)
    assert session.runs == 4 and session.state == "idle"


async def test_state_persists_between_uses(registry: SessionRegistry) -> None:
    session = await registry.create("alice")
    await execute(registry, "alice", session.id, "counter = 41")
    assert await answer(registry, "alice", session.id, "counter + 1") == "42"
    assert session.lost_state is None


async def test_different_sessions_run_in_parallel(registry: SessionRegistry) -> None:
    one = await registry.create("alice")
    two = await registry.create("alice")

    def meeting() -> tuple[Callable[..., Awaitable[str]], Callable[..., Awaitable[str]]]:
        """Two works that each wait for the other: they finish only if they overlap."""
        first_in, second_in = asyncio.Event(), asyncio.Event()

        async def first(session: Session, kernel: Kernel) -> str:
            first_in.set()
            await second_in.wait()
            return "first"

        async def second(session: Session, kernel: Kernel) -> str:
            second_in.set()
            await first_in.wait()
            return "second"

        return first, second

    first, second = meeting()
    together = asyncio.gather(
        registry.use("alice", one.id, first), registry.use("alice", two.id, second)
    )
    assert await asyncio.wait_for(together, timeout=5) == ["first", "second"]

    # The same pair on one session waits for each other: the second never enters.
    first, second = meeting()
    serialised = asyncio.ensure_future(registry.use("alice", one.id, first))
    blocked = asyncio.ensure_future(registry.use("alice", one.id, second))
    for _ in range(20):
        await asyncio.sleep(0)
    assert not serialised.done() and not blocked.done()
    serialised.cancel()
    blocked.cancel()
    await asyncio.gather(serialised, blocked, return_exceptions=True)
    assert not one.lock.locked()


async def test_interrupt_ends_the_running_call(
    registry: SessionRegistry, started: asyncio.Event
) -> None:
    session = await registry.create("alice")
    assert await registry.interrupt("alice", session.id) is False, "nothing was running"

    call = await busy_call(registry, session.id, started)
    assert await registry.interrupt("alice", session.id) is True
    result = await asyncio.wait_for(call, timeout=10)
    assert result.status == "interrupted"
    assert await answer(registry, "alice", session.id, "'still alive'") == "'still alive'"


# -- kernels that die, restart --------------------------------------------------------------
async def test_a_kernel_that_died_during_a_run_is_replaced_on_the_next_use(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice")
    await execute(registry, "alice", session.id, "lost = 'yes'")
    old = fake_of(session.kernel)

    died = await execute(registry, "alice", session.id, "die()")
    assert died.status == "kernel_died"
    assert session.lost_state == "the kernel was killed or died during the previous run"
    assert session.state == "dead"

    assert await answer(registry, "alice", session.id, "'lost' in globals()") == "False"
    assert fake_of(session.kernel) is not old
    assert session.lost_state is not None
    assert "the kernel was killed or died during the previous run" in session.lost_state
    assert "state was lost" in session.lost_state
    assert session.state == "idle"


async def test_a_kernel_that_died_while_idle_is_replaced_on_the_next_use(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice")
    old = fake_of(session.kernel)
    old.die("killed by SIGKILL")

    assert await answer(registry, "alice", session.id, "'fresh'") == "'fresh'"
    assert fake_of(session.kernel) is not old
    assert session.lost_state == "the kernel died; the session's state was lost"


async def test_restart_gives_a_new_kernel_with_an_empty_namespace(
    registry: SessionRegistry,
) -> None:
    session = await registry.create("alice", "restartable")
    await execute(registry, "alice", session.id, "before_restart = 1")
    old = fake_of(session.kernel)

    restarted = await registry.restart("alice", session.id)

    assert restarted is session
    assert restarted.id == session.id and restarted.name == "restartable"
    assert fake_of(session.kernel) is not old and old.process.stopped
    assert await answer(registry, "alice", session.id, "'before_restart' in globals()") == "False"
    assert session.lost_state is None, "a restart asked for is not a loss to report"


# -- closing, culling ----------------------------------------------------------------------
async def test_close_session_shuts_the_kernel_and_leaves_a_tombstone(
    make_registry: MakeRegistry,
) -> None:
    closed: list[Session] = []

    async def on_close(session: Session) -> None:
        closed.append(session)

    registry = await make_registry(on_close=on_close)
    session = await registry.create("alice")
    fake = fake_of(session.kernel)

    assert await registry.close_session("alice", session.id) is session

    assert closed == [session]
    assert session.kernel is None and fake.process.stopped
    assert await registry.owned("alice") == []
    with pytest.raises(SessionGone, match=r"was closed at .*Create a new one"):
        await registry.find("alice", session.id)

    async def work(current: Session, kernel: Kernel) -> None:
        raise AssertionError("a closed session runs nothing")

    with pytest.raises(SessionGone, match="was closed"):
        await registry.use("alice", session.id, work)


async def test_closing_a_busy_session_interrupts_its_call_first(
    registry: SessionRegistry, started: asyncio.Event
) -> None:
    session = await registry.create("alice")
    fake = fake_of(session.kernel)
    call = await busy_call(registry, session.id, started)

    await asyncio.wait_for(registry.close_session("alice", session.id), timeout=10)
    result = await asyncio.wait_for(call, timeout=10)

    assert result.status == "interrupted"
    assert fake.process.interrupts >= 1 and fake.process.stopped


async def test_idle_sessions_are_culled_and_say_so(
    make_registry: MakeRegistry, clock: Clock
) -> None:
    registry = await make_registry(idle_timeout=300)
    session = await registry.create("alice")
    fake = fake_of(session.kernel)
    release, entered = asyncio.Event(), asyncio.Event()

    # A call longer than the idle timeout does not get its session culled.
    async def long_work(current: Session, kernel: Kernel) -> str:
        entered.set()
        await release.wait()
        return "done"

    call = asyncio.ensure_future(registry.use("alice", session.id, long_work))
    await entered.wait()
    clock.now += 301
    await registry.cull()
    release.set()
    assert await call == "done"
    await registry.cull()  # just used: it stays
    assert await registry.find("alice", session.id) is session
    clock.now += 299
    await registry.cull()
    assert await registry.find("alice", session.id) is session

    clock.now += 2
    await registry.cull()
    assert await registry.owned("alice") == []
    with pytest.raises(SessionGone) as gone:
        await registry.find("alice", session.id)
    assert "was culled at" in str(gone.value)
    assert "KERNEL_MCP_SESSION_IDLE_TIMEOUT=300" in str(gone.value)
    with pytest.raises(SessionNotFound):
        await registry.find("bob", session.id)
    assert fake.process.stopped


async def test_closing_the_registry_shuts_every_kernel(make_registry: MakeRegistry) -> None:
    registry = await make_registry(idle_timeout=60)
    sessions = [await registry.create("alice"), await registry.create("bob")]
    fakes_of = [fake_of(s.kernel) for s in sessions]

    await registry.close()

    assert all(fake.process.stopped for fake in fakes_of)
    assert all(s.kernel is None for s in sessions)
