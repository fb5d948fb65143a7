"""The folders a stdio server uses when started as a desktop client starts it: from ``/``,
with only HOME and PATH (the rules themselves: ``tests/unit/test_folders.py``)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def test_a_stdio_server_started_in_slash_says_where_its_files_go(tmp_path: Path) -> None:
    """As a desktop client starts it: working directory /, only HOME and PATH."""
    home = tmp_path / "home"
    home.mkdir()
    before = set(os.listdir("/"))
    done = subprocess.run(
        [sys.executable, "-m", "kernel_mcp", "serve", "--stdio", "--log-level", "warning"],
        cwd="/",
        env={"HOME": str(home), "PATH": os.environ["PATH"]},
        input="",
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""  # stdout is the protocol's
    base = home / "kernel-mcp"
    assert f"projects:  {base / 'python_projects'} (no folder setting, and / has no" in (
        done.stderr
    )
    assert f"notebooks: {base / 'notebooks'} (" in done.stderr
    assert "sandbox:   on (" in done.stderr or "sandbox:   off (" in done.stderr
    assert (base / "README.md").is_file()
    assert set(os.listdir("/")) == before
