"""The warm pool: started, idle kernels waiting to serve a fresh run or a new session.

A kernel taken from the pool is never returned to it: fresh means fresh. The
pool refills in a background task that it owns and stops on ``close``.

How it refills depends on what a start costs (``KernelBackend.cheap_starts``; the
figures are in docs/benchmarks.md). A spawned kernel is costly in CPU: one start
at a time, begun 50 ms after a run so that the run's reply goes out first. A
forked kernel is cheap, and mostly its own process's work: two starts at once,
begun as soon as a run took a kernel, and a caller that finds the pool empty
waits for a start already under way rather than beginning another, so
back-to-back fresh runs keep finding a kernel.

Every kernel handed out, and every start, first passes memory admission
(``kernel_mcp.admission``): while the machine's available memory would not
cover a kernel, ``acquire`` raises NotEnoughMemory at once and the refiller
backs off (1 s, doubling up to 30 s) instead of retrying in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kernel_mcp.admission import MemoryAdmission
from kernel_mcp.backends.base import KernelBackend
from kernel_mcp.errors import KernelError, NotEnoughMemory
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.tasks import TaskOwner, stop_task, stop_tasks, wait_within

__all__ = ["KernelPool", "KernelPools"]

log = logging.getLogger(__name__)

#: Pooled kernels started at once when starts are cheap (one per core here).
CHEAP_LANES = 2
#: Seconds a caller waits for a cheap start under way before starting its own.
IN_FLIGHT_WAIT = 2.0
#: Seconds between a run and its replacement's start when starts are costly.
COSTLY_REFILL_DELAY = 0.05
#: A workspace's pool that served nobody for this long is closed, seconds.
POOL_IDLE = 600.0


class KernelPool:
    """Keeps ``size`` started kernels ready.

    Args:
        backend: where kernels come from.
        size: how many idle kernels to keep; 0 starts one per request.
        preload: modules each pooled kernel imports before it is handed out.
        workspace: the projects folder its kernels are started for (None: the
            backend's default); see ``kernel_mcp.files.workspaces``.
        admission: checked before a kernel is handed out or started (None: never).
        backoff: how the refiller waits after a failed start, seconds (injectable:
            tests step it instead of sleeping).
    """

    def __init__(
        self,
        backend: KernelBackend,
        *,
        size: int,
        preload: list[str],
        workspace: Path | None = None,
        admission: MemoryAdmission | None = None,
        backoff: Callable[[float], Awaitable[None]] = asyncio.sleep,
    ) -> None:
        self.backend = backend
        self.size = size
        self.preload = preload
        self.workspace = workspace
        self.admission = admission
        self.backoff = backoff
        self._ready: asyncio.Queue[Kernel] = asyncio.Queue()
        self._starting = 0
        self._wanted = asyncio.Event()
        self._filled = asyncio.Event()
        self._refill_timer: asyncio.TimerHandle | None = None
        self._tasks = TaskOwner("kernel pool")
        self._refiller: asyncio.Task[None] | None = None
        self._closed = False
        self._live: set[Kernel] = set()
        self._in_flight = 0
        self._start_ended = asyncio.Event()
        """Set whenever a pooled kernel's start ends, ready or failed."""

    async def start(self) -> None:
        """Begin filling the pool in the background."""
        if self._refiller is None and not self._closed:
            self._refiller = self._tasks.spawn(self._refill_forever(), name="refill")
            self._wanted.set()

    @property
    def ready_count(self) -> int:
        return self._ready.qsize()

    async def acquire(
        self,
        *,
        refill_now: bool = True,
        kernel_name: str | None = None,
        owner: str | None = None,
    ) -> Kernel:
        """A started kernel that nobody has used: from the pool, or started now.

        Args:
            owner: ignored: every kernel of this pool shows its one workspace
                (:class:`KernelPools` picks the pool by owner).
            refill_now: start the replacement at once. A caller about to run code
                passes False and calls ``refill()`` when done: a kernel start is
                about 0.5 s of CPU, and on a small machine it would slow that run.
            kernel_name: a kernelspec other than the default, started now (the
                pool keeps warm kernels of the default only).

        Raises:
            NotEnoughMemory: the machine's available memory would not cover a kernel.
            KernelError: the server is shutting down, or a kernel could not start.
        """
        if self._closed:
            raise KernelError("the server is shutting down")
        # A warm kernel handed out is a new kernel to its caller: it may grow to its
        # limit from now on, so it is admitted like one that starts now.
        self._admit()
        if kernel_name is not None:
            # The pool keeps warm kernels of the default kernelspec only.
            return await self._new_kernel(track=False, kernel_name=kernel_name)
        if refill_now:
            self._wanted.set()
        while True:
            while not self._ready.empty():
                kernel = self._ready.get_nowait()
                if refill_now:
                    self._wanted.set()
                if await kernel.is_alive():
                    self._live.discard(kernel)
                    return kernel
                await self._discard(kernel)
            if not self._start_coming():
                return await self._new_kernel(track=False)
            # A pooled kernel is on its way; it is ready before one started now.
            self._start_ended.clear()
            try:
                await wait_within(self._start_ended.wait(), IN_FLIGHT_WAIT)
            except asyncio.TimeoutError:
                return await self._new_kernel(track=False)

    def _start_coming(self) -> bool:
        """A cheap pooled start is under way, or the refiller was just asked for one."""
        return (
            self.backend.cheap_starts
            and self.size > 0
            and not self._closed
            and (self._in_flight > 0 or self._wanted.is_set())
        )

    def refill(self, delay: float | None = None) -> None:
        """Top the pool up after ``delay`` seconds (default: see the module docstring)."""
        if self._closed:
            return
        if delay is None:
            delay = 0.0 if self.backend.cheap_starts else COSTLY_REFILL_DELAY
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        self._refill_timer = asyncio.get_running_loop().call_later(delay, self._wanted.set)

    async def wait_full(self, timeout: float = 60.0) -> None:
        """Wait until the pool holds ``size`` ready kernels (benchmarks and tests)."""

        async def filled() -> None:
            while self._ready.qsize() < self.size:
                self._filled.clear()
                await self._filled.wait()

        await wait_within(filled(), timeout)

    async def close(self) -> None:
        """Stop refilling and shut down every kernel still in the pool."""
        self._closed = True
        if self._refill_timer is not None:
            self._refill_timer.cancel()
        await self._tasks.close()
        self._refiller = None
        kernels = list(self._live)
        while not self._ready.empty():
            kernels.append(self._ready.get_nowait())
        self._live.clear()
        await asyncio.gather(*(self._discard(k) for k in set(kernels)), return_exceptions=True)

    def _admit(self) -> None:
        if self.admission is not None:
            self.admission.check()

    async def _new_kernel(self, *, track: bool, kernel_name: str | None = None) -> Kernel:
        self._admit()
        kernel = await self.backend.start(kernel_name, workspace=self.workspace)
        if track:
            self._live.add(kernel)
        try:
            await kernel.prepare(self.preload)
        except BaseException:
            self._live.discard(kernel)
            await kernel.shutdown(now=True)
            raise
        return kernel

    async def _refill_forever(self) -> None:
        lanes = CHEAP_LANES if self.backend.cheap_starts else 1
        failures = 0
        starting: set[asyncio.Task[Kernel]] = set()
        wanted: asyncio.Task[Any] | None = None
        try:
            while True:
                while (
                    not self._closed
                    and len(starting) < lanes
                    and self._ready.qsize() + len(starting) < self.size
                ):
                    starting.add(asyncio.ensure_future(self._new_kernel(track=True)))
                self._in_flight = len(starting)
                if wanted is None:
                    wanted = asyncio.ensure_future(self._wanted.wait())
                done, _ = await asyncio.wait(
                    {*starting, wanted}, return_when=asyncio.FIRST_COMPLETED
                )
                if wanted in done:
                    self._wanted.clear()
                    wanted = None
                ended = done & starting
                if not ended:
                    continue
                starting -= ended
                self._in_flight = len(starting)
                for task in ended:
                    exc = task.exception()
                    if exc is None:
                        failures = 0
                        await self._ready.put(task.result())
                        self._filled.set()
                    else:
                        failures += 1
                        if not isinstance(exc, NotEnoughMemory):
                            log.error("could not start a pooled kernel: %s", exc)
                        elif failures == 1:
                            log.warning("the warm pool waits for memory: %s", exc)
                self._start_ended.set()
                if failures:
                    await self.backoff(min(30.0, 0.5 * 2**failures))
        finally:
            self._in_flight = 0
            self._start_ended.set()
            await stop_tasks([*starting, wanted])

    async def _discard(self, kernel: Kernel) -> None:
        self._live.discard(kernel)
        with contextlib.suppress(Exception):
            await kernel.shutdown(now=True)


class KernelPools:
    """One warm pool per workspace: a kernel is started for the projects folder it shows.

    With one workspace (one principal, or a shared folder) this is one pool, made at
    start, exactly as before. With a folder per principal, a principal's pool is made
    when it first needs a kernel and closed once nobody used it for ``idle_after``
    seconds, so idle principals hold no kernels. A task owned here closes them.

    Args:
        backend, size, preload: as for :class:`KernelPool`.
        workspace_of: the workspace of a principal (``Workspaces.folder``).
        default: the workspace whose pool is made at start and never closed for
            idleness (None: none; every pool is made on first use).
        idle_after: seconds an unused non-default pool lives.
        clock: monotonic seconds (injectable for tests).
        admission: as for :class:`KernelPool`, shared by every pool.
    """

    def __init__(
        self,
        backend: KernelBackend,
        *,
        size: int,
        preload: list[str],
        workspace_of: Callable[[str | None], Path | None],
        default: Path | None,
        idle_after: float = POOL_IDLE,
        clock: Callable[[], float] = time.monotonic,
        admission: MemoryAdmission | None = None,
    ) -> None:
        self.backend = backend
        self.size = size
        self.preload = preload
        self.admission = admission
        self.workspace_of = workspace_of
        self.default = default
        self.idle_after = idle_after
        self.clock = clock
        self._pools: dict[Path | None, KernelPool] = {}
        self._used: dict[Path | None, float] = {}
        self._tasks = TaskOwner("kernel pools")
        """Pools starting and closing, and the culler."""
        self._culler: asyncio.Task[None] | None = None
        self._started = False
        self._closed = False

    def pool(self, owner: str | None) -> KernelPool:
        """The pool of ``owner``'s workspace, made (and filling) if it is new."""
        if self._closed:
            raise KernelError("the server is shutting down")
        workspace = self.workspace_of(owner)
        pool = self._pools.get(workspace)
        if pool is None:
            pool = self._pools[workspace] = KernelPool(
                self.backend,
                size=self.size,
                preload=self.preload,
                workspace=workspace,
                admission=self.admission,
            )
            if self._started:
                self._begin(pool)
        self._used[workspace] = self.clock()
        return pool

    @property
    def pools(self) -> dict[Path | None, KernelPool]:
        return dict(self._pools)

    async def start(self) -> None:
        self._started = True
        if self.default is not None and self.default not in self._pools:
            self._pools[self.default] = KernelPool(
                self.backend,
                size=self.size,
                preload=self.preload,
                workspace=self.default,
                admission=self.admission,
            )
            self._used[self.default] = self.clock()
        for pool in self._pools.values():
            self._begin(pool)
        if self._culler is None:
            self._culler = self._tasks.spawn(self._cull_forever(), name="cull")

    def _begin(self, pool: KernelPool) -> None:
        self._tasks.spawn(pool.start(), name="start a pool")

    async def acquire(
        self, *, owner: str | None = None, refill_now: bool = True, kernel_name: str | None = None
    ) -> Kernel:
        """``KernelPool.acquire`` on the pool of ``owner``'s workspace."""
        return await self.pool(owner).acquire(refill_now=refill_now, kernel_name=kernel_name)

    def refill(self, owner: str | None = None) -> None:
        pool = self._pools.get(self.workspace_of(owner))
        if pool is not None:
            pool.refill()

    async def close(self) -> None:
        self._closed = True
        await stop_task(self._culler)
        self._culler = None
        pools, self._pools = list(self._pools.values()), {}
        await asyncio.gather(*(pool.close() for pool in pools), return_exceptions=True)
        await self._tasks.close(grace=None)

    def cull_idle(self) -> int:
        """Close the pools (but the default one) nobody used for ``idle_after`` seconds;
        returns how many. Their kernels end in a task owned here."""
        now = self.clock()
        idle = [
            workspace
            for workspace, used in self._used.items()
            if workspace != self.default and now - used >= self.idle_after
        ]
        for workspace in idle:
            self._used.pop(workspace, None)
            pool = self._pools.pop(workspace, None)
            if pool is not None:
                self._tasks.spawn(pool.close(), name="close an idle pool")
        return len(idle)

    async def _cull_forever(self) -> None:
        period = max(1.0, min(self.idle_after / 4, 60.0))
        while True:
            await asyncio.sleep(period)
            self.cull_idle()
