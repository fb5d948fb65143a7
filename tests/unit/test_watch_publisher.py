"""Specification of the runner's watch hooks (``kernel_mcp.watch.publisher``) on fake kernels.

Every run in a session is published into the session's feed: the cell when it starts,
its stream chunks while it runs, its canonical outputs when it ends; a call that is
cancelled leaves an ``incomplete`` cell; a kernel that dies shows as ``dead``; a closed
session tells its watchers; fresh runs (no session) publish nothing; and a feed that
cannot publish never costs a run its reply. The same on a real server, in a browser:
``tests/integration/test_watch_server.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernel_mcp.config import load_settings
from kernel_mcp.runner import Runner, RunOptions
from kernel_mcp.sessions.store import InProcessStore
from kernel_mcp.watch.feed import SessionFeed
from tests.unit import fakes
from tests.unit.fakes import FakeBackend


def ticks_then_waits(release: asyncio.Event) -> fakes.Script:
    """Prints, then runs until ``release`` is set, then prints again."""

    async def script(request: fakes.Request) -> None:
        request.stream("stdout", "tick\n")
        await release.wait()
        request.stream("stdout", "tock\n")

    return script


async def published(feed: SessionFeed, seen: Callable[[list[dict[str, Any]]], bool]) -> None:
    """Wait (on the feed's own wake-ups, no polling) until its events satisfy ``seen``."""
    while not seen(events(feed)):
        await asyncio.wait_for(feed.wait(feed.cursor, None), 10)


def kinds(feed: SessionFeed) -> list[str]:
    return [event["kind"] for event in events(feed)]


def events(feed: SessionFeed) -> list[dict[str, Any]]:
    return [json.loads(event.json) for event in feed.events_after(f"{feed.epoch}.0") or []]


@pytest.fixture
async def runner(tmp_path: Path) -> AsyncIterator[Runner]:
    projects = tmp_path / "projects"
    projects.mkdir()
    settings = load_settings(
        projects_dir=projects, notebooks_dir=tmp_path / "nb", pool_size=0, sandbox="off"
    )
    release, started = asyncio.Event(), asyncio.Event()
    backend = FakeBackend(
        fakes.scripted(
            {
                "slow()": fakes.waits_for(release, then="tock", started=started),
                "ticks()": ticks_then_waits(release),
                "die()": fakes.dies,
            }
        )
    )
    async with Runner(settings, backend=backend, store=InProcessStore()) as built:
        built.release, built.started = release, started  # type: ignore[attr-defined]
        yield built


async def test_a_session_run_is_published_as_a_cell_with_its_outputs(runner: Runner) -> None:
    session = await runner.create_session(owner="alice", name="analysis")
    await runner.run_code("print('hi')\n6 * 7", owner="alice", session_id=session.id)
    feed = runner.watch.feeds.watchable(session.id, "alice")
    assert feed is not None and feed.name == "analysis"
    assert kinds(feed) == ["status", "cell_started", "stream", "cell_finished", "status"]
    [cell] = feed.snapshot()["cells"]
    assert cell["source"] == "print('hi')\n6 * 7" and cell["tool"] == "run_code"
    assert cell["status"] == "ok" and cell["execution_count"] == 1
    assert [o["output_type"] for o in cell["outputs"]] == ["stream", "execute_result"]
    assert cell["outputs"][1]["data"]["text/plain"] == "42"
    assert feed.state == "idle"
    # Only its owner may watch it.
    assert runner.watch.feeds.watchable(session.id, "bob") is None


async def test_output_is_published_while_the_run_is_still_running(runner: Runner) -> None:
    session = await runner.create_session(owner=None)
    call = asyncio.ensure_future(runner.run_code("ticks()", owner=None, session_id=session.id))
    feed = runner.watch.feed_of(session)
    await published(feed, lambda seen: any(e["kind"] == "stream" for e in seen))
    assert not call.done() and feed.state == "busy"
    running = feed.snapshot()["running"]
    assert running["source"] == "ticks()" and running["outputs"][0]["text"] == "tick\n"
    runner.release.set()  # type: ignore[attr-defined]
    outcome = await asyncio.wait_for(call, 10)
    seen = [(e["name"], e["text"]) for e in events(feed) if e["kind"] == "stream"]
    assert seen == [("stdout", "tick\n"), ("stdout", "tock\n")]
    assert outcome.execution.outputs[0]["text"] == "tick\ntock\n"
    assert feed.snapshot()["cells"][0]["outputs"][0]["text"] == "tick\ntock\n"
    assert feed.state == "idle"


async def test_the_callers_own_output_callback_still_sees_every_chunk(runner: Runner) -> None:
    session = await runner.create_session(owner=None)
    mine: list[str] = []
    request = runner.code_request("print('a')\nprint('b')", RunOptions(session_id=session.id))
    await runner.run(replace(request, on_output=lambda name, text: mine.append(text)))
    feed = runner.watch.feeds.get(session.id)
    assert feed is not None
    assert "".join(mine) == "a\nb\n"
    assert "".join(e["text"] for e in events(feed) if e["kind"] == "stream") == "a\nb\n"


async def test_a_cancelled_call_leaves_an_incomplete_cell(runner: Runner) -> None:
    session = await runner.create_session(owner=None)
    call = asyncio.ensure_future(runner.run_code("slow()", owner=None, session_id=session.id))
    await asyncio.wait_for(runner.started.wait(), 10)  # type: ignore[attr-defined]
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await call
    feed = runner.watch.feeds.get(session.id)
    assert feed is not None
    [cell] = feed.snapshot()["cells"]
    assert cell["status"] == "incomplete" and feed.snapshot()["running"] is None
    runner.release.set()  # type: ignore[attr-defined]


async def test_a_kernel_that_dies_shows_the_session_dead(runner: Runner) -> None:
    session = await runner.create_session(owner=None)
    outcome = await runner.run_code("die()", owner=None, session_id=session.id)
    assert outcome.execution.status == "kernel_died"
    feed = runner.watch.feeds.get(session.id)
    assert feed is not None and feed.state == "dead"
    assert feed.snapshot()["cells"][0]["status"] == "kernel_died"
    await runner.run_code("1", owner=None, session_id=session.id)
    assert feed.state == "idle"


async def test_closing_a_session_tells_its_watchers_and_drops_its_feed(runner: Runner) -> None:
    session = await runner.create_session(owner=None)
    await runner.run_code("1", owner=None, session_id=session.id)
    feed = runner.watch.feeds.get(session.id)
    assert feed is not None
    await runner.sessions.close_session(None, session.id)
    assert feed.state == "closed" and kinds(feed)[-2:] == ["status", "closed"]
    assert runner.watch.feeds.get(session.id) is None


async def test_a_notebook_run_in_a_session_is_one_cell_with_every_cells_outputs(
    runner: Runner,
) -> None:
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("print('loaded')"),
        nbformat.v4.new_markdown_cell("# a heading"),
        nbformat.v4.new_code_cell("6 * 7"),
    ]
    (runner.settings.projects_dir / "steps.ipynb").write_text(nbformat.writes(nb))
    session = await runner.create_session(owner=None)
    await runner.run_notebook("steps.ipynb", owner=None, session_id=session.id)
    feed = runner.watch.feeds.get(session.id)
    assert feed is not None
    [cell] = feed.snapshot()["cells"]
    assert cell["tool"] == "run_notebook" and cell["label"] == "steps.ipynb"
    assert cell["status"] == "ok"
    assert cell["outputs"][0]["text"] == "loaded\n"
    assert cell["outputs"][1]["data"]["text/plain"] == "42"


async def test_fresh_runs_publish_nothing(runner: Runner) -> None:
    await runner.run_code("print('alone')", owner=None)
    assert list(runner.watch.feeds) == []


async def test_a_feed_that_cannot_publish_never_costs_the_run_its_reply(
    runner: Runner, monkeypatch: pytest.MonkeyPatch
) -> None:
    session = await runner.create_session(owner=None)

    def broken(*args: Any, **kwargs: Any) -> None:
        raise RuntimeError("the view broke")

    monkeypatch.setattr(SessionFeed, "cell_finished", broken)
    outcome = await runner.run_code("6 * 7", owner=None, session_id=session.id)
    assert outcome.execution.status == "ok"
    assert outcome.execution.outputs[-1]["data"]["text/plain"] == "42"
