"""MCP clients' configuration: how a client starts this installation of kernel-mcp.

``kernel-mcp config CLIENT`` prints the snippet in that client's own format and,
with ``--write``, merges it into the client's configuration file. Each format is
the one its client documents (tests/unit/test_clients.py cites the pages):

==============  ==========================================  =====================
client          where (``--write``; ``--config-path`` wins)  servers under
==============  ==========================================  =====================
claude-desktop  claude_desktop_config.json (per OS, below)   ``mcpServers``
claude-code     ``.mcp.json`` in the current folder          ``mcpServers`` (+type)
cursor          ``~/.cursor/mcp.json``                       ``mcpServers``
vscode          ``.vscode/mcp.json`` in the current folder   ``servers`` (+type)
==============  ==========================================  =====================

For claude-code the printed snippet is the documented ``claude mcp add`` command
(user scope); ``--write`` edits the project's ``.mcp.json``, the file Claude Code
documents for hand edits (its own ``~/.claude.json`` holds much more state and is
rewritten by Claude Code while it runs).

Claude Desktop keeps its file in ``~/Library/Application Support/Claude`` on
macOS, ``%APPDATA%\\Claude`` on Windows and ``~/.config/Claude`` on Linux. Inside
WSL the server must be started from Windows through ``wsl.exe -e``, and the file
is the Windows one, reached through ``/mnt/c``. Windows' environment does not
cross into WSL (only the names in ``WSLENV`` do), so there the settings go on the
command line through ``env NAME=VALUE``.

A merge keeps every other server and every other key, replaces an entry of the
same name, keeps a timestamped backup of the old file beside it, and writes
atomically (a temporary file in the same folder, fsync, rename). A file that is
not plain JSON (VS Code also accepts comments) is refused with a clear error and
left as it is: rewriting it would drop what a person wrote there.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from kernel_mcp.errors import ClientConfigError

__all__ = [
    "CLIENTS",
    "Client",
    "Launch",
    "Written",
    "default_config_path",
    "document",
    "entry",
    "in_wsl",
    "installed_command",
    "launch",
    "merge_into",
    "render",
    "servers_key",
    "windows_appdata",
]

Client = Literal["claude-desktop", "claude-code", "cursor", "vscode"]
CLIENTS: tuple[Client, ...] = ("claude-desktop", "claude-code", "cursor", "vscode")
CLAUDE_DESKTOP_FILE = "claude_desktop_config.json"
WINDOWS_TIMEOUT = 10.0


@dataclass(frozen=True)
class Launch:
    """How a client starts the server: a command, its arguments, its environment."""

    command: str
    args: list[str]
    env: dict[str, str] = field(default_factory=dict)


def installed_command(
    *, uvx: bool = False, executable: str = sys.executable, which: Callable[..., Any] = shutil.which
) -> list[str]:
    """The command that starts this installation, absolute (a desktop client's PATH is bare).

    ``uvx``: the ``uvx kernel-mcp`` form (uvx's absolute path when it is on PATH).
    Otherwise the ``kernel-mcp`` script beside the running interpreter (pip, pipx
    and ``uv tool`` all put it there), else ``python -m kernel_mcp``.
    """
    if uvx:
        return [which("uvx") or "uvx", "kernel-mcp"]
    # Not resolved: a virtualenv's python is a link to the base interpreter, and the
    # script lives beside the link.
    script = Path(executable).parent / ("kernel-mcp.exe" if os.name == "nt" else "kernel-mcp")
    if script.is_file():
        return [str(script)]
    return [executable, "-m", "kernel_mcp"]


def launch(
    command: list[str], env: Mapping[str, str], *, wsl: bool = False, distro: str | None = None
) -> Launch:
    """``command serve --stdio`` with ``env``; through ``wsl.exe -e`` for a Windows client."""
    argv = [*command, "serve", "--stdio"]
    if not wsl:
        return Launch(argv[0], argv[1:], dict(env))
    where = ["-d", distro] if distro else []
    settings = ["env", *(f"{name}={value}" for name, value in env.items())] if env else []
    return Launch("wsl.exe", [*where, "-e", *settings, *argv])


def servers_key(client: Client) -> str:
    """The key the client lists its servers under."""
    return "servers" if client == "vscode" else "mcpServers"


def entry(client: Client, how: Launch) -> dict[str, Any]:
    """One server's entry in the client's format."""
    item: dict[str, Any] = {}
    if client in ("claude-code", "vscode"):
        item["type"] = "stdio"  # VS Code requires it; Claude Code writes it
    item["command"] = how.command
    item["args"] = list(how.args)
    if how.env:
        item["env"] = dict(how.env)
    return item


def document(client: Client, name: str, how: Launch) -> dict[str, Any]:
    """The smallest configuration file that holds the server: what ``--write`` merges."""
    return {servers_key(client): {name: entry(client, how)}}


def render(client: Client, name: str, how: Launch) -> str:
    """What ``kernel-mcp config CLIENT`` prints: JSON, or Claude Code's command line."""
    if client != "claude-code":
        return json.dumps(document(client, name, how), indent=2)
    words = ["claude", "mcp", "add", "--scope", "user", "--transport", "stdio"]
    for variable, value in how.env.items():
        words += ["--env", f"{variable}={value}"]
    return shlex.join([*words, name, "--", how.command, *how.args])


# -- where the files are ----------------------------------------------------------------
def in_wsl(environ: Mapping[str, str] = os.environ, release: str | None = None) -> bool:
    """Whether this is Linux inside WSL (``WSL_DISTRO_NAME``, or a Microsoft kernel)."""
    if environ.get("WSL_DISTRO_NAME") or environ.get("WSL_INTEROP"):
        return True
    release = platform.uname().release if release is None else release
    return "microsoft" in release.lower()


def default_config_path(
    client: Client,
    *,
    system: str = sys.platform,
    home: Path | None = None,
    environ: Mapping[str, str] = os.environ,
    cwd: Path | None = None,
    wsl: bool = False,
    drive: Path = Path("/mnt/c"),
    run: Callable[..., Any] | None = None,
) -> Path:
    """The file ``--write`` merges into, as each client documents it.

    Args:
        wsl: inside WSL, for Claude Desktop: the Windows user's file, found through
            ``drive`` (where WSL mounts C:) and ``run`` (see :func:`windows_appdata`).

    Raises:
        ClientConfigError: inside WSL, the Windows user's folder cannot be found.
    """
    home = home if home is not None else Path.home()
    cwd = cwd if cwd is not None else Path.cwd()
    if client == "claude-code":
        return cwd / ".mcp.json"
    if client == "vscode":
        return cwd / ".vscode" / "mcp.json"
    if client == "cursor":
        return home / ".cursor" / "mcp.json"
    if wsl:
        return windows_appdata(drive=drive, run=run) / "Claude" / CLAUDE_DESKTOP_FILE
    if system == "darwin":
        return home / "Library" / "Application Support" / "Claude" / CLAUDE_DESKTOP_FILE
    if system == "win32":
        appdata = environ.get("APPDATA")
        roaming = Path(appdata) if appdata else home / "AppData" / "Roaming"
        return roaming / "Claude" / CLAUDE_DESKTOP_FILE
    config = environ.get("XDG_CONFIG_HOME")
    return (Path(config) if config else home / ".config") / "Claude" / CLAUDE_DESKTOP_FILE


def windows_appdata(*, drive: Path = Path("/mnt/c"), run: Callable[..., Any] | None = None) -> Path:
    """The Windows user's ``%APPDATA%`` as a WSL path.

    Windows is asked first (``cmd.exe /c echo %APPDATA%``, through WSL's interop);
    where that does not answer, the one user folder under ``drive/Users`` that has
    an ``AppData/Roaming/Claude`` folder is taken.

    Raises:
        ClientConfigError: neither way finds it.
    """
    run = run or subprocess.run
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = run(
            ["cmd.exe", "/c", "echo %APPDATA%"],
            capture_output=True,
            text=True,
            timeout=WINDOWS_TIMEOUT,
            cwd=str(drive) if drive.is_dir() else None,
        )
        answer = done.stdout.strip()
        if done.returncode == 0 and len(answer) > 3 and answer[1:3] == ":\\":
            parts = answer[3:].replace("\\", "/")
            return drive.parent / answer[0].lower() / parts
    users = drive / "Users"
    found = sorted(users.glob("*/AppData/Roaming/Claude")) if users.is_dir() else []
    if len(found) == 1:
        return found[0].parent
    hint = f"{users}/<you>/AppData/Roaming/Claude/{CLAUDE_DESKTOP_FILE}"
    why = "several users have a Claude folder" if found else "Windows did not say where"
    raise ClientConfigError(
        f"cannot find Claude Desktop's file on the Windows side ({why}); pass --config-path {hint}"
    )


# -- merging ------------------------------------------------------------------------------
@dataclass(frozen=True)
class Written:
    """What ``merge_into`` did."""

    path: Path
    backup: Path | None
    """The previous file, kept beside it (None: there was none)."""
    replaced: bool
    """An entry of the same name was there and was replaced."""


def merge_into(
    path: Path, client: Client, name: str, item: dict[str, Any], *, now: datetime | None = None
) -> Written:
    """Merge one server entry into a client's JSON configuration file.

    Raises:
        ClientConfigError: the file is not JSON, not an object, lists its servers in
            something other than an object, or cannot be read or written. The file
            is then exactly as it was.
    """
    if path.is_symlink():  # keep a managed link (dotfiles): write where it points
        path = path.resolve()
    key = servers_key(client)
    data, existed = _read(path, key)
    servers = data.setdefault(key, {})
    replaced = name in servers
    servers[name] = item
    text = json.dumps(data, indent=2, ensure_ascii=False) + "\n"
    backup = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if existed:
            backup = _backup(path, now or datetime.now())
        _write_atomically(path, text)
    except OSError as exc:
        raise ClientConfigError(
            f"{path}: cannot write it ({exc.strerror or exc}); it was left as it was"
        ) from None
    return Written(path, backup, replaced)


def _read(path: Path, key: str) -> tuple[dict[str, Any], bool]:
    try:
        raw = path.read_bytes()
    except FileNotFoundError:
        return {}, False
    except OSError as exc:
        raise ClientConfigError(f"{path}: cannot read it ({exc.strerror or exc})") from None
    try:
        text = raw.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ClientConfigError(f"{path}: not UTF-8 text; it was left as it was") from None
    if not text.strip():
        return {}, True
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ClientConfigError(
            f"{path}: not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg}); "
            "it was left as it was: fix it, or add the snippet above by hand"
        ) from None
    if not isinstance(data, dict):
        raise ClientConfigError(f"{path}: not a JSON object; it was left as it was")
    if not isinstance(data.get(key, {}), dict):
        raise ClientConfigError(f'{path}: "{key}" is not a JSON object; it was left as it was')
    return data, True


def _backup(path: Path, now: datetime) -> Path:
    """Copy ``path`` beside itself under a name no earlier backup has."""
    stamp = now.strftime("%Y%m%d-%H%M%S")
    backup = path.with_name(f"{path.name}.{stamp}.bak")
    counter = 1
    while backup.exists():
        counter += 1
        backup = path.with_name(f"{path.name}.{stamp}-{counter}.bak")
    shutil.copy2(path, backup)
    return backup


def _write_atomically(path: Path, text: str) -> None:
    # The old file's mode is kept; a new file may hold settings: only its owner reads it.
    try:
        mode = path.stat().st_mode & 0o7777
    except FileNotFoundError:
        mode = 0o600
    temporary = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.chmod(temporary, mode)  # the umask may have taken bits away
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            temporary.unlink()
        raise
    with contextlib.suppress(OSError):  # the rename itself, durable (not on Windows)
        folder = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(folder)
        finally:
            os.close(folder)
