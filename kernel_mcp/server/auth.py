"""Bearer tokens, and who is calling.

Why not fastmcp's ``SessionProvider``: its ``create_session`` takes no name and
stores JSON only, while a session here is a live kernel with a lock, a
notebook and limits. Its isolation rule is kept: every session is owned by
the calling principal (``owner()``) and a foreign id is refused exactly like an unknown one.
"""

from __future__ import annotations

import hmac
from collections.abc import Sequence

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token

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
    """Static bearer tokens; each token is its own principal (``Settings.principals``)."""

    def __init__(self, principals: list[tuple[str, str]]) -> None:
        super().__init__()
        self._tokens = [token.encode() for _, token in principals]
        self._principals = [principal for principal, _ in principals]

    async def verify_token(self, token: str) -> AccessToken | None:
        index = matching_token(token.encode(), self._tokens)
        if index is None:
            return None
        principal = self._principals[index]
        return AccessToken(token=token, client_id=principal, scopes=[], subject=principal)


def owner() -> str | None:
    """The calling principal's name, as ``BearerTokens`` minted it (None without tokens:
    everyone shares one namespace). It names the principal's projects folder too."""
    token = get_access_token()
    return None if token is None else token.client_id
