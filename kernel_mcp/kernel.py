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
from kernel_mcp.outputs import (
    GUARD_METADATA_KEY,
    OutputCollector,
    OutputLimits,
    error_from_reply,
)
from kernel_mcp.tasks import stop_task

__all__ = [
    "NO_STDIN_BACKGROUND",
    "NO_STDIN_MESSAGE",
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
OutputCallback = Callable[[str, str], None]
"""Called with (stream name, text) for every stream message a run sends."""
StdinHandler = Callable[[str, bool], Awaitable[str | None]]
"""Answers the kernel's ``input()``: (prompt, password) -> the text, or None for no answer
(the kernel's ``input()`` then raises EOFError)."""

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
    async def get_stdin_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    def input(self, string: str) -> None: ...
    def stop_channels(self) -> None: ...


class KernelProcess(Protocol):
    """Where a kernel lives: the seam between execution and kernel backends."""

    backend: str
    kernel_id: str
    sandboxed: bool
    """Runs in kernel-mcp's own sandbox (a gateway's kernels: its isolation, not ours)."""
    prepared: tuple[str, ...] | None
    """None, or: the kernel ran :data:`KERNEL_SETUP` itself before its first message (a
    forked kernel), which installed the guards and imported these preload modules;
    :meth:`Kernel.prepare` imports only the others."""

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


# Installed in every Python kernel before first use, called with one dict of
# settings (see Kernel.prepare); the source itself is constant. ipykernel batches
# writes into stream messages of any size, and a loop of display() calls sends
# one message each: a flood would reach the server as more JSON than it could
# parse in time. Dropping what is over the caps in the kernel means the server
# never receives much more than it would keep.
# * Streams: at most stream_limit characters per stream and run, then a notice.
#   The class method is patched because IPython swaps instance attributes per
#   cell, and IPython's history tee is switched off: it keeps every byte a cell
#   prints in kernel memory.
# * Rich outputs (display_data, execute_result, update_display_data): at most
#   max_rich per run, each at most max_bytes. Over the count, displays are
#   dropped with one notice (updated with the final count when the cell ends);
#   an update over the count is held back and only the latest one per display
#   is sent when the cell ends, so a display shows its final state. An output
#   over the size is replaced by a notice. Notices carry the run's totals in
#   their metadata (outputs.GUARD_METADATA_KEY). The publisher classes are
#   patched, not their per-thread hooks, so displays from threads are capped too.
# * mute_fd_echo: ipykernel echoes fd-level writes (subprocesses, C code) to the
#   kernel's original stderr as well as to the notebook; past start-up that copy
#   is only a duplicate, and it would grow the kernel's private stderr file.
_OUTPUT_GUARD = r"""
def _kmcp_guard(config):
    import contextlib, json, os, sys, uuid
    from IPython import get_ipython

    shell = get_ipython()
    marker = config["marker"]
    stream_limit = config["stream_limit"]
    import warnings

    # IPython's hint on sys.exit() names its own file: noise with a server path.
    warnings.filterwarnings("ignore", message="To exit: use 'exit'", category=UserWarning)
    if hasattr(shell, "_tee"):
        shell._tee = lambda channel: contextlib.nullcontext()
    stream_class = type(sys.stdout)
    original_write = stream_class.write
    left = {}

    def write(self, text):
        if not isinstance(text, str):
            return original_write(self, text)
        name = getattr(self, "name", "stream")
        room = left.get(name, stream_limit)
        if room <= 0:
            return len(text)
        if len(text) > room:
            left[name] = 0
            original_write(self, text[:room])
            original_write(
                self,
                f"\n{marker} {name} over {stream_limit} characters in one run; "
                "the rest was dropped]\n",
            )
            return len(text)
        left[name] = room - len(text)
        return original_write(self, text)

    stream_class.write = write
    shell.events.register("pre_execute", lambda *args, **kwargs: left.clear())

    if config["mute_fd_echo"]:
        with contextlib.suppress(Exception):
            echo = getattr(sys.stderr, "_original_stdstream_copy", None)
            if isinstance(echo, int):
                null = os.open(os.devnull, os.O_WRONLY)
                os.dup2(null, echo, inheritable=False)
                os.close(null)

    max_rich = config["max_rich"]
    max_bytes = config["max_bytes"]
    key = config["metadata_key"]
    run = {}

    def reset(*args, **kwargs):
        run.update(count=0, dropped=0, chars=0, notice=None, shown=set(), held={})

    def size_of(data):
        total = 0
        if not isinstance(data, dict):
            return total
        for value in data.values():
            if isinstance(value, str):
                total += len(value)
            elif isinstance(value, (bytes, bytearray)):
                total += (len(value) + 2) // 3 * 4
            else:
                with contextlib.suppress(Exception):
                    total += len(json.dumps(value, default=str))
        return total

    def totals():
        return {key: {"dropped_outputs": run["dropped"], "dropped_chars": run["chars"]}}

    def fit(data, metadata):
        size = size_of(data)
        if size <= max_bytes:
            return data, metadata
        run["chars"] += size
        mimes = ", ".join(sorted(map(str, data)))
        text = (
            f"{marker} an output of {size} characters ({mimes}) over the per-output "
            f"limit of {max_bytes} was dropped]"
        )
        return {"text/plain": text}, totals()

    def install():
        reset()
        display_pub = shell.display_pub
        pub_class = type(display_pub)
        original_publish = pub_class.publish
        hook_class = type(shell.displayhook)
        original_format = hook_class.write_format_data

        def own(text, display_id, update=False):
            original_publish(
                display_pub,
                {"text/plain": text},
                totals(),
                transient={"display_id": display_id},
                update=update,
            )

        def drop(data):
            run["dropped"] += 1
            run["chars"] += size_of(data)
            if run["notice"] is None:
                run["notice"] = "kernel-mcp-guard-" + uuid.uuid4().hex
                own(
                    f"{marker} over {max_rich} rich outputs in one run; the rest are dropped]",
                    run["notice"],
                )

        def publish(self, data, metadata=None, *args, **kwargs):
            transient = kwargs.get("transient")
            display_id = transient.get("display_id") if isinstance(transient, dict) else None
            update = bool(kwargs.get("update"))
            if run["count"] >= max_rich:
                if not update:
                    drop(data)
                elif display_id in run["shown"]:
                    run["held"][display_id] = (self, data, metadata)
                return None
            run["count"] += 1
            if display_id and not update:
                run["shown"].add(display_id)
            data, metadata = fit(data, metadata)
            return original_publish(self, data, metadata, *args, **kwargs)

        def write_format_data(self, format_dict, md_dict=None):
            if run["count"] >= max_rich:
                drop(format_dict)
                return None  # the execute_result keeps no data, so it is not sent
            run["count"] += 1
            return original_format(self, *fit(format_dict, md_dict))

        def finish(*args, **kwargs):
            held, run["held"] = run["held"], {}
            for display_id, (publisher, data, metadata) in held.items():
                data, metadata = fit(data, metadata)
                original_publish(
                    publisher, data, metadata, transient={"display_id": display_id}, update=True
                )
            if run["notice"] is not None:
                own(
                    f"{marker} {run['dropped']} rich outputs over {max_rich} in one run "
                    "were dropped]",
                    run["notice"],
                    update=True,
                )

        pub_class.publish = publish
        hook_class.write_format_data = write_format_data
        shell.events.register("pre_execute", reset)
        shell.events.register("post_run_cell", finish)

    with contextlib.suppress(Exception):  # a kernel without IPython's publishers
        install()
"""
# Installed with the output guard: when a run cannot ask anyone for input, say so in
# words the model can act on, instead of ipykernel's "this frontend does not support
# input requests". The class methods are patched: ipykernel rebinds builtins.input
# to the kernel's bound method on every execution.
_INPUT_GUARD = r"""
def _kmcp_input_guard(config):
    from IPython import get_ipython
    from IPython.core.error import StdinNotImplementedError

    kernel = getattr(get_ipython(), "kernel", None)
    if kernel is None:
        return
    cls = type(kernel)
    for name in ("raw_input", "getpass"):
        original = getattr(cls, name, None)
        if original is None or getattr(original, "_kmcp", False):
            continue

        def guarded(self, *args, _original=original, **kwargs):
            if not getattr(self, "_allow_stdin", True):
                # Why this run cannot ask: set per run by the server (_kmcp_no_stdin).
                raise StdinNotImplementedError(
                    getattr(self, "_kmcp_no_stdin", None) or config["message"]
                )
            return _original(self, *args, **kwargs)

        guarded._kmcp = True
        setattr(cls, name, guarded)
"""
#: What input() says in a run that cannot ask anyone because its client cannot.
NO_STDIN_MESSAGE = (
    "input() needs an answer, and this run cannot ask for one: the MCP client did not "
    "declare elicitation. Put the value in the code or in a file instead."
)
#: What input() says in a background run (background=true): nobody waits on its call.
NO_STDIN_BACKGROUND = (
    "input() needs an answer, and background runs cannot ask for one: no call is waiting "
    "to pass the question on. Put the value in the code or in a file, or run it without "
    "background=true from a client that supports elicitation."
)

# The whole set-up in one piece, for a kernel that runs it itself before it answers
# anything (a forked kernel, kernel_mcp.launch.template): no cell, so none of
# IPython's per-cell machinery (the tee whose leftovers prepare() drops), and
# compiled once in the template. The preload is imported into the user's
# namespace, as prepare()'s cell does.
_SETUP_CALLS = r"""
def _kmcp_setup(config, user_ns):
    _kmcp_guard(config["output"])
    _kmcp_input_guard(config["input"])
    failed = {}
    for name in config["preload"]:
        try:
            exec(f"import {name}", user_ns)
        except Exception as exc:
            failed[name] = f"{type(exc).__name__}: {exc}"
    return failed
"""
#: Defines ``_kmcp_setup(config, user_ns)`` (config: :func:`setup_config`), which
#: installs the output and input guards and imports the preload; it returns the
#: preload modules that failed, with why.
KERNEL_SETUP = _OUTPUT_GUARD + _INPUT_GUARD + _SETUP_CALLS

#: Starts the notice the output guard writes when it drops a flood.
OUTPUT_GUARD_MARKER = "[kernel-mcp:"


def guard_config(limits: OutputLimits, *, local: bool) -> dict[str, str | int | bool]:
    """The output guard's settings for a kernel with these caps (``local``: its process
    is this machine's, so its fd-level echo can be muted)."""
    return {
        "marker": OUTPUT_GUARD_MARKER,
        # Leave room under the collector's caps for the guard's own notices.
        "stream_limit": max(0, limits.max_output_bytes - 256),
        "max_rich": max(0, limits.max_outputs - 1),
        "max_bytes": max(0, limits.max_output_bytes - 256),
        "metadata_key": GUARD_METADATA_KEY,
        "mute_fd_echo": local,
    }


def setup_config(limits: OutputLimits, preload: list[str]) -> dict[str, Any]:
    """What :data:`KERNEL_SETUP`'s ``_kmcp_setup`` takes, for a local kernel."""
    return {
        "output": guard_config(limits, local=True),
        "input": {"message": NO_STDIN_MESSAGE},
        "preload": list(preload),
    }


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
        self._recovery: asyncio.Task[None] | None = None
        self._input_guard = False
        """kernel-mcp's input guard is installed (a Python kernel, once prepared)."""
        self._no_stdin = NO_STDIN_MESSAGE
        """What the guard says now when a run cannot ask (changed per run as needed)."""

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
            asyncio.ensure_future(self._answer_input(msg_id, stdin, collector)) if stdin else None,
        )
        try:
            outcome = await self._wait(waiters, collector, start + timeout, progress, start)
            status: Status
            death = None
            replaced = False
            notes: list[str] = []
            if outcome == _Outcome.COMPLETE:
                reply = waiters.reply_content()
                if collector.execution_count is None:
                    collector.execution_count = reply.get("execution_count")
                if collector.error is None and reply.get("status") in ("error", "aborted"):
                    # The reply is the kernel's verdict even when no error was published
                    # (ipykernel fails to send a traceback holding a lone surrogate).
                    collector.add_error(error_from_reply(reply))
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
        if self.unverified > unverified_before:
            notes.append(
                f"{self.unverified - unverified_before} message(s) from the kernel failed their "
                "signature check and were dropped (did the code change the kernel's session key?)."
            )
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
        done = self.process.prepared
        if done is not None:  # set up in the kernel itself (forked)
            self._input_guard = True
            await self._preload([name for name in preload if name not in done])
            return
        await self.run_silently(self.guard_source())
        config = {"message": NO_STDIN_MESSAGE}
        await self.run_silently(
            f"{_INPUT_GUARD}\n_kmcp_input_guard({config!r})\ndel _kmcp_input_guard"
        )
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

    def guard_source(self) -> str:
        """The output guard's code, called with this kernel's caps as a literal dict."""
        config = guard_config(self.limits, local=self.process.backend == "local")
        # repr of str, int and bool values is a Python literal that means exactly them.
        return f"{_OUTPUT_GUARD}\n_kmcp_guard({config!r})\ndel _kmcp_guard\n"

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
        self, msg_id: str, stdin: StdinHandler, collector: OutputCollector
    ) -> None:
        """Answer the run's input requests (the stdin channel) until the run ends."""
        while True:
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
            answer = await stdin(prompt, password)
            self.client.input(NO_ANSWER if answer is None else answer)
            if answer is not None:
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
        await stop_task(self._recovery)
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

    async def cancel(self) -> None:
        owned = [task for task in (*self.tasks, self.helper) if task is not None]
        for task in owned:
            task.cancel()
        # Their failures were raised by pending() already; here they only end.
        await asyncio.gather(*owned, return_exceptions=True)
