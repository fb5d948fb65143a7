"""Specification of attached sessions (``kernel_mcp.sessions.attached``) on fake kernels.

``create_session(kernel_id=...)`` joins a kernel someone else started (a person's
notebook kernel on the gateway's Jupyter server). kernel-mcp never stops, restarts or
replaces it: closing, culling and stopping only let go of it. The person's own
executions never reach the agent's replies (the kernel keeps only its request's
messages), and the recording notes what ran in between. The same against a real
Jupyter server: ``tests/integration/test_join.py``.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.config import Settings, load_settings
from kernel_mcp.errors import InvalidArgument, KernelBusy, KernelError
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.outputs import OutputLimits
from kernel_mcp.notebooks.model import gap_cell
from kernel_mcp.runner import Runner
from kernel_mcp.runner.recordings import noting_gaps
from kernel_mcp.scale.gateway.backend import GatewayBackend
from kernel_mcp.sessions.attached import kernel_id_of
from kernel_mcp.sessions.records import Session, SessionRecord
from kernel_mcp.sessions.store import InProcessStore
from tests.unit import fakes
from tests.unit.fakes import KERNEL_INFO, FakeBackend, FakeKernel, FakeProcess, Request


class BorrowedFake(FakeProcess):
    """As the gateway's ``BorrowedProcess``: stopping only lets go; the kernel runs on."""

    def __init__(self, kernel: FakeKernel, kernel_id: str) -> None:
        super().__init__(kernel)
        self.kernel_id = kernel_id
        self.let_go = False

    async def is_alive(self) -> bool:
        return not self.let_go and not self.kernel.dead

    async def kill(self) -> None:
        self.let_go = True

    async def shutdown(self) -> None:
        self.let_go = True


class People:
    """The Jupyter server's kernels that people started, and kernel-mcp's attacher."""

    def __init__(self) -> None:
        self.kernels: dict[str, FakeKernel] = {}
        self.handles: list[BorrowedFake] = []

    def start(self, script: fakes.Script = fakes.python, **state: Any) -> tuple[str, FakeKernel]:
        """A person's kernel, with ``state`` defined and three cells run already."""
        kernel_id = str(uuid.uuid4())
        fake = FakeKernel(script)
        fake.namespace.update(state)
        fake.execution_count = 3
        self.kernels[kernel_id] = fake
        return kernel_id, fake

    async def attach(self, kernel_id: str) -> Kernel:
        fake = self.kernels.get(kernel_id)
        if fake is None or fake.dead:
            raise InvalidArgument(f"the Jupyter server has no kernel {kernel_id}")
        handle = BorrowedFake(fake, kernel_id)
        self.handles.append(handle)
        return Kernel(handle, fake, limits=OutputLimits(), kernel_info=dict(KERNEL_INFO))

    def busy(self, kernel: Kernel) -> bool:
        """A person's cell runs in it (a fake's ``_running`` task: any request's)."""
        fake = kernel.client
        return isinstance(fake, FakeKernel) and fake._running is not None


def settings_for(tmp_path: Path, **overrides: Any) -> Settings:
    projects = tmp_path / "projects"
    projects.mkdir(exist_ok=True)
    overrides.setdefault("gateway_url", "http://127.0.0.1:9")
    return load_settings(
        projects_dir=projects, notebooks_dir=tmp_path / "nb", pool_size=0, **overrides
    )


@pytest.fixture
def people() -> People:
    return People()


@pytest.fixture
async def runner(tmp_path: Path, people: People) -> AsyncIterator[Runner]:
    async with Runner(
        settings_for(tmp_path), backend=FakeBackend(), store=InProcessStore(), attacher=people
    ) as running:
        yield running


def result_of(outcome: Any) -> str:
    return str(outcome.execution.outputs[-1]["data"]["text/plain"])


# -- attaching, and never stopping ------------------------------------------------------------
async def test_an_attached_session_runs_in_the_persons_kernel_and_close_only_lets_go(
    runner: Runner, people: People
) -> None:
    kernel_id, fake = people.start(data=[1, 2, 3])
    session = await runner.create_session(owner=None, kernel_id=kernel_id.upper())
    assert session.record.attached and session.kernel_id == kernel_id

    seen = await runner.run_code("sum(data)", owner=None, session_id=session.id)
    assert result_of(seen) == "6"
    await runner.run_code("agent_note = 'hi'", owner=None, session_id=session.id)
    assert fake.namespace["agent_note"] == "hi"  # the person sees it

    await runner.sessions.close_session(None, session.id)
    assert people.handles[0].let_go and not fake.dead
    assert fake.namespace["data"] == [1, 2, 3]


async def test_stopping_the_server_and_culling_only_let_go_of_an_attached_kernel(
    tmp_path: Path, people: People
) -> None:
    culled_id, culled = people.start()
    kept_id, kept = people.start()
    runner = Runner(
        settings_for(tmp_path), backend=FakeBackend(), store=InProcessStore(), attacher=people
    )
    async with runner:
        idle = await runner.create_session(owner=None, kernel_id=culled_id)
        await runner.create_session(owner=None, kernel_id=kept_id)
        idle.record.last_used = 0.0  # unused for longer than the idle timeout
        await runner.sessions.cull()
        assert [s.kernel_id for s in await runner.sessions.owned(None)] == [kept_id]
    assert all(handle.let_go for handle in people.handles)
    assert not culled.dead and not kept.dead


async def test_restarting_an_attached_session_is_refused(runner: Runner, people: People) -> None:
    kernel_id, fake = people.start(x=1)
    session = await runner.create_session(owner=None, kernel_id=kernel_id)
    with pytest.raises(InvalidArgument, match="does not restart it"):
        await runner.sessions.restart(None, session.id)
    assert fake.namespace["x"] == 1 and not fake.dead


async def test_a_lost_connection_is_opened_again_never_replaced_by_a_new_kernel(
    runner: Runner, people: People
) -> None:
    kernel_id, fake = people.start(x=1)
    session = await runner.create_session(owner=None, kernel_id=kernel_id)
    assert session.kernel is not None
    await session.kernel.kill()  # a run that ignored its interrupt: kernel-mcp let go
    again = await runner.run_code("x + 1", owner=None, session_id=session.id)
    assert result_of(again) == "2"
    assert any("connected to its attached kernel again" in n for n in again.notes)
    assert len(people.handles) == 2
    assert isinstance(runner.backend, FakeBackend) and runner.backend.asked == 0

    fake.die("the person shut it down")
    with pytest.raises(KernelError, match="never starts another kernel"):
        await runner.run_code("x", owner=None, session_id=session.id)
    assert runner.backend.asked == 0


async def test_a_call_is_refused_not_queued_while_someone_elses_cell_runs(
    runner: Runner, people: People
) -> None:
    release, began = asyncio.Event(), asyncio.Event()
    theirs = fakes.waits_for(release, started=began)
    kernel_id, fake = people.start(fakes.scripted({"long_cell()": theirs}))
    session = await runner.create_session(owner=None, kernel_id=kernel_id)
    fake.execute("long_cell()")  # the person's cell, from JupyterLab
    await asyncio.wait_for(began.wait(), timeout=10)
    with pytest.raises(KernelBusy, match="running someone else's code right now"):
        await runner.run_code("agent()", owner=None, session_id=session.id)
    assert "agent()" not in fake.codes
    # Nothing of the agent's runs: interrupt_session leaves the person's cell alone.
    assert await runner.sessions.interrupt(None, session.id) is False
    assert people.handles[0].interrupts == 0 and fake._running is not None
    release.set()
    await asyncio.wait(set(fake._tasks), timeout=10)  # the person's cell ends
    assert fake._running is None
    assert result_of(await runner.run_code("1 + 1", owner=None, session_id=session.id)) == "2"


# -- who may attach to what -------------------------------------------------------------------
async def test_attaching_needs_a_gateway_and_the_switch_on(tmp_path: Path, people: People) -> None:
    kernel_id, _ = people.start()
    for overrides, expected in [
        ({"gateway_url": None}, "attaching needs a gateway"),
        ({"allow_attach": "false"}, "KERNEL_MCP_ALLOW_ATTACH=false"),
        ({"token": "a:1,b:2"}, "only those KERNEL_MCP_ALLOW_ATTACH names"),
        ({"token": "a:1,b:2", "allow_attach": "b"}, "your principal may not attach"),
    ]:
        settings = settings_for(tmp_path, **overrides)
        runner = Runner(settings, backend=FakeBackend(), store=InProcessStore(), attacher=people)
        async with runner:
            with pytest.raises(InvalidArgument, match=expected):
                await runner.create_session(owner="a", kernel_id=kernel_id)
    named = settings_for(tmp_path, token="a:1,b:2", allow_attach="a")
    async with Runner(named, backend=FakeBackend(), store=InProcessStore(), attacher=people) as r:
        assert (await r.create_session(owner="a", kernel_id=kernel_id)).record.attached


async def test_one_session_per_kernel_and_another_principals_is_not_named(
    tmp_path: Path, people: People
) -> None:
    kernel_id, _ = people.start()
    settings = settings_for(tmp_path, token="a:1,b:2", allow_attach="a,b")
    async with Runner(
        settings, backend=FakeBackend(), store=InProcessStore(), attacher=people
    ) as runner:
        first = await runner.create_session(owner="a", name="mine", kernel_id=kernel_id)
        with pytest.raises(InvalidArgument, match=r"attached to kernel .* already"):
            await runner.create_session(owner="a", kernel_id=kernel_id)
        with pytest.raises(InvalidArgument, match="in use by another session") as refused:
            await runner.create_session(owner="b", kernel_id=kernel_id)
        assert first.id not in str(refused.value) and "mine" not in str(refused.value)
        with pytest.raises(InvalidArgument, match="kernel or kernel_id, not both"):
            await runner.create_session(owner="a", kernel="python3", kernel_id=str(uuid.uuid4()))


@pytest.mark.parametrize("text", ["", "abc", "../api/kernels", "1" * 40, "{x}"])
def test_a_kernel_id_must_be_a_uuid(text: str) -> None:
    with pytest.raises(InvalidArgument, match="is not a Jupyter kernel id"):
        kernel_id_of(text)


def test_a_kernel_id_is_canonical() -> None:
    raw = uuid.uuid4()
    assert kernel_id_of(raw.hex.upper()) == str(raw)


async def test_the_gateway_refuses_to_attach_to_a_kernel_it_started(tmp_path: Path) -> None:
    backend = GatewayBackend(settings_for(tmp_path))
    try:
        ours = str(uuid.uuid4())
        backend.started.add(ours)
        with pytest.raises(InvalidArgument, match="one kernel-mcp started itself"):
            await backend.attach(ours)
        with pytest.raises(InvalidArgument, match="is not a Jupyter kernel id"):
            await backend.attach("not-a-kernel")
    finally:
        await backend.close()


# -- the person's runs: never in the agent's replies, noted in the recording --------------
async def test_the_persons_messages_in_the_middle_of_a_run_never_reach_it(
    runner: Runner, people: People
) -> None:
    async def interleaved(request: Request) -> None:
        # The person's request, on the same kernel: everything it makes, between ours.
        fake, theirs = request.kernel, uuid.uuid4().hex
        fake.publish("status", theirs, execution_state="busy")
        fake.publish("stream", theirs, name="stdout", text="PERSON\n")
        request.stream("stdout", "AGENT\n")
        fake.publish("error", theirs, ename="ValueError", evalue="person", traceback=[])
        fake.publish("display_data", theirs, data={"text/plain": "PERSON"}, metadata={})
        fake.publish("status", theirs, execution_state="idle")
        fake.put("shell", "execute_reply", theirs, status="error", execution_count=99)
        request.result("'agent'")

    kernel_id, _ = people.start(interleaved)
    session = await runner.create_session(owner=None, kernel_id=kernel_id)
    outcome = await runner.run_code("agent()", owner=None, session_id=session.id)
    execution = outcome.execution
    assert execution.status == "ok"
    assert execution.execution_count == 4
    assert "PERSON" not in json.dumps(execution.outputs)
    assert [o["output_type"] for o in execution.outputs] == ["stream", "execute_result"]


async def test_the_recording_notes_what_ran_before_the_attach_and_in_between(
    runner: Runner, people: People
) -> None:
    kernel_id, fake = people.start()
    session = await runner.create_session(owner=None, name="joined", kernel_id=kernel_id)
    await runner.run_code("a = 1", owner=None, session_id=session.id)
    fake.execution_count += 2  # the person ran two cells in JupyterLab
    await runner.run_code("b = 2", owner=None, session_id=session.id)
    await runner.run_code("c = 3", owner=None, session_id=session.id)
    text = await runner.read_notebook(None, "sessions/joined")
    cells = [c for c in json.loads(text)["cells"] if "setup" not in c["metadata"]["kernel_mcp"]]
    notes = [c["metadata"]["kernel_mcp"].get("unrecorded") for c in cells]
    assert notes == [{"after": 0, "before": 4}, None, {"after": 4, "before": 7}, None, None]
    assert [c.get("execution_count") for c in cells] == [None, 4, None, 7, 8]
    assert "3 execution(s) ran in this kernel before this session attached" in cells[0]["source"]
    assert "between cells [4] and [7] (2 execution(s)" in cells[2]["source"]


async def test_a_call_of_the_agents_cut_off_before_its_reply_leaves_no_gap_note(
    runner: Runner, people: People
) -> None:
    release, began = asyncio.Event(), asyncio.Event()
    kernel_id, _ = people.start(fakes.scripted({"slow()": fakes.waits_for(release, started=began)}))
    session = await runner.create_session(owner=None, name="cut", kernel_id=kernel_id)
    await runner.run_code("a = 1", owner=None, session_id=session.id)
    slow = asyncio.ensure_future(runner.run_code("slow()", owner=None, session_id=session.id))
    await asyncio.wait_for(began.wait(), timeout=10)
    slow.cancel()  # the client went away: the run counted in the kernel, unrecorded
    with pytest.raises(asyncio.CancelledError):
        await slow
    await runner.run_code("b = 2", owner=None, session_id=session.id)
    text = await runner.read_notebook(None, "sessions/cut")
    cells = [c for c in json.loads(text)["cells"] if "setup" not in c["metadata"]["kernel_mcp"]]
    # The note of what ran before the attach, then the two runs: no note between them.
    assert [c["cell_type"] for c in cells] == ["markdown", "code", "code"]
    assert [c.get("execution_count") for c in cells] == [None, 4, 6]


def test_a_session_of_its_own_notes_only_gaps_after_its_first_cell() -> None:
    session = Session(SessionRecord(id="s", name="s", owner=None))

    def code(count: int | None) -> dict[str, Any]:
        return {"cell_type": "code", "execution_count": count, "source": "", "metadata": {}}

    assert noting_gaps(session, [code(5)]) == [code(5)]  # nothing known before
    assert noting_gaps(session, [code(6), code(7)]) == [code(6), code(7)]
    noted = noting_gaps(session, [code(9)])
    assert noted[0]["metadata"]["kernel_mcp"]["unrecorded"] == {"after": 7, "before": 9}
    # A cell without a count (its kernel died) forgets where the count was.
    assert noting_gaps(session, [code(None)]) == [code(None)]
    assert noting_gaps(session, [code(1)]) == [code(1)]
    assert session.record.execution_count == 1


def test_a_gap_note_is_a_valid_markdown_cell() -> None:
    import nbformat

    nb = nbformat.v4.new_notebook(cells=[gap_cell(2, 5)])
    nbformat.validate(nb)
    assert nb.cells[0].source.startswith("*Someone else ran code in this kernel")
