"""The path guard: which files under the projects folder may be run.

A name is accepted only when its real path (every symlink resolved) is a
regular file inside the real path of the projects folder, with an allowed
suffix, under the size limit, and with a single hard link. The checks run in an
order that reveals nothing outside the folder: containment is decided before
existence, and messages quote only the caller's own name.

Checking a path and then opening it by name is a race: a folder in the path can
be swapped for a symlink to an outside folder in between. So the file is not
opened by name. The guard walks the already-resolved relative path one folder
at a time from a descriptor of the real projects folder, refusing to follow a
symlink in any component (:func:`open_dir_beneath`), and then checks the
descriptor it opened. Symlinks that stay inside the folder still work, because
the walk follows the real path that ``realpath`` already resolved.

Hard links cannot be told apart from the original: a hard link inside the folder
to an outside file *is* that file. Regular files with more than one link are
therefore refused (rule ``hardlink``) unless the caller allows them
(``KERNEL_MCP_ALLOW_HARDLINKS``).

Names that are not UTF-8. Any kernel may create one (``open(b'\\xff.py', 'w')``),
and no MCP reply can carry it: JSON text is Unicode, so Python's stand-in for such
a byte (a lone surrogate) makes the whole reply fail. Listing (``files.listing``)
skips them and counts them (a name shown escaped, as ``\\xff``, could not be passed back: it names
another file); a file the guard reads or runs under such a name is shown escaped
(:func:`shown_name`); ``write_file`` never creates one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused

__all__ = [
    "ProjectFile",
    "is_text_name",
    "open_dir_beneath",
    "read_project_file",
    "shown_name",
]

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0)
# O_NONBLOCK: should the leaf become a FIFO after the check, open must not hang.
_LEAF_FLAGS = (
    os.O_RDONLY | os.O_NOFOLLOW | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_CLOEXEC", 0)
)
_ALLOW_HARDLINKS_SETTING = "KERNEL_MCP_ALLOW_HARDLINKS"


@dataclass(frozen=True, slots=True)
class ProjectFile:
    """A file that passed the guard, with the content that was checked."""

    path: Path
    """Real, absolute path."""
    relative: str
    """Path relative to the projects folder, with forward slashes."""
    source: str
    """The file's text, decoded as UTF-8, with one leading byte-order mark removed."""


def _inside(root: str, candidate: str) -> bool:
    return candidate == root or candidate.startswith(root.rstrip(os.sep) + os.sep)


def _refuse(rule: str, name: str, why: str) -> PathRefused:
    return PathRefused(rule, f"Refused {name!r}: {why} (rule: {rule}).")


def _lexical_inside(root: Path, real_root: str, name: str, shown: str) -> str:
    """The name as a normalised path, refused unless it is lexically inside the folder
    (its real path or the path it was given as); links are judged later, on disk."""
    given = Path(name)
    lexical = os.path.normpath(given if given.is_absolute() else Path(real_root) / given)
    if not _inside(real_root, lexical) and not _inside(os.path.normpath(root), lexical):
        if given.is_absolute():
            raise _refuse(
                "outside_projects_dir", shown, "absolute path outside the projects folder"
            )
        raise _refuse("path_traversal", shown, "'..' leads out of the projects folder")
    return lexical


def _checked_name(name: str) -> str:
    """The name as shown in a refusal, once it is a name a file system could hold."""
    shown = name if len(name) <= 200 else name[:200] + "…"
    if not name or not name.strip():
        raise _refuse("empty_name", shown, "a file name is required")
    if "\x00" in name:
        raise _refuse("nul_byte", shown.replace("\x00", "\\x00"), "the name contains a NUL byte")
    try:
        os.fsencode(name)
    except UnicodeEncodeError:
        raise _refuse("unencodable_name", shown, "the name is not valid file-system text") from None
    return shown


def is_text_name(name: str) -> bool:
    """Whether a name read from the file system is UTF-8 (no byte stood in by a surrogate)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def shown_name(name: str) -> str:
    """A path as text any reply can carry: bytes that are not UTF-8 shown as ``\\xNN``."""
    if is_text_name(name):
        return name
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _close(fd: int) -> None:
    if fd >= 0:
        os.close(fd)


# --- the no-symlink walk ----------------------------------------------------------


def open_dir_beneath(real_root: str, parts: Sequence[str]) -> int:
    """Open the folder ``real_root/parts[0]/…/parts[-1]`` without following a symlink.

    Each component is opened relative to the descriptor of the one before it,
    with ``O_NOFOLLOW | O_DIRECTORY``, so the folder returned is beneath
    ``real_root`` whatever is renamed or swapped while the walk runs: a
    component that is (or has just become) a symlink stops the walk instead of
    leading elsewhere. ``real_root`` itself is opened normally; pass the
    ``os.path.realpath`` of the projects folder.

    The returned descriptor (``O_RDONLY``, close-on-exec) belongs to the caller,
    who must close it. Use it as ``dir_fd`` for the last step, for example to
    read a file::

        fd = os.open(leaf, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK, dir_fd=folder)

    or to create one atomically beneath the folder::

        tmp = os.open(temp_name, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW,
                      0o644, dir_fd=folder)
        ...write, os.fsync(tmp), os.close(tmp)...
        os.replace(temp_name, leaf, src_dir_fd=folder, dst_dir_fd=folder)
        os.fsync(folder)

    Args:
        real_root: the real (symlink-free) path of the projects folder.
        parts: folder names below it; empty for the folder itself.

    Raises:
        ValueError: a part is empty, ``.``, ``..``, or holds ``/`` or NUL (a
            programming error: these would climb or skip levels).
        OSError: ``errno`` says why, never with a file name attached:
            ``ENOENT`` a component is missing; ``ELOOP`` a component is a
            symlink, or was one while the walk ran (the tree changed);
            ``ENOTDIR`` a component is something other than a folder;
            ``EACCES`` and others as the system reports them.
    """
    for part in parts:
        if part in ("", ".", "..") or "/" in part or "\x00" in part:
            raise ValueError("each part must be one plain folder name")
    fd = os.open(real_root, os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_CLOEXEC", 0))
    try:
        return _walk_from(fd, parts)
    finally:
        os.close(fd)


def _walk_from(base: int, parts: Sequence[str]) -> int:
    """A new descriptor of ``base/parts...``, following no symlink; ``base`` stays open."""
    fd = base
    try:
        for part in parts:
            child = _open_child_dir(fd, part)
            if fd != base:
                os.close(fd)
            fd = child
    except BaseException:
        if fd != base:
            os.close(fd)
        raise
    return fd if fd != base else os.dup(base)


def _open_child_dir(parent: int, name: str) -> int:
    """Open folder ``name`` beneath ``parent`` without following it."""
    try:
        return os.open(name, _DIR_FLAGS, dir_fd=parent)
    except OSError as exc:
        code = exc.errno or errno.EIO
        if code in (errno.ENOTDIR, errno.ELOOP):
            # Linux says ENOTDIR for O_NOFOLLOW|O_DIRECTORY on a symlink: tell the
            # two apart, because a symlink here means the tree changed under us.
            code = _kind_at(parent, name, code)
        # A fresh error: the system's one may carry a file name.
        raise OSError(code, os.strerror(code)) from None


def _kind_at(parent: int, name: str, default: int) -> int:
    try:
        info = os.stat(name, dir_fd=parent, follow_symlinks=False)
    except FileNotFoundError:
        return errno.ENOENT
    except OSError:
        return default
    if stat.S_ISLNK(info.st_mode):
        return errno.ELOOP
    if not stat.S_ISDIR(info.st_mode):
        return errno.ENOTDIR
    # A folder now, but the open failed: it was swapped in between.
    return errno.ELOOP


# --- reading one file ---------------------------------------------------------------


def read_project_file(
    root: Path,
    name: str,
    *,
    suffixes: tuple[str, ...] = (".py",),
    max_bytes: int,
    allow_hardlinks: bool = False,
    action: str = "run",
) -> ProjectFile:
    """Check ``name`` against the guard and read it.

    Args:
        root: the projects folder (resolved or not).
        name: what the caller gave: relative to ``root``, or absolute.
        suffixes: allowed file endings, lower case.
        max_bytes: the largest file accepted.
        allow_hardlinks: accept regular files with more than one hard link.
            Off by default: a hard link inside the folder may be an outside file.

    Raises:
        PathRefused: a rule was broken; ``rule`` names it (``empty_name``,
            ``nul_byte``, ``unencodable_name``, ``outside_projects_dir``,
            ``path_traversal``, ``symlink_escape``, ``file_type``,
            ``not_regular_file``, ``hardlink``, ``too_large``, ``unreadable``,
            ``changed_during_check``).
        FileNotFound: the name is inside the folder but nothing is there.
        InvalidArgument: the file is not UTF-8 text.
    """
    shown = _checked_name(name)

    changed = _refuse("changed_during_check", shown, "the file changed while being checked")
    missing = FileNotFound(f"No file {shown!r} in the projects folder.")
    try:
        real_root = os.path.realpath(root)
    except OSError:
        raise changed from None
    lexical = _lexical_inside(root, real_root, name, shown)

    try:
        real = os.path.realpath(lexical)
    except OSError:
        # realpath reads links as it goes; one that turns into a folder or vanishes
        # mid-way raises (with the absolute path in its text, which stays here).
        raise changed from None
    if not _inside(real_root, real):
        raise _refuse("symlink_escape", shown, "a symlink leads out of the projects folder")
    if not real.lower().endswith(suffixes) or not lexical.lower().endswith(suffixes):
        allowed = ", ".join(suffixes)
        raise _refuse("file_type", shown, f"only {allowed} files may be {action}")
    parts = PurePosixPath(os.path.relpath(real, real_root)).parts if real != real_root else ()
    if not parts:
        raise _refuse("not_regular_file", shown, "not a regular file (directory, FIFO or device)")

    def walk_failure(exc: OSError) -> Exception:
        code = exc.errno
        if code == errno.ENOENT:
            return missing
        if code == errno.ELOOP and _is_symlink_loop(real):
            return _refuse("unreadable", shown, os.strerror(errno.ELOOP))
        if code in (errno.ELOOP, errno.EXDEV):
            # A component is a symlink although realpath resolved them all: the tree
            # moved between the check and the walk.
            return changed
        # ENOTDIR (a file used as a folder), EACCES, ENAMETOOLONG...: the system's
        # wording, never its text, which may name the absolute path.
        return _refuse("unreadable", shown, os.strerror(code) if code else "cannot be read")

    folder = -1
    fd = -1
    try:
        try:
            folder = open_dir_beneath(real_root, parts[:-1])
            info = os.stat(parts[-1], dir_fd=folder, follow_symlinks=False)
        except OSError as exc:
            raise walk_failure(exc) from None
        if stat.S_ISLNK(info.st_mode):
            raise walk_failure(OSError(errno.ELOOP, os.strerror(errno.ELOOP)))
        # Decided from the entry before opening: opening a FIFO or a device can block
        # or act on the device.
        if not stat.S_ISREG(info.st_mode):
            raise _refuse(
                "not_regular_file", shown, "not a regular file (directory, FIFO or device)"
            )
        _check_links_and_size(info, shown, max_bytes=max_bytes, allow_hardlinks=allow_hardlinks)
        try:
            fd = os.open(parts[-1], _LEAF_FLAGS, dir_fd=folder)
        except OSError as exc:
            raise walk_failure(exc) from None
        # What counts is the descriptor: the same inode that was checked, still regular.
        opened = os.fstat(fd)
        if not stat.S_ISREG(opened.st_mode) or (opened.st_dev, opened.st_ino) != (
            info.st_dev,
            info.st_ino,
        ):
            raise changed
        _check_links_and_size(opened, shown, max_bytes=max_bytes, allow_hardlinks=allow_hardlinks)
        data = _read_at_most(fd, max_bytes + 1)
    finally:
        _close(fd)
        _close(folder)
    if len(data) > max_bytes:
        raise _refuse("too_large", shown, f"larger than the {max_bytes}-byte limit")
    try:
        # utf-8-sig drops one leading BOM, as `python file.py` does.
        source = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidArgument(f"{shown!r} is not UTF-8 text.") from None
    # The real path may hold bytes that are not UTF-8 (also behind a link whose own
    # name is): shown escaped, or the reply could not be sent.
    return ProjectFile(path=Path(real), relative=shown_name("/".join(parts)), source=source)


def _check_links_and_size(
    info: os.stat_result, shown: str, *, max_bytes: int, allow_hardlinks: bool
) -> None:
    # Links before size: the size of a linked file would describe an outside file.
    if info.st_nlink > 1 and not allow_hardlinks:
        raise _refuse(
            "hardlink",
            shown,
            f"the file has {info.st_nlink} hard links, and a hard link may be a file from "
            f"outside the projects folder; set {_ALLOW_HARDLINKS_SETTING}=1 to allow them",
        )
    if info.st_size > max_bytes:
        raise _refuse("too_large", shown, f"larger than the {max_bytes}-byte limit")


def _is_symlink_loop(real: str) -> bool:
    """Whether ``real`` fails because of a symlink loop, as opposed to a swap."""
    try:
        os.stat(real)
    except OSError as exc:
        return exc.errno == errno.ELOOP
    return False


def _read_at_most(fd: int, limit: int) -> bytes:
    chunks: list[bytes] = []
    left = limit
    while left > 0:
        chunk = os.read(fd, min(left, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        left -= len(chunk)
    return b"".join(chunks)
