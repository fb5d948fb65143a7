"""Atomic writes: a project file through the guard (no symlink followed, never clobbering),
and a whole file in one piece (a temporary file, fsync, rename, fsync of the folder).
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kernel_mcp.errors import InvalidArgument
from kernel_mcp.files.guard import (
    _checked_name,
    _close,
    _inside,
    _lexical_inside,
    _open_child_dir,
    _refuse,
    is_text_name,
)

__all__ = [
    "WrittenFile",
    "fsync_folder",
    "umask_mode",
    "write_atomically",
    "write_project_file",
]


@dataclass(frozen=True, slots=True)
class WrittenFile:
    """What :func:`write_project_file` wrote."""

    relative: str
    bytes: int
    created: bool


def write_project_file(
    root: Path,
    name: str,
    content: str,
    *,
    suffixes: tuple[str, ...],
    max_bytes: int,
    overwrite: bool = False,
    mode: int = 0o644,
) -> WrittenFile:
    """Write a text file beneath the projects folder, atomically, through no symlink.

    The same name rules as :func:`read_project_file` (containment decided first,
    messages quoting only the caller's name), with stricter rules for the path:
    every existing component must be a real folder (a symlinked folder is
    refused, even one that stays inside), missing folders are created, and an
    existing entry is replaced only if it is a regular file and ``overwrite``
    is set. The content goes to a temporary file beside the target, is fsynced,
    then renamed over it (or hard-linked into place when not overwriting, which
    fails rather than clobber a file that appeared meanwhile).

    Raises:
        PathRefused: a rule was broken (``exists``, ``symlink``, ``not_regular_file``
            and ``not_utf8_name`` besides the read rules).
        InvalidArgument: the content is larger than ``max_bytes``.
    """
    shown = _checked_name(name)
    if not is_text_name(name):
        # A lone surrogate would write a name that is not UTF-8: one list_files cannot show.
        raise _refuse("not_utf8_name", shown, "the name is not UTF-8 text")
    data = content.encode("utf-8", "surrogatepass")
    if len(data) > max_bytes:
        raise InvalidArgument(
            f"content is larger than {max_bytes} bytes (KERNEL_MCP_MAX_FILE_BYTES)"
        )
    real_root = os.path.realpath(root)
    lexical = _lexical_inside(root, real_root, name, shown)
    base = real_root if _inside(real_root, lexical) else os.path.normpath(root)
    parts = PurePosixPath(os.path.relpath(lexical, base)).parts if lexical != base else ()
    if not parts or parts[-1] in (".", ".."):
        raise _refuse("not_regular_file", shown, "a file name is required, not a folder")
    if not parts[-1].lower().endswith(suffixes):
        raise _refuse("file_type", shown, f"only {', '.join(suffixes)} files may be written")

    folder = -1
    try:
        folder = _make_dirs_beneath(real_root, parts[:-1], shown)
        leaf = parts[-1]
        created = True
        try:
            info = os.stat(leaf, dir_fd=folder, follow_symlinks=False)
        except FileNotFoundError:
            info = None
        if info is not None:
            if stat.S_ISLNK(info.st_mode):
                raise _refuse("symlink", shown, "it is a symlink; write to the file it names")
            if not stat.S_ISREG(info.st_mode):
                raise _refuse("not_regular_file", shown, "not a regular file")
            if not overwrite:
                raise _refuse("exists", shown, "the file exists; pass overwrite=true to replace it")
            created = False
            mode = stat.S_IMODE(info.st_mode)
        temp = f".{leaf[:100]}.{os.getpid()}.{time.monotonic_ns()}.kmcp-tmp"
        fd = os.open(
            temp,
            os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
            mode,
            dir_fd=folder,
        )
        try:
            os.fchmod(fd, mode)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        try:
            if created:
                # Never clobber: a file that appeared meanwhile makes link() fail.
                os.link(temp, leaf, src_dir_fd=folder, dst_dir_fd=folder, follow_symlinks=False)
            else:
                os.replace(temp, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        except FileExistsError:
            raise _refuse(
                "exists", shown, "the file exists; pass overwrite=true to replace it"
            ) from None
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(temp, dir_fd=folder)
        os.fsync(folder)
    except OSError as exc:
        raise _refuse("unwritable", shown, os.strerror(exc.errno or errno.EIO)) from None
    finally:
        _close(folder)
    return WrittenFile(relative="/".join(parts), bytes=len(data), created=created)


def _make_dirs_beneath(real_root: str, parts: Sequence[str], shown: str) -> int:
    """``real_root/parts...`` as a descriptor, creating missing folders, following no link."""
    for part in parts:
        if part in ("", ".", "..") or "/" in part:
            raise _refuse("path_traversal", shown, "'..' leads out of the projects folder")
    fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        for part in parts:
            try:
                child = _open_child_dir(fd, part)
            except OSError as exc:
                if exc.errno == errno.ENOENT:
                    with contextlib.suppress(FileExistsError):
                        os.mkdir(part, 0o755, dir_fd=fd)
                    child = _open_child_dir(fd, part)
                elif exc.errno == errno.ELOOP:
                    raise _refuse(
                        "symlink",
                        shown,
                        "a folder on the way is a symlink; writes never follow one",
                    ) from None
                else:
                    raise
            os.close(fd)
            fd = child
    except BaseException:
        os.close(fd)
        raise
    return fd


def umask_mode() -> int:
    """The mode the umask gives a new file: what exports and executed copies get."""
    # os.umask can only be read by setting it; Linux's /proc says it without changing
    # anything (other systems have no /proc).
    if sys.platform.startswith("linux"):
        try:
            with open("/proc/self/status", encoding="ascii") as status:
                for line in status:
                    if line.startswith("Umask:"):
                        return 0o666 & ~int(line.split()[1], 8)
        except (OSError, ValueError):
            pass
    current = os.umask(0o022)
    os.umask(current)
    return 0o666 & ~current


def write_atomically(path: Path, text: str, *, mode: int = 0o600, durable: bool = True) -> None:
    """Write ``text`` to ``path`` so that a crash never leaves a partial file.

    A temporary file in the same folder, fsync, rename, fsync of the folder: a
    server killed at any moment leaves either the previous file or the new one.
    ``durable=False`` skips the fsyncs, for files rebuilt from a durable source (a
    session's notebook from its journal): a crash of the process still leaves a
    whole file, and after a power cut the next start rebuilds it.

    Raises:
        OSError: the folder cannot be written (read-only, full, not a folder).
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_folder(path.parent)


def fsync_folder(folder: Path) -> None:
    """Make a rename or a new file in ``folder`` survive a power cut (best effort)."""
    with contextlib.suppress(OSError):
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
