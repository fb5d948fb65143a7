"""HTTP connections: read timeouts, and a cap on connections that hold no valid token.

What uvicorn gives, and is used: ``timeout_keep_alive`` closes a connection idle
between requests (5 s), and h11 refuses request headers over 16 KiB
(``h11_max_incomplete_event_size``). What it does not have is written here, as
a subclass of its h11 protocol (uvicorn's ``http`` setting takes a protocol
class):

* **A header timeout.** uvicorn waits for a request's headers forever: a client
  that connects and sends half a request line holds a file descriptor for as
  long as it likes, and with the process's limit at 1,024, 1,100 of them left
  valid clients unable to connect. Here a request's headers must arrive within
  ``KERNEL_MCP_HEADER_TIMEOUT`` seconds of the connection (or of the first byte
  after the previous response); otherwise ``408`` and the connection closes.
* **A body timeout.** A request whose body stops arriving for
  ``KERNEL_MCP_BODY_TIMEOUT`` seconds gets ``408`` (if no response has started)
  and the connection closes.
* **A cap on unauthenticated connections.** A connection counts as
  unauthenticated until a request on it arrives whole with a valid bearer token
  (any whole request, when the server has no tokens). Past
  ``KERNEL_MCP_MAX_UNAUTHENTICATED`` such connections, the oldest is closed
  (``503`` when it is between requests) to make room for the new one: a flood of
  token-less connections then turns over among themselves, while a valid client,
  whose request arrives right after it connects, gets through.

Why not uvicorn's ``limit_concurrency``: it counts every connection and answers
``503`` to whoever asks once the count is reached, so a flood of half-open
connections would turn every valid client away: the lock-out it should prevent.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import Any, ClassVar

from uvicorn.protocols.http.h11_impl import H11Protocol

from kernel_mcp.config import Settings
from kernel_mcp.server.auth import matching_token

__all__ = ["ConnectionGuard", "guarded_protocol", "http_protocol"]

log = logging.getLogger("kernel_mcp.server")


def _plain_response(status: int, reason: str, text: str) -> bytes:
    """A whole HTTP/1.1 response that closes the connection, with a one-line reason."""
    body = (text + "\n").encode("utf-8")
    head = (
        f"HTTP/1.1 {status} {reason}\r\n"
        "content-type: text/plain; charset=utf-8\r\n"
        f"content-length: {len(body)}\r\n"
        "connection: close\r\n\r\n"
    )
    return head.encode("ascii") + body


class ConnectionGuard:
    """What the connections of one server share: their limits, and who is unauthenticated.

    Args:
        tokens: the bearer tokens (empty: no auth; a whole request authenticates).
        header_timeout: seconds a request's headers may take, from the connection
            or from the first byte after the previous response.
        body_timeout: seconds a request body may pause between two reads.
        max_unauthenticated: connections without a valid token kept at once.
    """

    def __init__(
        self,
        *,
        tokens: Sequence[str],
        header_timeout: float,
        body_timeout: float,
        max_unauthenticated: int,
    ) -> None:
        self._tokens = [t.encode() for t in tokens]
        self.header_timeout = header_timeout
        self.body_timeout = body_timeout
        self.max_unauthenticated = max_unauthenticated
        # Insertion-ordered: the first is the oldest.
        self._unauthenticated: dict[GuardedH11Protocol, None] = {}
        self.evicted = 0
        """Connections closed to make room (for the log and tests)."""

    @property
    def unauthenticated(self) -> int:
        return len(self._unauthenticated)

    def authenticates(self, headers: Sequence[tuple[bytes, bytes]]) -> bool:
        """Whether a request with these headers carries a valid bearer token (always,
        without tokens), checked as the auth middleware checks it (``auth.py``)."""
        if not self._tokens:
            return True
        offered = b""
        for name, value in headers:
            if name == b"authorization":
                scheme, _, credential = value.partition(b" ")
                if scheme.lower() == b"bearer":
                    offered = credential.strip()
        return matching_token(offered, self._tokens) is not None

    def arrived(self, connection: GuardedH11Protocol) -> None:
        """A new connection: unauthenticated until a request proves otherwise."""
        self._unauthenticated[connection] = None
        while len(self._unauthenticated) > self.max_unauthenticated:
            oldest = next(iter(self._unauthenticated))
            self.left(oldest)
            self.evicted += 1
            if self.evicted == 1 or self.evicted % 1000 == 0:
                # One line per thousand: a flood must not flood the log too.
                log.warning(
                    "more than %d connections without a valid token: the oldest are being "
                    "closed (%d so far; KERNEL_MCP_MAX_UNAUTHENTICATED)",
                    self.max_unauthenticated,
                    self.evicted,
                )
            oldest.refuse(
                503,
                "Service Unavailable",
                f"Too many connections without a valid token (more than "
                f"{self.max_unauthenticated}, KERNEL_MCP_MAX_UNAUTHENTICATED); this one "
                "waited longest and was closed.",
            )

    def left(self, connection: GuardedH11Protocol) -> None:
        """Authenticated, or gone."""
        self._unauthenticated.pop(connection, None)


class GuardedH11Protocol(H11Protocol):
    """uvicorn's h11 protocol, with the guard's timeouts and its unauthenticated cap."""

    guard: ClassVar[ConnectionGuard]

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._header_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None

    # -- asyncio.Protocol -------------------------------------------------------------
    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_header_timer()
        self.guard.arrived(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self.guard.left(self)
        self._cancel_timers()
        super().connection_lost(exc)

    def data_received(self, data: bytes) -> None:
        before = self.cycle
        between_requests = before is None or before.response_complete
        super().data_received(data)
        if self.transport.is_closing():
            return
        if self.cycle is not before:
            # A whole request line and headers arrived: a new request began.
            self._cancel(self._header_timer)
            self._header_timer = None
            if self.guard.authenticates(self.headers):
                self.guard.left(self)
        elif between_requests and self._header_timer is None:
            # The first bytes of the next request on a kept-alive connection.
            self._arm_header_timer()
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not cycle.response_complete:
            self._arm_body_timer()
        else:
            self._cancel(self._body_timer)
            self._body_timer = None

    # -- timers -----------------------------------------------------------------------
    def _arm_header_timer(self) -> None:
        self._cancel(self._header_timer)
        self._header_timer = self.loop.call_later(self.guard.header_timeout, self._headers_late)

    def _arm_body_timer(self) -> None:
        self._cancel(self._body_timer)
        self._body_timer = self.loop.call_later(self.guard.body_timeout, self._body_late)

    @staticmethod
    def _cancel(timer: asyncio.TimerHandle | None) -> None:
        if timer is not None:
            timer.cancel()

    def _cancel_timers(self) -> None:
        self._cancel(self._header_timer)
        self._cancel(self._body_timer)
        self._header_timer = self._body_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            return  # a request is being served; its headers did arrive
        self.refuse(
            408,
            "Request Timeout",
            f"The request's headers did not arrive within {self.guard.header_timeout:g} s "
            "(KERNEL_MCP_HEADER_TIMEOUT).",
        )

    def _body_late(self) -> None:
        self._body_timer = None
        cycle = self.cycle
        if cycle is None or not cycle.more_body or cycle.response_complete:
            return
        if self.flow.read_paused:
            # uvicorn stopped reading until the app takes what it has: the wait is the
            # app's, not the client's.
            self._arm_body_timer()
            return
        self.refuse(
            408,
            "Request Timeout",
            f"The request's body stopped arriving for {self.guard.body_timeout:g} s "
            "(KERNEL_MCP_BODY_TIMEOUT).",
        )

    def refuse(self, status: int, reason: str, text: str) -> None:
        """Answer ``status`` with a one-line reason if no response has begun, and close."""
        self._cancel_timers()
        transport = self.transport
        if transport is None or transport.is_closing():
            return
        cycle = self.cycle
        if cycle is None or cycle.response_complete or not cycle.response_started:
            if cycle is not None and not cycle.response_complete:
                # The app's later sends become no-ops, and its receive() says disconnect.
                cycle.disconnected = True
                cycle.message_event.set()
            transport.write(_plain_response(status, reason, text))
        log.debug("closed a connection from %s: %s", _peer(self.client), text)
        transport.close()


def _peer(client: tuple[str, int] | None) -> str:
    return f"{client[0]}:{client[1]}" if client else "?"


def guarded_protocol(guard: ConnectionGuard) -> type[GuardedH11Protocol]:
    """The protocol class to give uvicorn (``Config(http=...)``) for connections under
    ``guard``."""
    return type("KernelMCPHttpProtocol", (GuardedH11Protocol,), {"guard": guard})


def http_protocol(settings: Settings) -> type[GuardedH11Protocol]:
    """The protocol class for ``kernel-mcp serve``: the settings' timeouts and cap."""
    return guarded_protocol(
        ConnectionGuard(
            tokens=settings.tokens,
            header_timeout=settings.header_timeout,
            body_timeout=settings.body_timeout,
            max_unauthenticated=settings.max_unauthenticated,
        )
    )
