"""The kernel-mcp command: run, tools, serve's refusals; tests call ``main(argv) -> int``."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import pytest

from kernel_mcp.cli import main
from tests.helpers import SAMPLES, running_server

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def projects(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "projects"
    folder.mkdir()
    for name in ("hello_world.py", "error_test.py", "plot_demo.py"):
        shutil.copy(SAMPLES / name, folder / name)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("PYTHON_PROJECTS_DIR", str(folder))
    monkeypatch.setenv("KERNEL_MCP_NOTEBOOKS_DIR", str(tmp_path / "nb"))
    return folder


def test_run_prints_the_reply_and_exits_zero(projects, capsys):
    assert main(["run", "hello_world.py"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("status: ok · hello_world.py")
    assert "Hello, World!" in out


def test_run_exits_non_zero_when_the_run_failed(projects, capsys):
    assert main(["run", "error_test.py"]) == 1
    assert "ZeroDivisionError" in capsys.readouterr().out


def test_run_accepts_a_path_from_the_current_folder(projects, capsys):
    assert main(["run", "projects/hello_world.py"]) == 0
    assert "Hello, World!" in capsys.readouterr().out


def test_run_saves_images_and_names_them(projects, tmp_path, capsys):
    images = tmp_path / "figures"
    assert main(["run", "plot_demo.py", "--images-dir", str(images)]) == 0
    out = capsys.readouterr().out
    saved = sorted(images.glob("*.png"))
    assert [p.name for p in saved] == ["plot_demo-1.png"]
    assert f"[image saved: {saved[0]}]" in out
    assert saved[0].read_bytes().startswith(PNG_MAGIC)


def test_refused_paths_exit_non_zero(projects, capsys):
    assert main(["run", "../../etc/passwd.py"]) == 1
    assert "rule:" in capsys.readouterr().out


def test_tools_lists_every_tool(projects, capsys):
    assert main(["tools"]) == 0
    names = [line.split(":")[0] for line in capsys.readouterr().out.splitlines()]
    assert {"run_python", "run_code", "list_files", "create_session", "run_notebook"} <= set(names)


def test_run_and_tools_against_a_running_server(tmp_path, capsys):
    with running_server(tmp_path, KERNEL_MCP_POOL_SIZE="1") as server:
        assert main(["run", "hello_world.py", "--server", f"{server.base}/mcp"]) == 0
        assert "Hello, World!" in capsys.readouterr().out
        assert main(["run", "loop.py", "--server", f"{server.base}/sse", "--timeout", "1"]) == 1
        assert "status: timeout" in capsys.readouterr().out
        assert main(["tools", "--server", f"{server.base}/mcp"]) == 0
        assert "run_python:" in capsys.readouterr().out


def test_serve_refuses_a_public_bind_without_a_token(projects, capsys, monkeypatch):
    monkeypatch.delenv("KERNEL_MCP_TOKEN", raising=False)
    assert main(["serve", "--host", "0.0.0.0"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("kernel-mcp: KERNEL_MCP_HOST: 0.0.0.0 is not loopback")
    assert "--insecure" in err and len(err.splitlines()) == 1


@pytest.mark.parametrize(
    ("variable", "value", "named"),
    [
        ("PYTHON_TIMEOUT", "-5", "PYTHON_TIMEOUT"),
        ("PYTHON_PROJECTS_DIR", "/no/such/folder", "PYTHON_PROJECTS_DIR"),
        ("KERNEL_MCP_POOL_SIZE", "many", "KERNEL_MCP_POOL_SIZE"),
    ],
)
def test_a_bad_setting_stops_start_up_with_one_line(
    projects, capsys, monkeypatch, variable, value, named
):
    monkeypatch.setenv(variable, value)
    assert main(["serve"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"kernel-mcp: {named}: ")
    assert len(err.splitlines()) == 1


def test_serve_on_a_busy_port_says_so_in_one_line_and_exits_3(projects, capsys):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        assert main(["serve", "--port", str(port)]) == 3
    err = capsys.readouterr().err
    assert err.strip() == f"kernel-mcp: port {port} is in use; set --port or KERNEL_MCP_PORT"


def test_run_refusal_is_one_line_without_fastmcps_log(projects, capsys):
    assert main(["run", "../outside.py"]) == 1
    captured = capsys.readouterr()
    assert "rule: path_traversal" in captured.out
    assert "Error calling tool" not in captured.out + captured.err


def test_a_timeout_above_the_maximum_says_it_was_capped(projects, capsys, monkeypatch):
    monkeypatch.setenv("PYTHON_MAX_TIMEOUT", "40")
    assert main(["run", "hello_world.py", "--timeout", "100"]) == 0
    assert "timeout 100 s is above PYTHON_MAX_TIMEOUT; 40 s applies." in capsys.readouterr().out
