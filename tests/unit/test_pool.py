"""Specification of ``kernel_mcp.pool``: the warm pools of unused kernels, on fake kernels.

The pool keeps ``size`` started kernels ready, refilled in the background. A kernel
handed out is the caller's and never comes back: no kernel is handed out twice. With
size 0 every request starts a kernel. Each kernel is prepared (the guards, the
preload) before it is handed out. ``close`` stops the refilling and shuts down every
kernel still in the pool. Cheap starts (forked kernels) refill two at a time, and a
caller that finds the pool empty waits for a start already under way. Memory
admission refuses kernels while memory is short, and the refiller backs off. The same
on real kernels: ``tests/integration/test_pool.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.admission import MemoryAdmission
from kernel_mcp.errors import KernelError, NotEnoughMemory
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.pool import KernelPool, KernelPools
from tests.helpers import wait_for
from tests.unit.fakes import FakeBackend, fake_of

MakePool = Callable[..., Awaitable[KernelPool]]


@pytest.fixture
def backend() -> FakeBackend:
    return FakeBackend()


@pytest.fixture
async def make_pool(backend: FakeBackend) -> AsyncIterator[MakePool]:
    pools: list[KernelPool] = []

    async def make(size: int, preload: list[str] | None = None, **options: Any) -> KernelPool:
        pool = KernelPool(backend, size=size, preload=preload or [], **options)
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def answer(kernel: Kernel, expression: str) -> str:
    result = await kernel.execute(expression, timeout=10, grace=1)
    assert result.status == "ok", result
    return str(result.outputs[-1]["data"]["text/plain"])


async def test_acquire_returns_distinct_live_kernels(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=10)
    assert pool.ready_count == 2

    first, second = await pool.acquire(), await pool.acquire()

    assert first is not second and fake_of(first) is not fake_of(second)
    assert await first.is_alive() and await second.is_alive()


async def test_the_pool_refills_to_its_size_in_the_background(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=10)
    taken = [await pool.acquire(), await pool.acquire()]
    assert pool.ready_count < 2

    await pool.wait_full(timeout=10)

    assert pool.ready_count == 2
    assert len(backend.started) == 4
    assert all(k in backend.started for k in taken)


async def test_no_kernel_is_handed_out_twice(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=10)

    # More concurrent requests than ready kernels, then more after the refill.
    handed = list(await asyncio.gather(*(pool.acquire() for _ in range(3))))
    await pool.wait_full(timeout=10)
    handed += [await pool.acquire(), await pool.acquire()]

    assert len({id(k) for k in handed}) == len(handed) == 5
    # A used kernel is never offered again: its state is the caller's alone.
    await handed[0].execute("touched = True", timeout=10, grace=1)
    await pool.wait_full(timeout=10)
    again = await pool.acquire()
    assert all(again is not k for k in handed)
    assert await answer(again, "'touched' in globals()") == "False"


async def test_size_zero_starts_a_kernel_per_request(make_pool, backend) -> None:
    pool = await make_pool(0)
    assert pool.ready_count == 0
    assert backend.started == [], "nothing is started ahead of a request"

    kernel = await pool.acquire()

    assert backend.started == [kernel]
    assert await answer(kernel, "1 + 1") == "2"
    second = await pool.acquire()
    assert second is not kernel
    assert backend.started == [kernel, second]
    assert pool.ready_count == 0


async def test_every_kernel_is_prepared_before_it_is_handed_out(make_pool) -> None:
    pool = await make_pool(1, preload=["colorsys"])
    await pool.wait_full(timeout=10)
    pooled = fake_of(await pool.acquire())
    on_demand = fake_of(await pool.acquire(kernel_name="python3"))
    for fake in (pooled, on_demand):
        guards, *rest = fake.silent_codes
        assert "['_kmcp_guard'](" in guards, "the guards first"
        assert rest[-1] == "import colorsys", "then the preload"
        assert fake.codes == [], "and nothing of the caller's yet"


async def test_a_failing_preload_still_hands_out_a_working_kernel(make_pool) -> None:
    pool = await make_pool(0, preload=["no_such_module_for_kernel_mcp_tests"])
    kernel = await pool.acquire()
    assert "import no_such_module_for_kernel_mcp_tests" in fake_of(kernel).silent_codes
    assert await answer(kernel, "'usable'") == "'usable'"


async def test_a_dead_pooled_kernel_is_not_handed_out(make_pool, backend) -> None:
    pool = await make_pool(1)
    await pool.wait_full(timeout=10)
    (doomed,) = backend.started
    fake_of(doomed).die("killed by SIGKILL")

    kernel = await pool.acquire()

    assert kernel is not doomed
    assert await answer(kernel, "'fresh'") == "'fresh'"
    assert fake_of(doomed).process.stopped, "the dead one was cleaned up"


async def test_close_shuts_down_every_pooled_kernel_but_not_one_handed_out(
    make_pool, backend
) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=10)
    handed = await pool.acquire()
    await pool.wait_full(timeout=10)
    assert len(backend.alive()) == 3

    await pool.close()

    assert backend.alive() == [handed], "a kernel handed out belongs to its caller"
    with pytest.raises(KernelError, match="shutting down"):
        await pool.acquire()


async def test_close_while_refilling_leaves_no_kernel_behind(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=10)
    backend.gate = asyncio.Event()  # the next starts hang until the gate opens
    await pool.acquire()
    assert await wait_for(lambda: _starting(backend), timeout=10)

    await pool.close()  # a start is under way right now

    backend.gate.set()
    await asyncio.sleep(0)
    assert backend.starting == 0
    assert len(backend.alive()) == 1, "only the kernel handed out"


async def _starting(backend: FakeBackend) -> bool:
    return backend.starting > 0


async def test_with_cheap_starts_an_empty_pool_hands_out_the_kernel_already_starting(
    make_pool, backend
) -> None:
    pool = await make_pool(1)
    await pool.wait_full()
    first = await pool.acquire()  # asks the refiller for a replacement at once
    second = await pool.acquire(refill_now=False)
    # The second caller waited for that replacement instead of starting its own.
    assert backend.asked == 2
    assert first is not second and await second.is_alive()


async def test_cheap_starts_refill_two_at_a_time(make_pool, backend) -> None:
    backend.gate = asyncio.Event()
    pool = await make_pool(4)
    assert await wait_for(lambda: _at_most(backend, 2), timeout=10)
    await asyncio.sleep(0)  # a third start would have begun by now
    assert backend.starting == 2
    backend.gate.set()
    await pool.wait_full()
    assert backend.asked == 4 and backend.most_at_once == 2


async def _at_most(backend: FakeBackend, count: int) -> bool:
    return backend.starting == count


async def test_costly_starts_refill_one_at_a_time(backend) -> None:
    costly = FakeBackend(cheap_starts=False)
    pool = KernelPool(costly, size=3, preload=[])
    await pool.start()
    try:
        await pool.wait_full()
        assert costly.most_at_once == 1
    finally:
        await pool.close()


async def test_a_deferred_refill_starts_only_when_asked(make_pool, backend) -> None:
    pool = await make_pool(1)
    await pool.wait_full()
    await pool.acquire(refill_now=False)
    # Nothing refills while the caller runs: the refiller stays idle.
    assert pool.ready_count == 0 and not pool._wanted.is_set()
    assert backend.asked == 1
    pool.refill(delay=0)
    await pool.wait_full()
    assert pool.ready_count == 1 and backend.asked == 2


# -- one pool per workspace --------------------------------------------------------------
async def test_each_workspace_gets_kernels_started_for_it(tmp_path: Path) -> None:
    backend = FakeBackend()
    pools = KernelPools(
        backend, size=1, preload=[], workspace_of=lambda owner: tmp_path / str(owner), default=None
    )
    await pools.start()
    try:
        assert pools.pools == {}  # a folder per principal: nothing is warmed before use
        alice = await pools.acquire(owner="alice")
        bob = await pools.acquire(owner="bob")
        assert fake_of(alice).workspace == tmp_path / "alice"
        assert fake_of(bob).workspace == tmp_path / "bob"
        assert set(pools.pools) == {tmp_path / "alice", tmp_path / "bob"}
        await pools.pool("alice").wait_full(timeout=10)
        warm = [k for k in backend.started if k not in (alice, bob)]
        assert {fake_of(k).workspace for k in warm} <= {tmp_path / "alice", tmp_path / "bob"}
    finally:
        await pools.close()
    assert backend.alive() == [alice, bob]


async def test_a_workspace_pool_nobody_used_for_a_while_is_closed_but_the_default_is_kept(
    tmp_path: Path,
) -> None:
    now = [0.0]
    backend = FakeBackend()
    pools = KernelPools(
        backend,
        size=1,
        preload=[],
        workspace_of=lambda owner: tmp_path / (owner or "shared"),
        default=tmp_path / "shared",
        idle_after=600,
        clock=lambda: now[0],
    )
    await pools.start()
    try:
        await pools.pool(None).wait_full(timeout=10)
        await pools.acquire(owner="alice")
        alice_pool = pools.pool("alice")
        await alice_pool.wait_full(timeout=10)
        now[0] = 599.0
        assert pools.cull_idle() == 0
        now[0] = 1300.0
        assert pools.cull_idle() == 1
        assert set(pools.pools) == {tmp_path / "shared"}
        await wait_for(lambda: _all_dead(alice_pool), timeout=10)
        # Used again: a new pool, warm again.
        await pools.acquire(owner="alice")
        assert tmp_path / "alice" in pools.pools
    finally:
        await pools.close()


async def _all_dead(pool: KernelPool) -> bool:
    return pool.ready_count == 0 and pool._closed


# -- memory admission ----------------------------------------------------------------------
class Memory:
    """An injected memory reader: what the machine has available, and how often it was read."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.available


class Backoff:
    """The refiller's waits, recorded; it waits for good after ``steps`` of them."""

    def __init__(self, steps: int) -> None:
        self.delays: list[float] = []
        self.steps = steps
        self.done = asyncio.Event()

    async def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if len(self.delays) >= self.steps:
            self.done.set()
            await asyncio.Event().wait()


async def test_without_memory_no_kernel_starts_and_the_refiller_backs_off() -> None:
    memory = Memory(available=10)
    backoff = Backoff(steps=7)
    costly = FakeBackend(cheap_starts=False)
    pool = KernelPool(
        costly,
        size=2,
        preload=[],
        admission=MemoryAdmission(1000, available=memory),
        backoff=backoff,
    )
    await pool.start()
    try:
        with pytest.raises(NotEnoughMemory):
            await pool.acquire()
        with pytest.raises(NotEnoughMemory):
            await pool.acquire(kernel_name="python3")
        await asyncio.wait_for(backoff.done.wait(), timeout=10)
        # 1 s, doubling up to 30 s: it asks for memory once per wait, never in a loop.
        assert backoff.delays == [1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0]
        assert memory.reads == 2 + 7
        assert costly.asked == 0 and pool.ready_count == 0
        # Memory comes back: a kernel is handed out again.
        memory.available = 2000
        assert await (await pool.acquire()).is_alive()
    finally:
        await pool.close()


async def test_a_warm_kernel_is_not_handed_out_without_memory(make_pool) -> None:
    memory = Memory(available=2000)
    pool = await make_pool(1)
    await pool.wait_full(timeout=10)
    pool.admission = MemoryAdmission(1000, available=memory)
    memory.available = 10
    with pytest.raises(NotEnoughMemory):
        await pool.acquire()
    assert pool.ready_count == 1, "it stays in the pool for when memory is back"
