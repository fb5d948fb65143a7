"""Listing project files: one bounded walk matched against a glob.

Listing (:func:`list_project_files`) is one bounded walk whose cost does not
depend on the pattern's shape: capped in entries, time and results, stoppable by
an event, and never entering a symlinked folder.

Names that are not UTF-8 are skipped and counted (``files.guard`` says why).
"""

from __future__ import annotations

import contextlib
import fnmatch
import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path, PurePosixPath

from kernel_mcp.errors import InvalidArgument
from kernel_mcp.files.guard import _close, _inside, _walk_from, is_text_name, open_dir_beneath

__all__ = [
    "MAX_LISTED_FILES",
    "MAX_PATTERN_CHARS",
    "MAX_WALK_DEPTH",
    "MAX_WALK_ENTRIES",
    "WALK_TIME_BUDGET_S",
    "FileListing",
    "list_project_files",
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
    # Literal leading folders are opened directly instead of searched for.
    start: list[str] = []
    for part in components[:-1]:
        if part == _DOUBLE_STAR or any(char in part for char in "*?["):
            break
        start.append(part)
    if any(part.startswith(".") for part in start):
        return FileListing()
    walk = _Walk(
        os.path.realpath(root),
        _Glob.compile(components[len(start) :]),
        start=start,
        max_results=max_results,
        max_entries=max_entries,
        time_budget_s=time_budget_s,
        cancel=cancel,
    )
    return walk.run()


class _Walk:
    """One listing: a depth-first walk in sorted order, stepping the glob per folder."""

    def __init__(
        self,
        real_root: str,
        glob: _Glob,
        *,
        start: list[str],
        max_results: int,
        max_entries: int,
        time_budget_s: float,
        cancel: threading.Event | None,
    ) -> None:
        self.real_root = real_root
        self.glob = glob
        self.start = start
        self.max_results = max_results
        self.max_entries = max_entries
        self.time_budget_s = time_budget_s
        self.deadline = time.monotonic() + time_budget_s
        self.cancel = cancel
        self.found: list[str] = []
        self.entries = 0
        self.not_text = 0
        self.deep_skipped = False
        self.stack: list[_Frame] = []

    def run(self) -> FileListing:
        reason: str | None = None
        try:
            self._check_budget()
            if not self._enter_start():
                return FileListing()
            while self.stack:
                self._step()
        except _Stop as stop:
            reason = stop.reason
        finally:
            for frame in self.stack:
                _close(frame.fd)
        if reason is None and self.deep_skipped:
            reason = f"folders more than {MAX_WALK_DEPTH} levels deep were not searched"
        return FileListing(
            files=sorted(self.found)[: self.max_results],
            truncated=reason is not None,
            reason=reason,
            not_utf8=self.not_text,
        )

    def _check_budget(self) -> None:
        if self.cancel is not None and self.cancel.is_set():
            raise _Stop("cancelled")
        if time.monotonic() > self.deadline:
            raise _Stop(f"walk stopped after {self.time_budget_s:g} s")

    def _enter_start(self) -> bool:
        """Open the pattern's literal leading folders; False if they are not there."""
        try:
            start_fd = open_dir_beneath(self.real_root, self.start)
        except OSError:
            return False
        try:
            states = self.glob.closure(frozenset({0}))
            self.stack.append(self._read_folder(start_fd, "", "/".join(self.start), states))
        except BaseException:
            _close(start_fd)
            raise
        return True

    def _step(self) -> None:
        """Visit the next entry of the deepest folder (or leave the folder when done)."""
        frame = self.stack[-1]
        if frame.index >= len(frame.children):
            self.stack.pop()
            _close(frame.fd)
            return
        _, name, kind = frame.children[frame.index]
        frame.index += 1
        states = self.glob.step(frame.states, name)
        if not states:
            return
        rel = f"{frame.rel}/{name}" if frame.rel else name
        more = any(state < len(self.glob.parts) for state in states)
        if kind == _BAD_FILE:
            self.not_text += self.glob.accepts(states)
        elif kind == _BAD_DIR:
            # Counted once when the pattern could match something inside; not entered.
            self.not_text += more
        elif kind == _DIR:
            if more:  # else the pattern is used up: nothing below can match
                self._enter(name, rel, states)
        elif self.glob.accepts(states) and (kind == _FILE or self._link_is_listed(rel)):
            self.found.append(rel)
            if len(self.found) > self.max_results:
                raise _Stop(f"more than {self.max_results} matches")

    def _enter(self, name: str, rel: str, states: frozenset[int]) -> None:
        if len(self.start) + len(self.stack) > MAX_WALK_DEPTH:
            self.deep_skipped = True
            return
        self._check_budget()
        try:
            child_fd = self._open_child(name)
        except OSError:
            return  # gone, swapped for a link, or unreadable: skip it
        try:
            child = self._read_folder(child_fd, name, rel, states)
        except OSError:
            _close(child_fd)
            return
        except BaseException:
            _close(child_fd)
            raise
        if len(self.stack) >= _KEPT_FDS:
            _close(child_fd)
            child.fd = -1
        self.stack.append(child)

    def _read_folder(self, fd: int, name: str, rel: str, states: frozenset[int]) -> _Frame:
        children: list[tuple[str, str, str]] = []
        with os.scandir(fd) as listing:
            for entry in listing:
                self.entries += 1
                if self.entries > self.max_entries:
                    raise _Stop(f"walk stopped after {self.max_entries} entries")
                if self.entries % 64 == 0:
                    self._check_budget()
                if entry.name.startswith("."):
                    continue
                child = _child(entry)
                if child is not None:
                    children.append(child)
        children.sort()
        return _Frame(name=name, rel=rel, states=states, fd=fd, children=children)

    def _open_child(self, name: str) -> int:
        stack = self.stack
        kept = len(stack) - 1
        while stack[kept].fd < 0:
            kept -= 1
        return _walk_from(stack[kept].fd, [frame.name for frame in stack[kept + 1 :]] + [name])

    def _link_is_listed(self, rel: str) -> bool:
        try:
            real = os.path.realpath(os.path.join(self.real_root, rel))
            return _inside(self.real_root, real) and stat.S_ISREG(os.stat(real).st_mode)
        except OSError:
            return False


def _child(entry: os.DirEntry[str]) -> tuple[str, str, str] | None:
    """(sort key, name, kind) of a folder entry; None for what is never listed."""
    if not is_text_name(entry.name):
        is_dir = False
        with contextlib.suppress(OSError):
            is_dir = entry.is_dir(follow_symlinks=False)
        return (entry.name, entry.name, _BAD_DIR if is_dir else _BAD_FILE)
    try:
        if entry.is_symlink():
            kind = _LINK
        elif entry.is_dir(follow_symlinks=False):
            kind = _DIR
        elif entry.is_file(follow_symlinks=False):
            kind = _FILE
        else:
            return None  # FIFOs, sockets, devices
    except OSError:
        return None
    # A folder's key ends in '/' so that visiting children in key order yields the
    # full paths in sorted order.
    return (entry.name + "/" if kind == _DIR else entry.name, entry.name, kind)
