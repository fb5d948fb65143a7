"""A session store in Redis: sessions that any number of server replicas share.

Records, tombstones and name claims are ``SharedState``'s; a call's claim on a
session is a lease (renewed while held, fenced writes) together with a
subscription to the session's interrupt channel, so an ``interrupt_session``
sent to any replica reaches the one running the call.

A session's kernel runs on a gateway (:class:`RemoteKernels`), and any replica
attaches to it by id. Each record says which replica served its last call
(``served_by``, in the record's ``extra``): a replica whose connection dates from
before another one served the session drops it, and what it buffered, before a
call (``attach(current=True)``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import AsyncIterator
from typing import Protocol

from kernel_mcp.errors import (
    InvalidArgument,
    KernelError,
    KernelStartFailed,
    StateUnavailable,
    TooManySessions,
)
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.scale.state import Lease, SharedState
from kernel_mcp.sessions.records import Session, SessionRecord
from kernel_mcp.sessions.store import Claim, InterruptHandler

__all__ = ["INTERRUPT_RELAY_WAIT", "LeaseClaim", "RedisStore", "RemoteKernels", "served_by"]

log = logging.getLogger(__name__)

#: How long an interrupt waits for the lease holder to be listening, seconds.
INTERRUPT_RELAY_WAIT = 1.0
#: The key of the record's ``extra`` that names the replica that served the last call.
SERVED_BY = "served_by"


def served_by(record: SessionRecord) -> str | None:
    """The replica (its store's random token) that served the session's last call."""
    return record.extra.get(SERVED_BY)


class RemoteKernels(Protocol):
    """Kernels any replica can reach by id (a gateway's)."""

    async def connect(self, kernel_id: str) -> Kernel:
        """Attach to a running kernel.

        Raises:
            KernelStartFailed: the gateway is unreachable.
            KernelError: it no longer has the kernel.
        """

    async def disconnect(self, kernel: Kernel) -> None:
        """Close this process's connection to a kernel; the kernel keeps running."""

    async def delete_kernel(self, kernel_id: str) -> None: ...


class LeaseClaim:
    """A call's claim on a shared session: its lease."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    @property
    def valid(self) -> bool:
        return self.lease.valid

    def check(self) -> None:
        self.lease.fence()

    async def release(self) -> None:
        await self.lease.release()


class RedisStore:
    """``SessionStore`` over ``SharedState``: sessions outlive any one replica.

    Args:
        state: the Redis primitives.
        lease_ttl: how long a dead replica's hold on a session lasts, seconds.
        kernels: where the sessions' kernels run, reachable by id from any replica.
    """

    durable = True

    def __init__(self, state: SharedState, *, lease_ttl: float, kernels: RemoteKernels) -> None:
        self.state = state
        self.lease_ttl = lease_ttl
        self.kernels = kernels
        self._token = secrets.token_hex(16)

    async def start(self) -> None:
        await self.state.connect()

    async def close(self) -> None:
        await self.state.close()

    async def reserve(self, record: SessionRecord, max_sessions: int) -> None:
        if not await self.state.reserve(record.id, max_sessions):
            raise TooManySessions(
                f"Session limit reached ({max_sessions}, KERNEL_MCP_MAX_SESSIONS). "
                "Close a session with close_session first."
            )
        named = record.name != record.id
        # Claimed in Redis: two creates with one name, on any replicas, make one session.
        if named and not await self.state.claim_name(record.owner, record.name, record.id):
            await self.state.unreserve(record.id)
            raise InvalidArgument(f"You have an open session named {record.name!r} already.")

    async def unreserve(self, record: SessionRecord) -> None:
        if record.name != record.id:
            await self.state.release_name(record.owner, record.name, record.id)
        await self.state.unreserve(record.id)

    async def save(self, record: SessionRecord, claim: Claim | None = None) -> bool:
        record.extra[SERVED_BY] = self._token  # only a call served here saves
        if isinstance(claim, LeaseClaim):
            return await self.state.save(record, lease=claim.lease)
        return await self.state.save(record)

    async def load(self, session_id: str) -> SessionRecord | None:
        return await self.state.load(session_id)

    async def records(self) -> list[SessionRecord]:
        return await self.state.records()

    async def remove(self, record: SessionRecord, how: str) -> bool:
        return await self.state.remove(record.id, record.owner, how, name=record.name)

    async def tombstone(self, session_id: str) -> tuple[str | None, str] | None:
        return await self.state.tombstone(session_id)

    @contextlib.asynccontextmanager
    async def claim(self, session_id: str, on_interrupt: InterruptHandler) -> AsyncIterator[Claim]:
        async with (
            self.state.leased(session_id, self.lease_ttl) as lease,
            self.state.interrupt_requests(session_id, on_interrupt),
        ):
            yield LeaseClaim(lease)

    async def try_claim(self, session_id: str) -> Claim | None:
        lease = await self.state.try_lease(session_id, self.lease_ttl)
        return LeaseClaim(lease) if lease is not None else None

    async def wait_claim(self, session_id: str) -> Claim | None:
        # A holder that died keeps its lease at most one TTL.
        try:
            lease = await self.state.lease(session_id, self.lease_ttl, timeout=self.lease_ttl)
        except (TimeoutError, StateUnavailable):
            return None
        return LeaseClaim(lease)

    async def busy(self, ids: list[str]) -> set[str]:
        return await self.state.leased_ids(ids)

    async def relay_interrupt(self, session_id: str) -> bool:
        deadline = time.monotonic() + INTERRUPT_RELAY_WAIT
        while True:
            if await self.state.request_interrupt(session_id):
                return True
            # A lease holder that has not subscribed yet is a moment away from it.
            if time.monotonic() >= deadline or not await self.state.leased_ids([session_id]):
                return False
            await asyncio.sleep(0.05)

    async def lead(self, role: str, ttl: float) -> bool:
        return await self.state.lead(role, self._token, ttl)

    async def resign(self, role: str) -> None:
        await self.state.resign(role, self._token)

    # -- this replica's handle of a session's kernel ----------------------------------
    async def attach(self, session: Session, *, current: bool = False) -> None:
        if current and served_by(session.record) != self._token:
            # Served elsewhere since: drop our connection and what it buffered.
            await self.detach(session)
        kernel = session.kernel
        wanted = session.record.kernel_id
        if (kernel is not None and kernel.process.kernel_id == wanted) or not wanted:
            return
        await self.detach(session)
        try:
            session.kernel = await self.kernels.connect(wanted)
        except KernelStartFailed:
            raise
        except KernelError as exc:
            log.info("session %s: %s", session.id, exc)
            session.lost_state = session.lost_state or (
                "the kernel gateway no longer has the session's kernel (culled or lost)"
            )

    async def detach(self, session: Session) -> None:
        kernel, session.kernel = session.kernel, None
        if kernel is not None:
            await self.kernels.disconnect(kernel)

    async def delete_kernel(self, kernel_id: str) -> None:
        if kernel_id:
            with contextlib.suppress(KernelError):
                await self.kernels.delete_kernel(kernel_id)
