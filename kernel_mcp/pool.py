"""The warm pool: started, idle kernels waiting to serve a fresh run or a new session.

A kernel taken from the pool is never returned to it: fresh means fresh. The
pool refills in a background task that it owns and stops on ``close``.

How it refills depends on what a start costs (``KernelBackend.cheap_starts``). A
spawned kernel is half a second of CPU: one start at a time, begun 50 ms after a
run so that the run's reply goes out first. A forked kernel is ready in tens of
milliseconds, mostly in its own process: two starts at once, begun as soon as a
run took a kernel, and a caller that finds the pool empty waits for a start
already under way rather than beginning another, so back-to-back fresh runs
keep finding a kernel.

Every kernel handed out, and every start, first passes memory admission
(``kernel_mcp.admission``): while the machine's available memory would not
cover a kernel, ``acquire`` raises NotEnoughMemory at once and the refiller
backs off (1 s, doubling up to 30 s) instead of retrying in a loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

from kernel_mcp.admission import MemoryAdmission
from kernel_mcp.backend import KernelBackend
from kernel_mcp.errors import KernelError, NotEnoughMemory
from kernel_mcp.kernel import Kernel
from kernel_mcp.tasks import stop_task, stop_tasks, wait_within

__all__ = ["KernelPool"]

log = logging.getLogger(__name__)

#: Pooled kernels started at once when starts are cheap (one per core here).
CHEAP_LANES = 2
#: Seconds a caller waits for a cheap start under way before starting its own.
IN_FLIGHT_WAIT = 2.0
#: Seconds between a run and its replacement's start when starts are costly.
COSTLY_REFILL_DELAY = 0.05


class KernelPool:
    """Keeps ``size`` started kernels ready.

    Args:
        backend: where kernels come from.
        size: how many idle kernels to keep; 0 starts one per request.
        preload: modules each pooled kernel imports before it is handed out.
        admission: checked before a kernel is handed out or started (None: never).
    """

    def __init__(
        self,
        backend: KernelBackend,
        *,
        size: int,
        preload: list[str],
        admission: MemoryAdmission | None = None,
    ) -> None:
        self.backend = backend
        self.size = size
        self.preload = preload
        self.admission = admission
        self._ready: asyncio.Queue[Kernel] = asyncio.Queue()
        self._starting = 0
        self._wanted = asyncio.Event()
        self._filled = asyncio.Event()
        self._refill_timer: asyncio.TimerHandle | None = None
        self._refiller: asyncio.Task[None] | None = None
        self._closed = False
        self._live: set[Kernel] = set()
        self._in_flight = 0
        self._start_ended = asyncio.Event()
        """Set whenever a pooled kernel's start ends, ready or failed."""

    async def start(self) -> None:
        """Begin filling the pool in the background."""
        if self._refiller is None:
            self._refiller = asyncio.create_task(self._refill_forever(), name="kernel-pool-refill")
            self._wanted.set()

    @property
    def ready_count(self) -> int:
        return self._ready.qsize()

    async def acquire(self, *, refill_now: bool = True, kernel_name: str | None = None) -> Kernel:
        """A started kernel that nobody has used: from the pool, or started now.

        Args:
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
        await stop_task(self._refiller)
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
        kernel = await self.backend.start(kernel_name)
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
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
        finally:
            self._in_flight = 0
            self._start_ended.set()
            await stop_tasks([*starting, wanted])

    async def _discard(self, kernel: Kernel) -> None:
        self._live.discard(kernel)
        with contextlib.suppress(Exception):
            await kernel.shutdown(now=True)
