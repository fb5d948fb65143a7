"""Specification of ``kernel_mcp.runner.Runner`` on fake kernels: the domain's front door.

A file runs as ``python file.py`` would (``sys.exit(0)`` is its normal end), a snippet
as a notebook cell; refusals come before any kernel is used; fresh runs beyond
KERNEL_MCP_MAX_FRESH_RUNS wait their turn and each gets a kernel nobody used, shut
down afterwards; a session's runs are recorded in its notebook; a time limit above
the cap says so; a run that outlives its call is owned by the run registry. The same
on real kernels: ``tests/integration/test_runner.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import nbformat
import pytest

from kernel_mcp.config import Settings, load_settings
from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused
from kernel_mcp.runner import Runner, RunOptions
from kernel_mcp.sessions.store import InProcessStore
from tests.unit import fakes
from tests.unit.fakes import FakeBackend, fake_of


@pytest.fixture
def projects(tmp_path: Path) -> Path:
    folder = tmp_path / "projects"
    folder.mkdir()
    (folder / "values.py").write_text("value = 3\nprint('set')\n")
    (folder / "exit0.py").write_text("import sys\nprint('done')\nsys.exit(0)\n")
    (folder / "exit3.py").write_text("import sys\nsys.exit(3)\n")
    return folder


def settings_for(projects: Path, **overrides: Any) -> Settings:
    return load_settings(
        projects_dir=projects, notebooks_dir=projects.parent / "nb", pool_size=0, **overrides
    )


@pytest.fixture
async def running(projects: Path) -> AsyncIterator[tuple[Runner, FakeBackend]]:
    backend = FakeBackend()
    async with Runner(settings_for(projects), backend=backend, store=InProcessStore()) as runner:
        yield runner, backend


async def test_a_fresh_run_gets_a_kernel_nobody_used_and_it_is_shut_down_after(running) -> None:
    runner, backend = running
    first = await runner.run_code("x = 1\nx + 1", owner=None)
    second = await runner.run_code("'x' in globals()", owner=None)

    assert first.execution.outputs[-1]["data"]["text/plain"] == "2"
    assert second.execution.outputs[-1]["data"]["text/plain"] == "False"
    assert len(backend.started) == 2
    await runner.tasks.close(grace=None)  # the shut-downs that need not delay a reply
    assert backend.alive() == []


async def test_fresh_runs_beyond_the_cap_wait_their_turn(projects: Path) -> None:
    release, began = asyncio.Event(), asyncio.Event()
    backend = FakeBackend(fakes.scripted({"slow()": fakes.waits_for(release, started=began)}))
    settings = settings_for(projects, max_fresh_runs=1)
    async with Runner(settings, backend=backend, store=InProcessStore()) as runner:
        slow = asyncio.ensure_future(runner.run_code("slow()", owner=None))
        await asyncio.wait_for(began.wait(), timeout=10)
        quick = asyncio.ensure_future(runner.run_code("'quick'", owner=None))
        for _ in range(20):
            await asyncio.sleep(0)
        assert not quick.done() and backend.asked == 1, "the second waits for the first"
        release.set()
        outcomes = await asyncio.wait_for(asyncio.gather(slow, quick), timeout=10)
    assert [o.execution.status for o in outcomes] == ["ok", "ok"]
    assert backend.asked == 2


async def test_a_file_run_in_a_session_leaves_its_names(running) -> None:
    runner, _ = running
    session = await runner.create_session(owner=None)
    ran = await runner.run_file("values.py", owner=None, session_id=session.id)
    assert ran.file == "values.py" and ran.session_id == session.id
    assert ran.execution.outputs[0]["text"] == "set\n"
    # Like `python file.py`: its set-up (argv, __file__, sys.path) runs silently first.
    preamble = fake_of(session.kernel).silent_codes[-1]
    assert "_kmcp_sys.argv = [" in preamble and "values.py" in preamble
    after = await runner.run_code("value * 2", owner=None, session_id=session.id)
    assert after.execution.outputs[0]["data"]["text/plain"] == "6"


async def test_refusals_happen_before_any_kernel_is_used(running) -> None:
    runner, backend = running
    with pytest.raises(PathRefused):
        await runner.run_file("../x.py", owner=None)
    with pytest.raises(FileNotFound):
        await runner.run_file("missing.py", owner=None)
    with pytest.raises(InvalidArgument):
        await runner.run_code("1", owner=None, timeout=0)
    with pytest.raises(InvalidArgument):
        await runner.run_code("x" * (3 * 1024 * 1024), owner=None)
    with pytest.raises(InvalidArgument, match="not allowed"):
        await runner.run_code("1", owner=None, kernel="no-such-kernelspec")
    assert backend.asked == 0


@pytest.mark.parametrize(("file", "status"), [("exit0.py", "ok"), ("exit3.py", "error")])
async def test_a_file_that_calls_sys_exit_ends_as_python_would(running, file, status) -> None:
    runner, _ = running
    ran = await runner.run_file(file, owner=None)
    assert ran.execution.status == status
    assert any("sys.exit" in note for note in ran.execution.notes)


async def test_a_snippet_that_calls_sys_exit_is_an_error_as_in_a_notebook(running) -> None:
    runner, _ = running
    ran = await runner.run_code("import sys; sys.exit(0)", owner=None)
    assert ran.execution.status == "error" and ran.execution.error["ename"] == "SystemExit"


async def test_a_time_limit_above_the_cap_says_so(projects: Path) -> None:
    backend = FakeBackend()
    settings = settings_for(projects, timeout=10, max_timeout=20)
    async with Runner(settings, backend=backend, store=InProcessStore()) as runner:
        ran = await runner.run_code("1", owner=None, timeout=100)
    assert ran.execution.timeout_s == 20
    assert "timeout 100 s is above PYTHON_MAX_TIMEOUT; 20 s applies." in ran.notes


async def test_a_session_s_runs_are_recorded_in_its_notebook(running) -> None:
    runner, _ = running
    session = await runner.create_session(owner=None, name="recorded")
    ran = await runner.run_code("print('one')", owner=None, session_id=session.id)
    assert ran.notebook_uri == "notebook://sessions/recorded"
    text = await runner.read_notebook(None, "sessions/recorded")
    nb = nbformat.reads(text, as_version=4)
    nbformat.validate(nb)
    assert [cell.source for cell in nb.cells[1:]] == ["print('one')"]
    assert nb.cells[1].outputs[0]["text"] == "one\n"


async def test_a_fresh_run_saved_as_a_notebook_says_where(running) -> None:
    runner, _ = running
    ran = await runner.run_code("6 * 7", owner=None, save_notebook=True)
    assert ran.notebook_path is not None and ran.notebook_path.parent.name == "runs"
    assert ran.notebook_uri == f"notebook://runs/{ran.notebook_path.stem}"
    saved = json.loads(ran.notebook_path.read_text())
    assert saved["cells"][-1]["source"] == "6 * 7"
    assert any(note.startswith("Saved as runs/") for note in ran.notes)


async def test_a_notebook_runs_cell_by_cell_with_its_parameters(running, projects) -> None:
    runner, _ = running
    nb = nbformat.v4.new_notebook()
    nb.cells = [
        nbformat.v4.new_code_cell("n = 1", metadata={"tags": ["parameters"]}),
        nbformat.v4.new_code_cell("n * 10"),
    ]
    (projects / "tenfold.ipynb").write_text(nbformat.writes(nb))
    outcome = await runner.run_notebook("tenfold.ipynb", owner=None, parameters={"n": 4})
    assert outcome.run.status == "ok"
    assert [cell.status for cell in outcome.run.cells] == ["ok", "ok", "ok"]
    assert outcome.run.nb.cells[-1].outputs[0]["data"]["text/plain"] == "40"
    assert outcome.path is not None and outcome.path.name.startswith("tenfold.executed-")


async def test_a_background_run_is_owned_by_the_run_registry(running) -> None:
    runner, _ = running
    request = runner.code_request("21 * 2", _options(background=True))
    run = runner.start_run(request)
    assert runner.runs.get(None, run.id) is run
    await asyncio.wait_for(run.task, timeout=10)  # type: ignore[arg-type]
    assert run.state == "done"
    assert run.outcome.execution.outputs[0]["data"]["text/plain"] == "42"


@pytest.mark.parametrize(
    ("sandboxed", "network", "open_world"),
    [(False, False, True), (True, False, False), (True, True, True)],
)
async def test_the_run_tools_say_open_world_unless_the_sandbox_cuts_the_network(
    projects: Path, sandboxed: bool, network: bool, open_world: bool
) -> None:
    backend = FakeBackend()
    backend.sandboxed = sandboxed
    settings = settings_for(projects, sandbox_network=network)
    runner = Runner(settings, backend=backend, store=InProcessStore())
    try:
        assert runner.open_world is open_world
    finally:
        await runner.close()


def _options(**asked: Any) -> RunOptions:
    return RunOptions(owner=None, **asked)
