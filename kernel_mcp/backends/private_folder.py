"""The local backend's private folder, and the sweep of those left by servers that died.

Each server keeps its kernels' connection folders, the sandbox's generated files and
the fork template's script in one ``0700`` folder under the temporary directory,
removed when the server stops. A server that is killed (SIGKILL, a power cut, an
out-of-memory kill) cannot remove its own, and its sandboxed kernels die with it, so
nothing uses the folder after that. The folder's name carries the server's pid; the
next server to start removes the folders of pids that no longer run, as the cgroup
root does with its groups (``launch/cgroups.py``).
"""

from __future__ import annotations

import logging
import os
import shutil
import tempfile
from pathlib import Path

import psutil

from kernel_mcp.errors import ConfigError

__all__ = ["MAX_PARENT_CHARS", "PREFIX", "make_private_folder", "sweep_dead_servers"]

log = logging.getLogger(__name__)

PREFIX = "kernel-mcp-"
#: The longest parent folder whose kernels' IPC socket paths still fit a Unix socket
#: address (107 bytes). The server reaches a sandboxed kernel's socket at
#: ``/proc/<pid>/root<parent>/kernel-mcp-<pid>-<8>/<12>/ipc-<n>``: 65 bytes besides
#: the parent with 7-digit pids and a two-digit n.
MAX_PARENT_CHARS = 42
#: Where the folder goes when the temporary directory's path is too long for sockets.
SHORT_PARENT = Path("/tmp")


def make_private_folder(parent: Path | None = None, *, sockets: bool = True) -> Path:
    """A new ``0700`` folder named after this server's pid, with the dead servers' swept.

    ``parent``: where (default: the temporary directory, ``TMPDIR``). ``sockets``: the
    kernels' IPC sockets go in it, so a parent whose path is too long for a socket
    address is replaced by ``/tmp``, with a log line.

    Raises:
        ConfigError: the path is too long for sockets and ``/tmp`` is not usable.
    """
    parent = Path(parent if parent is not None else tempfile.gettempdir()).resolve()
    if sockets and len(os.fsencode(parent)) > MAX_PARENT_CHARS:
        if not (SHORT_PARENT.is_dir() and os.access(SHORT_PARENT, os.W_OK | os.X_OK)):
            raise ConfigError(
                f"The temporary directory {parent} is too long a path for the kernels' "
                f"sockets (at most {MAX_PARENT_CHARS} characters) and /tmp is not "
                "writable: set TMPDIR to a shorter folder."
            )
        log.info(
            "the temporary directory %s is too long a path for kernel sockets; using %s",
            parent,
            SHORT_PARENT,
        )
        parent = SHORT_PARENT
    sweep_dead_servers(parent)
    # Resolved: a kernel's connection file is named by its real path, and the
    # sandbox shares the folder at that same path.
    return Path(tempfile.mkdtemp(prefix=f"{PREFIX}{os.getpid()}-", dir=parent)).resolve()


def sweep_dead_servers(parent: Path) -> list[Path]:
    """Remove the private folders in ``parent`` whose server no longer runs.

    Only this user's folders named ``kernel-mcp-<pid>-…`` whose pid is not running
    are removed: a folder of an older version (no pid in its name), another user's,
    or a live server's is left alone. A pid reused by an unrelated process keeps its
    folder until that process ends too, which errs on the side of keeping files.

    Returns:
        The folders removed.
    """
    removed = []
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return removed
    for entry in entries:
        pid = _pid_of(entry.name)
        if pid is None or pid == os.getpid():
            continue
        try:
            info = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or info.st_uid != os.getuid():
            continue
        if psutil.pid_exists(pid):
            continue
        shutil.rmtree(entry.path, ignore_errors=True)
        log.info("removed %s, left by server pid %d, which no longer runs", entry.path, pid)
        removed.append(Path(entry.path))
    return removed


def _pid_of(name: str) -> int | None:
    if not name.startswith(PREFIX):
        return None
    pid, dash, _ = name.removeprefix(PREFIX).partition("-")
    return int(pid) if dash and pid.isdigit() else None
