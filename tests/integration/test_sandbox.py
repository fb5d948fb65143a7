"""Specification of ``kernel_mcp.launch.sandbox`` and ``kernel_mcp.launch.cgroups``.

The policy as bwrap arguments (ordered mounts, what is shared and what is
not), the start-up choice (auto / on / off, and what each says when the
machine cannot sandbox), and real sandboxed kernels from ``LocalBackend``:
each setting of the policy changes what a kernel can do, interrupts reach the
processes a kernel started, ending a kernel ends everything in its PID
namespace, and the per-kernel cgroup limits the kernel's whole tree.

The escape suite over a real server is ``tests/integration/test_escape.py``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.backends.process import LocalProcess
from kernel_mcp.cli import main as cli_main
from kernel_mcp.config import Settings, load_settings
from kernel_mcp.errors import ConfigError
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.launch import forkserver
from kernel_mcp.launch import sandbox as sandbox_module
from kernel_mcp.launch.bwrap import Mount, find_bwrap, ordered, probe
from kernel_mcp.launch.forked import ForkedProcess
from kernel_mcp.launch.sandbox import Sandbox, SandboxPolicy
from tests.helpers import wait_for
from tests.kernels import daemon_code, daemons
from tests.kernels import literal as value
from tests.kernels import run_patiently as run
from tests.launchers import alive, host_pids, wait_until

pytestmark = pytest.mark.skipif(
    probe(*find_bwrap(None)).bwrap is None,
    reason="this machine cannot sandbox (the escape suite says so too)",
)


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("sandbox-projects")


def settings_for(projects: Path, how: str = "forked", **extra: Any) -> Settings:
    return load_settings(
        projects_dir=projects,
        pool_size=0,
        memory_limit_mb=1024,
        fork_kernels=how.startswith("forked"),
        **extra,
    )


@pytest.fixture(scope="module", params=["forked", "forked-userns", "spawned"])
def how(request: pytest.FixtureRequest) -> Iterator[str]:
    """Every guarantee holds for kernels forked from the template and for spawned ones.

    "forked-userns": forked the way an unprivileged server forks them, each with a
    user namespace of its own (run as root, the suite forces it; unprivileged,
    "forked" is that way already).
    """
    how = str(request.param)
    if how != "forked-userns":
        yield how
        return
    if forkserver.userns_per_kernel():
        pytest.skip('unprivileged, "forked" kernels get a user namespace each already')
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(forkserver, "userns_per_kernel", lambda: True)
        yield how


@pytest.fixture(scope="module")
async def backend(projects: Path, how: str) -> AsyncIterator[LocalBackend]:
    local = LocalBackend(settings_for(projects, how))
    assert local.sandboxed
    yield local
    await local.close()


@pytest.fixture
async def kernel(backend: LocalBackend) -> AsyncIterator[Kernel]:
    started = await backend.start()
    yield started
    await started.shutdown(now=True)


async def error_of(kernel: Kernel, code: str) -> str:
    result = await run(kernel, code)
    assert result.status == "error", result
    assert result.error is not None
    return f"{result.error['ename']}: {result.error['evalue']}"


def process_of(kernel: Kernel) -> Any:
    """The kernel's process (LocalProcess or ForkedProcess: the same attributes here)."""
    process = kernel.process
    assert isinstance(process, (LocalProcess, ForkedProcess)), process
    return process


def mount_skeleton(kernel: Kernel, projects: Path) -> set[str]:
    """Names directly below /tmp that exist inside only to hold the shared mounts (the
    connection and projects folders, and an interpreter installed below /tmp)."""
    shared = [Path(process_of(kernel).connection_file), projects]
    shared += [Path(p).resolve() for p in (sys.prefix, sys.base_prefix)]
    return {p.parts[2] for p in shared if p.parts[1] == "tmp" and len(p.parts) > 2}


# -- the policy as arguments ---------------------------------------------------------------
def bwrap_args(tmp_path: Path, **policy: Any) -> list[str]:
    projects = tmp_path / "projects"
    projects.mkdir(exist_ok=True)
    sandbox = Sandbox(
        probe(*find_bwrap(None)).bwrap,  # type: ignore[arg-type]
        SandboxPolicy(projects=projects, **policy),
        tmp_path / "etc",
    )
    return sandbox.command(["python3", "-c", "pass"], kernel_dir=tmp_path / "kernels" / "k1")


def bound(args: list[str]) -> dict[str, str]:
    """Destination -> kind of every mount in a bwrap command line."""
    found = {}
    for index, arg in enumerate(args):
        if arg in ("--ro-bind", "--bind"):
            found[args[index + 2]] = arg
        elif arg in ("--tmpfs", "--symlink"):
            found[args[index + 1 + (arg == "--symlink")]] = arg
        elif arg == "--":
            break
    return found


def test_mounts_go_parents_first_so_the_private_tmp_comes_before_binds_below_it() -> None:
    mounts = ordered(
        [
            Mount("/tmp/kernel-mcp-x/k1", "rw", source="/tmp/kernel-mcp-x/k1"),
            Mount("/root/.venv", "ro", source="/root/.venv"),
            Mount("/tmp", "tmpfs"),
            Mount("/root", "tmpfs"),
            Mount("/tmp", "ro", source="/tmp"),  # a second mount at one path: the first wins
        ]
    )
    assert [(m.dest, m.kind) for m in mounts] == [
        ("/tmp", "tmpfs"),
        ("/root", "tmpfs"),
        ("/root/.venv", "ro"),
        ("/tmp/kernel-mcp-x/k1", "rw"),
    ]


def test_the_policy_shares_only_what_the_kernel_needs(tmp_path: Path) -> None:
    args = bwrap_args(tmp_path)
    mounts = bound(args)
    assert mounts[str(tmp_path / "projects")] == "--bind"
    # Its own connection folder only, and not the host's: a tmpfs with its connection
    # file read-only (the server reaches the sockets through /proc/<pid>/root).
    assert mounts[str(tmp_path / "kernels" / "k1")] == "--tmpfs"
    assert mounts[str(tmp_path / "kernels" / "k1" / "kernel.json")] == "--ro-bind"
    assert str(tmp_path / "kernels") not in mounts
    assert mounts["/tmp"] == "--tmpfs"
    assert mounts[SandboxPolicy(projects=tmp_path).home] == "--tmpfs"
    assert mounts["/usr"] == "--ro-bind"
    for prefix in {sys.prefix, sys.base_prefix}:
        assert mounts[str(Path(prefix).resolve())] == "--ro-bind"
    assert "/" not in mounts and "/etc" not in mounts and "/home" not in mounts
    assert "/etc/shadow" not in mounts and "/etc/resolv.conf" not in mounts
    # Every bind is read-only except the projects folder; the root and /dev are
    # remounted read-only once every mount point exists.
    writable = {dest for dest, kind in mounts.items() if kind == "--bind"}
    assert writable == {str(tmp_path / "projects")}
    end = args.index("--")
    assert args[end - 6 : end - 2] == ["--remount-ro", "/dev", "--remount-ro", "/"]
    for flag in ("--unshare-all", "--die-with-parent", "--new-session", "--disable-userns"):
        assert flag in args
    assert args[args.index("--cap-drop") + 1] == "ALL"
    assert "--share-net" not in args
    # The limits are set inside, by the launcher, from the policy.
    launcher = args.index("-c")
    assert args[launcher + 1] == sandbox_module.LAUNCHER
    assert args[launcher + 2 : launcher + 4] == ["0", "512"]


def test_settings_open_the_network_make_projects_read_only_and_add_read_paths(
    tmp_path: Path,
) -> None:
    data = tmp_path / "data"
    data.mkdir()
    args = bwrap_args(tmp_path, network=True, projects_writable=False, read_paths=(data,))
    mounts = bound(args)
    assert "--share-net" in args
    assert mounts[str(tmp_path / "projects")] == "--ro-bind"
    assert mounts[str(data)] == "--ro-bind"
    assert "/etc/resolv.conf" in mounts or not os.path.exists("/etc/resolv.conf")


def test_a_notebooks_folder_inside_a_shared_folder_is_masked(tmp_path: Path) -> None:
    projects = tmp_path / "projects"
    (projects / "notebooks").mkdir(parents=True)
    args = bwrap_args(tmp_path, hidden=(projects / "notebooks",))
    assert bound(args)[str(projects / "notebooks")] == "--tmpfs"


def test_the_probe_says_why_there_is_no_sandbox() -> None:
    assert "no bubblewrap" in probe(None).reason
    failing = probe("/bin/false")
    assert failing.bwrap is None
    assert "cannot make a sandbox" in failing.reason or "does not run" in failing.reason


# -- choosing at start-up -------------------------------------------------------------------
def test_on_refuses_to_start_where_the_sandbox_cannot_work(projects: Path) -> None:
    with pytest.raises(ConfigError, match="KERNEL_MCP_SANDBOX=on"):
        LocalBackend(settings_for(projects, sandbox="on", sandbox_bwrap="/bin/false"))


def test_on_refusing_is_exit_code_2_with_one_line(
    projects: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: Any
) -> None:
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KERNEL_MCP_SANDBOX", "on")
    monkeypatch.setenv("KERNEL_MCP_SANDBOX_BWRAP", "/bin/false")
    code = cli_main(["serve", "--projects-dir", str(projects), "--port", "0"])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "KERNEL_MCP_SANDBOX=on" in err and "Traceback" not in err


async def test_auto_starts_unsandboxed_with_one_warning_naming_the_setting(
    projects: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level("WARNING"):
        local = LocalBackend(settings_for(projects, sandbox_bwrap="/bin/false"))
    try:
        assert not local.sandboxed
        warnings = [r.getMessage() for r in caplog.records if r.levelname == "WARNING"]
        assert len(warnings) == 1 and "KERNEL_MCP_SANDBOX" in warnings[0], warnings
        assert local.describe().startswith("off")
        kernel = await local.start()  # and kernels still start, unsandboxed
        try:
            assert not process_of(kernel).sandboxed
            assert await value(kernel, "import os; os.getpid()") == process_of(kernel).pid
        finally:
            await kernel.shutdown(now=True)
    finally:
        await local.close()


def test_the_banner_phrase(projects: Path) -> None:
    assert sandbox_module.describe(settings_for(projects)).startswith("on (")
    assert sandbox_module.describe(settings_for(projects, sandbox="off")) == (
        "off (KERNEL_MCP_SANDBOX=off)"
    )
    assert sandbox_module.describe(settings_for(projects, sandbox_bwrap="/bin/false")).startswith(
        "off (bubblewrap cannot"
    )


@pytest.mark.parametrize(
    ("variable", "bad", "says"),
    [
        ("KERNEL_MCP_SANDBOX", "maybe", "KERNEL_MCP_SANDBOX"),
        ("KERNEL_MCP_SANDBOX_PROJECTS", "rwx", "KERNEL_MCP_SANDBOX_PROJECTS"),
        ("KERNEL_MCP_SANDBOX_BWRAP", "/no/such/bwrap", "not an executable file"),
        ("KERNEL_MCP_SANDBOX_TMP_MB", "0", "positive integer"),
        ("KERNEL_MCP_SANDBOX_MAX_TASKS", "-1", "positive integer"),
    ],
)
def test_bad_sandbox_settings_are_one_line_errors(
    projects: Path, monkeypatch: pytest.MonkeyPatch, variable: str, bad: str, says: str
) -> None:
    monkeypatch.setenv(variable, bad)
    with pytest.raises(ConfigError) as caught:
        load_settings(projects_dir=projects)
    assert says in str(caught.value) and "\n" not in str(caught.value)


# -- real sandboxed kernels ------------------------------------------------------------------
async def test_a_kernel_sees_its_own_processes_only_and_is_pid_2(kernel: Kernel) -> None:
    pids = await value(
        kernel, "import os; sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
    )
    assert pids[:2] == [1, 2] and len(pids) <= 3, pids
    assert await value(kernel, "import os; os.getpid()") == 2


async def test_a_kernel_sees_only_its_own_connection_folder(kernel: Kernel) -> None:
    own = Path(process_of(kernel).connection_file).parent
    listed = await value(kernel, f"import os; os.listdir({str(own.parent)!r})")
    assert listed == [own.name]
    assert await value(kernel, f"import os; os.path.exists({str(own / 'kernel.json')!r})")


async def test_home_and_tmp_are_private_empty_and_writable(kernel: Kernel, projects: Path) -> None:
    code = (
        "import os, tempfile\n"
        "home = os.path.expanduser('~')\n"
        "open(os.path.join(home, 'h'), 'w').write('x')\n"
        "with tempfile.NamedTemporaryFile() as f: f.write(b'x')\n"
        "(sorted(os.listdir('/tmp')), tempfile.gettempdir(), os.stat(home).st_mode & 0o777)"
    )
    tmp, tempdir, mode = await value(kernel, code)
    # Only the folders that hold mount points below /tmp (the projects and connection
    # folders live there in tests), nothing of the host's /tmp, and the file is gone.
    assert set(tmp) <= mount_skeleton(kernel, projects), tmp
    assert tempdir == "/tmp" and mode == 0o700


async def test_an_interrupt_reaches_the_processes_the_kernel_started(kernel: Kernel) -> None:
    # SIGINT to bwrap would reach nobody; the interrupt goes by message, and the kernel
    # leads its own process group inside, so its children are interrupted with it.
    namespace = os.readlink(f"/proc/{process_of(kernel).kernel_pid}/ns/pid")

    def sleeping() -> set[int]:
        return {
            p
            for p in host_pids(namespace, range(3, 64))
            if Path(f"/proc/{p}/cmdline").read_bytes().startswith(b"sleep\x00300")
        }

    running = asyncio.ensure_future(
        run(kernel, "import subprocess\nsubprocess.run(['sleep', '300'])")
    )

    async def started() -> bool:
        return bool(sleeping())

    assert await wait_for(started, timeout=20)
    await kernel.interrupt()
    result = await asyncio.wait_for(running, 20)
    assert result.status == "interrupted", result
    assert wait_until(lambda: not sleeping(), timeout=10)
    assert await value(kernel, "1 + 1") == 2


async def test_killing_the_kernel_ends_every_process_in_its_namespace(
    backend: LocalBackend,
) -> None:
    kernel = await backend.start()
    marker = "4242.0101"
    try:
        started = await run(kernel, daemon_code(marker))
        assert started.status == "ok" and "daemon started" in str(started.outputs), started
        assert wait_until(lambda: bool(daemons(marker)), timeout=10)
        await kernel.kill()
        assert wait_until(lambda: not daemons(marker), timeout=2), "the daemon outlived it"
    finally:
        await kernel.shutdown(now=True)


async def test_a_kernel_killed_from_outside_takes_its_daemons_and_says_how(
    backend: LocalBackend,
) -> None:
    kernel = await backend.start()
    marker = "4242.0202"
    try:
        started = await run(kernel, daemon_code(marker))
        assert started.status == "ok" and "daemon started" in str(started.outputs), started
        assert wait_until(lambda: bool(daemons(marker)), timeout=10)
        os.kill(process_of(kernel).kernel_pid, signal.SIGKILL)  # type: ignore[arg-type]

        async def dead() -> bool:
            return not await kernel.process.is_alive()

        assert await wait_for(dead, timeout=10)
        assert wait_until(lambda: not daemons(marker), timeout=2)
        assert kernel.process.exit_description() == "killed by SIGKILL"
    finally:
        await kernel.shutdown(now=True)


async def test_two_kernels_cannot_see_each_other(backend: LocalBackend) -> None:
    first, second = await asyncio.gather(backend.start(), backend.start())
    try:
        await run(first, "open('/tmp/first-was-here', 'w').write('x')")
        await run(first, "import subprocess; p = subprocess.Popen(['sleep', '300'])")
        assert "first-was-here" not in await value(second, "import os; os.listdir('/tmp')")
        procs = await value(
            second, "import os; sorted(int(p) for p in os.listdir('/proc') if p.isdigit())"
        )
        assert len(procs) <= 3, procs  # its init, itself, and at most the listing's helper
        assert "first-was-here" in await value(first, "import os; os.listdir('/tmp')")
    finally:
        await asyncio.gather(first.shutdown(now=True), second.shutdown(now=True))


async def test_the_loopback_is_the_kernel_s_own(kernel: Kernel) -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        said = await error_of(
            kernel, f"import socket; socket.create_connection(('127.0.0.1', {port}), timeout=5)"
        )
    assert "ConnectionRefusedError" in said, said


async def test_network_true_gives_the_host_s_network(projects: Path, how: str) -> None:
    local = LocalBackend(settings_for(projects, how, sandbox_network=True))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        port = listener.getsockname()[1]
        accepted: list[bytes] = []
        server = threading.Thread(target=lambda: accepted.append(listener.accept()[0].recv(9)))
        server.start()
        kernel = await local.start()
        try:
            code = (
                f"import socket; socket.create_connection(('127.0.0.1', {port})).send(b'reached')"
            )
            assert (await run(kernel, code)).status == "ok"
            server.join(10)
        finally:
            await kernel.shutdown(now=True)
            await local.close()
    assert accepted == [b"reached"]


async def test_projects_ro_and_read_paths(projects: Path, tmp_path: Path, how: str) -> None:
    data = tmp_path / "data"
    data.mkdir()
    (data / "set.csv").write_text("a,b\n1,2\n")
    (projects / "input.txt").write_text("readable")
    local = LocalBackend(
        settings_for(projects, how, sandbox_projects="ro", sandbox_read_paths=str(data))
    )
    kernel = await local.start()
    try:
        assert await value(kernel, "open('input.txt').read()") == "readable"
        assert "Read-only file system" in await error_of(kernel, "open('new.txt', 'w')")
        assert await value(kernel, f"open({str(data / 'set.csv')!r}).read()") == "a,b\n1,2\n"
        assert "Read-only file system" in await error_of(kernel, f"open({str(data / 'x')!r}, 'w')")
    finally:
        await kernel.shutdown(now=True)
        await local.close()


async def test_tmp_is_capped(projects: Path, how: str) -> None:
    local = LocalBackend(settings_for(projects, how, sandbox_tmp_mb=8))
    kernel = await local.start()
    try:
        said = await error_of(kernel, "open('/tmp/big', 'wb').write(b'x' * 16 * 2**20)")
        assert "No space left on device" in said
    finally:
        await kernel.shutdown(now=True)
        await local.close()


async def test_the_server_s_env_file_in_a_shared_folder_reads_empty(
    projects: Path, monkeypatch: pytest.MonkeyPatch, how: str
) -> None:
    secret_home = projects / f"served-from-here-{how}"
    secret_home.mkdir()
    (secret_home / ".env").write_text("KERNEL_MCP_TOKEN=must-not-leak\n")
    monkeypatch.chdir(secret_home)  # the server started from inside the projects folder
    local = LocalBackend(settings_for(projects, how))
    kernel = await local.start()
    try:
        assert await value(kernel, f"open({str(secret_home / '.env')!r}).read()") == ""
    finally:
        await kernel.shutdown(now=True)
        await local.close()


@pytest.fixture
def other_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A separate environment registered as kernelspec 'datasci' (as `python -m ipykernel
    install --name ...` does): a venv outside every prefix of the server's, with
    ipykernel reachable from it through a .pth file."""
    env = tmp_path / "datasci"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(env)], check=True)
    site = next(env.glob("lib/python*/site-packages"))
    import ipykernel

    (site / "server-packages.pth").write_text(str(Path(ipykernel.__file__).parent.parent) + "\n")
    (env / "marker.txt").write_text("from the other env")
    spec = tmp_path / "jupyter" / "kernels" / "datasci"
    spec.mkdir(parents=True)
    argv = [str(env / "bin" / "python"), "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    spec_json = {"argv": argv, "display_name": "datasci", "language": "python"}
    (spec / "kernel.json").write_text(json.dumps(spec_json))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    return env


async def test_another_kernelspec_s_interpreter_prefix_is_shared(
    other_env: Path, projects: Path, how: str
) -> None:
    local = LocalBackend(settings_for(projects, how, kernel_name="datasci"))
    kernel = await local.start()
    try:
        assert await value(kernel, "import sys; sys.prefix") == str(other_env)
        marker = str(other_env / "marker.txt")
        assert await value(kernel, f"open({marker!r}).read()") == "from the other env"
        assert "Read-only" in await error_of(kernel, f"open({str(other_env / 'x')!r}, 'w')")
    finally:
        await kernel.shutdown(now=True)
        await local.close()


# -- cgroups: the whole tree is limited --------------------------------------------------------
async def test_the_task_limit_stops_a_fork_bomb_with_a_clear_error(backend: LocalBackend) -> None:
    if backend.cgroups is None and os.getuid() == 0:
        pytest.skip("as root only a cgroup limits tasks, and none can be made here")
    kernel = await backend.start()
    try:
        said = await error_of(
            kernel,
            "import os, time\n"
            "while True:\n"
            "    if os.fork() == 0:\n"
            "        time.sleep(60)\n"
            "        os._exit(0)\n",
        )
        assert "BlockingIOError" in said or "Resource temporarily unavailable" in said, said
        assert await value(kernel, "'still serving'") == "still serving"
    finally:
        await kernel.shutdown(now=True)


async def test_the_memory_limit_covers_the_kernel_s_children(backend: LocalBackend) -> None:
    if backend.cgroups is None:
        pytest.skip("no cgroup here: the memory limit is RLIMIT_AS per process")
    kernel = await backend.start()
    group = process_of(kernel).cgroup
    assert group is not None
    try:
        # Three children of 500 MiB each stay under RLIMIT_AS (1 GiB) one by one, but
        # not together under the kernel's 1 GiB: the cgroup's OOM killer ends some.
        codes = await value(
            kernel,
            "import subprocess, sys\n"
            "hog = 'b = bytearray(500 * 2**20); import time; time.sleep(3)'\n"
            "children = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n"
            "[child.wait() for child in children]",
        )
        assert -signal.SIGKILL in codes, codes
        assert group.oom_kills() >= 1
        assert await value(kernel, "1 + 1") == 2
    finally:
        await kernel.shutdown(now=True)
    assert group.removed and not any(folder.exists() for folder in group.folders)


async def test_a_kernel_the_memory_limit_ended_says_so(backend: LocalBackend) -> None:
    if backend.cgroups is None:
        pytest.skip("no cgroup here: the memory limit is RLIMIT_AS per process")
    kernel = await backend.start()
    try:
        # The kernel holds 400 MiB and starts three children of 250 MiB: together over
        # the group's 1 GiB, so its OOM killer ends the largest process, the kernel,
        # with a bare SIGKILL.
        execution = await run(
            kernel,
            "import subprocess, sys\n"
            "held = b'x' * (400 * 2**20)\n"
            "hog = 'import time; b = b\"x\" * (250 * 2**20); time.sleep(30)'\n"
            "children = [subprocess.Popen([sys.executable, '-c', hog]) for _ in range(3)]\n"
            "[child.wait() for child in children]",
        )
    finally:
        await kernel.shutdown(now=True)
    assert execution.status == "kernel_died", execution
    assert execution.death is not None
    assert execution.death.startswith("killed by SIGKILL: "), execution.death
    assert "memory limit (1024 MiB)" in execution.death, execution.death


async def test_each_kernel_has_a_cgroup_removed_with_it(backend: LocalBackend) -> None:
    if backend.cgroups is None:
        pytest.skip("no cgroup here")
    kernel = await backend.start()
    group = process_of(kernel).cgroup
    assert group is not None
    try:
        assert process_of(kernel).kernel_pid in group.pids()
        names = ("pids.max", "memory.max", "memory.limit_in_bytes")
        limits = {
            n: (d / n).read_text().strip() for d in group.folders for n in names if (d / n).exists()
        }
        assert limits.get("pids.max") == "512"
        assert str(2**30) in (limits.get("memory.max"), limits.get("memory.limit_in_bytes"))
    finally:
        await kernel.shutdown(now=True)
    assert not any(folder.exists() for folder in group.folders)
    assert alive(group.pids()) == set()


# -- tenants: nothing writable is shared, nothing written outlives the kernel -----------------
#: Inside a kernel: every mount point it can reach, with whether it is writable and
#: which directory it is (device and inode: two kernels seeing the same one share it).
WRITABLE_MOUNTS = (
    "import os, stat\n"
    "found = {}\n"
    "for line in open('/proc/self/mountinfo'):\n"
    "    point = line.split()[4].encode().decode('unicode_escape')\n"
    "    try:\n"
    "        st, vfs = os.stat(point), os.statvfs(point)\n"
    "    except OSError:\n"
    "        continue\n"
    "    if stat.S_ISCHR(st.st_mode) or vfs.f_flag & os.ST_RDONLY:\n"
    "        continue  # a device node (its data is the device's), or read-only\n"
    "    found[point] = (st.st_dev, st.st_ino)\n"
    "found"
)


async def test_no_writable_mount_is_shared_between_two_kernels_but_the_projects_folder(
    backend: LocalBackend, projects: Path
) -> None:
    first, second = await asyncio.gather(backend.start(), backend.start())
    try:
        seen = [await value(k, WRITABLE_MOUNTS) for k in (first, second)]
        # The root, /etc and /dev are not writable; /tmp, $HOME, /dev/shm, /dev/pts,
        # /proc and the connection folder are, and each kernel's own.
        home = backend.sandbox.policy.home  # type: ignore[union-attr]
        for mounts in seen:
            assert {"/", "/etc", "/dev", "/usr"}.isdisjoint(mounts), mounts
            assert {"/tmp", home, "/dev/shm", "/dev/pts", "/proc"} <= set(mounts), mounts
        shared = {point for point, identity in seen[0].items() if identity in seen[1].values()}
        assert shared == {str(projects)}, shared
    finally:
        await asyncio.gather(first.shutdown(now=True), second.shutdown(now=True))


async def test_the_connection_folder_holds_almost_nothing_and_nothing_on_the_host(
    kernel: Kernel,
) -> None:
    folder = Path(process_of(kernel).connection_file).parent
    said = await error_of(kernel, f"open({str(folder / 'filler')!r}, 'wb').write(b'x' * 2**20)")
    assert "No space left on device" in said, said
    # On the host: what the server put there, the connection file and the (read-only to
    # the kernel) packages folder its session would fill, and nothing the kernel wrote.
    assert sorted(p.name for p in folder.iterdir()) == ["kernel.json", "packages"]
    assert not any((folder / "packages").iterdir()), "the host's stays empty"
    assert await value(kernel, "1 + 1") == 2, "its sockets still work"


def charged_bytes(group: Any) -> int:
    """The memory a kernel's cgroup is charged with (0 without a cgroup)."""
    for folder in group.folders if group is not None else ():
        for name in ("memory.current", "memory.usage_in_bytes"):
            if (folder / name).exists():
                return int((folder / name).read_text())
    return 0


def shmem_bytes() -> int:
    """Shared memory in use on the machine (tmpfs pages count here)."""
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("Shmem:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no Shmem line")


async def test_memory_a_kernel_wrote_to_its_files_is_freed_when_it_ends(
    backend: LocalBackend,
) -> None:
    kernel = await backend.start()
    group = process_of(kernel).cgroup
    try:
        before, charged = shmem_bytes(), charged_bytes(group)
        code = (
            "import os\n"
            "for where in ('/tmp', os.path.expanduser('~'), '/dev/shm'):\n"
            "    with open(os.path.join(where, 'ballast'), 'wb') as out:\n"
            "        for _ in range(100): out.write(b'x' * 2**20)\n"
        )
        assert (await run(kernel, code)).status == "ok"
        assert shmem_bytes() - before > 200 * 2**20, "the 300 MiB are held while it runs"
        if group is not None:  # and counted against the kernel's own memory limit
            assert charged_bytes(group) - charged > 200 * 2**20
    finally:
        await kernel.shutdown(now=True)
    # Other processes on the machine move Shmem a little; 300 MiB does not come back.
    assert wait_until(lambda: shmem_bytes() - before < 100 * 2**20, timeout=10)
