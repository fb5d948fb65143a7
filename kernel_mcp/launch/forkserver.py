"""Fork kernels from a pre-imported template: the server's side.

A :class:`ForkServer` runs one template process per kernel flavour (the
kernel's interpreter, its kernelspec, the preload list) and asks it for a
kernel whenever the backend needs one; ``kernel_mcp/launch/template.py`` is
what runs inside, and explains the fork itself.

The template runs in ONE bubblewrap sandbox with the spawned kernels' policy
minus their per-kernel parts (the private /tmp, $HOME and /dev/shm, and the
single connection folder): it sees every kernel's connection folder, keeps its
capabilities inside its own user namespace (``--cap-add ALL``), and gives each
child new mount, PID, IPC, UTS and (unless the network is shared) network
namespaces, the private mounts, and no capability at all. So a forked kernel
sees and may do what a spawned one may, and two kernels cannot see each
other's files, processes or loopback. A sandboxed kernel from the template is
ready an order of magnitude sooner than a spawned one (docs/benchmarks.md).

Channels. The template's stdout is /dev/null and its stderr a private file;
the server and the template talk over a Unix SEQPACKET socket pair (fork
requests one way, ``exited`` notices with the exit code the other). Each
fork request carries a second socket pair's end: the kernel's own channel. On
it, its namespace's init hands the server a pidfd (``hello``), the kernel hands
its own (``kernel``) and initializes while the server moves it into its cgroup,
waits for ``go``, runs kernel-mcp's set-up (``kernel.KERNEL_SETUP``: the
output and input guards and the preload's names, which a spawned kernel gets
as three or four cells), and says ``ready``
once its sockets are bound. Both close their end before any user code runs.
(Memory the kernel touched while it initialized, before the move, stays charged
to the server's cgroup: a few MB.)
A pidfd names the process itself, so signalling it can never hit a reused pid,
and its host pid is read from ``/proc/self/fdinfo``, translated by the kernel
into the server's PID namespace.

Fallback. If the template cannot start, dies, or fails one kernel, the
backend spawns kernels as before, and says so in one log line; the template is
tried again after a pause that grows up to a minute. A template (or its
namespace maker) that does not answer a fork request within ANSWER_TIMEOUT is
killed through the pidfds it handed over and replaced. Sandboxed, its kernels
outlive it: the sandbox's first process is the template's keeper, which adopts
and reaps them and reports their ends on the same control channel (after a
``template_ended`` notice). It is restarted when its flavour changes (the
kernelspec file, the interpreter binary, or a site-packages folder changes,
e.g. after ``pip install``): the old sandbox stays until its last kernel ends.
It stops with the server: the control socket closes, and a server SIGKILL ends
it through bwrap's ``--die-with-parent`` (sandboxed) or its parent-death signal.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from kernel_mcp.errors import ForkFailed, TemplateStuck
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.outputs import OutputLimits
from kernel_mcp.kernels.setup import KERNEL_SETUP
from kernel_mcp.launch import sockets, wire
from kernel_mcp.launch.cgroups import KernelCgroup
from kernel_mcp.launch.flavour import Flavour, file_mtime
from kernel_mcp.launch.fork import Fork
from kernel_mcp.launch.forked import ForkedProcess
from kernel_mcp.launch.sandbox import Sandbox
from kernel_mcp.launch.stderr import stderr_tail
from kernel_mcp.tasks import TaskOwner, wait_within

__all__ = ["Flavour", "ForkServer", "ForkedProcess", "forking_possible"]

log = logging.getLogger(__name__)

MAX_MESSAGE = 1 << 20
#: How long the template may take to import and warm up, seconds.
TEMPLATE_TIMEOUT = 120.0
SHUTDOWN_WAIT = 5.0
#: Pauses before trying a failed template again, seconds (then the last, forever).
RETRY_PAUSES = (5.0, 15.0, 60.0)
# Read, not imported: the template is a Linux-only script (resource, fcntl) run by
# the kernel's interpreter; importing it here would make this module Linux-only.
_TEMPLATE_SOURCE = Path(__file__).with_name("template.py").read_text(encoding="utf-8")
_WIRE_SOURCE = Path(wire.__file__).read_text(encoding="utf-8")
#: What the template's (and so every forked kernel's) command line shows.
TEMPLATE_NAME = "kernel-mcp-fork-template.py"
#: The kernels' set-up code, which the template compiles once (a file, not an argument:
#: every forked kernel's command line is the template's).
SETUP_NAME = "kernel-mcp-kernel-setup.py"


def forking_possible() -> bool:
    """Whether kernels can be forked here at all: Linux, with pidfds (5.3) and SEQPACKET."""
    return (
        sys.platform.startswith("linux")
        and hasattr(os, "pidfd_open")
        and hasattr(signal, "pidfd_send_signal")
        and hasattr(socket, "SOCK_SEQPACKET")
    )


# -- one template process -------------------------------------------------------------------
class _Template:
    """One running template process and its control channel."""

    def __init__(self, flavour: Flavour) -> None:
        self.flavour = flavour
        self.process: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.ready: dict[str, Any] = {}
        self.gone = False
        self.retired = False
        self.live: set[str] = set()
        self.exit_codes: dict[str, int] = {}
        self._notices: dict[str, asyncio.Event] = {}
        self._reader: asyncio.Task[None] | None = None
        self.stderr_path: Path | None = None
        self.keep: list[tuple[str, bool]] = []
        """Shared mounts a child's private /tmp or $HOME would hide: bound back in it."""
        self.userns = False
        """Each of its kernels gets a user namespace of its own (see userns_per_kernel):
        decided when it starts, since its set-up (the namespace maker) depends on it."""
        self.helpers: list[int] = []
        """pidfds of the template process and of its namespace maker (sandboxed)."""
        self.end_code: int | None = None

    @property
    def env(self) -> dict[str, str]:
        """What its kernelspec adds to the kernels' environment."""
        return dict(self.flavour.env)

    @property
    def arguments(self) -> list[str]:
        return list(self.flavour.arguments)

    @property
    def preload(self) -> list[str]:
        return list(self.flavour.preload)

    def ended(self) -> bool:
        """The template process is gone (noticed or not yet by its reader)."""
        return self.gone or self.process is None or self.process.poll() is not None

    def end_helpers(self) -> None:
        """SIGKILL the template process and its namespace maker (not the sandbox: the
        keeper goes on with the kernels they forked). For a template that stopped
        answering."""
        for pidfd in self.helpers:
            with contextlib.suppress(OSError):
                signal.pidfd_send_signal(pidfd, signal.SIGKILL)

    async def exit_notice(self, kernel_id: str, timeout: float) -> None:
        if kernel_id in self.exit_codes or self.gone:
            return
        event = self._notices.setdefault(kernel_id, asyncio.Event())
        with contextlib.suppress(asyncio.TimeoutError):
            await wait_within(event.wait(), timeout)

    def released(self, kernel_id: str) -> None:
        self.live.discard(kernel_id)
        self.exit_codes.pop(kernel_id, None)
        self._notices.pop(kernel_id, None)
        if self.retired and not self.live:
            self.stop()

    async def read_forever(self) -> None:
        assert self.sock is not None
        while True:
            message, fds = await sockets.recv(self.sock)
            for fd in fds:
                os.close(fd)
            if message is None:
                break
            if message.get("op") == "exited":
                kernel_id = str(message.get("id"))
                self.exit_codes[kernel_id] = int(message.get("code", 1))
                self._notices.setdefault(kernel_id, asyncio.Event()).set()
            elif message.get("op") == "template_ended":
                # The keeper says so; it goes on reporting the ends of the kernels
                # the template forked, which keep running.
                self._template_ended(int(message.get("code", 1)))
        self._template_ended(None)
        for event in self._notices.values():
            event.set()

    def _template_ended(self, code: int | None) -> None:
        if self.gone:
            return
        self.gone = True
        self.end_code = code
        if not self.retired:
            log.warning(
                "the kernel fork template ended (%s); new kernels are spawned until it "
                "restarts, and the %d kernel(s) it forked run on",
                self.describe_end(),
                len(self.live),
            )

    def describe_end(self) -> str:
        code = self.end_code
        if code is None and self.process is not None:
            code = self.process.poll()
        lines = stderr_tail(self.stderr_path).strip().splitlines()[-1:]
        tail = f"; its stderr ended with: {lines[0]}" if lines else ""
        return (f"exit code {code}" if code is not None else "its channel closed") + tail

    def stop(self) -> None:
        """End the template (and with it every kernel it still has)."""
        self.gone = True
        if self._reader is not None:
            self._reader.cancel()
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                self.process.wait(timeout=5)
        if self.stderr_path is not None:
            with contextlib.suppress(OSError):
                self.stderr_path.unlink()
        for pidfd in self.helpers:
            os.close(pidfd)
        self.helpers = []


# -- the fork server ------------------------------------------------------------------------
class ForkServer:
    """Keeps a template for the backend's kernel flavour and forks kernels from it.

    Args:
        kernel_name: the kernelspec.
        preload: modules the template imports (and so every kernel has).
        arguments: ipykernel options every kernel gets.
        folder: the backend's private folder; kernels' folders go below it.
        env: the kernels' environment (secrets scrubbed).
        projects: the kernels' working directory.
        sandbox: the sandbox, or None (forked kernels are then plain processes).
        new_cgroup: makes a new kernel's cgroup (None where there is none); the
            backend's, so that spawned and forked kernels get the same limits.
        limits: output caps for the Kernel objects.
        memory_bytes: RLIMIT_AS per kernel (0: none).
        max_file_bytes: RLIMIT_FSIZE per kernel (0: none).
    """

    def __init__(
        self,
        *,
        kernel_name: str,
        preload: list[str],
        arguments: list[str],
        folder: Path,
        env: dict[str, str],
        projects: Path,
        sandbox: Sandbox | None,
        new_cgroup: Callable[[], KernelCgroup | None],
        limits: OutputLimits,
        memory_bytes: int,
        max_file_bytes: int = 0,
    ) -> None:
        self.kernel_name = kernel_name
        self.preload = list(preload)
        self.arguments = list(arguments)
        self.folder = folder
        self.env = dict(env)
        self.projects = projects
        self.sandbox = sandbox
        self.new_cgroup = new_cgroup
        self.limits = limits
        self.memory_bytes = memory_bytes
        self.max_file_bytes = max_file_bytes
        self.template: _Template | None = None
        self._retired: list[_Template] = []
        self._tasks = TaskOwner("fork server")
        """The template's start (shared by the callers that wait for it), its channels' readers."""
        self._starting: asyncio.Task[_Template | None] | None = None
        self._failures = 0
        self._next_try = 0.0
        self._closed = False
        self._flavour_cache: Flavour | None = None
        self._unforkable = False
        self.forked = 0
        self.fallbacks = 0

    @property
    def namespaced(self) -> bool:
        return self.sandbox is not None

    async def start_kernel(self, *, workspace: Path | None = None) -> Kernel | None:
        """A ready kernel from the template, or None: the caller spawns one instead.

        ``workspace``: its projects folder (None: ``projects``); sandboxed, the only
        part of ``projects`` it sees. Raises only the caller's own cancellation.
        """
        if self._closed:
            return None
        template = await self._template()
        if template is None:
            self.fallbacks += 1
            return None
        try:
            kernel = await Fork(self, template, workspace or self.projects).run()
        except asyncio.CancelledError:
            raise
        except TemplateStuck as exc:
            self.fallbacks += 1
            log.warning("%s; replacing the template, and spawning this kernel", exc)
            template.end_helpers()
            self._retire(template, broken=True)
            return None
        except Exception as exc:
            self.fallbacks += 1
            log.warning("a kernel could not be forked from the template (%s); spawning one", exc)
            if template.gone or not template.live:
                self._retire(template, broken=True)
            return None
        self.forked += 1
        return kernel

    async def close(self) -> None:
        self._closed = True
        await self._tasks.close()  # a start under way, and the templates' readers
        for template in [*self._retired, *([self.template] if self.template else [])]:
            template.stop()
        self._retired.clear()
        self.template = None

    # -- the template -------------------------------------------------------------------
    def _flavour(self) -> Flavour | None:
        """The current flavour; looked up again only when a file it came from changed."""
        if self._unforkable:
            return None
        cached = self._flavour_cache
        if cached is not None and all(file_mtime(path) == mtime for path, mtime in cached.stamps):
            return cached
        self._flavour_cache = Flavour.of(self.kernel_name, self.preload, self.arguments)
        if self._flavour_cache is None:
            self._unforkable = True
            log.info(
                "kernelspec %r does not run `python -m ipykernel_launcher -f "
                "{connection_file}`; its kernels are spawned, not forked",
                self.kernel_name,
            )
        return self._flavour_cache

    async def _template(self) -> _Template | None:
        flavour = self._flavour()
        if flavour is None:
            return None
        current = self.template
        if current is not None and not current.gone and self._same(current, flavour):
            return current
        if current is not None:
            if not current.gone:
                log.info(
                    "the kernel flavour changed (kernelspec, interpreter or packages); "
                    "starting a new fork template"
                )
            self._retire(current, broken=current.gone)
        if time.monotonic() < self._next_try:
            return None
        if self._starting is None:
            # Its callers read the outcome; _launch logs why a start failed.
            self._starting = self._tasks.spawn(
                self._launch(flavour), name="start the template", report=False
            )
        starting = self._starting
        try:
            # Waited for, not awaited: a caller's cancel must not kill the start others
            # wait for, and close() cancelling the start is no cancel of the caller's.
            await asyncio.wait({starting})
        finally:
            if starting.done() and self._starting is starting:
                self._starting = None
        return None if starting.cancelled() else starting.result()

    def _same(self, template: _Template, flavour: Flavour) -> bool:
        if template.flavour != flavour:
            return False
        stamps = template.ready.get("site_stamps", {})
        return all(file_mtime(path) == mtime for path, mtime in stamps.items())

    def _retire(self, template: _Template, *, broken: bool) -> None:
        if self.template is template:
            self.template = None
        if broken and not template.retired:  # once per template, whatever forks saw it
            self._failures += 1
            pause = RETRY_PAUSES[min(self._failures, len(RETRY_PAUSES)) - 1]
            self._next_try = time.monotonic() + pause
        template.retired = True
        if not template.live:
            template.stop()
        elif template not in self._retired:
            self._retired.append(template)
        # A template that ended keeps its live kernels (its keeper does): kept here, so
        # that close() ends them.
        self._retired = [t for t in self._retired if t.live]

    async def _launch(self, flavour: Flavour) -> _Template | None:
        template = _Template(flavour)
        try:
            await self._start_process(template)
        except asyncio.CancelledError:
            template.stop()
            raise
        except Exception as exc:
            template.stop()
            self._failures += 1
            pause = RETRY_PAUSES[min(self._failures, len(RETRY_PAUSES)) - 1]
            self._next_try = time.monotonic() + pause
            log.warning(
                "the kernel fork template could not start (%s); kernels are spawned "
                "instead, next try in %g s",
                exc,
                pause,
            )
            return None
        self._failures = 0
        self.template = template
        log.info(
            "kernel fork template ready (warm-up %.2f s%s)",
            template.ready.get("warm_s", 0.0),
            f"; preload failed: {', '.join(template.ready['failed'])}"
            if template.ready.get("failed")
            else "",
        )
        return template

    async def _start_process(self, template: _Template) -> None:
        flavour = template.flavour
        template.userns = self.sandbox is not None and userns_per_kernel()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        ours.setblocking(False)
        scratch = self.folder / f"template-{uuid.uuid4().hex[:8]}"
        config = {
            "preload": list(flavour.preload),
            "arguments": list(flavour.arguments),
            "scratch": str(scratch),
            "plain": self.sandbox is None,
            "no_userns": self.sandbox is not None and not template.userns,
            "seccomp": self.sandbox.seccomp.path if self.sandbox and self.sandbox.seccomp else "",
        }
        # A copy in the private folder (which the template sees and its children do
        # not): the interpreter may be another environment's, without kernel_mcp.
        script = self.folder / TEMPLATE_NAME
        if not script.exists():
            script.write_text(_TEMPLATE_SOURCE, encoding="utf-8")
        # Beside it, the one codec and fork request it shares with this server.
        codec = self.folder / f"{wire.MODULE}.py"
        if not codec.exists():
            codec.write_text(_WIRE_SOURCE, encoding="utf-8")
        setup = self.folder / SETUP_NAME
        if not setup.exists():
            setup.write_text(KERNEL_SETUP, encoding="utf-8")
        config["setup_file"] = str(setup)
        argv = [
            flavour.python,
            *flavour.flags,
            str(script),
            str(theirs.fileno()),
            json.dumps(config),
        ]
        env = {**self.env, **dict(flavour.env)}
        scratch.mkdir(mode=0o700)
        if self.sandbox is not None:
            env = self.sandbox.kernel_env(env)
            argv = self.sandbox.template_command(
                argv, shared=[self.folder], kernelspec_dir=flavour.resource_dir
            )
            template.keep = self.sandbox.hidden_by_private(
                argv_interpreter=flavour.python, kernelspec_dir=flavour.resource_dir
            )
        template.stderr_path = self.folder / f"{scratch.name}.stderr"
        stderr = os.open(
            template.stderr_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_APPEND, 0o600
        )
        try:
            template.process = _popen(argv, stderr, theirs.fileno(), env, self.projects)
        finally:
            os.close(stderr)
            theirs.close()
        template.sock = ours
        try:
            message, fds = await wait_within(sockets.recv(ours), TEMPLATE_TIMEOUT)
        except asyncio.TimeoutError:
            raise ForkFailed(f"no answer in {TEMPLATE_TIMEOUT:g} s") from None
        finally:
            shutil.rmtree(scratch, ignore_errors=True)
        template.helpers = fds
        if message is None or message.get("op") != "ready":
            said = (message or {}).get("error") or template.describe_end()
            raise ForkFailed(said)
        message["site_stamps"] = {path: file_mtime(path) for path in message.get("site", [])}
        if message.get("threads", 1) > 1:
            log.info(
                "the fork template runs %d threads after its imports (a preloaded library "
                "started them); forking copies only one",
                message["threads"],
            )
        template.ready = message
        template._reader = self._tasks.spawn(template.read_forever(), name="template channel")


def userns_per_kernel() -> bool:
    """Whether each sandboxed forked kernel gets a user namespace of its own.

    Unprivileged it must: its PID namespace needs a user namespace it owns (and
    RLIMIT_NPROC then counts that kernel's processes only). As root, kernels share
    the template's user namespace, which lets the template's namespace maker keep
    their inits ready. The test suite, run as root, forces the unprivileged way
    here to cover it.
    """
    return os.getuid() != 0


def _popen(
    argv: list[str], stderr: int, control: int, env: dict[str, str], cwd: Path
) -> subprocess.Popen[bytes]:
    """The template process: stdout nowhere (it is no channel), the control socket kept."""
    return subprocess.Popen(
        argv,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=stderr,
        pass_fds=[control],
        env=env,
        cwd=str(cwd),
        # Its own group: stopping it ends bwrap, and with it the whole sandbox.
        start_new_session=True,
    )
