"""install_packages over a real server with two tokens, from an index the test builds and
serves on loopback (tests/package_index.py): wheels only, per session, read-only to the
session's kernel, which imports them at once and never reaches the index itself.

Forked kernels (the default) throughout; the spawned path is checked once.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.helpers import call, client_for, running_server, structured, text_of, wait_for
from tests.launchers import ServerProcess
from tests.package_index import IndexServer, built_index, serve_index

pytestmark = pytest.mark.transport

TOKEN_A = "alice:packages-token-for-alice-0123456789"
TOKEN_B = "bob:packages-token-for-bob-9876543210"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """The index's folder, and where the sdist's setup.py would write its marker."""
    return built_index(tmp_path_factory.mktemp("index"))


@pytest.fixture(scope="module")
def index(built: tuple[Path, Path]) -> Iterator[IndexServer]:
    with serve_index(built[0]) as server:
        yield server


@contextlib.contextmanager
def start(tmp: Path, index: IndexServer, **settings: str) -> Iterator[Any]:
    """A server whose temporary folder (where its kernels' and sessions' package folders
    are) is ``server.tmpdir``: short, as a kernel's socket paths below it must be."""
    tmpdir = Path(tempfile.mkdtemp(prefix="kmcp-pk-"))
    try:
        with running_server(
            tmp,
            KERNEL_MCP_TOKEN=f"{TOKEN_A},{TOKEN_B}",
            KERNEL_MCP_POOL_SIZE="1",
            KERNEL_MCP_PACKAGE_INDEX=index.url,
            KERNEL_MCP_PACKAGES_CACHE_DIR=str(tmp / "uv"),
            TMPDIR=str(tmpdir),
            **settings,
        ) as started:
            started.tmp, started.tmpdir = tmp, tmpdir
            yield started
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, index: IndexServer) -> Iterator[Any]:
    tmp = tmp_path_factory.mktemp("packages-server")
    with start(tmp, index) as started:
        yield started


@pytest.fixture(scope="module")
async def alice(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_A.split(":", 1)[1]) as connected:
        yield connected


@pytest.fixture(scope="module")
async def bob(server: ServerProcess) -> AsyncIterator[Any]:
    async with client_for("mcp", server, auth=TOKEN_B.split(":", 1)[1]) as connected:
        yield connected


async def new_session(client: Any, name: str | None = None) -> str:
    arguments = {"name": name} if name else {}
    return str(structured(await call(client, "create_session", **arguments))["session_id"])


async def run(client: Any, session_id: str | None, code: str) -> dict[str, Any]:
    arguments: dict[str, Any] = {"code": code}
    if session_id is not None:
        arguments["session_id"] = session_id
    return structured(await call(client, "run_code", **arguments))


IMPORT_APP = "import kmcp_app, kmcp_dep\nprint(kmcp_app.VERSION, kmcp_dep.VERSION)"


async def test_an_install_is_imported_in_the_same_session_without_a_restart(
    alice: Any, index: IndexServer
) -> None:
    session = await new_session(alice)
    before = await run(alice, session, "x = 41\nimport kmcp_app")
    assert before["status"] == "error" and before["error"]["ename"] == "ModuleNotFoundError"

    result = await call(alice, "install_packages", session_id=session, packages=["kmcp-app"])
    assert not result.is_error, text_of(result)
    installed = {p["name"]: p["version"] for p in structured(result)["installed"]}
    assert installed == {"kmcp-app": "1.0", "kmcp-dep": "2.0"}  # the dependency, resolved

    after = await run(alice, session, IMPORT_APP + "\nprint(x + 1)")
    assert after["status"] == "ok", after
    assert after["stdout"] == "1.0 2.0\n42\n"  # the same kernel: its variables are there
    await call(alice, "close_session", session_id=session)


async def test_the_session_kernel_cannot_write_its_packages(alice: Any) -> None:
    session = await new_session(alice)
    await call(alice, "install_packages", session_id=session, packages=["kmcp-dep==1.0"])
    report = await run(
        alice,
        session,
        "import kmcp_dep, os\n"
        "try:\n"
        "    open(kmcp_dep.__file__, 'a').write('x = 1')\n"
        "except OSError as exc:\n"
        "    print('refused', exc.errno)\n"
        "print(kmcp_dep.VERSION)",
    )
    assert report["stdout"] == "refused 30\n1.0\n", report  # EROFS
    await call(alice, "close_session", session_id=session)


async def test_the_packages_are_invisible_to_other_sessions_and_the_other_principal(
    alice: Any, bob: Any
) -> None:
    mine = await new_session(alice)
    await call(alice, "install_packages", session_id=mine, packages=["kmcp-app"])
    assert (await run(alice, mine, IMPORT_APP))["status"] == "ok"
    other = await new_session(alice)
    theirs = await new_session(bob)
    probe = "import kmcp_app"
    for client, session in ((alice, other), (bob, theirs), (alice, None), (bob, None)):
        report = await run(client, session, probe)
        assert report["error"]["ename"] == "ModuleNotFoundError", report
    refused = await call(bob, "install_packages", session_id=mine, packages=["kmcp-dep"])
    assert refused.is_error and "Unknown session" in text_of(refused)
    for client, session in ((alice, mine), (alice, other), (bob, theirs)):
        await call(client, "close_session", session_id=session)


async def test_pinned_versions_install_in_another_session(alice: Any) -> None:
    session = await new_session(alice)
    result = structured(
        await call(alice, "install_packages", session_id=session, packages=["kmcp-dep==1.0"])
    )
    assert [(p["name"], p["version"]) for p in result["installed"]] == [("kmcp-dep", "1.0")]
    assert (await run(alice, session, "import kmcp_dep; print(kmcp_dep.VERSION)"))[
        "stdout"
    ] == "1.0\n"
    await call(alice, "close_session", session_id=session)


async def test_the_packages_are_kept_across_restart_and_removed_by_close(
    server: Any, alice: Any
) -> None:
    session = await new_session(alice)
    await call(alice, "install_packages", session_id=session, packages=["kmcp-app"])
    folders = list(server.tmpdir.glob(f"kernel-mcp-*/{session}"))
    assert len(folders) == 1 and folders[0].is_dir()

    await call(alice, "restart_session", session_id=session)
    after = await run(alice, session, IMPORT_APP)
    assert after["status"] == "ok" and after["stdout"] == "1.0 2.0\n", after

    await call(alice, "close_session", session_id=session)
    assert not folders[0].exists()


async def test_an_already_imported_package_gets_a_restart_note(alice: Any) -> None:
    session = await new_session(alice)
    await call(alice, "install_packages", session_id=session, packages=["kmcp-dep==1.0"])
    assert (await run(alice, session, "import kmcp_dep"))["status"] == "ok"
    result = structured(
        await call(alice, "install_packages", session_id=session, packages=["kmcp-dep==2.0"])
    )
    assert result["restart_needed"] == ["kmcp-dep 2.0"]
    assert result["installed"][0]["replaced"] == "1.0"
    await call(alice, "restart_session", session_id=session)
    report = await run(alice, session, "import kmcp_dep; print(kmcp_dep.VERSION)")
    assert report["stdout"] == "2.0\n"
    await call(alice, "close_session", session_id=session)


async def test_an_sdist_only_package_is_refused_and_its_setup_py_never_runs(
    alice: Any, built: tuple[Path, Path]
) -> None:
    session = await new_session(alice)
    result = await call(alice, "install_packages", session_id=session, packages=["kmcp-sdist-only"])
    assert result.is_error
    assert "needs_build" in text_of(result)
    assert not built[1].exists()
    await call(alice, "close_session", session_id=session)


@pytest.mark.parametrize(
    "item",
    [
        "-e .",
        "-r requirements.txt",
        "--index-url=http://127.0.0.1:1/simple",
        "kmcp-dep --extra-index-url http://127.0.0.1:1/simple",
        "git+https://example.invalid/repo.git",
        "kmcp-dep @ https://example.invalid/kmcp_dep-2.0-py3-none-any.whl",
        "https://example.invalid/kmcp_dep-2.0-py3-none-any.whl",
        "./kmcp-dep",
        "/tmp/kmcp-dep",
        "kmcp-dep\n--pre",
        'kmcp-dep; os_name=="posix" --x',
    ],
)
async def test_every_injection_form_is_refused_before_anything_runs(
    alice: Any, index: IndexServer, item: str
) -> None:
    session = await new_session(alice)
    asked = len(index.requests)
    result = await call(alice, "install_packages", session_id=session, packages=[item])
    assert result.is_error
    assert "(rule: " in text_of(result)
    assert len(index.requests) == asked  # uv never ran
    await call(alice, "close_session", session_id=session)


async def test_the_kernel_still_cannot_reach_the_index(alice: Any, index: IndexServer) -> None:
    session = await new_session(alice)
    await call(alice, "install_packages", session_id=session, packages=["kmcp-dep"])
    report = await run(
        alice,
        session,
        "import socket\n"
        "try:\n"
        f"    socket.create_connection(('127.0.0.1', {index.port}), timeout=5)\n"
        "    print('reached')\n"
        "except OSError as exc:\n"
        "    print('refused', type(exc).__name__)",
    )
    assert report["stdout"].startswith("refused"), report
    await call(alice, "close_session", session_id=session)


async def test_the_session_notebook_records_a_pip_install_cell(server: Any, alice: Any) -> None:
    session = await new_session(alice, "pkgs-notebook")
    await call(alice, "install_packages", session_id=session, packages=["kmcp-app"])
    await run(alice, session, IMPORT_APP)
    await call(alice, "close_session", session_id=session)

    async def recorded() -> bool:
        return any(
            "%pip install kmcp-app" in path.read_text()
            for path in (server.tmp / "notebooks").rglob("pkgs-notebook*.ipynb")
        )

    assert await wait_for(recorded)
    path = next((server.tmp / "notebooks").rglob("pkgs-notebook*.ipynb"))
    cells = json.loads(path.read_text())["cells"]
    sources = ["".join(c["source"]) for c in cells if c["cell_type"] == "code"]
    assert sources[-2:] == ["%pip install kmcp-app", IMPORT_APP]


async def test_the_tool_tells_clients_it_reaches_an_index_and_changes_no_data(
    alice: Any,
) -> None:
    tools = {tool.name: tool for tool in await alice.list_tools()}
    hints = tools["install_packages"].annotations
    assert hints.read_only_hint is False and hints.destructive_hint is False
    assert hints.open_world_hint is True
    assert "installed" in tools["install_packages"].output_schema["properties"]


async def test_spawned_kernels_see_their_packages_too(tmp_path: Path, index: IndexServer) -> None:
    with start(tmp_path, index, KERNEL_MCP_FORK_KERNELS="false") as spawned:
        async with client_for("mcp", spawned, auth=TOKEN_A.split(":", 1)[1]) as client:
            session = await new_session(client)
            await call(client, "install_packages", session_id=session, packages=["kmcp-app"])
            assert (await run(client, session, IMPORT_APP))["stdout"] == "1.0 2.0\n"
            await call(client, "restart_session", session_id=session)
            assert (await run(client, session, IMPORT_APP))["stdout"] == "1.0 2.0\n"
            other = await new_session(client)
            report = await run(client, other, "import kmcp_app")
            assert report["error"]["ename"] == "ModuleNotFoundError"


async def test_pip_install_in_a_session_is_done_by_the_server_and_imports_at_once(
    alice: Any,
) -> None:
    session = await new_session(alice)
    report = await run(alice, session, "%pip install -q kmcp-app\n" + IMPORT_APP)
    assert report["status"] == "ok", report
    assert "Installed kmcp-app 1.0\nInstalled kmcp-dep 2.0\n" in report["stdout"]
    assert "Ignored here: -q" in report["stdout"]
    assert report["stdout"].endswith("1.0 2.0\n")
    await call(alice, "close_session", session_id=session)


async def test_pip_install_name_version_in_another_session(alice: Any) -> None:
    session = await new_session(alice)
    installed = await run(alice, session, "%pip install kmcp-dep==1.0")
    assert installed["stdout"] == "Installed kmcp-dep 1.0\n", installed
    report = await run(alice, session, "import kmcp_dep; print(kmcp_dep.VERSION)")
    assert report["stdout"] == "1.0\n"
    await call(alice, "restart_session", session_id=session)
    assert (await run(alice, session, "import kmcp_dep; print(kmcp_dep.VERSION)"))[
        "stdout"
    ] == "1.0\n"
    await call(alice, "close_session", session_id=session)


@pytest.mark.parametrize(
    ("line", "said"),
    [
        ("%pip install kmcp-sdist-only", "needs_build"),
        ("%pip install kmcp-no-such-project", "not_found"),
        ("%pip install -e .", "rule: option"),
        ("%pip install --index-url http://127.0.0.1:1/simple kmcp-dep", "rule: option"),
        ("%pip uninstall kmcp-dep", "rule: pip_command"),
        ("!pip install kmcp-dep", "install_packages"),
        ("!python -m pip install -q kmcp-dep", "install_packages"),
    ],
)
async def test_a_failed_pip_install_raises_in_the_cell(
    alice: Any, built: tuple[Path, Path], line: str, said: str
) -> None:
    session = await new_session(alice)
    report = await run(alice, session, line + "\nprint('not reached')")
    assert report["status"] == "error", report
    assert said in report["error"]["evalue"], report
    assert "not reached" not in report["stdout"]
    assert not built[1].exists()
    await call(alice, "close_session", session_id=session)


@pytest.mark.parametrize(
    ("line", "said"),
    [("%pip install kmcp-dep", "create_session"), ("!pip install kmcp-dep", "install_packages")],
)
async def test_pip_in_a_fresh_run_fails_at_once_and_says_what_to_do(
    alice: Any, line: str, said: str
) -> None:
    report = await run(alice, None, line)
    assert report["status"] == "error", report
    assert said in report["error"]["evalue"], report


async def test_an_install_reports_its_progress(alice: Any) -> None:
    messages: list[str] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        messages.append(message or "")

    session = await new_session(alice)
    result = await alice.call_tool(
        "install_packages",
        {"session_id": session, "packages": ["kmcp-extras[fast]"]},
        progress_handler=on_progress,
    )
    assert [p["name"] for p in result.structured_content["installed"]] == [
        "kmcp-dep",
        "kmcp-extras",
    ]
    assert any("Installed" in m or "Resolved" in m for m in messages), messages
    await call(alice, "close_session", session_id=session)


async def test_installs_turned_off_are_refused_by_the_tool_and_by_pip(
    tmp_path: Path, index: IndexServer
) -> None:
    with start(tmp_path, index, KERNEL_MCP_PACKAGES="false") as off:
        async with client_for("mcp", off, auth=TOKEN_A.split(":", 1)[1]) as client:
            session = await new_session(client)
            result = await call(client, "install_packages", session_id=session, packages=["x"])
            assert result.is_error and "KERNEL_MCP_PACKAGES=false" in text_of(result)
            report = await run(client, session, "%pip install kmcp-dep")
            assert "KERNEL_MCP_PACKAGES=false" in report["error"]["evalue"], report


async def test_a_replaced_kernel_sees_the_session_packages(alice: Any) -> None:
    """A kernel that died is replaced at the next call; the new one imports them too."""
    session = await new_session(alice)
    await call(alice, "install_packages", session_id=session, packages=["kmcp-app"])
    died = await run(alice, session, "import os; os._exit(1)")
    assert died["status"] == "kernel_died", died
    after = await run(alice, session, IMPORT_APP)
    assert after["status"] == "ok" and after["stdout"] == "1.0 2.0\n", after
    await call(alice, "close_session", session_id=session)


async def test_pip_install_in_a_notebook_run_in_a_session(alice: Any) -> None:
    cells = [
        {"cell_type": "code", "metadata": {}, "source": src, "outputs": [], "execution_count": None}
        for src in ("%pip install kmcp-dep==1.0", "import kmcp_dep\nprint(kmcp_dep.VERSION)")
    ]
    notebook = {"cells": cells, "metadata": {}, "nbformat": 4, "nbformat_minor": 5}
    written = await call(
        alice, "write_file", path="pip_cells.ipynb", content=json.dumps(notebook), overwrite=True
    )
    assert not written.is_error, text_of(written)
    session = await new_session(alice)
    report = structured(
        await call(alice, "run_notebook", notebook_path="pip_cells.ipynb", session_id=session)
    )
    assert report["status"] == "ok", report
    assert [c["status"] for c in report["cells"]] == ["ok", "ok"]  # the import too
    after = await run(alice, session, "import kmcp_dep; print(kmcp_dep.VERSION)")
    assert after["stdout"] == "1.0\n", after
    await call(alice, "close_session", session_id=session)
