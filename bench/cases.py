"""The cases, one function per letter, and the registry that names them.

Adding a case: write ``def case_x(bench: Bench) -> dict[str, Any]`` that starts
what it needs (in ``with`` blocks, so it is stopped whatever happens), measures,
and returns its figures under keys that begin with its letter. Then add
``Case("x", "what it measures", case_x, target="...")`` to :data:`CASES` at the
end of this file. Its figures land in results.json, and every figure that is a
:func:`bench.harness.summary` shows in the table on its own; give it a label, or
a target check, in ``bench/report.py``. Cases run in the order of the registry;
``refs`` are the letters a case is compared with, which ``--only`` runs too.

Every case starts its own servers (on free ports, each with its own notebooks
folder), so that none measures what an earlier case left behind.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from bench.harness import (
    DIAGNOSTICS,
    LOGS,
    OUT,
    PROJECTS,
    Bench,
    Calls,
    bench_command,
    client,
    create_session,
    gateway,
    journal_off,
    mcp_url,
    measure_floor,
    percentile,
    redis_server,
    stderr_to,
    subprocess_runs,
    summary,
    timed_call,
    tree_detail,
    wait_calm,
    wait_quiet,
    with_errors,
)
from bench.package_cases import case_p
from bench.quota_cases import case_q
from bench.sandbox_cases import case_s, case_t
from bench.watch_cases import case_w
from tests.launchers import Gateway, ServerProcess

CaseFunction = Callable[[Bench], dict[str, Any]]


@dataclass(frozen=True)
class Case:
    """One benchmark case.

    Attributes:
        letter: its name on the command line (``--only``) and in the table.
        description: what it measures, in one line.
        target: what it should reach ("" when it is measured for reference only).
        run: the function; it returns the case's figures.
        refs: letters of the cases it is compared with; they run with it.
    """

    letter: str
    description: str
    run: CaseFunction
    target: str = ""
    refs: str = ""


def planned(only: set[str]) -> str:
    """The letters to run for ``--only``: those asked for and their references, in order."""
    wanted = set(only)
    for letter in only:
        wanted.update(CASES[letter].refs)
    return "".join(letter for letter in CASES if letter in wanted)


# -- (a) the floor -------------------------------------------------------------------------
def case_a(bench: Bench) -> dict[str, Any]:
    """The floor: a no-op fastmcp tool call over /mcp (a separate tiny server) and a raw
    jupyter_client execute on a warm kernel ('pass' and print('Hello, World!'))."""
    return measure_floor(bench)


# -- (b), (c), (e): fresh runs -----------------------------------------------------------------
async def fresh_spaced(server: ServerProcess, n: int, pool: int) -> dict[str, Any]:
    """run_python hello_world.py, each call after the pool refilled and all is idle."""
    calls = Calls()
    waits = []
    async with client(mcp_url(server)) as c:
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


def case_b(bench: Bench) -> dict[str, Any]:
    """run_python hello_world.py, a fresh kernel from a warm pool (pool size 2); then
    the same in this process, with one cost deferred at a time."""
    out: dict[str, Any] = {}
    out["b_run_python_warm"] = bench.on_server(
        "kernel-mcp-b",
        "(b) run_python hello_world.py, warm pool…",
        lambda server: fresh_spaced(server, bench.n(40, 8), pool=2),
        pool_size=2,
        max_sessions=24,
    )
    print("(b) in-process breakdown…", flush=True)
    with stderr_to(LOGS / "inprocess.log"):  # its kernels inherit our stderr
        out["b_inprocess"] = asyncio.run(
            inprocess_fresh(bench.projects, bench.tmp / "notebooks-b-inprocess", bench.n(12, 3))
        )
    return out


def case_c(bench: Bench) -> dict[str, Any]:
    """run_python hello_world.py with KERNEL_MCP_POOL_SIZE=0: every call starts a cold kernel."""
    cold = bench.on_server(
        "kernel-mcp-c",
        "(c) run_python, pool empty (cold kernel per call)…",
        lambda server: fresh_spaced(server, bench.n(15, 4), pool=0),
        pool_size=0,
    )
    return {"c_run_python_cold": cold}


def case_d(bench: Bench) -> dict[str, Any]:
    """``python hello_world.py`` as a subprocess (the reference for (b) and (c))."""
    print("(d) python hello_world.py as a subprocess…", flush=True)
    runs = subprocess_runs(bench.n(50, 10), PROJECTS / "hello_world.py", "Hello, World!")
    return {"d_subprocess": runs}


async def back_to_back(server: ServerProcess, seconds: float) -> dict[str, Any]:
    """Fresh runs one after the other for ``seconds``."""
    calls = Calls()
    async with client(mcp_url(server)) as c:
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


def case_e(bench: Bench) -> dict[str, Any]:
    """Back-to-back fresh runs for 20 s (pool size 2): runs/s and p99."""
    seconds = 5.0 if bench.quick else 20.0
    runs = bench.on_server(
        "kernel-mcp-e",
        "(e) back-to-back fresh runs…",
        lambda server: back_to_back(server, seconds),
        pool_size=2,
        max_sessions=24,
    )
    return {"e_back_to_back": runs}


# -- (f), (g), (h): sessions --------------------------------------------------------------------
async def session_calls(server: ServerProcess, n: int) -> dict[str, Any]:
    """run_code("pass") in one warm session; at the end, its kernel's memory."""
    calls = Calls()
    async with client(mcp_url(server)) as c:
        sid = await create_session(c, "bench-f")
        await wait_quiet(server.pid, 3, timeout=60)
        for _ in range(20):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid})
        for _ in range(n):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)
        await wait_quiet(server.pid, 3, timeout=60)
        listed = await timed_call(c, "list_sessions", {})
        mine = [s for s in listed.structured_content["sessions"] if s["session_id"] == sid]
        await timed_call(c, "close_session", {"session_id": sid})
    stats = with_errors(summary(calls.seconds), calls)
    k = min(50, n // 2)
    if k:
        stats["first_k_p50_ms"] = summary(calls.seconds[:k])["p50_ms"]
        stats["last_k_p50_ms"] = summary(calls.seconds[-k:])["p50_ms"]
        stats["k"] = k
    stats["notebook_cells_at_end"] = 20 + n
    if mine:
        stats["kernel_memory_mb_at_end"] = mine[0]["kernel_memory_mb"]
    return stats


def case_f(bench: Bench) -> dict[str, Any]:
    """run_code('pass') in one warm session, the append of its cell to the session's
    journal included; then the notebook rebuild by size, an A/B against a server with
    the journal append off, and the same in this process."""
    out: dict[str, Any] = {}
    out["f_session_run_code"] = bench.on_server(
        "kernel-mcp-f",
        "(f) run_code('pass') in a warm session…",
        lambda server: session_calls(server, bench.n(300, 40)),
        pool_size=2,
        max_sessions=24,
    )
    out["f_notebook_rebuild"] = notebook_rebuild_cost(bench.folder("f-notebooks"))
    print("(f) A/B: shipped server and diagnostic servers, interleaved…", flush=True)
    out.update(diagnostic_ab(bench, bench.n(150, 30)))
    print("(f) in-process breakdown…", flush=True)
    with stderr_to(LOGS / "inprocess.log"):  # its kernels inherit our stderr
        out["f_inprocess"] = asyncio.run(
            inprocess_session(bench.projects, bench.tmp / "notebooks-f-inprocess", bench.n(150, 30))
        )
    return out


async def concurrent(server: ServerProcess, sessions: int, per: int) -> dict[str, Any]:
    """``sessions`` clients, each with its own session, ``per`` calls each, all at once."""
    calls = Calls()
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            await stack.enter_async_context(client(mcp_url(server))) for _ in range(sessions)
        ]
        created = time.perf_counter()
        sids = await asyncio.gather(*(create_session(c) for c in clients))
        create_s = time.perf_counter() - created
        await wait_quiet(server.pid, sessions + 2, timeout=120)
        for c, sid in zip(clients, sids, strict=True):
            await timed_call(c, "run_code", {"code": "pass", "session_id": sid})

        async def worker(c: Any, sid: str) -> None:
            for _ in range(per):
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)

        cpu_before, own_before = tree_detail(server.pid), time.process_time()
        start = time.perf_counter()
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
        server_cpu_s=round(cpu_after[2] - cpu_before[2], 2),
        kernels_cpu_s=round(cpu_after[0] - cpu_after[2] - cpu_before[0] + cpu_before[2], 2),
        client_cpu_s=round(own_after - own_before, 2),
    )
    return stats


def case_g(bench: Bench) -> dict[str, Any]:
    """16 concurrent sessions x 100 run_code('pass') calls: throughput, p99, CPU."""
    load = bench.on_server(
        "kernel-mcp-g",
        "(g) 16 concurrent sessions…",
        lambda server: concurrent(server, 16, bench.n(100, 10)),
        pool_size=2,
        max_sessions=24,
    )
    return {"g_concurrent": load}


async def idle_rss(server: ServerProcess) -> dict[str, Any]:
    """kernel_memory_mb of an idle new session, from list_sessions."""
    async with client(mcp_url(server)) as c:
        sid = await create_session(c, "bench-h")
        await wait_quiet(server.pid, 2 + 1, timeout=60)
        result = await timed_call(c, "list_sessions", {})
        sessions = {s["session_id"]: s for s in result.structured_content["sessions"]}
        await timed_call(c, "close_session", {"session_id": sid})
    return {"idle_new_session_mb": sessions[sid]["kernel_memory_mb"]}


def case_h(bench: Bench) -> dict[str, Any]:
    """The RSS of an idle session's kernel (list_sessions' kernel_memory_mb); (f) reports
    its session's after its runs."""
    rss = bench.on_server(
        "kernel-mcp-h", "(h) idle session RSS…", idle_rss, pool_size=2, max_sessions=24
    )
    return {"h_idle_rss": rss}


# -- (i) data iteration --------------------------------------------------------------------------
PANDAS_MISSING = (
    "pandas is not installed in this environment; case (i) needs it. It is not a project\n"
    "dependency: install it into this environment for the benchmark with\n"
    f"    {Path(sys.executable).parent / 'pip'} install pandas"
)
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


def pandas_available() -> bool:
    done = subprocess.run([sys.executable, "-c", "import pandas"], capture_output=True)
    return done.returncode == 0


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


async def data_iteration(
    server: ServerProcess, script: Path, calls_n: int, *, pool: int, naive: bool = True
) -> dict[str, Any]:
    """Realistic (load once, iterate) and naive (re-run the file) session patterns."""
    out: dict[str, Any] = {}
    async with client(mcp_url(server)) as c:
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

        async def file_runs(key: str, file_name: str, expect: str) -> None:
            """``run_python file_name`` ``calls_n`` times in one new session."""
            runs = Calls()
            sid = await create_session(c, f"bench-i-{key}")
            await wait_quiet(server.pid, pool + 1, timeout=60)
            start = time.perf_counter()
            for _ in range(calls_n):
                args = {"file_name": file_name, "session_id": sid}
                await timed_call(c, "run_python", args, runs, expect=expect)
            out[f"{key}_total_s"] = round(time.perf_counter() - start, 3)
            out[key] = with_errors(summary(runs.seconds), runs)
            await timed_call(c, "close_session", {"session_id": sid})

        await file_runs("file", "iterate_data.py", "rows=")
        if naive:
            await file_runs("naive", script.name, "count")
    return out


def case_i(bench: Bench) -> dict[str, Any]:
    """Data iteration: load a ~50 MB CSV once in a session, then iterate on it, against
    ``python file.py`` run 10 times; again with KERNEL_MCP_PRELOAD=pandas."""
    if not pandas_available():
        print(PANDAS_MISSING, file=sys.stderr)
        return {"i_skipped": "pandas is not installed"}
    out: dict[str, Any] = {}
    csv_path = OUT / "data.csv"
    print("(i) generating the CSV…", flush=True)
    out["i_data"] = make_csv(csv_path, 10 if bench.quick else 50)
    script = bench.projects / "load_data.py"
    script.write_text(DATA_SCRIPT.format(csv=str(csv_path)))
    guarded = bench.projects / "iterate_data.py"
    guarded.write_text(ITERATE_FILE.format(csv=str(csv_path)))

    print("(i) python load_data.py as a subprocess…", flush=True)
    sub = subprocess_runs(bench.n(10, 10), script, "count")
    out["i_subprocess"] = sub
    out["i_subprocess_total_s"] = round(sub["mean_ms"] * sub["n"] / 1000, 3)
    print("(i) python iterate_data.py as a subprocess…", flush=True)
    sub_file = subprocess_runs(bench.n(10, 10), guarded, "rows=")
    out["i_file_subprocess"] = sub_file
    out["i_file_subprocess_total_s"] = round(sub_file["mean_ms"] * sub_file["n"] / 1000, 3)

    out["i_session"] = bench.on_server(
        "kernel-mcp-i",
        "(i) data iteration in a session…",
        lambda server: data_iteration(server, script, 10, pool=2),
        pool_size=2,
        max_sessions=24,
    )
    out["i_session_preload"] = bench.on_server(
        "kernel-mcp-i-preload",
        "(i) data iteration, KERNEL_MCP_PRELOAD=pandas…",
        lambda server: data_iteration(server, script, 10, pool=1, naive=False),
        pool_size=1,
        extra={"KERNEL_MCP_PRELOAD": "pandas"},
    )
    return out


# -- (j), (k): the gateway backend and replicas ---------------------------------------------------
async def interleaved(
    servers: dict[str, ServerProcess], gateways: list[Gateway], n: int
) -> dict[str, Any]:
    """run_code("pass") in one warm session on each server, one call to each in turn,
    so that noise from the rest of the machine hits all alike."""
    calls = {name: Calls() for name in servers}
    created: dict[str, float] = {}
    async with contextlib.AsyncExitStack() as stack:
        clients = {
            name: await stack.enter_async_context(client(mcp_url(srv)))
            for name, srv in servers.items()
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


def case_j(bench: Bench) -> dict[str, Any]:
    """run_code('pass') in a warm session on the gateway backend (a token-protected
    ``jupyter kernelgateway`` on loopback) against the local backend, interleaved, and
    on a gateway with TCP_NODELAY (diagnostic)."""
    with contextlib.ExitStack() as stack:
        print("(j) starting two kernelgateways…", flush=True)
        plain = stack.enter_context(gateway("gateway-j", bench.folder("gateway-j")))
        nodelay = stack.enter_context(
            gateway("gateway-j-nodelay", bench.folder("gateway-j-nodelay"), nodelay=True)
        )
        print("(j) run_code('pass'): gateway backend against local, interleaved…", flush=True)
        servers = {
            name: stack.enter_context(
                bench.server(
                    f"kernel-mcp-j-{name}", pool_size=1, extra=gw.settings() if gw else None
                )
            )
            for name, gw in (("gateway", plain), ("local", None), ("gateway_nodelay", nodelay))
        }
        return asyncio.run(interleaved(servers, [plain, nodelay], bench.n(200, 30)))


async def hopping(
    replicas: list[ServerProcess], gw: Gateway, sessions: int, per: int
) -> dict[str, Any]:
    """``sessions`` sessions, created alternately on each replica; every worker sends
    call i of its session to replica (worker + i) mod 2, so a session changes replica on
    every call."""
    calls = Calls()
    hops = len(replicas)
    async with contextlib.AsyncExitStack() as stack:
        clients = [
            [await stack.enter_async_context(client(mcp_url(r))) for r in replicas]
            for _ in range(sessions)
        ]
        created = time.perf_counter()
        sids = await asyncio.gather(
            *(create_session(clients[w][w % hops]) for w in range(sessions))
        )
        create_s = time.perf_counter() - created
        await wait_calm([*(r.pid for r in replicas), gw.pid], timeout=120)
        for w, sid in enumerate(sids):  # one warm-up call through every replica
            for c in clients[w]:
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid})

        async def worker(w: int, sid: str) -> None:
            for i in range(per):
                c = clients[w][(w + i) % hops]
                await timed_call(c, "run_code", {"code": "pass", "session_id": sid}, calls)

        pids = [*(r.pid for r in replicas), gw.pid]
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
    gw_tree = after[-1][0] - before[-1][0]
    gw_own = after[-1][2] - before[-1][2]
    stats.update(
        replicas=len(replicas),
        sessions=sessions,
        calls_per_session=per,
        wall_s=round(wall, 2),
        calls_per_s=round(len(calls.seconds) / wall, 1),
        create_sessions_s=round(create_s, 2),
        # Where the 2 cores went: each replica process, the gateway process, its kernels,
        # and this client.
        replica_cpu_s=[round(a[2] - b[2], 2) for a, b in zip(after[:-1], before[:-1], strict=True)],
        gateway_cpu_s=round(gw_own, 2),
        kernels_cpu_s=round(gw_tree - gw_own, 2),
        client_cpu_s=round(own_after - own_before, 2),
    )
    return stats


def case_k(bench: Bench) -> dict[str, Any]:
    """Two replicas sharing a redis-server (KERNEL_MCP_STATE_URL) on the gateway backend:
    16 sessions x N calls, each call to the other replica than the last; the same
    16 x N on one local server for reference."""
    out: dict[str, Any] = {}
    per = bench.n(50, 10)
    with contextlib.ExitStack() as stack:
        print("(k) starting a kernelgateway and a redis-server…", flush=True)
        gw = stack.enter_context(gateway("gateway-k", bench.folder("gateway-k")))
        redis = stack.enter_context(redis_server(bench.folder("redis")))
        shared = {**gw.settings(), "KERNEL_MCP_STATE_URL": redis.url}
        print(f"(k) two replicas (redis + gateway), 16 sessions x {per}…", flush=True)
        notebooks = bench.tmp / "notebooks-k-shared"
        replicas = [
            stack.enter_context(
                bench.server(
                    f"kernel-mcp-k-replica-{name}",
                    pool_size=1,
                    max_sessions=24,
                    extra=shared,
                    notebooks=notebooks,
                )
            )
            for name in "ab"
        ]
        out["k_replicas"] = asyncio.run(hopping(replicas, gw, 16, per))
    out["k_local"] = bench.on_server(
        "kernel-mcp-k-local",
        f"(k) reference: one local server, 16 sessions x {per}…",
        lambda server: concurrent(server, 16, per),
        pool_size=2,
        max_sessions=24,
    )
    return out


# -- what explains (b) and (f): in this process, one cost off at a time --------------------------
def _timed_kernel(timers: dict[str, list[float]]) -> Callable[[], None]:
    """Wrap Kernel.run_silently and Kernel.execute with timers; returns the undo."""
    from kernel_mcp.kernels.kernel import Kernel

    originals = {name: getattr(Kernel, name) for name in ("run_silently", "execute")}

    def timed(name: str) -> Any:
        async def wrapper(self: Any, *args: Any, **kwargs: Any) -> Any:
            start = time.perf_counter()
            try:
                return await originals[name](self, *args, **kwargs)
            finally:
                timers.setdefault(name, []).append(time.perf_counter() - start)

        return wrapper

    for name in originals:
        setattr(Kernel, name, timed(name))

    def undo() -> None:
        for name, fn in originals.items():
            setattr(Kernel, name, fn)

    return undo


#: What the in-process breakdowns report (figure: the timings it is the p50 of).
FRESH_FIGURES = {
    "mcp_run_python_p50_ms": "total",
    "preamble_p50_ms": "run_silently",
    "execute_p50_ms": "execute",
}
SESSION_FIGURES = {
    "runner_run_code_p50_ms": "runner",
    "kernel_execute_p50_ms": "execute",
    "in_memory_mcp_p50_ms": "mcp",
}


def _p50s(timings: dict[str, list[float]], fields: dict[str, str]) -> dict[str, Any]:
    """``n`` (the length of the first timings named) and, for each ``figure: timings``
    in ``fields``, their p50 in ms."""
    first = next(iter(fields.values()))
    p50s = {name: round(percentile(timings[key], 50) * 1000, 3) for name, key in fields.items()}
    return {"n": len(timings[first]), **p50s}


def _runner_settings(projects: Path, notebooks: Path) -> Any:
    from kernel_mcp.config import load_settings

    return load_settings(
        pool_size=2, projects_dir=projects, notebooks_dir=notebooks, max_sessions=8
    )


async def inprocess_fresh(projects: Path, notebooks: Path, n: int) -> dict[str, Any]:
    """Where a fresh run's time goes, without HTTP: a Runner in this process.

    Instrumentation only: Kernel.run_silently / Kernel.execute are wrapped with
    timers, and variants take turns call by call: as shipped; the pool refill
    deferred until the run has replied; that and the stop of the used kernel.
    """
    from fastmcp import Client

    from kernel_mcp.deployment import runner_for
    from kernel_mcp.server import build_server

    timers: dict[str, list[float]] = {}
    out: dict[str, Any] = {}
    undo = _timed_kernel(timers)
    try:
        async with runner_for(_runner_settings(projects, notebooks)) as runner:
            pool = runner.pool
            wanted = getattr(pool, "_wanted", None)
            owner = getattr(runner, "tasks", None)
            spawn = getattr(owner, "spawn", None)
            mcp = build_server(runner.settings, runner)
            variants = ["as_shipped"]
            if wanted is not None and spawn is not None:
                variants += ["refill_deferred", "refill_and_stop_deferred"]
            else:
                out["fresh_deferred"] = "skipped: Runner/KernelPool internals changed"

            def later(coro: Any, **named: Any) -> Any:
                async def delayed() -> None:
                    await asyncio.sleep(0.5)
                    await coro

                return spawn(delayed(), **named)

            fresh: dict[str, dict[str, list[float]]] = {v: {} for v in variants}
            async with Client(mcp) as c:
                for _ in range(n):
                    for variant in variants:
                        await pool.wait_full(timeout=60)
                        await wait_quiet(os.getpid(), 2, min_wait=0.3, machine_patience=2.0)
                        if variant != "as_shipped":
                            pool.size = 0  # the refill loop starts nothing during this call
                        if variant == "refill_and_stop_deferred":
                            owner.spawn = later  # type: ignore[method-assign]
                        timers.clear()
                        start = time.perf_counter()
                        try:
                            args = {"file_name": "hello_world.py"}
                            result = await c.call_tool_mcp("run_python", args)
                            assert not result.is_error, result
                        finally:
                            elapsed = time.perf_counter() - start
                            if owner is not None:
                                owner.spawn = spawn  # type: ignore[method-assign]
                            if variant != "as_shipped":
                                pool.size = 2
                                wanted.set()
                        got = fresh[variant]
                        got.setdefault("total", []).append(elapsed)
                        for name in ("run_silently", "execute"):
                            got.setdefault(name, []).extend(timers.get(name, []))
            for variant, got in fresh.items():
                out[f"fresh_{variant}"] = _p50s(got, FRESH_FIGURES)
    finally:
        undo()
    return out


async def inprocess_session(projects: Path, notebooks: Path, n: int) -> dict[str, Any]:
    """Where a session run's time goes, without HTTP: a Runner in this process, two
    sessions taking turns, one with the journal append switched off."""
    from fastmcp import Client

    from kernel_mcp.deployment import runner_for
    from kernel_mcp.server import build_server

    timers: dict[str, list[float]] = {}
    out: dict[str, Any] = {}
    undo = _timed_kernel(timers)
    try:
        async with runner_for(_runner_settings(projects, notebooks)) as runner:
            mcp = build_server(runner.settings, runner)
            sessions = {
                "no_journal": await runner.create_session(owner=None),
                "with_journal": await runner.create_session(owner=None),
            }
            await runner.pool.wait_full(timeout=60)
            await wait_quiet(os.getpid(), 4, min_wait=0.3, machine_patience=2.0)
            measured: dict[str, dict[str, list[float]]] = {v: {} for v in sessions}

            async def one(variant: str, how: str, c: Any) -> None:
                session = sessions[variant]
                off = journal_off() if variant == "no_journal" else contextlib.nullcontext()
                timers.clear()
                start = time.perf_counter()
                with off:
                    if how == "runner":
                        await runner.run_code("pass", owner=None, session_id=session.id)
                    else:
                        args = {"code": "pass", "session_id": session.id}
                        await c.call_tool_mcp("run_code", args)
                got = measured[variant]
                got.setdefault(how, []).append(time.perf_counter() - start)
                got.setdefault("execute", []).extend(timers.get("execute", []))

            async with Client(mcp) as c:
                for _ in range(10):
                    for variant in sessions:
                        await one(variant, "runner", c)
                measured = {v: {} for v in sessions}
                for _ in range(n):
                    for variant in sessions:
                        await one(variant, "runner", c)
                        await one(variant, "mcp", c)
            for variant, got in measured.items():
                out[f"session_{variant}"] = {
                    **_p50s(got, SESSION_FIGURES),
                    "cells_at_end": 10 + 2 * n,
                }
                await runner.sessions.close_session(None, sessions[variant].id)
    finally:
        undo()
    return out


def _finished_run(outputs: list[Any]) -> Any:
    """An ok run of one millisecond with ``outputs``, as a recorded cell holds it."""
    from datetime import datetime, timezone

    from kernel_mcp.kernels.execution import Execution

    now = datetime.now(timezone.utc)
    return Execution(
        status="ok",
        outputs=outputs,
        execution_count=1,
        error=None,
        started_at=now,
        ended_at=now,
        duration_s=0.001,
        timeout_s=30,
    )


def notebook_rebuild_cost(folder: Path) -> dict[str, Any]:
    """What rebuilding a session's .ipynb costs, by size (in-process ``write_atomically``).

    Since the journal, a session run appends one line; the notebook is rebuilt off
    the reply path (at most once a second while it grows, and on read or export).
    """
    from kernel_mcp.notebooks.model import code_cell, notebook_for, write_notebook

    execution = _finished_run([])
    out = {}
    for cells in (1, 100, 1000):
        nb = notebook_for({"language_info": {"name": "python"}})
        nb.cells = [code_cell("pass", execution, "run_code") for _ in range(cells)]
        path = folder / f"nb-{cells}.ipynb"
        times = []
        for _ in range(30 if cells < 1000 else 10):
            start = time.perf_counter()
            write_notebook(path, nb)
            times.append(time.perf_counter() - start)
        out[f"{cells}_cells"] = summary(times)
    return out


def recording_cost(folder: Path, sizes: tuple[int, ...], samples: int) -> dict[str, Any]:
    """What recording one run costs at each size of a session: the journal append a
    reply waits for (``Recorder.append``), measured as the session grows, in-process.

    Each run's cell holds about 1 KB of output. Between sizes the journal is grown
    with the same appends, untimed; at each size ``samples`` appends are timed.
    """
    from nbformat.v4 import new_output

    from kernel_mcp.notebooks.model import code_cell
    from kernel_mcp.notebooks.recording import Recorder
    from kernel_mcp.notebooks.store import NotebookStore

    execution = _finished_run([new_output("stream", name="stdout", text="x" * 1000 + "\n")])
    store = NotebookStore(folder, private_recordings=False)
    recorder = Recorder(store, projects_dir=folder)
    recording = recorder.create("bench-r", {"language_info": {"name": "python"}})
    out: dict[str, Any] = {}
    cells = 0
    for size in sizes:
        while cells < size:
            recorder.append(recording, code_cell("print('x' * 1000)", execution, "run_code"))
            cells += 1
        times = []
        for _ in range(samples):
            cell = code_cell("print('x' * 1000)", execution, "run_code")
            start = time.perf_counter()
            recorder.append(recording, cell)
            times.append(time.perf_counter() - start)
            cells += 1
        out[f"r_append_at_{size}"] = summary(times)
    recording.close()
    first, last = (
        out[f"r_append_at_{sizes[0]}"]["p50_ms"],
        out[f"r_append_at_{sizes[-1]}"]["p50_ms"],
    )
    out["r_flatness"] = {"last_over_first": round(last / first, 2) if first else None}
    return out


def case_r(bench: Bench) -> dict[str, Any]:
    """Recording cost per run at 1, 100, 1,000 and 10,000 cells: flat, because a run
    appends one journal line and the .ipynb is rebuilt off the reply path."""
    print("(r) recording cost per run by session size…", flush=True)
    return recording_cost(bench.folder("r-notebooks"), (1, 100, 1000, 10000), bench.n(200, 30))


def diagnostic_ab(bench: Bench, n: int) -> dict[str, Any]:
    """run_code("pass") on the shipped server and on each diagnostic variant, one call to
    each in turn, so that noise from the rest of the machine hits all alike."""
    names = ["shipped", *DIAGNOSTICS]
    with contextlib.ExitStack() as stack:
        servers = {
            name: stack.enter_context(
                bench.server(
                    f"kernel-mcp-ab-{name}",
                    pool_size=0,
                    command=None
                    if name == "shipped"
                    else bench_command("--serve-diagnostic", name),
                )
            )
            for name in names
        }

        async def go() -> dict[str, Any]:
            calls = {name: Calls() for name in names}
            async with contextlib.AsyncExitStack() as astack:
                clients = {
                    name: await astack.enter_async_context(client(mcp_url(srv)))
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


# -- the registry ----------------------------------------------------------------------------
CASES: dict[str, Case] = {
    c.letter: c
    for c in (
        Case("a", "floor: a no-op fastmcp call over /mcp, a raw jupyter_client execute", case_a),
        Case(
            "b",
            "run_python hello_world.py, fresh kernel from a warm pool (pool size 2)",
            case_b,
            target="(b)/(d) <= 3, and (b) within 15 ms of the floor (a)",
            refs="ad",
        ),
        Case(
            "c", "the same with KERNEL_MCP_POOL_SIZE=0 (a cold kernel per call)", case_c, refs="d"
        ),
        Case("d", "python hello_world.py as a subprocess", case_d),
        Case("e", "back-to-back fresh runs for 20 s (pool size 2): runs/s and p99", case_e),
        Case(
            "f",
            "run_code('pass') in one warm session (the run's journal line included)",
            case_f,
            target="(f) <= 1.2 x floor (a)",
            refs="a",
        ),
        Case("g", "16 concurrent sessions x 100 calls: throughput and p99", case_g),
        Case("h", "RSS of an idle session's kernel (list_sessions' kernel_memory_mb)", case_h),
        Case(
            "i",
            "data iteration: load a ~50 MB CSV once in a session, then iterate on it, "
            "against python file.py run 10 times (needs pandas)",
            case_i,
            target="(i) >= 10x faster in total",
        ),
        Case("j", "run_code('pass'): gateway backend against local, interleaved", case_j),
        Case("k", "two replicas sharing redis and a gateway, 16 sessions hopping", case_k),
        Case(
            "p",
            "installing packages into a fresh session folder from a warm cache: a small "
            "pure wheel (loopback index), and pandas (the package index)",
            case_p,
            target="pandas from a warm cache < 2 s p50",
        ),
        Case(
            "q",
            "the projects cap's cost: fresh run_python in a folder of 5,000 files, "
            "KERNEL_MCP_PROJECTS_QUOTA_MB on against 0 in the same run",
            case_q,
            target="the cap adds <= 5 % to a fresh run",
        ),
        Case(
            "r",
            "recording cost per run (journal append) at 1, 100, 1,000, 10,000 cells",
            case_r,
            target="flat within 2x from 1 to 10,000 cells",
        ),
        Case(
            "s",
            "the sandbox's cost: cold start, fresh run_python (b) and session call (f), "
            "KERNEL_MCP_SANDBOX on against off in the same run",
            case_s,
            target="adds <= 10 % to (b) and to the cold start, nothing measurable to (f)",
        ),
        Case(
            "t",
            "kernels forked from the template: start to ready against spawned, a pandas "
            "script with KERNEL_MCP_PRELOAD=pandas against python, 16 pooled kernels' PSS",
            case_t,
            target="start <= 50 ms p50; pandas <= 0.2x python; PSS <= 4x one spawned RSS",
        ),
        Case(
            "w",
            "a session's run_code reply to its cell on view_session's page (Debian's chromium)",
            case_w,
            target="p50 <= 100 ms",
        ),
    )
}
"""Every case by letter, in the order they run."""
