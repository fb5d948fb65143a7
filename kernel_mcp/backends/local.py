"""Where kernels come from. The single seam for kernel backends.

``LocalBackend`` starts ipykernel processes with jupyter_client's async API:

* each kernel talks over IPC sockets inside its own 0700 folder below the
  backend's private folder (concurrent IPC kernels sharing a folder collide on
  ``kernel-ipc-N``); sandboxed, that folder is a 64 KiB tmpfs of the kernel's own
  holding its connection file (read-only) and sockets, which the server reaches
  through ``/proc/<pid>/root`` (``sandbox.through_root``);
* its stderr is a pipe the server drains (``launch.stderr.StderrPipe``);
* its environment is the server's minus anything that looks like a secret;
* by default it runs in a bubblewrap sandbox (``kernel_mcp.launch.sandbox``:
  its own mount, PID, network and user namespaces, limits set inside) and in a
  per-kernel cgroup where the server can make one (``kernel_mcp.launch.cgroups``);
  with ``KERNEL_MCP_SANDBOX=off`` it is a plain child with RLIMIT_AS set after launch;
* it runs in its own process group (jupyter_client starts a new session), and
  stopping it ends the whole group (sandboxed: the whole PID namespace), so
  nothing it spawned is left behind;
* it ends by itself if the server is SIGKILLed: sandboxed through bwrap's
  ``--die-with-parent``, otherwise through ``JPY_PARENT_PID``.

Off Linux (macOS, Windows: the portable path, docs/platforms.md) there is no
sandbox, fork template or cgroup; a kernel talks TCP on 127.0.0.1 (IPC paths
would outgrow macOS's 104-byte socket names, and Windows has none), and psutil
reads the process table where Linux's ``waitid`` and ``/proc`` are missing.

The sandbox wraps the kernelspec's command in ``format_kernel_cmd`` of a
jupyter_client manager subclass rather than in a kernel provisioner: a
provisioner is chosen by name through package entry points and the
kernelspec's metadata, so every kernelspec (a user's data-science one too)
would need editing, and it would replace the Popen handling this module relies
on (the process group, the unreaped leader). Wrapping the argv keeps both.

A remote backend (a kernel gateway) implements the same two protocols:
``KernelBackend.start() -> Kernel`` and ``kernel.KernelProcess``.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable
from pathlib import Path

from kernel_mcp.backends.base import kernel_environment
from kernel_mcp.backends.private_folder import make_private_folder
from kernel_mcp.backends.process import START_TIMEOUT, LocalProcess, WrappedKernelManager
from kernel_mcp.config import Settings
from kernel_mcp.errors import KernelStartFailed
from kernel_mcp.kernels.kernel import Kernel, wait_ready
from kernel_mcp.kernels.outputs import OutputLimits
from kernel_mcp.launch.cgroups import CgroupRoot, KernelCgroup, cgroup_root
from kernel_mcp.launch.forkserver import ForkServer, forking_possible
from kernel_mcp.launch.sandbox import PACKAGES, Sandbox, sandbox_for
from kernel_mcp.launch.sandbox import describe as describe_sandbox
from kernel_mcp.launch.stderr import StderrPipe, scrub_paths

__all__ = ["KERNEL_ARGUMENTS", "LocalBackend"]

log = logging.getLogger(__name__)

#: ipykernel options every kernel gets. An in-memory history avoids SQLite
#: locks when many kernels share one home folder.
KERNEL_ARGUMENTS = ("--HistoryManager.hist_file=:memory:", "--HistoryManager.enabled=False")


def _quoted(tail: str) -> str:
    return f"; the kernel's stderr ended with:\n{tail}" if tail else ""


class LocalBackend:
    """Starts ipykernel processes on this machine (the default backend).

    Raises:
        ConfigError: ``KERNEL_MCP_SANDBOX=on`` on a machine that cannot sandbox.
    """

    name = "local"
    local = True

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.limits = OutputLimits(max_output_bytes=settings.max_output_bytes)
        on_linux = sys.platform.startswith("linux")
        self._dir = make_private_folder(sockets=on_linux)
        self._env = kernel_environment(os.environ, allow=settings.env_allow)
        # The server's own python must run the kernel even when the venv is not
        # activated, so "python3" means this interpreter's ipykernel.
        self._env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{self._env.get('PATH', '')}"
        self._env.pop("JPY_PARENT_PID", None)
        self._env.setdefault("PYDEVD_DISABLE_FILE_VALIDATION", "1")
        self._env["MPLBACKEND"] = "module://matplotlib_inline.backend_inline"
        try:
            self.sandbox: Sandbox | None = sandbox_for(settings, self._dir / "etc")
        except BaseException:
            shutil.rmtree(self._dir, ignore_errors=True)
            raise
        self.cgroups: CgroupRoot | None = None
        if self.sandbox is not None:
            self.cgroups = cgroup_root()
            self.sandbox.cgroups = self.cgroups.describe() if self.cgroups else ""
        # One fork server (and template) per kernelspec, made when first needed. A
        # setuid bwrap (no user namespace) cannot give a template the capabilities
        # it needs to make each child's namespaces: kernels are spawned then.
        self.forking = (
            settings.fork_kernels
            and forking_possible()
            and (self.sandbox is None or self.sandbox.bwrap.userns)
        )
        self.forks: dict[str, ForkServer] = {}
        # IPC sockets in private folders on Linux; TCP on loopback elsewhere.
        self.transport = "ipc" if on_linux else "tcp"

    @property
    def sandboxed(self) -> bool:
        """Kernels from this backend run in the sandbox."""
        return self.sandbox is not None

    @property
    def cheap_starts(self) -> bool:
        """Kernels are forked from a template (a spawn is half a second of CPU)."""
        return self.forking

    @property
    def kernel_name(self) -> str:
        """The kernelspec started when none is named (KERNEL_MCP_KERNEL_NAME)."""
        return self.settings.kernel_name

    def isolation(self) -> str:
        """The sandbox as the start-up banner and server_info say it: 'on (...)' or
        'off (why)' (``launch.sandbox.describe``)."""
        return describe_sandbox(self.settings)

    def describe(self) -> str:
        """The sandbox this backend made, in one phrase (with how the tree is limited)."""
        if self.sandbox is None:
            why = "KERNEL_MCP_SANDBOX=off" if self.settings.sandbox == "off" else "unavailable"
            return f"off ({why})"
        return self.sandbox.describe()

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        """Start one kernel (of ``kernel_name``, else the default) and wait until it answers.

        ``workspace`` is its projects folder (None: KERNEL_MCP's ``projects_dir``):
        its working directory, and the only projects folder its sandbox shows.

        Forked from that kernelspec's template (``kernel_mcp.launch.forkserver``) when
        forking is on and the template works; spawned otherwise.

        Raises:
            KernelStartFailed: it could not be launched or did not become ready;
                the message ends with the tail of the kernel's stderr.
        """
        spec = kernel_name or self.settings.kernel_name
        if self.forking:
            kernel = await self._fork_server(spec).start_kernel(workspace=workspace)
            if kernel is not None:
                return kernel
        return await self.spawn(spec, workspace=workspace)

    def _fork_server(self, spec: str) -> ForkServer:
        server = self.forks.get(spec)
        if server is None:
            server = self.forks[spec] = ForkServer(
                kernel_name=spec,
                preload=self.settings.preload,
                arguments=list(KERNEL_ARGUMENTS),
                folder=self._dir,
                env=self._env,
                projects=self.settings.projects_dir,
                sandbox=self.sandbox,
                new_cgroup=self._cgroup,
                limits=self.limits,
                memory_bytes=self.settings.memory_limit_mb * 2**20,
                max_file_bytes=self.settings.projects_quota_mb * 2**20,
            )
        return server

    async def spawn(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        """Start one kernel as a new process (jupyter_client's launch), never forked.

        Raises:
            KernelStartFailed: as :meth:`start`.
        """
        spec = kernel_name or self.settings.kernel_name
        workspace = workspace or self.settings.projects_dir
        name = uuid.uuid4().hex[:12]
        folder = self._dir / name
        folder.mkdir(mode=0o700)
        (folder / PACKAGES).mkdir(mode=0o700)  # its session's packages, read-only to it
        manager = WrappedKernelManager(
            kernel_name=spec,
            transport=self.transport,
            ip=str(folder / "ipc") if self.transport == "ipc" else "127.0.0.1",
            connection_file=str(folder / "kernel.json"),
        )
        cgroup = self._cgroup()
        inherited: list[int] = []  # the seccomp filter's fd, for bwrap only
        env = dict(self._env)
        if self.sandbox is not None:
            if self.sandbox.seccomp is not None:
                # A fresh open file per launch: bwrap reads it to the end.
                inherited.append(os.open(self.sandbox.seccomp.path, os.O_RDONLY | os.O_CLOEXEC))
            manager.wrap_command = self._sandboxed_command(
                manager, folder, cgroup, workspace, inherited[0] if inherited else None
            )
            manager.message_interrupts = True
            manager.reach_through_sandbox = True
            env = self.sandbox.kernel_env(env)
        # A private stderr: a pipe this server drains, keeping the last lines (a file
        # would be host disk the kernel could fill). A kernel's noise (a
        # KeyboardInterrupt traceback while it starts, fd-level writes ipykernel echoes)
        # must not reach the server's stderr, which a stdio client shows as its MCP log.
        stderr = StderrPipe()
        owned = {"stderr": stderr, "cgroup": cgroup, "folder": folder}
        try:
            await manager.start_kernel(
                # A kernel's stray writes to fd 1 must never reach a stdio MCP stream.
                stdout=subprocess.DEVNULL,
                stderr=stderr.write_fd,
                env=env,
                pass_fds=tuple(inherited),
                cwd=str(workspace),
                extra_arguments=list(KERNEL_ARGUMENTS),
            )
        except BaseException as exc:
            # The launch may have happened before the failure or the cancel.
            abandoned = LocalProcess(manager, sandboxed=self.sandboxed, **owned)
            stderr.handed()
            tail = abandoned.stderr_tail()
            await abandoned.kill()
            stderr.close()
            if cgroup is not None:
                await cgroup.remove()
            shutil.rmtree(folder, ignore_errors=True)
            if not isinstance(exc, Exception):
                raise
            raise KernelStartFailed(
                scrub_paths(f"could not start kernel {spec!r}: {exc}") + _quoted(tail)
            ) from exc
        finally:
            stderr.handed()
            for fd in inherited:
                os.close(fd)
        stderr.start()
        process = LocalProcess(manager, sandboxed=self.sandboxed, **owned)
        if self.sandbox is None:
            self._limit_memory(process.pid)
        client = manager.client()
        client.start_channels()
        kernel = Kernel(process, client, limits=self.limits)
        kernel.packages_dir = folder / PACKAGES
        try:
            kernel.kernel_info = await wait_ready(client, process.is_alive, timeout=START_TIMEOUT)
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
        forks, self.forks = list(self.forks.values()), {}
        for server in forks:
            await server.close()
        if self.cgroups is not None:
            self.cgroups.close()
        shutil.rmtree(self._dir, ignore_errors=True)

    def _cgroup(self) -> KernelCgroup | None:
        """A new kernel's cgroup with the sandbox's limits, or None (no cgroups, or
        the tree refused: the rlimits still apply)."""
        if self.cgroups is None or self.sandbox is None:
            return None
        policy = self.sandbox.policy
        try:
            return self.cgroups.create(memory_bytes=policy.memory_bytes, max_tasks=policy.max_tasks)
        except OSError as exc:
            log.warning("could not make a cgroup for a kernel (%s); rlimits only", exc)
            return None

    def _sandboxed_command(
        self,
        manager: WrappedKernelManager,
        folder: Path,
        cgroup: KernelCgroup | None,
        workspace: Path,
        seccomp_fd: int | None,
    ) -> Callable[[list[str]], list[str]]:
        """The launch command's wrapper: the sandbox (with the seccomp filter bwrap reads
        from ``seccomp_fd``, passed to it), then the cgroup join."""
        sandbox = self.sandbox
        assert sandbox is not None

        def wrap(argv: list[str]) -> list[str]:
            spec = manager.kernel_spec
            command = sandbox.command(
                argv,
                kernel_dir=folder,
                kernelspec_dir=spec.resource_dir if spec else None,
                seccomp_fd=seccomp_fd,
                workspace=workspace,
            )
            return cgroup.join_command(command) if cgroup is not None else command

        return wrap

    def _limit_memory(self, pid: int | None) -> None:
        """An unsandboxed kernel's rlimits: its address space, and its file size (the
        projects folder's cap). A sandboxed one sets them itself."""
        if pid is None or not sys.platform.startswith("linux"):
            return
        import resource

        limits = {
            resource.RLIMIT_AS: self.settings.memory_limit_mb * 2**20,
            resource.RLIMIT_FSIZE: self.settings.projects_quota_mb * 2**20,
        }
        for which, limit in limits.items():
            if not limit:
                continue
            try:
                resource.prlimit(pid, which, (limit, limit))
            except (OSError, ValueError, AttributeError) as exc:  # pragma: no cover
                log.warning("could not set the kernel's limits: %s", exc)
