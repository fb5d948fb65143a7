"""What a caller asks of a run, and what a run gives back, before any MCP."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from nbformat import NotebookNode

from kernel_mcp.files.guard import ProjectFile
from kernel_mcp.kernels.execution import Execution, OutputCallback, ProgressCallback
from kernel_mcp.kernels.setup import NO_STDIN_MESSAGE
from kernel_mcp.notebooks.execute import NotebookRun
from kernel_mcp.runner.questions import QuestionHandler

__all__ = [
    "NotebookOutcome",
    "NotebookRequest",
    "RunOptions",
    "RunOutcome",
    "RunRequest",
    "as_program_exit",
    "file_preamble",
]


@dataclass(frozen=True, kw_only=True)
class RunOptions:
    """What a caller asks of a run of a file or snippet, whatever the code is."""

    owner: str | None = None
    """The principal the run (and its session) belongs to."""
    timeout: float | None = None
    session_id: str | None = None
    progress: ProgressCallback | None = None
    save_notebook: bool = False
    kernel: str | None = None
    """A kernelspec other than the default (a fresh run's; a session keeps its own)."""
    background: bool = False
    """Its time limit is KERNEL_MCP_BACKGROUND_MAX_TIMEOUT's (and so is its default)."""


@dataclass(frozen=True, kw_only=True)
class RunRequest(RunOptions):
    """One run of a file or snippet: the caller's options, what runs, how it is recorded."""

    code: str
    tool: str
    record_as: str
    """The cell source a notebook records (a file's set-up line, then its source)."""
    preamble: str | None = None
    """Set-up run silently first (``python file.py``'s __file__, argv, sys.path)."""
    file: str | None = None
    stem: str = "code"
    on_output: OutputCallback | None = None
    stdin: QuestionHandler | None = None
    """Who answers the code's input(); None: input() raises at once, saying ``no_input``."""
    no_input: str = NO_STDIN_MESSAGE
    """Why input() cannot be answered when ``stdin`` is None (the client, or background)."""

    @property
    def label(self) -> str:
        return self.file or "code"


@dataclass(frozen=True)
class NotebookRequest:
    """One run of a notebook from the projects folder, parameters already injected."""

    nb: NotebookNode
    source: str
    """The notebook, relative to the projects folder."""
    owner: str | None
    session_id: str | None = None
    timeout: float | None = None
    allow_errors: bool = False
    kernel: str | None = None
    background: bool = False
    on_output: OutputCallback | None = None
    stdin: QuestionHandler | None = None
    no_input: str = NO_STDIN_MESSAGE

    @property
    def label(self) -> str:
        return self.source


@dataclass
class RunOutcome:
    """One run of a file or snippet, with what the reply should mention."""

    execution: Execution
    file: str | None = None
    session_id: str | None = None
    notebook_uri: str | None = None
    notebook_path: Path | None = None
    notes: list[str] = field(default_factory=list)


@dataclass
class NotebookOutcome:
    run: NotebookRun
    path: Path | None
    uri: str | None
    source: str
    session_id: str | None = None
    notes: list[str] = field(default_factory=list)


def as_program_exit(execution: Execution) -> Execution:
    """A file that called ``sys.exit()`` ended as ``python file.py`` would: code 0 is ok.

    IPython reports every SystemExit as an error; a script's ``sys.exit(0)`` (or
    ``sys.exit()``) is its normal end, any other code a failure.
    """
    error = execution.error
    if execution.status != "error" or error is None or error.get("ename") != "SystemExit":
        return execution
    code = str(error.get("evalue", "")).strip()
    if code in ("", "0", "None", "False"):
        outputs = [o for o in execution.outputs if o is not error]
        note = "The program ended with sys.exit(0)."
        return replace(
            execution, status="ok", error=None, outputs=outputs, notes=[*execution.notes, note]
        )
    note = f"The program ended with sys.exit({code}): a failure, as for `python file.py`."
    return replace(execution, notes=[*execution.notes, note])


def file_preamble(project: ProjectFile, projects_dir: Path) -> str:
    """Set-up that makes a cell run like ``python file.py`` from the projects folder."""
    file = str(project.path)
    folder = str(project.path.parent)
    return (
        "import os as _kmcp_os, sys as _kmcp_sys\n"
        # A remote kernel may not have the folder; it then keeps its own cwd.
        f"try: _kmcp_os.chdir({str(projects_dir)!r})\nexcept OSError: pass\n"
        f"_kmcp_sys.argv = [{file!r}]\n"
        f"if {folder!r} not in _kmcp_sys.path: _kmcp_sys.path.insert(0, {folder!r})\n"
        f"__file__ = {file!r}\n"
        "__name__ = '__main__'\n"
        "del _kmcp_os, _kmcp_sys\n"
    )
