"""``kernel_mcp.pool.KernelPool`` with real kernels: what only real processes show.

The pool's logic (refilling, no kernel handed out twice, size 0, workspaces,
memory admission) is specified on the fake backend in ``tests/unit/test_pool.py``;
here: kernels are distinct processes in their own PID namespace, preloads and
the output guard take effect inside the kernel, a killed kernel is not handed
out, and closing the pool leaves no process behind.
"""

from __future__ import annotations

import ast
import asyncio
import os
import signal
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.config import load_settings
from kernel_mcp.errors import KernelError
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.pool import KernelPool
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


async def test_preload_imports_modules_before_the_kernel_is_handed_out(make_pool) -> None:
    pool = await make_pool(1, preload=[PRELOADED])
    await pool.wait_full(timeout=30)
    pooled = await pool.acquire()
    assert await answer(pooled, f"import sys; {PRELOADED!r} in sys.modules") == "True"


async def test_preload_also_applies_to_kernels_started_on_demand(make_pool) -> None:
    pool = await make_pool(0, preload=[PRELOADED])
    kernel = await pool.acquire()
    assert await answer(kernel, f"import sys; {PRELOADED!r} in sys.modules") == "True"


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
