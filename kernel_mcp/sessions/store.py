"""Where sessions live: the ``SessionStore`` seam and the in-process store.

A :class:`SessionStore` keeps the records (owner, name, kernel id, times,
counters, notebook), the tombstones and the name claims; gives a call its
:class:`Claim` on a session; and holds this process's handle of a session's
kernel (``attach``, ``detach``). :class:`InProcessStore` is the default: sessions
live and die with this process, and so do their kernels. A store whose sessions
outlive the process (``durable``: ``kernel_mcp.scale.redis_store``, where server
replicas share them) attaches to a session's kernel wherever it runs, and its
claims can be lost (``ClaimLost``) when another process takes the session over.
"""

from __future__ import annotations

import contextlib
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager
from typing import Protocol

from kernel_mcp.errors import (
    InvalidArgument,
    TooManySessions,
)
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.sessions.records import Session, SessionRecord

__all__ = [
    "Claim",
    "InProcessStore",
    "InterruptHandler",
    "KernelSource",
    "SessionStore",
]

#: Tombstones an in-process store keeps ("was closed at ...").
TOMBSTONES = 1000

InterruptHandler = Callable[[], Awaitable[None]]


# -- the seams ------------------------------------------------------------------------
class Claim(Protocol):
    """One call's hold on a session (in process: always valid; a shared store's can be
    lost, once another process may have taken the session over)."""

    @property
    def valid(self) -> bool: ...
    def check(self) -> None:
        """Raise ClaimLost unless ``valid``: call it right before acting for the session."""

    async def release(self) -> None: ...


class SessionStore(Protocol):
    """Where session records live, and how a call gets a session to itself."""

    durable: bool
    """Sessions outlive this process (other processes serve them too): stopping lets
    go of their kernels instead of ending them, and cached sessions may go stale."""

    async def start(self) -> None: ...
    async def close(self) -> None: ...
    async def reserve(self, record: SessionRecord, max_sessions: int) -> None:
        """Count a new session in and claim its name, atomically.

        Raises:
            TooManySessions: ``max_sessions`` are open.
            InvalidArgument: the owner has an open session of that name.
        """

    async def unreserve(self, record: SessionRecord) -> None: ...
    async def save(self, record: SessionRecord, claim: Claim | None = None) -> bool:
        """Write a record; with ``claim``, only while it holds. False: removed meanwhile.

        Raises:
            ClaimLost: ``claim`` no longer holds the session; nothing was written.
        """

    async def load(self, session_id: str) -> SessionRecord | None: ...
    async def records(self) -> list[SessionRecord]: ...
    async def remove(self, record: SessionRecord, how: str) -> bool:
        """Delete the record, free its name, leave a tombstone; True for the one winner."""

    async def tombstone(self, session_id: str) -> tuple[str | None, str] | None: ...
    def claim(
        self, session_id: str, on_interrupt: InterruptHandler
    ) -> AbstractAsyncContextManager[Claim]:
        """Wait for the session; ``on_interrupt`` runs for interrupts relayed meanwhile."""

    async def try_claim(self, session_id: str) -> Claim | None: ...
    async def wait_claim(self, session_id: str) -> Claim | None:
        """Wait as long as a dead holder's claim can last; None if it still holds."""

    async def busy(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` a call holds right now (in any process)."""

    async def relay_interrupt(self, session_id: str) -> bool:
        """Interrupt the call another process runs on the session; False if none listens."""

    async def lead(self, role: str, ttl: float) -> bool:
        """Take or keep the leader lock ``role`` (culling); always True in process."""

    async def resign(self, role: str) -> None: ...

    async def attach(self, session: Session, *, current: bool = False) -> None:
        """Make ``session.kernel`` this process's handle of the kernel its record names.

        ``current``: a call is about to run in it, so a handle left from before another
        process served the session is dropped first, with what it buffered. A kernel
        that is gone leaves ``session.kernel`` None with ``lost_state`` saying so (the
        caller replaces it). In process a kernel missing here has died: nothing to do.

        Raises:
            KernelStartFailed: the kernels' host cannot be reached (it names it).
        """

    async def detach(self, session: Session) -> None:
        """Let go of this process's handle of the session's kernel, which runs on
        elsewhere (in process: nothing; the kernel is the session's only copy)."""

    async def delete_kernel(self, kernel_id: str) -> None:
        """End a kernel this process holds no handle of (never raises)."""


class KernelSource(Protocol):
    """Where a session's new kernels come from (the warm pools)."""

    async def acquire(self, *, kernel_name: str | None = None, owner: str | None = None) -> Kernel:
        """A started kernel nobody has used, for ``owner``'s workspace."""


# -- the in-process store ---------------------------------------------------------------
class _Held:
    """An in-process claim: the registry's lock already orders calls, so it always holds."""

    def __init__(self, store: InProcessStore, session_id: str) -> None:
        self._store = store
        self._id = session_id

    @property
    def valid(self) -> bool:
        return True

    def check(self) -> None:
        return None

    async def release(self) -> None:
        self._store._held.discard(self._id)


class InProcessStore:
    """Sessions that live and die with this process (the default)."""

    durable = False

    def __init__(self) -> None:
        self._records: dict[str, SessionRecord] = {}
        self._reserved: set[str] = set()
        self._names: dict[tuple[str | None, str], str] = {}
        self._gone: OrderedDict[str, tuple[str | None, str]] = OrderedDict()
        self._held: set[str] = set()

    async def start(self) -> None:
        return None

    async def close(self) -> None:
        return None

    async def reserve(self, record: SessionRecord, max_sessions: int) -> None:
        key = (record.owner, record.name)
        if record.name != record.id and key in self._names:
            raise InvalidArgument(f"You have an open session named {record.name!r} already.")
        if len(self._records) + len(self._reserved) >= max_sessions:
            raise TooManySessions(
                f"Session limit reached ({max_sessions}, KERNEL_MCP_MAX_SESSIONS). "
                "Close a session with close_session first."
            )
        self._reserved.add(record.id)
        self._names[key] = record.id

    async def unreserve(self, record: SessionRecord) -> None:
        self._reserved.discard(record.id)
        if self._names.get((record.owner, record.name)) == record.id:
            del self._names[(record.owner, record.name)]

    async def save(self, record: SessionRecord, claim: Claim | None = None) -> bool:
        if record.id in self._reserved:
            self._reserved.discard(record.id)
        elif record.id not in self._records:
            return False
        self._records[record.id] = record
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        return self._records.get(session_id)

    async def records(self) -> list[SessionRecord]:
        return list(self._records.values())

    async def remove(self, record: SessionRecord, how: str) -> bool:
        if self._records.pop(record.id, None) is None:
            return False
        await self.unreserve(record)
        self._gone[record.id] = (record.owner, how)
        while len(self._gone) > TOMBSTONES:
            self._gone.popitem(last=False)
        return True

    async def tombstone(self, session_id: str) -> tuple[str | None, str] | None:
        return self._gone.get(session_id)

    @contextlib.asynccontextmanager
    async def claim(self, session_id: str, on_interrupt: InterruptHandler) -> AsyncIterator[Claim]:
        self._held.add(session_id)
        held = _Held(self, session_id)
        try:
            yield held
        finally:
            await held.release()

    async def try_claim(self, session_id: str) -> Claim | None:
        if session_id in self._held:
            return None
        self._held.add(session_id)
        return _Held(self, session_id)

    async def wait_claim(self, session_id: str) -> Claim | None:
        # The registry's lock, held by the caller, already waited for the running call.
        return await self.try_claim(session_id)

    async def busy(self, ids: list[str]) -> set[str]:
        return {i for i in ids if i in self._held}

    async def relay_interrupt(self, session_id: str) -> bool:
        return False  # no other process can be running it

    async def lead(self, role: str, ttl: float) -> bool:
        return True

    async def resign(self, role: str) -> None:
        return None

    async def attach(self, session: Session, *, current: bool = False) -> None:
        return None  # in-process kernels are never detached: a missing one died

    async def detach(self, session: Session) -> None:
        return None

    async def delete_kernel(self, kernel_id: str) -> None:
        return None
