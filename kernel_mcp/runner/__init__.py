"""The domain's front door: runs of files, snippets and notebooks, fresh or in sessions.

::

    runner.py      Runner: builds the pools, sessions and recorder on a deployment, runs requests
    requests.py    what a caller asks (RunRequest, NotebookRequest) and gets (RunOutcome, ...)
    files.py       the projects folders through the path guard: read, write, list
    recordings.py  each session's recording, and which notebooks a principal may read
    runs.py        runs that outlive a call: registry, output log, markers, retention
    questions.py   input() asked of the person: the question's words, the prompt cleaned

Nothing here knows MCP: ``kernel_mcp.server`` translates requests and outcomes.
"""

from kernel_mcp.runner.requests import (
    NotebookOutcome,
    NotebookRequest,
    RunOptions,
    RunOutcome,
    RunRequest,
)
from kernel_mcp.runner.runner import Runner

__all__ = [
    "NotebookOutcome",
    "NotebookRequest",
    "RunOptions",
    "RunOutcome",
    "RunRequest",
    "Runner",
]
