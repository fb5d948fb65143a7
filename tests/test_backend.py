"""Specification of ``kernel_mcp.backend``: how local kernels are started and stopped.

Each kernel talks over IPC sockets inside one private 0700 folder per backend,
sees the server's environment minus secrets, runs in the projects folder under
an address-space limit, writes nothing to the server's stdout, and takes every
process it started with it when it is shut down.
"""

from __future__ import annotations

import ast
import asyncio
import os
import stat
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernel_mcp.backend import LocalBackend, LocalProcess, kernel_environment
from kernel_mcp.config import Settings, load_settings
from kernel_mcp.kernel import Execution, Kernel
from tests.launchers import alive, wait_until

SERVER_ENV = {
    "FAKE_API_KEY": "s3cr3t",
    "ALLOWED_TOKEN": "shared-on-purpose",
    "HARMLESS_SETTING": "visible",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    projects = tmp_path_factory.mktemp("backend-projects")
    return load_settings(
        projects_dir=projects, pool_size=0, memory_limit_mb=1024, env_allow=["ALLOWED_TOKEN"]
    )


@pytest.fixture(scope="module")
async def backend(settings: Settings) -> AsyncIterator[LocalBackend]:
    # The backend takes its snapshot of the server's environment when it is made.
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SERVER_ENV.items():
            patch.setenv(name, value)
        local = LocalBackend(settings)
    yield local
    await local.close()


@pytest.fixture(scope="module")
async def kernel(backend: LocalBackend) -> AsyncIterator[Kernel]:
    started = await backend.start()
    yield started
    await started.shutdown(now=True)


def process_of(kernel: Kernel) -> LocalProcess:
    assert isinstance(kernel.process, LocalProcess)
    assert kernel.process.pid is not None
    return kernel.process


def address_space_limit(pid: int | None) -> list[str]:
    """The soft and hard RLIMIT_AS of a process, as /proc shows them."""
    limits = Path(f"/proc/{pid}/limits").read_text()
    line = next(line for line in limits.splitlines() if line.startswith("Max address space"))
    return line.split()[3:5]


async def run(kernel: Kernel, code: str) -> Execution:
    return await kernel.execute(code, timeout=20, grace=2)


async def value(kernel: Kernel, expression: str) -> str:
    result = await run(kernel, expression)
    assert result.status == "ok", result
    return str(result.outputs[-1]["data"]["text/plain"])


# -- the environment ------------------------------------------------------------
def test_kernel_environment_drops_variables_that_look_secret() -> None:
    environ = {
        "PATH": "/usr/bin",
        "HOME": "/home/someone",
        "LANG": "C.UTF-8",
        "FAKE_API_KEY": "x",
        "GITHUB_TOKEN": "x",
        "DB_PASSWORD": "x",
        "MY_SECRET_THING": "x",
        "KERNEL_MCP_TOKEN": "x",
        "KERNEL_MCP_POOL_SIZE": "2",
        "AWS_SECRET_ACCESS_KEY": "x",
        "openai_apikey": "x",
    }
    assert kernel_environment(environ) == {
        "PATH": "/usr/bin",
        "HOME": "/home/someone",
        "LANG": "C.UTF-8",
    }


def test_kernel_environment_keeps_what_allow_names_in_any_case() -> None:
    environ = {"PATH": "/usr/bin", "GITHUB_TOKEN": "g", "DB_PASSWORD": "p", "MY_SECRET_THING": "s"}
    kept = kernel_environment(environ, allow=["github_token", "MY_SECRET_THING"])
    assert kept == {"PATH": "/usr/bin", "GITHUB_TOKEN": "g", "MY_SECRET_THING": "s"}


def test_kernel_environment_takes_custom_patterns() -> None:
    environ = {"PATH": "/usr/bin", "INTERNAL_URL": "u", "GITHUB_TOKEN": "g"}
    assert kernel_environment(environ, patterns=["internal_*"]) == {
        "PATH": "/usr/bin",
        "GITHUB_TOKEN": "g",
    }


async def test_a_kernel_sees_the_scrubbed_environment(kernel: Kernel) -> None:
    seen = await value(
        kernel,
        "import os\n"
        "sorted(k for k in ('FAKE_API_KEY', 'ALLOWED_TOKEN', 'HARMLESS_SETTING') "
        "if k in os.environ)",
    )
    assert seen == "['ALLOWED_TOKEN', 'HARMLESS_SETTING']"


async def test_a_kernel_knows_its_parent_so_it_can_exit_with_the_server(kernel: Kernel) -> None:
    assert await value(kernel, "import os; os.environ['JPY_PARENT_PID']") == repr(str(os.getpid()))


# -- where and how it runs --------------------------------------------------------
async def test_a_kernel_runs_in_the_projects_folder(kernel: Kernel, settings: Settings) -> None:
    assert await value(kernel, "import os; os.getcwd()") == repr(str(settings.projects_dir))
    pid = process_of(kernel).pid
    assert os.readlink(f"/proc/{pid}/cwd") == str(settings.projects_dir)


async def test_the_memory_limit_turns_a_huge_allocation_into_memory_error(kernel: Kernel) -> None:
    assert address_space_limit(process_of(kernel).pid) == ["1073741824", "1073741824"]

    result = await run(kernel, "blob = bytearray(3 * 1024**3)")
    assert result.status == "error"
    assert result.error is not None
    assert result.error["ename"] == "MemoryError"
    assert not kernel.dead
    assert await value(kernel, "len(bytearray(10 * 1024**2))") == str(10 * 1024**2)


async def test_kernel_stdout_at_fd_level_goes_to_dev_null(kernel: Kernel) -> None:
    pid = process_of(kernel).pid
    assert os.readlink(f"/proc/{pid}/fd/1") == "/dev/null"
    result = await run(kernel, "import os\nos.write(1, b'stray bytes')")
    assert result.status == "ok"
    assert "stray bytes" not in str(result.outputs)


async def test_kernel_info_is_recorded_at_start(kernel: Kernel) -> None:
    assert kernel.kernel_info.get("status") == "ok"
    assert kernel.language_info.get("name") == "python"


# -- many kernels at once -------------------------------------------------------
async def test_kernels_started_concurrently_each_get_their_own_sockets(settings: Settings) -> None:
    local = LocalBackend(settings)
    kernels: list[Kernel] = []
    try:
        started = await asyncio.gather(*(local.start() for _ in range(4)), return_exceptions=True)
        kernels = [k for k in started if isinstance(k, Kernel)]
        assert len(kernels) == 4, started

        for index, kernel in enumerate(kernels):
            result = await run(kernel, f"import os\nmine = {index}\nos.getpid()")
            assert result.status == "ok", result
        # Each kernel kept its own state: no two share a socket.
        assert [await value(k, "mine") for k in kernels] == ["0", "1", "2", "3"]
        pids = {process_of(k).pid for k in kernels}
        assert len(pids) == 4

        files = [Path(process_of(k).manager.connection_file) for k in kernels]
        assert len(set(files)) == 4
        folder = files[0].parent
        assert all(f.parent == folder and f.is_file() for f in files)
        assert stat.S_IMODE(folder.stat().st_mode) & 0o777 == 0o700  # jupyter adds sticky
        for kernel in kernels:
            manager = process_of(kernel).manager
            assert manager.transport == "ipc"
            assert Path(manager.ip).parent == folder
    finally:
        await asyncio.gather(*(k.shutdown(now=True) for k in kernels))
        await local.close()
    assert not folder.exists(), "close() removes the private folder"
    assert wait_until(lambda: not alive(pids), timeout=10)


# -- stopping -------------------------------------------------------------------
async def test_shutdown_ends_the_processes_a_kernel_started(backend: LocalBackend) -> None:
    kernel = await backend.start()
    try:
        result = await run(
            kernel,
            "import os, subprocess\n"
            "child = subprocess.Popen(['sleep', '300'])\n"
            "(os.getpid(), child.pid)",
        )
        assert result.status == "ok", result
        kernel_pid, child_pid = ast.literal_eval(result.outputs[-1]["data"]["text/plain"])
        assert kernel_pid == process_of(kernel).pid
        assert alive({kernel_pid, child_pid}) == {kernel_pid, child_pid}
    finally:
        await kernel.shutdown()

    assert kernel.dead
    assert wait_until(lambda: not alive({kernel_pid, child_pid}), timeout=10)


async def test_kill_is_immediate(backend: LocalBackend) -> None:
    kernel = await backend.start()
    process = process_of(kernel)
    try:
        await kernel.kill()
    finally:
        await kernel.shutdown(now=True)

    assert kernel.dead
    assert not await process.is_alive()
    assert not alive({process.pid})  # type: ignore[arg-type]


async def test_a_killed_kernel_reports_the_signal(backend: LocalBackend) -> None:
    kernel = await backend.start()
    process = process_of(kernel)
    try:
        await kernel.kill()
    finally:
        await kernel.shutdown(now=True)
    assert process.exit_description() == "killed by SIGKILL"
