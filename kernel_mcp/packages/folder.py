"""A session's packages folder: installs that a kernel sees whole or not at all.

::

    <root>/
      current -> v3      a relative symlink: the one path a kernel puts on sys.path
      v3/                the live tree, as uv's --target made it
      .stage-<token>/    an install in progress (gone when it ends)

An install never touches the live tree. It stages a copy of it made of hard links
(no file is copied: uv replaces files by unlinking and linking, never by writing
into them, so the live tree's files never change), uv installs into the copy, the
size cap is checked there, and only then is ``current`` switched to it by renaming
a new symlink over the old one: one atomic step. A failure, a timeout, a cap
reached or a cancelled call just removes the stage. A kernel importing during an
install sees the old tree, and after it the new one; the old tree is then removed
(files a running kernel still has open or mapped live on until it closes them).

Why not install straight into the live folder: a half-done install (killed at its
time limit, over the cap, a server crash) would leave half a package that the
kernel imports. Why a symlink and not renaming folders: the root is bound into
the kernel's sandbox, and a bind shows what is inside the bound folder (new
entries, a changed symlink), never a folder renamed over it.

Why ``--target`` (one flat folder) and not ``--prefix`` (``lib/pythonX.Y/site-packages``
under it): the kernel needs one folder in front of ``sys.path``, and ``--target``
is that folder, whatever the kernel's Python version.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import secrets
import shutil
import stat
from pathlib import Path

__all__ = ["PackageFolder", "tree_bytes"]

CURRENT = "current"
_VERSION = re.compile(r"^v(\d+)$")
_STAGE_PREFIX = ".stage-"


def tree_bytes(path: Path) -> int:
    """The size of the regular files under ``path``: apparent sizes, each inode once
    (hard links to uv's cache count in full: they are this session's packages);
    symlinks are not followed."""
    total = 0
    seen: set[tuple[int, int]] = set()
    for folder, _dirs, files in os.walk(path):
        for name in files:
            try:
                info = os.lstat(os.path.join(folder, name))
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode) and (info.st_dev, info.st_ino) not in seen:
                seen.add((info.st_dev, info.st_ino))
                total += info.st_size
    return total


class PackageFolder:
    """The packages folder of one session, and its lock: one install at a time."""

    def __init__(self, root: Path) -> None:
        self.root = root
        #: Held for an install's whole length; a second install waits for it.
        self.lock = asyncio.Lock()

    @property
    def path_entry(self) -> Path:
        """What goes on the kernel's ``sys.path`` (through the symlink, so that it
        follows every install)."""
        return self.root / CURRENT

    def live(self) -> Path | None:
        """The live tree (what ``current`` names), or None before the first install."""
        try:
            target = os.readlink(self.root / CURRENT)
        except OSError:
            return None
        if not _VERSION.match(target):
            return None
        live = self.root / target
        return live if live.is_dir() else None

    def create(self) -> None:
        """Make the root (private to this user) with an empty live tree, if missing."""
        self.root.mkdir(mode=0o700, parents=True, exist_ok=True)
        if self.live() is None:
            first = self.root / "v0"
            first.mkdir(exist_ok=True)
            self._point_at(first.name)

    def stage(self) -> Path:
        """A copy of the live tree, of hard links, for an install to change."""
        self.create()
        stage = self.root / f"{_STAGE_PREFIX}{secrets.token_hex(6)}"
        live = self.live()
        assert live is not None
        shutil.copytree(live, stage, symlinks=True, copy_function=os.link)
        return stage

    def commit(self, stage: Path) -> Path | None:
        """Make ``stage`` the live tree, in one atomic step (fast: two renames). Returns
        the old tree, for :meth:`discard` (which can take a while)."""
        old = self.live()
        number = 1 + max(
            (int(m.group(1)) for p in self.root.iterdir() if (m := _VERSION.match(p.name))),
            default=0,
        )
        live = self.root / f"v{number}"
        stage.rename(live)
        self._point_at(live.name)
        return old

    def discard(self, tree: Path) -> None:
        """Remove a stage that will not go live, or a tree that is live no more."""
        shutil.rmtree(tree, ignore_errors=True)

    def clean(self) -> None:
        """Remove what an interrupted server left: stages, and trees not live."""
        if not self.root.is_dir():
            return
        live = self.live()
        for entry in self.root.iterdir():
            if entry.name.startswith(_STAGE_PREFIX) or (
                _VERSION.match(entry.name) and entry != live
            ):
                shutil.rmtree(entry, ignore_errors=True)

    def remove(self) -> None:
        """Remove the whole folder (the session closed)."""
        shutil.rmtree(self.root, ignore_errors=True)

    def size_bytes(self) -> int:
        """The live tree's size (see :func:`tree_bytes`)."""
        live = self.live()
        return tree_bytes(live) if live is not None else 0

    def _point_at(self, name: str) -> None:
        link = self.root / f".{CURRENT}-{secrets.token_hex(6)}"
        os.symlink(name, link)
        try:
            os.replace(link, self.root / CURRENT)
        except BaseException:
            with contextlib.suppress(OSError):
                link.unlink()
            raise
