"""The path guard: which files under the projects folder may be run.

A name is accepted only when its real path (every symlink resolved) is a
regular file inside the real path of the projects folder, with an allowed
suffix and under the size limit. The checks run in an order that reveals
nothing outside the folder: containment is decided before existence, and
messages quote only the caller's own name.
"""

from __future__ import annotations

import errno
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused

__all__ = [
    "MAX_LISTED_FILES",
    "ProjectFile",
    "list_project_files",
    "read_project_file",
    "validate_name",
]

MAX_LISTED_FILES = 1000
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")


@dataclass(frozen=True, slots=True)
class ProjectFile:
    """A file that passed the guard, with the content that was checked."""

    path: Path
    """Real, absolute path."""
    relative: str
    """Path relative to the projects folder, with forward slashes."""
    source: str


def _inside(root: str, candidate: str) -> bool:
    return candidate == root or candidate.startswith(root.rstrip(os.sep) + os.sep)


def _refuse(rule: str, name: str, why: str) -> PathRefused:
    return PathRefused(rule, f"Refused {name!r}: {why} (rule: {rule}).")


def read_project_file(
    root: Path, name: str, *, suffixes: tuple[str, ...] = (".py",), max_bytes: int
) -> ProjectFile:
    """Check ``name`` against the guard and read it.

    Args:
        root: the projects folder (resolved or not).
        name: what the caller gave: relative to ``root``, or absolute.
        suffixes: allowed file endings, lower case.
        max_bytes: the largest file accepted.

    Raises:
        PathRefused: a rule was broken; ``rule`` names it.
        FileNotFound: the name is inside the folder but nothing is there.
        InvalidArgument: the file is not UTF-8 text.
    """
    shown = name if len(name) <= 200 else name[:200] + "…"
    if not name or not name.strip():
        raise _refuse("empty_name", shown, "a file name is required")
    if "\x00" in name:
        raise _refuse("nul_byte", shown.replace("\x00", "\\x00"), "the name contains a NUL byte")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise _refuse("unencodable_name", shown, "the name is not valid file-system text") from None

    real_root = os.path.realpath(root)
    given = Path(name)
    lexical = os.path.normpath(given if given.is_absolute() else Path(real_root) / given)
    if not _inside(real_root, lexical) and not _inside(os.path.normpath(root), lexical):
        if given.is_absolute():
            raise _refuse(
                "outside_projects_dir", shown, "absolute path outside the projects folder"
            )
        raise _refuse("path_traversal", shown, "'..' leads out of the projects folder")

    real = os.path.realpath(lexical)
    if not _inside(real_root, real):
        raise _refuse("symlink_escape", shown, "a symlink leads out of the projects folder")
    if not real.lower().endswith(suffixes) or not lexical.lower().endswith(suffixes):
        allowed = ", ".join(suffixes)
        raise _refuse("file_type", shown, f"only {allowed} files may be run")

    try:
        info = os.stat(real)
    except FileNotFoundError:
        raise FileNotFound(f"No file {shown!r} in the projects folder.") from None
    except OSError as exc:
        raise _refuse("unreadable", shown, exc.strerror or "cannot be read") from None
    if not stat.S_ISREG(info.st_mode):
        raise _refuse("not_regular_file", shown, "not a regular file (directory, FIFO or device)")
    if info.st_size > max_bytes:
        raise _refuse("too_large", shown, f"larger than the {max_bytes}-byte limit")

    # O_NONBLOCK: if the file was swapped for a FIFO after the check, open must not hang.
    # O_NOFOLLOW and the inode comparison catch a swap for a symlink or another file.
    flags = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0)
    try:
        fd = os.open(real, flags)
    except OSError as exc:
        if exc.errno == errno.ENOENT:
            raise FileNotFound(f"No file {shown!r} in the projects folder.") from None
        raise _refuse(
            "changed_during_check", shown, "the file changed while being checked"
        ) from None
    try:
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise _refuse("changed_during_check", shown, "the file changed while being checked")
        with os.fdopen(fd, "rb", closefd=True) as handle:
            fd = -1
            data = handle.read(max_bytes + 1)
    finally:
        if fd >= 0:
            os.close(fd)
    if len(data) > max_bytes:
        raise _refuse("too_large", shown, f"larger than the {max_bytes}-byte limit")
    try:
        source = data.decode("utf-8")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{shown!r} is not UTF-8 text.") from None
    relative = Path(real).relative_to(real_root).as_posix()
    return ProjectFile(path=Path(real), relative=relative, source=source)


def list_project_files(root: Path, pattern: str = "**/*.py") -> list[str]:
    """Regular files under ``root`` matching a glob, as sorted relative paths.

    Files whose real path leaves the folder, and hidden folders, are skipped.
    At most ``MAX_LISTED_FILES`` names come back: the first in sorted order.

    Raises:
        InvalidArgument: the pattern is absolute or climbs out with ``..``.
    """
    if not pattern or "\x00" in pattern:
        raise InvalidArgument("pattern must be a non-empty glob such as '**/*.py'")
    if pattern.startswith(("/", "\\")) or ".." in PurePosixPath(pattern).parts:
        raise InvalidArgument("pattern must be relative to the projects folder, without '..'")
    real_root = os.path.realpath(root)
    found: list[str] = []
    for candidate in Path(real_root).glob(pattern):
        rel = candidate.relative_to(real_root)
        if any(part.startswith(".") for part in rel.parts):
            continue
        real = os.path.realpath(candidate)
        if not _inside(real_root, real):
            continue
        try:
            if not stat.S_ISREG(os.stat(real).st_mode):
                continue
        except OSError:
            continue
        found.append(rel.as_posix())
    return sorted(found)[:MAX_LISTED_FILES]


def validate_name(name: str) -> str:
    """A session or notebook name: 1-64 letters, digits, '-', '_', '.'; never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"Invalid name {str(name)[:80]!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name
