"""Where a kernel runs, as the kernel driver sees it: the seam every backend implements.

A backend hands ``kernels.kernel.Kernel`` a :class:`KernelProcess` (start, signal,
stop the kernel wherever it runs) and a :class:`KernelClient` (its channels, with
jupyter_client's async API).
"""

from __future__ import annotations

from typing import Any, Protocol

__all__ = ["KernelClient", "KernelProcess"]


class KernelClient(Protocol):
    """The part of jupyter_client's ``AsyncKernelClient`` this module uses."""

    def execute(
        self,
        code: str,
        silent: bool = ...,
        store_history: bool = ...,
        user_expressions: dict[str, Any] | None = ...,
        allow_stdin: bool | None = ...,
        stop_on_error: bool = ...,
    ) -> str: ...
    async def get_iopub_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    async def get_shell_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    async def get_stdin_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    async def get_control_msg(self, timeout: float | None = ...) -> dict[str, Any]: ...
    def kernel_info(self) -> str: ...
    def input(self, string: str) -> None: ...
    def stop_channels(self) -> None: ...


class KernelProcess(Protocol):
    """Where a kernel lives: the seam between execution and kernel backends."""

    backend: str
    kernel_id: str
    sandboxed: bool
    """Runs in kernel-mcp's own sandbox (a gateway's kernels: its isolation, not ours)."""
    prepared: tuple[str, ...] | None
    """None, or: the kernel ran :data:`KERNEL_SETUP` itself before its first message (a
    forked kernel), which installed the guards and imported these preload modules;
    :meth:`Kernel.prepare` imports only the others."""

    async def is_alive(self) -> bool: ...
    async def interrupt(self) -> None: ...
    async def kill(self) -> None:
        """Stop at once, with every process the kernel started."""

    async def shutdown(self) -> None:
        """Ask politely, then end the whole process group."""

    def exit_description(self) -> str:
        """How the kernel ended, e.g. 'exit code 3' or 'signal SIGKILL'."""

    def rss_bytes(self) -> int | None: ...
