"""One live kernel: execute, interrupt, stop. The only module that reads kernel channels.

Where kernels come from is not decided here: a :class:`KernelProcess` (see
``kernel_mcp.backend``) starts, signals and stops the process, and hands over a
client with jupyter_client's async channel API. This module drives one
execution the way nbclient does: it keeps only messages whose parent is its
request, waits three ways at once (the shell reply, IOPub until idle, and a
liveness check), and treats a run as complete only after both the reply and
the idle status have arrived.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import queue
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal, Protocol

from nbformat import NotebookNode

from kernel_mcp.errors import KernelError
from kernel_mcp.outputs import OutputCollector, OutputLimits

__all__ = [
    "Execution",
    "Kernel",
    "KernelClient",
    "KernelProcess",
    "ProgressCallback",
    "Status",
]

log = logging.getLogger(__name__)

Status = Literal["ok", "error", "timeout", "kernel_died", "interrupted"]
ProgressCallback = Callable[[float, str], Awaitable[None]]

#: How often a waiting execution checks that its kernel still lives, seconds.
LIVENESS_INTERVAL = 0.25
#: How often, at most, progress is reported, seconds.
PROGRESS_INTERVAL = 1.0


class KernelClient(Protocol):
    """The part of jupyter_client's ``AsyncKernelClient`` this module uses."""

    def execute(
        self,
        code: str,
        silent: bool = ...,
        store_history: bool = ...,
        user_expressions: dict[str, Any] | None = ...,
        allow_stdin: bool | None = ...,
        stop_on_error: bool = ...,
    ) -> str: ...
    async def get_iopub_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    async def get_shell_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    def stop_channels(self) -> None: ...


class KernelProcess(Protocol):
    """Where a kernel lives: the seam between execution and kernel backends."""

    backend: str
    kernel_id: str

    async def is_alive(self) -> bool: ...
    async def interrupt(self) -> None: ...
    async def kill(self) -> None:
        """Stop at once, with every process the kernel started."""

    async def shutdown(self) -> None:
        """Ask politely, then end the whole process group."""

    def exit_description(self) -> str:
        """How the kernel ended, e.g. 'exit code 3' or 'signal SIGKILL'."""

    def rss_bytes(self) -> int | None: ...


@dataclass(slots=True)
class Execution:
    """What one execution produced, in Jupyter's own output format."""

    status: Status
    outputs: list[NotebookNode]
    execution_count: int | None
    error: NotebookNode | None
    started_at: datetime
    ended_at: datetime
    duration_s: float
    timeout_s: float
    dropped_chars: int = 0
    dropped_outputs: int = 0
    death: str | None = None
    """For kernel_died: how the kernel ended."""
    kernel_replaced: bool = False
    """The kernel was killed (timeout ignored SIGINT, or it died); its state is gone."""
    notes: list[str] = field(default_factory=list)

    @property
    def truncated(self) -> bool:
        return bool(self.dropped_chars or self.dropped_outputs)


# Installed in every Python kernel before first use. ipykernel batches writes
# into stream messages of any size; a flood would reach the server as huge
# JSON messages whose parsing stalls its event loop. Dropping what is over the
# cap in the kernel means the server never receives more than it would keep.
# The class method is patched because IPython swaps instance attributes per
# cell, and IPython's history tee is switched off: it keeps every byte a cell
# prints in kernel memory.
_OUTPUT_GUARD = """
def _kmcp_guard(limit):
    import contextlib, sys
    from IPython import get_ipython
    shell = get_ipython()
    if hasattr(shell, "_tee"):
        shell._tee = lambda channel: contextlib.nullcontext()
    stream_class = type(sys.stdout)
    original = stream_class.write
    left = {}
    def reset(*args, **kwargs):
        left.clear()
    def write(self, text):
        name = getattr(self, "name", "stream")
        room = left.get(name, limit)
        if not isinstance(text, str):
            return original(self, text)
        if room <= 0:
            return len(text)
        if len(text) > room:
            left[name] = 0
            original(self, text[:room])
            original(self, f"\\nMARKER {name} over {limit} characters in one run; "
                           "the rest was dropped]\\n")
            return len(text)
        left[name] = room - len(text)
        return original(self, text)
    stream_class.write = write
    shell.events.register("pre_execute", reset)
_kmcp_guard(LIMIT)
del _kmcp_guard
"""
#: Starts the notice the output guard writes when it drops a flood.
OUTPUT_GUARD_MARKER = "[kernel-mcp:"


class _Outcome:
    COMPLETE = "complete"
    TIMEOUT = "timeout"
    DIED = "died"


class Kernel:
    """A started kernel with a connected client.

    Not safe for concurrent executions: callers serialise (sessions hold a lock;
    fresh runs own their kernel outright).
    """

    def __init__(
        self,
        process: KernelProcess,
        client: KernelClient,
        *,
        limits: OutputLimits,
        kernel_info: dict[str, Any] | None = None,
    ) -> None:
        self.process = process
        self.client = client
        self.limits = limits
        self.kernel_info: dict[str, Any] = kernel_info or {}
        self.dead = False
        self._interrupt_requested = False
        self._recovery: asyncio.Task[None] | None = None

    @property
    def language_info(self) -> dict[str, Any]:
        return dict(self.kernel_info.get("language_info") or {})

    # -- execution -----------------------------------------------------------
    async def execute(
        self,
        code: str,
        *,
        timeout: float,
        grace: float,
        progress: ProgressCallback | None = None,
        store_history: bool = True,
    ) -> Execution:
        """Run ``code`` and collect everything it outputs until the kernel is idle.

        On timeout the kernel is interrupted; if it is not idle within ``grace``
        seconds it is killed (``kernel_replaced``). If the caller is cancelled,
        the kernel is interrupted in the background and the next execution waits
        for that to settle.

        Raises:
            KernelError: the kernel was already dead.
        """
        await self.settle()
        if self.dead:
            raise KernelError("kernel is dead")
        self._interrupt_requested = False
        collector = OutputCollector(self.limits)
        started_at = datetime.now(timezone.utc)
        start = time.monotonic()
        msg_id = self.client.execute(
            code,
            silent=False,
            store_history=store_history,
            allow_stdin=False,
            stop_on_error=False,
        )
        waiters = _Waiters(
            asyncio.ensure_future(self._shell_reply(msg_id)),
            asyncio.ensure_future(self._iopub_until_idle(msg_id, collector)),
        )
        try:
            outcome = await self._wait(waiters, collector, start + timeout, progress, start)
            status: Status
            death = None
            replaced = False
            notes: list[str] = []
            if outcome == _Outcome.COMPLETE:
                if collector.error is None:
                    status = "ok"
                elif (
                    self._interrupt_requested
                    and collector.error.get("ename") == "KeyboardInterrupt"
                ):
                    status = "interrupted"
                else:
                    status = "error"
            elif outcome == _Outcome.DIED:
                status, death, replaced = "kernel_died", await self._death(), True
            else:
                status = "timeout"
                await self.process.interrupt()
                after = await self._wait(waiters, collector, time.monotonic() + grace, None, start)
                if after == _Outcome.DIED:
                    replaced = True
                    notes.append("The kernel died after the interrupt.")
                elif after == _Outcome.TIMEOUT:
                    replaced = True
                    notes.append(
                        f"The kernel ignored the interrupt for {grace:g} s and was killed."
                    )
                    await self.kill()
        except asyncio.CancelledError:
            # The caller is gone; the kernel may still be busy. Clean up in the
            # background (interrupt, wait, kill) and make the next run wait for it.
            self._recovery = asyncio.ensure_future(self._recover(waiters, grace))
            raise
        except BaseException:
            await waiters.cancel()
            raise
        await waiters.cancel()
        ended = time.monotonic()
        return Execution(
            status=status,
            outputs=collector.outputs,
            execution_count=collector.execution_count,
            error=collector.error,
            started_at=started_at,
            ended_at=datetime.now(timezone.utc),
            duration_s=round(ended - start, 4),
            timeout_s=timeout,
            dropped_chars=collector.dropped_chars,
            dropped_outputs=collector.dropped_outputs,
            death=death,
            kernel_replaced=replaced,
            notes=notes,
        )

    async def prepare(self, preload: list[str]) -> None:
        """Install the output guard and import ``preload``; called once, before first use."""
        if self.language_info.get("name", "python") != "python":
            return  # both are Python code
        # Leave room under the collector's cap for the guard's own notice.
        limit = max(0, self.limits.max_output_bytes - 256)
        guard = _OUTPUT_GUARD.replace("LIMIT", str(limit)).replace("MARKER", OUTPUT_GUARD_MARKER)
        await self.run_silently(guard)
        # The guard's own cell ended with IPython's tee restoring the old bound
        # method on the instances; with the tee now off, drop those leftovers.
        await self.run_silently(
            "import sys as _s\nfor _o in (_s.stdout, _s.stderr): _o.__dict__.pop('write', None)\n"
            "del _s, _o"
        )
        if preload:
            try:
                await self.run_silently("\n".join(f"import {name}" for name in preload))
            except KernelError as exc:
                log.warning("preloading %s failed: %s", ", ".join(preload), exc)

    async def run_silently(self, code: str, *, timeout: float = 60.0) -> dict[str, Any]:
        """Run set-up code that records nothing and shows nothing.

        Returns the execute_reply content. Raises KernelError if it failed.
        """
        await self.settle()
        msg_id = self.client.execute(code, silent=True, store_history=False, allow_stdin=False)
        deadline = time.monotonic() + timeout
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise KernelError("kernel did not answer a set-up request in time")
            try:
                msg = await self.client.get_shell_msg(timeout=min(remaining, LIVENESS_INTERVAL))
            except queue.Empty:
                if not await self.process.is_alive():
                    self.dead = True
                    raise KernelError(f"kernel died ({await self._death()})") from None
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            content = msg.get("content", {})
            if content.get("status") != "ok":
                raise KernelError(
                    f"set-up code failed: {content.get('ename')}: {content.get('evalue')}"
                )
            return content

    async def _wait(
        self,
        waiters: _Waiters,
        collector: OutputCollector,
        deadline: float,
        progress: ProgressCallback | None,
        start: float,
    ) -> str:
        last_report = start
        last_line = ""
        while True:
            pending = waiters.pending()
            if not pending:
                return _Outcome.COMPLETE
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return _Outcome.TIMEOUT
            done, _ = await asyncio.wait(
                pending,
                timeout=min(remaining, LIVENESS_INTERVAL),
                return_when=asyncio.FIRST_COMPLETED,
            )
            if done:
                continue
            if not await self.process.is_alive():
                # Messages sent just before death may still be queued: take them first.
                await asyncio.wait(pending, timeout=0.05)
                return _Outcome.COMPLETE if not waiters.pending() else _Outcome.DIED
            now = time.monotonic()
            if progress and now - last_report >= PROGRESS_INTERVAL:
                line = collector.latest_line
                if line != last_line or now - last_report >= 5 * PROGRESS_INTERVAL:
                    last_report, last_line = now, line
                    await progress(now - start, line)

    async def _shell_reply(self, msg_id: str) -> dict[str, Any]:
        while True:
            msg = await self.client.get_shell_msg(timeout=None)
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    async def _iopub_until_idle(self, msg_id: str, collector: OutputCollector) -> None:
        while True:
            msg = await self.client.get_iopub_msg(timeout=None)
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if (
                msg["header"]["msg_type"] == "status"
                and msg["content"].get("execution_state") == "idle"
            ):
                return
            collector.feed(msg)

    async def _death(self) -> str:
        self.dead = True
        with contextlib.suppress(Exception):
            await self.process.kill()
        return self.process.exit_description()

    # -- control ---------------------------------------------------------------
    async def interrupt(self) -> None:
        """Send SIGINT (or the backend's equivalent); a running cell ends 'interrupted'."""
        self._interrupt_requested = True
        await self.process.interrupt()

    async def kill(self) -> None:
        """End the kernel now, with its process group. It is dead afterwards."""
        self.dead = True
        with contextlib.suppress(Exception):
            await self.process.kill()

    async def shutdown(self, *, now: bool = False) -> None:
        """Stop the kernel (politely unless ``now``), end its process group, close channels."""
        if self._recovery is not None and not self._recovery.done():
            self._recovery.cancel()
            with contextlib.suppress(BaseException):
                await self._recovery
        self.dead = True
        try:
            await (self.process.kill() if now else self.process.shutdown())
        finally:
            with contextlib.suppress(Exception):
                self.client.stop_channels()

    async def is_alive(self) -> bool:
        return not self.dead and await self.process.is_alive()

    @property
    def recovering(self) -> bool:
        """A cancelled execution is still being cleaned up (interrupt, wait, maybe kill)."""
        return self._recovery is not None and not self._recovery.done()

    async def settle(self) -> None:
        """Wait for the clean-up of a cancelled execution before starting another."""
        if self._recovery is not None:
            with contextlib.suppress(Exception):
                await asyncio.shield(self._recovery)
            self._recovery = None

    async def _recover(self, waiters: _Waiters, grace: float) -> None:
        """After a cancel: interrupt, wait for idle, kill if the kernel will not stop."""
        try:
            self._interrupt_requested = True
            await self.process.interrupt()
            scratch = OutputCollector(OutputLimits(1024, 1))
            now = time.monotonic()
            if await self._wait(waiters, scratch, now + grace, None, now) != _Outcome.COMPLETE:
                await self.kill()
        except Exception:
            log.exception("recovering a cancelled execution failed; killing the kernel")
            await self.kill()
        finally:
            await waiters.cancel()


class _Waiters:
    """The two readers of one execution: its shell reply and its IOPub stream."""

    def __init__(self, reply: asyncio.Future[Any], idle: asyncio.Future[Any]) -> None:
        self.tasks = (reply, idle)

    def pending(self) -> set[asyncio.Future[Any]]:
        for task in self.tasks:
            if task.done():
                task.result()  # a reader that failed raises here
        return {task for task in self.tasks if not task.done()}

    async def cancel(self) -> None:
        for task in self.tasks:
            task.cancel()
        await asyncio.gather(*self.tasks, return_exceptions=True)
