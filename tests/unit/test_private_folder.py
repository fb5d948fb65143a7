"""Specification of ``kernel_mcp.backends.private_folder``: one folder per server, and
the folders of servers that died are removed by the next one to start."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kernel_mcp.backends.private_folder import make_private_folder, sweep_dead_servers


def dead_pid() -> int:
    """The pid of a process that has ended (and been reaped)."""
    process = subprocess.Popen([sys.executable, "-c", "pass"])
    process.wait()
    return process.pid


def test_the_folder_is_private_and_named_after_this_server(tmp_path: Path) -> None:
    folder = make_private_folder(tmp_path, sockets=False)
    assert folder.parent == tmp_path.resolve()
    assert folder.name.startswith(f"kernel-mcp-{os.getpid()}-")
    assert folder.stat().st_mode & 0o777 == 0o700


def test_a_dead_servers_folder_is_removed_when_the_next_server_starts(tmp_path: Path) -> None:
    left = tmp_path / f"kernel-mcp-{dead_pid()}-abc123"
    (left / "kernel-1").mkdir(parents=True)
    (left / "kernel-1" / "connection.json").write_text("{}")
    mine = make_private_folder(tmp_path, sockets=False)
    assert not left.exists()
    assert mine.is_dir()


def test_live_servers_old_names_files_and_links_are_left_alone(tmp_path: Path) -> None:
    dead = dead_pid()
    live = tmp_path / f"kernel-mcp-{os.getppid()}-live"  # the process that started the tests
    old_style = tmp_path / "kernel-mcp-x1y2z3"  # an older version's name: no pid
    not_a_folder = tmp_path / f"kernel-mcp-{dead}-file"
    target = tmp_path / "elsewhere"
    link = tmp_path / f"kernel-mcp-{dead}-link"
    unrelated = tmp_path / f"other-{dead}-folder"
    for folder in (live, old_style, target, unrelated):
        folder.mkdir()
        (folder / "kept").write_text("kept")
    not_a_folder.write_text("a file")
    link.symlink_to(target)

    assert sweep_dead_servers(tmp_path) == []
    for kept in (live, old_style, target, unrelated):
        assert (kept / "kept").read_text() == "kept"
    assert not_a_folder.is_file() and link.is_symlink()


def test_a_missing_parent_sweeps_nothing(tmp_path: Path) -> None:
    assert sweep_dead_servers(tmp_path / "missing") == []


def test_a_parent_too_long_for_kernel_sockets_is_replaced_by_tmp(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    folder = make_private_folder(deep)
    try:
        assert folder.parent == Path("/tmp")
    finally:
        folder.rmdir()
    # Without sockets (kernels over TCP), any parent will do.
    folder = make_private_folder(deep, sockets=False)
    assert folder.parent == deep
