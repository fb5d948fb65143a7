"""Two principals on one server: each has its own projects folder, and its code never
reaches the other's files; the folder has a disk cap. Over a real server with two
tokens, with forked kernels (the default) and with spawned ones.

Each test is a case an outside corpus found on a shared folder: A's code planted a
``.pyc`` (with the mtime and size of B's source) that B's ``run_python`` then ran;
A's code read and changed B's files; a kernel filled the host disk through the
projects folder.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from kernel_mcp.principals import principal_of
from tests.helpers import call, client_for, running_server, structured, text_of
from tests.launchers import ServerProcess

pytestmark = pytest.mark.transport

TOKEN_A = "alice:workspace-token-for-alice-0123456789"
TOKEN_B = "workspace-token-for-bob-9876543210"
BOB = principal_of(TOKEN_B)[0]
MODES = ("fresh", "session")
QUOTA_MB = 8


@pytest.fixture(scope="module", params=("forked", "spawned"))
def server(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[ServerProcess]:
    tmp = tmp_path_factory.mktemp(f"workspaces-{request.param}")
    with running_server(
        tmp,
        KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}",
        KERNEL_MCP_POOL_SIZE="1",
        KERNEL_MCP_PROJECTS_QUOTA_MB=str(QUOTA_MB),
        KERNEL_MCP_FORK_KERNELS="true" if request.param == "forked" else "false",
    ) as started:
        started.projects = tmp / "projects"  # type: ignore[attr-defined]
        yield started


@pytest.fixture(scope="module")
async def alice(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_A.split(":", 1)[1]) as connected:
        yield connected


@pytest.fixture(scope="module")
async def bob(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_B) as connected:
        yield connected


async def run(client: Any, code: str, mode: str, **extra: Any) -> dict[str, Any]:
    arguments: dict[str, Any] = {"code": code, **extra}
    if mode == "session":
        created = structured(await call(client, "create_session"))
        arguments["session_id"] = created["session_id"]
        try:
            return structured(await call(client, "run_code", **arguments))
        finally:
            await call(client, "close_session", session_id=created["session_id"])
    return structured(await call(client, "run_code", **arguments))


def folder_of(server: ServerProcess, principal: str) -> Path:
    return Path(server.projects) / principal  # type: ignore[attr-defined]


async def test_each_principal_works_in_a_folder_of_its_own(
    server: ServerProcess, alice: Any, bob: Any
) -> None:
    written = structured(
        await call(alice, "write_file", path="mine/only.py", content="print('alice')\n")
    )
    assert written["path"] == "mine/only.py"
    assert (folder_of(server, "alice") / "mine" / "only.py").is_file()
    assert "mine/only.py" in structured(await call(alice, "list_files"))["files"]
    assert "mine/only.py" not in structured(await call(bob, "list_files"))["files"]
    refused = await call(bob, "read_file", path="mine/only.py")
    assert refused.is_error and "No file" in text_of(refused)
    refused = await call(bob, "run_python", file_name="mine/only.py")
    assert refused.is_error
    ran = structured(await call(alice, "run_python", file_name="mine/only.py"))
    assert ran["status"] == "ok" and ran["stdout"] == "alice\n"


@pytest.mark.parametrize("mode", MODES)
async def test_a_kernel_sees_only_its_principal_s_folder(
    server: ServerProcess, alice: Any, bob: Any, mode: str
) -> None:
    await call(bob, "write_file", path="bob_secret.txt", content="bob's data\n", overwrite=True)
    bobs = folder_of(server, BOB)
    code = (
        "import os\n"
        "print(os.getcwd())\n"
        f"print(sorted(os.listdir({str(server.projects)!r})))\n"  # type: ignore[attr-defined]
        "try:\n"
        f"    print(open({str(bobs / 'bob_secret.txt')!r}).read())\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
        "try:\n"
        f"    open({str(bobs / 'planted.py')!r}, 'w').write('x = 1')\n"
        "    print('wrote')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    report = await run(alice, code, mode)
    assert report["status"] == "ok", report
    cwd, listing, read, wrote = report["stdout"].splitlines()
    assert cwd == str(folder_of(server, "alice"))
    assert json.loads(listing.replace("'", '"')) == ["alice"]
    assert read.startswith("refused") and wrote.startswith("refused")
    assert not (bobs / "planted.py").exists()
    assert "bob's data" not in json.dumps(report)


@pytest.mark.parametrize("mode", MODES)
async def test_a_planted_pyc_never_changes_what_another_principal_runs(
    server: ServerProcess, alice: Any, bob: Any, mode: str
) -> None:
    await call(bob, "write_file", path="bproj/helper.py", content="VALUE = 'bob'\n", overwrite=True)
    await call(
        bob,
        "write_file",
        path="bproj/main.py",
        content="import helper\nprint('helper says', helper.VALUE)\n",
        overwrite=True,
    )
    # Where Bob's run_python finds it: asked of Bob's own kernel, not assumed.
    where = await run(bob, "import os\nprint(os.path.abspath('bproj/helper.py'))", "fresh")
    helper = Path(where["stdout"].strip())
    assert helper.is_file(), where
    # Alice tries to put compiled code where Bob's import would look for it.
    plant = (
        "import importlib.util, marshal, os\n"
        f"source = {str(helper)!r}\n"
        "code = compile(\"VALUE = 'alice was here'\", source, 'exec')\n"
        "try:\n"
        "    st = os.stat(source)\n"
        "    pyc = importlib.util.cache_from_source(source)\n"
        "    os.makedirs(os.path.dirname(pyc), exist_ok=True)\n"
        "    header = importlib.util.MAGIC_NUMBER + (0).to_bytes(4, 'little')\n"
        "    header += int(st.st_mtime).to_bytes(4, 'little') + st.st_size.to_bytes(4, 'little')\n"
        "    open(pyc, 'wb').write(header + marshal.dumps(code))\n"
        "    print('planted')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)\n"
    )
    planted = await run(alice, plant, mode)
    assert planted["status"] == "ok" and planted["stdout"].startswith("refused"), planted
    ran = structured(await call(bob, "run_python", file_name="bproj/main.py"))
    assert ran["status"] == "ok" and ran["stdout"] == "helper says bob\n", ran


async def test_server_info_tells_each_principal_its_own_folder_and_cap(
    server: ServerProcess, alice: Any, bob: Any
) -> None:
    mine = structured(await call(alice, "server_info"))
    theirs = structured(await call(bob, "server_info"))
    assert mine["projects"]["path"] == str(folder_of(server, "alice"))
    assert theirs["projects"]["path"] == str(folder_of(server, BOB))
    assert mine["projects"]["own"] and theirs["projects"]["own"]
    assert mine["limits"]["projects_quota_mb"] == QUOTA_MB


async def test_write_file_past_the_cap_is_refused_and_says_what_to_do(
    server: ServerProcess, bob: Any
) -> None:
    # Make room whatever earlier tests left.
    for name in os.listdir(folder_of(server, BOB)):
        if name.startswith("filler"):
            os.remove(folder_of(server, BOB) / name)
    chunk = "x" * (1024 * 1024)
    for i in range(QUOTA_MB - 1):
        done = await call(bob, "write_file", path=f"filler{i}.txt", content=chunk)
        assert not done.is_error, text_of(done)
    refused = await call(bob, "write_file", path="filler-over.txt", content=chunk * 2)
    assert refused.is_error
    assert "KERNEL_MCP_PROJECTS_QUOTA_MB" in text_of(refused)
    assert not (folder_of(server, BOB) / "filler-over.txt").exists()
    for i in range(QUOTA_MB - 1):
        os.remove(folder_of(server, BOB) / f"filler{i}.txt")


@pytest.mark.parametrize("mode", MODES)
async def test_a_run_that_fills_the_folder_past_its_cap_is_stopped_and_told_why(
    server: ServerProcess, alice: Any, mode: str
) -> None:
    folder = folder_of(server, "alice")
    # One file may not outgrow the cap at all (RLIMIT_FSIZE), and many files are stopped
    # by the watch, within about a second of writes.
    code = (
        "import os, time\n"
        "os.makedirs('fill', exist_ok=True)\n"
        "try:\n"
        f"    open('fill/one.bin', 'wb').write(b'x' * {(QUOTA_MB + 4) * 2**20})\n"
        "except OSError as exc:\n"
        "    print('one file:', exc.strerror)\n"
        "os.remove('fill/one.bin')\n"
        "i = 0\n"
        "while True:\n"
        "    with open(f'fill/part{i}.bin', 'wb') as f:\n"
        "        f.write(b'y' * 2**20)\n"
        "    i += 1\n"
        "    time.sleep(0.05)\n"
    )
    try:
        report = await run(alice, code, mode, timeout=60)
        assert report["status"] in ("interrupted", "kernel_died"), report
        assert "one file: File too large" in report["stdout"]
        assert any(
            "past" in note and "KERNEL_MCP_PROJECTS_QUOTA_MB" in note for note in report["notes"]
        )
        # It was stopped for going past the cap (by about a second of its writes), and
        # it writes no more: the kernel's loop is over.
        parts = len(list((folder / "fill").iterdir()))
        assert parts > QUOTA_MB - 4
        assert (await run(alice, "print('next')", "fresh"))["stdout"] == "next\n"
        assert len(list((folder / "fill").iterdir())) == parts
        # Over the cap, a run may still delete files.
        cleaned = await run(alice, "import shutil\nshutil.rmtree('fill')\nprint('clean')", mode)
        assert cleaned["status"] == "ok" and cleaned["stdout"] == "clean\n", cleaned
    finally:
        import shutil

        shutil.rmtree(folder / "fill", ignore_errors=True)


async def test_a_shared_folder_is_an_opt_in_that_shares_everything(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tmp = tmp_path_factory.mktemp("shared-projects")
    with running_server(
        tmp,
        KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}",
        KERNEL_MCP_POOL_SIZE="0",
        KERNEL_MCP_PROJECTS_SHARED="true",
    ) as server:
        async with (
            client_for("mcp", server, auth=TOKEN_A.split(":", 1)[1]) as a,
            client_for("mcp", server, auth=TOKEN_B) as b,
        ):
            await call(a, "write_file", path="team.py", content="print('team')\n")
            assert "team.py" in structured(await call(b, "list_files"))["files"]
            ran = structured(await call(b, "run_python", file_name="team.py"))
            assert ran["stdout"] == "team\n"
            assert (tmp / "projects" / "team.py").is_file()
