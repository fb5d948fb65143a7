"""The name rule for sessions and notebooks: never a path."""

from __future__ import annotations

import re

from kernel_mcp.errors import InvalidArgument

__all__ = ["validate_name"]

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


def validate_name(name: str) -> str:
    """A session or notebook name: 1-64 letters, digits, '-', '_', '.'; never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"Invalid name {str(name)[:80]!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name
