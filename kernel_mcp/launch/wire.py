"""The fork server's and the fork template's messages: the fork request, typed once, and
the one codec both sides use.

This module runs on both sides of the sockets: in the server (``launch.forkserver``
and ``launch.sockets`` import it) and in the fork template, which runs in the
kernel's interpreter, where kernel_mcp may not be installed: the fork server writes
this file beside the template's script (as :data:`MODULE`), and the template imports
it from there. So it imports nothing but the standard library.

Every message is one JSON object (``op`` says what it is) in one datagram of a Unix
SEQPACKET socket, with up to :data:`MAX_FDS` file descriptors alongside
(``SCM_RIGHTS``)::

    server -> template     fork            a ForkRequest; fds: the kernel's channel, its stderr
    template -> server     ready           its warm-up (fds: pidfds of itself and its maker)
                           exited          a kernel's end (id, exit code)
                           template_ended  the keeper says the template is gone
                           broken          the template could not warm up
    the kernel's channel   hello           the namespace's init (fd: its pidfd)
                           kernel          the kernel (fd: its pidfd)
                           go              (server) the kernel is in its cgroup
                           ready, broken   the kernel's sockets are bound / it failed
    maker <-> template     spare, next     a ready PID namespace (fds), the next one
"""

from __future__ import annotations

import dataclasses
import json
import os
import socket
from dataclasses import dataclass, field
from typing import Any

__all__ = ["MAX_FDS", "MAX_MESSAGE", "MODULE", "ForkRequest", "decode", "encode", "recv", "send"]

#: The largest message, bytes (a fork request with a large environment is a few KiB).
MAX_MESSAGE = 1 << 20
#: The most file descriptors one message carries.
MAX_FDS = 8
#: The name this module has beside the template's script (``import`` finds it there).
MODULE = "kmcp_fork_wire"


@dataclass
class ForkRequest:
    """What the template needs to make one kernel: its files, folders, limits, set-up."""

    id: str
    connection_file: str
    folder: str
    """The kernel's own folder (its connection file, its sockets)."""
    cwd: str
    projects: str
    workspace: str | None
    """A principal's own folder below ``projects``: the rest of ``projects`` is hidden."""
    projects_readonly: bool
    env: dict[str, str]
    arguments: list[str]
    namespaces: bool
    """Sandboxed: the kernel gets namespaces and mounts of its own."""
    network: bool
    userns: bool
    home: str
    keep: list[tuple[str, bool]]
    """Shared mounts its private /tmp or $HOME would hide: (path, read-only) bound back."""
    tmp_bytes: int
    memory_bytes: int
    max_file_bytes: int
    max_tasks: int
    setup: dict[str, Any] | None
    """The guards' settings (``kernels.setup.setup_config``); None: no set-up."""
    handoff: int | None = field(default=None)
    """The template's own: where a forked child hands the kernel's pid over."""

    def message(self) -> dict[str, Any]:
        """The request as the ``fork`` message."""
        request = dataclasses.asdict(self)
        request.pop("handoff")
        return {"op": "fork", **request}

    @classmethod
    def from_message(cls, message: dict[str, Any]) -> ForkRequest:
        """The request a ``fork`` message carries.

        Raises:
            ValueError: it is not a fork request this module can read.
        """
        if message.get("op") != "fork":
            raise ValueError(f"not a fork request: {message.get('op')!r}")
        names = {f.name for f in dataclasses.fields(cls)} - {"handoff"}
        missing = names - set(message)
        if missing:
            raise ValueError(f"a fork request without {', '.join(sorted(missing))}")
        fields = {name: message[name] for name in names}
        fields["keep"] = [(str(path), bool(readonly)) for path, readonly in fields["keep"]]
        return cls(**fields)


def encode(message: dict[str, Any]) -> bytes:
    """A message as its datagram."""
    return json.dumps(message).encode()


def decode(data: bytes, fds: list[int]) -> tuple[dict[str, Any] | None, list[int]]:
    """A datagram as its message, with the descriptors it carried: ``(None, [])`` at the
    end of the stream, ``({"op": "garbled"}, [])`` for one that is not JSON (its
    descriptors are closed either way)."""
    if not data:
        _close(fds)
        return None, []
    try:
        return json.loads(data), fds
    except ValueError:
        _close(fds)
        return {"op": "garbled"}, []


def send(
    sock: socket.socket, message: dict[str, Any], fds: list[int] | tuple[int, ...] = ()
) -> None:
    """Send one message (blocking), with ``fds`` alongside."""
    data = encode(message)
    if fds:
        socket.send_fds(sock, [data], list(fds))
    else:
        sock.send(data)


def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """Receive one message (blocking): see :func:`decode`."""
    data, fds, _, _ = socket.recv_fds(sock, MAX_MESSAGE, MAX_FDS)
    return decode(data, fds)


def _close(fds: list[int]) -> None:
    for fd in fds:
        os.close(fd)
