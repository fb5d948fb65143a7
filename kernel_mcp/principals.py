"""Principals: who a bearer token names.

A principal is who owns sessions, runs and a projects folder. Each entry of
``KERNEL_MCP_TOKEN`` names one: ``NAME:TOKEN``, or a bare token named after a hash
of itself.
"""

from __future__ import annotations

import hashlib
import re

__all__ = ["principal_of"]

_PRINCIPAL = re.compile(r"^([A-Za-z0-9][A-Za-z0-9_.-]{0,31}):(.+)$")


def principal_of(entry: str) -> tuple[str, str]:
    """(principal, token) for one KERNEL_MCP_TOKEN entry.

    ``NAME:TOKEN`` names the principal; a bare token is named after a hash of itself,
    ``token-<10 hex digits>``. Either way the name stays the same when the list is
    reordered or another token is added, which matters because a principal's
    sessions and projects folder are found by it.
    """
    named = _PRINCIPAL.match(entry)
    if named:
        return named.group(1), named.group(2)
    digest = hashlib.sha256(b"kernel-mcp principal\0" + entry.encode()).hexdigest()
    return f"token-{digest[:10]}", entry
