"""The hostile corpus against a real server: paths, programs and faults, each with the
status it is owed (tables in ``tests/corpus/``).

Whatever a case does, the call gets a clear reply, nothing outside the projects
folder is revealed, no absolute server path leaks, and the server keeps serving.
"""

from __future__ import annotations

import ast
import contextlib
import json
import os
import shutil
import subprocess
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.corpus import paths as path_corpus
from tests.corpus.programs import PROGRAMS, Program
from tests.helpers import (
    call,
    client_for,
    raw_tool_call,
    running_server,
    structured,
    text_of,
    wait_for,
)
from tests.launchers import PID_NAMESPACE, ServerProcess, host_pids

pytestmark = pytest.mark.transport


def no_server_paths(text: str, server: ServerProcess, allowed: str = "") -> None:
    """The reply names nothing of the server's own folders (unless the caller did)."""
    for variable in ("PYTHON_PROJECTS_DIR", "KERNEL_MCP_NOTEBOOKS_DIR"):
        folder = os.path.dirname(server.env[variable])
        if folder and folder not in allowed:
            assert folder not in text, text


# -- paths ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def path_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[ServerProcess, Path]]:
    base = tmp_path_factory.mktemp("paths")
    path_corpus.prepare(base)
    with running_server(
        base / "server",
        KERNEL_MCP_POOL_SIZE="1",
        PYTHON_PROJECTS_DIR=str(path_corpus.projects(base)),
        KERNEL_MCP_MAX_FILE_BYTES=str(path_corpus.MAX_BYTES),
    ) as server:
        yield server, base


@pytest.fixture(scope="module")
async def path_client(path_server: tuple[ServerProcess, Path]) -> AsyncIterator[Any]:
    async with client_for("mcp", path_server[0]) as client:
        yield client


@pytest.mark.parametrize("case", path_corpus.CASES, ids=lambda c: c.id)
async def test_path_corpus_over_run_python(path_server, path_client, case):
    _, base = path_server
    try:
        name = case.build(base)
    except path_corpus.CaseUnavailable as exc:
        pytest.skip(str(exc))
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        pytest.skip("an MCP client cannot send it (test_unencodable_names_sent_raw does)")
    result = await call(path_client, "run_python", file_name=name, timeout=20)
    text = text_of(result)
    assert path_corpus.SECRET not in text
    if case.expected == path_corpus.OK:
        # Accepted: it ran (whether its content is valid Python is another matter).
        report = structured(result)
        if case.source == path_corpus.INSIDE_SOURCE:
            assert report["status"] == "ok" and report["stdout"] == "inside\n", text
    else:
        assert result.is_error and result.structured_content is None, text
        if case.expected == path_corpus.NOT_FOUND:
            assert "No file" in text
        elif case.expected == path_corpus.NOT_TEXT:
            assert "not UTF-8" in text
        else:
            assert f"(rule: {case.expected})" in text, text
        for absolute in {str(base), os.path.realpath(base)}:
            if absolute not in name:
                assert absolute not in text, text


def test_unencodable_names_sent_raw(path_server):
    # JSON may carry a lone surrogate as an escape; a client library cannot send it,
    # a hand-written request can.
    server, _ = path_server
    answer = raw_tool_call(server, "run_python", '{"file_name":"bad\\ud800.py"}', timeout=30)
    assert "rule: unencodable_name" in answer, answer
    assert path_corpus.SECRET not in answer
    assert health(server)["status"] == "ok"


# -- programs ------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def program_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    with running_server(tmp_path_factory.mktemp("programs"), PYTHON_TIMEOUT="20") as server:
        yield server


@pytest.fixture(scope="module", params=["mcp", "mcp-legacy"])
async def program_client(request, program_server) -> AsyncIterator[Any]:
    async with client_for(request.param, program_server) as client:
        yield client


def check_program(program: Program, result: Any, server: ServerProcess) -> dict[str, Any]:
    report = structured(result)
    text = text_of(result)
    assert report["status"] in program.status, text[:3000]
    assert result.is_error == (report["status"] != "ok")
    for expected in program.contains:
        assert expected in text, text[:3000]
    for unexpected in program.absent:
        assert unexpected not in text
    if program.truncated is not None:
        assert report["truncated"] is program.truncated, report["notes"]
    assert len(json.dumps(report)) + len(text) < 1024 * 1024
    no_server_paths(text, server, allowed=program.code)
    return report


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
async def test_program_in_a_fresh_kernel(program_server, program_client, program):
    arguments: dict[str, Any] = {"code": program.code}
    if program.timeout is not None:
        arguments["timeout"] = program.timeout
    check_program(program, await call(program_client, "run_code", **arguments), program_server)
    # The server keeps serving: code, and the tools on the folder the code could change.
    after = structured(await call(program_client, "run_code", code="print('next')"))
    assert after["status"] == "ok" and after["stdout"] == "next\n"
    listed = await call(program_client, "list_files")
    assert not listed.is_error and "hello_world.py" in structured(listed)["files"], text_of(listed)


@pytest.mark.parametrize("program", PROGRAMS, ids=lambda p: p.id)
async def test_program_in_a_session(program_server, program_client, program):
    sid = structured(await call(program_client, "create_session"))["session_id"]
    try:
        await call(program_client, "run_code", code="kept = 'before'", session_id=sid)
        arguments: dict[str, Any] = {"code": program.code, "session_id": sid}
        if program.timeout is not None:
            arguments["timeout"] = program.timeout
        report = check_program(
            program, await call(program_client, "run_code", **arguments), program_server
        )
        after = structured(
            await call(program_client, "run_code", code="print('next')", session_id=sid)
        )
        # Either the kernel survived, or the session says it has a new one.
        if after["status"] != "ok" or after["stdout"] != "next\n":
            # A program that broke its own kernel's output (closed fds, replaced stdout,
            # broke message signing) leaves a session that must still reply and be restartable.
            restarted = await call(program_client, "restart_session", session_id=sid)
            assert not restarted.is_error, text_of(restarted)
            after = structured(
                await call(program_client, "run_code", code="print('next')", session_id=sid)
            )
            assert after["status"] == "ok" and after["stdout"] == "next\n"
        elif report["status"] in ("kernel_died",) or any("killed" in n for n in report["notes"]):
            assert any("New kernel" in n for n in after["notes"]), after["notes"]
    finally:
        await call(program_client, "close_session", session_id=sid)


async def test_a_kernel_killed_from_outside_is_listed_as_dead(program_server, program_client):
    sid = structured(await call(program_client, "create_session"))["session_id"]
    try:
        code = f"import os; ({PID_NAMESPACE}, os.getpid())"
        reply = structured(await call(program_client, "run_code", code=code, session_id=sid))
        namespace, pid = ast.literal_eval(reply["result"])
        (host_pid,) = host_pids(namespace, [pid])  # sandboxed, the kernel is pid 2 inside
        os.kill(host_pid, 9)

        async def dead() -> bool:
            listed = structured(await call(program_client, "list_sessions"))["sessions"]
            return any(s["session_id"] == sid and s["state"] == "dead" for s in listed)

        assert await wait_for(dead, timeout=20)
        after = structured(await call(program_client, "run_code", code="1 + 1", session_id=sid))
        assert after["result"] == "2" and any("New kernel" in n for n in after["notes"])
    finally:
        await call(program_client, "close_session", session_id=sid)


# -- faults: a notebooks folder that stops taking writes ------------------------------------
def _can_make_mount_namespaces() -> bool:
    if not shutil.which("unshare") or not shutil.which("nsenter"):
        return False
    probe = subprocess.run(
        ["unshare", "-m", "--propagation", "private", "true"], capture_output=True, check=False
    )
    return probe.returncode == 0


needs_mounts = pytest.mark.skipif(
    not _can_make_mount_namespaces(), reason="needs unshare -m and nsenter (root)"
)


class Disk:
    """The server's notebooks folder on a small tmpfs in the server's own mount namespace."""

    SIZE = "4m"

    def __init__(self, server: ServerProcess) -> None:
        self.server = server
        self.folder = Path(server.env["KERNEL_MCP_NOTEBOOKS_DIR"])

    def inside(self, *command: str) -> None:
        assert self.server.proc is not None
        subprocess.run(
            ["nsenter", "-t", str(self.server.proc.pid), "-m", *command],
            check=True,
            capture_output=True,
        )

    def read_only(self) -> None:
        self.inside("mount", "-o", "remount,ro", str(self.folder))

    def writable(self) -> None:
        self.inside("mount", "-o", "remount,rw", str(self.folder))

    def fill(self) -> None:
        # dd stops with "No space left on device": that is the point.
        with contextlib.suppress(subprocess.CalledProcessError):
            self.inside("dd", "if=/dev/zero", f"of={self.folder}/.filler", "bs=64k")

    def free(self) -> None:
        self.inside("rm", "-f", f"{self.folder}/.filler")

    def replace_with_folder(self, name: str) -> None:
        self.inside("sh", "-c", f'rm -f "{self.folder}/{name}" && mkdir "{self.folder}/{name}"')

    def restore_file(self, name: str) -> None:
        self.inside("rmdir", f"{self.folder}/{name}")


FAULTS = [
    # (id, when it breaks, break it, repair it, what the replies' notes say)
    # A mounted file system cannot be remounted read-only while files are open for
    # writing, so "read-only" is a folder that is read-only when the server starts.
    ("read_only", "start", Disk.read_only, Disk.writable, "read-only (EROFS)"),
    ("disk_full", "during", Disk.fill, Disk.free, "disk is full (ENOSPC)"),
    (
        "journal_is_a_folder",
        "during",
        lambda d: d.replace_with_folder("sessions/.victim.journal"),
        lambda d: d.restore_file("sessions/.victim.journal"),
        "Not recorded yet",
    ),
    (
        "notebook_is_a_folder",
        "during",
        lambda d: d.replace_with_folder("sessions/victim.ipynb"),
        lambda d: d.restore_file("sessions/victim.ipynb"),
        "cannot be rebuilt",
    ),
]


def health(server: ServerProcess) -> dict[str, Any]:
    with urllib.request.urlopen(f"{server.base}/healthz", timeout=5) as response:
        return dict(json.loads(response.read()))


@needs_mounts
@pytest.mark.parametrize(
    ("fault", "when", "breaks", "repairs", "says"), FAULTS, ids=[f[0] for f in FAULTS]
)
async def test_a_broken_notebooks_folder_never_costs_a_run_its_reply(
    tmp_path, fault, when, breaks, repairs, says
):
    notebooks = tmp_path / "notebooks"
    notebooks.mkdir(parents=True)
    mount = f'mount -t tmpfs -o size={Disk.SIZE},mode=0755 tmpfs "{notebooks}"'
    if when == "start":
        mount += f' && mount -o remount,ro "{notebooks}"'
    wrapper = ("unshare", "-m", "--propagation", "private", "sh", "-c", mount + ' && exec "$@"')
    with running_server(tmp_path, wrapper=(*wrapper, "sh"), KERNEL_MCP_POOL_SIZE="1") as server:
        disk = Disk(server)
        async with client_for("mcp", server) as client:
            created = structured(await call(client, "create_session", name="victim"))
            sid = created["session_id"]
            if when == "start":
                assert says in " ".join(created["notes"]), created
            first = structured(await call(client, "run_code", code="n = 1", session_id=sid))
            assert first["status"] == "ok"
            if when == "during":
                breaks(disk)

            async def degraded() -> bool:
                return health(server)["status"] == "degraded"

            runs = []
            for expected in ("ran 2\n", "ran 3\n"):
                result = await call(
                    client, "run_code", code="n += 1\nprint('ran', n)", session_id=sid
                )
                report = structured(result)
                # The code ran: its output and status are all there.
                assert report["status"] == "ok" and report["stdout"] == expected
                no_server_paths(text_of(result), server)
                runs.append(report)
                # The server says recording is failing (a rebuild fails in the background).
                assert await wait_for(degraded, timeout=20), health(server)
            # The session kept working, and its replies said what happened.
            assert says in " ".join(runs[-1]["notes"]), runs[-1]["notes"]
            if fault in ("read_only", "disk_full"):
                # What else writes there reports the fault instead of failing.
                other = structured(await call(client, "create_session", name="other"))
                fresh = structured(
                    await call(client, "run_code", code="print(1)", save_notebook=True)
                )
                assert fresh["status"] == "ok" and "Not saved" in " ".join(fresh["notes"])
                await call(client, "close_session", session_id=other["session_id"])
            repairs(disk)

            async def recovered() -> bool:
                return health(server)["status"] == "ok"

            assert await wait_for(recovered, timeout=30), health(server)
            # Recording caught up: every run is in the notebook, in order.
            contents = await client.read_resource(f"notebook://sessions/{sid}")
            nb = json.loads(contents[0].text)
            outputs = ["".join(o.get("text", "")) for c in nb["cells"][1:] for o in c["outputs"]]
            assert outputs == ["ran 2\n", "ran 3\n"]
            await call(client, "close_session", session_id=sid)
