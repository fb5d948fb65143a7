"""notebook_store.py: the notebooks folder, its names, file modes and who may read what."""

from __future__ import annotations

import json
import os

import nbformat
import pytest
from nbformat.v4 import new_code_cell, new_notebook

from kernel_mcp.errors import FileNotFound, InvalidArgument, NotebookExists
from kernel_mcp.files.write import umask_mode
from kernel_mcp.notebooks.model import notebook_text
from kernel_mcp.notebooks.store import NotebookStore


def text(*sources: str) -> str:
    return notebook_text(new_notebook(cells=[new_code_cell(s) for s in sources]))


def test_exports_never_overwrite_unless_asked(tmp_path):
    store = NotebookStore(tmp_path, private_recordings=False)
    path = store.export(text("x = 1"), "report", overwrite=False)
    assert path == (tmp_path / "report.ipynb").resolve()
    with pytest.raises(NotebookExists):
        store.export(text("x = 2"), "report.ipynb", overwrite=False)
    store.export(text("x = 1", "y = 2"), "report", overwrite=True)
    assert len(nbformat.read(path, as_version=4).cells) == 2
    assert store.uri(path) == "notebook://report"


def test_claims_never_reuse_an_earlier_file(tmp_path):
    store = NotebookStore(tmp_path, private_recordings=False)
    first = store.claim("sessions", "same", mode=0o600)
    second = store.claim("sessions", "same", mode=0o600)
    assert (first.name, second.name) == ("same.ipynb", "same-2.ipynb")


@pytest.mark.parametrize("private", [False, True])
def test_exports_and_saved_runs_get_the_umask_mode_recordings_are_private_with_tokens(
    tmp_path, private
):
    store = NotebookStore(tmp_path, private_recordings=private)
    export = store.export(text("1"), "shared", overwrite=False)
    run = store.save_single("code", new_notebook())
    assert export.stat().st_mode & 0o777 == umask_mode()
    assert run.stat().st_mode & 0o777 == umask_mode()
    assert store.recording_mode == (0o600 if private else umask_mode())


def test_listing_skips_hidden_files(tmp_path):
    store = NotebookStore(tmp_path, private_recordings=False)
    store.export(text("1"), "visible", overwrite=False)
    (tmp_path / "sessions").mkdir()
    (tmp_path / "sessions" / ".s.journal").write_text("{}\n")
    (tmp_path / ".hidden.ipynb").write_text("{}")
    assert store.list() == ["visible"]
    assert json.loads(store.read("visible"))["nbformat"] == 4


def test_listing_leaves_out_names_that_are_not_utf8(tmp_path):
    # No resource URI can carry one; listing them would fail every resources/list.
    store = NotebookStore(tmp_path, private_recordings=False)
    store.export(text("1"), "visible", overwrite=False)
    with open(os.path.join(os.fsencode(tmp_path), b"odd\xff.ipynb"), "w") as handle:
        handle.write("{}")
    os.makedirs(os.path.join(os.fsencode(tmp_path), b"runs\xfe"))
    with open(os.path.join(os.fsencode(tmp_path), b"runs\xfe/x.ipynb"), "w") as handle:
        handle.write("{}")
    assert store.list() == ["visible"]


@pytest.mark.parametrize(
    "name", ["../x", "/etc/passwd", "a/b", ".hidden", "", "x" * 70, "sub/../../x"]
)
def test_export_names_are_validated(tmp_path, name):
    store = NotebookStore(tmp_path, private_recordings=False)
    with pytest.raises(InvalidArgument):
        store.export_path(name)


@pytest.mark.parametrize("name", ["../secret", "sessions/../../x", "/abs", "a/b/c"])
def test_reading_cannot_leave_the_folder(tmp_path, name):
    store = NotebookStore(tmp_path / "nb", private_recordings=False)
    (tmp_path / "secret.ipynb").write_text("{}")
    with pytest.raises((InvalidArgument, FileNotFound)):
        store.read(name)


def test_with_tokens_session_recordings_are_readable_by_their_owner_only(tmp_path):
    private = NotebookStore(tmp_path, private_recordings=True)
    assert private.readable("sessions/mine", {"sessions/mine"})
    assert not private.readable("sessions/theirs", {"sessions/mine"})
    assert private.readable("report", set()) and private.readable("runs/code", set())
    shared = NotebookStore(tmp_path, private_recordings=False)
    assert shared.readable("sessions/theirs", set())
