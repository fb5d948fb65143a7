"""Who may watch a session: single-use tickets, and the viewer grants they are exchanged for.

A view URL carries a **ticket**, never a bearer token: a random string, good once, for
one session, for a short time (60 s by default), bound to the principal that asked for
it. The page's first request exchanges it for a **grant**, an opaque random id kept
here and sent back as an HttpOnly, SameSite=Strict cookie scoped to that session's path;
the ticket is then gone (from this store and, by a redirect, from the address bar). A
used, unknown or expired ticket is refused, and so is a grant for another session.

Both are stored by the SHA-256 of their value, so that neither a lookup's timing nor a
dump of this process's dictionaries gives a usable value away. Both stores are bounded
(the oldest entries go first) and take an injectable clock, so expiry is tested without
waiting. Why not signed cookies (itsdangerous and the like): a grant must die with its
session and with the server process, which a server-side table gives for free, and a
signing key would be one more secret to configure for replicas that do not share
sessions' viewers anyway (a view follows the replica that runs the session).
"""

from __future__ import annotations

import hashlib
import secrets
import time
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

__all__ = ["Grant", "Grants", "Tickets"]

Clock = Callable[[], float]


@dataclass(frozen=True, slots=True)
class Grant:
    """A principal's right to watch one session, until ``expires`` (on the store's clock)."""

    principal: str | None
    """None: the server has no tokens (one principal)."""
    session_id: str
    expires: float


def _key(value: str) -> bytes:
    return hashlib.sha256(value.encode("utf-8", "surrogatepass")).digest()


class _Store:
    """Grants by the hash of their secret, oldest first, expired ones dropped as met."""

    def __init__(self, *, ttl: float, clock: Clock, capacity: int) -> None:
        self.ttl = ttl
        self.clock = clock
        self.capacity = capacity
        self._entries: OrderedDict[bytes, Grant] = OrderedDict()

    def add(self, principal: str | None, session_id: str) -> str:
        self._drop_expired()
        while len(self._entries) >= self.capacity:
            self._entries.popitem(last=False)
        secret = secrets.token_urlsafe(32)
        self._entries[_key(secret)] = Grant(principal, session_id, self.clock() + self.ttl)
        return secret

    def find(self, secret: str, session_id: str, *, consume: bool) -> Grant | None:
        key = _key(secret)
        grant = self._entries.pop(key, None) if consume else self._entries.get(key)
        if grant is None:
            return None
        if grant.expires <= self.clock():
            self._entries.pop(key, None)
            return None
        if grant.session_id != session_id:
            return None
        return grant

    def drop_session(self, session_id: str) -> None:
        for key in [k for k, g in self._entries.items() if g.session_id == session_id]:
            del self._entries[key]

    def _drop_expired(self) -> None:
        now = self.clock()
        while self._entries:
            key, oldest = next(iter(self._entries.items()))
            if oldest.expires > now:
                break
            del self._entries[key]

    def __len__(self) -> int:
        return len(self._entries)


class Tickets:
    """Single-use, short-lived tickets: the only secret a view URL carries."""

    def __init__(
        self, *, ttl: float = 60.0, clock: Clock = time.monotonic, capacity: int = 10_000
    ) -> None:
        self._store = _Store(ttl=ttl, clock=clock, capacity=capacity)

    @property
    def ttl(self) -> float:
        return self._store.ttl

    def issue(self, principal: str | None, session_id: str) -> str:
        """A new ticket for ``principal`` to watch ``session_id`` (checked by the caller:
        the session must be theirs)."""
        return self._store.add(principal, session_id)

    def redeem(self, ticket: str, session_id: str) -> Grant | None:
        """The ticket's grant, once: it is used up by this call whatever the outcome.
        None when it is unknown, used, expired, or for another session."""
        return self._store.find(ticket, session_id, consume=True)

    def __len__(self) -> int:
        return len(self._store)


class Grants:
    """The grants that view pages hold as cookies, by their opaque value."""

    def __init__(
        self, *, ttl: float = 12 * 3600.0, clock: Clock = time.monotonic, capacity: int = 10_000
    ) -> None:
        self._store = _Store(ttl=ttl, clock=clock, capacity=capacity)

    @property
    def ttl(self) -> float:
        return self._store.ttl

    def admit(self, grant: Grant) -> str:
        """A cookie value for ``grant``'s principal and session (a fresh expiry)."""
        return self._store.add(grant.principal, grant.session_id)

    def lookup(self, cookie: str, session_id: str) -> Grant | None:
        """The grant a cookie stands for, if it is current and for ``session_id``."""
        return self._store.find(cookie, session_id, consume=False)

    def revoke(self, session_id: str) -> None:
        """The session ended: its grants go with it."""
        self._store.drop_session(session_id)

    def __len__(self) -> int:
        return len(self._store)
