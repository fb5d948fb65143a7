"""A session's feed: what a watcher sees, as numbered events, and the cells so far.

One :class:`SessionFeed` per session. Whoever runs the session's code publishes into it
(a cell starts, prints, displays, clears, finishes; the session goes busy, idle, dead,
closed); watchers read it: a page that opens late takes a :meth:`~SessionFeed.snapshot`
of the cells so far, then follows the events after it, and a page that lost its
connection resumes from the last event it saw (``Last-Event-ID``). Events are kept in a
bounded buffer; a watcher that fell further behind than the buffer reaches gets a new
snapshot instead (a ``reset``), never a gap.

The event model, every event a JSON object with ``id`` and ``kind``:

=================  ===================================================================
``status``         ``state``: ``busy``, ``idle``, ``dead`` or ``closed``
``cell_started``   ``cell``: a cell (below) with ``status`` null and no outputs yet
``stream``         ``cell`` (its number), ``name`` (stdout/stderr/stdin), ``text``: a
                   chunk, to append to the cell's last output of that stream
``output``         ``cell``, ``output``: a display, result or error as it arrives
                   (``update_display_data`` replaces the displays of its ``display_id``)
``clear_output``   ``cell``: the cell's outputs so far are cleared
``cell_finished``  ``cell``: the cell as it ended, its outputs the canonical ones
                   (streams merged, displays updated, clears applied)
``closed``         the session ended; no event follows
=================  ===================================================================

A cell is ``{"cell": n, "source", "tool", "label", "started_at", "status",
"execution_count", "duration_s", "outputs", "omitted_outputs", "notes"}``; ``cell`` numbers
count the feed's cells from 1 (``execution_count`` is the kernel's ``In [n]``). Outputs
are :func:`~kernel_mcp.watch.viewable.viewable`'s. Ids count from 1 within one feed,
whose ``epoch`` (random) tells a resuming watcher that it is not the feed it followed
(the server restarted): cursors are ``"<epoch>.<id>"``.

Everything here runs on the event loop's thread: publishing is synchronous and cheap
(one JSON encoding per event), and a watcher waits on an :class:`asyncio.Event` that
each publication replaces, so nothing polls.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import secrets
from collections import deque
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any, Literal

from kernel_mcp.watch.viewable import ViewLimits, cap_text, viewable

__all__ = [
    "FeedEvent",
    "FeedLimits",
    "Feeds",
    "SessionFeed",
    "State",
    "parse_cursor",
]

State = Literal["idle", "busy", "dead", "closed"]

#: What the live view says once a running cell printed more than it shows.
LIVE_CAP_NOTICE = (
    "\n[kernel-mcp: this view shows no more of the cell's output until it ends; "
    "the session's notebook keeps it]\n"
)


@dataclass(frozen=True, slots=True)
class FeedLimits:
    """How much one feed keeps: its memory is bounded by these, whatever the kernel prints."""

    view: ViewLimits = field(default_factory=ViewLimits)
    max_events: int = 4096
    """Events kept for watchers that resume."""
    max_event_chars: int = 4 * 1024 * 1024
    """Their encoded size, together."""
    max_cells: int = 200
    """Finished cells kept for a snapshot (older ones: the notebook has them)."""
    max_cell_chars: int = 8 * 1024 * 1024
    """Their encoded size, together."""
    max_live_chars: int = 1024 * 1024
    """Stream text shown live for one cell; the rest waits for the cell's end."""


@dataclass(frozen=True, slots=True)
class FeedEvent:
    """One published event: its number, and its JSON as sent (encoded once)."""

    id: int
    kind: str
    json: str


def parse_cursor(cursor: str | None) -> tuple[str, int] | None:
    """``"<epoch>.<id>"`` as (epoch, id), or None when it is not one."""
    if not cursor:
        return None
    epoch, _, number = cursor.rpartition(".")
    if not epoch or not number.isdigit() or len(number) > 18:
        return None
    return epoch, int(number)


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds")


def _size(value: Any) -> int:
    return len(json.dumps(value, ensure_ascii=True, separators=(",", ":")))


@dataclass
class _Cell:
    number: int
    source: str
    tool: str
    label: str | None
    started_at: str = field(default_factory=_now)
    status: str | None = None
    execution_count: int | None = None
    duration_s: float | None = None
    outputs: list[dict[str, Any]] = field(default_factory=list)
    omitted_outputs: int = 0
    notes: list[str] = field(default_factory=list)
    live_chars: int = 0
    capped: bool = False
    size: int = 0

    def as_json(self) -> dict[str, Any]:
        return {
            "cell": self.number,
            "source": self.source,
            "tool": self.tool,
            "label": self.label,
            "started_at": self.started_at,
            "status": self.status,
            "execution_count": self.execution_count,
            "duration_s": self.duration_s,
            "outputs": self.outputs,
            "omitted_outputs": self.omitted_outputs,
            "notes": self.notes,
        }


class SessionFeed:
    """The numbered events and the cells of one session, for its watchers."""

    def __init__(
        self,
        session_id: str,
        *,
        owner: str | None,
        name: str | None = None,
        limits: FeedLimits | None = None,
    ) -> None:
        self.session_id = session_id
        self.owner = owner
        """The principal whose session this is: only they may watch it."""
        self.name = name
        self.limits = limits or FeedLimits()
        self.epoch = secrets.token_hex(4)
        self.state: State = "idle"
        self.last_id = 0
        self._events: deque[FeedEvent] = deque()
        self._event_chars = 0
        self._cells: deque[_Cell] = deque()
        self._cell_chars = 0
        self._omitted_cells = 0
        self._running: _Cell | None = None
        self._numbered = 0
        self._changed = asyncio.Event()

    # -- publishing ---------------------------------------------------------------
    def _publish(self, kind: str, **data: Any) -> None:
        if self.state == "closed":
            return
        self.last_id += 1
        # ASCII: kernel output may hold lone surrogates, which UTF-8 cannot carry and
        # JSON's \u escapes can (the page shows them as replacement characters).
        encoded = json.dumps(
            {"id": self.last_id, "kind": kind, **data},
            ensure_ascii=True,
            separators=(",", ":"),
        )
        event = FeedEvent(self.last_id, kind, encoded)
        self._events.append(event)
        self._event_chars += len(encoded)
        limits = self.limits
        while len(self._events) > 1 and (
            len(self._events) > limits.max_events or self._event_chars > limits.max_event_chars
        ):
            self._event_chars -= len(self._events.popleft().json)
        # Wake every watcher waiting now; later waiters wait on the new event.
        self.wake()

    def _set_state(self, state: State) -> None:
        if state != self.state and self.state != "closed":
            self._publish("status", state=state)
            self.state = state

    def cell_started(self, source: str, *, tool: str, label: str | None = None) -> int:
        """A cell begins to run; returns its number. A cell still running is ended first
        (its end was never published: it shows as ``incomplete``). A closed feed
        publishes nothing more."""
        if self.state == "closed":
            return 0
        if self._running is not None:
            self.cell_finished(status="incomplete", outputs=None)
        self._numbered += 1
        cell = _Cell(self._numbered, cap_text(source, self.limits.view.max_text_chars), tool, label)
        self._running = cell
        self._set_state("busy")
        self._publish("cell_started", cell=cell.as_json())
        return cell.number

    def stream(self, name: str, text: str) -> None:
        """A chunk of stdout or stderr from the running cell."""
        cell = self._running
        if cell is None or not text or cell.capped:
            return
        room = self.limits.max_live_chars - cell.live_chars
        if len(text) > room:
            text = text[: max(room, 0)] + LIVE_CAP_NOTICE
            cell.capped = True
        cell.live_chars += len(text)
        last = cell.outputs[-1] if cell.outputs else None
        if last is not None and last["output_type"] == "stream" and last["name"] == name:
            last["text"] += text
        elif len(cell.outputs) < self.limits.view.max_outputs:
            cell.outputs.append({"output_type": "stream", "name": name, "text": text})
        else:
            cell.omitted_outputs += 1
            return
        self._publish("stream", cell=cell.number, name=name, text=text)

    def output(self, output: Mapping[str, Any]) -> None:
        """A display, a result, an error or a display update from the running cell."""
        cell = self._running
        if cell is None:
            return
        shown = viewable(output, self.limits.view)
        size = _size(shown)
        if cell.capped or cell.live_chars + size > self.limits.max_live_chars:
            cell.omitted_outputs += 1
            return
        if shown["output_type"] == "update_display_data":
            # As in Jupyter, an update reaches its display in any cell shown.
            display_id = shown.get("display_id")
            for shown_cell in (*self._cells, cell):
                for i, earlier in enumerate(shown_cell.outputs):
                    if display_id is not None and earlier.get("display_id") == display_id:
                        shown_cell.outputs[i] = {**shown, "output_type": "display_data"}
        elif len(cell.outputs) < self.limits.view.max_outputs:
            cell.outputs.append(shown)
        else:
            cell.omitted_outputs += 1
            return
        cell.live_chars += size
        self._publish("output", cell=cell.number, output=shown)

    def clear_output(self) -> None:
        """The running cell cleared its output (``clear_output``)."""
        cell = self._running
        if cell is None:
            return
        cell.outputs.clear()
        self._publish("clear_output", cell=cell.number)

    def cell_finished(
        self,
        *,
        status: str,
        outputs: Iterable[Mapping[str, Any]] | None,
        execution_count: int | None = None,
        duration_s: float | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        """The running cell ended. ``outputs`` are its canonical nbformat outputs (None:
        keep what was shown live)."""
        cell = self._running
        if cell is None:
            return
        self._running = None
        cell.status = status
        cell.execution_count = execution_count
        cell.duration_s = duration_s
        cell.notes = [cap_text(str(note), 2000) for note in notes]
        if outputs is not None:
            cell.outputs, cell.omitted_outputs = [], 0
            for output in outputs:
                if len(cell.outputs) < self.limits.view.max_outputs:
                    cell.outputs.append(viewable(output, self.limits.view))
                else:
                    cell.omitted_outputs += 1
        shown = cell.as_json()
        cell.size = _size(shown)
        self._keep(cell)
        self._publish("cell_finished", cell=shown)
        self._set_state("idle" if self.state == "busy" else self.state)

    def _keep(self, cell: _Cell) -> None:
        self._cells.append(cell)
        self._cell_chars += cell.size
        limits = self.limits
        while len(self._cells) > 1 and (
            len(self._cells) > limits.max_cells or self._cell_chars > limits.max_cell_chars
        ):
            self._cell_chars -= self._cells.popleft().size
            self._omitted_cells += 1

    def wake(self) -> None:
        """Wake every watcher waiting now, with nothing new (they look again)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def died(self) -> None:
        """The session's kernel died (a new one starts with the next run)."""
        self._set_state("dead")

    def revived(self) -> None:
        """The session has a working kernel again."""
        if self.state == "dead":
            self._set_state("idle")

    def close(self) -> None:
        """The session ended: watchers get ``closed`` and stop."""
        if self.state == "closed":
            return
        if self._running is not None:
            self.cell_finished(status="incomplete", outputs=None)
        self._publish("status", state="closed")
        self._publish("closed")
        self.state = "closed"

    # -- reading ------------------------------------------------------------------
    @property
    def cursor(self) -> str:
        """The cursor of the latest event."""
        return f"{self.epoch}.{self.last_id}"

    def snapshot(self) -> dict[str, Any]:
        """The session and its cells so far, as of :attr:`cursor`."""
        return {
            "session": {"id": self.session_id, "name": self.name},
            "state": self.state,
            "cells": [cell.as_json() for cell in self._cells],
            "running": self._running.as_json() if self._running is not None else None,
            "omitted_cells": self._omitted_cells,
            "cursor": self.cursor,
        }

    def events_after(self, cursor: str | None) -> list[FeedEvent] | None:
        """The events after ``cursor``, oldest first; None when the cursor is not this
        feed's or its events are no longer kept (take a snapshot instead)."""
        parsed = parse_cursor(cursor)
        if parsed is None or parsed[0] != self.epoch or parsed[1] > self.last_id:
            return None
        after = parsed[1]
        if after == self.last_id:
            return []
        first = self._events[0].id if self._events else self.last_id + 1
        if after < first - 1:
            return None
        return list(self._events)[after - first + 1 :]

    async def wait(self, cursor: str | None, timeout: float | None) -> bool:
        """Wait up to ``timeout`` seconds for an event after ``cursor`` (or the end);
        whether there is one."""
        parsed = parse_cursor(cursor)
        if (
            parsed is None
            or parsed[0] != self.epoch
            or parsed[1] < self.last_id
            or self.state == "closed"
        ):
            return True
        changed = self._changed
        with contextlib.suppress(asyncio.TimeoutError):
            await asyncio.wait_for(changed.wait(), timeout)
        return changed.is_set()

    async def read(self, cursor: str | None, *, wait_s: float = 0.0) -> dict[str, Any]:
        """What a watcher without a stream (the MCP App) reads: the events after
        ``cursor`` once there are any (waiting up to ``wait_s`` seconds), or a snapshot
        when ``cursor`` cannot be resumed from. Returns ``{"cursor", "state", "events"}``
        or ``{"cursor", "state", "snapshot"}``."""
        if wait_s > 0:
            await self.wait(cursor, wait_s)
        events = self.events_after(cursor)
        if events is None:
            return {"cursor": self.cursor, "state": self.state, "snapshot": self.snapshot()}
        return {
            "cursor": self.cursor,
            "state": self.state,
            "events": [json.loads(event.json) for event in events],
        }


class Feeds:
    """Every open session's feed, by session id."""

    def __init__(self, limits: FeedLimits | None = None) -> None:
        self.limits = limits or FeedLimits()
        self._feeds: dict[str, SessionFeed] = {}

    def open(self, session_id: str, *, owner: str | None, name: str | None = None) -> SessionFeed:
        """The session's feed, made on first use."""
        feed = self._feeds.get(session_id)
        if feed is None:
            feed = SessionFeed(session_id, owner=owner, name=name, limits=self.limits)
            self._feeds[session_id] = feed
        return feed

    def get(self, session_id: str) -> SessionFeed | None:
        return self._feeds.get(session_id)

    def watchable(self, session_id: str, principal: str | None) -> SessionFeed | None:
        """The session's feed if ``principal`` owns the session; None otherwise, whether
        the session is unknown or another principal's (the two are not told apart)."""
        feed = self._feeds.get(session_id)
        if feed is None or feed.owner != principal:
            return None
        return feed

    def close(self, session_id: str) -> None:
        """The session ended: its watchers are told, and the feed is forgotten."""
        feed = self._feeds.pop(session_id, None)
        if feed is not None:
            feed.close()

    def __iter__(self) -> Iterator[SessionFeed]:
        return iter(list(self._feeds.values()))

    def close_all(self) -> None:
        """The server stops: every watcher is told, so that no stream stays open."""
        for session_id in list(self._feeds):
            self.close(session_id)
