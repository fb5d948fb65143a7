"""One live kernel: execute, interrupt, stop. The only module that reads kernel channels.

Where kernels come from is not decided here: a ``KernelProcess`` (the seam in
``kernels.process``, which every backend implements) starts, signals and stops the
process, and hands over a client with jupyter_client's async channel API. This
module drives one
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
from pathlib import Path
from typing import Any

from kernel_mcp.errors import KernelError, KernelStartFailed
from kernel_mcp.kernels.execution import (
    Execution,
    OutputCallback,
    ProgressCallback,
    Status,
    StdinHandler,
)
from kernel_mcp.kernels.outputs import OutputCollector, OutputLimits, error_from_reply
from kernel_mcp.kernels.process import KernelClient, KernelProcess
from kernel_mcp.kernels.setup import NO_STDIN_MESSAGE, SERVER_REQUEST, guard_config, setup_cell
from kernel_mcp.tasks import TaskOwner

__all__ = ["Kernel", "kernel_info_reply", "wait_ready"]

log = logging.getLogger(__name__)

#: What an input_reply says for "no answer": ipykernel raises EOFError on it.
NO_ANSWER = "\x04"

#: How often a waiting execution checks that its kernel still lives, seconds.
LIVENESS_INTERVAL = 0.25
#: How often, at most, progress is reported, seconds.
PROGRESS_INTERVAL = 1.0
#: The IOPub reader yields to the event loop at least this often, seconds. With
#: messages already queued, reading one completes without suspending, so a
#: flood would otherwise keep every timer (the deadline among them) from firing.
READER_SLICE = 0.005


# -- a started kernel's first answer ----------------------------------------------------
# Waiting for a started kernel to answer, without a fixed delay. jupyter_client's
# ``wait_for_ready`` ends by draining IOPub until it has been silent for 0.2 s, so every
# kernel start paid that silence for nothing (docs/benchmarks.md). A kernel is ready when its
# shell answers ``kernel_info`` and its IOPub stream reaches us: ipykernel >= 6.29
# greets each new subscriber with an ``iopub_welcome`` message, and any kernel publishes
# ``status`` messages for the ``kernel_info`` request. Either proves the subscription is
# live, so nothing the first execution publishes can be lost. Messages left queued are
# harmless: an execution reads only the messages whose parent is its own request.

#: How long a kernel_info request may go unanswered before it is sent again (a
#: request sent before the kernel bound its socket can be lost).
READY_RESEND = 1.0


async def wait_ready(
    client: KernelClient, alive: Callable[[], Awaitable[bool]], *, timeout: float
) -> dict[str, Any]:
    """Wait until ``client``'s kernel answers on shell and IOPub; returns its kernel_info.

    Raises:
        KernelStartFailed: the kernel died first, or did not answer within ``timeout`` s.
    """
    deadline = time.monotonic() + timeout
    info: dict[str, Any] | None = None
    heard_iopub = False
    msg_id = client.kernel_info()
    asked = time.monotonic()
    while info is None or not heard_iopub:
        now = time.monotonic()
        if now > deadline:
            raise KernelStartFailed(f"kernel did not answer within {timeout:g} s")
        if not await alive():
            raise KernelStartFailed("kernel died before it answered")
        if now - asked > READY_RESEND:
            msg_id, asked = client.kernel_info(), now
        shell = asyncio.ensure_future(client.get_shell_msg(timeout=0.05))
        iopub = asyncio.ensure_future(client.get_iopub_msg(timeout=0.05))
        try:
            for name, task in (("shell", shell), ("iopub", iopub)):
                try:
                    msg = await task
                except (queue.Empty, asyncio.TimeoutError, ValueError):
                    continue
                if name == "iopub":
                    heard_iopub = True
                elif msg.get("parent_header", {}).get("msg_id") == msg_id or (
                    msg.get("msg_type") == "kernel_info_reply" and info is None
                ):
                    info = dict(msg.get("content") or {})
        finally:
            # Cancelled while awaiting shell (a start the server gave up on): the
            # IOPub read would end in Empty that nobody retrieves, logged as
            # "Task exception was never retrieved".
            if not iopub.done():
                iopub.cancel()
            elif not iopub.cancelled():
                iopub.exception()
    return info


async def kernel_info_reply(
    client: KernelClient, channel: str, sent: set[str], timeout: float
) -> dict[str, Any] | None:
    """The content of a ``kernel_info_reply`` to one of ``sent`` on ``channel`` (``shell`` or
    ``control``) within ``timeout`` seconds; None when none came (ask again)."""
    read = client.get_control_msg if channel == "control" else client.get_shell_msg
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        try:
            msg = await read(timeout=left)
        except queue.Empty:
            return None
        if (
            msg["header"].get("msg_type") == "kernel_info_reply"
            and msg["parent_header"].get("msg_id") in sent
        ):
            return dict(msg["content"])
    return None


@dataclass
class _Verdict:
    """What an execution's wait came to: its status, and what happened to the kernel."""

    status: Status
    death: str | None = None
    replaced: bool = False
    notes: list[str] = field(default_factory=list)


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
        self.unverified = 0
        """Messages dropped because they failed their signature check (or did not parse)."""
        self._interrupt_requested = False
        self._tasks = TaskOwner("kernel")
        self._recovery: asyncio.Task[None] | None = None
        self._input_guard = False
        """kernel-mcp's input guard is installed (a Python kernel, once prepared)."""
        self._no_stdin = NO_STDIN_MESSAGE
        """What the guard says now when a run cannot ask (changed per run as needed)."""
        self.packages_dir: Path | None = None  # read-only to it, at this path (local only)
        self.server_requests: StdinHandler | None = None  # answers SERVER_REQUEST prompts

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
        on_output: OutputCallback | None = None,
        stdin: StdinHandler | None = None,
        no_stdin: str = NO_STDIN_MESSAGE,
    ) -> Execution:
        """Run ``code`` and collect everything it outputs until the kernel is idle.

        With ``stdin`` the kernel may ask for input (``input()``, ``getpass``): each
        request is answered by awaiting ``stdin``; the time that takes counts against
        ``timeout``, and an answer is recorded in the outputs as Jupyter records it (a
        ``stdin`` stream; a password never). Without it, ``input()`` raises
        StdinNotImplementedError at once, saying ``no_stdin``.
        ``on_output`` sees every stream message as it arrives (for incremental output).

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
        if stdin is None:
            await self._say_when_no_stdin(no_stdin)
        self._interrupt_requested = False
        collector = OutputCollector(self.limits)
        unverified_before = self.unverified
        started_at = datetime.now(timezone.utc)
        start = time.monotonic()
        msg_id = self.client.execute(
            code,
            silent=False,
            store_history=store_history,
            allow_stdin=stdin is not None,
            stop_on_error=False,
        )
        waiters = _Waiters()
        waiters.start(
            asyncio.ensure_future(self._shell_reply(msg_id)),
            asyncio.ensure_future(self._iopub_until_idle(msg_id, collector, waiters, on_output)),
            asyncio.ensure_future(self._answer_input(msg_id, stdin, collector)),
        )
        try:
            outcome = await self._wait(waiters, collector, start + timeout, progress, start)
            verdict = await self._judge(outcome, waiters, collector, grace, start)
        except asyncio.CancelledError:
            # The caller is gone; the kernel may still be busy. Clean up in the
            # background (interrupt, wait, kill) and make the next run wait for it.
            if not self._tasks.closed:
                self._recovery = self._tasks.spawn(self._recover(waiters, grace), name="recover")
            else:
                waiters.cancel_soon()
            raise
        except BaseException:
            await waiters.cancel()
            raise
        await waiters.cancel()
        ended = time.monotonic()
        notes = verdict.notes
        if self.unverified > unverified_before:
            notes.append(
                f"{self.unverified - unverified_before} message(s) from the kernel failed their "
                "signature check and were dropped (did the code change the kernel's session key?)."
            )
        return Execution(
            status=verdict.status,
            outputs=collector.outputs,
            execution_count=collector.execution_count,
            error=collector.error,
            started_at=started_at,
            ended_at=datetime.now(timezone.utc),
            duration_s=round(ended - start, 4),
            timeout_s=timeout,
            dropped_chars=collector.dropped_chars,
            dropped_outputs=collector.dropped_outputs,
            death=verdict.death,
            kernel_replaced=verdict.replaced,
            notes=notes,
        )

    async def _judge(
        self,
        outcome: str,
        waiters: _Waiters,
        collector: OutputCollector,
        grace: float,
        start: float,
    ) -> _Verdict:
        """What the wait's outcome means for the run (a timeout is acted on here: the
        kernel is interrupted, and killed if it ignores that for ``grace`` seconds)."""
        if outcome == _Outcome.COMPLETE:
            reply = waiters.reply_content()
            if collector.execution_count is None:
                collector.execution_count = reply.get("execution_count")
            if collector.error is None and reply.get("status") in ("error", "aborted"):
                # The reply is the kernel's verdict even when no error was published
                # (ipykernel fails to send a traceback holding a lone surrogate).
                collector.add_error(error_from_reply(reply))
            if collector.error is None:
                return _Verdict("ok")
            if self._interrupt_requested and collector.error.get("ename") == "KeyboardInterrupt":
                return _Verdict("interrupted")
            return _Verdict("error")
        if outcome == _Outcome.DIED:
            return _Verdict("kernel_died", death=await self._death(), replaced=True)
        await self.process.interrupt()
        after = await self._wait(waiters, collector, time.monotonic() + grace, None, start)
        if after == _Outcome.DIED:
            return _Verdict(
                "timeout", replaced=True, notes=["The kernel died after the interrupt."]
            )
        if after == _Outcome.TIMEOUT:
            await self.kill()
            killed = f"The kernel ignored the interrupt for {grace:g} s and was killed."
            return _Verdict("timeout", replaced=True, notes=[killed])
        return _Verdict("timeout")

    async def prepare(self, preload: list[str]) -> None:
        """Install the output guard and import ``preload``; called once, before first use."""
        if self.language_info.get("name", "python") != "python":
            return  # both are Python code
        done = self.process.prepared
        if done is not None:  # set up in the kernel itself (forked)
            self._input_guard = True
            await self._preload([name for name in preload if name not in done])
            return
        await self.run_silently(self.setup_cell())
        self._input_guard = True
        # The guard's own cell ended with IPython's tee restoring the old bound
        # method on the instances; with the tee now off, drop those leftovers.
        await self.run_silently(
            "import sys as _s\nfor _o in (_s.stdout, _s.stderr): _o.__dict__.pop('write', None)\n"
            "del _s, _o"
        )
        await self._preload(preload)

    async def _preload(self, preload: list[str]) -> None:
        if preload:
            try:
                await self.run_silently("\n".join(f"import {name}" for name in preload))
            except KernelError as exc:
                log.warning("preloading %s failed: %s", ", ".join(preload), exc)

    def setup_cell(self) -> str:
        """The cell that installs the guards in this kernel, with its caps as data."""
        output = guard_config(self.limits, local=self.process.backend == "local")
        return setup_cell(output, {"message": NO_STDIN_MESSAGE})

    async def run_silently(
        self, code: str, *, timeout: float = 60.0, expressions: dict[str, str] | None = None
    ) -> dict[str, Any]:
        """Run set-up code that records and shows nothing: its reply (KernelError if it failed)."""
        await self.settle()
        msg_id = self.client.execute(
            code, silent=True, store_history=False, user_expressions=expressions, allow_stdin=False
        )
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
            except ValueError:
                self.unverified += 1
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
        waiters.deadline = deadline
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
            try:
                msg = await self.client.get_shell_msg(timeout=None)
            except ValueError:
                # jupyter_client's verdict on a message whose signature does not match
                # (or that does not parse): it is no message of ours. Drop it, go on.
                self.unverified += 1
                continue
            if msg.get("parent_header", {}).get("msg_id") == msg_id:
                return msg

    async def _say_when_no_stdin(self, message: str) -> None:
        """Make the input guard's message ``message`` (one silent request, only when it
        changes: a background run after a foreground one, or back)."""
        if not self._input_guard or message == self._no_stdin:
            return
        try:
            await self.run_silently(f"get_ipython().kernel._kmcp_no_stdin = {message!r}")
        except KernelError as exc:
            log.info("the input guard's message was not changed: %s", exc)
            return
        self._no_stdin = message

    async def _answer_input(
        self, msg_id: str, stdin: StdinHandler | None, collector: OutputCollector
    ) -> None:
        """Answer the run's input requests (the stdin channel) until the run ends."""
        while stdin or self.server_requests:
            try:
                msg = await self.client.get_stdin_msg(timeout=None)
            except ValueError:
                self.unverified += 1
                continue
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            if msg["header"]["msg_type"] != "input_request":
                continue
            content = msg.get("content", {})
            prompt, password = str(content.get("prompt", "")), bool(content.get("password"))
            serving = bool(self.server_requests and prompt.startswith(SERVER_REQUEST))
            handler = self.server_requests if serving else stdin
            answer = await handler(prompt, password) if handler is not None else None
            self.client.input(NO_ANSWER if answer is None else answer)
            if answer is not None and not serving:
                collector.echo_input(prompt, answer, password=password)

    async def _iopub_until_idle(
        self,
        msg_id: str,
        collector: OutputCollector,
        waiters: _Waiters,
        on_output: OutputCallback | None = None,
    ) -> None:
        yield_at = time.monotonic() + READER_SLICE
        while True:
            try:
                msg = await self.client.get_iopub_msg(timeout=None)
            except ValueError:
                self.unverified += 1
                await asyncio.sleep(0)
                continue
            now = time.monotonic()
            if now >= yield_at or now >= waiters.deadline:
                # Past the deadline, yield on every message so the waiter acts at once.
                await asyncio.sleep(0)
                yield_at = time.monotonic() + READER_SLICE
            if msg.get("parent_header", {}).get("msg_id") != msg_id:
                continue
            kind = msg["header"]["msg_type"]
            if kind == "status" and msg["content"].get("execution_state") == "idle":
                return
            collector.feed(msg)
            if on_output is not None and kind == "stream":
                content = msg["content"]
                on_output(str(content.get("name", "stdout")), str(content.get("text", "")))

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
        await self._tasks.close()
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
        recovery = self._recovery
        if recovery is not None:
            # asyncio.wait raises only if this caller is cancelled, and leaves the
            # recovery running then. _recover logs what it catches itself.
            await asyncio.wait({recovery})
            if not recovery.cancelled() and recovery.exception() is not None:
                log.error("recovering a cancelled execution failed", exc_info=recovery.exception())
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
    """The readers of one execution: its shell reply and its IOPub stream (both must
    end for the run to be complete), and its stdin answerer (ended with them)."""

    def __init__(self) -> None:
        self.tasks: tuple[asyncio.Future[Any], ...] = ()
        self.helper: asyncio.Future[Any] | None = None
        #: What the current wait waits until (monotonic); the IOPub reader reads it.
        self.deadline = float("inf")

    def start(
        self,
        reply: asyncio.Future[Any],
        idle: asyncio.Future[Any],
        helper: asyncio.Future[Any] | None = None,
    ) -> None:
        self.tasks = (reply, idle)
        self.helper = helper

    def reply_content(self) -> dict[str, Any]:
        """The shell reply's content, once it has arrived ({} before)."""
        reply = self.tasks[0]
        if not reply.done() or reply.cancelled() or reply.exception() is not None:
            return {}
        return dict(reply.result().get("content") or {})

    def pending(self) -> set[asyncio.Future[Any]]:
        for task in (*self.tasks, self.helper):
            if task is not None and task.done() and not task.cancelled():
                task.result()  # a reader that failed raises here
        return {task for task in self.tasks if not task.done()}

    def cancel_soon(self) -> None:
        """Cancel the readers without waiting (their ends are the loop's to collect)."""
        for task in (*self.tasks, self.helper):
            if task is not None:
                task.cancel()

    async def cancel(self) -> None:
        owned = [task for task in (*self.tasks, self.helper) if task is not None]
        for task in owned:
            task.cancel()
        # Their failures were raised by pending() already; here they only end.
        await asyncio.gather(*owned, return_exceptions=True)
