"""Sessions: named, owned kernels whose state persists across calls.

Ids are minted here (``secrets.token_urlsafe``) and are the only key: MCP
transport sessions are never used, because the 2026-07-28 protocol has none.
Every lookup takes the caller's principal; another principal's id is reported
exactly like an unknown one.

One :class:`SessionRegistry` serves every deployment. What varies sits behind
the session-store seam (``sessions.store.SessionStore``): where records live,
what a call's claim on a session is, and how this process holds a session's
kernel. In process (the default) sessions die with the process; a durable store
(``kernel_mcp.scale``) lets server replicas share them, attaching to a kernel
wherever it runs, and a claim there can be lost (``ClaimLost``) when a stalled
process is taken over.

Calls on one session run one at a time, in arrival order: a local FIFO
``asyncio.Lock``, then the store's claim (across processes, with a durable
store). Different sessions run in parallel. A culling task, owned by the
registry, closes sessions nobody used for ``idle_timeout`` seconds and leaves a
tombstone that says when; with a durable store only the store's elected leader
culls, and a second task drops cached sessions removed elsewhere and lets go of
kernel handles nobody here used for a while.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import datetime, timezone
from typing import TypeVar

from kernel_mcp.backends.base import KernelAttacher
from kernel_mcp.errors import ClaimLost, InvalidArgument, KernelError, SessionGone, SessionNotFound
from kernel_mcp.files.names import validate_name
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.sessions.attached import Attacher, refuse_restart
from kernel_mcp.sessions.records import Session, SessionRecord
from kernel_mcp.sessions.store import Claim, KernelSource, SessionStore
from kernel_mcp.tasks import TaskOwner, shielded_to_end, stop_task

__all__ = ["SessionRegistry"]

log = logging.getLogger(__name__)


def _stamp_now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


T = TypeVar("T")
#: With a durable store: cached sessions are checked this often, seconds.
TIDY_PERIOD = 5.0
#: With a durable store: a kernel handle unused this long is let go of, seconds.
ATTACHED_IDLE = 30.0
#: An interrupt asked for before the run began is sent this long after it begins.
LATE_INTERRUPT = 0.2


# -- the registry ---------------------------------------------------------------------
class SessionRegistry:
    """Every session this process serves, their limits, culling and kernels.

    Args:
        pool: where new kernels come from (for the session owner's workspace).
        store: where records live, and how this process holds a session's kernel
            (``InProcessStore()`` unless replicas share them).
        max_sessions: open sessions, over all principals.
        idle_timeout: seconds unused before a session is culled; 0 never.
        on_create: runs for a new session before its record is first written
            (the recording is made there, and the record names it).
        on_close: runs when a session ends (closed or culled), before its kernel stops.
        on_forget: runs when this process drops a session another process removed.
        attacher: joins kernels someone else started (a gateway's); None: no attaching.
        clock: epoch seconds, for when a session was used and culling (injectable).
    """

    def __init__(
        self,
        pool: KernelSource,
        store: SessionStore,
        *,
        max_sessions: int,
        idle_timeout: float,
        on_create: Callable[[Session], Awaitable[None]] | None = None,
        on_close: Callable[[Session], Awaitable[None]] | None = None,
        on_forget: Callable[[Session], None] | None = None,
        attacher: KernelAttacher | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.pool = pool
        self.store = store
        self.max_sessions = max_sessions
        self.idle_timeout = idle_timeout
        self._on_create = on_create
        self._on_close = on_close
        self._on_forget = on_forget
        self._attacher = Attacher(attacher, store) if attacher is not None else None
        self.clock = clock
        self._sessions: dict[str, Session] = {}
        self._tasks = TaskOwner("sessions")
        """The culler, the janitor (a durable store's), and handles being let go of."""
        self._culler: asyncio.Task[None] | None = None
        self._janitor: asyncio.Task[None] | None = None

    # -- lifecycle ------------------------------------------------------------------
    async def start(self) -> None:
        await self.store.start()
        if self.idle_timeout > 0 and self._culler is None:
            self._culler = self._tasks.spawn(self._cull_forever(), name="cull")
        if self.store.durable and self._janitor is None:
            self._janitor = self._tasks.spawn(self._tidy_forever(), name="tidy")

    async def close(self) -> None:
        """Stop the background tasks. Sessions that die with this process end (their
        kernels are killed); shared ones are only let go: other replicas serve them."""
        if self._culler is not None:
            await stop_task(self._culler)
            self._culler = None
            await self.store.resign("culler")
        await stop_task(self._janitor)
        self._janitor = None
        sessions = list(self._sessions.values())
        self._sessions.clear()
        if self.store.durable:
            await asyncio.gather(*(self.store.detach(s) for s in sessions), return_exceptions=True)
        else:
            how = f"ended when the server stopped at {_stamp_now()}"
            for session in sessions:
                await self.store.remove(session.record, how)
            # A server that stops loses every kernel's state anyway: kill, don't ask.
            await asyncio.gather(
                *(self._end(s, now=True) for s in sessions), return_exceptions=True
            )
        await self._tasks.close(grace=None)  # handles being let go of finish
        await self.store.close()

    # -- looking sessions up ----------------------------------------------------------
    async def find(self, owner: str | None, session_id: str) -> Session:
        """The caller's session, refreshed from the store.

        While a call holds the session in this process, its record in memory is the
        one that call writes back, and it is left alone.

        Raises:
            SessionNotFound: unknown, or another principal's.
            SessionGone: closed or culled (says when).
        """
        return await self._load(owner, session_id, refresh=False)

    async def _load(self, owner: str | None, session_id: str, *, refresh: bool) -> Session:
        """``find``; with ``refresh`` the record is replaced even while the lock is held
        (the caller holds it, and the store's copy is the current one)."""
        record = await self.store.load(session_id)
        if record is None or record.owner != owner:
            if record is None:
                self._forget(session_id)
            gone = await self.store.tombstone(session_id)
            if record is None and gone is not None and gone[0] == owner:
                raise SessionGone(f"Session {session_id!r} {gone[1]}. Create a new one.")
            raise SessionNotFound(session_id)
        session = self._sessions.get(session_id)
        if session is None:
            session = self._sessions[session_id] = Session(record)
        elif refresh or not session.lock.locked():
            session.record = record
        return session

    async def owned(self, owner: str | None) -> list[Session]:
        """The caller's sessions, oldest first, as they are now (busy in any process)."""
        records = [r for r in await self.store.records() if r.owner == owner]
        busy = await self.store.busy([r.id for r in records])
        records.sort(key=lambda r: r.created_at)
        listed = []
        for record in records:
            cached = self._sessions.get(record.id)
            kernel = cached.kernel if cached is not None else None
            view = Session(record, kernel=kernel)
            view.busy = record.id in busy or (cached is not None and cached.busy)
            listed.append(view)
        return listed

    async def count(self) -> int:
        return len(await self.store.records())

    # -- the public operations -----------------------------------------------------------
    async def create(
        self,
        owner: str | None,
        name: str | None = None,
        *,
        kernel_name: str | None = None,
        kernel_id: str | None = None,
    ) -> Session:
        """Start a session with a kernel from the warm pool (or of ``kernel_name``), or
        attached to the running kernel ``kernel_id`` (someone else's, never stopped).

        Raises:
            TooManySessions: at KERNEL_MCP_MAX_SESSIONS.
            InvalidArgument: a bad or already used name; a kernel that cannot be
                attached to (or another session's).
        """
        if name is not None:
            validate_name(name)
        if kernel_id is None:
            return await self._create(owner, name, kernel_name, None)
        if self._attacher is None:
            raise InvalidArgument("this server cannot attach sessions to running kernels")
        async with self._attacher.claiming(owner, kernel_id):
            return await self._create(owner, name, None, kernel_id)

    async def _create(
        self, owner: str | None, name: str | None, kernel_name: str | None, kernel_id: str | None
    ) -> Session:
        session_id = secrets.token_urlsafe(16)
        now = self.clock()
        record = SessionRecord(
            id=session_id,
            name=name or session_id,
            owner=owner,
            kernel_name=kernel_name,
            created_at=now,
            last_used=now,
            attached=kernel_id is not None,
            # An attached kernel's earlier cells ran before the session: its recording
            # says so at the first cell.
            execution_count=0 if kernel_id is not None else None,
        )
        # Counted and named before the kernel is acquired (that may wait): two creates
        # with one name, in any process, make one session.
        await self.store.reserve(record, self.max_sessions)
        try:
            if kernel_id is not None and self._attacher is not None:
                kernel = await self._attacher.attach(kernel_id)
            else:
                kernel = await self.pool.acquire(kernel_name=kernel_name, owner=owner)
        except BaseException:
            await shielded_to_end(self.store.unreserve(record))
            raise
        session = Session(record, kernel=kernel)
        record.kernel_id = kernel.process.kernel_id
        try:
            if self._on_create is not None:
                await self._on_create(session)
            await self.store.save(record)
        except BaseException:
            await shielded_to_end(self._abandon(session))
            raise
        self._sessions[session_id] = session
        return session

    async def _abandon(self, session: Session) -> None:
        """A create that failed half-way: give back the reservation, end what it started."""
        with contextlib.suppress(Exception):
            await self.store.unreserve(session.record)
        await self._end(session, now=True)

    @contextlib.asynccontextmanager
    async def hold(self, owner: str | None, session_id: str) -> AsyncIterator[Session]:
        """The session, with no call running in it while inside (for exports)."""
        session = await self.find(owner, session_id)
        async with session.lock, self.store.claim(session_id, self._ignore) as claim:
            session = await self._load(owner, session_id, refresh=True)
            session.claim = claim
            try:
                yield session
            finally:
                session.claim = None

    @staticmethod
    async def _ignore() -> None:
        return None

    async def use(
        self, owner: str | None, session_id: str, work: Callable[[Session, Kernel], Awaitable[T]]
    ) -> T:
        """Run ``work`` with the session's kernel, alone, in arrival order.

        A dead kernel is replaced first; ``session.lost_state`` then says why.
        """
        session = await self.find(owner, session_id)

        async def interrupt() -> None:
            await self._interrupt_here(session)

        async with session.lock, self.store.claim(session_id, interrupt) as claim:
            # It may have been run, replaced, closed or culled (in any process) meanwhile.
            session = await self._load(owner, session_id, refresh=True)
            record = session.record
            recorded_kernel = record.kernel_id
            await self.store.attach(session, current=True)
            if record.busy:
                # Its last holder lost the session mid-call (its claim ended): stop that run,
                # which counted in the kernel unrecorded (so no gap note for it).
                record.execution_count = None
                log.warning("session %s: a call was cut off by a lost replica", session_id)
                if session.kernel is not None:
                    await session.kernel.interrupt()
            session.busy, session.claim = True, claim
            session.started = session.pending_interrupt = False
            late: asyncio.Task[None] | None = None
            try:
                await self.store.save(self._written(session), claim)
                if session.kernel is None or not await session.kernel.is_alive():
                    await self._replace_kernel(session, session.lost_state or "the kernel died")
                assert session.kernel is not None
                if self._attacher is not None:
                    self._attacher.refuse_busy(session)
                claim.check()  # a replacement may have taken a while
                session.started = True
                if session.pending_interrupt:
                    late = asyncio.ensure_future(self._interrupt_soon(session.kernel))
                try:
                    result = await work(session, session.kernel)
                except BaseException:
                    session.record.execution_count = None  # it may have run, unrecorded
                    raise
                finally:
                    await stop_task(late)
                session.record.runs += 1
                if session.kernel.dead:
                    session.lost_state = "the kernel was killed or died during the previous run"
                return result
            finally:
                session.claim = None
                session.started = False
                await shielded_to_end(self._end_call(session, claim, recorded_kernel))

    async def interrupt(self, owner: str | None, session_id: str) -> bool:
        """Interrupt the running call, if any, wherever it runs. Returns whether one was."""
        session = await self.find(owner, session_id)
        busy = session.busy or session_id in await self.store.busy([session_id])
        if busy or not session.record.attached:  # idle, an attached kernel runs others' cells
            await self._interrupt_anywhere(session)
        return busy

    async def restart(self, owner: str | None, session_id: str) -> Session:
        """Give the session a fresh kernel; its state is cleared.

        Raises:
            InvalidArgument: the session is attached to someone else's kernel.
        """
        session = await self.find(owner, session_id)
        refuse_restart(session)
        if session.busy or session_id in await self.store.busy([session_id]):
            await self._interrupt_anywhere(session)
        async with session.lock, self.store.claim(session_id, self._ignore) as claim:
            session = await self._load(owner, session_id, refresh=True)
            recorded_kernel = session.record.kernel_id
            with contextlib.suppress(KernelError):
                await self.store.attach(session)
            await self._replace_kernel(session, None)
            session.touch(self.clock())
            try:
                await self._store(session, claim)
            except ClaimLost:
                await self._let_go(session, recorded_kernel)  # ends the new kernel
                raise
            return session

    async def close_session(self, owner: str | None, session_id: str) -> Session:
        """Shut the session's kernel down; the id then reports it was closed."""
        session = await self.find(owner, session_id)
        if session.busy or session_id in await self.store.busy([session_id]):
            with contextlib.suppress(KernelError):
                await self._interrupt_anywhere(session)
        how = f"was closed at {_stamp_now()}"
        if not await self.store.remove(session.record, how):
            await self.find(owner, session_id)  # closed or culled meanwhile: says so
            raise SessionNotFound(session_id)  # pragma: no cover
        self._sessions.pop(session_id, None)
        await self._finish(session)
        return session

    # -- calls ----------------------------------------------------------------------------
    def _written(self, session: Session) -> SessionRecord:
        """The session's record as this call writes it back."""
        record = session.record
        record.kernel_id = session.kernel_id
        record.busy = session.busy
        return record

    async def _store(self, session: Session, claim: Claim) -> None:
        """Write the session back while ``claim`` holds; if it was closed meanwhile, end
        what this call started.

        Raises:
            ClaimLost: the claim is lost; nothing was written.
        """
        if await self.store.save(self._written(session), claim):
            return
        self._sessions.pop(session.id, None)
        kernel, session.kernel = session.kernel, None
        if kernel is not None:  # maybe a replacement the closer never knew of
            await kernel.shutdown(now=True)

    async def _end_call(self, session: Session, claim: Claim, recorded_kernel: str) -> None:
        """Settle the kernel, then write the session back, unless the claim was lost."""
        # A timed-out run may still be being interrupted (or its kernel killed) in the
        # background; another call, here or on another replica, must not start before.
        if session.kernel is not None:
            with contextlib.suppress(Exception):
                await session.kernel.settle()
        if session.kernel is not None and session.kernel.dead and not session.lost_state:
            session.lost_state = "the kernel was killed or died during the previous run"
        session.busy = False
        session.touch(self.clock())
        try:
            await self._store(session, claim)
        except ClaimLost as exc:
            # The call's outcome (if any) still reaches the caller; the record is
            # the new holder's now, and so is the kernel.
            log.warning("session %s: %s; the record was not written back", session.id, exc)
            await self._let_go(session, recorded_kernel)

    async def _let_go(self, session: Session, recorded_kernel: str) -> None:
        """After a lost claim: keep nothing of this call's kernel for later work.

        Another process may be serving the session now. A kernel this call
        started (the record never named it) is ended; the recorded one is only
        let go of, and the next call attaches afresh from the record.
        """
        kernel = session.kernel
        if kernel is not None and kernel.process.kernel_id != recorded_kernel:
            session.kernel = None
            await kernel.shutdown(now=True)
        else:
            await self.store.detach(session)

    # -- interrupts -------------------------------------------------------------------------
    async def _interrupt_here(self, session: Session) -> None:
        """Interrupt the call this process runs on the session (or once it begins)."""
        if session.started and session.kernel is not None:
            await session.kernel.interrupt()
        else:
            session.pending_interrupt = True  # asked while the call was starting

    async def _interrupt_anywhere(self, session: Session) -> None:
        if session.claim is not None:
            await self._interrupt_here(session)
            return
        if await self.store.relay_interrupt(session.id):
            return  # the process running the call interrupted it
        with contextlib.suppress(KernelError):
            await self.store.attach(session)
        if session.kernel is not None:
            await session.kernel.interrupt()

    @staticmethod
    async def _interrupt_soon(kernel: Kernel) -> None:
        """An interrupt that arrived before the run: sent once the run has begun."""
        await asyncio.sleep(LATE_INTERRUPT)
        try:
            await kernel.interrupt()
        except Exception:
            log.exception("a late interrupt failed")

    # -- kernels ----------------------------------------------------------------------------
    async def _replace_kernel(self, session: Session, lost: str | None) -> None:
        session.record.execution_count = None
        if session.record.attached and self._attacher is not None:
            await self._attacher.reattach(session, lost or "the connection was closed")
            return
        old, session.kernel = session.kernel, None
        if old is not None:
            await old.shutdown(now=True)
        elif session.record.kernel_id:
            await self.store.delete_kernel(session.record.kernel_id)
        session.kernel = await self.pool.acquire(
            kernel_name=session.record.kernel_name, owner=session.owner
        )
        session.record.kernel_id = session.kernel.process.kernel_id
        session.lost_state = f"{lost}; the session's state was lost" if lost else None

    async def _end(self, session: Session, *, now: bool = False) -> None:
        """The session is over: tell the owner (its recording), then stop its kernel."""
        kernel, session.kernel = session.kernel, None
        try:
            if self._on_close is not None:
                await self._on_close(session)
        finally:
            if kernel is not None:
                await kernel.shutdown(now=now)  # an attached kernel: only let go of
            elif session.record.kernel_id and not session.record.attached:
                await self.store.delete_kernel(session.record.kernel_id)

    async def _finish(self, session: Session) -> None:
        """End a removed session's kernel once the call in it (if any) is over."""
        async with session.lock:
            claim = await self.store.wait_claim(session.id)
            if claim is None:
                log.warning("session %s: ending its kernel while a call still holds it", session.id)
            try:
                await self._end(session, now=self.store.durable)
            finally:
                if claim is not None:
                    await claim.release()

    def _forget(self, session_id: str) -> None:
        """A session removed elsewhere: drop the cache (and its connection) here."""
        session = self._sessions.get(session_id)
        if session is not None and not session.lock.locked():
            self._sessions.pop(session_id, None)
            if self._on_forget is not None:
                self._on_forget(session)
            if session.kernel is not None and self.store.durable and not self._tasks.closed:
                self._tasks.spawn(self.store.detach(session), name="let go of a removed session")

    # -- culling ------------------------------------------------------------------------------
    async def _cull_forever(self) -> None:
        period = max(0.05, min(self.idle_timeout / 4, 30.0))
        lead_for = max(4 * period, 2.0)
        while True:
            await asyncio.sleep(period)
            try:
                if await self.store.lead("culler", lead_for):
                    await self.cull()
            except asyncio.CancelledError:
                raise
            except KernelError as exc:
                log.warning("culling skipped: %s", exc)
            except Exception:
                log.exception("culling failed")

    async def cull(self) -> None:
        """Close every session nobody used for ``idle_timeout`` seconds, leaving a
        tombstone that says when (the culler does this every so often)."""
        for record in await self.store.records():
            if self.clock() - record.last_used < self.idle_timeout:
                continue
            cached = self._sessions.get(record.id)
            if cached is not None and (cached.busy or cached.lock.locked()):
                continue
            claim = await self.store.try_claim(record.id)
            if claim is None:
                continue  # in use right now
            try:
                fresh = await self.store.load(record.id)
                idle_for = self.clock() - fresh.last_used if fresh else 0.0
                if fresh is None or idle_for < self.idle_timeout or not claim.valid:
                    continue  # used meanwhile, or stalled: another replica may have it now
                how = (
                    f"was culled at {_stamp_now()} after {idle_for:.0f} s idle "
                    f"(KERNEL_MCP_SESSION_IDLE_TIMEOUT={self.idle_timeout:g})"
                )
                if not await self.store.remove(fresh, how):
                    continue
                log.info("culled session %s after %.0f s idle", record.id, idle_for)
                session = self._sessions.pop(record.id, None) or Session(fresh)
                session.record = fresh
                try:
                    await self._end(session, now=self.store.durable)
                except Exception:
                    log.exception("culling session %s failed", record.id)
            finally:
                await claim.release()

    # -- a durable store's cache ---------------------------------------------------------------
    async def _tidy_forever(self) -> None:
        while True:
            await asyncio.sleep(TIDY_PERIOD)
            try:
                await self._tidy()
            except asyncio.CancelledError:
                raise
            except KernelError as exc:
                log.warning("tidying cached sessions skipped: %s", exc)
            except Exception:
                log.exception("tidying cached sessions failed")

    async def _tidy(self) -> None:
        """Drop cached sessions removed elsewhere, and let go of idle kernel handles.

        A handle this process does not use may still receive everything the kernel
        does for other processes' calls (a gateway connection gets every IOPub
        message); letting go of it after ``ATTACHED_IDLE`` seconds keeps that from
        piling up. The next call attaches again.
        """
        if not self._sessions:
            return
        live = {r.id for r in await self.store.records()}
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
            await self.store.detach(session)
