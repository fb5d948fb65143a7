"""What works where (docs/platforms.md): every module imports without the Linux-only
ones, and the portable path, the one macOS takes, serves runs and sessions.

The portable path is run here on Linux by ``tests/portable_host.py``, which makes
this machine look like a Mac to kernel_mcp before importing it (``sys.platform``,
no ``waitid``/pidfds, no ``/proc``, no ``resource``/``fcntl``/``pwd``, no bundled
bubblewrap), then runs the real CLI.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import psutil
import pytest
from fastmcp import Client

from tests.helpers import TEST_SETTINGS, call, make_projects, structured
from tests.launchers import ROOT, ServerProcess, is_kernel, server_env

PORTABLE_HOST = Path(__file__).resolve().parents[1] / "portable_host.py"

IMPORT_EVERY_MODULE = """
import builtins, importlib, pkgutil, sys
import tests.portable_host as host
builtins.__import__ = host.masked_import
import kernel_mcp
skipped = {"kernel_mcp.__main__", "kernel_mcp.launch.template"}
names = [m.name for m in pkgutil.walk_packages(kernel_mcp.__path__, "kernel_mcp.")]
for name in names:
    if name not in skipped:
        importlib.import_module(name)
print(len(names), "kernel_mcp.launch.template" in sys.modules)
"""


def test_every_module_imports_without_linux_only_modules() -> None:
    """resource, fcntl, pwd, grp, termios (and the Linux-only bubblewrap wheel) are
    imported inside the functions that use them, never when a module loads. The fork
    template, a Linux-only script run by the kernel's interpreter, is read, never
    imported."""
    done = subprocess.run(
        [sys.executable, "-c", IMPORT_EVERY_MODULE],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    count, template_imported = done.stdout.split()
    assert int(count) > 40
    assert template_imported == "False"


def test_the_mask_is_real() -> None:
    """The same mask does stop a kernel_mcp module that imports resource when it loads."""
    probe = (
        "import builtins, tests.portable_host as host\n"
        "builtins.__import__ = host.masked_import\n"
        "import kernel_mcp.launch.template\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert done.returncode != 0
    assert "No module named 'resource' (portable host)" in done.stderr


@pytest.mark.transport
async def test_the_portable_path_serves_a_fresh_run_and_a_session(tmp_path: Path) -> None:
    projects = make_projects(tmp_path)
    log = tmp_path / "server.log"
    env = server_env(projects, tmp_path / "notebooks", **TEST_SETTINGS)
    server = ServerProcess(
        env, log=log, command=(sys.executable, str(PORTABLE_HOST), "serve")
    ).start()
    try:
        async with Client(f"{server.base}/mcp", timeout=120) as client:
            fresh = structured(
                await call(
                    client,
                    "run_code",
                    code="from ipykernel.kernelapp import IPKernelApp\n"
                    "app = IPKernelApp.instance()\n"
                    "print(app.transport, app.ip)",
                )
            )
            assert fresh["status"] == "ok", fresh
            assert fresh["stdout"] == "tcp 127.0.0.1\n"

            hello = structured(await call(client, "run_python", file_name="hello_world.py"))
            assert hello["stdout"] == "Hello, World!\n"

            session = structured(await call(client, "create_session", name="portable"))
            assert session["sandboxed"] is False
            sid = session["session_id"]
            await call(client, "run_code", code="x = 41", session_id=sid)
            kept = structured(await call(client, "run_code", code="x + 1", session_id=sid))
            assert kept["result"] == "42"
            listed = structured(await call(client, "list_sessions"))["sessions"]
            assert listed[0]["kernel_memory_mb"] > 0  # psutil, not /proc

            kernels = [
                p for p in psutil.Process(server.pid).children(recursive=True) if is_kernel(p)
            ]
            assert kernels, "the session's kernel runs below the server"
            for kernel in kernels:  # spawned with jupyter_client, never forked, never in bwrap
                assert "ipykernel_launcher" in " ".join(kernel.cmdline())
                assert kernel.parent().pid == server.pid
            info = structured(await call(client, "server_info"))
            assert info["platform"] == "darwin"
            assert info["sandbox"]["on"] is False
            assert info["limits"]["memory_limit_mb"] is None

            await call(client, "close_session", session_id=sid)
    finally:
        server.stop()
    text = log.read_text()
    assert text.count("kernels are NOT sandboxed") == 1, text
    assert "sandbox:   off (kernels can be sandboxed on Linux only (this is darwin))" in text
    assert "portable-host:" not in text, text  # no /proc read by kernel_mcp
    assert "Traceback" not in text, text
