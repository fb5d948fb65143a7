"""The escape suite: what AI-written code must not do from inside a kernel, tried for real.

A real server on its default settings (the sandbox is on wherever the machine
can sandbox; where it cannot, this module is skipped and says why) with a
bearer token in its environment, a secret next to the projects folder, a
``.env`` in its working folder and another session's recording in its
notebooks folder. Each attempt runs in a fresh kernel and in a session, gets a
clear error (a missing file, a read-only file system, a refused connection,
no such process, a spawn error), and the server keeps serving. What code must
still be able to do (numpy, pandas, matplotlib figures, the projects folder,
subprocesses, threads, /tmp) is tried the same way.

Processes outliving their kernel are looked for on the host: a daemon (setsid,
double fork) sleeps for a number only it uses, and must be gone within 2 s of
its kernel's end: a fresh run's reply, close_session, restart_session, a
timeout kill, server shutdown and server SIGKILL.
"""

from __future__ import annotations

import os
import signal
import socket
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_mcp.launch.bwrap import find_bwrap, probe
from tests.helpers import SECRET, call, client_for, running_server, structured, text_of
from tests.kernels import daemon_code, daemons
from tests.launchers import ROOT, ServerProcess, wait_until

pytestmark = [
    pytest.mark.transport,
    pytest.mark.skipif(
        probe(*find_bwrap(None)).bwrap is None,
        reason=f"no sandbox on this machine: {probe(*find_bwrap(None)).reason}",
    ),
]

TOKEN = "escape-suite-bearer-token-" + uuid.uuid4().hex
DOTENV_SECRET = "dotenv-secret-" + uuid.uuid4().hex
MODES = ("fresh", "session")


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    base = tmp_path_factory.mktemp("escape")
    cwd = base / "server-cwd"
    cwd.mkdir()
    (cwd / ".env").write_text(f"# not a setting the server reads\nDOTENV_SECRET={DOTENV_SECRET}\n")
    with running_server(
        base, KERNEL_MCP_TOKEN=TOKEN, KERNEL_MCP_TEST_CWD=str(cwd), PYTHON_TIMEOUT="30"
    ) as started:
        yield started


@pytest.fixture(scope="module")
async def client(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN) as connected:
        yield connected


@pytest.fixture(scope="module")
async def session(client: Any) -> AsyncIterator[str]:
    sid = structured(await call(client, "create_session", name="escapee"))["session_id"]
    yield sid
    await call(client, "close_session", session_id=sid)


async def run(client: Any, code: str, mode: str, session: str, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"code": code, **extra}
    if mode == "session":
        arguments["session_id"] = session
    return structured(await call(client, "run_code", **arguments))


async def refused(client: Any, code: str, mode: str, session: str, *said: str) -> str:
    """Run ``code``: it must fail with an exception whose text contains one of ``said``."""
    report = await run(client, code, mode, session)
    assert report["status"] == "error", report
    error = f"{report['error']['ename']}: {report['error']['evalue']}"
    assert any(s in error for s in said), error
    await serving(client)
    return error


async def serving(client: Any) -> None:
    after = structured(await call(client, "run_code", code="print('next')"))
    assert after["status"] == "ok" and after["stdout"] == "next\n", after


# -- secrets and files --
@pytest.mark.parametrize("mode", MODES)
async def test_the_server_s_token_is_not_in_any_environment_the_kernel_can_read(
    server: ServerProcess, client: Any, session: str, mode: str
) -> None:
    assert server.proc is not None
    await refused(
        client,
        f"open('/proc/{server.proc.pid}/environ', 'rb').read()",
        mode,
        session,
        "FileNotFoundError",
        "ProcessLookupError",
    )
    code = (
        "import glob, os\n"
        f"token = {TOKEN!r}.encode()\n"
        "seen = []\n"
        "for path in glob.glob('/proc/[0-9]*/environ'):\n"
        "    try:\n"
        "        seen.append(token in open(path, 'rb').read())\n"
        "    except OSError:\n"
        "        pass\n"
        "print(len(seen), any(seen), token.decode() in str(os.environ))"
    )
    report = await run(client, code, mode, session)
    count, found, in_own = report["stdout"].split()
    assert int(count) >= 1 and found == "False" and in_own == "False", report


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize(
    "where",
    ["server_dotenv", "server_source", "next_to_projects", "notebooks", "real_home"],
)
async def test_files_outside_the_shared_folders_cannot_be_read(
    server: ServerProcess, client: Any, session: str, mode: str, where: str
) -> None:
    projects = Path(server.env["PYTHON_PROJECTS_DIR"])
    notebooks = Path(server.env["KERNEL_MCP_NOTEBOOKS_DIR"])
    recording = notebooks / "sessions" / "escapee.ipynb"
    assert wait_until(recording.exists, timeout=20), "another session's recording exists"
    target = {
        "server_dotenv": Path(server.env["KERNEL_MCP_TEST_CWD"]) / ".env",
        "server_source": ROOT / "pyproject.toml",
        "next_to_projects": projects.parent / "outside" / "secret.py",
        "notebooks": recording,
        "real_home": Path.home() / ".bashrc",
    }[where]
    if where == "real_home":
        code = "import os; print(os.listdir(os.path.expanduser('~')))"
        listing = await run(client, code, mode, session)
        assert ".bashrc" not in listing["stdout"] and ".ssh" not in listing["stdout"], listing
    said = await refused(
        client, f"print(open({str(target)!r}).read())", mode, session, "FileNotFoundError"
    )
    assert SECRET not in said and DOTENV_SECRET not in said


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("where", ["system", "notebooks", "next_to_projects"])
async def test_nothing_outside_the_projects_folder_can_be_written(
    server: ServerProcess, client: Any, session: str, mode: str, where: str
) -> None:
    notebooks = Path(server.env["KERNEL_MCP_NOTEBOOKS_DIR"])
    projects = Path(server.env["PYTHON_PROJECTS_DIR"])
    name = f"escape-{uuid.uuid4().hex[:8]}"
    target = {
        "system": Path("/usr/lib") / name,
        "notebooks": notebooks / name,
        "next_to_projects": projects.parent / "outside" / name,
    }[where]
    await refused(
        client,
        f"open({str(target)!r}, 'w').write('x')",
        mode,
        session,
        "Read-only file system",
        "FileNotFoundError",
        "PermissionError",
    )
    assert not target.exists()


@pytest.mark.parametrize("mode", MODES)
async def test_a_write_below_the_host_s_tmp_stays_in_the_kernel_s_own(
    server: ServerProcess, client: Any, session: str, mode: str
) -> None:
    # The projects folder's parent exists inside (to hold the mount), in the kernel's
    # private /tmp here: a write there succeeds, and lands nowhere on the host.
    target = Path(server.env["PYTHON_PROJECTS_DIR"]).parent / f"escape-{uuid.uuid4().hex[:8]}"
    report = await run(client, f"open({str(target)!r}, 'w').write('x')", mode, session)
    assert report["status"] in ("ok", "error"), report
    assert not target.exists()


# -- network and signals --
@pytest.fixture(scope="module")
def listener() -> Iterator[tuple[int, list[str]]]:
    """A live listener in the test's own network namespace, on every address of this machine.

    Yields its port and this machine's addresses other than loopback (it may have none).
    """
    with socket.create_server(("0.0.0.0", 0)) as server:
        server.listen(16)
        port = server.getsockname()[1]
        addresses = [
            a.address
            for name, found in psutil.net_if_addrs().items()
            for a in found
            if a.family == socket.AF_INET and not a.address.startswith("127.")
        ]
        for address in ["127.0.0.1", *addresses]:  # live: the test itself gets through
            with socket.create_connection((address, port), timeout=5):
                pass
        yield port, addresses


@pytest.mark.parametrize("mode", MODES)
async def test_no_connection_reaches_the_server_or_anything_else(
    server: ServerProcess, client: Any, session: str, mode: str, listener: tuple[int, list[str]]
) -> None:
    port, addresses = listener
    for target in (server.port, port):
        await refused(
            client,
            f"import socket; socket.create_connection(('127.0.0.1', {target}), timeout=5)",
            mode,
            session,
            "ConnectionRefusedError",
        )
    # The kernel's namespace has loopback alone: no route to anything else on this machine.
    for address in addresses:
        await refused(
            client,
            f"import socket; socket.create_connection(({address!r}, {port}), timeout=5)",
            mode,
            session,
            "Network is unreachable",
        )
    report = await run(client, "import socket; print(socket.if_nameindex())", mode, session)
    assert report["stdout"] == "[(1, 'lo')]\n", report


@pytest.mark.parametrize("mode", MODES)
async def test_the_server_cannot_be_signalled(
    server: ServerProcess, client: Any, session: str, mode: str
) -> None:
    assert server.proc is not None
    await refused(
        client,
        f"import os, signal; os.kill({server.proc.pid}, signal.SIGTERM)",
        mode,
        session,
        "ProcessLookupError",
        "PermissionError",
    )
    assert server.proc.poll() is None


@pytest.mark.parametrize("mode", MODES)
async def test_3000_processes_hit_the_task_limit(client: Any, session: str, mode: str) -> None:
    code = (
        "import subprocess\n"
        "children = []\n"
        "try:\n"
        "    while len(children) < 3000:\n"
        "        children.append(subprocess.Popen(['sleep', '60']))\n"
        "finally:\n"
        "    print(len(children))\n"
        "    for child in children: child.kill()\n"
        "    for child in children: child.wait()\n"
    )
    report = await run(client, code, mode, session)
    assert report["status"] == "error", report
    assert report["error"]["ename"] in ("BlockingIOError", "OSError"), report
    assert int(report["stdout"]) < 512, report
    await serving(client)


async def test_a_fork_bomb_stops_at_the_task_limit_and_the_server_keeps_serving(
    client: Any,
) -> None:
    # Every copy forks too: the kernel's fork fails at the task limit (BlockingIOError),
    # unless the copies, each formatting its own traceback, first fill the memory
    # limit and the OOM killer picks the kernel (kernel_died), or, on a loaded machine,
    # the kernel gets too little of the CPU among its 512 copies to say so before the
    # time limit, and is killed with all of them (timeout). Either way the bomb ends
    # with the kernel, and the server keeps serving.
    code = "import os\nwhile True:\n    os.fork()\n"
    report = structured(await call(client, "run_code", code=code, timeout=20))
    assert report["status"] in ("error", "kernel_died", "timeout"), report
    if report["status"] == "error":
        assert report["error"]["ename"] == "BlockingIOError", report
    elif report["status"] == "kernel_died":
        assert any("memory limit" in note for note in report["notes"]), report
    # A fresh run's kernel, and with it its PID namespace, ends with the run.
    await serving(client)


# -- kernels cannot see each other --
async def test_two_sessions_cannot_see_each_other_s_tmp_or_processes(client: Any) -> None:
    first = structured(await call(client, "create_session"))["session_id"]
    second = structured(await call(client, "create_session"))["session_id"]
    try:
        marker = f"first-{uuid.uuid4().hex[:6]}"
        await call(
            client,
            "run_code",
            code=f"open('/tmp/{marker}', 'w').write('x')\n"
            "import subprocess; sleeper = subprocess.Popen(['sleep', '300'])",
            session_id=first,
        )
        seen = structured(
            await call(
                client,
                "run_code",
                code="import os\n"
                "procs = [p for p in os.listdir('/proc') if p.isdigit()]\n"
                "cmds = [open(f'/proc/{p}/cmdline', 'rb').read() for p in procs]\n"
                "print(os.listdir('/tmp'), any(c.startswith(b'sleep') for c in cmds), len(procs))",
                session_id=second,
            )
        )
        assert marker not in seen["stdout"], seen
        assert "False" in seen["stdout"], seen
    finally:
        for sid in (first, second):
            await call(client, "close_session", session_id=sid)


async def test_two_fresh_runs_cannot_see_each_other_s_tmp(client: Any) -> None:
    marker = f"fresh-{uuid.uuid4().hex[:6]}"
    await call(client, "run_code", code=f"open('/tmp/{marker}', 'w').write('x')")
    seen = structured(await call(client, "run_code", code="import os; print(os.listdir('/tmp'))"))
    assert marker not in seen["stdout"], seen


# -- nothing outlives its kernel --
def new_marker() -> str:
    return f"{4000 + uuid.uuid4().int % 1000}.{uuid.uuid4().int % 10**6:06d}"


async def start_daemon(client: Any, session: str | None) -> str:
    marker = new_marker()
    arguments: dict[str, Any] = {"code": daemon_code(marker)}
    if session:
        arguments["session_id"] = session
    report = structured(await call(client, "run_code", **arguments))
    assert report["stdout"] == "daemon started\n", report
    return marker


async def test_a_daemon_is_gone_within_2_s_of_a_fresh_run_s_reply(client: Any) -> None:
    marker = await start_daemon(client, None)
    assert wait_until(lambda: not daemons(marker), timeout=2), daemons(marker)


@pytest.mark.parametrize("end", ["close_session", "restart_session", "timeout_kill"])
async def test_a_session_s_daemon_is_gone_within_2_s_of_its_kernel_s_end(
    client: Any, end: str
) -> None:
    sid = structured(await call(client, "create_session"))["session_id"]
    try:
        marker = await start_daemon(client, sid)
        assert daemons(marker), "the daemon runs while its kernel does"
        if end == "timeout_kill":
            stubborn = (
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
            )
            report = structured(
                await call(client, "run_code", code=stubborn, session_id=sid, timeout=1)
            )
            assert report["status"] == "timeout" and any("killed" in n for n in report["notes"])
        else:
            assert not (await call(client, end, session_id=sid)).is_error
        assert wait_until(lambda: not daemons(marker), timeout=2), daemons(marker)
    finally:
        await call(client, "close_session", session_id=sid)


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["shutdown", "sigkill"])
async def test_daemons_are_gone_within_2_s_of_the_server_s_end(
    tmp_path: Path, stop: signal.Signals
) -> None:
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1") as server:
        async with client_for("mcp", server) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            markers = [await start_daemon(client, sid)]
        assert all(daemons(m) for m in markers)
        assert server.stop(stop) is not None
        assert wait_until(lambda: not any(daemons(m) for m in markers), timeout=2)


# -- what must keep working --
@pytest.mark.parametrize("mode", MODES)
async def test_numpy_matplotlib_and_pandas_work(client: Any, session: str, mode: str) -> None:
    report = await run(client, "import numpy as np\nprint(np.arange(10).sum())", mode, session)
    assert report["stdout"] == "45\n", report
    result = await call(
        client,
        "run_code",
        code="import matplotlib.pyplot as plt\nplt.plot([1, 3, 2])\nplt.show()",
        **({"session_id": session} if mode == "session" else {}),
    )
    assert structured(result)["images"] == 1, text_of(result)
    pandas = await run(
        client,
        "try:\n    import pandas as pd\nexcept ImportError:\n    print('no pandas')\n"
        "else:\n    print(pd.DataFrame({'a': [1, 2]}).a.sum())",
        mode,
        session,
    )
    assert pandas["stdout"] in ("3\n", "no pandas\n"), pandas


@pytest.mark.parametrize("mode", MODES)
async def test_the_projects_folder_is_readable_and_writable(
    server: ServerProcess, client: Any, session: str, mode: str
) -> None:
    projects = Path(server.env["PYTHON_PROJECTS_DIR"])
    name = f"written-{mode}-{uuid.uuid4().hex[:6]}.txt"
    report = await run(
        client,
        f"open({name!r}, 'w').write('from the kernel')\nprint(open('sub/nested.py').read())",
        mode,
        session,
    )
    assert report["stdout"] == "print('nested ok')\n\n", report
    assert (projects / name).read_text() == "from the kernel"


@pytest.mark.parametrize("mode", MODES)
async def test_subprocesses_shell_escapes_threads_and_tmp_work(
    client: Any, session: str, mode: str
) -> None:
    code = (
        "import subprocess, threading, tempfile\n"
        "print(subprocess.run(['echo', 'x'], capture_output=True, text=True).stdout.strip())\n"
        "listing = !ls\n"
        "print('nested' in ' '.join(listing) or 'sub' in listing)\n"
        "box = []\n"
        "worker = threading.Thread(target=lambda: box.append('threaded'))\n"
        "worker.start(); worker.join()\n"
        "print(box[0])\n"
        "with tempfile.NamedTemporaryFile('w+') as f:\n"
        "    f.write('tmp ok'); f.seek(0); print(f.read())\n"
    )
    report = await run(client, code, mode, session)
    assert report["stdout"] == "x\nTrue\nthreaded\ntmp ok\n", report


# -- the same server, sandbox off: a subset that must behave as before --
@pytest.fixture(scope="module")
def plain_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("plain"), KERNEL_MCP_SANDBOX="off") as started:
        yield started


async def test_with_the_sandbox_off_kernels_are_plain_processes(
    plain_server: ServerProcess,
) -> None:
    async with client_for("mcp", plain_server) as client:
        report = structured(
            await call(client, "run_code", code="import os; print(os.getpid() > 2, os.getuid())")
        )
        assert report["stdout"] == f"True {os.getuid()}\n", report
        # The server's own files are readable: that is what off means.
        shown = structured(
            await call(
                client, "run_code", code=f"print(open({str(ROOT / 'pyproject.toml')!r}).read()[:9])"
            )
        )
        assert shown["stdout"] == "[build-sy\n", shown
        sid = structured(await call(client, "create_session"))["session_id"]
        try:
            stubborn = (
                "import signal\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\nwhile True: pass"
            )
            timed = structured(
                await call(client, "run_code", code=stubborn, session_id=sid, timeout=1)
            )
            assert timed["status"] == "timeout"
            after = structured(await call(client, "run_code", code="1 + 1", session_id=sid))
            assert after["result"] == "2"
        finally:
            await call(client, "close_session", session_id=sid)
