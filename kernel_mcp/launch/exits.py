"""How a local kernel ended, in the words a ``kernel_died`` report uses.

Shared by spawned kernels (``kernel_mcp.backends.local``) and forked ones
(``kernel_mcp.launch.forkserver``): both see a Popen-style exit status, both
may sit below a PID namespace's init that turns "killed by signal n" into
exit code 128 + n, and both may have a cgroup whose memory limit was the
reason (the kernel's OOM killer sends SIGKILL, which alone says nothing).
"""

from __future__ import annotations

import signal

from kernel_mcp.launch.cgroups import KernelCgroup

__all__ = ["describe_exit"]

MIB = 1024 * 1024


def describe_exit(code: int, *, namespaced: bool, cgroup: KernelCgroup | None) -> str:
    """``code`` (negative: a signal) as a phrase: "exit code 3", "killed by SIGKILL (…)".

    ``namespaced``: the status is that of the kernel's namespace init (bwrap or the
    fork template's reaper), which exits 128 + n for a kernel killed by signal n.
    """
    if code > 128 and namespaced:
        code = 128 - code
    if code >= 0:
        return f"exit code {code}"
    try:
        name = signal.Signals(-code).name
    except ValueError:
        name = f"signal {-code}"
    said = f"killed by {name}"
    if code == -signal.SIGKILL and cgroup is not None and cgroup.oom_kills():
        limit = f" ({cgroup.memory_bytes // MIB} MiB)" if cgroup.memory_bytes else ""
        said += (
            f": its processes together reached the kernel's memory limit{limit}, "
            "set by KERNEL_MCP_MEMORY_LIMIT_MB"
        )
    return said
