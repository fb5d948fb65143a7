"""``kernel-mcp config CLIENT``: each client's snippet in the format that client
documents, and ``--write``, which merges it into the client's file (other servers
kept, a backup, an atomic write; a broken file is refused and left untouched).

Each format test cites the client's own documentation page. Tests call
``main(argv) -> int`` and read stdout and stderr.
"""

from __future__ import annotations

import errno
import json
import os
import shlex
import stat
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import pytest

from kernel_mcp import clients
from kernel_mcp.cli import main
from kernel_mcp.errors import ClientConfigError

#: The command of this installation: the console script beside the interpreter.
SCRIPT = str(Path(sys.executable).parent / "kernel-mcp")


@pytest.fixture
def setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A clean environment: a home and a working directory in ``tmp_path`` that is not a
    project, no kernel-mcp setting in the environment but one stray that must not leak
    into the snippet, and not WSL."""
    for name in list(os.environ):
        if name.upper().startswith(("KERNEL_MCP_", "PYTHON_")) or name.startswith("WSL_"):
            monkeypatch.delenv(name)
    home = tmp_path / "home"
    home.mkdir()
    work = tmp_path / "work"
    work.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KERNEL_MCP_POOL_SIZE", "5")  # in the shell, not passed to config
    monkeypatch.chdir(work)
    return tmp_path


def config(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(["config", *argv])
    out, err = capsys.readouterr()
    return code, out, err


def user_folders(setup: Path) -> dict[str, str]:
    base = setup / "home" / "kernel-mcp"
    return {
        "PYTHON_PROJECTS_DIR": str(base / "python_projects"),
        "KERNEL_MCP_NOTEBOOKS_DIR": str(base / "notebooks"),
    }


# --- each client's format ------------------------------------------------------------------


def test_claude_desktop_gets_an_mcpServers_entry_with_command_args_and_env(setup, capsys):
    """Claude Desktop, "Connect to local MCP servers"
    (https://modelcontextprotocol.io/docs/develop/connect-local-servers): the file
    claude_desktop_config.json holds ``{"mcpServers": {NAME: {"command": ..., "args":
    [...], "env": {...}}}}``; the command is started as given, so it is absolute."""
    code, out, _ = config(capsys, "claude-desktop", "--no-wsl")
    assert code == 0
    snippet = json.loads(out)
    assert list(snippet) == ["mcpServers"]
    server = snippet["mcpServers"]["kernel-mcp"]
    assert server == {"command": SCRIPT, "args": ["serve", "--stdio"], "env": user_folders(setup)}
    assert Path(server["command"]).is_absolute() and Path(server["command"]).is_file()


def test_the_folders_are_absolute_and_made_with_a_readme(setup, capsys):
    config(capsys, "cursor")
    base = setup / "home" / "kernel-mcp"
    assert (base / "python_projects").is_dir() and (base / "notebooks").is_dir()
    assert "kernel-mcp" in (base / "README.md").read_text()
    assert list((setup / "work").iterdir()) == []  # not a project: nothing made here


def test_a_project_folder_gives_its_own_folders(setup, capsys):
    work = setup / "work"
    (work / "python_projects").mkdir()
    _, out, _ = config(capsys, "cursor")
    env = json.loads(out)["mcpServers"]["kernel-mcp"]["env"]
    assert env == {
        "PYTHON_PROJECTS_DIR": str(work / "python_projects"),
        "KERNEL_MCP_NOTEBOOKS_DIR": str(work / "notebooks"),
    }
    assert not (setup / "home" / "kernel-mcp").exists()


def test_only_the_settings_passed_are_in_the_snippet(setup, capsys, tmp_path):
    projects = tmp_path / "mine"
    projects.mkdir()
    code, out, _ = config(
        capsys,
        "claude-desktop",
        "--no-wsl",
        "--projects-dir",
        str(projects),
        "--env",
        "KERNEL_MCP_SANDBOX=on",
        "--env",
        "python_timeout=60",
    )
    assert code == 0
    env = json.loads(out)["mcpServers"]["kernel-mcp"]["env"]
    assert env == {
        "PYTHON_PROJECTS_DIR": str(projects),
        "KERNEL_MCP_NOTEBOOKS_DIR": user_folders(setup)["KERNEL_MCP_NOTEBOOKS_DIR"],
        "KERNEL_MCP_SANDBOX": "on",
        "PYTHON_TIMEOUT": "60",
    }
    assert "KERNEL_MCP_POOL_SIZE" not in env  # the shell's setting was not passed


@pytest.mark.parametrize(
    ("pair", "says"),
    [
        ("HOST=0.0.0.0", "--env HOST=0.0.0.0: not NAME=VALUE with a setting's name"),
        ("KERNEL_MCP_SANDBOX", "--env KERNEL_MCP_SANDBOX: not NAME=VALUE"),
        ("PYTHON_TIMEOUT=-1", "PYTHON_TIMEOUT: must be a positive number of seconds"),
    ],
)
def test_a_bad_setting_is_refused_in_one_line(setup, capsys, pair, says):
    code, out, err = config(capsys, "cursor", "--env", pair)
    assert code == 2 and out == ""
    assert says in err and len(err.strip().splitlines()) == 1


def test_claude_code_gets_its_documented_claude_mcp_add_command(setup, capsys):
    """Claude Code, "Connect Claude Code to tools via MCP"
    (https://code.claude.com/docs/en/mcp): ``claude mcp add [options] <name> --
    <command> [args...]``, every option (``--transport``, ``--env``, ``--scope``)
    before the name, ``--`` before the server's own command."""
    code, out, _ = config(capsys, "claude-code")
    assert code == 0
    words = shlex.split(out)
    name_at = words.index("kernel-mcp")
    assert words[:3] == ["claude", "mcp", "add"]
    options = words[3:name_at]
    assert options[options.index("--scope") + 1] == "user"
    assert options[options.index("--transport") + 1] == "stdio"
    env = [options[i + 1] for i, word in enumerate(options) if word == "--env"]
    assert env == [f"{k}={v}" for k, v in user_folders(setup).items()]
    assert words[name_at + 1 :] == ["--", SCRIPT, "serve", "--stdio"]


def test_claude_code_write_merges_into_the_projects_mcp_json(setup, capsys):
    """Claude Code's project scope (https://code.claude.com/docs/en/mcp): ``.mcp.json``
    at the project's root, ``{"mcpServers": {NAME: {"type": "stdio", "command",
    "args", "env"}}}``."""
    code, _, err = config(capsys, "claude-code", "--write")
    assert code == 0
    written = json.loads((setup / "work" / ".mcp.json").read_text())
    assert written == {
        "mcpServers": {
            "kernel-mcp": {
                "type": "stdio",
                "command": SCRIPT,
                "args": ["serve", "--stdio"],
                "env": user_folders(setup),
            }
        }
    }
    assert "added the entry 'kernel-mcp'" in err


def test_cursor_gets_an_mcpServers_entry_in_its_home_file(setup, capsys):
    """Cursor, "Model Context Protocol (MCP)" (https://cursor.com/docs/mcp): the global
    file ``~/.cursor/mcp.json`` (a project's is ``.cursor/mcp.json``), servers under
    ``mcpServers`` with ``command``, ``args`` and ``env``."""
    code, out, _ = config(capsys, "cursor", "--write")
    assert code == 0
    snippet = json.loads(out)
    assert snippet == {
        "mcpServers": {
            "kernel-mcp": {
                "command": SCRIPT,
                "args": ["serve", "--stdio"],
                "env": user_folders(setup),
            }
        }
    }
    assert json.loads((setup / "home" / ".cursor" / "mcp.json").read_text()) == snippet


def test_vscode_gets_a_servers_entry_with_type_stdio(setup, capsys):
    """VS Code, "MCP configuration reference"
    (https://code.visualstudio.com/docs/copilot/reference/mcp-configuration):
    ``.vscode/mcp.json`` in the workspace, servers under ``servers`` (not
    ``mcpServers``), and a stdio server needs ``"type": "stdio"`` and ``command``;
    ``args`` and ``env`` are optional."""
    code, out, _ = config(capsys, "vscode", "--write")
    assert code == 0
    snippet = json.loads(out)
    assert snippet == {
        "servers": {
            "kernel-mcp": {
                "type": "stdio",
                "command": SCRIPT,
                "args": ["serve", "--stdio"],
                "env": user_folders(setup),
            }
        }
    }
    assert json.loads((setup / "work" / ".vscode" / "mcp.json").read_text()) == snippet


def test_the_name_can_be_chosen(setup, capsys):
    _, out, _ = config(capsys, "vscode", "--name", "python")
    assert list(json.loads(out)["servers"]) == ["python"]


def test_the_uvx_form_runs_the_published_package():
    """``uvx NAME`` runs the package's command of the same name; the absolute uvx,
    when PATH has it, because a desktop client's PATH is bare."""
    assert clients.installed_command(uvx=True, which=lambda _: "/opt/uv/uvx") == [
        "/opt/uv/uvx",
        "kernel-mcp",
    ]
    assert clients.installed_command(uvx=True, which=lambda _: None) == ["uvx", "kernel-mcp"]
    how = clients.launch(["/opt/uv/uvx", "kernel-mcp"], {"A": "1"})
    assert (how.command, how.args, how.env) == (
        "/opt/uv/uvx",
        ["kernel-mcp", "serve", "--stdio"],
        {"A": "1"},
    )


def test_without_the_script_the_interpreter_runs_the_module(tmp_path):
    python = tmp_path / "bin" / "python"
    assert clients.installed_command(executable=str(python)) == [str(python), "-m", "kernel_mcp"]


# --- WSL -------------------------------------------------------------------------------------


def test_inside_wsl_claude_desktop_starts_the_server_through_wsl_exe(setup, capsys, monkeypatch):
    """WSL's ``wsl.exe -d <distribution> -e <command>`` runs a Linux command from
    Windows without a shell (https://learn.microsoft.com/windows/wsl/basic-commands);
    Windows' environment crosses into WSL only for the names in WSLENV
    (https://learn.microsoft.com/windows/wsl/filesystems), so the settings ride on
    ``env NAME=VALUE``."""
    monkeypatch.setenv("WSL_DISTRO_NAME", "Ubuntu-24.04")
    code, out, _ = config(capsys, "claude-desktop", "--wsl")
    assert code == 0
    server = json.loads(out)["mcpServers"]["kernel-mcp"]
    folders = [f"{k}={v}" for k, v in user_folders(setup).items()]
    assert server == {
        "command": "wsl.exe",
        "args": ["-d", "Ubuntu-24.04", "-e", "env", *folders, SCRIPT, "serve", "--stdio"],
    }


def test_wsl_is_detected_by_its_variable_or_kernel():
    assert clients.in_wsl({"WSL_DISTRO_NAME": "Debian"}, release="6.1.0")
    assert clients.in_wsl({}, release="5.15.167.4-microsoft-standard-WSL2")
    assert not clients.in_wsl({}, release="6.1.0-28-amd64")


def test_the_other_clients_ignore_wsl(setup, capsys):
    _, out, _ = config(capsys, "cursor", "--wsl")
    assert json.loads(out)["mcpServers"]["kernel-mcp"]["command"] == SCRIPT


def no_windows(*args, **kwargs):
    raise FileNotFoundError(2, "No such file or directory", "cmd.exe")


def test_wsl_write_finds_the_windows_users_claude_file(tmp_path):
    """%APPDATA%\\Claude\\claude_desktop_config.json, reached through /mnt/c."""
    drive = tmp_path / "mnt" / "c"
    (drive / "Users" / "alice" / "AppData" / "Roaming" / "Claude").mkdir(parents=True)
    (drive / "Users" / "Public").mkdir()
    path = clients.default_config_path("claude-desktop", wsl=True, drive=drive, run=no_windows)
    assert path == (
        drive / "Users" / "alice" / "AppData" / "Roaming" / "Claude" / "claude_desktop_config.json"
    )


def test_wsl_asks_windows_for_appdata_first(tmp_path):
    drive = tmp_path / "mnt" / "c"

    def windows(argv, **kwargs):
        assert argv == ["cmd.exe", "/c", "echo %APPDATA%"]
        return subprocess.CompletedProcess(argv, 0, "C:\\Users\\Bob Smith\\AppData\\Roaming\r\n")

    found = clients.windows_appdata(drive=drive, run=windows)
    assert found == tmp_path / "mnt" / "c" / "Users" / "Bob Smith" / "AppData" / "Roaming"


def test_wsl_without_an_answer_says_to_pass_config_path(tmp_path):
    drive = tmp_path / "mnt" / "c"
    for user in ("alice", "bob"):
        (drive / "Users" / user / "AppData" / "Roaming" / "Claude").mkdir(parents=True)
    with pytest.raises(ClientConfigError, match=r"several users.*pass --config-path"):
        clients.windows_appdata(drive=drive, run=no_windows)


# --- default paths per OS ----------------------------------------------------------------------


def test_claude_desktop_paths_per_os(tmp_path):
    """macOS ~/Library/Application Support/Claude, Windows %APPDATA%\\Claude
    (https://modelcontextprotocol.io/docs/develop/connect-local-servers), Linux
    $XDG_CONFIG_HOME/Claude or ~/.config/Claude."""
    home = tmp_path
    file = "claude_desktop_config.json"

    def where(system: str, **environ: str) -> Path:
        return clients.default_config_path(
            "claude-desktop", system=system, home=home, environ=environ
        )

    assert where("darwin") == home / "Library" / "Application Support" / "Claude" / file
    assert where("win32", APPDATA=str(home / "Roaming")) == home / "Roaming" / "Claude" / file
    assert where("win32") == home / "AppData" / "Roaming" / "Claude" / file
    assert where("linux") == home / ".config" / "Claude" / file
    assert where("linux", XDG_CONFIG_HOME=str(home / "cfg")) == home / "cfg" / "Claude" / file


def test_editor_paths(tmp_path):
    def where(client: clients.Client) -> Path:
        return clients.default_config_path(client, home=tmp_path / "h", cwd=tmp_path / "w")

    assert where("cursor") == tmp_path / "h" / ".cursor" / "mcp.json"
    assert where("vscode") == tmp_path / "w" / ".vscode" / "mcp.json"
    assert where("claude-code") == tmp_path / "w" / ".mcp.json"


# --- --write --------------------------------------------------------------------------------------


def test_write_keeps_the_other_servers_and_keys_and_a_backup(setup, capsys, tmp_path):
    target = tmp_path / "claude_desktop_config.json"
    before = {
        "mcpServers": {"other": {"command": "npx", "args": ["-y", "other-server"]}},
        "globalShortcut": "Ctrl+Space",
    }
    original = json.dumps(before, indent=4)
    target.write_text(original)
    target.chmod(0o644)
    code, _, err = config(
        capsys, "claude-desktop", "--no-wsl", "--write", "--config-path", str(target)
    )
    assert code == 0
    after = json.loads(target.read_text())
    assert after["globalShortcut"] == "Ctrl+Space"
    assert after["mcpServers"]["other"] == before["mcpServers"]["other"]
    assert after["mcpServers"]["kernel-mcp"]["args"] == ["serve", "--stdio"]
    backups = list(tmp_path.glob("claude_desktop_config.json.*.bak"))
    assert len(backups) == 1 and backups[0].read_text() == original
    assert str(backups[0]) in err
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # its mode is kept

    # Again: the entry is replaced, the first backup stays, a second one is made.
    code, _, err = config(
        capsys, "claude-desktop", "--no-wsl", "--write", "--config-path", str(target)
    )
    assert code == 0 and "replaced the entry 'kernel-mcp'" in err
    assert len(list(tmp_path.glob("claude_desktop_config.json.*.bak"))) == 2
    assert list(json.loads(target.read_text())["mcpServers"]) == ["other", "kernel-mcp"]


def test_write_makes_a_missing_file_and_its_folder_private(setup, capsys, tmp_path):
    target = tmp_path / "new" / "mcp.json"
    code, _, err = config(capsys, "cursor", "--write", "--config-path", str(target))
    assert code == 0
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert "previous file" not in err
    assert list(target.parent.iterdir()) == [target]


@pytest.mark.parametrize(
    ("content", "says"),
    [
        ('{"mcpServers": {"other": {}},}', "not valid JSON (line 1, column 30"),
        ('{\n  // my servers\n  "servers": {}\n}', "not valid JSON (line 2, column 3"),
        ("[1, 2]", "not a JSON object"),
        ('{"mcpServers": ["x"]}', '"mcpServers" is not a JSON object'),
        (b"\xff\xfe{}", "not UTF-8 text"),
    ],
)
def test_a_broken_file_gets_a_clear_error_and_is_left_untouched(
    setup, capsys, tmp_path, content, says
):
    target = tmp_path / "cfg" / "mcp.json"
    target.parent.mkdir()
    raw = content if isinstance(content, bytes) else content.encode()
    target.write_bytes(raw)
    client = "vscode" if "servers" in str(content) and "mcp" not in str(content) else "cursor"
    code, _, err = config(capsys, client, "--write", "--config-path", str(target))
    assert code == 2
    assert says in err and "left as it was" in err
    assert target.read_bytes() == raw
    assert list(target.parent.iterdir()) == [target]  # no backup, no temporary file


def test_an_empty_file_is_an_empty_configuration(setup, capsys, tmp_path):
    target = tmp_path / "mcp.json"
    target.write_text("\n")
    assert config(capsys, "cursor", "--write", "--config-path", str(target))[0] == 0
    assert list(json.loads(target.read_text())["mcpServers"]) == ["kernel-mcp"]


def test_write_replaces_the_file_by_rename(setup, capsys, tmp_path):
    """A reader that opened the old file reads the old file whole: the new one is a
    new file renamed over it, never the old one rewritten in place."""
    target = tmp_path / "mcp.json"
    target.write_text('{"mcpServers": {}}')
    with target.open() as reader:
        assert config(capsys, "cursor", "--write", "--config-path", str(target))[0] == 0
        assert reader.read() == '{"mcpServers": {}}'
    assert "kernel-mcp" in json.loads(target.read_text())["mcpServers"]


def test_a_write_that_fails_half_way_leaves_the_old_file(setup, capsys, tmp_path, monkeypatch):
    target = tmp_path / "mcp.json"
    target.write_text('{"mcpServers": {}}')

    def full(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(clients.os, "fsync", full)
    code, _, err = config(capsys, "cursor", "--write", "--config-path", str(target))
    assert code == 2
    assert "cannot write it (No space left on device); it was left as it was" in err
    assert target.read_text() == '{"mcpServers": {}}'
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_a_linked_file_is_written_where_it_points(setup, capsys, tmp_path):
    real = tmp_path / "dotfiles" / "mcp.json"
    real.parent.mkdir()
    real.write_text("{}")
    link = tmp_path / "mcp.json"
    link.symlink_to(real)
    assert config(capsys, "cursor", "--write", "--config-path", str(link))[0] == 0
    assert link.is_symlink()
    assert "kernel-mcp" in json.loads(real.read_text())["mcpServers"]


def test_backups_never_overwrite_each_other(tmp_path):
    target = tmp_path / "mcp.json"
    target.write_text("{}")
    when = datetime(2026, 12, 7, 12, 0, 0)
    item = {"command": "x"}
    first = clients.merge_into(target, "cursor", "a", item, now=when).backup
    second = clients.merge_into(target, "cursor", "b", item, now=when).backup
    assert first is not None and second is not None and first != second
    assert first.read_text() == "{}"
