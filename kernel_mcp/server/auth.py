"""Bearer tokens, and who is calling.

Why not fastmcp's ``SessionProvider``: its ``create_session`` takes no name and
stores JSON only, while a session here is a live kernel with a lock, a
notebook and limits. Its isolation rule is kept: every session is owned by
``current_principal()`` and a foreign id is refused exactly like an unknown one.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.sessions import current_principal

__all__ = ["BearerTokens", "matching_token", "owner"]


def matching_token(offered: bytes, tokens: Sequence[bytes]) -> int | None:
    """The index of the token ``offered`` is, or None. Compared against every token, in
    constant time, so that timing says nothing about which matched or how much of one."""
    found = None
    for index, secret in enumerate(tokens):
        if hmac.compare_digest(offered, secret):
            found = index
    return found


class BearerTokens(TokenVerifier):
    """Static bearer tokens; each token is its own principal (``token-1``, ``token-2``...)."""

    def __init__(self, tokens: list[str]) -> None:
        super().__init__()
        self._tokens = [t.encode() for t in tokens]

    async def verify_token(self, token: str) -> AccessToken | None:
        index = matching_token(token.encode(), self._tokens)
        if index is None:
            return None
        principal = f"token-{index + 1}"
        return AccessToken(token=token, client_id=principal, scopes=[], subject=principal)


def owner() -> str | None:
    """The calling principal (None without tokens: everyone shares one namespace)."""
    return current_principal()
