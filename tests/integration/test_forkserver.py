"""Specification of ``kernel_mcp.launch.forkserver`` and the template it runs.

Kernels forked from a template that imported ipykernel, IPython and the preload
once are as fresh as spawned ones: an empty user namespace, their own pid,
history, shell, working directory, ``sys.argv`` and random state. They keep
every guarantee of the sandbox (``tests/integration/test_sandbox.py`` runs its kernel tests
on forked and spawned kernels alike). When the template cannot start, dies or
fails a kernel, kernels are spawned instead, with one log line; it is restarted
when its kernelspec changes, and ends with the server, SIGKILL included.

The rest of the suite runs on forked kernels (the default); ``tests/integration/test_backend.py``
is the subset that runs spawned.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import psutil
import pytest

from kernel_mcp.backends.local import LocalBackend
from kernel_mcp.backends.process import LocalProcess
from kernel_mcp.config import Settings, load_settings
from kernel_mcp.kernels.kernel import Kernel
from kernel_mcp.kernels.setup import OUTPUT_GUARD_MARKER
from kernel_mcp.launch import flavour, fork, forkserver
from kernel_mcp.launch.forked import ForkedProcess
from kernel_mcp.launch.template import NAMES
from tests.helpers import call, client_for, running_server, structured, wait_for
from tests.kernels import literal as value
from tests.kernels import run_patiently as run
from tests.launchers import alive, descendants_of, wait_until

pytestmark = pytest.mark.skipif(
    not forkserver.forking_possible(), reason="kernels are forked on Linux with pidfds only"
)

#: What a fresh kernel's user namespace holds before any code ran (IPython's own names).
USER_NAMES = "sorted(k for k in get_ipython().user_ns if not k.startswith('_'))"


@pytest.fixture(scope="module")
def projects(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("fork-projects")
    # Imported by the template only (a preload that kills the template's interpreter
    # but loads fine in a kernel): tests that a broken template never breaks a run.
    (folder / "kills_templates.py").write_text(
        "import os, sys\nif sys.argv[0].endswith('fork-template.py'):\n    os._exit(3)\n"
    )
    return folder


def settings_for(projects: Path, **extra: Any) -> Settings:
    return load_settings(projects_dir=projects, pool_size=0, memory_limit_mb=1024, **extra)


@pytest.fixture(scope="module", params=["sandboxed", "sandboxed-userns", "plain"])
async def backend(request: pytest.FixtureRequest, projects: Path) -> AsyncIterator[LocalBackend]:
    """Forked kernels in the sandbox, and (sandbox off) from a plain template.

    "sandboxed-userns": each kernel with a user namespace of its own, as an
    unprivileged server forks them (run as root, the suite forces it).
    """
    sandbox = "off" if request.param == "plain" else "auto"
    with pytest.MonkeyPatch.context() as patch:
        if request.param == "sandboxed-userns":
            if forkserver.userns_per_kernel():
                pytest.skip('unprivileged, "sandboxed" kernels get a user namespace each already')
            patch.setattr(forkserver, "userns_per_kernel", lambda: True)
        local = LocalBackend(settings_for(projects, sandbox=sandbox, preload=["json", "random"]))
        assert local.forking
        yield local
        await local.close()


@pytest.fixture
async def kernel(backend: LocalBackend) -> AsyncIterator[Kernel]:
    started = await backend.start()
    yield started
    await started.shutdown(now=True)


def forked(kernel: Kernel) -> ForkedProcess:
    assert isinstance(kernel.process, ForkedProcess), kernel.process
    return kernel.process


def template_pid(backend: LocalBackend, kernel_name: str = "python3") -> int:
    template = backend.forks[kernel_name].template
    assert template is not None and template.process is not None
    return template.process.pid


# -- as fresh as a spawned kernel -----------------------------------------------------------
async def test_kernels_come_from_the_template(backend: LocalBackend, kernel: Kernel) -> None:
    process = forked(kernel)
    assert process.sandboxed == backend.sandboxed
    if backend.sandboxed:  # pid: its namespace's init; kernel_pid: the kernel inside
        assert process.kernel_pid != process.pid
        assert psutil.Process(process.pid).name() == NAMES["init"]
    else:
        assert process.kernel_pid == process.pid
    assert psutil.Process(process.kernel_pid).name() == NAMES["kernel"]
    # Its process descends from the template's, not from the server.
    template = template_pid(backend)
    assert process.kernel_pid in descendants_of({template})
    if backend.sandboxed:
        # A user namespace of its own exactly when the server is not root (or the test
        # forces that way).
        (inner,) = processes_named(template, NAMES["template"])
        own = os.readlink(f"/proc/{process.kernel_pid}/ns/user")
        assert (own != os.readlink(f"/proc/{inner}/ns/user")) == forkserver.userns_per_kernel()
    if backend.sandboxed and not forkserver.userns_per_kernel():
        # The template forked the kernel itself, into a PID namespace whose init the
        # namespace maker had ready (the two forks run side by side).
        assert psutil.Process(process.kernel_pid).parent().name() == NAMES["template"]
        assert psutil.Process(process.pid).parent().name() == NAMES["maker"]
        assert await value(kernel, "__import__('os').getpid()") == 2


async def test_a_forked_kernel_is_as_fresh_as_a_spawned_one(backend: LocalBackend) -> None:
    spawned = await backend.spawn()
    kernel = await backend.start()
    try:
        assert isinstance(spawned.process, LocalProcess)
        forked(kernel)
        # As the pool hands them out: the spawned kernel gets its set-up as cells, the
        # forked one ran it itself (and has the preload's names the same way).
        assert kernel.process.prepared == ("json", "random")
        assert spawned.process.prepared is None
        for each in (spawned, kernel):
            await each.prepare(backend.settings.preload)
        checks = {
            "names": USER_NAMES,
            "count": "get_ipython().execution_count",
            "history": "len(get_ipython().history_manager.input_hist_parsed)",
            "cwd": "__import__('os').getcwd()",
            "argv": "[__import__('os').path.basename(a) for a in __import__('sys').argv[:2]]",
            "path0": "__import__('sys').path[0]",
            "main": "__name__",
            "home": "sorted(__import__('os').listdir(__import__('os').path.expanduser('~')))",
            "tmpdir": "__import__('tempfile').gettempdir()",
            "signals": "[str(__import__('signal').getsignal(s)) for s in (2, 13, 15, 17)]",
            "umask": "__import__('os').umask(0o022)",
            # The kernel's arguments apply (parsed once in the template, not per child).
            "history_on": "get_ipython().history_manager.enabled",
            "history_file": "str(get_ipython().history_manager.hist_file)",
        }
        for name, expression in checks.items():
            seen_spawned = await value(spawned, expression)
            seen_forked = await value(kernel, expression)
            assert seen_forked == seen_spawned, (name, seen_forked, seen_spawned)
        # Each on its own connection file.
        own = "get_ipython().kernel.parent.connection_file"
        assert await value(kernel, own) == str(forked(kernel).connection_file)
    finally:
        await asyncio.gather(spawned.shutdown(now=True), kernel.shutdown(now=True))


async def test_every_child_has_its_own_pid_and_random_state(backend: LocalBackend) -> None:
    kernels = await asyncio.gather(*(backend.start() for _ in range(4)))
    try:
        draws = [await value(k, "__import__('random').random()") for k in kernels]
        pids = {forked(k).kernel_pid for k in kernels}
        assert len(set(draws)) == 4, draws
        assert len(pids) == 4
        # Their own state: a name set in one is nowhere else.
        await run(kernels[0], "only_here = 1")
        assert [await value(k, "'only_here' in dir()") for k in kernels] == [True] + [False] * 3
    finally:
        await asyncio.gather(*(k.shutdown(now=True) for k in kernels))


async def test_numpy_s_global_generator_is_reseeded_in_each_child(projects: Path) -> None:
    pytest.importorskip("numpy")
    local = LocalBackend(settings_for(projects, preload=["numpy"]))
    kernels = await asyncio.gather(*(local.start() for _ in range(3)))
    try:
        for k in kernels:
            assert await value(k, "'numpy' in __import__('sys').modules")
        draws = [await value(k, "float(__import__('numpy').random.rand())") for k in kernels]
        assert len(set(draws)) == 3, draws
    finally:
        await asyncio.gather(*(k.shutdown(now=True) for k in kernels))
        await local.close()


async def test_the_memory_limit_holds_in_a_forked_kernel(kernel: Kernel) -> None:
    limit = Path(f"/proc/{forked(kernel).kernel_pid}/limits").read_text()
    line = next(ln for ln in limit.splitlines() if ln.startswith("Max address space"))
    assert line.split()[3:5] == [str(2**30)] * 2
    result = await run(kernel, "blob = bytearray(3 * 1024**3)")
    assert result.error is not None and result.error["ename"] == "MemoryError"
    assert await value(kernel, "1 + 1") == 2


async def test_kill_ends_what_the_kernel_started_and_says_how(kernel: Kernel) -> None:
    code = "import os, subprocess\nchild = subprocess.Popen(['sleep', '300'])"
    assert (await run(kernel, code)).status == "ok"
    process = forked(kernel)
    sleepers = {
        p.pid
        for p in psutil.Process(process.kernel_pid).children(recursive=True)
        if p.name() == "sleep"
    }
    assert sleepers
    await kernel.kill()
    assert wait_until(lambda: not alive(sleepers | {process.kernel_pid}), timeout=5)
    assert process.exit_description() == "killed by SIGKILL"
    assert not process.folder.exists() and process.stderr.closed


async def test_a_kernel_that_exits_says_with_what(kernel: Kernel) -> None:
    result = await run(kernel, "import os; os._exit(3)")
    assert result.status == "kernel_died"
    assert result.death == "exit code 3"


# -- fallback, restart, lifetime -----------------------------------------------------------------
async def test_a_template_that_cannot_start_means_spawned_kernels_and_one_log_line(
    projects: Path, caplog: pytest.LogCaptureFixture
) -> None:
    local = LocalBackend(settings_for(projects, preload=["kills_templates"]))
    try:
        with caplog.at_level("WARNING"):
            first, second = await local.start(), await local.start()
        for kernel in (first, second):
            assert isinstance(kernel.process, LocalProcess), "spawned instead"
            await kernel.prepare(["kills_templates"])  # and the preload works there
            assert await value(kernel, "'kills_templates' in __import__('sys').modules")
        said = [r.getMessage() for r in caplog.records if "fork template" in r.getMessage()]
        assert len(said) == 1 and "could not start" in said[0], said
        await asyncio.gather(first.shutdown(now=True), second.shutdown(now=True))
    finally:
        await local.close()


async def test_a_set_up_that_fails_in_the_child_means_a_spawned_kernel_with_its_guards(
    projects: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    broken = "def _kmcp_setup(config, user_ns):\n    raise RuntimeError('the set-up broke')\n"
    monkeypatch.setattr(forkserver, "KERNEL_SETUP", broken)
    local = LocalBackend(settings_for(projects, max_output_bytes=2048))
    try:
        with caplog.at_level("WARNING"):
            kernel = await local.start()
        assert isinstance(kernel.process, LocalProcess), "spawned instead"
        assert kernel.process.prepared is None
        said = [r.getMessage() for r in caplog.records if "could not be forked" in r.getMessage()]
        assert len(said) == 1 and "the set-up broke" in said[0], said
        # The spawned kernel gets its guards as cells, as the pool would give them.
        await kernel.prepare([])
        result = await run(kernel, "print('x' * 100_000)")
        await kernel.shutdown(now=True)
    finally:
        await local.close()

    (stream,) = result.outputs
    assert OUTPUT_GUARD_MARKER in stream["text"] and len(stream["text"]) <= 2048


async def test_a_template_that_dies_is_replaced_and_its_kernels_report_death(
    projects: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(forkserver, "RETRY_PAUSES", (0.2, 0.2, 0.2))
    local = LocalBackend(settings_for(projects))
    try:
        before = await local.start()
        dead_template = template_pid(local)
        with caplog.at_level("WARNING"):
            os.killpg(dead_template, signal.SIGKILL)

            async def gone() -> bool:
                return not await before.process.is_alive()

            assert await wait_for(gone, timeout=10), "its kernels end with it"
            assert "fork template ended" in before.process.exit_description()
            fallback = await local.start()
        assert isinstance(fallback.process, LocalProcess), "spawned while it is down"
        assert any("fork template ended" in r.getMessage() for r in caplog.records)
        fork_server = local.forks["python3"]

        async def pause_over() -> bool:  # the retry pause after a broken template
            return time.monotonic() >= fork_server._next_try

        assert await wait_for(pause_over, timeout=10)
        again = await local.start()
        assert isinstance(again.process, ForkedProcess), "a new template after the pause"
        assert template_pid(local) != dead_template
        assert await value(again, "6 * 7") == 42
        for kernel in (before, fallback, again):
            await kernel.shutdown(now=True)
    finally:
        await local.close()


async def test_a_namespace_maker_that_dies_means_spawned_kernels_then_a_new_template(
    projects: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr(forkserver, "RETRY_PAUSES", (0.2, 0.2, 0.2))
    local = LocalBackend(settings_for(projects))
    started: list[Kernel] = []
    try:
        started.append(await local.start())
        if not (local.sandboxed and os.getuid() == 0):
            pytest.skip("only a sandboxed template run by root has a namespace maker")
        old_template = template_pid(local)
        (maker,) = processes_named(old_template, NAMES["maker"])
        os.kill(maker, signal.SIGKILL)
        assert wait_until(lambda: not alive({maker}), timeout=5)
        # The spare it made before it died may still serve one kernel; the next fork
        # finds it gone, and the template ends (its kernels run on, with its keeper).
        with caplog.at_level("WARNING"):
            for _ in range(2):
                started.append(await local.start())
                assert await value(started[-1], "6 * 7") == 42
                if isinstance(started[-1].process, LocalProcess):
                    break
        assert isinstance(started[-1].process, LocalProcess), "spawned once it is gone"
        assert any("could not be forked" in r.getMessage() for r in caplog.records)

        assert await value(started[0], "6 * 7") == 42, "the template's kernels run on"
        started.append(await local.start())
        assert isinstance(started[-1].process, LocalProcess), "spawned while it is down"
        fork_server = local.forks["python3"]

        async def pause_over() -> bool:  # the retry pause after a broken template
            return time.monotonic() >= fork_server._next_try

        assert await wait_for(pause_over, timeout=10)
        started.append(await local.start())
        assert isinstance(started[-1].process, ForkedProcess), "a new template, a new maker"
        assert template_pid(local) != old_template
        assert await value(started[-1], "6 * 7") == 42
    finally:
        for kernel in started:
            await kernel.shutdown(now=True)
        await local.close()


async def test_a_close_cancelled_while_a_template_starts_is_cancelled(projects: Path) -> None:
    local = LocalBackend(settings_for(projects))
    first = asyncio.ensure_future(local.start())
    try:

        async def template_starting() -> bool:
            fork_server = local.forks.get("python3")
            return fork_server is not None and fork_server._starting is not None

        assert await wait_for(template_starting, timeout=10, interval=0.001)
        fork_server = local.forks["python3"]
        closing = asyncio.ensure_future(fork_server.close())
        await asyncio.sleep(0)  # close() cancels the start and waits for it to end
        closing.cancel()
        with pytest.raises(asyncio.CancelledError):
            await closing
        assert closing.cancelled(), "close() kept its caller's cancel"
    finally:
        kernel = await first  # spawned: the fork server closed under it
        assert isinstance(kernel.process, LocalProcess)
        await kernel.shutdown(now=True)
        await local.close()


async def test_a_changed_kernelspec_gets_a_new_template_and_the_old_one_drains(
    tmp_path: Path, projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "mine"
    spec.mkdir(parents=True)
    argv = [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "m", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    local = LocalBackend(settings_for(projects, kernel_name="mine"))
    try:
        old = await local.start()
        old_template = template_pid(local, "mine")
        data = {"argv": argv, "display_name": "m", "language": "python", "env": {"FLAVOUR": "2"}}
        (spec / "kernel.json").write_text(json.dumps(data))
        os.utime(spec / "kernel.json", (time.time() + 5, time.time() + 5))
        new = await local.start()
        assert template_pid(local, "mine") != old_template
        assert await value(new, "__import__('os').environ.get('FLAVOUR')") == "2"
        assert await value(old, "1 + 1") == 2, "the old template's kernel lives on"
        assert psutil.pid_exists(old_template)
        await old.shutdown(now=True)
        assert wait_until(lambda: not alive({old_template}), timeout=10), "drained, it stops"
        await new.shutdown(now=True)
    finally:
        await local.close()


async def test_a_kernelspec_that_is_not_an_ipykernel_is_spawned(
    tmp_path: Path, projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = tmp_path / "jupyter" / "kernels" / "wrapped"
    spec.mkdir(parents=True)
    launcher = spec / "launch.py"
    launcher.write_text(
        "import runpy, sys\nsys.argv = ['ipykernel_launcher', *sys.argv[1:]]\n"
        "runpy.run_module('ipykernel_launcher', run_name='__main__')\n"
    )
    argv = [sys.executable, str(launcher), "-f", "{connection_file}"]
    (spec / "kernel.json").write_text(
        json.dumps({"argv": argv, "display_name": "w", "language": "python"})
    )
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    local = LocalBackend(settings_for(projects, kernel_name="wrapped"))
    try:
        kernel = await local.start()
        assert isinstance(kernel.process, LocalProcess)
        assert await value(kernel, "2 + 2") == 4
        await kernel.shutdown(now=True)
    finally:
        await local.close()


def processes_named(root: int, name: str) -> set[int]:
    found = set()
    for pid in descendants_of({root}):
        try:
            if psutil.Process(pid).name() == name:
                found.add(pid)
        except psutil.Error:
            continue
    return found


@pytest.mark.parametrize("sandbox", ["auto", "off"], ids=["sandboxed", "plain"])
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGKILL], ids=["shutdown", "sigkill"])
async def test_the_template_and_its_kernels_end_with_the_server(
    tmp_path: Path, sandbox: str, stop: signal.Signals
) -> None:
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1", KERNEL_MCP_SANDBOX=sandbox) as server:
        async with client_for("mcp", server) as client:
            sid = structured(await call(client, "create_session"))["session_id"]
            report = structured(await call(client, "run_code", code="1", session_id=sid))
            assert report["status"] == "ok"
        templates = processes_named(server.pid, NAMES["template"])
        kernels = processes_named(server.pid, NAMES["kernel"])
        assert templates and kernels, (templates, kernels)
        tree = descendants_of(templates)
        assert server.stop(stop) is not None
        assert wait_until(lambda: not alive(tree), timeout=5), alive(tree)


# -- nothing a kernel does ends another kernel ---------------------------------------------------
async def test_a_kernel_that_makes_the_template_its_tracer_ends_nothing(
    backend: LocalBackend,
) -> None:
    # ptrace(PTRACE_TRACEME), then a child: the template used to die on the stop it
    # then saw. Sandboxed, the seccomp filter refuses the call; unsandboxed (the
    # template's own child, with no filter) the template now lets the tracee go.
    kernel = await backend.start()
    other = await backend.start()
    try:
        template = template_pid(backend)
        said = await value(
            kernel,
            "import ctypes, subprocess\n"
            "libc = ctypes.CDLL(None, use_errno=True)\n"
            "traced = libc.ptrace(0, 0, 0, 0)\n"
            "(traced, subprocess.run(['true']).returncode, subprocess.run(['true']).returncode)",
        )
        assert said == ((-1 if backend.sandboxed else 0), 0, 0), said
        assert await value(other, "6 * 7") == 42
        assert await value(kernel, "6 * 7") == 42
        third = await backend.start()
        assert isinstance(third.process, ForkedProcess) and template_pid(backend) == template
        await third.shutdown(now=True)
    finally:
        await asyncio.gather(kernel.shutdown(now=True), other.shutdown(now=True))


def template_process(backend: LocalBackend, role: str = "template") -> int:
    """The template process itself (or its maker), below its bwrap."""
    (pid,) = processes_named(template_pid(backend), NAMES[role])
    return pid


async def test_kernels_outlive_their_template_and_still_report_their_end(
    projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(forkserver, "RETRY_PAUSES", (0.2, 0.2, 0.2))
    local = LocalBackend(settings_for(projects))
    try:
        kernel = await local.start()
        assert isinstance(kernel.process, ForkedProcess)
        assert await value(kernel, "kept = 'still here'; kept") == "still here"
        keeper = processes_named(template_pid(local), NAMES["keeper"])
        assert keeper, "a keeper is the sandbox's first process"
        os.kill(template_process(local), signal.SIGKILL)
        fork_server = local.forks["python3"]

        async def noticed() -> bool:
            return fork_server.template is None or fork_server.template.gone

        assert await wait_for(noticed, timeout=10)
        assert await value(kernel, "kept") == "still here"
        result = await run(kernel, "import os; os._exit(3)")
        assert result.status == "kernel_died" and result.death == "exit code 3", result
        await kernel.shutdown(now=True)
        assert wait_until(lambda: not alive(keeper), timeout=10), "the keeper leaves last"
        fallback = await local.start()
        assert isinstance(fallback.process, LocalProcess), "spawned while it is down"
        await fallback.shutdown(now=True)

        async def pause_over() -> bool:  # the retry pause after a broken template
            return time.monotonic() >= fork_server._next_try

        assert await wait_for(pause_over, timeout=10)
        again = await local.start()
        assert isinstance(again.process, ForkedProcess), "a new template"
        await again.shutdown(now=True)
    finally:
        await local.close()


@pytest.mark.parametrize("role", ["template", "maker"])
async def test_a_stopped_template_or_maker_is_replaced_and_the_kernel_spawned(
    projects: Path, monkeypatch: pytest.MonkeyPatch, role: str
) -> None:
    monkeypatch.setattr(forkserver, "RETRY_PAUSES", (0.2, 0.2, 0.2))
    monkeypatch.setattr(fork, "ANSWER_TIMEOUT", 1.0)
    if role == "maker" and forkserver.userns_per_kernel():
        pytest.skip("only a sandboxed template run by root has a namespace maker")
    local = LocalBackend(settings_for(projects))
    started: list[Kernel] = []
    try:
        started.append(await local.start())
        stopped = template_process(local, role)
        os.kill(stopped, signal.SIGSTOP)
        # The maker had a spare ready: one more kernel may still be forked.
        for _ in range(2):
            started.append(await local.start())
            if isinstance(started[-1].process, LocalProcess):
                break
        assert isinstance(started[-1].process, LocalProcess), "spawned"
        assert wait_until(lambda: not alive({stopped}), timeout=10), "the stopped one ended"
        assert await value(started[0], "6 * 7") == 42, "its kernels run on"
        fork_server = local.forks["python3"]

        async def pause_over() -> bool:
            return time.monotonic() >= fork_server._next_try

        assert await wait_for(pause_over, timeout=10)
        started.append(await local.start())
        assert isinstance(started[-1].process, ForkedProcess), "from a replacement"
    finally:
        for kernel in started:
            await kernel.shutdown(now=True)
        await local.close()


@pytest.fixture
def installed(tmp_path: Path) -> Path:
    """A kernelspec registered the README's way: ``python -m ipykernel install``."""
    subprocess.run(
        [sys.executable, "-m", "ipykernel", "install", "--prefix", str(tmp_path), "--name", "inst"],
        check=True,
        capture_output=True,
    )
    return tmp_path


async def test_a_kernelspec_that_ipykernel_install_wrote_is_forked_with_its_flags(
    installed: Path, projects: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    tmp_path = installed
    spec = json.loads((tmp_path / "share/jupyter/kernels/inst/kernel.json").read_text())
    assert "-Xfrozen_modules=off" in spec["argv"], spec["argv"]
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "share/jupyter"))
    local = LocalBackend(settings_for(projects, kernel_name="inst"))
    try:
        kernel = await local.start()
        assert isinstance(kernel.process, ForkedProcess), "forked, not spawned"
        flags = "__import__('sys')._xoptions.get('frozen_modules')"
        assert await value(kernel, flags) == "off"
        await kernel.shutdown(now=True)
    finally:
        await local.close()


def test_interpreter_flags_the_template_cannot_apply_mean_spawned_kernels() -> None:
    flags = flavour._interpreter_flags
    assert flags(["python", "-m", "ipykernel_launcher"]) == ()
    assert flags(["python", "-Xfrozen_modules=off", "-u", "-m", "x"]) == (
        "-Xfrozen_modules=off",
        "-u",
    )
    assert flags(["python", "-X", "dev", "-W", "error", "-m", "x"]) == ("-X", "dev", "-W", "error")
    for unsupported in ("-I", "-S", "-E", "-c"):
        assert flags(["python", unsupported, "-m", "x"]) is None
