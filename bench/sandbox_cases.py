"""Cases (s) and (t): what the sandbox costs, and what kernels forked from a template gain.

(s) runs the same measurement with ``KERNEL_MCP_SANDBOX`` on and off, call by call
in turn against two servers that are up at once, so that the ratio is of one
moment on one machine: a cold kernel start (in this process, spawned), a fresh
``run_python hello_world.py`` (b), and a warm session's ``run_code('pass')`` (f).

(t) measures forked kernels against spawned ones in the same run: a kernel's
start to ready for the user's code (in this process, ``LocalBackend.start``
against ``spawn``, each followed by ``Kernel.prepare``: the guards the pool
installs before it hands a kernel out), a
fresh run of a script that imports pandas with ``KERNEL_MCP_PRELOAD=pandas``
against ``python script.py`` (pandas is installed for the benchmark only; the case
says how when it is missing), and the memory of 16 idle pooled kernels: their
total PSS (proportional set size: a page shared by n processes counts 1/n in
each, so the sum counts it once) against one spawned kernel's RSS. (e) and
(b)/(d) measure the fresh-run targets on the default (forked) server.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil

from bench.harness import (
    Bench,
    Calls,
    client,
    create_session,
    mcp_url,
    subprocess_runs,
    summary,
    timed_call,
    wait_calm,
    wait_quiet,
    with_errors,
)
from tests.launchers import ServerProcess

__all__ = ["case_s", "case_t"]

PANDAS_SCRIPT = '''\
"""Benchmark (t): a script that imports pandas and does a little with it."""
import pandas as pd

print(pd.DataFrame({"a": [1, 2, 3]}).a.sum())
'''
PANDAS_INSTALL = (
    "pandas is not installed in this environment; (t)'s preload figure needs it. It is\n"
    "not a project dependency: install it for the benchmark with\n"
    f"    {Path(sys.executable).parent / 'pip'} install pandas"
)


def _settings(bench: Bench, folder: str, **extra: Any) -> Any:
    from kernel_mcp.config import load_settings

    return load_settings(
        projects_dir=bench.projects,
        notebooks_dir=bench.folder(folder),
        pool_size=0,
        **extra,
    )


# -- in-process kernel starts -----------------------------------------------------------------
async def kernel_starts(
    bench: Bench, n: int, variants: dict[str, dict[str, Any]]
) -> dict[str, Any]:
    """Start-to-ready of a kernel per variant (settings), taking turns; each start after
    this process and its kernels were calm. Ready means ready for the user's code, as
    the pool hands kernels out: its set-up (``Kernel.prepare``: the output and input
    guards) is included, whether it ran as cells (spawned) or in the kernel (forked)."""
    from kernel_mcp.backends.local import LocalBackend

    backends = {
        name: LocalBackend(_settings(bench, f"starts-{name}", **settings))
        for name, settings in variants.items()
    }
    times: dict[str, list[float]] = {name: [] for name in variants}
    kinds: dict[str, set[str]] = {name: set() for name in variants}
    me = psutil.Process().pid
    try:
        for backend in backends.values():  # the templates warm up here, untimed
            kernel = await backend.start()
            await kernel.shutdown(now=True)
        for _ in range(n):
            for name, backend in backends.items():
                await wait_calm([me], timeout=10)
                spawn = variants[name].get("fork_kernels") is False
                start = time.perf_counter()
                kernel = await (backend.spawn() if spawn else backend.start())
                await kernel.prepare(backend.settings.preload)
                times[name].append(time.perf_counter() - start)
                kinds[name].add(type(kernel.process).__name__)
                await kernel.shutdown(now=True)
    finally:
        for backend in backends.values():
            await backend.close()
    return {
        name: {**summary(seconds), "process": sorted(kinds[name])}
        for name, seconds in times.items()
    }


# -- fresh runs and session calls, on two servers in turn ------------------------------
async def fresh_in_turn(servers: dict[str, ServerProcess], n: int) -> dict[str, Any]:
    """run_python hello_world.py on each server in turn, each call on a quiet server."""
    calls = {name: Calls() for name in servers}
    async with _Clients(servers) as clients:
        for name, server in servers.items():
            await wait_quiet(server.pid, 2, timeout=90)
            await timed_call(clients[name], "run_python", {"file_name": "hello_world.py"})
        for _ in range(n):
            for name, server in servers.items():
                await wait_quiet(server.pid, 2, min_wait=0.3, timeout=60)
                await timed_call(
                    clients[name],
                    "run_python",
                    {"file_name": "hello_world.py"},
                    calls[name],
                    expect="Hello, World!",
                )
    return {name: with_errors(summary(c.seconds), c) for name, c in calls.items()}


async def session_in_turn(servers: dict[str, ServerProcess], n: int) -> dict[str, Any]:
    """run_code('pass') in a warm session on each server, in turn (blocks of 10)."""
    calls = {name: Calls() for name in servers}
    async with _Clients(servers) as clients:
        sids = {name: await create_session(c, f"bench-s-{name}") for name, c in clients.items()}
        for name, server in servers.items():
            await wait_quiet(server.pid, 3, timeout=90)
            for _ in range(20):
                await timed_call(
                    clients[name], "run_code", {"code": "pass", "session_id": sids[name]}
                )
        for _ in range(max(1, n // 10)):
            for name in servers:
                for _ in range(10):
                    await timed_call(
                        clients[name],
                        "run_code",
                        {"code": "pass", "session_id": sids[name]},
                        calls[name],
                    )
        for name, c in clients.items():
            await timed_call(c, "close_session", {"session_id": sids[name]})
    return {name: with_errors(summary(c.seconds), c) for name, c in calls.items()}


class _Clients:
    """One MCP client per server, entered together."""

    def __init__(self, servers: dict[str, ServerProcess]) -> None:
        self.servers = servers
        self.entered: dict[str, Any] = {}
        self._managers: list[Any] = []

    async def __aenter__(self) -> dict[str, Any]:
        for name, server in self.servers.items():
            manager = client(mcp_url(server))
            self.entered[name] = await manager.__aenter__()
            self._managers.append(manager)
        return self.entered

    async def __aexit__(self, *exc: object) -> None:
        for manager in reversed(self._managers):
            await manager.__aexit__(*exc)


def ratio(on: dict[str, Any], off: dict[str, Any]) -> dict[str, Any]:
    return {
        "p50_on_over_off": round(on["p50_ms"] / off["p50_ms"], 3),
        "p50_added_ms": round(on["p50_ms"] - off["p50_ms"], 2),
    }


def case_s(bench: Bench) -> dict[str, Any]:
    """The sandbox's cost: the same measurements with KERNEL_MCP_SANDBOX on and off."""
    out: dict[str, Any] = {}
    print("(s) cold kernel start in this process, sandbox on and off (spawned)…", flush=True)
    starts = asyncio.run(
        kernel_starts(
            bench,
            bench.n(20, 4),
            {
                "on": {"sandbox": "auto", "fork_kernels": False},
                "off": {"sandbox": "off", "fork_kernels": False},
            },
        )
    )
    out["s_cold_start_on"], out["s_cold_start_off"] = starts["on"], starts["off"]
    out["s_cold_start_ratio"] = ratio(starts["on"], starts["off"])
    with (
        bench.server("kernel-mcp-s-on", pool_size=2) as on,
        bench.server("kernel-mcp-s-off", pool_size=2, extra={"KERNEL_MCP_SANDBOX": "off"}) as off,
    ):
        servers = {"on": on, "off": off}
        print("(s) fresh run_python on two servers in turn, sandbox on and off…", flush=True)
        fresh = asyncio.run(fresh_in_turn(servers, bench.n(30, 6)))
        print("(s) warm session run_code('pass'), sandbox on and off…", flush=True)
        session = asyncio.run(session_in_turn(servers, bench.n(200, 40)))
    out["s_fresh_on"], out["s_fresh_off"] = fresh["on"], fresh["off"]
    out["s_fresh_ratio"] = ratio(fresh["on"], fresh["off"])
    out["s_session_on"], out["s_session_off"] = session["on"], session["off"]
    out["s_session_ratio"] = ratio(session["on"], session["off"])
    return out


# -- (t) forked kernels ---------------------------------------------------------------------------
def pandas_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True)
    return done.returncode == 0


async def fresh_script(server: ServerProcess, n: int, name: str) -> dict[str, Any]:
    calls = Calls()
    async with client(mcp_url(server)) as c:
        await wait_quiet(server.pid, 2, timeout=120)
        await timed_call(c, "run_python", {"file_name": name})
        for _ in range(n):
            await wait_quiet(server.pid, 2, min_wait=0.3, timeout=60)
            await timed_call(c, "run_python", {"file_name": name}, calls, expect="6")
    return with_errors(summary(calls.seconds), calls)


def pss_of(pids: set[int]) -> int:
    total = 0
    for pid in pids:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except psutil.Error:
            continue
    return total


async def pooled_memory(server: ServerProcess, pool: int) -> dict[str, Any]:
    """The PSS of ``pool`` idle pooled kernels (each kernel's processes: the kernel and
    its namespace's init), and of the template's processes they share."""
    from tests.launchers import FORKED_KERNEL_NAME, descendants_of

    await wait_quiet(server.pid, pool, timeout=300)
    await asyncio.sleep(2)
    tree = descendants_of({server.pid})
    named: dict[str, set[int]] = {}
    for pid in tree:
        try:
            named.setdefault(psutil.Process(pid).name(), set()).add(pid)
        except psutil.Error:
            continue
    kernels = named.get(FORKED_KERNEL_NAME, set())
    inits = named.get("kmcp-nsinit", set())
    # The template's own processes: the template, its namespace maker and the spare
    # init the maker keeps ready (kernel_mcp/launch/template.py).
    templates = {
        pid
        for name in ("kmcp-template", "kmcp-nsmaker", "kmcp-nsspare")
        for pid in named.get(name, ())
    }
    return {
        "kernels": len(kernels),
        "kernels_pss_mb": round(pss_of(kernels) / 2**20, 1),
        "inits_pss_mb": round(pss_of(inits) / 2**20, 1),
        "template_pss_mb": round(pss_of(templates) / 2**20, 1),
        "per_kernel_rss_mb": round(
            sum(psutil.Process(p).memory_info().rss for p in kernels)
            / max(1, len(kernels))
            / 2**20,
            1,
        ),
    }


async def spawned_rss(bench: Bench) -> dict[str, Any]:
    """One idle spawned (sandboxed) kernel: its RSS and PSS."""
    from kernel_mcp.backends.local import LocalBackend

    backend = LocalBackend(_settings(bench, "t-spawned-rss", fork_kernels=False))
    try:
        kernel = await backend.spawn()
        await kernel.prepare([])
        await asyncio.sleep(2)
        process = psutil.Process(kernel.process.kernel_pid)  # type: ignore[attr-defined]
        info = process.memory_full_info()
        await kernel.shutdown(now=True)
        return {"rss_mb": round(info.rss / 2**20, 1), "pss_mb": round(info.pss / 2**20, 1)}
    finally:
        await backend.close()


def case_t(bench: Bench) -> dict[str, Any]:
    """Forked kernels: start to ready, the pandas preload against python, 16 pooled PSS."""
    out: dict[str, Any] = {}
    print("(t) kernel start to ready in this process: forked against spawned…", flush=True)
    starts = asyncio.run(
        kernel_starts(
            bench,
            bench.n(40, 8),
            {"forked": {}, "spawned": {"fork_kernels": False}},
        )
    )
    out["t_start_forked"], out["t_start_spawned"] = starts["forked"], starts["spawned"]
    if pandas_available():
        script = bench.projects / "uses_pandas.py"
        script.write_text(PANDAS_SCRIPT)
        out["t_pandas_python"] = subprocess_runs(bench.n(20, 4), script, "6")
        out["t_pandas_preloaded"] = bench.on_server(
            "kernel-mcp-t-pandas",
            "(t) fresh run of a pandas script, KERNEL_MCP_PRELOAD=pandas…",
            lambda server: fresh_script(server, bench.n(20, 4), script.name),
            pool_size=2,
            extra={"KERNEL_MCP_PRELOAD": "pandas"},
        )
    else:
        print(PANDAS_INSTALL, flush=True)
        out["t_pandas"] = "skipped: pandas is not installed (see the note printed)"
    pool = 16
    out["t_pooled_memory"] = bench.on_server(
        "kernel-mcp-t-memory",
        f"(t) {pool} idle pooled kernels' PSS…",
        lambda server: pooled_memory(server, pool),
        pool_size=pool,
        max_sessions=24,
    )
    out["t_spawned_kernel"] = asyncio.run(spawned_rss(bench))
    mem, one = out["t_pooled_memory"], out["t_spawned_kernel"]
    total = mem["kernels_pss_mb"] + mem["inits_pss_mb"]
    out["t_memory_ratio"] = {
        "pooled_total_pss_mb": round(total, 1),
        "with_template_mb": round(total + mem["template_pss_mb"], 1),
        "over_one_spawned_rss": round(total / one["rss_mb"], 2),
        "with_template_over_one_spawned_rss": round(
            (total + mem["template_pss_mb"]) / one["rss_mb"], 2
        ),
    }
    return out
