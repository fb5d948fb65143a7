"""The warm pool: started, idle kernels waiting to serve a fresh run or a new session.

A kernel taken from the pool is never returned to it: fresh means fresh. The
pool refills in a background task that it owns and stops on ``close``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kernel_mcp.backend import KernelBackend
from kernel_mcp.errors import KernelError
from kernel_mcp.kernel import Kernel
from kernel_mcp.tasks import stop_task, wait_within

__all__ = ["KernelPool"]

log = logging.getLogger(__name__)


class KernelPool:
    """Keeps ``size`` started kernels ready.

    Args:
        backend: where kernels come from.
        size: how many idle kernels to keep; 0 starts one per request.
        preload: modules each pooled kernel imports before it is handed out.
    """

    def __init__(self, backend: KernelBackend, *, size: int, preload: list[str]) -> None:
        self.backend = backend
        self.size = size
        self.preload = preload
        self._ready: asyncio.Queue[Kernel] = asyncio.Queue()
        self._starting = 0
        self._wanted = asyncio.Event()
        self._filled = asyncio.Event()
        self._refill_timer: asyncio.TimerHandle | None = None
        self._refiller: asyncio.Task[None] | None = None
        self._closed = False
        self._live: set[Kernel] = set()

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
        """
        if self._closed:
            raise KernelError("the server is shutting down")
        if kernel_name is not None:
            # The pool keeps warm kernels of the default kernelspec only.
            return await self._new_kernel(track=False, kernel_name=kernel_name)
        if refill_now:
            self._wanted.set()
        while not self._ready.empty():
            kernel = self._ready.get_nowait()
            if refill_now:
                self._wanted.set()
            if await kernel.is_alive():
                self._live.discard(kernel)
                return kernel
            await self._discard(kernel)
        return await self._new_kernel(track=False)

    def refill(self, delay: float = 0.05) -> None:
        """Top the pool up after ``delay`` seconds (long enough for a reply to go out)."""
        if self._closed:
            return
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

    async def _new_kernel(self, *, track: bool, kernel_name: str | None = None) -> Kernel:
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
        failures = 0
        while True:
            await self._wanted.wait()
            self._wanted.clear()
            while self._ready.qsize() < self.size and not self._closed:
                try:
                    kernel = await self._new_kernel(track=True)
                except asyncio.CancelledError:
                    raise
                except Exception as exc:
                    failures += 1
                    log.error("could not start a pooled kernel: %s", exc)
                    await asyncio.sleep(min(30.0, 0.5 * 2**failures))
                    continue
                failures = 0
                await self._ready.put(kernel)
                self._filled.set()

    async def _discard(self, kernel: Kernel) -> None:
        self._live.discard(kernel)
        with contextlib.suppress(Exception):
            await kernel.shutdown(now=True)
