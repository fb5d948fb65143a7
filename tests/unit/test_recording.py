"""recording.py: a session's runs as an append-only journal and the notebook rebuilt from it.

Specified on real files: what a crash, a torn line, a file turned into a folder
or a planted symlink leave behind, and that a run whose cell the disk refused
is kept and written once the disk takes it again.
"""

from __future__ import annotations

import asyncio
import json
import os
from datetime import datetime, timedelta, timezone
from pathlib import Path

import nbformat
import pytest
from nbformat.v4 import new_output

from kernel_mcp.errors import RecordingError
from kernel_mcp.kernels.execution import Execution
from kernel_mcp.notebooks import recording as recording_module
from kernel_mcp.notebooks.model import SETUP_TAG, code_cell
from kernel_mcp.notebooks.recording import Recorder, Recording, journal_path
from kernel_mcp.notebooks.store import NotebookStore

KERNEL_INFO = {"language_info": {"name": "python", "version": "3.11.7"}}


def cell(text: str, count: int = 1) -> dict:
    start = datetime(2026, 1, 1, tzinfo=timezone.utc)
    execution = Execution(
        status="ok",
        outputs=[new_output("stream", name="stdout", text=text)],
        execution_count=count,
        error=None,
        started_at=start,
        ended_at=start + timedelta(seconds=1),
        duration_s=1.0,
        timeout_s=30,
    )
    return code_cell(f"print({text!r})", execution, "run_code")


@pytest.fixture
def store(tmp_path: Path) -> NotebookStore:
    return NotebookStore(tmp_path / "notebooks", private_recordings=False)


@pytest.fixture
def recorder(store: NotebookStore, tmp_path: Path) -> Recorder:
    projects = tmp_path / "projects"
    projects.mkdir()
    return Recorder(store, projects_dir=projects)


def outputs_of(path: Path) -> list[str]:
    nb = nbformat.read(path, as_version=4)
    nbformat.validate(nb)
    assert nb.cells[0].metadata["tags"] == [SETUP_TAG]
    return [c.outputs[0]["text"] for c in nb.cells[1:]]


def test_runs_are_journal_lines_and_the_rebuilt_notebook_holds_them_in_order(recorder):
    rec = recorder.create("demo", KERNEL_INFO)
    assert rec.path is not None and rec.path.name == "demo.ipynb"
    assert outputs_of(rec.path) == []  # the file exists from the start
    for n in range(3):
        recorder.append(rec, cell(f"run {n}\n", n + 1))
    journal = journal_path(rec.path).read_text().splitlines()
    assert len(journal) == 4  # the header, then one line per run
    assert json.loads(journal[0])["kernel_mcp_journal"] == 1
    rec.rebuild()
    assert outputs_of(rec.path) == ["run 0\n", "run 1\n", "run 2\n"]
    meta = nbformat.read(rec.path, as_version=4).metadata
    assert meta["kernelspec"]["name"] == "python3" and meta["kernel_mcp"]["runs"] == 3


def test_an_append_writes_one_line_and_leaves_the_notebook_alone(recorder):
    rec = recorder.create("quick", KERNEL_INFO)
    for n in range(50):
        recorder.append(rec, cell(f"{n}\n"))
    before = rec.path.stat()
    journal_before = journal_path(rec.path).stat().st_size
    recorder.append(rec, cell("one more\n"))
    after = rec.path.stat()
    # The notebook is not rewritten per run: that is the rebuild's job, off the hot path.
    assert (after.st_ino, after.st_mtime_ns, after.st_size) == (
        before.st_ino,
        before.st_mtime_ns,
        before.st_size,
    )
    added = journal_path(rec.path).stat().st_size - journal_before
    assert added == len(json.dumps(cell("one more\n"), sort_keys=True, separators=(",", ":"))) + 1


def test_after_a_crash_recovery_rebuilds_every_stale_notebook(store, recorder, tmp_path):
    rec = recorder.create("crashed", KERNEL_INFO)
    recorder.append(rec, cell("one\n"))
    recorder.append(rec, cell("two\n"))
    rec.close()  # no rebuild: the process died here
    assert outputs_of(rec.path) == []
    fresh = Recorder(store, projects_dir=tmp_path / "projects")
    assert fresh.recover() == ["sessions/crashed"]
    assert outputs_of(rec.path) == ["one\n", "two\n"]
    assert fresh.recover() == []  # current notebooks are left alone


def test_a_torn_last_line_is_skipped_and_the_next_append_starts_a_new_line(store, recorder):
    rec = recorder.create("torn", KERNEL_INFO)
    recorder.append(rec, cell("kept\n"))
    rec.close()
    with journal_path(rec.path).open("ab") as journal:
        journal.write(b'{"cell_type":"code","sou')  # the power went out mid-write
    rec.rebuild()
    assert outputs_of(rec.path) == ["kept\n"]
    again = Recording(store, stem="torn", path=rec.path)
    again.append(cell("after\n"))
    again.rebuild()
    assert outputs_of(rec.path) == ["kept\n", "after\n"]


def test_lone_surrogates_in_outputs_are_kept_as_json_escapes(recorder):
    rec = recorder.create("odd", KERNEL_INFO)
    recorder.append(rec, cell("err-\udfff-end\n"))
    rec.rebuild()
    raw = rec.path.read_bytes()
    raw.decode("utf-8")  # valid UTF-8 on disk
    assert json.loads(raw)["cells"][1]["outputs"][0]["text"] == "err-\udfff-end\n"


def test_a_journal_the_disk_refuses_keeps_its_runs_and_catches_up_in_order(recorder):
    rec = recorder.create("blocked", KERNEL_INFO)
    recorder.append(rec, cell("before\n"))
    rec.close()
    journal = journal_path(rec.path)
    saved = journal.read_bytes()
    journal.unlink()
    journal.mkdir()  # the journal's name is now a folder: every write fails
    for text in ("during 1\n", "during 2\n"):
        with pytest.raises(RecordingError) as refused:
            recorder.append(rec, cell(text))
    message = str(refused.value)
    assert "sessions/blocked" in message and "2 run(s) wait" in message
    assert str(recorder.store.root) not in message  # no absolute server paths
    health = recorder.health()
    assert not health.ok and health.waiting_runs == 2 and "sessions/blocked" in health.failing
    journal.rmdir()
    journal.write_bytes(saved)  # the disk can be written again
    rec.sync()
    rec.rebuild()
    assert outputs_of(rec.path) == ["before\n", "during 1\n", "during 2\n"]
    assert recorder.health().ok


def test_a_notebook_replaced_by_a_folder_is_reported_and_rebuilt_once_it_is_gone(recorder):
    rec = recorder.create("victim", KERNEL_INFO)
    rec.path.unlink()
    rec.path.mkdir()
    recorder.append(rec, cell("still recorded\n"))  # the journal takes it
    rec.rebuild()
    assert rec.failure is not None and "folder" in rec.failure
    assert str(recorder.store.root) not in rec.failure
    assert not recorder.health().ok
    rec.path.rmdir()
    rec.rebuild()
    assert rec.failure is None and outputs_of(rec.path) == ["still recorded\n"]


def test_runs_kept_in_memory_are_bounded(recorder, monkeypatch):
    monkeypatch.setattr(recording_module, "MAX_PENDING_LINES", 3)
    rec = recorder.create("bounded", KERNEL_INFO)
    journal = journal_path(rec.path)
    rec.close()
    journal.unlink()
    journal.mkdir()
    for n in range(5):
        with pytest.raises(RecordingError):
            recorder.append(rec, cell(f"{n}\n"))
    assert rec.waiting == 3 and rec.dropped == 2
    assert "2 older run(s) could not be kept" in rec.failure_note()


def test_a_symlink_planted_as_the_journal_is_not_followed(store, recorder, tmp_path):
    rec = recorder.create("planted", KERNEL_INFO)
    rec.close()
    target = tmp_path / "victim.txt"
    target.write_text("untouched\n")
    journal = journal_path(rec.path)
    journal.unlink()
    journal.symlink_to(target)
    with pytest.raises(RecordingError):
        Recording(store, stem="planted", path=rec.path).append(cell("x\n"))
    assert target.read_text() == "untouched\n"


def test_two_writers_of_one_journal_rebuild_to_the_same_notebook(store, recorder, tmp_path):
    # Two replicas serving one shared session, one call at a time under its lease.
    first = recorder.create("shared", KERNEL_INFO)
    other = Recorder(store, projects_dir=tmp_path / "projects").attach("sessions/shared.ipynb")
    recorder.append(first, cell("a\n"))
    other.append(cell("b\n"))
    recorder.append(first, cell("c\n"))
    first.rebuild()
    assert outputs_of(first.path) == ["a\n", "b\n", "c\n"]
    assert other.text() == first.text()


async def test_close_writes_and_rebuilds_every_live_recording(recorder):
    await recorder.start()
    rec = recorder.create("closing", KERNEL_INFO)
    recorder.append(rec, cell("last\n"))
    await recorder.close()
    assert outputs_of(rec.path) == ["last\n"]


async def test_the_background_task_rebuilds_a_growing_notebook(recorder):
    recorder.rebuild_interval = 0.05
    await recorder.start()
    try:
        rec = recorder.create("background", KERNEL_INFO)
        recorder.append(rec, cell("soon\n"))
        deadline = asyncio.get_running_loop().time() + 20
        while "soon" not in rec.path.read_text():
            assert asyncio.get_running_loop().time() < deadline, "never rebuilt"
            await asyncio.sleep(0.05)
        assert outputs_of(rec.path) == ["soon\n"]
    finally:
        await recorder.close()


def test_recordings_follow_the_store_mode(tmp_path):
    private = NotebookStore(tmp_path / "p", private_recordings=True)
    rec = Recorder(private, projects_dir=tmp_path).create("secret", KERNEL_INFO)
    assert rec.path.stat().st_mode & 0o777 == 0o600
    assert journal_path(rec.path).stat().st_mode & 0o777 == 0o600
    assert os.path.exists(rec.path)


def test_a_notebook_a_power_cut_left_empty_is_rebuilt_even_if_it_looks_newer(store, recorder):
    # Rebuilds are not fsynced (the journal is the durable copy): after a power cut the
    # renamed file may be empty, with a fresh mtime. Recovery reads, not the clock.
    rec = recorder.create("powercut", KERNEL_INFO)
    recorder.append(rec, cell("kept\n"))
    rec.sync()
    rec.close()
    rec.path.write_bytes(b"")
    os.utime(rec.path)  # newer than the journal
    assert Recorder(store, projects_dir=store.root).recover() == ["sessions/powercut"]
    assert outputs_of(rec.path) == ["kept\n"]
