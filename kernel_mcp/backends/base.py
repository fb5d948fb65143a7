"""The backend seam: what starts kernels, and the environment every kernel gets.

``backends.local.LocalBackend`` starts ipykernel processes on this machine; a
remote backend (``scale.gateway``) implements the same protocol. Backends hand
out ``kernels.kernel.Kernel`` objects over the ``kernels.process`` seam.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Protocol

from kernel_mcp.config import DEFAULT_SECRET_PATTERNS
from kernel_mcp.kernels.kernel import Kernel

__all__ = ["KernelAttacher", "KernelBackend", "kernel_environment"]


class KernelBackend(Protocol):
    """Starts kernels. Owns whatever the kernels share (folders, connections)."""

    name: str
    local: bool
    """Its kernels run on this machine (they see its projects folders, use its memory,
    and its kernelspecs are the ones installed here)."""
    kernel_name: str
    """The kernelspec it starts when none is named."""
    sandboxed: bool
    """Its kernels run in kernel-mcp's sandbox (so their network is what it allows)."""
    cheap_starts: bool
    """A start costs tens of milliseconds and little of this process's CPU (forked
    kernels): the pool may start several at once, and refill right after a run."""

    async def start(
        self, kernel_name: str | None = None, *, workspace: Path | None = None
    ) -> Kernel:
        """A started, ready kernel of ``kernel_name`` (None: the configured default).

        ``workspace``: the projects folder the kernel works in and, sandboxed, the
        only one it sees (None: the configured one). Remote backends ignore it.
        """

    def isolation(self) -> str:
        """How its kernels are isolated, in one phrase (the banner's and server_info's)."""

    async def close(self) -> None: ...


class KernelAttacher(Protocol):
    """Joins kernels someone else started (a gateway's: a person's notebook kernel)."""

    async def attach(self, kernel_id: str) -> Kernel:
        """The running kernel ``kernel_id``, which kernel-mcp must never stop: the
        returned kernel's ``shutdown`` and ``kill`` only let go of it.

        Raises:
            InvalidArgument: not a kernel id, no such kernel, or one kernel-mcp started.
            KernelStartFailed: the server is unreachable or the kernel did not answer.
        """

    def busy(self, kernel: Kernel) -> bool:
        """Whether an attached kernel runs a request right now (between our own runs:
        someone else's)."""


def kernel_environment(
    environ: Mapping[str, str],
    *,
    allow: Iterable[str] = (),
    patterns: Iterable[str] = DEFAULT_SECRET_PATTERNS,
) -> dict[str, str]:
    """The server's environment minus variables whose names look like secrets."""
    allowed = {name.upper() for name in allow}
    rules = [p.upper() for p in patterns]
    return {
        name: value
        for name, value in environ.items()
        if name.upper() in allowed
        or not any(fnmatch.fnmatchcase(name.upper(), rule) for rule in rules)
    }
