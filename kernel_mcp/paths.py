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

Listing (:func:`list_project_files`) is one bounded walk whose cost does not
depend on the pattern's shape: capped in entries, time and results, stoppable by
an event, and never entering a symlinked folder.

Names that are not UTF-8. Any kernel may create one (``open(b'\\xff.py', 'w')``),
and no MCP reply can carry it: JSON text is Unicode, so Python's stand-in for such
a byte (a lone surrogate) makes the whole reply fail. Listing skips them and counts
them (a name shown escaped, as ``\\xff``, could not be passed back: it names
another file); a file the guard reads or runs under such a name is shown escaped
(:func:`shown_name`); ``write_file`` never creates one.
"""

from __future__ import annotations

import contextlib
import errno
import fnmatch
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kernel_mcp.errors import FileNotFound, InvalidArgument, PathRefused

__all__ = [
    "MAX_LISTED_FILES",
    "MAX_PATTERN_CHARS",
    "MAX_WALK_DEPTH",
    "MAX_WALK_ENTRIES",
    "WALK_TIME_BUDGET_S",
    "FileListing",
    "ProjectFile",
    "WrittenFile",
    "is_text_name",
    "list_project_files",
    "open_dir_beneath",
    "read_project_file",
    "shown_name",
    "validate_name",
    "write_project_file",
]

MAX_LISTED_FILES = 1000
"""Default cap on the names one listing returns."""
MAX_WALK_ENTRIES = 200_000
"""Default cap on the folder entries one listing reads."""
WALK_TIME_BUDGET_S = 10.0
"""Default wall-clock budget of one listing, in seconds."""
MAX_WALK_DEPTH = 100
"""Folders nested deeper than this below the projects folder are not searched."""
MAX_PATTERN_CHARS = 1024
"""Longest glob accepted by :func:`list_project_files`."""

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
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


# --- listing ------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class FileListing:
    """What :func:`list_project_files` found."""

    files: list[str] = field(default_factory=list)
    """Relative POSIX paths, sorted; the first ones in sorted order when truncated."""
    truncated: bool = False
    """True when the walk stopped early or more files matched than were returned."""
    reason: str | None = None
    """Why it was truncated, e.g. ``"more than 1000 matches"``; None when complete."""
    not_utf8: int = 0
    """Matching names (files, or folders the pattern could enter) left out because they
    are not UTF-8: no reply can carry them (see the module docstring)."""


_Matcher = Callable[[str], bool]
_DOUBLE_STAR = "**"


def _component_matcher(component: str) -> _Matcher:
    if not any(char in component for char in "*?["):
        return component.__eq__
    # fnmatch's translation keeps star runs from backtracking; a name holds no '/'.
    return re.compile(fnmatch.translate(component)).match  # type: ignore[return-value]


@dataclass(frozen=True, slots=True)
class _Glob:
    """A glob as a small automaton over path components.

    A state is how many pattern components are consumed. One regex over the whole
    path would backtrack polynomially in the number of ``**``: the blow-up this
    replaces. Stepping a set of states per component costs at most (pattern
    components) matches per entry, whatever the pattern.
    """

    parts: tuple[str, ...]
    matchers: tuple[_Matcher | None, ...]  # None for '**'

    @classmethod
    def compile(cls, components: Sequence[str]) -> _Glob:
        parts: list[str] = []
        for part in components:
            if part == _DOUBLE_STAR and parts and parts[-1] == _DOUBLE_STAR:
                continue
            parts.append(part)
        if parts and parts[-1] == _DOUBLE_STAR:
            parts.append("*")  # 'pkg/**' means every file below pkg, not pkg itself
        matchers = tuple(
            None if part == _DOUBLE_STAR else _component_matcher(part) for part in parts
        )
        return cls(parts=tuple(parts), matchers=matchers)

    def closure(self, states: frozenset[int]) -> frozenset[int]:
        """Add the states reached by letting each '**' match no folder."""
        out = set(states)
        for state in sorted(states):
            while state < len(self.parts) and self.matchers[state] is None:
                state += 1
                out.add(state)
        return frozenset(out)

    def step(self, states: frozenset[int], name: str) -> frozenset[int]:
        """The states after one more path component."""
        nxt: set[int] = set()
        for state in states:
            if state >= len(self.parts):
                continue
            matcher = self.matchers[state]
            if matcher is None:
                nxt.add(state)  # '**' swallows this folder and may swallow more
            elif matcher(name):
                nxt.add(state + 1)
        return self.closure(frozenset(nxt))

    def accepts(self, states: frozenset[int]) -> bool:
        return len(self.parts) in states


def _pattern_components(pattern: str) -> list[str]:
    if not pattern or "\x00" in pattern:
        raise InvalidArgument("pattern must be a non-empty glob such as '**/*.py'")
    if len(pattern) > MAX_PATTERN_CHARS:
        raise InvalidArgument(f"pattern must be at most {MAX_PATTERN_CHARS} characters")
    if pattern.startswith(("/", "\\")) or ".." in PurePosixPath(pattern).parts:
        raise InvalidArgument("pattern must be relative to the projects folder, without '..'")
    components = [part for part in pattern.split("/") if part not in ("", ".")]
    if not components:
        raise InvalidArgument("pattern must be a non-empty glob such as '**/*.py'")
    return components


class _Stop(Exception):
    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


_DIR, _FILE, _LINK = "dir", "file", "link"
# Entries whose names are not UTF-8: matched against the pattern to be counted, never shown.
_BAD_DIR, _BAD_FILE = "not_utf8_dir", "not_utf8_file"


@dataclass(slots=True)
class _Frame:
    """One folder of the walk."""

    name: str
    rel: str
    states: frozenset[int]
    fd: int
    """Its descriptor, or -1 once deeper than the kept ones."""
    children: list[tuple[str, str, str]]
    """(sort key, name, kind), in sort-key order."""
    index: int = 0


# Descriptors kept open along the current branch; deeper folders are reopened from
# the deepest kept one, so one walk holds at most this many whatever the depth.
_KEPT_FDS = 16


def list_project_files(
    root: Path,
    pattern: str = "**/*.py",
    *,
    max_results: int = MAX_LISTED_FILES,
    max_entries: int = MAX_WALK_ENTRIES,
    time_budget_s: float = WALK_TIME_BUDGET_S,
    cancel: threading.Event | None = None,
) -> FileListing:
    """Regular files under ``root`` matching a glob, as sorted relative paths.

    The glob is matched against the whole relative POSIX path, case-sensitively:
    ``*`` and ``?`` match within one name, ``[...]`` is a character class (``[!...]``
    negates it), and a ``**`` component matches zero or more folders (``**/x.py``
    finds ``x.py`` at the top too; a trailing ``**`` means every file below).
    Empty and ``.`` components are ignored.

    One walk reads the folder, starting at the pattern's literal leading folders
    and entering only folders the pattern can still match below, so its cost is
    bounded by the tree, not by the pattern's shape. It skips hidden entries
    (names starting with ``.``) and never enters a symlinked folder: following
    them would list files twice, loop, let a swapped link point the walk outside,
    and make the cost depend on the links rather than the tree; every file inside
    the folder is reachable by its real path anyway. A symlinked file is listed
    when its real path is a regular file inside the folder.

    The walk stops, with ``truncated`` set and a ``reason``, after more than
    ``max_results`` matches, after ``max_entries`` entries read, after
    ``time_budget_s`` seconds, or when ``cancel`` is set. Folders deeper than
    ``MAX_WALK_DEPTH`` levels are not searched (also reported). Files come in
    sorted order, so a truncated listing holds the first names of the full one.
    It blocks: call it in a worker thread and set ``cancel`` to stop it.

    Raises:
        InvalidArgument: the pattern is empty, too long, absolute, holds NUL, or
            climbs out with ``..``.
    """
    components = _pattern_components(pattern)
    deadline = time.monotonic() + time_budget_s
    real_root = os.path.realpath(root)

    # Literal leading folders are opened directly instead of searched for.
    start: list[str] = []
    for part in components[:-1]:
        if part == _DOUBLE_STAR or any(char in part for char in "*?["):
            break
        start.append(part)
    if any(part.startswith(".") for part in start):
        return FileListing()
    glob = _Glob.compile(components[len(start) :])

    found: list[str] = []
    entries = 0
    not_text = 0
    deep_skipped = False
    stack: list[_Frame] = []

    def check_budget() -> None:
        if cancel is not None and cancel.is_set():
            raise _Stop("cancelled")
        if time.monotonic() > deadline:
            raise _Stop(f"walk stopped after {time_budget_s:g} s")

    def read_folder(fd: int, name: str, rel: str, states: frozenset[int]) -> _Frame:
        nonlocal entries
        children: list[tuple[str, str, str]] = []
        with os.scandir(fd) as listing:
            for entry in listing:
                entries += 1
                if entries > max_entries:
                    raise _Stop(f"walk stopped after {max_entries} entries")
                if entries % 64 == 0:
                    check_budget()
                if entry.name.startswith("."):
                    continue
                if not is_text_name(entry.name):
                    is_dir = False
                    with contextlib.suppress(OSError):
                        is_dir = entry.is_dir(follow_symlinks=False)
                    children.append((entry.name, entry.name, _BAD_DIR if is_dir else _BAD_FILE))
                    continue
                try:
                    if entry.is_symlink():
                        kind = _LINK
                    elif entry.is_dir(follow_symlinks=False):
                        kind = _DIR
                    elif entry.is_file(follow_symlinks=False):
                        kind = _FILE
                    else:
                        continue  # FIFOs, sockets, devices
                except OSError:
                    continue
                # A folder's key ends in '/' so that visiting children in key order
                # yields the full paths in sorted order.
                children.append(
                    (entry.name + "/" if kind == _DIR else entry.name, entry.name, kind)
                )
        children.sort()
        return _Frame(name=name, rel=rel, states=states, fd=fd, children=children)

    def open_child(name: str) -> int:
        kept = len(stack) - 1
        while stack[kept].fd < 0:
            kept -= 1
        return _walk_from(stack[kept].fd, [frame.name for frame in stack[kept + 1 :]] + [name])

    def link_is_listed(rel: str) -> bool:
        try:
            real = os.path.realpath(os.path.join(real_root, rel))
            return _inside(real_root, real) and stat.S_ISREG(os.stat(real).st_mode)
        except OSError:
            return False

    reason: str | None = None
    try:
        check_budget()
        try:
            start_fd = open_dir_beneath(real_root, start)
        except OSError:
            return FileListing()
        try:
            stack.append(read_folder(start_fd, "", "/".join(start), glob.closure(frozenset({0}))))
        except BaseException:
            _close(start_fd)
            raise
        while stack:
            frame = stack[-1]
            if frame.index >= len(frame.children):
                stack.pop()
                _close(frame.fd)
                continue
            _, name, kind = frame.children[frame.index]
            frame.index += 1
            states = glob.step(frame.states, name)
            if not states:
                continue
            rel = f"{frame.rel}/{name}" if frame.rel else name
            if kind == _BAD_FILE:
                not_text += glob.accepts(states)
                continue
            if kind == _BAD_DIR:
                # Counted once when the pattern could match something inside; not entered.
                not_text += any(state < len(glob.parts) for state in states)
                continue
            if kind == _DIR:
                if not any(state < len(glob.parts) for state in states):
                    continue  # the pattern is used up: nothing below can match
                if len(start) + len(stack) > MAX_WALK_DEPTH:
                    deep_skipped = True
                    continue
                check_budget()
                try:
                    child_fd = open_child(name)
                except OSError:
                    continue  # gone, swapped for a link, or unreadable: skip it
                try:
                    child = read_folder(child_fd, name, rel, states)
                except OSError:
                    _close(child_fd)
                    continue
                except BaseException:
                    _close(child_fd)
                    raise
                if len(stack) >= _KEPT_FDS:
                    _close(child_fd)
                    child.fd = -1
                stack.append(child)
            elif glob.accepts(states) and (kind == _FILE or link_is_listed(rel)):
                found.append(rel)
                if len(found) > max_results:
                    raise _Stop(f"more than {max_results} matches")
    except _Stop as stop:
        reason = stop.reason
    finally:
        for frame in stack:
            _close(frame.fd)
    if reason is None and deep_skipped:
        reason = f"folders more than {MAX_WALK_DEPTH} levels deep were not searched"
    return FileListing(
        files=sorted(found)[:max_results],
        truncated=reason is not None,
        reason=reason,
        not_utf8=not_text,
    )


def validate_name(name: str) -> str:
    """A session or notebook name: 1-64 letters, digits, '-', '_', '.'; never a path."""
    if not isinstance(name, str) or not _NAME.fullmatch(name) or ".." in name:
        raise InvalidArgument(
            f"Invalid name {str(name)[:80]!r}: use 1-64 letters, digits, '-', '_' or '.', "
            "starting with a letter or digit."
        )
    return name
