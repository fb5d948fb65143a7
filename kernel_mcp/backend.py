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
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

import psutil
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager

from kernel_mcp.config import DEFAULT_SECRET_PATTERNS, Settings
from kernel_mcp.errors import KernelStartFailed
from kernel_mcp.kernel import Kernel
from kernel_mcp.launch.cgroups import CgroupRoot, KernelCgroup, cgroup_root
from kernel_mcp.launch.exits import describe_exit
from kernel_mcp.launch.forkserver import ForkServer, forking_possible
from kernel_mcp.launch.ready import wait_ready
from kernel_mcp.launch.sandbox import Sandbox, sandbox_for, through_root
from kernel_mcp.launch.stderr import StderrPipe, scrub_paths
from kernel_mcp.outputs import OutputLimits
from kernel_mcp.tasks import wait_within

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
#: waitid(WNOWAIT) tells a leader's exit without reaping it (Linux, the BSDs); macOS's
#: Python lacks it, and Windows has neither it nor process groups.
CAN_PEEK = hasattr(os, "waitid") and hasattr(os, "WNOWAIT")


class KernelBackend(Protocol):
    """Starts kernels. Owns whatever the kernels share (folders, connections)."""

    name: str
    local: bool
    """Its kernels run on this machine (they see its projects folders)."""
    sandboxed: bool
    """Its kernels run in kernel-mcp's sandbox (so their network is what it allows)."""
    cheap_starts: bool
    """A start costs tens of milliseconds and little of this process's CPU (forked
    kernels): the pool may start several at once, and refill right after a run."""

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        """A started, ready kernel of ``kernel_name`` (None: the configured default).

        ``workspace``: the projects folder the kernel works in and, sandboxed, the
        only one it sees (None: the configured one). Remote backends ignore it.
        """

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
        # Resolved: a kernel's connection file is named by its real path, and the
        # sandbox shares the folder at that same path.
        self._dir = Path(tempfile.mkdtemp(prefix="kernel-mcp-")).resolve()  # mode 0700
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
        self.transport = "ipc" if sys.platform.startswith("linux") else "tcp"

    @property
    def sandboxed(self) -> bool:
        """Kernels from this backend run in the sandbox."""
        return self.sandbox is not None

    @property
    def cheap_starts(self) -> bool:
        """Kernels are forked from a template (a spawn is half a second of CPU)."""
        return self.forking

    def describe(self) -> str:
        """The sandbox in one phrase, for the start-up banner."""
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
