"""The fork server's side of its sockets: ``launch.wire``'s messages read without
blocking the event loop and sent with a bound on the wait, and pidfds.
"""

from __future__ import annotations

import asyncio
import select
import socket
from typing import Any

from kernel_mcp.launch import wire

__all__ = ["ended", "host_pid", "readable", "recv", "send"]


async def recv(sock: socket.socket) -> tuple[dict[str, Any] | None, list[int]]:
    """One message (and the fds it carried); (None, []) at end of stream."""
    loop = asyncio.get_running_loop()
    while True:
        try:
            data, fds, _, _ = socket.recv_fds(sock, wire.MAX_MESSAGE, wire.MAX_FDS)
        except BlockingIOError:
            await readable(loop, sock.fileno())
            continue
        except (ConnectionResetError, OSError):
            return None, []
        return wire.decode(data, fds)


async def readable(loop: asyncio.AbstractEventLoop, fd: int) -> None:
    ready = loop.create_future()
    loop.add_reader(fd, lambda: ready.done() or ready.set_result(None))
    try:
        await ready
    finally:
        loop.remove_reader(fd)


def send(sock: socket.socket, message: dict[str, Any], fds: list[int] | None = None) -> None:
    data = wire.encode(message)
    # Small messages on a socket nobody else writes to: a full buffer means the peer
    # is stuck, and a short blocking wait is the honest answer.
    sock.settimeout(5.0)
    try:
        if fds:
            socket.send_fds(sock, [data], fds)
        else:
            sock.send(data)
    finally:
        sock.setblocking(False)


def host_pid(pidfd: int) -> int:
    """The pid a pidfd names, as this process's PID namespace numbers it."""
    with open(f"/proc/self/fdinfo/{pidfd}", encoding="ascii") as info:
        for line in info:
            if line.startswith("Pid:"):
                pid = int(line.split()[1])
                if pid > 0:
                    return pid
    raise OSError("the process has already ended")


def ended(pidfd: int) -> bool:
    """A pidfd turns readable when its process ends (it never reaps). poll, not select:
    a busy server's descriptors go past select's 1024."""
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    return bool(poller.poll(0))
