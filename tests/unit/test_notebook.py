"""notebook.py without kernels: cells, parameters, atomic writes, the re-run set-up cell."""

from __future__ import annotations

import json
import os
import sys
from datetime import datetime, timedelta, timezone

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kernel_mcp.errors import InvalidArgument, InvalidNotebook
from kernel_mcp.files.write import umask_mode
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.notebooks.model import (
    SETUP_TAG,
    code_cell,
    file_cell_source,
    inject_parameters,
    notebook_for,
    parse_notebook,
    setup_cell,
    write_notebook,
)

KERNEL_INFO = {
    "language_info": {
        "name": "python",
        "version": "3.11.7",
        "mimetype": "text/x-python",
        "file_extension": ".py",
    }
}


def execution(status="ok", outputs=None, count=1) -> Execution:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    return Execution(
        status=status,
        outputs=outputs or [],
        execution_count=count,
        error=None,
        started_at=start,
        ended_at=start + timedelta(seconds=1.5),
        duration_s=1.5,
        timeout_s=30,
    )


def test_notebook_metadata_comes_from_kernel_info():
    nb = notebook_for(KERNEL_INFO)
    assert nb.metadata["kernelspec"]["name"] == "python3"
    assert nb.metadata["language_info"]["version"] == "3.11.7"
    nbformat.validate(nb)


def test_code_cell_keeps_outputs_count_and_timing():
    ansi = "\x1b[31mZeroDivisionError\x1b[39m"
    outputs = [
        new_output("stream", name="stdout", text="hi\n"),
        new_output("error", ename="ZeroDivisionError", evalue="x", traceback=[ansi]),
    ]
    cell = code_cell("# f.py\n1/0", execution("error", outputs, count=7), "run_python")
    assert cell.source == "# f.py\n1/0"
    assert cell.execution_count == 7
    assert cell.outputs[1]["traceback"] == [ansi]  # the notebook keeps ANSI: Jupyter renders it
    meta = cell.metadata["kernel_mcp"]
    assert meta["tool"] == "run_python" and meta["status"] == "error"
    assert meta["started"].startswith("2026-01-01T00:00:00") and meta["duration_s"] == 1.5
    nb = notebook_for(KERNEL_INFO)
    nb.cells.append(cell)
    nbformat.validate(nb)


def test_parameters_follow_the_tagged_cell():
    nb = new_notebook(
        cells=[new_markdown_cell("# t"), new_code_cell("a = 1"), new_code_cell("b = 2")]
    )
    nb.cells[1].metadata["tags"] = ["parameters"]
    inject_parameters(nb, {"a": 5, "label": "x", "flags": [True, None], "cfg": {"k": 1.5}})
    injected = nb.cells[2]
    assert injected.metadata["tags"] == ["injected-parameters"]
    namespace: dict[str, object] = {}
    exec(injected.source, namespace)  # the injected cell is plain Python
    assert namespace["a"] == 5 and namespace["flags"] == [True, None]
    assert namespace["cfg"] == {"k": 1.5} and namespace["label"] == "x"
    assert nb.cells[3].source == "b = 2"


def test_parameters_go_first_without_a_tagged_cell():
    nb = new_notebook(cells=[new_code_cell("a = 1")])
    inject_parameters(nb, {"a": 2})
    assert nb.cells[0].metadata["tags"] == ["injected-parameters"]


def test_new_parameters_replace_an_injected_cell_the_notebook_already_has():
    # A notebook papermill (or kernel-mcp) ran before carries its injected values.
    nb = new_notebook(cells=[new_code_cell("a = 1"), new_code_cell("a = 99"), new_code_cell("a")])
    nb.cells[0].metadata["tags"] = ["parameters"]
    nb.cells[1].metadata["tags"] = ["injected-parameters"]
    inject_parameters(nb, {"a": 5})
    assert [c.source for c in nb.cells] == ["a = 1", "# Parameters\na = 5\n", "a"]
    namespace: dict[str, object] = {}
    for cell in nb.cells[:2]:
        exec(cell.source, namespace)
    assert namespace["a"] == 5  # the new value wins


@pytest.mark.parametrize(
    "parameters",
    [
        {"not an identifier": 1},
        {"class": 1},
        {"x": float("nan")},
        {"x": float("inf")},
        {"x": [1, {"y": -float("inf")}]},
        {"x": object()},
        {"x": {1, 2}},
    ],
)
def test_bad_parameters_are_refused(parameters):
    with pytest.raises(InvalidArgument):
        inject_parameters(new_notebook(), parameters)


def test_nan_is_refused_as_not_json():
    with pytest.raises(InvalidArgument, match="NaN and Infinity"):
        inject_parameters(new_notebook(), {"x": float("nan")})


def test_atomic_write_leaves_a_valid_file_and_no_temporaries(tmp_path):
    nb = notebook_for(KERNEL_INFO)
    nb.cells.append(code_cell("print(1)", execution(), "run_code"))
    target = tmp_path / "deep" / "n.ipynb"
    write_notebook(target, nb)
    write_notebook(target, nb)
    assert [p.name for p in target.parent.iterdir()] == ["n.ipynb"]
    nbformat.validate(nbformat.read(target, as_version=4))


@pytest.mark.parametrize("mode", [0o600, 0o644, 0o664])
def test_atomic_write_gives_the_mode_asked_for(tmp_path, mode):
    target = tmp_path / "n.ipynb"
    write_notebook(target, notebook_for(KERNEL_INFO), mode=mode)
    assert target.stat().st_mode & 0o777 == mode


def test_umask_mode_is_what_the_umask_gives_a_new_file(tmp_path):
    probe = tmp_path / "probe"
    probe.touch()
    assert umask_mode() == probe.stat().st_mode & 0o777


def test_atomic_write_into_a_folder_that_is_a_file_raises_oserror(tmp_path):
    (tmp_path / "blocked").write_text("a file, not a folder")
    with pytest.raises(OSError):
        write_notebook(tmp_path / "blocked" / "n.ipynb", notebook_for(KERNEL_INFO))


# --- re-running a recording elsewhere ----------------------------------------------------


def test_setup_cell_moves_to_the_projects_folder_and_runs_files_like_python(tmp_path):
    projects = tmp_path / "projects"
    (projects / "pkg").mkdir(parents=True)
    elsewhere = tmp_path / "notebooks" / "sessions"
    elsewhere.mkdir(parents=True)
    cell = setup_cell(projects, elsewhere)
    assert cell.metadata["tags"] == [SETUP_TAG]
    source = file_cell_source("pkg/main.py", "print(__file__)")
    assert source.splitlines()[0].startswith("_kmcp_file('pkg/main.py')")
    namespace: dict[str, object] = {"__name__": "__main__"}
    cwd, argv, path = os.getcwd(), list(sys.argv), list(sys.path)
    try:
        os.chdir(elsewhere)
        exec(cell.source, namespace)
        assert os.getcwd() == str(projects)
        exec(source.splitlines()[0], namespace)
        assert namespace["__file__"] == str(projects / "pkg" / "main.py")
        assert sys.argv == [str(projects / "pkg" / "main.py")]
        assert sys.path[0] == str(projects / "pkg")
    finally:
        os.chdir(cwd)
        sys.argv[:], sys.path[:] = argv, path


def test_setup_cell_falls_back_to_the_path_relative_to_the_notebook(tmp_path):
    # The projects folder moved with the notebooks (another machine, a copied repo).
    moved = tmp_path / "copy"
    (moved / "projects").mkdir(parents=True)
    (moved / "notebooks").mkdir()
    cell = setup_cell(tmp_path / "gone" / "projects", tmp_path / "gone" / "notebooks")
    cwd = os.getcwd()
    try:
        os.chdir(moved / "notebooks")
        exec(cell.source, {})
        assert os.getcwd() == str(moved / "projects")
    finally:
        os.chdir(cwd)


@pytest.mark.parametrize("text", ["not json", json.dumps({"cells": "nope"}), "{}"])
def test_invalid_notebooks_are_refused_with_the_reason(text):
    with pytest.raises(InvalidNotebook, match=r"is not a valid notebook: .+"):
        parse_notebook(text, "bad.ipynb")
