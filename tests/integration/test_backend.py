"""Specification of ``kernel_mcp.backends.local``: how local kernels are started and stopped.

Each kernel talks over IPC sockets inside its own 0700 folder below one
private folder per backend, sees the server's environment minus secrets, runs
in the projects folder under an address-space limit, writes nothing to the
server's stdout or stderr (its stderr is a private file, quoted when it fails
to start), and takes every process it started with it when it is shut down.

Kernels are sandboxed here, as by default (``tests/integration/test_sandbox.py`` says what
the sandbox adds); the ``plain`` fixtures start them with the sandbox off,
where the process group is signalled only while the group is certainly the
kernel's own: while the leader is unreaped.
"""

from __future__ import annotations

import ast
import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
from collections.abc import AsyncIterator
from pathlib import Path

import psutil
import pytest

from kernel_mcp.backends.base import kernel_environment
from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.backends.process import LocalProcess
from kernel_mcp.config import Settings, load_settings
from kernel_mcp.errors import KernelStartFailed
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.launch.stderr import scrub_paths
from tests.helpers import wait_for
from tests.launchers import (
    PID_NAMESPACE,
    ROOT,
    alive,
    free_port,
    host_pids,
    kernel_processes,
    wait_until,
)

SERVER_ENV = {
    "FAKE_API_KEY": "s3cr3t",
    "ALLOWED_TOKEN": "shared-on-purpose",
    "HARMLESS_SETTING": "visible",
}


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    projects = tmp_path_factory.mktemp("backend-projects")
    # Spawned kernels: this module is the spawn path's specification (and the subset of
    # the suite that runs spawned); forked ones are tests/integration/test_forkserver.py's.
    return load_settings(
        projects_dir=projects,
        pool_size=0,
        memory_limit_mb=1024,
        env_allow=["ALLOWED_TOKEN"],
        fork_kernels=False,
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
    assert backend.sandboxed, "kernels are sandboxed by default where the machine can"
    started = await backend.start()
    yield started
    await started.shutdown(now=True)


@pytest.fixture(scope="module")
async def plain(settings: Settings) -> AsyncIterator[LocalBackend]:
    """A backend with the sandbox off: kernels are plain child processes."""
    with pytest.MonkeyPatch.context() as patch:
        for name, value in SERVER_ENV.items():
            patch.setenv(name, value)
        local = LocalBackend(settings.model_copy(update={"sandbox": "off"}))
    assert not local.sandboxed
    yield local
    await local.close()


@pytest.fixture(scope="module")
async def plain_kernel(plain: LocalBackend) -> AsyncIterator[Kernel]:
    started = await plain.start()
    yield started
    await started.shutdown(now=True)


def process_of(kernel: Kernel) -> LocalProcess:
    assert isinstance(kernel.process, LocalProcess)
    assert kernel.process.pid is not None
    return kernel.process


def kernel_pid_of(kernel: Kernel) -> int:
    """The kernel process's own host pid (sandboxed, bwrap is the launched process)."""
    pid = process_of(kernel).kernel_pid
    assert pid is not None
    return pid


async def host_view(kernel: Kernel, expression: str) -> list[int]:
    """Pids the kernel computes with ``expression`` (a tuple), as host pids, in order."""
    namespace, *pids = ast.literal_eval(await value(kernel, f"({PID_NAMESPACE}, *{expression})"))
    mapped = []
    for pid in pids:
        found = host_pids(namespace, [pid])
        assert len(found) == 1, (namespace, pid, found)
        mapped.append(found.pop())
    return mapped


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


async def test_a_plain_kernel_knows_its_parent_so_it_can_exit_with_the_server(
    plain_kernel: Kernel,
) -> None:
    parent = await value(plain_kernel, "import os; os.environ['JPY_PARENT_PID']")
    assert parent == repr(str(os.getpid()))


async def test_a_sandboxed_kernel_is_not_told_a_parent_pid_it_cannot_see(kernel: Kernel) -> None:
    # That pid does not exist in its PID namespace: ipykernel would exit at once.
    # bwrap's --die-with-parent does the job instead (tests/integration/test_sandbox.py).
    assert await value(kernel, "import os; 'JPY_PARENT_PID' in os.environ") == "False"


# -- where and how it runs --------------------------------------------------------
async def test_a_kernel_runs_in_the_projects_folder(kernel: Kernel, settings: Settings) -> None:
    assert await value(kernel, "import os; os.getcwd()") == repr(str(settings.projects_dir))
    pid = kernel_pid_of(kernel)
    assert os.readlink(f"/proc/{pid}/cwd") == str(settings.projects_dir)


@pytest.mark.parametrize("sandboxed", [True, False], ids=["sandboxed", "plain"])
async def test_the_memory_limit_turns_a_huge_allocation_into_memory_error(
    kernel: Kernel, plain_kernel: Kernel, sandboxed: bool
) -> None:
    # Sandboxed, RLIMIT_AS is set inside by the launcher (the cgroup limits the tree);
    # plain, it is set on the kernel's pid right after launch.
    kernel = kernel if sandboxed else plain_kernel
    assert address_space_limit(kernel_pid_of(kernel)) == ["1073741824", "1073741824"]

    result = await run(kernel, "blob = bytearray(3 * 1024**3)")
    assert result.status == "error"
    assert result.error is not None
    assert result.error["ename"] == "MemoryError"
    assert not kernel.dead
    assert await value(kernel, "len(bytearray(10 * 1024**2))") == str(10 * 1024**2)


async def test_kernel_stdout_at_fd_level_goes_to_dev_null(kernel: Kernel) -> None:
    pid = kernel_pid_of(kernel)
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
        pids = {process_of(k).pid for k in kernels} | {kernel_pid_of(k) for k in kernels}
        assert len(pids) == 8

        files = [Path(process_of(k).manager.connection_file) for k in kernels]
        assert len(set(files)) == 4
        folder = files[0].parent.parent
        for file in files:
            # Each kernel has a folder of its own below the backend's private one.
            assert file.parent.parent == folder and file.is_file()
            assert stat.S_IMODE(file.parent.stat().st_mode) & 0o777 == 0o700
        assert stat.S_IMODE(folder.stat().st_mode) & 0o777 == 0o700  # jupyter adds sticky
        for kernel in kernels:
            manager = process_of(kernel).manager
            assert manager.transport == "ipc"
            assert Path(manager.ip).parent == Path(manager.connection_file).parent
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
            kernel, "import os, subprocess\nchild = subprocess.Popen(['sleep', '300'])"
        )
        assert result.status == "ok", result
        kernel_pid, child_pid = await host_view(kernel, "(os.getpid(), child.pid)")
        assert kernel_pid == kernel_pid_of(kernel)
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


# -- plain kernels: the process group is signalled only while it is the kernel's ----------
SPAWN_SLEEPER = (
    "import os, subprocess\n"
    "child = subprocess.Popen(['sleep', '300'])\n"
    "(os.getpid(), os.getpgid(0), child.pid)"
)


def zombie(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def start_with_a_sleeper(backend: LocalBackend) -> tuple[Kernel, int]:
    """A kernel that left a ``sleep 300`` in its process group; returns the sleeper's pid."""
    kernel = await backend.start()
    result = await run(kernel, SPAWN_SLEEPER)
    assert result.status == "ok", result
    leader, group, child = ast.literal_eval(result.outputs[-1]["data"]["text/plain"])
    assert leader == group == process_of(kernel).pid, "the kernel leads its own group"
    assert alive({child}) == {child}
    return kernel, child


async def test_a_dead_kernel_stays_unreaped_and_kill_still_ends_what_it_left(
    plain: LocalBackend,
) -> None:
    kernel, child = await start_with_a_sleeper(plain)
    process = process_of(kernel)
    try:
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]

        async def dead() -> bool:
            return not await process.is_alive()

        assert await wait_for(dead, timeout=10)
        # Noticing the death did not reap the leader: its pid, and so its group id,
        # cannot have been given to anyone else.
        assert zombie(process.pid), "the liveness check reaped the leader"  # type: ignore[arg-type]
        assert process.exit_description() == "killed by SIGKILL"
        assert alive({child}) == {child}

        await kernel.kill()

        assert wait_until(lambda: not alive({child}), timeout=10), "kill left the sleeper"
        assert wait_until(lambda: not psutil.pid_exists(process.pid), timeout=10), "not reaped"  # type: ignore[arg-type]
        assert process.exit_description() == "killed by SIGKILL"
    finally:
        await kernel.shutdown(now=True)
        if alive({child}):
            os.kill(child, signal.SIGKILL)


async def test_once_the_leader_is_reaped_its_group_is_never_signalled(
    plain: LocalBackend,
) -> None:
    kernel, child = await start_with_a_sleeper(plain)
    process = process_of(kernel)
    try:
        os.kill(process.pid, signal.SIGKILL)  # type: ignore[arg-type]
        # Reaped by someone (jupyter_client polls with Popen.poll): from now on its
        # group id could belong to an unrelated group; the sleeper stands in for one.
        process.manager.provisioner.process.wait(timeout=10)

        process._kill_group()
        await kernel.kill()
        await kernel.shutdown()
        await process.interrupt()

        assert alive({child}) == {child}, "a group was signalled after its leader was reaped"
        assert process.exit_description() == "killed by SIGKILL"
        assert not await process.is_alive()
    finally:
        await kernel.shutdown(now=True)
        if alive({child}):
            os.kill(child, signal.SIGKILL)


# -- kernel noise: a private stderr -------------------------------------------------
STDERR_NOISE = (
    "import os, subprocess\n"
    "os.write(2, b'FD2-NOISE-FROM-THE-KERNEL\\n')\n"
    "subprocess.run('echo SUBPROCESS-NOISE-FROM-THE-KERNEL >&2', shell=True)\n"
)


@pytest.mark.parametrize("prepared", [False, True], ids=["started", "prepared"])
async def test_a_kernel_s_stderr_never_reaches_the_server_s_stderr(
    settings: Settings, capfd: pytest.CaptureFixture[str], prepared: bool
) -> None:
    with pytest.MonkeyPatch.context() as patch:
        # ipykernel forwards fd-level output only outside pytest.
        patch.delenv("PYTEST_CURRENT_TEST", raising=False)
        local = LocalBackend(settings)
    kernel = await local.start()  # started here, it inherits the captured fd 2
    process = process_of(kernel)
    private = process.stderr
    assert private is not None
    # A pipe this server drains into a short tail, not a file: nothing of it is on the
    # host's disk (a kernel can write to its original fd 2 without limit).
    assert stat.S_ISFIFO(os.fstat(private.read_fd).st_mode)
    shown: list[str] = []
    try:
        if prepared:
            await kernel.prepare([])
        shown.append(text_of(await run(kernel, STDERR_NOISE)))

        async def in_the_notebook() -> bool:
            # ipykernel forwards fd-level writes from a thread: they may land in the next run.
            if "SUBPROCESS-NOISE-FROM-THE-KERNEL" not in "".join(shown):
                shown.append(text_of(await run(kernel, "pass")))
            return "SUBPROCESS-NOISE-FROM-THE-KERNEL" in "".join(shown)

        assert await wait_for(in_the_notebook, timeout=20), shown

        def echoed() -> bool:
            return "SUBPROCESS-NOISE-FROM-THE-KERNEL" in private.tail()

        if prepared:
            assert not echoed(), "past start-up ipykernel's echo is muted"
        else:
            assert wait_until(echoed, timeout=10), "the echo went to the private stderr"
    finally:
        await kernel.shutdown(now=True)
        await local.close()

    assert "FD2-NOISE-FROM-THE-KERNEL" in "".join(shown)
    server_stderr = capfd.readouterr().err
    assert "NOISE-FROM-THE-KERNEL" not in server_stderr
    assert private.closed, "the private stderr is closed with the kernel"


def text_of(result: Execution) -> str:
    return "".join(str(o.get("text", "")) for o in result.outputs)


async def test_cancelling_a_start_prints_no_traceback(
    backend: LocalBackend, capfd: pytest.CaptureFixture[str]
) -> None:
    before = {p.pid for p in kernel_processes()}
    starting = asyncio.create_task(backend.start())

    async def launched() -> bool:
        return bool({p.pid for p in kernel_processes()} - before)

    try:
        assert await wait_for(launched, timeout=30, interval=0.01)
    finally:
        starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    new = {p.pid for p in kernel_processes()} - before
    assert wait_until(lambda: not alive(new), timeout=10)

    err = capfd.readouterr().err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def failing_kernelspec(base: Path, script: str) -> Path:
    """A JUPYTER_PATH with kernelspec 'failing' whose kernel runs ``script`` and exits."""
    spec = base / "kernels" / "failing"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-c", script, "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "failing", "language": "python"})
    )
    return base


async def test_a_kernel_that_fails_to_start_is_quoted_from_its_stderr_without_paths(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capfd: pytest.CaptureFixture[str]
) -> None:
    script = (
        "import sys\n"
        "sys.stderr.write('early noise\\n' * 50)\n"
        "sys.stderr.write('Traceback (most recent call last):\\n')\n"
        "sys.stderr.write('  File \"/very/secret/server/path/launcher.py\", line 7\\n')\n"
        "sys.stderr.write('ImportError: no module named ipykernel_for_this_test\\n')\n"
        "sys.exit(3)\n"
    )
    monkeypatch.setenv("JUPYTER_PATH", str(failing_kernelspec(tmp_path / "jupyter", script)))
    settings = load_settings(projects_dir=tmp_path, pool_size=0, kernel_name="failing")
    local = LocalBackend(settings)
    try:
        with pytest.raises(KernelStartFailed) as caught:
            await local.start()
        folder = local._dir
        assert [p.name for p in folder.iterdir() if p.suffix == ".stderr"] == []
    finally:
        await local.close()

    message = str(caught.value)
    assert "ImportError: no module named ipykernel_for_this_test" in message
    assert "…/launcher.py" in message
    assert "/very/secret" not in message
    assert str(tmp_path) not in message
    assert message.count("early noise") < 50, "only the tail is quoted"
    assert "ipykernel_for_this_test" not in capfd.readouterr().err


def test_scrub_paths_keeps_only_the_last_component() -> None:
    text = 'File "/srv/app/.venv/lib/x.py", line 3; see /tmp/kernel-mcp-ab/c.json and ./rel/p'
    assert scrub_paths(text) == 'File "…/x.py", line 3; see …/c.json and ./rel/p'


# -- kernel noise: the whole server ------------------------------------------------------
def serve_and_stop(tmp_path: Path, *args: str, stop: str) -> tuple[int | None, str]:
    """Run ``kernel-mcp serve`` until its pool kernels are starting, then stop it."""
    env = {k: v for k, v in os.environ.items() if not k.startswith(("KERNEL_MCP_", "PYTHON_"))}
    env.update(
        PYTHON_PROJECTS_DIR=str(tmp_path),
        KERNEL_MCP_NOTEBOOKS_DIR=str(tmp_path / "notebooks"),
        KERNEL_MCP_POOL_SIZE="2",
    )
    proc = subprocess.Popen(
        [sys.executable, "-m", "kernel_mcp", "serve", *args],
        env=env,
        cwd=ROOT,
        stdin=subprocess.PIPE,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        # A test runner in the background may ignore SIGINT; the server must not.
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    lines: list[str] = []
    starting = threading.Event()

    def read() -> None:
        assert proc.stderr is not None
        for raw in proc.stderr:
            lines.append(raw.decode(errors="replace"))
            if b"startup complete" in raw or b"StreamableHTTP session manager started" in raw:
                starting.set()

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        if stop == "stdin":
            assert proc.stdin is not None
            proc.stdin.close()
        elif stop != "exit":
            assert starting.wait(60), "".join(lines)
            proc.send_signal(getattr(signal, stop))
        proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reader.join(timeout=10)
    return proc.returncode, "".join(lines)


@pytest.mark.parametrize("stop", ["SIGINT", "SIGTERM"])
def test_stopping_the_server_while_pool_kernels_start_prints_no_traceback(
    tmp_path: Path, stop: str
) -> None:
    _, err = serve_and_stop(tmp_path, "--port", str(free_port()), stop=stop)
    assert "Application startup complete" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_busy_port_prints_no_kernel_traceback(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        code, err = serve_and_stop(tmp_path, "--port", str(taken.getsockname()[1]), stop="exit")
    assert code not in (None, 0), err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_stdio_client_leaving_at_once_leaves_no_traceback(tmp_path: Path) -> None:
    _, err = serve_and_stop(tmp_path, "--stdio", stop="stdin")
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err
