"""Runs as notebooks over real transports: recording, export, resources, run_notebook,
and a SIGKILLed server leaving a valid notebook behind."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import signal
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

from kernel_mcp.cli import main
from tests.helpers import (
    call,
    client_for,
    raw_tool_call,
    running_server,
    structured,
    text_of,
    wait_for,
)
from tests.launchers import alive, wait_until

pytestmark = pytest.mark.transport


def write_notebook(
    path: Path, sources: list[str], tags: dict[int, list[str]] | None = None
) -> None:
    nb = new_notebook(cells=[new_markdown_cell("# A notebook")])
    for index, source in enumerate(sources, start=1):
        cell = new_code_cell(source)
        if tags and index in tags:
            cell.metadata["tags"] = tags[index]
        nb.cells.append(cell)
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    nbformat.write(nb, path)


@pytest.fixture(scope="module")
def projects(server) -> Path:
    folder = Path(server.env["PYTHON_PROJECTS_DIR"])
    write_notebook(
        folder / "params.ipynb",
        ["n = 1\nlabel = 'default'", "print(label, n * 10)"],
        tags={1: ["parameters"]},
    )
    write_notebook(folder / "fails.ipynb", ["a = 1", "b = 2", "1 / 0", "c = 3", "d = 4"])
    write_notebook(
        folder / "skips.ipynb",
        ["x = 1", "raise SystemExit('must not run')", "x + 1"],
        tags={2: ["skip-execution"]},
    )
    (folder / "broken.ipynb").write_text('{"cells": 3}')
    return folder


async def read_notebook(client, uri: str) -> nbformat.NotebookNode:
    contents = await client.read_resource(uri)
    nb = nbformat.reads(contents[0].text, as_version=4)
    nbformat.validate(nb)
    return nb


async def test_session_runs_are_recorded_as_a_valid_notebook(client):
    sid = structured(await call(client, "create_session"))["session_id"]
    try:
        await call(client, "run_code", code="x = 21\nprint('x set')", session_id=sid)
        await call(client, "run_python", file_name="hello_world.py", session_id=sid)
        await call(client, "run_python", file_name="../outside/secret.py", session_id=sid)
        await call(client, "run_code", code="1 / 0", session_id=sid)
        last = structured(await call(client, "run_code", code="x * 2", session_id=sid))
        assert last["notebook"] == f"notebook://sessions/{sid}"
        nb = await read_notebook(client, f"notebook://sessions/{sid}")
    finally:
        await call(client, "close_session", session_id=sid)
    assert len(nb.cells) == 5  # the set-up cell, then the runs; the refused call is not recorded
    setup, first, hello, error, result = nb.cells
    assert setup.metadata["tags"] == ["kernel-mcp-setup"] and setup.execution_count is None
    assert first.source == "x = 21\nprint('x set')"
    assert first.outputs[0]["text"] == "x set\n"
    assert hello.source.startswith("_kmcp_file('hello_world.py')") and "print(" in hello.source
    assert [c.execution_count for c in nb.cells[1:]] == [1, 2, 3, 4]
    assert error.metadata["kernel_mcp"]["status"] == "error"
    assert error.outputs[0]["ename"] == "ZeroDivisionError"
    assert any(
        "\x1b[" in line for line in error.outputs[0]["traceback"]
    )  # raw, as Jupyter keeps it
    assert result.outputs[0]["data"]["text/plain"] == "42"
    assert {"tool", "status", "started", "ended"} <= set(result.metadata["kernel_mcp"])
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"]["name"] == "python"


async def test_export_and_reexecute_with_nbclient_gives_the_same_text(client, server):
    projects = Path(server.env["PYTHON_PROJECTS_DIR"])
    (projects / "data").mkdir(exist_ok=True)
    (projects / "data" / "values.txt").write_text("3 1 2\n")
    (projects / "load_values.py").write_text(
        "import pathlib, sys\n"
        "values = [int(v) for v in open('data/values.txt').read().split()]\n"
        "print(pathlib.Path(__file__).name, sys.argv[0] == __file__, sorted(values))\n"
    )
    sid = structured(await call(client, "create_session"))["session_id"]
    name = f"export-{client.kind}"
    try:
        await call(client, "run_python", file_name="load_values.py", session_id=sid)
        await call(client, "run_code", code="sum(values) * 7", session_id=sid)
        exported = structured(
            await call(client, "export_notebook", session_id=sid, name=name, overwrite=True)
        )
        assert exported["cells"] == 2 and exported["uri"] == f"notebook://{name}"
        again = await call(client, "export_notebook", session_id=sid, name=name)
        assert again.is_error and "overwrite" in text_of(again)
        for bad in ("../escape", "/tmp/abs", "a/b"):
            refused = await call(client, "export_notebook", session_id=sid, name=bad)
            assert refused.is_error and "Invalid name" in text_of(refused)
    finally:
        await call(client, "close_session", session_id=sid)
    path = Path(exported["path"])
    assert path.parent == Path(server.env["KERNEL_MCP_NOTEBOOKS_DIR"]).resolve()
    recorded = nbformat.read(path, as_version=4)
    nbformat.validate(recorded)
    rerun = nbformat.read(path, as_version=4)
    # As `jupyter nbconvert --execute notebooks/x.ipynb` runs it: from the notebooks folder,
    # where the relative data path and __file__ only work thanks to the set-up cell.
    NotebookClient(
        rerun, timeout=60, kernel_name="python3", resources={"metadata": {"path": str(path.parent)}}
    ).execute()

    def texts(nb):
        found = []
        for cell in nb.cells:
            for output in cell.outputs:
                found.append(output.get("text") or output.get("data", {}).get("text/plain"))
        return found

    assert texts(rerun) == texts(recorded) == ["load_values.py True [1, 2, 3]\n", "42"]


async def test_figure_round_trips_as_png_in_the_notebook(client):
    sid = structured(await call(client, "create_session"))["session_id"]
    try:
        await call(client, "run_python", file_name="plot_demo.py", session_id=sid)
        nb = await read_notebook(client, f"notebook://sessions/{sid}")
    finally:
        await call(client, "close_session", session_id=sid)
    pngs = [o["data"]["image/png"] for o in nb.cells[1].outputs if "image/png" in o.get("data", {})]
    assert len(pngs) == 1
    assert base64.b64decode(pngs[0]).startswith(b"\x89PNG")


async def test_fresh_run_can_be_saved_as_a_notebook(client):
    result = await call(client, "run_code", code="print('kept')", save_notebook=True)
    report = structured(result)
    assert report["notebook"].startswith("notebook://runs/code")
    nb = await read_notebook(client, report["notebook"])
    assert len(nb.cells) == 2 and nb.cells[1].outputs[0]["text"] == "kept\n"


async def test_resources_list_every_notebook(client):
    await call(client, "run_code", code="1", save_notebook=True)
    uris = {str(resource.uri) for resource in await client.list_resources()}
    assert any(uri.startswith("notebook://runs/code") for uri in uris)
    templates = {t.uri_template for t in await client.list_resource_templates()}
    assert "notebook://sessions/{session_id}" in templates


async def test_run_notebook_with_parameters(client, projects):
    result = await call(
        client, "run_notebook", notebook_path="params.ipynb", parameters={"n": 4, "label": "four"}
    )
    report = structured(result)
    assert not result.is_error and report["status"] == "ok"
    executed = nbformat.read(report["path"], as_version=4)
    tags = [c.metadata.get("tags", []) for c in executed.cells]
    assert tags[1] == ["parameters"] and tags[2] == ["injected-parameters"]
    assert executed.cells[3].outputs[0]["text"] == "four 40\n"
    assert "n = 1" in (projects / "params.ipynb").read_text()  # the source is untouched
    assert Path(report["path"]).parent.name == "runs"


async def test_run_notebook_stops_at_the_first_error(client, projects):
    result = await call(client, "run_notebook", notebook_path="fails.ipynb")
    report = structured(result)
    assert result.is_error and report["status"] == "error"
    statuses = {c["index"]: c["status"] for c in report["cells"]}
    assert statuses == {1: "ok", 2: "ok", 3: "error", 4: "not_run", 5: "not_run"}
    assert report["failed_cell"] == 3
    assert report["error"]["error"]["ename"] == "ZeroDivisionError"
    executed = nbformat.read(report["path"], as_version=4)
    assert executed.cells[4].execution_count is None
    assert executed.cells[4].metadata["kernel_mcp"]["status"] == "not_run"
    tolerant = structured(
        await call(client, "run_notebook", notebook_path="fails.ipynb", allow_errors=True)
    )
    assert [c["status"] for c in tolerant["cells"]] == ["ok", "ok", "error", "ok", "ok"]
    assert tolerant["status"] == "error" and tolerant["failed_cell"] == 3  # still reported


async def test_run_notebook_honours_skip_execution(client, projects):
    report = structured(await call(client, "run_notebook", notebook_path="skips.ipynb"))
    assert [c["status"] for c in report["cells"]] == ["ok", "skipped", "ok"]


async def test_run_notebook_in_a_session_shares_its_state(client, projects):
    sid = structured(await call(client, "create_session"))["session_id"]
    try:
        await call(client, "run_notebook", notebook_path="params.ipynb", session_id=sid)
        report = structured(await call(client, "run_code", code="label", session_id=sid))
        assert report["result"] == "'default'"
    finally:
        await call(client, "close_session", session_id=sid)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("../outside/secret.py", "rule: path_traversal"),
        ("/etc/hosts.ipynb", "rule: outside"),
        ("hello_world.py", "rule: file_type"),
        ("broken.ipynb", "not a valid notebook"),
    ],
)
async def test_run_notebook_refuses_bad_paths_and_files(client, projects, path, expected):
    result = await call(client, "run_notebook", notebook_path=path)
    assert result.is_error
    assert expected in text_of(result)


async def test_sigkill_mid_run_leaves_a_valid_notebook_with_every_completed_run(tmp_path):
    recording = tmp_path / "notebooks" / "sessions" / "durable.ipynb"
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1") as server:
        client = client_for("mcp", server)
        killed_mid_run = False
        with contextlib.suppress(Exception):  # the client's exit fails: its server is gone
            async with client:
                sid = structured(await call(client, "create_session", name="durable"))
                sid = sid["session_id"]
                await call(client, "run_code", code="a = 1\nprint('one')", session_id=sid)
                await call(client, "run_code", code="print('two')", session_id=sid)
                pids = server.kernel_pids()
                running = asyncio.ensure_future(
                    call(client, "run_code", code="while True: pass", session_id=sid)
                )

                async def busy() -> bool:
                    listed = structured(await call(client, "list_sessions"))["sessions"]
                    return any(s["state"] == "busy" for s in listed)

                assert await wait_for(busy, timeout=20)
                server.stop(signal.SIGKILL)
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(running, timeout=30)
                killed_mid_run = not running.done() or running.exception() is not None
    assert killed_mid_run
    # Every completed run is in the journal the moment its reply was sent...
    journal = recording.with_name(".durable.journal").read_text().splitlines()
    assert len(journal) == 3 and "one" in journal[1] and "two" in journal[2]
    # ...and the next server start rebuilds the notebook from it.
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="0"):
        nb = nbformat.read(recording, as_version=4)
    nbformat.validate(nb)
    assert [c.outputs[0]["text"] for c in nb.cells[1:]] == ["one\n", "two\n"]
    # Orphaned kernels notice their parent died and exit by themselves.
    assert wait_until(lambda: not alive(pids), timeout=15)


def test_cli_runs_a_notebook(tmp_path, capsys, monkeypatch):
    projects = tmp_path / "projects"
    projects.mkdir()
    write_notebook(
        projects / "cli.ipynb", ["k = 2", "print('cli says', k * 21)"], tags={1: ["parameters"]}
    )
    monkeypatch.chdir(tmp_path)
    code = main(
        [
            "run",
            "cli.ipynb",
            "--projects-dir",
            str(projects),
            "--notebooks-dir",
            str(tmp_path / "nb"),
            "-p",
            "k=1",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0, out
    assert "status: ok" in out and "executed copy: notebook://runs/cli.executed-" in out
    executed = next((tmp_path / "nb" / "runs").glob("cli.executed-*.ipynb"))
    cells = json.loads(executed.read_text())["cells"]
    assert "".join(cells[-1]["outputs"][0]["text"]) == "cli says 21\n"


async def test_a_notebook_of_15000_cells_gets_a_reply_under_the_cap(client, projects):
    nb = new_notebook(cells=[new_code_cell("1") for _ in range(15_000)])
    for cell in nb.cells:
        cell.metadata["tags"] = ["skip-execution"]
    nb.cells[-1].metadata["tags"] = []
    nb.cells[-1].source = "'last'"
    nb.metadata["kernelspec"] = {
        "name": "python3",
        "display_name": "Python 3",
        "language": "python",
    }
    # Compact, so that the file stays under KERNEL_MCP_MAX_FILE_BYTES.
    (projects / "huge.ipynb").write_text(json.dumps(nb, separators=(",", ":")))
    result = await call(client, "run_notebook", notebook_path="huge.ipynb", timeout=60)
    report = structured(result)
    size = len(json.dumps(report)) + len(text_of(result))
    assert size < 900 * 1024, size  # KERNEL_MCP_MAX_REPLY_BYTES, under the 1 MiB SSE limit
    assert report["status"] == "ok" and report["cells_total"] == 15_000
    assert len(report["cells"]) <= 201 and report["truncated"]
    assert report["cells"][-1] == {
        "index": 14_999,
        "status": "ok",
        "duration_s": pytest.approx(report["cells"][-1]["duration_s"]),
    }


def test_parameters_that_are_not_json_are_refused(server, projects):
    # A client library turns NaN into null; a hand-written request can send the
    # non-standard NaN and Infinity literals, which are not JSON: they are refused.
    for literal in ("NaN", "Infinity", "-Infinity"):
        arguments = '{"notebook_path":"params.ipynb","parameters":{"n":' + literal + "}}"
        answer = raw_tool_call(server, "run_notebook", arguments)
        assert '"isError":true' in answer and "executed copy" not in answer, answer
        assert "is not JSON: NaN and Infinity are not allowed" in answer, answer
