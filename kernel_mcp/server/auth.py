"""Bearer tokens, and who is calling.

Why not fastmcp's ``SessionProvider``: its ``create_session`` takes no name and
stores JSON only, while a session here is a live kernel with a lock, a
notebook and limits. Its isolation rule is kept: every session is owned by
``current_principal()`` and a foreign id is refused exactly like an unknown one.
"""

from __future__ import annotations

import hmac

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.sessions import current_principal

__all__ = ["BearerTokens", "owner"]


class BearerTokens(TokenVerifier):
    """Static bearer tokens; each token is its own principal (``token-1``, ``token-2``...)."""

    def __init__(self, tokens: list[str]) -> None:
        super().__init__()
        self._tokens = [(t.encode(), f"token-{i}") for i, t in enumerate(tokens, start=1)]

    async def verify_token(self, token: str) -> AccessToken | None:
        offered = token.encode()
        found = None
        for secret, principal in self._tokens:
            # Compare against every token so timing says nothing about which matched.
            if hmac.compare_digest(offered, secret):
                found = principal
        if found is None:
            return None
        return AccessToken(token=token, client_id=found, scopes=[], subject=found)


def owner() -> str | None:
    """The calling principal (None without tokens: everyone shares one namespace)."""
    return current_principal()
