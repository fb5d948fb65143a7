"""Shared state for server replicas: the durable part of the session registry, in Redis.

Selected by ``KERNEL_MCP_STATE_URL``. Every replica keeps only caches (an
attached kernel connection and a local FIFO lock per session); what a session
*is* lives here, so any replica can serve any session::

    {prefix}session:{id}     JSON SessionRecord            (no expiry)
    {prefix}sessions         SET of live session ids       (the max_sessions count)
    {prefix}gone:{id}        JSON [owner, "was closed at ..."]   (expires: tombstone TTL)
    {prefix}lease:{id}       a holder's random token       (PX lease TTL, renewed)
    {prefix}leader:culler    the culling replica's token   (PX, renewed each tick)

Leases: ``SET NX PX`` with a random token; a task owned by the ``Lease``
renews it every third of the TTL while held; release is compare-and-delete
(Lua), so a replica never releases a lease it lost. A replica that dies holds
its leases only until they expire.

``redis`` is imported lazily: without ``KERNEL_MCP_STATE_URL`` it is not needed
(``pip install 'kernel-mcp[scale]'`` brings it).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import secrets
import time
from dataclasses import asdict, dataclass
from typing import Any
from urllib.parse import urlsplit, urlunsplit

from kernel_mcp.errors import ConfigError, KernelError

__all__ = ["Lease", "SessionRecord", "SharedState", "StateUnavailable", "redacted_url"]

log = logging.getLogger(__name__)

#: How long a tombstone ("was closed at ...") is kept, seconds.
TOMBSTONE_TTL = 7 * 24 * 3600
#: A waiting caller polls a held lease at most this often (it backs off from 10 ms).
LEASE_POLL_MAX = 0.2

# KEYS[1] = lease key, ARGV[1] = token
_RELEASE = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('del', KEYS[1]) end
return 0
"""
# KEYS[1] = lease key, ARGV[1] = token, ARGV[2] = ttl ms
_RENEW = """
if redis.call('get', KEYS[1]) == ARGV[1] then return redis.call('pexpire', KEYS[1], ARGV[2]) end
return 0
"""
# KEYS[1] = leader key, ARGV[1] = token, ARGV[2] = ttl ms
_LEAD = """
local holder = redis.call('get', KEYS[1])
if holder == ARGV[1] then redis.call('pexpire', KEYS[1], ARGV[2]) return 1 end
if holder then return 0 end
redis.call('set', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
"""
# KEYS[1] = ids set, ARGV[1] = id, ARGV[2] = max
_RESERVE = """
if redis.call('sismember', KEYS[1], ARGV[1]) == 1 then return 1 end
if redis.call('scard', KEYS[1]) >= tonumber(ARGV[2]) then return 0 end
redis.call('sadd', KEYS[1], ARGV[1])
return 1
"""
# KEYS[1] = record, KEYS[2] = ids set, KEYS[3] = tombstone, KEYS[4] = name claim;
# ARGV = id, tombstone, ttl s
_REMOVE = """
if redis.call('del', KEYS[1]) == 0 then return 0 end
redis.call('srem', KEYS[2], ARGV[1])
redis.call('set', KEYS[3], ARGV[2], 'EX', ARGV[3])
if redis.call('get', KEYS[4]) == ARGV[1] then redis.call('del', KEYS[4]) end
return 1
"""
# KEYS[1] = name claim, KEYS[2] = ids set; ARGV[1] = id.
# A claim whose session is no longer counted (closed, or its creator died) is stale.
_CLAIM = """
local holder = redis.call('get', KEYS[1])
if holder and holder ~= ARGV[1] and redis.call('sismember', KEYS[2], holder) == 1 then
  return 0
end
redis.call('set', KEYS[1], ARGV[1])
return 1
"""


class StateUnavailable(KernelError):
    """The shared state (Redis) could not be reached or answered an error."""


def redacted_url(url: str) -> str:
    """The URL without a password, for messages and logs."""
    try:
        parts = urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    if parts.password is None:
        return url
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    user = f"{parts.username}:***@" if parts.username else "***@"
    return urlunsplit((parts.scheme, user + host, parts.path, parts.query, parts.fragment))


def _redis_asyncio() -> Any:
    try:
        import redis.asyncio as redis_asyncio
    except ImportError:  # pragma: no cover - the test extra has it
        raise ConfigError(
            "KERNEL_MCP_STATE_URL needs the redis package: pip install 'kernel-mcp[scale]'"
        ) from None
    return redis_asyncio


@dataclass
class SessionRecord:
    """What any replica needs to serve a session. Times are epoch seconds."""

    id: str
    name: str
    owner: str | None
    kernel_id: str
    created_at: float
    last_used: float
    runs: int = 0
    notebook: str | None = None
    """The session's recording, relative to the notebooks folder."""
    lost_state: str | None = None
    busy: bool = False
    served_by: str | None = None
    """The replica (a random token per process) that ran the last call."""

    def dumps(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))

    @classmethod
    def loads(cls, text: str | bytes) -> SessionRecord:
        data = json.loads(text)
        fields = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in data.items() if k in fields})


class Lease:
    """A held per-session lease; renewed by its own task until ``release``."""

    def __init__(self, state: SharedState, key: str, token: str, ttl: float) -> None:
        self._state = state
        self.key = key
        self.token = token
        self.ttl = ttl
        self.lost = False
        self._renewer: asyncio.Task[None] | None = None

    def start_renewing(self) -> None:
        self._renewer = asyncio.ensure_future(self._renew_forever())

    async def release(self) -> None:
        if self._renewer is not None:
            self._renewer.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await self._renewer
            self._renewer = None
        try:
            await self._state._eval(_RELEASE, [self.key], [self.token])
        except StateUnavailable as exc:
            log.warning("could not release %s (it expires by itself): %s", self.key, exc)

    async def _renew_forever(self) -> None:
        ms = max(1, int(self.ttl * 1000))
        while True:
            await asyncio.sleep(self.ttl / 3)
            try:
                kept = await self._state._eval(_RENEW, [self.key], [self.token, ms])
            except StateUnavailable as exc:
                log.warning("could not renew %s: %s", self.key, exc)
                continue
            if not kept:
                self.lost = True
                log.warning("lease %s expired while held; another replica may take it", self.key)
                return


class SharedState:
    """Session records, tombstones, leases and the culling leader lock, over redis.asyncio."""

    def __init__(
        self,
        url: str,
        *,
        prefix: str = "kernel-mcp:",
        tombstone_ttl: float = TOMBSTONE_TTL,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.tombstone_ttl = tombstone_ttl
        self._redis: Any = None
        self._errors: tuple[type[BaseException], ...] = ()

    # -- lifecycle --------------------------------------------------------------
    async def connect(self) -> None:
        """Open the client and check that Redis answers.

        Raises:
            StateUnavailable: Redis is unreachable (the message names the URL).
        """
        redis_asyncio = _redis_asyncio()
        from redis.exceptions import RedisError

        self._errors = (RedisError, OSError, asyncio.TimeoutError)
        try:
            self._redis = redis_asyncio.from_url(
                self.url, decode_responses=True, socket_connect_timeout=5, socket_timeout=10
            )
        except ValueError as exc:
            raise ConfigError(f"KERNEL_MCP_STATE_URL: {exc}") from None
        await self._call(self._redis.ping())

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._redis.aclose()
            self._redis = None

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except self._errors as exc:
            raise StateUnavailable(
                f"shared state at {redacted_url(self.url)} (KERNEL_MCP_STATE_URL) "
                f"is unavailable: {type(exc).__name__}: {exc}"
            ) from None

    async def _eval(self, script: str, keys: list[str], args: list[Any]) -> Any:
        return await self._call(self._redis.eval(script, len(keys), *keys, *args))

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def _ids(self) -> str:
        return self._key("sessions")

    # -- records ----------------------------------------------------------------
    async def reserve(self, session_id: str, max_sessions: int) -> bool:
        """Count a new session in, unless ``max_sessions`` are open already (atomic)."""
        return bool(await self._eval(_RESERVE, [self._ids], [session_id, max_sessions]))

    async def unreserve(self, session_id: str) -> None:
        await self._call(self._redis.srem(self._ids, session_id))

    async def save(self, record: SessionRecord, *, only_if_exists: bool = False) -> bool:
        """Write a record. With ``only_if_exists`` a closed session is not brought back."""
        key = self._key("session", record.id)
        if only_if_exists:
            return bool(await self._call(self._redis.set(key, record.dumps(), xx=True)))
        await self._call(self._redis.set(key, record.dumps()))
        await self._call(self._redis.sadd(self._ids, record.id))
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        text = await self._call(self._redis.get(self._key("session", session_id)))
        return SessionRecord.loads(text) if text else None

    async def load_many(self, ids: list[str]) -> list[SessionRecord]:
        if not ids:
            return []
        keys = [self._key("session", i) for i in ids]
        texts = await self._call(self._redis.mget(keys))
        return [SessionRecord.loads(t) for t in texts if t]

    async def ids(self) -> list[str]:
        return sorted(await self._call(self._redis.smembers(self._ids)))

    async def records(self) -> list[SessionRecord]:
        return await self.load_many(await self.ids())

    async def count(self) -> int:
        return int(await self._call(self._redis.scard(self._ids)))

    async def delete(self, session_id: str) -> bool:
        """Remove a record without a tombstone. Returns whether it existed."""
        removed = await self._call(self._redis.delete(self._key("session", session_id)))
        await self.unreserve(session_id)
        return bool(removed)

    def _name_key(self, owner: str | None, name: str) -> str:
        return self._key("name", json.dumps([owner, name]))

    async def claim_name(self, owner: str | None, name: str, session_id: str) -> bool:
        """Give ``name`` to the (reserved) session, unless a live session of ``owner`` has it."""
        keys = [self._name_key(owner, name), self._ids]
        return bool(await self._eval(_CLAIM, keys, [session_id]))

    async def release_name(self, owner: str | None, name: str, session_id: str) -> None:
        await self._eval(_RELEASE, [self._name_key(owner, name)], [session_id])

    async def remove(
        self, session_id: str, owner: str | None, how: str, *, name: str | None = None
    ) -> bool:
        """Delete the record (and its name) and leave a tombstone, atomically; True for the
        one caller that removed it (two replicas closing or culling at once: only one wins)."""
        tomb = json.dumps([owner, how])
        keys = [
            self._key("session", session_id),
            self._ids,
            self._key("gone", session_id),
            self._name_key(owner, name if name is not None else session_id),
        ]
        ttl = max(1, int(self.tombstone_ttl))
        return bool(await self._eval(_REMOVE, keys, [session_id, tomb, ttl]))

    # -- tombstones -----------------------------------------------------------------
    async def bury(self, session_id: str, owner: str | None, how: str) -> None:
        await self._call(
            self._redis.set(
                self._key("gone", session_id),
                json.dumps([owner, how]),
                ex=max(1, int(self.tombstone_ttl)),
            )
        )

    async def tombstone(self, session_id: str) -> tuple[str | None, str] | None:
        text = await self._call(self._redis.get(self._key("gone", session_id)))
        if not text:
            return None
        owner, how = json.loads(text)
        return owner, how

    # -- leases -------------------------------------------------------------------------
    def _lease_key(self, session_id: str) -> str:
        return self._key("lease", session_id)

    async def try_lease(self, session_id: str, ttl: float) -> Lease | None:
        """Take the session's lease if nobody holds it; the caller must ``release`` it."""
        token = secrets.token_hex(16)
        key = self._lease_key(session_id)
        ok = await self._call(self._redis.set(key, token, nx=True, px=max(1, int(ttl * 1000))))
        if not ok:
            return None
        lease = Lease(self, key, token, ttl)
        lease.start_renewing()
        return lease

    async def lease(self, session_id: str, ttl: float, *, timeout: float | None = None) -> Lease:
        """Wait for the session's lease (a dead holder's expires after ``ttl``).

        Raises:
            TimeoutError: ``timeout`` passed first.
        """
        deadline = None if timeout is None else time.monotonic() + timeout
        delay = 0.01
        while True:
            lease = await self.try_lease(session_id, ttl)
            if lease is not None:
                return lease
            if deadline is not None and time.monotonic() >= deadline:
                raise TimeoutError(f"lease on session {session_id} not obtained in {timeout} s")
            await asyncio.sleep(delay)
            delay = min(LEASE_POLL_MAX, delay * 1.5)

    @contextlib.asynccontextmanager
    async def leased(self, session_id: str, ttl: float):  # type: ignore[no-untyped-def]
        lease = await self.lease(session_id, ttl)
        try:
            yield lease
        finally:
            await asyncio.shield(lease.release())

    async def leased_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` have their lease held right now."""
        if not ids:
            return set()
        found = await self._call(self._redis.mget([self._lease_key(i) for i in ids]))
        return {i for i, holder in zip(ids, found, strict=False) if holder}

    # -- interrupts across replicas ------------------------------------------------------
    async def request_interrupt(self, session_id: str) -> int:
        """Ask the replica running a call on the session to interrupt it.

        Returns how many listened (0: nobody is running a call there).
        """
        return int(await self._call(self._redis.publish(self._key("interrupt", session_id), "1")))

    @contextlib.asynccontextmanager
    async def interrupt_requests(self, session_id: str, on_request: Any):  # type: ignore[no-untyped-def]
        """While inside, ``await on_request()`` runs for every ``request_interrupt``."""
        pubsub = self._redis.pubsub()
        channel = self._key("interrupt", session_id)
        await self._call(pubsub.subscribe(channel))
        # The confirmation: once read, a PUBLISH from anyone reaches us.
        await self._call(pubsub.get_message(timeout=2.0))

        async def listen() -> None:
            while True:
                try:
                    message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=1.0)
                except self._errors as exc:
                    log.warning("interrupt channel of session %s failed: %s", session_id, exc)
                    return
                if message is not None:
                    try:
                        await on_request()
                    except Exception:
                        log.exception("interrupting session %s failed", session_id)

        listener = asyncio.ensure_future(listen())
        try:
            yield
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await listener
            with contextlib.suppress(Exception):
                await pubsub.unsubscribe(channel)
            with contextlib.suppress(Exception):
                await pubsub.aclose()

    # -- the culling leader -------------------------------------------------------------
    async def lead(self, name: str, token: str, ttl: float) -> bool:
        """Take or keep the leader lock ``name``; True while ``token`` holds it."""
        key = self._key("leader", name)
        return bool(await self._eval(_LEAD, [key], [token, max(1, int(ttl * 1000))]))

    async def resign(self, name: str, token: str) -> None:
        with contextlib.suppress(StateUnavailable):
            await self._eval(_RELEASE, [self._key("leader", name)], [token])
