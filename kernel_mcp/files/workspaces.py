"""Workspaces: which projects folder a principal's files and kernels use, and its cap.

With one principal (no token, or one token) the workspace is the projects folder
itself. With several, each principal gets a folder of its own below it, named after
the principal, unless the operator opts into one shared folder
(``KERNEL_MCP_PROJECTS_SHARED``): then everyone's code can read and change
everyone's files, which is what a shared folder means.

A workspace is also what a kernel is started for: its working directory, and the
only projects folder its sandbox shows. So one principal's code can neither read
nor change what another principal's code runs.

The disk cap (``KERNEL_MCP_PROJECTS_QUOTA_MB``) is counted per workspace, in
allocated blocks. Why not file-system quotas: they need root and a file system
mounted with quotas, which a server started from a desktop client has neither
of. So the cap is enforced where the server can see writes coming:
``write_file`` checks it before writing, each kernel gets ``RLIMIT_FSIZE`` (no
single file past the cap), and :class:`QuotaWatch` measures a workspace while a
run writes to it and stops the run that grows it past the cap. A run starts from
the size a :class:`UsageLedger` measured when the workspace's previous run ended,
so the walk happens after a reply rather than before a run.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import stat
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kernel_mcp.errors import QuotaExceeded
from kernel_mcp.tasks import TaskOwner

__all__ = ["QuotaWatch", "Usage", "UsageLedger", "Workspaces", "measure"]

log = logging.getLogger(__name__)

MIB = 2**20
#: A measurement stops after this many entries (a huge tree is "at least" that big).
MAX_MEASURED_ENTRIES = 200_000
#: How often a run's workspace is measured while the run lasts, seconds.
WATCH_INTERVAL = 1.0
#: How long after a run's end its workspace is measured for the next run, seconds.
REMEASURE_DELAY = 0.05

README = """\
This folder holds the files of one kernel-mcp principal (one bearer token).
Its kernels see only this folder; other principals' kernels cannot see it.
"""


@dataclass(frozen=True)
class Usage:
    """What a workspace holds on disk."""

    bytes: int
    """Allocated bytes (blocks), hard links counted once."""
    complete: bool = True
    """False: the walk stopped at MAX_MEASURED_ENTRIES; the folder holds at least this."""


def measure(folder: Path, *, max_entries: int = MAX_MEASURED_ENTRIES) -> Usage:
    """Bytes allocated below ``folder``, never following a symlink. Blocking.

    Names that are not text, and entries that vanish meanwhile, are counted or
    skipped quietly: a measurement never fails on what a kernel left behind.
    """
    total = 0
    seen: set[tuple[int, int]] = set()
    entries = 0
    stack = [os.fsencode(folder)]
    while stack:
        current = stack.pop()
        try:
            with os.scandir(current) as listing:
                for entry in listing:
                    entries += 1
                    if entries > max_entries:
                        return Usage(total, complete=False)
                    try:
                        info = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    if (info.st_dev, info.st_ino) in seen:
                        continue
                    seen.add((info.st_dev, info.st_ino))
                    total += getattr(info, "st_blocks", 0) * 512 or info.st_size
                    if stat.S_ISDIR(info.st_mode):
                        stack.append(entry.path)
        except OSError:
            continue
    return Usage(total)


@dataclass
class Workspaces:
    """Maps principals to their projects folders.

    Args:
        root: the configured projects folder (real, absolute).
        per_principal: each principal has a folder of its own below ``root``.
        quota_bytes: the cap per workspace; 0: none.
    """

    root: Path
    per_principal: bool = False
    quota_bytes: int = 0
    _made: set[Path] = field(default_factory=set, repr=False)

    def folder(self, owner: str | None) -> Path:
        """The workspace of ``owner`` (None: the only principal), made if missing.

        Principal names are made by the server from its settings (letters, digits,
        ``-``, ``_``, ``.``), never by a caller, so they are safe folder names.
        """
        if not self.per_principal or owner is None:
            return self.root
        folder = self.root / owner
        if folder not in self._made:
            if not folder.is_dir():
                folder.mkdir(mode=0o700, exist_ok=True)
                with contextlib.suppress(OSError):
                    (folder / "README.md").write_text(README, encoding="utf-8")
            self._made.add(folder)
        return folder

    def all_folders(self) -> list[Path]:
        """Every workspace made so far (the root alone when folders are shared)."""
        return sorted(self._made) if self.per_principal else [self.root]

    def check_room(self, owner: str | None, adding: int, replacing: int = 0) -> None:
        """Raise unless ``adding`` bytes (in place of ``replacing``) fit under the cap.

        Blocking (it measures the folder): call it in a thread.

        Raises:
            QuotaExceeded: the workspace would go over KERNEL_MCP_PROJECTS_QUOTA_MB.
        """
        if not self.quota_bytes:
            return
        usage = measure(self.folder(owner))
        after = usage.bytes + max(0, adding - replacing)
        if after > self.quota_bytes:
            raise QuotaExceeded(self.over_message(usage.bytes))

    def over_message(self, used: int) -> str:
        return (
            f"The projects folder is at {used / MIB:.1f} MiB of its "
            f"{self.quota_bytes / MIB:.0f} MiB cap (KERNEL_MCP_PROJECTS_QUOTA_MB). "
            "Delete files with run_code first (os.remove, shutil.rmtree)."
        )


class UsageLedger:
    """The last measured size of each workspace, so that a run begins without a walk.

    Walking a folder of thousands of files takes as long as a whole run in a forked
    kernel (docs/benchmarks.md, case (q)); measuring before every run would double it. So
    the ledger measures a workspace shortly after a run in it ends, once the reply
    has been written, and the next run starts from that figure. A run that begins
    before that walk has started walks the folder itself, and one that begins while
    it runs waits for it, so a run that wrote past the cap just before it ended
    leaves the next one "over the cap at start" exactly as a walk would.

    What this gives up: files copied into the folder from outside the server
    between two runs are not in the figure; the next run is then stopped at its
    first measurement, and the one after starts from the true size.

    Args:
        tasks: owns the walks.
        measure_with: the walk.
        delay: seconds between a run's end and the walk. A walk holds the GIL for
            much of its time; started at once it delays the reply being written.
    """

    def __init__(
        self,
        tasks: TaskOwner,
        *,
        measure_with: Callable[[Path], Usage] = measure,
        delay: float = REMEASURE_DELAY,
    ) -> None:
        self._tasks = tasks
        self._measure = measure_with
        self._delay = delay
        self._known: dict[Path, int] = {}
        self._walks: dict[Path, asyncio.Task[None]] = {}
        self._due: dict[Path, asyncio.Task[None]] = {}

    async def size(self, folder: Path) -> int:
        """The bytes ``folder`` held at its last measurement (walked now if stale)."""
        if folder not in self._known:
            walk = self._walks.get(folder) or self._start_walk(folder)
            if walk is not None:
                # Not wait_for or shield: a caller that gives up must not cancel the
                # shared walk, and a walk stopped by shut-down is not the caller's cancel.
                await asyncio.wait({walk})
            if folder not in self._known:  # the walk was stopped, or no owner is left
                self.record(folder, (await asyncio.to_thread(self._measure, folder)).bytes)
        return self._known[folder]

    def record(self, folder: Path, size: int) -> None:
        """Keep ``size`` bytes as ``folder``'s latest measurement."""
        self._known[folder] = size

    def remeasure(self, folder: Path) -> None:
        """A run in ``folder`` has ended: its figure is stale; walk it after the delay."""
        self._known.pop(folder, None)
        if folder in self._due or self._tasks.closed:
            return

        async def later() -> None:
            try:
                await asyncio.sleep(self._delay)
            finally:
                self._due.pop(folder, None)
            if folder not in self._known and folder not in self._walks:
                self._start_walk(folder)

        self._due[folder] = self._tasks.spawn(later(), name="measure a workspace soon")

    def _start_walk(self, folder: Path) -> asyncio.Task[None] | None:
        if self._tasks.closed:
            return None

        async def walk() -> None:
            try:
                self.record(folder, (await asyncio.to_thread(self._measure, folder)).bytes)
            finally:
                self._walks.pop(folder, None)

        task = self._tasks.spawn(walk(), name="measure a workspace")
        self._walks[folder] = task
        return task


class QuotaWatch:
    """Measures one workspace while a run lasts; calls ``stop`` once if the run grows it
    past its cap (or past what it held at the start, when it was over the cap already:
    a run over the cap may delete files, not add them).

    Use as ``async with QuotaWatch(...) as watch``; ``watch.tripped`` says whether it
    stopped the run. The measuring task is owned here and ends with the block; the
    block's end asks ``ledger`` to measure the workspace once more, off the reply's
    path, for the next run's start.
    """

    def __init__(
        self,
        folder: Path,
        *,
        quota_bytes: int,
        stop: Callable[[], Awaitable[None]],
        ledger: UsageLedger,
        interval: float = WATCH_INTERVAL,
        measure_with: Callable[[Path], Usage] = measure,
    ) -> None:
        self.folder = folder
        self.quota_bytes = quota_bytes
        self._stop = stop
        self.interval = interval
        self._measure = measure_with
        self._ledger = ledger
        self.start_bytes = 0
        self.peak_bytes = 0
        self.tripped = False
        self._tasks = TaskOwner("quota watch")

    @property
    def limit(self) -> int:
        return max(self.quota_bytes, self.start_bytes)

    @property
    def over_at_start(self) -> bool:
        return self.start_bytes > self.quota_bytes

    async def __aenter__(self) -> QuotaWatch:
        if self.quota_bytes:
            self.start_bytes = self.peak_bytes = await self._ledger.size(self.folder)
            self._tasks.spawn(self._watch(), name="measure")
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self._tasks.close()
        if self.quota_bytes:
            self._ledger.remeasure(self.folder)

    async def _watch(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            started = time.monotonic()
            usage = await asyncio.to_thread(self._measure, self.folder)
            self._ledger.record(self.folder, usage.bytes)
            self.peak_bytes = max(self.peak_bytes, usage.bytes)
            if usage.bytes > self.limit:
                self.tripped = True
                log.info("a run grew %s past its cap; stopping it", self.folder.name)
                await self._stop()
                return
            # A slow walk (a huge tree) is not repeated back to back.
            await asyncio.sleep(min(5.0, time.monotonic() - started))

    def notes(self) -> list[str]:
        """What the reply says about the cap."""
        notes = []
        cap = f"{self.quota_bytes / MIB:.0f} MiB (KERNEL_MCP_PROJECTS_QUOTA_MB)"
        if self.over_at_start:
            notes.append(
                f"The projects folder was over its cap of {cap} when the run began "
                f"({self.start_bytes / MIB:.1f} MiB): a run may delete files, not add any."
            )
        if self.tripped:
            notes.append(
                f"The run was stopped: it grew the projects folder past {cap} "
                f"(at least {self.peak_bytes / MIB:.1f} MiB). Delete files to make room."
            )
        return notes
