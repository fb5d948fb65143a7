"""Notebook resources: ``notebook://<name>`` for every notebook the caller may read."""

from __future__ import annotations

import functools

import anyio
from fastmcp import FastMCP
from fastmcp.resources import FunctionResource
from fastmcp.server.providers.base import Provider

from kernel_mcp.runner import Runner
from kernel_mcp.server.auth import owner

__all__ = ["register_resources"]

MIME = "application/x-ipynb+json"


class NotebookResources(Provider):
    """Lists every notebook in the notebooks folder as ``notebook://<name>``."""

    def __init__(self, runner: Runner) -> None:
        super().__init__()
        self._runner = runner

    async def _list_resources(self) -> list[FunctionResource]:
        runner, caller = self._runner, owner()
        mine = await runner.owned_notebooks(caller)
        resources = []
        for name in await anyio.to_thread.run_sync(runner.recordings.readable, mine):
            resources.append(
                FunctionResource.from_function(
                    # Who owns what is looked up again when read.
                    functools.partial(_read, runner, caller, name),
                    uri=f"notebook://{name}",
                    name=name,
                    mime_type=MIME,
                    description="A recorded or exported notebook (nbformat 4 JSON).",
                )
            )
        return resources


async def _read(runner: Runner, caller: str | None, name: str) -> str:
    # A refusal (no such notebook, not the caller's) is translated by the DomainErrors
    # middleware, as every resource's and tool's.
    return await runner.read_notebook(caller, name)


def register_resources(mcp: FastMCP, runner: Runner) -> None:
    mcp.add_provider(NotebookResources(runner))

    @mcp.resource("notebook://sessions/{session_id}", mime_type=MIME)
    async def session_notebook(session_id: str) -> str:
        """A session's recorded notebook, by session id (or by its file name)."""
        return await _read(runner, owner(), f"sessions/{session_id}")

    @mcp.resource("notebook://{name}", mime_type=MIME)
    async def notebook(name: str) -> str:
        """An exported or saved notebook from the notebooks folder."""
        return await _read(runner, owner(), name)
