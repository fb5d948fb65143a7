"""Where kernels come from. The single seam for kernel backends.

``LocalBackend`` starts ipykernel processes with jupyter_client's async API:

* each kernel talks over IPC sockets with a unique name inside a private 0700
  folder (concurrent IPC kernels sharing a folder collide on ``kernel-ipc-N``);
* its environment is the server's minus anything that looks like a secret;
* it gets an address-space limit (RLIMIT_AS) right after launch;
* it runs in its own process group (jupyter_client starts a new session), and
  stopping it ends the whole group, so nothing it spawned is left behind;
* ``JPY_PARENT_PID`` lets ipykernel exit by itself if the server is SIGKILLed.

A remote backend (a kernel gateway) implements the same two protocols:
``KernelBackend.start() -> Kernel`` and ``kernel.KernelProcess``.
"""

from __future__ import annotations

import asyncio
import contextlib
import fnmatch
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from jupyter_client.manager import AsyncKernelManager

from kernel_mcp.config import DEFAULT_SECRET_PATTERNS, Settings
from kernel_mcp.errors import KernelStartFailed
from kernel_mcp.kernel import Kernel
from kernel_mcp.outputs import OutputLimits

__all__ = [
    "KernelBackend",
    "LocalBackend",
    "LocalProcess",
    "kernel_environment",
    "scrub_paths",
]

log = logging.getLogger(__name__)

#: ipykernel options every kernel gets. An in-memory history avoids SQLite
#: locks when many kernels share one home folder.
KERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:", "--HistoryManager.enabled=False")
START_TIMEOUT = 60.0
#: How long a polite shutdown waits for the kernel to exit, seconds.
SHUTDOWN_WAIT = 5.0
#: How much of a kernel's stderr a start failure quotes.
STDERR_TAIL_BYTES = 4096
STDERR_TAIL_LINES = 12
_PATH_PART = r"[^\s/'\"`,;:()\[\]{}<>]"
_ABSOLUTE_PATH = re.compile(rf"(?<![\w.~/-])/(?:{_PATH_PART}+/)+({_PATH_PART}*)")


class KernelBackend(Protocol):
    """Starts kernels. Owns whatever the kernels share (folders, connections)."""

    name: str

    async def start(self, kernel_name: str | None = None) -> Kernel:
        """A started, ready kernel of ``kernel_name`` (None: the configured default)."""

    async def close(self) -> None: ...


def kernel_environment(
    environ: Mapping[str, str],
    *,
    allow: Iterable[str] = (),
    patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS,
) -> dict[str, str]:
    """The server's environment minus variables whose names look like secrets."""
    allowed = {name.upper() for name in allow}
    rules = [p.upper() for p in patterns]
    return {
        name: value
        for name, value in environ.items()
        if name.upper() in allowed
        or not any(fnmatch.fnmatchcase(name.upper(), rule) for rule in rules)
    }


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

    def __init__(self, manager: AsyncKernelManager, *, stderr_path: Path | None = None) -> None:
        self.manager = manager
        self.kernel_id = manager.kernel_id or uuid.uuid4().hex
        provisioner = manager.provisioner
        # Keep the Popen: jupyter_client drops provisioner.process on shutdown, and
        # the exit status is still wanted afterwards ("killed by SIGKILL").
        self._popen: subprocess.Popen[bytes] | None = getattr(provisioner, "process", None)
        self.pid: int | None = self._popen.pid if self._popen is not None else None
        self.pgid: int | None = getattr(provisioner, "pgid", None) or self.pid
        self.stderr_path = stderr_path
        self._reaped_elsewhere = False

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
        if code < 0:
            try:
                name = signal.Signals(-code).name
            except ValueError:
                name = f"signal {-code}"
            return f"killed by {name}"
        return f"exit code {code}"

    def rss_bytes(self) -> int | None:
        if self.pid is None or self._reaped():
            return None  # a reaped pid may be someone else's
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def stderr_tail(self, limit: int = STDERR_TAIL_BYTES) -> str:
        """The end of what the kernel wrote to its stderr, absolute paths shortened."""
        return _stderr_tail(self.stderr_path, limit)

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
            await asyncio.wait_for(ended, timeout)
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
        if self.stderr_path is not None and self._reaped():
            with contextlib.suppress(OSError):
                self.stderr_path.unlink()


def _stderr_tail(path: Path | None, limit: int = STDERR_TAIL_BYTES) -> str:
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


def _quoted(tail: str) -> str:
    return f"; the kernel's stderr ended with:\n{tail}" if tail else ""


def scrub_paths(text: str) -> str:
    """``text`` with every absolute path cut to its last component (``…/name``)."""
    return _ABSOLUTE_PATH.sub(lambda m: "…/" + m.group(1), text)


class LocalBackend:
    """Starts ipykernel processes on this machine (the default backend)."""

    name = "local"

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = OutputLimits(max_output_bytes=settings.max_output_bytes)
        self._dir = Path(tempfile.mkdtemp(prefix="kernel-mcp-"))  # mode 0700
        self._env = kernel_environment(os.environ, allow=settings.env_allow)
        # The server's own python must run the kernel even when the venv is not
        # activated, so "python3" means this interpreter's ipykernel.
        self._env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self._env.get('PATH', '')}"
        self._env.pop("JPY_PARENT_PID", None)
        self._env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        self._env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"

    async def start(self, kernel_name: str | None = None) -> Kernel:
        """Start one kernel (of ``kernel_name``, else the default) and wait until it answers.

        Raises:
            KernelStartFailed: it could not be launched or did not become ready;
                the message ends with the tail of the kernel's stderr.
        """
        spec = kernel_name or self.settings.kernel_name
        name = uuid.uuid4().hex[:12]
        manager = AsyncKernelManager(
            kernel_name=spec,
            transport="ipc",
            ip=str(self._dir / name),
            connection_file=str(self._dir / f"{name}.json"),
        )
        # A private stderr: a kernel's noise (a KeyboardInterrupt traceback while it
        # starts, fd-level writes ipykernel echoes) must not reach the server's
        # stderr, which a stdio client shows as its MCP log.
        stderr_path = self._dir / f"{name}.stderr"
        stderr = os.open(
            stderr_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND | os.O_CLOEXEC, 0o600
        )
        try:
            await manager.start_kernel(
                # A kernel's stray writes to fd 1 must never reach a stdio MCP stream.
                stdout=subprocess.DEVNULL,
                stderr=stderr,
                env=dict(self._env),
                cwd=str(self.settings.projects_dir),
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
        except BaseException as exc:
            # The launch may have happened before the failure or the cancel.
            abandoned = LocalProcess(manager, stderr_path=stderr_path)
            tail = abandoned.stderr_tail()
            await abandoned.kill()
            with contextlib.suppress(OSError):
                stderr_path.unlink()
            if not isinstance(exc, Exception):
                raise
            raise KernelStartFailed(
                scrub_paths(f"could not start kernel {spec!r}: {exc}") + _quoted(tail)
            ) from exc
        finally:
            os.close(stderr)
        process = LocalProcess(manager, stderr_path=stderr_path)
        self._limit_memory(process.pid)
        client = manager.client()
        client.start_channels()
        kernel = Kernel(process, client, limits=self.limits)
        try:
            await client.wait_for_ready(timeout=START_TIMEOUT)
            kernel.kernel_info = await self._kernel_info(client)
        except BaseException as exc:
            tail = process.stderr_tail()
            await kernel.shutdown(now=True)
            if not isinstance(exc, Exception):
                raise
            raise KernelStartFailed(
                scrub_paths(f"kernel did not become ready: {exc}") + _quoted(tail)
            ) from exc
        return kernel

    async def close(self) -> None:
        shutil.rmtree(self._dir, ignore_errors=True)

    def _limit_memory(self, pid: int | None) -> None:
        limit_mb = self.settings.memory_limit_mb
        if not limit_mb or pid is None or not sys.platform.startswith("linux"):
            return
        import resource

        limit = limit_mb * 1024 * 1024
        try:
            resource.prlimit(pid, resource.RLIMIT_AS, (limit, limit))
        except (OSError, ValueError, AttributeError) as exc:  # pragma: no cover - non-Linux
            log.warning("could not set the kernel memory limit: %s", exc)

    @staticmethod
    async def _kernel_info(client: Any) -> dict[str, Any]:
        msg_id = client.kernel_info()
        for _ in range(20):
            reply = await client.get_shell_msg(timeout=START_TIMEOUT)
            if reply.get("parent_header", {}).get("msg_id") == msg_id:
                return dict(reply.get("content", {}))
        return {}
