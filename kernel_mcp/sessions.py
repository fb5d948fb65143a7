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
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Literal, TypeVar

from kernel_mcp.backend import KernelBackend
from kernel_mcp.errors import (
    InvalidArgument,
    KernelError,
    KernelStartFailed,
    SessionGone,
    SessionNotFound,
    TooManySessions,
)
from kernel_mcp.kernel import Kernel
from kernel_mcp.paths import validate_name
from kernel_mcp.pool import KernelPool
from kernel_mcp.state import (
    Lease,
    LeaseLost,
    SessionRecord,
    SharedState,
    StateUnavailable,
    shielded_to_end,
)
from kernel_mcp.tasks import stop_task

__all__ = ["Session", "SessionRegistry", "SharedSessionRegistry"]

log = logging.getLogger(__name__)

T = TypeVar("T")
_TOMBSTONES = 1000
#: Shared state: cached sessions are checked this often, seconds.
TIDY_PERIOD = 5.0
#: Shared state: a kernel connection unused this long is closed, seconds.
ATTACHED_IDLE = 30.0
#: Shared state: an interrupt asked for before the run began is sent this long after.
LATE_INTERRUPT = 0.2
#: Shared state: how long an interrupt waits for the lease holder to listen, seconds.
INTERRUPT_RELAY_WAIT = 1.0


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
    kernel_id: str | None = None
    """Shared state only: the backend's id of the session's kernel (attached or not)."""
    notebook: str | None = None
    """Shared state only: the recording, relative to the notebooks folder."""
    shared: bool = False
    lease: Lease | None = field(default=None, repr=False)
    """Shared state only: the lease of the call running now (set by ``use`` and ``hold``)."""

    @property
    def state(self) -> Literal["idle", "busy", "dead"]:
        if self.shared and self.kernel is None:
            # Not attached here: what the shared record and lease say.
            if self.busy:
                return "busy"
            return "dead" if self.lost_state else "idle"
        if self.kernel is None or self.kernel.dead:
            return "dead"
        return "busy" if self.busy else "idle"

    def touch(self) -> None:
        self.last_used = _now()
        self.last_used_mono = time.monotonic()

    def fence(self) -> None:
        """Check, right before a write on the session's behalf (its recording), that this
        call still holds the session.

        A no-op for in-process sessions. For shared sessions inside ``use``/``hold``:

        Raises:
            LeaseLost: the call's lease is no longer valid (a stalled event loop or
                a Redis outage outlasted KERNEL_MCP_LEASE_TTL); another replica
                may be serving the session, so the write must not happen.
        """
        if self.lease is not None:
            self.lease.fence()


class SessionRegistry:
    """All live sessions of this process, with their limits and culling."""

    #: Whether sessions live in shared state (``SharedSessionRegistry``).
    shared = False

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
        self._naming: set[tuple[str | None, str | None]] = set()
        self._culler: asyncio.Task[None] | None = None

    # -- lifecycle of the registry --------------------------------------------
    async def start(self) -> None:
        if self.idle_timeout > 0 and self._culler is None:
            self._culler = asyncio.create_task(self._cull_forever(), name="session-culler")

    async def close(self) -> None:
        """Stop culling and shut every session's kernel down."""
        if self._culler is not None:
            await stop_task(self._culler)
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
        claim = (owner, name)
        if name is not None:
            validate_name(name)
            # Names being created count too: acquire() below may wait for a kernel.
            if claim in self._naming or any(s.name == name for s in self.list(owner)):
                raise InvalidArgument(f"You have an open session named {name!r} already.")
        if len(self._sessions) + self._reserved >= self.max_sessions:
            raise TooManySessions(
                f"Session limit reached ({self.max_sessions}, KERNEL_MCP_MAX_SESSIONS). "
                "Close a session with close_session first."
            )
        self._reserved += 1
        if name is not None:
            self._naming.add(claim)
        try:
            kernel = await self.pool.acquire()
        finally:
            self._reserved -= 1
            self._naming.discard(claim)
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

    # Async forms of the look-ups: what the runner and the server call, because
    # with shared state (``SharedSessionRegistry``) they read Redis.
    async def find(self, owner: str | None, session_id: str) -> Session:
        return self.get(owner, session_id)

    async def owned(self, owner: str | None) -> list[Session]:
        return self.list(owner)

    @contextlib.asynccontextmanager
    async def hold(self, owner: str | None, session_id: str) -> AsyncIterator[Session]:
        """The session, with no call running in it while inside (for exports)."""
        session = self.get(owner, session_id)
        async with session.lock:
            yield session

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


class SharedSessionRegistry(SessionRegistry):
    """Sessions shared by server replicas through ``state.SharedState`` (Redis).

    What a session is (owner, name, kernel id, times, counters, notebook) lives
    in Redis; this replica keeps only caches: ``Session`` objects with a kernel
    connection it attached with ``backend.connect`` and a local FIFO lock. A
    call holds the local lock *and* the session's Redis lease, reloads the
    record first (another replica may have replaced the kernel), and writes it
    back after. Closing or stopping this replica detaches its connections; it
    never ends a session's kernel (other replicas serve it). Every replica runs
    the culler loop; only the holder of the leader lock culls.
    """

    shared = True

    def __init__(
        self,
        pool: KernelPool,
        *,
        state: SharedState,
        backend: KernelBackend,
        lease_ttl: float,
        max_sessions: int,
        idle_timeout: float,
        on_close: Callable[[Session], Awaitable[None]] | None = None,
        on_create: Callable[[Session], Awaitable[None]] | None = None,
    ) -> None:
        super().__init__(
            pool, max_sessions=max_sessions, idle_timeout=idle_timeout, on_close=on_close
        )
        self.state = state
        self.backend = backend
        self.lease_ttl = lease_ttl
        self._on_create = on_create
        self._token = secrets.token_hex(16)
        self._janitor: asyncio.Task[None] | None = None

    # -- lifecycle ---------------------------------------------------------------
    async def start(self) -> None:
        await self.state.connect()
        await super().start()
        if self._janitor is None:
            self._janitor = asyncio.create_task(self._tidy_forever(), name="session-janitor")

    async def close(self) -> None:
        """Stop culling and detach from every kernel; the sessions live on in Redis."""
        if self._culler is not None:
            await stop_task(self._culler)
            self._culler = None
            await self.state.resign("culler", self._token)
        if self._janitor is not None:
            await stop_task(self._janitor)
            self._janitor = None
        sessions = list(self._sessions.values())
        self._sessions.clear()
        await asyncio.gather(*(self._detach(s) for s in sessions), return_exceptions=True)
        await self.state.close()

    # -- records <-> sessions ---------------------------------------------------
    def _record(self, session: Session) -> SessionRecord:
        kernel = session.kernel
        return SessionRecord(
            id=session.id,
            name=session.name,
            owner=session.owner,
            kernel_id=kernel.process.kernel_id if kernel is not None else session.kernel_id or "",
            created_at=session.created_at.timestamp(),
            last_used=session.last_used.timestamp(),
            runs=session.runs,
            notebook=session.notebook,
            lost_state=session.lost_state,
            busy=session.busy,
            served_by=self._token,
        )

    @staticmethod
    def _apply(session: Session, record: SessionRecord) -> None:
        session.name = record.name
        session.kernel_id = record.kernel_id
        session.created_at = datetime.fromtimestamp(record.created_at, timezone.utc)
        session.last_used = datetime.fromtimestamp(record.last_used, timezone.utc)
        session.runs = record.runs
        session.notebook = record.notebook
        session.lost_state = record.lost_state

    def _snapshot(self, record: SessionRecord, busy: bool) -> Session:
        session = Session(
            id=record.id, name=record.name, owner=record.owner, kernel=None, shared=True
        )
        self._apply(session, record)
        session.busy = busy
        return session

    async def _lookup(self, owner: str | None, session_id: str) -> tuple[Session, SessionRecord]:
        """The cached session refreshed from its record; a foreign id is an unknown one."""
        record = await self.state.load(session_id)
        if record is None or record.owner != owner:
            if record is None:
                self._forget(session_id)
            gone = await self.state.tombstone(session_id)
            if record is None and gone is not None and gone[0] == owner:
                raise SessionGone(f"Session {session_id!r} {gone[1]}. Create a new one.")
            raise SessionNotFound(session_id)
        session = self._sessions.get(session_id)
        if session is None:
            session = Session(
                id=record.id, name=record.name, owner=record.owner, kernel=None, shared=True
            )
            self._sessions[session_id] = session
        self._apply(session, record)
        return session, record

    async def _store(self, session: Session, lease: Lease) -> None:
        """Write the session back, fenced by ``lease``; if it was closed meanwhile, end
        what we started.

        Raises:
            LeaseLost: the lease is lost; nothing was written.
        """
        if await self.state.save(self._record(session), lease=lease):
            return
        self._sessions.pop(session.id, None)
        kernel, session.kernel = session.kernel, None
        if kernel is not None:  # maybe a replacement the closer never knew of
            await kernel.shutdown(now=True)

    async def _let_go(self, session: Session, recorded_kernel_id: str) -> None:
        """After a lost lease: keep nothing of this call's kernel for later work.

        Another replica may be serving the session now. A kernel this call
        started (the record never named it) is ended; the recorded one is only
        detached, and the next call attaches afresh from the record.
        """
        kernel = session.kernel
        if kernel is not None and kernel.process.kernel_id != recorded_kernel_id:
            session.kernel = None
            await kernel.shutdown(now=True)
        else:
            await self._detach(session)

    def _forget(self, session_id: str) -> None:
        session = self._sessions.get(session_id)
        if session is not None and not session.lock.locked():
            self._sessions.pop(session_id, None)
            if session.kernel is not None:
                task = asyncio.ensure_future(self._detach(session))
                task.add_done_callback(lambda t: t.exception() if not t.cancelled() else None)

    # -- kernels -------------------------------------------------------------------
    @staticmethod
    async def _detach(session: Session) -> None:
        """Drop this replica's connection to the kernel; the kernel keeps running."""
        kernel, session.kernel = session.kernel, None
        if kernel is None:
            return
        close = getattr(kernel.client, "aclose", None)
        if close is not None:
            await close()
        else:  # pragma: no cover - every shared backend's client has aclose
            kernel.client.stop_channels()

    async def _attach(self, session: Session, record: SessionRecord) -> None:
        """Make ``session.kernel`` the kernel the record names, connecting if needed.

        A kernel the gateway no longer has leaves ``session.kernel`` None with
        ``lost_state`` saying so; the caller replaces it. A gateway that is
        down raises (KernelStartFailed names it).
        """
        kernel = session.kernel
        if kernel is not None and kernel.process.kernel_id == record.kernel_id:
            return
        await self._detach(session)
        if not record.kernel_id:
            return
        try:
            session.kernel = await self.backend.connect(record.kernel_id)  # type: ignore[attr-defined]
        except KernelStartFailed:
            raise
        except KernelError as exc:
            log.info("session %s: %s", session.id, exc)
            session.lost_state = session.lost_state or (
                "the kernel gateway no longer has the session's kernel (culled or lost)"
            )

    async def _delete_kernel(self, kernel_id: str) -> None:
        if not kernel_id:
            return
        delete = getattr(self.backend, "delete_kernel", None)
        if delete is not None:
            await delete(kernel_id)
            return
        with contextlib.suppress(KernelError):  # pragma: no cover - gateway has delete_kernel
            kernel = await self.backend.connect(kernel_id)  # type: ignore[attr-defined]
            await kernel.shutdown(now=True)

    async def _interrupt_anywhere(self, session: Session, record: SessionRecord) -> None:
        """Interrupt the running call: through the replica running it, else directly."""
        deadline = time.monotonic() + INTERRUPT_RELAY_WAIT
        while True:
            if await self.state.request_interrupt(session.id):
                return
            # A lease holder that has not subscribed yet is a moment away from it.
            if time.monotonic() >= deadline or not await self.state.leased_ids([session.id]):
                break
            await asyncio.sleep(0.05)
        if session.lock.locked() and session.kernel is not None:
            await session.kernel.interrupt()
            return
        with contextlib.suppress(KernelError):
            await self._attach(session, record)
        if session.kernel is not None:
            await session.kernel.interrupt()

    # -- the public operations -------------------------------------------------
    def get(self, owner: str | None, session_id: str) -> Session:
        """This replica's cached session only; callers use ``find`` (it reads Redis)."""
        session = self._sessions.get(session_id)
        if session is not None and session.owner == owner:
            return session
        raise SessionNotFound(session_id)

    async def find(self, owner: str | None, session_id: str) -> Session:
        session, _ = await self._lookup(owner, session_id)
        return session

    async def owned(self, owner: str | None) -> list[Session]:
        records = [r for r in await self.state.records() if r.owner == owner]
        busy = await self.state.leased_ids([r.id for r in records])
        records.sort(key=lambda r: r.created_at)
        return [self._snapshot(r, r.id in busy) for r in records]

    @contextlib.asynccontextmanager
    async def hold(self, owner: str | None, session_id: str) -> AsyncIterator[Session]:
        session, _ = await self._lookup(owner, session_id)
        async with session.lock, self.state.leased(session_id, self.lease_ttl) as lease:
            session, _ = await self._lookup(owner, session_id)
            session.lease = lease
            try:
                yield session
            finally:
                session.lease = None

    async def create(self, owner: str | None, name: str | None = None) -> Session:
        if name is not None:
            validate_name(name)
        session_id = secrets.token_urlsafe(16)
        if not await self.state.reserve(session_id, self.max_sessions):
            raise TooManySessions(
                f"Session limit reached ({self.max_sessions}, KERNEL_MCP_MAX_SESSIONS). "
                "Close a session with close_session first."
            )

        async def give_back() -> None:
            with contextlib.suppress(Exception):
                if name is not None:
                    await self.state.release_name(owner, name, session_id)
                await self.state.unreserve(session_id)

        try:
            # Claimed in Redis: two creates with one name, on any replicas, make one session.
            if name is not None and not await self.state.claim_name(owner, name, session_id):
                raise InvalidArgument(f"You have an open session named {name!r} already.")
            kernel = await self.pool.acquire()
        except BaseException:
            await give_back()
            raise
        session = Session(
            id=session_id, name=name or session_id, owner=owner, kernel=kernel, shared=True
        )
        session.kernel_id = kernel.process.kernel_id
        try:
            if self._on_create is not None:
                await self._on_create(session)
            await self.state.save(self._record(session))
        except BaseException:
            await give_back()
            await kernel.shutdown(now=True)
            raise
        self._sessions[session_id] = session
        return session

    async def use(
        self, owner: str | None, session_id: str, work: Callable[[Session, Kernel], Awaitable[T]]
    ) -> T:
        session, _ = await self._lookup(owner, session_id)
        started = False
        pending = False

        async def interrupt() -> None:
            nonlocal pending
            if started and session.kernel is not None:
                await session.kernel.interrupt()
            else:
                pending = True  # asked while the call was starting: delivered once it runs

        async with (
            session.lock,
            self.state.leased(session_id, self.lease_ttl) as lease,
            self.state.interrupt_requests(session_id, interrupt),
        ):
            # Another replica may have run, replaced, closed or culled it meanwhile.
            session, record = await self._lookup(owner, session_id)
            if record.served_by != self._token:
                # Served elsewhere since: drop our connection and what it buffered.
                await self._detach(session)
            await self._attach(session, record)
            if record.busy and session.kernel is not None:
                # Its last holder died mid-call (its lease expired): stop that run.
                log.warning("session %s: a call was cut off by a lost replica", session_id)
                await session.kernel.interrupt()
            session.busy = True
            session.lease = lease
            late: asyncio.Task[None] | None = None
            try:
                await self.state.save(self._record(session), lease=lease)
                if session.kernel is None or not await session.kernel.is_alive():
                    await self._replace_kernel(session, session.lost_state or "the kernel died")
                assert session.kernel is not None
                lease.fence()  # a replacement may have taken a while
                started = True
                if pending:
                    late = asyncio.ensure_future(self._interrupt_soon(session.kernel))
                try:
                    result = await work(session, session.kernel)
                finally:
                    await stop_task(late)
                session.runs += 1
                if session.kernel.dead:
                    session.lost_state = "the kernel was killed or died during the previous run"
                return result
            finally:
                session.lease = None
                await shielded_to_end(self._end_call(session, lease, record.kernel_id))

    async def _end_call(self, session: Session, lease: Lease, recorded_kernel_id: str) -> None:
        """Settle the kernel, then write the session back, unless the lease was lost."""
        # A timed-out run may still be being interrupted (or its kernel killed)
        # in the background; another replica must not get the kernel before then.
        if session.kernel is not None:
            with contextlib.suppress(Exception):
                await session.kernel.settle()
        if session.kernel is not None and session.kernel.dead and not session.lost_state:
            session.lost_state = "the kernel was killed or died during the previous run"
        session.busy = False
        session.touch()
        try:
            await self._store(session, lease)
        except LeaseLost as exc:
            # The call's outcome (if any) still reaches the caller; the record is
            # the new holder's now, and so is the kernel.
            log.warning("session %s: %s; the record was not written back", session.id, exc)
            await self._let_go(session, recorded_kernel_id)

    @staticmethod
    async def _interrupt_soon(kernel: Kernel) -> None:
        """An interrupt that arrived before the run: sent once the run has begun."""
        await asyncio.sleep(LATE_INTERRUPT)
        try:
            await kernel.interrupt()
        except Exception:
            log.exception("a late interrupt failed")

    async def interrupt(self, owner: str | None, session_id: str) -> bool:
        session, record = await self._lookup(owner, session_id)
        was_busy = session_id in await self.state.leased_ids([session_id])
        await self._interrupt_anywhere(session, record)
        return was_busy

    async def restart(self, owner: str | None, session_id: str) -> Session:
        session, record = await self._lookup(owner, session_id)
        if session_id in await self.state.leased_ids([session_id]):
            await self._interrupt_anywhere(session, record)
        async with session.lock, self.state.leased(session_id, self.lease_ttl) as lease:
            session, record = await self._lookup(owner, session_id)
            with contextlib.suppress(KernelError):
                await self._attach(session, record)
            if session.kernel is None and record.kernel_id:
                await self._delete_kernel(record.kernel_id)
            await self._replace_kernel(session, None)
            session.touch()
            try:
                await self._store(session, lease)
            except LeaseLost:
                await self._let_go(session, record.kernel_id)  # ends the new kernel
                raise
            return session

    async def close_session(self, owner: str | None, session_id: str) -> Session:
        session, record = await self._lookup(owner, session_id)
        if session_id in await self.state.leased_ids([session_id]):
            with contextlib.suppress(KernelError):
                await self._interrupt_anywhere(session, record)
        how = f"was closed at {_now().isoformat(timespec='seconds')}"
        if not await self.state.remove(session_id, owner, how, name=record.name):
            await self._lookup(owner, session_id)  # closed or culled meanwhile: says so
            raise SessionNotFound(session_id)  # pragma: no cover
        self._sessions.pop(session_id, None)
        await self._finish(session, record.kernel_id)
        return session

    # -- internals ---------------------------------------------------------------
    async def _finish(self, session: Session, kernel_id: str) -> None:
        """End a removed session's kernel once the call in it (if any) is over."""
        lease = None
        async with session.lock:
            try:
                lease = await self.state.lease(session.id, self.lease_ttl, timeout=self.lease_ttl)
            except (TimeoutError, StateUnavailable):
                log.warning("session %s: ending its kernel while a call still holds it", session.id)
            try:
                kernel = session.kernel
                await self._end(session, now=True)
                if kernel is None or kernel.process.kernel_id != kernel_id:
                    await self._delete_kernel(kernel_id)
            finally:
                if lease is not None:
                    await lease.release()

    async def _cull_forever(self) -> None:
        period = max(0.05, min(self.idle_timeout / 4, 30.0))
        lead_for = max(4 * period, 2.0)
        while True:
            await asyncio.sleep(period)
            try:
                if await self.state.lead("culler", self._token, lead_for):
                    await self._cull_once()
            except asyncio.CancelledError:
                raise
            except StateUnavailable as exc:
                log.warning("culling skipped: %s", exc)
            except Exception:
                log.exception("culling failed")

    async def _cull_once(self) -> None:
        now = time.time()
        for record in await self.state.records():
            if now - record.last_used < self.idle_timeout:
                continue
            lease = await self.state.try_lease(record.id, self.lease_ttl)
            if lease is None:
                continue  # in use right now
            try:
                fresh = await self.state.load(record.id)
                idle_for = time.time() - fresh.last_used if fresh else 0.0
                if fresh is None or idle_for < self.idle_timeout:
                    continue
                how = (
                    f"was culled at {_now().isoformat(timespec='seconds')} after "
                    f"{idle_for:.0f} s idle (KERNEL_MCP_SESSION_IDLE_TIMEOUT="
                    f"{self.idle_timeout:g})"
                )
                if not lease.valid:
                    continue  # stalled past the TTL: another replica may be using it now
                if not await self.state.remove(record.id, record.owner, how, name=fresh.name):
                    continue
                log.info("culled session %s after %.0f s idle", record.id, idle_for)
                session = self._sessions.pop(record.id, None)
                try:
                    if session is not None:
                        kernel = session.kernel
                        await self._end(session, now=True)
                        if kernel is not None and kernel.process.kernel_id == fresh.kernel_id:
                            continue
                    await self._delete_kernel(fresh.kernel_id)
                except Exception:
                    log.exception("culling session %s failed", record.id)
            finally:
                await lease.release()

    async def _tidy_forever(self) -> None:
        while True:
            await asyncio.sleep(TIDY_PERIOD)
            try:
                await self._tidy()
            except asyncio.CancelledError:
                raise
            except StateUnavailable as exc:
                log.warning("tidying cached sessions skipped: %s", exc)
            except Exception:
                log.exception("tidying cached sessions failed")

    async def _tidy(self) -> None:
        """Drop cached sessions another replica closed or culled, and idle connections.

        A connection this replica does not use still receives every IOPub
        message of the kernel (another replica's calls); closing it after
        ``ATTACHED_IDLE`` seconds keeps that from piling up.
        """
        if not self._sessions:
            return
        live = set(await self.state.ids())
        now = time.monotonic()
        for session_id, session in list(self._sessions.items()):
            if session_id not in live:
                self._forget(session_id)
                continue
            kernel = session.kernel
            if (
                kernel is None
                or session.lock.locked()
                or now - session.last_used_mono < ATTACHED_IDLE
            ):
                continue
            if kernel.recovering:
                continue  # a timed-out run is still being interrupted through it
            await self._detach(session)
