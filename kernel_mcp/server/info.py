"""What the server says about itself to the model: the facts ``server_info`` returns.

The version, the two folders and why they were chosen (``kernel_mcp.folders``),
whether kernels are sandboxed, and the limits in force; the start-up banner
(``kernel_mcp.cli``) says the same of the folders and the sandbox.
"""

from __future__ import annotations

import sys
from pathlib import Path

from kernel_mcp import __version__, folders
from kernel_mcp.backends.base import KernelBackend
from kernel_mcp.config import Settings
from kernel_mcp.server.views import FolderInfo, LimitsInfo, ProjectsInfo, SandboxInfo, ServerInfo

__all__ = ["server_info"]


def _memory_limit_mb(settings: Settings, backend: KernelBackend) -> int | None:
    # Local kernels get RLIMIT_AS (and a cgroup where possible) on Linux only;
    # a remote backend's kernels are limited where they run.
    if not backend.local or not sys.platform.startswith("linux"):
        return None
    return settings.memory_limit_mb or None


def server_info(
    settings: Settings, backend: KernelBackend, *, projects: Path | None = None
) -> ServerInfo:
    """The facts ``server_info`` returns.

    Args:
        backend: where kernels come from (its name, whether they are local and
            sandboxed, how it isolates them).
        projects: the caller's own projects folder, when it is not the configured one
            (a folder per principal).
    """
    sandboxed = backend.sandboxed
    return ServerInfo(
        version=__version__,
        projects=ProjectsInfo(
            path=str(projects or settings.projects_dir),
            origin=folders.origin(settings, "projects_dir"),
            own=projects is not None and projects != settings.projects_dir,
        ),
        notebooks=FolderInfo(
            path=str(settings.notebooks_dir), origin=folders.origin(settings, "notebooks_dir")
        ),
        backend=backend.name,
        sandbox=SandboxInfo(
            on=sandboxed,
            description=backend.isolation(),
            network=not sandboxed or settings.sandbox_network,
            projects_writable=not sandboxed or settings.sandbox_projects == "rw",
        ),
        limits=LimitsInfo(
            timeout_s=settings.timeout,
            max_timeout_s=settings.max_timeout,
            background_max_timeout_s=settings.background_max_timeout,
            notebook_timeout_s=settings.notebook_timeout,
            interrupt_grace_s=settings.interrupt_grace,
            memory_limit_mb=_memory_limit_mb(settings, backend),
            max_sessions=settings.max_sessions,
            session_idle_timeout_s=settings.session_idle_timeout,
            max_fresh_runs=settings.max_fresh_runs,
            run_retention_s=settings.run_retention,
            max_file_bytes=settings.max_file_bytes,
            projects_quota_mb=settings.projects_quota_mb or None,
            write_suffixes=list(settings.write_suffixes),
            max_stream_chars=settings.max_stream_chars,
            max_images=settings.max_images,
            max_image_bytes=settings.max_image_bytes,
            max_reply_bytes=settings.max_reply_bytes,
        ),
        kernels=settings.allowed_kernels,
        platform=sys.platform,
    )
