"""Files in the projects folder: list, write and read them (the path guard decides)."""

from __future__ import annotations

import asyncio

from fastmcp import FastMCP
from mcp_types import ToolAnnotations

from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import owner
from kernel_mcp.server.render import ReplyLimits, render_file_list, render_file_text
from kernel_mcp.server.views import FileList, FileText, FileWritten

__all__ = ["register_file_tools"]


def register_file_tools(mcp: FastMCP, runner: Runner, limits: ReplyLimits) -> None:
    read_only = ToolAnnotations(readOnlyHint=True, idempotentHint=True, openWorldHint=False)

    @mcp.tool(annotations=read_only)
    async def list_files(pattern: str = "**/*.py") -> FileList:
        """List files under the projects folder that match a glob.

        Args:
            pattern: a glob relative to the projects folder, e.g. "**/*.py" or "*.ipynb".

        Returns relative paths, sorted, at most 1000. Hidden files and symlinked
        folders are skipped. truncated (with a note) says the list is incomplete: more
        matched, or the walk hit its bound on entries visited or on time. not_utf8
        (with a note) counts matching names left out because they are not UTF-8 text.
        Pass a path to run_python (or run_notebook for .ipynb), or to read_file.
        """
        return render_file_list(await runner.files.list(pattern, owner=owner()), limits)

    @mcp.tool(
        annotations=ToolAnnotations(
            readOnlyHint=False, destructiveHint=True, idempotentHint=True, openWorldHint=False
        )
    )
    async def write_file(path: str, content: str, overwrite: bool = False) -> FileWritten:
        """Write a text file in the projects folder, for run_python to run.

        Args:
            path: relative to the projects folder, e.g. "analysis/clean.py"; missing
                folders are created. Allowed endings: KERNEL_MCP_WRITE_SUFFIXES
                (default .py, .txt, .csv, .json, .md, .ipynb).
            content: the whole file, as text (UTF-8); at most KERNEL_MCP_MAX_FILE_BYTES.
            overwrite: replace an existing file (otherwise that is refused).

        Returns path, bytes written and created (False if a file was replaced). The
        write is atomic and never follows a symlink. The loop: write_file →
        run_python(path) → read the traceback → write_file again (overwrite=true).
        """
        written = await asyncio.to_thread(
            runner.files.write, path, content, owner=owner(), overwrite=overwrite
        )
        return FileWritten(path=written.relative, bytes=written.bytes, created=written.created)

    @mcp.tool(annotations=read_only)
    async def read_file(path: str, offset: int = 1, limit: int = 2000) -> FileText:
        """Read a text file from the projects folder, with line numbers.

        Args:
            path: relative to the projects folder (the endings write_file may write).
            offset: the first line to show, from 1.
            limit: how many lines to show (at most 2000); long replies are cut.

        Returns text as "<line number>\\t<line>" lines, first_line, last_line,
        total_lines and truncated (read on from last_line + 1). Edit with write_file.
        """
        text = await asyncio.to_thread(runner.files.read_text, path, owner=owner())
        return render_file_text(text.relative, text.source, offset, limit, limits)
