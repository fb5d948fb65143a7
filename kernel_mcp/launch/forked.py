"""One kernel forked from a template, as the kernel driver sees it: the ``KernelProcess``
seam over pidfds (``launch.forkserver`` makes them).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
from pathlib import Path
from typing import Any, Protocol

import zmq
from jupyter_client.session import Session

from kernel_mcp.launch import sockets
from kernel_mcp.launch.cgroups import KernelCgroup
from kernel_mcp.launch.exits import describe_exit
from kernel_mcp.launch.sandbox import through_root
from kernel_mcp.launch.stderr import StderrPipe
from kernel_mcp.tasks import wait_within

__all__ = ["ForkedProcess"]

log = logging.getLogger(__name__)

SHUTDOWN_WAIT = 5.0


class Template(Protocol):
    """What a forked kernel asks of the template that forked it (``launch.forkserver``)."""

    exit_codes: dict[str, int]
    """Kernel id -> exit code, as the template (or its keeper) reported it."""

    def ended(self) -> bool: ...
    async def exit_notice(self, kernel_id: str, timeout: float) -> None: ...
    def released(self, kernel_id: str) -> None: ...


class ForkedProcess:
    """A kernel forked from a template: the ``KernelProcess`` seam (``kernels.process``).

    ``pid`` is the process that ends the kernel: its PID namespace's init (or the
    kernel itself without namespaces). Killing it through its pidfd ends every
    process in the namespace.
    """

    backend = "local"

    def __init__(
        self,
        *,
        template: Template,
        kernel_id: str,
        pidfd: int,
        folder: Path,
        stderr: StderrPipe,
        cgroup: KernelCgroup | None,
        connection: dict[str, Any],
        namespaced: bool,
    ) -> None:
        self.template = template
        self.kernel_id = kernel_id
        self._pidfd = pidfd
        self.pid: int | None = sockets.host_pid(pidfd)
        self.kernel_pid: int | None = None
        """The kernel's own pid as this server sees it (inside its namespace it is 2)."""
        self._kernel_fd: int | None = None
        """A pidfd of the kernel itself (not its namespace's init): is ``kernel_pid``
        still that kernel."""
        self.folder = folder
        self.connection_file = folder / "kernel.json"
        self.stderr = stderr
        self.cgroup = cgroup
        self.sandboxed = namespaced
        """The kernel runs in the sandbox (list_sessions shows this)."""
        self.forked = True
        self.prepared: tuple[str, ...] | None = None
        """The kernel ran kernel-mcp's set-up itself (``kernel.KERNEL_SETUP``), with
        these preload modules."""
        self._connection = through_root(connection, self.pid) if namespaced else connection
        self._namespaced = namespaced
        self._control: Any = None
        self._released = False
        self._code: int | None = None

    @property
    def client_info(self) -> dict[str, Any]:
        """The connection info a client uses (the sockets, reached from this server)."""
        return dict(self._connection)

    async def is_alive(self) -> bool:
        return not self._released and not sockets.ended(self._pidfd)

    async def interrupt(self) -> None:
        # SIGINT to the kernel's process group, sent now, as jupyter_client does for a
        # spawned kernel: the kernel called setsid, so what it started is interrupted
        # too, and an idle kernel ignores it. Not an interrupt_request on the control
        # channel: the kernel's control thread handles that whenever it gets to it,
        # which can be after the next execution has begun (and it is that one that
        # ends interrupted).
        fd, pid = self._kernel_fd, self.kernel_pid
        if self._released or fd is None or pid is None or sockets.ended(fd):
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, signal.SIGINT)

    async def kill(self) -> None:
        if not self._released and not sockets.ended(self._pidfd):
            with contextlib.suppress(ProcessLookupError, PermissionError, OSError):
                if not self._namespaced and self.pid is not None:
                    # Unnamespaced, the kernel leads its group: end what it started too.
                    os.killpg(self.pid, signal.SIGKILL)
                signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
        await self._release()

    async def shutdown(self) -> None:
        try:
            if await self.is_alive():
                await self.interrupt()
                self._send_control("shutdown_request", {"restart": False})
                await self._wait_ended(SHUTDOWN_WAIT)
        except Exception as exc:
            log.debug("polite shutdown of a forked kernel failed: %s", exc)
        finally:
            await self.kill()

    def exit_description(self) -> str:
        code = (
            self._code if self._code is not None else self.template.exit_codes.get(self.kernel_id)
        )
        if code is None:
            if sockets.ended(self._pidfd) and self.template.ended():
                return "killed (its fork template ended)"
            return "the kernel stopped responding"
        return describe_exit(code, namespaced=self._namespaced, cgroup=self.cgroup)

    def rss_bytes(self) -> int | None:
        """Proportional set size: pages shared with the template and siblings count in part."""
        if self.kernel_pid is None or self._released or sockets.ended(self._pidfd):
            return None
        try:
            with open(f"/proc/{self.kernel_pid}/smaps_rollup", encoding="ascii") as rollup:
                for line in rollup:
                    if line.startswith("Pss:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def stderr_tail(self) -> str:
        return self.stderr.tail()

    # -- internals ----------------------------------------------------------------------
    def _send_control(self, msg_type: str, content: dict[str, Any]) -> None:

        if self._control is None:
            info = self._connection
            session = Session(key=info["key"].encode(), signature_scheme=info["signature_scheme"])
            sock = zmq.Context.instance().socket(zmq.DEALER)
            sock.linger = 0
            sock.connect(f"ipc://{info['ip']}-{info['control_port']}")
            self._control = (session, sock)
        session, sock = self._control
        session.send(sock, msg_type, content)

    async def _wait_ended(self, timeout: float) -> None:
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(self._pidfd, lambda: ended.done() or ended.set_result(None))
        try:
            await wait_within(ended, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(self._pidfd)

    async def _release(self) -> None:
        if self._released:
            return
        await self._wait_ended(5.0)
        if not sockets.ended(self._pidfd):
            return  # not gone yet: a later kill() tries again
        self._released = True
        # The exit code comes from the template; give its notice a moment.
        await self.template.exit_notice(self.kernel_id, 1.0)
        self._code = self.template.exit_codes.get(self.kernel_id)
        if self._control is not None:
            self._control[1].close()
            self._control = None
        if self.cgroup is not None:
            await self.cgroup.remove()
        self.stderr.close()
        shutil.rmtree(self.folder, ignore_errors=True)
        os.close(self._pidfd)
        if self._kernel_fd is not None:
            os.close(self._kernel_fd)
            self._kernel_fd = None
        self.template.released(self.kernel_id)
