"""One kernel forked from a template: its request, the handshake, and what is undone when
it fails (``launch.forkserver`` keeps the templates; ``launch.template`` forks).

The handshake, on the kernel's own channel (``launch.wire`` says the messages):
the namespace's init says ``hello`` with its pidfd (the process that ends the
kernel), the kernel says ``kernel`` with its own; the server moves it into its
cgroup meanwhile and says ``go``; the kernel runs kernel-mcp's set-up and says
``ready`` once its sockets are bound. The server's client connects while the
kernel initializes, so the kernel's first answer is not waited for twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import shutil
import socket
import uuid
from pathlib import Path
from typing import Any, Protocol

import zmq
from jupyter_client.asynchronous import AsyncKernelClient
from jupyter_client.connect import write_connection_file
from jupyter_client.session import new_id_bytes

from kernel_mcp.errors import ForkFailed, TemplateStuck
from kernel_mcp.kernels.kernel import Kernel, wait_ready
from kernel_mcp.kernels.outputs import OutputLimits
from kernel_mcp.kernels.setup import setup_config
from kernel_mcp.launch import sockets, wire
from kernel_mcp.launch.cgroups import KernelCgroup
from kernel_mcp.launch.forked import ForkedProcess, Template
from kernel_mcp.launch.sandbox import PACKAGES, Sandbox
from kernel_mcp.launch.stderr import StderrPipe
from kernel_mcp.tasks import wait_within

__all__ = ["ANSWER_TIMEOUT", "FORK_TIMEOUT", "Fork", "Forker", "ForkingTemplate"]

log = logging.getLogger(__name__)

#: How long one forked kernel may take from request to ready, seconds.
FORK_TIMEOUT = 60.0
#: How long the template (and its namespace maker) may take to answer a fork request
#: with the kernel's first two messages (milliseconds when well; a stopped or stuck
#: template never answers): past it the template is replaced, and the kernel spawned.
ANSWER_TIMEOUT = 5.0


class ForkingTemplate(Template, Protocol):
    """The template a fork asks, as the fork server keeps it."""

    sock: socket.socket | None
    live: set[str]
    userns: bool
    keep: list[tuple[str, bool]]

    @property
    def env(self) -> dict[str, str]: ...
    @property
    def arguments(self) -> list[str]: ...
    @property
    def preload(self) -> list[str]: ...


class Forker(Protocol):
    """What of the fork server a fork uses (``launch.forkserver.ForkServer``)."""

    kernel_name: str
    folder: Path
    env: dict[str, str]
    projects: Path
    sandbox: Sandbox | None
    limits: OutputLimits
    memory_bytes: int
    max_file_bytes: int

    def new_cgroup(self) -> KernelCgroup | None: ...


class Fork:
    """One kernel on its way from a template: what it owns until it is ready (its folder,
    connection file, cgroup, stderr and channel), and what the handshake gives it (its
    process, its client)."""

    def __init__(self, server: Forker, template: ForkingTemplate, workspace: Path) -> None:
        self.server = server
        self.template = template
        self.workspace = workspace
        self.id = uuid.uuid4().hex
        self.folder = server.folder / self.id[:12]
        self.folder.mkdir(mode=0o700)
        (self.folder / PACKAGES).mkdir(mode=0o700)  # bound read-only in its sandbox
        self.connection_file = self.folder / "kernel.json"
        _, info = write_connection_file(
            str(self.connection_file),
            ip=str(self.folder / "ipc"),
            key=new_id_bytes(),
            transport="ipc",
            signature_scheme="hmac-sha256",
            kernel_name=server.kernel_name,
        )
        self.connection = {k: (v.decode() if isinstance(v, bytes) else v) for k, v in info.items()}
        self.cgroup = server.new_cgroup()
        self.channel, self._theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.channel.setblocking(False)
        self.stderr = StderrPipe()
        self.process: ForkedProcess | None = None
        self.client: AsyncKernelClient | None = None
        self.ready: asyncio.Future[dict[str, Any]] | None = None

    def request(self) -> wire.ForkRequest:
        """What the template is asked for (its settings, the sandbox's policy)."""
        server, template, sandbox = self.server, self.template, self.server.sandbox
        env = {**server.env, **template.env}
        if sandbox is not None:
            env = sandbox.kernel_env(env)
        return wire.ForkRequest(
            id=self.id,
            connection_file=str(self.connection_file),
            folder=str(self.folder),
            cwd=str(self.workspace),
            projects=str(server.projects),
            # A principal's own folder below the projects folder: the rest is hidden.
            workspace=str(self.workspace) if self.workspace != server.projects else None,
            projects_readonly=bool(sandbox and not sandbox.policy.projects_writable),
            env=env,
            arguments=list(template.arguments),
            namespaces=sandbox is not None,
            network=bool(sandbox and sandbox.policy.network),
            userns=template.userns,
            home=sandbox.policy.home if sandbox else "",
            keep=list(template.keep),
            tmp_bytes=sandbox.policy.tmp_bytes if sandbox else 0,
            memory_bytes=server.memory_bytes,
            max_file_bytes=server.max_file_bytes,
            max_tasks=sandbox.policy.max_tasks if sandbox else 0,
            setup=setup_config(server.limits, list(template.preload)),
        )

    async def run(self) -> Kernel:
        """Ask the template for the kernel and wait until it answers.

        Raises:
            ForkFailed: it did not become a kernel (what its stderr said is quoted).
            TemplateStuck: the template did not answer in time.
        """
        try:
            self._ask()
            try:
                await wait_within(self._handshake(), FORK_TIMEOUT)
            finally:
                self.channel.close()
            assert self.process is not None and self.client is not None and self.ready
            kernel = Kernel(self.process, self.client, limits=self.server.limits)
            kernel.packages_dir = self.folder / PACKAGES
            try:
                kernel.kernel_info = await self.ready
            except BaseException:
                await kernel.shutdown(now=True)
                raise
            return kernel
        except BaseException as exc:
            said = self.stderr_tail()
            await self._abandon()
            if isinstance(exc, asyncio.TimeoutError):
                raise ForkFailed(f"no kernel in {FORK_TIMEOUT:g} s{said}") from None
            raise

    def stderr_tail(self) -> str:
        tail = self.stderr.tail()
        return f"; its stderr ended with:\n{tail}" if tail else ""

    def _ask(self) -> None:
        assert self.template.sock is not None
        try:
            sockets.send(
                self.template.sock,
                self.request().message(),
                [self._theirs.fileno(), self.stderr.write_fd],
            )
        finally:
            self._theirs.close()
            self.stderr.handed()
        self.stderr.start()
        self.template.live.add(self.id)

    async def _handshake(self) -> None:
        """hello (the process that ends the kernel, a pidfd), kernel (its pidfd; moved
        into its cgroup meanwhile), go, ready (its sockets are bound)."""
        hello_fd = await self._expect(
            "hello", "the fork template", "no hello from the forked kernel"
        )
        self.process = ForkedProcess(
            template=self.template,
            kernel_id=self.id,
            pidfd=hello_fd,
            folder=self.folder,
            stderr=self.stderr,
            cgroup=self.cgroup,
            connection=self.connection,
            namespaced=self.server.sandbox is not None,
        )
        kernel_fd = await self._expect(
            "kernel", "the forked kernel's first step", "the forked kernel did not start"
        )
        self.process._kernel_fd = kernel_fd
        self.process.kernel_pid = sockets.host_pid(kernel_fd)
        self._connect(self.process)
        if self.cgroup is not None:
            # While the kernel initializes: a move between cgroups waits for an RCU grace
            # period (docs/benchmarks.md). No user code runs before "go".
            await asyncio.to_thread(self.cgroup.add, self.process.kernel_pid)
        sockets.send(self.channel, {"op": "go"})
        self._ready(*await sockets.recv(self.channel))

    async def _expect(self, op: str, who: str, otherwise: str) -> int:
        """The one descriptor the next message, ``op``, carries, due within ANSWER_TIMEOUT.

        Raises:
            TemplateStuck: it did not come in time.
            ForkFailed: another message came, or none.
        """
        try:
            message, fds = await wait_within(sockets.recv(self.channel), ANSWER_TIMEOUT)
        except asyncio.TimeoutError:
            raise TemplateStuck(f"{who} did not answer in {ANSWER_TIMEOUT:g} s") from None
        if message is None or message.get("op") != op or len(fds) != 1:
            for fd in fds:
                os.close(fd)
            raise ForkFailed(f"{otherwise}{self.stderr_tail()}")
        return fds[0]

    def _ready(self, message: dict[str, Any] | None, fds: list[int]) -> None:
        for fd in fds:
            os.close(fd)
        if message is not None and message.get("op") == "broken":
            raise ForkFailed(f"the forked kernel failed to start: {message.get('error')}")
        if message is None or message.get("op") != "ready":
            raise ForkFailed(f"the forked kernel did not start{self.stderr_tail()}")
        assert self.process is not None
        if message.get("prepared"):
            self.process.prepared = tuple(self.template.preload)
        failed = message.get("preload_failed") or {}
        if failed:  # as Kernel.prepare says it of a spawned kernel
            log.warning(
                "preloading %s failed: %s", ", ".join(failed), "; ".join(map(str, failed.values()))
            )

    def _connect(self, process: ForkedProcess) -> None:
        """Connect (and ask kernel_info) while the kernel initializes: a client's sockets
        connect before the kernel binds its own, retrying every 2 ms (zmq's default is
        100), and the request waits in its queue."""
        client = AsyncKernelClient()
        client.load_connection_info(process.client_info)
        client.context.setsockopt(zmq.RECONNECT_IVL, 2)
        client.start_channels()
        self.client = client
        self.ready = asyncio.ensure_future(
            wait_ready(client, process.is_alive, timeout=FORK_TIMEOUT)
        )

    async def _abandon(self) -> None:
        """Undo what this fork made: its wait, its client, and the kernel or its files."""
        if self.ready is not None:
            self.ready.cancel()
            await asyncio.gather(self.ready, return_exceptions=True)
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.stop_channels()
        if self.process is not None:
            await self.process.kill()
            return
        self.template.live.discard(self.id)
        if self.cgroup is not None:
            await self.cgroup.remove()
        shutil.rmtree(self.folder, ignore_errors=True)
        self.stderr.close()
        with contextlib.suppress(OSError):
            self._theirs.close()
            self.channel.close()
