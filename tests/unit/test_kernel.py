"""Specification of ``kernel_mcp.kernels.kernel.Kernel`` on scripted kernels: no process.

``Kernel``'s own message handling runs on a fake client: the scripted clients here
answer with the messages a test lays out (an aborted reply, a storm that never lets
the reader wait, a recovery that hangs: nothing a real kernel does on demand), and
``tests/unit/fakes.py``'s kernels answer as ipykernel does, so that interrupts,
timeouts, deaths and input are specified without a kernel. The real ones:
``tests/integration/test_kernel.py``.
"""

from __future__ import annotations

import ast
import asyncio
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import kernel_mcp.kernels.guards
import kernel_mcp.kernels.setup
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.outputs import GUARD_METADATA_KEY, OutputLimits
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from tests.unit import fakes

KERNEL_SETUP_PATH = Path(kernel_mcp.kernels.guards.__file__)
#: A run's reply comes within timeout + grace; this slack covers the interrupt, the
#: kill and a loaded machine. It is a correctness bound, not a speed target: without
#: it enforced, a storm holds the reply for as long as the storm lasts.
DEADLINE_SLACK = 10.0


class ScriptedProcess:
    """A KernelProcess without a process: alive until killed."""

    backend = "scripted"
    sandboxed = False
    prepared: tuple[str, ...] | None = None

    def __init__(self) -> None:
        self.kernel_id = uuid.uuid4().hex
        self.killed = False
        self.interrupts = 0

    async def is_alive(self) -> bool:
        return not self.killed

    async def interrupt(self) -> None:
        self.interrupts += 1

    async def kill(self) -> None:
        self.killed = True

    async def shutdown(self) -> None:
        self.killed = True

    def exit_description(self) -> str:
        return "killed by SIGKILL" if self.killed else "the kernel stopped responding"

    def rss_bytes(self) -> int | None:
        return None


def kernel_message(msg_type: str, parent: str, **content: Any) -> dict[str, Any]:
    return {
        "header": {"msg_type": msg_type, "msg_id": uuid.uuid4().hex},
        "parent_header": {"msg_id": parent},
        "metadata": {},
        "content": content,
    }


class ScriptedClient:
    """A KernelClient whose answers to each execute come from ``script(msg_id)``."""

    def __init__(self, script: Callable[[str], tuple[list[dict[str, Any]], dict[str, Any]]]):
        self.script = script
        self.shell: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        self.iopub: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

    def execute(self, code: str, *args: Any, **kwargs: Any) -> str:
        msg_id = uuid.uuid4().hex
        iopub, reply = self.script(msg_id)
        for msg in iopub:
            self.iopub.put_nowait(msg)
        self.shell.put_nowait(kernel_message("execute_reply", msg_id, **reply))
        return msg_id

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self.iopub.get()

    async def get_shell_msg(self, timeout: float | None = None) -> dict[str, Any]:
        return await self.shell.get()

    def stop_channels(self) -> None:
        pass


def scripted_kernel(client: Any, limits: OutputLimits | None = None) -> Kernel:
    return Kernel(ScriptedProcess(), client, limits=limits or OutputLimits())


async def test_an_aborted_reply_is_an_error() -> None:
    def aborted(msg_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        busy = kernel_message("status", msg_id, execution_state="busy")
        idle = kernel_message("status", msg_id, execution_state="idle")
        return [busy, idle], {"status": "aborted"}

    result = await scripted_kernel(ScriptedClient(aborted)).execute("1", timeout=10, grace=1)

    assert result.status == "error"
    assert result.error is not None
    assert result.error["ename"] == "ExecutionAborted"
    assert result.outputs == [result.error]


async def test_an_error_reply_keeps_the_kernel_s_own_traceback_when_it_has_one() -> None:
    def failed(msg_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        idle = kernel_message("status", msg_id, execution_state="idle")
        reply = {"status": "error", "ename": "E", "evalue": "v", "traceback": ["line 1", "E: v"]}
        return [idle], reply

    result = await scripted_kernel(ScriptedClient(failed)).execute("1", timeout=10, grace=1)

    assert result.status == "error"
    assert result.error is not None
    assert (result.error["ename"], result.error["evalue"]) == ("E", "v")
    assert result.error["traceback"] == ["line 1", "E: v"]


async def test_an_ok_reply_with_an_error_output_keeps_the_published_error() -> None:
    def published(msg_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        error = kernel_message("error", msg_id, ename="KeyError", evalue="'k'", traceback=["K"])
        idle = kernel_message("status", msg_id, execution_state="idle")
        return [error, idle], {"status": "error", "ename": "KeyError", "evalue": "'k'"}

    result = await scripted_kernel(ScriptedClient(published)).execute("1", timeout=10, grace=1)

    assert result.status == "error"
    assert [o["output_type"] for o in result.outputs] == ["error"], "not reported twice"


# -- time limits whatever the message rate
class StormClient(ScriptedClient):
    """IOPub messages for the run keep coming and are always already queued.

    Reading one never suspends (as with the gateway client's queue), so a reader
    that does not yield by itself keeps every timer from firing. The storm stops
    by itself after ``valve`` seconds so that such a reader ends eventually.
    """

    def __init__(self, valve: float) -> None:
        super().__init__(lambda msg_id: ([], {}))
        self.valve = valve
        self.msg_id = ""
        self.sent = 0
        self.began = 0.0

    def execute(self, code: str, *args: Any, **kwargs: Any) -> str:
        self.msg_id = uuid.uuid4().hex
        self.began = time.monotonic()
        return self.msg_id

    async def get_iopub_msg(self, timeout: float | None = None) -> dict[str, Any]:
        if time.monotonic() - self.began > self.valve:
            return kernel_message("status", self.msg_id, execution_state="idle")
        self.sent += 1
        return kernel_message(
            "display_data", self.msg_id, data={"text/plain": f"{self.sent}"}, metadata={}
        )


async def test_a_storm_of_queued_messages_cannot_hold_the_reply_past_its_deadline() -> None:
    client = StormClient(valve=60)
    kernel = scripted_kernel(client, OutputLimits(max_output_bytes=10_000, max_outputs=50))
    timeout, grace = 0.5, 0.5

    result = await kernel.execute("storm()", timeout=timeout, grace=grace)

    assert result.status == "timeout"
    assert result.duration_s <= timeout + grace + DEADLINE_SLACK, result.duration_s
    assert result.kernel_replaced, "the storm ignored the interrupt, so it was killed"
    assert len(result.outputs) == 50
    assert result.dropped_outputs > 0
    assert result.truncated


def test_the_guards_are_sent_by_their_source_with_their_caps_as_data() -> None:
    kernel = Kernel(
        ScriptedProcess(), ScriptedClient(lambda msg_id: ([], {})), limits=OutputLimits(5000, 30)
    )
    cell = ast.parse(kernel.setup_cell()).body

    # The module's source, whole, run in a namespace of its own.
    run = cell[1]
    assert isinstance(run, ast.Expr) and isinstance(run.value, ast.Call)
    compiled = run.value.args[0]
    assert isinstance(compiled, ast.Call)
    assert ast.literal_eval(compiled.args[0]) == kernel_mcp.kernels.setup.KERNEL_SETUP
    assert KERNEL_SETUP_PATH.read_text(encoding="utf-8") == kernel_mcp.kernels.setup.KERNEL_SETUP
    # Both guards are called with literal settings, and only the namespace is left to delete.
    output, stdin = (ast.literal_eval(statement.value.args[0]) for statement in cell[2:4])
    assert output == {
        "marker": OUTPUT_GUARD_MARKER,
        "stream_limit": 5000 - 256,
        "max_rich": 29,
        "max_bytes": 5000 - 256,
        "metadata_key": GUARD_METADATA_KEY,
        "mute_fd_echo": False,
    }
    assert stdin == {"message": kernel_mcp.kernels.setup.NO_STDIN_MESSAGE}
    assert ast.unparse(cell[-1]) == "del _kmcp_ns"


def idle_ok(msg_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    return [kernel_message("status", msg_id, execution_state="idle")], {"status": "ok"}


class CountingClient(ScriptedClient):
    def __init__(self) -> None:
        super().__init__(idle_ok)
        self.codes: list[str] = []

    def execute(self, code: str, *args: Any, **kwargs: Any) -> str:
        self.codes.append(code)
        return super().execute(code, *args, **kwargs)


async def test_prepare_sends_the_guards_and_the_preload_as_cells() -> None:
    client = CountingClient()
    await scripted_kernel(client).prepare(["json"])

    assert "['_kmcp_guard'](" in client.codes[0]
    assert "['_kmcp_input_guard'](" in client.codes[0]
    assert "pop('write'" in client.codes[1]  # the tee's leftovers of the guards' own cell
    assert client.codes[-1] == "import json"


async def test_prepare_sends_only_the_missing_preload_to_a_kernel_that_set_itself_up() -> None:
    process = ScriptedProcess()
    process.prepared = ("json",)  # a forked kernel ran KERNEL_SETUP before its first message
    client = CountingClient()
    kernel = Kernel(process, client, limits=OutputLimits())
    await kernel.prepare(["json"])

    assert client.codes == []
    await kernel.prepare(["json", "csv"])  # what its own set-up did not import, as a cell
    assert client.codes == ["import csv"]


def test_the_kernel_setup_installs_both_guards_and_binds_the_preload() -> None:
    namespace: dict[str, Any] = {}
    exec(compile(kernel_mcp.kernels.setup.KERNEL_SETUP, "<setup>", "exec"), namespace)
    config = kernel_mcp.kernels.setup.setup_config(
        OutputLimits(5000, 30), ["json", "no_such_module_x"]
    )
    calls: list[tuple[str, dict[str, Any]]] = []
    namespace["_kmcp_guard"] = lambda c: calls.append(("output", c))
    namespace["_kmcp_input_guard"] = lambda c: calls.append(("input", c))
    user_ns: dict[str, Any] = {}

    failed = namespace["_kmcp_setup"](config, user_ns)

    assert calls == [("output", config["output"]), ("input", config["input"])]
    assert config["output"]["mute_fd_echo"] is True
    assert config["output"]["stream_limit"] == 5000 - 256
    assert user_ns["json"].__name__ == "json", "bound in the user's namespace, as a cell would"
    assert set(failed) == {"no_such_module_x"}
    assert failed["no_such_module_x"].startswith("ModuleNotFoundError")


# -- stopping never swallows the caller's cancel -----------------------------------------
class StubbornInterruptProcess(ScriptedProcess):
    """Its interrupt refuses to be cancelled until released: a recovery that hangs. It
    says when the interrupt began, and when something tried to cancel it."""

    def __init__(self) -> None:
        super().__init__()
        self.release = asyncio.Event()
        self.interrupting = asyncio.Event()
        self.cancel_refused = asyncio.Event()

    async def interrupt(self) -> None:
        self.interrupting.set()
        while not self.release.is_set():
            try:
                await self.release.wait()
            except asyncio.CancelledError:
                self.cancel_refused.set()


class ExecutedClient(ScriptedClient):
    """Says when its execute was asked (the run is then waiting for the kernel)."""

    def __init__(self, script: Callable[[str], tuple[list[dict[str, Any]], dict[str, Any]]]):
        super().__init__(script)
        self.executed = asyncio.Event()

    def execute(self, code: str, *args: Any, **kwargs: Any) -> str:
        self.executed.set()
        return super().execute(code, *args, **kwargs)


async def test_shutdown_passes_on_a_cancel_aimed_at_its_caller() -> None:
    def never_idle(msg_id: str) -> tuple[list[dict[str, Any]], dict[str, Any]]:
        return [], {"status": "ok"}

    process = StubbornInterruptProcess()
    client = ExecutedClient(never_idle)
    kernel = Kernel(process, client, limits=OutputLimits())
    running = asyncio.create_task(kernel.execute("loop()", timeout=60, grace=5))
    await asyncio.wait_for(client.executed.wait(), timeout=10)
    running.cancel()  # the caller leaves: a recovery starts and hangs in interrupt()
    await asyncio.wait({running})
    await asyncio.wait_for(process.interrupting.wait(), timeout=10)
    assert kernel.recovering

    stopper = asyncio.create_task(kernel.shutdown(now=True))
    # The path under test: shutdown has asked the recovery to stop and is waiting for it.
    await asyncio.wait_for(process.cancel_refused.wait(), timeout=10)
    assert not stopper.done() and kernel.recovering
    stopper.cancel()
    await asyncio.wait({stopper}, timeout=10)
    try:
        assert stopper.done(), "shutdown held the caller's cancel until the recovery ended"
        assert stopper.cancelled(), "shutdown swallowed the caller's cancel"
        assert kernel.recovering, "the recovery still hangs: the cancel was the caller's alone"
    finally:
        process.release.set()
        await kernel.shutdown(now=True)


# -- on fake kernels: interrupts, time limits, deaths, input -----------------------------
async def run_on(script: fakes.Script, code: str, **options: Any) -> tuple[Any, fakes.FakeKernel]:
    backend = fakes.FakeBackend(script)
    kernel = await backend.start()
    result = await kernel.execute(code, timeout=options.pop("timeout", 10), grace=0.5, **options)
    return result, fakes.fake_of(kernel)


async def test_an_ok_run_keeps_its_output_its_result_and_its_count() -> None:
    result, fake = await run_on(fakes.python, "print('hello')\n6 * 7")
    assert result.status == "ok"
    assert [o["output_type"] for o in result.outputs] == ["stream", "execute_result"]
    assert result.outputs[0]["text"] == "hello\n"
    assert result.outputs[1]["data"]["text/plain"] == "42"
    assert result.execution_count == 1 == fake.execution_count


async def test_an_interrupt_ends_the_run_as_interrupted_and_the_kernel_lives() -> None:
    release, started = asyncio.Event(), asyncio.Event()
    backend = fakes.FakeBackend(fakes.waits_for(release, started=started))
    kernel = await backend.start()
    running = asyncio.create_task(kernel.execute("wait()", timeout=30, grace=5))
    await asyncio.wait_for(started.wait(), timeout=10)
    await kernel.interrupt()
    result = await asyncio.wait_for(running, timeout=10)
    assert result.status == "interrupted"
    assert await kernel.is_alive() and not result.kernel_replaced


async def test_a_timeout_interrupts_and_a_kernel_that_ignores_it_is_killed() -> None:
    async def stuck(request: fakes.Request) -> None:
        request.kernel.stubborn = True  # as a kernel stuck in C code
        await asyncio.Event().wait()

    result, fake = await run_on(stuck, "stuck()", timeout=0.2)
    assert result.status == "timeout"
    assert result.kernel_replaced
    assert fake.process.interrupts == 1 and fake.dead
    assert any("ignored the interrupt" in note for note in result.notes), result.notes


async def test_a_timeout_the_kernel_obeys_keeps_the_kernel() -> None:
    result, fake = await run_on(fakes.waits_for(asyncio.Event()), "wait()", timeout=0.2)
    assert result.status == "timeout"
    assert not result.kernel_replaced and not fake.dead


async def test_a_kernel_that_dies_mid_run_is_kernel_died_with_how() -> None:
    result, fake = await run_on(fakes.dies, "die()")
    assert result.status == "kernel_died" and fake.dead
    assert result.death == "exit code 1"
    assert result.outputs[0]["text"] == "about to die\n", "what it sent before is kept"


async def test_input_is_asked_through_stdin_and_the_answer_is_echoed() -> None:
    asked: list[tuple[str, bool]] = []

    async def answer(prompt: str, password: bool) -> str | None:
        asked.append((prompt, password))
        return "Ada"

    async def greets(request: fakes.Request) -> None:
        name = await request.ask("name? ")
        request.stream("stdout", f"hello {name}\n")

    backend = fakes.FakeBackend(greets)
    kernel = await backend.start()
    result = await kernel.execute("greet()", timeout=10, grace=1, stdin=answer)
    assert asked == [("name? ", False)]
    assert result.status == "ok"
    assert "".join(o.get("text", "") for o in result.outputs) == "name? Ada\nhello Ada\n"


async def test_a_server_request_on_stdin_is_answered_by_the_server_and_not_echoed() -> None:
    """%pip install in a session: the guard's input request (its prompt starts with
    SERVER_REQUEST) goes to ``server_requests``, even in a run that cannot ask a person."""
    prompt = kernel_mcp.kernels.setup.SERVER_REQUEST + '{"line": "install x"}'

    async def pip(request: fakes.Request) -> None:
        answer = request.kernel.stdin_answer = asyncio.get_running_loop().create_future()
        request.kernel.put("stdin", "input_request", request.msg_id, prompt=prompt, password=False)
        request.stream("stdout", f"server said {await answer}\n")

    seen: list[str] = []

    async def serve(asked: str, password: bool) -> str | None:
        seen.append(asked)
        return "installed"

    kernel = await fakes.FakeBackend(pip).start()
    kernel.server_requests = serve
    result = await kernel.execute("%pip install x", timeout=10, grace=1)
    assert seen == [prompt]
    assert result.status == "ok"
    assert "".join(o.get("text", "") for o in result.outputs) == "server said installed\n"
