"""Specification of ``kernel_mcp.pool.KernelPool``: the warm pool of unused kernels.

The pool keeps ``size`` started kernels ready, refilled in the background. A
kernel handed out is the caller's and never comes back: no kernel is handed
out twice. With size 0 every request starts a kernel. ``close`` stops the
refilling and shuts down every kernel still in the pool.
"""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.admission import MemoryAdmission
from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import KernelError, NotEnoughMemory
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.pool import KernelPool, KernelPools
from tests.helpers import wait_for
from tests.launchers import PID_NAMESPACE, alive, host_pids, kernel_processes, wait_until

#: A standard-library module a fresh kernel does not import by itself (``json``
#: is imported by ipykernel already, so preloading it could not be observed).
PRELOADED = "colorsys"

MakePool = Callable[..., Awaitable[KernelPool]]


class RecordingBackend:
    """A LocalBackend that remembers every kernel it started."""

    name = "local"

    def __init__(self, inner: LocalBackend) -> None:
        self.inner = inner
        self.started: list[Kernel] = []
        self.asked = 0
        """Starts begun (``started`` holds those that ended ready)."""
        self.starting = self.most_at_once = 0

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        self.asked += 1
        self.starting += 1
        self.most_at_once = max(self.most_at_once, self.starting)
        try:
            kernel = await self.inner.start(kernel_name, workspace=workspace)
        finally:
            self.starting -= 1
        self.started.append(kernel)
        return kernel

    async def close(self) -> None:
        await self.inner.close()

    @property
    def sandboxed(self) -> bool:
        return self.inner.sandboxed

    @property
    def cheap_starts(self) -> bool:
        return self.inner.cheap_starts

    @property
    def pids(self) -> set[int]:
        return {pid_of(k) for k in self.started}


def pid_of(kernel: Kernel) -> int:
    pid = getattr(kernel.process, "pid", None)
    assert isinstance(pid, int)
    return pid


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("pool-projects")


@pytest.fixture
async def backend(projects: Path) -> AsyncIterator[RecordingBackend]:
    recording = RecordingBackend(LocalBackend(load_settings(projects_dir=projects, pool_size=0)))
    yield recording
    await asyncio.gather(*(k.shutdown(now=True) for k in recording.started), return_exceptions=True)
    await recording.close()


@pytest.fixture
async def make_pool(backend: RecordingBackend) -> AsyncIterator[MakePool]:
    pools: list[KernelPool] = []

    async def make(size: int, preload: list[str] | None = None) -> KernelPool:
        pool = KernelPool(backend, size=size, preload=preload or [])  # type: ignore[arg-type]
        pools.append(pool)
        await pool.start()
        return pool

    yield make
    for pool in pools:
        await pool.close()


async def answer(kernel: Kernel, expression: str) -> str:
    result = await kernel.execute(expression, timeout=20, grace=2)
    assert result.status == "ok", result
    return str(result.outputs[-1]["data"]["text/plain"])


async def test_acquire_returns_distinct_live_kernels(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=30)
    assert pool.ready_count == 2

    first, second = await pool.acquire(), await pool.acquire()

    assert first is not second
    assert pid_of(first) != pid_of(second)
    assert await first.is_alive()
    assert await second.is_alive()
    for kernel in (first, second):
        # The pid the kernel sees is its own (in its PID namespace, when sandboxed).
        namespace, pid = ast.literal_eval(
            await answer(kernel, f"({PID_NAMESPACE}, __import__('os').getpid())")
        )
        assert host_pids(namespace, [pid]) == {kernel.process.kernel_pid}  # type: ignore[attr-defined]


async def test_the_pool_refills_to_its_size_in_the_background(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=30)
    taken = [await pool.acquire(), await pool.acquire()]
    assert pool.ready_count < 2

    await pool.wait_full(timeout=30)

    assert pool.ready_count == 2
    assert len(backend.started) == 4
    assert all(k in backend.started for k in taken)


async def test_no_kernel_is_handed_out_twice(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=30)

    # More concurrent requests than ready kernels, then more after the refill.
    handed = list(await asyncio.gather(*(pool.acquire() for _ in range(3))))
    await pool.wait_full(timeout=30)
    handed += [await pool.acquire(), await pool.acquire()]

    assert len({id(k) for k in handed}) == len(handed) == 5
    assert len({pid_of(k) for k in handed}) == 5
    for kernel in handed:
        assert await kernel.is_alive()
    # A used kernel is never offered again: its state is the caller's alone.
    await handed[0].execute("touched = True", timeout=20, grace=2)
    await pool.wait_full(timeout=30)
    again = await pool.acquire()
    assert all(again is not k for k in handed)
    assert await answer(again, "'touched' in globals()") == "False"


async def test_size_zero_starts_a_kernel_per_request(make_pool, backend) -> None:
    pool = await make_pool(0)
    assert pool.ready_count == 0
    assert backend.started == [], "nothing is started ahead of a request"

    kernel = await pool.acquire()

    assert backend.started == [kernel]
    assert await kernel.is_alive()
    assert await answer(kernel, "1 + 1") == "2"
    second = await pool.acquire()
    assert second is not kernel
    assert backend.started == [kernel, second]
    assert pool.ready_count == 0


async def test_preload_imports_modules_before_the_kernel_is_handed_out(make_pool) -> None:
    pool = await make_pool(1, preload=[PRELOADED])
    await pool.wait_full(timeout=30)
    pooled = await pool.acquire()
    assert await answer(pooled, f"import sys; {PRELOADED!r} in sys.modules") == "True"


async def test_preload_also_applies_to_kernels_started_on_demand(make_pool) -> None:
    pool = await make_pool(0, preload=[PRELOADED])
    kernel = await pool.acquire()
    assert await answer(kernel, f"import sys; {PRELOADED!r} in sys.modules") == "True"


async def test_a_failing_preload_still_hands_out_a_working_kernel(make_pool) -> None:
    pool = await make_pool(0, preload=["no_such_module_for_kernel_mcp_tests"])
    kernel = await pool.acquire()
    assert await kernel.is_alive()
    assert await answer(kernel, "'usable'") == "'usable'"


async def test_kernels_are_prepared_with_the_output_guard(projects: Path) -> None:
    """A flood is cut inside the kernel, so the server never receives more than it keeps."""
    settings = load_settings(projects_dir=projects, pool_size=0, max_output_bytes=2048)
    backend = LocalBackend(settings)
    pool = KernelPool(backend, size=0, preload=[])
    try:
        kernel = await pool.acquire()
        try:
            result = await kernel.execute("print('x' * 100_000)", timeout=20, grace=2)
        finally:
            await kernel.shutdown(now=True)
    finally:
        await pool.close()
        await backend.close()

    assert result.status == "ok", result
    (stream,) = result.outputs
    assert OUTPUT_GUARD_MARKER in stream["text"]
    assert stream["text"].startswith("x" * 1000)
    assert len(stream["text"]) <= 2048
    assert not result.truncated, "the kernel dropped the flood; the collector had nothing to cut"


async def test_a_dead_pooled_kernel_is_not_handed_out(make_pool, backend) -> None:
    pool = await make_pool(1)
    await pool.wait_full(timeout=30)
    (doomed,) = backend.started
    os.kill(pid_of(doomed), signal.SIGKILL)

    async def exited() -> bool:
        return not await doomed.process.is_alive()

    assert await wait_for(exited, timeout=10)

    kernel = await pool.acquire()

    assert kernel is not doomed
    assert await kernel.is_alive()
    assert await answer(kernel, "'fresh'") == "'fresh'"


async def test_close_shuts_down_every_pooled_kernel(make_pool, backend) -> None:
    pool = await make_pool(2)
    await pool.wait_full(timeout=30)
    handed = await pool.acquire()
    await pool.wait_full(timeout=30)
    pooled = backend.pids - {pid_of(handed)}
    assert len(pooled) == 2
    assert alive(pooled) == pooled

    await pool.close()

    assert wait_until(lambda: not alive(pooled), timeout=10)
    assert await handed.is_alive(), "a kernel handed out belongs to its caller"
    with pytest.raises(KernelError, match="shutting down"):
        await pool.acquire()


async def test_close_while_refilling_leaves_no_kernel_behind(make_pool, backend) -> None:
    pool = await make_pool(2)

    async def first_ready() -> bool:
        return pool.ready_count >= 1

    assert await wait_for(first_ready, timeout=30)
    # The backend's private folder: every one of its kernels (spawned or forked from its
    # template) names it on its command line.
    folder = str(backend.started[0].process.connection_file.parent.parent)  # type: ignore[attr-defined]

    await pool.close()  # the second kernel is being started right now

    def ours() -> set[int]:
        return {p.pid for p in kernel_processes() if folder in " ".join(p.info["cmdline"])}

    assert wait_until(lambda: not alive(ours()), timeout=15), ours()


async def test_with_cheap_starts_an_empty_pool_hands_out_the_kernel_already_starting(
    make_pool, backend
) -> None:
    assert backend.cheap_starts, "kernels are forked by default"
    pool = await make_pool(1)
    await pool.wait_full()
    first = await pool.acquire()  # asks the refiller for a replacement at once
    second = await pool.acquire(refill_now=False)
    # The second caller waited for that replacement instead of starting its own.
    assert backend.asked == 2
    assert first is not second and await second.is_alive()
    await asyncio.gather(first.shutdown(now=True), second.shutdown(now=True))


async def test_cheap_starts_refill_two_at_a_time(make_pool, backend) -> None:
    pool = await make_pool(4)
    await pool.wait_full()
    assert backend.most_at_once == 2  # the first fill
    taken = [await pool.acquire(refill_now=False) for _ in range(4)]
    backend.most_at_once = 0
    pool.refill()
    await pool.wait_full()
    assert backend.asked == 8 and backend.most_at_once == 2
    await asyncio.gather(*(kernel.shutdown(now=True) for kernel in taken))


async def test_a_deferred_refill_starts_only_when_asked(tmp_path_factory):
    from kernel_mcp.backends.local import LocalBackend
    from kernel_mcp.config import load_settings
    from kernel_mcp.pool import KernelPool

    projects = tmp_path_factory.mktemp("deferred")
    backend = LocalBackend(load_settings(projects_dir=projects, pool_size=1))
    pool = KernelPool(backend, size=1, preload=[])
    await pool.start()
    try:
        await pool.wait_full()
        kernel = await pool.acquire(refill_now=False)
        # Nothing refills while the caller runs: the refiller stays idle.
        assert pool.ready_count == 0 and not pool._wanted.is_set()
        pool.refill(delay=0)
        await pool.wait_full()
        assert pool.ready_count == 1
        await kernel.shutdown(now=True)
    finally:
        await pool.close()
        await backend.close()


# -- one pool per workspace ------------------------------------------------------------
class StubKernel:
    """What a pool does with a kernel, without a process: it is alive until shut down."""

    def __init__(self, workspace: Path | None) -> None:
        self.workspace = workspace
        self.dead = False

    async def prepare(self, preload: list[str]) -> None:
        return None

    async def is_alive(self) -> bool:
        return not self.dead

    async def shutdown(self, *, now: bool = False) -> None:
        self.dead = True


class StubBackend:
    """Starts stub kernels at once; remembers them (the pools' logic alone is tested)."""

    name = "stub"
    local = True
    sandboxed = False
    cheap_starts = True

    def __init__(self) -> None:
        self.started: list[StubKernel] = []

    async def start(self, kernel_name: str | None = None, *, workspace: Path | None = None) -> Any:
        kernel = StubKernel(workspace)
        self.started.append(kernel)
        return kernel

    async def close(self) -> None:
        return None


async def test_each_workspace_gets_kernels_started_for_it(tmp_path: Path) -> None:
    backend = StubBackend()
    pools = KernelPools(
        backend, size=1, preload=[], workspace_of=lambda owner: tmp_path / str(owner), default=None
    )
    await pools.start()
    try:
        assert pools.pools == {}  # a folder per principal: nothing is warmed before use
        alice = await pools.acquire(owner="alice")
        bob = await pools.acquire(owner="bob")
        assert alice.workspace == tmp_path / "alice" and bob.workspace == tmp_path / "bob"
        assert set(pools.pools) == {tmp_path / "alice", tmp_path / "bob"}
        await pools.pool("alice").wait_full(timeout=10)
        assert all(k.workspace == tmp_path / "alice" for k in backend.started if k is not bob)
    finally:
        await pools.close()
    assert all(kernel.dead for kernel in backend.started if kernel not in (alice, bob))


async def test_a_workspace_pool_nobody_used_for_a_while_is_closed_but_the_default_is_kept(
    tmp_path: Path,
) -> None:
    now = [0.0]
    backend = StubBackend()
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


class Memory:
    """An injected memory reader: what the machine has available, and how often it was read."""

    def __init__(self, available: int) -> None:
        self.available = available
        self.reads = 0

    def __call__(self) -> int:
        self.reads += 1
        return self.available


async def test_without_memory_no_kernel_starts_and_the_pool_does_not_spin(backend) -> None:
    memory = Memory(available=10)
    pool = KernelPool(
        backend,  # type: ignore[arg-type]
        size=2,
        preload=[],
        admission=MemoryAdmission(1000, available=memory),
    )
    await pool.start()
    try:
        with pytest.raises(NotEnoughMemory):
            await pool.acquire()
        with pytest.raises(NotEnoughMemory):
            await pool.acquire(kernel_name="python3")
        # The refiller backs off: over two seconds it asks a handful of times, not
        # thousands (an upper bound, so a slow machine passes too).
        await asyncio.sleep(2.0)
        assert memory.reads < 12, memory.reads
        assert backend.asked == 0 and pool.ready_count == 0
        # Memory comes back: a kernel is handed out again.
        memory.available = 2000
        kernel = await pool.acquire()
        assert await kernel.is_alive()
    finally:
        await pool.close()


async def test_a_warm_kernel_is_not_handed_out_without_memory(make_pool, backend) -> None:
    memory = Memory(available=2000)
    pool = await make_pool(1)
    await pool.wait_full(timeout=30)
    pool.admission = MemoryAdmission(1000, available=memory)
    memory.available = 10
    with pytest.raises(NotEnoughMemory):
        await pool.acquire()
    assert pool.ready_count == 1  # kept for when memory is back
