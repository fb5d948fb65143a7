"""The projects folders as callers see them: read, write and list, through the path guard.

Each principal's files are its workspace's (``files.workspaces``); every name goes
through the guard (``files.guard``), writes through ``files.write`` and listings
through ``files.listing``.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading

from kernel_mcp.config import Settings
from kernel_mcp.files.guard import ProjectFile, read_project_file
from kernel_mcp.files.listing import FileListing, list_project_files
from kernel_mcp.files.workspaces import Workspaces
from kernel_mcp.files.write import WrittenFile, write_project_file
from kernel_mcp.tasks import shielded_to_end

__all__ = ["ProjectFiles"]


class ProjectFiles:
    """Reading, writing and listing the files of a principal's projects folder.

    Args:
        settings: the size limit, the endings write_file may write, hard links.
        workspaces: which folder is whose, and its disk cap.
        mode: the mode new files get (the umask's, as the notebooks folder's exports).
    """

    def __init__(self, settings: Settings, workspaces: Workspaces, *, mode: int) -> None:
        self.settings = settings
        self.workspaces = workspaces
        self.mode = mode

    def read(
        self, name: str, *, owner: str | None, suffixes: tuple[str, ...] = (".py",)
    ) -> ProjectFile:
        """A file that may be run (one of ``suffixes``), through the guard.

        Raises:
            PathRefused, FileNotFound, InvalidArgument: see ``files.guard.read_project_file``.
        """
        return read_project_file(
            self.workspaces.folder(owner),
            name,
            suffixes=suffixes,
            max_bytes=self.settings.max_file_bytes,
            allow_hardlinks=self.settings.allow_hardlinks,
        )

    def read_text(self, name: str, *, owner: str | None) -> ProjectFile:
        """A text file the agent may read back (the write_file endings), through the guard."""
        return read_project_file(
            self.workspaces.folder(owner),
            name,
            suffixes=tuple(self.settings.write_suffixes),
            max_bytes=self.settings.max_file_bytes,
            allow_hardlinks=self.settings.allow_hardlinks,
            action="read",
        )

    def write(self, name: str, content: str, *, owner: str | None, overwrite: bool) -> WrittenFile:
        """Write a text file beneath the owner's projects folder (atomic, through no symlink).

        Blocking: call it in a thread.

        Raises:
            QuotaExceeded: the folder would go over KERNEL_MCP_PROJECTS_QUOTA_MB.
            PathRefused, InvalidArgument: see ``files.write.write_project_file``.
        """
        self.workspaces.check_room(owner, len(content.encode("utf-8", "surrogatepass")))
        return write_project_file(
            self.workspaces.folder(owner),
            name,
            content,
            suffixes=tuple(self.settings.write_suffixes),
            max_bytes=self.settings.max_file_bytes,
            overwrite=overwrite,
            mode=self.mode,
        )

    async def list(self, pattern: str, *, owner: str | None) -> FileListing:
        """Files matching ``pattern``; the walk is bounded and stops if the caller goes away."""
        cancel = threading.Event()
        folder = self.workspaces.folder(owner)
        walk = asyncio.ensure_future(
            asyncio.to_thread(list_project_files, folder, pattern, cancel=cancel)
        )
        try:
            return await asyncio.shield(walk)
        except asyncio.CancelledError:
            # The thread cannot be cancelled: tell the walk to stop (it looks every 64
            # entries), and leave once it has, so that nothing outlives the call.
            cancel.set()
            with contextlib.suppress(Exception):
                await shielded_to_end(walk)
            raise
