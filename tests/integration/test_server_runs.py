"""Runs that outlive a call, over real transports in both protocol eras.

A background run replies at once; get_run follows it with incremental output
and gives its full reply at the end, even when the run takes longer than the
client's own request timeout. cancel_run stops it; runs belong to their
principal; a run a restart cut off says it was lost; a finished one is dropped
after its retention and says when.
"""

from __future__ import annotations

import asyncio
import signal
import time
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import call, client_for, running_server, structured, text_of, wait_for

pytestmark = pytest.mark.transport

TOKEN_A, TOKEN_B = "alice-token-runs", "bob-token-runs"
TICKER = (
    "import time\n"
    "for i in range({n}):\n"
    "    print('tick', i, flush=True)\n"
    "    time.sleep({pause})\n"
    "'finished'\n"
)


@pytest.fixture(scope="module")
def runs_server(tmp_path_factory: pytest.TempPathFactory):
    with running_server(
        tmp_path_factory.mktemp("runs"),
        KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}",
        KERNEL_MCP_RUN_RETENTION="600",
    ) as server:
        yield server


async def follow(client: Any, run_id: str, *, wait_s: float = 3.0) -> tuple[list[str], dict]:
    """Poll a run to its end; the output chunks seen, and the last view."""
    chunks: list[str] = []
    since = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        view = structured(await call(client, "get_run", run_id=run_id, wait_s=wait_s, since=since))
        if view["output"]:
            chunks.append(view["output"])
        assert view["next"] >= since
        since = view["next"]
        if view["done"]:
            return chunks, view
    raise AssertionError("the run never finished")


@pytest.mark.parametrize("kind", ["mcp", "mcp-legacy"])
async def test_a_run_longer_than_the_clients_request_timeout_is_followed_to_its_end(
    runs_server, kind
):
    # The client gives up on any single request after 5 s; the run takes about 20 s.
    async with client_for(kind, runs_server, auth=TOKEN_A, timeout=5) as client:
        started = await call(
            client, "run_code", code=TICKER.format(n=20, pause=1.0), background=True, timeout=60
        )
        report = structured(started)
        assert report["status"] == "running" and report["run_id"].startswith("run-")
        assert not started.is_error
        chunks, last = await follow(client, report["run_id"])
    # Incremental: several polls each brought new lines, and together every line once.
    assert len([c for c in chunks if "tick" in c]) >= 3
    assert "".join(chunks) == "".join(f"tick {i}\n" for i in range(20))
    assert last["status"] == "ok" and last["result"]["result"] == "'finished'"
    assert last["result"]["stdout"].count("tick") == 20
    assert last["elapsed_s"] >= 19


async def test_cancel_run_interrupts_and_a_session_keeps_its_state(runs_server):
    async with client_for("mcp", runs_server, auth=TOKEN_A) as client:
        sid = structured(await call(client, "create_session"))["session_id"]
        try:
            await call(client, "run_code", code="kept = 41", session_id=sid)
            run_id = structured(
                await call(
                    client,
                    "run_code",
                    code=TICKER.format(n=10_000, pause=0.05),
                    session_id=sid,
                    background=True,
                )
            )["run_id"]

            async def ticking() -> bool:
                view = structured(await call(client, "get_run", run_id=run_id, wait_s=1))
                return "tick" in view["output"]

            assert await wait_for(ticking, timeout=30)
            # The session is busy with the run: list_sessions says which.
            listed = structured(await call(client, "list_sessions"))["sessions"]
            mine = next(s for s in listed if s["session_id"] == sid)
            assert mine["state"] == "busy" and mine["run_id"] == run_id
            # A call on the session waits its turn behind the run, then runs.
            mark = structured(await call(client, "get_run", run_id=run_id))["next"]
            queued = asyncio.ensure_future(
                call(client, "run_code", code="kept + 1", session_id=sid)
            )

            async def ticked_on() -> bool:
                # The run keeps printing (five ticks after the queued call was sent)...
                view = structured(await call(client, "get_run", run_id=run_id, since=mark))
                return view["output"].count("tick") >= 5

            assert await wait_for(ticked_on, timeout=30)
            assert not queued.done()  # ...while the queued call still waits its turn
            cancelled = structured(await call(client, "cancel_run", run_id=run_id))
            assert cancelled["status"] == "cancelled" and cancelled["done"]
            after = structured(await asyncio.wait_for(queued, 60))
            assert after["result"] == "42", after  # the interrupt was obeyed: state kept
            listed = structured(await call(client, "list_runs"))["runs"]
            assert any(r["run_id"] == run_id and r["status"] == "cancelled" for r in listed)
        finally:
            await call(client, "close_session", session_id=sid)


async def test_runs_belong_to_their_principal(runs_server):
    async with (
        client_for("mcp", runs_server, auth=TOKEN_A) as alice,
        client_for("mcp-legacy", runs_server, auth=TOKEN_B) as bob,
    ):
        run_id = structured(await call(alice, "run_code", code="1 + 1", background=True))["run_id"]
        foreign = await call(bob, "get_run", run_id=run_id)
        unknown = await call(bob, "get_run", run_id="run-no-such-run")
        assert foreign.is_error and unknown.is_error
        assert text_of(foreign).replace(run_id, "X") == text_of(unknown).replace(
            "run-no-such-run", "X"
        )
        assert (await call(bob, "cancel_run", run_id=run_id)).is_error
        assert run_id not in {r["run_id"] for r in structured(await call(bob, "list_runs"))["runs"]}
        _, last = await follow(alice, run_id)
        assert last["result"]["result"] == "2"


async def test_a_background_run_has_its_own_time_limit(runs_server):
    async with client_for("mcp", runs_server, auth=TOKEN_A) as client:
        # PYTHON_MAX_TIMEOUT is 600 s; a background run may ask for more.
        report = structured(
            await call(client, "run_code", code="'quick'", background=True, timeout=3600)
        )
        _, last = await follow(client, report["run_id"])
        assert last["result"]["timeout_s"] == 3600
        capped = structured(await call(client, "run_code", code="'x'", timeout=3600))
        assert capped["timeout_s"] == 600 and any(
            "PYTHON_MAX_TIMEOUT" in n for n in capped["notes"]
        )


async def test_a_notebook_runs_in_the_background(runs_server):
    projects = Path(runs_server.env["PYTHON_PROJECTS_DIR"])
    assert (projects / "report.ipynb").exists()
    async with client_for("mcp", runs_server, auth=TOKEN_A) as client:
        # Two principals: each has a projects folder of its own.
        source = (projects / "report.ipynb").read_text()
        await call(client, "write_file", path="report.ipynb", content=source, overwrite=True)
        started = structured(
            await call(
                client,
                "run_notebook",
                notebook_path="report.ipynb",
                background=True,
                parameters={"n": 3},
            )
        )
        assert started["status"] == "running"
        _, last = await follow(client, started["run_id"])
        assert last["status"] == "ok" and last["result"]["notebook"] == "report.ipynb"
        assert "squares [1, 4, 9]" in last["output"] or last["result"]["cells"]


def test_a_run_lost_to_a_restart_is_reported_lost(tmp_path):
    async def start_one(server) -> str:
        async with client_for("mcp", server) as client:
            return structured(
                await call(client, "run_code", code="import time\ntime.sleep(600)", background=True)
            )["run_id"]

    async def look(server, run_id: str) -> Any:
        async with client_for("mcp", server) as client:
            return await call(client, "get_run", run_id=run_id)

    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1") as server:
        run_id = asyncio.run(start_one(server))
        server.stop(signal.SIGKILL)
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="0") as server:
        result = asyncio.run(look(server, run_id))
    view = structured(result)
    assert result.is_error and view["status"] == "lost" and view["done"]
    assert "restarted" in " ".join(view["notes"])


def test_a_finished_run_is_dropped_after_its_retention(tmp_path):
    async def scenario(server) -> dict:
        async with client_for("mcp", server) as client:
            run_id = structured(await call(client, "run_code", code="1", background=True))["run_id"]
            _, last = await follow(client, run_id)
            assert last["status"] == "ok"

            async def dropped() -> bool:
                return structured(await call(client, "get_run", run_id=run_id))["status"] == (
                    "dropped"
                )

            assert await wait_for(dropped, timeout=20)
            return structured(await call(client, "get_run", run_id=run_id))

    with running_server(tmp_path, KERNEL_MCP_RUN_RETENTION="1", KERNEL_MCP_POOL_SIZE="1") as srv:
        view = asyncio.run(scenario(srv))
    assert "KERNEL_MCP_RUN_RETENTION" in " ".join(view["notes"])
