"""A session store in Redis: sessions that any number of server replicas share.

Records, tombstones and name claims are ``SharedState``'s; a call's claim on a
session is a lease (renewed while held, fenced writes) together with a
subscription to the session's interrupt channel, so an ``interrupt_session``
sent to any replica reaches the one running the call.
"""

from __future__ import annotations

import asyncio
import contextlib
import secrets
import time
from collections.abc import AsyncIterator

from kernel_mcp.errors import InvalidArgument, StateUnavailable, TooManySessions
from kernel_mcp.scale.state import Lease, SharedState
from kernel_mcp.sessions.records import SessionRecord
from kernel_mcp.sessions.store import Claim, InterruptHandler

__all__ = ["INTERRUPT_RELAY_WAIT", "LeaseClaim", "RedisStore"]

#: How long an interrupt waits for the lease holder to be listening, seconds.
INTERRUPT_RELAY_WAIT = 1.0


class LeaseClaim:
    """A call's claim on a shared session: its lease."""

    def __init__(self, lease: Lease) -> None:
        self.lease = lease

    @property
    def valid(self) -> bool:
        return self.lease.valid

    def fence(self) -> None:
        self.lease.fence()

    async def release(self) -> None:
        await self.lease.release()


class RedisStore:
    """``SessionStore`` over ``SharedState``: sessions outlive any one replica."""

    durable = True

    def __init__(self, state: SharedState, *, lease_ttl: float) -> None:
        self.state = state
        self.lease_ttl = lease_ttl
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
