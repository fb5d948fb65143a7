"""A scripted fake backend: kernels without a process, for the unit tier.

As httpx's ``MockTransport`` answers each request with a handler, a :class:`FakeKernel`
answers each ``execute_request`` with a *script*: an async function of the request that
publishes what a kernel would (``stream``, ``execute_result``, ``display_data``,
``error``), may ask for input on the stdin channel, and ends. The fake puts the
messages on the four channels as ipykernel does (``busy``, ``execute_input``, the
outputs, ``idle``, then the shell reply), so ``kernels.kernel.Kernel`` runs its real
message handling on them: it keeps only its request's messages, waits for the reply
and IOPub's idle together, checks liveness, interrupts, times out, answers input.

:func:`python` is the default script: the code runs in the kernel's own namespace (so
a session keeps its state), prints are captured, the last expression is the result,
an exception is the error. It is a fake: use code that returns at once; a script of
the test's own (:func:`waits_for`, :func:`scripted`) stands in for what takes time,
and :meth:`FakeKernel.die` for a kernel that dies. Silent requests (the guards'
set-up, a preload, a file's preamble) are recorded, not run: the guards patch the
process they run in.
"""

from __future__ import annotations

import ast
import asyncio
import builtins
import contextlib
import importlib.util
import itertools
import queue
import traceback
import uuid
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.outputs import OutputLimits

#: The kernel_info a fake kernel answers (a Python kernel's, as ipykernel gives it).
KERNEL_INFO = {
    "protocol_version": "5.3",
    "implementation": "fake",
    "language_info": {"name": "python", "version": "3.11", "file_extension": ".py"},
}
#: What an input_reply says for "no answer" (kernels.kernel.NO_ANSWER).
NO_ANSWER = "\x04"

Script = Callable[["Request"], Awaitable[None]]


class Request:
    """One execute_request, as its script sees it: what was asked, and what to publish."""

    def __init__(self, kernel: FakeKernel, msg_id: str, code: str, **options: Any) -> None:
        self.kernel = kernel
        self.msg_id = msg_id
        self.code = code
        self.silent: bool = options.get("silent", False)
        self.allow_stdin: bool = bool(options.get("allow_stdin"))
        self.failed: dict[str, Any] | None = None

    def stream(self, name: str, text: str) -> None:
        self.kernel.publish("stream", self.msg_id, name=name, text=text)

    def result(self, text: str, data: dict[str, Any] | None = None) -> None:
        self.kernel.publish(
            "execute_result",
            self.msg_id,
            data={"text/plain": text, **(data or {})},
            metadata={},
            execution_count=self.kernel.execution_count,
        )

    def display(self, data: dict[str, Any], *, display_id: str | None = None) -> None:
        transient = {"display_id": display_id} if display_id else {}
        self.kernel.publish(
            "display_data", self.msg_id, data=data, metadata={}, transient=transient
        )

    def error(self, ename: str, evalue: str, traceback_lines: list[str] | None = None) -> None:
        """Publish an error; the reply then says ``error`` too."""
        lines = traceback_lines if traceback_lines is not None else [f"{ename}: {evalue}"]
        self.failed = {"ename": ename, "evalue": evalue, "traceback": lines}
        self.kernel.publish("error", self.msg_id, **self.failed)

    async def ask(self, prompt: str, *, password: bool = False) -> str | None:
        """``input()``: an input_request on stdin, answered by the client (None: EOF)."""
        if not self.allow_stdin:
            self.error("StdinNotImplementedError", "input() is not allowed in this run")
            raise _Ended
        answer = self.kernel.stdin_answer = asyncio.get_running_loop().create_future()
        self.kernel.put("stdin", "input_request", self.msg_id, prompt=prompt, password=password)
        value = await answer
        return None if value == NO_ANSWER else value


class _Ended(Exception):
    """The script stops here (what it published stands)."""


class FakeProcess:
    """The ``KernelProcess`` side of a fake kernel: alive until it dies or is stopped."""

    backend = "local"
    sandboxed = False
    prepared: tuple[str, ...] | None = None

    def __init__(self, kernel: FakeKernel) -> None:
        self.kernel = kernel
        self.kernel_id = uuid.uuid4().hex
        self.interrupts = 0
        self.stopped = False

    async def is_alive(self) -> bool:
        return not self.kernel.dead

    async def interrupt(self) -> None:
        self.interrupts += 1
        self.kernel.interrupt()

    async def kill(self) -> None:
        self.stopped = True
        self.kernel.die("killed by SIGKILL")

    async def shutdown(self) -> None:
        await self.kill()

    def exit_description(self) -> str:
        return self.kernel.death or "the kernel stopped responding"

    def rss_bytes(self) -> int | None:
        return None if self.kernel.dead else 50 * 2**20


class FakeKernel:
    """A kernel without a process: the ``KernelClient`` side, and the state scripts use."""

    _ids = itertools.count(1)

    def __init__(self, script: Script, *, workspace: Path | None = None) -> None:
        self.script = script
        self.workspace = workspace
        self.number = next(self._ids)
        self.namespace: dict[str, Any] = {"__name__": "__main__"}
        self.silent_codes: list[str] = []
        self.codes: list[str] = []
        self.execution_count = 0
        self.dead = False
        self.death: str | None = None
        self.stubborn = False
        """Interrupts are ignored (a kernel stuck in C code)."""
        self.stdin_answer: asyncio.Future[str] | None = None
        self.queues: dict[str, asyncio.Queue[dict[str, Any]]] = {
            name: asyncio.Queue() for name in ("shell", "iopub", "stdin", "control")
        }
        self._running: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[None]] = set()
        self.process = FakeProcess(self)

    # -- the KernelClient side ----------------------------------------------------------
    def execute(self, code: str, silent: bool = False, **options: Any) -> str:
        msg_id = uuid.uuid4().hex
        request = Request(self, msg_id, code, silent=silent, **options)
        task = asyncio.get_running_loop().create_task(self._run(request))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return msg_id

    def kernel_info(self) -> str:
        msg_id = uuid.uuid4().hex
        self.put("shell", "kernel_info_reply", msg_id, **KERNEL_INFO)
        self.publish("status", msg_id, execution_state="idle")
        return msg_id

    def input(self, string: str) -> None:
        if self.stdin_answer is not None and not self.stdin_answer.done():
            self.stdin_answer.set_result(string)

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("iopub", timeout)

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("shell", timeout)

    async def get_stdin_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("stdin", timeout)

    async def get_control_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self._get("control", timeout)

    def stop_channels(self) -> None:
        for task in list(self._tasks):
            task.cancel()

    # -- what a script and a test do to the kernel -------------------------------------
    def die(self, how: str = "exit code 1") -> None:
        """The kernel ends now: nothing more is published, the running script stops."""
        if self.dead:
            return
        self.dead, self.death = True, how
        if self._running is not None:
            self._running.cancel()

    def interrupt(self) -> None:
        """As SIGINT: the running script ends with KeyboardInterrupt (unless stubborn)."""
        if self._running is not None and not self.stubborn and not self.dead:
            self._running.cancel()

    def put(self, channel: str, msg_type: str, parent: str, **content: Any) -> None:
        if self.dead:
            return
        self.queues[channel].put_nowait(
            {
                "header": {"msg_type": msg_type, "msg_id": uuid.uuid4().hex},
                "parent_header": {"msg_id": parent},
                "metadata": {},
                "content": content,
            }
        )

    def publish(self, msg_type: str, parent: str, **content: Any) -> None:
        self.put("iopub", msg_type, parent, **content)

    # -- internals --------------------------------------------------------------------------
    async def _get(self, channel: str, timeout: float | None) -> dict[str, Any]:
        pending = self.queues[channel]
        if timeout is None:
            return await pending.get()
        try:
            return await asyncio.wait_for(pending.get(), timeout)
        except asyncio.TimeoutError:
            raise queue.Empty from None

    async def _run(self, request: Request) -> None:
        if self._running is not None:  # ipykernel runs one execute request at a time
            with contextlib.suppress(BaseException):
                await asyncio.wait({self._running})
        if self.dead:
            return
        self.publish("status", request.msg_id, execution_state="busy")
        if request.silent:
            self.silent_codes.append(request.code)
        else:
            self.codes.append(request.code)
            self.execution_count += 1
            self.publish(
                "execute_input",
                request.msg_id,
                code=request.code,
                execution_count=self.execution_count,
            )
        self._running = asyncio.current_task()
        try:
            if request.silent:
                _imports(request)
            else:
                await request.kernel.script(request)
        except _Ended:
            pass
        except asyncio.CancelledError:
            if self.dead:
                return
            request.error("KeyboardInterrupt", "", ["KeyboardInterrupt"])
        finally:
            self._running = None
        status = "error" if request.failed else "ok"
        reply = {"status": status, "execution_count": self.execution_count}
        self.publish("status", request.msg_id, execution_state="idle")
        self.put("shell", "execute_reply", request.msg_id, **reply, **(request.failed or {}))


def _imports(request: Request) -> None:
    """A silent request's imports (a preload) fail as they would, for a missing module."""
    for line in request.code.splitlines():
        if line.startswith("import "):
            for name in line.removeprefix("import ").split(","):
                name = name.split(" as ")[0].strip()
                if importlib.util.find_spec(name.split(".")[0]) is None:
                    request.error("ModuleNotFoundError", f"No module named {name!r}")
                    return


# -- scripts ---------------------------------------------------------------------------
async def python(request: Request) -> None:
    """The code run in the kernel's namespace, as a tiny in-process Python."""
    namespace = request.kernel.namespace

    def show(*values: Any, sep: str = " ", end: str = "\n", **_: Any) -> None:
        request.stream("stdout", sep.join(map(str, values)) + end)

    namespace["__builtins__"] = {**vars(builtins), "print": show}
    try:
        tree = ast.parse(request.code)
        last = tree.body.pop() if tree.body and isinstance(tree.body[-1], ast.Expr) else None
        exec(compile(tree, "<fake cell>", "exec"), namespace)
        if last is not None:
            value = eval(compile(ast.Expression(last.value), "<fake cell>", "eval"), namespace)
            if value is not None:
                request.result(repr(value))
    except SystemExit as exc:
        request.error("SystemExit", "" if exc.code is None else str(exc.code))
    except Exception as exc:
        lines = traceback.format_exception_only(type(exc), exc)
        request.error(type(exc).__name__, str(exc), [line.rstrip("\n") for line in lines])


def scripted(answers: dict[str, Script], otherwise: Script = python) -> Script:
    """A script that answers some codes its own way (the others as ``otherwise``)."""

    async def script(request: Request) -> None:
        await answers.get(request.code, otherwise)(request)

    return script


def waits_for(
    event: asyncio.Event, *, then: str = "done", started: asyncio.Event | None = None
) -> Script:
    """A run that lasts until ``event`` is set (``started`` is set when it begins)."""

    async def script(request: Request) -> None:
        if started is not None:
            started.set()
        await event.wait()
        request.stream("stdout", then + "\n")

    return script


async def dies(request: Request) -> None:
    """The kernel dies in the middle of the run (as ``os._exit(1)``)."""
    request.stream("stdout", "about to die\n")
    request.kernel.die("exit code 1")
    await asyncio.Event().wait()  # never published past this


# -- the backend ------------------------------------------------------------------------
class FakeBackend:
    """A ``KernelBackend`` of fake kernels: remembers every start; a start may be held at
    a gate (``gate``) or fail (``failures``)."""

    name = "fake"
    local = True
    sandboxed = False
    kernel_name = "python3"

    def __init__(
        self,
        script: Script = python,
        *,
        cheap_starts: bool = True,
        limits: OutputLimits | None = None,
    ) -> None:
        self.script = script
        self.cheap_starts = cheap_starts
        self.limits = limits or OutputLimits()
        self.started: list[Kernel] = []
        self.asked = 0
        self.starting = self.most_at_once = 0
        self.gate: asyncio.Event | None = None
        """While set to an unset event, every start waits for it."""
        self.failures: list[BaseException] = []
        """Raised, in order, by the next starts."""
        self.closed = False

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        self.asked += 1
        self.starting += 1
        self.most_at_once = max(self.most_at_once, self.starting)
        try:
            if self.gate is not None:
                await self.gate.wait()
            if self.failures:
                raise self.failures.pop(0)
        finally:
            self.starting -= 1
        fake = FakeKernel(self.script, workspace=workspace)
        kernel = Kernel(fake.process, fake, limits=self.limits, kernel_info=dict(KERNEL_INFO))
        kernel.kernel_name = kernel_name  # type: ignore[attr-defined]
        self.started.append(kernel)
        return kernel

    def isolation(self) -> str:
        return "off (a fake backend)"

    async def close(self) -> None:
        self.closed = True

    def alive(self) -> list[Kernel]:
        """The kernels it started that are still running."""
        return [k for k in self.started if not fake_of(k).dead]


def fake_of(kernel: Kernel | None) -> FakeKernel:
    """The fake behind a kernel this backend started."""
    assert kernel is not None
    client = kernel.client
    assert isinstance(client, FakeKernel)
    return client
