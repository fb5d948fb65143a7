"""Tenants: nothing one principal's code does reaches another principal's kernels.

A real server on its default settings (sandboxed, forked kernels) with two tokens,
so two principals, A and B. A's code tries what an outside corpus found working
(issue 18): write where B's kernels read (``/etc``, ``/etc/ld.so.preload``), leave
a key in the kernel keyring, plant bytecode next to B's source, kill or stall the
fork template every kernel comes from, fill the host's disk through its
connection folder, reach the host through vsock. Each attempt fails or stays
A's own, and B's sessions, fresh runs and files behave as if A were not there.

The kernel-level guarantees behind these (every writable mount private or
read-only, the seccomp filter, the template's keeper) are in
``test_sandbox.py``, ``test_seccomp.py`` and ``test_forkserver.py`` beside this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_mcp.launch import forkserver
from kernel_mcp.launch.bwrap import find_bwrap, probe
from kernel_mcp.launch.template import NAMES
from tests.helpers import call, client_for, running_server, structured, text_of
from tests.launchers import ServerProcess, wait_until

pytestmark = [
    pytest.mark.transport,
    pytest.mark.skipif(
        probe(*find_bwrap(None)).bwrap is None or not forkserver.forking_possible(),
        reason="needs the sandbox and forked kernels",
    ),
]

TOKEN_A = "principal-a-" + uuid.uuid4().hex
TOKEN_B = "principal-b-" + uuid.uuid4().hex
TOKENS = f"{TOKEN_A},{TOKEN_B}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(
        tmp_path_factory.mktemp("tenants"), KERNEL_MCP_TOKEN=TOKENS, PYTHON_TIMEOUT="30"
    ) as started:
        yield started


@pytest.fixture(scope="module")
async def a(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_A) as client:
        yield client


@pytest.fixture(scope="module")
async def b(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_B) as client:
        yield client


async def run(client: Any, code: str, session: str | None = None, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"code": code, **extra}
    if session is not None:
        arguments["session_id"] = session
    return structured(await call(client, "run_code", **arguments))


async def session_of(client: Any) -> str:
    return str(structured(await call(client, "create_session"))["session_id"])


def named(root: int, name: str) -> set[int]:
    """The processes below ``root`` whose name (comm) is ``name``."""
    found = set()
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(root).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                if child.name() == name:
                    found.add(child.pid)
    return found


# -- failures 1 and 2: a writable place every kernel shared ---------------------------------
async def test_what_one_principal_writes_under_etc_never_reaches_another(a: Any, b: Any) -> None:
    marker = f"a-was-here-{uuid.uuid4().hex[:8]}"
    a_session = await session_of(a)
    tried = await run(
        a,
        "import errno\n"
        "said = []\n"
        f"for path, text in [('/etc/{marker}', 'x' * 4096),\n"
        "                   ('/etc/ld.so.preload', '/tmp/evil.so\\n')]:\n"
        "    try:\n"
        "        open(path, 'w').write(text)\n"
        "        said.append('written')\n"
        "    except OSError as exc:\n"
        "        said.append(errno.errorcode[exc.errno])\n"
        "print(said)",
        a_session,
    )
    assert tried["stdout"] == "['EROFS', 'EROFS']\n", tried
    await call(a, "close_session", session_id=a_session)
    look = (
        "import os, subprocess\n"
        f"print(os.path.exists('/etc/{marker}'), os.path.exists('/etc/ld.so.preload'))\n"
        "print(repr(subprocess.run(['true'], capture_output=True, text=True).stderr))"
    )
    b_session = await session_of(b)
    try:
        for report in (await run(b, look), await run(b, look, b_session)):
            assert report["stdout"] == "False False\n''\n", report
    finally:
        await call(b, "close_session", session_id=b_session)


# -- failure 3: the fork template every kernel comes from --------------------------------------
async def test_a_traced_child_in_one_principal_s_kernel_leaves_another_s_session_intact(
    a: Any, b: Any
) -> None:
    b_session = await session_of(b)
    try:
        assert (await run(b, "kept = 42", b_session))["status"] == "ok"
        # ptrace(PTRACE_TRACEME), then a child: the template's wait handling raised on
        # the stop, and every kernel it had forked ended with it.
        tried = await run(
            a,
            "import ctypes, subprocess\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "print(libc.ptrace(0, 0, 0, 0), ctypes.get_errno())\n"
            "subprocess.run(['true'])",
        )
        after = await run(b, "kept", b_session)
        assert after["status"] == "ok" and after["result"] == "42", after
        assert not any("New kernel" in note for note in after["notes"]), after
        assert (await run(b, "print('fresh')"))["stdout"] == "fresh\n"
        # The seccomp filter refused the call itself (EPERM).
        assert tried["status"] == "ok" and tried["stdout"] == "-1 1\n", tried
    finally:
        await call(b, "close_session", session_id=b_session)


async def test_killing_the_template_leaves_every_session_s_state_and_fresh_runs_work(
    server: ServerProcess, b: Any
) -> None:
    b_session = await session_of(b)
    try:
        assert (await run(b, "kept = 'still here'", b_session))["status"] == "ok"
        templates = named(server.pid, NAMES["template"])
        assert templates, "a forked kernel's template runs"
        for pid in templates:
            os.kill(pid, signal.SIGKILL)
        assert wait_until(lambda: not (templates & named(server.pid, NAMES["template"])), 10)
        after = await run(b, "kept", b_session)
        assert after["status"] == "ok" and after["result"] == "'still here'", after
        assert not any("New kernel" in note for note in after["notes"]), after
        fresh = await run(b, "print(6 * 7)")
        assert fresh["status"] == "ok" and fresh["stdout"] == "42\n", fresh
        # The kernel the keeper adopted still says how it ended.
        died = await run(b, "import os; os._exit(3)", b_session)
        assert died["status"] == "kernel_died" and any("exit code 3" in n for n in died["notes"])
    finally:
        await call(b, "close_session", session_id=b_session)


# -- failure 4: the kernel keyring ----------------------------------------------------------------
#: add_key(2) and keyctl(KEYCTL_SEARCH) on x86_64 and aarch64 (by name, through libc).
KEYRING = (
    "import ctypes, errno\n"
    "libc = ctypes.CDLL(None, use_errno=True)\n"
    "NR = {'x86_64': (248, 250), 'aarch64': (217, 219)}[__import__('platform').machine()]\n"
    "KEY_SPEC_USER_KEYRING, KEYCTL_SEARCH = -4, 10\n"
)


async def test_a_key_one_principal_adds_is_never_found_by_another(a: Any, b: Any) -> None:
    description = f"kmcp-{uuid.uuid4().hex[:8]}"
    added = await run(
        a,
        KEYRING + "serial = libc.syscall(NR[0], b'user', "
        f"{description.encode()!r}, b'secret', 6, KEY_SPEC_USER_KEYRING)\n"
        "print(serial > 0 or errno.errorcode[ctypes.get_errno()])",
    )
    assert added["stdout"] == "EPERM\n", added
    found = await run(
        b,
        KEYRING + "serial = libc.syscall(NR[1], KEYCTL_SEARCH, KEY_SPEC_USER_KEYRING, b'user', "
        f"{description.encode()!r}, 0)\n"
        "print(serial > 0 or errno.errorcode[ctypes.get_errno()])",
    )
    assert found["stdout"] == "EPERM\n", found


# -- failure 5, in part: bytecode planted next to another principal's source -------------------
async def test_bytecode_planted_in_the_projects_folder_never_runs(tmp_path: Path) -> None:
    # In one projects folder both principals write to (KERNEL_MCP_PROJECTS_SHARED, the
    # operator's opt-in; by default each principal has a folder of its own).
    with running_server(
        tmp_path, KERNEL_MCP_TOKEN=TOKENS, KERNEL_MCP_PROJECTS_SHARED="true"
    ) as server:
        async with (
            client_for("mcp", server, auth=TOKEN_A) as a,
            client_for("mcp", server, auth=TOKEN_B) as b,
        ):
            await plant_and_run(server, a, b)


async def plant_and_run(server: ServerProcess, a: Any, b: Any) -> None:
    folder = f"bproj{uuid.uuid4().hex[:6]}"
    for name, source in [
        ("helper.py", "def greet():\n    return 'the real helper'\n"),
        ("main.py", "import helper\nprint(helper.greet())\n"),
    ]:
        written = await call(b, "write_file", path=f"{folder}/{name}", content=source)
        assert not written.is_error, text_of(written)
    planted = await run(
        a,
        "import importlib.util, marshal, os, sys\n"
        f"source = os.path.join({folder!r}, 'helper.py')\n"
        "st = os.stat(source)\n"
        "evil = compile(\"def greet():\\n    return 'planted by A'\\n\", source, 'exec')\n"
        "data = bytearray(importlib.util.MAGIC_NUMBER) + (0).to_bytes(4, 'little')\n"
        "data += int(st.st_mtime).to_bytes(4, 'little') + (st.st_size & 0xFFFFFFFF).to_bytes(4, "
        "'little')\n"
        "data += marshal.dumps(evil)\n"
        "target = importlib.util.cache_from_source(os.path.abspath(source))\n"
        "target = os.path.join(os.path.dirname(source), '__pycache__', os.path.basename(target))\n"
        "os.makedirs(os.path.dirname(target), exist_ok=True)\n"
        "open(target, 'wb').write(data)\n"
        "print(os.path.relpath(target))",
    )
    assert planted["status"] == "ok", planted
    assert (Path(server.env["PYTHON_PROJECTS_DIR"]) / planted["stdout"].strip()).exists()
    report = structured(await call(b, "run_python", file_name=f"{folder}/main.py"))
    assert report["status"] == "ok" and report["stdout"] == "the real helper\n", report
    # A session too, and a Python the kernel starts.
    b_session = await session_of(b)
    try:
        in_session = structured(
            await call(b, "run_python", file_name=f"{folder}/main.py", session_id=b_session)
        )
        assert in_session["stdout"] == "the real helper\n", in_session
        spawned = await run(
            b,
            "import subprocess, sys\n"
            f"print(subprocess.run([sys.executable, '{folder}/main.py'], capture_output=True, "
            "text=True).stdout, end='')",
            b_session,
        )
        assert spawned["stdout"] == "the real helper\n", spawned
    finally:
        await call(b, "close_session", session_id=b_session)


# -- failure 7: the host's disk through the connection folder ---------------------------------
async def test_a_kernel_cannot_fill_the_host_disk_through_its_connection_folder(
    server: ServerProcess, a: Any
) -> None:
    report = await run(
        a,
        "import errno, os\n"
        "folder = os.path.dirname(get_ipython().kernel.parent.connection_file)\n"
        "written = 0\n"
        "try:\n"
        "    with open(os.path.join(folder, 'filler'), 'wb') as out:\n"
        "        for _ in range(64):\n"
        "            written += out.write(b'x' * 2**20)\n"
        "            out.flush()\n"
        "except OSError as exc:\n"
        "    print(errno.errorcode[exc.errno], written < 2**20)\n"
        "else:\n"
        "    print('wrote', written)\n"
        "print(folder)",
    )
    said, folder = report["stdout"].splitlines()
    assert said == "ENOSPC True", report
    assert not (Path(folder) / "filler").exists(), "nothing landed on the host"


async def test_a_kernel_holds_no_writable_file_on_the_host_s_disk(a: Any) -> None:
    # Its stderr was a file next to the connection folders, and ipykernel keeps a copy
    # of the original fd 2 that code can write to without limit: now a pipe.
    report = await run(
        a,
        "import os, stat\n"
        "writable = []\n"
        "for fd in map(int, os.listdir('/proc/self/fd')):\n"
        "    try:\n"
        "        st = os.fstat(fd)\n"
        "        flags = int(open(f'/proc/self/fdinfo/{fd}').read().split()[3], 8)\n"
        "    except OSError:\n"
        "        continue\n"
        "    if stat.S_ISREG(st.st_mode) and flags & (os.O_WRONLY | os.O_RDWR):\n"
        "        writable.append(os.readlink(f'/proc/self/fd/{fd}'))\n"
        "print(writable)",
    )
    assert report["stdout"] == "[]\n", report


# -- failure 11: vsock ----------------------------------------------------------------------------
async def test_vsock_and_other_socket_families_are_refused(a: Any) -> None:
    report = await run(
        a,
        "import errno, socket\n"
        "for family in (socket.AF_VSOCK, socket.AF_PACKET, 38):  # 38: AF_ALG\n"
        "    try:\n"
        "        socket.socket(family, socket.SOCK_STREAM).close()\n"
        "        print('opened')\n"
        "    except OSError as exc:\n"
        "        print(errno.errorcode[exc.errno])\n"
        "socket.socket(socket.AF_INET6).close(); socket.socketpair()\n",
    )
    assert report["status"] == "ok", report
    assert report["stdout"] == "EAFNOSUPPORT\n" * 3, report


# -- failure 8: a stopped template or namespace maker -----------------------------------------
@pytest.mark.parametrize("stopped", ["template", "maker"])
async def test_a_stopped_template_or_maker_never_stalls_a_fresh_run(
    tmp_path: Path, stopped: str
) -> None:
    if stopped == "maker" and forkserver.userns_per_kernel():
        pytest.skip("only a template run by root has a namespace maker")
    with running_server(tmp_path, KERNEL_MCP_TOKEN=TOKENS) as server:
        async with client_for("mcp", server, auth=TOKEN_A) as a:
            assert (await run(a, "1"))["status"] == "ok"  # the template is up
            (victim,) = named(server.pid, NAMES[stopped])
            old_templates = named(server.pid, NAMES["template"])
            os.kill(victim, signal.SIGSTOP)
            try:
                # More fresh runs than the pool holds, so that starts reach the template.
                for _ in range(4):
                    report = await asyncio.wait_for(run(a, "print('ok')", timeout=20), 45)
                    assert report["status"] == "ok" and report["stdout"] == "ok\n", report

                assert wait_until(lambda: not psutil.pid_exists(victim), timeout=10) or (
                    psutil.Process(victim).status() == psutil.STATUS_ZOMBIE
                ), "the stopped process was ended"

                async def forked_again() -> bool:
                    # Starting sessions (and the pool's refills) asks for kernels: after
                    # the retry pause, a new template forks them.
                    sid = await session_of(a)
                    try:
                        new = named(server.pid, NAMES["template"]) - old_templates
                        return any(named(t, NAMES["kernel"]) for t in new)
                    finally:
                        await call(a, "close_session", session_id=sid)

                for _ in range(60):
                    if await forked_again():
                        break
                    await asyncio.sleep(1)
                else:
                    pytest.fail("no kernel was forked from a replacement template")
            finally:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(victim, signal.SIGCONT)
