"""Specification of ``kernel_mcp.server.connections``'s guard, without sockets: which
requests authenticate a connection, and which connection is closed when too many hold no
valid token (the server-level behaviour is in test_server_limits.py)."""

from __future__ import annotations

from typing import Any

from kernel_mcp.server.connections import ConnectionGuard


def guard(tokens: list[str], cap: int = 3) -> ConnectionGuard:
    return ConnectionGuard(
        tokens=tokens, header_timeout=20, body_timeout=60, max_unauthenticated=cap
    )


class Connection:
    """Stands in for a protocol instance: records how it was refused."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.refused: tuple[Any, ...] | None = None

    def refuse(self, status: int, reason: str, text: str) -> None:
        self.refused = (status, reason, text)


def test_a_valid_bearer_token_authenticates_and_nothing_else_does() -> None:
    checking = guard(["alpha", "beta"])
    assert checking.authenticates([(b"authorization", b"Bearer beta")])
    assert checking.authenticates([(b"authorization", b"bearer alpha")])
    for headers in (
        [],
        [(b"authorization", b"Bearer gamma")],
        [(b"authorization", b"Basic alpha")],
        [(b"authorization", b"Bearer ")],
        [(b"authorization", b"Bearer alphaX")],
        [(b"x-token", b"alpha")],
    ):
        assert not checking.authenticates(headers), headers


def test_without_tokens_every_whole_request_authenticates() -> None:
    assert guard([]).authenticates([])


def test_past_the_cap_the_oldest_unauthenticated_connection_is_closed() -> None:
    checking = guard(["t"], cap=2)
    first, second, third, fourth = (Connection(n) for n in ("1", "2", "3", "4"))
    checking.arrived(first)  # type: ignore[arg-type]
    checking.arrived(second)  # type: ignore[arg-type]
    checking.left(first)  # type: ignore[arg-type]  # it authenticated
    checking.arrived(third)  # type: ignore[arg-type]
    assert checking.unauthenticated == 2 and checking.evicted == 0
    checking.arrived(fourth)  # type: ignore[arg-type]
    assert second.refused is not None and second.refused[0] == 503
    assert "KERNEL_MCP_MAX_UNAUTHENTICATED" in second.refused[2]
    assert (first.refused, third.refused, fourth.refused) == (None, None, None)
    assert checking.unauthenticated == 2 and checking.evicted == 1
