"""Specification of joining from JupyterLab: agent and person in one kernel.

A real ``jupyter server`` (what JupyterLab runs on), token-protected on loopback, is
kernel-mcp's gateway (``KERNEL_MCP_GATEWAY_URL`` and ``KERNEL_MCP_GATEWAY_TOKEN``).
The person is this test, as JupyterLab is: it starts kernels over the server's REST
API and runs code over its kernel WebSocket (JSON frames, no signature). The agent is
an MCP client of a kernel-mcp server subprocess.

Every test checks that the person's kernel outlived what the agent did (kernel-mcp
never stops one); at the end, once the person shut theirs down, nothing kernel-mcp
started may be left on the Jupyter server.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx2
import pytest
import websockets
from jupyter_client.jsonutil import json_default
from jupyter_client.session import Session as MessageFactory

from kernel_mcp.config import load_settings
from kernel_mcp.scale.gateway.backend import BorrowedProcess, GatewayBackend
from kernel_mcp.scale.gateway.protocol import GatewayClient
from tests.helpers import call, client_for, running_server, structured, text_of, wait_for
from tests.launchers import JupyterServer, ServerProcess, wait_until

pytestmark = pytest.mark.transport


class Notebook:
    """A person's notebook on a kernel of the Jupyter server, as JupyterLab drives one:
    REST to start it, the kernel WebSocket (one connection, its own session id) to run
    code. Collects each request's messages by its msg_id."""

    def __init__(self, jupyter: JupyterServer, kernel_id: str) -> None:
        self.jupyter = jupyter
        self.kernel_id = kernel_id
        self._factory = MessageFactory(username="person")
        self._ws: Any = None
        self._reader: asyncio.Task[None] | None = None
        self._messages: dict[str, list[dict[str, Any]]] = {}
        self._changed = asyncio.Event()

    @classmethod
    async def start(cls, jupyter: JupyterServer) -> Notebook:
        """A new kernel on the server, as a person opening a notebook starts one."""
        async with httpx2.AsyncClient(headers=headers(jupyter)) as http:
            response = await http.post(f"{jupyter.url}/api/kernels", json={"name": "python3"})
        assert response.status_code == 201, response.text
        return await cls(jupyter, response.json()["id"]).connect()

    async def connect(self) -> Notebook:
        ws_url = self.jupyter.url.replace("http://", "ws://")
        self._ws = await websockets.connect(
            f"{ws_url}/api/kernels/{self.kernel_id}/channels?session_id={uuid.uuid4().hex}",
            additional_headers=headers(self.jupyter),
            max_size=None,
        )
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        async for frame in self._ws:
            if isinstance(frame, bytes):
                continue  # binary buffers: none of this test's code makes any
            msg = json.loads(frame)
            parent = (msg.get("parent_header") or {}).get("msg_id")
            if parent:
                self._messages.setdefault(parent, []).append(msg)
                self._changed.set()

    async def send(self, msg_type: str, content: dict[str, Any], *, channel: str = "shell") -> str:
        """Send a request as JupyterLab does (a JSON frame, unsigned); returns its msg_id."""
        msg = self._factory.msg(msg_type, content)
        msg["channel"] = channel
        msg["buffers"] = []
        await self._ws.send(json.dumps(msg, default=json_default))
        return str(msg["header"]["msg_id"])

    async def send_code(self, code: str) -> str:
        """Send an execute_request for ``code``, as a notebook cell; returns its msg_id."""
        content = {
            "code": code,
            "silent": False,
            "store_history": True,
            "user_expressions": {},
            "allow_stdin": False,
            "stop_on_error": True,
        }
        return await self.send("execute_request", content)

    async def heard(self, text: str) -> None:
        """Wait until any client's request printed ``text`` (IOPub reaches every client)."""

        async def printed() -> bool:
            return any(text in stdout_of(ms) for ms in list(self._messages.values()))

        assert await wait_for(printed, timeout=60), f"nobody printed {text!r}"

    async def wait(self, msg_id: str, until: Any, timeout: float = 60.0) -> list[dict[str, Any]]:
        """The request's messages once ``until(messages)`` holds."""

        async def holds() -> bool:
            return bool(until(self._messages.get(msg_id, [])))

        assert await wait_for(holds, timeout=timeout), self._messages.get(msg_id)
        return self._messages[msg_id]

    async def run(self, code: str) -> tuple[dict[str, Any], str, str | None]:
        """Run ``code``: (execute_reply content, stdout, the result's text/plain)."""
        msg_id = await self.send_code(code)
        messages = await self.wait(msg_id, done)
        return reply_of(messages), stdout_of(messages), result_of(messages)

    async def close(self) -> None:
        if self._ws is not None:
            await self._ws.close()
        if self._reader is not None:
            await asyncio.gather(self._reader, return_exceptions=True)


def headers(jupyter: JupyterServer) -> dict[str, str]:
    return {"Authorization": f"token {jupyter.token}"}


def done(messages: list[dict[str, Any]]) -> bool:
    """The request has its reply and its idle status."""
    kinds = [(m["channel"], m["header"]["msg_type"]) for m in messages]
    idle = any(
        m["channel"] == "iopub"
        and m["header"]["msg_type"] == "status"
        and m["content"]["execution_state"] == "idle"
        for m in messages
    )
    return idle and ("shell", "execute_reply") in kinds


def reply_of(messages: list[dict[str, Any]]) -> dict[str, Any]:
    return next(m["content"] for m in messages if m["header"]["msg_type"] == "execute_reply")


def stdout_of(messages: list[dict[str, Any]]) -> str:
    return "".join(
        m["content"]["text"]
        for m in messages
        if m["header"]["msg_type"] == "stream" and m["content"]["name"] == "stdout"
    )


def result_of(messages: list[dict[str, Any]]) -> str | None:
    for m in messages:
        if m["header"]["msg_type"] == "execute_result":
            return str(m["content"]["data"]["text/plain"])
    return None


# -- the services ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def jupyter(tmp_path_factory: pytest.TempPathFactory) -> Iterator[JupyterServer]:
    server = JupyterServer(tmp_path_factory.mktemp("jupyter"))
    left: set[str] = set()
    try:
        server.start()
        yield server
        # Every kernel-mcp server has stopped (the agent's sessions' kernels deleted), and
        # the person shut their kernels down: nothing may be left.
        wait_until(lambda: not server.kernel_ids(), timeout=20, interval=0.1)
        left = server.kernel_ids()
    finally:
        survivors = server.close()
    assert not left, f"kernels left on the Jupyter server: {left}"
    assert not survivors, f"kernel processes outlived the Jupyter server: {survivors}"


@pytest.fixture(scope="module")
def agent(jupyter: JupyterServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """kernel-mcp with the person's Jupyter server as its gateway (one principal)."""
    with running_server(
        tmp_path_factory.mktemp("join-server"), KERNEL_MCP_POOL_SIZE="0", **jupyter.settings()
    ) as server:
        yield server


@pytest.fixture
async def notebook(jupyter: JupyterServer) -> AsyncIterator[Notebook]:
    """A person's notebook kernel, started on the Jupyter server; checked to outlive
    everything the agent did, then shut down by the person."""
    person = await Notebook.start(jupyter)
    try:
        yield person
    finally:
        await person.close()
        async with httpx2.AsyncClient(headers=headers(jupyter)) as http:
            await http.delete(f"{jupyter.url}/api/kernels/{person.kernel_id}")


async def attach(client: Any, kernel_id: str, **more: Any) -> dict[str, Any]:
    result = await call(client, "create_session", kernel_id=kernel_id, **more)
    assert not result.is_error, text_of(result)
    return structured(result)


async def run_code(client: Any, session_id: str, code: str) -> dict[str, Any]:
    result = await call(client, "run_code", code=code, session_id=session_id)
    assert not result.is_error, text_of(result)
    return structured(result)


def recording(server: ServerProcess, name: str) -> dict[str, Any]:
    path = Path(server.env["KERNEL_MCP_NOTEBOOKS_DIR"]) / "sessions" / f"{name}.ipynb"
    return dict(json.loads(path.read_text()))


# -- agent and person in one kernel -----------------------------------------------------------
async def test_the_agent_attaches_to_the_persons_kernel_sees_its_variables_and_detaches(
    agent: ServerProcess, jupyter: JupyterServer, notebook: Notebook
) -> None:
    reply, _, _ = await notebook.run("data = [1, 2, 3]\nwho = 'person'")
    assert reply["status"] == "ok"
    async with client_for("mcp", agent) as client:
        session = await attach(client, notebook.kernel_id, name="joined")
        assert session["kernel_id"] == notebook.kernel_id
        assert session["attached"] is True
        assert session["backend"] == "gateway"
        seen = await run_code(client, session["session_id"], "who, sum(data)")
        assert seen["status"] == "ok"
        assert seen["result"] == "('person', 6)"
        await run_code(client, session["session_id"], "agent_note = 'set by the agent'")
        _, _, result = await notebook.run("agent_note")
        assert result == "'set by the agent'"

        closed = structured(await call(client, "close_session", session_id=session["session_id"]))
        assert closed["action"] == "detached"
        assert notebook.kernel_id in closed["message"]

    # The recording says what ran before the session attached.
    cells = [c for c in recording(agent, "joined")["cells"] if c["cell_type"] == "markdown"]
    assert [c["metadata"]["kernel_mcp"]["unrecorded"] for c in cells] == [{"after": 0, "before": 2}]
    # The person's kernel still runs, with everyone's state.
    assert jupyter.has_kernel(notebook.kernel_id)
    reply, _, result = await notebook.run("who, data, agent_note")
    assert reply["status"] == "ok"
    assert result == "('person', [1, 2, 3], 'set by the agent')"
    # Detaching ended the session: its id says it was closed.
    async with client_for("mcp", agent) as client:
        gone = await call(client, "run_code", code="1", session_id=session["session_id"])
    assert gone.is_error and "closed" in text_of(gone)
    assert jupyter.has_kernel(notebook.kernel_id)


async def test_the_person_sees_the_agents_variables_in_the_agents_session_kernel(
    agent: ServerProcess, jupyter: JupyterServer
) -> None:
    async with client_for("mcp", agent) as client:
        session = structured(await call(client, "create_session"))
        assert session["attached"] is False
        await run_code(client, session["session_id"], "shared = 41")
        # It is among the Jupyter server's running kernels, where a notebook can join it.
        assert session["kernel_id"] in jupyter.kernel_ids()
        person = await Notebook(jupyter, session["kernel_id"]).connect()
        try:
            reply, _, result = await person.run("shared + 1")
            assert reply["status"] == "ok" and result == "42"
        finally:
            await person.close()
        closed = structured(await call(client, "close_session", session_id=session["session_id"]))
        assert closed["action"] == "closed"
    # The agent's own kernel is kernel-mcp's: closing the session shuts it down.
    assert await wait_for(
        lambda: asyncio.to_thread(lambda: not jupyter.has_kernel(session["kernel_id"]))
    )


def waits_for(flag: Path) -> str:
    return f"import os, time\nwhile not os.path.exists({str(flag)!r}):\n    time.sleep(0.02)\n"


async def test_the_persons_runs_never_reach_the_agents_replies_and_the_recording_notes_them(
    agent: ServerProcess, notebook: Notebook, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    async with client_for("mcp", agent) as client:
        session = await attach(client, notebook.kernel_id, name="interleaved")
        session_id = session["session_id"]
        agent_call = asyncio.ensure_future(
            call(
                client,
                "run_code",
                code=f"print('AGENT-ONE', flush=True)\n{waits_for(flag)}'agent-done'",
                session_id=session_id,
            )
        )
        # While the agent's cell runs, the person asks the kernel for its info on the
        # control channel (its busy and idle statuses come in the middle of the agent's
        # run) and queues a cell of their own behind the agent's.
        await notebook.heard("AGENT-ONE")
        info = await notebook.send("kernel_info_request", {}, channel="control")
        await notebook.wait(info, lambda ms: any(m["channel"] == "control" for m in ms))
        queued = await notebook.send_code("print('PERSON-QUEUED')\nqueued = 1")
        flag.touch()
        first = await agent_call
        assert not first.is_error, text_of(first)
        assert structured(first)["stdout"] == "AGENT-ONE\n"
        assert structured(first)["result"] == "'agent-done'"
        assert "PERSON" not in text_of(first)
        assert stdout_of(await notebook.wait(queued, done)) == "PERSON-QUEUED\n"

        # The person runs a cell between the agent's calls; its output reaches the agent's
        # connection too, and must not surface in the next reply.
        reply, out, _ = await notebook.run("print('PERSON-BETWEEN')\nbetween = 1")
        assert reply["status"] == "ok" and out == "PERSON-BETWEEN\n"
        second = await run_code(client, session_id, "print('AGENT-TWO')\nqueued + between")
        assert second["stdout"] == "AGENT-TWO\n" and second["result"] == "2"
        await call(client, "close_session", session_id=session_id)

    nb = recording(agent, "interleaved")
    cells = [c for c in nb["cells"] if not c["metadata"].get("kernel_mcp", {}).get("setup")]
    kinds = [(c["cell_type"], c.get("execution_count")) for c in cells]
    assert kinds == [("code", 1), ("markdown", None), ("code", 4)], kinds
    assert cells[1]["metadata"]["kernel_mcp"]["unrecorded"] == {"after": 1, "before": 4}
    assert "Someone else ran code in this kernel between cells [1] and [4]" in cells[1]["source"]
    assert "PERSON" not in json.dumps(nb)


async def test_the_agent_never_queues_behind_the_persons_running_cell(
    agent: ServerProcess, notebook: Notebook, tmp_path: Path
) -> None:
    flag = tmp_path / "go"
    async with client_for("mcp", agent) as client:
        session = await attach(client, notebook.kernel_id)
        session_id = session["session_id"]
        running = await notebook.send_code(f"{waits_for(flag)}long_done = True")

        async def state() -> str:
            listed = structured(await call(client, "list_sessions"))["sessions"]
            return str(next(s["state"] for s in listed if s["session_id"] == session_id))

        # list_sessions shows the person's running cell as busy, and a call is refused
        # at once, not queued behind it (its time limit would interrupt their cell).
        assert await wait_for(lambda: _is(state(), "busy"))
        refused = await call(client, "run_code", code="print('AGENT')", session_id=session_id)
        assert refused.is_error
        assert "running someone else's code right now" in text_of(refused)
        idle = structured(await call(client, "interrupt_session", session_id=session_id))
        assert idle["action"] == "idle" and "not interrupted" in idle["message"]
        # Attached while their cell runs: the same (the server said busy at the attach).
        await call(client, "close_session", session_id=session_id)
        session_id = (await attach(client, notebook.kernel_id))["session_id"]
        assert await wait_for(lambda: _is(state(), "busy"))
        again = await call(client, "run_code", code="print('AGENT')", session_id=session_id)
        assert again.is_error and "running someone else's code" in text_of(again)
        flag.touch()
        reply = reply_of(await notebook.wait(running, done))
        assert reply["status"] == "ok", reply  # their cell was not interrupted
        assert await wait_for(lambda: _is(state(), "idle"))
        after = await run_code(client, session_id, "long_done")
        assert after["result"] == "True"
        await call(client, "close_session", session_id=session_id)


async def _is(value: Any, expected: str) -> bool:
    return bool(await value == expected)


async def test_the_persons_output_is_dropped_on_arrival_on_the_agents_connection(
    jupyter: JupyterServer, notebook: Notebook, tmp_path: Path
) -> None:
    settings = load_settings(
        projects_dir=tmp_path, gateway_url=jupyter.url, gateway_token=jupyter.token, pool_size=0
    )
    backend = GatewayBackend(settings)
    try:
        kernel = await backend.attach(notebook.kernel_id)
        assert isinstance(kernel.process, BorrowedProcess)
        assert isinstance(kernel.client, GatewayClient)
        reply, out, _ = await notebook.run("for i in range(100):\n    print('PERSON', i)")
        assert reply["status"] == "ok" and out.count("PERSON") == 100
        # The kernel runs requests in order: by our reply, the person's messages have
        # all reached our connection, and none was kept.
        ours = await kernel.execute("print('AGENT')", timeout=30, grace=1)
        assert ours.status == "ok" and ours.outputs[0]["text"] == "AGENT\n"
        assert len(ours.outputs) == 1
        assert kernel.client.foreign >= 3  # busy, execute_input, streams, idle
        await kernel.shutdown(now=True)  # lets go only
    finally:
        await backend.close()
    assert jupyter.has_kernel(notebook.kernel_id)
    reply, _, _ = await notebook.run("1")
    assert reply["status"] == "ok"


# -- who may attach to what -------------------------------------------------------------------
async def refusal(client: Any, kernel_id: str) -> str:
    result = await call(client, "create_session", kernel_id=kernel_id)
    assert result.is_error, result
    return text_of(result)


async def test_attaching_refuses_a_bad_id_a_missing_kernel_a_taken_one_and_its_own(
    agent: ServerProcess, notebook: Notebook
) -> None:
    async with client_for("mcp", agent) as client:
        assert "is not a Jupyter kernel id" in await refusal(client, "../../api/kernels")
        missing = str(uuid.uuid4())
        assert f"has no kernel {missing}" in await refusal(client, missing)

        first = await attach(client, notebook.kernel_id.upper())  # canonical form
        assert first["kernel_id"] == notebook.kernel_id
        assert "is attached to kernel" in await refusal(client, notebook.kernel_id)

        own = structured(await call(client, "create_session"))
        assert "which kernel-mcp started" in await refusal(client, own["kernel_id"])

        restart = await call(client, "restart_session", session_id=first["session_id"])
        assert restart.is_error and "does not restart it" in text_of(restart)
        for session in (first, own):
            await call(client, "close_session", session_id=session["session_id"])
    # The person's kernel is still there (the restart was refused, close detached).
    reply, _, _ = await notebook.run("1")
    assert reply["status"] == "ok"


async def test_attaching_is_refused_when_turned_off_and_without_a_gateway(
    jupyter: JupyterServer, notebook: Notebook, tmp_path: Path
) -> None:
    with running_server(
        tmp_path / "off",
        KERNEL_MCP_POOL_SIZE="0",
        KERNEL_MCP_ALLOW_ATTACH="false",
        **jupyter.settings(),
    ) as off:
        async with client_for("mcp", off) as client:
            text = await refusal(client, notebook.kernel_id)
    assert "KERNEL_MCP_ALLOW_ATTACH=false" in text
    with running_server(tmp_path / "local", KERNEL_MCP_POOL_SIZE="0") as local:
        async with client_for("mcp", local) as client:
            text = await refusal(client, notebook.kernel_id)
    assert "attaching needs a gateway" in text and "local kernels" in text
    assert jupyter.has_kernel(notebook.kernel_id)


async def test_with_several_principals_only_those_named_attach_and_never_to_a_taken_kernel(
    jupyter: JupyterServer, notebook: Notebook, tmp_path: Path
) -> None:
    tokens = {name: f"{name}-{uuid.uuid4().hex}" for name in ("alice", "bob", "carol")}
    with running_server(
        tmp_path / "principals",
        KERNEL_MCP_POOL_SIZE="0",
        KERNEL_MCP_TOKEN=",".join(f"{n}:{t}" for n, t in tokens.items()),
        KERNEL_MCP_ALLOW_ATTACH="alice,bob",
        **jupyter.settings(),
    ) as server:
        async with client_for("mcp", server, auth=tokens["carol"]) as carol:
            assert "may not attach" in await refusal(carol, notebook.kernel_id)
        async with client_for("mcp", server, auth=tokens["alice"]) as alice:
            session = await attach(alice, notebook.kernel_id)
            async with client_for("mcp", server, auth=tokens["bob"]) as bob:
                text = await refusal(bob, notebook.kernel_id)
            assert "in use by another session" in text
            assert session["session_id"] not in text and "alice" not in text
            await call(alice, "close_session", session_id=session["session_id"])
    assert jupyter.has_kernel(notebook.kernel_id)
