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

__all__ = ["KernelBackend", "LocalBackend", "LocalProcess", "kernel_environment"]

log = logging.getLogger(__name__)

#: ipykernel options every kernel gets. An in-memory history avoids SQLite
#: locks when many kernels share one home folder.
KERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:", "--HistoryManager.enabled=False")
START_TIMEOUT = 60.0


class KernelBackend(Protocol):
    """Starts kernels. Owns whatever the kernels share (folders, connections)."""

    name: str

    async def start(self) -> Kernel: ...
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
    """A kernel process started by jupyter_client on this machine."""

    backend = "local"

    def __init__(self, manager: AsyncKernelManager) -> None:
        self.manager = manager
        self.kernel_id = manager.kernel_id or uuid.uuid4().hex
        provisioner = manager.provisioner
        # Keep the Popen: jupyter_client drops provisioner.process on shutdown, and
        # the exit status is still wanted afterwards ("killed by SIGKILL").
        self._popen = getattr(provisioner, "process", None)
        self.pid: int | None = self._popen.pid if self._popen is not None else None
        self.pgid: int | None = getattr(provisioner, "pgid", None) or self.pid

    async def is_alive(self) -> bool:
        return bool(await self.manager.is_alive())

    async def interrupt(self) -> None:
        with contextlib.suppress(Exception):
            await self.manager.interrupt_kernel()

    async def kill(self) -> None:
        self._kill_group()
        with contextlib.suppress(Exception):
            await self.manager.shutdown_kernel(now=True)

    async def shutdown(self) -> None:
        try:
            await asyncio.wait_for(self.manager.shutdown_kernel(now=False), timeout=5.0)
        except Exception:
            with contextlib.suppress(Exception):
                await self.manager.shutdown_kernel(now=True)
        finally:
            # Children the kernel started share its process group: end them too.
            self._kill_group()

    def exit_description(self) -> str:
        code = self._popen.poll() if self._popen is not None else None
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
        if self.pid is None:
            return None
        try:
            with open(f"/proc/{self.pid}/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("VmRSS:"):
                        return int(line.split()[1]) * 1024
        except (OSError, ValueError):
            return None
        return None

    def _kill_group(self) -> None:
        if self.pgid and self.pgid != os.getpgid(0):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(self.pgid, signal.SIGKILL)


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

    async def start(self) -> Kernel:
        name = uuid.uuid4().hex[:12]
        manager = AsyncKernelManager(
            kernel_name=self.settings.kernel_name,
            transport="ipc",
            ip=str(self._dir / name),
            connection_file=str(self._dir / f"{name}.json"),
        )
        try:
            await manager.start_kernel(
                # A kernel's stray writes to fd 1 must never reach a stdio MCP stream.
                stdout=subprocess.DEVNULL,
                env=dict(self._env),
                cwd=str(self.settings.projects_dir),
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
        except BaseException as exc:
            with contextlib.suppress(Exception):
                await manager.shutdown_kernel(now=True)
            if not isinstance(exc, Exception):
                raise
            raise KernelStartFailed(
                f"could not start kernel {self.settings.kernel_name!r}: {exc}"
            ) from exc
        process = LocalProcess(manager)
        self._limit_memory(process.pid)
        client = manager.client()
        client.start_channels()
        kernel = Kernel(process, client, limits=self.limits)
        try:
            await client.wait_for_ready(timeout=START_TIMEOUT)
            kernel.kernel_info = await self._kernel_info(client)
        except BaseException as exc:
            await kernel.shutdown()
            if not isinstance(exc, Exception):
                raise
            raise KernelStartFailed(f"kernel did not become ready: {exc}") from exc
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
