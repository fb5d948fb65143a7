"""Files in the projects folder: list them (the path guard decides what may run)."""

from __future__ import annotations

from fastmcp import FastMCP
from mcp_types import ToolAnnotations

from kernel_mcp.render import ReplyLimits, render_file_list
from kernel_mcp.runner import Runner
from kernel_mcp.server.edge import translated
from kernel_mcp.views import FileList

__all__ = ["register_file_tools"]


def register_file_tools(mcp: FastMCP, runner: Runner, limits: ReplyLimits) -> None:
    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    @translated
    async def list_files(pattern: str = "**/*.py") -> FileList:
        """List files under the projects folder that match a glob.

        Args:
            pattern: a glob relative to the projects folder, e.g. "**/*.py" or "*.ipynb".

        Returns relative paths, sorted, at most 1000. Hidden files and symlinked
        folders are skipped. truncated (with a note) says the list is incomplete: more
        matched, or the walk hit its bound on entries visited or on time. Pass a path
        to run_python (or run_notebook for .ipynb).
        """
        return render_file_list(await runner.list_files(pattern), limits)
