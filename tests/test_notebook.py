"""notebook.py without kernels: cells, parameters, atomic writes, the notebooks folder."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook, new_output

from kernel_mcp.errors import FileNotFound, InvalidArgument, InvalidNotebook, NotebookExists
from kernel_mcp.kernel import Execution
from kernel_mcp.notebook import (
    NotebookStore,
    code_cell,
    inject_parameters,
    notebook_for,
    parse_notebook,
    write_atomically,
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


@pytest.mark.parametrize(
    "parameters", [{"not an identifier": 1}, {"x": float("nan")}, {"x": object()}, {"x": {1, 2}}]
)
def test_bad_parameters_are_refused(parameters):
    with pytest.raises(InvalidArgument):
        inject_parameters(new_notebook(), parameters)


def test_atomic_write_leaves_a_valid_file_and_no_temporaries(tmp_path):
    nb = notebook_for(KERNEL_INFO)
    nb.cells.append(code_cell("print(1)", execution(), "run_code"))
    target = tmp_path / "deep" / "n.ipynb"
    write_atomically(target, nb)
    write_atomically(target, nb)
    assert [p.name for p in target.parent.iterdir()] == ["n.ipynb"]
    nbformat.validate(nbformat.read(target, as_version=4))


@pytest.mark.parametrize("text", ["not json", json.dumps({"cells": "nope"}), "{}"])
def test_invalid_notebooks_are_refused_with_the_reason(text):
    with pytest.raises(InvalidNotebook, match=r"is not a valid notebook: .+"):
        parse_notebook(text, "bad.ipynb")


def test_store_exports_without_overwriting(tmp_path):
    store = NotebookStore(tmp_path)
    recording = store.new_recording("s1", KERNEL_INFO)
    recording.add("x = 1", execution(), "run_code")
    path = store.export(recording, "report", overwrite=False)
    assert path == (tmp_path / "report.ipynb").resolve()
    with pytest.raises(NotebookExists):
        store.export(recording, "report.ipynb", overwrite=False)
    recording.add("y = 2", execution(count=2), "run_code")
    store.export(recording, "report", overwrite=True)
    assert len(nbformat.read(path, as_version=4).cells) == 2
    assert store.uri(path) == "notebook://report"
    assert set(store.list()) == {"report", "sessions/s1"}
    assert "".join(json.loads(store.read("sessions/s1"))["cells"][0]["source"]) == "x = 1"


def test_recordings_never_reuse_an_earlier_file(tmp_path):
    store = NotebookStore(tmp_path)
    first = store.new_recording("same", KERNEL_INFO)
    second = store.new_recording("same", KERNEL_INFO)
    assert first.path != second.path
    assert second.path.name == "same-2.ipynb"


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/b", ".hidden", "", "x" * 70, "sub/../../x"]
)
def test_export_names_are_validated(tmp_path, name):
    store = NotebookStore(tmp_path)
    with pytest.raises(InvalidArgument):
        store.export_path(name)


@pytest.mark.parametrize("name", ["../secret", "sessions/../../x", "/abs", "a/b/c"])
def test_reading_cannot_leave_the_folder(tmp_path, name):
    store = NotebookStore(tmp_path / "nb")
    (tmp_path / "secret.ipynb").write_text("{}")
    with pytest.raises((InvalidArgument, FileNotFound)):
        store.read(name)
