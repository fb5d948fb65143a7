"""kernel_mcp.watch.feed: a session's cells and numbered events, for its watchers.

The event model is the contract between the runner (which publishes), the page and the
MCP App (which render): the property test below replays events onto a snapshot the way
a watcher does (``apply``, the page's logic in Python) and requires the cells a late
snapshot shows.
"""

from __future__ import annotations

import asyncio
import copy
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from kernel_mcp.watch.feed import LIVE_CAP_NOTICE, FeedLimits, Feeds, SessionFeed, parse_cursor
from kernel_mcp.watch.viewable import ViewLimits


def events(feed: SessionFeed, cursor: str | None = None) -> list[dict[str, Any]]:
    found = feed.events_after(cursor if cursor is not None else f"{feed.epoch}.0")
    assert found is not None
    return [json.loads(event.json) for event in found]


def stream(name: str, text: str) -> dict[str, Any]:
    return {"output_type": "stream", "name": name, "text": text}


def apply(view: dict[str, Any], event: dict[str, Any]) -> None:
    """What a watcher does with one event (static/viewer.js's ``handle``, in Python)."""
    kind = event["kind"]
    cells = {cell["cell"]: cell for cell in view["cells"]}
    if view["running"]:
        cells[view["running"]["cell"]] = view["running"]
    if kind == "status":
        view["state"] = event["state"]
    elif kind == "cell_started":
        view["running"] = copy.deepcopy(event["cell"])
    elif kind == "stream":
        outputs = cells[event["cell"]]["outputs"]
        if (
            outputs
            and outputs[-1]["output_type"] == "stream"
            and outputs[-1]["name"] == event["name"]
        ):
            outputs[-1]["text"] += event["text"]
        else:
            outputs.append(stream(event["name"], event["text"]))
    elif kind == "output":
        output = event["output"]
        if output["output_type"] == "update_display_data":
            for cell in cells.values():
                for i, earlier in enumerate(cell["outputs"]):
                    if earlier.get("display_id") == output.get("display_id"):
                        cell["outputs"][i] = {**output, "output_type": "display_data"}
        else:
            cells[event["cell"]]["outputs"].append(output)
    elif kind == "clear_output":
        cells[event["cell"]]["outputs"].clear()
    elif kind == "cell_finished":
        view["running"] = None
        view["cells"].append(copy.deepcopy(event["cell"]))


def comparable(snapshot: dict[str, Any]) -> dict[str, Any]:
    return {k: snapshot[k] for k in ("state", "cells", "running")}


def test_a_cell_is_published_as_it_starts_prints_and_finishes() -> None:
    feed = SessionFeed("s1", owner=None, name="demo")
    number = feed.cell_started("print('hi')", tool="run_code")
    feed.stream("stdout", "hi\n")
    feed.cell_finished(
        status="ok", outputs=[stream("stdout", "hi\n")], execution_count=3, duration_s=0.5
    )
    kinds = [(e["id"], e["kind"]) for e in events(feed)]
    assert kinds == [
        (1, "status"),
        (2, "cell_started"),
        (3, "stream"),
        (4, "cell_finished"),
        (5, "status"),
    ]
    published = events(feed)
    assert published[0]["state"] == "busy" and published[-1]["state"] == "idle"
    assert published[1]["cell"]["source"] == "print('hi')"
    assert published[1]["cell"]["status"] is None
    assert published[2] == {
        "id": 3,
        "kind": "stream",
        "cell": number,
        "name": "stdout",
        "text": "hi\n",
    }
    finished = published[3]["cell"]
    assert finished["status"] == "ok" and finished["execution_count"] == 3
    assert finished["outputs"] == [stream("stdout", "hi\n")]
    assert feed.snapshot()["cells"] == [finished]


def test_events_resume_after_any_cursor_of_this_feed() -> None:
    feed = SessionFeed("s1", owner=None)
    for i in range(3):
        feed.cell_started(f"x = {i}", tool="run_code")
        feed.cell_finished(status="ok", outputs=[])
    every = events(feed)
    for after in range(len(every) + 1):
        assert events(feed, f"{feed.epoch}.{after}") == every[after:]
    assert feed.events_after(feed.cursor) == []


@pytest.mark.parametrize(
    "cursor",
    [None, "", "garbage", "other.1", "0.1", "{epoch}.99", "{epoch}.-1", "{epoch}." + "9" * 30],
)
def test_a_cursor_that_cannot_be_resumed_from_asks_for_a_snapshot(cursor: str | None) -> None:
    feed = SessionFeed("s1", owner=None)
    feed.cell_started("1", tool="run_code")
    if cursor is not None:
        cursor = cursor.replace("{epoch}", feed.epoch)
    assert feed.events_after(cursor) is None


def test_cursors_name_their_feed_and_event() -> None:
    assert parse_cursor("ab12.7") == ("ab12", 7)
    assert parse_cursor("ab12.") is None
    assert parse_cursor(".7") is None


def test_the_event_buffer_is_bounded_by_count_and_by_size() -> None:
    by_count = SessionFeed("s", owner=None, limits=FeedLimits(max_events=10))
    by_count.cell_started("", tool="run_code")
    for i in range(100):
        by_count.stream("stdout", f"{i}\n")
    assert by_count.events_after(f"{by_count.epoch}.{by_count.last_id - 10}") is not None
    assert by_count.events_after(f"{by_count.epoch}.{by_count.last_id - 11}") is None

    by_size = SessionFeed("s", owner=None, limits=FeedLimits(max_event_chars=2000))
    by_size.cell_started("", tool="run_code")
    for _ in range(100):
        by_size.stream("stdout", "x" * 100)
    kept = by_size.events_after(f"{by_size.epoch}.{by_size.last_id - 5}")
    assert kept is not None and sum(len(e.json) for e in kept) <= 2000
    assert by_size.events_after(f"{by_size.epoch}.{by_size.last_id - 30}") is None


def test_one_event_larger_than_the_buffer_is_still_kept() -> None:
    feed = SessionFeed("s", owner=None, limits=FeedLimits(max_event_chars=100))
    feed.cell_started("x" * 500, tool="run_code")
    assert [e.kind for e in feed.events_after(f"{feed.epoch}.{feed.last_id - 1}") or []] == [
        "cell_started"
    ]


def test_finished_cells_are_bounded_and_the_left_out_are_counted() -> None:
    feed = SessionFeed("s", owner=None, limits=FeedLimits(max_cells=3))
    for i in range(5):
        feed.cell_started(f"x = {i}", tool="run_code")
        feed.cell_finished(status="ok", outputs=[])
    snapshot = feed.snapshot()
    assert [c["source"] for c in snapshot["cells"]] == ["x = 2", "x = 3", "x = 4"]
    assert snapshot["omitted_cells"] == 2

    big = SessionFeed("s", owner=None, limits=FeedLimits(max_cell_chars=5000))
    for _ in range(5):
        big.cell_started("y", tool="run_code")
        big.cell_finished(status="ok", outputs=[stream("stdout", "z" * 2000)])
    assert len(big.snapshot()["cells"]) == 2
    assert big.snapshot()["omitted_cells"] == 3


def test_a_running_cells_live_output_stops_at_its_cap_and_says_so() -> None:
    feed = SessionFeed("s", owner=None, limits=FeedLimits(max_live_chars=100))
    feed.cell_started("flood()", tool="run_code")
    for _ in range(50):
        feed.stream("stdout", "0123456789")
    running = feed.snapshot()["running"]
    (shown,) = running["outputs"]
    assert shown["text"] == "0123456789" * 10 + LIVE_CAP_NOTICE
    chunks = [e["text"] for e in events(feed) if e["kind"] == "stream"]
    assert chunks == ["0123456789"] * 10 + [LIVE_CAP_NOTICE]
    feed.cell_finished(status="ok", outputs=[stream("stdout", "0123456789" * 50)])
    assert feed.snapshot()["cells"][0]["outputs"][0]["text"] == "0123456789" * 50


def test_a_view_sees_streams_merged_and_displays_updated_and_cleared() -> None:
    feed = SessionFeed("s", owner=None)
    feed.cell_started("work()", tool="run_code")
    feed.stream("stdout", "a")
    feed.stream("stdout", "b")
    feed.stream("stderr", "warn")
    display = {"output_type": "display_data", "data": {"text/plain": "10%"}, "metadata": {}}
    feed.output({**display, "transient": {"display_id": "bar"}})
    update = {"output_type": "update_display_data", "data": {"text/plain": "90%"}}
    feed.output({**update, "metadata": {}, "transient": {"display_id": "bar"}})
    outputs = feed.snapshot()["running"]["outputs"]
    assert outputs[:2] == [stream("stdout", "ab"), stream("stderr", "warn")]
    assert outputs[2]["data"] == {"text/plain": "90%"}
    assert outputs[2]["display_id"] == "bar"
    feed.clear_output()
    assert feed.snapshot()["running"]["outputs"] == []
    assert events(feed)[-1] == {"id": feed.last_id, "kind": "clear_output", "cell": 1}


def test_a_new_cell_ends_one_that_never_finished_as_incomplete() -> None:
    feed = SessionFeed("s", owner=None)
    feed.cell_started("first()", tool="run_code")
    feed.stream("stdout", "partial")
    feed.cell_started("second()", tool="run_code")
    (first,) = feed.snapshot()["cells"]
    assert first["status"] == "incomplete"
    assert first["outputs"] == [stream("stdout", "partial")]
    assert feed.snapshot()["running"]["source"] == "second()"


def test_output_outside_a_running_cell_is_not_shown() -> None:
    feed = SessionFeed("s", owner=None)
    feed.stream("stdout", "stray")
    feed.output({"output_type": "display_data", "data": {"text/plain": "x"}})
    feed.clear_output()
    feed.cell_finished(status="ok", outputs=[])
    assert feed.last_id == 0


def test_a_dead_kernel_is_a_state_until_the_next_run() -> None:
    feed = SessionFeed("s", owner=None)
    feed.cell_started("os._exit(1)", tool="run_code")
    feed.died()
    feed.cell_finished(status="kernel_died", outputs=[])
    assert feed.state == "dead"
    feed.cell_started("1", tool="run_code")
    assert feed.state == "busy"
    feed.revived()
    assert feed.state == "busy"


async def test_a_waiting_watcher_wakes_on_the_next_event() -> None:
    feed = SessionFeed("s", owner=None)
    cursor = feed.cursor
    waiting = asyncio.ensure_future(feed.wait(cursor, timeout=60))
    await asyncio.sleep(0)
    assert not waiting.done()
    feed.cell_started("1", tool="run_code")
    assert await asyncio.wait_for(waiting, 10)
    assert [e["kind"] for e in events(feed, cursor)] == ["status", "cell_started"]


async def test_a_wait_ends_at_its_timeout_without_an_event() -> None:
    feed = SessionFeed("s", owner=None)
    assert await feed.wait(feed.cursor, timeout=0.01) is False
    # Behind, or not this feed's: nothing to wait for.
    feed.cell_started("1", tool="run_code")
    assert await feed.wait(f"{feed.epoch}.0", timeout=60) is True
    assert await feed.wait("other.0", timeout=60) is True


async def test_closing_wakes_every_watcher_with_closed_and_publishes_nothing_after() -> None:
    feeds = Feeds()
    feed = feeds.open("s", owner="ada")
    feed.cell_started("sleep()", tool="run_code")
    waiters = [asyncio.ensure_future(feed.wait(feed.cursor, timeout=60)) for _ in range(3)]
    await asyncio.sleep(0)
    feeds.close("s")
    assert all(await asyncio.gather(*waiters))
    tail = [e["kind"] for e in events(feed)][-4:]
    assert tail == ["cell_finished", "status", "status", "closed"]
    assert feeds.get("s") is None
    last = feed.last_id
    feed.cell_started("2", tool="run_code")
    assert feed.last_id == last
    assert await feed.wait(feed.cursor, timeout=60) is True


async def test_read_gives_a_snapshot_first_then_the_events_after_it() -> None:
    feed = SessionFeed("s", owner=None, name="demo")
    feed.cell_started("1", tool="run_code")
    first = await feed.read(None)
    assert "events" not in first and first["snapshot"]["running"]["source"] == "1"
    assert first["cursor"] == feed.cursor
    later = asyncio.ensure_future(feed.read(first["cursor"], wait_s=30))
    await asyncio.sleep(0)
    feed.stream("stdout", "out")
    page = await asyncio.wait_for(later, 10)
    assert [e["kind"] for e in page["events"]] == ["stream"]
    assert page["state"] == "busy"
    assert (await feed.read(page["cursor"], wait_s=0.01))["events"] == []


def test_lone_surrogates_from_a_kernel_survive_the_wire_encoding() -> None:
    feed = SessionFeed("s", owner=None)
    feed.cell_started("print('\\udcff')", tool="run_code")
    feed.stream("stdout", "bad \udcff byte")
    (event,) = [e for e in feed.events_after(f"{feed.epoch}.0") or [] if e.kind == "stream"]
    event.json.encode("utf-8")  # what the wire needs
    assert json.loads(event.json)["text"] == "bad \udcff byte"


def test_only_the_owner_may_watch_a_feed() -> None:
    feeds = Feeds()
    feeds.open("mine", owner="ada")
    feeds.open("shared", owner=None)
    assert feeds.watchable("mine", "ada") is not None
    assert feeds.watchable("mine", "bob") is None
    assert feeds.watchable("mine", None) is None
    assert feeds.watchable("shared", None) is not None
    assert feeds.watchable("shared", "ada") is None
    assert feeds.watchable("nobody", "ada") is None
    assert feeds.open("mine", owner="bob").owner == "ada"  # opened once


def test_long_sources_and_texts_are_capped_for_the_view() -> None:
    feed = SessionFeed("s", owner=None, limits=FeedLimits(view=ViewLimits(max_text_chars=300)))
    feed.cell_started("x" * 10_000, tool="run_code")
    source = feed.snapshot()["running"]["source"]
    assert len(source) < 500 and "characters not shown here" in source


# -- the event model, as a property -------------------------------------------------------
texts = st.text(alphabet="ab\n\r", max_size=8)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("start"), texts),
        st.tuples(st.just("stream"), st.sampled_from(["stdout", "stderr"]), texts),
        st.tuples(st.just("display"), st.sampled_from(["d1", "d2", None]), texts),
        st.tuples(st.just("update"), st.sampled_from(["d1", "d2"]), texts),
        st.tuples(st.just("clear")),
        st.tuples(st.just("finish"), st.sampled_from(["ok", "error"]), st.booleans()),
        st.tuples(st.just("died")),
    ),
    max_size=40,
)


def perform(feed: SessionFeed, op: tuple[Any, ...]) -> None:
    kind = op[0]
    if kind == "start":
        feed.cell_started(op[1], tool="run_code")
    elif kind == "stream":
        feed.stream(op[1], op[2])
    elif kind in ("display", "update"):
        output: dict[str, Any] = {
            "output_type": "display_data" if kind == "display" else "update_display_data",
            "data": {"text/plain": op[2]},
            "metadata": {},
        }
        if op[1] is not None:
            output["transient"] = {"display_id": op[1]}
        feed.output(output)
    elif kind == "clear":
        feed.clear_output()
    elif kind == "finish":
        canonical = [stream("stdout", "final")] if op[2] else None
        feed.cell_finished(status=op[1], outputs=canonical, execution_count=1)
    elif kind == "died":
        feed.died()


@settings(max_examples=200, deadline=None)
@given(operations, st.integers(min_value=0, max_value=40))
def test_a_watcher_replaying_events_onto_a_snapshot_sees_what_a_late_snapshot_shows(
    ops: list[tuple[Any, ...]], split: int
) -> None:
    feed = SessionFeed("s", owner=None)
    for op in ops[:split]:
        perform(feed, op)
    view = copy.deepcopy(feed.snapshot())
    cursor = view["cursor"]
    for op in ops[split:]:
        perform(feed, op)
    for event in events(feed, cursor):
        apply(view, event)
    assert comparable(view) == comparable(feed.snapshot())
