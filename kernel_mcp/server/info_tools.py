"""server_info: where files go, the limits in force, what isolates the code, the version."""

from __future__ import annotations

from fastmcp import FastMCP
from mcp_types import ToolAnnotations

from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import owner
from kernel_mcp.server.info import server_info as facts
from kernel_mcp.server.views import ServerInfo

__all__ = ["register_info_tools"]


def register_info_tools(mcp: FastMCP, runner: Runner) -> None:
    # The facts do not change while the server runs; only the caller's folder differs
    # (a folder per principal).
    infos: dict[str | None, ServerInfo] = {}

    @mcp.tool(
        annotations=ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)
    )
    async def server_info() -> ServerInfo:
        """Describe this server: its folders, the limits in force, the sandbox, the version.

        Returns projects (where run_python finds files and write_file writes them; the
        kernels' working directory; own: it is your own folder, which only your code
        sees) and notebooks (session recordings, exports), each
        with its absolute path and why it was chosen; sandbox (on, network, whether
        kernels may write the projects folder); limits (time limits in seconds, memory
        per kernel in MiB or null when none is enforced, caps on sessions, concurrent
        fresh runs, files and replies); kernels (values for `kernel=`); version. Call it
        once, before writing files or starting long runs; nothing here changes while
        the server runs.
        """
        caller = owner()
        if caller not in infos:
            infos[caller] = facts(
                runner.settings, runner.backend, projects=runner.workspaces.folder(caller)
            )
        return infos[caller]
