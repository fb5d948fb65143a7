"""Memory admission: a kernel is handed out only while the machine could give it its memory.

The limits alone promise more than the machine has: with the defaults, 32
sessions and 8 fresh runs at 4 GiB each are 160 GiB on paper, and on a 24 GiB
machine nothing stopped the 41st kernel when memory ran out. Two ways to close
that gap were weighed:

* **A cap on the sum of limits** (admit while the kernels' limits add up to no
  more than the machine's memory). Safe, but it treats every kernel as if it
  used its whole limit: an idle kernel holds about 50 MB (a forked one about
  20 MB), so 24 GiB would admit 6 kernels, and a team sharing the server would
  be refused sessions on a machine that is nearly idle.
* **Admission on available memory** (chosen): a new kernel starts, or leaves
  the warm pool, only while the machine's available memory (``MemAvailable``,
  what Linux could give without swapping; psutil's ``virtual_memory()``) covers
  what it may use, ``need`` bytes. Kernels cost what they use, and when memory
  does run out the server refuses new kernels with a clear error instead of
  starting them into the OOM killer.

``need`` is ``KERNEL_MCP_ADMISSION_MB``; by default the per-kernel memory limit
(4096 MiB), capped at a quarter of the machine's memory so that a small machine
still starts kernels (on 24 GiB: 4 GiB; on 8 GiB: 2 GiB). What it does not
promise: kernels admitted earlier may still grow, together, past what is left;
each one stays inside its own limit (its cgroup, ``RLIMIT_AS``), so one kernel
cannot take the machine, but many at once can. The check is not a reservation:
two kernels admitted at the same moment are both checked against the same
available memory.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

from kernel_mcp.config import Settings
from kernel_mcp.errors import NotEnoughMemory

__all__ = [
    "MemoryAdmission",
    "admission_for",
    "available_memory",
    "default_need",
    "machine_memory",
]

log = logging.getLogger(__name__)

MIB = 1024 * 1024


def available_memory() -> int:
    """Bytes the machine could give a new process without swapping (``MemAvailable``)."""
    import psutil

    return int(psutil.virtual_memory().available)


def machine_memory() -> int:
    """The machine's memory, bytes."""
    import psutil

    return int(psutil.virtual_memory().total)


def default_need(memory_limit_mb: int, total_bytes: int) -> int:
    """What a new kernel needs available by default, bytes: its memory limit (1024 MiB
    when the limit is off), at most a quarter of the machine's memory."""
    limit = (memory_limit_mb or 1024) * MIB
    return min(limit, total_bytes // 4)


class MemoryAdmission:
    """Refuses a kernel when the machine's available memory would not cover ``need`` bytes.

    Args:
        need: bytes that must be available; 0 admits everything.
        available: reads the machine's available memory, in bytes (tests pass their
            own; the default asks psutil).
        setting: the setting that chose ``need``, named in the refusal.
    """

    def __init__(
        self,
        need: int,
        *,
        available: Callable[[], int] = available_memory,
        setting: str = "KERNEL_MCP_ADMISSION_MB",
    ) -> None:
        self.need = need
        self.available = available
        self.setting = setting

    def check(self) -> None:
        """Return if a kernel may be handed out now.

        Raises:
            NotEnoughMemory: the machine's available memory would not cover one; the
                message says how much there is, how much a kernel needs, and what to do.
        """
        if self.need <= 0:
            return
        free = self.available()
        if free >= self.need:
            return
        raise NotEnoughMemory(
            f"No memory for a new kernel: the machine has {free / MIB:,.0f} MiB available "
            f"and a kernel needs {self.need / MIB:,.0f} MiB ({self.setting}). Close a "
            "session you no longer need (close_session), or try again when running code "
            "has finished."
        )


def admission_for(settings: Settings, *, local: bool) -> MemoryAdmission | None:
    """The admission of this server's kernels: ``local`` ones only (a remote backend's
    kernels use its own machine's memory, which it limits itself)."""
    if not local:
        return None
    if settings.admission_mb is None:
        return MemoryAdmission(default_need(settings.memory_limit_mb, machine_memory()))
    return MemoryAdmission(settings.admission_mb * MIB)
