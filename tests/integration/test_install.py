"""Installed as a user installs it, started as a client starts it.

The sdist and the wheel are built from this checkout (``uv build``: the wheel is built
from the sdist, so the sdist is complete), the wheel is installed into a new
virtualenv outside the checkout, and ``kernel-mcp config claude-desktop`` says how
to start it. That command is then started as Claude Desktop starts it (working
directory ``/``, an environment of only HOME and PATH, plus the entry's ``env``),
and driven over stdio with the official ``mcp`` SDK's client.

Marked ``install`` (``-m "not install"`` skips it): it resolves the dependencies
from the package index into uv's cache (the first run downloads them).
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import mcp.client.stdio
import pytest
from mcp import ClientSession, StdioServerParameters
from uv import find_uv_bin

from kernel_mcp import __version__
from tests.launchers import ROOT

pytestmark = [pytest.mark.install, pytest.mark.timeout(600)]

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VIEWER_FILES = ("viewer.html", "viewer.js", "viewer.css", "output.css")
#: What a desktop client gives a server it starts, besides the entry's env.
BARE_PATH = "/usr/local/bin:/usr/bin:/bin"


def uv(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [find_uv_bin(), *args], cwd=cwd, capture_output=True, text=True, timeout=540
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return done


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("dist")
    uv("build", "--out-dir", str(out), str(ROOT))
    return out


@pytest.fixture(scope="module")
def venv(dist: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A new virtualenv, outside the checkout, with the wheel installed."""
    where = tmp_path_factory.mktemp("installed") / "venv"
    uv("venv", "--python", sys.executable, str(where))
    (wheel,) = dist.glob("*.whl")
    uv("pip", "install", "--python", str(where / "bin" / "python"), str(wheel))
    return where


def test_the_sdist_and_wheel_carry_the_metadata(dist: Path) -> None:
    (sdist,) = dist.glob("*.tar.gz")
    (wheel,) = dist.glob("*.whl")
    assert wheel.name == f"kernel_mcp-{__version__}-py3-none-any.whl"
    with tarfile.open(sdist) as archive:
        names = {name.partition("/")[2] for name in archive.getnames()}
    assert {"LICENSE", "README.md", "pyproject.toml", "server.json"} <= names
    assert "kernel_mcp/launch/template.py" in names
    assert not [name for name in names if name.startswith("tests/")]
    # The session viewer's page, script and style sheets are package data.
    viewer = {f"kernel_mcp/watch/static/{n}" for n in VIEWER_FILES}
    assert viewer <= names
    with zipfile.ZipFile(wheel) as archive:
        metadata = archive.read(f"kernel_mcp-{__version__}.dist-info/METADATA").decode()
        assert f"kernel_mcp-{__version__}.dist-info/licenses/LICENSE" in archive.namelist()
        assert viewer <= set(archive.namelist())
    headers = metadata.partition("\n\n")[0].splitlines()
    assert f"Version: {__version__}" in headers
    assert "License-Expression: BSD-3-Clause" in headers
    assert "License-File: LICENSE" in headers
    assert any(line.startswith("Project-URL: Repository, ") for line in headers)
    required = {
        line.split()[1].split("<")[0].split(">")[0]
        for line in headers
        if line.startswith("Requires-Dist:") and "extra ==" not in line
    }
    assert {"numpy", "pandas", "matplotlib", "psutil", "fastmcp==4.1.2"} <= required
    json_name = json.loads((ROOT / "server.json").read_text())["name"]
    assert f"mcp-name: {json_name}" in metadata  # the registry reads it from the description


def claude_desktop_entry(venv: Path, home: Path, work: Path) -> dict[str, Any]:
    """What ``kernel-mcp config claude-desktop`` prints, run by a user in ``work``."""
    done = subprocess.run(
        [str(venv / "bin" / "kernel-mcp"), "config", "claude-desktop", "--no-wsl"],
        cwd=work,
        env={"HOME": str(home), "PATH": BARE_PATH},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)["mcpServers"]["kernel-mcp"]


@asynccontextmanager
async def started_as_claude_desktop(
    entry: dict[str, Any], home: Path, monkeypatch: pytest.MonkeyPatch
) -> AsyncIterator[ClientSession]:
    # The SDK would add LOGNAME, SHELL, TERM and USER from this process: a desktop
    # client's environment is barer.
    monkeypatch.setattr(mcp.client.stdio, "get_default_environment", dict)
    params = StdioServerParameters(
        command=entry["command"],
        args=entry["args"],
        env={"HOME": str(home), "PATH": BARE_PATH, **entry.get("env", {})},
        cwd="/",
    )
    with (home.parent / "server-stderr.log").open("w") as errlog:
        async with (
            mcp.client.stdio.stdio_client(params, errlog=errlog) as (read, write),
            ClientSession(read, write) as session,
        ):
            await session.initialize()
            yield session


async def call(session: ClientSession, tool: str, **arguments: Any) -> Any:
    result = await session.call_tool(tool, arguments)
    assert not result.is_error, result
    return result


async def test_the_installed_server_works_as_claude_desktop_starts_it(
    venv: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    work = tmp_path / "work"
    home.mkdir()
    work.mkdir()
    before = set(os.listdir("/"))
    entry = claude_desktop_entry(venv, home, work)
    assert entry["command"] == str(venv / "bin" / "kernel-mcp")
    assert entry["args"] == ["serve", "--stdio"]
    folders = home / "kernel-mcp"
    assert entry["env"] == {
        "PYTHON_PROJECTS_DIR": str(folders / "python_projects"),
        "KERNEL_MCP_NOTEBOOKS_DIR": str(folders / "notebooks"),
    }

    async with started_as_claude_desktop(entry, home, monkeypatch) as session:
        await call(
            session,
            "write_file",
            path="greet.py",
            content="import sys\nprint('hello from', sys.argv[0].rsplit('/', 1)[-1])\n",
        )
        ran = (await call(session, "run_python", file_name="greet.py")).structured_content
        assert ran["stdout"] == "hello from greet.py\n"

        created = (await call(session, "create_session", name="state")).structured_content
        sid = created["session_id"]
        await call(session, "run_code", code="total = 6 * 7", session_id=sid)
        kept = (await call(session, "run_code", code="total", session_id=sid)).structured_content
        assert kept["result"] == "42"
        listed = (await call(session, "list_sessions")).structured_content["sessions"]
        assert [s["sandboxed"] for s in listed] == [True]
        # The sandbox, seen from inside: of the home folder, only the projects folder
        # (bound at its own path); not the notebooks folder, not the README beside it.
        inside = await call(
            session,
            "run_code",
            code=f"import os\nprint(sorted(os.listdir({str(folders)!r})), "
            f"os.path.exists({str(folders / 'notebooks')!r}))",
            session_id=sid,
        )
        assert inside.structured_content["stdout"] == "['python_projects'] False\n"
        await call(session, "close_session", session_id=sid)

        figure = await call(
            session,
            "run_code",
            code="import numpy as np, pandas as pd, matplotlib.pyplot as plt\n"
            "frame = pd.DataFrame({'x': np.arange(5), 'y': np.arange(5) ** 2})\n"
            "frame.plot(x='x', y='y')\nplt.show()\nprint(int(frame.y.sum()))",
        )
        assert figure.structured_content["stdout"] == "30\n"
        images = [block for block in figure.content if block.type == "image"]
        assert len(images) == 1 and images[0].mime_type == "image/png"
        assert base64.b64decode(images[0].data).startswith(PNG_MAGIC)

        info = (await call(session, "server_info")).structured_content
        assert info["version"] == __version__
        assert info["projects"]["path"] == str(folders / "python_projects")

    assert (folders / "python_projects" / "greet.py").is_file()
    assert (folders / "notebooks" / "sessions" / "state.ipynb").is_file()
    assert (folders / "README.md").is_file()
    assert set(os.listdir("/")) == before
    log = (tmp_path / "server-stderr.log").read_text()
    assert "sandbox:   on (" in log, log
    assert "Traceback" not in log, log
