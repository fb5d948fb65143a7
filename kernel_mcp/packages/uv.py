"""Running uv: its command line, its environment, its progress and its failures.

Why uv and not pip, or our own installer: uv ships as a wheel with its own binary
(``uv.find_uv_bin()``, nothing to set up), resolves in milliseconds, keeps one
shared cache (a second install of the same wheels is links, not downloads),
installs into a plain folder (``--target``), and refuses source builds outright
(``--no-build``: an sdist is never unpacked, so no ``setup.py`` or build backend
runs on the host). pip can do most of that, but only by running itself in an
interpreter, more slowly, and its ``--only-binary`` still lets a PEP 517 hook run
for metadata in some paths; writing an installer means writing a resolver.

What uv is given, and nothing else:

* ``uv pip install --no-config``: no ``uv.toml``, ``pyproject.toml`` or user
  configuration is read; the environment is explicit (:func:`uv_environment`):
  ``HOME`` is a private empty folder (no ``.netrc``, no ``~/.config``), the cache,
  no Python downloads, no colour, one HTTP retry, and only the machine's
  certificate and proxy variables passed through;
* ``--python`` the kernel environment's interpreter (tags and markers are its),
  ``--target`` the install's stage, ``--no-build``, ``--link-mode hardlink``;
* ``--default-index`` the server's index (``KERNEL_MCP_PACKAGE_INDEX``; unset: uv's
  default, the public index), ``--excludes`` a file of the names the kernel
  environment provides, ``--upgrade-package`` for what ``-U`` asked to upgrade;
* then ``--`` and the requirements as ``packaging`` rendered them.

uv reports failures in prose; :func:`classify` maps them to a status in one place,
and its own words are kept as the detail.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

from kernel_mcp.packages.errors import InstallFailed, InstallStatus

__all__ = [
    "PASSED_THROUGH",
    "ProgressCallback",
    "UvRun",
    "classify",
    "find_uv",
    "redact",
    "run_uv",
    "uv_environment",
]

#: Called with (seconds since the install started, one line saying what happens).
ProgressCallback = Callable[[float, str], Awaitable[None]]

#: The machine's network set-up, which uv needs to reach the index as pip would.
PASSED_THROUGH = (
    "SSL_CERT_FILE",
    "SSL_CERT_DIR",
    "HTTP_PROXY",
    "HTTPS_PROXY",
    "ALL_PROXY",
    "NO_PROXY",
    "http_proxy",
    "https_proxy",
    "all_proxy",
    "no_proxy",
)
#: uv's stderr kept for the error message (the end, where the cause is).
_KEEP_CHARS = 16 * 1024
#: The longest stderr line read whole (uv's are short; a longer one is an error).
_LINE_LIMIT = 1024 * 1024
_ANSI = re.compile(r"\x1b\[[0-9;?]*[ -/]*[@-~]")
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069]")


def find_uv() -> Path:
    """The uv binary of the ``uv`` wheel.

    Raises:
        InstallFailed: the wheel's binary is missing (a broken install).
    """
    try:
        from uv import find_uv_bin

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        raise InstallFailed(
            "failed", "uv is not installed with kernel-mcp here; reinstall kernel-mcp"
        ) from None


def redact(text: str, index_url: str | None = None) -> str:
    """``text`` without credentials in URLs (``https://user:secret@host`` → ``https://***@host``)."""
    if index_url:
        text = text.replace(index_url, display_index(index_url))
    return re.sub(r"(?<=://)[^/\s@]+@", "***@", text)


def display_index(index_url: str | None) -> str:
    """The index as messages name it: its URL without credentials, or "the public index"."""
    if not index_url:
        return "the public index"
    parts = urlsplit(index_url)
    if "@" in parts.netloc:
        parts = parts._replace(netloc="***@" + parts.netloc.rpartition("@")[2])
    return urlunsplit(parts)


def clean_line(line: str) -> str:
    """One line of uv's output, fit to show: no escape sequences or control characters
    (package names and hints come from the index), at most 300 characters."""
    line = _CONTROL.sub("", _ANSI.sub("", line)).strip()
    return line if len(line) <= 300 else line[:297] + "..."


def uv_environment(*, home: Path, cache: Path, source: dict[str, str] | None = None) -> dict:
    """The whole environment uv runs with (see the module's docstring)."""
    source = dict(os.environ) if source is None else source
    env = {
        "PATH": os.defpath,
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "XDG_CACHE_HOME": str(home / ".cache"),
        "XDG_DATA_HOME": str(home / ".local" / "share"),
        "TMPDIR": str(home / "tmp"),
        "UV_CACHE_DIR": str(cache),
        "UV_NO_CONFIG": "1",
        "UV_PYTHON_DOWNLOADS": "never",
        "UV_KEYRING_PROVIDER": "disabled",
        "UV_HTTP_RETRIES": "1",
        "NO_COLOR": "1",
        "LC_ALL": "C.UTF-8",
    }
    env.update({name: source[name] for name in PASSED_THROUGH if source.get(name)})
    return env


def command(
    uv: Path,
    *,
    python: Path,
    target: Path,
    requirements: Sequence[str],
    excludes: Path | None,
    index_url: str | None,
    upgrade: Sequence[str] = (),
) -> list[str]:
    """uv's command line. ``requirements`` follow ``--``: never options."""
    argv = [
        str(uv),
        "pip",
        "install",
        "--no-config",
        "--python",
        str(python),
        "--target",
        str(target),
        "--no-build",
        "--link-mode",
        "hardlink",
        "--no-python-downloads",
        "--color",
        "never",
    ]
    if index_url:
        argv += ["--default-index", index_url]
    if excludes is not None:
        argv += ["--excludes", str(excludes)]
    for name in upgrade:
        argv += ["--upgrade-package", name]
    return [*argv, "--", *requirements]


@dataclass(frozen=True)
class UvRun:
    """How a uv run ended: its exit code and the end of what it wrote to stderr."""

    returncode: int
    stderr: str


async def run_uv(
    argv: list[str],
    env: dict[str, str],
    *,
    deadline: float,
    started: float,
    progress: ProgressCallback | None = None,
) -> UvRun:
    """Run uv until it ends or ``deadline`` (``time.monotonic()``) passes; every
    stderr line goes to ``progress`` as it comes.

    uv runs in a process group of its own, which is killed at the deadline and when
    the caller is cancelled (the cancel is re-raised).

    Raises:
        InstallFailed: ``timeout`` at the deadline.
    """
    process = await asyncio.create_subprocess_exec(
        *argv,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
        env=env,
        cwd=env["HOME"],
        start_new_session=True,
        limit=_LINE_LIMIT,
    )
    kept: list[str] = []

    async def read() -> None:
        assert process.stderr is not None
        size = 0
        async for raw in process.stderr:
            line = raw.decode(errors="replace").rstrip("\n")
            kept.append(line)
            size += len(line) + 1
            while size > _KEEP_CHARS and len(kept) > 1:
                size -= len(kept.pop(0)) + 1
            shown = clean_line(line)
            if progress is not None and shown and not shown.startswith("Using "):
                await progress(time.monotonic() - started, shown)
        await process.wait()

    reader = asyncio.ensure_future(read())
    try:
        done, _ = await asyncio.wait({reader}, timeout=max(0.0, deadline - time.monotonic()))
    except asyncio.CancelledError:
        await _kill(process, reader)
        raise
    if not done:
        await _kill(process, reader)
        raise InstallFailed("timeout", "The install ran past its time limit and was stopped")
    reader.result()
    assert process.returncode is not None
    return UvRun(process.returncode, "\n".join(kept))


async def _kill(process: asyncio.subprocess.Process, reader: asyncio.Future) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(process.pid, signal.SIGKILL)
    reader.cancel()
    await asyncio.wait({reader})
    await process.wait()


# uv's words, most specific first: (status, a pattern of its stderr).
_PATTERNS: tuple[tuple[InstallStatus, re.Pattern[str]], ...] = (
    ("needs_build", re.compile(r"building from source is disabled|has no usable wheels")),
    (
        "no_wheel",
        re.compile(r"has no wheels with a matching (platform|Python|Python ABI|Python imp)"),
    ),
    (
        "index_unreachable",
        re.compile(
            r"Failed to fetch|error sending request|tcp connect error|Connection refused|"
            r"dns error|failed to lookup address|operation timed out|Request failed after",
            re.IGNORECASE,
        ),
    ),
    ("not_found", re.compile(r"was not found in the package registry|there is no version of")),
    ("conflict", re.compile(r"No solution found when resolving dependencies")),
)


def _subject(status: InstallStatus, stderr: str) -> str:
    """The project uv names in its message, if it names one."""
    patterns = {
        "needs_build": r"Wheels are required for `([^`]+)`|(\S+?)==\S+ has no usable wheels",
        "no_wheel": r"(\S+?)==\S+ has no wheels with a matching",
        "not_found": r"Because (\S+) was not found|there is no version of (\S+?)(?:[=<>!~]|\s)",
    }
    found = re.search(patterns.get(status, r"^\b$"), stderr)
    if not found:
        return ""
    return next((g for g in found.groups() if g), "")


def classify(run: UvRun, *, index_url: str | None, markers: dict[str, str]) -> InstallFailed:
    """The failure a non-zero uv run stands for, with uv's words as its detail."""
    text = redact(run.stderr, index_url)
    detail = "\n".join(
        shown
        for line in text.splitlines()
        if (shown := clean_line(line)) and not shown.startswith("Using ")
    )
    status: InstallStatus = next(
        (status for status, pattern in _PATTERNS if pattern.search(text)), "failed"
    )
    subject = _subject(status, text)
    named = f"{subject} " if subject else ""
    where = display_index(index_url)
    platform = (
        f"Python {markers.get('python_version', '?')} on "
        f"{markers.get('sys_platform', '?')} {markers.get('platform_machine', '')}".rstrip()
    )
    messages: dict[InstallStatus, str] = {
        "needs_build": f"{named}has only source distributions for the versions asked: "
        "building from source is disabled here (no package code runs on the server), "
        "so only wheels can be installed; ask for a version that has a wheel",
        "no_wheel": f"{named}has no wheel for this kernel ({platform}); "
        "building from source is disabled here",
        "index_unreachable": f"The package index ({where}) could not be reached",
        "not_found": f"Not found on the package index ({where}): "
        f"{subject or 'a requirement'} (no such project, or no version matching)",
        "conflict": "The requirements conflict: no versions satisfy them all together "
        "(with the packages this session already has)",
        "failed": f"uv could not install the packages (exit code {run.returncode})",
    }
    return InstallFailed(status, messages[status], detail)
