"""Redis primitives for server replicas: records, tombstones, name claims, leases,
interrupt relays and the culling leader (``redis_store.RedisStore`` builds the
session store on them).

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

Fencing: a lease is *valid* only while it is not lost and was confirmed (taken
or renewed) less than its TTL ago, by this process's monotonic clock, measured
from before the request was sent, so it turns invalid no later than Redis lets
the key expire. A stalled event loop or a Redis outage longer than the TTL
therefore makes it invalid even before the renewer notices; a renewal that
finds another token, or renewals failing for longer than the TTL, mark it lost
for good. Writes that need the lease are fenced in Redis itself: the record is
saved by a script that writes only while the lease key still holds this
lease's token (``save(..., lease=)``), and ``Lease.fence()`` lets a caller check
before a write elsewhere (a recording) that it is still the holder.

Every script is registered once (``register_script``: EVALSHA, loading it again
only if Redis lost its script cache), never sent whole with EVAL per call.

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
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any, TypeVar
from urllib.parse import urlsplit, urlunsplit

from kernel_mcp.errors import ConfigError, LeaseLost, StateUnavailable
from kernel_mcp.sessions.records import SessionRecord
from kernel_mcp.tasks import TaskOwner, shielded_to_end, stop_task

__all__ = ["Lease", "LeaseLost", "SharedState", "StateUnavailable", "redacted_url"]

log = logging.getLogger(__name__)

T = TypeVar("T")

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
# KEYS[1] = record, KEYS[2] = ids set; ARGV[1] = id, ARGV[2] = record JSON.
# SADD first: it is the one that can fail (a wrong-type key), and a script that
# fails half-way keeps what it wrote; SET cannot fail after it.
_SAVE = """
redis.call('sadd', KEYS[2], ARGV[1])
redis.call('set', KEYS[1], ARGV[2])
return 1
"""
# KEYS[1] = lease key, KEYS[2] = record; ARGV[1] = token, ARGV[2] = record JSON.
# -1: the lease is not ours (lost); 0: the record is gone (closed); 1: written.
_SAVE_FENCED = """
if redis.call('get', KEYS[1]) ~= ARGV[1] then return -1 end
if redis.call('exists', KEYS[2]) == 0 then return 0 end
redis.call('set', KEYS[2], ARGV[2])
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


class Lease:
    """A held per-session lease; renewed by its own task until ``release``.

    ``valid`` is what a holder checks before acting on the session; ``fence()``
    raises LeaseLost when it is not. ``lost`` is final: once another holder may
    have had the key, this lease never becomes valid again.
    """

    def __init__(
        self,
        state: SharedState,
        session_id: str,
        key: str,
        token: str,
        ttl: float,
        *,
        confirmed_at: float,
    ) -> None:
        self._state = state
        self.session_id = session_id
        self.key = key
        self.token = token
        self.ttl = ttl
        self.lost = False
        self.confirmed_at = confirmed_at
        """Monotonic time (taken before the request) of the last successful take or renewal."""
        self._tasks = TaskOwner(f"lease {key}")
        self._renewer: asyncio.Task[None] | None = None
        self._released = False

    @property
    def valid(self) -> bool:
        """Held: not lost, not released, and confirmed within its TTL (so Redis cannot
        have let it expire yet)."""
        return (
            not self.lost and not self._released and time.monotonic() - self.confirmed_at < self.ttl
        )

    def fence(self) -> None:
        """Raise LeaseLost unless the lease is still ``valid``."""
        if not self.valid:
            raise LeaseLost(self.lost_message())

    def lost_message(self) -> str:
        return (
            f"the lease on session {self.session_id} was lost (not renewed within "
            f"KERNEL_MCP_LEASE_TTL={self.ttl:g} s); another replica may be serving the session"
        )

    def mark_lost(self, why: str) -> None:
        if not self.lost:
            self.lost = True
            log.warning("lease %s lost: %s; another replica may take it", self.key, why)

    def start_renewing(self) -> None:
        self._renewer = self._tasks.spawn(self._renew_forever(), name="renew")

    async def release(self) -> None:
        """Stop renewing and give the lease back (compare-and-delete).

        Finishes even if the caller is cancelled meanwhile, and then re-raises
        that cancel. A lost lease is not deleted: the key is another holder's or gone.
        """
        await shielded_to_end(self._release())

    async def _release(self) -> None:
        # Runs in a task of its own (shielded_to_end): a cancel aimed at the
        # caller cannot reach the renewer's stop here and be taken for the renewer's.
        self._renewer = None
        await self._tasks.close()
        if self._released or self.lost:
            return
        self._released = True  # from here on it is not this holder's to act on
        try:
            await self._state._run(_RELEASE, [self.key], [self.token])
        except StateUnavailable as exc:
            log.warning("could not release %s (it expires by itself): %s", self.key, exc)

    async def _renew_forever(self) -> None:
        ms = max(1, int(self.ttl * 1000))
        while True:
            await asyncio.sleep(self.ttl / 3)
            sent = time.monotonic()
            try:
                kept = await self._state._run(_RENEW, [self.key], [self.token, ms])
            except StateUnavailable as exc:
                if time.monotonic() - self.confirmed_at >= self.ttl:
                    self.mark_lost(f"not renewed for longer than its TTL ({exc})")
                    return
                log.warning("could not renew %s: %s", self.key, exc)
                continue
            if not kept:
                self.mark_lost("it expired while held (a stalled replica or a slow Redis)")
                return
            self.confirmed_at = sent


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
        self._scripts: dict[str, Any] = {}

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
        await self._call(self._client.ping())

    async def close(self) -> None:
        if self._redis is not None:
            with contextlib.suppress(Exception):
                await self._client.aclose()
            self._redis = None
            self._scripts.clear()

    @property
    def _client(self) -> Any:
        if self._redis is None:
            raise StateUnavailable(
                f"shared state at {redacted_url(self.url)} (KERNEL_MCP_STATE_URL) is not connected"
            )
        return self._redis

    async def _call(self, awaitable: Any) -> Any:
        try:
            return await awaitable
        except self._errors as exc:
            raise StateUnavailable(
                f"shared state at {redacted_url(self.url)} (KERNEL_MCP_STATE_URL) "
                f"is unavailable: {type(exc).__name__}: {exc}"
            ) from None

    async def _run(self, script: str, keys: list[str], args: list[Any]) -> Any:
        """Run one of this module's scripts: EVALSHA, loading it only when Redis lacks it."""
        registered = self._scripts.get(script)
        if registered is None:
            registered = self._scripts[script] = self._client.register_script(script)
        return await self._call(registered(keys=keys, args=args))

    def _key(self, *parts: str) -> str:
        return self.prefix + ":".join(parts)

    @property
    def _ids(self) -> str:
        return self._key("sessions")

    # -- records ----------------------------------------------------------------
    async def reserve(self, session_id: str, max_sessions: int) -> bool:
        """Count a new session in, unless ``max_sessions`` are open already (atomic)."""
        return bool(await self._run(_RESERVE, [self._ids], [session_id, max_sessions]))

    async def unreserve(self, session_id: str) -> None:
        await self._call(self._client.srem(self._ids, session_id))

    async def save(
        self, record: SessionRecord, *, only_if_exists: bool = False, lease: Lease | None = None
    ) -> bool:
        """Write a record (and count it), atomically. Returns whether it was written.

        With ``only_if_exists`` a closed session is not brought back. With
        ``lease`` (which implies ``only_if_exists``) the write is fenced: Redis
        writes only while the lease key still holds the lease's token.

        Raises:
            LeaseLost: ``lease`` is lost, or another holder has the key now.
            StateUnavailable: Redis failed; nothing was written.
        """
        key = self._key("session", record.id)
        if lease is not None:
            if lease.lost:
                raise LeaseLost(lease.lost_message())
            written = await self._run(_SAVE_FENCED, [lease.key, key], [lease.token, record.dumps()])
            if written == -1:
                lease.mark_lost("another holder has its key")
                raise LeaseLost(lease.lost_message())
            return bool(written)
        if only_if_exists:
            return bool(await self._call(self._client.set(key, record.dumps(), xx=True)))
        await self._run(_SAVE, [key, self._ids], [record.id, record.dumps()])
        return True

    async def load(self, session_id: str) -> SessionRecord | None:
        text = await self._call(self._client.get(self._key("session", session_id)))
        return SessionRecord.loads(text) if text else None

    async def load_many(self, ids: list[str]) -> list[SessionRecord]:
        if not ids:
            return []
        keys = [self._key("session", i) for i in ids]
        texts = await self._call(self._client.mget(keys))
        return [SessionRecord.loads(t) for t in texts if t]

    async def ids(self) -> list[str]:
        return sorted(await self._call(self._client.smembers(self._ids)))

    async def records(self) -> list[SessionRecord]:
        return await self.load_many(await self.ids())

    async def count(self) -> int:
        return int(await self._call(self._client.scard(self._ids)))

    async def delete(self, session_id: str) -> bool:
        """Remove a record without a tombstone, atomically. Returns whether it existed."""
        async with self._client.pipeline(transaction=True) as pipe:
            pipe.delete(self._key("session", session_id))
            pipe.srem(self._ids, session_id)
            removed, _ = await self._call(pipe.execute())
        return bool(removed)

    def _name_key(self, owner: str | None, name: str) -> str:
        return self._key("name", json.dumps([owner, name]))

    async def claim_name(self, owner: str | None, name: str, session_id: str) -> bool:
        """Give ``name`` to the (reserved) session, unless a live session of ``owner`` has it."""
        keys = [self._name_key(owner, name), self._ids]
        return bool(await self._run(_CLAIM, keys, [session_id]))

    async def release_name(self, owner: str | None, name: str, session_id: str) -> None:
        await self._run(_RELEASE, [self._name_key(owner, name)], [session_id])

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
        return bool(await self._run(_REMOVE, keys, [session_id, tomb, ttl]))

    # -- tombstones -----------------------------------------------------------------
    async def bury(self, session_id: str, owner: str | None, how: str) -> None:
        await self._call(
            self._client.set(
                self._key("gone", session_id),
                json.dumps([owner, how]),
                ex=max(1, int(self.tombstone_ttl)),
            )
        )

    async def tombstone(self, session_id: str) -> tuple[str | None, str] | None:
        text = await self._call(self._client.get(self._key("gone", session_id)))
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
        sent = time.monotonic()
        ok = await self._call(self._client.set(key, token, nx=True, px=max(1, int(ttl * 1000))))
        if not ok:
            return None
        lease = Lease(self, session_id, key, token, ttl, confirmed_at=sent)
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
    async def leased(self, session_id: str, ttl: float) -> AsyncIterator[Lease]:
        """Hold the session's lease while inside; it is given back on the way out, cancelled
        or not (a cancel that arrives meanwhile is re-raised once it is)."""
        lease = await self.lease(session_id, ttl)
        try:
            yield lease
        finally:
            await lease.release()

    async def leased_ids(self, ids: list[str]) -> set[str]:
        """Which of ``ids`` have their lease held right now."""
        if not ids:
            return set()
        found = await self._call(self._client.mget([self._lease_key(i) for i in ids]))
        return {i for i, holder in zip(ids, found, strict=False) if holder}

    # -- interrupts across replicas ------------------------------------------------------
    async def request_interrupt(self, session_id: str) -> int:
        """Ask the replica running a call on the session to interrupt it.

        Returns how many listened (0: nobody is running a call there).
        """
        return int(await self._call(self._client.publish(self._key("interrupt", session_id), "1")))

    @contextlib.asynccontextmanager
    async def interrupt_requests(
        self, session_id: str, on_request: Callable[[], Awaitable[None]]
    ) -> AsyncIterator[None]:
        """While inside, ``await on_request()`` runs for every ``request_interrupt``.

        The subscription ends on the way out, cancelled or not (a cancel that
        arrives meanwhile is re-raised once it has).
        """
        pubsub = self._client.pubsub()
        channel = self._key("interrupt", session_id)
        listener: asyncio.Task[None] | None = None

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

        async def end() -> None:
            # In a task of its own (shielded_to_end): the caller's cancel cannot
            # reach stop_task here and be taken for the listener's.
            await stop_task(listener)
            if listener is not None:  # subscribed: confirm the end before leaving
                with contextlib.suppress(Exception):
                    await pubsub.unsubscribe(channel)
            with contextlib.suppress(Exception):
                await pubsub.aclose()

        try:
            await self._call(pubsub.subscribe(channel))
            # The confirmation: once read, a PUBLISH from anyone reaches us.
            await self._call(pubsub.get_message(timeout=2.0))
            listener = asyncio.ensure_future(listen())
            yield
        finally:
            await shielded_to_end(end())

    # -- the culling leader -------------------------------------------------------------
    async def lead(self, name: str, token: str, ttl: float) -> bool:
        """Take or keep the leader lock ``name``; True while ``token`` holds it."""
        key = self._key("leader", name)
        return bool(await self._run(_LEAD, [key], [token, max(1, int(ttl * 1000))]))

    async def resign(self, name: str, token: str) -> None:
        with contextlib.suppress(StateUnavailable):
            await self._run(_RELEASE, [self._key("leader", name)], [token])
