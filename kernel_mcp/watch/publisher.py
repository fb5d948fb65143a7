"""The runner's lifecycle hooks that publish each session's runs into its feed.

The runner calls these at named points of a session's life, as nbclient calls its
``on_cell_start`` / ``on_cell_complete`` hooks: a call that runs code in a session opens a
:meth:`FeedPublisher.cell` around the execution, streams its output through the cell's
:meth:`CellHook.stream_to`, and ends it with :meth:`CellHook.finished`; a session that ends
calls :meth:`FeedPublisher.session_closed`. Nothing else in the runner knows that anyone
watches, and no run signature carries a feed.

Publishing is synchronous and cheap (one JSON encoding per event, on the event loop's
thread), and it never raises into the run: a run that executed always gets its reply.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any, Protocol

from kernel_mcp.watch.feed import FeedLimits, Feeds, SessionFeed

__all__ = ["SESSION_FEED_LIMITS", "CellHook", "FeedPublisher"]

_MIB = 1024 * 1024
#: What each session's feed keeps: every session has one for as long as it lives, watched
#: or not, so together they are bounded by KERNEL_MCP_MAX_SESSIONS times about 7 MiB
#: (events for resuming watchers, finished cells for a late page, one cell's live output);
#: the session's notebook keeps everything.
SESSION_FEED_LIMITS = FeedLimits(max_event_chars=2 * _MIB, max_cell_chars=4 * _MIB)

log = logging.getLogger(__name__)

StreamCallback = Callable[[str, str], None]
"""(stream name, text), as ``kernels.execution.OutputCallback``."""


class _Session(Protocol):
    """What the publisher reads of a session (``sessions.records.Session``)."""

    @property
    def id(self) -> str: ...

    @property
    def owner(self) -> str | None: ...

    @property
    def name(self) -> str: ...


class _Execution(Protocol):
    """What the publisher reads of an execution (``kernels.execution.Execution``)."""

    status: str
    outputs: Any
    execution_count: int | None
    duration_s: float
    kernel_replaced: bool


@contextlib.contextmanager
def _bystander(what: str) -> Iterator[None]:
    """The view is a bystander: whatever breaks in it is logged, and a run that executed
    keeps its reply (the caller's cancellation still goes through: it is no Exception)."""
    try:
        yield
    except Exception:
        log.exception("session view: %s could not be published", what)


class CellHook:
    """One running cell of a session's feed: its live stream, and its end."""

    def __init__(self, feed: SessionFeed | None) -> None:
        self.feed = feed
        """None: the cell could not be published (nothing more is)."""
        self.done = feed is None

    def stream(self, name: str, text: str) -> None:
        """A chunk of the cell's stdout or stderr, as the kernel sends it."""
        if not self.done and self.feed is not None:
            with _bystander("a stream chunk"):
                self.feed.stream(name, text)

    def stream_to(self, also: StreamCallback | None) -> StreamCallback:
        """The callback a run streams through: this cell, then ``also`` (the caller's)."""
        if also is None:
            return self.stream

        def both(name: str, text: str) -> None:
            self.stream(name, text)
            also(name, text)

        return both

    def finished(self, execution: _Execution, notes: Iterable[str] = ()) -> None:
        """The cell's execution ended: its canonical outputs replace the live ones."""
        self.finish(
            status=execution.status,
            outputs=execution.outputs,
            execution_count=execution.execution_count,
            duration_s=execution.duration_s,
            notes=notes,
        )
        if self.feed is not None and (
            execution.status == "kernel_died" or execution.kernel_replaced
        ):
            with _bystander("a kernel's death"):
                self.feed.died()

    def finish(
        self,
        *,
        status: str,
        outputs: Iterable[Mapping[str, Any]] | None,
        execution_count: int | None = None,
        duration_s: float | None = None,
        notes: Iterable[str] = (),
    ) -> None:
        if self.done or self.feed is None:
            return
        self.done = True
        with _bystander("a finished cell"):
            self.feed.cell_finished(
                status=status,
                outputs=outputs,
                execution_count=execution_count,
                duration_s=duration_s,
                notes=list(notes),
            )


class FeedPublisher:
    """Publishes sessions' runs into :class:`Feeds` (one feed per session, made on first use)."""

    def __init__(self, feeds: Feeds | None = None) -> None:
        self.feeds = feeds if feeds is not None else Feeds(SESSION_FEED_LIMITS)

    def feed_of(self, session: _Session) -> SessionFeed:
        """The session's feed (made now if this process has not published for it yet)."""
        return self.feeds.open(session.id, owner=session.owner, name=session.name)

    @contextlib.contextmanager
    def cell(
        self, session: _Session, *, source: str, tool: str, label: str | None
    ) -> Iterator[CellHook]:
        """A cell runs in ``session`` for the block's length. A block left without
        :meth:`CellHook.finished` (the call was cancelled, or failed before its kernel
        replied) ends the cell as ``incomplete``; the exception goes on."""
        hook = CellHook(None)
        with _bystander("a cell's start"):
            feed = self.feed_of(session)
            feed.cell_started(source, tool=tool, label=label)
            hook = CellHook(feed)
        try:
            yield hook
        finally:
            hook.finish(status="incomplete", outputs=None)

    def session_closed(self, session_id: str) -> None:
        """The session ended (closed, culled, or removed by another replica): its
        watchers are told and its feed is dropped."""
        with _bystander("a session's end"):
            self.feeds.close(session_id)

    def close(self) -> None:
        """The runner stops: every watcher is told, so that no stream stays open."""
        for feed in self.feeds:
            self.session_closed(feed.session_id)
