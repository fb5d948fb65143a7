"""Runner: the domain's front door, without MCP, with real kernels.

The rest of its specification runs on the fake backend in ``tests/unit/test_runner.py``.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path

import pytest

from kernel_mcp.config import load_settings
from kernel_mcp.deployment import runner_for
from kernel_mcp.errors import ConfigError
from kernel_mcp.runner import Runner

STAMP = "import time; t0 = time.time(); time.sleep(0.4); print(t0, time.time())"


@pytest.fixture(scope="module")
async def runner(tmp_path_factory: pytest.TempPathFactory) -> AsyncIterator[Runner]:
    tmp: Path = tmp_path_factory.mktemp("runner")
    (tmp / "projects").mkdir()
    (tmp / "projects" / "args.py").write_text("import sys\nprint(sys.argv)\nvalue = 3\n")
    (tmp / "projects" / "exit0.py").write_text("import sys\nprint('done')\nsys.exit(0)\n")
    (tmp / "projects" / "exit3.py").write_text("import sys\nsys.exit(3)\n")
    settings = load_settings(
        projects_dir=tmp / "projects", notebooks_dir=tmp / "nb", pool_size=1, max_fresh_runs=1
    )
    async with runner_for(settings) as running:
        yield running


async def test_fresh_runs_beyond_the_cap_wait_their_turn(runner):
    first, second = await asyncio.gather(
        runner.run_code(STAMP, owner=None), runner.run_code(STAMP, owner=None)
    )
    spans = sorted(
        tuple(map(float, o.execution.outputs[0]["text"].split())) for o in (first, second)
    )
    assert spans[0][1] <= spans[1][0], "two fresh runs overlapped with max_fresh_runs=1"


async def test_a_file_run_in_a_session_leaves_its_names(runner):
    session = await runner.create_session(owner=None)
    try:
        ran = await runner.run_file("args.py", owner=None, session_id=session.id)
        assert ran.file == "args.py"
        assert ran.execution.outputs[0]["text"].endswith("args.py']\n")
        after = await runner.run_code("value * 2", owner=None, session_id=session.id)
        assert after.execution.outputs[0]["data"]["text/plain"] == "6"
    finally:
        await runner.sessions.close_session(None, session.id)


@pytest.mark.parametrize(("file", "status"), [("exit0.py", "ok"), ("exit3.py", "error")])
async def test_a_file_that_calls_sys_exit_ends_as_python_would(runner, file, status):
    ran = await runner.run_file(file, owner=None)
    assert ran.execution.status == status
    assert any("sys.exit" in note for note in ran.execution.notes)
    # No hint from IPython that names its own file on the server.
    assert not [o for o in ran.execution.outputs if o.get("name") == "stderr"]


async def test_a_snippet_that_calls_sys_exit_is_an_error_as_in_a_notebook(runner):
    ran = await runner.run_code("import sys; sys.exit(0)", owner=None)
    assert ran.execution.status == "error" and ran.execution.error["ename"] == "SystemExit"


@pytest.mark.parametrize(
    ("sandbox", "network", "open_world"),
    [("off", False, True), ("on", False, False), ("on", True, True)],
)
async def test_the_run_tools_say_open_world_unless_the_sandbox_cuts_the_network(
    tmp_path: Path, sandbox: str, network: bool, open_world: bool
) -> None:
    settings = load_settings(
        projects_dir=tmp_path,
        notebooks_dir=tmp_path / "nb",
        pool_size=0,
        sandbox=sandbox,
        sandbox_network=network,
    )
    try:
        runner = runner_for(settings)
    except ConfigError as exc:
        pytest.skip(f"this machine cannot sandbox: {exc}")
    try:
        assert runner.open_world is open_world
    finally:
        await runner.close()
