"""What every case uses: statistics, servers, timed MCP calls, raw kernels, quiet waits, the floor.

Servers, the gateway and the redis-server are the test suite's launchers
(``tests/launchers.py``), logging to ``bench/out/logs/``. Process trees and CPU
time are read with psutil. Every kernel this run causes carries the marker
``KMCP_BENCH_RUN=<run id>`` in its environment (kernels inherit the server's),
so that the run can prove at the end that none is left.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import psutil

from tests.launchers import (
    Gateway,
    RedisServer,
    ServerProcess,
    is_kernel,
    kernel_processes,
    server_env,
)

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "bench" / "out"
LOGS = OUT / "logs"
PROJECTS = REPO / "python_projects"
HELLO = "print('Hello, World!')"
KERNEL_ARGS = ["--HistoryManager.hist_file=:memory:", "--HistoryManager.enabled=False"]
#: Marks every kernel this run causes (the name is not one the server filters as a secret).
RUN_ID = uuid.uuid4().hex[:12]
MARKER_NAME = "KMCP_BENCH_RUN"
MARKER = f"{MARKER_NAME}={RUN_ID}"
T = TypeVar("T")
#: One CPU tick, in seconds: the resolution of a process's CPU time.
TICK = 1 / os.sysconf("SC_CLK_TCK")


# -- the plan and the scratch space every case gets -----------------------------------
@dataclass
class Bench:
    """What a case function gets: the plan and the folders it may use.

    Attributes:
        quick: fewer iterations (a smoke run).
        letters: the cases that run in this invocation, in order.
        tmp: a scratch folder, removed at the end.
        projects: a projects folder holding ``hello_world.py``; a case may add files.
    """

    quick: bool
    letters: str
    tmp: Path
    projects: Path

    def n(self, full: int, quick: int) -> int:
        """An iteration count: ``full``, or ``quick`` with --quick."""
        return quick if self.quick else full

    def folder(self, name: str, mode: int = 0o755) -> Path:
        """A new folder in the scratch space."""
        path = self.tmp / name
        path.mkdir(mode=mode, parents=True)
        return path

    def server(
        self,
        name: str,
        *,
        pool_size: int,
        max_sessions: int = 32,
        extra: dict[str, str] | None = None,
        command: tuple[str, ...] | None = None,
        notebooks: Path | None = None,
    ) -> ServerProcess:
        """``kernel-mcp serve`` over :attr:`projects` (not started: use it in ``with``)."""
        return kernel_mcp_server(
            name,
            pool_size=pool_size,
            projects=self.projects,
            notebooks=notebooks or self.tmp / f"notebooks-{name}",
            max_sessions=max_sessions,
            extra=extra,
            command=command,
        )

    def on_server(
        self,
        name: str,
        what: str,
        measure: Callable[[ServerProcess], Awaitable[T]],
        **server: Any,
    ) -> T:
        """Start a server (:meth:`server` takes ``server``), print ``what``, run
        ``measure(server)`` in a new event loop, stop the server; what it measured."""
        with self.server(name, **server) as running:
            print(what, flush=True)
            return asyncio.run(measure(running))


# -- statistics ----------------------------------------------------------------------------
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
    """n, p50, p99, mean, min and max, in milliseconds."""
    ms = [s * 1000 for s in seconds]
    return {
        "n": len(ms),
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "mean_ms": round(sum(ms) / len(ms), 3) if ms else None,
        "min_ms": round(min(ms), 3) if ms else None,
        "max_ms": round(max(ms), 3) if ms else None,
    }


# -- servers ---------------------------------------------------------------------------------
def _log(name: str) -> Path:
    """A fresh log file in bench/out/logs (the launchers append)."""
    LOGS.mkdir(parents=True, exist_ok=True)
    path = LOGS / f"{name}.log"
    path.unlink(missing_ok=True)
    return path


def kernel_mcp_server(
    name: str,
    *,
    pool_size: int,
    projects: Path,
    notebooks: Path,
    max_sessions: int = 32,
    extra: dict[str, str] | None = None,
    command: tuple[str, ...] | None = None,
) -> ServerProcess:
    """``kernel-mcp serve`` (or ``command``) logging to ``bench/out/logs/<name>.log``."""
    env = server_env(
        projects,
        notebooks,
        **{
            # The benchmark calls faster than a person's agent would (22 runs/s): the
            # per-principal rate limit (600 tool calls a minute) would refuse it.
            "KERNEL_MCP_MAX_CALLS_PER_MINUTE": "0",
            **(extra or {}),
            "KERNEL_MCP_POOL_SIZE": str(pool_size),
            "KERNEL_MCP_MAX_SESSIONS": str(max_sessions),
            "PYTHON_TIMEOUT": "120",
            MARKER_NAME: RUN_ID,
        },
    )
    server = ServerProcess(env, log=_log(name))
    if command is not None:
        server.command = command
    return server


def noop_server() -> ServerProcess:
    """The floor's server (:func:`serve_noop`), as a subprocess on a free port."""
    env = {**os.environ, MARKER_NAME: RUN_ID}
    return ServerProcess(env, log=_log("noop"), command=bench_command("--serve-noop"))


def bench_command(*args: str) -> tuple[str, ...]:
    """This package run as a program (servers run from the repository root)."""
    return (sys.executable, "-m", "bench", *args)


def gateway(name: str, base: Path, *, nodelay: bool = False) -> Gateway:
    """A kernelgateway logging to ``bench/out/logs/<name>.log``; not started (use it in
    ``with``).

    Its process sampler stays off: a thread walking the process table every 100 ms
    in this process would add jitter to the calls being timed.
    """
    return Gateway(base, log=_log(name), nodelay=nodelay, track_processes=False)


def redis_server(base: Path) -> RedisServer:
    """A redis-server logging to bench/out/logs; not started (use it in ``with``)."""
    return RedisServer(base, log=_log("redis"))


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
        """Return "ok" (one argument, like run_code; see noop_calls)."""
        return "ok"

    @mcp.custom_route("/healthz", methods=["GET"])
    async def healthz(request: Request) -> JSONResponse:
        return JSONResponse({"status": "ok"})

    app = mcp.http_app(path="/mcp", transport="http", host_origin_protection=True)
    # Same uvicorn settings as `kernel-mcp serve` (no access log, like the product).
    uvicorn.Server(
        uvicorn.Config(
            app, host="127.0.0.1", port=port, lifespan="on", log_level="info", access_log=False
        )
    ).run()
    return 0


#: Diagnostic server variants: each switches one cost off, to measure it over HTTP.
DIAGNOSTICS = {
    "no_journal": "the per-run append to the session's journal replaced by a no-op "
    "(Recorder.append and Recorder.append_async patched)",
}


@contextlib.contextmanager
def journal_off() -> Iterator[None]:
    """Diagnostic only: session runs append nothing to their journal while inside."""
    from kernel_mcp.notebooks.recording import Recorder

    saved = Recorder.append, Recorder.append_async

    def append(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    async def append_async(self: Any, *args: Any, **kwargs: Any) -> None:
        return None

    Recorder.append, Recorder.append_async = append, append_async  # type: ignore[method-assign]
    try:
        yield
    finally:
        Recorder.append, Recorder.append_async = saved  # type: ignore[method-assign]


def serve_diagnostic(variant: str, port: int) -> int:
    """Diagnostic only (not the product): ``kernel-mcp serve`` with one cost switched off."""
    from kernel_mcp.cli import main as cli_main

    assert variant == "no_journal", variant
    with journal_off():
        return cli_main(["serve", "--port", str(port)])


# -- process trees and CPU time (psutil) ---------------------------------------------------
def tree_detail(pid: int) -> tuple[float, int, float]:
    """(CPU seconds used by ``pid`` and its descendants, live kernels below it,
    CPU seconds of ``pid`` itself). Zombies count for nothing."""
    try:
        root = psutil.Process(pid)
        tree = [root, *root.children(recursive=True)]
    except psutil.Error:
        return 0.0, 0, 0.0
    total = own = 0.0
    kernels = 0
    for proc in tree:
        try:
            with proc.oneshot():
                if proc.status() == psutil.STATUS_ZOMBIE:
                    continue
                times = proc.cpu_times()
        except psutil.Error:
            continue
        used = times.user + times.system
        total += used
        if proc.pid == pid:
            own = used
        elif is_kernel(proc):
            kernels += 1
    return total, kernels, own


def tree_usage(pid: int) -> tuple[float, int]:
    """(CPU seconds used by ``pid`` and its descendants, number of live kernels below it)."""
    used, kernels, _ = tree_detail(pid)
    return used, kernels


def cpu_times() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    t = psutil.cpu_times()
    parts = ("user", "nice", "system", "idle", "iowait", "irq", "softirq", "steal")
    total = sum(getattr(t, name, 0.0) for name in parts)
    idle = t.idle + getattr(t, "iowait", 0.0)
    return total - idle, total


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
        busy = (cpu[0] - last_cpu[0]) / max(TICK, cpu[1] - last_cpu[1])
        patient = time.monotonic() - start < min_wait + machine_patience
        machine_ok = busy < 0.35 or not patient
        idle = now[0] - last[0] <= 1.5 * TICK
        calm = calm + 1 if now[1] == kernels and idle and machine_ok else 0
        last, last_cpu = now, cpu
        if calm >= 2:
            if not patient:
                QUIET["machine_busy"] += 1
            return time.monotonic() - start
    raise TimeoutError(
        f"server {pid} not quiet with {kernels} kernels after {timeout:g} s "
        f"(last: {last[1]} kernels)"
    )


async def wait_calm(pids: list[int], timeout: float = 60.0) -> float:
    """Wait until the process trees of ``pids`` (servers, the gateway and its kernels)
    use at most one CPU tick over two consecutive 100 ms windows."""
    start = time.monotonic()
    last, calm = sum(tree_usage(p)[0] for p in pids), 0
    while time.monotonic() - start < timeout:
        await asyncio.sleep(0.1)
        now = sum(tree_usage(p)[0] for p in pids)
        calm = calm + 1 if now - last <= 1.5 * TICK else 0
        last = now
        if calm >= 2:
            return time.monotonic() - start
    return time.monotonic() - start


def marked_kernels() -> list[int]:
    """Live ipykernel processes that carry this run's marker."""
    return [proc.pid for proc in kernel_processes(MARKER)]


def wait_no_marked_kernels(timeout: float = 15.0) -> list[int]:
    """Wait for every kernel this run caused to exit; kill (by pid) and list any left."""
    deadline = time.monotonic() + timeout
    left = marked_kernels()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = marked_kernels()
    for pid in left:
        with contextlib.suppress(psutil.Error):
            psutil.Process(pid).kill()
    if left:
        print(f"warning: {len(left)} kernel(s) outlived their server: {left}", file=sys.stderr)
    return left


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


# -- MCP calls ---------------------------------------------------------------------------------
def client(url: str) -> Any:
    """A fastmcp Client (2026-07-28 protocol) with a long timeout."""
    from fastmcp import Client

    return Client(url, timeout=300)


def mcp_url(server: ServerProcess) -> str:
    return f"{server.base}/mcp"


@dataclass
class Calls:
    """Timed calls: client-side seconds, the server's own duration_s, and failures."""

    seconds: list[float] = field(default_factory=list)
    server_s: list[float] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


async def timed_call(
    c: Any, tool: str, args: dict[str, Any], calls: Calls | None = None, expect: str | None = None
) -> Any:
    """Call ``tool`` and time it. A failure (an error result, or ``expect`` missing from
    the reply) is counted in ``calls``; without ``calls`` it raises RuntimeError."""
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
    """``stats`` plus the error count, the first error, and the server-side p50."""
    stats["errors"] = len(calls.errors)
    if calls.errors:
        stats["first_error"] = calls.errors[0]
        print(f"  !! {len(calls.errors)} failed calls; first: {calls.errors[0]}")
    if calls.server_s:
        stats["server_duration_p50_ms"] = round(percentile(calls.server_s, 50) * 1000, 3)
    return stats


# -- raw jupyter_client kernels -------------------------------------------------------------------
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
        """Start it and wait until it is ready; the seconds that took."""
        env = {
            **os.environ,
            MARKER_NAME: RUN_ID,
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

    async def _idle(self, msg_id: str) -> None:
        while True:
            msg = await self.kc.get_iopub_msg(timeout=60)
            if (
                msg["parent_header"].get("msg_id") == msg_id
                and msg["msg_type"] == "status"
                and msg["content"]["execution_state"] == "idle"
            ):
                return

    async def execute(self, code: str) -> float:
        """Execute; wait for the execute_reply and the IOPub idle of that msg_id."""
        start = time.perf_counter()
        msg_id = self.kc.execute(
            code, silent=False, store_history=True, allow_stdin=False, stop_on_error=False
        )
        await self._idle(msg_id)
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
        await self._idle(msg_id)
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
    """The set-up the product runs silently before a file (kernel_mcp.runner.runner)."""
    try:
        from kernel_mcp.files.guard import ProjectFile
        from kernel_mcp.runner.requests import file_preamble as product_preamble

        project = ProjectFile(path=path, relative=path.name, source="")  # type: ignore[call-arg]
        return product_preamble(project, path.parent)
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


# -- the floor: a no-op MCP call plus a raw kernel execute --------------------------------
async def noop_calls(server: ServerProcess, n: int, tool: str = "noop") -> dict[str, Any]:
    """The floor call. ``noop_arg`` (one argument) also pays the MCP SDK's per-call
    Mcp-Param header check, which a call without arguments skips."""
    calls = Calls()
    args = {"code": "pass"} if tool == "noop_arg" else {}
    async with client(mcp_url(server)) as c:
        for _ in range(30):
            await timed_call(c, tool, args, expect="ok")
        for _ in range(n):
            await timed_call(c, tool, args, calls, expect="ok")
    return with_errors(summary(calls.seconds), calls)


async def raw_floor(n: int, fresh: int, folder: Path) -> dict[str, Any]:
    """Raw executes on a warm kernel, plus the components of a fresh-kernel run."""
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


def measure_floor(bench: Bench) -> dict[str, Any]:
    """The floor every case is compared with: no-op MCP calls on a tiny FastMCP server,
    and raw jupyter_client executes (with the parts of a fresh run), as ``a_*`` keys."""
    out: dict[str, Any] = {}
    print("(a) floor: no-op tool call…", flush=True)
    with noop_server() as noop:
        n = bench.n(500, 50)
        out["a_noop_call"] = asyncio.run(noop_calls(noop, n))
        out["a_noop_call_with_argument"] = asyncio.run(noop_calls(noop, n, "noop_arg"))
    print("(a) floor: raw jupyter_client executes…", flush=True)
    folder = bench.folder("raw-kernels", mode=0o700)
    raw = asyncio.run(raw_floor(bench.n(500, 50), bench.n(15, 3), folder))
    out.update({f"a_{k}": v for k, v in raw.items()})
    return out


def subprocess_runs(n: int, script: Path, expect: str) -> dict[str, Any]:
    """``python file.py`` as a subprocess, from the file's folder, ``n`` times (plus one
    first run that warms the OS caches)."""
    times = []
    for i in range(n + 1):
        start = time.perf_counter()
        done = subprocess.run(
            [sys.executable, str(script)], cwd=script.parent, capture_output=True, text=True
        )
        elapsed = time.perf_counter() - start
        if done.returncode != 0 or expect not in done.stdout:
            raise RuntimeError(f"{script.name} failed: {done.stderr[-500:]}")
        if i:
            times.append(elapsed)
    return summary(times)
