"""One local kernel process: jupyter_client's manager with the launch wrapped, and the
``kernels.process.KernelProcess`` seam over it (liveness without reaping, group kills).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from kernel_mcp.launch.cgroups import KernelCgroup
from kernel_mcp.launch.exits import describe_exit
from kernel_mcp.launch.sandbox import through_root
from kernel_mcp.launch.stderr import StderrPipe
from kernel_mcp.tasks import wait_within

__all__ = ["LocalProcess", "WrappedKernelManager"]

log = logging.getLogger(__name__)

#: How long a kernel's sandbox may take to appear (and a start to be ready), seconds.
START_TIMEOUT = 60.0
#: How long a polite shutdown waits for the kernel to exit, seconds.
SHUTDOWN_WAIT = 5.0
#: waitid(WNOWAIT) tells a leader's exit without reaping it (Linux, the BSDs); macOS's
#: Python lacks it, and Windows has neither it nor process groups.
CAN_PEEK = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class WrappedKernelManager(AsyncKernelManager):
    """jupyter_client's manager, with the launch command wrapped and interrupts by message.

    ``wrap_command`` turns the kernelspec's formatted argv into the one launched
    (the sandbox, the cgroup join). With ``message_interrupts`` the kernel is
    interrupted by an ``interrupt_request`` on its control channel: a SIGINT to
    the launched process (bwrap) would never reach the kernel inside.
    """

    wrap_command: Callable[[list[str]], list[str]] | None = None
    message_interrupts: bool = False
    sandbox_pid: int | None = None
    """A process in the kernel's sandbox, whose ``/proc/<pid>/root`` reaches its
    sockets (its connection folder is a tmpfs of its own: ``sandbox.through_root``)."""
    reach_through_sandbox: bool = False

    def format_kernel_cmd(self, extra_arguments: list[str] | None = None) -> list[str]:
        argv = super().format_kernel_cmd(extra_arguments)
        return self.wrap_command(argv) if self.wrap_command is not None else argv

    async def _async_post_start_kernel(self, **kw: Any) -> None:
        # Before jupyter_client connects its control socket: the URL names the pid.
        if self.reach_through_sandbox:
            self.sandbox_pid = await _sandbox_init(self.provisioner)
        await super()._async_post_start_kernel(**kw)

    def _make_url(self, channel: str) -> str:
        if self.sandbox_pid is None:
            return str(super()._make_url(channel))
        ip = through_root({"ip": self.ip}, self.sandbox_pid)["ip"]
        return f"{self.transport}://{ip}-{getattr(self, f'{channel}_port')}"

    def client(self, **kwargs: Any) -> Any:
        client = super().client(**kwargs)
        client.ip = through_root({"ip": self.ip}, self.sandbox_pid)["ip"]
        return client

    @property
    def kernel_spec(self) -> KernelSpec | None:
        spec = super().kernel_spec
        if spec is not None and self.message_interrupts:
            spec.interrupt_mode = "message"
        return spec


class LocalProcess:
    """A kernel process started by jupyter_client on this machine.

    The kernel leads its own process group. A group id stays the kernel's only
    while its leader is unreaped (running, or a zombie holding its pid): once
    the leader is reaped and the group empties, Linux may hand the id to an
    unrelated group. So liveness is read without reaping (``waitid`` with
    ``WNOWAIT``, where jupyter_client's ``is_alive`` would reap through
    ``Popen.poll``), the group is killed first, and only then is jupyter_client
    left to reap the leader. Once the leader is reaped, nothing is signalled.
    """

    backend = "local"
    prepared = None

    def __init__(
        self,
        manager: AsyncKernelManager,
        *,
        stderr: StderrPipe | None = None,
        sandboxed: bool = False,
        cgroup: KernelCgroup | None = None,
        folder: Path | None = None,
    ) -> None:
        self.manager = manager
        self.kernel_id = manager.kernel_id or uuid.uuid4().hex
        provisioner = manager.provisioner
        # Keep the Popen: jupyter_client drops provisioner.process on shutdown, and
        # the exit status is still wanted afterwards ("killed by SIGKILL").
        self._popen: subprocess.Popen[bytes] | None = getattr(provisioner, "process", None)
        self.pid: int | None = self._popen.pid if self._popen is not None else None
        """The launched process: the kernel itself, or (sandboxed) its bwrap."""
        self.pgid: int | None = getattr(provisioner, "pgid", None) or self.pid
        self.stderr = stderr
        """The kernel's stderr, a pipe drained into a short tail (never a file)."""
        self.sandboxed = sandboxed
        """The kernel runs in the sandbox (list_sessions shows this)."""
        self.cgroup = cgroup
        self.folder = folder
        self._kernel_pid: int | None = None
        self._reaped_elsewhere = False

    @property
    def connection_file(self) -> Path:
        return Path(self.manager.connection_file)

    @property
    def kernel_pid(self) -> int | None:
        """The kernel's own pid as this server sees it (inside the sandbox it is 2)."""
        if not self.sandboxed:
            return self.pid
        if self._kernel_pid is None and self.pid is not None and not self._reaped():
            self._kernel_pid = _namespace_leader(self.pid)
        return self._kernel_pid

    async def is_alive(self) -> bool:
        if self._popen is None:
            return bool(await self.manager.is_alive())
        return self._returncode() is None and not self._reaped_elsewhere

    async def interrupt(self) -> None:
        if self._returncode() is not None or self._reaped_elsewhere:
            return  # jupyter_client would signal the group of a dead leader
        with contextlib.suppress(Exception):
            await self.manager.interrupt_kernel()

    async def kill(self) -> None:
        self._kill_group()
        await self._release()

    async def shutdown(self) -> None:
        try:
            if await self.is_alive():
                # As jupyter_client does: a busy kernel handles the request only once
                # it is interrupted.
                await self.interrupt()
                await self.manager.request_shutdown()
                await self._wait_exit(SHUTDOWN_WAIT)
        except Exception as exc:
            log.debug("polite kernel shutdown failed: %s", exc)
        finally:
            # Children the kernel started share its process group: end them too,
            # while the leader (exited or not) is still unreaped.
            await self.kill()

    def exit_description(self) -> str:
        code = self._returncode()
        if code is None:
            return "the kernel stopped responding"
        # A sandboxed kernel's status is bwrap's, its namespace init.
        return describe_exit(code, namespaced=self.sandboxed, cgroup=self.cgroup)

    def rss_bytes(self) -> int | None:
        pid = self.kernel_pid
        if pid is None or self._reaped():
            return None  # a reaped pid may be someone else's
        return _rss(pid)

    def stderr_tail(self) -> str:
        """The end of what the kernel wrote to its stderr, absolute paths shortened."""
        return self.stderr.tail() if self.stderr is not None else ""

    # -- internals ---------------------------------------------------------------
    def _returncode(self) -> int | None:
        """The leader's exit status, Popen-style (negative: a signal); None while it runs.

        Never reaps: a finished leader stays a zombie, holding its pid and group id.
        """
        popen = self._popen
        if popen is None or self._reaped_elsewhere:
            return None
        if popen.returncode is not None:
            return popen.returncode
        if not CAN_PEEK:
            return self._returncode_from_table(popen)
        try:
            info = os.waitid(os.P_PID, popen.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT)
        except ChildProcessError:
            # Reaped behind Popen's back: its pid and group may be someone else's now.
            self._reaped_elsewhere = True
            return None
        if info is None:
            return None
        if info.si_code == os.CLD_EXITED:
            return int(info.si_status)
        return -int(info.si_status)

    def _returncode_from_table(self, popen: subprocess.Popen[bytes]) -> int | None:
        """Without waitid(WNOWAIT): psutil tells whether the leader ended (a zombie
        still holds its pid and group id); the group is ended then, while it is
        certainly the kernel's, and only then is the leader reaped for its status."""
        try:
            ended = psutil.Process(popen.pid).status() == psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            ended = True
        except psutil.Error:
            return None
        if not ended:
            return None
        self._signal_group()
        return popen.poll()

    async def _wait_exit(self, timeout: float) -> None:
        """Wait up to ``timeout`` seconds for the leader to end, without reaping it."""
        if self._popen is None or self._returncode() is not None:
            return
        try:
            pidfd = os.pidfd_open(self._popen.pid)
        except (AttributeError, OSError):  # not Linux >= 5.3: poll
            for _ in range(max(1, round(timeout / 0.05))):
                if self._returncode() is not None or self._reaped_elsewhere:
                    return
                await asyncio.sleep(0.05)
            return
        # A pidfd turns readable when the process ends; it never reaps.
        loop = asyncio.get_running_loop()
        ended = loop.create_future()
        loop.add_reader(pidfd, lambda: ended.done() or ended.set_result(None))
        try:
            await wait_within(ended, timeout)
        except asyncio.TimeoutError:
            pass
        finally:
            loop.remove_reader(pidfd)
            os.close(pidfd)

    def _reaped(self) -> bool:
        if self._popen is None:
            return True  # nothing known about the process: never signal its group
        self._returncode()
        return self._reaped_elsewhere or self._popen.returncode is not None

    def _kill_group(self) -> None:
        """SIGKILL the kernel's process group, only while it is certainly the kernel's."""
        if self._reaped() or self.pid is None:
            return
        self._signal_group()

    def _signal_group(self) -> None:
        if self.pid is None:
            return
        if not hasattr(os, "killpg"):  # Windows: no process groups; end the tree
            _kill_tree(self.pid)
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            if self.pgid == self.pid and self.pgid != os.getpgid(0):
                os.killpg(self.pgid, signal.SIGKILL)
            else:  # not a group leader: its group is not the kernel's to end
                os.kill(self.pid, signal.SIGKILL)

    async def _release(self) -> None:
        """Let jupyter_client reap the leader and free its sockets and files."""
        provisioner = self.manager.provisioner
        if self._reaped() and provisioner is not None and provisioner.has_process:
            # Already reaped, yet jupyter_client still holds the Popen: its shutdown
            # would signal the group again. wait() only forgets the process.
            with contextlib.suppress(Exception):
                await provisioner.wait()
        with contextlib.suppress(Exception):
            await self.manager.shutdown_kernel(now=True)
        if self.cgroup is not None and self._reaped():
            await self.cgroup.remove()
        if self.stderr is not None and self._reaped():
            self.stderr.close()
        if self.folder is not None and self._reaped():
            shutil.rmtree(self.folder, ignore_errors=True)


def _rss(pid: int) -> int | None:
    try:
        return int(psutil.Process(pid).memory_info().rss)
    except psutil.Error:
        return None


def _kill_tree(pid: int) -> None:
    """Kill a process and everything below it (where there are no process groups)."""
    with contextlib.suppress(psutil.Error):
        leader = psutil.Process(pid)
        for proc in [*leader.children(recursive=True), leader]:
            with contextlib.suppress(psutil.Error):
                proc.kill()


def _namespace_leader(pid: int) -> int | None:
    """The descendant of ``pid`` that is pid 2 of its PID namespace (a sandboxed kernel)."""
    todo = [pid]
    seen = 0
    while todo and seen < 64:
        current = todo.pop(0)
        seen += 1
        try:
            with open(f"/proc/{current}/status", encoding="ascii") as status:
                nspid = next((ln.split()[1:] for ln in status if ln.startswith("NSpid:")), [])
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except (OSError, ValueError):
            continue
        if len(nspid) > 1 and nspid[-1] == "2":
            return current
        todo.extend(int(child) for child in children)
    return None


async def _sandbox_init(provisioner: Any) -> int | None:
    """The pid of the sandbox's first process (bwrap's child), once bwrap made it.

    A few milliseconds after the launch; None if bwrap ended first (the start then
    fails on its own) or took longer than START_TIMEOUT.
    """
    process = getattr(provisioner, "process", None)
    if process is None:
        return None
    deadline = asyncio.get_running_loop().time() + START_TIMEOUT
    while asyncio.get_running_loop().time() < deadline and process.poll() is None:
        found = _first_child(process.pid)
        if found is not None:
            return found
        await asyncio.sleep(0.001)
    return None


def _first_child(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as children:
            found = children.read().split()
    except OSError:
        return None
    return int(found[0]) if found else None
