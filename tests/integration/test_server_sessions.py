"""Sessions over every real transport and protocol era.

In the 2026-07-28 era there is no MCP session: each request stands alone. A
session id minted by create_session and passed as an argument must therefore
keep state in every era alike.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
from pathlib import Path

import pytest
from mcp.shared.exceptions import MCPError

from tests.helpers import call, structured, text_of, wait_for

pytestmark = pytest.mark.transport


async def new_session(client, name=None):
    arguments = {"name": name} if name else {}
    result = await call(client, "create_session", **arguments)
    assert not result.is_error, text_of(result)
    return structured(result)["session_id"]


@contextlib.asynccontextmanager
async def session(client, name=None):
    session_id = await new_session(client, name)
    try:
        yield session_id
    finally:
        await call(client, "close_session", session_id=session_id)


async def test_state_persists_across_calls(client):
    async with session(client) as sid:
        ran = structured(
            await call(client, "run_python", file_name="main_check.py", session_id=sid)
        )
        assert ran["status"] == "ok" and ran["session_id"] == sid
        # Like %run: the file's top-level names stay defined in the session.
        assert (
            structured(await call(client, "run_code", code="answer", session_id=sid))["result"]
            == "42"
        )
        await call(client, "run_code", code="import math\ndata = [1, 2, 3]", session_id=sid)
        report = structured(
            await call(client, "run_code", code="math.fsum(data) + answer", session_id=sid)
        )
        assert report["result"] == "48.0"
        assert report["execution_count"] == 4


async def test_twenty_concurrent_sessions_do_not_cross_talk(client):
    ids = await asyncio.gather(*(new_session(client) for _ in range(20)))
    assert len(set(ids)) == 20
    try:
        await asyncio.gather(
            *(
                call(client, "run_code", code=f"mine = {i}", session_id=sid)
                for i, sid in enumerate(ids)
            )
        )
        results = await asyncio.gather(
            *(call(client, "run_code", code="mine", session_id=sid) for sid in ids)
        )
        assert [structured(r)["result"] for r in results] == [str(i) for i in range(20)]
    finally:
        await asyncio.gather(*(call(client, "close_session", session_id=sid) for sid in ids))


async def test_calls_on_one_session_are_serialised_in_arrival_order(client, server):
    gate = Path(server.env["PYTHON_PROJECTS_DIR"]) / f"gate-{client.kind}"
    gate.unlink(missing_ok=True)
    async with session(client) as sid:
        await call(client, "run_code", code="import os, time\nlog = []", session_id=sid)
        step = "t0 = time.monotonic(); time.sleep(0.3); log.append(({tag!r}, t0, time.monotonic()))"
        # "a" holds the kernel until the test has sent "b" and "c".
        hold = f"while not os.path.exists({gate.name!r}): time.sleep(0.01)\n" + step

        async def busy() -> bool:
            listed = structured(await call(client, "list_sessions"))["sessions"]
            return any(s["session_id"] == sid and s["state"] == "busy" for s in listed)

        first = asyncio.ensure_future(
            call(client, "run_code", code=hold.format(tag="a"), session_id=sid, timeout=60)
        )
        assert await wait_for(busy, timeout=20)
        second = asyncio.ensure_future(
            call(client, "run_code", code=step.format(tag="b"), session_id=sid)
        )
        await asyncio.sleep(0)  # let "b" go out before "c"
        third = asyncio.ensure_future(
            call(client, "run_code", code=step.format(tag="c"), session_id=sid)
        )
        await asyncio.sleep(0)
        gate.touch()
        await asyncio.gather(first, second, third)
        log = json.loads(
            structured(
                await call(
                    client, "run_code", code="import json; print(json.dumps(log))", session_id=sid
                )
            )["stdout"]
        )
        assert [entry[0] for entry in log] == ["a", "b", "c"]
        for earlier, later in itertools.pairwise(log):
            assert earlier[2] <= later[1], "two calls overlapped in one kernel"


async def test_interrupt_stops_the_call_and_keeps_state(client, server):
    # The cell says it runs through a file in the projects folder (a sandboxed kernel's
    # /tmp is its own): an interrupt sent before the kernel runs the cell would be
    # spent on an idle kernel, or (sent just before, arriving just after) end the
    # call before the test looks.
    marker = Path(server.env["PYTHON_PROJECTS_DIR"]) / f"running-{client.kind}"
    marker.unlink(missing_ok=True)
    async with session(client) as sid:
        await call(client, "run_code", code="kept = 'yes'", session_id=sid)
        running = asyncio.ensure_future(
            call(
                client,
                "run_code",
                code=f"import pathlib, time\npathlib.Path({marker.name!r}).touch()\n"
                "while True: time.sleep(0.05)",
                session_id=sid,
                timeout=60,
            )
        )

        async def started() -> bool:
            return marker.exists()

        assert await wait_for(started, timeout=20)
        reply = structured(await call(client, "interrupt_session", session_id=sid))
        assert reply["action"] == "interrupted"
        result = await asyncio.wait_for(running, timeout=20)
        assert structured(result)["status"] == "interrupted"
        assert "Interrupted" in text_of(result)
        assert (
            structured(await call(client, "run_code", code="kept", session_id=sid))["result"]
            == "'yes'"
        )


async def test_restart_clears_state(client):
    async with session(client) as sid:
        await call(client, "run_code", code="gone = 1", session_id=sid)
        restarted = structured(await call(client, "restart_session", session_id=sid))
        assert restarted["action"] == "restarted"
        report = structured(await call(client, "run_code", code="'gone' in dir()", session_id=sid))
        assert report["result"] == "False"


async def test_close_ends_the_session(client):
    sid = await new_session(client, None)
    closed = structured(await call(client, "close_session", session_id=sid))
    assert closed["action"] == "closed"
    after = await call(client, "run_code", code="1", session_id=sid)
    assert after.is_error
    assert "was closed" in text_of(after)
    listed = structured(await call(client, "list_sessions"))["sessions"]
    assert sid not in {s["session_id"] for s in listed}


async def test_unknown_session_is_a_clear_error(client):
    result = await call(client, "run_code", code="1", session_id="not-a-session")
    assert result.is_error
    assert "Unknown session" in text_of(result)


async def test_list_sessions_reports_each_session(client):
    async with session(client, name=f"named-{client.kind}") as sid:
        await call(client, "run_code", code="x = 1", session_id=sid)
        listed = structured(await call(client, "list_sessions"))
        mine = next(s for s in listed["sessions"] if s["session_id"] == sid)
        assert mine["name"] == f"named-{client.kind}"
        assert mine["state"] == "idle"
        assert mine["runs"] == 1
        assert mine["kernel_memory_mb"] > 10
        assert mine["created_at"] <= mine["last_used"]


async def test_dead_kernel_is_replaced_with_a_note(client):
    async with session(client) as sid:
        await call(client, "run_code", code="lost = 1", session_id=sid)
        died = structured(await call(client, "run_python", file_name="exit3.py", session_id=sid))
        assert died["status"] == "kernel_died"
        result = await call(client, "run_code", code="'lost' in dir()", session_id=sid)
        report = structured(result)
        assert report["status"] == "ok" and report["result"] == "False"
        assert any("state was lost" in note for note in report["notes"])


async def test_client_cancel_interrupts_and_keeps_the_session(client):
    async with session(client) as sid:
        await call(client, "run_code", code="survivor = 7", session_id=sid)
        # The client gives up; a cancel reaches the server.
        with pytest.raises((MCPError, TimeoutError)):
            await client.call_tool(
                "run_code",
                {"code": "while True: pass", "session_id": sid, "timeout": 120},
                timeout=1.5,
            )
        # Were the loop still running, this would wait for its 120 s timeout.
        report = structured(
            await asyncio.wait_for(
                call(client, "run_code", code="survivor * 6", session_id=sid), timeout=30
            )
        )
        assert report["status"] == "ok"
        assert report["result"] == "42"


async def test_progress_reports_the_latest_output_line(client):
    messages: list[str] = []

    async def on_progress(progress, total, message):
        messages.append(message or "")

    async with session(client) as sid:
        result = await client.call_tool(
            "run_code",
            {
                "code": "import time\nfor i in range(1, 9):\n    print(f'step {i}', flush=True)\n"
                "    time.sleep(0.35)",
                "session_id": sid,
            },
            progress_handler=on_progress,
        )
        assert result.structured_content["stdout"].count("step") == 8
    assert messages, "no progress notification arrived"
    assert all(m.startswith("step ") for m in messages if m)
    assert len(messages) <= 4  # at most about one a second over ~2.8 s
