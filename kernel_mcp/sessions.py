"""Sessions: named, owned kernels whose state persists across calls.

Ids are minted here (``secrets.token_urlsafe``) and are the only key: MCP
transport sessions are never used, because the 2026-07-28 protocol has none.
Every lookup takes the caller's principal; another principal's id is reported
exactly like an unknown one. Calls on one session are serialised in arrival
order by an ``asyncio.Lock`` (FIFO); different sessions run in parallel.
An idle-culling task, owned by the registry, closes sessions nobody used for
``session_idle_timeout`` seconds and leaves a tombstone that says when.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections import OrderedDict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, TypeVar

from kernel_mcp.errors import InvalidArgument, SessionGone, SessionNotFound, TooManySessions
from kernel_mcp.kernel import Kernel
from kernel_mcp.paths import validate_name
from kernel_mcp.pool import KernelPool

__all__ = ["Session", "SessionRegistry"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_TOMBSTONES = 1000


def _now() -> datetime:
    return datetime.now(timezone.utc)


@dataclass(eq=False)
class Session:
    """One session. ``kernel`` is None only between a death and its replacement."""

    id: str
    name: str
    owner: str | None
    kernel: Kernel | None
    created_at: datetime = field(default_factory=_now)
    last_used: datetime = field(default_factory=_now)
    last_used_mono: float = field(default_factory=time.monotonic)
    runs: int = 0
    busy: bool = False
    lost_state: str | None = None
    """Why the previous kernel was lost; reported once by the next run."""
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    @property
    def state(self) -> Literal["idle", "busy", "dead"]:
        if self.kernel is None or self.kernel.dead:
            return "dead"
        return "busy" if self.busy else "idle"

    def touch(self) -> None:
        self.last_used = _now()
        self.last_used_mono = time.monotonic()


class SessionRegistry:
    """All live sessions of this process, with their limits and culling."""

    def __init__(
        self,
        pool: KernelPool,
        *,
        max_sessions: int,
        idle_timeout: float,
        on_close: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        self.pool = pool
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._on_close = on_close
        self._sessions: dict[str, Session] = {}
        self._gone: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._reserved = 0
        self._culler: asyncio.Task[None] | None = None

    # -- lifecycle of the registry --------------------------------------------
    async def start(self) -> None:
        if self.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_forever(), name="session-culler")

    async def close(self) -> None:
        """Stop culling and shut every session's kernel down."""
        if self._culler is not None:
            self._culler.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._culler
            self._culler = None
        sessions = list(self._sessions.values())
        self._sessions.clear()
        # A server that stops loses every kernel's state anyway: kill, don't ask.
        await asyncio.gather(*(self._end(s, now=True) for s in sessions), return_exceptions=True)

    # -- the public operations -------------------------------------------------
    async def create(self, owner: str | None, name: str | None = None) -> Session:
        """Start a session with a kernel from the warm pool.

        Raises:
            TooManySessions: at KERNEL_MCP_MAX_SESSIONS.
            InvalidArgument: a bad or already used name.
        """
        if name is not None:
            validate_name(name)
            if any(s.name == name for s in self.list(owner)):
                raise InvalidArgument(f"You have an open session named {name!r} already.")
        if len(self._sessions) + self._reserved >= self.max_sessions:
            raise TooManySessions(
                f"Session limit reached ({self.max_sessions}, KERNEL_MCP_MAX_SESSIONS). "
                "Close a session with close_session first."
            )
        self._reserved += 1
        try:
            kernel = await self.pool.acquire()
        finally:
            self._reserved -= 1
        session_id = secrets.token_urlsafe(16)
        session = Session(id=session_id, name=name or session_id, owner=owner, kernel=kernel)
        self._sessions[session_id] = session
        return session

    def get(self, owner: str | None, session_id: str) -> Session:
        """The caller's session, or SessionNotFound / SessionGone."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner == owner:
            return session
        gone = self._gone.get(session_id)
        if session is None and gone is not None and gone[0] == owner:
            raise SessionGone(f"Session {session_id!r} {gone[1]}. Create a new one.")
        raise SessionNotFound(session_id)

    def list(self, owner: str | None) -> list[Session]:
        return [s for s in self._sessions.values() if s.owner == owner]

    @property
    def count(self) -> int:
        return len(self._sessions)

    async def use(
        self, owner: str | None, session_id: str, work: Callable[[Session, Kernel], Awaitable[T]]
    ) -> T:
        """Run ``work`` with the session's kernel, alone, in arrival order.

        A dead kernel is replaced first; ``session.lost_state`` then says why.
        """
        session = self.get(owner, session_id)
        async with session.lock:
            # It may have been closed or culled while this call waited.
            session = self.get(owner, session_id)
            session.busy = True
            try:
                if session.kernel is None or not await session.kernel.is_alive():
                    await self._replace_kernel(session, session.lost_state or "the kernel died")
                assert session.kernel is not None
                result = await work(session, session.kernel)
                session.runs += 1
                if session.kernel.dead:
                    session.lost_state = "the kernel was killed or died during the previous run"
                return result
            finally:
                session.busy = False
                session.touch()

    async def interrupt(self, owner: str | None, session_id: str) -> bool:
        """Interrupt the running call, if any. Returns whether one was running."""
        session = self.get(owner, session_id)
        if session.kernel is None:
            return False
        was_busy = session.busy
        await session.kernel.interrupt()
        return was_busy

    async def restart(self, owner: str | None, session_id: str) -> Session:
        """Give the session a fresh kernel; its state is cleared."""
        session = self.get(owner, session_id)
        if session.kernel is not None:
            await session.kernel.interrupt()
        async with session.lock:
            session = self.get(owner, session_id)
            await self._replace_kernel(session, None)
            session.touch()
            return session

    async def close_session(self, owner: str | None, session_id: str) -> Session:
        """Shut the session's kernel down; the id then reports it was closed."""
        session = self.get(owner, session_id)
        if session.kernel is not None and session.busy:
            await session.kernel.interrupt()
        self._sessions.pop(session_id, None)
        self._bury(session, f"was closed at {_now().isoformat(timespec='seconds')}")
        async with session.lock:
            await self._end(session)
        return session

    # -- internals -------------------------------------------------------------
    async def _replace_kernel(self, session: Session, lost: str | None) -> None:
        old, session.kernel = session.kernel, None
        if old is not None:
            await old.shutdown(now=True)
        session.kernel = await self.pool.acquire()
        session.lost_state = f"{lost}; the session's state was lost" if lost else None

    def _bury(self, session: Session, how: str) -> None:
        self._gone[session.id] = (session.owner, how)
        while len(self._gone) > _TOMBSTONES:
            self._gone.popitem(last=False)

    async def _end(self, session: Session, *, now: bool = False) -> None:
        kernel, session.kernel = session.kernel, None
        try:
            if self._on_close is not None:
                await self._on_close(session)
        finally:
            if kernel is not None:
                await kernel.shutdown(now=now)

    async def _cull_forever(self) -> None:
        period = max(0.05, min(self.idle_timeout / 4, 30.0))
        while True:
            await asyncio.sleep(period)
            now = time.monotonic()
            for session in list(self._sessions.values()):
                idle_for = now - session.last_used_mono
                if session.busy or session.lock.locked() or idle_for < self.idle_timeout:
                    continue
                self._sessions.pop(session.id, None)
                self._bury(
                    session,
                    f"was culled at {_now().isoformat(timespec='seconds')} after "
                    f"{idle_for:.0f} s idle (KERNEL_MCP_SESSION_IDLE_TIMEOUT="
                    f"{self.idle_timeout:g})",
                )
                try:
                    await self._end(session)
                except Exception:
                    log.exception("culling session %s failed", session.id)
