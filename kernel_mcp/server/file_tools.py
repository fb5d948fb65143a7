"""Files in the projects folder: list them (the path guard decides what may run)."""

from __future__ import annotations

import anyio
from fastmcp import FastMCP
from mcp_types import ToolAnnotations

from kernel_mcp.paths import MAX_LISTED_FILES
from kernel_mcp.runner import Runner
from kernel_mcp.server.edge import translated
from kernel_mcp.views import FileList

__all__ = ["register_file_tools"]


def register_file_tools(mcp: FastMCP, runner: Runner) -> None:
    @mcp.tool(annotations=ToolAnnotations(readOnlyHint=True))
    @translated
    async def list_files(pattern: str = "**/*.py") -> FileList:
        """List files under the projects folder that match a glob.

        Args:
            pattern: a glob relative to the projects folder, e.g. "**/*.py" or "*.ipynb".

        Returns relative paths, sorted, at most 1000 (truncated says if more matched).
        Pass one to run_python (or run_notebook for .ipynb).
        """
        files = await anyio.to_thread.run_sync(runner.list_files, pattern)
        return FileList(files=files, projects_dir=".", truncated=len(files) >= MAX_LISTED_FILES)
