"""A kernel's private stderr: what a start failure quotes, with server paths shortened.

A kernel's stderr is a pipe the server drains (:class:`StderrPipe`), keeping only
its last few kilobytes: a file would be a host path the kernel could fill (ipykernel
keeps a copy of its original fd 2 that the code can write to without limit). The
fork template, which runs none of the user's code, keeps a private file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
from pathlib import Path

__all__ = ["StderrPipe", "scrub_paths", "stderr_tail"]

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


class StderrPipe:
    """A kernel's stderr: a pipe whose read end the event loop drains into a tail.

    ``write_fd`` goes to the kernel (close it here once handed over: :meth:`handed`);
    :meth:`start` drains on the running loop; :meth:`tail` reads what is left and
    quotes the last lines; :meth:`close` stops. Never blocks: the read end is
    non-blocking, and the kernel blocks (on its own stderr only) while the loop is
    busy.
    """

    def __init__(self, limit: int = STDERR_TAIL_BYTES) -> None:
        self.read_fd, self.write_fd = os.pipe2(os.O_CLOEXEC)
        os.set_blocking(self.read_fd, False)
        self.limit = limit
        self._kept = bytearray()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._closed = False
        self._ended = False

    @property
    def closed(self) -> bool:
        return self._closed

    def handed(self) -> None:
        """The kernel has its own copy of the write end: close ours (EOF with the kernel)."""
        if self.write_fd >= 0:
            os.close(self.write_fd)
            self.write_fd = -1

    def start(self) -> None:
        if self._closed or self._ended or self._loop is not None:
            return
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self.read_fd, self._drain)

    def tail(self) -> str:
        """The last lines written, absolute paths shortened ('' if none)."""
        self._drain()
        text = bytes(self._kept).decode("utf-8", errors="replace")
        lines = [line.rstrip() for line in text.splitlines() if line.strip()]
        if len(self._kept) >= self.limit and lines:
            lines = lines[1:]  # the first line is probably cut
        return scrub_paths("\n".join(lines[-STDERR_TAIL_LINES:]))

    def close(self) -> None:
        if self._closed:
            return
        self._drain()
        self._closed = True
        if self._loop is not None:
            with contextlib.suppress(Exception):
                self._loop.remove_reader(self.read_fd)
        os.close(self.read_fd)
        self.handed()

    def _drain(self) -> None:
        if self._closed:
            return
        while True:
            try:
                data = os.read(self.read_fd, 65536)
            except (BlockingIOError, InterruptedError):
                return
            except OSError:
                data = b""
            if not data:  # every writer is gone: nothing more will come
                self._ended = True
                if self._loop is not None:
                    with contextlib.suppress(Exception):
                        self._loop.remove_reader(self.read_fd)
                    self._loop = None
                return
            self._kept += data
            del self._kept[: -self.limit]
