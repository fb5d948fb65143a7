"""runs.py without kernels: the run registry, its logs, input requests, retention and restarts.

The work a run does is a plain coroutine here; the transport tests
(test_server_runs.py) run real kernels through the same registry.
"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest

from kernel_mcp.errors import RunGone, RunNotFound
from kernel_mcp.runner.questions import Question
from kernel_mcp.runner.runs import RunHooks, RunLog, RunRegistry


@pytest.fixture
async def registry(tmp_path: Path):
    runs = RunRegistry(retention=60, markers=tmp_path / ".runs")
    await runs.start()
    yield runs
    await runs.close()


def test_a_log_gives_each_character_once_from_an_offset():
    log = RunLog()
    log.add("hello ")
    text, next_offset, missed = log.read(0, 100)
    assert (text, next_offset, missed) == ("hello ", 6, 0)
    log.add("world\n")
    assert log.read(next_offset, 100) == ("world\n", 12, 0)
    assert log.read(12, 100) == ("", 12, 0)
    assert log.read(0, 3) == ("hel", 3, 0)  # a limit leaves the rest for the next read
    assert log.read(999, 10) == ("", 12, 0)  # past the end: nothing, and the end


def test_a_log_trims_its_oldest_text_and_says_how_much_a_reader_missed():
    log = RunLog(limit=10)
    for chunk in ("aaaa", "bbbb", "cccc", "dddd"):
        log.add(chunk)
    text, next_offset, missed = log.read(0, 100)
    assert missed > 0 and text.endswith("dddd") and next_offset == 16
    assert missed + len(text) == 16


async def test_a_run_goes_on_after_its_caller_and_reports_output_as_it_comes(registry):
    release = asyncio.Event()

    async def work(hooks: RunHooks) -> str:
        hooks.output("stdout", "first\n")
        await release.wait()
        hooks.output("stdout", "second\n")
        return "outcome"

    run = registry.start_run(
        owner="alice", tool="run_code", label="code", session_id=None, background=True, work=work
    )
    assert await run.changed(5) or run.log.end > 0
    assert run.state == "running" and run.log.read(0, 100)[0] == "first\n"
    release.set()
    while not run.done:
        await run.changed(5)
    assert run.state == "done" and run.outcome == "outcome"
    assert run.log.read(6, 100)[0] == "second\n"


async def test_runs_belong_to_their_owner(registry):
    async def work(hooks: RunHooks) -> None:
        return None

    run = registry.start_run(
        owner="alice", tool="run_code", label="code", session_id=None, background=True, work=work
    )
    assert registry.get("alice", run.id) is run
    with pytest.raises(RunNotFound) as foreign:
        registry.get("bob", run.id)
    with pytest.raises(RunNotFound) as unknown:
        registry.get("bob", "run-does-not-exist")
    # A foreign id reads exactly like an unknown one.
    assert str(foreign.value).replace(run.id, "X") == str(unknown.value).replace(
        "run-does-not-exist", "X"
    )
    assert [r.id for r in registry.owned("alice")] == [run.id] and registry.owned("bob") == []


async def test_an_input_request_waits_for_its_answer(registry):
    async def work(hooks: RunHooks) -> str | None:
        return await hooks.ask(Question("name?", False, "a fresh run", "run_code"))

    run = registry.start_run(
        owner=None, tool="run_code", label="code", session_id=None, background=False, work=work
    )
    while run.pending_input is None:
        await run.changed(5)
    assert run.state == "waiting_input" and run.pending_input.prompt == "name?"
    run.pending_input.answer.set_result("bob")
    while not run.done:
        await run.changed(5)
    assert run.outcome == "bob" and run.pending_input is None


async def test_cancel_stops_a_run_and_answers_its_pending_input(registry):
    started = asyncio.Event()

    async def work(hooks: RunHooks) -> None:
        started.set()
        await asyncio.sleep(3600)

    run = registry.start_run(
        owner=None, tool="run_code", label="code", session_id=None, background=True, work=work
    )
    await started.wait()
    await registry.cancel(run)
    assert run.state == "cancelled" and run.done


async def test_a_failure_is_kept_on_the_run(registry):
    from kernel_mcp.errors import KernelStartFailed

    async def work(hooks: RunHooks) -> None:
        raise KernelStartFailed("no kernel today")

    run = registry.start_run(
        owner=None, tool="run_code", label="code", session_id=None, background=True, work=work
    )
    while not run.done:
        await run.changed(5)
    assert run.state == "failed" and run.failure == "no kernel today"


async def test_finished_runs_are_dropped_after_their_retention_and_say_when(tmp_path):
    now = [100.0]
    registry = RunRegistry(retention=60, markers=tmp_path / ".runs", clock=lambda: now[0])

    async def work(hooks: RunHooks) -> int:
        now[0] += 2.5
        return 1

    run = registry.start_run(
        owner="alice", tool="run_code", label="code", session_id=None, background=True, work=work
    )
    while not run.done:
        await run.changed(5)
    assert run.elapsed_s == 2.5
    now[0] += 59.0
    registry.reap()
    assert registry.get("alice", run.id) is run, "kept for its retention"
    now[0] += 1.0
    registry.reap()
    with pytest.raises(RunGone) as gone:
        registry.get("alice", run.id)
    assert gone.value.kind == "dropped" and "KERNEL_MCP_RUN_RETENTION" in str(gone.value)
    with pytest.raises(RunNotFound):
        registry.get("bob", run.id)


async def test_a_run_the_previous_process_never_finished_is_reported_lost(tmp_path):
    markers = tmp_path / ".runs"
    markers.mkdir()
    (markers / "run-old.json").write_text(
        json.dumps(
            {"id": "run-old", "owner": None, "started": "2026-01-01T00:00:00+00:00", "ended": False}
        )
    )
    registry = RunRegistry(retention=60, markers=markers)
    await registry.start()
    try:
        with pytest.raises(RunGone) as gone:
            registry.get(None, "run-old")
        assert gone.value.kind == "lost" and "restarted" in str(gone.value)
    finally:
        await registry.close()


async def test_close_cancels_running_runs_and_leaves_markers_saying_so(tmp_path):
    markers = tmp_path / ".runs"
    registry = RunRegistry(retention=60, markers=markers)
    await registry.start()

    async def work(hooks: RunHooks) -> None:
        await asyncio.sleep(3600)

    run = registry.start_run(
        owner=None, tool="run_code", label="code", session_id=None, background=True, work=work
    )
    await registry.close()
    assert run.state == "cancelled"
    again = RunRegistry(retention=60, markers=markers)
    await again.start()
    try:
        with pytest.raises(RunGone) as gone:
            again.get(None, run.id)
        assert "cancelled when the server stopped" in str(gone.value)
    finally:
        await again.close()
