"""Bearer tokens, and who is calling.

Why not fastmcp's ``SessionProvider``: its ``create_session`` takes no name and
stores JSON only, while a session here is a live kernel with a lock, a
notebook and limits. Its isolation rule is kept: every session is owned by
the calling principal (``owner()``) and a foreign id is refused exactly like an unknown one.
"""

from __future__ import annotations

import hmac

from fastmcp.server.auth import AccessToken, TokenVerifier
from fastmcp.server.dependencies import get_access_token

__all__ = ["BearerTokens", "owner"]


class BearerTokens(TokenVerifier):
    """Static bearer tokens; each token is its own principal (``Settings.principals``)."""

    def __init__(self, principals: list[tuple[str, str]]) -> None:
        super().__init__()
        self._tokens = [(token.encode(), principal) for principal, token in principals]

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
    """The calling principal's name, as ``BearerTokens`` minted it (None without tokens:
    everyone shares one namespace). It names the principal's projects folder too."""
    token = get_access_token()
    return None if token is None else token.client_id
