"""Per-kernel control groups: a memory limit for the kernel's whole process tree and a task limit.

RLIMIT_AS limits one process's address space; a kernel that starts ten
children gets ten times the limit. A control group limits the tree: every
process the kernel starts lands in the kernel's group and is counted there.
Limits are written where the server can create groups:

* **cgroup v2** (one unified tree): ``memory.max`` and ``pids.max`` in a leaf
  below the server's own group. v2 lets a group hand controllers to its
  children only while it holds no processes itself ("no internal processes"),
  so this works where the server's group already delegates ``memory`` and
  ``pids`` to its children (a systemd unit with ``Delegate=yes`` that runs the
  server in a sub-group, a container whose init set it up), or where the
  server's group is the tree's root.
* **cgroup v1** (one tree per controller, as on this machine): a leaf in the
  ``memory`` tree (``memory.limit_in_bytes``, and ``memory.memsw.limit_in_bytes``
  where swap is accounted) and one in the ``pids`` tree (``pids.max``), each
  below the server's own group there. This needs write access to those trees:
  root, or a delegated tree.

Where neither works, the launcher's rlimits are all there is (see
``kernel_mcp.launch.sandbox``); :func:`cgroup_root` returns None and says why
in its log line.

A kernel joins its group before anything in it runs: the launch command is
wrapped in a one-line shell that writes its own pid into the group and then
execs the sandbox (:meth:`KernelCgroup.join_command`). Groups live under one
folder per server, ``kernel-mcp-<pid>-<random>``, removed when the backend
closes; folders of servers that died (SIGKILL) are removed by the next server.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import secrets
import signal
import time
from dataclasses import dataclass
from pathlib import Path

import psutil

__all__ = ["CgroupRoot", "KernelCgroup", "cgroup_root"]

log = logging.getLogger(__name__)

PREFIX = "kernel-mcp-"
#: How long a kernel's group may take to empty after the kernel was killed, seconds.
#: A PID namespace whose init died is torn down by the kernel within milliseconds.
EMPTY_WAIT = 2.0

# The shell that joins the groups and then becomes the sandbox. ``$$`` is the
# shell's pid, which exec keeps: bwrap and everything below it start inside.
_JOIN = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass(frozen=True)
class _Controller:
    """One place where limits are written: a folder and the files to write there."""

    base: Path
    """The server's folder for kernel groups in this tree."""
    limits: tuple[tuple[str, str], ...]
    """(file, limit kind) pairs; kinds are 'memory', 'tasks' and 'no-swap'. Files the
    tree lacks (swap accounting is optional) are skipped."""


class KernelCgroup:
    """One kernel's group (a leaf in each tree used). Made by :meth:`CgroupRoot.create`."""

    def __init__(self, folders: list[Path], *, version: int, memory_bytes: int = 0) -> None:
        self.folders = folders
        self.version = version
        self.memory_bytes = memory_bytes
        """The group's memory limit, bytes (0: none)."""
        self.removed = False
        self._oom_kills = 0

    def join_command(self, argv: list[str]) -> list[str]:
        """``argv`` run inside this group (from its first instruction on)."""
        procs = [str(folder / "cgroup.procs") for folder in self.folders]
        return ["/bin/sh", "-c", _JOIN, "kernel-mcp-cgroup", *procs, "--", *argv]

    def add(self, pid: int) -> None:
        """Move a running process (not its existing children) into the group."""
        for folder in self.folders:
            (folder / "cgroup.procs").write_text(f"{pid}\n")

    def pids(self) -> set[int]:
        """The processes in the group now (empty once it is removed)."""
        found: set[int] = set()
        for folder in self.folders:
            with contextlib.suppress(OSError, ValueError):
                found.update(int(line) for line in (folder / "cgroup.procs").read_text().split())
        return found

    def memory_peak(self) -> int | None:
        """The most memory the group used, bytes (where the tree reports it)."""
        for folder in self.folders:
            for name in ("memory.peak", "memory.max_usage_in_bytes"):
                with contextlib.suppress(OSError, ValueError):
                    return int((folder / name).read_text())
        return None

    def oom_kills(self) -> int:
        """Processes the kernel's OOM killer ended in this group for its memory limit.

        Read from ``memory.events`` (v2) or ``memory.oom_control`` (v1); the last count
        is kept once the group is removed, so a dead kernel's cause is still known.
        """
        for folder in self.folders:
            for name in ("memory.events", "memory.oom_control"):
                with contextlib.suppress(OSError, ValueError):
                    for line in (folder / name).read_text().splitlines():
                        key, _, value = line.partition(" ")
                        if key == "oom_kill":
                            self._oom_kills = max(self._oom_kills, int(value))
        return self._oom_kills

    def kill_all(self) -> None:
        """SIGKILL everything in the group (a last resort: PID namespaces end kernels)."""
        for folder in self.folders:
            kill = folder / "cgroup.kill"
            if self.version == 2 and kill.exists():
                with contextlib.suppress(OSError):
                    kill.write_text("1\n")
                    continue
        for pid in self.pids():
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)

    async def remove(self, wait: float = EMPTY_WAIT) -> bool:
        """Remove the group once it is empty; kill what is left after ``wait`` seconds.

        Returns whether every folder is gone. Safe to call more than once.
        """
        if self.removed:
            return True
        deadline = time.monotonic() + wait
        # Polled: a v1 group has no event for "empty" to wait on, and this takes ms.
        while self.pids() and time.monotonic() < deadline:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        if self.pids():
            log.warning("a kernel's processes outlived it; killing %d of them", len(self.pids()))
            self.kill_all()
            for _ in range(50):
                if not self.pids():
                    break
                await asyncio.sleep(0.02)
        return self.rmdir()

    def rmdir(self) -> bool:
        if not self.removed:
            self.oom_kills()  # the counters go with the folder
        gone = True
        for folder in self.folders:
            try:
                folder.rmdir()
            except FileNotFoundError:
                pass
            except OSError as exc:
                gone = False
                log.debug("could not remove a kernel's cgroup yet: %s", exc)
        self.removed = gone
        return gone


class CgroupRoot:
    """The server's folder(s) for kernel groups, in one cgroup version."""

    def __init__(self, controllers: list[_Controller], *, version: int) -> None:
        self.controllers = controllers
        self.version = version
        self._count = 0

    def describe(self) -> str:
        return f"cgroup v{self.version}"

    def create(self, *, memory_bytes: int, max_tasks: int) -> KernelCgroup:
        """A new, empty group with these limits (0 = no limit of that kind).

        Raises:
            OSError: the tree refused the folder or a limit.
        """
        self._count += 1
        name = f"k{self._count}-{secrets.token_hex(3)}"
        folders: list[Path] = []
        values = {"memory": memory_bytes, "tasks": max_tasks, "no-swap": 0}
        try:
            for controller in self.controllers:
                folder = controller.base / name
                folder.mkdir(mode=0o755)
                folders.append(folder)
                for file, kind in controller.limits:
                    target = folder / file
                    if (kind != "no-swap" and not values[kind]) or not target.exists():
                        continue
                    if kind == "no-swap" and not memory_bytes:
                        continue
                    target.write_text(f"{values[kind]}\n")
        except OSError:
            KernelCgroup(folders, version=self.version).rmdir()
            raise
        return KernelCgroup(folders, version=self.version, memory_bytes=memory_bytes)

    def close(self) -> None:
        """Remove the server's folders (kernels' leftovers are killed first)."""
        for controller in self.controllers:
            _remove_tree(controller.base, kill=True)


def cgroup_root() -> CgroupRoot | None:
    """Folders for per-kernel groups below the server's own group, or None (logged why)."""
    if not Path("/proc/self/cgroup").exists():
        return None
    try:
        membership = _membership()
        mounts = _cgroup_mounts()
    except OSError as exc:
        log.info("kernel cgroups: cannot read this process's cgroups (%s)", exc)
        return None
    reasons: list[str] = []
    for attempt in (_v2, _v1):
        try:
            root = attempt(membership, mounts)
        except OSError as exc:
            reasons.append(str(exc.strerror or exc))
            continue
        if isinstance(root, CgroupRoot):
            return root
        reasons.append(root)
    log.info(
        "kernel cgroups unavailable (%s); the task and memory limits are rlimits per process",
        "; ".join(reasons),
    )
    return None


# -- discovery ----------------------------------------------------------------------
def _membership() -> dict[str, str]:
    """Controller (or '' for v2) -> this process's group path in that tree."""
    found: dict[str, str] = {}
    for line in Path("/proc/self/cgroup").read_text().splitlines():
        _, controllers, path = line.split(":", 2)
        for controller in controllers.split(",") if controllers else [""]:
            found[controller] = path
    return found


def _cgroup_mounts() -> list[tuple[str, Path, str, set[str]]]:
    """(fs type, mount point, mount root, super options) of every cgroup mount."""
    mounts = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        left, _, right = line.partition(" - ")
        fields = left.split()
        fstype, _, options = right.split(maxsplit=2)
        if fstype in ("cgroup", "cgroup2"):
            point = Path(fields[4].replace("\\040", " "))
            mounts.append((fstype, point, fields[3], set(options.split(","))))
    return mounts


def _own_folder(point: Path, mount_root: str, path: str) -> Path | None:
    """Where this process's group ``path`` shows under a mount of ``mount_root``."""
    relative = os.path.relpath(path, mount_root)
    if relative.startswith(".."):
        return None
    return (point / relative).resolve()


def _v2(
    membership: dict[str, str], mounts: list[tuple[str, Path, str, set[str]]]
) -> CgroupRoot | str:
    path = membership.get("")
    points = [(point, root) for fstype, point, root, _ in mounts if fstype == "cgroup2"]
    if path is None or not points:
        return "no cgroup v2 tree"
    own = _own_folder(points[0][0], points[0][1], path)
    if own is None:
        return "this process's v2 group is outside the mounted tree"
    available = set((own / "cgroup.controllers").read_text().split())
    if not {"memory", "pids"} <= available:
        return "the v2 tree has no memory and pids controllers here"
    delegated = set((own / "cgroup.subtree_control").read_text().split())
    if not {"memory", "pids"} <= delegated:
        # Allowed only where the server's group holds no processes (or is the root).
        (own / "cgroup.subtree_control").write_text("+memory +pids\n")
    base = _server_folder(own)
    try:
        (base / "cgroup.subtree_control").write_text("+memory +pids\n")
    except OSError:
        _remove_tree(base, kill=False)
        raise
    # Swap would let a kernel hold more than memory.max; v1's memsw limit (below)
    # is the same rule: memory plus swap together stay under the limit.
    limits = (("memory.max", "memory"), ("memory.swap.max", "no-swap"), ("pids.max", "tasks"))
    return CgroupRoot([_Controller(base, limits)], version=2)


def _v1(
    membership: dict[str, str], mounts: list[tuple[str, Path, str, set[str]]]
) -> CgroupRoot | str:
    controllers = []
    for name, limits in (
        (
            "memory",
            (("memory.limit_in_bytes", "memory"), ("memory.memsw.limit_in_bytes", "memory")),
        ),
        ("pids", (("pids.max", "tasks"),)),
    ):
        path = membership.get(name)
        point = next(
            ((p, root) for fstype, p, root, opts in mounts if fstype == "cgroup" and name in opts),
            None,
        )
        if path is None or point is None:
            return f"no cgroup v1 {name} controller"
        own = _own_folder(point[0], point[1], path)
        if own is None:
            return f"this process's v1 {name} group is outside the mounted tree"
        controllers.append((own, limits))
    made: list[_Controller] = []
    try:
        for own, limits in controllers:
            made.append(_Controller(_server_folder(own), limits))
    except OSError:
        for controller in made:
            _remove_tree(controller.base, kill=False)
        raise
    return CgroupRoot(made, version=1)


def _server_folder(own: Path) -> Path:
    """This server's folder below its own group; removes those of servers that died."""
    for stale in own.glob(f"{PREFIX}*"):
        pid = stale.name.removeprefix(PREFIX).split("-", 1)[0]
        if pid.isdigit() and not psutil.pid_exists(int(pid)):
            _remove_tree(stale, kill=True)
    folder = own / f"{PREFIX}{os.getpid()}-{secrets.token_hex(3)}"
    folder.mkdir(mode=0o755)
    return folder


def _remove_tree(folder: Path, *, kill: bool) -> None:
    """Remove a group folder and its leaf groups, killing what is left in them if asked."""
    if not folder.is_dir():
        return
    for leaf in [p for p in folder.iterdir() if p.is_dir()]:
        group = KernelCgroup([leaf], version=2 if (leaf / "cgroup.kill").exists() else 1)
        if kill and group.pids():
            group.kill_all()
            deadline = time.monotonic() + 1.0
            while group.pids() and time.monotonic() < deadline:
                time.sleep(0.01)
        group.rmdir()
    with contextlib.suppress(OSError):
        folder.rmdir()
