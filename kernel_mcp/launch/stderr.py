"""A kernel's private stderr: what a start failure quotes, with server paths shortened."""

from __future__ import annotations

import os
import re
from pathlib import Path

__all__ = ["scrub_paths", "stderr_tail"]

#: How much of a kernel's stderr a start failure quotes.
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 12
_PATH_PART = r"[^\s/'\"`,;:()\[\]{}<>]"
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/-])/(?:{_PATH_PART}+/)+({_PATH_PART}*)")


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last component (``…/name``)."""
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), text)


def stderr_tail(path: Path | None, limit: int = STDERR_TAIL_BYTES) -> str:
    """The last lines of a private stderr file, absolute paths shortened ('' if none)."""
    if path is None:
        return ""
    try:
        with open(path, "rb") as stream:
            stream.seek(max(0, stream.seek(0, os.SEEK_END) - limit))
            raw = stream.read(limit)
    except OSError:
        return ""
    text = raw.decode("utf-8", errors="replace")
    lines = [line.rstrip() for line in text.splitlines() if line.strip()]
    if len(raw) >= limit and lines:
        lines = lines[1:]  # the first line is probably cut
    return scrub_paths("\n".join(lines[-STDERR_TAIL_LINES:]))
